"""apply_conn when a file cannot be written (issue 14, faults after validation: the
disk full under /etc/ipsec.d): the state fails with the path and the reason, the old
files stay byte for byte, pluto is not reloaded, and a secrets file written before
the failing conf file is put back. The lab test (tests/libreswan/test_lab.py, debian13:
a full tmpfs over /etc/ipsec.d) shows the same against the real pluto."""
import errno
import os

import pytest
from test_apply_conn_unit import BACKUP, OTHER_PSK, TUNNEL, FakePluto, apply
from test_apply_conn_unit import module as apply_conn_module  # noqa: F401 (a fixture)

pytestmark = pytest.mark.unit


@pytest.fixture
def tunnel(apply_conn_module):  # noqa: F811
    """The libreswan module over the tunnel's files in a temporary CONF_DIR, as
    test_apply_conn_unit sets it up (pluto running them)."""
    return apply_conn_module


def disk_full_for(module, full):
    """module._write_atomic as on a full disk for the paths in ``full`` (the real writer
    for the others): ENOSPC as the kernel gives it, before anything is renamed."""
    real = module._write_atomic

    def write(path, text, mode):
        if path in full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, text, mode)

    module._write_atomic = write


def files(module):
    return tuple(open(path).read() for path in module._paths(TUNNEL))


def test_a_conf_file_that_cannot_be_written_fails_clearly_and_touches_nothing(tunnel):
    conf_path, _ = tunnel._paths(TUNNEL)
    before = files(tunnel)
    disk_full_for(tunnel, {conf_path})
    pluto = FakePluto(tunnel)
    _, applied = apply(tunnel, pluto, dpddelay=21)
    assert applied["result"] is False and applied["changes"] == {}, applied
    assert applied["comment"].startswith(
        f"cannot write {conf_path}: No space left on device"), applied
    assert "pluto was not reloaded" in applied["comment"]
    assert files(tunnel) == before
    assert pluto.touched(TUNNEL) == [] and pluto.touched(BACKUP) == [], pluto.calls


def test_a_secrets_file_written_before_the_failing_conf_is_put_back(tunnel):
    conf_path, secrets_path = tunnel._paths(TUNNEL)
    before = files(tunnel)
    tunnel.__salt__["pillar.get"] = lambda key, default=None, unmask=False: OTHER_PSK
    disk_full_for(tunnel, {conf_path})
    pluto = FakePluto(tunnel)
    _, applied = apply(tunnel, pluto, dpddelay=21)
    assert applied["result"] is False and applied["changes"] == {}, applied
    assert f"{secrets_path} was put back" in applied["comment"], applied
    assert files(tunnel) == before
    # re-read after the new secrets and again after the old ones came back; nothing loaded
    assert pluto.calls.count(("whack", "--rereadsecrets")) == 2, pluto.calls
    assert pluto.touched(TUNNEL) == [] and pluto.touched(BACKUP) == [], pluto.calls
    assert OTHER_PSK not in repr(applied) + repr(pluto.calls)


def test_a_secrets_file_that_cannot_be_written_leaves_the_old_one(tunnel):
    _, secrets_path = tunnel._paths(TUNNEL)
    before = files(tunnel)
    tunnel.__salt__["pillar.get"] = lambda key, default=None, unmask=False: OTHER_PSK
    disk_full_for(tunnel, {secrets_path})
    pluto = FakePluto(tunnel)
    _, applied = apply(tunnel, pluto)
    assert applied["result"] is False and applied["changes"] == {}, applied
    assert applied["comment"].startswith(f"cannot write {secrets_path}: No space left"), applied
    assert files(tunnel) == before and ("whack", "--rereadsecrets") not in pluto.calls
    assert OTHER_PSK not in repr(applied)


def test_the_atomic_write_on_a_full_disk_leaves_no_temporary_file(tunnel, tmp_path, monkeypatch):
    """The real writer with the disk full: the temporary file atomic_open makes beside the
    conf file writes to /dev/full (ENOSPC as a full filesystem gives it). The old file stays
    and no temporary file is left (Salt's atomic_open closes the file before removing it,
    which flushes the refused text again and raises first: seen in the lab with a full
    /etc/ipsec.d)."""
    import salt.utils.atomicfile

    conf_path, _ = tunnel._paths(TUNNEL)
    before = files(tunnel)
    made = salt.utils.atomicfile.tempfile.NamedTemporaryFile

    def full(*args, **kwargs):
        handle = made(*args, **kwargs)
        device = os.open("/dev/full", os.O_WRONLY)
        os.dup2(device, handle.fileno())
        os.close(device)
        return handle

    monkeypatch.setattr(salt.utils.atomicfile.tempfile, "NamedTemporaryFile", full)
    with pytest.raises(OSError) as failed:
        tunnel._write_atomic(conf_path, "dpddelay=21\n", 0o644)
    assert failed.value.errno == errno.ENOSPC
    assert files(tunnel) == before
    left = sorted(os.listdir(os.path.dirname(conf_path)))
    assert left == ["remote-db.conf", "remote-db.secrets"], left
