"""Fixtures of the data-plane tests: the ESP tests run inside fresh QEMU guests.

A guest run takes minutes of TCG, so tests/conftest.py starts the guests in the
background as soon as collection ends (lab.qemu.GuestRuns), while the host
labs run, and moves tests/dataplane/test_in_guest.py to the end of the
session, where it only collects each platform's result.
"""
import pytest

from lab import qemu


@pytest.fixture
def guest_result(esp, platform):
    """The in-guest pytest run (a GuestResult) of tests/dataplane/esp for ``platform``.

    Skips, naming both reasons, when neither this kernel nor QEMU can provide ESP.
    """
    supported, kernel_reason = esp
    usable, guest_reason = qemu.available()
    if not usable:
        pytest.skip(f"no ESP here: {kernel_reason}; and no guest: {guest_reason}")
    return qemu.GuestRuns.started([platform]).result(platform)
