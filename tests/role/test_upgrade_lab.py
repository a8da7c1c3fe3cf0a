"""The upgrade path: a gateway converged on debian12 by the role is upgraded in
place to Debian 13's packages (apt full-upgrade from the debian13 offline
repository, as an operator would), then the highstate is applied again: the
tunnel and the pooler work, and a second run changes nothing."""
import re
import time

import pytest

from lab import images, peers, postgres, role, saltstack

pytestmark = [pytest.mark.lab, pytest.mark.platforms("debian12")]

HOSTS = ["salt-master", "vpn-gw1", "remote-gw-primary", "remote-db", "k8s-node1"]
GATEWAY = "vpn-gw1"
APT = ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-q", "-y",
       "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"]


@pytest.fixture(scope="module")
def lab(lab_factory):
    lab = lab_factory(HOSTS, repos=("debian13",), pillar=saltstack.QUIET_SCHEDULES)
    peers.configure(lab)
    postgres.start(lab["remote-db"])
    role.prepare(lab)
    return lab


def highstate(lab):
    returns = role.highstate(lab)[GATEWAY]
    failed = {i: r["comment"] for i, r in returns.items() if r["result"] is False}
    assert not failed, failed
    return sorted(i for i, r in returns.items() if r["changes"])


def tunnel_established(gw):
    """The oracle is pluto itself: an established IKE SA to the primary peer."""
    status = gw.run(["ipsec", "whack", "--status"]).stdout
    # 4.10 names narrowed sub-conns "remote-db/0x3"[1]; 5.x "remote-db"[1]
    return re.search(r'"remote-db(?:/0x\d+)?"[^\n]* (?:STATE_V2_)?ESTABLISHED_IKE_SA',
                     status) is not None


def wait_for(predicate, timeout=90):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return True


def package_version(gw, package):
    return gw.run(["dpkg-query", "-W", "-f", "${Version}", package]).stdout


def test_a_debian12_gateway_upgraded_to_debian13_converges_again(lab):
    gw = lab[GATEWAY]
    # the first converge on debian12 (its second run changing nothing: tests/role)
    assert highstate(lab)
    assert wait_for(lambda: tunnel_established(gw)), gw.run(["ipsec", "whack", "--status"])
    assert role.select_one(lab).stdout.strip() == "1"
    before = {p: package_version(gw, p) for p in ("libreswan", "pgbouncer", "firewalld")}

    # The operator's upgrade: the new release's apt source, update, full-upgrade.
    gw.put("/etc/apt/sources.list.d/vpn-gateway-lab.sources",
           f"Types: deb\nURIs: file:{images.REPO_MOUNT}/debian13\nSuites: ./\nTrusted: yes\n")
    gw.run([*APT, "update"], check=True, timeout=300)
    upgrade = gw.run([*APT, "full-upgrade"], timeout=900)
    assert upgrade.ok, upgrade
    assert "VERSION_CODENAME=trixie" in gw.read("/etc/os-release")
    after = {p: package_version(gw, p) for p in before}
    assert after["libreswan"].startswith("5.") and after["pgbouncer"].startswith("1.24"), after
    gw.run(["systemctl", "restart", "salt-minion"], check=True)  # its libraries were replaced
    saltstack.wait_ready(lab)
    role.prepare(lab)

    assert highstate(lab)  # the new versions render differently (Libreswan 5: keyexchange=)
    assert highstate(lab) == []
    assert wait_for(lambda: tunnel_established(gw)), gw.run(["ipsec", "whack", "--status"])
    answer = role.select_one(lab)
    assert answer.ok and answer.stdout.strip() == "1", answer
