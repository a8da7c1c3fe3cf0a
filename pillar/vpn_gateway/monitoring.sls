#!jinja|yaml|gpg
{#- Monitoring and recovery of the tunnel (formula vpn_gateway.monitoring,
    docs/monitoring.md), with the lab's addresses. The beacon and the schedules
    are Salt's own pillar keys (beacons:, schedule:), read by every minion at
    start and on each pillar refresh. The master's reactor is in docs/monitoring.md. #}
{%- set holddown = 10 %}
vpn_gateway:
  monitoring:
    # Up: every remote subnet carried by an established Child SA (some carried:
    # partial). ike_sa (the IKE SA alone) only for a kernel without ESP, such as
    # the lab's: it adds its own lab.sls to the pillar it serves (lab/saltstack.py).
    up_when: child_sa
    holddown: {{ holddown }}
    repeat: 30
    repeat_max: 300
    conn_restarts: 2
    step_timeout: 10
    budget: {attempts: 5, window: 3600}
    backoff: {base: 30, max: 600}
    failback: auto
    failback_after: 300
    # Recovery on the minion itself (a watcher the beacon keeps running): no master
    # needed; the master's reactor leaves the beacon's events alone (docs/monitoring.md).
    recovery: local
    alerts: {rate_window: 900, timeout: 5}
    # A secret (webhook URLs carry tokens): ciphertext for the master's key.
    # Lab only: a receiver a test starts on the outsider host.
    webhook_url: |
      -----BEGIN PGP MESSAGE-----

      hF4DLX4oa+g85dISAQdAX4l4mEEFleDnYEUqVjdkS8rqXybvJB6NkwzYyyWBJVQw
      TEsM5sbestJtZM6mYm4MSPlNXp2ZPakA3lYgGfrayMwSsIAs7w/mmEG2u24Vby5t
      0mEBysLm0Xy6315eTYjn2MX+MMlC16T1/LF41uwy1PfCfzLwWlnZR/QJimDqQtj7
      MxoRDqudND37JI7xGmARKmPTAxmxEcuT5sql7lgubKP1gcIHH0tKs2EmRpE98lVx
      8uSC
      =9Hjv
      -----END PGP MESSAGE-----
    endpoint_ready:
      # vpn-gw1 is the minion with the kubeconfig (vpn_gateway:kubernetes:minion).
      enabled: {{ grains['id'] == 'vpn-gw1' }}
    logrotate: {frequency: daily, rotate: 14, maxsize: 100M, logs: []}
    # node_exporter serves the metrics textfile (vpn_metrics.write, schedule below) on
    # vpn_gateway:firewall:node_exporter_port, which the firewall opens to the
    # Kubernetes nodes only: the cluster's Prometheus scrapes the gateways.
    metrics:
      node_exporter: {enabled: true}

beacons:
  libreswan:
    - interval: 2
    # A state run may take the tunnel down on purpose: no events meanwhile.
    - disable_during_state_run: true

schedule:
  vpn_gateway_metrics:
    function: vpn_metrics.write
    seconds: 15
    return_job: false
  # Readiness decided from outside (docs/k8s.md): every gateway's heartbeat goes to
  # the master's mine; the minion with the kubeconfig (vpn_gateway:kubernetes:minion)
  # sets a gateway whose heartbeat stops not ready (vpn_gateway:kubernetes:readiness).
  vpn_gateway_heartbeat:
    function: mine.send
    args: [vpn_gateway_heartbeat]
    kwargs: {mine_function: vpn_heartbeat.beat}
    seconds: 5
    return_job: false
  vpn_gateway_readiness:
    function: k8s.sync_readiness
    seconds: 5
    return_job: false
    enabled: {{ grains['id'] == 'vpn-gw1' }}
