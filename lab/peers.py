"""The remote cloud's IPsec gateways, configured by hand (an independent peer:
nothing here is rendered by the pack's code), matching the example pillar's
tunnel (pillar/vpn_gateway/tunnel.sls). They answer (auto=add) and never
initiate, so the gateway decides which peer carries the tunnel."""

# The example pillar's lab-only PSK (vpn_gateway:tunnel:psk); a unit test keeps them equal.
EXAMPLE_PSK = "lab-only-psk-not-secret-0123456789abcdef"
REMOTE_GATEWAYS = ("remote-gw-primary", "remote-gw-backup")
GATEWAYS = ("vpn-gw1", "vpn-gw2")
DATABASE_SUBNETS = ("198.19.1.10/32", "198.19.1.11/32", "198.19.1.12/32")

CONN = """\
conn {gateway}
\ttype=tunnel
\tauthby=secret
\tikev2=insist
\tike=aes256-sha1;modp2048
\tphase2alg=aes256-sha1
\tpfs=no
\tleft={me}
\tleftid=@{remote}
\tleftsubnets={{{subnets}}}
\tright={gateway_address}
\trightid=@{gateway}
\trightsubnet={tunnel_ip}/32
\tnarrowing=yes
\tauto=add
"""


def configure(lab, psk=EXAMPLE_PSK):
    """Write each remote gateway's conns (one per lab gateway) and start ipsec there."""
    gateways = [lab[g] for g in GATEWAYS if g in lab.hosts]
    for name in REMOTE_GATEWAYS:
        if name not in lab.hosts:
            continue
        remote = lab[name]
        for gateway in gateways:
            remote.put(f"/etc/ipsec.d/{gateway.name}.conf", CONN.format(
                gateway=gateway.name, remote=name, me=remote.address("wan"),
                subnets=" ".join(DATABASE_SUBNETS), gateway_address=gateway.address("wan"),
                tunnel_ip=gateway.spec.loopback[0]))
            remote.put(f"/etc/ipsec.d/{gateway.name}.secrets",
                       f'@{name} @{gateway.name} : PSK "{psk}"\n', mode=0o600)
        remote.run(["systemctl", "start", "ipsec"], check=True, timeout=120)
