"""pgbench through the gateway's PgBouncer and direct to PostgreSQL, in the lab.

Run by hand as root (with a lab slot on a shared machine):
``labslot .venv/bin/python benchmarks/pgbouncer_pgbench.py [--tls] [--seconds 10] [--jobs 2]``.
Starts its own lab (salt-master, vpn-gw1, remote-gw-primary, remote-db, k8s-node1), applies
the pgbouncer formula with the example pillar (transaction pooling, max_db_connections=50,
pool_size=20, max_client_conn=500, TLS on both legs: the clients' leg ``require`` with the
certificate for the Service's names, PgBouncer to PostgreSQL ``verify-full`` against the
database's CA; the auth file holds the server's SCRAM verifier) and PostgreSQL's
max_connections=100 (remote-db takes TCP logins over TLS only, ``hostssl``), then runs
``pgbench -S -j 2`` (--jobs) from k8s-node1 (the pods' side) through the pooler and direct,
persistent (10000 transactions in all) and with ``-C`` (a new connection per
transaction, for --seconds), 20 and 500 clients, on the plain lab link and with a 20 ms
round trip between gateway and database, plus one pooler run with
``application_name_add_host`` off. Direct clients reach PostgreSQL routed through vpn-gw1,
as pods would through the gateway. (The clients used to run in vpn-gw1; since the
gateways boot fresh it has no pgbench: Debian ships it in the server package,
postgresql-NN, which the role does not install.)

Clients' TLS: by default libpq's default, ``sslmode=prefer`` (encrypted, nothing
verified; the pillar's TLS applies all the same). ``--tls``: ``sslmode=verify-full`` on
both paths (PGSSLMODE, PGSSLROOTCERT): to the pooler by the Service's name
``postgres.databases.svc.cluster.local`` (k8s-node1's /etc/hosts gives vpn-gw1's
address, as cluster DNS would) against the pods' CA (pillar ``tls:client:ca``), to
PostgreSQL by the address in its certificate against the database's CA; before the runs
one query through the pooler must run on a TLS server connection.

Prints one table: the clients' sslmode, TPS (without the connection phase for persistent
runs, with the reconnections for -C), average latency, connection time (initial for
persistent runs, average per connection for -C), failed transactions, whether pgbench
aborted (the server's reason: too many clients), and the most server connections
PostgreSQL held for the path during the run; then the ratio pooled/direct TPS with -C at
20 ms RTT. A pgbench thread opens its clients' connections one at a time, so with -C the
TPS is at most --jobs over the connection time: at 20 ms RTT the ratio is mostly the
ratio of the connection times (a login to PostgreSQL crosses the round trip several
times, a login to the pooler none).

The 20 ms round trip is netem on the gateway's and the remote gateway's wan links where
the kernel has it, else a delaying TCP relay on the gateway (10 ms each way) in front of
PostgreSQL, used by both paths: it listens on 198.19.1.12 (one of the addresses in the
database's certificate, so verify-full holds) put on vpn-gw1's lo, where k8s-node1's
route to the database leads too; it forwards to 198.19.1.10.
"""
import argparse
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests" / "pgbouncer")]

import remote_db  # noqa: E402
from lab import DEFAULT, Lab, postgres, saltstack  # noqa: E402
from lab.lab import LabError  # noqa: E402

HOSTS = ["salt-master", "vpn-gw1", "remote-gw-primary", "remote-db", "k8s-node1"]
POOLER = "198.18.2.11"  # vpn-gw1's pooler side (listen_addr)
SERVICE = "postgres.databases.svc.cluster.local"  # a name in PgBouncer's lab certificate
CLUSTER_CA, DB_CA = "/root/cluster-ca.crt", "/root/db-ca.crt"  # in k8s-node1
RELAY_ADDRESS, RELAY_PORT = "198.19.1.12", 15432  # in the database's certificate
RELAY = """
import asyncio, sys
DELAY = float(sys.argv[1]) / 1000
async def pump(reader, writer):
    queue = asyncio.Queue()
    async def deliver():
        while (item := await queue.get()) is not None:
            due, data = item
            await asyncio.sleep(max(0, due - loop.time()))
            writer.write(data)
            await writer.drain()
        writer.close()
    task = asyncio.ensure_future(deliver())
    while data := await reader.read(65536):
        queue.put_nowait((loop.time() + DELAY, data))
    queue.put_nowait(None)
    await task
async def handle(client_reader, client_writer):
    try:
        server_reader, server_writer = await asyncio.open_connection(sys.argv[2], 5432)
        await asyncio.gather(pump(client_reader, server_writer), pump(server_reader, client_writer))
    except OSError:
        client_writer.close()
async def main():
    server = await asyncio.start_server(handle, sys.argv[4], int(sys.argv[3]), backlog=1024)
    await server.serve_forever()
loop = asyncio.new_event_loop()
loop.run_until_complete(main())
"""


def pgbench(node, target, clients, connect, seconds, jobs, env):
    """One pgbench -S run from ``node``. Persistent connections run a fixed number of
    transactions (pgbench's TPS then excludes the connection phase, which for 500 SCRAM
    logins can outlast a short -T); -C runs for ``seconds``. A pgbench thread opens its
    clients' connections one at a time: with -C the TPS is at most ``jobs`` over the
    connection time."""
    host, port, dbname = target
    amount = ["-T", str(seconds)] if connect else ["-t", str(max(20, 10000 // clients))]
    argv = ["pgbench", "-n", "-S", *amount, "-c", str(clients), "-j", str(jobs), "-h", host,
            "-p", str(port), "-U", remote_db.ROLE, dbname] + (["-C"] if connect else [])
    result = node.run(argv, env={"PGPASSWORD": remote_db.PASSWORD, **env},
                      timeout=seconds + 600)
    out = result.stdout + result.stderr

    def number(pattern):
        match = re.search(pattern, out)
        return float(match.group(1)) if match else None

    errors = [line for line in out.splitlines() if "error" in line.lower()]
    # The server's reason where it gave one (too many clients), else the first error.
    fatal = [line.split("FATAL:", 1)[1].strip() for line in errors if "FATAL:" in line]
    if not re.search(r"tps = ", out):
        print(f"\npgbench {' '.join(argv)}: rc={result.returncode}\n{out[-1500:]}",
              file=sys.stderr)
    return {
        "tps": number(r"tps = ([\d.]+)"),
        "connect": number(r"(?:initial|average) connection time = ([\d.]+) ms"),
        "latency": number(r"latency average = ([\d.]+) ms"),
        "failed": number(r"number of failed transactions: (\d+)"),
        "aborted": result.returncode != 0,
        "error": (fatal or errors or [""])[0],
    }


def peak_backends(db, path, stop, peak):
    """Sample the server connections of one path: pgbench's own (direct) or PgBouncer's
    (their application_name is the client's plus its address)."""
    match = "= 'pgbench'" if path == "direct" else "<> 'pgbench'"
    query = ("SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND "
             f"backend_type = 'client backend' AND application_name {match}")
    while not stop.is_set():
        try:
            peak.append(int(remote_db.sql(db, query)[0][0]))
        except LabError:  # logins in progress fill the superuser's reserved slots too
            pass
        time.sleep(0.5)


def route_clients(lab):
    """k8s-node1 reaches the database through vpn-gw1, as pods do through the gateway
    (the plain routed path: without ESP in the kernel no tunnel carries it)."""
    lab["k8s-node1"].run(["ip", "route", "add", "198.19.1.0/24", "via", POOLER], check=True)
    lab["vpn-gw1"].run(["sysctl", "-w", "net.ipv4.ip_forward=1"], check=True)
    lab["remote-gw-primary"].run(["ip", "route", "add", "198.18.2.0/24", "via",
                                  lab["vpn-gw1"].address("wan")], check=True)


def verify_full(lab):
    """--tls: the CAs in k8s-node1, the Service's name in its /etc/hosts (as cluster DNS
    would give it); returns the clients' libpq environment for each path."""
    node = lab["k8s-node1"]
    ca = saltstack.salt(lab, "vpn-gw1", "pillar.get", "vpn_gateway:pooler:tls:client:ca",
                        "unmask=True")["vpn-gw1"]
    node.put(CLUSTER_CA, ca)
    node.put(DB_CA, postgres.pem(postgres.db_ca()[1]))
    node.run(["sh", "-c", f"echo '{POOLER} {SERVICE}' >> /etc/hosts"], check=True)
    return {"pooler": {"PGSSLMODE": "verify-full", "PGSSLROOTCERT": CLUSTER_CA},
            "direct": {"PGSSLMODE": "verify-full", "PGSSLROOTCERT": DB_CA}}


def delay(lab):
    """Add 10 ms each way between gateway and database; returns (how, database host, port)."""
    gw, rgw = lab["vpn-gw1"], lab["remote-gw-primary"]
    if all(h.run(["tc", "qdisc", "add", "dev", "wan0", "root", "netem", "delay", "10ms"]).ok
           for h in (gw, rgw)):
        return "netem 10 ms each way", "198.19.1.10", 5432
    gw.run(["ip", "address", "add", f"{RELAY_ADDRESS}/32", "dev", "lo"], check=True)
    gw.run(["systemd-run", "--unit=delay-relay", "python3", "-c", RELAY, "10", "198.19.1.10",
            str(RELAY_PORT), RELAY_ADDRESS], check=True)
    gw.wait_port(RELAY_PORT, RELAY_ADDRESS)
    return "TCP relay 10 ms each way", RELAY_ADDRESS, RELAY_PORT


def apply(lab, pillar):
    """The pgbouncer formula with the example pillar plus ``pillar`` (vpn_gateway:pooler)."""
    returns = saltstack.salt(lab, "vpn-gw1", "state.apply", "vpn_gateway.pgbouncer",
                             f"pillar={json.dumps({'vpn_gateway': {'pooler': pillar}})}")
    failed = [r["comment"] for r in returns["vpn-gw1"].values() if r["result"] is False]
    if failed:
        raise RuntimeError(f"formula failed: {failed}")


def measure(lab, link, path, target, clients, connect, args, env):
    db = lab["remote-db"]
    stop, peak = threading.Event(), []
    sampler = threading.Thread(target=peak_backends, args=(db, path, stop, peak))
    sampler.start()
    try:
        result = pgbench(lab["k8s-node1"], target, clients, connect, args.seconds, args.jobs,
                         env.get(path, {}))
    finally:
        stop.set()
        sampler.join()
    print(".", end="", flush=True, file=sys.stderr)
    return link, path, clients, "-C" if connect else "", result, max(peak, default=0)


def ratio(rows, clients):
    """Pooled over direct TPS with -C at 20 ms RTT for ``clients`` clients, as text."""
    runs = {path: r for link, path, n, mode, r, _ in rows
            if link.startswith("20 ms") and "add_host" not in link and n == clients
            and mode == "-C"}
    pooled, direct = runs["pooler"]["tps"], runs["direct"]["tps"]
    if not pooled or not direct:
        return f"{clients} clients: -"
    aborted = " (direct aborted)" if runs["direct"]["aborted"] else ""
    return f"{clients} clients {pooled / direct:.1f}x{aborted}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="pgbench -T per run")
    parser.add_argument("--jobs", type=int, default=2, help="pgbench -j (threads) per run")
    parser.add_argument("--tls", action="store_true",
                        help="clients connect with sslmode=verify-full (default: libpq's "
                             "default, prefer)")
    args = parser.parse_args()
    sslmode = "verify-full" if args.tls else "prefer"
    lab = Lab(DEFAULT.subset(HOSTS), name=f"vgwlab-bench{os.getpid()}")
    rows = []
    with lab:
        gw, db = lab["vpn-gw1"], lab["remote-db"]
        remote_db.start(db, max_connections=100)
        db.run(["pgbench", "-i", "-q", "-s", "4", "-h", "198.19.1.10", "-U", remote_db.ROLE,
                "app"], env={"PGPASSWORD": remote_db.PASSWORD}, check=True, timeout=300)
        saltstack.salt(lab, "vpn-gw1", "saltutil.sync_all")
        # The server's own verifier in the auth file: PgBouncer then runs no PBKDF2 per
        # client login and still logs in to the server with it.
        salt = remote_db.verifier(db).split("$")[1].split(":")[1]
        pillar = {"users": {"app": {"stored": "scram-sha-256", "salt": salt}}}
        apply(lab, pillar)
        gw.wait_port(6432, POOLER)
        route_clients(lab)
        env = verify_full(lab) if args.tls else {}
        pooler = (SERVICE if args.tls else POOLER, 6432, "appdb")
        if args.tls:
            # Both legs TLS: this query's server connection too (remote-db: hostssl only).
            check = lab["k8s-node1"].run(
                ["psql", "-X", "-At", "-h", SERVICE, "-p", "6432", "-U", remote_db.ROLE,
                 "-d", "appdb", "-c", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"],
                env={"PGPASSWORD": remote_db.PASSWORD, **env["pooler"]}, timeout=60)
            if check.stdout.strip() != "t":
                raise RuntimeError(f"no TLS through the pooler: {check}")
        db_host, db_port, link = "198.19.1.10", 5432, "plain"
        for phase in ("plain", "delayed"):
            if phase == "delayed":
                how, db_host, db_port = delay(lab)
                link = f"20 ms RTT ({how})"
                pillar["databases"] = {"appdb": {"host": db_host, "port": db_port}}
                apply(lab, pillar)
            for path, target in (("pooler", pooler), ("direct", (db_host, db_port, "app"))):
                for clients in (20, 500):
                    for connect in (False, True):
                        rows.append(measure(lab, link, path, target, clients, connect,
                                            args, env))
        # application_name_add_host makes PgBouncer SET application_name whenever a
        # server connection changes client: one more round trip per transaction.
        pillar["settings"] = {"application_name_add_host": False}
        apply(lab, pillar)
        rows.append(measure(lab, link + ", add_host off", "pooler", pooler, 20, False, args,
                            env))
    print(file=sys.stderr)
    header = ("link", "path", "clients", "mode", "sslmode", "tps", "latency ms", "connect ms",
              "failed", "aborted", "server conns")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for link, path, clients, mode, r, peak in rows:
        cells = (link, path, clients, mode or "persistent", sslmode,
                 f"{r['tps']:.0f}" if r["tps"] is not None else "-",
                 f"{r['latency']:.1f}" if r["latency"] is not None else "-",
                 f"{r['connect']:.0f}" if r["connect"] is not None else "-",
                 f"{r['failed']:.0f}" if r["failed"] is not None else "-",
                 "yes: " + r["error"][:60] if r["aborted"] else "no", peak)
        print("| " + " | ".join(map(str, cells)) + " |")
    print(f"pooled/direct TPS, -C at 20 ms RTT, sslmode={sslmode}, -j {args.jobs}: "
          f"{ratio(rows, 20)}; {ratio(rows, 500)}")


if __name__ == "__main__":
    main()
