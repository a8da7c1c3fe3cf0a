"""The ESP tests run only where the kernel can install an ESP SA; elsewhere
tests/dataplane/test_in_guest.py runs this directory in a QEMU guest. Skipped
at collection, so that no lab starts for them on a kernel without ESP."""
from pathlib import Path

from lab import capabilities


def pytest_collection_modifyitems(config, items):
    capabilities.skip_without_esp(items, Path(__file__).resolve().parent,
                                  "tests/dataplane/test_in_guest.py runs these in a QEMU guest")
