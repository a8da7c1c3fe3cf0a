{#- The gateway role. Pillar is checked against schema.yaml first: a wrong key
    fails the render, naming the key, before anything on the host changes.
    The order is tied with requisites: ipsec requires sysctl (in ipsec.sls);
    here, for the role only, the pooler requires the tunnel and the firewall's
    rules wait for the pooler, so each sub-state still applies on its own.
    Monitoring and tools depend on nothing and run last (include order);
    a tunnel failure must not keep the troubleshooting tools away.
    vpn_gateway.k8s acts only on the minion that pillar names
    (vpn_gateway:kubernetes:minion). #}
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

extend:
  # Debian's pgbouncer depends on logrotate: installing logrotate first keeps the
  # monitoring formula's own install a real change, as test=True predicts it.
  vpn_gateway_logrotate_package:
    pkg:
      - require_in:
        - pkg: pgbouncer-package
  pgbouncer-service:
    service:
      - require:
        - sls: vpn_gateway.ipsec
  firewalld-gateway-rules:
    firewalld:
      - require:
        - service: pgbouncer-service
