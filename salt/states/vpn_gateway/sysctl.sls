{#- Kernel settings of a tunnel gateway, persisted in /etc/sysctl.d and applied
    now: it forwards between the tunnel and the pooler side, and neither
    reverse-path filtering nor ICMP redirects may reroute decrypted traffic. #}
include:
  - vpn_gateway.recovery_lock

{%- set settings = {
  'net.ipv4.ip_forward': 1,
  'net.ipv4.conf.all.rp_filter': 0,
  'net.ipv4.conf.default.rp_filter': 0,
  'net.ipv4.conf.all.send_redirects': 0,
  'net.ipv4.conf.default.send_redirects': 0,
  'net.ipv4.conf.all.accept_redirects': 0,
  'net.ipv4.conf.default.accept_redirects': 0,
} %}
{%- for name, value in settings.items() %}
vpn_gateway_sysctl_{{ name }}:
  sysctl.present:
    - name: {{ name }}
    - value: {{ value }}
    - config: /etc/sysctl.d/60-vpn-gateway.conf
{%- endfor %}
