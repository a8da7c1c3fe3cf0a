"""Monitoring and recovery on real hosts: vpn-gw1 with its tunnel to
remote-gw-primary and remote-gw-backup (Libreswan responders), the salt-master
with the reactor, a webhook receiver on the master's lab address, and a
loopback Kubernetes API server inside vpn-gw1 for the EndpointSlice.

This kernel has no ESP (FACTS): only the IKE SA comes up, so the gateway runs
with ``up_when: ike_sa``; the tests' own oracle is ``whack --status`` (an
established IKE SA to which peer), not the code under test.
"""
import json
import re
import time

import pytest

from lab import saltstack

pytestmark = pytest.mark.lab

PSK = "lab-only-psk-not-secret-0123456789abcdef"
WEBHOOK_TOKEN = "T0KEN-in-the-url-is-a-secret"
WEBHOOK = f"http://198.18.1.2:8080/hooks/{WEBHOOK_TOKEN}"
ALERTS = "/tmp/alerts.jsonl"
KUBECONFIG = "/etc/vpn-gateway/kubeconfig"
GATEWAY_ENDPOINT = "198.18.2.11"
# Short clocks so that each fault plays out in seconds (the defaults are minutes).
SETTINGS = {
    "up_when": "ike_sa", "holddown": 2, "repeat": 4, "repeat_max": 16,
    "conn_restarts": 2, "step_timeout": 5,
    "budget": {"attempts": 3, "window": 120}, "backoff": {"base": 4, "max": 16},
    "failback": "auto", "failback_after": 8,
    "alerts": {"rate_window": 15, "timeout": 3},
    "endpoint_ready": {"enabled": True, "service": "postgres", "namespace": "default",
                       "address": GATEWAY_ENDPOINT, "kubeconfig": KUBECONFIG},
}

REMOTE_CONN = """\
conn gw1
\ttype=tunnel
\tauthby=secret
\tikev2=insist
\tike=aes256-sha1;modp2048
\tphase2alg=aes256-sha1
\tpfs=no
\tleft={address}
\tleftid=@{name}
\tleftsubnets={{198.19.1.10/32 198.19.1.11/32 198.19.1.12/32}}
\tright=198.18.0.11
\trightid=@vpn-gw1
\trightsubnet=198.19.10.1/32
\tauto=add
"""


def wait_for(predicate, timeout, what):
    """Poll until predicate() is truthy; return (value, seconds waited)."""
    started = time.monotonic()
    while True:
        value = predicate()
        if value:
            return value, time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.5)


def established(gw):
    """Which peers vpn-gw1 has an established IKE SA with (the tests' oracle)."""
    text = gw.run(["ipsec", "whack", "--status"]).stdout
    peers = set()
    for match in re.finditer(r'#\d+: "([^"/]+)[^ ]* \S+ STATE_V2_ESTABLISHED_IKE_SA', text):
        peers.add("backup" if match.group(1).endswith("-backup") else "primary")
    return peers


def alerts(lab):
    text = lab["salt-master"].run(["cat", ALERTS]).stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def endpoint_ready(lab):
    slices = saltstack.salt(lab, "vpn-gw1", "k8s.list_endpointslices", "postgres", "default",
                            f"kubeconfig={KUBECONFIG}")["vpn-gw1"]
    return {a: (e.get("conditions") or {}).get("ready")
            for s in slices for e in s.get("endpoints") or [] for a in e["addresses"]}


def memory(lab):
    return saltstack.salt(lab, "vpn-gw1", "libreswan.recovery_state", "remote-db")[
        "vpn-gw1"]["remote-db"]


def ipsec_starts(gw):
    log = gw.run(["journalctl", "-u", "ipsec.service", "-o", "cat", "--no-pager"]).stdout
    return log.count("Starting ipsec.service")


def wait_minion(lab):
    wait_for(lambda: saltstack.salt(lab, "vpn-gw1", "test.ping", timeout=5,
                                    check=False).get("vpn-gw1") is True, 60, "vpn-gw1 answers")


def state_changes(ret):
    return {state["__id__"]: state["changes"] for state in ret.values() if state["changes"]}


def predicted(ret):
    return {state["__id__"] for state in ret.values() if state["result"] is None}


@pytest.fixture(scope="module")
def lab(lab_factory):
    lab = lab_factory(["salt-master", "vpn-gw1", "remote-gw-primary", "remote-gw-backup"])
    master, gw = lab["salt-master"], lab["vpn-gw1"]
    for name in ("remote-gw-primary", "remote-gw-backup"):
        peer = lab[name]
        peer.put("/etc/ipsec.d/gw1.conf", REMOTE_CONN.format(name=name,
                                                             address=peer.address("wan")))
        peer.put("/etc/ipsec.d/gw1.secrets", f'@{name} @vpn-gw1 : PSK "{PSK}"\n', mode=0o600)
        peer.run(["systemctl", "start", "ipsec"], check=True)
    master.put("/etc/salt/master.d/reactor.conf",
               "reactor:\n  - 'salt/beacon/*/libreswan/*':\n    - salt://reactor/libreswan.sls\n")
    master.run(["systemd-run", "--unit", "webhook", "/usr/bin/python3",
                "/work/main/tests/monitoring/webhook_receiver.py", "198.18.1.2", "8080", ALERTS],
               check=True)
    # The Kubernetes API server for the EndpointSlice: loopback inside vpn-gw1.
    gw.run(["systemd-run", "--unit", "fake-apiserver", f"{lab.venv}/bin/python",
            f"{lab.repo}/tests/k8s/fake_apiserver.py"], check=True)
    path, _ = wait_for(lambda: re.search(r"KUBECONFIG=(\S+)", gw.run(
        ["journalctl", "-u", "fake-apiserver", "-o", "cat"]).stdout), 30, "fake API server")
    gw.run(["install", "-D", "-m", "0600", path.group(1), KUBECONFIG], check=True)
    gw.put("/etc/salt/minion.d/monitoring.conf", json.dumps(
        {"vpn_gateway": {"monitoring": dict(SETTINGS, webhook_url=WEBHOOK)}}))
    master.run(["systemctl", "restart", "salt-master"], check=True)
    gw.run(["systemctl", "restart", "salt-minion"], check=True)
    master.wait_port(8080, "198.18.1.2")
    wait_minion(lab)
    saltstack.salt(lab, "vpn-gw1", "saltutil.sync_all")
    applied = saltstack.salt(lab, "vpn-gw1", "state.apply", "vpn_gateway.ipsec", timeout=180)
    assert all(s["result"] for s in applied["vpn-gw1"].values()), applied
    saltstack.salt(lab, "vpn-gw1", "k8s.apply_service", "postgres", "default",
                   'ports=[{"name": "postgres", "port": 5432, "target_port": 6432}]',
                   f"kubeconfig={KUBECONFIG}")
    saltstack.salt(lab, "vpn-gw1", "k8s.apply_endpointslices", "postgres", "default",
                   f'endpoints=["{GATEWAY_ENDPOINT}"]', f"kubeconfig={KUBECONFIG}")
    wait_for(lambda: established(gw) == {"primary"}, 60, "the tunnel to the primary")
    return lab


def test_the_formula_predicts_applies_and_then_has_nothing_to_do(lab):
    def run(*args):
        return saltstack.salt(lab, "vpn-gw1", "state.apply", "vpn_gateway.monitoring", *args)[
            "vpn-gw1"]

    gw = lab["vpn-gw1"]
    gw.run(["rm", "-f", "/etc/logrotate.d/vpn-gateway"], check=True)
    dry = run("test=True")
    assert predicted(dry) == {"vpn_gateway_logrotate"}
    assert not gw.run(["test", "-e", "/etc/logrotate.d/vpn-gateway"]).ok
    assert set(state_changes(run())) == {"vpn_gateway_logrotate"}
    assert gw.run(["logrotate", "--debug", "--state", "/dev/null",
                   "/etc/logrotate.d/vpn-gateway"]).ok
    assert "/var/log/salt/minion" in gw.read("/etc/logrotate.d/vpn-gateway")
    assert state_changes(run()) == {} and predicted(run("test=True")) == set()


def test_the_beacon_and_the_metrics_run_from_pillar(lab):
    gw = lab["vpn-gw1"]
    beacon, _ = wait_for(lambda: saltstack.salt(lab, "vpn-gw1", "libreswan.monitoring_memory",
                                                "beacon")["vpn-gw1"].get("remote-db"),
                         30, "the beacon's first report")
    assert beacon["state"] == "up"
    text, _ = wait_for(lambda: gw.run(["cat", "/var/lib/prometheus/node-exporter/"
                                              "vpn_gateway.prom"]).stdout, 40, "metrics file")
    assert 'vpn_gateway_ike_sa_up{conn="remote-db"} 1' in text
    assert 'vpn_gateway_tunnel_active_peer{tunnel="remote-db",peer="primary"} 1' in text


def test_pluto_killed_is_recovered_without_a_person(lab):
    gw = lab["vpn-gw1"]
    before = memory(lab)["recoveries"]["success"]
    # SIGTERM: a clean exit, which systemd does not restart (Restart=on-failure).
    gw.run(["pkill", "-TERM", "-x", "pluto"], check=True)
    wait_for(lambda: not gw.run(["pgrep", "-x", "pluto"]).ok, 10, "pluto gone")
    _, took = wait_for(lambda: established(gw), 90, "the tunnel back after pluto was killed")
    print(f"pluto killed -> tunnel up: {took:.1f}s")
    state, _ = wait_for(lambda: (m := memory(lab))["recoveries"]["success"] > before and m, 30,
                        "the recovery recorded")
    assert [s["step"] for s in state["last"]["steps"]][-1] == "restart_service"
    assert gw.run(["systemctl", "is-active", "ipsec"]).stdout.strip() == "active"


def test_primary_down_fails_over_and_fails_back(lab):
    gw, primary = lab["vpn-gw1"], lab["remote-gw-primary"]
    lab["salt-master"].run(["truncate", "-s0", ALERTS], check=True)
    primary.run(["systemctl", "stop", "ipsec"], check=True)
    _, took = wait_for(lambda: established(gw) == {"backup"}, 120, "failover to the backup")
    print(f"primary stopped -> on the backup: {took:.1f}s")
    steps = [s["step"] for s in memory(lab)["last"]["steps"]]
    assert steps[-1] == "switch" and "restart_conn" in steps
    primary.run(["systemctl", "start", "ipsec"], check=True)
    _, took = wait_for(lambda: established(gw) == {"primary"}, 120, "failback to the primary")
    print(f"primary back -> failback: {took:.1f}s (failback_after {SETTINGS['failback_after']}s)")
    # (the failback's own "up" alert may fall in the rate window of the previous recovery's)
    sent = [a["body"] for a in alerts(lab)]
    assert any(a["conn"] == "remote-db" and a["state"] == "failover" and a["step"] == "switch"
               for a in sent), sent


def test_both_peers_down_alerts_once_per_window_without_a_restart_storm(lab):
    gw = lab["vpn-gw1"]
    window = SETTINGS["alerts"]["rate_window"]
    lab["salt-master"].run(["truncate", "-s0", ALERTS], check=True)
    starts, failures = ipsec_starts(gw), memory(lab)["recoveries"]["failure"]
    for name in ("remote-gw-primary", "remote-gw-backup"):
        lab[name].run(["systemctl", "stop", "ipsec"], check=True)
    wait_for(lambda: endpoint_ready(lab) == {GATEWAY_ENDPOINT: False}, 60,
             "endpoint not ready while no tunnel is up")
    time.sleep(2 * window + 5)
    down = [a for a in alerts(lab) if a["body"]["state"] == "down"]
    assert down, "no alert while both peers were down"
    assert all(a["body"]["step"] == "gave_up" and a["body"]["hostname"] == "vpn-gw1"
               for a in down)
    assert all(b["received"] - a["received"] >= window for a, b in zip(down, down[1:])), down
    assert all(a["path"] == f"/hooks/{WEBHOOK_TOKEN}" for a in down)
    ladders = memory(lab)["recoveries"]["failure"] - failures
    assert 1 <= ladders <= SETTINGS["budget"]["attempts"]
    # each ladder restarts ipsec once (plus a restart by systemd if pluto crashes)
    assert ipsec_starts(gw) - starts <= 2 * ladders
    assert endpoint_ready(lab) == {GATEWAY_ENDPOINT: False}

    for name in ("remote-gw-primary", "remote-gw-backup"):
        lab[name].run(["systemctl", "start", "ipsec"], check=True)
    saltstack.salt(lab, "vpn-gw1", "libreswan.reset_recovery", "remote-db")
    _, took = wait_for(lambda: established(gw), 120, "the tunnel back after both peers")
    print(f"both peers back -> tunnel up: {took:.1f}s")
    wait_for(lambda: endpoint_ready(lab) == {GATEWAY_ENDPOINT: True}, 60, "endpoint ready again")


def test_the_webhook_url_never_shows(lab):
    master, gw = lab["salt-master"], lab["vpn-gw1"]
    shown = master.run(["salt", "--out=json", "vpn-gw1", "libreswan.monitoring_settings"])
    assert '"holddown": 2' in shown.stdout and WEBHOOK_TOKEN not in shown.stdout
    # grep exits 1 when nothing matches: the job cache, the logs, the monitoring's memory
    for host, paths in ((master, ["/var/cache/salt/master", "/var/log/salt"]),
                        (gw, ["/var/cache/salt/minion", "/var/log/salt", "/var/lib/vpn-gateway"])):
        found = host.run(["grep", "-r", "-a", "-l", WEBHOOK_TOKEN, *paths])
        assert found.returncode == 1, (host.name, found.stdout)
