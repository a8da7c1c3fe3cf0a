{#- Libreswan on the gateway: package, kernel settings, NSS database (once, in
    the directory this Libreswan uses: libreswan.nss_dir asks the installed
    tools, so no path is written here), ipsec.service, and the tunnel from
    pillar vpn_gateway:tunnel. The PSK is read by the state from its pillar
    key, never passed as an argument. The libreswan states load without the
    package, so test=True on a fresh host predicts each of them. #}
{%- from "vpn_gateway/map.jinja" import gateway with context %}
{%- set tunnel = salt['pillar.get']('vpn_gateway:tunnel', {}) %}
{%- set settings = ['local', 'peers', 'remote_subnets', 'ike', 'phase2alg', 'pfs', 'ikelifetime',
                    'salifetime', 'dpddelay', 'fragmentation', 'narrowing', 'auto',
                    'ike_version', 'allow_weak_algorithms'] %}
include:
  - vpn_gateway.sysctl

libreswan_package:
  pkg.installed:
    - name: {{ gateway.ipsec.package }}

libreswan_nss_db:
  libreswan.nss_initialized:
    - require:
      - pkg: libreswan_package

libreswan_service:
  service.running:
    - name: {{ gateway.ipsec.service }}
    - enable: true
    - require:
      - libreswan: libreswan_nss_db
      - sls: vpn_gateway.sysctl

{%- if tunnel %}

libreswan_tunnel:
  libreswan.conn_present:
    - name: {{ tunnel.get('name', 'remote-db') | json }}
    - psk_pillar: vpn_gateway:tunnel:psk
{%- if 'backup_psk' in tunnel %}
    - backup_psk_pillar: vpn_gateway:tunnel:backup_psk
{%- endif %}
    - source: vpn_gateway:tunnel
{%- for key in settings if key in tunnel %}
    - {{ key }}: {{ tunnel[key] | json }}
{%- endfor %}
    - require:
      - service: libreswan_service
{%- endif %}
