"""The metrics textfile (salt/_modules/vpn_metrics.py, issue 17): the exposition
format as Prometheus' own parser reads it (``promtool check metrics``: syntax and
naming lint), the names in docs/monitoring.md's table, byte counters that never go
down across rekeys and pluto restarts, the info metric and the stale-metrics
timestamp."""
import configparser
import copy
import os
import re
import shutil
import subprocess

import pytest

from monitoring_helpers import REPO, load, parsed_status

pytestmark = pytest.mark.unit

recovery = load("salt/_modules/libreswan_recovery.py")
metrics = load("salt/_modules/vpn_metrics.py")

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing: scripts/install (Debian package prometheus)")

PLUTO_STOPPED = {"running": False, "error": "whack: Pluto is not running", "conns": {},
                 "tunnels": {}}
POOLS = [{"database": 'app"db', "user": "app", "cl_active": 5, "cl_waiting": 4, "maxwait": 2,
          "maxwait_us": 500000, "sv_active": 3, "sv_idle": 1, "sv_used": 0}]
DATABASES = [{"name": 'app"db', "max_connections": 20, "current_connections": 4},
             {"name": "reports", "max_connections": 0, "current_connections": 1}]
INFO = {"version": "0.1.0", "libreswan_version": "5.2", "pgbouncer_version": "1.24"}


def promtool_check(text):
    """``promtool check metrics`` on ``text``: (exit code, its complaints)."""
    proc = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30)
    return proc.returncode, proc.stdout + proc.stderr


def full_text(now=1700000001):
    status = parsed_status("4.10-backup-ike-up.status")
    healths = {"remote-db": recovery._health(status, "remote-db", "ike_sa")}
    memory = {"remote-db": {"recoveries": {"success": 2, "failure": 1}}}
    changes = {"remote-db": {"state": "failover", "since": 1700000000.5}}
    return metrics._render(status, healths, memory, changes, POOLS, now, info=INFO,
                           databases=DATABASES)


@needs_promtool
def test_promtool_reads_the_textfile_without_a_complaint():
    """Prometheus' own parser and its naming lint (counters end in _total, base units,
    one TYPE per family): red with a counter named without _total or a unit in ms."""
    code, out = promtool_check(full_text())
    assert code == 0 and not out.strip(), out
    without = promtool_check(metrics._render(
        PLUTO_STOPPED, {"remote-db": recovery._health(PLUTO_STOPPED, "remote-db", "ike_sa")},
        {}, {}, False, 0))
    assert without == (0, ""), without
    # the oracle itself: promtool does complain about what the conventions forbid
    bad = "# HELP x_bytes b\n# TYPE x_bytes counter\nx_bytes 1\n"
    assert promtool_check(bad)[0] != 0


def test_samples_by_their_documented_names():
    samples = set(full_text().splitlines())
    for line in ('vpn_gateway_build_info{version="0.1.0",libreswan_version="5.2",'
                 'pgbouncer_version="1.24"} 1',
                 "vpn_gateway_ipsec_up 1",
                 'vpn_gateway_ipsec_ike_sa_established{conn="remote-db-backup"} 1',
                 'vpn_gateway_ipsec_ike_sa_established{conn="remote-db"} 0',
                 'vpn_gateway_ipsec_child_sa_established{conn="remote-db-backup"} 0',
                 'vpn_gateway_ipsec_child_sa_bytes_in_total{conn="remote-db"} 0',
                 'vpn_gateway_tunnel_up{tunnel="remote-db"} 1',
                 'vpn_gateway_tunnel_state{tunnel="remote-db",state="failover"} 1',
                 'vpn_gateway_tunnel_active_peer{tunnel="remote-db",peer="backup"} 1',
                 'vpn_gateway_tunnel_active_peer{tunnel="remote-db",peer="primary"} 0',
                 'vpn_gateway_tunnel_recoveries_total{tunnel="remote-db",result="failure"} 1',
                 'vpn_gateway_tunnel_last_change_timestamp_seconds{tunnel="remote-db"} '
                 '1700000000.5',
                 "vpn_gateway_pgbouncer_up 1",
                 'vpn_gateway_pgbouncer_pools_client_waiting_connections{database="app\\"db",'
                 'user="app"} 4',
                 'vpn_gateway_pgbouncer_pools_client_active_connections{database="app\\"db",'
                 'user="app"} 5',
                 'vpn_gateway_pgbouncer_pools_server_active_connections{database="app\\"db",'
                 'user="app"} 3',
                 'vpn_gateway_pgbouncer_pools_client_maxwait_seconds{database="app\\"db",'
                 'user="app"} 2.5',
                 'vpn_gateway_pgbouncer_databases_max_connections{database="app\\"db"} 20',
                 'vpn_gateway_pgbouncer_databases_current_connections{database="reports"} 1',
                 "vpn_gateway_metrics_last_success_timestamp_seconds 1700000001"):
        assert line in samples, line
    assert full_text().count("# TYPE vpn_gateway_ipsec_ike_sa_established gauge") == 1


def test_without_pluto_or_pgbouncer():
    text = metrics._render(PLUTO_STOPPED,
                           {"remote-db": recovery._health(PLUTO_STOPPED, "remote-db", "ike_sa")},
                           {}, {}, False, 0)
    assert "vpn_gateway_ipsec_up 0" in text
    assert 'vpn_gateway_tunnel_up{tunnel="remote-db"} 0' in text
    assert "vpn_gateway_pgbouncer_up 0" in text
    assert "client_waiting" not in text and "vpn_gateway_metrics_last_success" in text


def documented_metrics():
    """The metric names in docs/monitoring.md's metric table (first column)."""
    text = (REPO / "docs" / "monitoring.md").read_text()
    section = text.split("## Metrics (node_exporter textfile)", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(vpn_gateway_[a-z_]+)` \|", section, re.M)


def test_the_docs_table_names_every_metric_and_only_those():
    assert sorted(documented_metrics()) == sorted(metrics.METRICS)


def test_names_follow_the_conventions():
    for name, (kind, _) in metrics.METRICS.items():
        assert name.startswith("vpn_gateway_"), name
        assert name.endswith("_total") == (kind == "counter"), name
        assert not re.search(r"_(ms|milliseconds|kb|mb|percent|count)(_|$)", name), name
        if "timestamp" in name or "maxwait" in name:
            assert name.endswith("_seconds"), name
        if name.endswith("_info"):
            assert kind == "gauge"


def test_the_pack_version_is_setup_cfg_s():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert metrics.PACK_VERSION == cfg.get("metadata", "version")


# -- byte counters across rekeys and pluto restarts ---------------------------------------------
def status_with(*sas, running=True):
    """A libreswan.status with conn remote-db's Child SAs ``(serial, in, out)``."""
    return {"running": running, "conns": {} if not running else {"remote-db": {
        "ike_established": True, "child_established": bool(sas),
        "child_sas": [{"serial": s, "established": True, "in_bytes": i, "out_bytes": o}
                      for s, i, o in sas]}}}


SEQUENCE = [  # (status, expected in total, expected out total)
    (status_with((3, 1000, 2000)), 1000, 2000),
    (status_with((3, 1500, 2600)), 1500, 2600),
    (status_with((3, 1700, 2700), (5, 10, 20)), 1710, 2720),  # rekey: the new SA beside
    (status_with((5, 100, 200)), 1800, 2900),                 # the old SA gone
    (status_with(running=False), 1800, 2900),                 # pluto stopped / hung
    (status_with((1, 50, 60)), 1850, 2960),                   # restarted: serials from 1
    (status_with((1, 70, 80)), 1870, 2980),
    (status_with((1, 30, 40)), 1900, 3020),  # restarted again: serial 1 with fewer bytes
]


def test_byte_counters_keep_a_running_total_across_rekeys_and_restarts():
    """Red when the total is the SAs' current sum (it fell at every SA replacement)."""
    kept, seen = None, []
    for status, want_in, want_out in SEQUENCE:
        kept = metrics._advance_counters(copy.deepcopy(kept), status)
        seen.append((kept["remote-db"]["in"], kept["remote-db"]["out"]))
        assert seen[-1] == (want_in, want_out), seen
    assert seen == sorted(seen)


class FakeSalt(dict):
    """The __salt__ vpn_metrics.write uses, with a status the test replaces."""

    def __init__(self, state_dir, path):
        self.status = status_with()
        super().__init__({
            "libreswan.monitoring_settings": lambda: {"state_dir": state_dir,
                                                      "metrics": {"path": path}},
            "libreswan.monitoring_memory": lambda what="recovery": {},
            "libreswan.status": lambda timeout=None, reasons=True: self.status,
            "libreswan.health": lambda timeout=None, reasons=True: {"remote-db": recovery._health(
                dict(self.status, tunnels={}), "remote-db", "ike_sa")},
            "libreswan.version": lambda: {"version": "5.2", "installed": True},
        })


def totals(text):
    return {m.group(1): int(m.group(2)) for m in re.finditer(
        r'^vpn_gateway_ipsec_child_sa_bytes_(in|out)_total\{conn="remote-db"\} (\d+)$',
        text, re.M)}


def test_write_keeps_the_totals_in_the_state_dir_and_the_file_is_readable(tmp_path):
    """Each write is a fresh module (a schedule run is a new process): the total lives only
    in the state dir, and a rekey between two writes does not lower it."""
    path, state_dir = tmp_path / "textfile" / "vpn_gateway.prom", tmp_path / "lib"
    path.parent.mkdir()
    written = []
    for status, want_in, _ in SEQUENCE:
        module = load("salt/_modules/vpn_metrics.py")
        module.__salt__ = FakeSalt(str(state_dir), str(path))
        module.__salt__.status = status
        assert module.write()["path"] == str(path)
        written.append(totals(path.read_text()))
        assert written[-1]["in"] == want_in, written
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    assert (state_dir / "metrics-counters.json").exists()
    assert [p.name for p in path.parent.iterdir()] == ["vpn_gateway.prom"]  # no temp left
    text = path.read_text()
    assert 'vpn_gateway_build_info{version="0.1.0",libreswan_version="5.2",' \
           'pgbouncer_version=""} 1' in text
    assert re.search(r"^vpn_gateway_metrics_last_success_timestamp_seconds \d+", text, re.M)
    if PROMTOOL:
        assert promtool_check(text) == (0, "")


def test_a_failed_collection_leaves_the_last_file_and_its_timestamp(tmp_path):
    """The stale-metrics signal: when collecting fails the old file (and its last-success
    time) stays, so the MetricsStale alert sees the age grow."""
    path, state_dir = tmp_path / "vpn_gateway.prom", tmp_path / "lib"
    module = load("salt/_modules/vpn_metrics.py")
    module.__salt__ = FakeSalt(str(state_dir), str(path))
    module.write()
    before = path.read_text()

    def broken(timeout=None, reasons=True):
        raise RuntimeError("status failed")

    module.__salt__["libreswan.status"] = broken
    with pytest.raises(RuntimeError):
        module.write()
    assert path.read_text() == before
