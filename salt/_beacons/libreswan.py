"""Beacon: an event when a Libreswan tunnel changes state.

Each poll reads ``libreswan.health`` (one ``whack --status``) and reports, per
tunnel, a state that has held for ``holddown`` seconds (anti-flapping):

    salt/beacon/<minion>/libreswan/<tunnel>/up        carried by the primary
    salt/beacon/<minion>/libreswan/<tunnel>/failover  carried by the backup only
    salt/beacon/<minion>/libreswan/<tunnel>/down      no peer carries it

with ``{"tunnel", "state", "previous", "active", "since", "repeat", "reason"}``.
While a tunnel stays ``down`` or on the backup, the event is repeated after
``repeat`` seconds, then twice as long each time up to ``repeat_max``: that
is the clock of the retry budget and of the failback policy (reactor).

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
"""
import time

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
        lambda timeout: __salt__["libreswan.health"](timeout=timeout),
        QUERY_TIMEOUT, BACKOFF, time.monotonic)
    if healths is None:  # backing off from a pluto that did not answer
        return []
    events, current = [], {}
    for tunnel, health in healths.items():
        entry, event = _transition(saved.get(tunnel, {}), health["state"], now,
                                   settings["holddown"], settings["repeat"],
                                   settings["repeat_max"])
        current[tunnel] = entry
        if event:
            events.append(dict(event, tag=f"{tunnel}/{event['state']}", tunnel=tunnel,
                               active=health["active"], reason=health["reason"]))
    if current != saved:
        __salt__["libreswan.remember"]("beacon", current)
    return events
