"""The whole gateway role on two gateways, from the master: wall time of the
first converge and of the no-change re-apply, and how many programs each run
starts on each gateway.

Run by hand, as root, on a quiet machine:
``.venv/bin/python benchmarks/role_converge.py [--rounds N] [--platform debian13]``.

The anchor, measured in the same lab right after the re-apply: Salt's own
floor for a state run from the master on these gateways, ``state.single
test.nop`` (job, pillar with its decryption, one state, the return), so the
ratio tells how much of the re-apply is the role's own work.

Each round uses a fresh lab. Wall times come from rounds without tracing;
the program counts from one more round where each gateway's salt-minion runs
under ``strace -f --seccomp-bpf -e trace=execve`` (the role lab's leak test's
``ExecTrace``: strace is this machine's, the fresh gateways have none), with
the minion restarted under it before each run. Tracing slows that round, so
its times are not used.
"""
import argparse
import collections
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests" / "role")]

from lab import DEFAULT, Lab, role, saltstack  # noqa: E402
from leak_helpers import ExecTrace  # noqa: E402

EXECVE_CALL = re.compile(r'^(\d+) +execve\("([^"]+)"')
EXECVE_DONE = re.compile(r"^(\d+) .*execve(\(| resumed>).*= 0$")


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


def traced(lab, run):
    """``run()``'s return, and {gateway: Counter of the programs its minion started
    during the run}: what the traced minion started before it answered (its own
    start) is left out."""
    def lines(trace, gateway):
        return Path(trace.files[gateway]).read_text().splitlines()

    with tempfile.TemporaryDirectory(prefix="vgw-bench-") as directory:
        with ExecTrace([lab[g] for g in role.GATEWAYS], directory,
                       [str(lab.venv / "bin/salt-minion")],
                       lambda host: saltstack.answers(lab, host.name)) as trace:
            time.sleep(1)  # strace writes a line once the call returns
            started = {g: len(lines(trace, g)) for g in role.GATEWAYS}
            returned = run()
            time.sleep(1)
            return returned, {g: programs(lines(trace, g)[started[g]:]) for g in role.GATEWAYS}


def anchor(lab):
    returns = saltstack.salt(lab, "vpn-gw*", "state.single", "test.nop", "name=anchor")
    if sorted(returns) != role.GATEWAYS or not all(
            isinstance(r, dict) and all(s["result"] for s in r.values())
            for r in returns.values()):
        raise SystemExit(f"anchor: {returns}")
    return {m: {} for m in returns}


def one_round(index, platform, trace=False):
    """{"first": seconds, "again": seconds, "anchor": seconds, "<run>_changed":
    {gw: states changed}, and when traced "<run>_execs": {gw: Counter}}"""
    result = {}
    with Lab(DEFAULT.subset(role.HOSTS), name=f"vgwlab-bench{index}", log=None,
             platform=platform) as lab:
        role.prepare(lab)
        for run, call in (("first", lambda: role.highstate(lab)),
                          ("again", lambda: role.highstate(lab)),
                          ("anchor", lambda: anchor(lab))):
            started = time.monotonic()
            if trace:
                returns, result[f"{run}_execs"] = traced(lab, call)
            else:
                returns = call()
            result[run] = time.monotonic() - started
            failed = {m: [i for i, r in s.items() if r["result"] is False]
                      for m, s in returns.items()}
            if any(failed.values()):
                raise SystemExit(f"round {index} {run}: failed states {failed}")
            result[f"{run}_changed"] = {m: sum(1 for r in s.values() if r["changes"])
                                        for m, s in returns.items()}
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="untraced rounds (default 3)")
    parser.add_argument("--top", type=int, default=15, help="programs listed (default 15)")
    parser.add_argument("--platform", default="debian13", help="lab platform (default debian13)")
    args = parser.parse_args()
    timed = [one_round(i, args.platform) for i in range(args.rounds)]
    traced = one_round(args.rounds, args.platform, trace=True)

    print(f"\nthe gateway role on {', '.join(role.GATEWAYS)} from the master, {args.platform} "
          f"({args.rounds} rounds, fresh lab each; nproc={os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.1f})\n")
    print("| run | wall median (s) | min | max | × anchor | states changed per gateway "
          "| programs started per gateway (execve) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    anchor = statistics.median(r["anchor"] for r in timed)
    for run, label in (("first", "first converge"), ("again", "no-change re-apply"),
                       ("anchor", "anchor: `state.single test.nop`")):
        times = [r[run] for r in timed]
        changed = ", ".join(f"{g} {n}" for g, n in sorted(timed[0][f"{run}_changed"].items()))
        execs = ", ".join(f"{g} {sum(c.values())}"
                          for g, c in sorted(traced[f"{run}_execs"].items()))
        print(f"| {label} | {statistics.median(times):.1f} | {min(times):.1f} | "
              f"{max(times):.1f} | {statistics.median(times) / anchor:.1f} | {changed} | "
              f"{execs} |")
    gateway = role.GATEWAYS[0]
    print(f"\nprograms the no-change re-apply starts on {gateway} (most first)\n")
    print("| program | times |\n| --- | --- |")
    for program, count in traced["again_execs"][gateway].most_common(args.top):
        print(f"| {program} | {count} |")


if __name__ == "__main__":
    main()
