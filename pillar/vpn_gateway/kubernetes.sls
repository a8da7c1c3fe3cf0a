# Kubernetes side of the gateway (vpn_gateway.k8s), with the lab's addresses.
# Pods reach the database as postgres.databases.svc.cluster.local:5432: a
# Service without selector and EndpointSlices that point at the gateway.
vpn_gateway:
  kubernetes:
    # Shared: the Kubernetes nodes, the only sources the firewall lets reach the
    # pooler and the node exporter.
    nodes:
      - 198.18.2.31   # k8s-node1
      - 198.18.2.32
      - 198.18.2.33
      - 198.18.2.34
      - 198.18.2.35
      - 198.18.2.36
      - 198.18.2.37
    # The one minion that talks to the Kubernetes API (a gateway with a
    # kubeconfig, or a minion next to the master that has this pillar).
    minion: vpn-gw1
    # On that minion: a kubeconfig for a user that may get, list, patch and
    # delete services and endpointslices in the namespace (secret: 0600).
    kubeconfig: /etc/vpn-gateway/kubeconfig
    # context: vpn-gateway          # default: the kubeconfig's current-context
    service:
      name: postgres
      namespace: databases
      port: 5432
      port_name: postgres
    # Where pods connect: the gateways' Kubernetes-side addresses (the pooler
    # listens on vpn_gateway:pooler:listen_port there).
    gateway_addresses:
      - 198.18.2.11
    # Take over fields another field manager owns instead of failing (409).
    force_conflicts: false
