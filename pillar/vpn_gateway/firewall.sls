{#- firewalld on the gateways (vpn_gateway.firewall), with the lab's addresses.
    The rules themselves come from vpn_gateway:tunnel:peers, vpn_gateway:kubernetes:nodes
    and vpn_gateway:pooler:listen_port; this section says where and how. #}
vpn_gateway:
  firewall:
    # The firewalld zone that holds the gateway's rich rules.
    zone: public
    # SSH (tcp 22) from these networks must survive every change (the guard).
    management_networks:
      - 198.18.1.0/24
    # The salt-master whose ports 4505/4506 the guard protects; default: the minion's `master`.
    # salt_master: 198.18.1.2
    # Prometheus node exporter, opened to the Kubernetes nodes.
    node_exporter_port: 9100
    # Remove rules this pack added earlier and no longer derives (never others' rules).
    prune_owned: true
    # Site-specific rich rules beside the derived ones (strings or structured mappings).
    rules: []
