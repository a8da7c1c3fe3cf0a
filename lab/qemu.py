"""A QEMU guest with an ESP-capable kernel, for the lab's IPsec data plane.

This machine's kernel cannot install an ESP SA (FACTS), so the tests that need
the tunnel's data plane run in a guest: QEMU in TCG mode (KVM is unusable
here) boots Debian's own kernel, whose root is this machine's root over 9p
(read-only) under an overlay with a tmpfs on top, the kernel's modules as an
extra layer. The repo and its venv are therefore at the same paths inside,
and the lab (systemd-nspawn hosts in network namespaces) runs in the guest
unchanged. The guest has no network device: one 9p "exchange" directory
carries the command in and its output and exit code out (lab/guest/pid1.py).

    result = qemu.run(["python3", "-m", "lab", "probe"], cwd=REPO)
    result.returncode, result.stdout, result.timings["boot"]
"""
import ctypes
import hashlib
import json
import lzma
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

from . import converged
from .lab import LabError, Result

CACHE = Path(os.environ.get("VPN_GATEWAY_GUEST_CACHE", "/var/cache/vpn-gateway/guest"))
KERNEL_PACKAGE = "linux-image-amd64"
QEMU = "qemu-system-x86_64"
GUEST_DIR = Path(__file__).resolve().parent / "guest"
# The repo (and its venv) at its own path in the guest, shared on its own: the
# guest mounts fresh tmpfs on /tmp and /var/tmp, where a CI checkout may live.
REPO = GUEST_DIR.parent.parent
# The plain x86-64 model, not "max": under TCG every emulated AVX/AVX2 path that
# glibc and Python pick when "max" offers them costs more than the SSE2 one;
# importing Salt's loader in a guest took 16.0-20.2 s with qemu64 against
# 18.9-24.2 s with max, back to back (2026-11-30, load 5-7). ESP needs no
# CPU feature: the kernel's generic AES and SHA-1 serve the tunnel.
CPU = "qemu64"
# What the initramfs loads to reach the host; their dependencies come along.
INITRAMFS_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
INITRAMFS_TOOLS = ("sh", "mount", "mkdir", "insmod", "cat", "cut", "echo", "poweroff", "hostname",
                   "ip", "switch_root")
RUNS = Path("/var/tmp")  # per-guest exchange dirs: vgwguest-<pid of the run>-*
# The lab's timeouts scale with this inside the guest (lab.lab.SLOWDOWN): under
# TCG, CPU-bound work is about ten times slower (FACTS).
TCG_SLOWDOWN = 10
PR_SET_PDEATHSIG = 1


class GuestError(LabError):
    pass


class GuestResult(Result):
    """A Result plus ``timings`` (boot, command, total; seconds) and the guest's console."""

    def __init__(self, argv, returncode, stdout, stderr, timings, console):
        super().__init__(argv, returncode, stdout, stderr)
        self.timings, self.console = timings, console


class Kernel:
    """Debian's kernel unpacked in the cache: an ELF vmlinux and a modules layer."""

    def __init__(self, root):
        self.root = Path(root)
        self.version = self.root.name
        self.vmlinux = self.root / "vmlinux"  # uncompressed ELF, booted through PVH
        self.layer = self.root / "layer"  # layer/usr/lib/modules/VERSION

    @property
    def modules(self):
        return self.layer / "usr/lib/modules" / self.version

    @property
    def complete(self):
        return self.vmlinux.exists()  # the cache dir appears whole (a rename) or not at all

    def initramfs(self):
        """The initramfs for the current lab/guest/initramfs-init (built once per version of it)."""
        recipe = "\n".join([(GUEST_DIR / "initramfs-init").read_text(), *INITRAMFS_MODULES,
                            *INITRAMFS_TOOLS])
        path = self.root / f"initramfs-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}.cpio"
        if not path.exists():
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            _build_initramfs(self.modules, tmp)
            tmp.rename(path)
        return path


def available():
    """(True, how) or (False, why): can this machine boot the guest?"""
    if shutil.which(QEMU) is None:
        return False, f"{QEMU} is not installed (Debian package qemu-system-x86; scripts/install)"
    if os.geteuid() != 0:
        return False, "the guest needs root (the kernel cache, 9p passthrough of /)"
    try:
        kernel()
    except GuestError as exc:
        return False, str(exc)
    return True, f"QEMU TCG guest with Debian's kernel ({kernel().version})"


def kernel(cache=CACHE, log=lambda *a: None):
    """The Debian kernel in ``cache``: downloaded and unpacked once, then reused.

    The version is the one ``linux-image-amd64`` depends on in the apt lists;
    when apt cannot tell (no lists), the newest complete one in the cache.
    """
    cache = Path(cache)
    version = _candidate_version()
    if version is None:
        cached = sorted((k for k in map(Kernel, cache.glob("*")) if k.complete),
                        key=lambda k: k.version)
        if not cached:
            raise GuestError(f"apt knows no {KERNEL_PACKAGE} and the cache {cache} is empty: "
                             "run apt-get update")
        return cached[-1]
    found = Kernel(cache / version)
    if not found.complete:
        log(f"guest: fetching Debian's kernel {version} into {found.root}")
        _unpack(found, f"linux-image-{version}")
    return found


def _candidate_version():
    proc = subprocess.run(["apt-cache", "depends", KERNEL_PACKAGE],
                          capture_output=True, text=True)
    match = re.search(r"Depends: linux-image-(\S+)", proc.stdout)
    return match.group(1) if match else None


def _unpack(target, package):
    """Download ``package``; keep its kernel (as an ELF) and its modules (with depmod's index)."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.version}-", dir=_mkdir(target.root.parent)))
    try:
        download = subprocess.run(
            ["apt-get", "download", "-o", "APT::Sandbox::User=root", package],
            cwd=staging, capture_output=True, text=True)
        if download.returncode:
            raise GuestError(f"apt-get download {package}: {download.stderr.strip()}")
        deb = next(staging.glob("*.deb"))
        tree = staging / "tree"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
        version = target.version
        # Debian 12 ships the modules under /lib, a symlink to usr/lib on the host:
        # a real lib/ in an upper layer would hide the host's whole /lib.
        modules = staging / "layer/usr/lib/modules"
        modules.mkdir(parents=True)
        (tree / f"lib/modules/{version}").rename(modules / version)
        subprocess.run(["depmod", "-b", str(staging / "layer/usr"), version], check=True)
        (staging / "vmlinux").write_bytes(_vmlinux(tree / f"boot/vmlinuz-{version}"))
        shutil.rmtree(tree)
        deb.unlink()
        if target.root.exists():  # a half-made one from an interrupted run
            shutil.rmtree(target.root)
        staging.rename(target.root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _vmlinux(bzimage):
    """The ELF kernel inside a bzImage.

    QEMU boots an ELF vmlinux directly (PVH entry point); a bzImage would first
    decompress itself, which under TCG takes 15-20 s of the guest's boot.
    """
    data = Path(bzimage).read_bytes()
    for magic, decompressor in ((b"\xfd7zXZ\x00", lzma.LZMADecompressor),
                                (b"\x1f\x8b\x08", lambda: zlib.decompressobj(31))):
        start = data.find(magic)
        if start < 0:
            continue
        try:
            elf = decompressor().decompress(data[start:])
        except (lzma.LZMAError, zlib.error):
            continue
        if elf.startswith(b"\x7fELF"):
            return elf
    raise GuestError(f"{bzimage}: no xz- or gzip-compressed ELF kernel inside")


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def _module_order(modules_dir, wanted):
    """The .ko paths (relative) to insmod for ``wanted``, dependencies first."""
    deps = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        path, _, needs = line.partition(":")
        deps[path] = needs.split()
    by_name = {Path(p).name.removesuffix(".ko").replace("-", "_"): p for p in deps}
    order = []

    def visit(path):
        for dep in deps[path]:
            visit(dep)
        if path not in order:
            order.append(path)

    for name in wanted:
        if name not in by_name:
            raise GuestError(f"the guest kernel has no module {name} (built in? then drop it)")
        visit(by_name[name])
    return order


def _build_initramfs(modules_dir, output):
    """A newc cpio: static busybox, the modules to reach the host, lab/guest/initramfs-init."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for sub in ("bin", "modules", "proc", "sys", "dev"):
            (root / sub).mkdir()
        shutil.copy("/bin/busybox", root / "bin/busybox")
        for tool in INITRAMFS_TOOLS:
            (root / "bin" / tool).symlink_to("busybox")
        order = _module_order(modules_dir, INITRAMFS_MODULES)
        for path in order:
            shutil.copy(modules_dir / path, root / "modules" / Path(path).name)
        (root / "modules/order").write_text("\n".join(Path(p).name for p in order) + "\n")
        shutil.copy(GUEST_DIR / "initramfs-init", root / "init")
        os.chmod(root / "init", 0o755)
        names = subprocess.run(["find", "."], cwd=root, capture_output=True, text=True,
                               check=True).stdout
        with open(output, "wb") as out:
            subprocess.run(["busybox", "cpio", "-o", "-H", "newc"], cwd=root, input=names.encode(),
                           stdout=out, stderr=subprocess.DEVNULL, check=True)


def qemu_argv(kern, initramfs, exchange, memory, cpus):
    """QEMU's command line: TCG, no network, no display; serial console to stdout."""
    def share(tag, path, readonly):
        return ["-fsdev", f"local,id={tag},path={path},security_model=passthrough,"
                f"multidevs=remap{',readonly=on' if readonly else ''}",
                "-device", f"virtio-9p-pci,fsdev={tag},mount_tag={tag}"]

    if any(c.isspace() for c in str(REPO)):
        raise GuestError(f"the repo path {REPO} has white space: the guest's kernel command "
                         "line cannot carry it; clone the repo elsewhere")
    cmdline = (f"console=ttyS0 panic=-1 loglevel=4 vgw_repo={REPO} "
               f"vgw_pid1={GUEST_DIR / 'pid1.py'}")
    return [
        QEMU, "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
        "-accel", "tcg,thread=multi", "-cpu", CPU, "-machine", "q35",
        "-m", memory, "-smp", str(cpus), "-nic", "none", "-serial", "stdio",
        "-kernel", str(kern.vmlinux), "-initrd", str(initramfs), "-append", cmdline,
        *share("hostroot", "/", True), *share("kmods", kern.layer, True),
        *share("exchange", exchange, False), *share("repo", REPO, True),
    ]


def run(argv, cwd=None, env=None, timeout=1800, memory="4G", cpus=2, stream=False,
        log=lambda *a: None):
    """Boot a fresh guest, run ``argv`` in it (as root, in ``cwd``), power it off.

    Returns a GuestResult (returncode, stdout, stderr, timings, console).
    ``stream=True`` copies the command's output to ours while it runs. Raises
    GuestError when the guest cannot boot or the command outlives ``timeout``.
    """
    kern = kernel(log=log)
    for orphan in orphaned_exchanges():
        remove_exchange(orphan)
    exchange = Path(tempfile.mkdtemp(prefix=f"vgwguest-{os.getpid()}-", dir=RUNS))
    try:
        request = {"argv": list(map(str, argv)), "cwd": str(cwd or os.getcwd()),
                   "env": {"VGWLAB_SLOWDOWN": str(TCG_SLOWDOWN), **(env or {})}}
        (exchange / "request.json").write_text(json.dumps(request))
        return _boot(kern, exchange, request["argv"], timeout, memory, cpus, stream)
    finally:
        shutil.rmtree(exchange, ignore_errors=True)


def orphaned_exchanges():
    """The exchange dirs of runs that are gone: a run killed by a signal it does not
    catch (SIGTERM, SIGKILL) never reaches its clean-up (its QEMU dies with it). A dir
    is in use while the run its name holds lives, or a process (its QEMU) names it
    (as seen from this PID namespace: runs in another one that shares /var/tmp are
    not seen)."""
    named = b"\0".join(_read_bytes(c) for c in Path("/proc").glob("[0-9]*/cmdline"))

    def gone(path):
        pid = path.name.split("-")[1]
        running = pid.isdigit() and Path(f"/proc/{pid}").exists()
        return not running and bytes(path) not in named
    return sorted(p for p in RUNS.glob("vgwguest-*") if p.is_dir() and gone(p))


def remove_exchange(path):
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


def _read_bytes(path):
    try:
        return path.read_bytes()
    except OSError:  # the process ended
        return b""


def _boot(kern, exchange, argv, timeout, memory, cpus, stream):
    console = exchange / "console.log"
    argv_qemu = qemu_argv(kern, kern.initramfs(), exchange, memory, cpus)
    started = time.monotonic()
    timings = {}
    with open(console, "wb") as console_out:
        qemu = subprocess.Popen(argv_qemu, stdin=subprocess.DEVNULL, stdout=console_out,
                                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    tails = [_Tail(exchange / "stdout", sys.stdout), _Tail(exchange / "stderr", sys.stderr)]
    try:
        while qemu.poll() is None:
            if "boot" not in timings and (exchange / "ready").exists():
                timings["boot"] = time.monotonic() - started
            if stream:
                for tail in tails:
                    tail.copy()
            if time.monotonic() - started > timeout:
                raise GuestError(f"guest: {argv} still running after {timeout}s\n"
                                 f"{_read(console)[-3000:]}")
            time.sleep(0.1)
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()
    if stream:
        for tail in tails:
            tail.copy()
    timings["total"] = time.monotonic() - started
    timings["command"] = timings["total"] - timings.get("boot", timings["total"])
    result = exchange / "result.json"
    if not result.exists():
        raise GuestError(f"guest: no result (QEMU exit {qemu.returncode}); its console:\n"
                         f"{_read(console)[-3000:]}")
    outcome = json.loads(result.read_text())
    if "error" in outcome:
        raise GuestError(f"guest: could not run {argv}:\n{outcome['error']}")
    return GuestResult(argv, outcome["returncode"], _read(exchange / "stdout"),
                       _read(exchange / "stderr"), timings, _read(console))


def _die_with_parent():
    """In QEMU's child before exec: a killed test run must not leave a guest behind."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _read(path):
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


class _Tail:
    """Copies what a growing file gained since the last call to a stream."""

    def __init__(self, path, stream):
        self.path, self.stream, self.offset = path, stream, 0

    def copy(self):
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            return
        self.offset += len(data)
        if data:
            self.stream.write(data.decode(errors="replace"))
            self.stream.flush()


def pytest(paths, *args, **kwargs):
    """Run pytest on ``paths`` (test files or dirs of this repo) inside a fresh guest."""
    python = Path(os.environ.get("VPN_GATEWAY_VENV", REPO / ".venv")) / "bin/python"
    argv = [str(python), "-m", "pytest", "-p", "no:cacheprovider", *map(str, paths), *args]
    return run(argv, cwd=REPO, **kwargs)


class GuestRuns:
    """pytest on the ESP tests in fresh guests, one per platform, one guest at a
    time (4 GiB each), in a background thread:
    ``GuestRuns.started(platforms).result(platform)``."""

    ESP_TESTS = "tests/dataplane/esp"
    # One vCPU: these guests run beside the suite's labs, on a machine with no
    # core to spare. The debian13 ESP tests in a guest beside three busy Python
    # loops (2026-12-01, one run each): 2 vCPUs took 844 s and 555 s of QEMU's
    # CPU, 1 vCPU 766 s and 383 s (quiet, 2 vCPUs: 292 s and 355 s). Likely a
    # vCPU spinning on a lock whose holder's thread the host has descheduled.
    CPUS = 1
    _current = None

    def __init__(self, platforms, timeout=2400):
        self.platforms, self.timeout, self.results = list(platforms), timeout, {}
        self.thread = threading.Thread(target=self._run_all, daemon=True, name="qemu-guests")

    @classmethod
    def started(cls, platforms):
        """The runs for ``platforms``, started now unless an earlier call started them."""
        current = cls._current
        if current is None or not set(platforms) <= set(current.platforms):
            current = cls._current = cls(platforms)
            current.thread.start()
        return current

    def _run_all(self):
        for platform in self.platforms:
            try:
                # the gateway's installs at this machine's speed, not under TCG
                converged.ensure(platform, log=lambda *a: None)
                self.results[platform] = pytest([self.ESP_TESTS], "-rA", f"--platform={platform}",
                                                timeout=self.timeout, cpus=self.CPUS)
            except Exception as exc:  # noqa: BLE001 - raised by result() in the test
                self.results[platform] = exc

    def result(self, platform):
        self.thread.join(self.timeout * len(self.platforms))
        outcome = self.results.get(platform)
        if isinstance(outcome, Exception):
            raise outcome
        if outcome is None:
            raise GuestError(f"guest ({platform}): no result after {self.timeout}s per guest")
        return outcome


def pytest_outcomes(output):
    """{"passed": 2, "skipped": 1, ...} from the final summary line of pytest's output."""
    lines = output.strip().splitlines()
    return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", lines[-1] if lines else "")}
