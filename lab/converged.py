"""A gateway the role has converged, kept as an image for the QEMU guest.

Under TCG, dpkg unpacking and the packages' maintainer scripts take most of
a guest's time: the role's installs took 515 s (debian13) and 688 s (debian12)
of a guest run (docs/lab.md). So the guest's gateway is converged here, at
this machine's speed, by the same means as in the guest: the fresh image, the
role's formulas (``ROLE_SLS``) with the example pillar by masterless Salt,
every package installed by real apt from the platform's offline repository.
Its whole root is then kept in the image cache, keyed by the fresh image and
the role's sources, and the guest's gateway boots from it
(``Host.image`` = its path), where the role is applied again.

The decrypted pillar and Salt's caches are left out of the kept root, but
for the pack's modules as a minion syncs them (``saltutil.sync_all``, into
``extmods``): a converged gateway has them, and a minion booted without them
runs its pillar's beacon and schedule on functions it lacks until its first
sync. Under TCG each of those beacon polls made the minion's loader look
through every beacon module, and the e2e scenario's minions took 18 minutes
to answer a ``test.ping`` (docs/e2e.md).

    path = converged.ensure("debian13")   # built when missing or stale
    lab = Lab(converged.topology(["vpn-gw1", "remote-gw-primary"], "debian13"), ...)
"""
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

from . import images, saltstack
from . import topology as topo
from .lab import PREFIX, REPO, Lab, LabError

GATEWAY = "vpn-gw1"
ROLE_SLS = "vpn_gateway.sysctl,vpn_gateway.ipsec,vpn_gateway.pgbouncer"
# The end-to-end scenario's gateways (tests/e2e): the whole role but vpn_gateway.k8s (it
# needs the API server, which the guest's highstate then has), the firewall enforcing.
E2E_SLS = ROLE_SLS + ",vpn_gateway.firewall,vpn_gateway.monitoring,vpn_gateway.tools"
# Masterless, the firewall's lockout guard needs the master's address from pillar
# (the lab's salt-master, the one host of the management network).
E2E_PILLAR = {"vpn_gateway": {"firewall": {"salt_master": "198.18.1.2"}}}
# Each formula set's roots are named (and pruned) apart: <platform>-<kind>-<key>.
KINDS = {ROLE_SLS: "converged", E2E_SLS: "converged_e2e"}
# What the kept root must not carry: the masterless minion's decrypted pillar
# (the guest's run writes it again) and what Salt cached from it; the synced
# modules (KEPT) stay.
LEFT_OUT = ("srv/pillar", "var/cache/salt", "etc/salt/minion.d/masterless.conf")
KEPT = "var/cache/salt/minion/extmods"  # the repo's modules: the root's key covers them
RECIPE_VERSION = 2  # bump when the steps below change meaning


def role_sources(repo=REPO):
    """The files whose content the converged root depends on (besides the image)."""
    files = []
    for top in ("salt", "pillar"):
        files += [p for p in sorted((Path(repo) / top).rglob("*"))
                  if p.is_file() and "__pycache__" not in p.parts]
    return files


def key(platform, repo=REPO, cache=images.CACHE, formulas=ROLE_SLS):
    fresh = images.current(platform, "fresh", cache)
    recipe = f"{RECIPE_VERSION} {platform} {formulas} {fresh and fresh.name}"
    digest = hashlib.sha256(recipe.encode())
    for path in role_sources(repo):
        digest.update(str(path.relative_to(repo)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def ensure(platform=images.DEFAULT_PLATFORM, repo=REPO, cache=images.CACHE, log=print,
           formulas=ROLE_SLS):
    """The path of ``platform``'s gateway root converged by ``formulas`` (one of
    ``KINDS``), built if missing or stale."""
    images.ensure(platform, cache=cache, log=log)
    cache, kind = Path(cache), KINDS[formulas]
    final = cache / f"{platform}-{kind}-{key(platform, repo, cache, formulas)}"
    with open(cache / ".converged.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not final.is_dir():
            for dead in cache.glob(f".{platform}-{kind}-*"):  # a build that was killed
                shutil.rmtree(dead, ignore_errors=True)
            _build(platform, final, repo, log, formulas)
        for older in cache.glob(f"{platform}-{kind}-*"):
            if older != final and not images.in_use(older):
                shutil.rmtree(older, ignore_errors=True)
    return final


def topology(hosts, platform=images.DEFAULT_PLATFORM, log=print, formulas=ROLE_SLS,
             gateways=(GATEWAY,)):
    """The default topology's ``hosts``, ``gateways`` booting from the converged root
    (built for vpn-gw1: another gateway boots with vpn-gw1's configs, and its daemons
    are to be stopped before its first state run makes them its own)."""
    subset = topo.DEFAULT.subset(hosts)
    root = str(ensure(platform, log=log, formulas=formulas))
    return replace(subset, hosts=tuple(replace(h, image=root) if h.name in gateways else h
                                       for h in subset.hosts))


def _build(platform, final, repo, log, formulas):
    started = time.monotonic()
    lab = Lab(topo.DEFAULT.subset([GATEWAY]), name=f"{PREFIX}-conv{os.getpid()}",
              repo=repo, platform=platform, log=None)
    staging = final.with_name(f".{final.name}.{os.getpid()}")
    with lab:
        gateway = lab[GATEWAY]
        saltstack.masterless(lab, gateway)
        extra = [f"pillar={json.dumps(E2E_PILLAR)}"] if formulas == E2E_SLS else []
        returns = saltstack.call_local(lab, gateway, "state.apply", formulas, *extra,
                                       timeout=900)
        if not isinstance(returns, dict):
            raise LabError(f"converged {platform}: the formulas did not render: {returns}")
        failed = {r["__id__"]: r["comment"] for r in returns.values() if r["result"] is False}
        if failed:
            raise LabError(f"converged {platform}: state.apply failed: {failed}")
        synced = saltstack.call_local(lab, gateway, "saltutil.sync_all", "refresh=False",
                                      timeout=300)
        if not (gateway.root / KEPT / "beacons" / "libreswan.py").is_file():
            raise LabError(f"converged {platform}: saltutil.sync_all left no {KEPT}/beacons: "
                           f"{synced}")
        # a clean shutdown, so that the kept root is as a stopped host leaves it
        gateway.run(["systemctl", "poweroff"])
        gateway.nspawn.wait(timeout=120)
        gateway.pid = gateway.nspawn = None
        try:
            subprocess.run(["cp", "-a", "--reflink=auto", f"{gateway.root}/.", str(staging)],
                           check=True)
            for path in LEFT_OUT:
                _prune(staging / path, staging / KEPT)
            staging.rename(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    log(f"converged: {final.name} ({platform}, {formulas}) in {time.monotonic() - started:.0f}s")


def _prune(target, kept):
    """Remove ``target`` (a file or a tree) but for ``kept`` and the directories above it."""
    if target == kept:
        return
    if target.is_dir() and not target.is_symlink():
        if kept.is_relative_to(target):
            for child in target.iterdir():
                _prune(child, kept)
        else:
            shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)
