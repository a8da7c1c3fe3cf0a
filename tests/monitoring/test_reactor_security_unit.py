"""The libreswan reactor against hostile minions (issue 13): the reactor SLS
rendered and compiled by Salt's own Reactor (jinja|yaml, verify_high,
compile_high_data: what the master does with an event) for crafted tags and
data; and the minion side, which acts only on tunnels its pillar declares."""
import os

import pytest
import salt._logging.impl
import salt.config
import salt.utils.reactor
from monitoring_helpers import REPO, load
from salt.exceptions import CommandExecutionError

pytestmark = pytest.mark.unit

REACTOR = str(REPO / "salt/reactor/libreswan.sls")
# The payload of issue 13: a tunnel name that closes the state id and opens a new one.
INJECTION = ("x:\n  local.cmd.run:\n    - tgt: '*'\n    - arg: ['touch /tmp/pwned']\n"
             "libreswan_ensure_up_y")


@pytest.fixture(scope="module")
def reactor(tmp_path_factory):
    root = tmp_path_factory.mktemp("master")
    opts = salt.config.master_config(None)
    opts.update({key: str(root / key) for key in
                 ("cachedir", "pki_dir", "sock_dir", "extension_modules", "log_file")})
    opts["file_roots"] = {"base": [str(REPO / "salt")]}
    # Salt's import-time handler buffers records and writes them at exit, when
    # pytest's stderr is closed: hand them to pytest's handlers instead.
    salt._logging.impl.shutdown_temp_handler()
    reactor = salt.utils.reactor.Reactor(opts)
    yield reactor
    reactor.minion.destroy()


def reactions(reactor, tag, data):
    """The low chunks the master would run for this event."""
    return reactor.reactions(tag, data, [REACTOR])


def beacon(minion, tunnel, state, **data):
    """A beacon event as the minion's beacon process sends it."""
    return (f"salt/beacon/{minion}/libreswan/{tunnel}/{state}",
            dict({"id": minion, "tunnel": tunnel, "state": state}, **data))


def test_a_well_formed_event_runs_ensure_up_on_that_minion_only(reactor):
    assert [{k: c[k] for k in ("fun", "tgt", "tgt_type", "args")}
            for c in reactions(reactor, *beacon("vpn-gw1", "remote-db", "down"))] == [
        {"fun": "libreswan.ensure_up", "tgt": ["vpn-gw1"], "tgt_type": "list",
         "args": [{"name": "remote-db"}]}]
    (chunk,) = reactions(reactor, *beacon("vpn-gw1", "remote-db", "up"))
    assert chunk["fun"] == "libreswan.ensure_up"
    (chunk,) = reactions(reactor, *beacon("vpn-gw2", "remote-db", "failover"))
    assert (chunk["fun"], chunk["tgt"], chunk["args"]) == (
        "libreswan.failback", ["vpn-gw2"], [{"name": "remote-db"}])


CRAFTED = [
    # the payload, in data and in the tag
    ("salt/beacon/vpn-gw1/libreswan/x/down", {"id": "vpn-gw1", "tunnel": INJECTION,
                                              "state": "down"}),
    beacon("vpn-gw1", INJECTION, "down"),
    beacon("vpn-gw1", INJECTION, "failover"),
    # YAML and Jinja syntax, flow mappings, a trailing newline ($ matches before it)
    beacon("vpn-gw1", "x: {local.cmd.run: {tgt: '*'}}", "down"),
    beacon("vpn-gw1", "{{ salt['cmd.run']('touch /tmp/pwned') }}", "down"),
    beacon("vpn-gw1", "remote-db\n", "down"),
    beacon("vpn-gw1", "remote-db\nx", "down"),
    beacon("vpn-gw1", "-remote-db", "down"),
    beacon("vpn-gw1", "a" * 41, "down"),
    beacon("vpn-gw1", ["remote-db"], "down"),
    beacon("vpn-gw1", {"local.cmd.run": {"tgt": "*"}}, "down"),
    # a glob, a list, a separator or an injection as the target
    beacon("*", "remote-db", "down"),
    beacon("vpn-gw*", "remote-db", "down"),
    beacon("vpn-gw[12]", "remote-db", "down"),
    beacon("vpn-gw1,vpn-gw2", "remote-db", "down"),
    beacon("G@os:Debian", "remote-db", "down"),
    beacon("vpn-gw1\n", "remote-db", "down"),
    ("salt/beacon/vpn-gw1/libreswan/remote-db/down", {"id": "*", "tunnel": "remote-db",
                                                      "state": "down"}),
    # another minion's id in the tag than in data (the master fills data['id'])
    ("salt/beacon/vpn-gw2/libreswan/remote-db/down", {"id": "vpn-gw1", "tunnel": "remote-db",
                                                      "state": "down"}),
    # tag and data that disagree, states that are not the beacon's, extra tag levels
    ("salt/beacon/vpn-gw1/libreswan/other/down", {"id": "vpn-gw1", "tunnel": "remote-db",
                                                  "state": "down"}),
    ("salt/beacon/vpn-gw1/libreswan/remote-db/up", {"id": "vpn-gw1", "tunnel": "remote-db",
                                                    "state": "failover"}),
    beacon("vpn-gw1", "remote-db", "down\n"),
    beacon("vpn-gw1", "remote-db", "cmd.run"),
    ("salt/beacon/vpn-gw1/libreswan/remote-db/down/x", {"id": "vpn-gw1",
                                                        "tunnel": "remote-db", "state": "down"}),
    ("salt/beacon/vpn-gw1/other/remote-db/down", {"id": "vpn-gw1", "tunnel": "remote-db",
                                                  "state": "down"}),
    # salt-call event.fire_master DATA TAG: the data comes nested, the tunnel is not at the top
    ("salt/beacon/vpn-gw1/libreswan/remote-db/down",
     {"id": "vpn-gw1", "cmd": "_minion_event", "tag": "salt/beacon/vpn-gw1/libreswan/x/down",
      "data": {"tunnel": INJECTION, "state": "down"}}),
]


@pytest.mark.parametrize("tag, data", CRAFTED, ids=range(len(CRAFTED)))
def test_a_crafted_event_makes_the_master_run_nothing(reactor, tag, data, caplog):
    assert reactions(reactor, tag, data) == []
    assert "libreswan reactor: event refused" in caplog.text


def test_no_event_can_name_a_function_or_a_state_id(reactor):
    """Whatever the event, the compiled chunks are one of the two literal ones."""
    for tag, data in CRAFTED + [beacon("vpn-gw1", "remote-db", s) for s in ("down", "failover")]:
        for chunk in reactions(reactor, tag, data):
            assert (chunk["__id__"], chunk["fun"]) in {
                ("libreswan_ensure_up", "libreswan.ensure_up"),
                ("libreswan_failback", "libreswan.failback")}, chunk
            assert chunk["tgt_type"] == "list" and chunk["tgt"] == [data["id"]]
            assert set(chunk) <= {"state", "name", "__sls__", "__id__", "fun", "order",
                                  "tgt", "tgt_type", "args"}, chunk


def test_the_reactor_checks_names_with_libreswans_own_pattern():
    """The reactor's conn name pattern is the one libreswan.py validates conn names with."""
    text = open(REACTOR).read()
    pattern = load("salt/_modules/libreswan.py").NAME_RE.pattern
    assert pattern.endswith("$")
    assert f"'{pattern[:-1]}\\\\Z'" in text


# -- the minion side: declared tunnels only ------------------------------------------------
recovery = load("salt/_modules/libreswan_recovery.py")
PILLAR = {"tunnel": {"name": "remote-db", "psk": "x" * 40}}


def test_declared_tunnels_are_the_pillars_name_and_its_backup():
    assert recovery._declared(PILLAR) == {"remote-db", "remote-db-backup"}
    assert recovery._declared({"tunnel": {}}) == {"remote-db", "remote-db-backup"}
    assert recovery._declared(dict(PILLAR, monitoring={"tunnels": ["other"]})) == {
        "remote-db", "remote-db-backup", "other", "other-backup"}
    assert recovery._declared({}) == set()
    assert recovery._declared({"tunnel": "garbage", "monitoring": {"tunnels": "x"}}) == set()


@pytest.mark.parametrize("name", ["remote-db", "remote-db-backup"])
def test_a_declared_tunnel_is_acted_on(name):
    assert recovery._acting_on(name, recovery._declared(PILLAR)) == [name]


@pytest.mark.parametrize("name, why", [
    ("other-db", "not a tunnel this minion's pillar declares"),
    ("remote-db-backup-backup", "not a tunnel this minion's pillar declares"),
    (INJECTION, "not a conn name"),
    ("remote-db\n", "not a conn name"),
    (42, "not a conn name"),
])
def test_another_tunnel_is_refused_with_a_clear_error(name, why):
    with pytest.raises(CommandExecutionError, match=why) as error:
        recovery._acting_on(name, recovery._declared(PILLAR))
    assert "refusing" in str(error.value) or "nothing done" in str(error.value)
    assert len(str(error.value)) < 300  # a crafted name is cut, not echoed whole


def test_without_a_name_only_declared_tunnels_are_acted_on():
    settings = recovery._settings({}, "remote-db")
    status = {"tunnels": {"remote-db": {}, "hand-made": {}, "remote-db-backup": {}}}
    assert recovery._acting_on(None, recovery._declared(PILLAR), status, settings) == [
        "remote-db"]


@pytest.mark.parametrize("function", ["ensure_up", "failback"])
def test_ensure_up_and_failback_refuse_before_touching_anything(function, monkeypatch):
    """Through the public functions: the refusal comes before pluto or the state dir."""
    module = load("salt/_modules/libreswan_recovery.py")
    touched = []
    module.__pillar__ = {"vpn_gateway": PILLAR}
    module.__salt__ = {"config.get": lambda key, default=None: default}
    module.__grains__ = {}
    monkeypatch.setattr(module, "_status", lambda: touched.append("status"))
    monkeypatch.setattr(module, "_locked", lambda *a: touched.append("lock"))
    with pytest.raises(CommandExecutionError, match="not a tunnel this minion's pillar"):
        getattr(module, function)("other-db")
    assert touched == []
    assert not os.path.exists("/tmp/pwned")


def test_the_minion_start_reactor_targets_one_plain_minion_id(reactor):
    start = [str(REPO / "salt/reactor/minion_start.sls")]
    (chunk,) = reactor.reactions("salt/minion/vpn-gw1/start", {"id": "vpn-gw1"}, start)
    assert (chunk["fun"], chunk["tgt"], chunk["tgt_type"]) == (
        "saltutil.sync_all", ["vpn-gw1"], "list")
    for crafted in ("*", "vpn-gw*", "vpn-gw1,vpn-gw2", "G@os:Debian", "vpn-gw1\n", ["*"], None):
        assert reactor.reactions("salt/minion/x/start", {"id": crafted}, start) == []


def test_a_partial_tunnel_runs_ensure_up_on_that_minion(reactor):
    """partial (some declared subnets without a Child SA): ensure_up's conn restarts."""
    (chunk,) = reactions(reactor, *beacon("vpn-gw1", "remote-db", "partial"))
    assert (chunk["fun"], chunk["tgt"], chunk["tgt_type"], chunk["args"]) == (
        "libreswan.ensure_up", ["vpn-gw1"], "list", [{"name": "remote-db"}])
