"""The end-to-end scenario runs only where the kernel can install an ESP SA
(elsewhere: benchmarks/e2e.py --guest runs it in a QEMU guest). Skipped at
collection, so that no lab starts for it on a kernel without ESP."""
from pathlib import Path

from lab import capabilities


def pytest_collection_modifyitems(config, items):
    capabilities.skip_without_esp(items, Path(__file__).resolve().parent,
                                  "benchmarks/e2e.py --guest runs it in a QEMU guest")
