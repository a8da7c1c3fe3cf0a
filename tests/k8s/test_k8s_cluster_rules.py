"""Issue 16: the module and states under a real server's rules, in-process against the API
of conftest: validation before any request, 429/5xx with bounded retries honouring
Retry-After, clusters that refuse dry runs, the ready/serving/terminating conditions,
ownership (garbage collection with the Service) and readiness decided from heartbeats."""

import json
import time
import types

import pytest
from repo_modules import load
from salt.exceptions import CommandExecutionError, SaltInvocationError

pytestmark = pytest.mark.unit

A, B = "198.18.2.11", "198.18.2.12"
PORTS = [{"name": "postgres", "port": 5432, "target_port": 6432}]
MANAGED = "kubernetes.io/service-name=pg,endpointslice.kubernetes.io/managed-by=vpn-gateway.salt"


class Clock:
    """time for the module: real monotonic and time, recorded sleeps (no waiting)."""

    def __init__(self):
        self.sleeps, self.offset = [], 0.0

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.offset += seconds

    def monotonic(self):
        return time.monotonic() + self.offset

    def time(self):
        return time.time() + self.offset


def modules(config=None, salt=None):
    k8s = load("salt/_modules/k8s.py")
    config = config or {}
    k8s.__salt__ = {"config.get": lambda key, default=None: config.get(key, default),
                    **(salt or {})}
    k8s.time = Clock()
    k8s.__opts__ = {"id": "k8s-observer"}  # not a gateway: every beat from the mine
    states = load("salt/_states/k8s.py")
    states.__salt__ = {f"k8s.{name}": getattr(k8s, name) for name in k8s.__load__}
    states.__opts__ = {"test": False}
    return k8s, states


def fake_only(cluster):
    if not cluster.fake:
        pytest.skip("needs the stand-in's knobs (fail_next, refuse_dry_run)")
    return cluster.fake


def live_slices(cluster, namespace):
    answer = cluster.discovery.list_namespaced_endpoint_slice(
        namespace, label_selector=MANAGED, _preload_content=False)
    return json.loads(answer.data)["items"]


def conditions_by_address(cluster, namespace):
    return {a: e.get("conditions") for s in live_slices(cluster, namespace)
            for e in s["endpoints"] for a in e["addresses"]}


def requests_since(fake, start):
    return [(m, p, q) for m, p, q in fake.requests[start:]]


# --- validation before any request ---------------------------------------------------------


def test_duplicate_port_and_protocol_is_refused_like_the_server_does():
    k8s, _ = modules()
    ports = [{"name": "a", "port": 5432}, {"name": "b", "port": 5432, "target_port": 6433}]
    with pytest.raises(ValueError, match="port 5432/TCP is listed twice"):
        k8s.normalize_service_ports(ports)
    # the same number with another protocol is a different port (kube-dns: 53/UDP, 53/TCP)
    k8s.normalize_service_ports([{"name": "a", "port": 53, "protocol": "UDP"},
                                 {"name": "b", "port": 53, "protocol": "TCP"}])


def test_an_ipv4_mapped_ipv6_address_is_refused_with_its_ipv4_spelling():
    k8s, _ = modules()
    with pytest.raises(ValueError, match="IPv4-mapped IPv6 address; write it as 198.18.2.11"):
        k8s.check_address("::ffff:198.18.2.11")


@pytest.mark.parametrize("labels, fragment", [
    ({"ok": "fine", "tier.example.com/db": "x"}, None),
    ({"bad key": "x"}, "label key 'bad key'"),
    ({"_x": "y"}, "label key '_x'"),
    ({"Example.com/x": "y"}, "the prefix must be a lowercase DNS subdomain"),
    ({"/x": "y"}, "the prefix before '/' must be non-empty"),
    ({"a/": "y"}, "the name part must be non-empty"),
    ({"a/b/c": "y"}, "at most one '/'"),
    ({"x" * 64: "y"}, "at most 63 characters"),
    ({"ok": "-bad"}, "value '-bad'"),
])
def test_label_keys_and_values_follow_the_servers_rules(labels, fragment):
    k8s, _ = modules()
    errors = k8s.label_errors(labels)
    if fragment is None:
        assert errors == []
    else:
        assert any(fragment in e for e in errors), errors


def test_duplicate_ports_never_reach_the_server(cluster, namespace):
    fake = fake_only(cluster)
    k8s, _ = modules()
    start = len(fake.requests)
    with pytest.raises(SaltInvocationError, match="listed twice"):
        k8s.apply_service("pg", namespace, PORTS + [{"name": "other", "port": 5432}],
                          dry_run=True, **cluster.conn)
    assert requests_since(fake, start) == []


def test_applies_ask_for_strict_field_validation(cluster, namespace):
    fake = fake_only(cluster)
    k8s, _ = modules()
    start = len(fake.requests)
    k8s.apply_service("pg", namespace, PORTS, **cluster.conn)
    patches = [q for m, _, q in requests_since(fake, start) if m == "PATCH"]
    assert patches and all(q.get("fieldValidation") == "Strict" for q in patches)


# --- 429 and 5xx -------------------------------------------------------------------------


def test_429_is_retried_after_its_retry_after(cluster, namespace):
    fake = fake_only(cluster)
    k8s, _ = modules()
    fake.fail_next(2, 429, retry_after=3)
    done = k8s.apply_service("pg", namespace, PORTS, **cluster.conn)
    assert done["object"]["ports"]["postgres"]["targetPort"] == 6432
    assert k8s.time.sleeps == [3.0, 3.0]


def test_a_huge_retry_after_is_capped_and_the_budget_ends_the_retries(cluster, namespace):
    fake = fake_only(cluster)
    k8s, _ = modules()
    fake.fail_next(100, 429, retry_after=3600)
    try:
        with pytest.raises(CommandExecutionError) as caught:
            k8s.get_service("pg", namespace, **cluster.conn)
    finally:
        fake.faults.clear()  # the teardown's client would sleep the hour itself
    assert k8s.time.sleeps == [10.0, 10.0]  # capped; a third would pass the 30 s budget
    assert "429" in str(caught.value) and "3 tries" in str(caught.value)


def test_503_backs_off_exponentially_then_gives_up_bounded(cluster, namespace):
    fake = fake_only(cluster)
    k8s, _ = modules()
    start = len(fake.requests)
    fake.fail_next(100, 503)
    try:
        with pytest.raises(CommandExecutionError) as caught:
            k8s.get_service("pg", namespace, **cluster.conn)
    finally:
        fake.faults.clear()
    assert k8s.time.sleeps == [1.0, 2.0, 4.0, 8.0]
    assert len(requests_since(fake, start)) == k8s.TRANSIENT_TRIES
    message = str(caught.value)
    assert "503 ServiceUnavailable" in message and "5 tries" in message


def test_a_transient_500_then_success(cluster, namespace):
    fake = fake_only(cluster)
    k8s, _ = modules()
    k8s.apply_service("pg", namespace, PORTS, **cluster.conn)
    fake.fail_next(1, 500)
    assert k8s.get_service("pg", namespace, summary=True, **cluster.conn)["ports"]
    assert k8s.time.sleeps == [1.0]


def test_the_apply_500_for_an_unknown_field_is_not_retried():
    k8s, _ = modules()
    response = types.SimpleNamespace(status=500, headers={})
    answer = {"message": "failed to create typed patch object (ns/pg; /v1, Kind=Service): "
                         ".spec.readOnly: field not declared in schema"}
    assert k8s._transient_wait(response, answer, 1, 0) is None
    assert k8s._transient_wait(response, {"message": "etcd timeout"}, 1, 0) == 1.0
    assert k8s._transient_wait(types.SimpleNamespace(status=422, headers={}), {}, 1, 0) is None


# --- clusters whose admission webhooks refuse dry runs -----------------------------------


def test_a_cluster_that_refuses_dry_runs(cluster, namespace):
    fake = fake_only(cluster)
    k8s, states = modules()
    fake.refuse_dry_run("policy.example.com")
    try:
        refused = states.service_present("pg", namespace, PORTS, **cluster.conn)
        assert refused["result"] is False
        assert 'admission webhook "policy.example.com" does not support dry run' in (
            refused["comment"])
        assert "vpn_gateway:kubernetes:dry_run: test_only" in refused["comment"]

        start = len(fake.requests)
        applied = states.service_present("pg", namespace, PORTS, dry_run="test_only",
                                         **cluster.conn)
        assert applied["result"] is True and f"Service {namespace}/pg" in applied["changes"]
        assert not any("dryRun" in q for _, _, q in requests_since(fake, start))
        again = states.service_present("pg", namespace, PORTS, dry_run="test_only",
                                       **cluster.conn)
        assert again["result"] is True and again["changes"] == {}

        slices = states.endpointslice_present("pg", namespace, [A], dry_run="test_only",
                                              **cluster.conn)
        assert slices["result"] is True, slices
        states.__opts__ = {"test": True}  # test=True still asks for the dry run: refused
        predicted = states.endpointslice_present("pg", namespace, [A, B], dry_run="test_only",
                                                 **cluster.conn)
        assert predicted["result"] is False and "does not support dry run" in (
            predicted["comment"])
    finally:
        fake.refuse_dry_run(None)
    states.__opts__ = {"test": False}
    bad = states.service_present("pg", namespace, PORTS, dry_run="never", **cluster.conn)
    assert bad["result"] is False and "always, test_only" in bad["comment"]


# --- conditions and ownership ------------------------------------------------------------


def test_conditions_have_the_apis_meaning():
    k8s, _ = modules()
    assert k8s.conditions(True, False) == {"ready": True, "serving": True, "terminating": False}
    assert k8s.conditions(False, False) == {"ready": False, "serving": False,
                                            "terminating": False}
    # drained: still serving while its tunnel is up, but never ready
    assert k8s.conditions(True, True) == {"ready": False, "serving": True, "terminating": True}
    assert k8s.conditions(None, None) == {"ready": True, "serving": True, "terminating": False}


def test_draining_marks_terminating_and_health_never_makes_it_ready(cluster, namespace):
    k8s, states = modules()
    states.service_present("pg", namespace, PORTS, **cluster.conn)
    ret = states.endpointslice_present("pg", namespace, [A, B], terminating=[B], **cluster.conn)
    assert ret["result"] is True, ret
    assert conditions_by_address(cluster, namespace) == {
        A: {"ready": True, "serving": True, "terminating": False},
        B: {"ready": False, "serving": True, "terminating": True},
    }
    k8s.set_endpoints_ready("pg", namespace, True, **cluster.conn)  # the tunnel is up
    assert conditions_by_address(cluster, namespace)[B]["ready"] is False
    k8s.set_endpoints_ready("pg", namespace, False, addresses=[B], **cluster.conn)
    assert conditions_by_address(cluster, namespace)[B] == {
        "ready": False, "serving": False, "terminating": True}
    # maintenance over: out of draining, ready follows serving again
    k8s.set_endpoints_ready("pg", namespace, True, addresses=[B], **cluster.conn)
    ret = states.endpointslice_present("pg", namespace, [A, B], **cluster.conn)
    assert ret["changes"], ret
    assert conditions_by_address(cluster, namespace)[B] == {
        "ready": True, "serving": True, "terminating": False}
    with pytest.raises(SaltInvocationError, match="not among the endpoints"):
        k8s.apply_endpointslices("pg", namespace, [A], terminating=[B], **cluster.conn)


def test_slices_are_owned_by_the_service_and_go_with_it(cluster, namespace):
    k8s, states = modules()
    states.service_present("pg", namespace, PORTS, **cluster.conn)
    states.endpointslice_present("pg", namespace, [A, "2001:db8::11"], **cluster.conn)
    service = cluster.core.read_namespaced_service("pg", namespace)
    for endpointslice in live_slices(cluster, namespace):
        [owner] = endpointslice["metadata"]["ownerReferences"]
        assert owner == {"apiVersion": "v1", "kind": "Service", "name": "pg",
                         "uid": service.metadata.uid, "controller": True,
                         "blockOwnerDeletion": True}
    cluster.core.delete_namespaced_service("pg", namespace, _preload_content=False)
    deadline = time.monotonic() + 30
    while live_slices(cluster, namespace) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert live_slices(cluster, namespace) == []


def test_slices_of_an_older_version_get_their_owner_on_the_next_run(cluster, namespace):
    k8s, states = modules()
    states.service_present("pg", namespace, PORTS, **cluster.conn)
    old = {  # as the module wrote it before issue 16: no owner, ready alone
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "pg-ipv4-0", "namespace": namespace, "labels": {
            "kubernetes.io/service-name": "pg",
            "endpointslice.kubernetes.io/managed-by": "vpn-gateway.salt"}},
        "addressType": "IPv4", "endpoints": [{"addresses": [A], "conditions": {"ready": True}}],
        "ports": [{"name": "postgres", "port": 6432, "protocol": "TCP"}]}
    k8s._apply(k8s._Api(**cluster.conn), k8s._slice_path(namespace, "pg-ipv4-0"), old, False,
               False, "the old slice")
    states.__opts__ = {"test": True}
    predicted = states.endpointslice_present("pg", namespace, [A], **cluster.conn)
    assert predicted["result"] is None, predicted
    change = predicted["changes"][f"EndpointSlice {namespace}/pg-ipv4-0"]
    assert change["owner"] == {"old": None, "new": "Service/pg"}
    states.__opts__ = {"test": False}
    assert states.endpointslice_present("pg", namespace, [A], **cluster.conn)["result"] is True
    [endpointslice] = live_slices(cluster, namespace)
    assert endpointslice["metadata"]["ownerReferences"][0]["name"] == "pg"


# --- readiness decided from outside -------------------------------------------------------


def test_readiness_decision_from_heartbeats():
    k8s, _ = modules()
    gateways = {"vpn-gw1": A, "vpn-gw2": B}
    memory = {}

    def decide(beat, now, deadline=20, require_tunnel=True, gateways=gateways):
        """readiness_decision, then what sync_readiness does once its write succeeded."""
        nonlocal memory
        memory, serving, report = k8s.readiness_decision(gateways, beat, memory, now, deadline,
                                                         require_tunnel)
        for minion, address in gateways.items():
            if serving[address] is not None:
                memory[minion]["written"] = serving[address]
        return serving, report

    beat = {"vpn-gw1": {"beat": 1, "serving": True}, "vpn-gw2": {"beat": 1, "serving": True}}
    assert decide(beat, 100)[0] == {A: True, B: True}
    # gw1 keeps beating, gw2 falls silent: within the deadline its endpoint is left as it
    # is (its beat's verdict is written: its own recovery may have set it since)
    beat = {"vpn-gw1": {"beat": 2, "serving": True}, "vpn-gw2": {"beat": 1, "serving": True}}
    assert decide(beat, 115)[0] == {A: True, B: None}
    beat["vpn-gw1"] = {"beat": 3, "serving": True}
    serving, report = decide(beat, 121)
    assert serving == {A: True, B: False}
    assert report["vpn-gw2"]["fresh"] is False and report["vpn-gw2"]["silent_for"] == 21
    # gw2 beats again: back; its tunnel down: not serving though fresh
    beat["vpn-gw2"] = {"beat": 9, "serving": False}
    assert decide(beat, 122)[0] == {A: None, B: False}
    # a verdict that changes with no new beat (the pillar's require_tunnel) is acted on
    assert decide(beat, 123, require_tunnel=False)[0] == {A: None, B: True}
    # a verdict never written (the API failed: sync_readiness records no "written") is
    # acted on again with the same beat
    memory["vpn-gw2"].pop("written")
    assert decide(beat, 124, require_tunnel=False)[0] == {A: None, B: True}
    # nothing in the mine at all: one deadline of grace, then not serving
    memory = {}
    assert decide({}, 0, 20, False, {"gw3": "198.18.2.13"})[0] == {"198.18.2.13": True}
    assert decide({}, 21, 20, False, {"gw3": "198.18.2.13"})[0] == {"198.18.2.13": False}


def readiness_on(cluster, namespace, tmp_path, deadline, mine_get):
    """The k8s module with readiness from heartbeats for A and B (``mine_get`` gives
    their beats), Service pg and its slice applied; (module, its config)."""
    config = {
        "vpn_gateway:kubernetes": {
            "service": {"name": "pg", "namespace": namespace},
            "readiness": {"enabled": True, "deadline": deadline,
                          "gateways": {"vpn-gw1": A, "vpn-gw2": B}},
        },
        "vpn_gateway:monitoring:state_dir": str(tmp_path),
    }
    k8s, states = modules(config, {"mine.get": mine_get})
    states.service_present("pg", namespace, PORTS, **cluster.conn)
    states.endpointslice_present("pg", namespace, [A, B], **cluster.conn)
    return k8s, config


def test_sync_readiness_sets_a_silent_gateway_not_ready_and_back(cluster, namespace, tmp_path):
    beats = {"vpn-gw1": {"beat": 1, "serving": True}, "vpn-gw2": {"beat": 1, "serving": True}}
    asked = []

    def mine_get(target, function, tgt_type):
        asked.append((target, function, tgt_type))
        return json.loads(json.dumps(beats))

    k8s, config = readiness_on(cluster, namespace, tmp_path, 20, mine_get)
    first = k8s.sync_readiness(**cluster.conn)
    assert first["changes"] == {} and asked == [(["vpn-gw1", "vpn-gw2"],
                                                 "vpn_gateway_heartbeat", "list")]
    version = live_slices(cluster, namespace)[0]["metadata"]["resourceVersion"]
    for step in range(3):  # gw2's minion is down: its beat stops changing
        k8s.time.sleep(10)
        beats["vpn-gw1"]["beat"] += 1
        result = k8s.sync_readiness(**cluster.conn)
    assert result["gateways"]["vpn-gw2"]["serving"] is False
    assert conditions_by_address(cluster, namespace) == {
        A: {"ready": True, "serving": True, "terminating": False},
        B: {"ready": False, "serving": False, "terminating": False},
    }
    changed = live_slices(cluster, namespace)[0]["metadata"]["resourceVersion"]
    assert changed != version
    assert k8s.sync_readiness(**cluster.conn)["changes"] == {}  # nothing new: no write
    assert live_slices(cluster, namespace)[0]["metadata"]["resourceVersion"] == changed
    beats["vpn-gw2"]["beat"] = 2  # back
    k8s.sync_readiness(**cluster.conn)
    assert conditions_by_address(cluster, namespace)[B]["ready"] is True
    config["vpn_gateway:kubernetes"]["readiness"]["enabled"] = False
    assert k8s.sync_readiness(**cluster.conn)["enabled"] is False


def test_a_beat_already_acted_on_does_not_undo_the_gateways_own_recovery(
        cluster, namespace, tmp_path):
    """The e2e guest run's flap: vpn-gw1's recovery set its endpoint not ready; the next
    sync saw the beat from before the fault again and set it ready. A beat is acted on
    once; the next one (taken after the fault) decides."""
    beats = {"vpn-gw1": {"beat": 1, "serving": True}, "vpn-gw2": {"beat": 1, "serving": True}}
    k8s, _ = readiness_on(cluster, namespace, tmp_path, 90,
                          lambda *a, **k: json.loads(json.dumps(beats)))
    k8s.sync_readiness(**cluster.conn)
    # pluto killed in vpn-gw1: its recovery's endpoint_ready
    k8s.set_endpoints_ready("pg", namespace, False, addresses=[A], **cluster.conn)
    assert k8s.sync_readiness(**cluster.conn)["changes"] == {}  # the same beat: left
    assert conditions_by_address(cluster, namespace)[A]["ready"] is False
    beats["vpn-gw1"] = {"beat": 2, "serving": False}  # the first beat after the fault
    k8s.sync_readiness(**cluster.conn)
    assert conditions_by_address(cluster, namespace)[A]["ready"] is False
    beats["vpn-gw1"] = {"beat": 3, "serving": True}  # recovered
    k8s.sync_readiness(**cluster.conn)
    assert conditions_by_address(cluster, namespace)[A]["ready"] is True


def test_an_observer_that_is_a_gateway_judges_itself_by_its_health_now(
        cluster, namespace, tmp_path):
    """vpn-gw1 writes the slices and is a gateway: for itself it takes a beat now
    (vpn_heartbeat.beat), not its last one in the mine, which may be from before its
    own recovery's last write (either way)."""
    mine = {"vpn-gw1": {"beat": 1, "serving": True}, "vpn-gw2": {"beat": 1, "serving": True}}
    now = {"beat": 2, "serving": False}  # pluto killed since its last beat
    k8s, _ = readiness_on(cluster, namespace, tmp_path, 90,
                          lambda *a, **k: json.loads(json.dumps(mine)))
    k8s.__opts__ = {"id": "vpn-gw1"}
    k8s.__salt__["vpn_heartbeat.beat"] = lambda: dict(now)
    report = k8s.sync_readiness(**cluster.conn)["gateways"]
    assert (report["vpn-gw1"]["serving"], report["vpn-gw2"]["serving"]) == (False, True)
    assert conditions_by_address(cluster, namespace)[A]["ready"] is False


def test_the_heartbeat_serves_only_with_every_tunnel_carried():
    beat = load("salt/_modules/vpn_heartbeat.py")
    health = {"remote-db": {"state": "up", "up": True}}
    beat.__salt__ = {"libreswan.health": lambda timeout=None, reasons=True: health}
    first = beat.beat()
    assert first["serving"] is True and first["tunnels"] == {"remote-db": "up"}
    health["other"] = {"state": "partial", "up": False}
    assert beat.beat()["serving"] is False
    time.sleep(0.01)
    assert beat.beat()["beat"] > first["beat"]  # a wall clock: the observer sees it move

    def hung(timeout=None, reasons=True):
        raise CommandExecutionError("pluto did not answer within 3 s")

    beat.__salt__ = {"libreswan.health": hung}
    assert beat.beat()["serving"] is False and "pluto" in beat.beat()["error"]
    assert beat._serving_of({}) is False
