# Every minion gets the grains state, which gives minions whose id starts with
# vpn-gw the vpn-gw role (minions apply it at start: startup_states); the
# gateway role's states are assigned by that grain.
base:
  '*':
    - vpn_gateway.grains
  'roles:vpn-gw':
    - match: grain
    - vpn_gateway
