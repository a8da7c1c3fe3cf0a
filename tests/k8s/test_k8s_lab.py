"""The k8s formula through a real salt-master: the pillar picks the minion that applies it.

The fake API server runs inside the salt-master host (on its lab address
198.18.1.2, as a transient systemd unit); vpn-gw1 holds the kubeconfig and is
the pillar's vpn_gateway:kubernetes:minion, vpn-gw2 renders a no-op. Tests run
in file order and share one lab.
"""
import json
import time

import pytest

from lab import kubeapi, saltstack
from lab.kubeapi import kubectl

pytestmark = pytest.mark.lab

HOSTS = ["salt-master", "vpn-gw1", "vpn-gw2"]
KUBECONFIG = "/etc/vpn-gateway/kubeconfig"  # as in pillar/vpn_gateway/kubernetes.sls


GW1, GW2 = "198.18.2.11", "198.18.2.12"  # as in the example pillar's readiness:gateways
DEADLINE = 20  # vpn_gateway:kubernetes:readiness:deadline of the example pillar
HEARTBEAT = 5  # the schedules' period (monitoring.sls)


@pytest.fixture(scope="module")
def lab(lab_factory):
    lab = lab_factory(HOSTS)
    lab["vpn-gw1"].put(KUBECONFIG, kubeapi.start(lab), mode=0o600)
    saltstack.salt(lab, "vpn-gw*", "saltutil.sync_all")
    # This lab's gateways carry no tunnel (no remote peers): serving is the heartbeat
    # alone here; require_tunnel (the production default) is unit-tested.
    master = lab["salt-master"]
    master.run(["rm", "-rf", "/root/pillar-read"], check=True)
    master.run(["git", "clone", "-q", saltstack.PILLAR_REPO, "/root/pillar-read"], check=True)
    current = master.read("/root/pillar-read/vpn_gateway/kubernetes.sls")
    assert "require_tunnel: true" in current
    saltstack.commit_pillar(lab, "vpn_gateway/kubernetes.sls",
                            current.replace("require_tunnel: true", "require_tunnel: false"),
                            "kubernetes: no tunnels in this lab")
    saltstack.salt(lab, "vpn-gw*", "saltutil.refresh_pillar", "wait=True")
    return lab


def apply(lab, test=False):
    """state.apply vpn_gateway.k8s on both gateways -> {minion: {state id: return}}, the
    host's recovery lock states left out (every sub-state holds it; they change nothing
    and are tested in tests/monitoring and tests/role)."""
    returns = saltstack.salt(lab, "vpn-gw*", "state.apply", "vpn_gateway.k8s",
                             *(["test=True"] if test else []))
    assert set(returns) == {"vpn-gw1", "vpn-gw2"}, returns
    for minion, ret in returns.items():
        assert isinstance(ret, dict), (minion, ret)
    return {minion: {v["__id__"]: v for v in ret.values()
                     if v.get("__sls__") != "vpn_gateway.recovery_lock"}
            for minion, ret in returns.items()}


def objects(lab):
    if not kubeapi.KUBECTL.exists():
        pytest.skip(kubeapi.KUBECTL_MISSING)
    listed = kubectl(lab, "get", "services,endpointslices", "-n", "databases", "-o", "json")
    return json.loads(listed)["items"]


def test_test_mode_predicts_on_the_chosen_minion_only(lab):
    returns = apply(lab, test=True)
    gw1 = returns["vpn-gw1"]
    assert [gw1[s]["result"] for s in ("vpn_gateway_k8s_service",
                                       "vpn_gateway_k8s_endpointslices")] == [None, None]
    assert "Service databases/postgres" in gw1["vpn_gateway_k8s_service"]["changes"]
    [elsewhere] = returns["vpn-gw2"].values()
    assert elsewhere["result"] is True and "vpn-gw1" in elsewhere["comment"]
    assert objects(lab) == []


def test_apply_creates_the_service_and_slice_then_nothing_changes(lab):
    returns = apply(lab)
    assert all(r["result"] is True for r in returns["vpn-gw1"].values()), returns["vpn-gw1"]
    items = {o["kind"]: o for o in objects(lab)}
    service, endpointslice = items["Service"], items["EndpointSlice"]
    assert "selector" not in service["spec"]
    assert service["spec"]["ports"][0]["port"] == 5432
    assert [e["addresses"] for e in endpointslice["endpoints"]] == [[GW1], [GW2]]
    [owner] = endpointslice["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "Service", "postgres", service["metadata"]["uid"])
    assert endpointslice["ports"][0]["name"] == service["spec"]["ports"][0]["name"]
    assert endpointslice["ports"][0]["port"] == service["spec"]["ports"][0]["targetPort"]
    versions = sorted(o["metadata"]["resourceVersion"] for o in items.values())

    again = apply(lab)
    assert all(r["result"] is True and r["changes"] == {} for r in again["vpn-gw1"].values())
    assert sorted(o["metadata"]["resourceVersion"] for o in objects(lab)) == versions


def ready(lab):
    """{address: conditions.ready} of the Service's slices, as the API server has them."""
    return {a: (e.get("conditions") or {}).get("ready")
            for o in objects(lab) if o["kind"] == "EndpointSlice"
            for e in o.get("endpoints") or [] for a in e["addresses"]}


def watch(lab, until, timeout):
    """Poll ready() each second until ``until(seen)``; (seen, the samples, seconds taken)."""
    started, samples = time.monotonic(), []
    while True:
        seen = ready(lab)
        samples.append(seen)
        if until(seen) or time.monotonic() - started > timeout:
            return seen, samples, time.monotonic() - started
        time.sleep(1)


def stopped_then_started(lab, what, stop, start):
    """vpn-gw2 stops (``stop()``): its endpoint goes not ready within the deadline
    while vpn-gw1's stays ready; ``start()``: it comes back, vpn-gw1's still ready."""
    seen, _, _ = watch(lab, lambda r: r == {GW1: True, GW2: True}, 60)
    assert seen == {GW1: True, GW2: True}
    stop()
    try:
        seen, samples, took = watch(lab, lambda r: r.get(GW2) is False,
                                    DEADLINE + 4 * HEARTBEAT + 20)
        assert seen.get(GW2) is False, (what, samples[-3:])
        # the deadline, plus one heartbeat period before the last beat was sent and one
        # for the observer's next run, plus the lab's slowness
        assert took <= DEADLINE + 2 * HEARTBEAT + 15, (what, took)
        assert all(s.get(GW1) is True for s in samples), (what, samples)
        print(f"vpn-gw2 not ready {took:.0f}s after its {what} stopped")
    finally:
        start()
    seen, samples, took = watch(lab, lambda r: r.get(GW2) is True, 90)
    assert seen == {GW1: True, GW2: True}, (what, samples[-3:])
    assert all(s.get(GW1) is True for s in samples), (what, samples)
    print(f"vpn-gw2 back ready {took:.0f}s after its {what} started")


@pytest.mark.platforms("debian13")
def test_a_gateway_whose_host_or_minion_stops_is_set_not_ready_from_outside_and_comes_back(lab):
    """Readiness decided from outside (issue 16): vpn-gw2's host is powered off (as a
    cloud host is stopped: no shutdown, no goodbye), then, once it is back, only its
    minion stops (its host, the tunnel and the pooler keep running: only its heartbeat
    ends). Each time vpn-gw1, the minion with the kubeconfig, sets vpn-gw2's endpoint
    not ready within the deadline while its own stays ready; vpn-gw2 starts again (its
    host boots, its salt-minion reconnects with the key the master has) and its
    endpoint comes back."""
    gw2 = lab["vpn-gw2"]
    stopped_then_started(lab, "host", lambda: lab.power_off("vpn-gw2"),
                         lambda: lab.power_on("vpn-gw2"))
    stopped_then_started(
        lab, "minion", lambda: gw2.run(["systemctl", "stop", "salt-minion"], check=True),
        lambda: gw2.run(["systemctl", "start", "salt-minion"], check=True))
