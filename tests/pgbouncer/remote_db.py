"""The lab's remote PostgreSQL (lab/postgres.py) plus what the pooler tests ask it."""
import json

from lab.postgres import DATABASES, PASSWORD, ROLE, sql, start  # noqa: F401


def verifier(db, role=ROLE):
    """The SCRAM verifier PostgreSQL stores for ``role``."""
    return sql(db, f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'")[0][0]


def backends(db, database="app"):
    """Client connections PostgreSQL holds for ``database``."""
    rows = sql(db, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                   f"'{database}' AND backend_type = 'client backend'")
    return int(rows[0][0])


def psycopg_script(body):
    """A python -c script for the venv's python: ``connect(dbname)`` opens a psycopg
    connection to the pooler as the example user; ``body`` prints JSON."""
    return ("import json, psycopg\n"
            "def connect(dbname, host='198.18.2.11', port=6432):\n"
            "    return psycopg.connect(host=host, port=port, dbname=dbname, user=%s,\n"
            "        password=%s, autocommit=True, prepare_threshold=None, connect_timeout=10)\n"
            % (json.dumps(ROLE), json.dumps(PASSWORD)) + body)
