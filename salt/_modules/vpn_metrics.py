"""Prometheus textfile metrics for node_exporter's textfile collector.

One file (``vpn_gateway:monitoring:metrics:path``, default
``/var/lib/prometheus/node-exporter/vpn_gateway.prom``) replaced atomically
(``salt.utils.atomicfile``: node_exporter never reads half a file). Names,
units and types follow Prometheus' naming practices and the exporters users
know (docs/monitoring.md has the mapping): per conn ``vpn_gateway_ipsec_*``
as sergeymakinen/ipsec_exporter's ``ipsec_*``, per pool and database
``vpn_gateway_pgbouncer_*`` as prometheus-community/pgbouncer_exporter's
``pgbouncer_*``; per tunnel ``vpn_gateway_tunnel_*`` (up by ``up_when``, its
state, the active peer, recoveries, the last state change); an info metric
with the Libreswan, PgBouncer and pack versions; and the time of the last
successful write (the stale-metrics signal the shipped alert rules watch).

The Child SA byte counters are running totals kept in
``<state_dir>/metrics-counters.json``: each SA's bytes are counted by its
serial, so a rekey (a new SA, its bytes from 0) or a pluto restart adds to
the total and never makes a ``_total`` go down. ``_render`` and
``_advance_counters`` are pure and tested directly.
"""
import fcntl
import json
import os
import time
from contextlib import contextmanager

import salt.utils.atomicfile
from salt.exceptions import CommandExecutionError

__virtualname__ = "vpn_metrics"
QUERY_TIMEOUT = 5  # s per pluto status query
PACK_VERSION = "0.1.0"  # setup.cfg's version (a unit test keeps the two equal)
COUNTERS_FILE = "metrics-counters.json"

TUNNEL_STATES = ("up", "failover", "partial", "down")  # libreswan.health's states
POOL_COLUMNS = (  # SHOW POOLS column -> metric (pgbouncer_exporter's names)
    ("cl_active", "vpn_gateway_pgbouncer_pools_client_active_connections"),
    ("cl_waiting", "vpn_gateway_pgbouncer_pools_client_waiting_connections"),
    ("sv_active", "vpn_gateway_pgbouncer_pools_server_active_connections"),
    ("sv_idle", "vpn_gateway_pgbouncer_pools_server_idle_connections"),
    ("sv_used", "vpn_gateway_pgbouncer_pools_server_used_connections"),
)
DATABASE_COLUMNS = (  # SHOW DATABASES column -> metric
    ("max_connections", "vpn_gateway_pgbouncer_databases_max_connections"),
    ("current_connections", "vpn_gateway_pgbouncer_databases_current_connections"),
)

# name: (type, help). The order is the file's order.
METRICS = {
    "vpn_gateway_build_info": (
        "gauge", "Always 1: the pack's, Libreswan's and PgBouncer's versions as labels."),
    "vpn_gateway_ipsec_up": ("gauge", "1 when pluto answers whack --status."),
    "vpn_gateway_ipsec_ike_sa_established": (
        "gauge", "1 when the conn has an established IKE SA."),
    "vpn_gateway_ipsec_child_sa_established": (
        "gauge", "1 when the conn has an established Child (IPsec) SA."),
    "vpn_gateway_ipsec_child_sa_subnet_covered": (
        "gauge", "1 when an established Child SA of the conn carries the declared remote subnet."),
    "vpn_gateway_ipsec_child_sa_bytes_in_total": (
        "counter", "Bytes received through the conn's Child SAs (kept across rekeys)."),
    "vpn_gateway_ipsec_child_sa_bytes_out_total": (
        "counter", "Bytes sent through the conn's Child SAs (kept across rekeys)."),
    "vpn_gateway_tunnel_up": ("gauge", "1 when the tunnel is up by the up_when rule."),
    "vpn_gateway_tunnel_state": (
        "gauge", "1 for the tunnel's state (up, failover, partial, down), 0 for the others."),
    "vpn_gateway_tunnel_active_peer": ("gauge", "1 for the peer (primary/backup) carrying it."),
    "vpn_gateway_tunnel_recoveries_total": ("counter", "Recovery ladders run, by result."),
    "vpn_gateway_tunnel_last_change_timestamp_seconds": (
        "gauge", "When the beacon last reported a state change (Unix time)."),
    "vpn_gateway_pgbouncer_up": ("gauge", "1 when the PgBouncer admin console answers."),
    "vpn_gateway_pgbouncer_pools_client_active_connections": (
        "gauge", "Client connections linked to a server connection."),
    "vpn_gateway_pgbouncer_pools_client_waiting_connections": (
        "gauge", "Client connections waiting for a server connection."),
    "vpn_gateway_pgbouncer_pools_server_active_connections": (
        "gauge", "Server connections linked to a client."),
    "vpn_gateway_pgbouncer_pools_server_idle_connections": (
        "gauge", "Server connections unused and immediately usable."),
    "vpn_gateway_pgbouncer_pools_server_used_connections": (
        "gauge", "Server connections idle longer than server_check_delay."),
    "vpn_gateway_pgbouncer_pools_client_maxwait_seconds": (
        "gauge", "Age of the oldest waiting client."),
    "vpn_gateway_pgbouncer_databases_max_connections": (
        "gauge", "max_db_connections of the database (0: no limit)."),
    "vpn_gateway_pgbouncer_databases_current_connections": (
        "gauge", "Server connections the database has now."),
    "vpn_gateway_metrics_last_success_timestamp_seconds": (
        "gauge", "When this file was last written successfully (Unix time)."),
}


def __virtual__():
    return __virtualname__


# -- rendering (pure) ------------------------------------------------------------------------
def _label_value(value):
    return str(value).replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def _number(value):
    """Exact: integers as integers, floats in full (``:g`` would round timestamps)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _sample(name, labels, value):
    inner = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items())
    return f"{name}{{{inner}}} {_number(value)}" if inner else f"{name} {_number(value)}"


def _advance_counters(previous, status):
    """The running byte totals per conn after ``status`` (libreswan.status), from
    ``previous`` (what the last write kept): ``{conn: {"in": total, "out": total,
    "sas": {serial: {"in": bytes, "out": bytes}}}}``. An SA's growth since the last
    write is added; an SA seen for the first time (a rekey's new SA, any SA after a
    pluto restart) adds all its bytes; an SA whose bytes went down is a new SA under
    an old serial (pluto restarted) and adds all of them. Conns pluto does not show
    now keep their totals and SAs (a hung pluto must not make a total drop or count
    twice); totals never go down."""
    counters = {conn: {"in": entry.get("in", 0), "out": entry.get("out", 0),
                       "sas": dict(entry.get("sas") or {})}
                for conn, entry in (previous or {}).items()}
    for conn, entry in (status.get("conns") or {}).items():
        old = counters.get(conn) or {"in": 0, "out": 0, "sas": {}}
        new = {"in": old["in"], "out": old["out"], "sas": {}}
        for sa in entry.get("child_sas") or []:
            if "in_bytes" not in sa:  # no trafficstatus line for it (not installed)
                continue
            serial = str(sa["serial"])
            seen = old["sas"].get(serial) or {}
            new["sas"][serial] = {}
            for direction in ("in", "out"):
                now = int(sa[f"{direction}_bytes"])
                before = int(seen.get(direction, 0))
                new[direction] += now - before if now >= before else now
                new["sas"][serial][direction] = now
        counters[conn] = new
    return counters


def _render(status, healths, memory, changes, pools, now, counters=None, info=None,
            databases=None):
    """The textfile. ``status``: libreswan.status; ``healths``: libreswan.health;
    ``memory``: recovery state per tunnel; ``changes``: beacon state per tunnel;
    ``pools``: SHOW POOLS rows, False when PgBouncer does not answer, None without
    the pgbouncer module; ``counters``: ``_advance_counters``' result (default: this
    status alone); ``info``: the versions for vpn_gateway_build_info; ``databases``:
    SHOW DATABASES rows; ``now``: the write's time."""
    samples = {name: [] for name in METRICS}
    info = info or {}
    samples["vpn_gateway_build_info"].append(({
        "version": info.get("version", PACK_VERSION),
        "libreswan_version": info.get("libreswan_version") or "",
        "pgbouncer_version": info.get("pgbouncer_version") or ""}, 1))
    samples["vpn_gateway_ipsec_up"].append(({}, int(bool(status.get("running")))))
    for conn, entry in sorted(status.get("conns", {}).items()):
        samples["vpn_gateway_ipsec_ike_sa_established"].append(
            ({"conn": conn}, int(entry["ike_established"])))
        samples["vpn_gateway_ipsec_child_sa_established"].append(
            ({"conn": conn}, int(entry["child_established"])))
        for subnet in sorted(entry.get("subnets_covered", []) + entry.get("subnets_missing", [])):
            samples["vpn_gateway_ipsec_child_sa_subnet_covered"].append(
                ({"conn": conn, "subnet": subnet},
                 int(subnet in entry.get("subnets_covered", []))))
    if counters is None:
        counters = _advance_counters({}, status)
    for conn, totals in sorted(counters.items()):
        for direction in ("in", "out"):
            samples[f"vpn_gateway_ipsec_child_sa_bytes_{direction}_total"].append(
                ({"conn": conn}, totals[direction]))
    for tunnel, health in sorted(healths.items()):
        samples["vpn_gateway_tunnel_up"].append(({"tunnel": tunnel}, int(health["up"])))
        for state in TUNNEL_STATES:
            samples["vpn_gateway_tunnel_state"].append(
                ({"tunnel": tunnel, "state": state}, int(health["state"] == state)))
        for peer in ("primary", "backup"):
            carrying = health["active"] in (peer, "both")
            samples["vpn_gateway_tunnel_active_peer"].append(
                ({"tunnel": tunnel, "peer": peer}, int(carrying)))
        recoveries = (memory.get(tunnel) or {}).get("recoveries") or {}
        for result in ("success", "failure"):
            samples["vpn_gateway_tunnel_recoveries_total"].append(
                ({"tunnel": tunnel, "result": result}, recoveries.get(result, 0)))
        since = (changes.get(tunnel) or {}).get("since")
        if since is not None:
            samples["vpn_gateway_tunnel_last_change_timestamp_seconds"].append(
                ({"tunnel": tunnel}, since))
    if pools is not None:
        samples["vpn_gateway_pgbouncer_up"].append(({}, 1 if pools is not False else 0))
        for pool in pools or []:
            labels = {"database": pool["database"], "user": pool["user"]}
            for column, name in POOL_COLUMNS:
                samples[name].append((labels, pool.get(column, 0)))
            samples["vpn_gateway_pgbouncer_pools_client_maxwait_seconds"].append(
                (labels, pool["maxwait"] + pool.get("maxwait_us", 0) / 1e6))
    for database in databases or []:
        for column, name in DATABASE_COLUMNS:
            samples[name].append(({"database": database["name"]}, database.get(column) or 0))
    samples["vpn_gateway_metrics_last_success_timestamp_seconds"].append(({}, round(now, 3)))
    lines = []
    for name, rows in samples.items():
        if not rows:
            continue
        kind, help_text = METRICS[name]
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines += [_sample(name, labels, value) for labels, value in rows]
    return "\n".join(lines) + "\n"


# -- Salt side ----------------------------------------------------------------------------------
def _show(subject):
    """SHOW rows (the admin console's own database left out); None without the
    pgbouncer module, False when it does not answer."""
    if "pgbouncer.show" not in __salt__:
        return None
    key = "database" if subject == "pools" else "name"
    try:
        return [r for r in __salt__["pgbouncer.show"](subject) if r.get(key) != "pgbouncer"]
    except Exception:  # PgBouncer down is a metric (pgbouncer_up 0), not a failure
        return False


def _versions():
    libreswan = None
    try:
        libreswan = (__salt__["libreswan.version"]() or {})
        libreswan = libreswan.get("version") if libreswan.get("installed") else None
    except Exception:  # no ipsec command: the label is empty, the metrics still go out
        libreswan = None
    pgbouncer = None
    if "pgbouncer.version" in __salt__ and "pgbouncer.show" in __salt__:
        try:
            pgbouncer = __salt__["pgbouncer.version"]()
        except Exception:
            pgbouncer = None
    return {"version": PACK_VERSION, "libreswan_version": libreswan,
            "pgbouncer_version": pgbouncer}


@contextmanager
def _counters_file(state_dir, save=True):
    """The running totals (read, then written back on leaving when ``save``), under
    the file's flock: two writes at once never count an SA's growth twice."""
    path = os.path.join(state_dir, COUNTERS_FILE)
    os.makedirs(state_dir, mode=0o750, exist_ok=True)
    fd = os.open(os.path.join(state_dir, "." + COUNTERS_FILE + ".lock"),
                 os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    with os.fdopen(fd, "r+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (FileNotFoundError, ValueError):
            data = {}
        holder = {"conns": data.get("conns") if isinstance(data, dict) else None}
        yield holder
        if save:
            _write_atomic(path, json.dumps({"conns": holder["conns"]}, indent=1,
                                           sort_keys=True))
            os.chmod(path, 0o600)


def _write_atomic(path, text):
    """Replace ``path`` through salt.utils.atomicfile. On an error (a full disk) its
    temporary file is removed here: atomic_open's exit closes the file before removing it,
    and that close flushes the refused text again and raises first."""
    with salt.utils.atomicfile.atomic_open(path, "w") as handle:
        try:
            handle.write(text)
            handle.flush()
        except OSError:
            os.unlink(handle.name)
            raise


def _collect(save):
    state_dir = __salt__["libreswan.monitoring_settings"]()["state_dir"]
    memory = __salt__["libreswan.monitoring_memory"]
    # pluto's queries bounded (a hung pluto: ipsec_up 0, tunnels down, never a hang)
    # up or down is what the metrics show: pluto's log (the reasons) is not read
    status = __salt__["libreswan.status"](timeout=QUERY_TIMEOUT, reasons=False)
    health = __salt__["libreswan.health"](timeout=QUERY_TIMEOUT, reasons=False)
    pools = _show("pools")
    databases = None if pools is False else _show("databases") or []
    with _counters_file(state_dir, save) as counters:
        counters["conns"] = _advance_counters(counters["conns"], status)
        return _render(status, health, memory("recovery"), memory("beacon"), pools,
                       time.time(), counters=counters["conns"], info=_versions(),
                       databases=databases)


def collect():
    """
    The metrics as text, as ``write`` would put them in the file (it does not
    advance the byte counters' kept running totals).

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw1' vpn_metrics.collect
    """
    return _collect(save=False)


def write(path=None):
    """
    Write the metrics for node_exporter's textfile collector (atomically,
    0644), advancing the byte counters' running totals. Returns the path and
    the number of samples.

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw1' vpn_metrics.write
    """
    settings = __salt__["libreswan.monitoring_settings"]()
    path = path or settings["metrics"]["path"]
    directory = os.path.dirname(path)
    # The formula owns the directory (vpn_gateway.monitoring); creating it here
    # would race the formula's own prediction of that change.
    if not os.path.isdir(directory):
        raise CommandExecutionError(
            f"the textfile directory {directory} does not exist: apply vpn_gateway.monitoring "
            "(it creates it) or set vpn_gateway:monitoring:metrics:path")
    text = _collect(save=True)
    _write_atomic(path, text)
    os.chmod(path, 0o644)
    samples = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    return {"path": path, "samples": samples}
