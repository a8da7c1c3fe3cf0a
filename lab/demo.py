"""README command 1: bring up the lab, apply the gateway role from a real
salt-master with ``salt 'vpn-gw*' state.apply``, and show what an operator
would ask the gateway afterwards, ending with ``SELECT 1`` from a
Kubernetes node through the pooler to the remote PostgreSQL, whose answer is
checked (a wrong one exits 1). On a kernel without ESP that query takes the
lab's routed path, so the demo then runs it through the real tunnel in the
QEMU guest (tests/dataplane/esp/test_full_path.py's SELECT 1 test) and says so."""
import json
import sys
import time

from . import capabilities, converged, images, peers, postgres, qemu, role, topology
from .lab import Lab

STATUS_CALLS = ("libreswan.status", "pgbouncer.status")


def summarize(returns):
    """One line per minion: states run, changed, failed."""
    lines = []
    for minion, states in sorted(returns.items()):
        changed = sum(1 for s in states.values() if s.get("changes"))
        failed = [key for key, s in states.items() if s.get("result") is False]
        lines.append(f"  {minion}: {len(states)} states, {changed} changed, {len(failed)} failed"
                     + (f" ({', '.join(failed)})" if failed else ""))
    return "\n".join(lines)


def run(keep=False, name=None, platform=None):
    print("== starting the lab (systemd-nspawn hosts in network namespaces, 198.18.0.0/15)")
    lab = Lab(topology.DEFAULT, name=name, platform=platform).start()
    try:
        print("== remote side, by hand: IPsec on remote-gw-primary/backup, PostgreSQL in "
              "remote-db; a Kubernetes API server for the k8s part")
        peers.configure(lab)
        postgres.start(lab["remote-db"])
        role.prepare(lab)
        for attempt in ("first", "second"):
            started = time.monotonic()
            returns = role.highstate(lab)
            print(f"== salt 'vpn-gw*' state.apply ({attempt} run, "
                  f"{time.monotonic() - started:.1f}s)\n{summarize(returns)}")
        for function in STATUS_CALLS:
            result = lab["vpn-gw1"].run(["salt-call", "--out=json", function], timeout=120)
            print(f"== vpn-gw1$ salt-call {function}\n{_local(result)}")
        esp, why = capabilities.esp_support()
        path = ("through the IPsec tunnel" if esp else
                f"over the lab's routed path, not the tunnel: {why}; "
                "docs/dataplane.md runs it through the tunnel in a QEMU guest")
        print(f"== k8s-node1$ psql -h {role.POOLER[0]} -p {role.POOLER[1]} -U {postgres.ROLE} "
              f"-d {role.POOLER[2]} -c 'SELECT 1'   ({path})")
        answer = role.select_one(lab)
        print(f"  {answer.stdout.strip() or answer.stderr.strip()}")
        if answer.stdout.strip() != "1":
            sys.exit("demo: SELECT 1 did not answer 1")
    finally:
        if keep:
            print(f"== lab left running: python -m lab clean {lab.name}")
        else:
            lab.stop()
    if not esp:
        through_the_tunnel(platform or images.DEFAULT_PLATFORM)


def through_the_tunnel(platform):
    """SELECT 1 from k8s-node1 through the pooler and the IPsec tunnel, with the
    Child SA's ESP counters checked, in a QEMU guest (this kernel has no ESP)."""
    print("== this kernel cannot install an ESP SA: the same query through the real "
          f"tunnel runs in a QEMU guest ({platform}; several minutes under TCG)")
    converged.ensure(platform)  # the gateway's installs at this machine's speed
    started = time.monotonic()
    result = qemu.pytest(["tests/dataplane/esp/test_full_path.py"], "-k", "select_1",
                         f"--platform={platform}", timeout=1800)
    outcome = qemu.pytest_outcomes(result.stdout)
    print(f"  guest: {outcome} in {time.monotonic() - started:.0f}s")
    if result.returncode != 0 or outcome.get("passed") != 1:
        sys.exit(f"demo: SELECT 1 through the tunnel failed in the guest:\n{result.stdout[-3000:]}")


def _local(result):
    try:
        return json.dumps(json.loads(result.stdout)["local"], indent=2, sort_keys=True)
    except (json.JSONDecodeError, KeyError):
        return result.stdout + result.stderr
