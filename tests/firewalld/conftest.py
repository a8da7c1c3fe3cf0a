"""Shared for the firewalld tests: the execution module, loaded from its file."""
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def fr():
    spec = importlib.util.spec_from_file_location(
        "firewalld_rich_module", REPO / "salt" / "_modules" / "firewalld_rich.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
