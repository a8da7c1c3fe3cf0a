"""The outage one failback costs, make before break (issue 13). UNMEASURED:
it needs ESP (Child SAs), which this project's host kernel lacks; run it in
the QEMU guest (``--guest``), which has ESP but takes the whole machine for
10+ minutes.

Run by hand, as root:

    .venv/bin/python benchmarks/failback_outage.py [--runs 3]           # on a kernel with ESP
    .venv/bin/python benchmarks/failback_outage.py --guest [--runs 3]   # inside a QEMU guest

The lab and the settings are the monitoring tests' (tests/monitoring:
beacon every 2 s, holddown 2 s, step_timeout 5 s, failback_after 8 s). Per
run: the primary peer is stopped, the tunnel fails over to the backup; then

- *dead primary*: one failback attempt while the primary stays dead
  (``libreswan.failback`` once due): the longest gap without an installed
  Child SA on vpn-gw1 (``ipsec whack --trafficstatus``, sampled every 0.1 s)
  and whether the backup's IKE SA serial changed. Make before break: 0 s and
  unchanged; the former switch-and-back probe: about 2 x step_timeout.
- *primary back*: the primary is started and the failback moves the tunnel:
  the longest gap without a Child SA.

A sampled gap is an upper bound of the SA outage, not of a client's: TCP
retransmits across a short gap. Load: QEMU's TCG makes the guest's CPU
about 10x slower, which is the load this measures under.
"""
import argparse
import os
import re
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "monitoring")]

from monitoring_helpers import HOSTS, established, prepare, salt1, wait_for  # noqa: E402

from lab import DEFAULT, Lab  # noqa: E402


class ChildSaGaps:
    """Samples vpn-gw1's installed Child SAs in a thread; the longest gap without one."""

    def __init__(self, gw, period=0.1):
        self.gw, self.period, self.samples = gw, period, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            text = self.gw.run(["ipsec", "whack", "--trafficstatus"]).stdout
            self.samples.append((time.monotonic(), bool(re.search(r'"remote-db', text))))
            time.sleep(self.period)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)

    def longest(self):
        longest, since = 0.0, None
        for at, up in self.samples:
            if not up and since is None:
                since = at
            elif up and since is not None:
                longest, since = max(longest, at - since), None
        if since is not None:
            longest = max(longest, self.samples[-1][0] - since)
        return longest


def backup_serial(gw):
    found = re.search(r'#(\d+): "remote-db-backup"[^ ]* \S+ (?:STATE_V2_)?ESTABLISHED_IKE_SA',
                      gw.run(["ipsec", "whack", "--status"]).stdout)
    return found and int(found.group(1))


def one_run(lab):
    gw, primary = lab["vpn-gw1"], lab["remote-gw-primary"]
    primary.run(["systemctl", "stop", "ipsec"], check=True)
    wait_for(lambda: established(gw) == {"backup"}, 180, "failover to the backup")
    serial = backup_serial(gw)
    with ChildSaGaps(gw) as dead:
        time.sleep(10)  # failback_after 8 s: the failback is due
        outcome = salt1(lab, "libreswan.failback", "remote-db")["remote-db"].get("outcome")
        time.sleep(2)
    kept = backup_serial(gw) == serial
    with ChildSaGaps(gw) as back:
        primary.run(["systemctl", "start", "ipsec"], check=True)
        wait_for(lambda: established(gw) == {"primary"}, 180, "failback to the primary")
        time.sleep(2)
    return {"dead primary: gap (s)": dead.longest(), "dead primary: outcome": outcome,
            "dead primary: backup SA kept": kept, "primary back: gap (s)": back.longest()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--guest", action="store_true", help="run inside a QEMU guest (ESP)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("failback benchmark: needs root (it starts a lab)")
    if args.guest:
        from lab import qemu
        # the venv's interpreter: the lab's Salt and the script's imports live there
        result = qemu.run([sys.executable, "benchmarks/failback_outage.py", "--runs",
                           str(args.runs)],
                          cwd=REPO, timeout=3600, stream=True)
        sys.exit(result.returncode)
    rows = []
    with Lab(DEFAULT.subset(HOSTS), name=f"vgwlab-failback{os.getpid()}") as lab:
        prepare(lab)
        for run in range(args.runs):
            rows.append(one_run(lab))
            print(f"run {run + 1}/{args.runs}: {rows[-1]}", flush=True)
    print(f"\n{args.runs} runs (load: {os.getloadavg()[0]:.1f})")
    for key in rows[0]:
        values = [r[key] for r in rows]
        shown = (f"median {statistics.median(values):.2f}, max {max(values):.2f}"
                 if isinstance(values[0], float) else ", ".join(map(str, values)))
        print(f"{key:<30} {shown}")


if __name__ == "__main__":
    main()
