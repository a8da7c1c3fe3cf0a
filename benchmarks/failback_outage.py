"""The outage one failback costs, make before break (issue 13), under client
load, on real Child SAs. It needs ESP, which this project's host kernel
lacks: run it in the QEMU guest (``--guest``), which has ESP but takes the
whole machine for 15+ minutes per platform.

Run by hand, as root, on a quiet machine:

    .venv/bin/python benchmarks/failback_outage.py --guest [--platform debian12] [--runs 3]
    .venv/bin/python benchmarks/failback_outage.py [--runs 3]   # on a kernel with ESP

The lab is masterless, like the ESP tests (under TCG every master round trip
takes minutes): vpn-gw1 boots from its converged root (lab/converged.py)
and gets vpn_gateway.sysctl, .ipsec and .pgbouncer with
the example pillar through ``salt-call --local``, with ``up_when: child_sa``,
``failback_after`` 8 s and ``step_timeout`` 20 s (TCG's pace);
the remote primary and backup gateways answer (lab/peers.py) and forward to
remote-db only what IPsec decrypted. Load: k8s-node1 runs ``SELECT 1``
through vpn-gw1's pooler in a loop (a new psql each time, one every ~0.2 s
plus psql's own start under TCG). Per run, the tunnel is put on the backup
(``libreswan.switch``, the failover's own step), then:

- *dead primary*: the primary peer stopped, one failback is due and runs
  (``libreswan.failback``): outcome, whether the backup's IKE SA serial
  changed, the longest gap without a Child SA on vpn-gw1 (``ipsec whack
  --trafficstatus`` sampled in the host) and the longest gap between two
  answered queries. Make before break: no gap beyond the load's own period.
- *primary back*: the primary started, ``libreswan.failback`` called again
  every ``failback_after`` (as the beacon's reactor calls it) until the
  tunnel is on the primary: each call's outcome, and the same gaps.

The remote cloud's routing follows the tunnel: the lab's remote-db routes the
gateway's tunnel address through the primary only (lab/topology.py), so a
thread plays the remote side's route table (a real cloud's BGP or route
update), pointing remote-db's route at whichever remote gateway holds a
Child SA with vpn-gw1, checked about once a second. Without it every query
over the backup hangs (its answer goes to the primary).

A sampled gap is an upper bound of the SA outage (at most one sampling
interval, a whack call under TCG: about 1-2 s, is the resolution); the
query gap is what a client saw (a query that failed or hung is a gap). QEMU's TCG makes the
guest's CPU about 10x slower: that is the load this measures under.
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "monitoring"),
                str(REPO / "tests" / "dataplane" / "esp")]

from esp_helpers import backup_serial, child_sa_peers  # noqa: E402
from monitoring_helpers import wait_for  # noqa: E402

from lab import Lab, converged, peers, postgres, role, saltstack  # noqa: E402

HOSTS = ["vpn-gw1", "remote-gw-primary", "remote-gw-backup", "remote-db", "k8s-node1"]
TUNNEL = "remote-db"
# step_timeout: under TCG an IKE SA and its Child SAs take 5-10 s to negotiate.
SETTINGS = {"up_when": "child_sa", "holddown": 2, "step_timeout": 20, "failback": "auto",
            "failback_after": 8}
# The client: one SELECT 1 through the pooler at a time, each line "<start> <end> ok|fail".
LOAD = """\
while :; do
  start=$(date +%s.%N)
  if psql -X -At -h {host} -p {port} -U {user} -d {database} -c 'SELECT 1' >/dev/null 2>&1
  then result=ok; else result=fail; fi
  echo "$start $(date +%s.%N) $result" >> /run/load.log
  sleep 0.2
done
"""


def call(lab, function, *args):
    return saltstack.call_local(lab, lab["vpn-gw1"], function, *args, timeout=600)


class ChildSaGaps(peers.Poller):
    """Samples vpn-gw1's installed Child SAs in a thread; the longest gap without one."""

    def __init__(self, gw, period=0.1):
        super().__init__()
        self.gw, self.period, self.samples = gw, period, []

    def poll(self):
        self.samples.append((time.time(), bool(child_sa_peers(self.gw))))

    def __enter__(self):
        self.started = time.time()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self.ended = time.time()

    def longest(self):
        return longest_gap([at for at, up in self.samples if up], self.started, self.ended)


def longest_gap(times, started, ended):
    """The longest stretch in [started, ended] with no time in ``times``."""
    points = [started] + sorted(t for t in times if started <= t <= ended) + [ended]
    return max(b - a for a, b in zip(points, points[1:]))


def answered(node, started, ended):
    """End times of the queries that k8s-node1 saw answered in [started, ended]; failures."""
    ok, failed = [], 0
    for line in node.run(["cat", "/run/load.log"]).stdout.splitlines():
        begin, end, result = line.split()
        if started <= float(end) and float(begin) <= ended:
            if result == "ok":
                ok.append(float(end))
            else:
                failed += 1
    return ok, failed


def prepare(lab):
    gw = lab["vpn-gw1"]
    for name in peers.REMOTE_GATEWAYS:
        lab[name].run(["nft", "-f", "-"], input=peers.ONLY_DECRYPTED, check=True)
    peers.configure(lab)
    postgres.start(lab["remote-db"])
    saltstack.masterless(lab, gw)
    gw.put("/etc/salt/minion.d/monitoring.conf",
           json.dumps({"vpn_gateway": {"monitoring": SETTINGS}}))
    started = time.monotonic()
    returns = call(lab, "state.apply", converged.ROLE_SLS)
    failed = {r.get("__id__"): r["comment"] for r in returns.values() if r["result"] is False}
    if failed:
        raise RuntimeError(f"failback benchmark: the formulas failed: {failed}")
    slowest = sorted(returns.values(), key=lambda r: -r.get("duration", 0))[:6]
    print(f"formulas applied in {time.monotonic() - started:.0f}s; slowest states (s): "
          + ", ".join(f"{r['__id__']} {r.get('duration', 0) / 1000:.1f}" for r in slowest),
          flush=True)
    wait_for(lambda: child_sa_peers(gw) == {"primary"}, 300, "Child SA on the primary")
    host, port, database = role.POOLER
    lab["k8s-node1"].run(["systemd-run", "--unit", "load",
                          f"--setenv=PGPASSWORD={postgres.PASSWORD}",
                          "--setenv=PGCONNECT_TIMEOUT=10", "sh", "-c",
                          LOAD.format(host=host, port=port, user=postgres.ROLE,
                                      database=database)], check=True)


def to_backup(lab):
    gw = lab["vpn-gw1"]
    call(lab, "libreswan.switch", TUNNEL, "to=backup", "wait=60")
    wait_for(lambda: child_sa_peers(gw) == {"backup"}, 300, "Child SA on the backup")
    call(lab, "libreswan.failback", TUNNEL)  # remembers since when the backup carries it


def measured(lab, action):
    """Run ``action`` while sampling; (its return, Child SA gap, query gap, failed queries)."""
    gw, node = lab["vpn-gw1"], lab["k8s-node1"]
    with ChildSaGaps(gw) as gaps:
        time.sleep(3)
        value = action()
        time.sleep(5)
    ok, failed = answered(node, gaps.started, gaps.ended)
    return value, gaps.longest(), longest_gap(ok, gaps.started, gaps.ended), failed


def one_run(lab):
    gw, primary = lab["vpn-gw1"], lab["remote-gw-primary"]
    to_backup(lab)
    primary.run(["systemctl", "stop", "ipsec"], check=True)
    time.sleep(SETTINGS["failback_after"] + 1)
    serial = backup_serial(gw)
    outcome, sa_gap, query_gap, failed = measured(
        lab, lambda: call(lab, "libreswan.failback", TUNNEL)[TUNNEL].get("outcome"))
    print(f"dead primary: {outcome}, Child SA gap {sa_gap:.1f}s, query gap {query_gap:.1f}s",
          flush=True)
    row = {"dead primary: outcome": outcome,
           "dead primary: backup SA kept": backup_serial(gw) == serial,
           "dead primary: Child SA gap (s)": sa_gap, "dead primary: query gap (s)": query_gap,
           "dead primary: failed queries": failed}
    primary.run(["systemctl", "start", "ipsec"], check=True)
    time.sleep(SETTINGS["failback_after"] + 1)

    def failback_to_primary():
        """As the reactor does: failback again every failback_after until on the primary."""
        outcomes, deadline = [], time.monotonic() + 600
        while child_sa_peers(gw) != {"primary"} and time.monotonic() < deadline:
            outcomes.append(call(lab, "libreswan.failback", TUNNEL)[TUNNEL].get("outcome"))
            if child_sa_peers(gw) != {"primary"}:
                time.sleep(SETTINGS["failback_after"] + 1)
        return "/".join(outcomes) if child_sa_peers(gw) == {"primary"} else "not back"

    outcome, sa_gap, query_gap, failed = measured(lab, failback_to_primary)
    row.update({"primary back: outcomes": outcome, "primary back: Child SA gap (s)": sa_gap,
                "primary back: query gap (s)": query_gap, "primary back: failed queries": failed})
    return row


def arguments(doc, script, runs, cron_runs=None):
    """The ESP benchmarks' command line (--runs, --platform, --guest, and --cron-runs
    where ``cron_runs`` is its default). With --guest, ``script`` runs again inside a
    QEMU guest and this process exits with its code."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=runs)
    if cron_runs is not None:
        parser.add_argument("--cron-runs", type=int, default=cron_runs,
                            help="runs of the cron script (the anchor) after the pack's")
    parser.add_argument("--platform", default="debian13")
    parser.add_argument("--guest", action="store_true", help="run inside a QEMU guest (ESP)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit(f"{script}: needs root (it starts a lab)")
    if args.guest:
        from lab import qemu
        # the venv's interpreter: the lab's Salt and the script's imports live there
        passed = ["--cron-runs", str(args.cron_runs)] if cron_runs is not None else []
        result = qemu.run([sys.executable, f"benchmarks/{script}", "--runs", str(args.runs),
                           "--platform", args.platform, *passed], cwd=REPO, timeout=5400,
                          stream=True)
        sys.exit(result.returncode)
    return args


def main():
    args = arguments(__doc__, "failback_outage.py", runs=3)
    rows = []
    # vpn-gw1 from its converged root (lab/converged.py): apt under TCG is not what this measures
    with Lab(converged.topology(HOSTS, args.platform), name=f"vgwlab-failback{os.getpid()}",
             platform=args.platform) as lab, peers.RemoteRouting(lab):
        prepare(lab)
        for run in range(args.runs):
            rows.append(one_run(lab))
            print(f"run {run + 1}/{args.runs}: {rows[-1]}", flush=True)
    print(f"\n{args.platform}, {args.runs} runs (load average: {os.getloadavg()[0]:.1f})")
    for key in rows[0]:
        values = [r[key] for r in rows]
        shown = (f"median {statistics.median(values):.2f}, max {max(values):.2f}"
                 if isinstance(values[0], (int, float)) and not isinstance(values[0], bool)
                 else ", ".join(map(str, values)))
        print(f"{key:<34} {shown}")


if __name__ == "__main__":
    main()
