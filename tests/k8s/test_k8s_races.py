"""k8s.set_endpoints_ready (the monitoring) against k8s.endpointslice_present (a
state run) on the same EndpointSlice, interleaved: one reads, the other writes,
then the first writes what it computed from its read. Against the API of
conftest (the loopback fake, or a real cluster), through Salt's loader in this
process (conftest's k8s_loaded: the module as the loader loaded it, the states
bound to the same execution modules)."""

import json

import pytest
from salt.exceptions import CommandExecutionError

pytestmark = pytest.mark.unit

A, B = "198.18.2.11", "198.18.2.12"
MANAGED = "kubernetes.io/service-name=pg,endpointslice.kubernetes.io/managed-by=vpn-gateway.salt"


def live_ready(cluster, namespace):
    answer = cluster.discovery.list_namespaced_endpoint_slice(
        namespace, label_selector=MANAGED, _preload_content=False)
    return {a: (e.get("conditions") or {}).get("ready")
            for s in json.loads(answer.data)["items"] for e in s["endpoints"]
            for a in e["addresses"]}


def between_read_and_write(k8s, nth_read, other):
    """Run ``other()`` right after the ``nth_read``-th read of the slices (its own reads
    pass through): the other writer lands between that read and the write from it."""
    read, calls = k8s._list_slices, []

    def racing(*args, **kwargs):
        answer = read(*args, **kwargs)
        if k8s._list_slices is racing:
            calls.append(1)
            if len(calls) == nth_read:
                k8s._list_slices = read
                try:
                    other()
                finally:
                    k8s._list_slices = racing
        return answer

    k8s._list_slices = racing
    return calls


class Loaded:
    """The loaded k8s module (``module``: its hooks) and its functions called as Salt
    calls them: ``salt["k8s.apply_endpointslices"]``, ``states["k8s.endpointslice_present"]``."""

    def __init__(self, loaders, module, states):
        self.module, self.salt, self.states, self.loaders = module, loaders.modules, states, loaders

    @property
    def _list_slices(self):
        return self.module._list_slices

    @_list_slices.setter
    def _list_slices(self, function):
        self.module._list_slices = function

    def __getattr__(self, name):  # k8s.apply_endpointslices(...) as __salt__ calls it
        return self.salt[f"k8s.{name}"]


@pytest.fixture
def slice_with_a(cluster, namespace, loaders, k8s_loaded):
    cluster.core.create_namespaced_service(namespace, {"metadata": {"name": "pg"}, "spec": {
        "ports": [{"name": "postgres", "port": 5432, "targetPort": 6432}]}})
    module, states = k8s_loaded
    k8s = Loaded(loaders, module, states)
    k8s.apply_endpointslices("pg", namespace, [A], **cluster.conn)
    assert live_ready(cluster, namespace) == {A: True}
    return k8s, states["k8s.endpointslice_present"]


def test_a_state_run_does_not_undo_the_monitorings_not_ready(cluster, namespace, slice_with_a):
    k8s, endpointslice_present = slice_with_a
    calls = between_read_and_write(k8s, 2, lambda: k8s.set_endpoints_ready(
        "pg", namespace, False, addresses=[A], **cluster.conn))
    # read 1: the state's dry run; read 2: its apply, computed from ready=true
    ret = endpointslice_present("pg", namespace, [A, B], **cluster.conn)
    assert len(calls) >= 3, "the state did not read again after its write was refused"
    assert ret["result"], ret
    assert live_ready(cluster, namespace) == {A: False, B: True}


def test_the_monitoring_does_not_undo_a_state_runs_new_endpoint(cluster, namespace,
                                                                slice_with_a):
    k8s, endpointslice_present = slice_with_a
    calls = between_read_and_write(k8s, 1, lambda: endpointslice_present(
        "pg", namespace, [A, B], **cluster.conn))
    k8s.set_endpoints_ready("pg", namespace, False, addresses=[A], **cluster.conn)
    assert len(calls) >= 2
    assert live_ready(cluster, namespace) == {A: False, B: True}


def test_a_writer_that_keeps_losing_gives_up_with_a_clear_error(cluster, namespace,
                                                                slice_with_a):
    k8s, _ = slice_with_a
    read = k8s._list_slices
    flips = iter(range(100))

    def always_changed(*args, **kwargs):
        answer = read(*args, **kwargs)
        k8s._list_slices = read
        try:
            k8s.set_endpoints_ready("pg", namespace, next(flips) % 2 == 1, **cluster.conn)
        finally:
            k8s._list_slices = always_changed
        return answer

    k8s._list_slices = always_changed
    with pytest.raises(CommandExecutionError, match="409.*5 tries"):
        k8s.apply_endpointslices("pg", namespace, [A, B], **cluster.conn)


def test_the_readiness_check_between_a_state_runs_write_and_its_read_back(cluster, namespace,
                                                                          slice_with_a,
                                                                          monkeypatch):
    """k8s.sync_readiness runs on a schedule, also during a state run: when it sets an
    endpoint not ready after the state's write, the state's read-back differs only in
    the conditions it leaves to that check (ready=None), and the state still succeeds."""
    k8s, endpointslice_present = slice_with_a
    functions = k8s.loaders.modules._dict  # what the state's __salt__ finds
    read_back = functions["k8s.list_endpointslices"]

    def after_the_readiness_check(*args, **kwargs):
        k8s.set_endpoints_ready("pg", namespace, False, addresses=[B], **cluster.conn)
        return read_back(*args, **kwargs)

    monkeypatch.setitem(functions, "k8s.list_endpointslices", after_the_readiness_check)
    ret = endpointslice_present("pg", namespace, [A, B], **cluster.conn)
    assert ret["result"] is True, ret
    assert live_ready(cluster, namespace) == {A: True, B: False}
    # A state that sets ready itself owns it: the same race is then reported.
    ret = endpointslice_present("pg", namespace, [A, B], ready=True, **cluster.conn)
    assert ret["result"] is False and "another writer" in ret["comment"], ret
