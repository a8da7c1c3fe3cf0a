# Every minion gets the grains state, which gives minions whose id starts with
# vpn-gw the vpn-gw role; the gateway role's states are assigned by that grain.
base:
  '*':
    - vpn_gateway.grains
