{#- Minions whose id starts with vpn-gw carry the vpn-gw role (top.sls
    assigns the gateway's states by the roles grain). #}
{%- if grains['id'].startswith('vpn-gw') %}
vpn_gateway_role_grain:
  grains.list_present:
    - name: roles
    - value: vpn-gw
{%- endif %}
