{#- Reactor for the libreswan beacon (salt/beacon/<minion>/libreswan/<tunnel>/<state>).
    Master config:
      reactor:
        - 'salt/beacon/*/libreswan/*':
          - salt://reactor/libreswan.sls
    down, partial and up: libreswan.ensure_up on that minion (the ladder when down,
    conn restarts only when partial, within the retry budget; when up it only brings
    the EndpointSlice's ready back);
    failover: libreswan.failback (the pillar's failback policy decides).
    Events marked recovery: local (the default since issue 15) are left alone: the
    minion's own recovery watcher runs libreswan.recover, which needs no master
    (docs/monitoring.md, "Recovery without the master"); only minions with
    recovery: master (or an older pack) are recovered from here.

    Every byte of the tag and of data comes from a minion, which may be hostile
    (docs/monitoring.md, "The reactor and hostile minions"). So nothing from the
    event becomes a YAML key, a function name or a glob: the state ids and
    functions below are literal; the event is acted on only when the tag has
    exactly the beacon's shape, its minion id is a plain name (no glob or
    separator: the target is that one minion, tgt_type list), it agrees with
    data['id'], the tunnel is a conn name (the pattern libreswan.py validates
    conn names with) equal to the tag's, and the state is one of four words
    equal to the tag's. The tunnel reaches the minion only as an argument, and
    the minion acts only on tunnels its own pillar declares. Anything else
    renders nothing but a warning in the master's log. #}
{%- set conn_name = '^[A-Za-z][A-Za-z0-9_-]{0,39}\\Z' %}
{%- set minion_id = '^[A-Za-z0-9][A-Za-z0-9._-]{0,252}\\Z' %}
{%- set parts = tag.split('/') if tag is string else [] %}
{%- set tunnel = data.get('tunnel') %}
{%- set state = data.get('state') %}
{%- set valid = parts | length == 6
      and parts[0] == 'salt' and parts[1] == 'beacon' and parts[3] == 'libreswan'
      and parts[2] is match(minion_id)
      and data.get('id', parts[2]) == parts[2]
      and tunnel is string and tunnel is match(conn_name) and parts[4] == tunnel
      and state in ('down', 'partial', 'up', 'failover') and parts[5] == state %}
{%- if not valid %}
{%-   do salt['log.warning']('libreswan reactor: event refused, not a libreswan beacon '
                             'event: tag ' ~ (tag | json)) %}
{%- elif data.get('recovery') == 'local' %}
{#-   recovered on the minion itself: nothing to run from here #}
{%- elif state in ('down', 'partial', 'up') %}
libreswan_ensure_up:
  local.libreswan.ensure_up:
    - tgt: {{ [parts[2]] | json }}
    - tgt_type: list
    - args:
      - name: {{ tunnel | json }}
{%- else %}
libreswan_failback:
  local.libreswan.failback:
    - tgt: {{ [parts[2]] | json }}
    - tgt_type: list
    - args:
      - name: {{ tunnel | json }}
{%- endif %}
