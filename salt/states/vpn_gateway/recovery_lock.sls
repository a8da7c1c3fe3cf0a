{#- The host's recovery lock (docs/monitoring.md, "Recovery and state runs"),
    included by every sub-state, so a state run holds it whether it applies the
    role or one sub-state: first, it waits while a recovery ladder runs; last, it
    lets go. Neither state changes anything. #}
vpn_gateway_recovery_lock:
  libreswan.recovery_lock:
    - timeout: 300
    - order: first
    - failhard: True

vpn_gateway_recovery_lock_released:
  libreswan.recovery_lock_released:
    - order: last
