"""Where a command's CPU goes on this machine: run it (usually the whole suite)
and print one table by kind of process, one by lab host and one by lab.

Run by hand, as root, on a quiet machine, from a clean clone:
``python3 benchmarks/suite_cpu.py -- env CI=true bash .ci/run``.

The suite is CPU-bound on two cores (docs/lab.md, "The suite on two cores"): a
cut shows in wall time only when it removes CPU. Every 2 s this reads each
process's utime+stime from ``/proc`` (keyed by pid and start time, so a reused
pid is another process) and the whole machine's from ``/proc/stat``. Processes
that live less than 2 s are not seen one by one: their CPU is the machine's
less what was seen ("programs under 2 s"). A lab host's processes are known
by their root directory (device and inode of ``/proc/PID/root``: a unit's own
mount namespace keeps it), learned from each ``systemd-nspawn``'s
``--directory`` (lab/lab.py), nsenter'd commands included. Processes running
when the command starts count only what they use after that.

Two anchors: the machine itself (busy and idle seconds over the wall time),
and its speed before and after the command: the best of three runs of a fixed
pure-Python loop on one core. This machine is a VM whose host reports no steal
time; the same commit's suite took 26.5 to 33 min on different runs, and a
slower loop tells a slower machine from a heavier suite.
"""
import argparse
import collections
import os
import subprocess
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")
PERIOD = 2.0


def machine_ticks():
    """(busy, idle) ticks of the whole machine: /proc/stat's first line."""
    fields = list(map(int, open("/proc/stat").readline().split()[1:]))
    return sum(fields[:3]) + sum(fields[5:8]), fields[3] + fields[4]


def root_of(pid):
    found = os.stat(f"/proc/{pid}/root")
    return found.st_dev, found.st_ino


MACHINE_ROOT = root_of(os.getpid())


def lab_roots(known):
    """Add {root directory: (lab, host)} for each running systemd-nspawn's container."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            if not argv[0].endswith(b"systemd-nspawn"):
                continue
            directory = next(a[len(b"--directory="):].decode() for a in argv
                             if a.startswith(b"--directory="))
            _, _, _, lab, host = directory.split("/")[:5]  # /var/tmp/LAB/HOST/root
            for child in open(f"/proc/{pid}/task/{pid}/children").read().split():
                # a child caught before its chroot has this machine's root: taken for
                # the host's, it put every process started after it in that host
                # (QEMU among them, in the 2026-12-01 run)
                if (root := root_of(child)) != MACHINE_ROOT:
                    known[root] = (lab, host)
        except (OSError, StopIteration, ValueError):
            continue


def kind(pid, comm):
    """What a process is, from its command line (Salt sets its processes' titles)."""
    try:
        line = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return comm
    for needle, name in (("qemu-system", "QEMU guests"), ("salt-master", "salt-master"),
                         ("salt-minion", "salt-minion"), ("salt-call", "salt-call"),
                         ("pytest", "pytest processes")):
        if needle in line:
            return name
    return comm


def sample(seen, roots, first):
    lab_roots(roots)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{pid}/stat").read()
            root = root_of(pid)
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        ticks, start = int(fields[11]) + int(fields[12]), int(fields[19])
        key = (pid, start)
        if key not in seen:
            seen[key] = {"label": kind(pid, comm), "lab": roots.get(root),
                         "base": ticks if first else 0}
        seen[key]["ticks"] = ticks


def table(title, rows, total):
    print(f"\n{title}\n\n| | CPU s | share |\n|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.0f} | {100 * seconds / total:.0f} % |")


def speed():
    """Seconds for a fixed pure-Python loop on one core, the best of three."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        sum(i * i for i in range(3_000_000))
        best = min(best, time.perf_counter() - started)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=15, help="rows per table (default 15)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND...")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command: benchmarks/suite_cpu.py -- COMMAND...")
    seen, roots = {}, {}
    speed_before = speed()
    busy0, idle0 = machine_ticks()
    started = time.monotonic()
    sample(seen, roots, first=True)
    proc = subprocess.Popen(command)
    while proc.poll() is None:
        time.sleep(PERIOD)
        sample(seen, roots, first=False)
    wall = time.monotonic() - started
    busy1, idle1 = machine_ticks()
    busy, idle = (busy1 - busy0) / HZ, (idle1 - idle0) / HZ
    speed_after = speed()
    by_kind, by_host, by_lab = collections.Counter(), collections.Counter(), collections.Counter()
    hosts_of = collections.defaultdict(set)
    for process in seen.values():
        seconds = (process["ticks"] - process["base"]) / HZ
        if process["lab"]:
            by_kind["lab hosts: " + process["label"]] += seconds
            lab, host = process["lab"]
            by_host[host] += seconds
            by_lab[lab] += seconds
            hosts_of[lab].add(host)
        else:
            by_kind[process["label"]] += seconds
    by_kind["programs under 2 s"] = busy - sum(by_kind.values())
    print(f"`{' '.join(command)}`: exit {proc.returncode}, wall {wall:.0f} s; the machine busy "
          f"{busy:.0f} s, idle {idle:.0f} s ({100 * busy / (busy + idle):.0f} % busy); the fixed "
          f"loop {speed_before:.2f} s before, {speed_after:.2f} s after")
    table("By kind of process", by_kind.most_common(args.top), busy)
    table("Lab hosts, every lab's summed by host name", by_host.most_common(args.top), busy)
    # a lab's name is vgwlab-t<pytest's pid>x<its number in that run> (tests/conftest.py)
    table("Lab hosts by lab (their hosts' own processes)",
          [(f"{lab} ({', '.join(sorted(hosts_of[lab]))})", seconds)
           for lab, seconds in by_lab.most_common(args.top)], busy)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
