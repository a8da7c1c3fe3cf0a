"""PgBouncer's writers on a full disk (issue 14, faults after validation): pgbouncer.ini,
the auth and HBA files (``write_file``) and the ownership record (``_set_owned``) fail with
ENOSPC, the old file stays byte for byte and no temporary file is left beside it (Salt's
atomic_open closes its temporary file before removing it; the close flushes the refused
text again and raises first, so ``.___atomic_write*`` stayed). The temporary file writes
to /dev/full: ENOSPC as a full filesystem gives it."""
import errno
import json
import os

import pytest
from repo_modules import load

pytestmark = pytest.mark.unit


@pytest.fixture
def pgb(tmp_path):
    module = load("salt/_modules/pgbouncer.py")
    options = {"pgbouncer.user": "root", "pgbouncer.group": "root",
               "pgbouncer.owned_file": str(tmp_path / "owned.json")}
    module.__salt__ = {"config.get": lambda key, default=None: options.get(key, default)}
    module.__opts__ = {"test": False}
    return module


@pytest.fixture
def disk_full(monkeypatch):
    """Every temporary file atomic_open makes from now on writes to /dev/full."""
    import salt.utils.atomicfile
    made = salt.utils.atomicfile.tempfile.NamedTemporaryFile

    def on_dev_full(*args, **kwargs):
        handle = made(*args, **kwargs)
        device = os.open("/dev/full", os.O_WRONLY)
        os.dup2(device, handle.fileno())
        os.close(device)
        return handle

    monkeypatch.setattr(salt.utils.atomicfile.tempfile, "NamedTemporaryFile", on_dev_full)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to root needs root")
@pytest.mark.parametrize("size", [40, 100_000], ids=["buffered", "larger-than-the-buffer"])
def test_write_file_on_a_full_disk_keeps_the_old_file_and_leaves_no_temporary(
        pgb, tmp_path, disk_full, size):
    path = tmp_path / "userlist.txt"
    path.write_text('"app" "SCRAM-SHA-256$old"\n')
    os.chmod(path, 0o640)
    with pytest.raises(OSError) as failed:
        pgb.write_file(str(path), "x" * size, mode=0o640, group="root")
    assert failed.value.errno == errno.ENOSPC
    assert path.read_text() == '"app" "SCRAM-SHA-256$old"\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["userlist.txt"]


def test_the_ownership_record_on_a_full_disk_stays_and_leaves_no_temporary(
        pgb, tmp_path, disk_full):
    record = tmp_path / "owned.json"
    record.write_text(json.dumps({"databases": [], "users": ["app"]}))
    with pytest.raises(OSError) as failed:
        pgb.set_owned("users", "other")
    assert failed.value.errno == errno.ENOSPC
    assert json.loads(record.read_text()) == {"databases": [], "users": ["app"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["owned.json"]
