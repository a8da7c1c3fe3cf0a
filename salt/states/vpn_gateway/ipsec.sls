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
  - vpn_gateway.recovery_lock
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

{#- Tunnels the state below created (track) and pillar no longer declares (renamed, or
    the tunnel section removed): taken down and deleted from pluto, their conf and
    secrets files removed; first (definition order, no requisite: a failed removal must not
    keep the declared tunnel from being applied), so a renamed tunnel with the same
    selectors is loaded after the old one is gone. An operator's own conns stay
    (docs/libreswan.md, "Removal"). #}
libreswan_pruned:
  libreswan.pruned:
    - conns: {{ ([tunnel.get('name', 'remote-db')] if tunnel else []) | json }}
    - require:
      - service: libreswan_service

{%- if tunnel %}

libreswan_tunnel:
  libreswan.conn_present:
    - name: {{ tunnel.get('name', 'remote-db') | json }}
    - psk_pillar: vpn_gateway:tunnel:psk
{%- if 'backup_psk' in tunnel %}
    - backup_psk_pillar: vpn_gateway:tunnel:backup_psk
{%- endif %}
    - source: vpn_gateway:tunnel
    - track: true
{%- for key in settings if key in tunnel %}
    - {{ key }}: {{ tunnel[key] | json }}
{%- endfor %}
    - require:
      - service: libreswan_service
{%- endif %}
