"""vpn_gateway.monitoring's Prometheus parts rendered (``salt-call --local
state.show_sls``) for Debian and RedHat with node_exporter and the alert rules
enabled, and with both off (the default): the map.jinja package and unit names,
the rules file from the pack's file tree at the pillar's path, Prometheus' own
check before it replaces the old file."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lab import saltstack

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SALT_CALL = Path(sys.executable).parent / "salt-call"
NODE_EXPORTER = {"Debian": ("prometheus-node-exporter", "prometheus-node-exporter"),
                 # Fedora's spec, which EPEL builds from; no EL host checked (docs/role.md)
                 "RedHat": ("golang-github-prometheus-node-exporter", "prometheus-node-exporter")}
RULES_PATH = "/etc/prometheus/rules.d/vpn-gateway.rules.yml"


def show_sls(tmp_path, os_family, metrics):
    (tmp_path / "minion").write_text(yaml.safe_dump({
        **saltstack.local_minion_config(REPO, tmp_path / "no-pillar"),
        "root_dir": str(tmp_path), "log_file": str(tmp_path / "minion.log"),
        "cachedir": str(tmp_path / "cache"), "pki_dir": str(tmp_path / "pki"),
        "sock_dir": str(tmp_path / "sock"), "id": "vpn-gw1",
        "grains": {"os_family": os_family, "os": "Debian" if os_family == "Debian" else "Rocky",
                   "osmajorrelease": 13 if os_family == "Debian" else 9},
        "vpn_gateway": {"tunnel": {"name": "remote-db"}, "monitoring": {"metrics": metrics}},
    }))
    proc = subprocess.run([str(SALT_CALL), "--local", f"--config-dir={tmp_path}", "--out=json",
                           "state.show_sls", "vpn_gateway.monitoring"],
                          capture_output=True, text=True, timeout=120)
    states = json.loads(proc.stdout)["local"] if proc.stdout else proc.stderr
    assert proc.returncode == 0 and isinstance(states, dict), states
    return states


def arguments(state, module):
    merged = {}
    for item in state[module]:
        if isinstance(item, dict):
            merged.update(item)
    return merged


@pytest.mark.parametrize("os_family", ["Debian", "RedHat"])
def test_enabled_node_exporter_and_rules(tmp_path, os_family):
    states = show_sls(tmp_path, os_family, {
        "node_exporter": {"enabled": True},
        "prometheus_rules": {"enabled": True, "path": RULES_PATH}})
    package, service = NODE_EXPORTER[os_family]
    node = states["vpn_gateway_node_exporter"]
    assert arguments(node, "pkg")["name"] == package
    assert arguments(node, "pkg")["install_recommends"] is False
    assert arguments(node, "service")["name"] == service
    assert arguments(node, "service")["enable"] is True
    rules = arguments(states["vpn_gateway_prometheus_rules"], "file")
    assert rules["name"] == RULES_PATH
    assert rules["source"] == "salt://vpn_gateway/files/prometheus/vpn-gateway.rules.yml"
    assert "promtool check rules" in rules["check_cmd"]


def test_off_by_default(tmp_path):
    states = show_sls(tmp_path, "Debian", {})
    assert "vpn_gateway_node_exporter" not in states
    assert "vpn_gateway_prometheus_rules" not in states
    assert "vpn_gateway_metrics_textfile_dir" in states
