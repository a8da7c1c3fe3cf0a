"""Tunnel health and recovery for Libreswan: the graduated ladder, its retry
budget and the failback policy.

Shares the virtual name ``libreswan`` with ``libreswan.py`` (Salt merges the
functions of both files), so operators see one module: ``libreswan.status``
and ``libreswan.ensure_up`` side by side.

Settings come from ``vpn_gateway:monitoring`` (``config.get``: minion config,
grains or pillar) over ``DEFAULTS``. Run-time memory (attempt history,
counters, when the tunnel went to the backup) lives in a JSON file under
``state_dir`` so that it survives minion restarts, highstates and pillar
refreshes. Each update of a memory file is a read-modify-write under that
file's own flock (``state_dir/.NAME.lock``), written with
``salt.utils.atomicfile``: two tunnels' ladders, ``reset_recovery`` and the
beacon never lose each other's entries.

The recovery lock (one per host, ``LOCK_DIR/recovery.lock``, an exclusive
flock) keeps recovery and state runs apart:

- a ladder (``ensure_up``, ``failback``, ``recover``) takes it without waiting, then
  checks that no state job runs (``saltutil.is_running state.*``: the job's
  proc file exists from the job's start, before its render), runs its steps
  and releases it. Lock busy or a state job running: it does nothing and
  says ``deferred``; the beacon's repeated event brings it back.
- the role's first state (``libreswan.recovery_lock``, ``order: first``,
  ``failhard``; vpn_gateway.monitoring) waits for the lock (up to its
  ``timeout``) and keeps it until the job's process ends (its last state,
  ``libreswan.recovery_lock_released``, lets it go earlier).

Both orders: a ladder that holds the lock makes a state run wait before its
first state, so no state runs mid-ladder; a state run that started first is
either past its lock state (the ladder cannot take the lock) or still
rendering (the ladder takes the lock, sees the state job and backs off at
once, so the run's lock state does not wait). A ladder cannot start between
the two checks unseen: it takes the lock first and looks for state jobs
second, and a state job that starts after that look waits at its lock
state. Sub-states applied alone (``state.apply vpn_gateway.ipsec``) hold no
lock: ladders still back off while they run, but a ladder already running
is not waited for.

Pure helpers (``_settings``, ``_health``, ``_budget``, ``_ladder``) take and
return plain data so that tests import them from this file directly.
"""
import fcntl
import json
import logging
import os
import re
import sys
import time
import types
from contextlib import contextmanager

import salt.utils.atomicfile
import salt.utils.dictupdate
from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "libreswan"

BACKUP_SUFFIX = "-backup"
# The host's recovery lock (tmpfs: no stale lock survives a reboot).
LOCK_DIR = "/run/vpn-gateway"
LOCK_NAME = "recovery.lock"
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")
SETTINGS_KEY = "vpn_gateway:monitoring"
# Bound (s) of this module's own subprocesses (ip xfrm flush, systemctl show); pluto's
# queries are bounded in libreswan.py, service.stop/start by the unit's own stop/start timeouts.
SUBPROCESS_TIMEOUT = 30

DEFAULTS = {
    # What counts as "up": child_sa (IKE SA and a Child SA: traffic can flow)
    # or ike_sa (the IKE SA alone: for kernels without ESP, see docs).
    "up_when": "child_sa",
    # Tunnels to watch even when pluto is not running (default: the tunnel section's name).
    "tunnels": [],
    # Beacon: a new state must hold this long before it is reported (anti-flapping).
    "holddown": 10,
    # Beacon: while down (or on the backup) re-fire every repeat s, doubling up to repeat_max.
    "repeat": 30,
    "repeat_max": 300,
    # Ladder: conn-level restarts before failing over; seconds to wait for the IKE SA per step.
    "conn_restarts": 2,
    "step_timeout": 10,
    # Seconds pluto may take to answer a status query (whack --status) before the recovery
    # watcher and a ladder take it for hung (a hung pluto gets restart_service): a busy
    # pluto (updown scripts run inside it, one at a time) must not be restarted for it.
    "status_timeout": 10,
    # Retry budget: at most `attempts` ladders per `window` s, spaced base * 2^n s (<= max).
    "budget": {"attempts": 5, "window": 3600},
    "backoff": {"base": 30, "max": 600},
    # auto: back to the primary once the tunnel has been on the backup for failback_after s
    # (one try per failback_after); never: stay until an operator runs libreswan.switch.
    "failback": "auto",
    "failback_after": 300,
    # Who answers the beacon's events: local (the beacon starts libreswan.recover in a
    # process of the minion's own: no master needed) or master (the master's reactor).
    "recovery": "local",
    # recovery local: seconds between the recovery watcher's polls of pluto (each one
    # whack --status and one --trafficstatus).
    "watch_interval": 2,
    # Webhook alerts (URL in webhook_url, a secret): one per conn and state per rate_window s.
    "alerts": {"rate_window": 900, "timeout": 5},
    # EndpointSlice ready follows tunnel health (k8s.set_endpoints_ready) when enabled.
    # service, namespace, kubeconfig, context default to vpn_gateway:kubernetes; address to
    # the entry of vpn_gateway:kubernetes:gateway_addresses that is this minion's own.
    "endpoint_ready": {"enabled": False, "service": None, "namespace": None, "address": None,
                       "kubeconfig": None, "context": None},
    # Prometheus textfile for node_exporter's textfile collector.
    "metrics": {"path": "/var/lib/prometheus/node-exporter/vpn_gateway.prom"},
    # logrotate for the pack's logs (salt-minion's, PgBouncer's) plus `logs`.
    "logrotate": {"frequency": "daily", "rotate": 14, "maxsize": "100M", "logs": []},
    "state_dir": "/var/lib/vpn-gateway",
}
CARRIED = ("up", "failover")  # the states in which a peer carries the tunnel
_CHOICES = {"up_when": ("child_sa", "ike_sa"), "failback": ("auto", "never"),
            "recovery": ("local", "master"),
            "logrotate:frequency": ("daily", "weekly", "monthly")}
_NUMBERS = {"holddown": (0, 3600), "repeat": (1, 86400), "repeat_max": (1, 86400),
            "conn_restarts": (0, 10), "step_timeout": (1, 300),
            "status_timeout": (1, 300), "failback_after": (0, 86400),
            "watch_interval": (1, 300),
            "budget:attempts": (1, 1000), "budget:window": (1, 7 * 86400),
            "backoff:base": (0, 86400), "backoff:max": (0, 86400),
            "alerts:rate_window": (0, 86400), "alerts:timeout": (1, 60),
            "logrotate:rotate": (1, 366)}


class SettingsError(ValueError):
    """Bad monitoring settings; the message names the pillar key and the fix."""


# -- settings (pure) ----------------------------------------------------------------
def _at(settings, path):
    for key in path.split(":"):
        settings = settings[key]
    return settings


def _settings(raw, default_tunnel=None, endpoint_defaults=None):
    """``DEFAULTS`` overlaid with the pillar section, validated; raises SettingsError.

    ``default_tunnel`` and ``endpoint_defaults`` (service, namespace, ...) come
    from the tunnel and kubernetes sections and fill what the section leaves unset.
    """
    if raw is not None and not isinstance(raw, dict):
        raise SettingsError(f"{SETTINGS_KEY}: must be a mapping, not {type(raw).__name__}")
    raw = {k: v for k, v in (raw or {}).items() if k != "webhook_url"}
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise SettingsError(f"{SETTINGS_KEY}:{unknown[0]}: unknown key; known: "
                            f"{', '.join(sorted(DEFAULTS))} and webhook_url")
    # a deep copy of DEFAULTS, the pillar's mappings merged in key by key
    settings = salt.utils.dictupdate.merge(DEFAULTS, raw, strategy="recurse")
    errors = []
    for path, allowed in _CHOICES.items():
        if _at(settings, path) not in allowed:
            errors.append(f"{SETTINGS_KEY}:{path}: {_at(settings, path)!r} is not one of "
                          f"{', '.join(allowed)}")
    for path, (low, high) in _NUMBERS.items():
        value = _at(settings, path)
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not low <= value <= high:
            errors.append(f"{SETTINGS_KEY}:{path}: {value!r} is not a number from {low} to {high}")
    tunnels = settings["tunnels"]
    names_ok = isinstance(tunnels, list) and all(
        isinstance(t, str) and NAME_RE.fullmatch(t) for t in tunnels)
    if not names_ok:
        errors.append(f"{SETTINGS_KEY}:tunnels: {tunnels!r} is not a list of conn names")
    elif not tunnels and default_tunnel:
        settings["tunnels"] = [default_tunnel]
    rotate = settings["logrotate"]
    if not re.fullmatch(r"\d+[kMG]?", str(rotate["maxsize"])):
        errors.append(f"{SETTINGS_KEY}:logrotate:maxsize: {rotate['maxsize']!r} is not a size "
                      "like 100M")
    if not isinstance(rotate["logs"], list) or not all(
            isinstance(p, str) and p.startswith("/") and not re.search(r"[\s{}]", p)
            for p in rotate["logs"]):
        errors.append(f"{SETTINGS_KEY}:logrotate:logs: {rotate['logs']!r} is not a list of "
                      "absolute paths (globs allowed, no spaces or braces)")
    ready = settings["endpoint_ready"]
    for key, value in (endpoint_defaults or {}).items():
        if ready.get(key) in (None, "") and value:
            ready[key] = value
    if ready.get("enabled"):
        for key in ("service", "namespace", "address"):
            if not ready.get(key):
                errors.append(f"{SETTINGS_KEY}:endpoint_ready:{key}: required when enabled "
                              "(the Service, its namespace and this gateway's endpoint address)")
    if errors:
        raise SettingsError("; ".join(errors))
    return settings


# -- health (pure) ---------------------------------------------------------------------
def _conn_up(conn, up_when):
    if not conn:
        return False
    return bool(conn["ike_established"] if up_when == "ike_sa" else conn["up"])


def _conn_partial(conn, up_when):
    """Some but not all declared subnets carried (only judged with child_sa)."""
    return bool(conn and up_when == "child_sa" and conn.get("partial"))


def _health(status, tunnel, up_when):
    """One tunnel's health from ``libreswan.status``.

    ``state`` is ``up`` (carried by the primary), ``failover`` (carried by the
    backup only), ``partial`` (a conn's Child SAs carry only some declared
    subnets: ``missing``) or ``down``; ``active`` says which conn(s) are up.
    """
    conns = status.get("conns", {})
    backup = tunnel + BACKUP_SUFFIX if tunnel + BACKUP_SUFFIX in conns else None
    primary_up = _conn_up(conns.get(tunnel), up_when)
    backup_up = _conn_up(conns.get(backup), up_when) if backup else False
    if primary_up:
        state, active = "up", "both" if backup_up else "primary"
    elif backup_up:
        state, active = "failover", "backup"
    elif _conn_partial(conns.get(tunnel), up_when) or _conn_partial(conns.get(backup), up_when):
        active = "primary" if _conn_partial(conns.get(tunnel), up_when) else "backup"
        state = "partial"
    else:
        state, active = "down", None
    missing = (conns.get(backup if active == "backup" else tunnel) or {}).get(
        "subnets_missing", []) if state == "partial" else []
    reason = None
    if status.get("timed_out"):  # pluto runs but is hung: the error names command and bound
        reason = status.get("error") or "pluto did not answer in time"
    elif not status.get("running", True):
        reason = "pluto is not running" + (f": {status['error']}" if status.get("error") else "")
    elif state == "partial":
        reason = conns[backup if active == "backup" else tunnel]["reason"]
    elif state == "down":
        reason = (conns.get(tunnel) or {}).get("reason") or "conn not loaded"
    return {"tunnel": tunnel, "state": state, "up": state in CARRIED,
            "active": active, "missing": missing,
            "pluto_running": bool(status.get("running", True)), "has_backup": bool(backup),
            "reason": reason}


# -- budget and ladder (pure) --------------------------------------------------------------
def _budget(history, now, attempts, window, base, maximum):
    """May a ladder run now? ``history``: start times of earlier attempts.

    Returns ``{"allowed", "wait", "attempt", "exhausted"}``: at most
    ``attempts`` per ``window`` s, the n-th spaced ``base * 2**(n-1)`` s
    (at most ``maximum``) after the previous one.
    """
    recent = sorted(t for t in history if now - t < window)
    if len(recent) >= attempts:
        return {"allowed": False, "wait": recent[0] + window - now, "attempt": len(recent),
                "exhausted": True}
    wait = 0.0
    if recent:
        wait = max(0.0, recent[-1] + min(base * 2 ** (len(recent) - 1), maximum) - now)
    return {"allowed": wait == 0, "wait": wait, "attempt": len(recent) + 1, "exhausted": False}


def _ladder(health, conn_restarts):
    """The steps of one recovery, cheapest first: ``[(step, target), ...]``.

    With pluto running: restart the conn that carried the tunnel, then fail
    over to the other peer, then restart the service (xfrm flushed). (The
    climb skips the further restarts of a conn whose peer answered none.) With
    pluto gone a conn restart cannot work: restart the service first, then
    fail over if the peer it brings up stays down. A partial tunnel (the peer
    carries only some subnets) gets the conn restarts alone: the other peer
    would most likely narrow the same way, and a failover or a service restart
    would cut the subnets that do work.
    """
    current = "backup" if health["active"] == "backup" else "primary"
    if health["state"] == "partial" and health["pluto_running"]:
        return [("restart_conn", current)] * conn_restarts
    other = "primary" if current == "backup" else "backup"
    failover = [("switch", other)] if health["has_backup"] else []
    if not health["pluto_running"]:
        return [("restart_service", None)] + failover
    return [("restart_conn", current)] * conn_restarts + failover + [("restart_service", None)]


# -- Salt side -------------------------------------------------------------------------------
def __virtual__():
    # Always: the settings must render for the formula before libreswan is installed;
    # the functions that need pluto say so (_status).
    return __virtualname__


def _status(timeout, reasons):
    if "libreswan.status" not in __salt__:
        raise CommandExecutionError("libreswan.status is not available: install the libreswan "
                                    "package (apply vpn_gateway.ipsec)")
    return __salt__["libreswan.status"](timeout=timeout, reasons=reasons)


def monitoring_settings():
    """
    The effective monitoring settings (``vpn_gateway:monitoring`` over the
    defaults), validated; the webhook URL is never included.

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw*' libreswan.monitoring_settings
    """
    def config(key, default=None):  # plain data (pillar values may come wrapped)
        return json.loads(json.dumps(__salt__["config.get"](key, default)))

    kubernetes = config("vpn_gateway:kubernetes", {}) or {}
    service = kubernetes.get("service") or {}
    own = set(__grains__.get("ipv4", []))
    endpoint_defaults = {
        "service": service.get("name"), "namespace": service.get("namespace"),
        "kubeconfig": kubernetes.get("kubeconfig"), "context": kubernetes.get("context"),
        "address": next((a for a in kubernetes.get("gateway_addresses") or [] if a in own), None),
    }
    return _settings(config(SETTINGS_KEY, {}) or {}, config("vpn_gateway:tunnel:name") or None,
                     endpoint_defaults)


def _tunnel_names(settings, status, name):
    if name is not None:
        if not NAME_RE.fullmatch(str(name)):
            raise ValueError(f"name={name!r} is not a conn name")
        return [name]
    names = set(status.get("tunnels", {})) | set(settings["tunnels"])
    return sorted(n for n in names if not n.endswith(BACKUP_SUFFIX))


def _declared(pillar):
    """The tunnels ``pillar`` (this minion's ``vpn_gateway`` pillar) declares:
    ``tunnel:name`` (default remote-db, as vpn_gateway.ipsec) when there is a
    tunnel section, and ``monitoring:tunnels``; each with its ``-backup`` conn.
    Pillar only: not grains or minion config, which the minion itself controls."""
    pillar = pillar if isinstance(pillar, dict) else {}
    tunnel, monitoring = pillar.get("tunnel"), pillar.get("monitoring")
    names = []
    if isinstance(tunnel, dict):
        names.append(tunnel.get("name", "remote-db"))
    if isinstance(monitoring, dict) and isinstance(monitoring.get("tunnels"), list):
        names += monitoring["tunnels"]
    names = [n for n in names if isinstance(n, str) and NAME_RE.fullmatch(n)]
    return set(names) | {n + BACKUP_SUFFIX for n in names}


def _acting_on(name, declared, status=None, settings=None):
    """The tunnels ``ensure_up``/``failback`` may act on: ``name`` only when it
    is declared (a CommandExecutionError that says why otherwise); without a
    name, the declared ones among the watched tunnels."""
    if name is not None:
        shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise CommandExecutionError(f"name={shown}: not a conn name (a letter, then up to 39 "
                                        "letters, digits, '-' or '_'); nothing done")
        if name not in declared:
            raise CommandExecutionError(
                f"name={shown}: not a tunnel this minion's pillar declares "
                f"(vpn_gateway:tunnel:name, vpn_gateway:monitoring:tunnels, each with "
                f"{BACKUP_SUFFIX}: {', '.join(sorted(declared)) or 'none'}); refusing to act on it")
        return [name]
    return [t for t in _tunnel_names(settings, status, None) if t in declared]


def _declared_here():
    return _declared(json.loads(json.dumps(__pillar__.get("vpn_gateway", {}) or {})))


def health(name=None, timeout=None, reasons=True):
    """
    Health of each tunnel (or of ``name``): ``state`` up / failover / down,
    the ``active`` peer and why it is down, judged by ``up_when``. pluto's
    status queries are bounded by ``timeout`` s (default: ``status_timeout``).
    ``reasons=False`` takes the reason from pluto's states alone, without
    reading its log (the beacon's, the watcher's and the metrics' polls).

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw*' libreswan.health
        salt 'vpn-gw1' libreswan.health remote-db
        salt 'vpn-gw*' libreswan.health timeout=3
    """
    settings = monitoring_settings()
    status = _status(timeout or settings["status_timeout"], reasons)
    return {t: _health(status, t, settings["up_when"])
            for t in _tunnel_names(settings, status, name)}


def _health_now(settings, tunnel, reasons=True):
    return _health(_status(settings["status_timeout"], reasons), tunnel, settings["up_when"])


# -- run-time memory --------------------------------------------------------------------------
# What each part remembers, one JSON file each under state_dir: recovery
# (attempts, counters, backup_since), beacon (reported states), alerts (last sent).
MEMORIES = ("recovery", "beacon", "alerts")


def _memory_path(settings, what):
    if what not in MEMORIES:
        raise ValueError(f"what={what!r}: one of {', '.join(MEMORIES)}")
    return os.path.join(settings["state_dir"], f"{what}.json")


def monitoring_memory(what="recovery"):
    """
    What the monitoring remembers across restarts, highstates and pillar
    refreshes: ``recovery`` (per tunnel: recent attempts, recoveries by
    result, the last ladder, since when on the backup), ``beacon`` (per
    tunnel: the reported state and since when) or ``alerts`` (per conn and
    state: when the last alert went out).

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw1' libreswan.monitoring_memory
        salt 'vpn-gw1' libreswan.monitoring_memory beacon
    """
    try:
        with open(_memory_path(monitoring_settings(), what), encoding="utf-8") as handle:
            return json.load(handle)
    except (FileNotFoundError, ValueError):
        return {}


@contextmanager
def _flocked(path, wait=True):
    """An exclusive flock on ``path`` (created 0640), blocking or not; yields
    True when held, False when ``wait`` is off and another holds it."""
    os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    with os.fdopen(fd, "r+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_memory(path):
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_memory(path, data):
    with salt.utils.atomicfile.atomic_open(path, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
    os.chmod(path, 0o600)


def _update_memory(path, change):
    """Read-modify-write one memory file under its own flock: ``change(data)``
    edits the dict in place; returns it. Concurrent updates of other keys
    (another tunnel's ladder, the beacon) are never lost."""
    lock = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".lock")
    with _flocked(lock):
        data = _read_memory(path)
        change(data)
        _write_memory(path, data)
    return data


def remember(what, data):
    """
    Replace one memory file (``recovery``, ``beacon`` or ``alerts``) atomically;
    the beacon and vpn_alert keep their state through it. ``data={}`` forgets.

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw1' libreswan.remember alerts '{}'
    """
    def replace(current):
        current.clear()
        current.update(data)

    _update_memory(_memory_path(monitoring_settings(), what), replace)
    return {"what": what, "entries": len(data)}


def _memory(tunnel):
    entry = monitoring_memory("recovery").get(tunnel, {})
    entry.setdefault("attempts", [])
    entry.setdefault("recoveries", {"success": 0, "failure": 0})
    return entry


def _remember(tunnel, entry):
    """Store ``tunnel``'s entry of recovery.json; the other tunnels' stay as they are on disk."""
    _update_memory(_memory_path(monitoring_settings(), "recovery"),
                   lambda data: data.__setitem__(tunnel, entry))


def _lock_path():
    return os.path.join(LOCK_DIR, LOCK_NAME)


@contextmanager
def _locked(settings=None, tunnel=None):
    """Yield True when this process took the host's recovery lock (never waits),
    False when a state run or another recovery holds it. ``settings`` and
    ``tunnel`` only name the caller in the log: the lock is one per host."""
    with _flocked(_lock_path(), wait=False) as mine:
        if mine:
            log.info("libreswan recovery: recovery lock taken (%s)", tunnel or "all tunnels")
        try:
            yield mine
        finally:
            if mine:
                log.info("libreswan recovery: recovery lock released (%s)",
                         tunnel or "all tunnels")


def _held():
    """The lock a state run holds (hold_recovery_lock): [(fd, since)], open until
    released or the job's process ends (the kernel drops a flock with its last
    descriptor). Kept outside this module: a state run reloads its modules
    (after a package install), and the release must still find the descriptor."""
    holder = sys.modules.setdefault("_vpn_gateway_recovery_lock",
                                    types.ModuleType("_vpn_gateway_recovery_lock"))
    if not hasattr(holder, "held"):
        holder.held = []
    return holder.held


def hold_recovery_lock(timeout=300):
    """
    Wait up to ``timeout`` seconds for the host's recovery lock and keep it
    until ``release_recovery_lock`` or the end of this job's process: a state
    run's first state (``libreswan.recovery_lock``) calls it so that no
    recovery ladder restarts pluto or flushes xfrm in the middle of the run.
    Returns ``{"held": bool, "waited": s, "acquired": epoch or None}``.

    CLI Example:

    .. code-block:: bash

        salt-call libreswan.hold_recovery_lock timeout=60
    """
    started = time.time()
    if _held():
        return {"held": True, "waited": 0.0, "acquired": _held()[0][1]}
    os.makedirs(LOCK_DIR, mode=0o750, exist_ok=True)
    fd = os.open(_lock_path(), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    deadline = time.monotonic() + float(timeout)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return {"held": False, "waited": round(time.time() - started, 3),
                        "acquired": None}
            time.sleep(0.2)
    acquired = time.time()
    _held().append((fd, acquired))
    log.info("libreswan recovery: recovery lock held for a state run (waited %.1fs)",
             acquired - started)
    return {"held": True, "waited": round(acquired - started, 3), "acquired": acquired}


def release_recovery_lock():
    """
    Let go of the recovery lock ``hold_recovery_lock`` took in this process
    (a state run's last state). Returns ``{"released": bool, "held_for": s}``.

    CLI Example:

    .. code-block:: bash

        salt-call libreswan.release_recovery_lock
    """
    if not _held():
        return {"released": False, "held_for": 0.0, "time": time.time()}
    fd, acquired = _held().pop()
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    now = time.time()
    log.info("libreswan recovery: recovery lock released by the state run")
    return {"released": True, "held_for": round(now - acquired, 3), "time": now}


def recovery_state(name=None):
    """
    What recovery remembers per tunnel: recent attempts, recoveries by result,
    the last step and when the tunnel went to the backup.

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw*' libreswan.recovery_state
    """
    data = monitoring_memory("recovery")
    return {name: data.get(name, {})} if name else data


def reset_recovery(name):
    """
    Forget tunnel ``name``'s attempt history: the budget starts afresh (after a
    repair by hand). Counters are kept for the metrics.

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw1' libreswan.reset_recovery remote-db
    """
    entry = _memory(name)
    entry["attempts"] = []
    _remember(name, entry)
    return {"name": name, "attempts": []}


# -- actions -------------------------------------------------------------------------------
def _state_run_in_progress():
    """A state run reconfiguring the tunnel must not be fought (no loop with highstate)."""
    return bool(__salt__["saltutil.is_running"]("state.*"))


def _wait_health(settings, tunnel, timeout):
    deadline = time.monotonic() + timeout
    while True:  # pluto's log is read once, for the reason of a tunnel still down
        current = _health_now(settings, tunnel, reasons=False)
        if current["up"]:
            return current
        if time.monotonic() >= deadline:
            return _health_now(settings, tunnel)
        time.sleep(0.5)


def _restart_service():
    """Stop pluto (the unit flushes xfrm state and policy), flush again in case
    pluto died without its unit's stop, start it: auto=start conns come up."""
    __salt__["service.stop"]("ipsec")
    for kind in ("state", "policy"):
        __salt__["cmd.run_all"](["ip", "xfrm", kind, "flush"], python_shell=False,
                                timeout=SUBPROCESS_TIMEOUT)
    return __salt__["service.start"]("ipsec")


def _pluto_pid():
    return __salt__["cmd.run_stdout"](["systemctl", "show", "-p", "MainPID", "--value", "ipsec"],
                                      python_shell=False, timeout=SUBPROCESS_TIMEOUT).strip()


def _wait_pluto(settings, timeout):
    deadline = time.monotonic() + timeout
    while not _status(settings["status_timeout"], False)["running"] \
            and time.monotonic() < deadline:
        time.sleep(0.5)


def _run_step(settings, tunnel, step, target):
    """Do one step and verify it: the tunnel up (by up_when) within step_timeout."""
    started = time.monotonic()
    wait, bound = settings["step_timeout"], settings["status_timeout"]
    if step == "restart_conn":
        conn = tunnel + BACKUP_SUFFIX if target == "backup" else tunnel
        __salt__["libreswan.restart_conn"](conn, wait=wait, timeout=bound)
    elif step == "switch":
        pid = _pluto_pid()
        __salt__["libreswan.switch"](tunnel, to=target, wait=wait, timeout=bound)
        if not _health_now(settings, tunnel)["up"] and _pluto_pid() != pid:
            # pluto 4.10 can crash (SEGV) terminating a narrowed conn with several
            # instances; systemd restarts it with the auto=start (primary) conn: once
            # it answers again, switch once more.
            _wait_pluto(settings, wait)
            __salt__["libreswan.switch"](tunnel, to=target, wait=wait, timeout=bound)
    else:
        _restart_service()
    return _wait_health(settings, tunnel, max(1.0, wait - (time.monotonic() - started)))


def _set_endpoint_ready(settings, carried):
    """Point the gateway's EndpointSlice endpoint at its tunnels' health, if asked:
    ready when this tunnel is ``carried`` and so is every other one it watches (one
    endpoint serves them all, as the heartbeat's ``serving`` says)."""
    options = settings["endpoint_ready"]
    if not options.get("enabled"):
        return None
    ready = carried and _all_carried(settings)
    try:
        changes = __salt__["k8s.set_endpoints_ready"](
            options["service"], options["namespace"], ready, addresses=[options["address"]],
            kubeconfig=options.get("kubeconfig"), context=options.get("context"))
    except Exception as exc:  # the API server may be unreachable: report, never stop recovery
        return {"ready": ready, "error": f"{type(exc).__name__}: {exc}"}
    return {"ready": ready, "changed": bool(changes)}


def _all_carried(settings):
    try:
        status = _status(settings["status_timeout"], False)
    except CommandExecutionError:  # pluto gone: nothing is carried
        return False
    names = _tunnel_names(settings, status, None)
    return bool(names) and all(_health(status, t, settings["up_when"])["up"] for t in names)


def _alert(tunnel, state, step, attempt, detail):
    if "vpn_alert.send" not in __salt__:
        return None
    return __salt__["vpn_alert.send"](tunnel, state, step, attempt=attempt, detail=detail)


def _climb(settings, tunnel, start):
    """Run the ladder until a step's verification shows the tunnel up."""
    steps = []
    current = start
    silent = set()  # peers that answered no restart of their conn
    for step, target in _ladder(start, settings["conn_restarts"]):
        if step == "restart_conn" and target in silent:
            continue  # another restart of a conn whose peer does not answer cannot help
        started, since = time.monotonic(), time.time()
        current = _run_step(settings, tunnel, step, target)
        # how long each step took: where a recovery's time goes (libreswan.recovery_state)
        steps.append({"step": step, "target": target, "state": current["state"],
                      "active": current["active"],
                      "seconds": round(time.monotonic() - started, 1)})
        if current["up"]:
            break
        conn = tunnel + BACKUP_SUFFIX if target == "backup" else tunnel
        if step == "restart_conn" and not __salt__["libreswan.peer_answered"](conn, since):
            silent.add(target)
    return current, steps


def _ensure_one(settings, tunnel, force):
    now = time.time()
    current = _health_now(settings, tunnel)
    memory = _memory(tunnel)
    result = {"name": tunnel, "state": current["state"], "active": current["active"],
              "steps": [], "attempt": 0}
    if current["up"]:
        comment = "tunnel is up"
        if current["active"] == "both" and not _state_run_in_progress():
            # A failback's primary came up beside the backup (make before break): break now.
            __salt__["libreswan.down"](tunnel + BACKUP_SUFFIX)
            current = _health_now(settings, tunnel)
            comment = "the primary came up beside the backup: backup taken down"
            result.update(state=current["state"], active=current["active"],
                          alert=_alert(tunnel, "up", "failback", 0, "back on the primary peer"))
        memory["attempts"] = []
        on_backup = current["state"] == "failover"
        memory["backup_since"] = (memory.get("backup_since") or now) if on_backup else None
        _remember(tunnel, memory)
        result.update(result=current["up"], comment=comment,
                      endpoint=_set_endpoint_ready(settings, current["up"]))
        return result
    result["reason"] = current["reason"]
    result["endpoint"] = _set_endpoint_ready(settings, False)
    if _state_run_in_progress() and not force:
        result.update(result=False, deferred="a state run is in progress")
        return result
    budget = _budget(memory["attempts"], now, settings["budget"]["attempts"],
                     settings["budget"]["window"], settings["backoff"]["base"],
                     settings["backoff"]["max"])
    if not budget["allowed"] and not force:
        result.update(result=False, attempt=budget["attempt"], retry_in=round(budget["wait"], 1),
                      deferred="retry budget exhausted" if budget["exhausted"] else "backoff")
        return result
    memory["attempts"] = [t for t in memory["attempts"]
                          if now - t < settings["budget"]["window"]] + [now]
    _remember(tunnel, memory)
    final, steps = _climb(settings, tunnel, current)
    memory = _memory(tunnel)
    outcome = "success" if final["up"] else "failure"
    memory["recoveries"][outcome] = memory["recoveries"].get(outcome, 0) + 1
    memory["last"] = {"started": now, "time": time.time(), "result": outcome, "steps": steps}
    if final["state"] == "failover":
        memory["backup_since"] = time.time()
    if final["up"]:
        memory["attempts"] = []
    _remember(tunnel, memory)
    last_step = steps[-1]["step"] if steps else None
    result.update(result=final["up"], state=final["state"], active=final["active"], steps=steps,
                  attempt=budget["attempt"], endpoint=_set_endpoint_ready(settings, final["up"]))
    if final["up"]:
        result["alert"] = _alert(tunnel, final["state"], last_step, budget["attempt"],
                                 f"recovered by {last_step} (active: {final['active']})")
    else:
        result["reason"] = final["reason"]
        result["alert"] = _alert(tunnel, final["state"], "gave_up", budget["attempt"],
                                 f"every step failed: {final['reason']}")
    return result


_LOCK_BUSY = {"result": False,
              "deferred": "the recovery lock is held (a state run or another recovery)"}


def ensure_up(name=None, force=False):
    """
    Bring tunnel ``name`` (default: every tunnel) up with the recovery ladder,
    once: conn restarts (``conn_restarts``), failover to the other peer, a
    service restart with xfrm state and policy flushed; each step verified
    (``up_when``, ``step_timeout``) before the next. Respects the retry budget
    and backoff (``force=True`` ignores them), waits while a state run is in
    progress, sends a webhook alert on recovery and on giving up, and keeps
    the EndpointSlice ``ready`` in step when ``endpoint_ready`` is enabled.
    A tunnel that is up is left alone. Only tunnels this minion's pillar
    declares (``vpn_gateway:tunnel:name``, ``vpn_gateway:monitoring:tunnels``
    and their ``-backup`` conns) are acted on: another ``name`` is refused
    with an error (the reactor passes names that come from minions' events).

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw*' libreswan.ensure_up
        salt 'vpn-gw1' libreswan.ensure_up remote-db force=True
    """
    return _each_locked(name, lambda settings, tunnel: _ensure_one(settings, tunnel, force))


def _each_locked(name, act):
    """``act(settings, tunnel)`` for each tunnel ``name`` selects (``_acting_on``), under
    the host's recovery lock taken without waiting (busy: each one ``deferred``)."""
    declared = _declared_here()
    settings = monitoring_settings()
    results = {}
    status = None if name is not None else _status(settings["status_timeout"], False)
    tunnels = _acting_on(name, declared, status, settings)
    with _locked(settings, name) as mine:
        for tunnel in tunnels:
            results[tunnel] = act(settings, tunnel) if mine else dict(_LOCK_BUSY, name=tunnel)
    return results


def recover(name=None):
    """
    What a beacon event asks for, decided here from the tunnel's health now:
    for tunnel ``name`` (default: every declared tunnel) carried by the backup,
    the failback policy (as ``failback``); otherwise ``ensure_up`` (the ladder
    when down or partial; when up, the EndpointSlice's ready back and a backup
    up beside the primary taken down). With ``recovery: local`` (the default)
    the recovery watcher the beacon keeps running on the minion calls it at each
    change and repeat, so a tunnel heals while the master is unreachable. Only
    tunnels this minion's pillar declares are acted on, under the one recovery
    lock, within the retry budget.

    CLI Example:

    .. code-block:: bash

        salt-call libreswan.recover remote-db
        salt 'vpn-gw*' libreswan.recover
    """
    return _each_locked(name, _recover_one)


def _recover_one(settings, tunnel):
    if _health_now(settings, tunnel)["state"] == "failover":
        return dict(_failback_one(settings, tunnel), action="failback")
    return dict(_ensure_one(settings, tunnel, False), action="ensure_up")


def _failback_one(settings, tunnel):
    """The failback policy, then the endpoint set to whether the tunnel is carried:
    on the backup it serves. A ladder that gave up before the backup's SA came up
    (pluto brought it up later on its own) left it not ready; the heartbeats alone
    took 336 s and 419 s to set it ready again in the e2e guest run."""
    result = _failback_policy(settings, tunnel)
    return dict(result, endpoint=_set_endpoint_ready(settings, result["state"] in CARRIED))


def _failback_policy(settings, tunnel):
    now = time.time()
    current = _health_now(settings, tunnel)
    memory = _memory(tunnel)
    result = {"name": tunnel, "state": current["state"], "active": current["active"],
              "result": True}
    if current["state"] != "failover":
        if memory.get("backup_since"):
            memory["backup_since"] = None
            _remember(tunnel, memory)
        return dict(result, comment="not on the backup")
    since = memory.get("backup_since") or now
    last_try = memory.get("failback_tried") or 0
    # Each try comes at a repeat of the failover event, once per failback_after, but
    # starts a little after its event: without half a repeat of slack a try late by a
    # second would put the next one a whole gap later.
    slack = min(settings["repeat"], settings["failback_after"]) / 2
    due = max(since, last_try) + settings["failback_after"] - slack
    if settings["failback"] == "never" or now < due or _state_run_in_progress():
        memory["backup_since"] = since
        _remember(tunnel, memory)
        why = "policy: never" if settings["failback"] == "never" else (
            f"due in {round(due - now, 1)}s" if now < due else "a state run is in progress")
        return dict(result, comment=f"staying on the backup ({why})")
    memory.update(backup_since=since, failback_tried=now)
    _remember(tunnel, memory)
    final, outcome = _make_before_break(settings, tunnel, answered_since=max(since, last_try))
    memory = _memory(tunnel)
    memory["failback_last"] = {"started": now, "time": time.time(), "result": outcome}
    if final["state"] != "up":
        _remember(tunnel, memory)
        comment = {"primary_silent": f"the primary did not come up within "
                                     f"{settings['step_timeout']}s; the backup was left untouched",
                   "primary_child_failed": "the primary's IKE SA came up but the tunnel did not "
                                           "move to it; back on the backup"}[outcome]
        return dict(result, result=final["up"], state=final["state"], active=final["active"],
                    comment=comment, outcome=outcome)
    memory.update(backup_since=None, failback_tried=None)
    _remember(tunnel, memory)
    return dict(result, state=final["state"], active=final["active"], comment="failed back",
                outcome=outcome, alert=_alert(tunnel, "up", "failback", 0,
                                              "back on the primary peer"))


def _make_before_break(settings, tunnel, answered_since):
    """Bring the primary conn up beside the backup; only once the primary is known
    to answer is the backup taken down (the primary's Child SA, which the backup's
    SA may have kept from installing over the same selectors, is initiated again
    once the backup is gone). The primary answers when its IKE SA is established
    now, or was at any time since ``answered_since`` (pluto's log,
    ``libreswan.peer_answered``): on Libreswan 4.10 with real Child SAs the
    primary's IKE SA lasts well under a second beside the backup (its first Child
    SA cannot route over the backup's, and pluto deletes the IKE SA with it), then
    pluto revives it every ~40 s, the same again; seen in the QEMU guest. A primary
    that stays silent for ``step_timeout`` is left to pluto, the backup's SAs never
    touched: its conn is not terminated while it negotiates (Libreswan 4.10's
    pluto crashes terminating a narrowing conn with queued Child SAs, and takes
    the backup's SAs with it); pluto keeps initiating it, a later failback does
    not initiate it twice (``libreswan.up``), and once it is up beside the
    backup, ``ensure_up`` (the beacon's ``up`` event) takes the backup down.
    Returns (health, outcome): failed_back, primary_silent or
    primary_child_failed (then back on the backup)."""
    wait = settings["step_timeout"]
    probe = __salt__["libreswan.up"](tunnel, wait=wait, timeout=settings["status_timeout"])
    if not probe.get("ike_established") and not __salt__["libreswan.peer_answered"](
            tunnel, answered_since):
        return _health_now(settings, tunnel), "primary_silent"
    __salt__["libreswan.down"](tunnel + BACKUP_SUFFIX)
    current = _health_now(settings, tunnel)
    if current["state"] != "up":
        __salt__["libreswan.up"](tunnel, wait=wait, timeout=settings["status_timeout"])
        current = _wait_health(settings, tunnel, wait)
    if current["state"] == "up":
        return current, "failed_back"
    __salt__["libreswan.switch"](tunnel, to="backup", wait=wait,
                                 timeout=settings["status_timeout"])
    return _wait_health(settings, tunnel, wait), "primary_child_failed"


def failback(name=None):
    """
    Apply the failback policy to tunnel ``name`` (default: every tunnel) when
    the backup peer carries it: with ``failback: auto``, once it has been on
    the backup for ``failback_after`` seconds (and at most once per that
    period), make before break: bring the primary conn up beside the backup
    and take the backup down only once the primary's IKE SA is established;
    a primary that stays silent for ``step_timeout`` leaves the backup
    untouched. ``failback: never`` leaves it. With ``endpoint_ready`` enabled
    the EndpointSlice's ``ready`` then follows whether every watched tunnel is
    carried, as in ``ensure_up``. Only tunnels this minion's pillar declares
    are acted on, as in ``ensure_up``.

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw1' libreswan.failback remote-db
    """
    return _each_locked(name, _failback_one)
