"""Helpers of the monitoring tests and of benchmarks/recovery.py (a plain
module: conftest names collide): loading loader modules, the lab as the tests
and the benchmark prepare it, and oracles that do not use the code under test.
"""
import json
import re
import time
from pathlib import Path

from repo_modules import load

from lab import peers, saltstack

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
HOSTS = ["salt-master", "vpn-gw1", "remote-gw-primary", "remote-gw-backup"]
PEERS = ("remote-gw-primary", "remote-gw-backup")

WEBHOOK_TOKEN = "T0KEN-in-the-url-is-a-secret"
WEBHOOK = f"http://198.18.1.2:8080/hooks/{WEBHOOK_TOKEN}"
ALERTS = "/tmp/alerts.jsonl"
KUBECONFIG = "/etc/vpn-gateway/kubeconfig"
GATEWAY_ENDPOINT = "198.18.2.11"
# Short clocks so that each fault plays out in seconds (the defaults are minutes).
# This kernel has no ESP (FACTS): only IKE SAs come up, hence up_when: ike_sa.
SETTINGS = {
    "up_when": "ike_sa", "holddown": 2, "repeat": 4, "repeat_max": 16,
    "conn_restarts": 2, "step_timeout": 5,
    "budget": {"attempts": 3, "window": 120}, "backoff": {"base": 4, "max": 16},
    "failback": "auto", "failback_after": 8,
    # the beacon starts the recovery on the minion itself (the lab's pillar says master)
    "recovery": "local",
    "alerts": {"rate_window": 15, "timeout": 3},
    "endpoint_ready": {"enabled": True, "service": "postgres", "namespace": "default",
                       "address": GATEWAY_ENDPOINT, "kubeconfig": KUBECONFIG},
    # node_exporter serves the textfile (issue 17: Prometheus on the master scrapes it)
    "metrics": {"node_exporter": {"enabled": True}},
}


def parsed_status(name, rename=None):
    """A captured ``whack --status`` parsed by libreswan._parse_status (conns renamed)."""
    text = (FIXTURES / name).read_text()
    for old, new in (rename or {}).items():
        text = text.replace(old, new)
    return dict(load("salt/_modules/libreswan.py")._parse_status(text), running=True)


# -- the lab -------------------------------------------------------------------------------
def wait_for(predicate, timeout, what):
    """Poll until predicate() is truthy; return (value, seconds waited)."""
    started = time.monotonic()
    while True:
        value = predicate()
        if value:
            return value, time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.25)


def established(gw):
    """Which peers vpn-gw1 has an established IKE SA with (the oracle: whack itself)."""
    text = gw.run(["ipsec", "whack", "--status"]).stdout
    return {"backup" if m.group(1).endswith("-backup") else "primary"
            for m in re.finditer(
                r'#\d+: "([^"/]+)[^ ]* \S+ (?:STATE_V2_)?ESTABLISHED_IKE_SA', text)}


def alerts(lab):
    text = lab["salt-master"].run(["cat", ALERTS]).stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def salt1(lab, function, *args):
    """``salt vpn-gw1 FUNCTION ARGS`` from the master: vpn-gw1's return."""
    return saltstack.salt(lab, "vpn-gw1", function, *args)["vpn-gw1"]


def start_webhook(lab, timeout=15):
    """The webhook receiver as the transient unit ``webhook`` on the master. Started again
    after a test stopped it, the old unit may still be loaded for a moment (systemd unloads
    it on its next garbage collection; a CI run once hit "Unit webhook.service was already
    loaded"; again in the 2026-12-01 clean-clone run, past 15 s), so a refused start is
    retried, bounded, after ``reset-failed`` (a unit that ended failed stays loaded until
    then); ``--collect`` unloads it when it ends, failed or not."""
    argv = ["systemd-run", "--collect", "--unit", "webhook", "/usr/bin/python3",
            f"{lab.repo}/tests/monitoring/webhook_receiver.py", "198.18.1.2", "8080", ALERTS]
    started = time.monotonic()
    while True:
        result = lab["salt-master"].run(argv)
        if result.ok:
            return
        if ("already loaded" not in result.stderr
                or time.monotonic() - started > timeout):
            raise AssertionError(f"the webhook receiver did not start: {result}")
        lab["salt-master"].run(["systemctl", "reset-failed", "webhook"])
        time.sleep(0.5)


def prepare(lab, log=print):
    """Remote responders, the master's reactor, the webhook receiver, the API
    server in vpn-gw1, the monitoring settings, vpn_gateway.ipsec applied,
    the Service and its EndpointSlice; returns once the tunnel is up."""
    started = time.monotonic()
    master, gw = lab["salt-master"], lab["vpn-gw1"]
    peers.configure(lab)  # hand-written remote gateways with the example pillar's PSK
    master.put("/etc/salt/master.d/reactor.conf",
               "reactor:\n  - 'salt/beacon/*/libreswan/*':\n    - salt://reactor/libreswan.sls\n")
    start_webhook(lab)
    # The Kubernetes API server for the EndpointSlice: loopback inside vpn-gw1.
    gw.run(["systemd-run", "--unit", "fake-apiserver", f"{lab.venv}/bin/python",
            f"{lab.repo}/tests/k8s/fake_apiserver.py"], check=True)
    gw.put("/etc/salt/minion.d/monitoring.conf", json.dumps(
        {"vpn_gateway": {"monitoring": dict(SETTINGS, webhook_url=WEBHOOK)}}))
    master.run(["systemctl", "restart", "salt-master"], check=True)
    gw.run(["systemctl", "restart", "salt-minion"], check=True)
    path, _ = wait_for(lambda: re.search(r"KUBECONFIG=(\S+)", gw.run(
        ["journalctl", "-u", "fake-apiserver", "-o", "cat"]).stdout), 60, "fake API server")
    gw.run(["install", "-D", "-m", "0600", path.group(1), KUBECONFIG], check=True)
    master.wait_port(8080, "198.18.1.2")
    wait_for(lambda: saltstack.answers(lab, "vpn-gw1"), 90, "vpn-gw1 answers")
    log(f"monitoring lab: daemons ready after {time.monotonic() - started:.0f}s")
    salt1(lab, "saltutil.sync_all")
    applied = saltstack.salt(lab, "vpn-gw1", "state.apply", "vpn_gateway.ipsec", timeout=240)
    assert all(s["result"] for s in applied["vpn-gw1"].values()), applied
    log(f"monitoring lab: vpn_gateway.ipsec applied after {time.monotonic() - started:.0f}s")
    salt1(lab, "k8s.apply_service", "postgres", "default",
          'ports=[{"name": "postgres", "port": 5432, "target_port": 6432}]',
          f"kubeconfig={KUBECONFIG}")
    salt1(lab, "k8s.apply_endpointslices", "postgres", "default",
          f'endpoints=["{GATEWAY_ENDPOINT}"]', f"kubeconfig={KUBECONFIG}")
    wait_for(lambda: established(gw) == {"primary"}, 90, "the tunnel to the primary")
    log(f"monitoring lab: tunnel up after {time.monotonic() - started:.0f}s")
    return lab


def start_peer(host):
    """Start a remote gateway's ipsec again after a test stopped it. One retry after
    ``reset-failed``: under the suite's load the debian12 peer's start once failed in a
    clean-clone run with no journal kept; a second failure raises with the journal."""
    if host.run(["systemctl", "start", "ipsec"], timeout=120).ok:
        return
    journal = host.run(["journalctl", "-u", "ipsec", "-n", "30", "--no-pager"]).stdout
    print(f"{host.name}: ipsec did not start, retrying once:\n{journal}")
    host.run(["systemctl", "reset-failed", "ipsec"])
    result = host.run(["systemctl", "start", "ipsec"], timeout=120)
    assert result.ok, f"{host.name}: ipsec did not start twice: {result}\n" + host.run(
        ["journalctl", "-u", "ipsec", "-n", "40", "--no-pager"]).stdout
