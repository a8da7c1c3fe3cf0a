"""The pack's logrotate entry never names a log another package's entry already rotates
(issue 13: logrotate fails its whole run on a duplicate log entry): vpn_logrotate.uncovered
against logrotate files in a temporary directory, read with Salt core's parser; the
formula's check_cmd over a whole configuration (the lab test runs it on a gateway)."""
import os
import shlex
import shutil
import subprocess

import pytest
import salt.modules.logrotate as core
import yaml

from repo_modules import REPO, load

pytestmark = pytest.mark.unit

SALT_COMMON = """/var/log/salt/master
/var/log/salt/minion
/var/log/salt/key
{
    weekly
    missingok
    rotate 7
    compress
    notifempty
}
"""
PGBOUNCER_EL = """/var/log/pgbouncer/pgbouncer.log {
    missingok
    compress
    notifempty
    sharedscripts
    create 0640 pgbouncer pgbouncer
    nodateext
    weekly
    rotate 5
}
"""


@pytest.fixture
def rotate(tmp_path):
    module = load("salt/_modules/vpn_logrotate.py")
    module.__salt__ = {"logrotate.show_conf": core.show_conf}
    directory = tmp_path / "logrotate.d"
    directory.mkdir()
    module.dir = directory
    return module


def test_a_log_another_file_rotates_is_left_out(rotate):
    logs = ["/var/log/salt/minion", "/var/log/pgbouncer/*.log", "/srv/app/*.log"]
    assert rotate.uncovered(logs, str(rotate.dir)) == logs
    (rotate.dir / "salt-common").write_text(SALT_COMMON)
    assert rotate.uncovered(logs, str(rotate.dir)) == logs[1:]
    # EL's package entry names the file our glob matches.
    (rotate.dir / "pgbouncer").write_text(PGBOUNCER_EL)
    assert rotate.uncovered(logs, str(rotate.dir)) == ["/srv/app/*.log"]
    assert rotate.covered(logs, str(rotate.dir)) == {
        "/var/log/salt/minion": str(rotate.dir / "salt-common"),
        "/var/log/pgbouncer/*.log": str(rotate.dir / "pgbouncer")}


def test_the_packs_own_file_and_files_logrotate_skips_do_not_count(rotate):
    for name in ("vpn-gateway", "salt-common.dpkg-old", "salt-common.rpmsave", "salt~",
                 ".hidden"):
        (rotate.dir / name).write_text(SALT_COMMON)
    assert rotate.uncovered(["/var/log/salt/minion"], str(rotate.dir)) == [
        "/var/log/salt/minion"]
    assert rotate.uncovered(["/var/log/salt/minion"], str(rotate.dir / "missing")) == [
        "/var/log/salt/minion"]


def test_patterns_overlap_by_text_glob_or_an_existing_file(rotate, tmp_path):
    assert rotate._overlaps("/var/log/salt/minion", "/var/log/salt/*")
    assert rotate._overlaps("/var/log/salt/*", "/var/log/salt/minion")
    assert not rotate._overlaps("/var/log/salt/minion", "/var/log/salt/master")
    (tmp_path / "app.log").write_text("")
    assert rotate._overlaps(f"{tmp_path}/*.log", f"{tmp_path}/app.[l]og")
    assert not rotate._overlaps(f"{tmp_path}/*.log", f"{tmp_path}/other.[l]og")


def check_cmd():
    text = (REPO / "salt/states/vpn_gateway/monitoring.sls").read_text()
    start = text.index("    - check_cmd: |-")
    end = text.index("    - require:", start)
    return yaml.safe_load(text[start:end].replace("    - check_cmd", "check_cmd"))["check_cmd"]


@pytest.mark.skipif(not shutil.which("logrotate"), reason="needs logrotate")
def test_the_check_refuses_a_duplicate_over_the_whole_configuration(tmp_path):
    """Run as Salt runs it (the candidate's path appended, no shell), over this machine's
    /etc/logrotate.conf and /etc/logrotate.d (read only: copies go to a temporary
    directory): a log one of those files names is refused, a new one passes."""
    taken = next((line.split()[0] for f in sorted(os.listdir("/etc/logrotate.d"))
                  for line in open(f"/etc/logrotate.d/{f}", encoding="utf-8")
                  if line.startswith("/") and "*" not in line.split()[0]), None)
    if taken is None:
        pytest.skip("no literal log path in /etc/logrotate.d")

    def check(text):
        candidate = tmp_path / "candidate"
        candidate.write_text(text)
        return subprocess.run(shlex.split(f"{check_cmd()} {candidate}"), capture_output=True,
                              text=True, timeout=60)

    assert check(f"{tmp_path}/new.log {{\n\tmissingok\n}}\n").returncode == 0
    refused = check(f"{taken} {{\n\tmissingok\n}}\n")
    assert refused.returncode == 1
    assert f"duplicate log entry for {taken}" in refused.stderr
