# Example pillar for the gateway role (the lab's addresses, 198.18.0.0/15).
# Each section belongs to one formula: tunnel (ipsec), pooler (pgbouncer),
# kubernetes (k8s), firewall, monitoring.
vpn_gateway: {}
