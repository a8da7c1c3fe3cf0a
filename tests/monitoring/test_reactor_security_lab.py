"""The libreswan reactor against a hostile minion, on a real master (issue 13).

vpn-gw1 plays the hostile minion: with ``salt-call event.fire_master`` it
sends the master crafted events, both the way the beacon sends its events (a
list of events whose tags and data the minion writes) and as a plain event
(the master sets ``id``). The reactor must run nothing: no ``cmd.run`` in
the master's job cache, no marker file on any host, no job aimed at another
minion; while a well-formed event for the declared tunnel still runs
``libreswan.ensure_up`` on vpn-gw1, and one for a tunnel pillar does not
declare is refused by the minion itself. The oracles are the master's job
cache (``jobs.list_jobs``, ``jobs.lookup_jid``) and the hosts' filesystems.
"""
import json
import time

import pytest
from monitoring_helpers import wait_for

from lab import saltstack

# One platform: the reactor is the master's Salt (the project's venv, the same on
# both), and the minion side only refuses or runs ensure_up, whose Libreswan
# versions the monitoring lab covers on both.
pytestmark = [pytest.mark.lab, pytest.mark.platforms("debian13")]

HOSTS = ["salt-master", "vpn-gw1", "vpn-gw2"]
MARKER = "/tmp/pwned"
INJECTION = ("x:\n  local.cmd.run:\n    - tgt: '*'\n    - arg: ['touch /tmp/pwned']\n"
             "libreswan_ensure_up_y")
REFUSED = "not a tunnel this minion's pillar declares"
# Declared by pillar (remote-db's backup conn) and never reported by the beacon
# (it reports base names): every job naming it comes from an event of this test.
DECLARED = "remote-db-backup"


@pytest.fixture(scope="module")
def lab(lab_factory):
    lab = lab_factory(HOSTS)
    master = lab["salt-master"]
    master.put("/etc/salt/master.d/reactor.conf",
               "reactor:\n  - 'salt/beacon/*/libreswan/*':\n    - salt://reactor/libreswan.sls\n")
    master.run(["systemctl", "restart", "salt-master"], check=True)
    saltstack.wait_ready(lab)
    synced = saltstack.salt(lab, "vpn-gw*", "saltutil.sync_all", timeout=180)
    assert set(synced) == {"vpn-gw1", "vpn-gw2"}, synced
    # The pillar's beacon reports remote-db down on these hosts (no Libreswan
    # yet) and its events run ensure_up too: stop it, so that every reactor job
    # below comes from an event this test fires.
    stopped = saltstack.salt(lab, "vpn-gw*", "beacons.disable")
    assert all(r.get("result") for r in stopped.values()), stopped
    time.sleep(5)
    return lab


def fire_events(gw, *events):
    """Events as the beacon sends them: the minion writes each tag and its data."""
    preload = {"events": [{"tag": tag, "data": data} for tag, data in events]}
    fired = gw.run(["salt-call", "--out=json", "event.fire_master", "{}", "unused",
                    f"preload={json.dumps(preload)}"], timeout=120)
    assert fired.ok and json.loads(fired.stdout)["local"] is True, fired


def fire_plain(gw, tag, data):
    """A plain event: the master puts the minion's own id beside the data."""
    fired = gw.run(["salt-call", "--out=json", "event.fire_master", "{}", tag,
                    f"preload={json.dumps(data)}"], timeout=120)
    assert fired.ok and json.loads(fired.stdout)["local"] is True, fired


def jobs(lab):
    ran = lab["salt-master"].run(["salt-run", "--out=json", "jobs.list_jobs"], timeout=120)
    assert ran.ok, ran
    return json.loads(ran.stdout)


def job_return(lab, jid):
    ran = lab["salt-master"].run(["salt-run", "--out=json", "jobs.lookup_jid", jid], timeout=120)
    assert ran.ok, ran
    return json.loads(ran.stdout) if ran.stdout.strip() else {}


def ensure_up_jobs(lab, tunnel, before):
    return {jid: job for jid, job in jobs(lab).items()
            if jid not in before and job["Function"] == "libreswan.ensure_up"
            and any(isinstance(a, dict) and a.get("name") == tunnel for a in job["Arguments"])}


def test_crafted_events_run_nothing_and_a_well_formed_one_still_recovers(lab):
    gw = lab["vpn-gw1"]
    started = time.monotonic()
    hosts = [lab[name] for name in HOSTS]
    for host in hosts:
        host.run(["rm", "-f", MARKER], check=True)
    before = set(jobs(lab))
    # the payload in the beacon's own form, a glob as the target, the
    # payload in a plain event, and another minion's id in the tag
    fire_events(
        gw,
        ("salt/beacon/vpn-gw1/libreswan/x/down",
         {"id": "vpn-gw1", "tunnel": INJECTION, "state": "down"}),
        (f"salt/beacon/*/libreswan/{DECLARED}/down",
         {"id": "*", "tunnel": DECLARED, "state": "down"}),
    )
    fire_plain(gw, "salt/beacon/vpn-gw1/libreswan/x/down", {"tunnel": INJECTION, "state": "down"})
    fire_plain(gw, f"salt/beacon/vpn-gw2/libreswan/{DECLARED}/down",
               {"tunnel": DECLARED, "state": "down"})
    # well formed: a tunnel pillar does not declare, then the declared one (the
    # reactor renders events in order: once these ran, the crafted ones were seen)
    fire_events(gw, ("salt/beacon/vpn-gw1/libreswan/other-db/down",
                     {"id": "vpn-gw1", "tunnel": "other-db", "state": "down"}))
    fire_events(gw, (f"salt/beacon/vpn-gw1/libreswan/{DECLARED}/down",
                     {"id": "vpn-gw1", "tunnel": DECLARED, "state": "down"}))

    wait_for(lambda: ensure_up_jobs(lab, DECLARED, before), 120,
             "the well-formed event's libreswan.ensure_up job")
    # any job published would have reached the minions by now: ask them both
    saltstack.salt(lab, "vpn-gw*", "test.ping", timeout=30)
    time.sleep(3)
    ran = {jid: job for jid, job in jobs(lab).items() if jid not in before}
    assert not [j for j in ran.values() if j["Function"].startswith("cmd.")], ran
    for host in hosts:
        assert not host.run(["test", "-e", MARKER]).ok, f"{MARKER} on {host.name}"
    # of the jobs naming this test's tunnels (the spoofed events' too) only
    # the two well-formed ones, both on vpn-gw1 alone
    reacted = [j for j in ran.values() if j["Function"].startswith("libreswan.") and any(
        isinstance(a, dict) and a.get("name") in (DECLARED, "other-db") for a in j["Arguments"])]
    assert len(reacted) == 2, [(j["Function"], j["Target"], j["Arguments"], j["StartTime"])
                               for j in reacted]
    assert all(j["Target"] == ["vpn-gw1"] and j["Target-type"] == "list"
               for j in reacted), reacted

    (jid, _), = ensure_up_jobs(lab, DECLARED, before).items()
    answer, _ = wait_for(lambda: job_return(lab, jid).get("vpn-gw1"), 120,
                         f"vpn-gw1's return of ensure_up {DECLARED}")
    assert REFUSED not in json.dumps(answer), answer  # past the pillar check: it acted
    (other_jid, _), = ensure_up_jobs(lab, "other-db", before).items()
    refusal, _ = wait_for(lambda: job_return(lab, other_jid).get("vpn-gw1"), 120,
                          "vpn-gw1's return of ensure_up other-db")
    assert REFUSED in json.dumps(refusal), refusal

    log = lab["salt-master"].read("/var/log/salt/master")
    assert log.count("libreswan reactor: event refused") >= 4, log[-3000:]
    print(f"reactor security: {time.monotonic() - started:.0f}s")


def test_a_starting_minion_is_still_synced_by_its_own_id(lab):
    """minion_start.sls takes only a plain id, as that one minion: the boot-time syncs."""
    synced = [j["Target"] for j in jobs(lab).values() if j["Function"] == "saltutil.sync_all"
              and j["Target-type"] == "list"]
    assert ["vpn-gw1"] in synced and ["vpn-gw2"] in synced, synced
