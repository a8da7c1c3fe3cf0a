"""apply_conn against a fake pluto (every ``ipsec`` call recorded, ``whack
--status`` answered from the 5.2 capture with the tunnel up on the primary):
which conns a change reloads, which SA it touches, and what a failed load
leaves behind. The lab test (test_lab.py) shows the same against real pluto."""
import pytest

from libreswan_helpers import FIXTURES, PSK, load_module, tunnel_spec

pytestmark = pytest.mark.unit

TUNNEL, BACKUP = "remote-db", "remote-db-backup"
STATUS = (FIXTURES / "5.2-derived-child-all.status").read_text()
OTHER_PSK = "another-lab-only-psk-0123456789-abcdefgh"


class FakePluto:
    """``_ipsec`` of a pluto that has loaded what CONF_DIR held at the last addconn;
    with ``refuse``, addconn of the primary fails while the file holds that text."""

    def __init__(self, module, refuse=None):
        self.module, self.refuse, self.calls = module, refuse, []
        self.backup_right = "198.18.0.22"

    def __call__(self, *args, timeout=None):
        self.calls.append(args)
        ok = {"retcode": 0, "stdout": "", "stderr": "", "timed_out": False}
        if args[:2] == ("whack", "--status"):
            return dict(ok, stdout=STATUS.replace("198.18.0.22[", self.backup_right + "["))
        if args[0] == "addconn" and "--checkconfig" not in args:
            conn, text = args[-1], open(self.module._paths(TUNNEL)[0]).read()
            if conn == TUNNEL and self.refuse and self.refuse in text:
                return dict(ok, retcode=1, stderr=f'"{conn}": failed to add connection')
            if conn == BACKUP:
                self.backup_right = self.module._parse_conf(text)[BACKUP]["right"]
        return ok

    def touched(self, conn):
        """The calls that act on ``conn`` (delete, addconn, terminate, initiate)."""
        return [c for c in self.calls if conn in c and c[-1] != "--status"]


@pytest.fixture
def module(tmp_path):
    module = load_module()
    module.CONF_DIR = str(tmp_path)
    module._ipsec_path = lambda: "/usr/sbin/ipsec"
    module.version = lambda: {"version": "5.2", "major": 5, "minor": 2, "installed": True}
    psks = {"vpn_gateway:tunnel:psk": PSK, "vpn_gateway:tunnel:backup_psk": OTHER_PSK}
    module.__salt__ = {"pillar.get": lambda key, default=None, unmask=False: psks.get(key)}
    module.__context__ = {}
    # The files of the tunnel as the example pillar declares it, pluto running it.
    conn = module._validate(TUNNEL, tunnel_spec(), {"primary": PSK, "backup": PSK})
    module._write_atomic(module._paths(TUNNEL)[0], module._render_conf(conn, 5), 0o644)
    module._write_atomic(module._paths(TUNNEL)[1],
                         module._render_secrets(conn, {"primary": PSK, "backup": PSK}), 0o600)
    return module


def apply(module, pluto, backup_psk_pillar=None, **overrides):
    module._ipsec = pluto
    spec = tunnel_spec(**overrides)
    planned = module.plan_conn(TUNNEL, "vpn_gateway:tunnel:psk", backup_psk_pillar, **spec)
    pluto.calls.clear()
    return planned, module.apply_conn(TUNNEL, "vpn_gateway:tunnel:psk", backup_psk_pillar,
                                      **spec)


def backup_moved(address="198.18.0.23"):
    return {"peers": {"primary": {"address": "198.18.0.21", "id": "@remote-gw-primary"},
                      "backup": {"address": address, "id": "@remote-gw-backup"}}}


def test_nothing_changed_touches_nothing(module):
    pluto = FakePluto(module)
    planned, applied = apply(module, pluto)
    assert planned["to_load"] == [] and applied == {
        "result": True, "changes": {}, "comment": f"conn {TUNNEL} is as declared"}
    assert pluto.touched(TUNNEL) == [] and pluto.touched(BACKUP) == []
    # pluto is asked once, by the plan: with nothing loaded there is nothing to verify again
    assert pluto.calls.count(("whack", "--status")) == 1


def test_a_backup_change_reloads_the_backup_only(module):
    pluto = FakePluto(module)
    planned, applied = apply(module, pluto, **backup_moved())
    assert planned["to_load"] == [BACKUP]
    assert applied["result"] is True, applied
    assert applied["changes"]["loaded"] == [BACKUP]
    assert "+\tright=198.18.0.23\n" in applied["changes"]["diff"]
    assert ("whack", "--name", BACKUP, "--delete") in pluto.calls
    assert pluto.calls.count(("whack", "--status")) == 2  # the plan's, and the verification's
    # The primary carries the tunnel: no delete, addconn, terminate or initiate.
    assert pluto.touched(TUNNEL) == [], pluto.touched(TUNNEL)


def test_a_backup_psk_change_leaves_the_primary_sa_alone(module):
    pluto = FakePluto(module)
    planned, applied = apply(module, pluto, backup_psk_pillar="vpn_gateway:tunnel:backup_psk")
    assert planned["to_load"] == [] and planned["rekeyed"] == [BACKUP]
    assert applied["result"] is True and applied["changes"] == {"psk": "changed"}
    assert pluto.touched(TUNNEL) == [] and pluto.touched(BACKUP) == []
    assert OTHER_PSK not in repr(pluto.calls) + repr(applied) + repr(planned)


def test_a_primary_psk_change_rekeys_the_primary(module):
    pluto = FakePluto(module)
    module.__salt__["pillar.get"] = lambda key, default=None, unmask=False: OTHER_PSK
    planned, applied = apply(module, pluto)
    assert planned["rekeyed"] == [TUNNEL, BACKUP]
    assert pluto.touched(TUNNEL) == [("whack", "--name", TUNNEL, "--terminate"),
                                     ("whack", "--name", TUNNEL, "--initiate", "--asynchronous")]
    assert applied["comment"].endswith(f"initiated {TUNNEL}")


def test_a_failed_load_restores_the_files_and_initiates_the_carrier_again(module):
    conf_path, secrets_path = module._paths(TUNNEL)
    before = open(conf_path).read(), open(secrets_path).read()
    pluto = FakePluto(module, refuse="dpddelay=21")
    planned, applied = apply(module, pluto, dpddelay=21)
    assert planned["to_load"] == [TUNNEL, BACKUP]
    assert applied["result"] is False and applied["changes"] == {}
    assert "failed to add connection" in applied["comment"]
    assert f"put back and {TUNNEL} initiated again" in applied["comment"]
    assert (open(conf_path).read(), open(secrets_path).read()) == before
    # Both reloaded from the restored file, then the primary initiated: addconn
    # NAME ignores auto=start.
    assert pluto.touched(TUNNEL)[-3:] == [
        ("whack", "--name", TUNNEL, "--delete"), ("addconn", "--config", "/etc/ipsec.conf", TUNNEL),
        ("whack", "--name", TUNNEL, "--initiate", "--asynchronous")]
    assert pluto.touched(BACKUP)[-1] == ("addconn", "--config", "/etc/ipsec.conf", BACKUP)
