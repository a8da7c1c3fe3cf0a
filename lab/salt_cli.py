"""The master's ``salt`` and ``salt-run`` command lines, served warm, run inside the master host.

Each ``salt`` command line a test starts pays Python's import of Salt again:
0.6 s of CPU for ``salt vpn-gw1 test.ping`` on a quiet debian13 master, 0.9 s
for ``salt-run`` (2026-11-30), and the suite starts thousands of them in its
wait loops on two cores. This process imports Salt's command-line programs once;
for each command it forks, and the child runs the program itself
(``salt.scripts.salt_main`` or ``salt_run``) on the command's argv. So argument
parsing, output, return codes and error handling are Salt's own, as on the
command line; only the imports are shared. lab.saltstack's ``MasterCLI`` talks
to it.

One JSON line in per command, ``{"argv": [...], "timeout": seconds}``; one
JSON line out, ``{"returncode": N, "stdout": "...", "stderr": "..."}``. A child
still running after its timeout is killed, and the answer says so with
returncode -9.
"""
import json
import os
import select
import signal
import sys
import tempfile

import salt.cli.run  # noqa: F401 -- imported once here, used by each child
import salt.cli.salt  # noqa: F401
import salt.client  # noqa: F401
import salt.runner  # noqa: F401
import salt.scripts

PROGRAMS = {"salt": salt.scripts.salt_main, "salt-run": salt.scripts.salt_run}


def run_child(argv, out, err):
    """In the forked child: run the program on ``argv`` with its output in ``out``/``err``."""
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # the requests are the server's
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    os.setsid()  # its own group: a timeout kills what it started too
    code = 0
    try:
        sys.argv = list(argv)
        PROGRAMS[argv[0]]()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:  # noqa: BLE001 -- the command line would print it and fail
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def wait(pid, timeout):
    """The child's exit code; -9 once it is killed at ``timeout`` (seconds)."""
    exited = os.pidfd_open(pid)  # readable once the child has ended: no polling
    try:
        ended = select.select([exited], [], [], timeout)[0]
    finally:
        os.close(exited)
    if not ended:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:  # killed before its setsid: no group of its own yet
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return -9
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def serve(request):
    argv, timeout = request["argv"], request["timeout"]
    if argv[0] not in PROGRAMS:
        return {"returncode": 127, "stdout": "", "stderr": f"{argv[0]}: not served here"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        pid = os.fork()
        if pid == 0:
            run_child(argv, out, err)
        returncode = wait(pid, timeout)
        out.seek(0)
        err.seek(0)
        stderr = err.read()
        if returncode == -9:
            stderr += f"\n{argv[0]}: killed after {timeout}s"
        return {"returncode": returncode, "stdout": out.read(), "stderr": stderr}


def main():
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    for line in sys.stdin:
        answers.write(json.dumps(serve(json.loads(line))) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
