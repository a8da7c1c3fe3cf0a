"""The whole gateway role on two gateways, from the master: wall time of the
first converge and of the no-change re-apply, and how many programs each run
starts on each gateway.

Run by hand, as root: ``.venv/bin/python benchmarks/role_converge.py [--rounds N]``.

Each round uses a fresh lab. Wall times come from rounds without tracing;
the subprocess counts from one more round with ``strace -f -e trace=execve``
attached to each gateway's salt-minion (successful execve calls: every
program started, including shells and what they start). Tracing slows that
round, so its times are not used.
"""
import argparse
import collections
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from lab import DEFAULT, Lab, role  # noqa: E402

TRACE = "/run/vpn-gateway-bench-execve.log"
EXECVE_CALL = re.compile(r'^(\d+) +execve\("([^"]+)"')
EXECVE_DONE = re.compile(r"^(\d+) .*execve(\(| resumed>).*= 0$")


def start_tracing(host):
    """strace every salt-minion process (jobs run in an existing child, so
    following only the main PID's new children would miss them)."""
    pids = host.run(["pgrep", "-f", "salt-minion"], check=True).stdout.split()
    attach = " ".join(f"-p {pid}" for pid in pids)
    tracer = host.run(["sh", "-c", f"strace -f -qq -e trace=execve -o {TRACE} {attach} "
                       ">/dev/null 2>&1 & echo $!"], check=True).stdout.strip()
    time.sleep(1)  # let it attach before the run starts
    return tracer


def stop_tracing(host, tracer):
    host.run(["kill", tracer])
    time.sleep(0.5)
    lines = host.run(["cat", TRACE]).stdout.splitlines()
    host.run(["rm", "-f", TRACE])
    return programs(lines)


def programs(lines):
    """Counter {program: times started} of successful execve calls in ``strace -f`` output
    (a call may be split in an "unfinished" and a "resumed" line of the same pid)."""
    started, calling = collections.Counter(), {}
    for line in lines:
        call = EXECVE_CALL.match(line)
        if call:
            calling[call.group(1)] = os.path.basename(call.group(2))
        done = EXECVE_DONE.match(line)
        if done and done.group(1) in calling:
            started[calling.pop(done.group(1))] += 1
    return started


def one_round(index, trace=False):
    """{"first": seconds, "again": seconds, "first_execs": {gw: Counter}, "again_execs": ...}"""
    result = {}
    with Lab(DEFAULT.subset(role.HOSTS), name=f"vgwlab-bench{index}", log=None) as lab:
        role.prepare(lab)
        for run in ("first", "again"):
            tracers = {g: start_tracing(lab[g]) for g in role.GATEWAYS} if trace else {}
            started = time.monotonic()
            returns = role.highstate(lab)
            result[run] = time.monotonic() - started
            failed = {m: [i for i, r in s.items() if r["result"] is False]
                      for m, s in returns.items()}
            if any(failed.values()):
                raise SystemExit(f"round {index} {run}: failed states {failed}")
            result[f"{run}_changed"] = {m: sum(1 for r in s.values() if r["changes"])
                                        for m, s in returns.items()}
            if trace:
                result[f"{run}_execs"] = {g: stop_tracing(lab[g], t) for g, t in tracers.items()}
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="untraced rounds (default 3)")
    parser.add_argument("--top", type=int, default=15, help="programs listed (default 15)")
    args = parser.parse_args()
    timed = [one_round(i) for i in range(args.rounds)]
    traced = one_round(args.rounds, trace=True)

    print(f"\nthe gateway role on {', '.join(role.GATEWAYS)} from the master "
          f"({args.rounds} rounds, fresh lab each; nproc={os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.1f})\n")
    print("| run | wall median (s) | min | max | states changed per gateway "
          "| programs started per gateway (execve) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for run, label in (("first", "first converge"), ("again", "no-change re-apply")):
        times = [r[run] for r in timed]
        changed = ", ".join(f"{g} {n}" for g, n in sorted(timed[0][f"{run}_changed"].items()))
        execs = ", ".join(f"{g} {sum(c.values())}"
                          for g, c in sorted(traced[f"{run}_execs"].items()))
        print(f"| {label} | {statistics.median(times):.1f} | {min(times):.1f} | "
              f"{max(times):.1f} | {changed} | {execs} |")
    gateway = role.GATEWAYS[0]
    print(f"\nprograms the no-change re-apply starts on {gateway} (most first)\n")
    print("| program | times |\n| --- | --- |")
    for program, count in traced["again_execs"][gateway].most_common(args.top):
        print(f"| {program} | {count} |")


if __name__ == "__main__":
    main()
