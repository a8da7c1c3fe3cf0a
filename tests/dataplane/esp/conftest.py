"""The ESP tests run only where the kernel can install an ESP SA; elsewhere
tests/dataplane/test_in_guest.py runs this directory in a QEMU guest. Skipped
at collection, so that no lab starts for them on a kernel without ESP."""
from pathlib import Path

import pytest

from lab import capabilities

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    ours = [item for item in items if HERE in Path(item.fspath).resolve().parents]
    supported, reason = capabilities.esp_support() if ours else (True, "")
    if supported:
        return
    skip = pytest.mark.skip(
        reason=f"{reason}; tests/dataplane/test_in_guest.py runs these in a QEMU guest")
    for item in ours:
        item.add_marker(skip)
