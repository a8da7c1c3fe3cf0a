"""The remote cloud's IPsec gateways, configured by hand (an independent peer:
nothing here is rendered by the pack's code), matching the example pillar's
tunnel (pillar/vpn_gateway/tunnel.sls). They answer (auto=add) and never
initiate, so the gateway decides which peer carries the tunnel. They run the
platform's Libreswan (4.10 on debian12, 5.2 on debian13), written in each
version's own idiom: 4.x ``ikev2=insist`` and ``leftsubnets={a b c}``, 5.x
``keyexchange=ikev2`` and ``leftsubnet=a,b,c`` (one conn, several selectors).

``RemoteRouting`` plays the remote cloud's route table where the ESP tests run:
remote-db's route to the gateway follows the remote gateway holding its Child SA."""
import re
import threading
import time

# The example pillar's lab-only PSK (vpn_gateway:tunnel:psk); a unit test keeps them equal.
EXAMPLE_PSK = "lab-only-psk-not-secret-0123456789abcdef"
REMOTE_GATEWAYS = ("remote-gw-primary", "remote-gw-backup")
GATEWAYS = ("vpn-gw1", "vpn-gw2")
DATABASE_SUBNETS = ("198.19.1.10/32", "198.19.1.11/32", "198.19.1.12/32")

CONN = """\
conn {gateway}
\ttype=tunnel
\tauthby=secret
\t{ikev2}
\tike=aes256-sha1;modp2048
\tphase2alg=aes256-sha1
\tpfs=no
\tleft={me}
\tleftid=@{remote}
\t{subnets}
\tright={gateway_address}
\trightid=@{gateway}
\trightsubnet={tunnel_ip}/32
\tnarrowing=yes
\tauto=add
"""

# On a remote gateway (nft -f): forward to the database network only what IPsec decrypted.
ONLY_DECRYPTED = """\
table inet dataplane {
    chain forward {
        type filter hook forward priority 0; policy accept;
        ip daddr 198.19.1.0/24 meta ipsec missing drop
    }
}
"""


def major(host):
    """The Libreswan major version a lab host runs (``ipsec --version``)."""
    text = host.run(["ipsec", "--version"], check=True).stdout
    return int(re.search(r"Libreswan\s+\D*(\d+)\.", text).group(1))


def idiom(major_version, side, subnets):
    """The lines that differ between 4.x and 5.x: the IKEv2 keyword and a list of subnets."""
    if major_version >= 5:
        return {"ikev2": "keyexchange=ikev2", "subnets": f"{side}subnet={','.join(subnets)}"}
    return {"ikev2": "ikev2=insist", "subnets": f"{side}subnets={{{' '.join(subnets)}}}"}


def configure(lab, psk=EXAMPLE_PSK, subnets=DATABASE_SUBNETS):
    """Write each remote gateway's conns (one per lab gateway, offering ``subnets``)
    and start ipsec there (a running pluto keeps its conns: ``reload`` them)."""
    gateways = [lab[g] for g in GATEWAYS if g in lab.hosts]
    for name in REMOTE_GATEWAYS:
        if name not in lab.hosts:
            continue
        remote = lab[name]
        lines = idiom(major(remote), "left", subnets)
        for gateway in gateways:
            remote.put(f"/etc/ipsec.d/{gateway.name}.conf", CONN.format(
                gateway=gateway.name, remote=name, me=remote.address("wan"),
                gateway_address=gateway.address("wan"), tunnel_ip=gateway.spec.loopback[0],
                **lines))
            remote.put(f"/etc/ipsec.d/{gateway.name}.secrets",
                       f'@{name} @{gateway.name} : PSK "{psk}"\n', mode=0o600)
        remote.run(["systemctl", "start", "ipsec"], check=True, timeout=120)


def reload(host, gateway):
    """Load the conn for ``gateway`` anew in the remote gateway ``host`` (its SAs go).
    Deleted first (by its name, the alias of 4.x's sub-conns): on 4.x ``addconn``
    replaces only the sub-conns it loads, so a subnet dropped from the file would
    stay loaded as ``GATEWAY/0x3`` and keep accepting its Child SA."""
    host.run(["ipsec", "whack", "--delete", "--name", gateway], check=True, timeout=120)
    host.run(["ipsec", "addconn", gateway], check=True, timeout=120)


class Poller:
    """``poll()`` every ``period`` seconds in a thread, for the ``with`` block."""

    period = 1.0

    def __init__(self):
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def poll(self):
        raise NotImplementedError

    def run(self):
        while not self.stop.is_set():
            self.poll()
            time.sleep(self.period)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(60)


class RemoteRouting(Poller):
    """remote-db's route to each lab gateway's tunnel address (its leftsubnet, on its lo)
    through the remote gateway that holds a Child SA with it (the remote cloud's
    routing), in a thread."""

    VIA = {"remote-gw-primary": "198.19.0.1", "remote-gw-backup": "198.19.0.2"}
    period = 0.5

    def __init__(self, lab):
        super().__init__()
        self.lab, self.via = lab, {}
        self.tunnels = {g: f"{lab[g].spec.loopback[0]}/32" for g in GATEWAYS if g in lab.hosts}

    def poll(self):
        for peer, via in self.VIA.items():
            text = self.lab[peer].run(["ipsec", "whack", "--trafficstatus"]).stdout
            for gateway, tunnel_ip in self.tunnels.items():
                if f'"{gateway}' in text and self.via.get(gateway) != via:
                    self.lab["remote-db"].run(["ip", "route", "replace", tunnel_ip,
                                               "via", via], check=True)
                    self.via[gateway] = via
