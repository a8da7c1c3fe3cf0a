"""SASLprep and the SCRAM-SHA-256 verifier against PostgreSQL itself (issue 14).

A throwaway cluster of this machine's PostgreSQL (postgres user, a temp
directory, Unix socket there only: ``listen_addresses = ''``) stores each
generated password (non-ASCII ones especially: mapped to nothing, non-ASCII
spaces, compatibility forms, combining sequences, prohibited and unassigned
code points, bidi mixes, plain ASCII) with ``ALTER ROLE ... PASSWORD`` under
``password_encryption = 'scram-sha-256'``; our ``_scram_verifier`` with the
salt and iterations of ``pg_authid.rolpassword`` must give the same verifier.
The password goes to the server as a bind parameter of a function that runs
the ALTER ROLE: never in argv, a statement text or a log.

The gateway computes verifiers with its Python's Unicode tables (NFKC; the
SASLprep tables are RFC 3454's, Unicode 3.2), PostgreSQL with its own (15 on
Debian 12: Unicode 14.0; 17 on Debian 13: Unicode 15.1). This machine checks its
PostgreSQL 15 here; tests/firewalld/test_daemon_parsers_lab.py (lab, debian13) sends
``batch()`` to a scratch cluster of Debian 13's PostgreSQL 17 in a lab host, against
``_scram_verifier`` in the lab's Python (the venv's, which the lab's minions run).
"""
import contextlib
import json
import os
import pwd
import random
import re
import shutil
import subprocess
import tempfile
import unicodedata
from pathlib import Path

import pytest
from hypothesis import example, given, settings, strategies as st
from repo_modules import REPO, load

pytestmark = pytest.mark.unit

pgb = load("salt/_modules/pgbouncer.py")

INSTALL = ("install PostgreSQL's server binaries (Debian: apt-get install postgresql-15, "
           "or the postgresql package of the release) and run the tests as root")


def _bindir():
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return found[-1].parent if found else None


def _run_as_postgres(*argv):
    subprocess.run(["runuser", "-u", "postgres", "--", *map(str, argv)], check=True,
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def server():
    """A connection (psycopg, Unix socket) to a scratch cluster, torn down after the module."""
    with scratch_cluster() as conn:
        yield conn


@contextlib.contextmanager
def scratch_cluster():
    bindir = _bindir()
    if bindir is None:
        pytest.skip(f"no PostgreSQL server binaries under /usr/lib/postgresql: {INSTALL}")
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg is missing: pip install 'psycopg[binary]' (setup.cfg)")
    try:
        postgres = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip(f"no postgres user: {INSTALL}")
    if os.geteuid() != 0:
        pytest.skip(f"the scratch cluster runs as the postgres user (runuser): {INSTALL}")
    top = Path(tempfile.mkdtemp(prefix="vgw-saslprep-"))
    data = top / "data"
    try:
        os.chown(top, postgres.pw_uid, postgres.pw_gid)
        top.chmod(0o700)
        _run_as_postgres(bindir / "initdb", "-D", data, "-U", "postgres", "-E", "UTF8",
                         "--locale=C", "--auth=trust", "--no-sync")
        with open(data / "postgresql.conf", "a") as conf:
            # the socket in our directory only, nothing on TCP
            conf.write(f"listen_addresses = ''\nunix_socket_directories = '{top}'\n"
                       "fsync = off\npassword_encryption = 'scram-sha-256'\n")
        _run_as_postgres(bindir / "pg_ctl", "-D", data, "-l", top / "log", "-w", "-t", "60",
                         "start")
        try:
            with psycopg.connect(host=str(top), user="postgres", dbname="postgres",
                                 autocommit=True) as conn:
                assert conn.execute("SHOW listen_addresses").fetchone() == ("",)
                conn.execute("SET password_encryption = 'scram-sha-256'")
                conn.execute("CREATE ROLE saslprep_probe LOGIN")
                conn.execute("""
                    CREATE FUNCTION set_password(p text) RETURNS text LANGUAGE plpgsql AS $$
                    BEGIN
                        EXECUTE format('ALTER ROLE saslprep_probe PASSWORD %L', p);
                        RETURN (SELECT rolpassword FROM pg_authid
                                WHERE rolname = 'saslprep_probe');
                    END $$""")
                yield conn
        finally:
            _run_as_postgres(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(top, ignore_errors=True)


VERIFIER = re.compile(r"SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+")
# what PostgreSQL stores as given instead of hashing it (an md5 hash or a verifier)
PREHASHED = re.compile(r"md5[0-9a-f]{32}|SCRAM-SHA-256\$.*", re.S)


def postgres_verifier(conn, password):
    (stored,) = conn.execute("SELECT set_password(%s)", [password]).fetchone()
    return stored


def check(conn, password):
    stored = postgres_verifier(conn, password)
    match = VERIFIER.fullmatch(stored or "")
    assert match, "PostgreSQL stored no SCRAM verifier"
    # ours with PostgreSQL's salt and iterations; the password itself stays out of messages
    assert pgb._scram_verifier(password, match.group(2), int(match.group(1))) == stored, \
        f"verifier differs for code points {[hex(ord(c)) for c in password]}"


# -- the passwords ---------------------------------------------------------------------------
INTERESTING = [
    # RFC 3454 B.1, mapped to nothing
    "\u00ad", "\u034f", "\u1806", "\u180b", "\u200b", "\u200c", "\u200d", "\u2060", "\ufe00",
    "\ufe0f", "\ufeff",
    # C.1.2 non-ASCII spaces (mapped to a space)
    "\u00a0", "\u1680", "\u2000", "\u2007", "\u200a", "\u202f", "\u205f", "\u3000",
    # compatibility forms (NFKC)
    "\ufb01", "\u2168", "\uff21", "\u00bd", "\u2460", "\u3371", "\u1e9b", "\u00b5", "\u2126",
    "\u01c4", "\u0149", "\U0001f100", "\U0002fa1d",
    # combining sequences (compose or reorder)
    "e\u0301", "a\u0308", "\u0301", "\u0323\u0307", "\u1100\u1161", "\u1100\u1161\u11a8",
    "\u0958", "\u2add\u0338",
    # prohibited: C.2 controls, C.3 private use, C.4 non-characters, C.5-C.9
    "\x07", "\x7f", "\x85", "\u009f", "\u06dd", "\u070f", "\u180e", "\u2028", "\u2029",
    "\ue000", "\U000f0000", "\ufdd0", "\uffff", "\U0010fffe", "\ufff9", "\ufffd", "\u2ff0",
    "\u0340", "\u200e", "\u200f", "\u202a", "\u202e", "\u206a", "\U000e0001", "\U000e0041",
    # unassigned in Unicode 3.2 (RFC 3454 A.1); some assigned since, some with NFKC forms
    "\u0221", "\u0870", "\u2fff", "\U0001f600", "\U0001e030", "\U0001d7ff", "\u1fff",
    "\U000e0080", "\u09fe",
    # bidi: RandALCat (Hebrew, Arabic) and LCat (Latin) letters, numbers, neutrals
    "\u05d0", "\u05d1", "\u0627", "\u0628", "\u0660", "a", "Z", "1", " ", "-",
]
ALPHABET = st.one_of(st.sampled_from(INTERESTING),
                     st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                     st.characters(min_codepoint=0x20, max_codepoint=0x7e))
# right-to-left letters with what mapping or NFKC changes: a bidi refusal then
# shows (the password is used as it is, not prepared)
BIDI_CHARS = ["\u05d0", "\u05ea", "\u0627", "\u0660", "a", "1", " ", "\u00ad", "\u00a0",
              "\ufb01", "\ufe8d", "\u0301", "\u200b"]
BIDI = st.sampled_from(BIDI_CHARS)
PASSWORDS = st.one_of(st.lists(ALPHABET, min_size=1, max_size=8),
                      st.lists(BIDI, min_size=1, max_size=5)).map("".join).filter(
    lambda p: not PREHASHED.fullmatch(p))


EXAMPLES = [
    "plain ascii pencil",
    "I\u00adX",            # mapped to nothing
    "\u2168",               # NFKC: IX
    "\ufb01x",              # NFKC: fix
    "a\u3000b",             # non-ASCII space
    "\u05d0\u00ada\u05d1",  # RandALCat with LCat: prohibited, used as is
    "\u05d0\u00ad1",        # RandALCat not last: prohibited, used as is
    "\u05d0\u00ad1\u05d1",  # RandALCat first and last: prepared
    "\U0001f600",           # unassigned in Unicode 3.2
    "\u00ad",               # empty after mapping
    "\u0340",               # found: prohibited before NFKC, allowed after
    "a\u200bb",             # found: in B.1 and C.1.2, PostgreSQL maps it to a space
]


def with_examples(test):
    for password in reversed(EXAMPLES):
        test = example(password)(test)
    return test


@settings(max_examples=100, deadline=None)
@given(PASSWORDS)
@with_examples
def test_our_verifier_equals_postgresql_s(server, password):
    check(server, password)


# Found by the property above; PostgreSQL 15's verifiers recorded here, so that
# these run without a server: (password, what SASLprep makes of it, verifier).
RECORDED = [
    # U+0340 is prohibited (C.8) but NFKC makes it U+0300: PostgreSQL checks the
    # code points before NFKC, so the password is used as it is
    ("\u0340", "\u0340",
     "SCRAM-SHA-256$4096:0YVnUPg+pfycAFWyLS/MKg==$sWqxFdWgRs0BLJvPxBGyRAZSMnYsWhq03mAvTdJ7t+g="
     ":Xcz1m5zTWFRtrFSNvz+tpJ7f4C+0rihShgH/u0wV7wg="),
    ("x\u0341\u0301", "x\u0341\u0301",
     "SCRAM-SHA-256$4096:g1neofH9MWeLQSsk8jJoEg==$RHnp4yGJ+moAAIRHLR4Vf9c5Iou6MowOO4OsZDUkxkU="
     ":UiYNEpmHoUyNtUM4wXXN7YQ/QfGsrC968smmijbgq/0="),
    # U+200B is in B.1 (mapped to nothing) and C.1.2 (mapped to a space):
    # PostgreSQL maps it to a space
    ("a\u200bb", "a b",
     "SCRAM-SHA-256$4096:l+efZd4IhKutE/LboHtTQQ==$EpNTrlgp2As/PtbAGiVIM3jF8/0Xenw8LFH2/gCQK1g="
     ":X+EzbLZwopnIwO4Ud/5mmwXxctfEvsPhZL3hTh8XdK8="),
    ("\u200b", " ",
     "SCRAM-SHA-256$4096:0YoyQBSXrcupjE1/nlNwsw==$VNz/XM/EbUDBTOpNiTzOzdX0LjAkqUHTF0N+too350A="
     ":Vv3/MZikDj+Dnskq82XLLZzu6Q+N2WyeSkOYK/VSC2Q="),
]


@pytest.mark.parametrize("password, prepared, stored", RECORDED,
                         ids=[ascii(p)[1:-1] for p, _, _ in RECORDED])
def test_verifiers_postgresql_made_for_what_the_property_found(password, prepared, stored):
    iterations, salt = VERIFIER.fullmatch(stored).groups()
    assert pgb._saslprep(password) == prepared
    assert pgb._scram_verifier(password, salt, int(iterations)) == stored


# -- another host's PostgreSQL: Debian 13's 17 (tests/firewalld/test_daemon_parsers_lab.py) ---
# The same scratch cluster in a lab host of the provisioned image, run by the lab's venv
# Python (the gateway's minion runs it too, so ours is computed in this process); the
# passwords go in on stdin as JSON, PostgreSQL's verifiers come back on stdout.
IN_HOST = """\
import json, sys
sys.path[:0] = [sys.argv[1] + "/tests", sys.argv[1] + "/tests/pgbouncer"]
from repo_modules import REPO, load
saslprep = load("tests/pgbouncer/test_saslprep_postgres.py")
passwords = json.load(sys.stdin)
with saslprep.scratch_cluster() as conn:
    (version,) = conn.execute("SHOW server_version").fetchone()
    stored = [saslprep.postgres_verifier(conn, password) for password in passwords]
print(json.dumps({"version": version, "stored": stored}))
"""


def batch(count=150, seed=14):
    """Passwords for one run on another host, the same every time: the examples, what
    the property found, each interesting code point alone, then ``count`` drawn as
    PASSWORDS draws them (a random generator seeded, not Hypothesis: one call does all)."""
    rng = random.Random(seed)

    def anything():
        while True:
            char = chr(rng.randrange(1, 0x110000))
            if unicodedata.category(char) != "Cs":
                return char

    def drawn():
        if rng.random() < 0.25:
            return "".join(rng.choice(BIDI_CHARS) for _ in range(rng.randint(1, 5)))
        return "".join(rng.choice([lambda: rng.choice(INTERESTING), anything,
                                   lambda: chr(rng.randrange(0x20, 0x7f))])()
                       for _ in range(rng.randint(1, 8)))

    passwords = EXAMPLES + [p for p, _, _ in RECORDED] + INTERESTING + [
        drawn() for _ in range(count)]
    return list(dict.fromkeys(p for p in passwords if not PREHASHED.fullmatch(p)))


def postgres_verifiers(run, python, passwords):
    """(server_version, {password: rolpassword}) from the scratch cluster that ``run``
    (argv, stdin -> stdout) starts where it runs, with ``python`` (a venv with psycopg)."""
    out = json.loads(run([str(python), "-c", IN_HOST, str(REPO)],
                         json.dumps(passwords)).strip().splitlines()[-1])
    return out["version"], dict(zip(passwords, out["stored"]))


def disagreements(stored):
    """The passwords (as code points) whose verifier from ``_scram_verifier`` with
    PostgreSQL's salt and iterations is not PostgreSQL's."""
    wrong = []
    for password, verifier in stored.items():
        match = VERIFIER.fullmatch(verifier or "")
        if not match or pgb._scram_verifier(password, match.group(2),
                                            int(match.group(1))) != verifier:
            wrong.append([hex(ord(c)) for c in password])
    return wrong


def test_the_batch_for_another_host_is_fixed_and_varied():
    """What the lab sends Debian 13's PostgreSQL: the same every run, mostly non-ASCII,
    with passwords SASLprep changes and ones it leaves (prohibited, bidi) as they are."""
    passwords = batch()
    assert len(passwords) >= 220 and batch() == passwords
    assert sum(not p.isascii() for p in passwords) >= 200
    prepared = [p for p in passwords if pgb._saslprep(p) != p]
    assert len(prepared) >= 40, prepared
    kept = [p for p in passwords if not p.isascii() and pgb._saslprep(p) == p]
    assert len(kept) >= 120, kept
