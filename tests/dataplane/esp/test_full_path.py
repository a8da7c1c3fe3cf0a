"""The full data path, where the kernel has ESP (else in the QEMU guest, through
tests/dataplane/test_in_guest.py): psql in k8s-node1 -> PgBouncer on vpn-gw1
-> the IPsec tunnel -> PostgreSQL in remote-db answers ``SELECT 1``, and the
Child SA's byte counters move. Then failback with real Child SAs (issue 13):
a dead primary leaves the backup's SAs alone, a live one takes the tunnel
back. Last the remote gateway narrows one database subnet away: the tunnel
is partial, not up, and names the subnet it lacks. One lab for all: under
TCG a lab and its first apply cost minutes.

vpn-gw1 is configured by the role's formulas (vpn_gateway.sysctl, .ipsec,
.pgbouncer) with the example pillar, unchanged, by masterless Salt
(``salt-call --local``): under TCG a salt-master and its minion need minutes
for each round trip, and applying the role from the master is proven by
tests/role on every kernel. It boots from the fresh image as the same
formulas converged it on this machine's own kernel, in this run
(lab/converged.py: real apt from the offline repository, which under TCG
took 515-688 s of each guest's run); its ipsec and pgbouncer units come up
at boot.

The remote gateways' Libreswan (lab/peers.py) and the database
(lab/postgres.py) are set up by hand, as the remote cloud's operators would.
The lab also routes the database network in plain IP from the gateways
(lab/topology.py); here the remote gateway forwards to it only what IPsec
decrypted, as a real remote cloud would. Proof that the query took the tunnel:
the database sees the gateway's tunnel address as its client, and the Child
SA's ESP byte counters grow with the query.
"""
import functools
import json
import time

import pytest
from esp_helpers import SLOW, backup_serial, child_sa_peers, esp_bytes, pluto_log, wait_esp_pair

from lab import converged, peers, postgres, role, saltstack
from lab.lab import SLOWDOWN

pytestmark = [pytest.mark.lab, pytest.mark.esp]

HOSTS = ["vpn-gw1", "remote-gw-primary", "remote-gw-backup", "remote-db", "k8s-node1"]
GATEWAY, GATEWAY_WAN, PEER_WAN = "vpn-gw1", "198.18.0.11", "198.18.0.21"
TUNNEL, TUNNEL_IP = "remote-db", "198.19.10.1"  # vpn_gateway:tunnel of vpn-gw1
PEER = "remote-gw-primary"
# The failback test's monitoring settings (minion config over the pillar's):
# step_timeout for TCG, where an IKE SA and its Child SAs take 5-10 s.
FAILBACK_SETTINGS = {"up_when": "child_sa", "holddown": 2, "step_timeout": 20,
                     "failback": "auto", "failback_after": 8}
# How long the primary may take to get the tunnel back once it answers again:
# pluto retries a primary brought up beside the backup about every 40 s (4.10
# under TCG), and each failback call under TCG takes 20-60 s.
FAILBACK_WITHIN = 420
timings = {}


@pytest.fixture(scope="module")
def path(lab_factory, platform):
    started = time.monotonic()
    topology = converged.topology(HOSTS, platform)
    timings["converged root"] = time.monotonic() - started
    started = time.monotonic()
    lab = lab_factory(topology=topology)
    timings["lab up"] = time.monotonic() - started
    lab[PEER].run(["nft", "-f", "-"], input=peers.ONLY_DECRYPTED, check=True)
    peers.configure(lab)
    postgres.start(lab["remote-db"])
    gateway = lab[GATEWAY]
    # For the tests' own salt-call --local; the role is not applied again: the
    # root is what it converged to in this run (key: every file of salt/ and
    # pillar/), and re-applying it here changed nothing in every run, at 77-137 s
    # of TCG per guest (tests/role proves the second run changes nothing).
    saltstack.masterless(lab, gateway)
    deadline = time.monotonic() + SLOW * SLOWDOWN  # the units start at boot
    while (units := gateway.run(["systemctl", "is-active", "ipsec", "pgbouncer"],
                                timeout=SLOW)).stdout.split() != ["active", "active"]:
        assert time.monotonic() < deadline, f"{units}\n{pluto_log(gateway)}"
        time.sleep(2)
    return lab


@pytest.fixture(scope="module")
def call(path):
    """salt-call --local in the gateway, through one long-lived Caller: each salt-call
    under TCG pays Salt's start-up again (lab/salt_caller.py)."""
    session = saltstack.CallerSession(path, path[GATEWAY])
    yield session
    session.close()


def test_the_formulas_tunnel_has_child_sas_on_both_sides(path):
    wait_esp_pair(path[GATEWAY], GATEWAY_WAN, PEER_WAN)
    wait_esp_pair(path[PEER], PEER_WAN, GATEWAY_WAN)
    traffic = path[GATEWAY].run(["ipsec", "trafficstatus"], timeout=SLOW).stdout
    assert f'"{TUNNEL}' in traffic, traffic


def test_select_1_from_k8s_node_through_pooler_and_tunnel(path, call):
    gateway = path[GATEWAY]
    before = wait_esp_pair(gateway, GATEWAY_WAN, PEER_WAN)
    started = time.monotonic()
    answer = role.select_one(path)
    timings["SELECT 1"] = time.monotonic() - started
    assert answer.ok and answer.stdout.strip() == "1", f"{answer}\n{pluto_log(gateway)}"
    after = esp_bytes(gateway)
    # PgBouncer's server login (SCRAM) and the query went out and came back as ESP.
    for direction in ((GATEWAY_WAN, PEER_WAN), (PEER_WAN, GATEWAY_WAN)):
        assert after[direction] > before[direction], (direction, before, after)
    clients = postgres.sql(path["remote-db"], "SELECT DISTINCT host(client_addr) FROM "
                           f"pg_stat_activity WHERE datname = '{postgres.DATABASES[0]}'")
    assert clients == [[TUNNEL_IP]], clients
    # What an operator asks the gateway: the tunnel up on the primary, bytes through it.
    status = call("libreswan.status", timeout=SLOW)
    # Up: each of the three database subnets carried by an established Child SA.
    assert status["tunnels"][TUNNEL] == {"primary": TUNNEL, "backup": f"{TUNNEL}-backup",
                                         "active": "primary", "up": True, "state": "up",
                                         "missing": []}, status
    assert sorted(status["conns"][TUNNEL]["subnets_covered"]) == [
        "198.19.1.10/32", "198.19.1.11/32", "198.19.1.12/32"], status
    moved = [(c["in_bytes"], c["out_bytes"]) for c in status["conns"].values() if c["up"]]
    assert moved and all(i > 0 and o > 0 for i, o in moved), status
    print("full data path timings (s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


def wait_child_sas(lab, wanted, timeout=SLOW):
    deadline = time.monotonic() + timeout * SLOWDOWN
    while (held := child_sa_peers(lab[GATEWAY])) != wanted:
        if time.monotonic() > deadline:
            raise AssertionError(f"Child SAs with {held}, not {wanted}, after {timeout}s\n"
                                 f"{pluto_log(lab[GATEWAY])}")
        time.sleep(2)


def test_a_dead_primary_leaves_the_backup_and_a_live_one_takes_the_tunnel_back(path, call):
    """Failback make before break on real Child SAs. On Libreswan 4.10 a primary
    brought up beside the backup that carries the tunnel keeps its IKE SA for
    well under a second (its first Child SA cannot route over the backup's:
    "cannot route -- route already in use"), so a check of the IKE SA alone
    never saw it answer and the tunnel stayed on the backup for good; the
    failback counts a primary that completed an IKE SA since the probe began
    (``libreswan.peer_answered``). tests/monitoring proves the policy on IKE
    SAs alone, on this machine's kernel. Failback runs as the beacon's reactor
    runs it: again every ``failback_after`` until the tunnel is on the primary."""
    gateway, primary = path[GATEWAY], path[PEER]
    settings = "/etc/salt/minion.d/failback.conf"
    gateway.put(settings, json.dumps({"vpn_gateway": {"monitoring": FAILBACK_SETTINGS}}))
    try:
        call = functools.partial(call, timeout=SLOW * 10)
        call("libreswan.switch", TUNNEL, "to=backup", "wait=60")
        wait_child_sas(path, {"backup"})
        call("libreswan.failback", TUNNEL)  # marks since when the backup carries it

        # A dead primary: the probe leaves the backup's IKE SA and its Child SAs alone.
        primary.run(["systemctl", "stop", "ipsec"], check=True, timeout=SLOW)
        time.sleep(FAILBACK_SETTINGS["failback_after"] + 1)
        serial = backup_serial(gateway)
        result = call("libreswan.failback", TUNNEL)[TUNNEL]
        assert result.get("outcome") == "primary_silent", result
        assert backup_serial(gateway) == serial and child_sa_peers(gateway) == {"backup"}

        # The primary back: failback moves the tunnel onto it, the backup dropped.
        primary.run(["systemctl", "start", "ipsec"], check=True, timeout=SLOW)
        outcomes, started = [], time.monotonic()
        while (child_sa_peers(gateway) != {"primary"}
               and time.monotonic() < started + FAILBACK_WITHIN):
            time.sleep(FAILBACK_SETTINGS["failback_after"] + 1)
            outcomes.append(call("libreswan.failback", TUNNEL)[TUNNEL].get("outcome"))
        print(f"failback: on the primary after {time.monotonic() - started:.0f}s, "
              f"outcomes {outcomes}")
        assert "failed_back" in outcomes, f"{outcomes}\n{pluto_log(gateway)}"
        # On 4.10 under TCG the primary's Child SAs may still be re-made just after
        # the move (seen: the three re-established a second after the loop saw them;
        # and all three subnets missing from status a moment after): bounded waits.
        wait_child_sas(path, {"primary"})
        assert backup_serial(gateway) is None, pluto_log(gateway)
        # What an operator asks: up on the primary.
        deadline = time.monotonic() + SLOW * SLOWDOWN
        while ((tunnel := call("libreswan.status")["tunnels"][TUNNEL])["active"], tunnel["state"]) \
                != ("primary", "up") and time.monotonic() < deadline:
            time.sleep(5)
        assert tunnel["active"] == "primary" and tunnel["state"] == "up", \
            f"{tunnel}\n{pluto_log(gateway)}"
    finally:
        gateway.run(["rm", "-f", settings])


def test_a_peer_that_narrows_a_subnet_away_leaves_the_tunnel_partial(path, call):
    """The remote side offers two of the three declared database subnets (a
    narrowing peer): the Child SAs that come up carry only those, and the
    gateway reports the tunnel partial with the missing subnet, never up."""
    peers.configure(path, subnets=peers.DATABASE_SUBNETS[:2])
    peers.reload(path[PEER], GATEWAY)
    call("libreswan.restart_conn", TUNNEL, timeout=SLOW)
    # Until it settles: while 4.10 negotiates the offered subnets' Child SAs one after
    # another, the tunnel reads partial with more missing (seen in a debian12 guest,
    # 2026-11-30: both .11 and .12 missing at the first partial reading).
    # A reading once lacked the tunnel (KeyError; debian13 guest under the suite's load,
    # 2026-12-01; that failure showed no status). A whack that outlasts the status
    # timeout reads so (no conn, and an error): poll on, and keep each reading's error.
    deadline = time.monotonic() + SLOW * SLOWDOWN
    seen = []
    while True:
        status = call("libreswan.status", timeout=SLOW)
        tunnel = status["tunnels"].get(TUNNEL, {"state": None, "up": None, "missing": None})
        seen.append((tunnel["state"], tunnel["missing"], status.get("error")))
        if (tunnel["state"] == "partial" and tunnel["missing"] == [peers.DATABASE_SUBNETS[2]]
                or time.monotonic() > deadline):
            break
        time.sleep(5)
    assert tunnel["state"] == "partial" and tunnel["up"] is False, (seen, status)
    assert tunnel["missing"] == [peers.DATABASE_SUBNETS[2]], (seen, status)
    assert sorted(status["conns"][TUNNEL]["subnets_covered"]) == list(
        peers.DATABASE_SUBNETS[:2]), status
