"""Pure parts of the monitoring: settings, health, budget, ladder, beacon
transitions, alert payloads and the metrics text."""
import copy
import json
import multiprocessing
import re
import threading
import time
import urllib.error

import pytest

from monitoring_helpers import load, parsed_status

pytestmark = pytest.mark.unit

recovery = load("salt/_modules/libreswan_recovery.py")
beacon = load("salt/_beacons/libreswan.py")
alert = load("salt/_modules/vpn_alert.py")

PLUTO_STOPPED = {"running": False, "error": "whack: Pluto is not running (no \"/run/pluto/"
                                            "pluto.ctl\")", "conns": {}, "tunnels": {}}


# -- settings -----------------------------------------------------------------------------
def test_settings_default_and_merge_nested_keys():
    settings = recovery._settings({"holddown": 2, "backoff": {"base": 5}}, "remote-db")
    assert settings["holddown"] == 2
    assert settings["backoff"] == {"base": 5, "max": 600}
    assert settings["tunnels"] == ["remote-db"]
    assert recovery.DEFAULTS["backoff"]["base"] == 30  # the defaults are not mutated


def test_endpoint_settings_default_from_the_kubernetes_section():
    defaults = {"service": "postgres", "namespace": "databases", "address": "198.18.2.11",
                "kubeconfig": "/etc/vpn-gateway/kubeconfig", "context": None}
    ready = recovery._settings({"endpoint_ready": {"enabled": True, "namespace": "db"}},
                               endpoint_defaults=defaults)["endpoint_ready"]
    assert ready == dict(defaults, enabled=True, namespace="db")


def test_settings_never_carry_the_webhook_url():
    settings = recovery._settings({"webhook_url": "http://198.18.0.99:8080/hook-token"})
    assert "webhook_url" not in settings
    assert "hook-token" not in repr(settings)


@pytest.mark.parametrize("raw, key", [
    ({"holddown": -1}, "vpn_gateway:monitoring:holddown"),
    ({"budget": {"attempts": 0}}, "vpn_gateway:monitoring:budget:attempts"),
    ({"backoff": {"base": "30s"}}, "vpn_gateway:monitoring:backoff:base"),
    ({"up_when": "ike"}, "vpn_gateway:monitoring:up_when"),
    ({"failback": True}, "vpn_gateway:monitoring:failback"),
    ({"tunnels": ["bad name"]}, "vpn_gateway:monitoring:tunnels"),
    ({"holdown": 3}, "vpn_gateway:monitoring:holdown"),
    ({"endpoint_ready": {"enabled": True}}, "vpn_gateway:monitoring:endpoint_ready:service"),
])
def test_bad_settings_name_the_pillar_key(raw, key):
    with pytest.raises(recovery.SettingsError, match=re.escape(key)):
        recovery._settings(raw)


# -- health -------------------------------------------------------------------------------
def test_ike_only_counts_as_up_only_when_asked():
    status = parsed_status("4.10-primary-ike-up.status")
    by_child = recovery._health(status, "remote-db", "child_sa")
    by_ike = recovery._health(status, "remote-db", "ike_sa")
    assert by_child["state"] == "down" and "no Child SA" in by_child["reason"]
    assert by_ike == dict(by_ike, state="up", up=True, active="primary", has_backup=True)


def test_backup_carrying_the_tunnel_is_failover():
    health = recovery._health(parsed_status("4.10-backup-ike-up.status"), "remote-db", "ike_sa")
    assert (health["state"], health["active"], health["up"]) == ("failover", "backup", True)


def test_both_peers_up_reads_up_on_both():
    # The primary's states, renamed to the backup conn, beside the primary's own.
    text = parsed_status("4.10-primary-ike-up.status")
    twin = parsed_status("4.10-primary-ike-up.status", {'"remote-db': '"remote-db-backup'})
    conns = dict(text["conns"], **{"remote-db-backup": twin["conns"]["remote-db-backup"]})
    status = dict(text, conns=conns)
    assert recovery._health(status, "remote-db", "ike_sa")["active"] == "both"


def test_pluto_stopped_is_down_with_the_reason():
    health = recovery._health(PLUTO_STOPPED, "remote-db", "ike_sa")
    assert (health["state"], health["pluto_running"], health["has_backup"]) == (
        "down", False, False)
    assert health["reason"].startswith("pluto is not running")


# -- budget and ladder ----------------------------------------------------------------------
def test_budget_spaces_attempts_with_doubling_backoff():
    args = dict(attempts=5, window=3600, base=30, maximum=100)
    assert recovery._budget([], 1000, **args) == {"allowed": True, "wait": 0.0, "attempt": 1,
                                                  "exhausted": False}
    second = recovery._budget([1000], 1010, **args)
    assert (second["allowed"], second["wait"], second["attempt"]) == (False, 20, 2)
    assert recovery._budget([1000], 1030, **args)["allowed"]
    third = recovery._budget([1000, 1030], 1040, **args)
    assert third["wait"] == 50  # 60 s after the second
    fifth = recovery._budget([1000, 1030, 1090, 1210], 1250, **args)
    assert fifth["wait"] == 60  # capped at 100 s after the fourth


def test_budget_exhausted_until_the_oldest_attempt_leaves_the_window():
    history = [0, 10, 20]
    spent = recovery._budget(history, 100, attempts=3, window=600, base=0, maximum=0)
    assert spent == {"allowed": False, "wait": 500, "attempt": 3, "exhausted": True}
    later = recovery._budget(history, 605, attempts=3, window=600, base=0, maximum=0)
    assert later["allowed"] and later["attempt"] == 3


def test_ladder_conn_restarts_then_failover_then_service():
    status = parsed_status("4.10-primary-ike-up.status")
    health = recovery._health(status, "remote-db", "child_sa")
    assert recovery._ladder(health, 2) == [("restart_conn", "primary"), ("restart_conn", "primary"),
                                           ("switch", "backup"), ("restart_service", None)]


def test_ladder_from_the_backup_restarts_the_backup_then_fails_over_to_the_primary():
    health = dict(recovery._health(PLUTO_STOPPED, "remote-db", "ike_sa"), active="backup",
                  pluto_running=True, has_backup=True)
    assert recovery._ladder(health, 1) == [("restart_conn", "backup"), ("switch", "primary"),
                                           ("restart_service", None)]


def test_ladder_without_pluto_restarts_the_service_first():
    health = dict(recovery._health(PLUTO_STOPPED, "remote-db", "ike_sa"), has_backup=True)
    assert recovery._ladder(health, 2) == [("restart_service", None), ("switch", "backup")]
    alone = recovery._health(PLUTO_STOPPED, "remote-db", "ike_sa")
    assert recovery._ladder(alone, 2) == [("restart_service", None)]


# -- beacon transitions ----------------------------------------------------------------------
def run(observations, holddown=5, repeat=10, repeat_max=40, entry=None):
    """Feed (time, state) observations; return the events and the final entry."""
    entry, events = dict(entry or {}), []
    for now, state in observations:
        entry, event = beacon._transition(entry, state, now, holddown, repeat, repeat_max)
        if event:
            events.append((now, event["state"], event["previous"], event["repeat"]))
    return events, entry


def test_first_stable_state_is_reported_after_the_holddown():
    events, entry = run([(0, "up"), (2, "up"), (5, "up"), (9, "up")])
    assert events == [(5, "up", None, 0)]
    assert entry["since"] == 0


def test_reported_changes_are_kept_in_a_short_history():
    seen = [(t, "down" if (t // 10) % 2 else "up") for t in range(0, 200, 1)]
    events, entry = run(seen, repeat=1000, repeat_max=1000)
    assert len(events) == 20 and len(entry["history"]) == beacon.HISTORY
    assert entry["history"][-1] == {"state": "down", "since": 190, "fired": 195}


def test_flapping_inside_the_holddown_fires_nothing():
    events, _ = run([(0, "up"), (5, "up"), (10, "down"), (12, "up"), (13, "down"), (16, "up"),
                     (30, "up")])
    assert events == [(5, "up", None, 0)]


def test_down_repeats_with_doubling_intervals_until_it_changes():
    seen = [(t, "down") for t in range(0, 120, 1)] + [(120, "up"), (125, "up"), (200, "up")]
    events, _ = run(seen)
    assert events == [(5, "down", None, 0), (15, "down", "down", 1), (35, "down", "down", 2),
                      (75, "down", "down", 3), (115, "down", "down", 4), (125, "up", "down", 0)]


def test_state_on_disk_equal_to_reality_fires_nothing_at_minion_start():
    events, _ = run([(100, "up"), (110, "up")], entry={"state": "up", "since": 1, "fired": 1})
    assert events == []
    events, _ = run([(100, "down"), (105, "down")], entry={"state": "up", "since": 1})
    assert events == [(105, "down", "up", 0)]


def test_beacon_config_refuses_settings_that_belong_in_pillar():
    assert beacon.validate([{"interval": 2}])[0]
    ok, message = beacon.validate([{"holddown": 5}])
    assert not ok and "vpn_gateway:monitoring" in message


# -- alerts ----------------------------------------------------------------------------------
def test_alert_payload_has_the_fields_the_receiver_reads():
    body = alert._payload("vpn-gw1", "remote-db", "down", "gave_up", 3, "every step failed", 0)
    assert body == {"hostname": "vpn-gw1", "conn": "remote-db", "state": "down",
                    "step": "gave_up", "attempt": 3, "detail": "every step failed",
                    "time": "1970-01-01T00:00:00Z"}


def test_rate_limit_per_key_and_window():
    sent = {"remote-db/down": 100}
    assert not alert._rate_allows(sent, "remote-db/down", 150, 60)
    assert alert._rate_allows(sent, "remote-db/down", 160, 60)
    assert alert._rate_allows(sent, "remote-db/up", 150, 60)


def test_a_failed_post_is_described_without_the_url():
    url = "http://198.18.0.99:9/hooks/T000/SECRET"
    errors = [urllib.error.HTTPError(url, 500, "boom " + url, {}, None),
              urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")),
              ValueError(f"unknown url type: {url}")]
    for exc in errors:
        assert "SECRET" not in alert._safe_error(exc)


# -- the recovery lock, recovery.json, failback (issue 13) --------------------------------
def fresh_recovery(tmp_path, monkeypatch, salt=None, pillar=None):
    """The module with its lock and memory in tmp_path and a fake __salt__."""
    module = load("salt/_modules/libreswan_recovery.py")
    monkeypatch.setattr(module, "LOCK_DIR", str(tmp_path / "run"))
    settings = recovery._settings({"up_when": "ike_sa", "step_timeout": 1,
                                   "state_dir": str(tmp_path / "lib")}, "remote-db")
    monkeypatch.setattr(module, "monitoring_settings", lambda: copy.deepcopy(settings))
    module.__salt__ = dict(salt or {})
    module.__pillar__ = {"vpn_gateway": pillar or {"tunnel": {"name": "remote-db"}}}
    module.__grains__ = {}
    return module, settings


def _write_entries(module, tunnel, count):
    for n in range(count):
        module._remember(tunnel, {"attempts": [n], "recoveries": {"success": n, "failure": 0}})


def test_two_tunnels_ladders_never_lose_each_others_memory(tmp_path, monkeypatch):
    """Processes writing recovery.json for their own tunnels at once: every last write stays
    (a plain read-modify-write without the file's lock loses some, as it did before)."""
    module, settings = fresh_recovery(tmp_path, monkeypatch)
    tunnels = [f"tunnel{i}" for i in range(4)]
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_write_entries, args=(module, t, 60)) for t in tunnels]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    data = json.loads((tmp_path / "lib" / "recovery.json").read_text())
    assert {t: data.get(t, {}).get("attempts") for t in tunnels} == {t: [59] for t in tunnels}


def test_the_recovery_lock_makes_a_state_run_wait_and_a_ladder_back_off(tmp_path, monkeypatch):
    module, _ = fresh_recovery(tmp_path, monkeypatch)
    entered, leave = threading.Event(), threading.Event()

    def ladder():
        with module._locked() as mine:
            assert mine
            entered.set()
            leave.wait(10)

    thread = threading.Thread(target=ladder)
    thread.start()
    entered.wait(10)
    threading.Timer(1.0, leave.set).start()
    started = time.monotonic()
    held = module.hold_recovery_lock(timeout=10)  # the state run's first state
    thread.join(10)
    assert held["held"] and time.monotonic() - started >= 0.9 and held["waited"] >= 0.9
    with module._locked() as mine:  # a ladder while the state run holds it
        assert mine is False
    assert module.release_recovery_lock()["released"]
    with module._locked() as mine:
        assert mine is True


def test_a_state_run_gives_up_waiting_after_its_timeout(tmp_path, monkeypatch):
    module, _ = fresh_recovery(tmp_path, monkeypatch)
    with module._locked() as mine:
        assert mine
        assert module.hold_recovery_lock(timeout=0.5)["held"] is False
    assert module.release_recovery_lock()["released"] is False


def test_ensure_up_backs_off_while_the_lock_is_held(tmp_path, monkeypatch):
    calls = []
    module, _ = fresh_recovery(tmp_path, monkeypatch, salt={
        "libreswan.status": lambda **kw: calls.append("status") or {"conns": {}, "tunnels": {}},
        "saltutil.is_running": lambda fun: []})
    assert module.hold_recovery_lock(timeout=1)["held"]
    assert module.ensure_up("remote-db")["remote-db"]["deferred"].startswith(
        "the recovery lock is held")
    assert module.failback("remote-db")["remote-db"]["deferred"].startswith(
        "the recovery lock is held")
    assert calls == []  # no status read, no step
    module.release_recovery_lock()


def test_a_ladder_that_took_the_lock_backs_off_from_a_rendering_state_run(tmp_path, monkeypatch):
    steps = []
    module, _ = fresh_recovery(tmp_path, monkeypatch, salt={
        "libreswan.status": lambda **kw: PLUTO_STOPPED,
        "saltutil.is_running": lambda fun: [{"fun": "state.apply", "jid": "1"}],
        "service.stop": lambda *a: steps.append("stop"),
        "service.start": lambda *a: steps.append("start")})
    result = module.ensure_up("remote-db")["remote-db"]
    assert result["deferred"] == "a state run is in progress" and steps == []


class FakePluto:
    """libreswan.up/down/switch on a two-conn tunnel; the primary answers or not."""

    def __init__(self, primary_alive, lasts_beside_backup=True):
        self.alive, self.lasts = primary_alive, lasts_beside_backup
        self.ike = {"remote-db": False, "remote-db-backup": True}
        self.answered = False  # what pluto's log says (libreswan.peer_answered)
        self.calls = []
        self.bounds = []  # the status_timeout each up/switch was given (None: the default)

    def status(self, timeout=None, reasons=True):
        conns = {name: {"ike_established": up, "up": up, "reason": None if up else "down"}
                 for name, up in self.ike.items()}
        return {"running": True, "conns": conns, "tunnels": {"remote-db": {}}}

    def up(self, name, wait=10, timeout=None):
        self.calls.append(("up", name))
        self.bounds.append(timeout)
        if name == "remote-db-backup" or self.alive:
            self.answered = self.answered or name == "remote-db"
            # 4.10 with Child SAs: the primary's IKE SA is deleted at once while the
            # backup's SAs hold the routes
            self.ike[name] = self.lasts or name == "remote-db-backup" or not self.ike[
                "remote-db-backup"]
        return {"name": name, "ike_established": self.ike[name], "up": self.ike[name]}

    def down(self, name):
        self.calls.append(("down", name))
        self.ike[name] = False
        return {"name": name, "ok": True}

    def switch(self, name, to="backup", wait=10, timeout=None):
        self.calls.append(("switch", to))
        target, other = (name + "-backup", name) if to == "backup" else (name, name + "-backup")
        self.down(other)
        return self.up(target, wait, timeout)

    def salt(self):
        return {"libreswan.status": self.status, "libreswan.up": self.up,
                "libreswan.down": self.down, "libreswan.switch": self.switch,
                "libreswan.peer_answered": lambda name, since: self.answered,
                "saltutil.is_running": lambda fun: []}


def due_failback(module, tunnel="remote-db"):
    module._remember(tunnel, {"attempts": [], "recoveries": {"success": 1, "failure": 0},
                              "backup_since": time.time() - 10 ** 5})
    return module.failback(tunnel)[tunnel]


def test_failback_to_a_dead_primary_never_touches_the_backup(tmp_path, monkeypatch):
    pluto = FakePluto(primary_alive=False)
    module, _ = fresh_recovery(tmp_path, monkeypatch, salt=pluto.salt())
    result = due_failback(module)
    assert result["outcome"] == "primary_silent" and result["state"] == "failover"
    assert pluto.calls == [("up", "remote-db")]  # the backup untouched, no terminate
    assert pluto.ike == {"remote-db": False, "remote-db-backup": True}
    memory = module.recovery_state("remote-db")["remote-db"]
    assert memory["failback_tried"] and memory["failback_last"]["result"] == "primary_silent"


def test_failback_to_a_live_primary_makes_before_it_breaks(tmp_path, monkeypatch):
    pluto = FakePluto(primary_alive=True)
    module, _ = fresh_recovery(tmp_path, monkeypatch, salt=pluto.salt())
    result = due_failback(module)
    assert result["outcome"] == "failed_back" and result["state"] == "up"
    assert pluto.calls == [("up", "remote-db"), ("down", "remote-db-backup")]
    assert pluto.ike == {"remote-db": True, "remote-db-backup": False}


def test_failback_to_a_live_primary_whose_ike_sa_does_not_last_beside_the_backup(
        tmp_path, monkeypatch):
    """Libreswan 4.10 with real Child SAs (the QEMU guest): the primary's IKE SA is
    deleted at once while the backup holds the routes. Pluto's log says the primary
    answered: the backup goes, the primary is initiated again and carries."""
    pluto = FakePluto(primary_alive=True, lasts_beside_backup=False)
    module, _ = fresh_recovery(tmp_path, monkeypatch, salt=pluto.salt())
    result = due_failback(module)
    assert result["outcome"] == "failed_back" and result["state"] == "up", result
    assert pluto.calls == [("up", "remote-db"), ("down", "remote-db-backup"),
                           ("up", "remote-db")]
    assert pluto.ike == {"remote-db": True, "remote-db-backup": False}


def test_a_failback_try_is_due_once_per_failback_after_within_half_a_repeat(
        tmp_path, monkeypatch):
    """The tries come at the failover event's repeats, one per failback_after (30 s and
    300 s here), each a little after its event: one that starts 1 s short of the last
    try's failback_after still runs; 20 s short it waits."""
    pluto = FakePluto(primary_alive=False)
    module, settings = fresh_recovery(tmp_path, monkeypatch, salt=pluto.salt())
    assert (settings["repeat"], settings["failback_after"]) == (30, 300)

    def tried_ago(seconds):
        module._remember("remote-db", {"attempts": [], "recoveries": {},
                                       "backup_since": time.time() - 10 ** 5,
                                       "failback_tried": time.time() - seconds})
        return module.failback("remote-db")["remote-db"]

    assert tried_ago(299)["outcome"] == "primary_silent"
    assert tried_ago(280)["comment"].startswith("staying on the backup (due in ")
    assert pluto.calls == [("up", "remote-db")]


def test_the_log_tells_which_conns_peer_established_an_ike_sa():
    module = load("salt/_modules/libreswan.py")
    # Captured in the QEMU guest (Libreswan 4.10): the primary's IKE SA beside the backup.
    lines = ['"remote-db/0x3"[3] 198.18.0.21 #35: initiating IKEv2 connection',
             '"remote-db/0x3"[3] 198.18.0.21 #35: initiator established IKE SA; authenticated '
             "peer using authby=secret and ID_FQDN '@remote-gw-primary'",
             '"remote-db/0x3"[3] 198.18.0.21 #36: cannot route -- route already in use for '
             '"remote-db-backup/0x3"[1] 198.18.0.22',
             '"remote-db/0x3"[3] 198.18.0.21 #35: deleting state (STATE_V2_ESTABLISHED_IKE_SA) '
             "aged 0.322413s and NOT sending notification"]
    assert module._ike_established_in(lines, "remote-db")
    assert not module._ike_established_in(lines, "remote-db-backup")
    assert not module._ike_established_in([lines[0], lines[3]], "remote-db")
    assert not module._ike_established_in([lines[1]], "remote")


def test_a_primary_that_came_up_beside_the_backup_takes_over_on_the_up_event(
        tmp_path, monkeypatch):
    pluto = FakePluto(primary_alive=True)
    pluto.ike["remote-db"] = True  # pluto's own retry reached the primary after a failback try
    module, _ = fresh_recovery(tmp_path, monkeypatch, salt=pluto.salt())
    result = module.ensure_up("remote-db")["remote-db"]
    assert (result["state"], result["active"]) == ("up", "primary") and result["result"]
    assert pluto.calls == [("down", "remote-db-backup")]


def test_the_lock_states_change_nothing_and_predict_nothing(tmp_path, monkeypatch):
    module, _ = fresh_recovery(tmp_path, monkeypatch)
    states = load("salt/_states/libreswan_recovery.py")
    states.__salt__ = {"libreswan.hold_recovery_lock": module.hold_recovery_lock,
                       "libreswan.release_recovery_lock": module.release_recovery_lock}
    for test in (True, False):
        states.__opts__ = {"test": test}
        taken = states.recovery_lock("lock", timeout=1)
        released = states.recovery_lock_released("lock")
        assert (taken["result"], taken["changes"]) == (True, {})
        assert (released["result"], released["changes"]) == (True, {})
    assert "recovery lock held since" in taken["comment"]
    assert "recovery lock released at" in released["comment"]


def test_a_state_run_releases_the_lock_after_its_modules_were_reloaded(tmp_path, monkeypatch):
    """A package install reloads the loader's modules mid-run: the release still finds it."""
    first, _ = fresh_recovery(tmp_path, monkeypatch)
    assert first.hold_recovery_lock(timeout=1)["held"]
    reloaded, _ = fresh_recovery(tmp_path, monkeypatch)
    with reloaded._locked() as mine:
        assert mine is False
    assert reloaded.release_recovery_lock()["released"]
    with reloaded._locked() as mine:
        assert mine is True
