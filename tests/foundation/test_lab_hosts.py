"""The lab: real hosts that boot, talk over the lab fabric, run Salt, and leave
nothing behind — after a clean stop, a Ctrl-C, a failed start or a kill -9."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import DEFAULT, Lab, LabError, images, leftovers, saltstack

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]
HOSTS = ["salt-master", "vpn-gw1", "vpn-gw2", "remote-gw-primary"]


@pytest.fixture(autouse=True)
def _root():
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces, mounts, systemd-nspawn)")


def root_listeners():
    """Listening sockets of the root namespace, as (proto, local address) pairs."""
    out = subprocess.run(["ss", "-Hltun"], capture_output=True, text=True, check=True).stdout
    return {(line.split()[0], line.split()[4]) for line in out.splitlines()}


def not_loopback(listeners):
    return {s for s in listeners if not s[1].startswith(("127.", "[::1]", "[::ffff:127."))}


def state_changes(returns):
    """{minion: number of states that reported changes} from a state.apply return."""
    return {m: sum(1 for r in ret.values() if r["changes"] or r["result"] is None)
            for m, ret in returns.items()}


def test_gateways_answer_the_master_and_apply_a_state_then_nothing_is_left(platform):
    before = root_listeners()
    name = f"vgwlab-f{os.getpid()}"
    with Lab(DEFAULT.subset(HOSTS), name=name, platform=platform) as lab:
        print(f"lab start {lab.timings['start']:.1f}s (boot {lab.timings['boot']:.1f}s)")
        # every host is its own machine: hostname, private /etc
        for host in HOSTS:
            assert lab[host].run("hostname", check=True).stdout.strip() == host
        lab["vpn-gw1"].put("/etc/vpn-gateway-lab-marker", "gw1\n")
        assert lab["vpn-gw2"].run(["test", "-e", "/etc/vpn-gateway-lab-marker"]).returncode == 1
        assert not Path("/etc/vpn-gateway-lab-marker").exists()
        # the fabric carries traffic between segments' hosts, and only lab addresses
        assert lab["remote-gw-primary"].run(["busybox", "ping", "-c1", "-W2", "198.18.0.11"]).ok
        assert not lab["remote-gw-primary"].run(["busybox", "ping", "-c1", "-W1", "198.18.1.2"]).ok

        # a gateway is a fresh host of its platform: none of the role's packages,
        # and its only apt source is the platform's offline repository
        gw = lab["vpn-gw1"]
        release = gw.read("/etc/os-release")
        assert f"VERSION_CODENAME={images.PLATFORMS[platform].suite}" in release
        installed = gw.run(["dpkg-query", "-W", "-f", "${Package} ${Status}\n"],
                           check=True).stdout
        assert not {line.split()[0] for line in installed.splitlines()
                    if line.endswith(" installed")} & set(images.ROLE_PACKAGES)
        sources = gw.run(["sh", "-c", "cat /etc/apt/sources.list /etc/apt/sources.list.d/* "
                          "2>/dev/null"]).stdout
        assert re.findall(r"URIs: (\S+)", sources) == [f"file:{images.REPO_MOUNT}/{platform}"], \
            sources
        assert gw.run(["test", "-s", f"{images.REPO_MOUNT}/{platform}/Packages"]).ok

        assert saltstack.salt(lab, "vpn-gw*", "test.ping") == {"vpn-gw1": True, "vpn-gw2": True}

        # the custom modules reach the minions from the master's file tree, with
        # nobody asking: the master's reactor syncs a minion when it starts
        shipped = {(kind, p.stem) for kind in ("modules", "states", "beacons")
                   for p in (REPO / "salt" / f"_{kind}").glob("*.py")}

        def missing():
            listed = saltstack.salt(lab, "vpn-gw*", "saltutil.list_extmods", check=False)
            return {m: shipped - {(kind, name) for kind, names in kinds.items() for name in names}
                    if isinstance(kinds, dict) else shipped  # no extmods dir: nothing synced
                    for m, kinds in listed.items()}

        deadline = time.monotonic() + 60
        while missing() != {"vpn-gw1": set(), "vpn-gw2": set()}:
            assert time.monotonic() < deadline, missing()
            time.sleep(1)

        # the role grain comes from a state in salt/states, applied at minion start
        # (startup_states); without it, test=True predicts it, a run restores it,
        # and a rerun changes nothing
        def roles():
            return saltstack.salt(lab, "vpn-gw*", "grains.get", "roles")

        deadline = time.monotonic() + 60
        while roles() != {"vpn-gw1": ["vpn-gw"], "vpn-gw2": ["vpn-gw"]}:
            assert time.monotonic() < deadline, roles()
            time.sleep(1)
        saltstack.salt(lab, "vpn-gw*", "grains.delkey", "roles", "force=True")
        assert roles() == {"vpn-gw1": "", "vpn-gw2": ""}
        predicted = saltstack.salt(lab, "vpn-gw*", "state.apply", "vpn_gateway.grains", "test=True")
        assert state_changes(predicted) == {"vpn-gw1": 1, "vpn-gw2": 1}
        assert roles() == {"vpn-gw1": "", "vpn-gw2": ""}
        applied = saltstack.salt(lab, "vpn-gw*", "state.apply", "vpn_gateway.grains")
        assert state_changes(applied) == {"vpn-gw1": 1, "vpn-gw2": 1}
        assert all(r["result"] for ret in applied.values() for r in ret.values())
        assert roles() == {"vpn-gw1": ["vpn-gw"], "vpn-gw2": ["vpn-gw"]}
        again = saltstack.salt(lab, "vpn-gw*", "state.apply", "vpn_gateway.grains")
        assert state_changes(again) == {"vpn-gw1": 0, "vpn-gw2": 0}

        # a host powered off and on again, as a cloud host stopped and started: its
        # disk stays, what it set in its own kernel does not, its address answers
        # again; left powered off, it does not keep the lab from tearing down
        gw2, remote = lab["vpn-gw2"], lab["remote-gw-primary"]
        gw2.run("echo kept > /var/lib/vgw-lab-power-marker && "
                "ip addr add 198.18.3.2/32 dev lo", check=True)
        mac = gw2.run(["cat", "/sys/class/net/wan0/address"], check=True).stdout
        lab.power_off("vpn-gw2")
        with pytest.raises(LabError, match="not running"):
            gw2.run("true")
        assert not remote.run(["busybox", "ping", "-c1", "-W1", "198.18.0.12"]).ok
        lab.power_on("vpn-gw2")
        assert gw2.run(["cat", "/var/lib/vgw-lab-power-marker"]).stdout == "kept\n"
        addresses = gw2.run(["ip", "-4", "-o", "addr"], check=True).stdout
        assert "198.18.3.2/" not in addresses
        # the same NIC, as in a cloud
        assert gw2.run(["cat", "/sys/class/net/wan0/address"], check=True).stdout == mac
        assert all(f" {a}/" in addresses for a in ("198.18.0.12", "198.18.1.12", "198.19.10.2"))
        assert remote.run(["busybox", "ping", "-c1", "-W2", "198.18.0.12"]).ok
        lab.power_off("vpn-gw2")

        # nothing of the lab listens in the root namespace beyond loopback
        assert not_loopback(root_listeners()) <= not_loopback(before)
    print(f"lab stop {lab.timings['stop']:.1f}s")
    assert leftovers(name) == []


def _lab_cli(*args, name):
    return subprocess.Popen(
        [sys.executable, "-m", "lab", "up", *args, "--name", name],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _lab_command(*args):
    return subprocess.run([sys.executable, "-m", "lab", *args], cwd=REPO,
                          capture_output=True, text=True)


def _wait_running(proc):
    for line in proc.stdout:
        if "running; Ctrl-C tears it down" in line:
            return
    pytest.fail(f"lab up exited with {proc.wait()} before it was running")


@pytest.mark.usefixtures("platform")  # the lab's life cycle is the same on
@pytest.mark.platforms("debian13")  # each platform: once, not in each platform's pytest
def test_ctrl_c_tears_the_lab_down():
    name = f"vgwlab-c{os.getpid()}"
    proc = _lab_cli("vpn-gw1", "remote-gw-primary", name=name)
    _wait_running(proc)
    assert any(item.startswith("process") for item in leftovers(name))
    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(timeout=60) == 0
    except subprocess.TimeoutExpired:
        proc.kill()
        left = leftovers(name)
        _lab_command("clean", name)  # the failure leaves no lab behind
        pytest.fail(f"lab up still running 60 s after SIGINT: {proc.communicate()[0]}\n"
                    f"left: {left}")
    assert leftovers(name) == []


@pytest.mark.usefixtures("platform")  # the lab's life cycle is the same on
@pytest.mark.platforms("debian13")  # each platform: once, not in each platform's pytest
def test_clean_removes_what_a_killed_run_left():
    name = f"vgwlab-k{os.getpid()}"
    proc = _lab_cli("vpn-gw1", "remote-gw-primary", name=name)
    _wait_running(proc)
    proc.kill()
    proc.wait()
    left = leftovers(name)
    assert {item.split()[0] for item in left} == {"process", "mount", "netns", "dir"}, left
    assert _lab_command("leftovers", name).returncode == 1
    _lab_command("clean", name)
    assert leftovers(name) == []
    assert _lab_command("leftovers", name).stdout.strip() == "lab: nothing left"


@pytest.mark.usefixtures("platform")  # the lab's life cycle is the same on
@pytest.mark.platforms("debian13")  # each platform: once, not in each platform's pytest
def test_a_failed_start_leaves_nothing():
    name = f"vgwlab-e{os.getpid()}"
    lab = Lab(DEFAULT.subset(["salt-master", "vpn-gw1"]), name=name, venv="/nonexistent-venv")
    started = time.monotonic()
    # the venv's pyvenv.cfg is read when the first host boots, after the network is up
    with pytest.raises(FileNotFoundError, match="nonexistent-venv/pyvenv.cfg"):
        lab.start()
    assert time.monotonic() - started < 120
    assert leftovers(name) == []
