"""The scratch PgBouncer that checks a candidate config (``pgbouncer.check_config``, run by
``validate_config`` in test=True too, issue 14) touches none of the host's services: no TCP
listener, its socket, log and ini in a private temp directory, no pidfile or syslog, the
service's account, no environment inherited from the minion (PgBouncer sends READY=1, and
1.24 STOPPING=1, to $NOTIFY_SOCKET: under Salt's Type=notify/NotifyAccess=all minion unit
systemd would take the minion for stopping), and every [databases] host pointed at an empty
directory inside the temp directory, so no server connection can leave it.

The first test reads the config and the process arguments the scratch run is given (no
PgBouncer needed); the second runs this machine's PgBouncer (skipped without it or root)
with a client logging in to the scratch instance while it runs, against a server listening
on 127.0.0.1, and a notify socket of its own in $NOTIFY_SOCKET: neither may hear from it.
"""
import os
import pwd
import select
import shutil
import socket
import stat
import struct
import tempfile

import pytest
from repo_modules import load

pytestmark = pytest.mark.unit

DATABASES = {
    "appdb": "host=198.19.1.10 port=5432 dbname=app user=app pool_size=20",
    "unixdb": "dbname=app",  # no host: a Unix socket in unix_socket_dir
    "quoted": "host=db.example connect_query='SELECT ''x''' application_name=scratch",
    "*": "host=198.19.1.11",
}


@pytest.fixture
def pgb(monkeypatch):
    module = load("salt/_modules/pgbouncer.py")
    options = {"pgbouncer.user": "nobody", "pgbouncer.group": "nogroup"}
    module.__salt__ = {"config.get": lambda key, default=None: options.get(key, default)}
    module.__opts__ = {"test": True}
    return module


class Recorded:
    """A stand-in for subprocess.Popen that keeps what the scratch run was started with."""
    seen = []

    def __init__(self, argv, **kwargs):
        ini = argv[-1]
        scratch = os.path.dirname(ini)
        with open(ini, encoding="utf-8") as handle:
            text = handle.read()
        nowhere = os.path.join(scratch, "no-server")
        Recorded.seen.append({"argv": argv, "kwargs": kwargs, "ini": text, "scratch": scratch,
                              "nowhere": (os.listdir(nowhere), os.stat(nowhere))})
        with open(os.path.join(scratch, "log"), "w", encoding="utf-8") as handle:
            handle.write("2026-01-01 00:00:00 UTC [1] LOG process up: PgBouncer (stand-in)\n")

    def poll(self):
        return None

    def terminate(self):
        pass

    def communicate(self, timeout=None):
        return "", ""


def test_the_scratch_config_points_every_database_nowhere_and_inherits_no_environment(
        pgb, monkeypatch):
    monkeypatch.setattr(pgb, "_tool", lambda name: f"/usr/sbin/{name}")
    monkeypatch.setattr(pgb, "_account", lambda: (os.getuid(), os.getgid()))
    monkeypatch.setattr(pgb.subprocess, "Popen", Recorded)
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("LISTEN_FDS", "1")
    Recorded.seen = []
    sections = {"databases": dict(DATABASES),
                "pgbouncer": {"listen_addr": "198.18.2.11", "listen_port": "6432",
                              "unix_socket_dir": "/var/run/pgbouncer", "user": "pgbouncer",
                              "pidfile": "/var/run/pgbouncer/pgbouncer.pid",
                              "logfile": "/var/log/pgbouncer/pgbouncer.log", "syslog": "1",
                              "min_pool_size": "3", "auth_type": "hba"},
                "users": {"app": "pool_mode=session"}}
    assert pgb.check_config(sections) == []
    [run] = Recorded.seen
    scratch, ini = run["scratch"], pgb._parse_ini(run["ini"])
    nowhere = os.path.join(scratch, "no-server")
    # Every entry's host is the empty directory; everything else stays as written.
    assert {name: pgb._parse_connstr(value) for name, value in ini["databases"].items()} == {
        name: {**pgb._parse_connstr(value), "host": nowhere}
        for name, value in DATABASES.items()}
    listed, mode = run["nowhere"]
    assert listed == [] and stat.S_IMODE(mode.st_mode) == 0o700 and mode.st_uid == 0
    settings = ini["pgbouncer"]
    assert (settings["listen_addr"], settings["unix_socket_dir"], settings["pidfile"],
            settings["logfile"], settings["syslog"]) == ("", scratch, "", f"{scratch}/log", "0")
    assert "user" not in settings and settings["min_pool_size"] == "3"
    assert ini["users"] == {"app": "pool_mode=session"}
    assert run["kwargs"]["env"] == pgb.SCRATCH_ENV == {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                                       "LANG": "C.UTF-8"}
    assert run["kwargs"]["start_new_session"] is True and run["kwargs"]["cwd"] == scratch
    # The caller's sections are not rewritten.
    assert sections["databases"] == DATABASES


def test_an_unparsable_database_entry_is_refused_before_anything_starts(pgb, monkeypatch):
    monkeypatch.setattr(pgb, "_tool", lambda name: f"/usr/sbin/{name}")
    monkeypatch.setattr(pgb, "_account", lambda: (os.getuid(), os.getgid()))
    monkeypatch.setattr(pgb.subprocess, "Popen", Recorded)
    Recorded.seen = []
    with pytest.raises(pgb.SaltInvocationError, match="databases:bad: cannot parse"):
        pgb.check_config({"databases": {"bad": "host='unterminated"}, "pgbouncer": {}})
    assert Recorded.seen == []


def startup_packet(user, database):
    body = struct.pack("!I", 196608) + b"".join(
        key.encode() + b"\0" + value.encode() + b"\0"
        for key, value in (("user", user), ("database", database))) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


def machine_pgbouncer():
    if os.geteuid() != 0 or not shutil.which("pgbouncer", path="/usr/sbin:/usr/bin"):
        pytest.skip("needs root and PgBouncer (Debian: apt-get install pgbouncer)")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("needs the account nobody")


def test_the_scratch_pgbouncer_reaches_no_server_and_notifies_nobody(pgb, monkeypatch):
    machine_pgbouncer()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    # A notify socket of our own (the scratch runs as nobody: reachable by it).
    public = tempfile.mkdtemp(prefix="vgw-notify-")
    os.chmod(public, 0o755)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(os.path.join(public, "notify"))
    os.chmod(os.path.join(public, "notify"), 0o777)
    monkeypatch.setenv("NOTIFY_SOCKET", os.path.join(public, "notify"))
    heard = {}
    read = pgb._read

    def read_and_log_in(path):
        """While the scratch instance runs: a client logs in to it (as PgBouncer's own
        socket admits), which makes it open a server connection for the pool."""
        text = read(path)
        if "process up" in text and "client" not in heard:
            client = socket.socket(socket.AF_UNIX)
            client.settimeout(5)
            client.connect(os.path.join(os.path.dirname(path), ".s.PGSQL.6432"))
            client.sendall(startup_packet("app", "appdb"))
            heard["client"] = client
            heard["server"] = bool(select.select([server], [], [], 2)[0])
        return text

    monkeypatch.setattr(pgb, "_read", read_and_log_in)
    try:
        sections = {"databases": {"appdb": f"host=127.0.0.1 port={port} dbname=app user=app",
                                  "*": f"host=127.0.0.1 port={port}"},
                    "pgbouncer": {"listen_port": "6432", "auth_type": "any",
                                  "min_pool_size": "1", "default_pool_size": "2"}}
        pgb.check_config(sections)
        notify.setblocking(False)
        try:
            notified = notify.recv(4096)
        except BlockingIOError:
            notified = None
    finally:
        heard.get("client") and heard["client"].close()
        server.close()
        notify.close()
        shutil.rmtree(public)
    assert "client" in heard, "the scratch PgBouncer never came up"
    assert heard["server"] is False, "the scratch PgBouncer connected to the server"
    assert notified is None, f"the scratch PgBouncer notified $NOTIFY_SOCKET: {notified!r}"


def test_the_scratch_pgbouncer_still_judges_the_candidate(pgb):
    machine_pgbouncer()
    good = {"databases": {"appdb": "host=198.19.1.10 port=5432 dbname=app"},
            "pgbouncer": {"listen_port": "6432", "auth_type": "trust"}}
    assert pgb.check_config(good) == []
    bad_entry = {**good, "databases": {"appdb": "host=198.19.1.10 bogus_key=1"}}
    assert any("bogus_key" in line for line in pgb.check_config(bad_entry))
    bad_hba = pgb.check_config({**good, "pgbouncer": {**good["pgbouncer"], "auth_type": "hba"}},
                               hba="host all all 198.18.2.0/33 md5\n")
    assert any("hba line 1" in line for line in bad_hba), bad_hba
