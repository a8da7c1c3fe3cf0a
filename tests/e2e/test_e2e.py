"""The whole gateway end to end, through faults (issue 15): tests/e2e/scenario.py
run once on a kernel with ESP (``benchmarks/e2e.py --guest`` runs the same in
the QEMU guest and prints its table). Each test asserts one part of the
acceptance on the one run."""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dataplane" / "esp"))
import scenario  # noqa: E402

from lab import Lab, converged  # noqa: E402

pytestmark = [pytest.mark.lab, pytest.mark.esp]


@pytest.fixture(scope="module")
def results(platform):
    topology = converged.topology(scenario.HOSTS, platform, formulas=converged.E2E_SLS)
    with Lab(topology, name=f"vgwlab-e2e{os.getpid()}", platform=platform) as lab:
        yield scenario.run_all(lab)


def test_no_acknowledged_transaction_is_lost(results):
    assert results["acknowledged"] > 100
    assert results["lost"] == []


def test_each_fault_is_recovered_and_transactions_flow_again(results):
    for row in results["faults"]:
        assert row["committed"] > 0, row
        assert row["flowing (s)"] < 300, row


def test_a_pool_change_and_a_second_apply_cost_no_transaction(results):
    rows = {row["fault"]: row for row in results["faults"]}
    assert rows["pool size changed in pillar, applied"]["failed"] == 0
    assert rows["formulas applied again"]["failed"] == 0
    assert results["second apply changes"] == {}


def test_one_alert_per_tunnel_fault_no_storm(results):
    for row in results["faults"][:2]:
        assert 1 <= len(row["alerts"]) <= 2, row


def test_sixteen_megabytes_each_way_arrive_whole(results):
    assert results["copy"]["same"] and results["copy"]["bytes"] >= 16 * 10**6


def test_child_sas_rekey_under_the_load(results):
    assert len(results["rekeys"]) >= 2
    assert all(rekey["failed within 10 s"] == 0 for rekey in results["rekeys"]), results["rekeys"]


def test_the_outsider_is_refused_everything(results):
    assert results["outsider refused"] == {"IKE": True, "pooler": True, "SSH": True}
