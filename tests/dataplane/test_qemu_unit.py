"""The QEMU guest's pure parts: module order, kernel extraction, command line."""
import gzip
import lzma
import os
import subprocess
import sys

import pytest

from lab import qemu

pytestmark = pytest.mark.unit


def test_modules_come_after_their_dependencies(tmp_path):
    (tmp_path / "modules.dep").write_text(
        "kernel/fs/9p/9p.ko: kernel/fs/netfs/netfs.ko kernel/net/9p/9pnet.ko\n"
        "kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko\n"
        "kernel/net/9p/9pnet.ko:\n"
        "kernel/fs/netfs/netfs.ko:\n"
        "kernel/drivers/virtio/virtio.ko:\n"
        "kernel/fs/unused.ko:\n")
    order = qemu._module_order(tmp_path, ["9pnet_virtio", "9p"])
    assert order == ["kernel/net/9p/9pnet.ko", "kernel/drivers/virtio/virtio.ko",
                     "kernel/net/9p/9pnet_virtio.ko", "kernel/fs/netfs/netfs.ko",
                     "kernel/fs/9p/9p.ko"]


def test_a_missing_module_is_named(tmp_path):
    (tmp_path / "modules.dep").write_text("kernel/fs/9p/9p.ko:\n")
    with pytest.raises(qemu.GuestError, match="no module overlay"):
        qemu._module_order(tmp_path, ["overlay"])


@pytest.mark.parametrize("compress", [lzma.compress, gzip.compress])
def test_the_elf_kernel_is_found_inside_a_bzimage(tmp_path, compress):
    elf = b"\x7fELF" + bytes(range(256)) * 64
    bzimage = tmp_path / "vmlinuz"
    bzimage.write_bytes(b"MZ setup code \x1f\x8b but not gzip" + compress(elf) + b"\0" * 100)
    assert qemu._vmlinux(bzimage) == elf


def test_a_bzimage_without_a_known_payload_is_refused(tmp_path):
    bzimage = tmp_path / "vmlinuz"
    bzimage.write_bytes(b"MZ" + b"\0" * 4096)
    with pytest.raises(qemu.GuestError, match="no xz- or gzip-compressed ELF"):
        qemu._vmlinux(bzimage)


def test_the_guest_has_no_network_and_the_host_root_is_read_only(tmp_path):
    kern = qemu.Kernel(tmp_path / "6.1.0-99-amd64")
    argv = qemu.qemu_argv(kern, tmp_path / "initramfs.cpio", tmp_path / "exchange", "2G", 2)
    assert argv[argv.index("-nic") + 1] == "none" and "-nodefaults" in argv
    assert not any(a.startswith(("-netdev", "-net")) and a != "-nic" for a in argv)
    fsdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-fsdev"]
    shares = {dict(kv.split("=", 1) for kv in f.split(",")[1:] if "=" in kv)["id"]: f
              for f in fsdevs}
    assert set(shares) == {"hostroot", "kmods", "exchange", "repo"}
    assert "path=/," in shares["hostroot"] and "readonly=on" in shares["hostroot"]
    assert "readonly=on" in shares["kmods"] and "readonly=on" not in shares["exchange"]
    assert f"path={tmp_path / 'exchange'}," in shares["exchange"]
    # the repo at its own path, also where the guest's fresh /tmp would hide it
    assert f"path={qemu.REPO}," in shares["repo"] and "readonly=on" in shares["repo"]
    assert f"vgw_repo={qemu.REPO} " in argv[argv.index("-append") + 1]


def test_pytest_summary_is_read_as_counts():
    assert qemu.pytest_outcomes("...\n==== 2 passed, 1 skipped in 3.10s ====\n") == {
        "passed": 2, "skipped": 1}
    assert qemu.pytest_outcomes("") == {}


def test_only_the_exchange_dirs_of_runs_that_are_gone_are_orphans(tmp_path, monkeypatch):
    monkeypatch.setattr(qemu, "RUNS", tmp_path)
    ended = subprocess.Popen(["true"])
    ended.wait()
    mine = tmp_path / f"vgwguest-{os.getpid()}-a"
    killed = tmp_path / f"vgwguest-{ended.pid}-b"
    named = tmp_path / "vgwguest-c"  # no run's pid (older runs): live while a process names it
    for path in (mine, killed, named):
        path.mkdir()
    qemu_standin = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                     str(named)])
    try:
        assert qemu.orphaned_exchanges() == [killed]
    finally:
        qemu_standin.kill()
        qemu_standin.wait()
    assert qemu.orphaned_exchanges() == [killed, named]
