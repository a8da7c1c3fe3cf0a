{#- Monitoring and recovery (docs/monitoring.md): the memory and textfile
    directories, logrotate for the pack's logs, and a check of the settings.
    The beacon (salt/_beacons/libreswan.py) and the metrics schedule come from
    pillar (beacons:, schedule:); the reactor runs on the master
    (salt/reactor/libreswan.sls). Rendering fails, naming the pillar key, when
    vpn_gateway:monitoring is wrong: nothing changes then. #}
{%- from "vpn_gateway/map.jinja" import gateway with context %}
{%- set monitoring = salt['libreswan.monitoring_settings']() %}
{%- set logs = [gateway.monitoring.minion_log, gateway.pgbouncer.log_dir ~ '/*.log']
               + monitoring.logrotate.logs %}

# The host's recovery lock for the whole run (docs/monitoring.md, "Recovery and
# state runs"): first, it waits while a recovery ladder runs; last, it lets go.
vpn_gateway_recovery_lock:
  libreswan.recovery_lock:
    - timeout: 300
    - order: first
    - failhard: True

vpn_gateway_recovery_lock_released:
  libreswan.recovery_lock_released:
    - order: last

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
    # logrotate refuses the whole file on one bad line: check it before it replaces the old one.
    - check_cmd: logrotate --debug --state /dev/null
    - require:
      - pkg: vpn_gateway_logrotate_package
