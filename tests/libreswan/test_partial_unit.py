"""A partial tunnel (some declared subnets carried, not all) through health,
the recovery ladder and the metrics, from the parsed 4.10 and 5.2 outputs
(tests/fixtures/libreswan/README.md: the *-derived-* files)."""
import pytest

from libreswan_helpers import FIXTURES, load_module
from repo_modules import load

pytestmark = pytest.mark.unit

LIBRESWAN = load_module()
RECOVERY = load("salt/_modules/libreswan_recovery.py")
METRICS = load("salt/_modules/vpn_metrics.py")
CASES = {  # fixture: conn, health state
    "4.10-derived-child-all.status": ("db-primary", "up"),
    "4.10-derived-child-partial.status": ("db-primary", "partial"),
    "4.10-child-ts-unacceptable.status": ("db-primary", "down"),
    "5.2-derived-child-all.status": ("remote-db", "up"),
    "5.2-derived-child-partial.status": ("remote-db", "partial"),
    "5.2-ike-up-child-pending.status": ("remote-db", "down"),
}


def parsed(fixture):
    status = LIBRESWAN._parse_status((FIXTURES / fixture).read_text())
    return dict(status, running=True)


@pytest.mark.parametrize("fixture", list(CASES))
def test_health_by_child_sa_has_a_partial_state(fixture):
    tunnel, state = CASES[fixture]
    health = RECOVERY._health(parsed(fixture), tunnel, "child_sa")
    assert health["state"] == state
    assert health["up"] is (state == "up")
    if state == "partial":
        assert health["active"] == "primary"
        assert health["missing"] == ["198.19.1.11/32"]
        assert health["reason"].startswith("partial: Child SAs carry 2 of 3 remote subnets")
    else:
        assert health["missing"] == []
    # up_when: ike_sa (kernels without ESP) knows nothing of Child SAs: up.
    assert RECOVERY._health(parsed(fixture), tunnel, "ike_sa")["state"] == "up"


def test_a_partial_tunnel_gets_conn_restarts_only():
    health = RECOVERY._health(parsed("5.2-derived-child-partial.status"), "remote-db",
                              "child_sa")
    assert health["has_backup"]
    assert RECOVERY._ladder(health, 2) == [("restart_conn", "primary")] * 2
    down = RECOVERY._health(parsed("5.2-ike-up-child-pending.status"), "remote-db", "child_sa")
    assert RECOVERY._ladder(down, 2) == [("restart_conn", "primary")] * 2 + [
        ("switch", "backup"), ("restart_service", None)]


def test_metrics_export_the_state_and_each_subnet():
    status = parsed("5.2-derived-child-partial.status")
    healths = {"remote-db": RECOVERY._health(status, "remote-db", "child_sa")}
    text = METRICS._render(status, healths, {}, {}, None, 1700000000.0)
    lines = set(text.splitlines())
    for state, value in (("up", 0), ("failover", 0), ("partial", 1), ("down", 0)):
        assert f'vpn_gateway_tunnel_state{{tunnel="remote-db",state="{state}"}} {value}' in lines
    assert 'vpn_gateway_tunnel_up{tunnel="remote-db"} 0' in lines
    for subnet, value in (("198.19.1.10/32", 1), ("198.19.1.11/32", 0), ("198.19.1.12/32", 1)):
        assert (f'vpn_gateway_ipsec_child_sa_subnet_covered{{conn="remote-db",subnet="{subnet}"}} '
                f"{value}") in lines
    assert "# TYPE vpn_gateway_tunnel_state gauge" in lines
