"""Fixtures of the data-plane tests: run test paths inside a fresh QEMU guest."""
import pytest

from lab import qemu


@pytest.fixture(scope="module")
def guest_pytest(esp):
    """``guest_pytest(paths, *pytest_args)``: pytest on ``paths`` in a fresh QEMU guest.

    Returns a GuestResult (returncode, stdout, stderr, timings). Skips, naming
    both reasons, when neither this kernel nor QEMU can provide ESP.
    """
    supported, kernel_reason = esp
    usable, guest_reason = qemu.available()
    if not usable:
        pytest.skip(f"no ESP here: {kernel_reason}; and no guest: {guest_reason}")

    def run(paths, *args, timeout=1500):
        return qemu.pytest(paths, "-rA", *args, timeout=timeout)

    return run
