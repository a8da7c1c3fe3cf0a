{#- Monitoring and recovery (docs/monitoring.md): the memory and textfile
    directories, logrotate for the pack's logs, and a check of the settings.
    The beacon (salt/_beacons/libreswan.py) and the metrics schedule come from
    pillar (beacons:, schedule:); the reactor runs on the master
    (salt/reactor/libreswan.sls). Rendering fails, naming the pillar key, when
    vpn_gateway:monitoring is wrong: nothing changes then. #}
{%- from "vpn_gateway/map.jinja" import gateway with context %}
{%- set monitoring = salt['libreswan.monitoring_settings']() %}
{#- The pack's own logs, minus those another package's logrotate entry already rotates:
    per platform in map.jinja (EL's pgbouncer package ships one for its log, installed later
    in the same run), and what /etc/logrotate.d holds now (salt's packages rotate the
    minion's log). logrotate fails its whole run on a duplicate (docs/monitoring.md). #}
{%- set logs = salt['vpn_logrotate.uncovered'](
      [gateway.monitoring.minion_log]
      + ([] if gateway.monitoring.pgbouncer_log_rotated_by_package
         else [gateway.pgbouncer.log_dir ~ '/*.log'])
      + monitoring.logrotate.logs) %}

include:
  - vpn_gateway.recovery_lock

vpn_gateway_monitoring_memory:
  file.directory:
    - name: {{ monitoring.state_dir }}
    - user: root
    - group: root
    - mode: '0750'
    - makedirs: True

vpn_gateway_metrics_textfile_dir:
  file.directory:
    - name: {{ salt['file.dirname'](monitoring.metrics.path) }}
    - user: root
    - group: root
    - mode: '0755'
    - makedirs: True

vpn_gateway_logrotate_package:
  pkg.installed:
    - name: {{ gateway.monitoring.logrotate_package }}

vpn_gateway_logrotate:
  file.managed:
    - name: /etc/logrotate.d/vpn-gateway
    - source: salt://vpn_gateway/files/monitoring/logrotate.jinja
    - template: jinja
    - context:
        logs: {{ logs | json }}
        rotate: {{ monitoring.logrotate | json }}
    - user: root
    - group: root
    - mode: '0644'
    # Checked before it replaces the old one, with the whole configuration: logrotate.conf
    # and every other file in /etc/logrotate.d beside the candidate (copies in a temporary
    # directory), so a bad line and a log another entry already names (duplicate log
    # entry) are both refused. Only logrotate's error lines are reported.
    - check_cmd: |-
        sh -c '
        set -e
        others=$(mktemp -d); conf=$(mktemp)
        trap "rm -rf $others $conf" EXIT
        for f in /etc/logrotate.d/*; do
          if [ -f "$f" ] && [ "$f" != /etc/logrotate.d/vpn-gateway ]; then cp -p "$f" "$others/"; fi
        done
        cp "$1" "$others/vpn-gateway"
        sed "s|^\([[:space:]]*include[[:space:]]\{1,\}\)/etc/logrotate.d/\{0,1\}[[:space:]]*\$|\1$others|" /etc/logrotate.conf > "$conf"
        grep -q "include[[:space:]]*$others" "$conf" || echo "include $others" >> "$conf"
        out=$(logrotate --debug --state /dev/null "$conf" 2>&1) || { printf "%s\n" "$out" | grep -i "error" >&2; exit 1; }
        ' logrotate-check
    - require:
      - pkg: vpn_gateway_logrotate_package

{#- Prometheus (docs/monitoring.md, "Metrics"): node_exporter serves the textfile when
    metrics:node_exporter:enabled; the pack's alert rules land where
    metrics:prometheus_rules:path says when that is enabled (on a Prometheus host). #}
{%- set node_exporter = monitoring.metrics.get('node_exporter') or {} %}
{%- set prometheus_rules = monitoring.metrics.get('prometheus_rules') or {} %}
{%- if node_exporter.get('enabled') %}

vpn_gateway_node_exporter:
  pkg.installed:
    - name: {{ gateway.monitoring.node_exporter_package }}
    {#- Debian's recommends (prometheus-node-exporter-collectors: smartmontools, apt
        timers writing their own textfiles) are not the gateway's business. #}
    - install_recommends: False
  {#- As firewalld's (vpn_gateway.firewall): where the package starts the service, test=True
      cannot know better than "would be started" until it is installed, so the state only
      runs once it is (the real run, after the package); the onlyif only while it is
      missing. #}
  service.running:
    - name: {{ gateway.monitoring.node_exporter_service }}
    - enable: True
    - require:
      - pkg: vpn_gateway_node_exporter
      - file: vpn_gateway_metrics_textfile_dir
{%- if gateway.monitoring.node_exporter_started_by_package
      and not salt['pkg.version'](gateway.monitoring.node_exporter_package) %}
    - onlyif:
      - fun: pkg.version
        args: [{{ gateway.monitoring.node_exporter_package | json }}]
{%- endif %}
{%- endif %}
{%- if prometheus_rules.get('enabled') %}

vpn_gateway_prometheus_rules:
  file.managed:
    - name: {{ prometheus_rules.get('path') or '/etc/prometheus/vpn-gateway.rules.yml' }}
    - source: salt://vpn_gateway/files/prometheus/vpn-gateway.rules.yml
    - user: root
    - group: root
    - mode: '0644'
    - makedirs: True
    # Prometheus' own check where promtool is installed (the Prometheus host's package).
    - check_cmd: sh -c 'if command -v promtool >/dev/null; then promtool check rules "$1"; fi' rules-check
{%- endif %}
