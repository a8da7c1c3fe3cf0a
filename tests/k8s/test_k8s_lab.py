"""The k8s formula through a real salt-master: the pillar picks the minion that applies it.

The fake API server runs inside the salt-master host (on its lab address
198.18.1.2, as a transient systemd unit); vpn-gw1 holds the kubeconfig and is
the pillar's vpn_gateway:kubernetes:minion, vpn-gw2 renders a no-op. Tests run
in file order and share one lab.
"""
import contextlib
import datetime
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


# --- issue 16 through the master: conditions, validation, dry runs, retries ---------------
# Each test starts from the Service and its slice applied with both gateways ready, changes
# the pillar through the lab's Git pillar repository as an operator would, and leaves the
# pillar as it found it. The API server's audit log (lab/kubeapi.AUDIT_LOG) shows what
# reached it; its knobs (kubeapi.knobs) play a cluster under load or with webhooks.

PILLAR = "vpn_gateway/kubernetes.sls"
SLICE = "EndpointSlice databases/postgres-ipv4-0"
UP = {"ready": True, "serving": True, "terminating": False}
DOWN = {"ready": False, "serving": False, "terminating": False}
DRAINED = {"ready": False, "serving": True, "terminating": True}  # serving: its heartbeat
WRITES = ("create", "update", "patch", "delete", "deletecollection")


def conditions(lab):
    """{address: conditions} of the Service's slices, as the API server has them."""
    return {a: e.get("conditions") for o in objects(lab) if o["kind"] == "EndpointSlice"
            for e in o.get("endpoints") or [] for a in e["addresses"]}


def versions(lab):
    return {(o["kind"], o["metadata"]["name"]): o["metadata"]["resourceVersion"]
            for o in objects(lab)}


def baseline(lab):
    """Both endpoints applied and ready (a test before may have failed half way)."""
    if conditions(lab) != {GW1: UP, GW2: UP}:
        apply(lab)
    seen, samples, _ = watch(lab, lambda r: r == {GW1: True, GW2: True}, 60)
    assert conditions(lab) == {GW1: UP, GW2: UP}, samples[-3:]


@contextlib.contextmanager
def pillar_edited(lab, message, *replacements):
    """The kubernetes pillar with each (old, new) text replaced, committed to the lab's
    pillar repository and refreshed on the gateways; the text before it back at the end."""
    master = lab["salt-master"]
    original = master.run(["git", "--git-dir", saltstack.PILLAR_REPO, "show", f"main:{PILLAR}"],
                          check=True).stdout
    edited = original
    for old, new in replacements:
        assert edited.count(old) == 1, (old, edited)
        edited = edited.replace(old, new)
    saltstack.commit_pillar(lab, PILLAR, edited, message)
    saltstack.salt(lab, "vpn-gw*", "saltutil.refresh_pillar", "wait=True")
    try:
        yield
    finally:
        saltstack.commit_pillar(lab, PILLAR, original, f"back from: {message}")
        saltstack.salt(lab, "vpn-gw*", "saltutil.refresh_pillar", "wait=True")


def writes(events, resource=None):
    return [e for e in events if e["verb"] in WRITES
            and (resource is None or e.get("objectRef", {}).get("resource") == resource)]


@pytest.mark.platforms("debian13")
def test_a_gateway_drained_through_pillar_is_terminating_and_never_ready_until_undrained(lab):
    """Conditions (issue 16): an operator drains vpn-gw2 for maintenance (its address in
    vpn_gateway:kubernetes:draining). test=True predicts exactly terminating and not
    ready for it alone and writes nothing; the run writes that; the readiness check
    (vpn-gw1's schedule) still sees vpn-gw2 serving (its heartbeat) but never makes a
    terminating endpoint ready; out of draining, the next run makes it ready again."""
    baseline(lab)
    before = versions(lab)
    drained = {SLICE: {"endpoints": {GW2: {"ready": {"old": True, "new": False},
                                           "terminating": {"old": False, "new": True}}}}}
    with pillar_edited(lab, "kubernetes: drain vpn-gw2", ("    draining: []",
                                                          f"    draining: [{GW2}]")):
        predicted = apply(lab, test=True)["vpn-gw1"]
        assert predicted["vpn_gateway_k8s_service"]["result"] is True, predicted
        slices = predicted["vpn_gateway_k8s_endpointslices"]
        assert (slices["result"], slices["changes"]) == (None, drained), slices
        assert versions(lab) == before

        applied = apply(lab)["vpn-gw1"]
        assert all(r["result"] is True for r in applied.values()), applied
        assert applied["vpn_gateway_k8s_endpointslices"]["changes"] == drained
        assert conditions(lab) == {GW1: UP, GW2: DRAINED}
        observed = saltstack.salt(lab, "vpn-gw1", "k8s.sync_readiness")["vpn-gw1"]
        assert observed["gateways"]["vpn-gw2"]["serving"] is True, observed
        assert observed["changes"] == {}, observed
        assert conditions(lab) == {GW1: UP, GW2: DRAINED}
    undrained = apply(lab)["vpn-gw1"]["vpn_gateway_k8s_endpointslices"]
    assert undrained["result"] is True, undrained
    assert undrained["changes"] == {SLICE: {"endpoints": {GW2: {
        "ready": {"old": False, "new": True}, "terminating": {"old": True, "new": False}}}}}
    assert conditions(lab) == {GW1: UP, GW2: UP}


@pytest.mark.platforms("debian13")
def test_serving_follows_the_tunnel_health_each_gateway_reports(lab):
    """Conditions (issue 16): with require_tunnel (the production default) a fresh
    heartbeat is not enough: the gateway's tunnel must be carried. This lab's gateways
    have no tunnel up (no peers, no pluto: their heartbeats say remote-db is down), so
    once the pillar asks for it both endpoints go not serving, not ready, while both
    heartbeats stay fresh; without it again they come back. (A tunnel that comes up is
    the monitoring lab's and the unit tests'.)"""
    baseline(lab)
    with pillar_edited(lab, "kubernetes: serving needs the tunnel",
                       ("require_tunnel: false", "require_tunnel: true")):
        seen, samples, took = watch(lab, lambda r: r == {GW1: False, GW2: False},
                                    2 * HEARTBEAT + 20)
        assert seen == {GW1: False, GW2: False}, samples[-3:]
        print(f"both endpoints not serving {took:.0f}s after require_tunnel")
        assert conditions(lab) == {GW1: DOWN, GW2: DOWN}
        beats = saltstack.salt(lab, "vpn-gw1", "mine.get", "vpn-gw*",
                               "vpn_gateway_heartbeat")["vpn-gw1"]
        report = saltstack.salt(lab, "vpn-gw1", "k8s.sync_readiness")["vpn-gw1"]["gateways"]
        for minion in ("vpn-gw1", "vpn-gw2"):
            # the example pillar's tunnel, down: no pluto here (libreswan.health's verdict)
            assert beats[minion]["serving"] is False, beats
            assert beats[minion]["tunnels"] and set(beats[minion]["tunnels"].values()) == {
                "down"}, beats
            assert (report[minion]["fresh"], report[minion]["serving"]) == (True, False), report
    seen, samples, took = watch(lab, lambda r: r == {GW1: True, GW2: True}, 2 * HEARTBEAT + 20)
    assert seen == {GW1: True, GW2: True}, samples[-3:]
    assert conditions(lab) == {GW1: UP, GW2: UP}


@pytest.mark.platforms("debian13")
def test_what_the_api_server_refuses_is_refused_before_any_request_naming_the_pillar_key(lab):
    """Validation as the real server does it (issue 16), through the master: an
    IPv4-mapped address in vpn_gateway:kubernetes:gateway_addresses, two Service ports
    with the same port and protocol, a label key that is no qualified name. test=True
    and the real run give the same refusal, naming the key, and nothing reaches the
    API server but the Service's own dry run (which carries fieldValidation=Strict, as
    every apply does); nothing changes."""
    baseline(lab)
    before, mark = versions(lab), len(kubeapi.audit(lab))
    mapped = "::ffff:198.18.2.13"
    listed = f"      - {GW2}\n    # Drained"
    with pillar_edited(lab, "kubernetes: an IPv4-mapped address",
                       (listed, listed.replace("\n", f"\n      - '{mapped}'\n", 1))):
        runs = [apply(lab, test=test)["vpn-gw1"] for test in (True, False)]
    for ret in runs:
        assert ret["vpn_gateway_k8s_service"]["result"] is True, ret
        refused = ret["vpn_gateway_k8s_endpointslices"]
        assert (refused["result"], refused["changes"]) == (False, {}), refused
        assert refused["comment"] == (f"vpn_gateway:kubernetes:gateway_addresses: {mapped} is an "
                                      "IPv4-mapped IPv6 address; write it as 198.18.2.13")

    ports = [{"name": "postgres", "port": 5432, "target_port": 6432},
             {"name": "replica", "port": 5432, "target_port": 6433}]
    label = "Vpn-Gateway.Example/owner"
    high = {
        "duplicate_ports": {"k8s": ["service_present", {"name": "postgres"},
                                    {"namespace": "databases"}, {"ports": ports}]},
        "bad_label_key": {"k8s": ["service_present", {"name": "postgres"},
                                  {"namespace": "databases"}, {"ports": ports[:1]},
                                  {"labels": {label: "dba"}}]},
    }
    for state in high.values():
        state.update(__sls__="lab", __env__="base")
    for test in (True, False):
        ret = saltstack.salt(lab, "vpn-gw1", "state.high", json.dumps(high),
                             *(["test=True"] if test else []))["vpn-gw1"]
        comments = {v["__id__"]: v["comment"] for v in ret.values() if v["result"] is False}
        assert all(v["changes"] == {} for v in ret.values()), ret
        assert comments == {
            "duplicate_ports": "vpn_gateway:kubernetes:service: port 5432/TCP is listed twice "
                               "(port 'replica')",
            "bad_label_key": f"vpn_gateway:kubernetes:service: label key {label!r}: the prefix "
                             "must be a lowercase DNS subdomain (a-z, 0-9, '-', '.'), at most "
                             "253 characters",
        }, ret

    events = kubeapi.audit(lab, mark)
    assert writes(events, "endpointslices") == [], writes(events)
    dry_runs = writes(events, "services")
    assert dry_runs and writes(events) == dry_runs, writes(events)
    for event in dry_runs:  # the two pillar runs' Service dry runs, and nothing else
        assert "dryRun=All" in event["requestURI"], event
        assert "fieldValidation=Strict" in event["requestURI"], event
    assert len(dry_runs) == 2, dry_runs
    assert versions(lab) == before


@pytest.mark.platforms("debian13")
def test_a_cluster_whose_webhooks_refuse_dry_runs_works_with_dry_run_test_only(lab):
    """The dry-run switch (issue 16): the API server refuses every dry run, as with an
    admission webhook that does not declare sideEffects None. With the default
    (dry_run: always) every run fails, saying so and naming the switch; with
    vpn_gateway:kubernetes:dry_run: test_only a real run applies without asking for a
    dry run (its changes still exact: here vpn-gw2 drained) and a second run changes
    nothing, while test=True, which needs the cluster's prediction, fails with the
    refusal."""
    baseline(lab)
    webhook = "policy.example.com"
    assert kubeapi.knobs(lab, refuse_dry_run=webhook)["refuse_dry_run"] == webhook
    try:
        refused = apply(lab)["vpn-gw1"]["vpn_gateway_k8s_service"]
        assert refused["result"] is False, refused
        assert f'admission webhook "{webhook}" does not support dry run' in refused["comment"]
        assert "Set vpn_gateway:kubernetes:dry_run: test_only" in refused["comment"]
        with pillar_edited(lab, "kubernetes: no dry runs before real applies; drain vpn-gw2",
                           ("    dry_run: always", "    dry_run: test_only"),
                           ("    draining: []", f"    draining: [{GW2}]")):
            mark = len(kubeapi.audit(lab))
            applied = apply(lab)["vpn-gw1"]
            assert all(r["result"] is True for r in applied.values()), applied
            assert applied["vpn_gateway_k8s_endpointslices"]["changes"] == {SLICE: {
                "endpoints": {GW2: {"ready": {"old": True, "new": False},
                                    "terminating": {"old": False, "new": True}}}}}
            assert "without a dry run" in applied["vpn_gateway_k8s_service"]["comment"]
            assert conditions(lab) == {GW1: UP, GW2: DRAINED}
            again = apply(lab)["vpn-gw1"]
            assert all(r["result"] is True and r["changes"] == {} for r in again.values()), again
            sent = writes(kubeapi.audit(lab, mark))
            assert sent and not any("dryRun" in e["requestURI"] for e in sent), sent
            assert all(e["responseStatus"]["code"] == 200 for e in sent), sent

            predicted = apply(lab, test=True)["vpn-gw1"]["vpn_gateway_k8s_service"]
            assert predicted["result"] is False, predicted
            assert "does not support dry run" in predicted["comment"], predicted
    finally:
        kubeapi.knobs(lab, refuse_dry_run=None)
    undrained = apply(lab)["vpn-gw1"]
    assert all(r["result"] is True for r in undrained.values()), undrained
    assert conditions(lab) == {GW1: UP, GW2: UP}


def received(event):
    """When the API server received the request (s since the epoch)."""
    return datetime.datetime.fromisoformat(event["requestReceivedTimestamp"]).timestamp()


@pytest.mark.platforms("debian13")
def test_429_and_503_answers_are_retried_after_retry_after_and_give_up_bounded(lab):
    """429 and 5xx (issue 16), through the master: the API server answers the state
    run's first apply twice 429 with Retry-After: 1 (priority and fairness): the run
    waits and succeeds, the same request sent three times about a second apart. It
    then answers 503 with Retry-After: 1 to every apply: the run gives up after 5
    tries (not sooner, not later), saying the server is overloaded, and writes nothing."""
    baseline(lab)
    before, mark = versions(lab), len(kubeapi.audit(lab))
    kubeapi.knobs(lab, fail_next={"count": 2, "code": 429, "retry_after": 1,
                                  "methods": ["PATCH"]})
    try:
        ok = apply(lab)["vpn-gw1"]
        assert all(r["result"] is True and r["changes"] == {} for r in ok.values()), ok
        first = writes(kubeapi.audit(lab, mark))[:3]
        assert [e["responseStatus"]["code"] for e in first] == [429, 429, 200], first
        assert len({e["requestURI"] for e in first}) == 1, first
        gaps = [received(b) - received(a) for a, b in zip(first, first[1:])]
        assert all(0.9 <= gap < 3 for gap in gaps), gaps

        mark = len(kubeapi.audit(lab))
        kubeapi.knobs(lab, fail_next={"count": 5, "code": 503, "retry_after": 1,
                                      "methods": ["PATCH"]})
        failed = apply(lab)["vpn-gw1"]["vpn_gateway_k8s_service"]
    finally:
        kubeapi.knobs(lab, clear_faults=True)
    assert failed["result"] is False, failed
    assert "is overloaded or failing (503 ServiceUnavailable)" in failed["comment"], failed
    assert "(5 tries in " in failed["comment"], failed
    tries = writes(kubeapi.audit(lab, mark))
    assert [e["responseStatus"]["code"] for e in tries] == [503] * 5, tries
    gaps = [received(b) - received(a) for a, b in zip(tries, tries[1:])]
    assert all(0.9 <= gap < 3 for gap in gaps), gaps
    assert versions(lab) == before
