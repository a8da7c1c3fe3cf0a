"""The topology is data, checked against the lab range before anything starts."""
import pytest

from lab.topology import DEFAULT, Host, Segment, Topology

pytestmark = pytest.mark.unit


def test_default_topology_stays_in_the_lab_range():
    # constructing DEFAULT ran check(); a copy with one address moved out must fail
    assert {"salt-master", "vpn-gw1", "vpn-gw2", "remote-gw-primary", "remote-gw-backup",
            "remote-db", "k8s-node1", "outsider"} <= set(DEFAULT.names())


@pytest.mark.parametrize(
    "segments, host, message",
    [
        ((Segment("wan", "10.0.0.0/24"),), Host("h", {"wan": "10.0.0.1"}), "outside the lab range"),
        ((Segment("wan", "198.18.0.0/24"),), Host("h", {"wan": "198.18.1.1"}), "not on segment"),
        ((Segment("wan", "198.18.0.0/24"),), Host("h", {"lan": "198.18.0.1"}), "not on segment"),
        ((Segment("wan", "198.18.0.0/24"),),
         Host("h", {"wan": "198.18.0.1"}, loopback=("192.0.2.1",)), "loopback"),
        ((Segment("wan", "198.18.0.0/24"),),
         Host("h", {"wan": "198.18.0.1"}, routes=(("0.0.0.0/0", "198.18.0.2"),)), "leaves"),
        ((Segment("wan", "198.18.0.0/24"),),
         Host("h", {"wan": "198.18.0.1"}, routes=(("198.19.0.0/24", "10.1.1.1"),)), "gateway"),
    ],
)
def test_addresses_outside_the_lab_range_are_refused(segments, host, message):
    with pytest.raises(ValueError, match=message):
        Topology(segments, (host,))


def test_subset_keeps_named_hosts_and_their_segments():
    sub = DEFAULT.subset(["salt-master", "vpn-gw1", "remote-gw-primary"])
    assert sub.names() == ["salt-master", "vpn-gw1", "remote-gw-primary"]
    assert {s.name for s in sub.segments} == {"mgmt", "wan", "k8s", "remote"}
    assert sub.host("vpn-gw1").salt == "minion"
    assert sub.master().name == "salt-master"


def test_a_minion_without_its_master_is_a_plain_host():
    sub = DEFAULT.subset(["vpn-gw1", "remote-gw-primary"])
    assert sub.host("vpn-gw1").salt is None
    assert sub.master() is None
    assert "mgmt" in {s.name for s in sub.segments}  # vpn-gw1 still has its mgmt link


def test_unknown_hosts_are_named():
    with pytest.raises(KeyError, match="vpn-gw9"):
        DEFAULT.subset(["vpn-gw9"])
