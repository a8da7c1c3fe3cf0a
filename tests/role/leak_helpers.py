"""Leak checks that read everything (issue 14): every plaintext secret searched
in every place a run of the role writes or prints, with grep's exit status
read (0: a hit, 1: none, 2: an error such as a missing path: a failure), and
each place shown to hold what it should (a canary string that must be there),
so that no check can pass on an empty or missing sink.

- ``pillar_secrets``: every PGP block of a pillar tree, decrypted, named by
  its pillar key.
- ``needles``: the strings to search for each secret (a URL's path too).
- ``scan``: one sink (files searched recursively, or a command's output) in a
  host or on this machine.
- ``ExecTrace``: lab hosts' salt-minions run under this machine's ``strace -f
  --seccomp-bpf -e trace=execve``: every program a minion starts, with its
  whole argv, recorded rather than sampled.
"""
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from lab import pillar_gpg
from lab.lab import SLOWDOWN, Result

# Salt at debug level in its log files and on the console (journald): Lab(salt_config=DEBUG)
DEBUG = {"log_level": "debug", "log_level_logfile": "debug"}
# Salt's log line level column, in the log file and on the console (journald)
DEBUG_LINE = "[DEBUG   ]"
# At INFO, the lab's level for Salt's log files (lab/saltstack.py)
INFO_LINE = "[INFO    ]"
# Salt's default minion data cache: rendered pillar, plaintext secrets included (docs/pillar.md).
MINION_DATA_CACHE = "/var/cache/salt/master/pillar/"
STATE_ID = "libreswan_package"  # in every gateway's returns and compiled states
# Its lines at WARNING or above
WARNING_LINE = re.compile(r"\[(WARNING|ERROR|CRITICAL) *\]")

# One sink. stdin: the needles, one a line (never in an argv). $1: "files" or
# "command"; then the canaries, "--", and the paths or the command. A command's
# output (stdout and stderr, as an operator sees it) goes to a temporary file,
# which is then searched as a file. Prints the hits (PATH:NEEDLE, grep -o -H),
# then "@@ <command rc> <canary rc>... <leak rc>".
SCAN = r"""
set -u
needles=$(cat)
mode=$1; shift
canaries=()
while [ "$1" != -- ]; do canaries+=("$1"); shift; done
shift
crc=0
if [ "$mode" = command ]; then
  out=$(mktemp); trap 'rm -f "$out"' EXIT
  "$@" >"$out" 2>&1; crc=$?
  set -- "$out"
fi
rcs=()
for canary in "${canaries[@]}"; do
  grep -r -a -D skip -q -F -e "$canary" -- "$@"; rcs+=($?)
done
grep -r -a -D skip -o -H -F -f <(printf '%s\n' "$needles") -- "$@"; leak=$?
echo "@@ $crc ${rcs[*]} $leak"
"""
VANISHED = re.compile(r"^grep: .*: No such file or directory$")


def local_run(argv, input=None, timeout=120):
    """Run ``argv`` on this machine (root namespace) as ``LabHost.run`` runs it in a host."""
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
    return Result(argv, proc.returncode, proc.stdout, proc.stderr)


@dataclass
class Sink:
    """What ``scan`` found in one sink: ``hits`` {secret name: [where]}; ``problems``:
    why the check itself failed (a missing path, a failed command, a canary not found)."""
    name: str
    hits: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)

    @property
    def clean(self):
        return not self.hits and not self.problems


def scan(run, name, secrets, canaries, paths=(), command=None, retries=3, timeout=120):
    """Search the sink ``name`` for each of ``secrets`` ({secret name: [needles]}).

    ``run(argv, input=..., timeout=...)`` runs a command where the sink is
    (``LabHost.run``, or ``local_run``). The sink is ``paths`` (files and
    directories, recursively) or the output of ``command`` (argv, which must
    exit 0). Each of ``canaries`` must be found in it. A file that vanished
    while grep walked a directory (a job's process file) makes it scan again."""
    assert bool(paths) != bool(command), "a sink is paths or a command"
    owner = {}
    for secret, strings in secrets.items():
        for needle in strings:
            assert "\n" not in needle and needle, (secret, "a needle is one non-empty line")
            owner[needle] = secret
    argv = ["bash", "-c", SCAN, "scan", "command" if command else "files", *canaries, "--",
            *(command or paths)]
    text = "".join(f"{needle}\n" for needle in owner)
    for attempt in range(retries):
        result = run(argv, input=text, timeout=timeout)
        lines = result.stdout.splitlines()
        errors = [e for e in result.stderr.splitlines() if e.strip()]
        if attempt + 1 < retries and errors and all(VANISHED.match(e) for e in errors):
            continue
        break
    sink = Sink(name)
    trailer = lines.pop() if lines and lines[-1].startswith("@@ ") else None
    if trailer is None:
        sink.problems.append(f"the scan did not finish: {result!r}")
        return sink
    command_rc, *canary_rcs, leak_rc = (int(n) for n in trailer.split()[1:])
    if command_rc:
        sink.problems.append(f"{' '.join(command)}: exit {command_rc}")
    for canary, rc in zip(canaries, canary_rcs):
        if rc == 1:
            sink.problems.append(f"{canary!r} not found: the sink does not hold what it should")
        elif rc != 0:
            sink.problems.append(f"grep for {canary!r}: exit {rc}")
    if leak_rc not in (0, 1):
        sink.problems.append(f"grep for the secrets: exit {leak_rc}")
    if leak_rc == 0 and not lines:
        sink.problems.append("grep for the secrets: exit 0 but no hit printed")
    if errors:
        sink.problems.append("grep: " + "; ".join(errors[:5]))
    for line in lines:
        where, _, needle = line.rpartition(":")
        secret = owner.get(needle)
        if secret is None:
            sink.problems.append(f"unexpected grep output line {line[:200]!r}")
            continue
        where = name if command else where
        sink.hits.setdefault(secret, [])
        if where not in sink.hits[secret]:
            sink.hits[secret].append(where)
    return sink


def report(sinks):
    """One line per sink that is not clean: where each secret was found, or why
    the check could not be made. Names only, never a secret's value."""
    lines = []
    for sink in sinks:
        for secret, places in sorted(sink.hits.items()):
            lines.append(f"{sink.name}: {secret} found in {', '.join(places[:5])}")
        for problem in sink.problems:
            lines.append(f"{sink.name}: cannot check: {problem}")
    return "\n".join(lines)


def paths_without(run, root, excluded):
    """The entries under ``root`` that hold everything but ``excluded`` (paths
    under ``root``): each directory on the way to an excluded path is listed,
    the rest is kept whole (for grep -r). The excluded paths must exist."""
    keep = []
    root = root.rstrip("/")
    inside = {e.rstrip("/") for e in excluded}
    for path in inside:
        assert path.startswith(root + "/"), (path, root)
    listing = run(["find", root, "-mindepth", "1", "-maxdepth", "1"], timeout=60)
    assert listing.ok, f"find {root}: {listing!r}"
    found = set(listing.stdout.split())
    missing = {e for e in inside if e.count("/") == root.count("/") + 1 and e not in found}
    assert not missing, f"excluded paths that do not exist: {sorted(missing)}"
    for entry in sorted(found):
        if entry in inside:
            continue
        if any(e.startswith(entry + "/") for e in inside):
            keep += paths_without(run, entry, [e for e in inside if e.startswith(entry + "/")])
        else:
            keep.append(entry)
    return keep


def pillar_secrets(pillar_dir):
    """{pillar key: plaintext} of every PGP message in the ``.sls`` files of
    ``pillar_dir`` (``vpn_gateway:pooler:users:app:password``...), decrypted
    with the lab's key (lab/pillar_gpg.py)."""
    home = pillar_gpg.keyring()
    found = {}
    key_line = re.compile(r"^(?P<indent> *)(?P<key>[^\s:#{][^:]*):(?: |$)")
    for path in sorted(Path(pillar_dir).rglob("*.sls")):
        lines = path.read_text().splitlines()
        stack = []  # [(indent, key)] of the mapping keys above the current line
        index = 0
        while index < len(lines):
            line = lines[index]
            match = key_line.match(line)
            if match:
                indent = len(match["indent"])
                while stack and stack[-1][0] >= indent:
                    stack.pop()
                stack.append((indent, match["key"].strip().strip("'\"")))
            block = pillar_gpg.BLOCK_KEY.match(line)
            if block and index + 1 < len(lines) and lines[index + 1].strip() == pillar_gpg.BEGIN:
                end = next(i for i in range(index + 1, len(lines))
                           if lines[i].strip() == pillar_gpg.END)
                armour = "\n".join(b.strip() for b in lines[index + 1:end + 1]) + "\n"
                name = ":".join(key for _, key in stack)
                assert name not in found, f"{path}: {name} twice"
                found[name] = pillar_gpg.decrypt(armour, home)
                index = end
            index += 1
    return found


def needles(secrets):
    """{secret name: [strings to search]}: each value; for a URL also its path and
    query (the part that carries a token, which a log may print without the host);
    for a value of several lines (a PEM key) each line of 16 characters or more but
    its armour lines: JSON or a log may print the lines joined by an escape."""
    out = {}
    for name, value in secrets.items():
        value = value.strip()
        if "\n" in value:
            out[name] = [line.strip() for line in value.splitlines()
                         if len(line.strip()) >= 16 and not line.startswith("-----")]
            assert out[name], f"{name}: no line to search for"
            continue
        strings = [value]
        parts = urlsplit(value)
        if parts.scheme in ("http", "https") and len(parts.path) > 1:
            strings.append(parts.path + (f"?{parts.query}" if parts.query else ""))
        out[name] = strings
    return out


class ExecTrace:
    """Every program the salt-minion of ``hosts`` starts, with its whole argv: for
    the block, each host's minion runs under this machine's ``strace -f
    --seccomp-bpf -e trace=execve -s 65535`` (its jobs run in children it forks,
    which -f follows), started in the host's namespaces with nsenter in place of
    its unit's, which is back after the block. strace is this machine's
    (scripts/install), never installed in a host. --seccomp-bpf stops a tracee
    only at execve, not at each system call; strace cannot use it for a process
    it attaches to (-p), and attached to the unit's minion it made the role's
    first run about twice as long. Use as a context manager; ``files`` {host
    name: trace path}, ``consoles`` {host name: what the traced minion printed,
    which the unit's would have sent to the journal}. ``minion``: the minion's
    argv; ``ready(host)``: whether it answers (the master's test.ping).
    ``timeout``: seconds each minion has to answer, times the lab's SLOWDOWN; a
    traced minion's start under CI's full load once took more than 120 s."""

    def __init__(self, hosts, directory, minion, ready, timeout=300):
        self.hosts, self.directory = list(hosts), Path(directory)
        self.minion, self.ready, self.timeout = list(minion), ready, timeout
        self.tracers, self.files, self.consoles = {}, {}, {}

    def __enter__(self):
        try:
            for host in self.hosts:
                self._start(host)
            for host in self.hosts:
                self._wait(host, "the traced salt-minion answers")
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc):
        self._stop()
        for host in self.hosts:
            self._wait(host, "the unit's salt-minion answers again")

    def _start(self, host):
        host.run(["systemctl", "stop", "salt-minion"], check=True)
        trace = self.directory / f"{host.name}.execve"
        console = self.directory / f"{host.name}.console"
        with open(console, "wb") as err:  # strace's own lines too: "Process N attached"
            self.tracers[host.name] = subprocess.Popen(
                ["strace", "-f", "--seccomp-bpf", "-e", "trace=execve", "-s", "65535",
                 "-o", str(trace), *host.nsenter_argv(self.minion)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        self.files[host.name], self.consoles[host.name] = trace, console

    def _wait(self, host, what):
        deadline = time.monotonic() + self.timeout * SLOWDOWN
        while not self.ready(host):
            tracer = self.tracers.get(host.name)
            assert tracer is None or tracer.poll() is None, f"{host.name}: strace ended"
            assert time.monotonic() < deadline, (
                f"{host.name}: not within {self.timeout * SLOWDOWN:g}s: {what}; "
                f"its console's last warnings: {self.warnings(host)}")
            time.sleep(1)

    def warnings(self, host, count=20):
        """The last ``count`` lines of the traced minion's console at WARNING or above
        (why it does not answer: auth, the master's key), never its debug lines."""
        console = self.consoles.get(host.name)
        if console is None or not console.exists():
            return []
        lines = console.read_text(errors="replace").splitlines()
        return [line for line in lines if WARNING_LINE.search(line)][-count:]

    def _stop(self):
        """The traced minion ends, as systemd stops a unit: SIGTERM, then SIGKILL for
        what is left after 30 s (a traced minion once hung in its shutdown and then
        held its pidfile against the unit's); strace ends with its tracees. The
        unit's minion is started again."""
        for signal_name in ("TERM", "KILL"):
            for host in self.hosts:
                if host.name in self.tracers and self.tracers[host.name].poll() is None:
                    host.run(["pkill", f"-{signal_name}", "-f", self.minion[0]])
            deadline = time.monotonic() + 30
            while (any(t.poll() is None for t in self.tracers.values())
                   and time.monotonic() < deadline):
                time.sleep(0.2)
        for tracer in self.tracers.values():
            if tracer.poll() is None:
                tracer.kill()
                tracer.wait(timeout=10)
        self.tracers = {}
        for host in self.hosts:
            host.run(["systemctl", "start", "salt-minion"], check=True)


def stored(lab, hosts, log_line=DEBUG_LINE):
    """The checks (run, sink, canaries, paths or command) of every place on ``hosts``
    where Salt and the role store or log: each host's journal (every field), a Salt
    host's log and all of /var/log, the master's cache, a minion's cache.
    ``log_line``: what Salt's logs must hold (its level column: the lab's Salt logs
    at debug for the role lab, ``INFO_LINE`` otherwise); at debug, the journal too."""
    checks = []
    for name in hosts:
        host = lab[name]
        canaries = [f"_HOSTNAME={name}"] + (
            [log_line] if host.spec.salt and log_line == DEBUG_LINE else [])
        checks.append((host.run, f"{name} journald", canaries,
                       {"command": ["journalctl", "-o", "export", "--no-pager"]}))
        if host.spec.salt:
            checks.append((host.run, f"{name} salt log", [log_line],
                           {"paths": [f"/var/log/salt/{host.spec.salt}"]}))
            checks.append((host.run, f"{name} /var/log", [log_line], {"paths": ["/var/log"]}))
        if host.spec.salt == "master":
            # All of the master's cache (the job cache and the rest) but Salt's minion data
            # cache: each minion's rendered pillar, plaintext by design (docs/pillar.md).
            checks.append((host.run, f"{name} cache", [STATE_ID], {"paths": paths_without(
                host.run, "/var/cache/salt/master", [MINION_DATA_CACHE])}))
        elif host.spec.salt == "minion":
            # No exclusion: the minion's cache is no secret store (the role keeps the
            # secrets in /etc/ipsec.d, /etc/pgbouncer and /etc/vpn-gateway).
            checks.append((host.run, f"{name} salt-minion cache", [STATE_ID],
                           {"paths": ["/var/cache/salt/minion"]}))
    return checks


def find_leaks(checks, wanted):
    """Run ``checks`` for the secrets ``wanted`` ({name: [needles]}), four at a
    time; the report of the sinks that are not clean (names, never values)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        sinks = list(pool.map(lambda c: scan(c[0], c[1], wanted, c[2], **c[3]), checks))
    return report(sinks)
