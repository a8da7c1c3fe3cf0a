{#- Reactor for the libreswan beacon (salt/beacon/<minion>/libreswan/<tunnel>/<state>).
    Master config:
      reactor:
        - 'salt/beacon/*/libreswan/*':
          - salt://reactor/libreswan.sls
    down and up: libreswan.ensure_up on that minion (the ladder when down, within the
    retry budget; when up it only brings the EndpointSlice's ready back);
    failover: libreswan.failback (the pillar's failback policy decides).
    The minion checks the tunnel name; the reactor only forwards. #}
{%- set tunnel = data.get('tunnel', '') %}
{%- set state = data.get('state') %}
{%- if state in ('down', 'up') %}
libreswan_ensure_up_{{ tunnel }}:
  local.libreswan.ensure_up:
    - tgt: {{ data['id'] | json }}
    - args:
      - name: {{ tunnel | json }}
{%- elif state == 'failover' %}
libreswan_failback_{{ tunnel }}:
  local.libreswan.failback:
    - tgt: {{ data['id'] | json }}
    - args:
      - name: {{ tunnel | json }}
{%- endif %}
