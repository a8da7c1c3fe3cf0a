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
    # On that minion: a kubeconfig for a user that may get, list, create, patch
    # and delete services and endpointslices (discovery.k8s.io) in the namespace
    # (a Role: docs/k8s.md; the file is a secret: 0600).
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
      - 198.18.2.12
    # Drained for maintenance before removal: terminating, never ready (serving
    # still follows its health). Empty the list when the gateway is back.
    draining: []
    # Readiness decided from outside the gateways (docs/k8s.md): each gateway's
    # heartbeat (schedule vpn_gateway_heartbeat, monitoring.sls) is read by the
    # minion above (schedule vpn_gateway_readiness); a gateway silent for
    # `deadline` seconds (host down, minion down, network cut), or whose tunnel is
    # not carried (require_tunnel), is set not ready.
    readiness:
      enabled: true
      deadline: 20
      require_tunnel: true
      gateways:          # minion id: its address in gateway_addresses
        vpn-gw1: 198.18.2.11
        vpn-gw2: 198.18.2.12
    # always: a server dry run before every apply; test_only: only for
    # test=True (clusters whose admission webhooks refuse dry runs).
    dry_run: always
    # Take over fields another field manager owns instead of failing (409).
    force_conflicts: false
