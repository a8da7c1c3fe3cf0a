"""Prometheus textfile metrics for node_exporter's textfile collector.

One file (``vpn_gateway:monitoring:metrics:path``, default
``/var/lib/prometheus/node-exporter/vpn_gateway.prom``) written atomically
(a dot-file in the same directory, then a rename: node_exporter never reads
half a file). Per conn: IKE/Child SA up, bytes and which declared remote
subnets a Child SA carries; per tunnel: up (by ``up_when``), its state (up,
failover, partial, down), the active peer, recoveries by result and the time of the last
state change the beacon reported; PgBouncer pool gauges when the pgbouncer
module is present. ``_render`` is pure and tested directly.
"""
import os
import tempfile
import time

from salt.exceptions import CommandExecutionError

__virtualname__ = "vpn_metrics"
QUERY_TIMEOUT = 5  # s per pluto status query

TUNNEL_STATES = ("up", "failover", "partial", "down")  # libreswan.health's states

# name: (type, help)
METRICS = {
    "vpn_gateway_pluto_running": ("gauge", "1 when pluto answers whack --status."),
    "vpn_gateway_ike_sa_up": ("gauge", "1 when the conn has an established IKE SA."),
    "vpn_gateway_child_sa_up": ("gauge", "1 when the conn has an established Child (IPsec) SA."),
    "vpn_gateway_sa_bytes_total": (
        "counter", "Bytes through the conn's Child SAs (resets when an SA is replaced)."),
    "vpn_gateway_tunnel_up": ("gauge", "1 when the tunnel is up by the up_when rule."),
    "vpn_gateway_tunnel_state": (
        "gauge", "1 for the tunnel's state (up, failover, partial, down), 0 for the others."),
    "vpn_gateway_child_sa_subnet_covered": (
        "gauge", "1 when an established Child SA of the conn carries the declared remote subnet."),
    "vpn_gateway_tunnel_active_peer": ("gauge", "1 for the peer (primary/backup) carrying it."),
    "vpn_gateway_tunnel_recoveries_total": ("counter", "Recovery ladders run, by result."),
    "vpn_gateway_tunnel_last_change_timestamp_seconds": (
        "gauge", "When the beacon last reported a state change (Unix time)."),
    "vpn_gateway_pgbouncer_up": ("gauge", "1 when the PgBouncer admin console answers."),
    "vpn_gateway_pgbouncer_clients_waiting": ("gauge", "Clients waiting for a server connection."),
    "vpn_gateway_pgbouncer_maxwait_seconds": ("gauge", "Age of the oldest waiting client."),
    "vpn_gateway_pgbouncer_server_connections": ("gauge", "Server connections by state."),
    "vpn_gateway_metrics_timestamp_seconds": ("gauge", "When this file was written."),
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


def _render(status, healths, memory, changes, pools, now):
    """The textfile. ``status``: libreswan.status; ``healths``: libreswan.health;
    ``memory``: recovery state per tunnel; ``changes``: beacon state per tunnel;
    ``pools``: SHOW POOLS rows, or None when PgBouncer does not answer."""
    samples = {name: [] for name in METRICS}
    samples["vpn_gateway_pluto_running"].append(({}, int(bool(status.get("running")))))
    for conn, entry in sorted(status.get("conns", {}).items()):
        samples["vpn_gateway_ike_sa_up"].append(({"conn": conn}, int(entry["ike_established"])))
        samples["vpn_gateway_child_sa_up"].append(
            ({"conn": conn}, int(entry["child_established"])))
        for subnet in sorted(entry.get("subnets_covered", []) + entry.get("subnets_missing", [])):
            samples["vpn_gateway_child_sa_subnet_covered"].append(
                ({"conn": conn, "subnet": subnet},
                 int(subnet in entry.get("subnets_covered", []))))
        for direction in ("in", "out"):
            samples["vpn_gateway_sa_bytes_total"].append(
                ({"conn": conn, "direction": direction}, entry[f"{direction}_bytes"]))
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
            samples["vpn_gateway_pgbouncer_clients_waiting"].append((labels, pool["cl_waiting"]))
            samples["vpn_gateway_pgbouncer_maxwait_seconds"].append(
                (labels, pool["maxwait"] + pool.get("maxwait_us", 0) / 1e6))
            for state in ("active", "idle", "used"):
                samples["vpn_gateway_pgbouncer_server_connections"].append(
                    (dict(labels, state=state), pool[f"sv_{state}"]))
    samples["vpn_gateway_metrics_timestamp_seconds"].append(({}, round(now, 3)))
    lines = []
    for name, rows in samples.items():
        if not rows:
            continue
        kind, help_text = METRICS[name]
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines += [_sample(name, labels, value) for labels, value in rows]
    return "\n".join(lines) + "\n"


# -- Salt side ----------------------------------------------------------------------------------
def _pools():
    """SHOW POOLS rows (the admin console's own pool left out); None without the
    pgbouncer module, False when it does not answer."""
    if "pgbouncer.show" not in __salt__:
        return None
    try:
        return [p for p in __salt__["pgbouncer.show"]("pools") if p["database"] != "pgbouncer"]
    except Exception:  # PgBouncer down is a metric (pgbouncer_up 0), not a failure
        return False


def collect():
    """
    The metrics as text (what ``write`` puts in the file).

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw1' vpn_metrics.collect
    """
    memory = __salt__["libreswan.monitoring_memory"]
    # pluto's queries bounded (a hung pluto: pluto_running 0, tunnels down, never a hang)
    return _render(__salt__["libreswan.status"](timeout=QUERY_TIMEOUT),
                   __salt__["libreswan.health"](timeout=QUERY_TIMEOUT),
                   memory("recovery"), memory("beacon"), _pools(), time.time())


def write(path=None):
    """
    Write the metrics for node_exporter's textfile collector (atomically,
    0644). Returns the path and the number of samples.

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw1' vpn_metrics.write
    """
    path = path or __salt__["libreswan.monitoring_settings"]()["metrics"]["path"]
    text = collect()
    directory = os.path.dirname(path)
    # The formula owns the directory (vpn_gateway.monitoring); creating it here
    # would race the formula's own prediction of that change.
    if not os.path.isdir(directory):
        raise CommandExecutionError(
            f"the textfile directory {directory} does not exist: apply vpn_gateway.monitoring "
            "(it creates it) or set vpn_gateway:monitoring:metrics:path")
    fd, tmp = tempfile.mkstemp(prefix=".vpn_gateway.", suffix=".tmp", dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    samples = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    return {"path": path, "samples": samples}
