"""The whole gateway role from a real salt-master on two gateways, with pillar
served from Git: test=True predicts the first run exactly, the first run
converges, the second changes nothing, no secret of that full apply is in any
journal, log, cache, outputter's text or program's argv, a pillar commit (a new
Kubernetes node) changes exactly the firewall rules for that node, and a PSK
rotation committed as ciphertext brings the tunnel up with the new key, and
the cluster's Prometheus scrapes every documented series from both gateways'
node_exporter. Salt runs at debug level throughout, the pillar's schedules
off. Tests run in file order and share one lab."""
import json
import re
import secrets
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from leak_helpers import (DEBUG, DEBUG_LINE, MINION_DATA_CACHE, STATE_ID, ExecTrace, find_leaks,
                          local_run, needles, pillar_secrets, stored)

from repo_modules import load

from lab import peers, pillar_gpg, postgres, role, saltstack
from lab.lab import SLOWDOWN
from lab.role import GATEWAYS

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]

NEW_NODE = "198.18.2.38"
# The pack's own states (salt/_states): their test=True changes are compared whole.
PACK_STATES = {"libreswan", "pgbouncer", "firewalld", "k8s"}


# What the first test left for the leak test: {"traces"|"consoles": {gateway: file}}.
FULL_APPLY = {}
OUTPUTTERS = ("json", "yaml", "nested", "highstate")


@pytest.fixture(scope="module")
def lab(lab_factory):
    # the leak test reads debug logs; the schedules are the monitoring and k8s labs' area
    lab = lab_factory(role.HOSTS, salt_config=DEBUG, pillar=saltstack.QUIET_SCHEDULES)
    role.prepare(lab)
    return lab


def highstate(lab, test=False):
    """The role on both gateways; no state may fail."""
    returns = role.highstate(lab, test=test)
    assert sorted(returns) == GATEWAYS, returns
    for minion, states in returns.items():
        failed = {i: r["comment"] for i, r in states.items() if r["result"] is False}
        assert not failed, (minion, failed)
    return returns


def predicted(returns):
    return {m: sorted(i for i, r in states.items() if r["result"] is None)
            for m, states in returns.items()}


def changed(returns):
    return {m: sorted(i for i, r in states.items() if r["changes"])
            for m, states in returns.items()}


def pack_changes(returns):
    """{minion: {state id: changes}} of the pack's own states that change (or would)."""
    return {m: {i: r["changes"] for i, r in states.items()
                if r["__state__"] in PACK_STATES and (r["changes"] or r["result"] is None)}
            for m, states in returns.items()}


def test_test_mode_predicts_the_first_run_and_the_second_run_changes_nothing(lab, tmp_path):
    # The gateways are fresh hosts: test=True must render and predict before
    # any of the role's packages is installed, and touch nothing.
    for gateway in GATEWAYS:
        assert not lab[gateway].run(["dpkg-query", "-W", "libreswan"]).ok
    # Every program the minions start in the dry run and the full apply, for the leak test.
    with ExecTrace([lab[g] for g in GATEWAYS], tmp_path, [str(lab.venv / "bin/salt-minion")],
                   lambda host: saltstack.answers(lab, host.name, timeout=15)) as trace:
        dry = highstate(lab, test=True)
        prediction = predicted(dry)
        assert all(prediction.values()), prediction
        for gateway in GATEWAYS:
            assert not lab[gateway].run(["dpkg-query", "-W", "libreswan"]).ok
            assert "libreswan_package" in prediction[gateway]
        first = highstate(lab)
    FULL_APPLY["traces"], FULL_APPLY["consoles"] = trace.files, trace.consoles
    assert changed(first) == prediction
    # exactly: each of the pack's states changed what test=True said it would
    assert pack_changes(first) == pack_changes(dry)
    second = highstate(lab)
    assert changed(second) == {g: [] for g in GATEWAYS}
    assert predicted(highstate(lab, test=True)) == {g: [] for g in GATEWAYS}


def test_no_secret_of_the_full_apply_is_in_a_journal_log_cache_output_or_argv(lab):
    """Issue 14: after the dry run and the full apply above (Salt at debug level,
    every secret set: each pillar secret, the kubeconfig's token), each secret's
    plaintext is in none of: every host's journal (every field), the Salt hosts'
    /var/log, the master's cache (jobs and the rest) and the minions' caches, the
    two runs' returns through each outputter (the job cache, jobs.lookup_jid
    --out), the argv of each program the minions started (strace, above). Each
    sink must hold what it should (a canary: debug lines, the runs' state ids,
    an execve of ipsec and pgbouncer), and a grep error (a missing path) fails."""
    assert FULL_APPLY.get("traces"), "the first test did not record the full apply"
    master = lab["salt-master"]
    plain = pillar_secrets(REPO / "pillar")  # the tree the lab's pillar repository holds
    kubeconfig = yaml.safe_load(lab[role.KUBERNETES_MINION].read(role.KUBECONFIG))
    for user in kubeconfig["users"]:
        plain[f"kubeconfig token ({user['name']})"] = user["user"]["token"]
    wanted = needles(plain)
    jobs = json.loads(master.run(["salt-run", "--out=json", "jobs.list_jobs",
                                  "search_function=state.apply"], check=True).stdout)
    dry_jid, first_jid = sorted(jobs)[:2]  # the first test's dry run, then its full apply
    assert jobs[dry_jid]["Arguments"] == [{"__kwarg__": True, "test": True}], jobs[dry_jid]
    assert jobs[first_jid]["Arguments"] == [], jobs[first_jid]

    checks = stored(lab, role.HOSTS)
    for gateway in GATEWAYS:
        checks.append((local_run, f"{gateway} argv (strace execve)",
                       ['execve("/usr/sbin/ipsec", ', 'execve("/usr/sbin/pgbouncer", '],
                       {"paths": [str(FULL_APPLY["traces"][gateway])]}))
        # the traced minion's console: what the unit's sends to the journal
        checks.append((local_run, f"{gateway} traced minion's console", [DEBUG_LINE],
                       {"paths": [str(FULL_APPLY["consoles"][gateway])]}))
    for jid, run in ((dry_jid, "dry run"), (first_jid, "full apply")):
        for out in OUTPUTTERS:
            checks.append((master.run, f"{run} --out={out}", [STATE_ID],
                           {"command": ["salt-run", "jobs.lookup_jid", jid, f"--out={out}"]}))
    assert len(checks) == len(role.HOSTS) + 2 * 3 + 1 + 3 * len(GATEWAYS) + 2 * len(OUTPUTTERS)
    leaks = find_leaks(checks, wanted)
    assert not leaks, leaks


# the same Git, master and rule derivation on debian12; firewalld 1.3 is tests/firewalld's
@pytest.mark.platforms("debian13")
def test_a_new_kubernetes_node_in_git_changes_exactly_its_firewall_rules(lab):
    master = lab["salt-master"]
    master.run(["rm", "-rf", "/root/pillar-read"], check=True)
    master.run(["git", "clone", "-q", saltstack.PILLAR_REPO, "/root/pillar-read"], check=True)
    current = master.read("/root/pillar-read/vpn_gateway/kubernetes.sls")
    anchor = "      - 198.18.2.37\n"
    assert anchor in current
    saltstack.commit_pillar(lab, "vpn_gateway/kubernetes.sls",
                            current.replace(anchor, anchor + f"      - {NEW_NODE}\n"),
                            "kubernetes: add node 198.18.2.38")
    saltstack.salt(lab, "vpn-gw*", "saltutil.refresh_pillar", "wait=True")

    prediction = highstate(lab, test=True)
    assert predicted(prediction) == {g: ["firewalld-gateway-rules"] for g in GATEWAYS}
    applied = highstate(lab)
    assert changed(applied) == {g: ["firewalld-gateway-rules"] for g in GATEWAYS}
    for gateway in GATEWAYS:
        rules = applied[gateway]["firewalld-gateway-rules"]["changes"]
        assert rules == prediction[gateway]["firewalld-gateway-rules"]["changes"]
        # the node is one entry of the nodes' ipset, the rich rules stay as they are
        assert rules == {"ipsets": {"vgw-nodes": {"runtime": {"add": [NEW_NODE]},
                                                  "permanent": {"add": [NEW_NODE]}}}}, rules
        for side in ([], ["--permanent"]):
            listed = lab[gateway].run(["firewall-cmd", *side, "--ipset=vgw-nodes",
                                       "--get-entries"], check=True).stdout
            assert NEW_NODE in listed.split(), listed
    assert changed(highstate(lab)) == {g: [] for g in GATEWAYS}


def test_a_psk_rotation_pushed_to_git_as_ciphertext_brings_the_tunnel_up_and_leaks_nowhere(lab):
    """The operator's rotation (docs/pillar.md): encrypt the new PSK for the master's
    key with scripts/encrypt-secret (stdin), commit it, apply. The master decrypts it
    (gpg renderer), the tunnel is made again with it, and no plaintext secret is in any
    blob of the pillar repository's history, the job cache, a log or a journal."""
    master = lab["salt-master"]
    new_psk = "rotated-" + secrets.token_hex(20)
    ciphertext = subprocess.run(
        [str(REPO / "scripts/encrypt-secret"), str(pillar_gpg.PUBLIC_KEY), "--key", "psk",
         "--indent", "4"], input=new_psk + "\n", capture_output=True, text=True, check=True,
        timeout=60).stdout
    master.run(["rm", "-rf", "/root/pillar-read"], check=True)
    master.run(["git", "clone", "-q", saltstack.PILLAR_REPO, "/root/pillar-read"], check=True)
    current = master.read("/root/pillar-read/vpn_gateway/tunnel.sls")
    block = re.search(rf"^    psk: \|\n(?:      .*\n|\n)*?      {pillar_gpg.END}\n", current, re.M)
    assert block, "tunnel.sls: no encrypted psk block"
    saltstack.commit_pillar(lab, "vpn_gateway/tunnel.sls",
                            current.replace(block.group(), ciphertext), "tunnel: rotate the PSK")
    # The remote side rotates too (another team's gateways, in production).
    peers.configure(lab, psk=new_psk)
    for remote in ("remote-gw-primary", "remote-gw-backup"):
        lab[remote].run(["ipsec", "whack", "--rereadsecrets"], check=True)
    before = {g: ike_serials(lab[g]) for g in GATEWAYS}
    saltstack.salt(lab, "vpn-gw*", "saltutil.refresh_pillar", "wait=True")
    applied = highstate(lab)
    for gateway in GATEWAYS:
        tunnel = next(r for r in applied[gateway].values() if r["__state__"] == "libreswan"
                      and "psk" in r["changes"])
        assert tunnel["changes"]["psk"] == "changed"
        assert wait_new_ike_sa(lab[gateway], before[gateway]), f"{gateway}: no new IKE SA"

    # every blob of every commit: the files' text as each version held it
    history = master.run(["sh", "-c", f"cd {saltstack.PILLAR_REPO} && git rev-list --all "
                          "--objects | cut -d' ' -f1 | git cat-file --batch-check="
                          "'%(objecttype) %(objectname)' | sed -n 's/^blob //p' "
                          "| git cat-file --batch"], check=True).stdout
    plaintexts = [new_psk, peers.EXAMPLE_PSK, postgres.PASSWORD, "lab-admin-password",
                  "lab-stats-password", "hooks/lab-only"]
    assert pillar_gpg.BEGIN in history
    assert [s for s in plaintexts if s in history] == []
    leaks = find_leaks(stored(lab, role.HOSTS), {"the new PSK": [new_psk]})
    assert not leaks, leaks
    # The master's own caches hold it only where docs/pillar.md says (minion data cache).
    cached = master.run(["grep", "-r", "-a", "-l", "-F", "-e", new_psk,
                         "/var/cache/salt/master"]).stdout.split()
    assert cached and all(path.startswith(MINION_DATA_CACHE) for path in cached), cached


# The cluster's Prometheus (docs/monitoring.md, "Scraping"): on a Kubernetes node, the only
# source vpn_gateway.firewall lets reach node_exporter's port.
PROMETHEUS_HOST, PROMETHEUS = "k8s-node1", "http://198.18.2.31:9090"
NODE_EXPORTERS = {"vpn-gw1": "198.18.2.11:9100", "vpn-gw2": "198.18.2.12:9100"}
PROMETHEUS_CONFIG = """global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [%s/salt/states/vpn_gateway/files/prometheus/vpn-gateway.rules.yml]
scrape_configs:
  - job_name: vpn-gateway
    static_configs: [{targets: %s}]
"""
FETCH = ("import sys, urllib.request; "
         "print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())")


def prometheus_api(lab, path):
    """GET Prometheus' HTTP API on the lab network: its data."""
    body = json.loads(lab[PROMETHEUS_HOST].run(["python3", "-c", FETCH, PROMETHEUS + path],
                                               check=True).stdout)
    assert body["status"] == "success", body
    return body["data"]


def series_of(text):
    """{(name, ((label, value), ...))} of a textfile's samples ("" is no label)."""
    found = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, labels = line.split(" ")[0].partition("{")
            found.add((name, tuple(sorted((k, v) for k, v in re.findall(
                r'(\w+)="((?:[^"\\]|\\.)*)"', labels) if v))))
    return found


def test_the_clusters_prometheus_scrapes_every_documented_series_from_both_gateways(lab):
    """Issue 17, a real scrape where production has it: the role installed and started
    Debian's node_exporter on both gateways (vpn_gateway:monitoring:metrics:node_exporter,
    set in the example pillar); Debian's prometheus on k8s-node1 scrapes them with the
    shipped alert rules loaded. Every series of docs/monitoring.md's metric table (the
    unit tier keeps it equal to vpn_metrics.METRICS) comes back through Prometheus' HTTP
    API for each gateway, PgBouncer's per pool once a pod has queried through it, and so
    does each sample of each gateway's textfile. From the management network, outside
    the Kubernetes nodes, node_exporter does not answer (vpn_gateway.firewall)."""
    wanted = set(load("salt/_modules/vpn_metrics.py").METRICS)
    postgres.start(lab["remote-db"])
    answer = role.select_one(lab)  # a pod's query: a pool on vpn-gw1's PgBouncer
    assert answer.ok and answer.stdout.strip() == "1", answer
    saltstack.salt(lab, "vpn-gw*", "vpn_metrics.write")
    node = lab[PROMETHEUS_HOST]
    node.put("/etc/prometheus/lab.yml", PROMETHEUS_CONFIG % (
        lab.repo, json.dumps(sorted(NODE_EXPORTERS.values()))))
    node.run(["systemd-run", "--unit", "prometheus-lab", "/usr/bin/prometheus",
              "--config.file=/etc/prometheus/lab.yml", "--web.listen-address=198.18.2.31:9090",
              "--storage.tsdb.path=/var/lib/prometheus/lab"], check=True)
    try:
        node.wait_port(9090, "198.18.2.31", timeout=60)
        query = "/api/v1/query?query=%7B__name__%3D~%22vpn_gateway_.%2B%22%7D"
        deadline = time.monotonic() + 60 * SLOWDOWN
        while True:
            result = prometheus_api(lab, query)["result"]
            names = {(r["metric"]["instance"], r["metric"]["__name__"]) for r in result}
            missing = {(i, n) for i in NODE_EXPORTERS.values() for n in wanted} - names
            # vpn-gw2's PgBouncer has had no client: no pool, no per-pool series
            missing = {(i, n) for i, n in missing if not (
                i == NODE_EXPORTERS["vpn-gw2"] and n.startswith("vpn_gateway_pgbouncer_pools_"))}
            if not missing:
                break
            assert time.monotonic() < deadline, f"not through Prometheus: {sorted(missing)}"
            time.sleep(1)
        for gateway, instance in NODE_EXPORTERS.items():
            scraped = {(r["metric"]["__name__"], tuple(sorted(
                (k, v) for k, v in r["metric"].items()
                if k not in ("__name__", "instance", "job"))))
                for r in result if r["metric"]["instance"] == instance}
            written = series_of(lab[gateway].read(
                "/var/lib/prometheus/node-exporter/vpn_gateway.prom"))
            assert written - scraped == set(), (gateway, written - scraped)
        pools = {r["metric"]["database"] for r in result if r["metric"]["__name__"]
                 == "vpn_gateway_pgbouncer_pools_client_active_connections"}
        assert role.POOLER[2] in pools, pools
        rules = prometheus_api(lab, "/api/v1/rules")["groups"]
        loaded = {r["name"]: r["health"] for g in rules for r in g["rules"]}
        assert len(loaded) == 6 and set(loaded.values()) == {"ok"}, loaded
    finally:
        node.run(["systemctl", "stop", "prometheus-lab"])
    # the management network is not a Kubernetes node: no answer from node_exporter
    refused = lab["salt-master"].run(["python3", "-c", FETCH, "http://198.18.1.11:9100/metrics"])
    assert not refused.ok and "urlopen error" in refused.stderr, refused


def ike_serials(host):
    states = host.run(["ipsec", "whack", "--showstates"], check=True).stdout
    return set(re.findall(r'#(\d+): "remote-db[/"].*ESTABLISHED_IKE_SA', states))


def wait_new_ike_sa(host, old, timeout=60):
    deadline = time.monotonic() + timeout * SLOWDOWN
    while time.monotonic() < deadline:
        if ike_serials(host) - old:
            return True
        time.sleep(1)
    return False


@pytest.mark.platforms("debian13")  # a render error: no package of the platform is involved
def test_a_secret_in_the_wrong_shape_fails_the_render_and_is_shown_nowhere(lab):
    """Schema errors name the key and the shape, never the value under a secret path:
    the error travels to the master's job cache and both sides' logs. The wrong
    shapes come from Git as an operator's mistake would (after the rotation test,
    whose history check they would fail: they are plaintext)."""
    values = {"password": "wrong-shape-" + secrets.token_hex(8),
              "psk": "wrong-shape-" + secrets.token_hex(20),
              "webhook": "http://198.18.0.99:8080/hooks/wrong-shape-" + secrets.token_hex(8)}
    wrong = {"vpn_gateway": {
        "pooler": {"users": {"app": values["password"]}},  # the password right under the user
        "tunnel": {"psk": [values["psk"]]},
        "monitoring": {"up_when": "ike_sa", "webhook_url": {"url": values["webhook"]}}}}
    good = {**saltstack.LAB_PILLAR, **lab.pillar}  # what the lab's lab.sls held
    saltstack.commit_pillar(lab, "lab.sls", yaml.safe_dump(wrong), "lab: secrets, wrong shapes")
    try:
        saltstack.salt(lab, "vpn-gw1", "saltutil.refresh_pillar", "wait=True")
        returns = saltstack.salt(lab, "vpn-gw1", "state.apply", "test=True")["vpn-gw1"]
    finally:
        saltstack.commit_pillar(lab, "lab.sls", yaml.safe_dump(good), "lab: back to good")
        saltstack.salt(lab, "vpn-gw1", "saltutil.refresh_pillar", "wait=True")
    text = json.dumps(returns)
    for key in ("pooler:users:app", "tunnel:psk", "monitoring:webhook_url"):
        assert f"pillar key vpn_gateway:{key}: " in text, (key, returns)
    assert "wrong-shape-" not in text
    leaks = find_leaks(stored(lab, ["salt-master", *GATEWAYS]),
                       {"a wrong-shaped secret": ["wrong-shape-"]})
    assert not leaks, leaks
