"""The whole gateway end to end, through faults (issue 15): the scenario that
tests/e2e/test_e2e.py asserts and benchmarks/e2e.py prints as a table. It
needs ESP (run it in the QEMU guest where the kernel lacks it).

The lab: a salt-master serving pillar from Git (the repo's pillar/ plus the
scenario's ``lab.sls``, ``scenario_pillar``) and the stand-in Kubernetes API;
vpn-gw1 and vpn-gw2 booted from the root the role's formulas converged on a
fresh image (lab/converged.py ``E2E_SLS``: the whole role but the k8s part),
minions of that master, converged by a highstate of the whole role (firewalld
enforcing, the pooler with TLS, monitoring with its beacon and the gateway's
own recovery, the Service and its EndpointSlice); the remote primary and backup
gateways (lab/peers.py) forwarding to the database only what IPsec decrypted;
remote-db (TLS only, ``hostssl``); k8s-node1, where the workload runs; the
outsider, which also receives the alerts (the example pillar's webhook). The
remote side's routing follows each gateway's tunnel (``peers.RemoteRouting``).

The workload (``WORKLOAD``): k8s-node1 connects per transaction, as a pod
would, to the Service's name with ``sslmode=verify-full`` against the
cluster's CA, through vpn-gw1's PgBouncer (TLS to PostgreSQL, ``verify-full``)
and the tunnel, and inserts a fresh UUID; it records each id the database
acknowledged. At the end every acknowledged id must be in the table.

Faults, in order, the workload running: pluto killed; the primary peer down
(failover); the primary back (failback); the pool size changed in Git and
applied by a highstate (PgBouncer reloads, never restarts); PostgreSQL
restarted; the salt-master stopped, and pluto killed while it is; a highstate
with nothing to change. Then a 16 MB COPY each way, two Child SA rekeys, the
outsider's tries (IKE, the pooler, SSH), the secrets searched in the master's
job cache and every log, and the tally.
"""
import json
import re
import time

import yaml
from esp_helpers import child_sa_peers
from leak_helpers import INFO_LINE, find_leaks, needles, pillar_secrets, stored

from lab import Lab, converged, kubeapi, peers, postgres, role, saltstack
from lab.lab import SLOWDOWN

HOSTS = ["salt-master", "vpn-gw1", "vpn-gw2", "remote-gw-primary", "remote-gw-backup",
         "remote-db", "k8s-node1", "outsider"]
GATEWAYS = role.GATEWAYS
GATEWAY, TUNNEL = "vpn-gw1", "remote-db"  # the workload's gateway, the tunnel's conn
ENDPOINTS = {"198.18.2.11": "vpn-gw1", "198.18.2.12": "vpn-gw2"}  # kubernetes.sls
SERVICE = "postgres.databases.svc.cluster.local"  # a name in the pooler's certificate
POOLER_ADDRESS, POOLER_PORT, POOLER_DATABASE = role.POOLER
CLUSTER_CA = "/root/cluster-ca.crt"  # in k8s-node1
# The example pillar's webhook (vpn_gateway:monitoring:webhook_url, a secret): the
# outsider's address; the receiver runs there.
WEBHOOK_ADDRESS, WEBHOOK_PORT, ALERTS = "198.18.0.99", 8080, "/run/alerts.jsonl"
LOG, ERRORS = "/run/e2e.log", "/run/e2e.errors"
# The scenario's monitoring over the example's: Child SAs decide; each ladder step and
# failback try given TCG's pace (the default 10 s natively): with 20 s (2 s of a real
# CPU's) both gateways' ladders gave up on the primary's loss and their failbacks broke
# the tunnel, the two negotiating with the same peers beside the master (run of
# 2026-12-01 19:28); failback on its own, tried at each failover repeat (every 30 s: a
# pluto killed whose restart fails goes to the backup, and must be back on the primary
# before the master is); the watcher's polls every 6 s (each forks the minion twice: at
# the example's 2 s, both gateways' watchers took most of the guest's two vCPUs).
STEP_TIMEOUT = 60 if SLOWDOWN > 1 else 10
# pluto took over 3 s, then over 10 s, to answer a status query in the guest while it
# ran the updown scripts of both gateways' returning tunnels, and the ladder restarted
# it as hung (run of 2026-12-02 08:30)
STATUS_TIMEOUT = 60 if SLOWDOWN > 1 else 10
SETTINGS = {"up_when": "child_sa", "holddown": 2, "step_timeout": STEP_TIMEOUT,
            "status_timeout": STATUS_TIMEOUT,
            "conn_restarts": 2, "failback": "auto", "failback_after": 30,
            "recovery": "local", "watch_interval": 6,
            "alerts": {"rate_window": 60, "timeout": 5}}
# s a scratch PgBouncer gets to take a candidate config: 10 s was not enough for
# vpn-gw2's in the guest's first highstate (run of 2026-12-01 22:57)
CHECK_TIMEOUT = 60 if SLOWDOWN > 1 else 10
# s the admin console gets to answer: RELOAD did not in 30 s in vpn-gw1's highstate of
# the pool change (run of 2026-12-02 02:53)
CONSOLE_TIMEOUT = 180 if SLOWDOWN > 1 else 30
POOL_SIZE_CHANGED = 12
# s the salt-master stays stopped: pluto killed took 43-89 s in the guest; the worst a
# healing gateway may take is a failed restart, a switch and a failback try (4 steps,
# each step_timeout plus its reads of a slow pluto, up to STATUS_TIMEOUT per command)
MASTER_DOWN = 4 * STEP_TIMEOUT
REKEYS = 2
# One transaction per connection, as a pod's; a line per try: start end ok|fail id.
WORKLOAD = """\
while :; do
  id=$(cat /proc/sys/kernel/random/uuid)
  start=$(date +%s.%N)
  out=$(timeout 30 psql -X -qAt -h {service} -p {port} -U {user} -d {database} \\
        -c "INSERT INTO e2e (id) VALUES ('$id') RETURNING id" 2>/run/e2e.last)
  if [ "$out" = "$id" ]; then result=ok; else result=fail; fi
  echo "$start $(date +%s.%N) $result $id" >> {log}
  if [ $result = fail ]; then echo "$start $(tr '\\n' ' ' < /run/e2e.last)" >> {errors}; fi
  sleep 0.1
done
"""


def scenario_pillar(pool_size=None):
    """The scenario's ``lab.sls`` in the pillar repository (last in the top file, merged
    over the example key by key): short SA lifetimes (the least that pluto 5 keeps),
    so that Child SAs rekey under the load (with the default rekeymargin, 540 s with
    100 % fuzz, 0-540 s after each new one); the monitoring's settings; for the
    guest's CPU (under TCG the example's schedules, each a fork of the minion every
    5 s, saturated its two vCPUs with the master's lab) the metrics schedule off, the
    heartbeat and readiness check every 30 s, the readiness deadline 90 s, and the
    beacon every 10 s (it reports to the master; the watcher recovers), and the
    scratch PgBouncer's ``CHECK_TIMEOUT`` and the console's ``CONSOLE_TIMEOUT``;
    ``pool_size`` for the pods' database."""
    gateway = {"tunnel": {"salifetime": 1080, "ikelifetime": 1080}, "monitoring": SETTINGS,
               "kubernetes": {"readiness": {"deadline": 90}},
               "pooler": {"check_timeout": CHECK_TIMEOUT,
                          "console_timeout": CONSOLE_TIMEOUT}}
    if pool_size:
        gateway["pooler"]["databases"] = {POOLER_DATABASE: {"pool_size": pool_size}}
    return {"vpn_gateway": gateway,
            "beacons": {"libreswan": [{"interval": 10}, {"disable_during_state_run": True}]},
            "schedule": {"vpn_gateway_metrics": {"enabled": False},
                         "vpn_gateway_heartbeat": {"seconds": 30},
                         "vpn_gateway_readiness": {"seconds": 30}}}


def make_lab(platform, name):
    topology = converged.topology(HOSTS, platform, formulas=converged.E2E_SLS,
                                  gateways=GATEWAYS)
    return Lab(topology, name=name, platform=platform, pillar=scenario_pillar())


# s between two asks of a wait: each ask runs commands in the lab hosts (whack, the
# API server, the workload's log), and under TCG a fork costs the guest's gateways and
# peers CPU; in the run of 2026-12-02 05:22 neither gateway reached the backup in 900 s
POLL = 5 if SLOWDOWN > 1 else 1


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(POLL)
    return value


def salt1(lab, function, *args, minion=GATEWAY, timeout=300):
    """``salt MINION FUNCTION ARGS`` from the master: the minion's return."""
    return saltstack.salt(lab, minion, function, *args, timeout=timeout)[minion]


def highstate(lab):
    """``salt 'vpn-gw*' state.apply`` after a pillar refresh; {minion: [state ids that
    changed]}. A failed state raises."""
    saltstack.salt(lab, "vpn-gw*", "saltutil.refresh_pillar", "wait=True", timeout=300)
    returns = role.highstate(lab, timeout=1800)
    failed = {m: {i: r["comment"] for i, r in states.items() if r["result"] is False}
              for m, states in returns.items()}
    assert not any(failed.values()) and set(returns) == set(GATEWAYS), failed or returns
    return {m: sorted(i for i, r in states.items() if r["changes"])
            for m, states in returns.items()}


def endpoints_ready(lab):
    """Each gateway's endpoint is ready by the EndpointSlice's last change seen."""
    last = {c["address"]: c.get("ready") for c in kubeapi.slice_changes(lab)}
    return set(last) == set(ENDPOINTS) and all(last.values())


def on_peer(lab, peer):
    """Both gateways' Child SAs are with ``peer`` (and only with it)."""
    return all(child_sa_peers(lab[g]) == {peer} for g in GATEWAYS)


class ChildSas(peers.Poller):
    """vpn-gw1's Child SAs sampled in a thread: (time, {serial: peer}) each second."""

    def __init__(self, gw):
        super().__init__()
        self.gw, self.samples = gw, []

    def poll(self):
        text = self.gw.run(["ipsec", "whack", "--trafficstatus"], timeout=60).stdout
        self.samples.append((time.time(), {
            int(m.group(1)): "backup" if m.group(2).endswith("-backup") else "primary"
            for m in re.finditer(r'#(\d+): "([^"/]+)', text)}))

    def new_serials(self, started, ended, outside=()):
        """[(time, serial)] of the Child SAs first seen in [started, ended], but in
        the windows ``outside`` [(start, end)] (the faults')."""
        seen, new = set(), []
        for at, serials in list(self.samples):
            for serial in serials:
                if (serial not in seen and seen and started <= at <= ended
                        and not any(a <= at <= b for a, b in outside)):
                    new.append((at, serial))
            seen |= set(serials)
        return new


def prepare(lab, log=print):
    node, db, out = lab["k8s-node1"], lab["remote-db"], lab["outsider"]
    took = {}  # s per step: where the guest's time before the first fault goes

    def step(name, started):
        took[name] = round(time.monotonic() - started)
        log(f"e2e: {name}: {took[name]} s")
        return time.monotonic()

    started = time.monotonic()
    for name in peers.REMOTE_GATEWAYS:
        lab[name].run(["nft", "-f", "-"], input=peers.ONLY_DECRYPTED, check=True)
    peers.configure(lab)
    started = step("remote gateways", started)
    postgres.start(db)
    postgres.sql(db, "CREATE TABLE e2e (id uuid PRIMARY KEY, at timestamptz NOT NULL "
                 "DEFAULT now()); CREATE TABLE blob (line text NOT NULL); "
                 f"ALTER TABLE e2e OWNER TO {postgres.ROLE}; "
                 f"ALTER TABLE blob OWNER TO {postgres.ROLE}", database="app")
    started = step("remote-db", started)
    out.run(["systemd-run", "--unit", "webhook", "/usr/bin/python3",
             f"{lab.repo}/tests/monitoring/webhook_receiver.py", WEBHOOK_ADDRESS,
             str(WEBHOOK_PORT), ALERTS], check=True)
    # vpn-gw2 booted with vpn-gw1's configs (the converged root): its pooler (listening on
    # vpn-gw1's address) and its pluto stopped, as on a fresh host the role starts them
    for name in GATEWAYS[1:]:
        lab[name].run(["systemctl", "stop", "pgbouncer", "ipsec"], check=True, timeout=120)
    started = step("webhook, vpn-gw2 stopped", started)
    role.prepare(lab, timeout=600, log=lambda line: log(f"e2e: {line}"))
    kubeapi.watch_slices(lab)
    started = step("role.prepare", started)
    changed = highstate(lab)
    started = step("highstate", started)
    log(f"e2e: highstate states changed: {changed}")
    # before the highstate each gateway ran the converged root's vpn-gw1 config, which its
    # beacon saw down (a ladder may have spent the budget): a fresh recovery budget
    saltstack.salt(lab, "vpn-gw*", "libreswan.reset_recovery", TUNNEL, timeout=300)
    # the run of 2026-12-02 01:57 stopped here after 300 s, unexplained: what the
    # gateways do is logged then, and they get 600 s more
    for timeout in (300, 600):
        try:
            wait_for(lambda: on_peer(lab, "primary") and endpoints_ready(lab), timeout,
                     "both gateways' Child SAs on the primary, both endpoints ready")
            break
        except AssertionError as exc:
            log(f"e2e: {exc}\n{diagnosis(lab)}")
            if timeout == 600:
                raise
    started = step("tunnels and endpoints up", started)
    wait_for(lambda: (salt1(lab, "libreswan.monitoring_memory", "beacon") or {}).get(
        TUNNEL, {}).get("state") == "up", 300, "vpn-gw1's beacon reports up")
    started = step("beacon up", started)
    # unmask: Salt 3008 masks pillar.get's answer otherwise (the CA is no secret)
    ca = salt1(lab, "pillar.get", "vpn_gateway:pooler:tls:client:ca", "unmask=True")
    node.put(CLUSTER_CA, ca)
    node.run(["sh", "-c", f"echo '{POOLER_ADDRESS} {SERVICE}' >> /etc/hosts"], check=True)
    node.run(["systemd-run", "--unit", "workload", f"--setenv=PGPASSWORD={postgres.PASSWORD}",
              "--setenv=PGSSLMODE=verify-full", f"--setenv=PGSSLROOTCERT={CLUSTER_CA}",
              "--setenv=PGCONNECT_TIMEOUT=10", "sh", "-c",
              WORKLOAD.format(service=SERVICE, port=POOLER_PORT, user=postgres.ROLE,
                              database=POOLER_DATABASE, log=LOG, errors=ERRORS)], check=True)
    try:
        wait_for(lambda: any(t.ok for t in transactions(lab)), 300, "a first committed id")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the client's last errors: {errors_seen(lab)[-3:]}") from None
    step("workload's first commit", started)
    log(f"e2e: prepared in {sum(took.values())} s")


class Try:
    def __init__(self, line):
        start, end, result, self.id = line.split()
        self.start, self.end, self.ok = float(start), float(end), result == "ok"


def transactions(lab):
    return [Try(line) for line in lab["k8s-node1"].run(["cat", LOG]).stdout.splitlines()
            if len(line.split()) == 4]


def alerts(lab):
    text = lab["outsider"].run(["cat", ALERTS]).stdout
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def pooler_pid(lab):
    return lab[GATEWAY].run(["systemctl", "show", "-p", "MainPID", "--value", "pgbouncer"],
                            check=True).stdout.strip()


def pluto_pid(lab):
    return lab[GATEWAY].run(["pidof", "pluto"]).stdout.strip()


def pool_size(lab):
    """PgBouncer's own answer (SHOW DATABASES on its console) for the pods' database."""
    rows = salt1(lab, "pgbouncer.show", "databases")
    return next(int(r["pool_size"]) for r in rows if r["name"] == POOLER_DATABASE)


def faults(lab):
    """[(name, inject, recovered, after)]: recovered() is true once the fault is undone;
    after() (or None) runs then, inside the fault's window."""
    gw, primary, db, master = lab[GATEWAY], lab["remote-gw-primary"], lab["remote-db"], \
        lab["salt-master"]
    version = db.platform.postgresql
    state = {}

    def kill_pluto():
        state["pluto"] = pluto_pid(lab)
        gw.run(["pkill", "-TERM", "-x", "pluto"], check=True)

    def pluto_back():
        return pluto_pid(lab) not in ("", state["pluto"]) and child_sa_peers(gw) == {"primary"}

    def healed(tunnel_back):
        """Recovered: the tunnel back (its time kept as the fault's recovery) and both
        endpoints ready again."""
        def check():
            if "recovered at" not in state and tunnel_back():
                state["recovered at"] = time.time()
            return "recovered at" in state and endpoints_ready(lab)
        return check

    def pool_change():
        state["pooler"] = pooler_pid(lab)
        saltstack.commit_pillar(lab, "lab.sls", yaml.safe_dump(scenario_pillar(
            POOL_SIZE_CHANGED)), f"pooler: {POOLER_DATABASE} pool_size {POOL_SIZE_CHANGED}")
        state["pool change"] = highstate(lab)

    def stop_master():
        master.run(["systemctl", "stop", "salt-master"], check=True, timeout=120)
        state["master down"] = [time.time(), None]  # [stopped, started]: wall clock
        kill_pluto()

    def master_due_back():
        """The master stays stopped MASTER_DOWN s, whatever the tunnel does; a tunnel
        back meanwhile is noted (the gateway's own recovery)."""
        healed(pluto_back)()
        return time.time() - state["master down"][0] >= MASTER_DOWN

    def start_master():
        state["master down"][1] = time.time()
        master.run(["systemctl", "start", "salt-master"], check=True, timeout=120)
        wait_for(healed(pluto_back), 900, "pluto back and both endpoints ready")
        started = time.monotonic()
        wait_for(lambda: all(saltstack.answers(lab, g, timeout=30) for g in GATEWAYS), 900,
                 "both gateways answer the master again")
        state["minions answer after the master's start (s)"] = time.monotonic() - started
        wait_for(lambda: endpoints_ready(lab), 300, "both endpoints ready with the master back")

    def reapply():
        state["changes"] = {m: ids for m, ids in highstate(lab).items() if ids}

    return [
        ("pluto killed", kill_pluto, healed(pluto_back), None),
        ("primary peer down", lambda: primary.run(["systemctl", "stop", "ipsec"], check=True),
         healed(lambda: on_peer(lab, "backup")), None),
        ("primary back (failback)",
         lambda: primary.run(["systemctl", "start", "ipsec"], check=True, timeout=120),
         healed(lambda: on_peer(lab, "primary")), None),
        ("pool size changed in Git, highstate", pool_change,
         lambda: pool_size(lab) == POOL_SIZE_CHANGED and pooler_pid(lab) == state["pooler"],
         None),
        ("PostgreSQL restarted",
         lambda: db.run(["systemctl", "restart", f"postgresql@{version}-main"], check=True,
                        timeout=120),
         lambda: True, None),
        # the master stays stopped MASTER_DOWN s; then (after()) it is started, the tunnel
        # awaited if it is not back yet (the test fails then), and both gateways answer
        ("salt-master stopped, pluto killed", stop_master, master_due_back, start_master),
        ("highstate again", reapply, lambda: True, None),
    ], state


MINION_LOG = "/var/log/salt/minion"


def log_lengths(lab):
    """{gateway: lines in its minion log now}: where a fault's own lines begin."""
    return {name: int(lab[name].run(["sh", "-c", f"wc -l < {MINION_LOG}"], timeout=60)
                      .stdout.strip() or 0) for name in GATEWAYS}


def pluto_report(host, lines):
    """pluto's SA states, its last ``lines`` in the journal (timed to the microsecond:
    one kernel's clock for every host, so both ends of an exchange line up) and the
    receive side of IKE (the host's UDP counters, the IKE sockets' queues and drops):
    whether an answer that one side sent reached the other's pluto."""
    states = host.run(["sh", "-c", "ipsec whack --status | grep -E '#[0-9]+: '"],
                      timeout=60).stdout
    journal = host.run(["journalctl", "-u", "ipsec", "-o", "short-precise", "-n", str(lines)],
                       timeout=60).stdout
    received = host.run(["sh", "-c", "nstat -asz 'Udp*' | grep -E '^Udp(InDatagrams|NoPorts|"
                         "InErrors|RcvbufErrors) '; ss -uamn '( sport = :500 or sport = :4500 )'"],
                        timeout=60).stdout
    return (f"pluto's states:\n{states}\npluto's last lines:\n{journal}\n"
            f"IKE's receive side:\n{received}")


def diagnosis(lab, since=None, lines=40):
    """What each gateway's tunnel and own recovery were doing, read in the hosts
    without Salt (the master may be the fault): the peers of its Child SAs, its
    recovery watcher's lines (after ``since``, {gateway: line count}; the last
    ``lines`` of them) and ``pluto_report``; then the remote gateways'
    ``pluto_report`` (the answering side of a slow IKE)."""
    report = []
    for name in GATEWAYS:
        start = (since or {}).get(name, 0) + 1
        watcher = lab[name].run(["sh", "-c", f"tail -n +{start} {MINION_LOG} | "
                                 f"grep -h 'recovery watcher' | tail -n {lines}"],
                                timeout=60).stdout
        report.append(f"{name}: Child SAs with {sorted(child_sa_peers(lab[name]))}; "
                      f"its recovery watcher's lines:\n{watcher}\n"
                      f"{pluto_report(lab[name], lines)}")
    report += [f"{name}: {pluto_report(lab[name], lines)}" for name in peers.REMOTE_GATEWAYS]
    return "\n".join(report)


def flow_again(lab, t0, timeout=600):
    """Seconds from ``t0`` to the end of the first committed transaction that started
    after the last failed one (or after t0): when transactions flow again."""
    def found():
        tries = [t for t in transactions(lab) if t.end >= t0]
        failed = [t.start for t in tries if not t.ok]
        after = max(failed, default=t0)
        ok = [t.end for t in tries if t.ok and t.start > after]
        return min(ok) if ok else None
    return wait_for(found, timeout, "transactions flow again") - t0


def endpoint_changes(lab, started, ended):
    """The EndpointSlice's ready transitions in [started, ended]: "GATEWAY ready|not
    ready at SECONDS" from ``started``."""
    return [f"{ENDPOINTS.get(c['address'], c['address'])} "
            f"{'ready' if c.get('ready') else 'not ready'} at {c['at'] - started:.1f}"
            for c in kubeapi.slice_changes(lab) if started <= c["at"] <= ended]


def run_faults(lab, log=print):
    rows = []
    listed, state = faults(lab)
    for name, inject, recovered, after in listed:
        time.sleep(5)
        lengths = log_lengths(lab)
        t0 = time.time()
        alerts_before = len(alerts(lab))
        inject()
        try:
            wait_for(recovered, 900, f"{name}: recovered")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{diagnosis(lab, lengths)}") from None
        if after:
            after()
        recovered_at = state.pop("recovered at", time.time()) - t0
        flowing = flow_again(lab, t0)
        time.sleep(5)
        ended = time.time()
        tries = [t for t in transactions(lab) if t.start >= t0 - 1]
        rows.append({"fault": name, "t0": t0, "ended": ended,
                     "recovered (s)": recovered_at, "flowing (s)": flowing,
                     "failed": sum(not t.ok for t in tries),
                     "committed": sum(t.ok for t in tries),
                     "alerts": [f"{a['body'].get('hostname')}: {a['body'].get('state')}"
                                for a in alerts(lab)[alerts_before:]],
                     "endpoints": endpoint_changes(lab, t0, ended)})
        log(f"e2e: {rows[-1]}")
        log(f"e2e: {name}: the gateways after it\n{diagnosis(lab, lengths)}")
    return rows, state


def copy_each_way(lab, megabytes=16):
    """A COPY of ``megabytes`` MB to the database and back through the Service, TLS,
    the pooler and the tunnel; (seconds up, seconds down, both sides' digests equal)."""
    node = lab["k8s-node1"]
    env = {"PGPASSWORD": postgres.PASSWORD, "PGSSLMODE": "verify-full",
           "PGSSLROOTCERT": CLUSTER_CA}
    psql = ["psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-h", SERVICE, "-p",
            str(POOLER_PORT), "-U", postgres.ROLE, "-d", POOLER_DATABASE]
    node.run(["sh", "-c", f"head -c {megabytes * 3 // 4}M /dev/urandom | base64 -w 76 "
              "> /root/blob.txt"], check=True, timeout=300)
    local = node.run(["sh", "-c", "LC_ALL=C sort /root/blob.txt | md5sum"],
                     check=True, timeout=300).stdout.split()[0]
    started = time.monotonic()
    node.run(psql + ["-c", "\\copy blob (line) FROM '/root/blob.txt'"], env=env, check=True,
             timeout=1200)
    up = time.monotonic() - started
    started = time.monotonic()
    node.run(["sh", "-c", " ".join(psql) + " -c \"\\copy blob TO '/root/back.txt'\""],
             env=env, check=True, timeout=1200)
    down = time.monotonic() - started
    back = node.run(["sh", "-c", "LC_ALL=C sort /root/back.txt | md5sum"],
                    check=True, timeout=300).stdout.split()[0]
    size = node.run(["stat", "-c", "%s", "/root/back.txt"], check=True).stdout.strip()
    return {"bytes": int(size), "up (s)": up, "down (s)": down, "same": local == back}


def outsider_refused(lab):
    """The outsider tries IKE (its own Libreswan, with the right PSK), the pooler and
    SSH; {try: refused?}. IKE is refused when pluto in vpn-gw1 logged nothing from it
    and no IKE SA came up."""
    out, gw = lab["outsider"], lab[GATEWAY]
    since = gw.run(["date", "+%Y-%m-%d %H:%M:%S"], check=True).stdout.strip()
    lines = peers.idiom(peers.major(out), "left", peers.DATABASE_SUBNETS)
    out.put("/etc/ipsec.d/vpn-gw1.conf", peers.CONN.format(
        gateway=GATEWAY, remote="remote-gw-primary", me=out.address("wan"),
        gateway_address=gw.address("wan"), tunnel_ip=gw.spec.loopback[0], **lines)
        .replace("auto=add", "auto=add\n\tretransmit-timeout=20s"))
    out.put("/etc/ipsec.d/vpn-gw1.secrets",
            f'@remote-gw-primary @{GATEWAY} : PSK "{peers.EXAMPLE_PSK}"\n', mode=0o600)
    out.run(["systemctl", "start", "ipsec"], check=True, timeout=120)
    out.run(["ipsec", "whack", "--initiate", "--asynchronous", "--name", GATEWAY],
            timeout=120)
    time.sleep(30)
    status = out.run(["ipsec", "whack", "--trafficstatus"], timeout=60).stdout
    heard = gw.run(["journalctl", "-u", "ipsec", "--since", since, "-o", "cat"],
                   timeout=120).stdout
    refused = {"IKE": out.address("wan") not in heard and '"vpn-gw1' not in status}
    for name, port in (("pooler", POOLER_PORT), ("SSH", 22)):
        refused[name] = not connects(out, POOLER_ADDRESS, port)
    # the probe's control: a Kubernetes node reaches the pooler the same way
    assert connects(lab["k8s-node1"], POOLER_ADDRESS, POOLER_PORT), "the probe is broken"
    return refused


def connects(host, address, port):
    """Whether a TCP connection from ``host`` to ``address``:``port`` opens within 5 s."""
    return host.run(["python3", "-c", "import socket, sys; socket.create_connection("
                     "(sys.argv[1], int(sys.argv[2])), 5)", address, str(port)],
                    timeout=60).ok


def lost(lab):
    """The acknowledged ids that are not in the table (must be none)."""
    acknowledged = {t.id for t in transactions(lab) if t.ok}
    stored = {row[0] for row in postgres.sql(lab["remote-db"], "SELECT id FROM e2e",
                                             database="app")}
    return sorted(acknowledged - stored), len(acknowledged)


def errors_seen(lab):
    return lab["k8s-node1"].run(["cat", ERRORS]).stdout.splitlines()


def run_all(lab, log=print):
    """The whole scenario on a started lab of ``HOSTS``; the results that the test
    asserts and the benchmark prints."""
    started = time.monotonic()
    with peers.RemoteRouting(lab), ChildSas(lab[GATEWAY]) as sas:
        prepare(lab, log)
        load_started = time.time()
        rows, state = run_faults(lab, log)
        copied = copy_each_way(lab)
        log(f"e2e: COPY {copied}")
        windows = [(row["t0"], row["ended"]) for row in rows]
        # Child SAs that no fault made: rekeys (salifetime 1080 s); two at least
        wait_for(lambda: len(sas.new_serials(load_started, time.time(), windows)) >= REKEYS,
                 900, f"{REKEYS} rekeys under the load")
        time.sleep(10)
        load_ended = time.time()
    lab["k8s-node1"].run(["systemctl", "stop", "workload"])
    rekeys = sas.new_serials(load_started, load_ended, windows)
    tries = transactions(lab)
    refused = outsider_refused(lab)
    missing, acknowledged = lost(lab)
    return {"faults": rows, "pool change": state.get("pool change"),
            "second apply changes": state.get("changes"), "master down": state.get("master down"),
            "minions answer after the master's start (s)": state.get(
                "minions answer after the master's start (s)"), "copy": copied,
            "rekeys": [{"serial": serial, "failed within 10 s": sum(
                not t.ok and abs(t.end - at) <= 10 for t in tries)} for at, serial in rekeys],
            "outsider refused": refused, "acknowledged": acknowledged, "lost": missing,
            "errors": errors_seen(lab), "leaks": leaks(lab),
            "seconds": time.monotonic() - started}


def leaks(lab):
    """Every secret of the pillar (and the API token of vpn-gw1's kubeconfig) searched in
    the master's job cache and every log and journal of the master and the gateways
    (tests/role/leak_helpers.py); the report of where one was found ("" when none was)."""
    plain = pillar_secrets(lab.repo / "pillar")
    kubeconfig = yaml.safe_load(lab[role.KUBERNETES_MINION].read(role.KUBECONFIG))
    for user in kubeconfig["users"]:
        plain[f"kubeconfig token ({user['name']})"] = user["user"]["token"]
    return find_leaks(stored(lab, ["salt-master", *GATEWAYS], log_line=INFO_LINE),
                      needles(plain))
