{#- The gateway role. Pillar is checked against schema.yaml first: a wrong key
    fails the render, naming the key, before anything on the host changes.
    Order comes from requisites inside the sub-states (sysctl -> ipsec ->
    pgbouncer, which requires the tunnel -> firewall -> monitoring -> tools),
    not from this list. vpn_gateway.k8s acts only on the minion that pillar
    names (vpn_gateway:kubernetes:minion). #}
{%- import_yaml "vpn_gateway/schema.yaml" as schema %}
{%- do salt['vpn_gateway.check_pillar'](schema=schema, raise_on_error=True) %}
include:
  - vpn_gateway.sysctl
  - vpn_gateway.ipsec
  - vpn_gateway.pgbouncer
  - vpn_gateway.firewall
  - vpn_gateway.k8s
  - vpn_gateway.monitoring
  - vpn_gateway.tools
