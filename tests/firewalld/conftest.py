"""Shared for the firewalld tests: the execution module, loaded from its file."""
import pytest
from repo_modules import load


@pytest.fixture(scope="session")
def fr():
    return load("salt/_modules/firewalld_rich.py")
