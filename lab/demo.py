"""README command 1: bring up the lab, apply the gateway role from a real
salt-master with ``salt 'vpn-gw*' state.apply``, and show what an operator
would ask the gateway afterwards."""
import json
import time

from . import saltstack, topology
from .lab import Lab

# What an operator asks a gateway after a run, and the issue that builds it.
STATUS_CALLS = (
    ("libreswan.status", "the libreswan module (issue 3)"),
    ("pgbouncer.status", "the pgbouncer module (issue 4)"),
)


def summarize(returns):
    """One line per minion: states run, changed, failed."""
    lines = []
    for minion, states in sorted(returns.items()):
        if not isinstance(states, dict):
            lines.append(f"  {minion}: {states}")
            continue
        changed = sum(1 for s in states.values() if s.get("changes"))
        failed = [s.get("__id__", key) for key, s in states.items() if s.get("result") is False]
        lines.append(f"  {minion}: {len(states)} states, {changed} changed, {len(failed)} failed"
                     + (f" ({', '.join(failed)})" if failed else ""))
    return "\n".join(lines)


def run(keep=False, name=None):
    print("== starting the lab (systemd-nspawn hosts in network namespaces, 198.18.0.0/15)")
    lab = Lab(topology.DEFAULT, name=name).start()
    try:
        synced = saltstack.salt(lab, "vpn-gw*", "saltutil.sync_all")
        print(f"== salt 'vpn-gw*' saltutil.sync_all\n{_compact(synced)}")
        for attempt in ("first", "second"):
            started = time.monotonic()
            returns = saltstack.salt(lab, "vpn-gw*", "state.apply", timeout=600)
            print(f"== salt 'vpn-gw*' state.apply ({attempt} run, "
                  f"{time.monotonic() - started:.1f}s)\n{summarize(returns)}")
        for function, builder in STATUS_CALLS:
            available = saltstack.salt(lab, "vpn-gw1", "sys.list_functions", function)
            if function not in (available.get("vpn-gw1") or []):
                print(f"== salt-call {function}: not built yet ({builder})")
                continue
            result = lab["vpn-gw1"].run(["salt-call", "--out=json", function], timeout=120)
            print(f"== vpn-gw1$ salt-call {function}\n{result.stdout or result.stderr}")
    finally:
        if keep:
            print(f"== lab left running: python -m lab clean {lab.name}")
        else:
            lab.stop()


def _compact(synced):
    """The loader modules each minion received, without the empty kinds."""
    return "\n".join(
        f"  {minion}: {json.dumps({k: v for k, v in kinds.items() if v}, sort_keys=True)}"
        for minion, kinds in sorted(synced.items()))
