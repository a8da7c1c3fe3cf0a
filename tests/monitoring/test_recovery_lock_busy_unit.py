"""The recovery lock while a recovery ladder keeps it (docs/monitoring.md, "Recovery and
state runs"): the lock state fails, saying it waited, and vpn_gateway.recovery_lock
(failhard) stops the run there, so no state after it changes the host while a ladder
restarts pluto or flushes xfrm. Issue 14's mutation check found both unguarded: with the
lock state reporting success on a busy lock, or with failhard dropped from
recovery_lock.sls, the whole suite stayed green.

The state run goes through ``salt-call --local`` over this repo's SLS tree, with the
recovery module's lock directory moved into the test's temporary directory (a copy of
salt/_modules/libreswan_recovery.py with that one constant changed), so this machine's
own /run/vpn-gateway is never touched."""
import fcntl
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lab import saltstack
from repo_modules import REPO, load

pytestmark = pytest.mark.unit

SALT_CALL = Path(sys.executable).parent / "salt-call"
LOCK_DIR = 'LOCK_DIR = "/run/vpn-gateway"'
LOCK_ID = "libreswan_|-vpn_gateway_recovery_lock_|-vpn_gateway_recovery_lock_|-recovery_lock"
# A state run of the role's lock states and one change after them; the lock waits 1 s,
# not the role's 300.
PROBE = """\
include:
  - vpn_gateway.recovery_lock

extend:
  vpn_gateway_recovery_lock:
    libreswan.recovery_lock:
      - timeout: 1

lockprobe_marker:
  file.managed:
    - name: {marker}
    - contents: the state run went on
"""


def hold_like_a_ladder(lock_dir):
    """An open file holding the host's recovery lock, as a ladder's ``_locked`` takes it."""
    lock_dir.mkdir(exist_ok=True)
    handle = open(lock_dir / "recovery.lock", "a+")  # noqa: SIM115 - closed by the caller
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return handle


def test_the_lock_state_fails_while_a_ladder_keeps_the_lock(tmp_path, monkeypatch):
    module = load("salt/_modules/libreswan_recovery.py")
    monkeypatch.setattr(module, "LOCK_DIR", str(tmp_path / "run"))
    assert not module._held()  # no earlier test left a state run's hold in this process
    states = load("salt/_states/libreswan_recovery.py")
    states.__salt__ = {"libreswan.hold_recovery_lock": module.hold_recovery_lock,
                       "libreswan.release_recovery_lock": module.release_recovery_lock}
    states.__opts__ = {"test": False}
    with module._locked() as mine:  # a recovery ladder holds it
        assert mine
        taken = states.recovery_lock("vpn_gateway_recovery_lock", timeout=0.5)
        released = states.recovery_lock_released("vpn_gateway_recovery_lock_released")
    assert (taken["result"], taken["changes"]) == (False, {}), taken
    assert taken["comment"] == ("the recovery lock stayed busy for 0.5s "
                                "(a recovery ladder is running): nothing applied")
    assert (released["result"], released["changes"]) == (True, {})
    assert released["comment"] == "the recovery lock was not held by this run"
    assert not module._held()


@pytest.fixture
def salt_call(tmp_path):
    """``salt-call --local`` over the repo's SLS tree plus a probe SLS, with the recovery
    lock in ``tmp_path/run``; returns ``(run, lock_dir, marker)``."""
    lock_dir, marker = tmp_path / "run", tmp_path / "marker"
    modules, sls = tmp_path / "modules", tmp_path / "sls"
    modules.mkdir()
    sls.mkdir()
    text = (REPO / "salt/_modules/libreswan_recovery.py").read_text()
    assert text.count(LOCK_DIR) == 1
    (modules / "libreswan_recovery.py").write_text(
        text.replace(LOCK_DIR, f"LOCK_DIR = {str(lock_dir)!r}"))
    (sls / "lockprobe.sls").write_text(PROBE.format(marker=marker))
    config = saltstack.local_minion_config(REPO, tmp_path / "no-pillar")
    config.update({
        "file_roots": {"base": [str(sls), *config["file_roots"]["base"]]},
        "module_dirs": [str(modules)],
        "root_dir": str(tmp_path), "log_file": str(tmp_path / "minion.log"),
        "cachedir": str(tmp_path / "cache"), "pki_dir": str(tmp_path / "pki"),
        "sock_dir": str(tmp_path / "sock"), "id": "vpn-gw1"})
    (tmp_path / "minion").write_text(yaml.safe_dump(config))

    def run():
        proc = subprocess.run([str(SALT_CALL), "--local", f"--config-dir={tmp_path}",
                               "--out=json", "state.apply", "lockprobe"],
                              capture_output=True, text=True, timeout=180)
        returned = json.loads(proc.stdout)["local"] if proc.stdout else proc.stderr
        assert isinstance(returned, dict), returned
        return returned

    return run, lock_dir, marker


def test_a_state_run_stops_at_a_busy_lock_before_its_first_change(salt_call):
    run, lock_dir, marker = salt_call
    ladder = hold_like_a_ladder(lock_dir)
    try:
        stopped = run()
    finally:
        ladder.close()
    assert not marker.exists(), "a state after the failed lock state ran"
    assert stopped[LOCK_ID]["result"] is False
    assert "stayed busy for 1s" in stopped[LOCK_ID]["comment"]
    assert [r["changes"] for r in stopped.values() if r["changes"]] == []
    # The probe itself applies once the lock is free: the lock held, the change made,
    # the lock let go.
    applied = run()
    assert marker.read_text() == "the state run went on\n"
    assert all(r["result"] is True for r in applied.values()), applied
    assert applied[LOCK_ID]["comment"].startswith("recovery lock held since")
    assert [r["comment"] for key, r in applied.items()
            if "recovery_lock_released" in key][0].startswith("recovery lock released at")
