"""The shipped Prometheus alert rules (issue 17): ``promtool check rules`` on the file as
shipped, ``promtool test rules`` with a firing and a silent case for each alert
(tests/monitoring/prometheus/vpn-gateway.rules.test.yml), every rule's series one the
metrics module writes, and docs/monitoring.md's alert table naming each alert."""
import re
import shutil
import subprocess

import pytest
import yaml

from monitoring_helpers import REPO, load

pytestmark = pytest.mark.unit

RULES = REPO / "salt/states/vpn_gateway/files/prometheus/vpn-gateway.rules.yml"
RULE_TESTS = REPO / "tests/monitoring/prometheus/vpn-gateway.rules.test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing: scripts/install (Debian package prometheus)")


def promtool(*args):
    proc = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60,
                          cwd=REPO)
    return proc.returncode, proc.stdout + proc.stderr


def alerts():
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule]


@needs_promtool
def test_promtool_checks_the_rules_as_shipped():
    code, out = promtool("check", "rules", str(RULES))
    assert code == 0 and f"SUCCESS: {len(alerts())} rules found" in out, out


@needs_promtool
def test_promtool_unit_tests_pass():
    code, out = promtool("test", "rules", str(RULE_TESTS))
    assert code == 0 and "SUCCESS" in out, out


def test_each_alert_has_a_firing_and_a_silent_case():
    cases = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    assert cases == {rule["alert"]: {True, False} for rule in alerts()}


def test_the_rules_read_only_series_the_metrics_module_writes():
    names = set(load("salt/_modules/vpn_metrics.py").METRICS)
    for rule in alerts():
        used = set(re.findall(r"\bvpn_gateway_[a-z_]+", rule["expr"]))
        assert used and used <= names, (rule["alert"], used - names)


def test_the_docs_alert_table_names_each_alert():
    text = (REPO / "docs" / "monitoring.md").read_text()
    section = text.split("### Alert rules", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `(VpnGateway[A-Za-z]+)` \|", section, re.M)
    assert sorted(documented) == sorted(rule["alert"] for rule in alerts())
