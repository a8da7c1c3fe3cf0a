"""apply_rich_rules when firewalld fails between the permanent and the runtime write
(issue 14, faults after validation): the permanent configuration it just wrote is put
back, so the zone ends as it was (runtime and permanent agree, nothing recorded as the
pack's), and the error says so. Against a fake firewalld (its D-Bus calls); the lab test
(test_firewalld_lab.py) shows the same against the real firewalld."""
import pytest

pytestmark = pytest.mark.unit

HELD = 'rule family="ipv4" source address="198.18.0.21" protocol value="esp" accept'
NEW = ('rule family="ipv4" source address="198.18.0.99" port port="7301" protocol="tcp" '
       'accept')
CONFIG_ZONE = "/org/fedoraproject/FirewallD1/config/zone/7"


class FakeFirewalld:
    """``_busctl`` of a firewalld holding zone public; ``fail`` names the write methods
    that fail (setZoneSettings2: runtime, update2: permanent)."""

    def __init__(self, module, fail=()):
        self.rules = {"runtime": [HELD], "permanent": [HELD]}
        self.fail, self.calls = set(fail), []
        self.error = module.CommandExecutionError

    def __call__(self, path, method, signature=None, *args, interface=""):
        self.calls.append(method)
        if method in self.fail:
            raise self.error(f"firewalld {method}: injected failure")
        if method == "listServices":
            return [["ssh"]]
        if method == "getZoneSettings2":
            return [{"rules_str": {"type": "as", "data": list(self.rules["runtime"])}}]
        if method == "getZoneByName":
            return [CONFIG_ZONE]
        if method == "getSettings2":
            return [{"rules_str": {"type": "as", "data": list(self.rules["permanent"])}}]
        side = {"setZoneSettings2": "runtime", "update2": "permanent"}[method]
        self.rules[side] = list(args[args.index("rules_str") + 3:])
        return []


@pytest.fixture
def module(fr, monkeypatch):
    """The module (session-wide: every change through monkeypatch) with its ownership
    record in memory, in ``module.owned``."""
    owned = {}
    monkeypatch.setattr(fr, "_read_owned", lambda path=None: dict(owned))
    monkeypatch.setattr(fr, "_write_owned",
                        lambda zone, keys, path=None: owned.__setitem__(zone, keys))
    monkeypatch.setattr(fr, "owned", owned, raising=False)
    return fr


def test_a_failed_runtime_write_puts_the_permanent_configuration_back(module, monkeypatch):
    firewalld = FakeFirewalld(module, fail={"setZoneSettings2"})
    monkeypatch.setattr(module, "_busctl", firewalld)
    with pytest.raises(module.CommandExecutionError) as failed:
        module.apply_rich_rules("public", present=[NEW])
    message = str(failed.value)
    assert "firewalld setZoneSettings2: injected failure" in message
    assert "the permanent configuration of zone public was put back as it was" in message
    assert firewalld.rules == {"runtime": [HELD], "permanent": [HELD]}
    assert firewalld.calls.count("update2") == 2 and module.owned == {}

    firewalld.fail.clear()  # the fault gone: the next run converges
    applied = module.apply_rich_rules("public", present=[NEW])
    assert applied["runtime"]["add"] == applied["permanent"]["add"] == [NEW]
    assert firewalld.rules == {"runtime": [HELD, NEW], "permanent": [HELD, NEW]}
    assert module.owned == {"public": [module._rule_key(NEW)]}


def test_a_put_back_that_fails_too_says_so(module, monkeypatch):
    firewalld = FakeFirewalld(module, fail={"setZoneSettings2"})
    monkeypatch.setattr(module, "_busctl", firewalld)
    real = firewalld.__call__
    updates = []

    def second_update_fails(path, method, *args, **kwargs):
        if method == "update2":
            updates.append(path)
            if len(updates) == 2:
                raise module.CommandExecutionError("firewalld update2: bus gone")
        return real(path, method, *args, **kwargs)

    monkeypatch.setattr(module, "_busctl", second_update_fails)
    with pytest.raises(module.CommandExecutionError) as failed:
        module.apply_rich_rules("public", present=[NEW])
    assert ("putting back the permanent configuration of zone public failed too: "
            "firewalld update2: bus gone") in str(failed.value)
    assert module.owned == {}


def test_a_failed_permanent_write_changes_nothing(module, monkeypatch):
    firewalld = FakeFirewalld(module, fail={"update2"})
    monkeypatch.setattr(module, "_busctl", firewalld)
    with pytest.raises(module.CommandExecutionError, match="update2: injected failure"):
        module.apply_rich_rules("public", present=[NEW])
    assert firewalld.rules == {"runtime": [HELD], "permanent": [HELD]}
    assert "setZoneSettings2" not in firewalld.calls and module.owned == {}
