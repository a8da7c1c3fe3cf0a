{#- Troubleshooting tools an operator expects on a gateway: psql, tcpdump,
    nmap, traceroute (package names per OS family in map.jinja). #}
include:
  - vpn_gateway.recovery_lock

{%- from "vpn_gateway/map.jinja" import gateway with context %}

vpn_gateway_tools:
  pkg.installed:
    - pkgs: {{ gateway.tools.packages | json }}
