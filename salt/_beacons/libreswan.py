"""Beacon: an event when a Libreswan tunnel changes state.

Each poll reads ``libreswan.health`` (one ``whack --status``) and reports, per
tunnel, a state that has held for ``holddown`` seconds (anti-flapping):

    salt/beacon/<minion>/libreswan/<tunnel>/up        carried by the primary
    salt/beacon/<minion>/libreswan/<tunnel>/failover  carried by the backup only
    salt/beacon/<minion>/libreswan/<tunnel>/down      no peer carries it

with ``{"tunnel", "state", "previous", "active", "since", "repeat", "reason"}``.
While a tunnel stays ``down`` or on the backup, the event is repeated after
``repeat`` seconds, then twice as long each time up to ``repeat_max`` (on the
backup with ``failback: auto``, up to ``failback_after`` when that is shorter,
but never below ``repeat``): that is the clock of the retry budget and of the
failback policy.

The reported state lives in ``state_dir/beacon.json`` (``libreswan.remember``), not in the loader's
memory, so it survives minion restarts, highstates and pillar refreshes
(which reload beacons); at minion start the first stable state is reported
(``previous`` is null) unless it equals the one on disk.

Configuration (``beacons:`` in minion config or pillar; the formula writes it):

.. code-block:: yaml

    beacons:
      libreswan:
        - interval: 2

Hold-down, repeat and the tunnels to watch come from
``vpn_gateway:monitoring`` (``libreswan.monitoring_settings``).

The beacon runs inside the salt-minion process, between the minion's own
work: pluto's status query is bounded by ``QUERY_TIMEOUT`` s, and after a
query that ran into it (a hung pluto: every tunnel down, the reason naming
the command and the bound) the beacon skips its polls for ``BACKOFF`` s, so
a hung pluto costs the minion at most ``QUERY_TIMEOUT`` s of every
``BACKOFF``. A skipped poll observes nothing: the hold-down still needs a
second slow query, ``BACKOFF`` s later, before ``down`` is reported (one
slow answer under load is not an outage).

Recovery without the master (``recovery: local``, the default): the beacon
keeps one recovery watcher running, a process of its own (Salt's
``SignalHandlingProcess``, a fork of the minion as the scheduler makes its
jobs: the minion's modules and pillar as they are now, no master involved).
The watcher polls ``libreswan.health`` every ``watch_interval`` s (pillar; each poll
bounded by ``status_timeout``, not ``QUERY_TIMEOUT``: the watcher's own process can
wait for a busy pluto, and a poll that times out reads as a hung pluto), applies the
same hold-down and repeat clock (``_transition``) and runs
``libreswan.recover`` for a tunnel at each change and repeat. It runs apart
from the minion's main loop on purpose: a Salt 3008 minion that has lost its
master stops running its beacons and schedule while it retries the master
(seen in the monitoring lab), and that is when recovery is needed. One
watcher per host (an exclusive flock held for its life); it ends when its
settings are no longer the beacon's (a generation file the beacon writes) and
the beacon starts a new one. The beacon's events are marked
``recovery: local`` so that the master's reactor leaves them alone.
"""
import fcntl
import hashlib
import json
import logging
import os
import time

import salt.utils.process

log = logging.getLogger(__name__)

__virtualname__ = "libreswan"
HISTORY = 10  # reported changes kept per tunnel (when each began and was reported)
QUERY_TIMEOUT = 3  # s: pluto answers whack --status in milliseconds when it is healthy
BACKOFF = 20  # s: no new query after one that took QUERY_TIMEOUT


def __virtual__():
    return __virtualname__


# -- transitions (pure) ---------------------------------------------------------------------
def _transition(entry, observed, now, holddown, repeat, repeat_max):
    """Advance one tunnel's reported state by one observation.

    ``entry`` is what is on disk (``{}`` at first); returns ``(entry, event)``
    where event is None or ``{"state", "previous", "since", "repeat"}``.
    ``entry["history"]`` keeps the last ``HISTORY`` reported changes.
    """
    entry = dict(entry)
    reported = entry.get("state")
    if observed == reported:
        entry.pop("candidate", None)
        entry.pop("candidate_since", None)
        if reported == "up":
            return entry, None
        repeats = entry.get("repeats", 0)
        if now - entry.get("fired", now) < min(repeat * 2 ** repeats, repeat_max):
            return entry, None
        entry.update(fired=now, repeats=repeats + 1)
        return entry, {"state": reported, "previous": reported, "since": entry["since"],
                       "repeat": repeats + 1}
    if entry.get("candidate") != observed:
        entry.update(candidate=observed, candidate_since=now)
    if now - entry["candidate_since"] < holddown:
        return entry, None
    since = entry.pop("candidate_since")
    entry.pop("candidate")
    history = entry.get("history", []) + [{"state": observed, "since": since, "fired": now}]
    entry.update(state=observed, since=since, fired=now, repeats=0, history=history[-HISTORY:])
    return entry, {"state": observed, "previous": reported, "since": since, "repeat": 0}


def _longest_repeat(settings, state):
    """The longest gap between repeats of ``state``: ``repeat_max``, but on the backup
    with ``failback: auto`` no more than ``failback_after`` (or ``repeat``, the
    shortest): each failback try comes at a repeat, one per ``failback_after``."""
    if state == "failover" and settings["failback"] == "auto":
        return min(settings["repeat_max"], max(settings["repeat"], settings["failback_after"]))
    return settings["repeat_max"]


def _observe(skip_until, now, query, timeout=QUERY_TIMEOUT, backoff=BACKOFF,
             clock=time.monotonic):
    """Poll pluto unless an earlier slow query said to back off.

    Returns ``(healths, skip_until)``: ``(None, skip_until)`` while ``now`` is before
    ``skip_until`` (this poll is skipped); else ``query(timeout)``'s healths and, when
    that query took ``timeout`` or longer (pluto did not answer), ``now + backoff``.
    """
    if skip_until is not None and now < skip_until:
        return None, skip_until
    started = clock()
    healths = query(timeout)
    return healths, (now + backoff if clock() - started >= timeout else None)


WATCHER_DIR = "/run/vpn-gateway"  # tmpfs, as the recovery lock's
WATCHER_LOCK = "recovery-watcher.lock"  # held by the one watcher for its life
WATCHER_GENERATION = "recovery-watcher.generation"  # the settings the beacon wants
# A watcher takes its lock first thing and writes its pid there. One that has not done
# so this long after its start is stuck (seen once under Salt 3007: the fork inherited a
# log handler's lock held by another thread, and the child hung in Salt's logging
# set-up): the beacon kills it and starts another.
WATCHER_START_GRACE = 60  # s


def _generation(settings, interval):
    """What a watcher must be restarted for: the settings and the poll interval."""
    text = json.dumps([settings, interval], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _try_lock(path):
    """An exclusive flock on ``path`` without waiting: the open fd, or None when held."""
    os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _read(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _recover(tunnel, observed=None):
    """``libreswan.recover`` for one tunnel, its outcome logged in one line, with what the
    watcher saw (``observed``: its health) that called for it."""
    try:
        result = __salt__["libreswan.recover"](tunnel).get(tunnel, {})
    except Exception as exc:  # a tunnel pillar no longer declares, pluto missing...
        log.error("libreswan recovery watcher: recovery of %s failed: %s: %s", tunnel,
                  type(exc).__name__, exc)
        return None
    summary = {k: result.get(k) for k in ("action", "state", "active", "result", "deferred",
                                          "comment", "outcome") if result.get(k) is not None}
    summary["steps"] = [s["step"] for s in result.get("steps") or []]
    if observed:
        summary["after"] = observed["state"] + (f": {observed['reason']}"
                                                if observed.get("reason") else "")
    log.info("libreswan recovery watcher: recovery of %s: %s", tunnel, summary)
    return result


def _watch_once(entries, now, health, settings, recover):
    """One poll of the watcher (pure but for ``health`` and ``recover``): advance each
    tunnel's entry (``_transition``) and recover the tunnels whose state changed or
    repeated. Returns the tunnels recovered."""
    acted = []
    for tunnel, observed in sorted(health.items()):
        entries[tunnel], event = _transition(entries.get(tunnel, {}), observed["state"], now,
                                             settings["holddown"], settings["repeat"],
                                             _longest_repeat(settings, observed["state"]))
        if event:
            recover(tunnel)
            acted.append(tunnel)
    return acted


def _watch(generation, interval, directory=WATCHER_DIR, sleep=time.sleep):
    """The recovery watcher's life: the host's watcher lock, then a poll every
    ``interval`` s until the beacon's generation file names other settings."""
    fd = _try_lock(os.path.join(directory, WATCHER_LOCK))
    if fd is None:  # another watcher runs
        return
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)  # the beacon: this one took its lock
    log.info("libreswan recovery watcher: started (pid %s, every %ss)", os.getpid(), interval)
    entries = {}
    try:
        while _read(os.path.join(directory, WATCHER_GENERATION)) == generation:
            try:
                settings = __salt__["libreswan.monitoring_settings"]()
                health = __salt__["libreswan.health"](timeout=settings["status_timeout"],
                                                      reasons=False)
            except Exception as exc:  # pluto not installed yet, a bad setting: next poll
                log.debug("libreswan recovery watcher: no health: %s", exc)
                health = None
            if health is not None:
                _watch_once(entries, time.time(), health, settings,
                            lambda tunnel: _recover(tunnel, health[tunnel]))
            sleep(interval)
        log.info("libreswan recovery watcher: settings changed, ending")
    finally:
        os.close(fd)


def _want(generation, directory):
    """Write the generation the beacon wants (``off``: no watcher) unless it is there."""
    path = os.path.join(directory, WATCHER_GENERATION)
    if _read(path) != generation:
        os.makedirs(directory, mode=0o750, exist_ok=True)
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            handle.write(generation)
        os.replace(path + ".tmp", path)


def _keep_watcher(settings, interval, directory=WATCHER_DIR):
    """The beacon's part: write the wanted generation; start a watcher unless one runs."""
    generation = _generation(settings, interval)
    _want(generation, directory)
    process = __context__.get("libreswan.beacon.watcher")
    if process is not None and not process.is_alive():
        process.join(0)  # reaped
        process = __context__.pop("libreswan.beacon.watcher")
    fd = _try_lock(os.path.join(directory, WATCHER_LOCK))
    if fd is None:  # a watcher runs (this beacon's, or one it started before a reload)
        return None
    os.close(fd)
    if process is not None and process.is_alive():  # started, or ending: not holding its lock
        started = __context__.setdefault("libreswan.beacon.watcher_started", time.monotonic())
        took_its_lock = _read(os.path.join(directory, WATCHER_LOCK)) == str(process.pid)
        if took_its_lock or time.monotonic() - started < WATCHER_START_GRACE:
            return None
        log.warning("libreswan beacon: the recovery watcher (pid %s) never took its lock in "
                    "%s s: killed, starting another", process.pid, WATCHER_START_GRACE)
        process.kill()
        process.join(5)
    process = salt.utils.process.SignalHandlingProcess(
        target=_watch, args=(generation, interval, directory), name="LibreswanRecoveryWatcher")
    process.start()
    __context__["libreswan.beacon.watcher"] = process
    __context__["libreswan.beacon.watcher_started"] = time.monotonic()
    return process


# -- Salt side -------------------------------------------------------------------------------
def validate(config):
    if not isinstance(config, list):
        return False, "libreswan beacon: the configuration must be a list, e.g. [{interval: 2}]"
    for item in config:
        if not isinstance(item, dict) or set(item) - {"interval", "disable_during_state_run"}:
            return False, (f"libreswan beacon: {item!r}: only interval (and "
                           "disable_during_state_run) are set here; hold-down and repeat come "
                           "from pillar vpn_gateway:monitoring")
    return True, "valid"


def beacon(config):
    settings = __salt__["libreswan.monitoring_settings"]()
    saved = __salt__["libreswan.monitoring_memory"]("beacon")
    now = time.time()
    healths, __context__["libreswan.beacon.skip_until"] = _observe(
        __context__.get("libreswan.beacon.skip_until"), now,
        lambda timeout: __salt__["libreswan.health"](timeout=timeout, reasons=False),
        QUERY_TIMEOUT, BACKOFF, time.monotonic)
    local = settings.get("recovery", "local") == "local"
    if local:
        _keep_watcher(settings, settings["watch_interval"])
    elif os.path.exists(os.path.join(WATCHER_DIR, WATCHER_GENERATION)):
        _want("off", WATCHER_DIR)  # a watcher started while recovery was local ends
    if healths is None:  # backing off from a pluto that did not answer
        return []
    events, current = [], {}
    for tunnel, health in healths.items():
        entry, event = _transition(saved.get(tunnel, {}), health["state"], now,
                                   settings["holddown"], settings["repeat"],
                                   _longest_repeat(settings, health["state"]))
        current[tunnel] = entry
        if event:
            events.append(dict(event, tag=f"{tunnel}/{event['state']}", tunnel=tunnel,
                               active=health["active"], reason=health["reason"]))
    # The polls leave pluto's log unread: the reasons of what is reported, read now
    # unless pluto just did not answer in time (the reason already says so).
    if events and __context__.get("libreswan.beacon.skip_until") is None:
        reasons = __salt__["libreswan.health"](timeout=QUERY_TIMEOUT)
        for event in events:
            event["reason"] = reasons.get(event["tunnel"], {}).get("reason", event["reason"])
    if current != saved:
        __salt__["libreswan.remember"]("beacon", current)
    if local:
        for event in events:
            event["recovery"] = "local"
    return events
