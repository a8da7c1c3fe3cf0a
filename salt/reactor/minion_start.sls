{#- Sync the pack's modules to a minion as soon as it (re)connects: pillar's
    beacon (libreswan) and schedule (vpn_metrics.write) name them, and until
    they are there the minion logs an error every beacon interval and every
    schedule run. Master config:
      reactor:
        - 'salt/minion/*/start':
          - salt://reactor/minion_start.sls #}
vpn_gateway_sync_modules:
  local.saltutil.sync_all:
    - tgt: {{ data['id'] | json }}
