"""Failover and recovery on real Child SAs, with a workload (issue 18): how long
the client goes without an answer when pluto is killed and when the primary
peer goes down, and where that time goes. It needs ESP, which this project's
host kernel lacks: run it in the QEMU guest (``--guest``), which takes the
whole machine for 20+ minutes.

Run by hand, as root, on a quiet machine:

    .venv/bin/python benchmarks/recovery_child_sa.py --guest [--platform debian13] [--runs 2]
    .venv/bin/python benchmarks/recovery_child_sa.py [--runs 2]   # on a kernel with ESP

The lab is failback_outage.py's (masterless vpn-gw1 from its converged root with
the sysctl, ipsec and pgbouncer formulas; the remote primary and backup
gateways; remote-db, whose route follows the Child SA; k8s-node1 running
``SELECT 1`` through the pooler in a loop). Recovery is the gateway's own, as
in production without a master: vpn-gw1 runs the pack's beacon every 2 s as its
salt-minion's loop would (with salt-call --local's functions and pillar: a
standalone minion compiles no pillar), and the beacon keeps the recovery
watcher running (``recovery: local``). Settings:
``up_when: child_sa``, ``holddown`` 2 s, ``conn_restarts`` 2 (the default),
``step_timeout`` 20 s (under TCG an IKE SA and its Child SAs take 5-10 s),
failback off (each run puts the tunnel back on the primary itself).

Per fault, from the fault (t0) to:

- *detected*: the beacon's ``down`` event (its memory's ``fired`` time);
- *steps*: the recovery ladder the watcher ran, each step with its own seconds
  (``libreswan.recovery_state``: ``last:steps``);
- *query gap*: the longest time k8s-node1 went without an answered query
  around the fault (a failed or hung query is a gap), and the failed queries.

Faults: *pluto killed* (``pkill -TERM pluto`` on vpn-gw1: it deletes its SAs on
the way out, the unit does not restart it) and *primary peer down*
(``systemctl stop ipsec`` on remote-gw-primary: it deletes its SAs, then
answers nothing). Goals (issue 18): pluto killed to transactions flowing in
5 s or less, primary peer down to the backup carrying them in 10 s or less.
QEMU's TCG makes the guest's CPU about 10x slower: that is the load this
measures under.

The anchor, in the same lab after the pack's runs (``--cron-runs``, default 1):
the cron script the monitoring replaces (benchmarks/cron_anchor.py, with its
check through the tunnel: a TCP connection to the database's port), run every
2 minutes by a systemd timer, with the pack's beacon and watcher stopped. Per fault: its ``down``
line, the Child SA back on the primary (it never fails over), its alert, and
the client's query gap.
"""
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import cron_anchor as cron  # noqa: E402
import failback_outage as outage  # noqa: E402  (its lab, load and samplers)
from esp_helpers import child_sa_peers  # noqa: E402
from monitoring_helpers import wait_for  # noqa: E402

from lab import Lab, converged, peers, saltstack  # noqa: E402

SETTINGS = {"up_when": "child_sa", "holddown": 2, "step_timeout": 20, "conn_restarts": 2,
            "failback": "never", "recovery": "local"}
# a database endpoint behind the peers, reached from vpn-gw1's tunnel end
CRON_PROBE = ("198.19.1.10", 5432)
# the cron script's worst case here: 120 s to its run, two "ipsec up" that each wait out
# pluto's retransmits to a dead peer under TCG, the restart
CRON_DEADLINE = 600
FAULTS = {
    "pluto killed": ("vpn-gw1", ["pkill", "-TERM", "-x", "pluto"]),
    "primary peer down": ("remote-gw-primary", ["systemctl", "stop", "ipsec"]),
}


def memory(lab, what):
    return outage.call(lab, "libreswan.monitoring_memory", what) or {}


def start_beacon(lab):
    gw = lab["vpn-gw1"]
    saltstack.start_beacon_loop(lab, gw)
    wait_for(lambda: memory(lab, "beacon").get(outage.TUNNEL, {}).get("state") == "up", 600,
             "the beacon reports up")


def settle(lab):
    """Both peers up, pluto running, the tunnel on the primary, the budget fresh."""
    gw = lab["vpn-gw1"]
    for name in ("remote-gw-primary", "remote-gw-backup"):
        lab[name].run(["systemctl", "start", "ipsec"], check=True)
    gw.run(["systemctl", "start", "ipsec"], check=True)
    if child_sa_peers(gw) != {"primary"}:
        outage.call(lab, "libreswan.switch", outage.TUNNEL, "to=primary", "wait=60")
    wait_for(lambda: child_sa_peers(gw) == {"primary"}, 300, "Child SA on the primary")
    outage.call(lab, "libreswan.reset_recovery", outage.TUNNEL)
    wait_for(lambda: memory(lab, "beacon").get(outage.TUNNEL, {}).get("state") == "up", 120,
             "the beacon reports up")


def inject(lab, fault):
    """The fault, 3 s into the window; (the window's start, the fault's time t0)."""
    host, command = FAULTS[fault]
    started = time.time()
    time.sleep(3)
    t0 = time.time()
    lab[host].run(command, check=True)
    wait_for(lambda: "primary" not in child_sa_peers(lab["vpn-gw1"]), 60,
             f"{fault}: the fault shows")
    return started, t0


def measure(lab, fault):
    gw, node = lab["vpn-gw1"], lab["k8s-node1"]
    started, t0 = inject(lab, fault)
    peer = "backup" if fault == "primary peer down" else "primary"
    wait_for(lambda: child_sa_peers(gw) == {peer} and memory(lab, "recovery").get(
        outage.TUNNEL, {}).get("last", {}).get("started", 0) >= t0, 600,
        f"{fault}: the watcher's ladder put the Child SA on the {peer}")
    time.sleep(8)  # the load's answers after the recovery
    ended = time.time()
    history = memory(lab, "beacon").get(outage.TUNNEL, {}).get("history", [])
    detected = next((h["fired"] - t0 for h in history
                     if h["state"] == "down" and h["fired"] >= t0), None)
    last = memory(lab, "recovery")[outage.TUNNEL]["last"]
    ok, failed = outage.answered(node, started, ended)
    return {"detected": detected, "ladder started": last["started"] - t0,
            "steps": ", ".join(f"{s['step']} {s.get('target') or ''} {s.get('seconds', '?')} s"
                               .replace("  ", " ") for s in last["steps"]),
            "query gap": outage.longest_gap(ok, started, ended), "failed queries": failed}


def start_cron(lab):
    """The pack's monitoring stopped (the beacon loop's unit, and with its cgroup the
    recovery watcher it forked), the tunnel back on the primary, the cron script's
    timer started."""
    gw = lab["vpn-gw1"]
    gw.run(["systemctl", "stop", "vgw-beacon"], check=True)
    settle_cron(lab)  # the last fault left the primary stopped
    # the script's own check holds before it is trusted
    wait_for(lambda: gw.run(cron.through_tunnel(*CRON_PROBE)).ok, 120,
             "cron: its check through the tunnel")
    cron.start(gw, cron.script(probe=CRON_PROBE))


def settle_cron(lab):
    """No run of the script left; both peers up; the Child SA on the primary (a
    restart of vpn-gw1's ipsec when it is not: the script never fails back)."""
    gw = lab["vpn-gw1"]
    cron.wait_idle(gw, CRON_DEADLINE)
    for name in ("remote-gw-primary", "remote-gw-backup"):
        lab[name].run(["systemctl", "start", "ipsec"], check=True)
    if child_sa_peers(gw) != {"primary"}:
        gw.run(["systemctl", "restart", "ipsec"], check=True)
    wait_for(lambda: child_sa_peers(gw) == {"primary"}, 300, "cron: Child SA on the primary")


def measure_cron(lab, fault):
    """As ``measure``, for the cron script: seconds from the fault to its "down" line,
    to the Child SA back on the primary (it never fails over: None when not within
    CRON_DEADLINE or once it gave up with its alert), and to its alert."""
    gw, node = lab["vpn-gw1"], lab["k8s-node1"]
    started, t0 = inject(lab, fault)
    recovered = None
    while time.time() - t0 < CRON_DEADLINE:
        if child_sa_peers(gw) == {"primary"}:
            recovered = time.time() - t0
            break
        if fault != "pluto killed" and cron.events(gw, t0, "alert") is not None:
            break  # it gave up: its restart brings back no peer that is down
        time.sleep(1)
    time.sleep(8)  # the load's answers after the recovery
    ended = time.time()
    ok, failed = outage.answered(node, started, ended)
    return {"detected": cron.events(gw, t0, "down"), "recovered": recovered,
            "alerted": cron.events(gw, t0, "alert"),
            "query gap": outage.longest_gap(ok, started, ended), "failed queries": failed,
            "watched": ended - t0}


def median(values):
    """The median of the values measured ("-" when none was), as text."""
    measured = [v for v in values if v is not None]
    return f"{statistics.median(measured):.1f}" if measured else "-"


def anchor_table(rows, cron_rows, runs):
    """Ours beside the cron script's, per fault: medians of the runs, and the ratio of
    the client's query gaps. An outage the cron script never ended within its watch is
    a lower bound (">=")."""
    lines = [f"\nthe cron script in the same lab ({runs} runs, every {cron.PERIOD} s, watched up "
             f"to {CRON_DEADLINE} s after the fault), beside the pack; - none\n",
             "| fault | pack: query gap | cron: query gap | cron / pack | cron: detected "
             "| cron: Child SA on the primary | cron: alert | cron: failed queries |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for fault, measured in cron_rows.items():
        ours = statistics.median(r["query gap"] for r in rows[fault])
        theirs = statistics.median(r["query gap"] for r in measured)
        bound = ">= " if any(r["recovered"] is None for r in measured) else ""
        lines.append(
            f"| {fault} | {ours:.1f} | {bound}{theirs:.1f} | {bound}{theirs / ours:.1f}x | "
            + " | ".join(median([r[k] for r in measured])
                         for k in ("detected", "recovered", "alerted"))
            + f" | {sum(r['failed queries'] for r in measured)} |")
    return "\n".join(lines)


def main():
    args = outage.arguments(__doc__, "recovery_child_sa.py", runs=2, cron_runs=1)
    outage.SETTINGS.clear()
    outage.SETTINGS.update(SETTINGS)  # prepare() writes them into vpn-gw1's minion config
    rows = {fault: [] for fault in FAULTS}
    with Lab(converged.topology(outage.HOSTS, args.platform), name=f"vgwlab-rcsa{os.getpid()}",
             platform=args.platform) as lab, peers.RemoteRouting(lab):
        outage.prepare(lab)
        start_beacon(lab)
        for run in range(args.runs):
            for fault in FAULTS:
                settle(lab)
                rows[fault].append(measure(lab, fault))
                print(f"run {run + 1}/{args.runs} {fault}: {rows[fault][-1]}", flush=True)
        cron_rows = {fault: [] for fault in FAULTS}
        if args.cron_runs:
            start_cron(lab)
        for run in range(args.cron_runs):
            for fault in FAULTS:
                settle_cron(lab)
                cron_rows[fault].append(measure_cron(lab, fault))
                print(f"cron run {run + 1}/{args.cron_runs} {fault}: {cron_rows[fault][-1]}",
                      flush=True)
    print(f"\n{args.platform}, {args.runs} runs, seconds from the fault (load average "
          f"{os.getloadavg()[0]:.1f}, 2 cores)\n")
    print("| fault | detected | ladder started | steps (each step's seconds) | query gap "
          "| failed queries |\n| --- | ---: | ---: | --- | ---: | ---: |")
    for fault, measured in rows.items():
        for row in measured:
            detected = f"{row['detected']:.1f}" if row["detected"] is not None else "-"
            print(f"| {fault} | {detected} | {row['ladder started']:.1f} | {row['steps']} | "
                  f"{row['query gap']:.1f} | {row['failed queries']} |")
        gaps = [r["query gap"] for r in measured]
        print(f"| {fault}: median query gap | | | | {statistics.median(gaps):.1f} | |")
    if args.cron_runs:
        print(anchor_table(rows, cron_rows, args.cron_runs))


if __name__ == "__main__":
    main()
