"""Fixtures of the libreswan tests: the module under test, loaded from its file."""
import pytest

from libreswan_helpers import FIXTURES, load_module


@pytest.fixture(scope="session")
def libreswan():
    return load_module()


@pytest.fixture
def fixture_text():
    def read(name):
        # a missing capture fails the test (FileNotFoundError): an empty text would
        # pass every "no such line" check
        return (FIXTURES / name).read_text()
    return read
