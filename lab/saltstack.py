"""Salt in the lab: a salt-master host serving this repo, minions as systemd units.

The master's file_roots are the repo's ``salt/states`` (SLS tree, top.sls) and
``salt/`` (so ``salt://_modules`` and ``salt://_states`` sync to minions);
its pillar_roots are ``pillar/``. The Salt programs come from the project's
venv, bind-mounted read-only into every host.
"""
import json
import time

import yaml

UNIT = """\
[Unit]
Description=The Salt {role} (vpn-gateway lab)
After=network.target

[Service]
ExecStart={venv}/bin/salt-{role}
Restart=on-failure
# As Salt's own units: a state that restarts the minion must not kill its job.
KillMode=process

[Install]
WantedBy=multi-user.target
"""


def master_config(lab, address):
    return {
        "interface": address,
        "auto_accept": True,  # lab only: minions are created by us a second earlier
        "file_roots": {"base": [str(lab.repo / "salt" / "states"), str(lab.repo / "salt")]},
        "pillar_roots": {"base": [str(lab.repo / "pillar")]},
        "log_level_logfile": "info",
    }


def minion_config(host, master_address):
    return {
        "id": host.name,
        "master": master_address,
        "acceptance_wait_time": 1,
        "random_reauth_delay": 0,
        "log_level_logfile": "info",
        # Bootstrap, as a cloud profile would: the role grain is set when the
        # minion starts, so the first highstate already matches roles:vpn-gw.
        "startup_states": "sls",
        "sls_list": ["vpn_gateway.grains"],
    }


def provision(lab):
    """Write Salt's configs, units and CLI links into the hosts before they boot."""
    master = lab.topology.master()
    if master is None:
        return
    address = master.address("mgmt")
    for host in lab.hosts.values():
        role = host.spec.salt
        if role is None:
            continue
        config = master_config(lab, address) if role == "master" else minion_config(host, address)
        host.put(f"/etc/salt/{role}.d/lab.conf", yaml.safe_dump(config))
        host.put(f"/etc/systemd/system/salt-{role}.service", UNIT.format(role=role, venv=lab.venv))
        host.enable_unit(f"salt-{role}.service")
        for tool in ("salt", "salt-call", "salt-key", "salt-run", "salt-master", "salt-minion"):
            link = host.root / "usr/local/bin" / tool
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(lab.venv / "bin" / tool)


def minions(lab):
    return sorted(h.name for h in lab.hosts.values() if h.spec.salt == "minion")


def salt(lab, target, function, *args, timeout=120, check=True):
    """``salt TARGET FUNCTION ARGS`` on the master; returns {minion: return}."""
    master = lab[lab.topology.master().name]
    result = master.run(
        ["salt", "--out=json", "--static", f"--timeout={timeout}", target, function, *args],
        timeout=timeout + 30,
    )
    try:
        returns = json.loads(result.stdout) if result.stdout.strip() else {}
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"salt {target} {function}: not JSON: {result}") from exc
    if check and (result.returncode not in (0, 1, 2) or not returns):
        raise RuntimeError(f"salt {target} {function}: {result}")
    return returns


def wait_ready(lab, timeout=90):
    """Wait until the master runs and every minion answers test.ping."""
    master = lab.topology.master()
    wanted = minions(lab)
    if master is None:
        return
    lab[master.name].wait_unit("salt-master.service")
    deadline = time.monotonic() + timeout
    answered = {}
    while True:
        answered = salt(lab, "*", "test.ping", timeout=5, check=False)
        if all(answered.get(m) is True for m in wanted):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"minions {wanted} did not all answer test.ping: {answered}")
        time.sleep(0.5)
