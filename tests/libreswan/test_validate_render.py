"""Validation and rendering of a tunnel (pure), and the rendered 4.x text
checked by the installed Libreswan's own parsers (read-only, no daemon)."""
import copy
import subprocess

import pytest

from libreswan_helpers import PSK, tunnel_spec

pytestmark = pytest.mark.unit
PSKS = {"primary": PSK, "backup": PSK}


def errors_of(libreswan, spec, psks=PSKS, name="remote-db"):
    with pytest.raises(libreswan.ConnError) as caught:
        libreswan._validate(name, spec, psks, source="vpn_gateway:tunnel")
    return dict(caught.value.errors)


def test_example_tunnel_is_valid(libreswan):
    conn = libreswan._validate("remote-db", tunnel_spec(), PSKS)
    assert conn["primary"] == {"right": "198.18.0.21", "rightid": "@remote-gw-primary"}
    assert conn["backup"] == {"right": "198.18.0.22", "rightid": "@remote-gw-backup"}
    assert conn["leftid"] == "@vpn-gw1" and conn["ikelifetime"] == 3600


def with_peer(address):
    spec = tunnel_spec()
    spec["peers"] = copy.deepcopy(spec["peers"])
    spec["peers"]["primary"]["address"] = address
    return spec


@pytest.mark.parametrize("spec, psks, key, words", [
    (with_peer("198.18.0.300"), PSKS, "peers:primary:address", "not an IPv4 address"),
    (tunnel_spec(remote_subnets=["198.19.1.10/33"]), PSKS, "remote_subnets:0",
     "not an IPv4 network"),
    (tunnel_spec(remote_subnets=["198.19.1.0/32", "198.19.1.10/24"]), PSKS, "remote_subnets:1",
     "host bits set"),
    (tunnel_spec(peers={"backup": {"address": "198.18.0.22"}}), PSKS, "peers:primary:address",
     "missing"),
    (tunnel_spec(), {"primary": None, "backup": None}, "psk", "missing"),
    (tunnel_spec(), {"primary": "short-psk", "backup": "short-psk"}, "psk", "too short"),
    (tunnel_spec(), {"primary": PSK + '"', "backup": PSK}, "psk", "double quote"),
    (tunnel_spec(), {"primary": PSK + "\nx", "backup": PSK}, "psk", "newline"),
    # Libreswan 4.10 and 5.2 have no modp1024, DH 2 or des at all (algparse:
    # not recognized): refused even with allow_weak_algorithms
    (tunnel_spec(ike="aes256-sha1;modp1024"), PSKS, "ike", "not recognized"),
    (tunnel_spec(ike="aes256-sha1;dh2"), PSKS, "ike", "not recognized"),
    (tunnel_spec(ike="aes256-md5;modp2048"), PSKS, "ike", "weak"),
    (tunnel_spec(phase2alg="des-sha1"), PSKS, "phase2alg", "not recognized"),
    (tunnel_spec(phase2alg="3des-sha1"), PSKS, "phase2alg", "weak"),
    (tunnel_spec(ike="aes999-sha1;modp2048"), PSKS, "ike", "not recognized"),
    (tunnel_spec(ike_version=1), PSKS, "ike_version", "IKEv1 is refused"),
    (tunnel_spec(local={"address": "198.18.0.11", "tunnel_ip": "198.19.10.1/32"}), PSKS,
     "local:tunnel_ip", "not an IPv4 address"),
    (tunnel_spec(dpddelay="abc"), PSKS, "dpddelay", "seconds"),
], ids=["bad-ip", "slash-33", "host-bits", "no-right", "no-psk", "short-psk", "psk-quote",
        "psk-newline", "modp1024", "dh2", "md5", "des", "3des", "unknown-alg", "ikev1",
        "tunnel-ip-cidr", "dpddelay"])
def test_bad_input_names_the_pillar_key(libreswan, spec, psks, key, words):
    errors = errors_of(libreswan, spec, psks)
    assert f"vpn_gateway:tunnel:{key}" in errors, errors
    assert words in errors[f"vpn_gateway:tunnel:{key}"]
    assert PSK not in str(errors)


@pytest.mark.parametrize("name", ["1db", "db;rm", "db conn", "db/x", "a" * 41, "db-backup", ""])
def test_unsafe_conn_names(libreswan, name):
    assert "vpn_gateway:tunnel:name" in errors_of(libreswan, tunnel_spec(), name=name)


def test_weak_algorithms_only_when_pillar_allows(libreswan):
    spec = tunnel_spec(ike="aes256-md5;modp2048", allow_weak_algorithms=True)
    assert libreswan._validate("remote-db", spec, PSKS)["ike"] == "aes256-md5;modp2048"
    spec = tunnel_spec(ike="aes256-sha1;modp1024", allow_weak_algorithms=True)
    with pytest.raises(libreswan.ConnError, match="'modp1024' is not recognized"):
        libreswan._validate("remote-db", spec, PSKS)


def test_render_4_and_5(libreswan):
    conn = libreswan._validate("remote-db", tunnel_spec(), PSKS)
    v4 = libreswan._parse_conf(libreswan._render_conf(conn, 4))
    v5 = libreswan._parse_conf(libreswan._render_conf(conn, 5))
    assert set(v4) == set(v5) == {"remote-db", "remote-db-backup"}
    assert v4["remote-db"]["ikev2"] == "insist" and "keyexchange" not in v4["remote-db"]
    assert v5["remote-db"]["keyexchange"] == "ikev2" and "ikev2" not in v5["remote-db"]
    assert v4["remote-db"]["dpdaction"] == "restart" and "dpdaction" not in v5["remote-db"]
    assert v4["remote-db"]["rightsubnets"] == "{198.19.1.10/32 198.19.1.11/32 198.19.1.12/32}"
    assert v5["remote-db"]["rightsubnet"] == "198.19.1.10/32,198.19.1.11/32,198.19.1.12/32"
    assert v4["remote-db"]["auto"] == "start" and v4["remote-db-backup"]["auto"] == "add"
    assert v4["remote-db-backup"]["right"] == "198.18.0.22"
    for key in ("leftsubnet", "rightsubnets", "ike", "phase2alg", "ikelifetime", "narrowing"):
        assert v4["remote-db"][key] == v4["remote-db-backup"][key], key
    assert PSK not in libreswan._render_conf(conn, 4)


def test_render_secrets(libreswan):
    conn = libreswan._validate("remote-db", tunnel_spec(), {"primary": PSK, "backup": PSK[::-1]})
    lines = libreswan._render_secrets(conn, {"primary": PSK, "backup": PSK[::-1]}).splitlines()
    assert lines[1:] == [f'@vpn-gw1 @remote-gw-primary : PSK "{PSK}"',
                         f'@vpn-gw1 @remote-gw-backup : PSK "{PSK[::-1]}"']


def test_check_settings_catches_what_addconn_lets_through(libreswan):
    bad = {"authby": "secrt", "left": "198.18.0.11", "leftsubnet": "198.19.10.1/33",
           "ike": "aes999-sha1", "dpddelay": "abc"}
    errors = " | ".join(libreswan._check_settings(bad))
    for words in ("right= is missing", "leftsubnet", "aes999", "authby", "dpddelay"):
        assert words in errors


def test_installed_libreswan_accepts_the_rendered_4x_conf(libreswan, tmp_path):
    major = libreswan._parse_version(subprocess.run(["ipsec", "--version"], capture_output=True,
                                                    text=True).stdout)["major"]
    if major != 4:
        pytest.skip(f"the installed Libreswan is {major}.x; this checks 4.x rendering")
    conn = libreswan._validate("remote-db", tunnel_spec(), PSKS)
    conf = tmp_path / "remote-db.conf"
    conf.write_text(libreswan._render_conf(conn, 4))
    (tmp_path / "ipsec.conf").write_text(f"config setup\n\ninclude {conf}\n")
    checked = subprocess.run(["ipsec", "addconn", "--checkconfig", "--config",
                              str(tmp_path / "ipsec.conf")], capture_output=True, text=True)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")
    for key, kind in (("ike", "ike"), ("phase2alg", "esp")):
        parsed = subprocess.run(["ipsec", "algparse", "-v2", f"{kind}={conn[key]}"],
                                capture_output=True, text=True)
        assert parsed.returncode == 0, parsed.stdout


@pytest.mark.parametrize("key", ["ikelifetime", "salifetime"])
def test_a_lifetime_pluto_5_would_raise_is_refused_naming_the_key_and_the_range(libreswan, key):
    errors = errors_of(libreswan, tunnel_spec(**{key: 1079}))
    assert errors == {f"vpn_gateway:tunnel:{key}":
                      "1079 is not a number of seconds between 1080 and 86400"}
    assert libreswan._validate("remote-db", tunnel_spec(**{key: 1080}), PSKS)[key] == 1080
