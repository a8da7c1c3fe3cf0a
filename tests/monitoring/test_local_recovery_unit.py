"""Recovery without the master (issue 15): the beacon starts ``libreswan.recover`` on
the minion itself, in a process of its own, and marks its events so that the
master's reactor leaves them alone; ``recover`` picks the failback or the ladder
from the tunnel's health now."""
import json
import time

import pytest
from monitoring_helpers import load
from test_monitoring_unit import FakePluto, fresh_recovery
from test_reactor_security_unit import beacon as beacon_event
from test_reactor_security_unit import reactions, reactor  # noqa: F401 (a fixture)

pytestmark = pytest.mark.unit


# -- libreswan.recover ---------------------------------------------------------------------
def test_recover_on_the_backup_applies_the_failback_policy(tmp_path, monkeypatch):
    pluto = FakePluto(primary_alive=True)
    module, _ = fresh_recovery(tmp_path, monkeypatch, salt=pluto.salt())
    module._remember("remote-db", {"attempts": [], "recoveries": {"success": 1, "failure": 0},
                                   "backup_since": time.time() - 10 ** 5})
    result = module.recover("remote-db")["remote-db"]
    assert (result["action"], result["outcome"], result["state"]) == (
        "failback", "failed_back", "up"), result
    assert pluto.calls == [("up", "remote-db"), ("down", "remote-db-backup")]


def test_on_the_backup_the_recovery_sets_the_endpoint_ready(tmp_path, monkeypatch):
    """A ladder that gave up before the backup's SA came up left the endpoint not ready;
    pluto brought the backup up on its own: the failover event's recovery sets it ready
    (in the e2e guest run only the heartbeats did, 336 s and 419 s after the primary
    went down)."""
    pluto, written = FakePluto(primary_alive=False), []
    salt = dict(pluto.salt(), **{"k8s.set_endpoints_ready": lambda service, namespace, ready,
                                 addresses, **api: written.append((ready, addresses)) or {1: 1}})
    module, settings = fresh_recovery(tmp_path, monkeypatch, salt=salt)
    settings["endpoint_ready"] = {"enabled": True, "service": "postgres",
                                  "namespace": "databases", "address": "198.18.2.11"}
    monkeypatch.setattr(module, "monitoring_settings", lambda: settings)
    result = module.recover("remote-db")["remote-db"]
    assert (result["action"], result["state"]) == ("failback", "failover"), result
    assert result["comment"].startswith("staying on the backup") and pluto.calls == []
    assert written == [(True, ["198.18.2.11"])]
    assert result["endpoint"] == {"ready": True, "changed": True}
    # one endpoint for every tunnel the gateway watches: another one down keeps it not ready
    settings["tunnels"] = ["remote-db", "other-db"]
    module.recover("remote-db")
    assert written[1:] == [(False, ["198.18.2.11"])]


def test_recover_when_down_climbs_the_ladder(tmp_path, monkeypatch):
    pluto = FakePluto(primary_alive=True)
    pluto.ike["remote-db-backup"] = False  # neither peer carries it
    salt = dict(pluto.salt(), **{"libreswan.restart_conn": pluto.up})
    module, _ = fresh_recovery(tmp_path, monkeypatch, salt=salt)
    result = module.recover("remote-db")["remote-db"]
    assert (result["action"], result["state"], result["result"]) == ("ensure_up", "up", True)
    assert [s["step"] for s in result["steps"]] == ["restart_conn"]
    memory = module.recovery_state("remote-db")["remote-db"]
    assert memory["recoveries"]["success"] == 1 and memory["attempts"] == []


def test_a_recovery_reads_pluto_with_status_timeout(tmp_path, monkeypatch):
    """A busy pluto is not a hung one: the recovery's own reads of pluto (the tunnels to
    act on, the health before and after each step, the endpoint's) and those of the
    steps it runs (libreswan.up, restart_conn, switch) are bounded by ``status_timeout``.
    With the watcher's 3 s and libreswan.status's 10 s, a pluto running both gateways'
    updown scripts in the e2e guest read as hung and the ladder restarted it."""
    pluto, asked = FakePluto(primary_alive=False), []
    pluto.ike["remote-db-backup"] = False  # down; the backup answers, the primary does not

    def status(timeout=None, reasons=True):
        asked.append(timeout)
        return pluto.status(timeout, reasons)

    salt = dict(pluto.salt(), **{
        "libreswan.status": status,
        "libreswan.restart_conn": pluto.up,
        "cmd.run_stdout": lambda *a, **kw: "4242"})  # pluto's pid, unchanged by the switch
    module, settings = fresh_recovery(tmp_path, monkeypatch, salt=salt)
    settings["status_timeout"] = 42
    monkeypatch.setattr(module, "monitoring_settings", lambda: settings)
    result = module.recover()["remote-db"]
    assert (result["state"], [s["step"] for s in result["steps"]]) == (
        "failover", ["restart_conn", "switch"]), result
    assert len(asked) >= 3 and set(asked) == {42}, asked
    assert pluto.bounds == [42, 42], pluto.calls  # restart_conn's up, switch's up
    asked.clear()
    module.health()
    assert asked == [42]


def test_status_timeout_is_a_bounded_number_of_seconds():
    recovery = load("salt/_modules/libreswan_recovery.py")
    assert recovery._settings({})["status_timeout"] == 10
    with pytest.raises(recovery.SettingsError,
                       match="vpn_gateway:monitoring:status_timeout: 0 is not a number from 1"):
        recovery._settings({"status_timeout": 0})


def test_recover_when_up_leaves_the_tunnel_alone(tmp_path, monkeypatch):
    pluto = FakePluto(primary_alive=True)
    pluto.ike.update({"remote-db": True, "remote-db-backup": False})
    module, _ = fresh_recovery(tmp_path, monkeypatch, salt=pluto.salt())
    result = module.recover("remote-db")["remote-db"]
    assert (result["action"], result["comment"]) == ("ensure_up", "tunnel is up")
    assert pluto.calls == []


def test_recover_backs_off_while_the_lock_is_held_and_refuses_undeclared_tunnels(
        tmp_path, monkeypatch):
    pluto = FakePluto(primary_alive=False)
    module, _ = fresh_recovery(tmp_path, monkeypatch, salt=pluto.salt())
    assert module.hold_recovery_lock(timeout=1)["held"]
    try:
        other = load("salt/_modules/libreswan_recovery.py")  # another process's view
        monkeypatch.setattr(other, "LOCK_DIR", module.LOCK_DIR)
        monkeypatch.setattr(other, "monitoring_settings", module.monitoring_settings)
        other.__salt__, other.__pillar__, other.__grains__ = (
            module.__salt__, module.__pillar__, {})
        result = other.recover("remote-db")["remote-db"]
        assert result["deferred"].startswith("the recovery lock is held"), result
    finally:
        module.release_recovery_lock()
    assert pluto.calls == []
    with pytest.raises(module.CommandExecutionError, match="not a tunnel this minion's pillar"):
        module.recover("other-db")


def test_recovery_setting_is_local_or_master():
    recovery = load("salt/_modules/libreswan_recovery.py")
    assert recovery._settings({})["recovery"] == "local"
    assert recovery._settings({"recovery": "master"})["recovery"] == "master"
    with pytest.raises(recovery.SettingsError, match="vpn_gateway:monitoring:recovery: 'cron'"):
        recovery._settings({"recovery": "cron"})


# -- the recovery watcher -------------------------------------------------------------------
SETTINGS = {"holddown": 2, "repeat": 4, "repeat_max": 16, "recovery": "local",
            "watch_interval": 7, "failback": "auto", "failback_after": 300,
            "status_timeout": 10}


def test_the_watcher_recovers_at_each_change_and_repeat_after_the_holddown():
    beacon = load("salt/_beacons/libreswan.py")
    entries, recovered = {}, []

    def poll(now, state):
        return beacon._watch_once(entries, now, {"remote-db": {"state": state}}, SETTINGS,
                                  recovered.append)

    assert poll(0, "up") == [] and poll(2, "up") == ["remote-db"]  # first stable state
    assert poll(4, "down") == [] and poll(5, "up") == []  # a blip inside the holddown
    assert poll(6, "down") == [] and poll(8, "down") == ["remote-db"]  # down held 2 s
    assert poll(10, "down") == [] and poll(12, "down") == ["remote-db"]  # repeat after 4 s
    assert poll(14, "failover") == [] and poll(16, "failover") == ["remote-db"]
    assert recovered == ["remote-db"] * 4


def test_on_the_backup_a_failback_is_tried_once_per_failback_after_not_at_the_doubling():
    beacon = load("salt/_beacons/libreswan.py")

    def repeats(state, **settings):
        entries, polls = {}, []
        for now in range(0, 60):
            if beacon._watch_once(entries, now, {"remote-db": {"state": state}},
                                  dict(SETTINGS, **settings), lambda tunnel: None):
                polls.append(now)
        return polls

    # reported at 2 s, then repeats every failback_after (6 s), never doubled past it
    assert repeats("failover", failback_after=6) == [2, 6, 12, 18, 24, 30, 36, 42, 48, 54]
    # no failback to try: the doubling up to repeat_max (4, 8, 16, 16 s)
    assert repeats("failover", failback_after=6, failback="never") == [2, 6, 14, 30, 46]
    assert repeats("down", failback_after=6) == [2, 6, 14, 30, 46]
    # failback_after shorter than repeat: repeat is the shortest gap
    assert repeats("failover", failback_after=1) == list(range(2, 60, 4))


def fake_watcher_salt(states, recovered):
    """health reads states.pop(0) (the last one stays); recover records its tunnel."""
    return {"libreswan.monitoring_settings": lambda: SETTINGS,
            "libreswan.health": lambda timeout, reasons: {"remote-db": {
                "state": states.pop(0) if len(states) > 1 else states[0]}},
            "libreswan.recover": lambda tunnel: recovered.append(tunnel) or {
                tunnel: {"action": "ensure_up", "state": "up", "steps": []}}}


def test_the_watcher_asks_pluto_with_status_timeout_not_the_beacons_bound(tmp_path):
    """The watcher runs in its own process: it waits ``status_timeout`` for pluto (the
    beacon's 3 s protects the minion's main loop, which the watcher is not)."""
    beacon = load("salt/_beacons/libreswan.py")
    asked, clock = [], [0.0]
    beacon.__salt__ = {"libreswan.monitoring_settings": lambda: dict(SETTINGS, status_timeout=42),
                       "libreswan.health": lambda timeout, reasons: asked.append(timeout) or {
                           "remote-db": {"state": "up"}}}
    beacon.time = type("T", (), {"time": staticmethod(lambda: clock[0])})
    (tmp_path / beacon.WATCHER_GENERATION).write_text("g1")

    def sleep(seconds):
        clock[0] += seconds
        (tmp_path / beacon.WATCHER_GENERATION).write_text("g2")

    beacon._watch("g1", 2, str(tmp_path), sleep=sleep)
    assert asked == [42] and beacon.QUERY_TIMEOUT != 42


def test_the_watcher_ends_when_the_beacon_wants_other_settings(tmp_path):
    beacon = load("salt/_beacons/libreswan.py")
    recovered, clock = [], [0.0]
    beacon.__salt__ = fake_watcher_salt(["down"], recovered)
    beacon.time = type("T", (), {"time": staticmethod(lambda: clock[0])})
    (tmp_path / beacon.WATCHER_GENERATION).write_text("g1")

    def sleep(seconds):
        clock[0] += seconds
        if clock[0] >= 10:  # the beacon's settings changed
            (tmp_path / beacon.WATCHER_GENERATION).write_text("g2")

    beacon._watch("g1", 2, str(tmp_path), sleep=sleep)
    assert clock[0] == 10 and recovered == ["remote-db"] * 2  # at 2 s, repeated at 6 s
    held = beacon._try_lock(str(tmp_path / beacon.WATCHER_LOCK))
    assert held is not None  # the watcher let go of its lock
    try:  # a second watcher while one holds the lock returns at once
        assert beacon._watch("g2", 2, str(tmp_path), sleep=sleep) is None
    finally:
        __import__("os").close(held)


class FakeProcess:
    started = []

    def __init__(self, target, args, name):
        self.args, self.alive, self.pid = args, True, 4242

    def start(self):
        FakeProcess.started.append(self.args)

    def is_alive(self):
        return self.alive

    def kill(self):
        self.alive = False

    def join(self, timeout=None):
        pass


def test_the_beacon_keeps_one_watcher_and_marks_its_events(tmp_path, monkeypatch):
    beacon = load("salt/_beacons/libreswan.py")
    memory, settings, asked = {}, dict(SETTINGS, holddown=0), []

    def health(timeout, reasons=True):
        """pluto's states say little; its log (reasons=True) says why."""
        asked.append(reasons)
        return {"remote-db": {"state": "down", "active": None,
                              "reason": "pluto's log: peer unreachable" if reasons else "x"}}

    beacon.__salt__ = {
        "libreswan.monitoring_settings": lambda: settings,
        "libreswan.monitoring_memory": lambda what: json.loads(json.dumps(memory)),
        "libreswan.health": health,
        "libreswan.remember": lambda what, data: memory.update(data) or {}}
    beacon.__context__ = {}
    monkeypatch.setattr(beacon, "WATCHER_DIR", str(tmp_path))
    monkeypatch.setattr(beacon._keep_watcher, "__defaults__", (str(tmp_path),))
    monkeypatch.setattr(beacon.salt.utils.process, "SignalHandlingProcess", FakeProcess)
    FakeProcess.started = []
    (fired,) = beacon.beacon([])
    assert (fired["state"], fired["recovery"]) == ("down", "local")
    # the poll leaves pluto's log unread; what is reported gets its reason from it
    assert asked == [False, True] and fired["reason"] == "pluto's log: peer unreachable"
    (started,) = FakeProcess.started
    generation = (tmp_path / beacon.WATCHER_GENERATION).read_text()
    assert started == (generation, 7, str(tmp_path))  # vpn_gateway:monitoring:watch_interval
    beacon.beacon([])  # alive (not yet holding its lock): none started
    assert len(FakeProcess.started) == 1
    # still without its lock after the grace: stuck (a fork that inherited a held lock)
    stuck = beacon.__context__["libreswan.beacon.watcher"]
    beacon.__context__["libreswan.beacon.watcher_started"] -= beacon.WATCHER_START_GRACE
    (tmp_path / beacon.WATCHER_LOCK).write_text(str(stuck.pid))  # it took its lock, now ends
    beacon.beacon([])
    assert stuck.alive and len(FakeProcess.started) == 1
    (tmp_path / beacon.WATCHER_LOCK).write_text("")  # it never took it
    beacon.beacon([])
    assert not stuck.alive and len(FakeProcess.started) == 2
    assert beacon.__context__["libreswan.beacon.watcher"] is not stuck
    FakeProcess.started.pop()
    lock = beacon._try_lock(str(tmp_path / beacon.WATCHER_LOCK))  # the watcher's lock
    beacon.__context__.clear()  # a beacon reload forgets its process: the lock still says
    beacon.beacon([])
    assert len(FakeProcess.started) == 1
    settings["repeat"] = 5  # new settings: a new generation for the running watcher to see
    beacon.beacon([])
    assert (tmp_path / beacon.WATCHER_GENERATION).read_text() != generation
    __import__("os").close(lock)  # the old watcher ended
    beacon.beacon([])
    assert len(FakeProcess.started) == 2
    settings["recovery"] = "master"  # the reactor's: no watcher, no mark
    beacon.__context__.clear()
    memory.clear()
    monkeypatch.setattr(beacon, "WATCHER_DIR", str(tmp_path))
    (fired,) = beacon.beacon([])
    assert "recovery" not in fired and len(FakeProcess.started) == 2
    assert (tmp_path / beacon.WATCHER_GENERATION).read_text() == "off"  # the old one ends


def test_the_watcher_runs_in_a_process_of_its_own(tmp_path):
    """The real SignalHandlingProcess: a forked watcher calls libreswan.recover for a down
    tunnel, and ends once the generation changes."""
    beacon = load("salt/_beacons/libreswan.py")
    out = tmp_path / "recovered"

    def recover(tunnel):
        with open(out, "a", encoding="utf-8") as handle:
            handle.write(f"{tunnel} {__import__('os').getpid()}\n")
        return {tunnel: {"action": "ensure_up", "state": "up", "steps": []}}

    salt = fake_watcher_salt(["down"], [])
    salt["libreswan.recover"] = recover
    beacon.__salt__, beacon.__context__ = salt, {}
    process = beacon._keep_watcher(dict(SETTINGS, holddown=0), 0.1, str(tmp_path))
    try:
        wait = time.monotonic() + 30
        while not out.exists() and time.monotonic() < wait:
            time.sleep(0.1)
        tunnel, pid = out.read_text().split("\n")[0].split()
        assert tunnel == "remote-db" and int(pid) == process.pid
        assert (tmp_path / beacon.WATCHER_LOCK).read_text() == str(process.pid)
    finally:
        (tmp_path / beacon.WATCHER_GENERATION).write_text("other")
        process.join(30)
        if process.is_alive():  # stuck: a leftover child would hang pytest's exit
            process.kill()
            process.join(5)
    assert process.exitcode == 0


# -- the master's reactor ------------------------------------------------------------------
def test_the_reactor_leaves_events_the_minion_recovers_itself(reactor, caplog):  # noqa: F811
    for state in ("down", "partial", "up", "failover"):
        assert reactions(reactor, *beacon_event("vpn-gw1", "remote-db", state,
                                                recovery="local")) == []
    assert "event refused" not in caplog.text
    (chunk,) = reactions(reactor, *beacon_event("vpn-gw1", "remote-db", "down",
                                                recovery="master"))
    assert chunk["fun"] == "libreswan.ensure_up"
    # a crafted event stays refused, marked or not
    assert reactions(reactor, *beacon_event("*", "remote-db", "down", recovery="local")) == []
    assert "event refused" in caplog.text


def climbed(tmp_path, monkeypatch, pluto):
    """ensure_up's result on ``pluto`` with the tunnel down (no step waits for what
    cannot come)."""
    salt = dict(pluto.salt(), **{"libreswan.restart_conn": pluto.up,
                                 "cmd.run_stdout": lambda *a, **kw: "4242"})  # pluto's pid
    module, _ = fresh_recovery(tmp_path, monkeypatch, salt=salt)
    monkeypatch.setattr(module, "_wait_health", lambda settings, tunnel, timeout: (
        module._health_now(settings, tunnel)))
    return module.ensure_up("remote-db")["remote-db"]


def test_a_peer_that_answers_no_restart_gets_no_second_one(tmp_path, monkeypatch):
    """Primary peer down: each conn restart waits step_timeout for an IKE SA that a gone
    peer never answers. One restart, then the failover (issue 18: where 19.8 s went)."""
    pluto = FakePluto(primary_alive=False)
    pluto.ike["remote-db-backup"] = False  # the primary carried it, then went away
    result = climbed(tmp_path, monkeypatch, pluto)
    assert [(s["step"], s["target"]) for s in result["steps"]] == [
        ("restart_conn", "primary"), ("switch", "backup")]
    assert (result["state"], result["active"]) == ("failover", "backup")
    assert all(isinstance(s["seconds"], float) for s in result["steps"])


def test_a_peer_that_answers_keeps_its_conn_restarts(tmp_path, monkeypatch):
    """The peer answered (an IKE SA in pluto's log) but the tunnel did not come up:
    the next restart may still help, so every one is tried before the failover."""
    pluto = FakePluto(primary_alive=False)
    pluto.ike["remote-db-backup"] = False
    pluto.answered = True
    result = climbed(tmp_path, monkeypatch, pluto)
    assert [s["step"] for s in result["steps"]] == ["restart_conn", "restart_conn", "switch"]
