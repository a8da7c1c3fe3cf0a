"""firewalld rich rules in the lab: real firewalld under systemd in vpn-gw1, driven
from the salt-master; traffic from k8s-node1, remote-gw-backup and outsider.

The tests run in file order on one lab: each leaves the zone as the next expects.
"""
import json
import time

import pytest

from lab import saltstack
from repo_modules import load

pytestmark = pytest.mark.lab

HOSTS = ["salt-master", "vpn-gw1", "remote-gw-backup", "k8s-node1", "outsider"]
GW = "vpn-gw1"
GW_K8S, GW_WAN = "198.18.2.11", "198.18.0.11"
NODE, NODE2, NODE3 = "198.18.2.31", "198.18.2.32", "198.18.2.33"
MASTER = "198.18.1.2"
POOLER, EXPORTER = 6432, 9100
PEERS = {"primary": {"address": "198.18.0.21"}, "backup": {"address": "198.18.0.22"}}
FIREWALL = {"zone": "public", "management_networks": ["198.18.1.0/24"],
            "node_exporter_port": EXPORTER, "prune_owned": True, "rules": []}
DBUS = "org.fedoraproject.FirewallD1"
RULE_STATE = "firewalld_|-firewalld-gateway-rules_|-public_|-rich_rules_managed"

ECHO_SERVER = """\
import socketserver, sys
proto, port = sys.argv[1], int(sys.argv[2])
class Stream(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)
class Datagram(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(data, self.client_address)
server = (socketserver.ThreadingTCPServer((\"\", port), Stream) if proto == "tcp"
          else socketserver.UDPServer((\"\", port), Datagram))
server.serve_forever()
"""
UDP_PROBE = """\
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(b"ike?", (sys.argv[1], int(sys.argv[2])))
sys.exit(0 if s.recv(64) == b"ike?" else 1)
"""
# Connects, proves the echo, then waits for /root/client.go to use the same
# connection again; writes ok or broken to /root/client.result.
LONG_CLIENT = """\
import os, socket, sys, time
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
stream = conn.makefile("rw")
stream.write("one\\n"); stream.flush()
assert stream.readline() == "one\\n"
open("/root/client.connected", "w").close()
while not os.path.exists("/root/client.go"):
    time.sleep(0.1)
stream.write("two\\n"); stream.flush()
answer = stream.readline()
open("/root/client.result", "w").write("ok" if answer == "two\\n" else "broken")
"""


def pillar(nodes=(NODE,), peers=PEERS, **firewall):
    return {"vpn_gateway": {"tunnel": {"peers": peers}, "kubernetes": {"nodes": list(nodes)},
                            "pooler": {"listen_port": POOLER},
                            "firewall": {**FIREWALL, **firewall}}}


# The rules the formula should derive, written out here independently: their sources
# are the ipsets, so they do not depend on the nodes or the peers.
PEER_SRC = 'rule family="ipv4" source ipset="vgw-peers"'
NODE_SRC = 'rule family="ipv4" source ipset="vgw-nodes"'
DERIVED = frozenset({
    f'{PEER_SRC} port port="500" protocol="udp" accept',
    f'{PEER_SRC} port port="4500" protocol="udp" accept',
    f'{PEER_SRC} protocol value="esp" accept',
    *(f'{NODE_SRC} port port="{port}" protocol="tcp" accept' for port in (POOLER, EXPORTER)),
    f'rule family="ipv4" source address="{MASTER}" source-port port="4505-4506" protocol="tcp" '
    'accept'})
IKE = f'{PEER_SRC} port port="500" protocol="udp" accept'
ESP = f'{PEER_SRC} protocol value="esp" accept'


def derived():
    return set(DERIVED)


def entries(nodes=(NODE,), peers=PEERS):
    """The ipsets' entries the formula should declare: {name: set}."""
    return {"vgw-nodes": set(nodes), "vgw-peers": {p["address"] for p in peers.values()}}


@pytest.fixture(scope="module")
def lab(lab_factory):
    lab = lab_factory(HOSTS, pillar=saltstack.QUIET_SCHEDULES)  # not this area's
    saltstack.salt(lab, GW, "saltutil.sync_all")  # no-op when the master's reactor was first
    synced = saltstack.salt(lab, GW, "saltutil.list_extmods")[GW]
    assert "firewalld_rich" in synced["states"], synced
    gw = lab[GW]
    gw.put("/root/echo_server.py", ECHO_SERVER)
    for proto, port in (("tcp", POOLER), ("tcp", EXPORTER), ("udp", 500)):
        gw.run(["systemd-run", f"--unit=echo-{proto}-{port}", "/usr/bin/python3",
                "/root/echo_server.py", proto, str(port)], check=True)
    gw.wait_port(POOLER)
    for host in ("k8s-node1", "outsider", "remote-gw-backup"):
        lab[host].put("/root/udp_probe.py", UDP_PROBE)
    return lab


def salt(lab, function, *args, **kwargs):
    args = [*args, *(f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                     for k, v in kwargs.items())]
    return saltstack.salt(lab, GW, function, *args)[GW]


def apply_formula(lab, test=False, **pillar_args):
    return salt(lab, "state.apply", "vpn_gateway.firewall",
                f"pillar={json.dumps(pillar(**pillar_args))}", *(["test=True"] if test else []))


def single(lab, function, test=False, **kwargs):
    ret = salt(lab, "state.single", f"firewalld.{function}", **kwargs,
               **({"test": True} if test else {}))
    assert isinstance(ret, dict) and len(ret) == 1, ret
    return next(iter(ret.values()))


def zone(lab):
    """(runtime, permanent) rich rules of zone public, read from firewalld over D-Bus
    (firewall-cmd takes seconds a call on a loaded machine)."""
    def call(path, interface, *args):
        out = lab[GW].run(["busctl", "--json=short", "call", DBUS, path, f"{DBUS}{interface}",
                           *args], check=True).stdout
        return json.loads(out)["data"][0]

    path = f"/{DBUS.replace('.', '/')}"
    runtime = call(path, ".zone", "getZoneSettings2", "s", "public")
    permanent = call(call(f"{path}/config", ".config", "getZoneByName", "s", "public"),
                     ".config.zone", "getSettings2")
    return tuple(frozenset(settings.get("rules_str", {}).get("data", []))
                 for settings in (runtime, permanent))


def held(lab, permanent=False):
    return zone(lab)[permanent]


def ipsets(lab, names=("vgw-nodes", "vgw-peers")):
    """{name: (runtime entries, permanent entries)} read from firewalld over D-Bus
    (None for a side that does not hold the ipset)."""
    def call(path, interface, *args):
        out = lab[GW].run(["busctl", "--json=short", "call", DBUS, path, f"{DBUS}{interface}",
                           *args], check=True).stdout
        return json.loads(out)["data"][0]

    path = f"/{DBUS.replace('.', '/')}"
    runtime, permanent = call(path, ".ipset", "getIPSets"), call(
        f"{path}/config", ".config", "getIPSetNames")
    found = {}
    for name in names:
        now = frozenset(call(path, ".ipset", "getIPSetSettings", "s", name)[5]) \
            if name in runtime else None
        saved = frozenset(call(call(f"{path}/config", ".config", "getIPSetByName", "s", name),
                               ".config.ipset", "getSettings")[5]) if name in permanent else None
        found[name] = (now, saved)
    return found


def both(sets):
    """{name: set} -> {name: (set, set)}, as ipsets() reads them."""
    return {name: (frozenset(value), frozenset(value)) for name, value in sets.items()}


def added(**ipset_entries):
    """The changes of entries added on both sides: {"ipsets": {name: ...}}."""
    return {"ipsets": {name: {"runtime": {"add": list(new)}, "permanent": {"add": list(new)}}
                       for name, new in ipset_entries.items()}}


def firewall_cmd(lab, *args):
    lab[GW].run(["firewall-cmd", "--zone=public", *args], check=True)


def tcp_open(lab, host, address, port):
    probe = f"exec 3<>/dev/tcp/{address}/{port}"
    return lab[host].run(["timeout", "5", "bash", "-c", probe], timeout=15).ok


def udp_answered(lab, host, address, port):
    return lab[host].run(["python3", "/root/udp_probe.py", address, str(port)], timeout=15).ok


def states(lab, function, cases, test=False):
    """Run one firewalld.<function> state per case (id: its arguments) in one
    state run; {id: result}."""
    high = {case: {"firewalld": [function, {"zone": "public"}, *({k: v} for k, v in args.items())]}
            for case, args in cases.items()}
    ret = salt(lab, "state.high", json.dumps(high), *(["test=True"] if test else []))
    assert isinstance(ret, dict), ret
    return {r["__id__"]: r for r in ret.values()}


def changes_of(ret):
    return {tag: r["changes"] for tag, r in ret.items() if r["changes"]}


def as_set(changes, side, op):
    return set(changes.get(side, {}).get(op, []))


# -- the formula ---------------------------------------------------------------------------


def test_first_run_installs_firewalld_as_predicted_and_the_master_keeps_reaching_the_minion(lab):
    gw = lab[GW]
    installed = ["dpkg-query", "-W", "-f=${Status}", "firewalld"]
    assert "ok installed" not in gw.run(installed).stdout  # a fresh gateway
    assert tcp_open(lab, "outsider", GW_K8S, POOLER)  # no firewall yet
    predicted = apply_formula(lab, test=True)
    assert all(r["result"] is not False for r in predicted.values()), predicted
    rules = predicted[RULE_STATE]
    assert rules["result"] is None and "firewalld is not installed yet" in rules["comment"], rules
    assert "ok installed" not in gw.run(installed).stdout  # test=True touched nothing
    assert gw.run(["test", "-e", "/var/lib/vpn-gateway/firewalld-rich-rules.json"]).returncode

    ret = apply_formula(lab)  # the return itself travels through the new firewall
    assert all(r["result"] is True for r in ret.values()), ret
    changes = ret[RULE_STATE]["changes"]
    assert changes == rules["changes"]  # predicted exactly, order included
    assert as_set(changes, "runtime", "add") == as_set(changes, "permanent", "add") == derived()
    # the ipsets were created (firewalld's one reload) with their entries on both sides
    assert {name: (set(c["runtime"]["add"]), set(c["permanent"]["add"]), c["create"])
            for name, c in changes["ipsets"].items()} == {
        name: (value, value, "hash:ip family=inet") for name, value in entries().items()}
    assert changes["reload"].startswith("firewalld reloaded once")
    assert held(lab) == held(lab, permanent=True) == derived()
    assert ipsets(lab) == both(entries())
    assert salt(lab, "test.ping") is True
    for test in (False, True):
        again = apply_formula(lab, test=test)
        assert all(r["result"] is True for r in again.values()), again
        assert changes_of(again) == {}


# Rules in other spellings; each must come out of firewalld's own parser in the
# host (python3-firewall, firewalld 1.3 or 2.3) exactly as our normal form.
SPELLED = [
    "rule priority=-5 family=ipv4 source NOT ipset=peers log prefix=x limit value=1/m drop",
    "rule family=ipv6 source address=2001:db8::/64 service name=ssh reject "
    "type=icmp6-adm-prohibited",
    "rule family=ipv4 destination address=198.19.10.1 port port=6432 protocol=tcp accept "
    "limit value=100/s",
    "rule family=ipv4 source address=198.18.1.0/24 port port=22 protocol=tcp log level=INFO "
    "prefix='ssh ' limit value=3/minute accept limit value=10/second",
    "rule family=ipv4 destination NOT address=198.18.0.0/24 source-port port=1000-2000 "
    "protocol=udp reject",
    "rule family=ipv4 source address=198.18.0.1 audit limit value=2/h accept",
]
FIREWALLD_PRINTS = """\
import json, sys
from firewall.core.rich import Rich_Rule
print(json.dumps([str(Rich_Rule(rule_str=r)) for r in json.load(sys.stdin)]))
"""


def test_firewalld_in_the_host_prints_our_normal_form_unchanged(lab):
    fr = load("salt/_modules/firewalld_rich.py")
    ours = sorted(derived()) + [fr._parse_rule(text).render() for text in SPELLED]
    lab[GW].put("/root/firewalld_prints.py", FIREWALLD_PRINTS)
    lab[GW].put("/root/rules.json", json.dumps(ours))
    out = lab[GW].run("/usr/bin/python3 /root/firewalld_prints.py < /root/rules.json",
                      check=True).stdout
    assert json.loads(out) == ours
    assert [fr._parse_rule(text).render() for text in json.loads(out)] == ours


def test_test_mode_predicts_exactly_and_touches_nothing(lab):
    before, sets = zone(lab), ipsets(lab)
    rules = apply_formula(lab, test=True, nodes=(NODE, NODE2))[RULE_STATE]
    assert rules["result"] is None, rules
    assert rules["changes"] == added(**{"vgw-nodes": [NODE2]})  # one entry, no rule
    assert zone(lab) == before and ipsets(lab) == sets


def test_stopped_firewalld_test_mode_predicts_from_its_permanent_configuration(lab):
    gw = lab[GW]
    ike = IKE
    gw.run(["systemctl", "stop", "firewalld"], check=True)
    try:
        gw.run(["firewall-offline-cmd", "--zone=public", f"--remove-rich-rule={ike}"], check=True)
        # firewalld's files and the pack's record of its rules (not the beacon's or
        # the readiness check's memory beside it, which the pillar's beacon and
        # k8s.sync_readiness schedule rewrite every few seconds)
        files = ("find /etc/firewalld /var/lib/vpn-gateway -type f "
                 "! -path '/var/lib/vpn-gateway/beacon*' "
                 "! -path '/var/lib/vpn-gateway/readiness*' -exec md5sum {} + | sort")
        before = gw.run(files, check=True).stdout
        rules = apply_formula(lab, test=True)[RULE_STATE]
        assert rules["result"] is None and "its permanent configuration" in rules["comment"], rules
        assert rules["changes"] == {"runtime": {"add": [ike]}, "permanent": {"add": [ike]}}
        assert gw.run(files, check=True).stdout == before  # test=True touched nothing
        assert gw.run(["systemctl", "is-active", "firewalld"]).stdout.strip() != "active"

        ret = apply_formula(lab)  # starts firewalld, which loads its permanent configuration
        assert all(r["result"] is True for r in ret.values()), {
            r["__id__"]: (r["result"], r["comment"]) for r in ret.values()}
        assert ret[RULE_STATE]["changes"] == rules["changes"]  # no ipset created, no reload
        assert held(lab) == held(lab, permanent=True) == derived()
        assert ipsets(lab) == both(entries())
    finally:  # the module's later tests need firewalld running, whatever happened here
        gw.run(["systemctl", "start", "firewalld"], timeout=300)


def test_core_firewalld_module_and_states_still_work_beside_ours(lab):
    # core's firewalld.service and firewalld.present, and ours, in one state run
    high = {"core-service": {"firewalld": ["service", {"name": "vgw-probe"},
                                           {"ports": ["7001/tcp"]}]},
            "core-present": {"firewalld": ["present", {"name": "public"},
                                           {"ports": ["7002/tcp"]}]},
            "ours": {"firewalld": ["rich_rule_present", {"zone": "public"},
                                   {"rule": foreign_rule(7005)}]}}
    ret = salt(lab, "state.high", json.dumps(high))
    assert isinstance(ret, dict) and len(ret) == 3, ret
    assert all(r["result"] is True and r["changes"] for r in ret.values()), ret
    permanent = lab[GW].run("firewall-cmd --permanent --list-ports; "
                            "firewall-cmd --permanent --get-services", check=True).stdout
    assert "7002/tcp" in permanent.split() and "vgw-probe" in permanent.split()
    assert foreign_rule(7005) in held(lab) & held(lab, permanent=True)
    assert "firewalld.add_port" in salt(lab, "sys.list_functions", "firewalld")
    # leave the zone as the formula tests expect it (the pack now owns that rule)
    assert single(lab, "rich_rule_absent", zone="public", name="cleanup",
                  rule=foreign_rule(7005))["changes"]


def test_enforcement_from_nodes_peers_and_outsider(lab):
    assert tcp_open(lab, "k8s-node1", GW_K8S, POOLER)
    assert tcp_open(lab, "k8s-node1", GW_K8S, EXPORTER)
    assert not tcp_open(lab, "outsider", GW_K8S, POOLER)
    assert not tcp_open(lab, "outsider", GW_K8S, EXPORTER)
    assert udp_answered(lab, "remote-gw-backup", GW_WAN, 500)
    assert not udp_answered(lab, "outsider", GW_WAN, 500)


# -- single rules: normal form, drift ---------------------------------------------------------


SPELLINGS = {
    "pooler": {"name": f"rule family=IPv4 port protocol=TCP port=0{POOLER} "
                       "source ipset=vgw-nodes accept"},
    "esp": {"source_ipset": "vgw-peers", "family": "ipv4", "protocol": "50",
            "action": "accept"},
    "ike": {"rule": "rule source ipset='vgw-peers' port port='isakmp' protocol='udp' "
                    "family='ipv4' accept"},
}


def test_other_spellings_are_recognised_as_the_same_rule(lab):
    # The ESP rule is taken away by hand first: a state that did nothing at all would
    # pass "no changes" for the rules that are there, not the ESP rule coming back.
    esp = ESP
    assert esp in held(lab) and esp in held(lab, permanent=True)
    firewall_cmd(lab, f"--remove-rich-rule={esp}")
    firewall_cmd(lab, "--permanent", f"--remove-rich-rule={esp}")
    try:
        predicted = states(lab, "rich_rule_present", SPELLINGS, test=True)
        applied = states(lab, "rich_rule_present", SPELLINGS)
        for ret in (predicted, applied):
            assert set(ret) == set(SPELLINGS)
            assert all(r["result"] is True and r["changes"] == {}
                       for case, r in ret.items() if case != "esp"), ret
        assert predicted["esp"]["result"] is None and applied["esp"]["result"] is True
        assert predicted["esp"]["changes"] == applied["esp"]["changes"] == {
            "runtime": {"add": [esp]}, "permanent": {"add": [esp]}}, applied["esp"]
        assert esp in held(lab) and esp in held(lab, permanent=True)
        again = states(lab, "rich_rule_present", SPELLINGS)
        assert all(r["result"] is True and r["changes"] == {} for r in again.values()), again
    finally:
        for side in ([], ["--permanent"]):
            if esp not in held(lab, permanent=bool(side)):
                firewall_cmd(lab, *side, f"--add-rich-rule={esp}")


def test_a_rule_written_by_hand_is_recognised_and_removed_in_its_own_spelling(lab):
    by_hand = f"rule family=ipv4 source address=198.18.2.99/32 port port=0{EXPORTER} " \
              "protocol=tcp drop"
    firewall_cmd(lab, f"--add-rich-rule={by_hand}")
    firewall_cmd(lab, "--permanent", f"--add-rich-rule={by_hand}")
    ours = {"name": "drop", "source": "198.18.2.99", "port": EXPORTER, "protocol": "tcp",
            "action": "drop"}
    assert single(lab, "rich_rule_present", zone="public", **ours)["changes"] == {}
    as_held = next(r for r in held(lab) if "198.18.2.99/32" in r)  # firewalld keeps /32
    predicted = single(lab, "rich_rule_absent", zone="public", test=True, **ours)
    assert predicted["result"] is None
    assert predicted["changes"] == {"runtime": {"remove": [as_held]},
                                    "permanent": {"remove": [as_held]}}
    removed = single(lab, "rich_rule_absent", zone="public", **ours)
    assert removed["result"] is True and removed["changes"] == predicted["changes"], removed
    assert not any("198.18.2.99" in r for r in held(lab) | held(lab, permanent=True))
    assert single(lab, "rich_rule_absent", zone="public", **ours)["changes"] == {}


def test_runtime_drift_is_detected_and_repaired_both_ways(lab):
    ike = IKE
    firewall_cmd(lab, f"--remove-rich-rule={ike}")  # runtime only: permanent still has it
    assert not udp_answered(lab, "remote-gw-backup", GW_WAN, 500)
    predicted = apply_formula(lab, test=True)[RULE_STATE]
    assert predicted["changes"] == {"runtime": {"add": [ike]}}
    repaired = apply_formula(lab)[RULE_STATE]
    assert repaired["result"] is True and repaired["changes"] == predicted["changes"]
    assert udp_answered(lab, "remote-gw-backup", GW_WAN, 500)

    stray = foreign_rule(4500, "udp")
    firewall_cmd(lab, "--permanent", f"--add-rich-rule={stray}")  # permanent only
    gone = single(lab, "rich_rule_absent", zone="public", name=stray)
    assert gone["changes"] == {"permanent": {"remove": [stray]}}, gone
    assert stray not in held(lab, permanent=True)


# -- no reload; a pillar change changes exactly its rules; ownership -----------------------------


def test_no_reload_a_connection_and_a_runtime_only_rule_survive_a_change(lab):
    node = lab["k8s-node1"]
    node.put("/root/long_client.py", LONG_CLIENT)
    node.run(["systemd-run", "--unit=long-client", "/usr/bin/python3", "/root/long_client.py",
              GW_K8S, str(POOLER)], check=True)
    wait_for(node, "/root/client.connected")
    # a reload would drop a runtime-only rule of someone else's
    foreign = foreign_rule(7003)
    firewall_cmd(lab, f"--add-rich-rule={foreign}")

    ret = apply_formula(lab, nodes=(NODE, NODE2))[RULE_STATE]
    assert ret["result"] is True, ret
    assert ret["changes"] == added(**{"vgw-nodes": [NODE2]}), ret  # no rule, no reload
    assert ipsets(lab) == both(entries((NODE, NODE2)))

    node.put("/root/client.go", "")
    wait_for(node, "/root/client.result")
    assert node.read("/root/client.result") == "ok"
    assert foreign in held(lab)


def test_prune_removes_only_rules_this_pack_added(lab):
    foreign = foreign_rule(7004)
    firewall_cmd(lab, f"--add-rich-rule={foreign}")
    firewall_cmd(lab, "--permanent", f"--add-rich-rule={foreign}")
    ours = derived()
    others = (held(lab) - ours, held(lab, permanent=True) - ours)
    record = salt(lab, "firewalld.zone_rich_rules", "public")
    assert set(record["owned"]) == ours
    assert record["owned_ipset_entries"] == {
        name: sorted(value) for name, value in entries((NODE, NODE2)).items()}
    # someone else's entry in our ipset, on both sides
    lab[GW].run(["firewall-cmd", "--ipset=vgw-nodes", f"--add-entry={NODE3}"], check=True)
    lab[GW].run(["firewall-cmd", "--permanent", "--ipset=vgw-nodes", f"--add-entry={NODE3}"],
                check=True)

    ret = apply_formula(lab)[RULE_STATE]  # NODE2 left the pillar
    assert ret["changes"] == {"ipsets": {"vgw-nodes": {
        "runtime": {"remove": [NODE2]}, "permanent": {"remove": [NODE2]}}}}, ret
    assert held(lab) == derived() | others[0]
    assert held(lab, permanent=True) == derived() | others[1]
    assert ipsets(lab) == both({**entries(), "vgw-nodes": {NODE, NODE3}})

    kept = apply_formula(lab, prune_owned=False, nodes=())[RULE_STATE]
    assert kept["changes"] == {}, kept  # without pruning nothing is removed
    for side in ([], ["--permanent"]):
        lab[GW].run(["firewall-cmd", *side, "--ipset=vgw-nodes", f"--remove-entry={NODE3}"],
                    check=True)


# -- refusals: nothing changes ------------------------------------------------------------------


@pytest.mark.parametrize("extra, flow, test", [
    ({"source": "198.18.1.0/24", "action": "drop"}, "SSH from management network", False),
    ({"source": "198.18.1.0/24", "action": "drop"}, "SSH from management network", True),
    ("rule family=ipv4 source address=198.18.1.2 source-port port=4505-4506 protocol=tcp reject",
     "the salt-master connection (198.18.1.2 ports 4505/4506)", False),
])
def test_guard_refuses_a_rule_set_that_cuts_management_access(lab, extra, flow, test):
    before = zone(lab)
    ret = apply_formula(lab, test=test, rules=[extra])[RULE_STATE]
    assert ret["result"] is False and ret["changes"] == {}, ret
    assert "would cut management access" in ret["comment"] and flow in ret["comment"]
    assert zone(lab) == before


# One state per case, run together: each must fail with its own reason.
BAD_RULES = {
    "bad address": {"source": "198.18.0.300", "action": "accept"},
    "family mismatch": {"source": "198.18.0.21", "family": "ipv6", "action": "accept"},
    "unknown service": {"service": "no-such-service", "action": "accept"},
    "unknown protocol": {"protocol": "espx", "action": "accept"},
    "missing action": {"source": "198.18.0.21", "port": 500, "protocol": "udp"},
    "out of range": {"port": 70000, "protocol": "tcp", "action": "accept"},
    "conflicting elements": {"port": 22, "protocol": "tcp", "service": "ssh", "action": "accept"},
}


def test_bad_input_fails_clearly_and_changes_nothing(lab):
    before = zone(lab)
    for test in (True, False):
        ret = states(lab, "rich_rule_present", BAD_RULES, test=test)
        for case, result in ret.items():
            assert result["result"] is False and case in result["comment"], (case, result)
    assert zone(lab) == before


def test_bad_pillar_names_its_key_and_changes_nothing(lab):
    before = zone(lab)
    ret = apply_formula(lab, nodes=(NODE, "198.18.2"))
    assert "vpn_gateway:kubernetes:nodes[1]" in json.dumps(ret), ret
    assert zone(lab) == before


# -- faults after validation (issue 14) ----------------------------------------------------------

# First on the minion's PATH (/usr/local/sbin): every runtime write fails (the zone's
# setZoneSettings2 and the runtime ipset calls on interface ...FirewallD1.ipset); every other
# call, the permanent writes (update2, config.ipset setEntries) among them, goes through.
FAILING_RUNTIME_BUSCTL = """\
#!/bin/sh
runtime_ipset= write=
for arg in "$@"; do
    case "$arg" in
        org.fedoraproject.FirewallD1.ipset) runtime_ipset=1;;
        addEntry|removeEntry|setEntries) write=1;;
        setZoneSettings2) runtime_ipset=1 write=1;;
    esac
done
if [ -n "$runtime_ipset" ] && [ -n "$write" ]; then
    echo "Call failed: the runtime write refused by the lab's busctl wrapper" >&2
    exit 1
fi
exec /usr/bin/busctl "$@"
"""
BUSCTL_WRAPPER = "/usr/local/sbin/busctl"


@pytest.mark.platforms("debian13")  # the same D-Bus calls on firewalld 1.3
def test_a_runtime_write_failing_after_the_permanent_one_leaves_the_zone_as_it_was(lab):
    """Issue 14, faults after validation: firewalld fails between the permanent and the
    runtime write, here of a node's ipset entry and a site rule. The state fails saying
    the permanent configuration was put back; firewalld holds what it held before, the
    zone's rules and the ipsets' entries, at runtime and in permanent configuration, and
    the ownership record is unchanged (never in between). With the fault gone the same
    run adds both; the example pillar again prunes both."""
    gw, rule = lab[GW], foreign_rule(7301)
    before, sets = zone(lab), ipsets(lab)
    record = salt(lab, "firewalld.zone_rich_rules", "public")
    gw.put(BUSCTL_WRAPPER, FAILING_RUNTIME_BUSCTL, mode=0o755)
    try:
        failed = apply_formula(lab, nodes=(NODE, NODE2), rules=[rule])[RULE_STATE]
    finally:
        gw.run(["rm", "-f", BUSCTL_WRAPPER], check=True)
    assert failed["result"] is False and failed["changes"] == {}, failed
    assert "refused by the lab's busctl wrapper" in failed["comment"], failed
    assert "the permanent configuration of zone public was put back as it was (with ipset " \
           "vgw-nodes)" in failed["comment"], failed
    assert zone(lab) == before and ipsets(lab) == sets
    after = salt(lab, "firewalld.zone_rich_rules", "public")
    assert (after["owned"], after["owned_ipset_entries"]) \
        == (record["owned"], record["owned_ipset_entries"])

    applied = apply_formula(lab, nodes=(NODE, NODE2), rules=[rule])[RULE_STATE]
    assert applied["result"] is True and applied["changes"] == {
        "runtime": {"add": [rule]}, "permanent": {"add": [rule]},
        **added(**{"vgw-nodes": [NODE2]})}, applied
    assert zone(lab) == (before[0] | {rule}, before[1] | {rule})
    assert ipsets(lab) == both(entries((NODE, NODE2)))
    back = apply_formula(lab)[RULE_STATE]  # the zone as found: the rule and the entry pruned
    assert back["result"] is True and zone(lab) == before and ipsets(lab) == sets, back


# -- many single states, one batch ----------------------------------------------------------------


def test_aggregated_rule_states_are_applied_as_one_batch(lab):
    cases = {f"probe{port}": {"source": "198.18.0.99", "port": port, "protocol": "tcp",
                              "action": "accept", "aggregate": True}
             for port in (7101, 7102, 7103)}
    ret = states(lab, "rich_rule_present", cases)
    first = min(ret.values(), key=lambda r: r["__run_num__"])
    assert first["comment"].startswith("3 rich rules")
    assert len(first["changes"]["runtime"]["add"]) == 3
    assert all("with the batch of state" in r["comment"] and not r["changes"]
               for r in ret.values() if r is not first)
    assert {foreign_rule(p) for p in (7101, 7102, 7103)} <= held(lab) & held(lab, permanent=True)
    again = states(lab, "rich_rule_present", cases, test=True)
    assert all(r["result"] is True and not r["changes"] for r in again.values()), again


def foreign_rule(port, protocol="tcp"):
    return (f'rule family="ipv4" source address="198.18.0.99" port port="{port}" '
            f'protocol="{protocol}" accept')


def wait_for(host, path, timeout=30):
    deadline = time.monotonic() + timeout
    while host.run(["test", "-e", path]).returncode:
        assert time.monotonic() < deadline, f"{host.name}: {path} did not appear"
        time.sleep(0.2)
