"""The IPsec data plane between two lab hosts: a Child SA that carries traffic.

Runs only where the kernel can install an ESP SA: directly on such a machine,
else in the QEMU guest (tests/dataplane/test_in_guest.py runs this directory
there). The tunnel is hand-written Libreswan configuration, not our states:
this proves the data plane the formulas rely on, independent of them.

vpn-gw1 (wan 198.18.0.11, tunnel IP 198.19.10.1 on lo) and remote-gw-primary
(wan 198.18.0.21, remote 198.19.0.1) protect 198.19.10.1/32 <-> 198.19.0.1/32.
Without the tunnel the two /32s reach each other over a plain routed path
(lab/topology.py), so only the ESP counters tell whether packets went through
the Child SA: the test asserts that they grow by at least what it sent.
"""
import re

import pytest
from esp_helpers import SLOW, esp_bytes, pluto_log, wait_esp_pair

pytestmark = [pytest.mark.lab, pytest.mark.esp]

GATEWAY, PEER = "vpn-gw1", "remote-gw-primary"
GATEWAY_WAN, PEER_WAN = "198.18.0.11", "198.18.0.21"
GATEWAY_INNER, PEER_INNER = "198.19.10.1", "198.19.0.1"
CONN = f"""\
conn dataplane
    authby=secret
    left={GATEWAY_WAN}
    leftid=@{GATEWAY}
    leftsubnet={GATEWAY_INNER}/32
    right={PEER_WAN}
    rightid=@{PEER}
    rightsubnet={PEER_INNER}/32
    ike=aes256-sha2_256;modp2048
    phase2alg=aes256-sha2_256
    auto=add
"""
PSK = "dataplane-lab-only-psk-5c1d0e2f8a"


@pytest.fixture(scope="module")
def tunnel(lab_factory):
    lab = lab_factory([GATEWAY, PEER])
    for name in (GATEWAY, PEER):
        host = lab[name]
        host.put("/etc/ipsec.d/dataplane.conf", CONN)
        host.put("/etc/ipsec.d/dataplane.secrets", f'@{GATEWAY} @{PEER} : PSK "{PSK}"\n',
                 mode=0o600)
        host.run(["systemctl", "start", "ipsec.service"], timeout=SLOW * 3, check=True)
        host.run(["ipsec", "auto", "--add", "dataplane"], timeout=SLOW, check=True)
    up = lab[GATEWAY].run(["ipsec", "auto", "--up", "dataplane"], timeout=SLOW)
    assert up.ok, f"the tunnel did not come up: {up}\n{pluto_log(lab[GATEWAY])}"
    return lab


def test_child_sa_is_installed_on_both_sides(tunnel):
    for name, (local, remote) in ((GATEWAY, (GATEWAY_WAN, PEER_WAN)),
                                  (PEER, (PEER_WAN, GATEWAY_WAN))):
        wait_esp_pair(tunnel[name], local, remote)
        traffic = tunnel[name].run(["ipsec", "trafficstatus"], timeout=SLOW).stdout
        assert '"dataplane"' in traffic, f"{name}: ipsec trafficstatus: {traffic!r}"


def test_traffic_between_the_subnets_moves_the_esp_counters(tunnel):
    gateway, peer = tunnel[GATEWAY], tunnel[PEER]
    out_before = esp_bytes(gateway)[(GATEWAY_WAN, PEER_WAN)]
    in_before = esp_bytes(gateway)[(PEER_WAN, GATEWAY_WAN)]
    peer_in_before = esp_bytes(peer)[(GATEWAY_WAN, PEER_WAN)]
    count, size = 10, 1000
    ping = gateway.run(["busybox", "ping", "-c", str(count), "-s", str(size), "-A", "-W", "30",
                        "-I", GATEWAY_INNER, PEER_INNER], timeout=SLOW)
    assert ping.ok, f"no answer from {PEER_INNER} through the tunnel: {ping}"
    # Each echo is an inner IP packet of 20 + 8 + size bytes; the SA counts inner bytes.
    sent = count * (20 + 8 + size)
    assert esp_bytes(gateway)[(GATEWAY_WAN, PEER_WAN)] - out_before >= sent
    assert esp_bytes(gateway)[(PEER_WAN, GATEWAY_WAN)] - in_before >= sent
    assert esp_bytes(peer)[(GATEWAY_WAN, PEER_WAN)] - peer_in_before >= sent
    traffic = gateway.run(["ipsec", "trafficstatus"], timeout=SLOW).stdout
    moved = re.search(r"inBytes=(\d+), outBytes=(\d+)", traffic)
    assert moved and int(moved.group(1)) >= sent and int(moved.group(2)) >= sent, traffic
