"""Failback with real Child SAs, make before break (issue 13), where the
kernel has ESP (else in the QEMU guest, through tests/dataplane/test_in_guest.py).

tests/monitoring proves the failback policy on IKE SAs alone (``up_when:
ike_sa``: no ESP on this machine's kernel). Child SAs change what pluto does
with a primary brought up beside the backup that carries the tunnel: on
Libreswan 4.10 its first Child SA cannot route over the backup's ("cannot
route -- route already in use") and pluto deletes the new IKE SA within about
a second, so a check of the IKE SA alone never saw the primary answer and the
tunnel stayed on the backup for good. The failback counts a primary that
completed an IKE SA since the probe began (``libreswan.peer_answered``).

vpn-gw1 boots from its converged root (lab/converged.py) and is applied the
role's formulas by masterless Salt, with the production liveness rule
(``up_when: child_sa``) and a short ``failback_after``. The remote gateways
(lab/peers.py) answer and never initiate. The failback runs as the beacon's
reactor runs it: ``libreswan.failback`` again every ``failback_after`` until
the tunnel is back on the primary.
"""
import json
import time

import pytest
from esp_helpers import SLOW, backup_serial, child_sa_peers, pluto_log

from lab import converged, peers, saltstack
from lab.lab import SLOWDOWN

pytestmark = [pytest.mark.lab, pytest.mark.esp]

HOSTS = ["vpn-gw1", "remote-gw-primary", "remote-gw-backup"]
GATEWAY, TUNNEL = "vpn-gw1", "remote-db"
# step_timeout: under TCG an IKE SA and its Child SAs take 5-10 s to come up.
SETTINGS = {"up_when": "child_sa", "holddown": 2, "step_timeout": 20, "failback": "auto",
            "failback_after": 8}
# How long the primary may take to get the tunnel back once it answers again:
# pluto retries a primary brought up beside the backup about every 40 s (4.10
# under TCG), and each failback call under TCG takes 20-60 s.
FAILBACK_WITHIN = 420


def call(lab, function, *args):
    return saltstack.call_local(lab, lab[GATEWAY], function, *args, timeout=SLOW * 10)


def wait_child_sas(lab, wanted, timeout=SLOW):
    deadline = time.monotonic() + timeout * SLOWDOWN
    while (held := child_sa_peers(lab[GATEWAY])) != wanted:
        if time.monotonic() > deadline:
            raise AssertionError(f"Child SAs with {held}, not {wanted}, after {timeout}s\n"
                                 f"{pluto_log(lab[GATEWAY])}")
        time.sleep(2)


@pytest.fixture(scope="module")
def lab(lab_factory, platform):
    started = time.monotonic()
    topology = converged.topology(HOSTS, platform)
    timings = {"converged root": time.monotonic() - started}
    lab = lab_factory(topology=topology)
    timings["lab up"] = time.monotonic() - started - timings["converged root"]
    peers.configure(lab)
    gateway = lab[GATEWAY]
    saltstack.masterless(lab, gateway)
    gateway.put("/etc/salt/minion.d/monitoring.conf",
                json.dumps({"vpn_gateway": {"monitoring": SETTINGS}}))
    returns = call(lab, "state.apply", converged.ROLE_SLS)
    failed = {r["__id__"]: r["comment"] for r in returns.values() if r["result"] is False}
    assert not failed, failed
    wait_child_sas(lab, {"primary"})
    timings["ready"] = time.monotonic() - started
    print("failback lab timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    return lab


def test_a_dead_primary_leaves_the_backup_and_a_live_one_takes_the_tunnel_back(lab):
    gateway, primary = lab[GATEWAY], lab["remote-gw-primary"]
    call(lab, "libreswan.switch", TUNNEL, "to=backup", "wait=60")
    wait_child_sas(lab, {"backup"})
    call(lab, "libreswan.failback", TUNNEL)  # marks since when the backup carries it

    # A dead primary: the probe leaves the backup's IKE SA and its Child SAs alone.
    primary.run(["systemctl", "stop", "ipsec"], check=True)
    time.sleep(SETTINGS["failback_after"] + 1)
    serial = backup_serial(gateway)
    result = call(lab, "libreswan.failback", TUNNEL)[TUNNEL]
    assert result.get("outcome") == "primary_silent", result
    assert backup_serial(gateway) == serial and child_sa_peers(gateway) == {"backup"}

    # The primary back: a failback moves the tunnel onto it, the backup dropped.
    primary.run(["systemctl", "start", "ipsec"], check=True)
    outcomes, started = [], time.monotonic()
    while child_sa_peers(gateway) != {"primary"} and time.monotonic() < started + FAILBACK_WITHIN:
        time.sleep(SETTINGS["failback_after"] + 1)
        outcomes.append(call(lab, "libreswan.failback", TUNNEL)[TUNNEL].get("outcome"))
    print(f"failback: on the primary after {time.monotonic() - started:.0f}s, "
          f"outcomes {outcomes}")
    assert child_sa_peers(gateway) == {"primary"}, f"{outcomes}\n{pluto_log(gateway)}"
    assert "failed_back" in outcomes, outcomes
    assert backup_serial(gateway) is None, pluto_log(gateway)
    status = call(lab, "libreswan.status")["tunnels"][TUNNEL]
    assert status["active"] == "primary" and status["state"] == "up", status
