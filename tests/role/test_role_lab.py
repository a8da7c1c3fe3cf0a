"""The whole gateway role from a real salt-master on two gateways, with pillar
served from Git: test=True predicts the first run exactly, the first run
converges, the second changes nothing, and a pillar commit (a new Kubernetes
node) changes exactly the firewall rules for that node. Tests run in file
order and share one lab."""
import pytest

from lab import role, saltstack
from lab.role import GATEWAYS

pytestmark = pytest.mark.lab

NEW_NODE = "198.18.2.38"
# The pack's own states (salt/_states): their test=True changes are compared whole.
PACK_STATES = {"libreswan", "pgbouncer", "firewalld", "k8s"}


@pytest.fixture(scope="module")
def lab(lab_factory):
    lab = lab_factory(role.HOSTS)
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


def test_test_mode_predicts_the_first_run_and_the_second_run_changes_nothing(lab):
    # The gateways are fresh hosts: test=True must render and predict before
    # any of the role's packages is installed, and touch nothing.
    for gateway in GATEWAYS:
        assert not lab[gateway].run(["dpkg-query", "-W", "libreswan"]).ok
    dry = highstate(lab, test=True)
    prediction = predicted(dry)
    assert all(prediction.values()), prediction
    for gateway in GATEWAYS:
        assert not lab[gateway].run(["dpkg-query", "-W", "libreswan"]).ok
        assert "libreswan_package" in prediction[gateway]
    first = highstate(lab)
    assert changed(first) == prediction
    # exactly: each of the pack's states changed what test=True said it would
    assert pack_changes(first) == pack_changes(dry)
    second = highstate(lab)
    assert changed(second) == {g: [] for g in GATEWAYS}
    assert predicted(highstate(lab, test=True)) == {g: [] for g in GATEWAYS}


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
        added = rules["runtime"]["add"]
        assert rules == {"runtime": {"add": added}, "permanent": {"add": added}}
        # the node's two rules: the pooler port and the node exporter port
        assert len(added) == 2 and all(f'"{NEW_NODE}' in r for r in added), rules
        listed = lab[gateway].run(["firewall-cmd", "--zone=public", "--list-rich-rules"],
                                  check=True).stdout
        assert sum(NEW_NODE in line for line in listed.splitlines()) == len(added)
    assert changed(highstate(lab)) == {g: [] for g in GATEWAYS}
