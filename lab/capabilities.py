"""What this kernel can do for the lab: can it install an ESP SA?

Tests that need the IPsec data plane ask ``esp_support()`` and skip with its
reason when the answer is no (FACTS: CONFIG_INET_ESP is off on this machine).
"""
import functools
import os
import subprocess
from pathlib import Path


@functools.lru_cache(maxsize=None)
def esp_support():
    """(True, how) or (False, why): try to add an ESP SA in a scratch namespace."""
    netns = f"vgwlab-probe{os.getpid()}"
    add = subprocess.run(["ip", "netns", "add", netns], capture_output=True, text=True)
    if add.returncode:
        return False, f"cannot create a network namespace to probe ESP: {add.stderr.strip()}"
    try:
        proc = subprocess.run(
            ["ip", "-n", netns, "xfrm", "state", "add",
             "src", "198.18.255.1", "dst", "198.18.255.2", "proto", "esp", "spi", "0x100",
             "mode", "tunnel", "enc", "cbc(aes)", "0x" + "11" * 16,
             "auth", "hmac(sha1)", "0x" + "22" * 20],
            capture_output=True, text=True,
        )
    finally:
        subprocess.run(["ip", "netns", "delete", netns], capture_output=True)
    if proc.returncode == 0:
        return True, "the kernel installed an ESP SA (ip xfrm state add ... proto esp)"
    return False, ("this kernel cannot install an ESP SA "
                   f"(ip xfrm state add ... proto esp: {proc.stderr.strip()}); "
                   "IKE runs, the Child SA and traffic through the tunnel cannot")


def skip_without_esp(items, directory, elsewhere):
    """Mark the collected pytest ``items`` under ``directory`` skipped where this
    kernel cannot install an ESP SA (probed only when there are any), saying where
    they run instead (``elsewhere``)."""
    import pytest

    ours = [item for item in items if directory in Path(item.fspath).resolve().parents]
    supported, reason = esp_support() if ours else (True, "")
    if supported:
        return
    skip = pytest.mark.skip(reason=f"{reason}; {elsewhere}")
    for item in ours:
        item.add_marker(skip)
