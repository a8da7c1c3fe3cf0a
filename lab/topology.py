"""The lab's topology as data: segments (layer-2 networks), hosts, routes.

Every address is in 198.18.0.0/15 (RFC 2544), checked when a topology is
built, so no lab host can ever send to a real network.
"""
import ipaddress
from dataclasses import dataclass, field, replace

LAB_RANGE = ipaddress.ip_network("198.18.0.0/15")


@dataclass(frozen=True)
class Segment:
    """A layer-2 network: one bridge in the lab's fabric namespace."""

    name: str
    cidr: str


@dataclass(frozen=True)
class Host:
    """A machine of the lab: one network namespace, one systemd-nspawn container.

    ``addresses`` maps a segment name to this host's address on it (the
    interface is named after the segment, ``<segment>0``); ``loopback`` holds
    extra /32s on ``lo`` (tunnel endpoints, database endpoints); ``routes``
    are ``(destination, gateway)`` pairs; ``forwarding`` makes it a router.
    ``salt`` is ``"master"``, ``"minion"`` or None. ``image`` is the root
    filesystem it boots (lab/images.py): ``"fresh"`` (nothing of the role: the
    gateways, which the role must install), ``"provisioned"``, or the path of a
    root of its own (lab/converged.py: a gateway the role converged); ``platform``
    (``debian12``, ``debian13``) overrides the lab's.
    """

    name: str
    addresses: dict = field(default_factory=dict)
    loopback: tuple = ()
    routes: tuple = ()
    forwarding: bool = False
    salt: str = None
    image: str = "provisioned"
    platform: str = None

    def address(self, segment):
        return self.addresses[segment]


@dataclass(frozen=True)
class Topology:
    segments: tuple
    hosts: tuple

    def __post_init__(self):
        check(self)

    def host(self, name):
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(f"no host {name!r} in the lab topology; known: {self.names()}")

    def names(self):
        return [h.name for h in self.hosts]

    def subset(self, names):
        """The same topology with only the named hosts (and the segments they use).

        A salt minion is kept only with its master: asking for ``vpn-gw1``
        alone gives a host without a salt-minion.
        """
        unknown = set(names) - set(self.names())
        if unknown:
            raise KeyError(f"unknown lab hosts {sorted(unknown)}; known: {self.names()}")
        hosts = []
        for host in self.hosts:
            if host.name not in names:
                continue
            if host.salt == "minion" and not any(
                self.host(n).salt == "master" for n in names
            ):
                host = replace(host, salt=None)
            hosts.append(host)
        used = {seg for h in hosts for seg in h.addresses}
        return Topology(tuple(s for s in self.segments if s.name in used), tuple(hosts))

    def master(self):
        return next((h for h in self.hosts if h.salt == "master"), None)


def check(topology):
    """Refuse any address outside the lab range, or off its segment."""
    segments = {s.name: ipaddress.ip_network(s.cidr) for s in topology.segments}
    for name, net in segments.items():
        if not net.subnet_of(LAB_RANGE):
            raise ValueError(f"segment {name} {net} is outside the lab range {LAB_RANGE}")
    for host in topology.hosts:
        for seg, addr in host.addresses.items():
            ip = ipaddress.ip_address(addr)
            if seg not in segments or ip not in segments[seg]:
                raise ValueError(f"{host.name}: {addr} is not on segment {seg}")
        for addr in host.loopback:
            if ipaddress.ip_address(addr) not in LAB_RANGE:
                raise ValueError(f"{host.name}: loopback {addr} is outside {LAB_RANGE}")
        for dst, via in host.routes:
            if not ipaddress.ip_network(dst).subnet_of(LAB_RANGE):
                raise ValueError(f"{host.name}: route to {dst} leaves the lab range")
            if ipaddress.ip_address(via) not in LAB_RANGE:
                raise ValueError(f"{host.name}: gateway {via} is outside {LAB_RANGE}")


# The default lab: a gateway pair between a Kubernetes node network and a
# remote cloud whose database sits behind two IPsec gateways.
#   mgmt    198.18.1.0/24  salt-master and its minions
#   wan     198.18.0.0/24  the "internet" between the clouds
#   k8s     198.18.2.0/24  the Kubernetes nodes and the gateways' pooler side
#   remote  198.19.0.0/24  the remote cloud's private network
# Tunnel endpoints (leftsubnet /32) sit on the gateways' lo: 198.19.10.1 and .2;
# the database endpoints (rightsubnet /32s) on remote-db's lo: 198.19.1.10-12.
# Without ESP the gateways reach them over a plain routed path through the
# primary remote gateway, so the pooler can be tested on any kernel.
REMOTE_DB_ENDPOINTS = ("198.19.1.10", "198.19.1.11", "198.19.1.12")

DEFAULT = Topology(
    segments=(
        Segment("wan", "198.18.0.0/24"),
        Segment("mgmt", "198.18.1.0/24"),
        Segment("k8s", "198.18.2.0/24"),
        Segment("remote", "198.19.0.0/24"),
    ),
    hosts=(
        Host("salt-master", {"mgmt": "198.18.1.2"}, salt="master"),
        Host(
            "vpn-gw1",
            {"mgmt": "198.18.1.11", "wan": "198.18.0.11", "k8s": "198.18.2.11"},
            loopback=("198.19.10.1",),
            routes=(("198.19.1.0/24", "198.18.0.21"), ("198.19.0.0/24", "198.18.0.21")),
            salt="minion",
            image="fresh",
        ),
        Host(
            "vpn-gw2",
            {"mgmt": "198.18.1.12", "wan": "198.18.0.12", "k8s": "198.18.2.12"},
            loopback=("198.19.10.2",),
            routes=(("198.19.1.0/24", "198.18.0.21"), ("198.19.0.0/24", "198.18.0.21")),
            salt="minion",
            image="fresh",
        ),
        Host(
            "remote-gw-primary",
            {"wan": "198.18.0.21", "remote": "198.19.0.1"},
            routes=(
                ("198.19.1.0/24", "198.19.0.10"),
                ("198.19.10.1/32", "198.18.0.11"),
                ("198.19.10.2/32", "198.18.0.12"),
            ),
            forwarding=True,
        ),
        Host(
            "remote-gw-backup",
            {"wan": "198.18.0.22", "remote": "198.19.0.2"},
            routes=(
                ("198.19.1.0/24", "198.19.0.10"),
                ("198.19.10.1/32", "198.18.0.11"),
                ("198.19.10.2/32", "198.18.0.12"),
            ),
            forwarding=True,
        ),
        Host(
            "remote-db",
            {"remote": "198.19.0.10"},
            loopback=REMOTE_DB_ENDPOINTS,
            routes=(("198.19.10.0/24", "198.19.0.1"), ("198.18.0.0/16", "198.19.0.1")),
        ),
        Host("k8s-node1", {"k8s": "198.18.2.31"}),
        Host("outsider", {"wan": "198.18.0.99", "k8s": "198.18.2.99"}),
    ),
)
