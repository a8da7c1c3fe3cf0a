"""Real hosts on one machine: systemd-nspawn containers in network namespaces.

Each host boots real systemd from an overlay of a Debian image built from
Debian's packages (lab/images.py: ``fresh`` for the gateways, which the role
must install itself, ``provisioned`` for the rest), with its own writable
/etc, /run and /var (the overlay's upper dir, on a tmpfs of the lab's own).
The platform (``debian12``, ``debian13``) is the lab's, or a host's own. Its network namespace is
wired to a fabric namespace that holds one bridge per segment. Everything the
lab creates carries its name (``vgwlab`` by default): ``clean(name)`` removes
whatever a killed run left, and ``leftovers(name)`` proves nothing is left.
"""
import ipaddress
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from . import images, kubeapi
from . import topology as topo

PREFIX = "vgwlab"
STATE_ROOT = Path("/var/tmp")
REPO = Path(__file__).resolve().parent.parent
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# How many times slower than on this machine's own kernel the lab runs: the
# QEMU guest (lab/qemu.py, TCG) sets 10. Command timeouts and the waits for boot
# and readiness scale with it.
SLOWDOWN = float(os.environ.get("VGWLAB_SLOWDOWN", "1"))
# Boot units that do nothing a container needs (no kernel modules, no fstab, no
# debugfs or hugepages, the dynamic linker's cache and the users already made in
# the image): masked in every host. Under TCG each took 3-10 s of a guest lab's
# 55 s boot (systemd-analyze blame, docs/lab.md). The role's units, journald,
# dbus, logind, tmpfiles and sysctl (the gateway's forwarding at boot) stay.
MASKED_UNITS = (
    "dev-hugepages.mount", "sys-kernel-debug.mount", "sys-kernel-tracing.mount",
    "modprobe@configfs.service", "modprobe@drm.service", "modprobe@efi_pstore.service",
    "modprobe@fuse.service", "systemd-modules-load.service", "systemd-remount-fs.service",
    "e2scrub_reap.service", "ldconfig.service", "systemd-journal-catalog-update.service",
    "systemd-update-done.service", "systemd-sysusers.service",
    "systemd-tmpfiles-setup-dev-early.service")


class LabError(RuntimeError):
    pass


class Result:
    """What a command in a host did: returncode, stdout, stderr (text)."""

    def __init__(self, argv, returncode, stdout, stderr):
        self.argv, self.returncode, self.stdout, self.stderr = argv, returncode, stdout, stderr

    @property
    def ok(self):
        return self.returncode == 0

    def __repr__(self):
        return (f"Result(rc={self.returncode}, stdout={self.stdout!r:.200}, "
                f"stderr={self.stderr!r:.200})")


def sh(argv, check=True, input=None, timeout=60):
    """Run a command in the root namespace; raise LabError with its stderr on failure."""
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode:
        raise LabError(f"{' '.join(map(str, argv))}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


class LabHost:
    """One running host. ``run`` executes inside all of its namespaces."""

    def __init__(self, lab, spec):
        self.lab, self.spec, self.name = lab, spec, spec.name
        self.netns = f"{lab.name}-{spec.name}"
        self.machine = self.netns
        self.dir = lab.dir / spec.name
        self.root = self.dir / "root"
        self.platform = images.PLATFORMS[spec.platform or lab.platform]
        self.nspawn = None  # the systemd-nspawn process
        self.pid = None  # the container's PID 1, as seen from the root namespace
        self.macs = {}  # {interface: MAC} kept over a power cycle, as a cloud NIC's

    def address(self, segment):
        return self.spec.address(segment)

    def nsenter_argv(self, cmd, env=None):
        """nsenter argv that runs argv ``cmd`` inside all of the host's namespaces."""
        if self.pid is None:
            raise LabError(f"{self.name} is not running (powered off, or not started)")
        environment = [f"PATH={HOST_PATH}", "LANG=C.UTF-8", "HOME=/root", "TERM=dumb"]
        environment += [f"{k}={v}" for k, v in (env or {}).items()]
        return ["nsenter", "-t", str(self.pid), "-a", "--wdns=/", "--", "/usr/bin/env", "-i",
                *environment, *cmd]

    def popen(self, cmd, env=None, **kwargs):
        """Start argv ``cmd`` inside the host, as ``run`` would, without waiting for it."""
        return subprocess.Popen(self.nsenter_argv(cmd, env), **kwargs)

    def run(self, cmd, timeout=60, check=False, input=None, env=None):
        """Run ``cmd`` (argv list, or a string for /bin/sh -c) inside the host.

        Returns a Result; with ``check=True`` raises LabError on a non-zero exit.
        The environment is a clean one, as a login on the host would have.
        """
        if isinstance(cmd, str):
            cmd = ["/bin/sh", "-c", cmd]
        argv = self.nsenter_argv(cmd, env)
        try:
            proc = subprocess.run(argv, input=input, capture_output=True, text=True,
                                  timeout=timeout * SLOWDOWN)
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"{self.name}: {cmd} timed out after {timeout}s") from exc
        result = Result(cmd, proc.returncode, proc.stdout, proc.stderr)
        if check and not result.ok:
            raise LabError(f"{self.name}: {cmd}: exit {result.returncode}: {result.stderr.strip()}")
        return result

    def put(self, path, content, mode=0o644, owner=None):
        """Write a file into the host (through its overlay; works before boot too)."""
        target = self.root / str(path).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.lab-tmp")
        tmp.write_bytes(content.encode() if isinstance(content, str) else content)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
        if owner:
            self.run(["chown", owner, str(path)], check=True)

    def read(self, path):
        return (self.root / str(path).lstrip("/")).read_text()

    def enable_unit(self, unit, target="multi-user.target"):
        """Enable a unit before boot (a symlink, as ``systemctl enable`` makes)."""
        wants = self.root / "etc/systemd/system" / f"{target}.wants"
        wants.mkdir(parents=True, exist_ok=True)
        link = wants / unit
        if not link.is_symlink():
            link.symlink_to(f"/etc/systemd/system/{unit}")

    def wait_unit(self, unit, timeout=30):
        deadline = time.monotonic() + timeout * SLOWDOWN
        while True:
            state = self.run(["systemctl", "is-active", unit]).stdout.strip()
            if state == "active":
                return
            if state == "failed" or time.monotonic() > deadline:
                log = self.run(["journalctl", "-u", unit, "-n", "30", "--no-pager"]).stdout
                raise LabError(f"{self.name}: {unit} is {state!r}\n{log}")
            time.sleep(0.2)

    def wait_port(self, port, address="127.0.0.1", timeout=30):
        """Wait until a TCP connect to address:port inside this host succeeds."""
        deadline = time.monotonic() + timeout * SLOWDOWN
        probe = f"exec 3<>/dev/tcp/{address}/{int(port)}"
        while not self.run(["bash", "-c", probe], timeout=5).ok:
            if time.monotonic() > deadline:
                raise LabError(f"{self.name}: nothing accepts on {address}:{port} after {timeout}s")
            time.sleep(0.2)

    def wait_booted(self, timeout=180):
        """Wait until systemd in the host has finished booting (running or degraded)."""
        timeout *= SLOWDOWN
        deadline = time.monotonic() + timeout
        while True:
            if self.nspawn.poll() is not None:
                raise LabError(f"{self.name}: the container exited ({self.nspawn.returncode}): "
                               f"{self.console()}")
            left = max(1, deadline - time.monotonic())
            try:
                state = self.run(["systemctl", "is-system-running", "--wait"], timeout=left)
            except LabError:
                state = None
            if state and state.stdout.strip() in ("running", "degraded"):
                return state.stdout.strip()
            if time.monotonic() > deadline:
                jobs = self.run(["systemctl", "list-jobs", "--no-pager"], timeout=10).stdout
                raise LabError(f"{self.name}: not booted after {timeout}s: {state}\n"
                               f"pending jobs:\n{jobs}\n{self.console()}")
            time.sleep(0.2)

    def console(self, tail=3000):
        """The end of what the container printed on its console."""
        try:
            return (self.dir / "console.log").read_text()[-tail:]
        except OSError as exc:
            return f"(no console log: {exc})"


class Lab:
    """A running topology. Use as a context manager, or call start()/stop().

    >>> with Lab(DEFAULT.subset(["salt-master", "vpn-gw1"])) as lab:
    ...     lab["vpn-gw1"].run("hostname").stdout
    'vpn-gw1\\n'
    """

    def __init__(self, topology=topo.DEFAULT, name=None, repo=REPO, venv=None, log=print,
                 platform=None, repos=(), salt_config=None, pillar=None):
        self.name = name or os.environ.get("VGWLAB_NAME", f"{PREFIX}-demo")
        if not re.fullmatch(rf"{PREFIX}-[a-z0-9]+", self.name):
            raise ValueError(f"a lab name is {PREFIX}-<letters and digits> (got {self.name!r}), "
                             "so that clean() finds everything it made")
        self.topology = topology
        self.platform = platform or images.DEFAULT_PLATFORM
        if self.platform not in images.PLATFORMS:
            raise ValueError(f"unknown platform {self.platform!r}; "
                             f"known: {sorted(images.PLATFORMS)}")
        self.repo = Path(repo).resolve()
        self.venv = Path(venv or os.environ.get("VPN_GATEWAY_VENV", self.repo / ".venv")).resolve()
        self.dir = STATE_ROOT / self.name
        self.hosts = {h.name: LabHost(self, h) for h in topology.hosts}
        # Every platform's offline apt repository that a host may use (its own,
        # plus ``repos``: an upgrade test adds the newer platform's).
        self.platforms = sorted({h.platform.name for h in self.hosts.values()} | set(repos))
        # Settings for every Salt master and minion over the lab's own (lab/saltstack.py),
        # e.g. {"log_level": "debug"}: written before boot, so no restart is needed.
        self.salt_config = dict(salt_config or {})
        # Pillar of this lab's own over the repo's (its lab.sls, lab/saltstack.py), e.g.
        # saltstack.QUIET_SCHEDULES.
        self.pillar = dict(pillar or {})
        self.images = {}  # platform -> {kind: path}, filled at start
        self.fabric = f"{self.name}-fabric"
        self.log = log or (lambda *a: None)
        self.timings = {}

    def __getitem__(self, name):
        return self.hosts[name]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- start -------------------------------------------------------------
    def start(self):
        """Start every host; on any failure (or Ctrl-C) tear down what was started."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self):
        started = time.monotonic()
        if leftovers(self.name):
            self.log(f"lab: cleaning what an earlier run of {self.name} left")
            clean(self.name)
        _raise_inotify_limit()
        for platform in self.platforms:
            self.images[platform] = images.ensure(platform, log=self.log)
        self.timings["images"] = time.monotonic() - started
        self.dir.mkdir(parents=True, exist_ok=True)
        sh(["mount", "-t", "tmpfs", "-o", "mode=0700", self.name, str(self.dir)])
        self._wire()
        from . import saltstack  # late: keeps the network part free of Salt

        for host in self.hosts.values():
            self._prepare(host)
        saltstack.provision(self)
        for host in self.hosts.values():
            if self.salt_config and host.spec.salt:  # read after lab.conf: these win
                host.put(f"/etc/salt/{host.spec.salt}.d/overrides.conf",
                         json.dumps(self.salt_config))
        for host in self.hosts.values():
            self._boot(host)
        for host in self.hosts.values():
            host.wait_booted()
        self.timings["boot"] = time.monotonic() - started
        saltstack.wait_ready(self)
        self.timings["start"] = time.monotonic() - started
        self.log(f"lab: {len(self.hosts)} hosts up in {self.timings['start']:.1f}s "
                 f"(booted in {self.timings['boot']:.1f}s): {', '.join(self.hosts)}")
        return self

    def _wire(self):
        """Namespaces, bridges, veth pairs, addresses and routes, in one ip batch per namespace."""
        sh(["ip", "netns", "add", self.fabric])
        fabric = [f"link add br-{seg.name} type bridge" for seg in self.topology.segments]
        fabric += [f"link set br-{seg.name} up" for seg in self.topology.segments]
        sh(["ip", "-n", self.fabric, "-batch", "-"], input="\n".join(fabric) + "\n")
        for host in self.hosts.values():
            self._wire_host(host)

    def _ports(self, host):
        """{segment: the fabric end of the host's veth on it}."""
        index = list(self.hosts).index(host.name)
        return {seg: f"h{index}-{seg}"[:15] for seg in host.spec.addresses}

    def _wire_host(self, host):
        """The host's namespace, its veths to the segments' bridges, addresses, routes."""
        spec = host.spec
        sh(["ip", "netns", "add", host.netns])
        inside = ["link set lo up"]
        for seg, port in self._ports(host).items():
            mac = host.macs.get(f"{seg}0")
            sh(["ip", "-n", self.fabric, "link", "add", port, "type", "veth",
                "peer", "name", f"{seg}0", *(["address", mac] if mac else []),
                "netns", host.netns])
            sh(["ip", "-n", self.fabric, "link", "set", port, "master", f"br-{seg}", "up"])
            prefix = self._segment_prefix(seg)
            inside += [f"addr add {spec.addresses[seg]}/{prefix} dev {seg}0",
                       f"link set {seg}0 up"]
        inside += [f"addr add {addr}/32 dev lo" for addr in spec.loopback]
        for dst, via in spec.routes:
            if self._on_link(spec, via):
                inside.append(f"route add {dst} via {via}")
        sh(["ip", "-n", host.netns, "-batch", "-"], input="\n".join(inside) + "\n")
        if spec.forwarding:
            sh(["ip", "netns", "exec", host.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])

    def _segment_prefix(self, seg):
        return next(s.cidr.split("/")[1] for s in self.topology.segments if s.name == seg)

    def _on_link(self, spec, via):
        return any(
            ipaddress.ip_address(via) in ipaddress.ip_network(s.cidr)
            for s in self.topology.segments
            if s.name in spec.addresses
        )

    def _prepare(self, host):
        for sub in ("upper", "work", "root"):
            (host.dir / sub).mkdir(parents=True)
        image = host.spec.image  # a kind of lab/images.py, or a root's path (lab/converged.py)
        image = image if image.startswith("/") else self.images[host.platform.name][image]
        sh(["mount", "-t", "overlay", host.machine, "-o",
            f"lowerdir={image},upperdir={host.dir / 'upper'},workdir={host.dir / 'work'}",
            str(host.root)])
        host.put("/etc/hostname", f"{host.name}\n")
        # Units start slower than on a real host: many hosts share two cores (the
        # suite runs two labs and a QEMU guest at once), and under TCG ten times
        # slower again. systemd's default 90 s failed firewalld's start under that load.
        host.put("/etc/systemd/system.conf.d/vgw-lab-start-timeout.conf",
                 f"[Manager]\nDefaultTimeoutStartSec={int(300 * SLOWDOWN)}s\n")
        units = host.root / "etc/systemd/system"
        for unit in MASKED_UNITS:
            (units / unit).unlink(missing_ok=True)
            (units / unit).symlink_to("/dev/null")
        hosts = ["127.0.0.1 localhost", f"127.0.1.1 {host.name}"]
        for other in self.hosts.values():
            for seg, addr in other.spec.addresses.items():
                hosts.append(f"{addr} {other.name}-{seg}" + (f" {other.name}" if seg == next(
                    iter(other.spec.addresses)) else ""))
        host.put("/etc/hosts", "\n".join(hosts) + "\n")

    def _boot(self, host):
        log = open(host.dir / "console.log", "a")  # after a power_on, both boots
        # The repo, the venv and its interpreter's tree (Salt's programs), at their own paths.
        shared = {self.repo, self.venv, _python_home(self.venv)}
        binds = [f"--bind-ro={path}" for path in sorted(shared)]
        binds += [f"--bind-ro={self.images[p]['repo']}:{images.REPO_MOUNT}/{p}"
                  for p in self.platforms]
        if kubeapi.KUBECTL.exists():  # no Debian package: the machine image's own client
            binds.append(f"--bind-ro={kubeapi.KUBECTL}:/usr/local/bin/kubectl")
        argv = [
            "systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit",
            "--capability=all", "--link-journal=no", "--console=pipe",
            f"--directory={host.root}", f"--machine={host.machine}", f"--hostname={host.name}",
            f"--network-namespace-path=/run/netns/{host.netns}",
            *binds,
        ]
        # /proc/sys/net writable (it is the host's own network namespace), so that
        # formulas can set net.* sysctls; the rest of /proc/sys stays read-only.
        env = {**os.environ, "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"}
        host.nspawn = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       start_new_session=True, env=env)
        log.close()
        deadline = time.monotonic() + 10 * SLOWDOWN
        while host.pid is None:
            inits = [c for c in _children(host.nspawn.pid) if _is_namespace_init(c)]
            if inits:
                host.pid = inits[0]
            elif host.nspawn.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"{host.name}: systemd-nspawn exited: {host.console()}")
            else:
                time.sleep(0.02)

    # -- one host's power ----------------------------------------------------
    def power_off(self, name, timeout=30):
        """Cut host ``name``'s power, as a cloud host is stopped by force.

        Its PID 1 is killed (the kernel ends every process of the container, no
        shutdown runs, nothing says goodbye) and its network namespace goes with
        what the host's software set in it (firewall rules, XFRM, routes and
        sysctls of its own), as a machine's memory does. Its disk stays: the
        overlay is left mounted, so ``power_on`` boots the same /etc and /var;
        its interfaces come back with the same MACs (the neighbours' ARP caches
        stay right, as with a cloud's NIC).
        ``stop()`` tears a lab down with hosts powered off too.
        """
        host = self.hosts[name]
        if host.pid is None:
            raise LabError(f"{name} is not running")
        _kill(host.pid)
        try:
            host.nspawn.wait(timeout=timeout * SLOWDOWN)
        except subprocess.TimeoutExpired:
            _kill(host.nspawn.pid)
            host.nspawn.wait(timeout=10)
        host.pid = host.nspawn = None
        links = json.loads(sh(["ip", "-n", host.netns, "-j", "link", "show"]).stdout)
        host.macs = {link["ifname"]: link.get("address") for link in links}
        # Deleting the fabric ends first takes the veths away at once (a deleted
        # namespace's devices go later, in the kernel's own time), so that
        # power_on can make the same names again.
        for port in self._ports(host).values():
            sh(["ip", "-n", self.fabric, "link", "delete", port], check=False)
        sh(["ip", "netns", "delete", host.netns])
        self.log(f"lab: {name} powered off")

    def power_on(self, name, timeout=180):
        """Boot host ``name`` again after ``power_off`` (a cloud host started): the
        same disk, its network namespace made again as ``start`` made it (same
        addresses and routes: the cloud's network); returns once systemd has booted."""
        host = self.hosts[name]
        if host.pid is not None:
            raise LabError(f"{name} is running already")
        started = time.monotonic()
        self._wire_host(host)
        self._boot(host)
        host.wait_booted(timeout)
        self.log(f"lab: {name} powered on, booted in {time.monotonic() - started:.1f}s")

    # -- stop --------------------------------------------------------------
    def stop(self):
        started = time.monotonic()
        clean(self.name)
        self.timings["stop"] = time.monotonic() - started
        self.log(f"lab: {self.name} torn down in {self.timings['stop']:.1f}s")


def _python_home(venv):
    """The installation the venv's interpreter belongs to (pyvenv.cfg's home, less bin/)."""
    config = (Path(venv) / "pyvenv.cfg").read_text()
    home = Path(re.search(r"^home\s*=\s*(.+)$", config, re.M).group(1).strip()).parent
    if home == Path("/usr"):
        raise LabError(f"the venv {venv} uses this machine's /usr/bin/python3: image hosts cannot "
                       "bind /usr; make the venv with scripts/install (it copies Debian's "
                       "Python to /opt first), or from a Python installed elsewhere (pyenv)")
    return home


INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")


def _raise_inotify_limit(wanted=8192):
    """Every host's systemd, journald and dbus take inotify instances, all
    counted against root; at Debian's default (128) the boot of a few dozen
    hosts hangs with every job waiting."""
    if int(INOTIFY_INSTANCES.read_text()) < wanted:
        INOTIFY_INSTANCES.write_text(str(wanted))


def _children(pid):
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _is_namespace_init(pid):
    """Whether ``pid`` is PID 1 of a pid namespace below ours (a container's init).

    systemd-nspawn also forks short-lived helpers; only the init counts.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    nspids = next((line.split()[1:] for line in status.splitlines()
                   if line.startswith("NSpid:")), [])
    return len(nspids) >= 2 and nspids[-1] == "1"


def running_pid(lab_name, host_name):
    """PID 1 of host ``host_name`` of the running lab ``lab_name`` (for ``python -m lab run``)."""
    machine = f"--machine={lab_name}-{host_name}".encode()
    for pid in _nspawn_processes(lab_name):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        inits = [c for c in _children(pid) if _is_namespace_init(c)]
        if machine in argv and inits:
            return inits[0]
    raise LabError(f"no running host {host_name} in lab {lab_name} (python -m lab leftovers)")


def _nspawn_processes(name):
    """PIDs of systemd-nspawn processes that run a machine of lab ``name``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"systemd-nspawn") and any(
            a.startswith(f"--machine={name}-".encode()) for a in argv
        ):
            found.append(int(entry.name))
    return found


def _owned(name, path):
    """Whether ``path`` (a mount point or dir) belongs to lab ``name``.

    ``name`` may be a whole lab (``vgwlab-demo``) or the bare prefix
    (``vgwlab``), which then means every lab on this machine.
    """
    root = str(STATE_ROOT / name)
    return path == root or path.startswith(root + "/") or path.startswith(root + "-")


def _mounts(name):
    points = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    return [p for p in points if _owned(name, p)]


def _namespaces(name):
    out = sh(["ip", "netns", "list"], check=False).stdout
    return [n.split()[0] for n in out.splitlines() if n.split()[0].startswith(f"{name}-")]


def _dirs(name):
    return [str(p) for p in STATE_ROOT.glob(f"{name}*") if p.is_dir() and _owned(name, str(p))]


def leftovers(name=PREFIX):
    """What lab ``name`` (or, for the bare prefix, every lab) still holds here."""
    left = [f"process {pid}" for pid in _nspawn_processes(name)]
    left += [f"mount {m}" for m in _mounts(name)]
    left += [f"netns {n}" for n in _namespaces(name)]
    left += [f"dir {d}" for d in _dirs(name)]
    return left


def clean(name=PREFIX):
    """Tear down lab ``name`` (the bare prefix: every lab), whatever state a run
    left it in: processes, mounts, namespaces, dirs. Idempotent."""
    for pid in _nspawn_processes(name):
        for child in _children(pid):  # the container's PID 1: killing it ends the container
            _kill(child)
        _kill(pid)
    deadline = time.monotonic() + 10
    while _nspawn_processes(name) and time.monotonic() < deadline:
        time.sleep(0.05)
    for point in sorted(_mounts(name), key=len, reverse=True):
        sh(["umount", "-l", point], check=False)
    for netns in _namespaces(name):
        sh(["ip", "netns", "delete", netns], check=False)
    for directory in _dirs(name):
        if not any(_owned(directory.removeprefix(str(STATE_ROOT) + "/"), m) for m in _mounts(name)):
            subprocess.run(["rm", "-rf", "--one-file-system", directory], check=False)


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
