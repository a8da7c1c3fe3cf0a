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

The gateway computes verifiers with its Python's Unicode tables, PostgreSQL
with its own (Python 3.11 and PostgreSQL 15 on Debian 12: Unicode 14.0; Python
3.13 and PostgreSQL 17 on Debian 13: Unicode 15.1): this machine checks the
Debian 12 pair.
"""
import contextlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings, strategies as st
from repo_modules import load

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
BIDI = st.sampled_from(["\u05d0", "\u05ea", "\u0627", "\u0660", "a", "1", " ", "\u00ad",
                        "\u00a0", "\ufb01", "\ufe8d", "\u0301", "\u200b"])
PASSWORDS = st.one_of(st.lists(ALPHABET, min_size=1, max_size=8),
                      st.lists(BIDI, min_size=1, max_size=5)).map("".join).filter(
    lambda p: not PREHASHED.fullmatch(p))


@settings(max_examples=100, deadline=None)
@given(PASSWORDS)
@example("plain ascii pencil")
@example("I\u00adX")           # mapped to nothing
@example("\u2168")              # NFKC: IX
@example("\ufb01x")             # NFKC: fix
@example("a\u3000b")            # non-ASCII space
@example("\u05d0\u00ada\u05d1")  # RandALCat with LCat: prohibited, used as is
@example("\u05d0\u00ad1")        # RandALCat not last: prohibited, used as is
@example("\u05d0\u00ad1\u05d1")  # RandALCat first and last: prepared
@example("\U0001f600")          # unassigned in Unicode 3.2
@example("\u00ad")              # empty after mapping
@example("\u0340")              # found: prohibited before NFKC, allowed after
@example("a\u200bb")            # found: in B.1 and C.1.2, PostgreSQL maps it to a space
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
