"""The whole gateway role rendered for the RedHat family (Rocky Linux 9 and 10)
with the example pillar, through ``salt-call --local state.show_sls``: rendering
succeeds and the states carry the EL packages' names and paths (map.jinja's
RedHat values). No RedHat host runs in the suite: this render is the only
check. The expected values are written out here, not read from map.jinja, each
from the EL package's spec file named in docs/role.md, "RedHat family".
The same render, one sub-state at a time, shows each takes the recovery lock."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lab import pillar_gpg, saltstack

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SALT_CALL = Path(sys.executable).parent / "salt-call"
MINION = "vpn-gw1"  # renders every sub-state, the Kubernetes objects included

# What EL9/EL10 ship (docs/role.md, "RedHat family").
NSS_DIR = "/var/lib/ipsec/nss"
PGBOUNCER = {"package": "pgbouncer", "client_package": "postgresql", "service": "pgbouncer",
             "binary": "/usr/bin/pgbouncer",
             "conf_dir": "/etc/pgbouncer", "user": "pgbouncer", "group": "pgbouncer",
             "log_dir": "/var/log/pgbouncer", "run_dir": "/run/pgbouncer"}
TOOLS = ["postgresql", "tcpdump", "nmap", "traceroute"]
# Debian's values that must not leak into a RedHat render.
NOT_REDHAT = ["/usr/sbin/pgbouncer", "/var/run/pgbouncer", "postgresql-client", "nmap-ncat"]


def write_minion_config(root, major):
    """A ``salt-call --local`` config over this repo with the example pillar on a
    Rocky ``major`` minion; grains come from the config's ``grains:`` key (they
    override the core grains of the machine running the test)."""
    (root / "minion").write_text(yaml.safe_dump({
        **saltstack.local_minion_config(REPO, REPO / "pillar"),
        "gpg_keydir": str(pillar_gpg.keyring()),  # the example pillar's secrets (lab key)
        "root_dir": str(root), "log_file": str(root / "minion.log"),
        "cachedir": str(root / "cache"), "pki_dir": str(root / "pki"),
        "sock_dir": str(root / "sock"), "id": MINION,
        # The lab's salt-master, whose ports the firewall guard keeps open.
        "master": "198.18.1.2",
        "grains": {"os_family": "RedHat", "os": "Rocky", "osmajorrelease": major,
                   "osrelease": f"{major}.0", "osfinger": f"Rocky Linux-{major}",
                   # vpn-gw1's Kubernetes-side address: monitoring's endpoint_ready needs it.
                   "ipv4": ["127.0.0.1", "198.18.2.11"]},
    }))


@pytest.fixture(scope="module", params=[9, 10], ids=["rocky9", "rocky10"])
def rendered(request, tmp_path_factory):
    """The role's states as ``state.show_sls vpn_gateway`` returns them on a Rocky
    minion; grains come from the minion config's ``grains:`` key (they override
    the core grains of the machine running the test)."""
    major = request.param
    root = tmp_path_factory.mktemp(f"rocky{major}")
    write_minion_config(root, major)
    argv = [str(SALT_CALL), "--local", f"--config-dir={root}", "--out=json",
            "--retcode-passthrough"]
    grains = subprocess.run([*argv, "grains.item", "os_family", "os", "osmajorrelease"],
                            capture_output=True, text=True, timeout=120)
    assert json.loads(grains.stdout)["local"] == {
        "os_family": "RedHat", "os": "Rocky", "osmajorrelease": major}, grains.stderr
    proc = subprocess.run([*argv, "state.show_sls", "vpn_gateway"],
                          capture_output=True, text=True, timeout=120)
    states = json.loads(proc.stdout)["local"] if proc.stdout else proc.stderr
    # A failed render returns a list of errors instead of the states.
    assert proc.returncode == 0 and isinstance(states, dict), states
    return states


def args(states, state_id):
    """``(function, {argument: value})`` of the one state function under ``state_id``."""
    state = states[state_id]
    (module,) = [key for key in state if not key.startswith("__")]
    (function,) = [item for item in state[module] if isinstance(item, str)]
    merged = {}
    for argument in state[module]:
        if isinstance(argument, dict):
            merged.update(argument)
    return f"{module}.{function}", merged


def test_the_role_renders_every_sub_state(rendered):
    assert {state["__sls__"] for state_id, state in rendered.items()
            if state_id != "__extend__"} == {
        f"vpn_gateway.{sls}" for sls in
        ["recovery_lock", "sysctl", "ipsec", "pgbouncer", "firewall", "k8s", "monitoring",
         "tools"]}


def test_libreswan_uses_the_el_package_service_and_nss_directory(rendered):
    function, package = args(rendered, "libreswan_package")
    assert (function, package["name"]) == ("pkg.installed", "libreswan")
    # The NSS directory is asked from the installed Libreswan at run time
    # (libreswan.nss_dir), so the render names no path (NSS_DIR is what EL ships).
    function, _ = args(rendered, "libreswan_nss_db")
    assert function == "libreswan.nss_initialized"
    assert NSS_DIR not in str(rendered["libreswan_nss_db"])
    assert args(rendered, "libreswan_service")[1]["name"] == "ipsec"


def test_pgbouncer_uses_the_el_package_account_and_paths(rendered):
    pgb = PGBOUNCER
    assert args(rendered, "pgbouncer-package")[1]["name"] == pgb["package"]
    assert args(rendered, "pgbouncer-client-package")[1]["name"] == pgb["client_package"]
    assert args(rendered, "pgbouncer-group")[1]["name"] == pgb["group"]
    _, user = args(rendered, "pgbouncer-user")
    assert (user["name"], user["gid"]) == (pgb["user"], pgb["group"])
    for path, owner in [(pgb["conf_dir"], "root"), (pgb["log_dir"], pgb["user"]),
                        (pgb["run_dir"], pgb["user"])]:
        _, directory = args(rendered, f"pgbouncer-dir-{path}")
        assert (directory["name"], directory["user"], directory["group"]) == \
            (path, owner, pgb["group"])
    assert args(rendered, "pgbouncer-tmpfiles")[1]["contents"] == \
        f"d {pgb['run_dir']} 0755 {pgb['user']} {pgb['group']} -"
    _, unit = args(rendered, "pgbouncer-unit")
    assert unit["name"] == f"/etc/systemd/system/{pgb['service']}.service"
    # The unit template's values, the binary path among them.
    assert unit["context"]["pgb"] == pgb
    _, settings = args(rendered, "pgbouncer-settings")
    assert {key: settings["settings"][key] for key in
            ["logfile", "unix_socket_dir", "auth_file", "auth_hba_file"]} == {
        "logfile": f"{pgb['log_dir']}/pgbouncer.log", "unix_socket_dir": pgb["run_dir"],
        "auth_file": f"{pgb['conf_dir']}/userlist.txt",
        "auth_hba_file": f"{pgb['conf_dir']}/pg_hba.conf"}
    assert args(rendered, "pgbouncer-auth-file")[1]["name"] == f"{pgb['conf_dir']}/userlist.txt"
    assert args(rendered, "pgbouncer-service")[1]["name"] == pgb["service"]


def test_firewalld_logrotate_and_tools_use_the_el_package_names(rendered):
    assert args(rendered, "firewalld-package")[1]["name"] == "firewalld"
    assert args(rendered, "firewalld-service")[1]["name"] == "firewalld"
    assert args(rendered, "vpn_gateway_logrotate_package")[1]["name"] == "logrotate"
    _, logrotate = args(rendered, "vpn_gateway_logrotate")
    # EL's pgbouncer package rotates its own log (/etc/logrotate.d/pgbouncer): naming it
    # again would be a duplicate log entry, which fails logrotate's whole run.
    assert logrotate["context"]["logs"] == ["/var/log/salt/minion"]
    assert not any(PGBOUNCER["log_dir"] in log for log in logrotate["context"]["logs"])
    function, tools = args(rendered, "vpn_gateway_tools")
    assert (function, tools["pkgs"]) == ("pkg.installed", TOOLS)


def test_no_debian_value_is_left_in_the_render(rendered):
    text = json.dumps(rendered)
    assert [value for value in NOT_REDHAT if value in text] == []


# Each sub-state applied alone, rendered in one process (Salt's Caller).
SHOW_EACH_SUB_STATE = """
import json, sys
import salt.client, salt.config
caller = salt.client.Caller(mopts=salt.config.minion_config(sys.argv[1] + "/minion"))
print(json.dumps({sls: caller.cmd("state.show_sls", sls) for sls in sys.argv[2:]}))
"""


def test_every_sub_state_applied_alone_holds_the_recovery_lock(tmp_path):
    """``state.apply vpn_gateway.ipsec`` (or any sub-state) takes the host's recovery
    lock first and lets go last, as the whole role does (docs/monitoring.md,
    "Recovery and state runs"): a ladder never restarts a service mid-run."""
    write_minion_config(tmp_path, 10)
    subs = [f"vpn_gateway.{sls}" for sls in
            ["sysctl", "ipsec", "pgbouncer", "firewall", "k8s", "monitoring", "tools"]]
    proc = subprocess.run([sys.executable, "-c", SHOW_EACH_SUB_STATE, str(tmp_path), *subs],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for sls, states in json.loads(proc.stdout.splitlines()[-1]).items():
        assert isinstance(states, dict), (sls, states)
        lock = states.get("vpn_gateway_recovery_lock", {}).get("libreswan", [])
        released = states.get("vpn_gateway_recovery_lock_released", {}).get("libreswan", [])
        assert "recovery_lock" in lock and {"order": "first"} in lock, (sls, sorted(states))
        assert "recovery_lock_released" in released and {"order": "last"} in released, sls
