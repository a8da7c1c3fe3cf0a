"""Salt in the lab: a salt-master host serving this repo, minions as systemd units.

The master's file_roots are the repo's ``salt/states`` (SLS tree, top.sls) and
``salt/`` (so ``salt://_modules`` and ``salt://_states`` sync to minions).
Pillar comes from Git, as in production: at start the lab seeds a bare
repository in the master host (``PILLAR_REPO``) with the repo's ``pillar/``
and the master serves it with git_pillar; ``commit_pillar`` changes it the
way an operator would. Its secrets are ciphertext that the master decrypts
with the lab's key (lab/pillar_gpg.py, docs/pillar.md). The Salt programs
come from the project's venv, bind-mounted read-only into every host.
"""
import json
import os
import select
import shutil
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path

import yaml

from . import pillar_gpg
from .lab import SLOWDOWN, LabError, Result

PILLAR_REPO = "/srv/pillar.git"
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "vpn-gateway lab", "GIT_AUTHOR_EMAIL": "lab@vpn-gw.invalid",
    "GIT_COMMITTER_NAME": "vpn-gateway lab", "GIT_COMMITTER_EMAIL": "lab@vpn-gw.invalid",
}

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
        "file_roots": {"base": [str(lab.repo / "salt" / "states"), str(lab.repo / "salt")]},
        "pillar_roots": {"base": []},
        "ext_pillar": [{"git": [{f"main file://{PILLAR_REPO}": [{"env": "base"}]}]}],
        "git_pillar_provider": "gitpython",
        # The pillar's secrets are PGP messages for the key in this keyring (Salt's default
        # place, named for the reader); a message it cannot decrypt fails the render.
        "gpg_keydir": pillar_gpg.MASTER_KEYDIR,
        "gpg_decrypt_must_succeed": True,
        # A (re)started minion gets the pack's modules at once (docs/role.md).
        "reactor": [{"salt/minion/*/start": ["salt://reactor/minion_start.sls"]}],
        "log_level_logfile": "info",
        # A lab master serves one to three minions; Salt's default of 5 request workers
        # each build their loaders. libreswan lab on debian13: the master's CPU 29 s -> 25 s.
        "worker_threads": 2,
        # How long the CLI waits for a minion to say a job still runs (saltutil.find_job)
        # once --timeout has passed: it scales as the minions' answers do.
        "gather_job_timeout": int(10 * SLOWDOWN),
    }


def minion_config(host, master_address):
    return {
        "id": host.name,
        "master": master_address,
        "acceptance_wait_time": 1,
        "random_reauth_delay": 0,
        # Each auth round trip is RSA work on both sides: minutes under TCG.
        "auth_timeout": int(5 * SLOWDOWN),
        # A request (a pillar render, a file) the master answers later than this is sent
        # again: Salt's 60 s, scaled. Under TCG the e2e lab's minions timed out several
        # requests a minute, and each retry was the master's work again.
        "request_channel_timeout": int(60 * SLOWDOWN),
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
    seed_keys(lab)
    for host in lab.hosts.values():
        role = host.spec.salt
        if role is None:
            continue
        if role == "master":
            seed_pillar_repo(host.root / PILLAR_REPO.lstrip("/"), lab.repo / "pillar",
                             {**LAB_PILLAR, **lab.pillar})
            pillar_gpg.make_keyring(host.root / pillar_gpg.MASTER_KEYDIR.lstrip("/"))
        config = master_config(lab, address) if role == "master" else minion_config(host, address)
        host.put(f"/etc/salt/{role}.d/lab.conf", yaml.safe_dump(config))
        host.put(f"/etc/systemd/system/salt-{role}.service", UNIT.format(role=role, venv=lab.venv))
        host.enable_unit(f"salt-{role}.service")
        for tool in ("salt", "salt-call", "salt-key", "salt-run", "salt-master", "salt-minion"):
            link = host.root / "usr/local/bin" / tool
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(lab.venv / "bin" / tool)


def seed_keys(lab):
    """Every host's key pair made here and the minions' keys accepted by the
    master before anything boots: Salt would otherwise make them at first
    start (minutes of RSA under TCG) and accept them in a round trip."""
    master = lab[lab.topology.master().name]
    for host in lab.hosts.values():
        role = host.spec.salt
        if role is None:
            continue
        private, public = rsa_key_pair()
        host.put(f"/etc/salt/pki/{role}/{role}.pem", private, mode=0o400)
        host.put(f"/etc/salt/pki/{role}/{role}.pub", public)
        if role == "minion":
            master.put(f"/etc/salt/pki/master/minions/{host.name}", public)


def rsa_key_pair(bits=2048):
    """(private, public) PEM as ``salt-key --gen-keys`` writes them."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private.decode(), public.decode()


# What this lab's hosts differ in from production, kept out of the pillar/ that
# users copy: this kernel has no ESP (FACTS), so only the IKE SA comes up; and no
# recovery ladder restarts pluto under another area's tests (recovery: master, and
# no lab but the monitoring lab configures the reactor; that lab turns the minion's
# own recovery on in its minion config, tests/monitoring/monitoring_helpers.py).
LAB_PILLAR = {"vpn_gateway": {"monitoring": {"up_when": "ike_sa", "recovery": "master"}}}
# For labs whose area is neither monitoring nor readiness (Lab(pillar=...)): the
# example pillar's schedules off. Each forks the minion every 5-15 s: an idle
# gateway with ipsec and pgbouncer applied used 5.9 s of CPU a minute with
# them and 1.2 s without (debian13, 2026-11-30), on a machine the suite
# saturates. Merged over pillar/vpn_gateway/monitoring.sls key by key.
QUIET_SCHEDULES = {"schedule": {name: {"enabled": False} for name in (
    "vpn_gateway_metrics", "vpn_gateway_heartbeat", "vpn_gateway_readiness")}}


def seed_pillar_repo(bare, source, lab_pillar=LAB_PILLAR):
    """A bare Git repository whose main branch holds ``source``'s files, plus
    ``lab.sls`` (``lab_pillar``) last in every top target."""
    env = {**os.environ, **GIT_IDENTITY}

    def git(*args, cwd=None):
        subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)

    git("init", "-q", "--bare", "-b", "main", str(bare))
    with tempfile.TemporaryDirectory() as work:
        shutil.copytree(source, work, dirs_exist_ok=True)
        top = yaml.safe_load((source / "top.sls").read_text())
        for targets in top.values():
            for sls in targets.values():
                sls.append("lab")
        with open(os.path.join(work, "top.sls"), "w", encoding="utf-8") as handle:
            handle.write(yaml.safe_dump(top))
        with open(os.path.join(work, "lab.sls"), "w", encoding="utf-8") as handle:
            handle.write("# This lab's differences from production (lab/saltstack.py).\n"
                         + yaml.safe_dump(lab_pillar))
        git("init", "-q", "-b", "main", cwd=work)
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", "pillar from the vpn-gateway repo", cwd=work)
        git("push", "-q", str(bare), "main", cwd=work)


def commit_pillar(lab, path, content, message):
    """Commit ``content`` as ``path`` of the pillar repository, as an operator
    would (clone, commit, push, inside the master host), then have the master
    fetch it (``salt-run git_pillar.update``). Minions still need
    ``saltutil.refresh_pillar``."""
    master = lab[lab.topology.master().name]
    work = "/root/pillar-work"
    master.run(["rm", "-rf", work], check=True)
    master.run(["git", "clone", "-q", PILLAR_REPO, work], check=True)
    master.put(f"{work}/{path}", content)
    script = f"cd {work} && git add -A && git commit -q -m \"$1\" && git push -q origin main"
    master.run(["sh", "-c", script, "commit", message], check=True, env=GIT_IDENTITY)
    result = master_cli(lab, ["salt-run", "git_pillar.update"], timeout=120)
    if not result.ok:
        raise LabError(f"salt-run git_pillar.update: {result}")


def local_minion_config(repo, pillar_root):
    """Minion config for ``salt-call --local`` over ``repo``'s formulas and
    modules (no sync needed) with pillar from ``pillar_root``."""
    return {
        "file_client": "local",
        "file_roots": {"base": [str(repo / "salt" / "states"), str(repo / "salt")]},
        "pillar_roots": {"base": [str(pillar_root)]},
        "module_dirs": [str(repo / "salt" / "_modules")],
        "states_dirs": [str(repo / "salt" / "_states")],
        "beacons_dirs": [str(repo / "salt" / "_beacons")],
    }


def masterless(lab, host):
    """Make ``host`` a masterless minion (``salt-call --local``) over this repo's
    formulas, modules and example pillar (pillar/), with its own id; for hosts
    of a lab without a salt-master.

    A fresh host has no gpg to decrypt the pillar's secrets: it gets the tree
    with them decrypted, as a master would have sent them (``/srv/pillar``, 0700).
    """
    pillar_root = host.root / "srv/pillar"
    pillar_gpg.plain_pillar(lab.repo / "pillar", pillar_root)
    os.chmod(pillar_root, 0o700)
    config = {"id": host.name, **local_minion_config(lab.repo, "/srv/pillar")}
    host.put("/etc/salt/minion.d/masterless.conf", yaml.safe_dump(config))


def call_local(lab, host, function, *args, timeout=120):
    """``salt-call --local FUNCTION ARGS`` in ``host`` (see ``masterless``); its return."""
    result = host.run([str(lab.venv / "bin" / "salt-call"), "--local", "--out=json", function,
                       *args], timeout=timeout)
    try:
        return json.loads(result.stdout)["local"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise RuntimeError(f"{host.name}: salt-call {function}: {result}") from exc


class CallerSession:
    """``salt-call --local`` in ``host`` through one long-lived Caller (lab/salt_caller.py):
    ``session("libreswan.status")`` returns what ``call_local`` would. For the QEMU
    guest, where each salt-call pays Salt's start-up again (19-34 s under TCG).
    The process starts on the first call and ends with ``close`` or the host."""

    def __init__(self, lab, host):
        self.lab, self.host, self.proc = lab, host, None
        # its log: read by path, as a seek here would move the writer's offset too
        self.stderr = tempfile.NamedTemporaryFile(mode="w", prefix="vgw-caller-", suffix=".log")

    def __call__(self, function, *args, timeout=120):
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self.host.popen(
                [str(self.lab.venv / "bin" / "python"), str(self.lab.repo / "lab/salt_caller.py")],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        self.proc.stdin.write(json.dumps([function, list(args)]) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout * SLOWDOWN)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
        answer = json.loads(line) if line else {"error": f"no answer within {timeout}s"}
        if "error" in answer:
            log = Path(self.stderr.name).read_text(errors="replace")
            raise RuntimeError(f"{self.host.name}: salt-call {function}: {answer['error']}\n"
                               f"{log[-3000:]}")
        return answer["local"]

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class MasterCLI:
    """The master's ``salt`` and ``salt-run`` command lines through warm processes in its
    host (lab/salt_cli.py): ``run(argv, timeout)`` returns the Result that
    ``master.run(argv, timeout)`` would, at a fraction of the CPU. One process per
    command running at once (a test may apply in a thread while it polls); each is
    started again after the master host's power cycle."""

    def __init__(self, lab):
        self.lab, self.idle, self.lock = lab, [], threading.Lock()

    def run(self, argv, timeout=60):
        master = self.lab[self.lab.topology.master().name]
        with self.lock:
            server = self.idle.pop() if self.idle else None
        if server is None or server.proc.poll() is not None or server.pid != master.pid:
            if server is not None:
                server.close()
            server = _CLIServer(self.lab, master)
        try:
            answer = server.ask(argv, timeout * SLOWDOWN)
        except BaseException:
            server.close()
            raise
        with self.lock:
            self.idle.append(server)
        if answer["returncode"] == -9:
            raise LabError(f"{master.name}: {argv} timed out after {timeout}s")
        return Result(argv, answer["returncode"], answer["stdout"], answer["stderr"])


class _CLIServer:
    """One lab/salt_cli.py process in the master host."""

    def __init__(self, lab, master):
        self.pid = master.pid
        self.log = tempfile.NamedTemporaryFile(mode="w", prefix="vgw-salt-cli-", suffix=".log")
        self.proc = master.popen(
            [str(lab.venv / "bin" / "python"), "-I", str(lab.repo / "lab/salt_cli.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)

    def ask(self, argv, timeout):
        self.proc.stdin.write(json.dumps({"argv": list(argv), "timeout": timeout}) + "\n")
        self.proc.stdin.flush()
        # the server kills a command at its timeout: this bound is for the server itself
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout + 30)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            log = Path(self.log.name).read_text(errors="replace")
            raise LabError(f"lab/salt_cli.py gave no answer to {argv}: {log[-3000:]}")
        return json.loads(line)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


_MASTER_CLI = weakref.WeakKeyDictionary()  # lab -> its MasterCLI
_MASTER_CLI_LOCK = threading.Lock()


def master_cli(lab, argv, timeout=60):
    """``salt``/``salt-run`` ARGV in the lab's master host (see MasterCLI); its Result."""
    with _MASTER_CLI_LOCK:
        cli = _MASTER_CLI.setdefault(lab, MasterCLI(lab))
    return cli.run(argv, timeout)


def minions(lab):
    return sorted(h.name for h in lab.hosts.values() if h.spec.salt == "minion")


def salt(lab, target, function, *args, timeout=120, check=True):
    """``salt TARGET FUNCTION ARGS`` on the master; returns {minion: return}."""
    result = master_cli(
        lab,
        # --timeout is how long salt waits for the minions' returns: it scales too.
        # Not --static: in Salt 3008 that takes the batch path, which first publishes a
        # test.ping to every targeted minion and waits for it (two jobs per command).
        ["salt", "--out=json", f"--timeout={timeout * SLOWDOWN:g}", target, function, *args],
        timeout=timeout + 30,
    )
    try:
        returns = minion_returns(result.stdout)
    except json.JSONDecodeError as exc:
        raise RuntimeError(f"salt {target} {function}: not JSON: {result}") from exc
    if check and (result.returncode not in (0, 1, 2) or not returns):
        raise RuntimeError(f"salt {target} {function}: {result}")
    return returns


def minion_returns(text):
    """{minion: return} from what ``salt --out=json`` prints: a JSON document per minion,
    as each returns. A minion that did not return (``"Minion did not return. [...]"``) is
    left out, as Salt's batch path leaves it out."""
    decoder, returns, at = json.JSONDecoder(), {}, 0
    text = text.strip()
    while at < len(text):
        document, at = decoder.raw_decode(text, at)
        if isinstance(document, dict):
            returns.update({minion: ret for minion, ret in document.items()
                            if not (isinstance(ret, str)
                                    and ret.startswith("Minion did not return"))})
        # else the command line's own message: "The salt master could not be contacted"
        while at < len(text) and text[at].isspace():
            at += 1
    return returns


def answers(lab, minion, timeout=5):
    """Whether ``minion`` answers test.ping through the master now (False while the
    master or the minion is not up yet)."""
    try:
        return salt(lab, minion, "test.ping", timeout=timeout, check=False).get(minion) is True
    except (RuntimeError, LabError):  # the salt command line itself failed
        return False


def wait_ready(lab, timeout=240):
    """Wait until the master runs and every minion answers test.ping."""
    master = lab.topology.master()
    wanted = minions(lab)
    if master is None:
        return
    lab[master.name].wait_unit("salt-master.service")
    deadline = time.monotonic() + timeout * SLOWDOWN
    answered = {}
    while True:
        try:
            answered = salt(lab, "*", "test.ping", timeout=5, check=False)
        except LabError:  # a slow master (a loaded machine): ask again until the deadline
            answered = {}
        if all(answered.get(m) is True for m in wanted):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"minions {wanted} did not all answer test.ping: {answered}")
        time.sleep(0.5)


# The minion's beacon loop without a master: a standalone salt-minion (master_type:
# disable) compiles no pillar, so recovery would act on no declared tunnel. This runs
# the same beacon with the same functions and pillar (salt-call --local's) every 2 s,
# as the minion's loop does; the beacon keeps the recovery watcher running.
BEACON_LOOP = """
import time
import salt.client
import salt.loader
caller = salt.client.Caller()
beacons = salt.loader.beacons(caller.opts, caller.sminion.functions)
while True:
    beacons["libreswan.beacon"]([{"interval": 2}])
    time.sleep(2)
"""


def start_beacon_loop(lab, host, unit="vgw-beacon"):
    """Run ``BEACON_LOOP`` in ``host`` as the transient unit ``unit``."""
    host.put("/root/beacon_loop.py", BEACON_LOOP)
    host.run(["systemd-run", "--unit", unit, str(lab.venv / "bin/python"),
              "/root/beacon_loop.py"], check=True)
