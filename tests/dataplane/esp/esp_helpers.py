"""Helpers of the ESP tests (a plain module: conftest names collide)."""
import re
import time

from lab.lab import SLOWDOWN

# Timeouts of commands in lab hosts; the lab multiplies them by its SLOWDOWN (10 in the guest).
SLOW = 60


def pluto_log(host):
    return host.run(["journalctl", "-u", "ipsec.service", "-n", "40", "--no-pager"]).stdout


def esp_bytes(host):
    """{(src, dst): bytes} of the host's ESP SAs (``ip -s xfrm state``), summed per
    address pair: a tunnel with several remote subnets has one Child SA each."""
    text = host.run(["ip", "-s", "xfrm", "state"], check=True).stdout
    counters = {}
    for block in re.split(r"\n(?=src )", text):
        head = re.match(r"src (\S+) dst (\S+)\s+proto esp", block)
        current = re.search(r"lifetime current:\s+(\d+)\(bytes\)", block)
        if head and current:
            counters[head.groups()] = counters.get(head.groups(), 0) + int(current.group(1))
    return counters


def wait_esp_pair(host, local, remote, timeout=SLOW):
    """Wait until ``host`` holds both ESP SAs between ``local`` and ``remote``; their counters."""
    deadline = time.monotonic() + timeout * SLOWDOWN
    while True:
        counters = esp_bytes(host)
        if (local, remote) in counters and (remote, local) in counters:
            return counters
        if time.monotonic() > deadline:
            raise AssertionError(f"{host.name}: no ESP SA pair {local} <-> {remote} after "
                                 f"{timeout}s: {counters}\n{pluto_log(host)}")
        time.sleep(2)


def child_sa_peers(gateway):
    """Which of its peers (primary, backup) ``gateway`` holds an installed Child SA with."""
    text = gateway.run(["ipsec", "whack", "--trafficstatus"], timeout=SLOW).stdout
    return {"backup" if m.group(1).endswith("-backup") else "primary"
            for m in re.finditer(r'"([^"/]+)[^"]*"', text)}


def backup_serial(gateway, tunnel="remote-db"):
    """The serial of ``gateway``'s established IKE SA with the backup peer, or None."""
    found = re.search(rf'#(\d+): "{tunnel}-backup"[^ ]* \S+ (?:STATE_V2_)?ESTABLISHED_IKE_SA',
                      gateway.run(["ipsec", "whack", "--status"], timeout=SLOW).stdout)
    return found and int(found.group(1))
