"""Helpers of the libreswan tests (a plain module: conftest names collide)."""
from repo_modules import REPO, load

FIXTURES = REPO / "tests" / "fixtures" / "libreswan"


def load_module():
    return load("salt/_modules/libreswan.py")


# The tunnel as the example pillar declares it for vpn-gw1 (pillar/vpn_gateway/tunnel.sls).
PSK = "lab-only-psk-0123456789-abcdefghijklmnop"


def tunnel_spec(**overrides):
    spec = {
        "local": {"address": "198.18.0.11", "id": "@vpn-gw1", "tunnel_ip": "198.19.10.1"},
        "peers": {"primary": {"address": "198.18.0.21", "id": "@remote-gw-primary"},
                  "backup": {"address": "198.18.0.22", "id": "@remote-gw-backup"}},
        "remote_subnets": ["198.19.1.10/32", "198.19.1.11/32", "198.19.1.12/32"],
        "ike": "aes256-sha1;modp2048",
        "phase2alg": "aes256-sha1",
        "pfs": False,
        "ikelifetime": 3600,
        "salifetime": 3600,
        "dpddelay": 30,
        "fragmentation": True,
        "narrowing": True,
        "auto": "start",
    }
    spec.update(overrides)
    return spec
