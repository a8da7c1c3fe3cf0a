# Example pillar for the gateway role, with the lab's addresses (198.18.0.0/15).
# One file per section, each owned by one formula; docs/pillar.md documents
# every key. Sections: tunnel (ipsec), pooler (pgbouncer), kubernetes (k8s),
# firewall, monitoring.
include:
  - vpn_gateway.firewall
  - vpn_gateway.kubernetes
  - vpn_gateway.monitoring
  - vpn_gateway.pooler
  - vpn_gateway.tunnel
