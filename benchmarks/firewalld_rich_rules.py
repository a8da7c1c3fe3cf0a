"""The gateway's firewall for N Kubernetes nodes, three ways, on each firewalld version;
prints a table with ratios and the machine's load average.

- ipsets (ours, the formula's way since issue 18): ``firewalld.rich_rules_managed`` with
  the derived rules taking their sources from the ipsets vgw-nodes and vgw-peers; the
  rule count stays 6 whatever N.
- per-rule (ours before): the same state with one rule per node and port (2N + 7 rules).
- core: Salt core's ``firewalld.present(rich_rules=...)`` with the per-rule list (one
  firewall-cmd per rule, permanent only, then a full --reload).

Each is timed on a first apply (zone empty, no ipsets), a no-change apply and one node
added, in one lab host per platform (real firewalld under systemd: 1.3.3 on debian12,
2.3.1 on debian13) with ``salt-call --local`` of a state file (JSON renderer: the lists
are too long for one command-line argument). ``salt-call --local test.true`` is timed
in the same host (best of three): "beyond start-up" is a time less that.

Run by hand as root on a quiet machine (it reads /proc/loadavg before and after each
measurement and prints both):

    .venv/bin/python benchmarks/firewalld_rich_rules.py \\
        [--sizes 10,100,1000,5000] [--platforms debian12,debian13] [--core-max 100] \\
        [--core-cap SECONDS]

``--core-max``: the largest N core is run at (one firewall-cmd per rule: at 1,000 nodes
about 2,000 calls); larger sizes print "not run". ``--core-cap``: core's first apply is
stopped after this many seconds, and the row gives how many of its rules were in the
permanent zone by then (a lower bound for its time, measured, not extrapolated).
Goals (issue 18): 1,000 nodes applied in 3 s or less; one node added in 0.5 s or less
beyond salt-call's start-up.
"""
import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lab import Lab, LabError  # noqa: E402
from lab import topology as topo  # noqa: E402

DBUS = "org.fedoraproject.FirewallD1"
PATH = "/org/fedoraproject/FirewallD1"
PEERS = {"primary": {"address": "198.18.0.21"}, "backup": {"address": "198.18.0.22"}}
MASTER = "198.18.1.2"
POOLER, EXPORTER = 6432, 9100
TOPOLOGY = topo.Topology(segments=(topo.Segment("mgmt", "198.18.1.0/24"),),
                         hosts=(topo.Host("fwbench", {"mgmt": "198.18.1.60"}),))
MINION = f"""\
file_client: local
root_dir: /root/bench-salt
file_roots: {{base: [/root/bench-salt/states]}}
module_dirs: [{REPO}/salt/_modules]
states_dirs: [{REPO}/salt/_states]
id: bench
"""
OWNED = "/var/lib/vpn-gateway/firewalld-rich-rules.json"


def firewalld_rich():
    """The pack's firewalld module from its file (pure helpers, no Salt loader)."""
    path = REPO / "salt/_modules/firewalld_rich.py"
    spec = importlib.util.spec_from_file_location("bench_firewalld_rich", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nodes(count):
    """``count`` node addresses in 198.18.100.0 and up (the lab's range)."""
    return [f"198.18.{100 + i // 250}.{i % 250 + 1}" for i in range(count)]


def state(method, count):
    """The state (a JSON SLS) that applies ``method`` for ``count`` nodes."""
    fr = firewalld_rich()
    listed = nodes(count)
    if method == "core":
        args = {"name": "public",
                "rich_rules": fr._gateway_rules(PEERS, listed, POOLER, EXPORTER, MASTER,
                                                ipsets=False)}
        return {"bench": {"firewalld.present": [{k: v} for k, v in args.items()]}}
    args = {"name": "public", "prune_owned": True, "salt_master": MASTER,
            "rules": fr._gateway_rules(PEERS, listed, POOLER, EXPORTER, MASTER,
                                       ipsets=method == "ipsets")}
    if method == "ipsets":
        args["ipsets"] = fr._gateway_ipsets(PEERS, listed)
    return {"bench": {"firewalld.rich_rules_managed": [{k: v} for k, v in args.items()]}}


class Stopped(Exception):
    """A first apply that did not finish (stopped at --core-cap, or its state failed):
    its row's cell says which, and the run goes on."""


def salt_call(host, *args, timeout=7200):
    result = host.run([f"{host.lab.venv}/bin/salt-call", "--local", "-c", "/root/bench-salt",
                       "--out=json", *args], timeout=timeout)
    try:
        return json.loads(result.stdout)["local"]
    except (ValueError, KeyError):
        raise RuntimeError(f"salt-call {args}: {result}") from None


def apply(host, method, count, cap=None):
    host.put("/root/bench-salt/states/bench.sls",
             "#!json\n" + json.dumps(state(method, count)))
    started = time.monotonic()
    try:
        ret = salt_call(host, "state.apply", "bench", timeout=cap or 7200)
    except LabError:
        if cap is None:
            raise
        stopped = time.monotonic() - started
        host.run(["pkill", "-KILL", "-f", "salt-call|firewall-cmd"])
        rules = host.run(["firewall-cmd", "--permanent", "--zone=public", "--list-rich-rules"],
                         check=True, timeout=600).stdout.splitlines()
        raise Stopped(f"> {stopped:.0f} s (stopped: {len(rules)} of "
                      f"{2 * count + 7} rules in place)") from None
    elapsed = time.monotonic() - started
    result = next(iter(ret.values())) if isinstance(ret, dict) else {"result": ret}
    if result.get("result") is not True:
        raise Stopped(f"failed after {elapsed:.0f} s ({str(result.get('comment', result))[:120]})")
    return elapsed


def call(host, path, interface, method, *args, timeout=700):
    out = host.run(["busctl", "--json=short", f"--timeout={timeout - 60}", "call", DBUS, path,
                    f"{DBUS}{interface}", method, *map(str, args)], check=True,
                   timeout=timeout).stdout
    return json.loads(out)["data"] if out.strip() else []


def reset(host):
    """Zone public without rich rules, no vgw-* ipsets, no ownership record."""
    config = call(host, f"{PATH}/config", ".config", "getZoneByName", "s", "public")[0]
    call(host, PATH, ".zone", "setZoneSettings2", "sa{sv}", "public", 1, "rules_str", "as", 0)
    call(host, config, ".config.zone", "update2", "a{sv}", 1, "rules_str", "as", 0)
    for name in call(host, f"{PATH}/config", ".config", "getIPSetNames")[0]:
        if name.startswith("vgw-"):
            path = call(host, f"{PATH}/config", ".config", "getIPSetByName", "s", name)[0]
            call(host, path, ".config.ipset", "remove")
    call(host, PATH, "", "reload")
    host.run(["rm", "-f", OWNED], check=True)


def load():
    return float(Path("/proc/loadavg").read_text().split()[0])


def measure(host, method, count, cap=None):
    """(first, no change, one node added) in seconds, and the load averages seen; a first
    apply stopped at ``cap`` or failed gives (Stopped,) and stops there."""
    reset(host)
    loads = [load()]
    try:
        times = [apply(host, method, count, cap)]
    except Stopped as stopped:
        return (stopped,), loads + [load()]
    times += [apply(host, method, count), apply(host, method, count + 1)]
    loads.append(load())
    return times, loads


def startup(host):
    times = []
    for _ in range(3):
        started = time.monotonic()
        salt_call(host, "test.true")
        times.append(time.monotonic() - started)
    return min(times)


def run_platform(platform, sizes, core_max, methods, core_cap=None):
    rows = []
    with Lab(TOPOLOGY, name=f"vgwlab-fwb{platform[-2:]}", log=None, platform=platform) as lab:
        host = lab["fwbench"]
        host.run(["systemctl", "unmask", "firewalld"], check=False)
        host.run(["systemctl", "start", "firewalld"], check=True, timeout=300)
        version = host.run(["firewall-cmd", "--version"], check=True).stdout.strip()
        host.put("/root/bench-salt/minion", MINION)
        base = startup(host)
        print(f"{platform}: firewalld {version}, salt-call --local start-up {base:.2f} s",
              file=sys.stderr)
        for count in sizes:
            for method in methods:
                if method == "core" and count > core_max:
                    rows.append((platform, version, base, count, method, None, None))
                    continue
                times, loads = measure(host, method, count,
                                       core_cap if method == "core" else None)
                rows.append((platform, version, base, count, method, times, loads))
                print(f"  {platform} {count:>5} {method:<9} "
                      + " ".join(f"{t:7.2f}s" if isinstance(t, float) else str(t)
                                 for t in times)
                      + f"  load {loads[0]:.1f}-{loads[1]:.1f}", file=sys.stderr)
    return rows


def table(rows):
    print("| platform | nodes | method | first apply | x ipsets | no change | x ipsets "
          "| one node added | beyond start-up | x ipsets | load avg |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    ours = {(r[0], r[3]): r[5] for r in rows if r[4] == "ipsets" and r[5]}
    for platform, version, base, count, method, times, loads in rows:
        if times is None:
            print(f"| {platform} ({version}) | {count} | {method} | not run (--core-max) "
                  "| | | | | | | |")
            continue
        if isinstance(times[0], Exception):
            print(f"| {platform} ({version}) | {count} | {method} | {times[0]} "
                  f"| | | | | | | {loads[0]:.1f}-{loads[1]:.1f} |")
            continue
        anchor = ours.get((platform, count))
        ratio = [f"{t / a:.1f}" if anchor else "" for t, a in zip(times, anchor or times)]
        print(f"| {platform} ({version}) | {count} | {method} | {times[0]:.2f} s | {ratio[0]} "
              f"| {times[1]:.2f} s | {ratio[1]} | {times[2]:.2f} s | {times[2] - base:.2f} s "
              f"| {ratio[2]} | {loads[0]:.1f}-{loads[1]:.1f} |")
    starts = {r[0]: r[2] for r in rows}
    print("\nsalt-call --local start-up (test.true, best of 3): "
          + ", ".join(f"{p} {b:.2f} s" for p, b in starts.items()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000,5000")
    parser.add_argument("--platforms", default="debian12,debian13")
    parser.add_argument("--core-max", type=int, default=100)
    parser.add_argument("--methods", default="ipsets,per-rule,core")
    parser.add_argument("--core-cap", type=float, default=None,
                        help="stop core's first apply after this many seconds")
    options = parser.parse_args()
    sizes = [int(n) for n in options.sizes.split(",")]
    methods = options.methods.split(",")
    print(f"load average at start: {Path('/proc/loadavg').read_text().strip()}", file=sys.stderr)
    rows = []
    for platform in options.platforms.split(","):
        rows += run_platform(platform, sizes, options.core_max, methods, options.core_cap)
    table(rows)


if __name__ == "__main__":
    main()
