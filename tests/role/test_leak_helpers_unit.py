"""The leak checks' own parts (tests/role/leak_helpers.py), on this machine: a
secret planted in a file, a command's output or an argv is found and named; a
missing path, a failed command or a sink without its canary fails the check
instead of passing it; the example pillar's secrets are all found."""
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from lab import peers, postgres
from leak_helpers import (ExecTrace, local_run, needles, paths_without,
                          pillar_secrets, report, scan)

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
SECRETS = {"psk": ["not-a-real-psk-5d1c"], "url": ["http://198.18.0.99/hooks/t0k", "/hooks/t0k"]}


def test_a_secret_in_a_file_is_found_and_named_without_its_value(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "log").write_text("[DEBUG   ] posting to /hooks/t0k\n")
    (tmp_path / "clean").write_bytes(b"\x00\x01binary [DEBUG   ]\n")
    sink = scan(local_run, "logs", SECRETS, ["[DEBUG   ]"], paths=[str(tmp_path)])
    assert sink.hits == {"url": [str(tmp_path / "a" / "b" / "log")]}
    assert sink.problems == [] and not sink.clean
    text = report([sink])
    assert "logs: url found in" in text and "t0k" not in text.replace(str(tmp_path), "")


def test_a_clean_sink_with_its_canary_is_clean(tmp_path):
    (tmp_path / "log").write_text("[DEBUG   ] nothing here\n")
    sink = scan(local_run, "logs", SECRETS, ["[DEBUG   ]"], paths=[str(tmp_path)])
    assert sink.clean, sink


def test_a_missing_path_fails_the_check(tmp_path):
    (tmp_path / "log").write_text("[DEBUG   ] nothing here\n")
    sink = scan(local_run, "logs", SECRETS, ["[DEBUG   ]"],
                paths=[str(tmp_path), str(tmp_path / "missing")])
    assert not sink.clean
    assert any("exit 2" in p for p in sink.problems), sink.problems


def test_a_sink_without_its_canary_fails_the_check(tmp_path):
    (tmp_path / "log").write_text("[INFO    ] info only\n")
    sink = scan(local_run, "logs", SECRETS, ["[DEBUG   ]"], paths=[str(tmp_path)])
    assert any("not found" in p for p in sink.problems), sink.problems


def test_an_empty_directory_fails_the_check(tmp_path):
    sink = scan(local_run, "cache", SECRETS, ["state id"], paths=[str(tmp_path)])
    assert any("not found" in p for p in sink.problems), sink.problems


def test_a_commands_output_is_searched_and_its_failure_fails_the_check():
    printed = scan(local_run, "out", SECRETS, ["ok"],
                   command=["sh", "-c", "echo ok; echo not-a-real-psk-5d1c >&2"])
    assert printed.hits == {"psk": ["out"]} and printed.problems == []
    failed = scan(local_run, "out", SECRETS, ["ok"], command=["sh", "-c", "echo ok; exit 3"])
    assert failed.hits == {} and any("exit 3" in p for p in failed.problems)


def test_the_needles_go_on_stdin_never_in_an_argv():
    seen = []

    def run(argv, input=None, timeout=None):
        seen.append((argv, input))
        return local_run(argv, input=input, timeout=timeout)

    scan(run, "out", SECRETS, ["x"], command=["echo", "x"])
    (argv, given), = seen
    assert not any(n in " ".join(argv) for strings in SECRETS.values() for n in strings)
    assert "not-a-real-psk-5d1c\n" in given


def test_a_file_that_vanishes_while_grep_walks_makes_it_scan_again(tmp_path):
    (tmp_path / "log").write_text("canary\n")
    calls = []

    def run(argv, input=None, timeout=None):
        calls.append(argv)
        result = local_run(argv, input=input, timeout=timeout)
        if len(calls) == 1:
            result.stderr = f"grep: {tmp_path}/proc/123: No such file or directory\n"
        return result

    assert scan(run, "cache", SECRETS, ["canary"], paths=[str(tmp_path)]).clean
    assert len(calls) == 2


def test_paths_without_keeps_everything_but_the_excluded(tmp_path):
    for sub in ("jobs/a", "pillar/vpn-gw1", "minions/x/data", "minions/y"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "file").write_text("")
    kept = paths_without(local_run, str(tmp_path),
                         [f"{tmp_path}/pillar", f"{tmp_path}/minions/x/data"])
    assert sorted(kept) == [f"{tmp_path}/{p}" for p in ("file", "jobs", "minions/y")]
    with pytest.raises(AssertionError, match="do not exist"):
        paths_without(local_run, str(tmp_path), [f"{tmp_path}/nothing"])


def test_every_secret_of_the_example_pillar_is_found_and_decrypted():
    found = pillar_secrets(REPO / "pillar")
    assert {"vpn_gateway:monitoring:webhook_url", "vpn_gateway:pooler:users:app:password",
            "vpn_gateway:pooler:users:pooler_admin:password",
            "vpn_gateway:pooler:users:pooler_stats:password",
            "vpn_gateway:tunnel:psk"} <= set(found)
    assert found["vpn_gateway:tunnel:psk"] == peers.EXAMPLE_PSK
    assert found["vpn_gateway:pooler:users:app:password"] == postgres.PASSWORD
    strings = needles(found)
    url = found["vpn_gateway:monitoring:webhook_url"]
    assert strings["vpn_gateway:monitoring:webhook_url"] == [url, "/hooks/lab-only"]
    assert all(strings[k] == [v] for k, v in found.items()
               if "webhook" not in k and "\n" not in v)
    assert all(strings.values())


def test_a_key_of_several_lines_is_searched_line_by_line():
    lines = ["MIGHAgEAMBMGByqGSM49AgEGCCqG", "SM49AwEHBG0wawIBAQQg"]
    key = "-----BEGIN PRIVATE KEY-----\n" + "\n".join(lines) + "\nab\n-----END PRIVATE KEY-----\n"
    assert needles({"key": key}) == {"key": lines}


# A stand-in for a minion: it forks a child that starts a program with the
# secret in its argv (as a careless state would), then waits to be stopped.
MINION = """
import subprocess, sys, time
subprocess.run(["/bin/echo", "--password=" + sys.argv[1]], stdout=subprocess.DEVNULL)
subprocess.run(["/bin/true"])
time.sleep(60)
"""


class FakeHost:
    """A lab host's part that ExecTrace uses, on this machine: nsenter_argv runs the
    argv as it is; run records systemctl and stops the stand-in minion for pkill."""

    name = "fake-minion"

    def __init__(self):
        self.calls = []

    def nsenter_argv(self, cmd):
        return cmd

    def run(self, cmd, check=False):
        self.calls.append(cmd[:2])
        if cmd[0] == "pkill":  # never on this machine: only the stand-in
            subprocess.run(["pkill", "-TERM", "-f", MINION_TAG])
        return SimpleNamespace(ok=True)


MINION_TAG = "vgw-fake-salt-minion-5d1c"


def test_an_argv_is_recorded_by_strace_running_the_minion(tmp_path):
    secret = SECRETS["psk"][0]
    host = FakeHost()
    minion = [sys.executable, "-c", MINION, secret, MINION_TAG]
    answered = []

    def ready(h):  # the traced minion "answers" once its child's execve is recorded
        trace = tmp_path / f"{h.name}.execve"
        answered.append(trace.exists() and 'execve("/bin/true"' in trace.read_text())
        return answered[-1]

    with ExecTrace([host], tmp_path, minion, ready, timeout=30) as trace:
        assert answered[-1]
    assert host.calls == [["systemctl", "stop"], ["pkill", "-TERM"], ["systemctl", "start"]]
    sink = scan(local_run, "argv", SECRETS, ['execve("/bin/echo", '],
                paths=[str(trace.files["fake-minion"])])
    assert sink.hits == {"psk": [str(trace.files["fake-minion"])]}, sink


def test_a_minion_that_never_answers_fails_naming_its_warnings_not_its_debug(tmp_path):
    host = FakeHost()
    minion = [sys.executable, "-c",
              "import sys, time; print('[DEBUG   ] Reading configuration', file=sys.stderr); "
              "print('[ERROR   ] The Salt Master has cached the public key', file=sys.stderr); "
              "sys.stderr.flush(); time.sleep(60)", MINION_TAG]
    with pytest.raises(AssertionError) as failed:
        with ExecTrace([host], tmp_path, minion, lambda h: False, timeout=2):
            pass
    assert "not within 2s: the traced salt-minion answers" in str(failed.value)
    assert "The Salt Master has cached the public key" in str(failed.value)
    assert "Reading configuration" not in str(failed.value)
