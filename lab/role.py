"""The gateway role on a lab: the hosts it needs and the preparation before a
highstate (the Kubernetes API for the k8s part, the role grain). Shared by the
role test, the demo and the role benchmark."""
import time

from . import kubeapi, postgres, saltstack
from .lab import SLOWDOWN

HOSTS = ["salt-master", "vpn-gw1", "vpn-gw2", "remote-gw-primary", "remote-gw-backup",
         "remote-db", "k8s-node1"]
GATEWAYS = ["vpn-gw1", "vpn-gw2"]
KUBECONFIG = "/etc/vpn-gateway/kubeconfig"  # pillar vpn_gateway:kubernetes:kubeconfig
KUBERNETES_MINION = "vpn-gw1"  # pillar vpn_gateway:kubernetes:minion
POOLER = ("198.18.2.11", 6432, "appdb")  # vpn-gw1's pooler as pods reach it (vpn_gateway:pooler)


def prepare(lab, timeout=120, log=lambda line: None):
    """Ready the lab's gateways for ``state.apply``; ``log`` gets each step's seconds."""
    started = time.monotonic()
    lab[KUBERNETES_MINION].put(KUBECONFIG, kubeapi.start(lab), mode=0o600)
    log(f"role: the API server and the kubeconfig: {time.monotonic() - started:.0f} s")
    started = time.monotonic()
    deadline = started + timeout
    wanted = {g: ["vpn-gw"] for g in GATEWAYS if g in lab.hosts}
    # startup_states gives the role at minion start; the grain shows before that job
    # ends, and a highstate started meanwhile is refused ("state.sls is running")
    idle = {g: [] for g in wanted}
    tries = 1
    while saltstack.salt(lab, "vpn-gw*", "grains.get", "roles") != wanted or saltstack.salt(
            lab, "vpn-gw*", "saltutil.is_running", "state.*") != idle:
        if time.monotonic() > deadline:
            raise RuntimeError("the gateways never got the vpn-gw role grain (or its state "
                               "job never ended)")
        time.sleep(1)
        tries += 1
    log(f"role: the role grain: {time.monotonic() - started:.0f} s ({tries} asks)")
    # No saltutil.sync_all here: the minion-start reactor syncs the pack's modules, and
    # state.apply syncs them again before it renders (autoload_dynamic_modules). A third
    # sync took 331 s in the e2e guest.


def highstate(lab, test=False, timeout=900):
    """``salt 'vpn-gw*' state.apply [test=True]`` -> {minion: {state id: return}}.

    Each return gains ``__state__``, its state module (``pkg``, ``libreswan``...).
    A minion whose return is not a dict (a render error) raises."""
    returns = saltstack.salt(lab, "vpn-gw*", "state.apply", *(["test=True"] if test else []),
                             timeout=timeout)
    by_id = {}
    for minion, ret in returns.items():
        if not isinstance(ret, dict):
            raise RuntimeError(f"{minion}: state.apply did not run: {ret}")
        by_id[minion] = {r["__id__"]: {**r, "__state__": key.split("_|-")[0]}
                         for key, r in ret.items()}
    return by_id


def select_one(lab):
    """``SELECT 1`` with psql in k8s-node1 through vpn-gw1's pooler, as a pod would."""
    host, port, database = POOLER
    return lab["k8s-node1"].run(
        ["psql", "-X", "-At", "-h", host, "-p", str(port), "-U", postgres.ROLE, "-d", database,
         "-c", "SELECT 1"],
        env={"PGPASSWORD": postgres.PASSWORD, "PGCONNECT_TIMEOUT": str(int(10 * SLOWDOWN))},
        timeout=60)
