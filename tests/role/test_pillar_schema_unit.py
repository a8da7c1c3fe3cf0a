"""The pillar schema checker: errors name the key and the fix; secrets never shown."""
import importlib.util
from pathlib import Path

import pytest
import yaml

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
    return vpn_gateway._validate(SCHEMA, data, "vpn_gateway:x")


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


# -- secrets at the wrong shape (issue 13): never in an error, whatever the shape ----------
REAL = yaml.safe_load(
    (REPO / "salt/states/vpn_gateway/schema.yaml").read_text())
SECRET = "s3cret-PSK-or-password-0123456789abcdef"
URL = f"https://hooks.example.invalid/T000/B000/{SECRET}"
KEY_PEM = f"-----BEGIN PRIVATE KEY-----\n{SECRET}\n-----END PRIVATE KEY-----"
VALID_TUNNEL = {"local": {"address": "198.18.0.11", "tunnel_ip": "198.19.10.1"},
                "peers": {"primary": {"address": "198.18.0.21"}},
                "remote_subnets": ["198.19.1.10/32"], "psk": "p" * 40}


def real_errors(pillar):
    return vpn_gateway._validate(REAL["vpn_gateway"], pillar, "vpn_gateway")


def tunnel(**changes):
    return {"tunnel": dict(VALID_TUNNEL, **changes)}


# (pillar with SECRET somewhere it does not belong, the key the error must name)
WRONG_SHAPES = {
    # the example: the password written straight under the user name
    "password under the user name": (
        {"pooler": {"users": {"app": SECRET}}}, "vpn_gateway:pooler:users:app"),
    "password as a list": ({"pooler": {"users": {"app": {"password": [SECRET]}}}},
                           "vpn_gateway:pooler:users:app:password"),
    "password as a mapping": ({"pooler": {"users": {"app": {"password": {SECRET: 1}}}}},
                              "vpn_gateway:pooler:users:app:password"),
    "password as a number": ({"pooler": {"users": {"app": {"password": 31415926535}}}},
                             "vpn_gateway:pooler:users:app:password"),
    "users as a list": ({"pooler": {"users": [{"app": SECRET}]}}, "vpn_gateway:pooler:users"),
    "user entry as a list": ({"pooler": {"users": {"app": [SECRET]}}},
                             "vpn_gateway:pooler:users:app"),
    "password as the key, flow set": ({"pooler": {"users": {"app": {SECRET: None}}}},
                                      "vpn_gateway:pooler:users:app"),
    "password as the user name": ({"pooler": {"users": {SECRET: None}}},
                                  "vpn_gateway:pooler:users"),
    "pooler as a string": ({"pooler": SECRET}, "vpn_gateway:pooler"),
    # the tunnel's PSKs
    "psk as a list": (tunnel(psk=[SECRET]), "vpn_gateway:tunnel:psk"),
    "psk as a mapping": (tunnel(psk={"value": SECRET}), "vpn_gateway:tunnel:psk"),
    "psk as a number": (tunnel(psk=31415926535897932384), "vpn_gateway:tunnel:psk"),
    "backup_psk as a list": (tunnel(backup_psk=[SECRET]), "vpn_gateway:tunnel:backup_psk"),
    "tunnel as a string": ({"tunnel": SECRET}, "vpn_gateway:tunnel"),
    "tunnel as a list": ({"tunnel": [dict(VALID_TUNNEL, psk=SECRET)]}, "vpn_gateway:tunnel"),
    "psk as a key of the tunnel": (dict(tunnel(), tunnel=dict(VALID_TUNNEL, **{SECRET: None})),
                                   "vpn_gateway:tunnel"),
    # the webhook URL (its token)
    "webhook_url as a list": ({"monitoring": {"webhook_url": [URL]}},
                              "vpn_gateway:monitoring:webhook_url"),
    "webhook_url as a mapping": ({"monitoring": {"webhook_url": {"url": URL}}},
                                 "vpn_gateway:monitoring:webhook_url"),
    "monitoring as the URL": ({"monitoring": URL}, "vpn_gateway:monitoring"),
    "monitoring as a list": ({"monitoring": [{"webhook_url": URL}]}, "vpn_gateway:monitoring"),
    "URL as a key of monitoring": ({"monitoring": {URL: None}}, "vpn_gateway:monitoring"),
    # the kubeconfig (tokens, TLS keys)
    "kubeconfig_contents as its YAML text": (
        {"kubernetes": {"kubeconfig_contents": f"users:\n- user: {{token: {SECRET}}}"}},
        "vpn_gateway:kubernetes:kubeconfig_contents"),
    "kubeconfig_contents as a list": (
        {"kubernetes": {"kubeconfig_contents": [{"client-key-data": KEY_PEM}]}},
        "vpn_gateway:kubernetes:kubeconfig_contents"),
    "kubernetes as a string": ({"kubernetes": KEY_PEM}, "vpn_gateway:kubernetes"),
    # the whole section in the wrong shape
    "vpn_gateway as a list": ([{"tunnel": {"psk": SECRET}}], "vpn_gateway"),
}


@pytest.mark.parametrize("pillar, key", WRONG_SHAPES.values(), ids=WRONG_SHAPES.keys())
def test_a_secret_at_the_wrong_shape_never_shows(pillar, key):
    found = real_errors(pillar)
    assert any(e.startswith(f"pillar key {key}") for e in found), found
    for error in found:
        for piece in (SECRET, "31415926535", "s3cret", "B000", "PRIVATE KEY"):
            assert piece not in error, error


def test_the_error_still_says_what_is_wrong():
    (error,) = real_errors({"pooler": {"users": {"app": SECRET}}})
    assert error == ("pillar key vpn_gateway:pooler:users:app: expected a mapping, got a string "
                     "(not shown: this key holds secrets)")
    (error,) = real_errors({"monitoring": {"webhook_url": [URL]}})
    assert error.endswith("got (secret, not shown)")


def test_values_away_from_secrets_still_show():
    (error,) = real_errors({"pooler": {"listen_port": "6432x"}})
    assert error.endswith("got '6432x'")
    (error,) = real_errors({"pooler": {"users": {"app": {"password": "p", "pasword": "x"}}}})
    assert error.startswith("pillar key vpn_gateway:pooler:users:app:pasword: unknown key")


def test_the_kubeconfig_is_marked_secret_in_the_reference():
    assert ("| `vpn_gateway:kubernetes:kubeconfig_contents` | dict, secret |"
            in vpn_gateway.render_reference(REAL))
