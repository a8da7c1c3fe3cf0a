{#- Monitoring and recovery of the tunnel (formula vpn_gateway.monitoring,
    docs/monitoring.md), with the lab's addresses. The beacon and the schedules
    are Salt's own pillar keys (beacons:, schedule:), read by every minion at
    start and on each pillar refresh. The master's reactor is in docs/monitoring.md. #}
{%- set holddown = 10 %}
vpn_gateway:
  monitoring:
    # Up: every remote subnet carried by an established Child SA (some carried:
    # partial). ike_sa (the IKE SA alone) only for a kernel without ESP, such as
    # the lab's: its tests set it in their own settings, not here.
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
    alerts: {rate_window: 900, timeout: 5}
    # A secret (webhook URLs carry tokens): keep the real one in an encrypted pillar.
    # Lab only: a receiver a test starts on the outsider host.
    webhook_url: http://198.18.0.99:8080/hooks/lab-only
    endpoint_ready:
      # vpn-gw1 is the minion with the kubeconfig (vpn_gateway:kubernetes:minion).
      enabled: {{ grains['id'] == 'vpn-gw1' }}
    logrotate: {frequency: daily, rotate: 14, maxsize: 100M, logs: []}

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
