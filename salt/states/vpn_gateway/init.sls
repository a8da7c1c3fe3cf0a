{#- The gateway role. Order comes from requisites inside the sub-states
    (sysctl -> ipsec -> pgbouncer, which requires the tunnel -> firewall ->
    monitoring -> tools), not from this list. #}
include:
  - vpn_gateway.sysctl
  - vpn_gateway.ipsec
  - vpn_gateway.pgbouncer
  - vpn_gateway.firewall
  - vpn_gateway.tools
