base:
  'vpn-gw*':
    - vpn_gateway
