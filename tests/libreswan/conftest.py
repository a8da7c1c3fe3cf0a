"""Fixtures of the libreswan tests: the module under test, loaded from its file."""
import pytest

from libreswan_helpers import FIXTURES, load_module


@pytest.fixture(scope="session")
def libreswan():
    return load_module()


@pytest.fixture
def fixture_text():
    def read(name):
        path = FIXTURES / name
        return path.read_text() if path.exists() else ""
    return read
