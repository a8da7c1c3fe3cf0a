"""The rich rule parser, normal form, planner, guard and pillar derivation."""
import json
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ESP_PRIMARY = 'rule family="ipv4" source address="198.18.0.21" protocol value="esp" accept'
PEERS = {"primary": {"address": "198.18.0.21"}, "backup": {"address": "198.18.0.22"}}


@pytest.mark.parametrize("spelling", [
    # quoting, order and spacing
    "rule family=ipv4 source address=198.18.0.21 protocol value=esp accept",
    "rule  protocol value='esp'   source address=\"198.18.0.21\" family='ipv4' accept",
    "rule source address=198.18.0.21 family=ipv4 protocol value=esp accept",
    # values: /32, protocol number, capitals, priority 0, family left to the address
    'rule priority="0" family="ipv4" source address="198.18.0.21/32" protocol value="50" accept',
    'rule family="IPv4" source address="198.18.0.21" protocol value="ESP" ACCEPT',
    'rule source address="198.18.0.21" protocol value="esp" accept',
])
def test_spellings_of_one_rule_have_one_normal_form(fr, spelling):
    assert fr._parse_rule(spelling).render() == ESP_PRIMARY
    assert fr._parse_rule(spelling) == fr._parse_rule(ESP_PRIMARY)


@pytest.mark.parametrize("spelling, normal", [
    ('rule family=ipv4 source address=198.18.2.31 port port=isakmp protocol=udp accept',
     'rule family="ipv4" source address="198.18.2.31" port port="500" protocol="udp" accept'),
    ('rule family=ipv4 source address=198.18.2.31 port port=0500 protocol=UDP accept',
     'rule family="ipv4" source address="198.18.2.31" port port="500" protocol="udp" accept'),
    ('rule family=ipv4 source address=198.18.2.31 port port=22-22 protocol=tcp accept',
     'rule family="ipv4" source address="198.18.2.31" port port="22" protocol="tcp" accept'),
    ('rule family=ipv4 source address=198.18.2.5/24 port port=1000-2000 protocol=tcp drop',
     'rule family="ipv4" source address="198.18.2.0/24" port port="1000-2000" protocol="tcp" drop'),
    ('rule family=ipv6 source NOT address=2001:DB8:0::1/128 service name=ssh reject',
     'rule family="ipv6" source NOT address="2001:db8::1" service name="ssh" reject'),
    ('rule family=ipv4 source address=198.18.1.0/24 port port=22 protocol=tcp '
     'log level=INFO prefix="ssh " limit value=3/minute accept limit value=10/second',
     'rule family="ipv4" source address="198.18.1.0/24" port port="22" protocol="tcp" '
     'log prefix="ssh " level="info" limit value="3/m" accept limit value="10/s"'),
    ('rule priority=-5 family=ipv4 source ipset=peers audit drop',
     'rule priority="-5" family="ipv4" source ipset="peers" audit drop'),
])
def test_values_are_normalised(fr, spelling, normal):
    assert fr._parse_rule(spelling).render() == normal


def test_structured_arguments_equal_the_rule_string(fr):
    assert fr._build_rule(source="198.18.0.21/32", protocol="50", action="accept").render() \
        == ESP_PRIMARY
    assert fr._to_rule({"source": "198.18.0.22", "port": "ipsec-nat-t", "protocol": "udp",
                       "action": "accept"}).render() \
        == 'rule family="ipv4" source address="198.18.0.22" port port="4500" protocol="udp" accept'
    assert fr._to_rule({"rule": ESP_PRIMARY}) == fr._to_rule(ESP_PRIMARY)


def _firewalld_prints(rules):
    """What firewalld's own parser (Debian's python3-firewall) makes of each rule."""
    code = ("import json,sys\nfrom firewall.core.rich import Rich_Rule\n"
            "print(json.dumps([str(Rich_Rule(rule_str=r)) for r in json.load(sys.stdin)]))")
    proc = subprocess.run(["/usr/bin/python3", "-c", code], input=json.dumps(rules),
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def test_firewalld_accepts_our_normal_form_unchanged(fr):
    if not Path("/usr/lib/python3/dist-packages/firewall/core/rich.py").exists():
        pytest.skip("python3-firewall (Debian's firewalld) is not installed")
    rules = [fr._parse_rule(text).render() for text in (
        ESP_PRIMARY,
        'rule priority=-5 family=ipv4 source NOT ipset=peers log prefix=x limit value=1/m drop',
        'rule family=ipv6 source address=2001:db8::/64 service name=ssh reject '
        'type=icmp6-adm-prohibited',
        'rule family=ipv4 destination address=198.19.10.1 port port=6432 protocol=tcp accept '
        'limit value=100/s',
    )] + fr._gateway_rules(PEERS, ["198.18.2.31"], 6432, 9100, "198.18.1.2")
    assert _firewalld_prints(rules) == rules


# -- bad input: one test per case, each a clear error ---------------------------------


def _error(fr, rule, services=None):
    with pytest.raises(fr.RuleError) as caught:
        fr._to_rule(rule, services)
    return str(caught.value)


def test_bad_address(fr):
    message = _error(fr, {"source": "198.18.0.300", "action": "accept"})
    assert "bad address '198.18.0.300'" in message


def test_family_mismatch(fr):
    message = _error(fr, 'rule family="ipv6" source address="198.18.0.21" accept')
    assert "family mismatch" in message and "198.18.0.21 is an ipv4 address" in message
    assert "family mismatch" in _error(fr, {"source": "198.18.0.21",
                                            "destination": "2001:db8::1", "action": "accept"})


def test_unknown_protocol(fr):
    assert "unknown protocol 'espx'" in _error(fr, {"protocol": "espx", "action": "accept"})
    assert "a port needs protocol one of tcp, udp" in _error(
        fr, {"port": 500, "protocol": "esp", "action": "accept"})


def test_unknown_service(fr):
    message = _error(fr, {"service": "postgres-ish", "action": "accept"}, {"ssh", "postgresql"})
    assert "unknown service 'postgres-ish'" in message and "--get-services" in message


def test_missing_action(fr):
    assert "missing action" in _error(fr, 'rule family=ipv4 source address=198.18.0.21')
    assert "missing action" in _error(fr, {"source": "198.18.0.21", "port": 22,
                                           "protocol": "tcp"})


@pytest.mark.parametrize("port", [0, 65536, "70000", "2000-1000", "not-a-service"])
def test_port_out_of_range(fr, port):
    message = _error(fr, {"port": port, "protocol": "tcp", "action": "accept"})
    assert str(port).split("-")[0] in message
    assert any(hint in message for hint in ("1-65535", "low-high", "/etc/services"))


@pytest.mark.parametrize("rule, what", [
    ({"port": 22, "protocol": "tcp", "service": "ssh", "action": "accept"}, "port and service"),
    ('rule port port=22 protocol=tcp protocol value=esp accept', "a rule holds one of"),
    ('rule source address=198.18.0.1 source address=198.18.0.2 accept', "source given twice"),
    ({"source": "198.18.0.1", "source_ipset": "x", "action": "accept"}, "one of address, ipset"),
    ('rule source address=198.18.0.1 accept drop', "action given twice"),
])
def test_conflicting_elements(fr, rule, what):
    message = _error(fr, rule)
    assert "conflicting" in message and what in message


def test_other_bad_forms(fr):
    assert "starts with 'rule'" in _error(fr, 'drop')
    assert "unbalanced quotes" in _error(fr, 'rule source address="198.18.0.1 accept')
    assert "unknown rule argument(s) sauce" in _error(fr, {"sauce": "x", "action": "accept"})
    assert "priority 99999 out of range" in _error(fr, {"priority": 99999, "action": "drop"})
    assert "log level 'loud'" in _error(fr, {"log_level": "loud", "action": "drop"})
    assert "reject type" in _error(fr, {"reject_type": "tcp-reset", "action": "drop"})


# -- planning --------------------------------------------------------------------------

OTHER = 'rule family="ipv4" source address="198.18.0.99" port port="80" protocol="tcp" accept'


def _rules(fr, *texts):
    return [fr._parse_rule(t) for t in texts]


def test_plan_adds_to_both_configurations_and_never_touches_others(fr):
    plan = fr._plan_zone({"runtime": [OTHER], "permanent": [OTHER]}, _rules(fr, ESP_PRIMARY))
    for side in ("runtime", "permanent"):
        assert plan[side] == {"add": [ESP_PRIMARY], "remove": []}
        assert plan["rules"][side] == [OTHER, ESP_PRIMARY]
    assert plan["owned"] == [ESP_PRIMARY]


def test_plan_recognises_other_spellings_as_the_same_rule(fr):
    held = 'rule family="ipv4" source address="198.18.0.21/32" protocol value="50" accept'
    plan = fr._plan_zone({"runtime": [held], "permanent": [held]}, _rules(fr, ESP_PRIMARY))
    assert not fr._has_changes(plan)
    assert plan["owned"] == []  # it was there before: not ours


def test_plan_repairs_runtime_drift_both_ways(fr):
    plan = fr._plan_zone({"runtime": [], "permanent": [ESP_PRIMARY]}, _rules(fr, ESP_PRIMARY),
                         owned=[ESP_PRIMARY])
    assert plan["runtime"]["add"] == [ESP_PRIMARY] and plan["permanent"]["add"] == []
    plan = fr._plan_zone({"runtime": [ESP_PRIMARY], "permanent": []}, _rules(fr, ESP_PRIMARY))
    assert plan["permanent"]["add"] == [ESP_PRIMARY] and plan["runtime"]["add"] == []


def test_plan_absent_removes_every_spelling_as_firewalld_holds_it(fr):
    held = 'rule family="ipv4" source address="198.18.0.21/32" protocol value="50" accept'
    plan = fr._plan_zone({"runtime": [held, OTHER], "permanent": [held]}, (),
                         _rules(fr, ESP_PRIMARY), owned=[ESP_PRIMARY])
    assert plan["runtime"]["remove"] == [held] and plan["permanent"]["remove"] == [held]
    assert plan["rules"]["runtime"] == [OTHER]
    assert plan["owned"] == []


def test_prune_removes_only_owned_rules_no_longer_declared(fr):
    dropped = ('rule family="ipv4" source address="198.18.2.32" port port="6432" '
               'protocol="tcp" accept')
    current = [OTHER, ESP_PRIMARY, dropped, "rule something firewalld-only"]
    owned = [ESP_PRIMARY, dropped]
    plan = fr._plan_zone({"runtime": current, "permanent": current}, _rules(fr, ESP_PRIMARY),
                         owned=owned, prune_owned=True)
    assert plan["runtime"]["remove"] == [dropped]
    assert plan["rules"]["runtime"] == [OTHER, ESP_PRIMARY, "rule something firewalld-only"]
    assert plan["owned"] == [ESP_PRIMARY]
    without = fr._plan_zone({"runtime": current, "permanent": current}, _rules(fr, ESP_PRIMARY),
                            owned=owned)
    assert not fr._has_changes(without)


def test_plan_refuses_a_rule_both_present_and_absent(fr):
    with pytest.raises(fr.RuleError, match="both present and absent"):
        fr._plan_zone({}, _rules(fr, ESP_PRIMARY), _rules(fr, ESP_PRIMARY.replace('"esp"', "50")))


# -- the guard ---------------------------------------------------------------------------

ZONE = {"target": "default", "services": ["ssh"]}
SERVICE_PORTS = {"ssh": [("22", "tcp")]}


def _guard(fr, before, after, zone=ZONE):
    flows = fr._guard_flows(["198.18.1.0/24"], "198.18.1.2")
    fr._check_guard(_rules(fr, *before), _rules(fr, *after), zone, flows, SERVICE_PORTS)


def test_guard_allows_the_gateway_rules(fr):
    _guard(fr, [], fr._gateway_rules(PEERS, ["198.18.2.31"], 6432, 9100))


@pytest.mark.parametrize("rule", [
    'rule family=ipv4 source address=198.18.1.0/24 drop',
    'rule family=ipv4 source address=198.18.1.7 port port=22 protocol=tcp reject',
    'rule family=ipv4 source NOT address=198.18.2.0/24 service name=ssh drop',
    'rule priority=-1 family=ipv4 source address=198.18.1.2 source-port port=4505 protocol=tcp '
    'drop',
    'rule family=ipv4 source address=198.18.1.0/28 port port=40000-40100 protocol=tcp reject',
    'rule family=ipv4 source address=198.18.0.0/16 protocol value=tcp drop',
])
def test_guard_refuses_rules_that_cut_management_access(fr, rule):
    with pytest.raises(fr.RuleError, match="would cut management access"):
        _guard(fr, [], [rule])


def test_guard_lets_an_earlier_accept_win(fr):
    _guard(fr, [], ['rule priority=-10 family=ipv4 source address=198.18.1.0/24 accept',
                    'rule family=ipv4 source address=198.18.0.0/16 drop'])


def test_guard_ignores_denials_elsewhere(fr):
    _guard(fr, [], ['rule family=ipv4 source address=198.18.1.2 port port=4505 protocol=tcp drop',
                    'rule family=ipv4 source address=198.18.2.0/24 drop',
                    'rule family=ipv6 source address=2001:db8::/32 drop'])


def test_guard_refuses_pruning_the_master_rule(fr):
    master = fr._gateway_rules(PEERS, [], 6432, salt_master="198.18.1.2")[-1]
    with pytest.raises(fr.RuleError, match="salt-master connection .* no longer"):
        _guard(fr, [master], [])


def test_guard_refuses_removing_the_only_accept(fr):
    ssh = 'rule family="ipv4" source address="198.18.1.0/24" port port="22" protocol="tcp" accept'
    with pytest.raises(fr.RuleError, match="allowed now and would no longer be"):
        _guard(fr, [ssh], [], zone={"target": "default"})
    _guard(fr, [ssh], [])  # the zone's ssh service still allows it


def test_guard_names_the_pillar_key_for_a_bad_network(fr):
    with pytest.raises(fr.RuleError, match="vpn_gateway:firewall:management_networks"):
        fr._guard_flows(["198.18.1.0/33"])


# -- the gateway's rules from pillar ----------------------------------------------------------


def test_gateway_rules_from_pillar(fr):
    expected = [{"source_ipset": "vgw-peers", "port": port, "protocol": "udp"}
                for port in (500, 4500)]
    expected += [{"source_ipset": "vgw-peers", "protocol": "esp"}]
    expected += [{"source_ipset": "vgw-nodes", "port": port, "protocol": "tcp"}
                 for port in (6432, 9100)]
    assert sorted(fr._gateway_rules(PEERS, ["198.18.2.31"], 6432, 9100)) \
        == sorted(fr._to_rule({**spec, "family": "ipv4", "action": "accept"}).render()
                  for spec in expected)
    assert fr._gateway_ipsets(PEERS, ["198.18.2.31"]) == {
        "vgw-peers": {"type": "hash:ip", "family": "inet",
                      "entries": ["198.18.0.21", "198.18.0.22"]},
        "vgw-nodes": {"type": "hash:ip", "family": "inet", "entries": ["198.18.2.31"]}}


def test_the_per_address_derivation_is_still_there_for_the_benchmark(fr):
    expected = [{"source": peer, "port": port, "protocol": "udp"}
                for peer in ("198.18.0.21", "198.18.0.22") for port in (500, 4500)]
    expected += [{"source": peer, "protocol": "esp"} for peer in ("198.18.0.21", "198.18.0.22")]
    expected += [{"source": "198.18.2.31", "port": port, "protocol": "tcp"}
                 for port in (6432, 9100)]
    assert sorted(fr._gateway_rules(PEERS, ["198.18.2.31"], 6432, 9100, ipsets=False)) \
        == sorted(fr._to_rule({**spec, "action": "accept"}).render() for spec in expected)


def test_ipv6_addresses_get_ipsets_and_rules_of_their_own(fr):
    ipsets = fr._gateway_ipsets(PEERS, ["198.18.2.31", "2001:DB8::0:1", "198.18.2.31"])
    assert ipsets["vgw-nodes"]["entries"] == ["198.18.2.31"]  # once
    assert ipsets["vgw-nodes6"] == {"type": "hash:ip", "family": "inet6",
                                    "entries": ["2001:db8::1"]}
    assert "vgw-peers6" not in ipsets
    rules = fr._gateway_rules(PEERS, ["2001:db8::1"], 6432, 9100)
    assert 'rule family="ipv6" source ipset="vgw-nodes6" port port="6432" protocol="tcp" ' \
           'accept' in rules and len(rules) == 3 + 2 + 2


def test_the_salt_master_side_of_the_minion_connections_is_accepted(fr):
    rules = set(fr._gateway_rules(PEERS, [], 6432, salt_master=["198.18.1.2", "198.18.1.3"]))
    assert rules - set(fr._gateway_rules(PEERS, [], 6432)) == {
        f'rule family="ipv4" source address="198.18.1.{n}" source-port port="4505-4506" '
        'protocol="tcp" accept' for n in (2, 3)}


def test_adding_a_node_or_a_peer_changes_an_ipset_entry_not_the_rules(fr):
    before = fr._gateway_rules(PEERS, ["198.18.2.31"], 6432, 9100)
    nodes = [f"198.18.{3 + i // 250}.{i % 250 + 1}" for i in range(1000)]
    peers = {**PEERS, "third": {"address": "198.18.0.23"}}
    assert fr._gateway_rules(peers, nodes, 6432, 9100) == before  # constant
    ipsets = fr._gateway_ipsets(peers, ["198.18.2.31", "198.18.2.32"])
    assert ipsets["vgw-nodes"]["entries"] == ["198.18.2.31", "198.18.2.32"]
    assert ipsets["vgw-peers"]["entries"] == ["198.18.0.21", "198.18.0.22", "198.18.0.23"]
    assert len(fr._gateway_ipsets(peers, nodes)["vgw-nodes"]["entries"]) == 1000


@pytest.mark.parametrize("peers, nodes, port, key", [
    ({"primary": {}}, [], 6432, "vpn_gateway:tunnel:peers:primary:address"),
    ({"primary": {"address": "gw.example"}}, [], 6432, "vpn_gateway:tunnel:peers:primary:address"),
    (PEERS, ["198.18.2.31", "198.18.2"], 6432, "vpn_gateway:kubernetes:nodes[1]"),
    (PEERS, ["198.18.2.31", "198.18.2.0/24"], 6432, "vpn_gateway:kubernetes:nodes[1]"),
    (PEERS, ["198.18.2.31"], 99999, "vpn_gateway:pooler:listen_port"),
    ({}, [], 6432, "vpn_gateway:tunnel:peers"),
])
@pytest.mark.parametrize("ipsets", [True, False])
def test_bad_pillar_names_its_key(fr, peers, nodes, port, key, ipsets):
    if not ipsets and "/" in str(nodes):
        return  # the per-address derivation takes networks
    with pytest.raises(fr.RuleError) as caught:
        fr._gateway_rules(peers, nodes, port, ipsets=ipsets)
    assert str(caught.value).startswith(key)
    if ipsets and "port" not in key:
        with pytest.raises(fr.RuleError, match=key.replace("[", r"\[")):
            fr._gateway_ipsets(peers, nodes)


# -- the formula renders where firewalld's Salt modules do not load ----------------------------


def test_the_formula_renders_without_firewalld_modules(salt_call_without_firewalld):
    """A fresh host has no firewalld: Salt core's firewalld module does not load, and
    the render must not need it (nor this pack's firewalld module) to derive the rules."""
    pillar = {"vpn_gateway": {"tunnel": {"peers": PEERS},
                              "kubernetes": {"nodes": ["198.18.2.31"]},
                              "pooler": {"listen_port": 6432},
                              "firewall": {"salt_master": "198.18.1.2"}}}
    code, rendered = salt_call_without_firewalld("state.show_sls", "vpn_gateway.firewall",
                                                 pillar=pillar)
    assert code == 0 and isinstance(rendered, dict), rendered
    rules = rendered["firewalld-gateway-rules"]["firewalld"]
    declared = next(arg["rules"] for arg in rules if isinstance(arg, dict) and "rules" in arg)
    esp = 'rule family="ipv4" source ipset="vgw-peers" protocol value="esp" accept'
    assert esp in declared and len(declared) == 3 + 2 + 1, declared
    assert "rich_rules_managed" in rules
    ipsets = next(arg["ipsets"] for arg in rules if isinstance(arg, dict) and "ipsets" in arg)
    assert ipsets == {"vgw-peers": {"type": "hash:ip", "family": "inet",
                                    "entries": ["198.18.0.21", "198.18.0.22"]},
                      "vgw-nodes": {"type": "hash:ip", "family": "inet",
                                    "entries": ["198.18.2.31"]}}


# -- firewalld not running: what it will load --------------------------------------------------


LISTING = """\
public (default)
  target: default
  icmp-block-inversion: no
  interfaces:
  sources:
  services: dhcpv6-client ssh
  ports: 7002/tcp 1000-2000/udp
  protocols:
  forward: yes
  masquerade: no
  forward-ports:
  source-ports:
  icmp-blocks:
  rich rules:
\trule family="ipv4" source address="198.18.0.21" protocol value="esp" accept
\trule family="ipv4" source address="198.18.2.99/32" port port="09100" protocol="tcp" drop
"""


def test_a_zone_listing_is_read_as_firewalld_will_load_it(fr):
    settings, rules = fr._parse_listing(LISTING)
    assert settings == {"target": "default", "services": ["dhcpv6-client", "ssh"],
                        "ports": [("7002", "tcp"), ("1000-2000", "udp")]}
    assert rules == [ESP_PRIMARY, 'rule family="ipv4" source address="198.18.2.99/32" '
                                  'port port="09100" protocol="tcp" drop']


def test_the_default_zone_comes_from_firewalld_conf(fr, tmp_path):
    conf = tmp_path / "firewalld.conf"
    assert fr._default_zone(str(conf)) == "public"  # not installed: firewalld's default
    conf.write_text("# comment\nDefaultZone=internal\nCleanupOnExit=yes\n")
    assert fr._default_zone(str(conf)) == "internal"


def test_protocol_names_do_not_need_netbase(fr):
    # Debian 12's minbase has no /etc/protocols: the rules must render the same
    by_name, by_number = fr._protocols("/nonexistent/protocols")
    assert by_name["esp"] == 50 and by_number[50] == "esp" and by_number[51] == "ah"
    full = fr._protocols()
    assert all(full[1][number] == name for name, number in fr.KNOWN_PROTOCOLS.items()
               if number in full[1] and Path("/etc/protocols").exists())
