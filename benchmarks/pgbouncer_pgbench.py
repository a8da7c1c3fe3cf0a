"""pgbench through the gateway's PgBouncer and direct to PostgreSQL, in the lab.

Run by hand as root: ``.venv/bin/python benchmarks/pgbouncer_pgbench.py [--seconds 10]``.
Starts its own lab (salt-master, vpn-gw1, remote-gw-primary, remote-db), applies the
pgbouncer formula with the example pillar (transaction pooling, max_db_connections=50,
pool_size=20, max_client_conn=500; the auth file holds the server's SCRAM verifier) and
PostgreSQL's max_connections=100, then runs ``pgbench -S`` from vpn-gw1 through the
pooler and direct, persistent (10000 transactions in all) and with ``-C`` (a new
connection per transaction, for --seconds), 20 and 500 clients, on the plain lab link
and with a 20 ms round trip between gateway and database, plus one pooler run with
``application_name_add_host`` off. Prints one table: TPS (without the connection
phase), average latency, initial connection time, failed transactions, whether pgbench
aborted (clients refused), and the most server connections PostgreSQL held for the
path during the run.

The 20 ms round trip is netem on the gateway's and the remote gateway's wan links where
the kernel has it, else a delaying TCP relay on the gateway (10 ms each way) in front of
PostgreSQL, used by both paths.
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
from lab import DEFAULT, Lab, saltstack  # noqa: E402

HOSTS = ["salt-master", "vpn-gw1", "remote-gw-primary", "remote-db"]
RELAY_PORT = 15432
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
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[3]), backlog=1024)
    await server.serve_forever()
loop = asyncio.new_event_loop()
loop.run_until_complete(main())
"""


def pgbench(gw, target, clients, connect, seconds):
    """One pgbench -S run from the gateway. Persistent connections run a fixed number of
    transactions (pgbench's TPS then excludes the connection phase, which for 500 SCRAM
    logins can outlast a short -T); -C runs for ``seconds``."""
    host, port, dbname = target
    amount = ["-T", str(seconds)] if connect else ["-t", str(max(20, 10000 // clients))]
    argv = ["pgbench", "-n", "-S", *amount, "-c", str(clients), "-j", "2", "-h", host,
            "-p", str(port), "-U", remote_db.ROLE, dbname] + (["-C"] if connect else [])
    result = gw.run(argv, env={"PGPASSWORD": remote_db.PASSWORD}, timeout=seconds + 600)
    out = result.stdout + result.stderr

    def number(pattern):
        match = re.search(pattern, out)
        return float(match.group(1)) if match else None

    if not re.search(r"tps = ", out):
        print(f"\npgbench {' '.join(argv)}: rc={result.returncode}\n{out[-1500:]}",
              file=sys.stderr)
    return {
        "tps": number(r"tps = ([\d.]+)"),
        "connect": number(r"initial connection time = ([\d.]+) ms"),
        "latency": number(r"latency average = ([\d.]+) ms"),
        "failed": number(r"number of failed transactions: (\d+)"),
        "aborted": result.returncode != 0,
        "error": next((line for line in out.splitlines() if "error" in line.lower()), ""),
    }


def peak_backends(db, path, stop, peak):
    """Sample the server connections of one path: pgbench's own (direct) or PgBouncer's
    (their application_name is the client's plus its address)."""
    match = "= 'pgbench'" if path == "direct" else "<> 'pgbench'"
    query = ("SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND "
             f"backend_type = 'client backend' AND application_name {match}")
    while not stop.is_set():
        peak.append(int(remote_db.sql(db, query)[0][0]))
        time.sleep(0.5)


def delay(lab):
    """Add 10 ms each way between gateway and database; returns (how, database host, port)."""
    gw, rgw = lab["vpn-gw1"], lab["remote-gw-primary"]
    if all(h.run(["tc", "qdisc", "add", "dev", "wan0", "root", "netem", "delay", "10ms"]).ok
           for h in (gw, rgw)):
        return "netem 10 ms each way", "198.19.1.10", 5432
    gw.run(["systemd-run", "--unit=delay-relay", "python3", "-c", RELAY, "10", "198.19.1.10",
            str(RELAY_PORT)], check=True)
    gw.wait_port(RELAY_PORT)
    return "TCP relay 10 ms each way", "127.0.0.1", RELAY_PORT


def apply(lab, pillar):
    """The pgbouncer formula with the example pillar plus ``pillar`` (vpn_gateway:pooler)."""
    returns = saltstack.salt(lab, "vpn-gw1", "state.apply", "vpn_gateway.pgbouncer",
                             f"pillar={json.dumps({'vpn_gateway': {'pooler': pillar}})}")
    failed = [r["comment"] for r in returns["vpn-gw1"].values() if r["result"] is False]
    if failed:
        raise RuntimeError(f"formula failed: {failed}")


def measure(lab, link, path, target, clients, connect, seconds):
    db = lab["remote-db"]
    stop, peak = threading.Event(), []
    sampler = threading.Thread(target=peak_backends, args=(db, path, stop, peak))
    sampler.start()
    try:
        result = pgbench(lab["vpn-gw1"], target, clients, connect, seconds)
    finally:
        stop.set()
        sampler.join()
    print(".", end="", flush=True, file=sys.stderr)
    return link, path, clients, "-C" if connect else "", result, max(peak, default=0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="pgbench -T per run")
    args = parser.parse_args()
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
        gw.wait_port(6432, "198.18.2.11")
        db_host, db_port, link = "198.19.1.10", 5432, "plain"
        for phase in ("plain", "delayed"):
            if phase == "delayed":
                how, db_host, db_port = delay(lab)
                link = f"20 ms RTT ({how})"
                pillar["databases"] = {"appdb": {"host": db_host, "port": db_port}}
                apply(lab, pillar)
            for path, target in (("pooler", ("198.18.2.11", 6432, "appdb")),
                                 ("direct", (db_host, db_port, "app"))):
                for clients in (20, 500):
                    for connect in (False, True):
                        rows.append(measure(lab, link, path, target, clients, connect,
                                            args.seconds))
        # application_name_add_host makes PgBouncer SET application_name whenever a
        # server connection changes client: one more round trip per transaction.
        pillar["settings"] = {"application_name_add_host": False}
        apply(lab, pillar)
        rows.append(measure(lab, link + ", add_host off", "pooler",
                            ("198.18.2.11", 6432, "appdb"), 20, False, args.seconds))
    print(file=sys.stderr)
    header = ("link", "path", "clients", "mode", "tps", "latency ms", "connect ms", "failed",
              "aborted", "server conns")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for link, path, clients, mode, r, peak in rows:
        cells = (link, path, clients, mode or "persistent",
                 f"{r['tps']:.0f}" if r["tps"] is not None else "-",
                 f"{r['latency']:.1f}" if r["latency"] is not None else "-",
                 f"{r['connect']:.0f}" if r["connect"] is not None else "-",
                 f"{r['failed']:.0f}" if r["failed"] is not None else "-",
                 "yes: " + r["error"][:60] if r["aborted"] else "no", peak)
        print("| " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
