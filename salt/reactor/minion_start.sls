{#- Sync the pack's modules to a minion as soon as it (re)connects: pillar's
    beacon (libreswan) and schedule (vpn_metrics.write) name them, and until
    they are there the minion logs an error every beacon interval and every
    schedule run. Master config:
      reactor:
        - 'salt/minion/*/start':
          - salt://reactor/minion_start.sls
    data['id'] may come from a hostile minion (docs/monitoring.md): it is used
    only when it is a plain minion id, as that one minion (tgt_type list),
    never as a glob. #}
{%- set minion = data.get('id') %}
{%- if minion is string and minion is match('^[A-Za-z0-9][A-Za-z0-9._-]{0,252}\\Z') %}
vpn_gateway_sync_modules:
  local.saltutil.sync_all:
    - tgt: {{ [minion] | json }}
    - tgt_type: list
{%- else %}
{%-   do salt['log.warning']('minion_start reactor: event refused, the minion id is not a '
                             'plain name: ' ~ (minion | json)) %}
{%- endif %}
