"""vpn_metrics.write on a full disk (issue 14, faults after validation): the metrics textfile
and the byte counters' running totals (the libreswan Child SAs' bytes, kept in the state
dir) fail with ENOSPC, the old files stay byte for byte and no temporary file is left
beside them (Salt's atomic_open closes its temporary file before removing it, and the
close flushes the refused text again and raises first; a text written without an error
fails in atomic_open's own close, which leaves its temporary file too). The temporary files
write to /dev/full: ENOSPC as a full filesystem gives it. (Here, not in tests/monitoring,
by the file ownership of the session that wrote it.)"""
import errno
import json
import os

import pytest
from repo_modules import load

pytestmark = pytest.mark.unit

STATUS = {"running": True, "tunnels": {}, "conns": {"remote-db": {
    "ike_established": True, "child_established": True,
    "child_sas": [{"serial": 3, "established": True, "in_bytes": 1000, "out_bytes": 2000}]}}}


@pytest.fixture
def metrics(tmp_path):
    """vpn_metrics with a __salt__ of one established tunnel, writing under tmp_path."""
    module = load("salt/_modules/vpn_metrics.py")
    (tmp_path / "textfile").mkdir()
    settings = {"state_dir": str(tmp_path / "lib"),
                "metrics": {"path": str(tmp_path / "textfile" / "vpn_gateway.prom")}}
    module.__salt__ = {
        "libreswan.monitoring_settings": lambda: settings,
        "libreswan.monitoring_memory": lambda what="recovery": {},
        "libreswan.status": lambda timeout=None, reasons=True: STATUS,
        "libreswan.health": lambda timeout=None, reasons=True: {},
        "libreswan.version": lambda: {"version": "5.2", "installed": True},
    }
    module.write()  # the last good files
    return module


def on_dev_full(monkeypatch, which):
    """atomic_open's temporary file for the file names in ``which`` writes to /dev/full."""
    import salt.utils.atomicfile
    real = salt.utils.atomicfile.atomic_open

    def atomic_open(filename, mode="w"):
        if os.path.basename(filename) not in which:
            return real(filename, mode)
        handle = real(filename, mode)
        device = os.open("/dev/full", os.O_WRONLY)
        os.dup2(device, handle.fileno())
        os.close(device)
        return handle

    monkeypatch.setattr(salt.utils.atomicfile, "atomic_open", atomic_open)


def listing(tmp_path):
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))


def contents(tmp_path):
    return {name: (tmp_path / name).read_text() for name in (
        "textfile/vpn_gateway.prom", "lib/metrics-counters.json")}


@pytest.mark.parametrize("full", ["vpn_gateway.prom", "metrics-counters.json"])
def test_a_full_disk_keeps_the_last_files_and_leaves_no_temporary(
        metrics, tmp_path, monkeypatch, full):
    files, before = listing(tmp_path), contents(tmp_path)
    assert json.loads(before["lib/metrics-counters.json"])["conns"]["remote-db"]["in"] == 1000
    on_dev_full(monkeypatch, {full})
    with pytest.raises(OSError) as failed:
        metrics.write()
    assert failed.value.errno == errno.ENOSPC
    assert listing(tmp_path) == files
    if full == "metrics-counters.json":  # the textfile is written after the totals
        assert contents(tmp_path) == before
    else:
        assert contents(tmp_path)["textfile/vpn_gateway.prom"] == \
            before["textfile/vpn_gateway.prom"]
