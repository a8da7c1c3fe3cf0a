"""ipsets as the sources of the gateway's rich rules (issue 18): the planner, the guard
with ipset sources, and apply_rich_rules against a fake firewalld that answers the D-Bus
calls the module makes (zone and ipset settings, runtime and permanent, reload) and
refuses what firewalld refuses (a rule naming an ipset it does not hold, an entry added
twice). The lab tests (test_firewalld_lab.py) show the same against the real firewalld
1.3 and 2.3."""
import copy

import pytest

pytestmark = pytest.mark.unit

PEERS = {"primary": {"address": "198.18.0.21"}, "backup": {"address": "198.18.0.22"}}
NODE, NODE2, NODE3 = "198.18.2.31", "198.18.2.32", "198.18.2.33"
MASTER = "198.18.1.2"
CONFIG = "/org/fedoraproject/FirewallD1/config"
SSH = 'rule family="ipv4" source address="198.18.1.0/24" service name="ssh" accept'
FOREIGN = 'rule family="ipv4" source address="198.18.0.99" port port="7003" protocol="tcp" accept'
WRITES = {"setZoneSettings2", "update2", "addIPSet", "remove", "setEntries", "addEntry",
          "removeEntry", "reload"}


class FakeFirewalld:
    """``_busctl`` of a firewalld holding zone public and some ipsets; ``fail``: the
    (method, interface) pairs that fail (interface "" for the main one)."""

    def __init__(self, module, rules=(), ipsets=None, fail=()):
        self.error = module.CommandExecutionError
        self.zone = {"runtime": list(rules), "permanent": list(rules)}
        # ipsets: {side: {name: {"type", "family", "entries"}}}
        self.ipsets = {"runtime": copy.deepcopy(ipsets or {}),
                       "permanent": copy.deepcopy(ipsets or {})}
        self.fail, self.calls = set(fail), []

    def writes(self):
        return [(m, i) for m, i in self.calls if m in WRITES]

    def _set(self, path, name=None):
        if path.startswith(CONFIG + "/ipset/"):
            return "permanent", path.rpartition("/")[2]
        return "runtime", name

    def __call__(self, path, method, signature=None, *args, interface=""):
        self.calls.append((method, interface))
        if (method, interface) in self.fail:
            raise self.error(f"firewalld {method}: injected failure")
        args = [str(a) for a in args]
        if method == "getDefaultZone":
            return ["public"]
        if method == "listServices":
            return [["ssh"]]
        if method == "getServiceSettings2":
            return [{"ports": {"type": "a(ss)", "data": [["22", "tcp"]]}}]
        if method == "getZoneSettings2":
            return [{"rules_str": {"type": "as", "data": list(self.zone["runtime"])},
                     "services": {"type": "as", "data": ["ssh"]},
                     "target": {"type": "s", "data": "default"}}]
        if method == "getZoneByName":
            return [CONFIG + "/zone/7"]
        if method == "getSettings2":
            return [{"rules_str": {"type": "as", "data": list(self.zone["permanent"])}}]
        if method in ("setZoneSettings2", "update2"):
            side = "runtime" if method == "setZoneSettings2" else "permanent"
            rules = args[args.index("rules_str") + 3:]
            for rule in rules:
                if 'ipset="' in rule:
                    name = rule.split('ipset="', 1)[1].split('"', 1)[0]
                    if name not in self.ipsets[side]:
                        raise self.error(f"firewalld {method}: INVALID_IPSET: {name}")
            self.zone[side] = rules
            return []
        if method == "getIPSets":
            return [sorted(self.ipsets["runtime"])]
        if method == "getIPSetNames":
            return [sorted(self.ipsets["permanent"])]
        if method == "getIPSetByName":
            assert args[0] in self.ipsets["permanent"], args
            return [f"{CONFIG}/ipset/{args[0]}"]
        if method in ("getIPSetSettings", "getSettings"):
            side, name = self._set(path, args[0] if args else None)
            held = self.ipsets[side][name]
            return [["", name, "", held["type"], {"family": held["family"]},
                     list(held["entries"])]]
        if method == "addIPSet":
            name, _, _, _, ipset_type, _, _, family, _, *entries = args
            assert name not in self.ipsets["permanent"], name
            self.ipsets["permanent"][name] = {"type": ipset_type, "family": family,
                                              "entries": entries}
            return [f"{CONFIG}/ipset/{name}"]
        if method == "remove":
            del self.ipsets["permanent"][self._set(path)[1]]
            return []
        if method == "setEntries":
            side, name = self._set(path, args[0])
            entries = args[2:] if side == "runtime" else args[1:]
            self.ipsets[side][name]["entries"] = list(entries)
            return []
        if method in ("addEntry", "removeEntry"):
            side, name = self._set(path, args[0])
            entry = args[1] if side == "runtime" else args[0]
            entries = self.ipsets[side][name]["entries"]
            if method == "addEntry":
                if entry in entries:
                    raise self.error(f"firewalld addEntry: ALREADY_ENABLED: {entry}")
                entries.append(entry)
            else:
                entries.remove(entry)
            return []
        if method == "reload":  # runtime-only changes are lost
            self.zone["runtime"] = list(self.zone["permanent"])
            self.ipsets["runtime"] = copy.deepcopy(self.ipsets["permanent"])
            return []
        raise AssertionError(f"unexpected call {method} {interface} {args}")

    def entries(self, name):
        return {side: sorted(self.ipsets[side][name]["entries"])
                if name in self.ipsets[side] else None for side in ("runtime", "permanent")}


@pytest.fixture
def module(fr, monkeypatch):
    """The module with its ownership record in memory (``module.owned``) and firewalld
    taken as running."""
    owned = {}

    def write_owned(key, keys, path=None):
        if keys:
            owned[key] = keys
        else:
            owned.pop(key, None)

    monkeypatch.setattr(fr, "_read_owned", lambda path=None: copy.deepcopy(owned))
    monkeypatch.setattr(fr, "_write_owned", write_owned)
    monkeypatch.setattr(fr, "_running", lambda: True)
    monkeypatch.setattr(fr, "owned", owned, raising=False)
    return fr


def firewalld(module, monkeypatch, **kwargs):
    fake = FakeFirewalld(module, **kwargs)
    monkeypatch.setattr(module, "_busctl", fake)
    return fake


def gateway(module, nodes, prune_owned=True, test=False, peers=PEERS, rules=()):
    return module.apply_rich_rules(
        "public", present=module._gateway_rules(peers, list(nodes), 6432, 9100, MASTER)
        + list(rules), ipsets=module._gateway_ipsets(peers, list(nodes)),
        prune_owned=prune_owned, management_networks=["198.18.1.0/24"], salt_master=MASTER,
        test=test)


def changes(result):
    """What the state reports: the sides, ipsets and reload that changed."""
    out = {side: {op: texts for op, texts in result[side].items() if texts}
           for side in ("runtime", "permanent")}
    out = {side: ops for side, ops in out.items() if ops}
    return {**out, **{k: result[k] for k in ("ipsets", "reload") if k in result}}


# -- pure: the ipsets, the plan ------------------------------------------------------------


def test_an_ipset_declaration_is_normalised_and_checked(fr):
    ipset = fr._to_ipset("vgw-nodes", {"entries": ["198.18.2.32", "198.18.2.31/32",
                                                   "198.18.2.32"]})
    assert ipset == fr.IPSet("vgw-nodes", "hash:ip", "inet", ("198.18.2.31", "198.18.2.32"))
    assert fr._to_ipset("n6", {"entries": ["2001:DB8::1"]}).family == "inet6"
    assert fr._to_ipset("n", {"type": "hash:net", "entries": ["198.18.2.5/24"]}).entries \
        == ("198.18.2.0/24",)
    for name, spec, message in [
        ("x" * 33, {}, "1-32"),
        ("vgw nodes", {}, "letters"),
        ("n", {"type": "list:set"}, "type 'list:set'"),
        ("n", {"family": "inet4"}, "family 'inet4'"),
        ("n", {"entries": ["198.18.2.0/24"]}, "hash:ip ipset holds addresses"),
        ("n", {"family": "inet", "entries": ["2001:db8::1"]}, "family mismatch"),
        ("n", {"entries": ["198.18.2"]}, "bad address"),
        ("n", {"type": "hash:net", "entries": ["0.0.0.0/0"]}, "any address"),
        ("n", {"entrys": []}, "unknown key"),
    ]:
        with pytest.raises(fr.RuleError, match=message):
            fr._to_ipset(name, spec)


def _held(entries, runtime=None, ipset_type="hash:ip", family="inet"):
    return {"type": ipset_type, "family": family, "permanent": list(entries),
            "runtime": list(entries if runtime is None else runtime)}


def test_plan_adds_entries_to_both_sides_and_owns_only_what_it_added(fr):
    declared = {"vgw-nodes": fr._to_ipset("vgw-nodes", {"entries": [NODE, NODE2]})}
    # NODE was there before (someone else's, written with /32): it stays theirs
    plan = fr._plan_ipsets({"vgw-nodes": _held([NODE + "/32"])}, declared)["vgw-nodes"]
    assert plan["runtime"] == plan["permanent"] == {"add": [NODE2], "remove": []}
    assert plan["entries"]["permanent"] == [NODE + "/32", NODE2]
    assert plan["owned"] == [NODE2] and not plan["create"] and not plan["reload"]


def test_plan_creates_a_missing_ipset_and_says_a_reload_is_needed(fr):
    declared = {"vgw-nodes": fr._to_ipset("vgw-nodes", {"entries": [NODE]})}
    plan = fr._plan_ipsets({}, declared)["vgw-nodes"]
    assert plan["create"] == "hash:ip family=inet" and plan["reload"]
    assert plan["runtime"] == plan["permanent"] == {"add": [NODE], "remove": []}
    # in the permanent configuration already (firewalld not reloaded since): no create
    plan = fr._plan_ipsets({"vgw-nodes": {**_held([NODE]), "runtime": None}},
                           declared)["vgw-nodes"]
    assert not plan["create"] and plan["reload"]


def test_plan_prunes_only_owned_entries_also_of_an_ipset_no_longer_declared(fr):
    held = {"vgw-nodes": _held([NODE, NODE2, NODE3]), "vgw-nodes6": _held(
        ["2001:db8::1"], family="inet6")}
    owned = {"vgw-nodes": [NODE, NODE2], "vgw-nodes6": ["2001:db8::1"]}
    declared = {"vgw-nodes": fr._to_ipset("vgw-nodes", {"entries": [NODE]})}
    plan = fr._plan_ipsets(held, declared, owned, prune_owned=True)
    assert plan["vgw-nodes"]["runtime"] == {"add": [], "remove": [NODE2]}
    assert plan["vgw-nodes"]["owned"] == [NODE]  # NODE3 is someone else's: kept
    assert plan["vgw-nodes6"]["permanent"] == {"add": [], "remove": ["2001:db8::1"]}
    assert plan["vgw-nodes6"]["owned"] == [] and not plan["vgw-nodes6"]["reload"]
    kept = fr._plan_ipsets(held, declared, owned, prune_owned=False)
    assert set(kept) == {"vgw-nodes"} and kept["vgw-nodes"]["runtime"]["remove"] == []
    gone = fr._plan_ipsets({}, {}, {"old": [NODE]}, prune_owned=True)
    assert gone == {"old": {"gone": True, "owned": []}}


def test_plan_refuses_an_ipset_of_another_type(fr):
    declared = {"vgw-nodes": fr._to_ipset("vgw-nodes", {"entries": [NODE]})}
    with pytest.raises(fr.RuleError, match="exists in firewalld as hash:net"):
        fr._plan_ipsets({"vgw-nodes": _held([], ipset_type="hash:net")}, declared)


# -- the guard reads the ipsets' entries -------------------------------------------------


def _guard(fr, after, ipsets):
    flows = fr._guard_flows(["198.18.1.0/24"], MASTER)
    rules = [fr._parse_rule(t) for t in after]
    fr._check_guard([], rules, {"target": "default", "services": ["ssh"]}, flows,
                    {"ssh": [("22", "tcp")]}, ipsets, ipsets)


def test_guard_refuses_a_deny_rule_whose_ipset_holds_a_management_address(fr):
    drop = 'rule family="ipv4" source ipset="blocked" drop'
    with pytest.raises(fr.RuleError, match="SSH from management network 198.18.1.0/24 would "
                                           "be blocked"):
        _guard(fr, [drop], {"blocked": ["198.18.9.9", "198.18.1.7"]})
    with pytest.raises(fr.RuleError, match="salt-master connection"):
        _guard(fr, [drop], {"blocked": [MASTER]})
    _guard(fr, [drop], {"blocked": ["198.18.9.9", "198.18.2.0/24"]})  # elsewhere: allowed
    with pytest.raises(fr.RuleError, match="would cut"):  # an ipset it cannot see: refused
        _guard(fr, [drop], {})


def test_guard_counts_an_accept_from_an_ipset_only_when_it_covers_the_flow(fr):
    accept = 'rule family="ipv4" source ipset="admins" service name="ssh" accept'
    zone = {"target": "default"}  # no ssh service: only the rule allows SSH
    flows = fr._guard_flows(["198.18.1.0/24"])
    before = [fr._parse_rule(SSH)]
    after = [fr._parse_rule(accept)]
    ports = {"ssh": [("22", "tcp")]}
    fr._check_guard(before, after, zone, flows, ports, {}, {"admins": ["198.18.1.0/24"]})
    with pytest.raises(fr.RuleError, match="allowed now and would no longer be"):
        fr._check_guard(before, after, zone, flows, ports, {}, {"admins": ["198.18.1.7"]})


# -- apply_rich_rules against the fake firewalld ---------------------------------------------


def test_first_apply_creates_the_ipsets_reloads_once_and_keeps_runtime_only_rules(
        module, monkeypatch):
    fake = firewalld(module, monkeypatch, rules=[SSH])
    fake.zone["runtime"].append(FOREIGN)  # someone's runtime-only rule: the reload drops it
    predicted = gateway(module, [NODE], test=True)
    assert fake.writes() == []  # test=True touched nothing
    applied = gateway(module, [NODE])
    assert changes(applied) == changes(predicted)  # predicted exactly
    assert applied["reload"].startswith("firewalld reloaded once")
    assert applied["ipsets"] == {
        "vgw-peers": {"create": "hash:ip family=inet",
                      "runtime": {"add": ["198.18.0.21", "198.18.0.22"]},
                      "permanent": {"add": ["198.18.0.21", "198.18.0.22"]}},
        "vgw-nodes": {"create": "hash:ip family=inet", "runtime": {"add": [NODE]},
                      "permanent": {"add": [NODE]}}}
    assert [m for m, _ in fake.writes()].count("reload") == 1
    assert fake.entries("vgw-nodes") == {"runtime": [NODE], "permanent": [NODE]}
    rules = set(module._gateway_rules(PEERS, [NODE], 6432, 9100, MASTER))
    assert set(fake.zone["runtime"]) == rules | {SSH, FOREIGN}  # written back after the reload
    assert set(fake.zone["permanent"]) == rules | {SSH}
    assert module.owned["ipset:vgw-nodes"] == [NODE]
    assert set(module.owned["public"]) == rules
    fake.calls.clear()
    for test in (True, False):
        again = gateway(module, [NODE], test=test)
        assert changes(again) == {}, again
    assert fake.writes() == []


def test_a_node_added_is_one_entry_at_runtime_and_one_permanent_no_reload(module, monkeypatch):
    fake = firewalld(module, monkeypatch, rules=[SSH])
    gateway(module, [NODE])
    zone = copy.deepcopy(fake.zone)
    fake.calls.clear()
    predicted = gateway(module, [NODE, NODE2], test=True)
    assert fake.writes() == []
    applied = gateway(module, [NODE, NODE2])
    expected = {"ipsets": {"vgw-nodes": {"runtime": {"add": [NODE2]},
                                         "permanent": {"add": [NODE2]}}}}
    assert changes(applied) == changes(predicted) == expected
    assert fake.writes() == [("setEntries", ".config.ipset"), ("addEntry", ".ipset")]
    assert fake.entries("vgw-nodes") == {"runtime": [NODE, NODE2], "permanent": [NODE, NODE2]}
    assert fake.zone == zone  # the rules did not change
    assert module.owned["ipset:vgw-nodes"] == [NODE, NODE2]
    assert changes(gateway(module, [NODE, NODE2])) == {}


def test_many_entries_at_once_are_one_runtime_call(module, monkeypatch):
    fake = firewalld(module, monkeypatch, rules=[SSH])
    gateway(module, [NODE])
    fake.calls.clear()
    nodes = [NODE] + [f"198.18.3.{i}" for i in range(1, 101)]
    applied = gateway(module, nodes)
    assert len(applied["ipsets"]["vgw-nodes"]["runtime"]["add"]) == 100
    assert fake.writes() == [("setEntries", ".config.ipset"), ("setEntries", ".ipset")]
    assert len(fake.entries("vgw-nodes")["runtime"]) == 101


def test_a_node_removed_is_pruned_from_both_sides_and_others_entries_stay(module, monkeypatch):
    fake = firewalld(module, monkeypatch, rules=[SSH])
    gateway(module, [NODE, NODE2])
    for side in ("runtime", "permanent"):  # someone else's entry in our ipset
        fake.ipsets[side]["vgw-nodes"]["entries"].append(NODE3)
    kept = gateway(module, [NODE], prune_owned=False)
    assert changes(kept) == {}  # without pruning nothing is removed
    predicted = gateway(module, [NODE], test=True)
    applied = gateway(module, [NODE])
    assert changes(applied) == changes(predicted) == {
        "ipsets": {"vgw-nodes": {"runtime": {"remove": [NODE2]},
                                 "permanent": {"remove": [NODE2]}}}}
    assert fake.entries("vgw-nodes") == {"runtime": [NODE, NODE3], "permanent": [NODE, NODE3]}
    assert module.owned["ipset:vgw-nodes"] == [NODE]
    # every node gone: the ipset stays with the entry that is not ours
    gateway(module, [])
    assert fake.entries("vgw-nodes") == {"runtime": [NODE3], "permanent": [NODE3]}
    assert "ipset:vgw-nodes" not in module.owned


def test_an_ipset_no_longer_declared_loses_its_owned_entries(module, monkeypatch):
    fake = firewalld(module, monkeypatch, rules=[SSH])
    gateway(module, [NODE, "2001:db8::1"])
    assert fake.entries("vgw-nodes6") == {"runtime": ["2001:db8::1"],
                                          "permanent": ["2001:db8::1"]}
    applied = gateway(module, [NODE])
    assert applied["ipsets"] == {"vgw-nodes6": {"runtime": {"remove": ["2001:db8::1"]},
                                                "permanent": {"remove": ["2001:db8::1"]}}}
    assert not any("vgw-nodes6" in rule for rule in fake.zone["runtime"] + fake.zone["permanent"])
    assert fake.entries("vgw-nodes6") == {"runtime": [], "permanent": []}
    assert "ipset:vgw-nodes6" not in module.owned
    assert changes(gateway(module, [NODE])) == {}


def test_the_guard_refuses_before_anything_changes(module, monkeypatch):
    fake = firewalld(module, monkeypatch, rules=[SSH])
    gateway(module, [NODE])
    fake.calls.clear()
    drop = 'rule family="ipv4" source ipset="vgw-nodes" drop'
    with pytest.raises(module.RuleError, match="would cut management access"):
        gateway(module, [NODE, "198.18.1.7"], rules=[drop])  # a management address as a node
    assert fake.writes() == []
    gateway(module, [NODE, NODE2], rules=[drop])  # the ipset's entries elsewhere: allowed


def test_a_runtime_entry_write_failing_puts_the_permanent_one_back(module, monkeypatch):
    fake = firewalld(module, monkeypatch, rules=[SSH])
    gateway(module, [NODE])
    before, owned = copy.deepcopy((fake.zone, fake.ipsets)), copy.deepcopy(module.owned)
    fake.fail = {("addEntry", ".ipset")}
    with pytest.raises(module.CommandExecutionError) as failed:
        gateway(module, [NODE, NODE2], rules=[FOREIGN])
    assert "addEntry: injected failure" in str(failed.value)
    assert "the permanent configuration of zone public was put back as it was (with ipset " \
           "vgw-nodes) (nothing changed)" in str(failed.value)
    assert (fake.zone, fake.ipsets) == before and module.owned == owned
    fake.fail = {("setZoneSettings2", ".zone")}  # the runtime entry written, the rules refused
    with pytest.raises(module.CommandExecutionError, match="put back as it was"):
        gateway(module, [NODE, NODE2], rules=[FOREIGN])
    assert (fake.zone, fake.ipsets) == before and module.owned == owned
    fake.fail = set()
    applied = gateway(module, [NODE, NODE2], rules=[FOREIGN])
    assert applied["ipsets"]["vgw-nodes"]["runtime"] == {"add": [NODE2]}
    assert FOREIGN in fake.zone["runtime"] and FOREIGN in fake.zone["permanent"]


def test_a_failure_before_the_reload_removes_the_ipsets_it_created(module, monkeypatch):
    fake = firewalld(module, monkeypatch, rules=[SSH])
    fake.fail = {("update2", ".config.zone")}
    with pytest.raises(module.CommandExecutionError, match="put back as it was"):
        gateway(module, [NODE])
    assert fake.ipsets == {"runtime": {}, "permanent": {}} and fake.zone["permanent"] == [SSH]
    assert module.owned == {}


def test_a_stopped_firewalld_is_predicted_from_its_ipset_files(module, monkeypatch, tmp_path):
    (tmp_path / "vgw-nodes.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<ipset type="hash:ip">\n'
        '  <option name="family" value="inet"/>\n'
        f'  <entry>{NODE}</entry>\n  <entry>{NODE3}/32</entry>\n</ipset>\n')
    held = module._OfflineIPSets({"vgw-nodes", "vgw-peers"}, dirs=(str(tmp_path),)).held
    assert held == {"vgw-nodes": {"type": "hash:ip", "family": "inet",
                                  "runtime": [NODE, NODE3 + "/32"],
                                  "permanent": [NODE, NODE3 + "/32"]},
                    "vgw-peers": {"runtime": None, "permanent": None}}
