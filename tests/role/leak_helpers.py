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
- ``ExecTrace``: ``strace -f -e trace=execve`` attached from this machine's
  root namespace to every salt-minion process of lab hosts: every program
  the minion starts, with its whole argv, recorded rather than sampled.
"""
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from lab import pillar_gpg
from lab.lab import Result

# Salt at debug level in its log files and on the console (journald): Lab(salt_config=DEBUG)
DEBUG = {"log_level": "debug", "log_level_logfile": "debug"}
# Salt's log line level column, in the log file and on the console (journald)
DEBUG_LINE = "[DEBUG   ]"

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


def minion_pids(host):
    """Root-namespace PIDs of every salt-minion process of lab host ``host``
    (the container's processes are descendants of its PID 1)."""
    pids, todo = [], [host.pid]
    while todo:
        pid = todo.pop()
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
        try:
            # Salt's processes retitle themselves: one string "... salt-minion MultiMinion..."
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").split()
        except OSError:
            continue
        if any(a.endswith(b"/salt-minion") or a == b"salt-minion" for a in argv[:3]):
            pids.append(pid)
    return sorted(pids)


class ExecTrace:
    """``strace -f -e trace=execve -s 65535`` attached from this machine to
    every salt-minion process of ``hosts`` (its jobs run in children it forks,
    which -f follows), one trace file per host in ``directory``. strace is this
    machine's (scripts/install), never installed in a host. Use as a context
    manager; ``files`` {host name: trace path}."""

    def __init__(self, hosts, directory, attach_timeout=30):
        self.hosts, self.directory = list(hosts), Path(directory)
        self.attach_timeout = attach_timeout
        self.tracers, self.files = {}, {}

    def __enter__(self):
        try:
            for host in self.hosts:
                self._attach(host)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def _attach(self, host):
        pids = minion_pids(host)
        assert pids, f"{host.name}: no salt-minion process to trace"
        trace = self.directory / f"{host.name}.execve"
        log = self.directory / f"{host.name}.strace-stderr"
        with open(log, "wb") as err:
            tracer = subprocess.Popen(
                ["strace", "-f", "-e", "trace=execve", "-s", "65535", "-o", str(trace),
                 *(a for pid in pids for a in ("-p", str(pid)))],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        self.tracers[host.name], self.files[host.name] = tracer, trace
        # strace says "Process N attached" for each thread it seized: wait for every
        # process asked for (a job's process may end first: then its error line).
        deadline = time.monotonic() + self.attach_timeout
        while True:
            text = log.read_text(errors="replace")
            done = [p for p in pids if re.search(rf"Process {p} attached|\b{p}\b.*No such process",
                                                 text)]
            if len(done) == len(pids):
                break
            if tracer.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{host.name}: strace did not attach to {pids}: {text}")
            time.sleep(0.1)
        assert any(f"Process {p} attached" in text for p in pids), text

    def stop(self):
        """Detach (SIGINT: strace lets the tracees go on) and wait for each tracer."""
        for name, tracer in self.tracers.items():
            if tracer.poll() is None:
                os.kill(tracer.pid, signal.SIGINT)
        for name, tracer in self.tracers.items():
            try:
                tracer.wait(timeout=30)
            except subprocess.TimeoutExpired:
                tracer.kill()
                tracer.wait(timeout=10)
