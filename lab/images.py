"""Root filesystems for lab hosts, built with mmdebstrap from Debian's packages.

Per platform (``debian12`` = bookworm, ``debian13`` = trixie) the lab keeps:

- ``fresh``: what a cloud image bootstrapped with a salt-minion has (minbase,
  systemd, dbus, iproute2, ca-certificates, python3 and procps as Debian's
  cloud images ship them) and nothing of the role. The gateways boot from it,
  and the role installs everything itself.
- ``provisioned``: fresh plus what the other hosts run (the remote gateways'
  Libreswan, the database's PostgreSQL, the node's psql, the master's git),
  with every packaged service disabled: each host starts what its part needs.
- ``repo``: an offline apt repository, every package the role can install
  with its dependencies and recommends plus the fresh image's own packages
  (so a gateway of the older platform can be upgraded from the newer one's
  repo), with a Packages index. Every host gets it read-only at
  ``REPO_MOUNT/<platform>``; a fresh host's only apt source is its own.

Images live in ``CACHE`` as ``<platform>-<kind>-<key>``, where the key hashes
the recipe (suite, mirrors, packages, hooks). A stale image (another key) is
rebuilt beside it and swapped in with an atomic rename of the
``<platform>-<kind>`` symlink; a lock keeps two runs from building at once.

    python -m lab images                # build what is missing or stale
    images.ensure("debian13")           # -> {"fresh": Path, "provisioned": Path, "repo": Path}
"""
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("VPN_GATEWAY_IMAGE_CACHE", "/var/cache/vpn-gateway/images"))
REPO_MOUNT = "/srv/vpn-gateway-apt"
RECIPE_VERSION = 1  # bump when the build steps below change meaning


@dataclass(frozen=True)
class Platform:
    name: str
    suite: str
    postgresql: str  # the major version Debian ships (the database host's cluster)


PLATFORMS = {
    "debian12": Platform("debian12", "bookworm", "15"),
    "debian13": Platform("debian13", "trixie", "17"),
}
DEFAULT_PLATFORM = os.environ.get("VGWLAB_PLATFORM", "debian13")

# A cloud image with a bootstrapped salt-minion: python3 is there for
# cloud-init (and gives the minion's interpreter its shared libraries).
FRESH_PACKAGES = ("systemd", "systemd-sysv", "dbus", "iproute2", "ca-certificates", "python3",
                  "procps")
# Every package the role can install on Debian (salt/states/vpn_gateway/map.jinja;
# a unit test keeps the two equal).
ROLE_PACKAGES = ("libreswan", "pgbouncer", "firewalld", "logrotate", "postgresql-client",
                 "tcpdump", "nmap", "traceroute",
                 "prometheus-node-exporter")  # vpn_gateway:monitoring:metrics:node_exporter
# What the lab's other hosts run, on top of the fresh image's packages.
PROVISIONED_PACKAGES = (
    "libreswan", "nftables", "postgresql", "postgresql-client", "pgbouncer", "git",
    "busybox-static", "firewalld", "tcpdump", "nmap", "traceroute", "logrotate",
    "gnupg",  # the master's gpg renderer decrypts the pillar's secrets (docs/pillar.md)
    "prometheus")  # on k8s-node1, scrapes the gateways in the role lab (issue 17)
# Units the packages enable; on an image host each is started by the host's part.
PACKAGED_UNITS = ("firewalld.service", "pgbouncer.service", "postgresql.service",
                  "ipsec.service", "nftables.service", "prometheus.service")


class ImageError(RuntimeError):
    pass


def mirrors(sources_dir=Path("/etc/apt")):
    """The Debian mirror and security mirror this machine's apt uses (its own
    sources: the images use the same reachable mirrors)."""
    text = ""
    for path in [sources_dir / "sources.list", *sorted((sources_dir / "sources.list.d").glob("*"))]:
        if path.suffix in (".list", ".sources") and path.is_file():
            text += path.read_text() + "\n"
    uris = re.findall(r"^URIs:\s*(\S+)", text, re.M)
    uris += re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M)
    debian = [u for u in uris if u.rstrip("/").endswith("/debian")]
    security = [u for u in uris if u.rstrip("/").endswith("/debian-security")]
    if not debian:
        raise ImageError("no Debian mirror in this machine's apt sources (/etc/apt): "
                         "add one (deb822 URIs: .../debian)")
    return debian[0], (security[0] if security else None)


def sources(platform, machine_sources=Path("/etc/apt")):
    """One-line apt sources for ``platform``: main, updates and security."""
    debian, security = mirrors(machine_sources)
    suite = platform.suite
    lines = [f"deb {debian} {suite} main", f"deb {debian} {suite}-updates main"]
    if security:
        lines.append(f"deb {security} {suite}-security main")
    return lines


def _local_source(platform):
    return (f"Types: deb\nURIs: file:{REPO_MOUNT}/{platform.name}\nSuites: ./\n"
            "Trusted: yes\n")


def recipe(platform, kind, source_lines):
    """What an image is built from: its key is the hash of this."""
    packages = FRESH_PACKAGES + (PROVISIONED_PACKAGES if kind == "provisioned" else ())
    return {"version": RECIPE_VERSION, "suite": platform.suite, "sources": source_lines,
            "kind": kind, "packages": sorted(packages),
            "role": sorted(ROLE_PACKAGES) if kind != "provisioned" else [],
            "units": list(PACKAGED_UNITS), "local": _local_source(platform)}


def key(recipe_):
    return hashlib.sha256(json.dumps(recipe_, sort_keys=True).encode()).hexdigest()[:12]


def current(platform_name, kind, cache=CACHE):
    """The path of the image in use (the symlink's target), or None."""
    link = Path(cache) / f"{platform_name}-{kind}"
    return link.resolve() if link.is_symlink() and link.resolve().is_dir() else None


def ensure(platform_name=DEFAULT_PLATFORM, cache=CACHE, log=print, rebuild=False):
    """Build what is missing or stale for ``platform_name``; {kind: path}."""
    platform = PLATFORMS.get(platform_name)
    if platform is None:
        raise ImageError(f"unknown platform {platform_name!r}; known: {sorted(PLATFORMS)}")
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    sources_ = sources(platform)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        wanted = {kind: cache / f"{platform.name}-{kind}-{key(recipe(platform, kind, sources_))}"
                  for kind in ("fresh", "provisioned")}
        # the repository is made from inside the fresh image: same recipe, same key
        wanted["repo"] = cache / wanted["fresh"].name.replace("-fresh-", "-repo-")
        if rebuild or not (wanted["fresh"].is_dir() and wanted["repo"].is_dir()):
            _build_fresh(platform, sources_, wanted["fresh"], wanted["repo"], log)
        if rebuild or not wanted["provisioned"].is_dir():
            _build_provisioned(platform, sources_, wanted["provisioned"], log)
        for kind, path in wanted.items():
            _point(cache / f"{platform.name}-{kind}", path)
        _prune(cache, platform, wanted.values())
    return wanted


def _mmdebstrap(platform, source_lines, target, packages, hooks, log, skip=()):
    started = time.monotonic()
    argv = ["mmdebstrap", "--quiet", "--variant=minbase", "--mode=root", "--format=directory",
            f"--include={','.join(packages)}", *(f"--customize-hook={h}" for h in hooks),
            *(f"--skip={s}" for s in skip), platform.suite, str(target), *source_lines]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode:
        shutil.rmtree(target, ignore_errors=True)
        raise ImageError(f"mmdebstrap {platform.suite} {target.name}: exit {proc.returncode}:\n"
                         f"{proc.stderr[-4000:]}")
    log(f"images: built {target.name} in {time.monotonic() - started:.0f}s")


def _staging(final):
    staging = final.with_name(f".{final.name}.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def _build_fresh(platform, source_lines, final, repo_final, log):
    """The fresh image and, from inside it, the offline repository."""
    staging, repo = _staging(final), _staging(repo_final)
    repo.mkdir()
    downloads = "/var/cache/apt/archives"
    hooks = [
        # the role's packages with dependencies and recommends, as apt on the host would
        'chroot "$1" apt-get install --download-only --yes -qq -o APT::Install-Recommends=true '
        + " ".join(ROLE_PACKAGES),
        # and the image's own packages, so that an older platform can upgrade to this one
        f'chroot "$1" sh -c \'cd {downloads} && apt-get download -qq '
        '-o APT::Sandbox::User=root $(dpkg-query -W -f="\\${Package}\\n")\'',
        f'mv "$1"{downloads}/*.deb {repo}/',
        # the host's only apt source: the offline repository, bound at REPO_MOUNT
        'rm -f "$1"/etc/apt/sources.list "$1"/etc/apt/sources.list.d/*',
        f'mkdir -p "$1"{REPO_MOUNT}/{platform.name}',
        f"printf '%s' '{_local_source(platform)}' "
        '> "$1"/etc/apt/sources.list.d/vpn-gateway-lab.sources',
    ]
    _mmdebstrap(platform, source_lines, staging, FRESH_PACKAGES, hooks, log)
    for command in (["apt-ftparchive", "packages", "."], ["apt-ftparchive", "release", "."]):
        out = subprocess.run(command, cwd=repo, capture_output=True, text=True, check=True).stdout
        (repo / ("Packages" if command[1] == "packages" else "Release")).write_text(out)
    log(f"images: repo {repo_final.name}: {len(list(repo.glob('*.deb')))} packages")
    _swap(staging, final)
    _swap(repo, repo_final)


def _build_provisioned(platform, source_lines, final, log):
    staging = _staging(final)
    hooks = [f'chroot "$1" systemctl disable --quiet {" ".join(PACKAGED_UNITS)} || true',
             f'mkdir -p "$1"{REPO_MOUNT}/{platform.name}']
    _mmdebstrap(platform, source_lines, staging, FRESH_PACKAGES + PROVISIONED_PACKAGES, hooks,
                log)
    _swap(staging, final)


def _swap(staging, final):
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)


def _point(link, target):
    """Make ``link`` point at ``target`` atomically (a rename over the old link)."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target.name)
    tmp.rename(link)


def in_use(path):
    """Whether a running lab mounts ``path`` (an overlay's lower layer)."""
    mounts = Path("/proc/mounts").read_text()
    return str(path) in mounts


def _prune(cache, platform, keep):
    """Remove this platform's older images that no running lab mounts (not the
    converged gateways of lab/converged.py, which prunes its own)."""
    keep = set(keep)
    kinds = ("fresh", "provisioned", "repo")
    for path in (p for kind in kinds for p in cache.glob(f"{platform.name}-{kind}-*")):
        if path.is_dir() and not path.is_symlink() and path not in keep and not in_use(path):
            shutil.rmtree(path, ignore_errors=True)
