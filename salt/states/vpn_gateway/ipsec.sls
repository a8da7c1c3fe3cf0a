{#- Libreswan on the gateway: package, kernel settings, NSS database (once),
    ipsec.service, and the tunnel from pillar vpn_gateway:tunnel. The PSK is
    read by the state from its pillar key, never passed as an argument. #}
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
  cmd.run:
    - name: ipsec initnss --nssdir {{ gateway.ipsec.nss_dir }}
    - creates: {{ gateway.ipsec.nss_dir }}/cert9.db
    - require:
      - pkg: libreswan_package

libreswan_service:
  service.running:
    - name: {{ gateway.ipsec.service }}
    - enable: true
    - require:
      - cmd: libreswan_nss_db
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
