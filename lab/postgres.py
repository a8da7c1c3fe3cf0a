"""PostgreSQL (the platform's: 15 on debian12, 17 on debian13) with SCRAM auth
in the lab's remote-db host (the remote cloud's
database): listens on every lab address, accepts SCRAM logins from
198.18.0.0/15, with the example pillar's pooler user and its databases.
Used by the demo, the pooler and data-path tests and the pgbench benchmark."""

ROLE, PASSWORD = "app", "lab-app-password"  # the example pillar's pooler user
DATABASES = ("app", "app2")


def start(db, max_connections=100):
    """Configure and start the cluster in host ``db``; create role ``app`` and its databases."""
    version = db.platform.postgresql
    db.put(f"/etc/postgresql/{version}/main/conf.d/lab.conf",
           f"listen_addresses = '*'\nmax_connections = {max_connections}\n"
           "password_encryption = 'scram-sha-256'\n")
    hba = db.read(f"/etc/postgresql/{version}/main/pg_hba.conf")
    rule = "host all all 198.18.0.0/15 scram-sha-256\n"
    if rule not in hba:
        db.put(f"/etc/postgresql/{version}/main/pg_hba.conf", hba + rule, mode=0o640,
               owner="postgres")
    db.run(["systemctl", "start", f"postgresql@{version}-main"], check=True, timeout=60)
    db.wait_port(5432, "198.19.1.10")
    sql(db, f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
    for name in DATABASES:
        sql(db, f"CREATE DATABASE {name} OWNER {ROLE}")


def sql(db, query, database="postgres"):
    """Run ``query`` as the postgres superuser over the local socket; rows as lists."""
    result = db.run(["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-v",
                     "ON_ERROR_STOP=1", "-At", "-F", "\t", "-d", database, "-c", query],
                    check=True)
    return [line.split("\t") for line in result.stdout.splitlines()]
