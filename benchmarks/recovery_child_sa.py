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
"""
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import failback_outage as outage  # noqa: E402  (its lab, load and samplers)
from esp_helpers import child_sa_peers  # noqa: E402
from monitoring_helpers import wait_for  # noqa: E402

from lab import Lab, converged, peers, saltstack  # noqa: E402

SETTINGS = {"up_when": "child_sa", "holddown": 2, "step_timeout": 20, "conn_restarts": 2,
            "failback": "never", "recovery": "local"}
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


def measure(lab, fault):
    host, command = FAULTS[fault]
    gw, node = lab["vpn-gw1"], lab["k8s-node1"]
    started = time.time()
    time.sleep(3)
    t0 = time.time()
    lab[host].run(command, check=True)
    wait_for(lambda: "primary" not in child_sa_peers(gw), 60, f"{fault}: the fault shows")
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


def main():
    args = outage.arguments(__doc__, "recovery_child_sa.py", runs=2)
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


if __name__ == "__main__":
    main()
