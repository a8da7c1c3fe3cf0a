#!jinja|yaml|gpg
{#- The tunnel section (formula vpn_gateway.ipsec, docs/libreswan.md): one
    IKEv2/PSK tunnel from each gateway to the remote cloud's primary gateway,
    with the backup gateway declared beside it (loaded with auto=add; which
    one carries the tunnel is switched at run time by libreswan.switch).
    The lab's addresses; each gateway picks its own side by minion id. #}
{%- set gateways = {
  'vpn-gw1': {'address': '198.18.0.11', 'id': '@vpn-gw1', 'tunnel_ip': '198.19.10.1'},
  'vpn-gw2': {'address': '198.18.0.12', 'id': '@vpn-gw2', 'tunnel_ip': '198.19.10.2'},
} %}
{%- if grains['id'] in gateways %}
vpn_gateway:
  tunnel:
    name: remote-db
    local: {{ gateways[grains['id']] | json }}
    peers:
      primary:
        address: 198.18.0.21
        id: '@remote-gw-primary'
      backup:
        address: 198.18.0.22
        id: '@remote-gw-backup'
    remote_subnets:
      - 198.19.1.10/32
      - 198.19.1.11/32
      - 198.19.1.12/32
    # A secret: ciphertext for the master's key (gpg renderer, docs/pillar.md;
    # scripts/encrypt-secret). Lab value; at least 32 printable characters.
    psk: |
      -----BEGIN PGP MESSAGE-----

      hF4DLX4oa+g85dISAQdARYOzsrW6se5Fh9ITc8tIuSg/7VmtsG8DSBE9uw0OaFgw
      JS56sSSqM2mM4nwXBPQMdditZzhV504GNEpFNmGL0Pm+ptMY6OgZG4vtTmk/QmVZ
      0mMBaVNFWhG3L1aXcJIxhhIWF4v16xKr8xZ23rDas2sXg9D1iqxnJD9kJAe9CMKG
      eYSJWsZYiZ0muP8sqIU88D8UjQ/uPHmLCIanacYFBzx7cKr8gQDv4yuRY3mnRKN7
      ivyVZLw=
      =oYnP
      -----END PGP MESSAGE-----
    ike: aes256-sha1;modp2048
    phase2alg: aes256-sha1
    pfs: false
    ikelifetime: 3600
    salifetime: 3600
    dpddelay: 30
    fragmentation: true
    narrowing: true
    auto: start
{%- endif %}
