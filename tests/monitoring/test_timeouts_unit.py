"""Subprocess timeouts (issue 13): a hung pluto gives a clear reason, never a hang.

Salt's ``cmd.run_all(..., timeout=N)`` kills the command and returns retcode 1,
empty stderr and ``CMD : Timed out after N seconds`` in stdout (seen with
salt-call 3008); ``SALT_TIMED_OUT`` is that answer.
"""
import time
import types

import pytest

from monitoring_helpers import load

pytestmark = pytest.mark.unit

libreswan = load("salt/_modules/libreswan.py")
recovery = load("salt/_modules/libreswan_recovery.py")
beacon = load("salt/_beacons/libreswan.py")
metrics = load("salt/_modules/vpn_metrics.py")


def salt_timed_out(argv, timeout):
    return {"stdout": f"{argv!r} : Timed out after {timeout} seconds", "stderr": "",
            "retcode": 1, "pid": 4242}


class FakeRunAll:
    """cmd.run_all that records each call's timeout and answers like Salt: a hung
    pluto for the argv words in ``hung`` (after the clock passed the timeout)."""

    def __init__(self, module, hung=(), answers=None):
        self.calls, self.hung, self.answers, self.module = [], set(hung), answers or {}, module
        self.now = 0.0
        # _run_bounded's time.monotonic(): a clock the fake advances
        module.time = types.SimpleNamespace(monotonic=self.monotonic, time=time.time,
                                            sleep=time.sleep)

    def monotonic(self):
        return self.now

    def __call__(self, argv, **kwargs):
        self.calls.append((argv, kwargs))
        assert kwargs.get("timeout"), f"{argv} without a timeout"
        if self.hung.intersection(argv):
            self.now += kwargs["timeout"]
            return salt_timed_out(argv, kwargs["timeout"])
        self.now += 0.01
        return {"stdout": self.answers.get(argv[-1], ""), "stderr": "", "retcode": 0, "pid": 1}


@pytest.fixture
def module(monkeypatch):
    mod = load("salt/_modules/libreswan.py")
    monkeypatch.setattr(mod, "_ipsec_path", lambda: "/usr/sbin/ipsec")
    return mod


# -- which bound -----------------------------------------------------------------------------
@pytest.mark.parametrize("args, bound", [
    (("whack", "--status"), libreswan.QUERY_TIMEOUT),
    (("whack", "--trafficstatus"), libreswan.QUERY_TIMEOUT),
    (("--version",), libreswan.QUERY_TIMEOUT),
    (("addconn", "--configsetup"), libreswan.QUERY_TIMEOUT),
    (("algparse", "-v2", "ike=aes256"), libreswan.QUERY_TIMEOUT),
    (("whack", "--name", "remote-db", "--initiate", "--asynchronous"), libreswan.CONTROL_TIMEOUT),
    (("whack", "--name", "remote-db", "--delete"), libreswan.CONTROL_TIMEOUT),
    (("addconn", "--config", "/etc/ipsec.conf", "remote-db"), libreswan.CONTROL_TIMEOUT),
    (("whack", "--rereadsecrets"), libreswan.CONTROL_TIMEOUT),
])
def test_queries_get_the_short_bound_and_control_calls_the_longer(args, bound):
    assert libreswan._timeout_for(args) == bound
    assert libreswan.QUERY_TIMEOUT <= 15 and libreswan.CONTROL_TIMEOUT <= 60


# -- Salt's timeout answer -> a reason -------------------------------------------------------
def test_salts_timeout_answer_is_recognised_and_an_ordinary_failure_is_not():
    argv = ["/usr/sbin/ipsec", "whack", "--status"]
    assert libreswan._timed_out(salt_timed_out(argv, 10), 10.02, 10)
    # whack's own failure (pluto not running): quick, a message in stderr
    assert not libreswan._timed_out({"stdout": "", "stderr": 'whack: Pluto is not running',
                                     "retcode": 1}, 0.05, 10)
    # exit 1 with that text but long before the bound: not Salt's kill
    assert not libreswan._timed_out(salt_timed_out(argv, 10), 0.5, 10)


def test_the_message_names_the_command_and_the_bound():
    assert libreswan._timeout_message(("whack", "--status"), 10) == (
        "pluto did not answer `ipsec whack --status` within 10 s")
    assert libreswan._timeout_message(("addconn", "--configsetup"), 10) == (
        "addconn did not answer `ipsec addconn --configsetup` within 10 s")


def test_every_ipsec_and_journalctl_call_passes_a_timeout(module):
    fake = module.__salt__ = {"cmd.run_all": FakeRunAll(module)}
    module._ipsec("whack", "--status")
    module._ipsec("whack", "--name", "remote-db", "--terminate")
    module._pluto_log()
    timeouts = [kwargs["timeout"] for _, kwargs in fake["cmd.run_all"].calls]
    assert timeouts == [module.QUERY_TIMEOUT, module.CONTROL_TIMEOUT, module.LOG_TIMEOUT]


def test_a_timed_out_ipsec_call_has_the_reason_in_stderr(module):
    module.__salt__ = {"cmd.run_all": FakeRunAll(module, hung={"whack"})}
    result = module._ipsec("whack", "--status", timeout=3)
    assert result["timed_out"] and result["retcode"] == 124 and result["stdout"] == ""
    assert result["stderr"] == "pluto did not answer `ipsec whack --status` within 3 s"


def test_hung_pluto_status_is_not_running_with_the_timeout_as_error(module):
    module.__salt__ = {"cmd.run_all": FakeRunAll(module, hung={"whack"})}
    status = module.status()
    assert (status["running"], status["timed_out"], status["conns"]) == (False, True, {})
    assert status["error"] == (f"pluto did not answer `ipsec whack --status` within "
                               f"{module.QUERY_TIMEOUT} s")
    assert "within 3 s" in module.status(timeout="3")["error"]
    assert "within 2.5 s" in module.status(timeout=2.5)["error"]
    with pytest.raises(ValueError):
        module.status(timeout=-1)


def test_healthy_pluto_status_runs_with_the_bound_and_is_not_timed_out(module):
    fake = FakeRunAll(module)
    module.__salt__ = {"cmd.run_all": fake}
    status = module.status(timeout=3)
    assert status["running"] and not status.get("timed_out")
    assert [kwargs["timeout"] for _, kwargs in fake.calls] == [3, 3]  # status, trafficstatus


# -- the reason in health, metrics -----------------------------------------------------------
HUNG = {"running": False, "installed": True, "timed_out": True, "conns": {}, "tunnels": {},
        "error": "pluto did not answer `ipsec whack --status` within 3 s"}


def test_a_hung_pluto_reads_down_with_the_timeout_as_reason():
    health = recovery._health(HUNG, "remote-db", "ike_sa")
    assert (health["state"], health["up"], health["pluto_running"]) == ("down", False, False)
    assert health["reason"] == "pluto did not answer `ipsec whack --status` within 3 s"


def test_a_hung_pluto_restarts_the_service_first():
    health = recovery._health(HUNG, "remote-db", "ike_sa")
    ladder = recovery._ladder(health, 2)
    assert ladder[0][0] == "restart_service", ladder


def test_metrics_of_a_hung_pluto():
    text = metrics._render(HUNG, {"remote-db": recovery._health(HUNG, "remote-db", "ike_sa")},
                           {}, {}, None, 0)
    assert "vpn_gateway_ipsec_up 0" in text
    assert 'vpn_gateway_tunnel_up{tunnel="remote-db"} 0' in text


# -- the beacon backs off from a hung pluto --------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_the_beacon_skips_its_polls_after_a_slow_query_and_asks_again_later():
    clock, asked = Clock(), []

    def hung(timeout):
        asked.append(timeout)
        clock.now += timeout
        return {"remote-db": {"state": "down"}}

    healths, skip = beacon._observe(None, 100.0, hung, timeout=3, backoff=20, clock=clock)
    assert healths == {"remote-db": {"state": "down"}} and skip == 120.0 and asked == [3]
    # polls before skip_until ask nothing and observe nothing
    for now in (102.0, 110.0, 119.9):
        assert beacon._observe(skip, now, hung, timeout=3, backoff=20, clock=clock) == (
            None, 120.0)
    assert asked == [3]
    healths, skip = beacon._observe(skip, 121.0, hung, timeout=3, backoff=20, clock=clock)
    assert healths and skip == 141.0 and asked == [3, 3]


def test_the_beacon_polls_every_time_while_pluto_answers():
    clock = Clock()

    def prompt(timeout):
        clock.now += 0.05
        return {"remote-db": {"state": "up"}}

    for now in (0.0, 2.0, 4.0):
        healths, skip = beacon._observe(None, now, prompt, clock=clock)
        assert healths and skip is None
    assert beacon.QUERY_TIMEOUT <= 5 and beacon.BACKOFF > beacon.QUERY_TIMEOUT


def test_one_slow_answer_is_not_reported_as_down():
    """The hold-down needs a second observation; the skipped polls give none."""
    entry, event = beacon._transition({"state": "up", "since": 0}, "down", 100.0, 2, 4, 16)
    assert event is None
    entry, event = beacon._transition(entry, "up", 121.0, 2, 4, 16)  # pluto answers again
    assert event is None and entry["state"] == "up" and "candidate" not in entry


def test_the_beacon_asks_health_with_its_bound_and_stays_quiet_while_backing_off():
    mod = load("salt/_beacons/libreswan.py")
    asked, saved, clock = [], {}, Clock()
    down = {"remote-db": {"state": "down", "active": None, "reason": HUNG["error"]}}

    def health(timeout=None, reasons=True):
        assert reasons is False  # a poll; and no reasons read after a hung one
        asked.append(timeout)
        clock.now += timeout  # pluto does not answer: the query runs into its bound
        return down

    mod.__context__ = {}
    mod.__salt__ = {
        # (recovery by the reactor: no local recovery process from this test)
        "libreswan.monitoring_settings": lambda: {"holddown": 2, "repeat": 4, "repeat_max": 16,
                                                  "recovery": "master"},
        "libreswan.monitoring_memory": lambda what: dict(saved),
        "libreswan.remember": lambda what, value: saved.update(value),
        "libreswan.health": health}
    wall = iter([1000.0, 1002.0, 1010.0, 1021.0])
    mod.time = types.SimpleNamespace(monotonic=clock, time=lambda: next(wall))
    assert mod.beacon([{"interval": 2}]) == [] and asked == [mod.QUERY_TIMEOUT]
    assert mod.beacon([{"interval": 2}]) == [] and mod.beacon([{"interval": 2}]) == []
    assert asked == [mod.QUERY_TIMEOUT]  # skipped: nothing asked, nothing observed
    events = mod.beacon([{"interval": 2}])  # 21 s later: asks again, down has held
    assert asked == [mod.QUERY_TIMEOUT] * 2
    assert [(e["tag"], e["reason"]) for e in events] == [("remote-db/down", HUNG["error"])]


def test_up_restart_conn_and_switch_read_pluto_within_the_bound_they_are_given(
        module, monkeypatch):
    """The recovery passes ``status_timeout`` to the steps: their status reads use it,
    their control calls keep CONTROL_TIMEOUT."""
    monkeypatch.setattr(module, "installed", lambda: True)
    fake = module.__salt__ = {"cmd.run_all": FakeRunAll(module)}
    module.switch("remote-db", to="backup", wait=0, timeout=7)
    module.restart_conn("remote-db", wait=0, timeout=7)
    bounds = {tuple(argv[1:]): kwargs["timeout"] for argv, kwargs in fake["cmd.run_all"].calls}
    assert bounds[("whack", "--status")] == bounds[("whack", "--trafficstatus")] == 7
    assert bounds[("whack", "--name", "remote-db-backup", "--initiate", "--asynchronous")] == (
        module.CONTROL_TIMEOUT)
    status_reads = [kw["timeout"] for argv, kw in fake["cmd.run_all"].calls if "--status" in argv]
    assert len(status_reads) >= 4 and set(status_reads) == {7}, status_reads
