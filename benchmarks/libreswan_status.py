"""Benchmark: ``libreswan.status`` and a no-change ``conn_present`` run with 1, 10
and 50 conns loaded into a real pluto (one lab host, vpn-gw1).

Run by hand, as root: ``.venv/bin/python benchmarks/libreswan_status.py``.
Prints a table. The conns (auto=add, one remote /32 each) are loaded by
conn_present itself; timings are taken inside the host in one Salt Caller, so
salt-call's start-up is not counted.
"""
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lab import DEFAULT, Lab  # noqa: E402

COUNTS = (1, 10, 50)
REPEAT = 3
PSK = "benchmark-only-psk-0123456789abcdefghijkl"

DRIVER = """\
import json, statistics, sys, time
import salt.client, salt.config
opts = salt.config.minion_config(None)
opts.update(json.loads(sys.argv[1]))
caller = salt.client.Caller(mopts=opts)
counts, repeat = json.loads(sys.argv[2]), int(sys.argv[3])
def conn(i):
    return {"name": f"bench{i}", "psk_pillar": "bench_psk", "auto": "add",
            "local": {"address": "198.18.0.11", "tunnel_ip": "198.19.10.1"},
            "peers": {"primary": {"address": "198.18.0.21"}},
            "remote_subnets": [f"198.19.{2 + i // 250}.{i % 250 + 1}/32"]}
def timed(fn):
    runs = []
    for _ in range(repeat):
        start = time.perf_counter(); fn(); runs.append(time.perf_counter() - start)
    return statistics.median(runs)
def present_all(n):
    rets = [caller.cmd("state.single", "libreswan.conn_present", **conn(i)) for i in range(n)]
    return [r for ret in rets for r in ret.values()]
rows = []
for n in counts:
    first = present_all(n)
    assert all(r["result"] for r in first), first
    again = present_all(n)
    assert not any(r["changes"] for r in again), again
    status = caller.cmd("libreswan.status")
    assert status["summary"]["conns_loaded"] == n, status["summary"]
    rows.append({"conns": n,
                 "status_s": timed(lambda: caller.cmd("libreswan.status")),
                 "present_one_s": timed(lambda: caller.cmd("state.single",
                                                           "libreswan.conn_present", **conn(0))),
                 "present_all_s": timed(lambda: present_all(n))})
print(json.dumps(rows))
"""


def main():
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark starts a lab host")
    lab = Lab(DEFAULT.subset(["vpn-gw1"]), name=f"vgwlab-bench{os.getpid()}")
    lab.start()
    try:
        gw = lab["vpn-gw1"]
        gw.run(["systemctl", "start", "ipsec"], check=True)
        gw.put("/root/bench/pillar/top.sls", "base:\n  '*': [bench]\n")
        gw.put("/root/bench/pillar/bench.sls", json.dumps({"bench_psk": PSK}))
        gw.put("/root/bench/driver.py", DRIVER)
        opts = {"file_client": "local", "id": "vpn-gw1", "root_dir": "/root/bench",
                "cachedir": "/root/bench/cache", "pki_dir": "/root/bench/pki",
                "log_file": "/root/bench/minion.log",
                "pillar_roots": {"base": ["/root/bench/pillar"]},
                "module_dirs": [str(REPO / "salt/_modules")],
                "states_dirs": [str(REPO / "salt/_states")]}
        result = gw.run([str(lab.venv / "bin/python"), "/root/bench/driver.py", json.dumps(opts),
                         json.dumps(list(COUNTS)), str(REPEAT)], timeout=1800)
        if not result.ok:
            sys.exit(result.stderr[-3000:])
        rows = json.loads(result.stdout.strip().splitlines()[-1])
        version = gw.run(["ipsec", "--version"]).stdout.strip()
    finally:
        lab.stop()
    print(f"{version}, one lab host; median of {REPEAT} runs, seconds")
    print(f"{'conns':>6} {'status':>10} {'conn_present (1, no change)':>28} "
          f"{'conn_present x N (no change)':>30}")
    for row in rows:
        print(f"{row['conns']:>6} {row['status_s']:>10.3f} {row['present_one_s']:>28.3f} "
              f"{row['present_all_s']:>30.3f}")


if __name__ == "__main__":
    main()
