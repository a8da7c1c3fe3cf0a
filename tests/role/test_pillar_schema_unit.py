"""The pillar schema checker: errors name the key and the fix; secrets never shown."""
import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location(
    "vpn_gateway_mod", REPO / "salt/_modules/vpn_gateway.py")
vpn_gateway = importlib.util.module_from_spec(spec)
spec.loader.exec_module(vpn_gateway)

SCHEMA = {
    "type": "dict",
    "keys": {
        "psk": {"type": "secret", "required": True, "example": "<32+ characters>"},
        "port": {"type": "port", "default": 6432},
        "mode": {"type": "str", "choices": ["transaction", "session"]},
        "nodes": {"type": "list", "items": {"type": "ip"}},
        "subnets": {"type": "list", "items": {"type": "cidr"}},
        "users": {"type": "dict",
                  "values": {"type": "dict", "keys": {"password": {"type": "secret"}}}},
        "pfs": {"type": "bool"},
    },
}


def errors(data):
    return vpn_gateway.validate(SCHEMA, data, "vpn_gateway:x")


def test_a_valid_section_has_no_errors():
    assert errors({"psk": "s" * 40, "port": 6432, "mode": "session", "nodes": ["198.18.2.31"],
                   "subnets": ["198.19.1.10/32"], "users": {"app": {"password": "p"}},
                   "pfs": False}) == []


@pytest.mark.parametrize("data, message", [
    ({}, "pillar key vpn_gateway:x:psk: required, a string (a secret: keep it in an encrypted "
         "pillar); add it (example: <32+ characters>)"),
    ({"psk": "s", "port": "6432"}, "pillar key vpn_gateway:x:port: expected a port number from 1 "
                                   "to 65535, got '6432'"),
    ({"psk": "s", "port": 70000}, "pillar key vpn_gateway:x:port: expected a port number"),
    ({"psk": "s", "port": True}, "pillar key vpn_gateway:x:port: expected a port number"),
    ({"psk": "s", "mode": "statement"}, "pillar key vpn_gateway:x:mode: 'statement' is not one of"),
    ({"psk": "s", "nodes": ["198.18.2.31", "198.18.2.300"]},
     "pillar key vpn_gateway:x:nodes:1: expected an IPv4 or IPv6 address"),
    ({"psk": "s", "subnets": ["198.19.1.10/24"]},
     "pillar key vpn_gateway:x:subnets:0: expected a network without host bits"),
    ({"psk": "s", "users": {"app": {"pasword": "p"}}},
     "pillar key vpn_gateway:x:users:app:pasword: unknown key; known keys under "
     "vpn_gateway:x:users:app: password"),
    ({"psk": "s", "pfs": "no"}, "pillar key vpn_gateway:x:pfs: expected true or false, got 'no'"),
    ({"psk": "s", "ike": "aes256"}, "pillar key vpn_gateway:x:ike: unknown key"),
])
def test_errors_name_the_key_and_the_fix(data, message):
    found = errors(data)
    assert len(found) == 1 and found[0].startswith(message), found


def test_a_secret_of_the_wrong_type_is_not_shown():
    found = errors({"psk": ["the-secret-itself"]})
    assert found == ["pillar key vpn_gateway:x:psk: expected a string (a secret: keep it in an "
                     "encrypted pillar), got (secret, not shown)"]


def test_every_error_is_reported_at_once():
    assert len(errors({"port": 0, "pfs": 1, "nodes": "198.18.2.31"})) == 4  # + the missing psk


def test_the_reference_has_a_row_per_key():
    reference = vpn_gateway.render_reference({"vpn_gateway": SCHEMA})
    for key in ("vpn_gateway:psk", "vpn_gateway:nodes:<n>", "vpn_gateway:users:<name>:password"):
        assert f"| `{key}` |" in reference
    assert "| `vpn_gateway:psk` | secret | required |" in reference
    assert "| `vpn_gateway:port` | port | 6432 |" in reference
