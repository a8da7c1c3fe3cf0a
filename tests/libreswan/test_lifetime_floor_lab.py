"""The lifetimes our validator accepts against pluto's own handling of them
(the platform's Libreswan, in a lab host): every accepted ikelifetime and
salifetime is the one pluto runs, and the floor is no higher than pluto needs
(Libreswan 5 raises the value just under it; 4.x keeps it)."""
import re
import time

import pytest

from libreswan_helpers import PSK, tunnel_spec

pytestmark = pytest.mark.lab
PSKS = {"primary": PSK, "backup": PSK}


def accepted(libreswan, seconds):
    try:
        libreswan._validate("remote-db", tunnel_spec(ikelifetime=seconds, salifetime=seconds),
                            PSKS, source="vpn_gateway:tunnel")
    except libreswan.ConnError:
        return False
    return True


def test_every_lifetime_we_accept_is_the_one_pluto_runs(libreswan, lab_factory):
    floor = libreswan.LIFETIME_FLOOR
    values = (floor - 1, floor, 3600, 86400)
    host = lab_factory(["remote-gw-primary"])["remote-gw-primary"]
    host.put("/etc/ipsec.d/lifetimes.conf", "".join(
        f"conn life{n}\n\ttype=tunnel\n\tauthby=secret\n\tleft=198.18.0.21\n"
        f"\tright=198.18.0.11\n\tikelifetime={n}s\n\tsalifetime={n}s\n\tauto=add\n\n"
        for n in values))
    host.run(["systemctl", "start", "ipsec"], check=True, timeout=120)
    # the unit is started before every conn of ipsec.d is loaded (4.10 under load)
    deadline = time.monotonic() + 120
    while True:
        status = host.run(["ipsec", "status"], check=True, timeout=60).stdout
        running = {int(m[1]): (int(m[2]), int(m[3])) for m in re.finditer(
            r'"life(\d+)":\s+ike_life: (\d+)s; ipsec_life: (\d+)s', status)}
        if set(running) == set(values) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert set(running) == set(values), status
    for n in values:
        if accepted(libreswan, n):
            assert running[n] == (n, n), (n, running[n])
    assert not accepted(libreswan, floor - 1)
    major = int(re.search(r"Libreswan\s+\D*(\d+)\.", host.run(
        ["ipsec", "--version"], check=True).stdout).group(1))
    if major >= 5:  # the floor is pluto 5's own: one second under it is raised
        assert running[floor - 1] != (floor - 1, floor - 1), running
