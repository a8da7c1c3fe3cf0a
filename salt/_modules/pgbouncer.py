"""
PgBouncer: the admin console as data, SCRAM verifiers, ``pgbouncer.ini`` and the auth file.

The admin console is reached over PgBouncer's Unix socket as the ``pgbouncer``
user from a process running under PgBouncer's own uid, which PgBouncer admits
without a password: Salt holds no console secret. Queries go through ``psql
--csv`` (simple query protocol, which the console requires).

Candidate configs are checked twice before they replace the old ones: by the
schema below (errors name the pillar key) and by starting a scratch PgBouncer
on the candidate with a private Unix socket only, whose ERROR/WARNING lines
(unknown settings, HBA lines it would skip) reject it.

The module loads without PgBouncer or psql installed, so that ``test=True``
on a fresh host can predict the pooler's changes: its pure helpers work
anywhere, and what needs the binaries fails when called (``running`` is then
False), naming the package to install.

The [pgbouncer] settings are checked against one table per PgBouncer version
(1.18, 1.24): the installed binary's version, else the version the host's
package manager would install (so a dry run on a fresh host checks against the
PgBouncer it is going to get).

Minion config (or pillar) keys: ``pgbouncer.config`` (the ini path, default
``/etc/pgbouncer/pgbouncer.ini``), ``pgbouncer.user`` / ``pgbouncer.group``
(the service's account, default ``pgbouncer``), ``pgbouncer.service``,
``pgbouncer.package``, ``pgbouncer.owned_file`` (the ownership record, default
``/var/lib/vpn-gateway/pgbouncer-owned.json``).
"""
import base64
import csv
import grp
import hashlib
import hmac
import io
import ipaddress
import json
import math
import os
import pwd
import re
import secrets
import shutil
import socket
import stringprep
import subprocess
import sys
import tempfile
import time
import unicodedata

import salt.utils.atomicfile
import salt.utils.files
import salt.version
from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = "pgbouncer"
# pillar.get masks secrets from Salt 3008 on and takes ``unmask`` (older: TypeError).
SALT_MASKS_PILLAR = salt.version.__saltstack_version__.info >= (3008,)

DEFAULTS = {
    "config": "/etc/pgbouncer/pgbouncer.ini",
    "user": "pgbouncer",
    "group": "pgbouncer",
    "service": "pgbouncer",
    "package": "pgbouncer",
    # The users and pools this pack created (names only, no secrets): ``prune_owned`` removes
    # those no longer declared, and never an entry someone else made.
    "owned_file": "/var/lib/vpn-gateway/pgbouncer-owned.json",
}
OWNED_KINDS = ("databases", "users")
# Where the binaries are looked up (the minion's own PATH may lack the sbin directories).
TOOL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The first line of every pgbouncer.ini this module writes.
HEADER = "; Managed by Salt (pgbouncer states): edits here are replaced."

INT, BOOL, TIME, TEXT = "an integer", "a boolean", "a number of seconds", "a string"
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
POOL_MODES = ("session", "transaction", "statement")

# The [pgbouncer] settings of PgBouncer 1.18 (SHOW CONFIG), by type; a tuple is an enum.
SETTINGS_1_18 = {
    **dict.fromkeys((
        "listen_port", "listen_backlog", "max_client_conn", "default_pool_size", "min_pool_size",
        "reserve_pool_size", "max_db_connections", "max_user_connections", "pkt_buf",
        "max_packet_size", "sbuf_loopcnt", "tcp_socket_buffer", "tcp_keepcnt", "tcp_keepidle",
        "tcp_keepintvl", "tcp_user_timeout", "verbose", "stats_period"), INT),
    **dict.fromkeys((
        "application_name_add_host", "disable_pqexec", "log_connections", "log_disconnections",
        "log_pooler_errors", "log_stats", "server_fast_close", "server_reset_query_always",
        "server_round_robin", "so_reuseport", "syslog", "tcp_defer_accept", "tcp_keepalive"), BOOL),
    **dict.fromkeys((
        "reserve_pool_timeout", "server_idle_timeout", "server_lifetime", "server_connect_timeout",
        "server_login_retry", "server_check_delay", "query_timeout", "query_wait_timeout",
        "client_idle_timeout", "client_login_timeout", "idle_transaction_timeout",
        "suspend_timeout", "autodb_idle_timeout", "dns_max_ttl", "dns_nxdomain_ttl",
        "dns_zone_check_period"), TIME),
    **dict.fromkeys((
        "logfile", "pidfile", "listen_addr", "unix_socket_dir", "unix_socket_mode",
        "unix_socket_group", "user", "auth_file", "auth_hba_file", "auth_query", "auth_user",
        "admin_users", "stats_users", "server_reset_query", "server_check_query",
        "ignore_startup_parameters", "job_name", "resolv_conf", "syslog_ident",
        "syslog_facility", "client_tls_key_file", "client_tls_cert_file", "client_tls_ca_file",
        "client_tls_protocols", "client_tls_ciphers", "client_tls_ecdhcurve",
        "client_tls_dheparams", "server_tls_ca_file", "server_tls_key_file",
        "server_tls_cert_file", "server_tls_protocols", "server_tls_ciphers"), TEXT),
    "auth_type": ("any", "trust", "plain", "md5", "scram-sha-256", "cert", "hba", "pam"),
    "pool_mode": POOL_MODES,
    "client_tls_sslmode": SSLMODES,
    "server_tls_sslmode": SSLMODES,
}
# PgBouncer 1.24 (Debian 13, EL10): 1.18's settings plus these (SHOW CONFIG of 1.24.1).
SETTINGS_1_24 = {
    **SETTINGS_1_18,
    **dict.fromkeys((
        "max_prepared_statements", "max_db_client_connections", "max_user_client_connections",
        "peer_id"), INT),
    "cancel_wait_timeout": TIME,
    **dict.fromkeys(("auth_dbname", "auth_ident_file", "track_extra_parameters"), TEXT),
}
# One table per version; a version between two uses the older one's table, a newer one the
# newest table (the scratch PgBouncer run still catches what a table does not know).
SETTINGS_BY_VERSION = {(1, 18): SETTINGS_1_18, (1, 24): SETTINGS_1_24}
SETTINGS = SETTINGS_1_18  # the oldest table: what every supported version takes
# Settings PgBouncer reads only at start (SHOW CONFIG changeable=no); used when it is not running.
RESTART_SETTINGS = frozenset((
    "listen_addr", "listen_port", "unix_socket_dir", "unix_socket_mode", "unix_socket_group",
    "pidfile", "user", "listen_backlog", "pkt_buf", "so_reuseport", "disable_pqexec", "job_name",
    "resolv_conf", "track_extra_parameters"))
# PgBouncer's own defaults for the settings the cross-checks read.
SETTING_DEFAULTS = {"default_pool_size": 20, "max_db_connections": 0, "min_pool_size": 0,
                    "listen_port": 6432}

# A [databases] entry's keys, in the order they are written; SHOW DATABASES column per key.
DATABASE_KEYS = {
    "host": "host", "port": "port", "dbname": "database", "user": "force_user",
    "auth_user": None, "pool_size": "pool_size", "reserve_pool": "reserve_pool",
    "max_db_connections": "max_connections", "pool_mode": "pool_mode",
    "client_encoding": None, "datestyle": None, "timezone": None, "connect_query": None,
}
DATABASE_INTS = ("port", "pool_size", "reserve_pool", "max_db_connections")
# Names that are safe unquoted in pgbouncer.ini, the auth file and console commands.
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,62}")
HOST_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:-]{0,252}")
B64 = "[A-Za-z0-9+/=]+"
VERIFIER_RE = re.compile(rf"SCRAM-SHA-256\$(\d+):({B64})\$({B64}):({B64})")
SHOW_SUBJECTS = ("pools", "stats", "databases", "config", "servers", "clients", "users", "lists")
# Console columns that hold text even when they look like numbers.
TEXT_COLUMNS = frozenset((
    "name", "host", "database", "force_user", "pool_mode", "user", "type", "state", "addr",
    "local_addr", "connect_time", "request_time", "ptr", "link", "tls", "application_name",
    "key", "value", "default", "changeable", "list", "mode"))


def __virtual__():
    # Loads everywhere: a host without PgBouncer must still render the formula and predict
    # its changes (test=True); functions that need the binaries say what to install.
    return __virtualname__


def _tool(name):
    """The path of ``pgbouncer`` or ``psql``; CommandExecutionError naming the package."""
    path = shutil.which(name, path=TOOL_PATH)
    if path is None:
        package = {"psql": "a PostgreSQL client (Debian: postgresql-client; EL: postgresql), "
                           "psql reaches the admin console"}.get(name, "pgbouncer")
        raise CommandExecutionError(f"{name} is not installed; install {package} "
                                    "(vpn_gateway.pgbouncer does)")
    return path


def _parse_version(text):
    match = re.search(r"(?:^|[^\d.])(\d+)\.(\d+)", text or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def version():
    """PgBouncer's version as ``"1.24"``: the installed binary's (``pgbouncer --version``),
    else the one the package manager would install (``pkg.latest_version``, no refresh),
    else None.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.version
    """
    found = _version()
    return None if found is None else f"{found[0]}.{found[1]}"


def _version():
    binary = shutil.which("pgbouncer", path=TOOL_PATH)
    if binary:
        proc = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10,
                              check=False)
        found = _parse_version(proc.stdout)
        if found:
            return found
    salt_functions = globals().get("__salt__") or {}
    if "pkg.latest_version" in salt_functions:
        package = _option("package")
        for candidate in (salt_functions["pkg.version"](package),
                          salt_functions["pkg.latest_version"](package, refresh=False)):
            # Debian's "1.24.1-1+deb13u2"; an epoch ("2:1.24...") comes first.
            found = _parse_version(str(candidate or "").split(":")[-1])
            if found:
                return found
    return None


def _settings_table(version=None):
    """{setting: type} for PgBouncer ``version`` (``"1.24"``, a tuple, or None: the host's,
    see ``version``; unknown: the newest table)."""
    if isinstance(version, str):
        version = _parse_version(version)
    elif version is None:
        version = _version()
    if version is None:
        return max(SETTINGS_BY_VERSION.items())
    known = [v for v in SETTINGS_BY_VERSION if v <= tuple(version)]
    chosen = max(known) if known else min(SETTINGS_BY_VERSION)
    return chosen, SETTINGS_BY_VERSION[chosen]


# -- pure helpers: ini, connect strings, auth file, validation, SCRAM -------------------------

def _invalid(key, problem, fix):
    """The error for bad input: names the key, the problem and the fix (never a secret)."""
    return SaltInvocationError(f"{key}: {problem}; {fix}")


# PgBouncer reads its files line by line ('\n') and, in a connect string, ends a
# bare value at ASCII white space (C isspace): not Python's wider splitlines/strip.
_BLANK = " \t\r\f\v"


def _parse_ini(text):
    """pgbouncer.ini text -> {section: {key: value}} (keys lower-case, in file order)."""
    sections, current = {}, None
    for line in text.split("\n"):
        line = line.strip(_BLANK)
        if not line or line[0] in ";#":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1].strip(_BLANK).lower(), {})
        elif "=" in line and current is not None:
            key, value = line.split("=", 1)
            current[key.strip(_BLANK).lower()] = value.strip(_BLANK)
    return sections


def _render_ini(sections):
    """{section: {key: value}} -> pgbouncer.ini text, keys sorted so output is stable."""
    lines = [HEADER]
    for section in ("databases", "users", "pgbouncer"):
        lines.append(f"\n[{section}]")
        lines += [f"{key} = {value}" for key, value in sorted(sections.get(section, {}).items())]
    return "\n".join(lines) + "\n"


_CONNSTR_PAIR = re.compile(r"""[ \t\n\r\f\v]*([A-Za-z_]+)[ \t\n\r\f\v]*=[ \t\n\r\f\v]*
    (?:'((?:[^']|'')*)'|"((?:[^"]|"")*)"|([^ \t\n\r\f\v'"][^ \t\n\r\f\v]*|))""",
                           re.VERBOSE)


def _parse_connstr(text):
    """A [databases] value (``host=a port=5432 connect_query='SELECT 1'``) -> dict.
    As PgBouncer reads it: a value is bare (to white space) or in single or double
    quotes, a quote doubled inside them."""
    entry, pos = {}, 0
    while pos < len(text.rstrip(_BLANK + "\n")):
        match = _CONNSTR_PAIR.match(text, pos)
        if not match or (match.end() < len(text) and text[match.end()] not in _BLANK + "\n"):
            raise ValueError(f"cannot parse connect string at {text[pos:]!r}")
        key, single, double, bare = match.groups()
        entry[key.lower()] = (single.replace("''", "'") if single is not None
                              else double.replace('""', '"') if double is not None else bare)
        pos = match.end()
    return entry


def _format_connstr(entry, keys=DATABASE_KEYS):
    """dict (DATABASE_KEYS) -> a [databases] value, in a fixed key order (``keys``); a value
    that is empty or holds white space or a quote goes in single quotes (doubled)."""
    parts = []
    for key in keys:
        if key in entry:
            value = str(entry[key])
            bare = value and not re.search(r"[ \t\n\r\f\v'\"]", value)
            quoted = value.replace("'", "''")
            parts.append(f"{key}={value}" if bare else f"{key}='{quoted}'")
    return " ".join(parts)


def _parse_auth_file(text):
    """Auth file text (``"user" "secret"`` lines) -> {user: secret}."""
    users = {}
    for line in text.split("\n"):
        match = re.match(r'[ \t\r]*"((?:[^"]|"")*)"[ \t\r]+"((?:[^"]|"")*)"', line)
        if match:
            users[match.group(1).replace('""', '"')] = match.group(2).replace('""', '"')
    return users


def render_auth_file(users):
    """{user: secret} -> auth file text, sorted by user.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.render_auth_file '{"app": "SCRAM-SHA-256$4096:..."}'
    """
    for name, secret in users.items():
        _check_user(name, secret, "users")
    return "".join(f'"{name}" "{secret}"\n' for name, secret in sorted(users.items()))


def _check_name(value, key, what="name"):
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise _invalid(key, f"{what} {value!r} is not safe in pgbouncer.ini and the auth file",
                       "use 1-63 letters, digits, '_', '.' or '-', starting with a letter or '_'")
    return value


def _password(password_pillar=None, password_file=None, key="password"):
    """The plaintext from a pillar key, a file or stdin: never an argument, so it stays out of
    ``ps``, the job cache and logs. Errors name ``key``, never the value or the pillar key
    given (a password passed there by mistake would otherwise be echoed)."""
    if (password_pillar is None) == (password_file is None):
        raise _invalid(key, "give exactly one of password_pillar (a pillar key) or "
                       "password_file (a 0600 file, or '-' for stdin)",
                       "plaintext passwords are not accepted as arguments")
    if password_file is not None:
        if password_file == "-":
            text = sys.stdin.readline()
        else:
            try:
                mode = os.stat(password_file).st_mode
            except OSError as exc:
                raise _invalid(key, f"password_file cannot be read ({exc.strerror})",
                               "give a readable file")
            if mode & 0o077:
                raise _invalid(key, "password_file is readable or writable by group or others",
                               "chmod 0600 it")
            with open(password_file, encoding="utf-8") as handle:
                text = handle.readline()
        secret = text[:-1] if text.endswith("\n") else text
        return secret[:-1] if secret.endswith("\r") else secret
    secret = _pillar_secret(password_pillar)
    if secret is None:
        raise _invalid(key, "the pillar key given as password_pillar is not set",
                       "set the password there")
    return secret


def _pillar_secret(key):
    # Salt 3008 masks pillar.get's answer ("**********") unless asked not to; older
    # releases neither mask it nor take the argument (TypeError).
    if SALT_MASKS_PILLAR:
        return __salt__["pillar.get"](key, None, unmask=True)
    return __salt__["pillar.get"](key, None)


def check_user(name, password_pillar=None, key="users", password_file=None):
    """Raise SaltInvocationError (naming ``key:name``, never the secret) unless the user name
    and its password (from the pillar key ``password_pillar``, or ``password_file``: a 0600
    file, ``-`` for stdin with salt-call) are fit for the auth file.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.check_user app vpn_gateway:pooler:users:app:password
    """
    _check_user(name, _password(password_pillar, password_file, f"{key}:{name}:password"), key)
    return True


def _check_user(name, secret, key="users"):
    _check_name(name, f"{key}:{name}", "user name")
    if not isinstance(secret, str) or not secret:
        raise _invalid(f"{key}:{name}:password", "is empty or not a string",
                       "give the password as a non-empty string")
    if any(c in secret for c in "\"'\n\r\0\\"):
        raise _invalid(f"{key}:{name}:password",
                       "contains a quote, backslash, newline or NUL, which the auth file "
                       "cannot hold",
                       "choose a password without them")
    if secret.startswith("md5"):
        raise _invalid(f"{key}:{name}:password", "looks like an md5 hash, which fails against a "
                       "SCRAM server", "give the plaintext or a SCRAM-SHA-256 verifier")
    return secret


def _integer(value, key, minimum=0, maximum=2**31 - 1):
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _invalid(key, f"{value!r} is not an integer", f"give an integer {minimum}..{maximum}")
    try:
        number = int(value)
    except ValueError:
        raise _invalid(key, f"{value!r} is not an integer",
                       f"give an integer {minimum}..{maximum}") from None
    if not minimum <= number <= maximum:
        raise _invalid(key, f"{number} is out of range", f"give an integer {minimum}..{maximum}")
    return str(number)


def _text(value, key):
    if not isinstance(value, str) or any(c in value for c in "\n\r\0") or value != value.strip():
        raise _invalid(key, f"{value!r} is not a one-line string",
                       "give a string without newlines or surrounding spaces")
    return value


def render_setting(key, value, where="settings", version=None):
    """One [pgbouncer] setting -> its text in the ini; SaltInvocationError names ``where:key``.

    version
        PgBouncer's version whose settings apply (``"1.24"``); default: the host's.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.render_setting server_lifetime 1800
    """
    return _render_setting(key, value, where, _settings_table(version))


def _render_setting(key, value, where, table):
    name = f"{where}:{key}"
    (major, minor), known = table
    kind = known.get(key)
    if kind is None:
        raise _invalid(name, f"is not a PgBouncer {major}.{minor} setting",
                       "remove it or fix its spelling (SHOW CONFIG lists the settings)")
    if isinstance(kind, tuple):
        if value not in kind:
            raise _invalid(name, f"{value!r} is not one of {', '.join(kind)}", "pick one of those")
        return value
    if kind == INT:
        return _integer(value, name, *((1, 65535) if key == "listen_port" else ()))
    if kind == BOOL:  # "0"/"1" are how the ini holds them (re-validating a read file)
        if value not in (True, False, 0, 1, "0", "1"):
            raise _invalid(name, f"{value!r} is not a boolean", "give true or false")
        return "1" if value in (True, 1, "1") else "0"
    if kind == TIME:
        try:
            seconds = float(value) if not isinstance(value, bool) else -1
        except (TypeError, ValueError):
            seconds = -1
        if seconds < 0:
            raise _invalid(name, f"{value!r} is not a number of seconds", "give a number >= 0")
        return str(int(seconds)) if seconds.is_integer() else str(seconds)
    text = _text(value, name)
    if key == "listen_addr" and text not in ("", "*"):
        for address in text.split(","):
            try:
                ipaddress.ip_address(address.strip())
            except ValueError:
                raise _invalid(name, f"{address!r} is not an IP address",
                               "give '*' or a comma-separated list of IP addresses") from None
    return text


def render_settings(settings, where="settings", version=None):
    """Validate a [pgbouncer] section (a dict) -> {key: text}; cross-checks the pool sizes.

    version
        PgBouncer's version whose settings apply (``"1.24"``); default: the host's.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.render_settings '{"default_pool_size": 20, "max_db_connections": 50}'
    """
    if not isinstance(settings, dict):
        raise _invalid(where, "is not a mapping", "give settings as key: value pairs")
    table = _settings_table(version)
    rendered = {key: _render_setting(key, value, where, table) for key, value in settings.items()}

    def number(key):
        return int(rendered.get(key, SETTING_DEFAULTS[key]))

    if number("max_db_connections") and number("default_pool_size") > number("max_db_connections"):
        raise _invalid(f"{where}:default_pool_size",
                       f"{number('default_pool_size')} is above max_db_connections "
                       f"{number('max_db_connections')}",
                       "lower default_pool_size or raise max_db_connections")
    if number("min_pool_size") > number("default_pool_size"):
        raise _invalid(f"{where}:min_pool_size", "is above default_pool_size",
                       "lower min_pool_size")
    if rendered.get("auth_type") == "hba" and not rendered.get("auth_hba_file"):
        raise _invalid(f"{where}:auth_hba_file", "is not set but auth_type is hba",
                       "set auth_hba_file (the hba rules are written there)")
    return rendered


def render_database(name, entry, where="databases"):
    """Validate one [databases] entry -> {key: text} (DATABASE_KEYS).

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.render_database appdb '{"host": "198.19.1.10", "dbname": "app"}'
    """
    key = f"{where}:{name}"
    _check_name(name, key, "database name")
    if name == "pgbouncer":
        raise _invalid(key, "'pgbouncer' is the admin console", "choose another name")
    if not isinstance(entry, dict):
        raise _invalid(key, "is not a mapping", "give host, port, dbname, ... as key: value pairs")
    rendered = {}
    for field, value in entry.items():
        name_of = f"{key}:{field}"
        if field == "password":
            raise _invalid(name_of, "passwords do not belong in pgbouncer.ini",
                           "put the user in the auth file (pgbouncer.user_present)")
        if field not in DATABASE_KEYS:
            raise _invalid(name_of, "is not a [databases] parameter",
                           f"use one of {', '.join(DATABASE_KEYS)}")
        if field in DATABASE_INTS:
            rendered[field] = _integer(value, name_of, *((1, 65535) if field == "port" else ()))
        elif field == "pool_mode":
            rendered[field] = _render_setting("pool_mode", value, key,
                                              ((1, 18), {"pool_mode": POOL_MODES}))
        elif field in ("dbname", "user", "auth_user"):
            rendered[field] = _check_name(value, name_of)
        elif field == "host":
            if not isinstance(value, str) or not HOST_RE.fullmatch(value):
                raise _invalid(name_of, f"{value!r} is not a host name or IP address",
                               "give one host name or IP address")
            rendered[field] = value
        else:
            if "'" in str(value):
                raise _invalid(name_of, "contains a single quote, which the connect string "
                               "cannot hold", "remove the quote")
            rendered[field] = _text(value, name_of)
    if "host" not in rendered:
        raise _invalid(f"{key}:host", "is missing", "give the database server's address")
    return rendered


def check_pool_sizes(databases, settings, where="databases"):
    """Refuse a database whose pool_size is above max_db_connections (its own or the global
    one from ``settings``, the [pgbouncer] section).

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.check_pool_sizes '{"appdb": {"pool_size": 60}}' \\
            '{"max_db_connections": 50}'
    """
    default_limit = int(settings.get("max_db_connections", 0))
    for name, entry in databases.items():
        limit = int(entry.get("max_db_connections", default_limit))
        size = int(entry.get("pool_size", settings.get("default_pool_size", 20)))
        if limit and size > limit:
            raise _invalid(f"{where}:{name}:pool_size",
                           f"{size} is above max_db_connections {limit}",
                           "lower pool_size or raise max_db_connections")


def port_in_use(listen_addr, port):
    """The first address of ``listen_addr`` (PgBouncer's syntax) where ``port`` cannot be
    bound because something holds it; None when it is free.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.port_in_use 198.18.2.11 6432
    """
    for address in (a.strip() for a in listen_addr.split(",") if a.strip()):
        address = "0.0.0.0" if address == "*" else address
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as PgBouncer binds
            try:
                probe.bind((address, int(port)))
            except OSError as exc:
                if exc.errno == 98:  # EADDRINUSE; other errors are PgBouncer's to report
                    return address
    return None


def _saslprep(password):
    """RFC 4013 SASLprep as PostgreSQL applies it (pure ASCII and failures pass through).

    As PostgreSQL's pg_saslprep does: a code point in both tables (U+200B) maps
    to a space, not to nothing; the prohibited, unassigned and bidi checks look
    at the mapped code points, before NFKC (U+0340, prohibited, normalizes to
    U+0300, allowed: PostgreSQL uses such a password as it is).
    tests/pgbouncer/test_saslprep_postgres.py compares with PostgreSQL itself.
    """
    if password.isascii():
        return password
    mapped = "".join(" " if stringprep.in_table_c12(c) else c for c in password
                     if stringprep.in_table_c12(c) or not stringprep.in_table_b1(c))
    prohibited = (stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
                  stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6,
                  stringprep.in_table_c7, stringprep.in_table_c8, stringprep.in_table_c9,
                  stringprep.in_table_a1)
    if not mapped or any(check(c) for c in mapped for check in prohibited):
        return password
    if any(stringprep.in_table_d1(c) for c in mapped):
        if not (stringprep.in_table_d1(mapped[0]) and stringprep.in_table_d1(mapped[-1])) or any(
                stringprep.in_table_d2(c) for c in mapped):
            return password
    return unicodedata.normalize("NFKC", mapped)


def scram_verifier(password_pillar=None, salt=None, iterations=4096, password_file=None):
    """A SCRAM-SHA-256 verifier as PostgreSQL stores it in pg_authid.rolpassword, made from
    a password that never appears as an argument.

    password_pillar
        A pillar key holding the plaintext.
    password_file
        A file (mode 0600) whose first line is the plaintext, or ``-`` for stdin: with
        ``salt-call`` nothing of the password reaches argv, the job cache or a log.
    salt
        The salt as base64 text; a random 16-byte salt when not given.
    iterations
        PBKDF2 iterations (PostgreSQL's default 4096).

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.scram_verifier vpn_gateway:pooler:users:app:password
        read -rs PW && printf '%s\\n' "$PW" | salt-call --out=newline_values_only \\
            pgbouncer.scram_verifier password_file=- salt='c2FsdHNhbHRzYWx0c2FsdA=='
    """
    return _scram_verifier(_password(password_pillar, password_file), salt, iterations)


def _scram_verifier(password, salt=None, iterations=4096):
    """The verifier for a plaintext (internal: the plaintext is never a public argument)."""
    raw_salt = secrets.token_bytes(16) if salt is None else base64.b64decode(salt, validate=True)
    salted = hashlib.pbkdf2_hmac("sha256", _saslprep(password).encode(), raw_salt, int(iterations))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data):
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${int(iterations)}:{b64(raw_salt)}${b64(stored_key)}:{b64(server_key)}"


def _verifier_matches(verifier, password):
    """Whether a stored SCRAM verifier was made from ``password`` (its own salt and iterations)."""
    match = VERIFIER_RE.fullmatch(verifier or "")
    if not match:
        return False
    return hmac.compare_digest(_scram_verifier(password, match.group(2), int(match.group(1))),
                               verifier)


def _parse_console_csv(text):
    """``psql --csv`` output of one console command -> list of dicts, counters as ints."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return []
    header = rows[0]
    return [
        {col: (int(val) if col not in TEXT_COLUMNS and re.fullmatch(r"-?\d+", val) else val)
         for col, val in zip(header, row)}
        for row in rows[1:]
    ]


def same_setting(key, wanted, shown):
    """Whether SHOW CONFIG's value ``shown`` is the rendered setting ``wanted``.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.same_setting unix_socket_mode 0777 511
    """
    if key == "unix_socket_mode":  # written in octal, shown in decimal
        return int(wanted, 8) == int(shown)
    if SETTINGS_1_24.get(key) == TIME:
        return float(wanted) == float(shown)
    return wanted == shown


# -- host access ------------------------------------------------------------------------------

def _option(name):
    return __salt__["config.get"](f"pgbouncer.{name}", DEFAULTS[name])


def _account():
    """(uid, gid) of the service's account; CommandExecutionError when it does not exist."""
    try:
        return pwd.getpwnam(_option("user")).pw_uid, grp.getgrnam(_option("group")).gr_gid
    except KeyError:
        raise CommandExecutionError(
            f"the PgBouncer account {_option('user')}:{_option('group')} does not exist; "
            "apply vpn_gateway.pgbouncer (it creates it) or set pgbouncer.user/pgbouncer.group"
        ) from None


def _account_exists():
    try:
        _account()
    except CommandExecutionError:
        return False
    return True


def _run_as_service_user(argv, timeout, **kwargs):
    uid, gid = _account()
    # libpq's own connect bound past ours: a PgBouncer slow to accept is our timeout, never
    # psql's "timeout expired", which would read as "not running" (a missing socket is that)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
           "PGCONNECT_TIMEOUT": str(math.ceil(timeout) + 10)}
    return subprocess.run(argv, user=uid, group=gid, extra_groups=[], env=env, cwd="/",
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def config_path():
    """The pgbouncer.ini this module manages (minion option ``pgbouncer.config``).

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.config_path
    """
    return _option("config")


def read_config():
    """The managed pgbouncer.ini as {section: {key: value}}, [databases] values as dicts.

    Returns empty sections when the file does not exist yet.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.read_config
    """
    try:
        with open(config_path(), encoding="utf-8") as handle:
            sections = _parse_ini(handle.read())
    except FileNotFoundError:
        sections = {}
    sections = {name: sections.get(name, {}) for name in ("databases", "users", "pgbouncer")}
    sections["databases"] = {name: _parse_connstr(value)
                             for name, value in sections["databases"].items()}
    return sections


def _console_address():
    settings = read_config()["pgbouncer"]
    return settings.get("unix_socket_dir", "/tmp"), settings.get("listen_port", "6432")


CONSOLE_TIMEOUT_KEY = "vpn_gateway:pooler:console_timeout"


class _ConsoleTimeout(CommandExecutionError):
    """The console did not answer in time: PgBouncer may well run (a slow or busy host)."""


def console(command, timeout=None):
    """Run one admin console command; rows as a list of dicts (empty for commands).

    command
        A console command such as ``SHOW POOLS`` or ``RELOAD``.
    timeout
        Seconds for the answer; by default ``vpn_gateway:pooler:console_timeout``
        (``config.get``: minion config or pillar), else 30.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.console 'SHOW LISTS'
    """
    socket_dir, port = _console_address()
    argv = [_tool("psql"), "-X", "-q", "--csv", "-v", "ON_ERROR_STOP=1", "-h", socket_dir,
            "-p", port, "-U", "pgbouncer", "-d", "pgbouncer", "-c", command]
    hint = ""
    if timeout is None:
        timeout = __salt__["config.get"](CONSOLE_TIMEOUT_KEY, 30)
        hint = f"; raise {CONSOLE_TIMEOUT_KEY} on a slow or busy host"
    try:
        proc = _run_as_service_user(argv, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise _ConsoleTimeout(f"PgBouncer console: {command} timed out after {timeout} s{hint}")
    if proc.returncode:
        raise CommandExecutionError(f"PgBouncer console ({socket_dir}, port {port}): {command}: "
                                    f"{proc.stderr.strip()}")
    return _parse_console_csv(proc.stdout)


def show(subject):
    """``SHOW <subject>`` as a list of dicts.

    subject
        One of pools, stats, databases, config, servers, clients, users, lists.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.show pools
    """
    subject = str(subject).lower()
    if subject not in SHOW_SUBJECTS:
        raise SaltInvocationError(f"show: {subject!r} is not one of {', '.join(SHOW_SUBJECTS)}")
    return console(f"SHOW {subject.upper()}")


def _command(verb, database=None, timeout=None):
    if database is not None:
        _check_name(database, "database", "database name")
    console(f"{verb} {database}" if database else verb, timeout=timeout)
    return True


def reload():
    """RELOAD: re-read pgbouncer.ini and the auth file; clients stay connected.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.reload
    """
    return _command("RELOAD")


def pause(database=None):
    """PAUSE (all or one database): wait for server connections to be released, then hold.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.pause appdb
    """
    return _command("PAUSE", database, timeout=120)


def resume(database=None):
    """RESUME after PAUSE or SUSPEND.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.resume appdb
    """
    return _command("RESUME", database)


def reconnect(database=None):
    """RECONNECT: close server connections once released, so new ones are made.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.reconnect appdb
    """
    return _command("RECONNECT", database)


def wait_close(database=None, timeout=60):
    """WAIT_CLOSE: wait until server connections marked to close (after RECONNECT or a
    changed target) are gone. CommandExecutionError after ``timeout`` seconds.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.wait_close appdb timeout=30
    """
    return _command("WAIT_CLOSE", database, timeout=timeout)


def database_mismatch(name, entry):
    """What SHOW DATABASES shows for pool ``name`` that differs from ``entry`` (rendered
    [databases] values); None when it runs as written.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.database_mismatch appdb '{"host": "198.19.1.10", "port": "5432"}'
    """
    rows = [row for row in show("databases") if row["name"] == name]
    if not rows:
        return f"no database {name}"
    wrong = [f"{column}={rows[0][column]!r}" for key, column in DATABASE_KEYS.items()
             if column and key in entry and str(rows[0][column]) != str(entry[key])]
    return ", ".join(wrong) or None


def running():
    """Whether the admin console answers; CommandExecutionError when it does not answer
    within ``vpn_gateway:pooler:console_timeout`` (PgBouncer may run: a slow or busy host).

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.running
    """
    if not _account_exists():
        return False  # a host the formula has not set up yet: nothing of ours runs
    if not shutil.which("psql", path=TOOL_PATH):
        if service_instance()["ours"]:
            _tool("psql")  # it runs, but cannot be asked: say what to install
        return False
    try:
        console("SHOW VERSION")
    except _ConsoleTimeout:
        raise  # it may run: "not running" would make a state write without a RELOAD
    except CommandExecutionError:
        return False
    return True


def status(maxwait_limit=5):
    """Health summary: reachable, per pool waiting clients and ``maxwait``, server connections
    in use against the limits, and ``problems`` (empty when healthy).

    maxwait_limit
        Seconds a client may wait for a server connection before it counts as a problem.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.status
    """
    try:
        pools, databases = show("pools"), show("databases")
        config = {row["key"]: row["value"] for row in show("config")}
    except CommandExecutionError as exc:
        return {"reachable": False, "healthy": False, "problems": [str(exc)]}
    max_db = int(config["max_db_connections"])
    summary = {
        "reachable": True,
        "clients": sum(p["cl_active"] + p["cl_waiting"] for p in pools),
        "max_client_conn": int(config["max_client_conn"]),
        "max_db_connections": max_db,
        "pools": [{key: pool[key] for key in ("database", "user", "cl_active", "cl_waiting",
                                              "sv_active", "sv_idle", "sv_used", "maxwait")}
                  for pool in pools if pool["database"] != "pgbouncer"],
        "databases": [{"name": db["name"], "server_connections": db["current_connections"],
                       "limit": db["max_connections"] or max_db, "pool_size": db["pool_size"]}
                      for db in databases if db["name"] != "pgbouncer"],
    }
    problems = [f"{p['database']}/{p['user']}: {p['cl_waiting']} clients waiting, the oldest "
                f"{p['maxwait']}s" for p in summary["pools"]
                if p["cl_waiting"] and p["maxwait"] >= maxwait_limit]
    problems += [f"{d['name']}: all {d['limit']} server connections in use"
                 for d in summary["databases"]
                 if d["limit"] and d["server_connections"] >= d["limit"]]
    if summary["clients"] >= summary["max_client_conn"]:
        problems.append(f"{summary['clients']} clients reach max_client_conn")
    summary.update(problems=problems, healthy=not problems)
    return summary


# The scratch PgBouncer's whole environment: nothing inherited from the minion. Salt's own
# salt-minion.service is Type=notify with NotifyAccess=all, and PgBouncer (built with systemd)
# sends READY=1 to $NOTIFY_SOCKET when it is up and, 1.24, STOPPING=1 when it stops: systemd
# then takes the minion for stopping and kills it after TimeoutStopSec.
SCRATCH_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def _pointed_nowhere(databases, directory):
    """[databases] with every entry's host replaced by ``directory`` (an empty directory:
    a server connection there fails on a Unix socket that does not exist); the other keys
    stay as written, so PgBouncer still parses each entry."""
    pointed = {}
    for name, value in databases.items():
        try:
            entry = dict(value) if isinstance(value, dict) else _parse_connstr(str(value))
        except ValueError as exc:
            raise _invalid(f"databases:{name}", str(exc), "write key=value pairs") from None
        entry["host"] = directory
        pointed[name] = _format_connstr(entry, keys=list(entry))
    return pointed


# check_config's problem when the scratch PgBouncer logged nothing wrong and still ran,
# not up, at the deadline: the host's pace, not the config (docs/pgbouncer.md)
NOT_UP = "PgBouncer did not come up on the candidate config"
CHECK_TIMEOUT_KEY = "vpn_gateway:pooler:check_timeout"


def check_config(sections, hba=None, timeout=None):
    """Start a scratch PgBouncer on a candidate config and return the ERROR/WARNING/FATAL
    lines it logs (empty when PgBouncer takes it). It touches nothing of the host's services
    (docs/pgbouncer.md, "The scratch PgBouncer"): no TCP listener, its Unix socket, log and
    ini in a private temp directory, no pidfile, no syslog, the service's account (not
    root), no inherited environment ($NOTIFY_SOCKET), and every [databases] host pointed at
    an empty directory in that temp directory, so that no server connection can leave it.

    sections
        {section: {key: value}} with [databases] values as text (or as dicts).
    hba
        The auth_hba_file contents to check instead of the file on disk.
    timeout
        Seconds to come up; by default ``vpn_gateway:pooler:check_timeout`` (``config.get``:
        minion config or pillar), else 10.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.check_config "$(salt-call --out=json pgbouncer.read_config)"
    """
    if timeout is None:
        timeout = __salt__["config.get"](CHECK_TIMEOUT_KEY, 10)
    uid, gid = _account()
    _tool("pgbouncer")
    with tempfile.TemporaryDirectory(prefix="pgbouncer-check-") as scratch:
        os.chown(scratch, uid, gid)
        settings = dict(sections.get("pgbouncer", {}))
        nowhere = os.path.join(scratch, "no-server")
        os.mkdir(nowhere, 0o700)
        databases = _pointed_nowhere(sections.get("databases", {}), nowhere)
        log = os.path.join(scratch, "log")
        settings.update(listen_addr="", unix_socket_dir=scratch, pidfile="", logfile=log,
                        syslog="0")
        settings.pop("user", None)
        if hba is not None:
            settings["auth_hba_file"] = _scratch_file(scratch, "hba", hba, uid, gid)
        if not os.path.exists(settings.get("auth_file", "")):
            settings["auth_file"] = _scratch_file(scratch, "users", "", uid, gid)
        ini = _scratch_file(scratch, "pgbouncer.ini", _render_ini(
            {**sections, "databases": databases, "pgbouncer": settings}), uid, gid)
        proc = subprocess.Popen([_tool("pgbouncer"), ini], user=uid, group=gid, extra_groups=[],
                                env=dict(SCRATCH_ENV), cwd=scratch, start_new_session=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if "process up" in _read(log):
                    break
                time.sleep(0.02)
            running = proc.poll() is None
        finally:
            proc.terminate()
            stderr = proc.communicate(timeout=10)[1]
        lines = (_read(log) + stderr).splitlines()
    level = re.compile(r" ((?:ERROR|WARNING|FATAL) .*)")
    problems = list(dict.fromkeys(  # in order, once each (PgBouncer repeats some)
        match.group(1) for match in map(level.search, lines) if match))
    if not problems and not any("process up" in line for line in lines):
        problems.append(f"{NOT_UP} within {timeout} s: {lines[-3:]}" if running else
                        f"PgBouncer exited on the candidate config: {lines[-3:]}")
    return problems


def _scratch_file(directory, name, content, uid, gid):
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(content)
    os.chown(path, uid, gid)
    return path


def _read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except FileNotFoundError:
        return ""


def render_config(sections):
    """{section: {key: value}} (databases as dicts) -> pgbouncer.ini text, validated.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.render_config '{"pgbouncer": {"listen_port": 6432}, "databases": {}}'
    """
    settings = render_settings(sections.get("pgbouncer", {}))
    databases = {name: render_database(name, entry)
                 for name, entry in sections.get("databases", {}).items()}
    check_pool_sizes(databases, settings)
    return _render_ini({"databases": {n: _format_connstr(e) for n, e in databases.items()},
                       "users": sections.get("users", {}), "pgbouncer": settings})


_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
_EVERYWHERE = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


def _hba_rule(fields):
    """(databases, networks, method, address text) of a host* HBA line, or None when it is
    no host line or its address is no IP network (PgBouncer itself checks the syntax)."""
    if len(fields) < 5 or fields[0] not in ("host", "hostssl", "hostnossl"):
        return None
    address, rest = fields[3], fields[4:]
    try:
        if address == "all":
            networks = _EVERYWHERE
        elif "/" in address:
            networks = (ipaddress.ip_network(address, strict=False),)
        elif len(rest) >= 2:  # address and netmask as two fields
            networks = (ipaddress.ip_network(f"{address}/{rest[0]}", strict=False),)
            address, rest = f"{address} {rest[0]}", rest[1:]
        else:
            return None
    except ValueError:
        return None
    return fields[1].split(","), networks, rest[0], address


def check_hba(hba):
    """Raise SaltInvocationError naming ``hba:N`` when a rule opens PgBouncer's admin
    database ``pgbouncer`` (SHOW, and SHUTDOWN, PAUSE, KILL for admin_users) to anything but
    loopback: the pack reaches the console over the Unix socket, pods never need it.
    A ``reject`` rule for ``pgbouncer`` earlier in the list closes its network.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.check_hba '["host pgbouncer all 198.18.2.0/24 reject",
            "host all all 198.18.2.0/24 scram-sha-256"]'
    """
    lines = hba.splitlines() if isinstance(hba, str) else list(hba or [])
    closed = []
    for index, line in enumerate(lines):
        rule = _hba_rule(str(line).split("#", 1)[0].split())
        if rule is None:
            continue
        databases, networks, method, address = rule
        if "pgbouncer" not in databases and "all" not in databases:
            continue
        if method == "reject":
            closed.extend(networks)
            continue
        open_networks = [net for net in networks if not any(
            net.version == other.version and net.subnet_of(other)
            for other in (*_LOOPBACK, *closed))]
        if open_networks:
            raise _invalid(
                f"hba:{index}", f"admits {address} to PgBouncer's admin database 'pgbouncer' "
                f"({method}): its admin_users can SHUTDOWN, PAUSE and KILL from there",
                f"put 'host pgbouncer all {address} reject' before it (the pack uses the Unix "
                "socket), or name the application databases instead of "
                f"'{'all' if 'all' in databases else 'pgbouncer'}'")
    return True


def validate_config(sections, hba=None):
    """Schema check, then a scratch PgBouncer run; raises SaltInvocationError naming what is
    wrong, returns the rendered ini text when PgBouncer takes it.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.validate_config "$(salt-call --out=json pgbouncer.read_config)"
    """
    text = render_config(sections)
    if hba is not None:
        check_hba(hba)
    if __opts__.get("test") and not (_account_exists()
                                     and shutil.which("pgbouncer", path=TOOL_PATH)):
        # A dry run before the formula installed PgBouncer or made its account: the schema
        # check only (the real run checks with PgBouncer before it writes anything).
        return text
    sections = _parse_ini(text)
    if __opts__.get("test"):
        # A dry run before pgbouncer.tls_present wrote the TLS files: the scratch run checks
        # without the leg whose files are not there yet (the real run checks them whole).
        sections["pgbouncer"] = _without_missing_tls(sections.get("pgbouncer", {}))
    problems = check_config(sections, hba=hba)
    if problems and problems[0].startswith(NOT_UP):
        raise SaltInvocationError(f"{problems[0]}; raise {CHECK_TIMEOUT_KEY} on a slow or "
                                  "busy host")
    hba_lines = [p for p in problems if re.search(r"hba line \d+", p)]
    if hba_lines:
        number = int(re.search(r"hba line (\d+)", hba_lines[0]).group(1))
        raise _invalid(f"hba:{number - 1}", f"PgBouncer cannot parse it ({hba_lines[0]}) and "
                       "would skip it, running more permissive than written",
                       "write 'host|hostssl|hostnossl|local DATABASE USER [ADDRESS/BITS] METHOD'")
    if problems:
        raise SaltInvocationError(f"PgBouncer rejects the candidate config: {'; '.join(problems)}")
    return text


def _without_missing_tls(settings):
    """[pgbouncer] settings without the TLS leg (client_tls_* / server_tls_*) one of whose
    files does not exist."""
    settings = dict(settings)
    for leg in ("client", "server"):
        files = [settings.get(f"{leg}_tls_{kind}_file") for kind in ("key", "cert", "ca")]
        if any(path and not os.path.exists(path) for path in files):
            settings = {key: value for key, value in settings.items()
                        if not key.startswith(f"{leg}_tls_")}
    return settings


def write_config(sections, hba=None):
    """Validate (schema, then a scratch PgBouncer), then replace pgbouncer.ini and, when
    ``hba`` is given, the auth_hba_file atomically. True when a file changed.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.write_config '{"pgbouncer": {...}, "databases": {...}}'
    """
    text = validate_config(sections, hba)
    changed = False
    if hba is not None:
        changed = write_file(_parse_ini(text)["pgbouncer"]["auth_hba_file"], hba)
    return write_file(config_path(), text) or changed


def write_file(path, content, mode=0o640, owner="root", group=None):
    """Replace ``path`` atomically (temp file, fsync, rename) with owner and mode set first.

    Returns True when the content, mode or owner changed.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.write_file /etc/pgbouncer/pg_hba.conf 'local all pgbouncer peer'
    """
    uid = pwd.getpwnam(owner).pw_uid
    gid = grp.getgrnam(group or _option("group")).gr_gid
    try:
        stat = os.stat(path)
        with open(path, encoding="utf-8") as handle:
            if (handle.read(), stat.st_mode & 0o7777, stat.st_uid, stat.st_gid) == (
                    content, mode, uid, gid):
                return False
    except FileNotFoundError:
        pass
    # salt.utils.atomicfile hands the old file's mode and owner on to the new one: the
    # old one gets ours first, a new one is born under a umask no looser than ``mode``.
    if os.path.exists(path):
        os.chown(path, uid, gid)
        os.chmod(path, mode)
    with salt.utils.files.set_umask(0o777 & ~mode):
        with salt.utils.atomicfile.atomic_open(path, "w") as handle:
            _write_through(handle, content)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return True


def _write_through(handle, text):
    """Write, flush and fsync ``text`` to an atomic_open handle. On an error (a full disk)
    its temporary file is removed here: atomic_open's exit closes the file before removing
    it, and that close flushes the refused text again and raises first."""
    try:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    except OSError:
        os.unlink(handle.name)
        raise


def read_auth_file():
    """The auth file's user names (secrets are never returned).

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.read_auth_file
    """
    return sorted(_auth_entries())


def auth_file_path():
    """The auth_file set in the managed pgbouncer.ini.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.auth_file_path
    """
    path = read_config()["pgbouncer"].get("auth_file")
    if not path:
        raise CommandExecutionError(f"{config_path()} sets no auth_file; "
                                    "set settings:auth_file (pgbouncer.settings) first")
    return path


def _auth_entries():
    path = read_config()["pgbouncer"].get("auth_file")
    return _parse_auth_file(_read(path)) if path else {}


def user_matches(name, password_pillar=None, stored="plain", salt=None, iterations=4096,
                 password_file=None):
    """Whether the auth file holds ``name`` with the password at the pillar key
    ``password_pillar`` (or in ``password_file``): as plaintext, or as a verifier made from it
    (with exactly ``salt`` and ``iterations`` when a salt is given). Never returns or logs the
    secret.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.user_matches app vpn_gateway:pooler:users:app:password \\
            stored=scram-sha-256
    """
    password = _password(password_pillar, password_file, f"users:{name}:password")
    current = _auth_entries().get(name)
    if current is None:
        return False
    if stored == "plain":
        return hmac.compare_digest(current, password)
    if salt is not None:
        return hmac.compare_digest(current, _scram_verifier(password, salt, iterations))
    return _verifier_matches(current, password)


def set_user(name, password_pillar=None, stored="plain", salt=None, iterations=4096,
             password_file=None):
    """Write one auth file entry, 0640 owned by the service account: the password at the
    pillar key ``password_pillar`` (or in ``password_file``), as plaintext (``stored=plain``)
    or as a SCRAM-SHA-256 verifier (``stored=scram-sha-256``; ``salt``/``iterations`` as in
    scram_verifier). An entry that already matches is kept as it is.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.set_user app vpn_gateway:pooler:users:app:password \\
            stored=scram-sha-256
    """
    key = f"users:{name}:password"
    password = _password(password_pillar, password_file, key)
    if stored not in ("plain", "scram-sha-256"):
        raise _invalid(f"users:{name}:stored", f"{stored!r} is not plain or scram-sha-256",
                       "use plain or scram-sha-256")
    _check_user(name, password, "users")
    secret = password if stored == "plain" else _scram_verifier(password, salt, iterations)
    users = _auth_entries()
    users[name] = secret
    return write_file(auth_file_path(), render_auth_file(users), owner=_option("user"))


def _without_users(text, names):
    """Auth file text without the entries of ``names``; every other line (an operator's
    entries, comments) is kept as it is."""
    kept = []
    for line in text.splitlines(True):
        entry = _parse_auth_file(line)
        if not (entry and set(entry) <= set(names)):
            kept.append(line)
    return "".join(kept)


def remove_user(name):
    """Remove one auth file entry (other lines stay as they are); True when it was there.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.remove_user app
    """
    if name not in _auth_entries():
        return False
    path = auth_file_path()
    return write_file(path, _without_users(_read(path), [name]), owner=_option("user"))


# -- ownership: what the pack created, and removing it once pillar no longer declares it ------

def owned():
    """The users and pools this pack created (``pgbouncer.user_present`` /
    ``pool_present`` with ``track: true`` when the entry did not exist yet), from the
    ownership record (minion option ``pgbouncer.owned_file``): ``{"databases": [...],
    "users": [...]}``. Removing the record forgets ownership: nothing is pruned then.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.owned
    """
    path = _option("owned_file")
    try:
        with salt.utils.files.fopen(path, "r") as handle:
            record = json.load(handle)
    except FileNotFoundError:
        record = {}
    except (OSError, ValueError) as exc:
        raise CommandExecutionError(
            f"cannot read PgBouncer's ownership record {path}: {exc} (fix or remove it; "
            "removing forgets which users and pools the pack created)") from None
    if not isinstance(record, dict) or not all(
            isinstance(record.get(kind, []), list) for kind in OWNED_KINDS):
        raise CommandExecutionError(
            f"PgBouncer's ownership record {path} is not {{\"databases\": [...], "
            "\"users\": [...]}} (fix or remove it; removing forgets which users and pools "
            "the pack created)")
    return {kind: sorted({str(n) for n in record.get(kind, [])}) for kind in OWNED_KINDS}


def set_owned(kind, name, owned=True):  # pylint: disable=redefined-outer-name
    """Record (``owned=True``) or forget that the pack created user or pool ``name``
    (``kind``: ``users`` or ``databases``). True when the record changed.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.set_owned users app
        salt '*' pgbouncer.set_owned databases olddb owned=False
    """
    return _set_owned({kind: [name]}, add=owned)


def _set_owned(names, add=True):
    """Add (or drop) {kind: [names]} in the record in one atomic write; True when it changed."""
    if set(names) - set(OWNED_KINDS):
        raise SaltInvocationError(f"kind: {sorted(set(names) - set(OWNED_KINDS))} is not one "
                                  f"of {', '.join(OWNED_KINDS)}")
    record = owned()
    new = {kind: sorted(set(record[kind]) | set(names.get(kind, ())) if add
                        else set(record[kind]) - set(names.get(kind, ())))
           for kind in OWNED_KINDS}
    if new == record:
        return False
    path = _option("owned_file")
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    with salt.utils.atomicfile.atomic_open(path, "w") as handle:
        _write_through(handle, json.dumps(new, indent=1, sort_keys=True))
    os.chmod(path, 0o644)
    return True


def prune_owned(users=None, databases=None, test=False):
    """Remove the users (auth file entries) and pools ([databases] entries) this pack created
    (see ``owned``) that are not in ``users`` / ``databases`` (the declared names), then
    RELOAD when PgBouncer runs: the pools' clients are disconnected, the users can no longer
    log in (sessions already open stay until they end). Entries the pack did not create are
    never touched. Owned names no longer on the host are forgotten.

    test
        Only say what would be removed; touches nothing.

    Returns ``{"users": [removed], "databases": {name: old entry}, "apply": "reload" or
    "none"}``; never a secret.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.prune_owned users='["app"]' databases='["appdb"]' test=True
    """
    record = owned()
    gone = {"users": sorted(set(record["users"]) - set(users or ())),
            "databases": sorted(set(record["databases"]) - set(databases or ()))}
    result = {"users": [], "databases": {}, "apply": "none"}
    if not gone["users"] and not gone["databases"]:
        return result
    current = read_config()
    auth = _auth_entries()
    result["users"] = [name for name in gone["users"] if name in auth]
    result["databases"] = {name: current["databases"][name] for name in gone["databases"]
                           if name in current["databases"]}
    live = running() if result["users"] or result["databases"] else False
    result["apply"] = "reload" if live else "none"
    if test:
        return result
    if result["databases"]:
        write_config({**current, "databases": {name: entry for name, entry
                                               in current["databases"].items()
                                               if name not in result["databases"]}})
    if result["users"]:
        path = auth_file_path()
        write_file(path, _without_users(_read(path), result["users"]), owner=_option("user"))
    if live:
        reload()
        listed = [row["name"] for row in show("databases") if row["name"] in result["databases"]]
        if listed:
            raise CommandExecutionError(f"SHOW DATABASES still lists {listed} after RELOAD")
    left = [name for name in result["users"] if name in _auth_entries()]
    if left:
        raise CommandExecutionError(f"the auth file still holds {left} after writing")
    _set_owned(gone, add=False)
    return result


# -- the package's own instance -----------------------------------------------------------------

def service_instance(service=None):
    """The main process of the PgBouncer unit (minion option ``pgbouncer.service``):
    ``{"running": bool, "pid": int, "user": name, "ours": bool}``; ``ours`` is whether it runs
    under the managed account (``pgbouncer.user``). Debian's package starts its own instance
    as ``postgres`` when it is installed.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.service_instance
    """
    service = service or _option("service")
    systemctl = shutil.which("systemctl", path=TOOL_PATH)
    if systemctl is None:
        return {"running": False, "pid": 0, "user": None, "ours": False}
    proc = subprocess.run([systemctl, "show", "--property=MainPID", "--value", service],
                          capture_output=True, text=True, timeout=30, check=False)
    pid = int(proc.stdout.strip() or 0) if proc.stdout.strip().isdigit() else 0
    try:
        user = pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name if pid else None
    except (FileNotFoundError, KeyError):
        pid, user = 0, None
    return {"running": bool(pid), "pid": pid, "user": user,
            "ours": bool(pid) and user == _option("user")}


def config_managed():
    """Whether the managed pgbouncer.ini exists and was written by this module (its header);
    False for a missing file and for the package's own default.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.config_managed
    """
    try:
        with open(config_path(), encoding="utf-8") as handle:
            return handle.readline().rstrip("\n") == HEADER
    except FileNotFoundError:
        return False


def retire_packaged_config():
    """Move a pgbouncer.ini this module did not write (the package's default) to
    ``<path>.packaged``; the path it went to, or None when there was none.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.retire_packaged_config
    """
    path = config_path()
    if not os.path.exists(path) or config_managed():
        return None
    os.replace(path, f"{path}.packaged")
    return f"{path}.packaged"


# -- TLS: the pods' leg (client_tls_*) and the database leg (server_tls_*) ---------------------
# The certificates and the key come from pillar (vpn_gateway:pooler:tls, docs/pgbouncer.md "TLS"),
# are checked here (python cryptography, which Salt itself needs) and written 0640/0644
# root:<pgbouncer group>. The key's text is never returned, logged or put in an error.

TLS_MODES = {"cert": 0o644, "key": 0o640, "server_ca": 0o644}
PEM_CERT = "-----BEGIN CERTIFICATE-----"


def _crypto():
    try:
        from cryptography import x509  # pylint: disable=import-outside-toplevel
        from cryptography.hazmat.primitives import (  # pylint: disable=import-outside-toplevel
            hashes, serialization)
    except ImportError:  # pragma: no cover (Salt itself needs it)
        raise CommandExecutionError(
            "python cryptography is missing in the minion's Python; install it (Salt's "
            "packages ship it; pip install cryptography)") from None
    return x509, hashes, serialization


def _load_certs(text, key):
    """The certificates of a PEM text (in order); SaltInvocationError naming ``key``."""
    x509, _, _ = _crypto()
    if not isinstance(text, str) or PEM_CERT not in text:
        raise _invalid(key, "is not PEM certificate text", f"paste the PEM ({PEM_CERT} ...)")
    if "PRIVATE KEY" in text:
        raise _invalid(key, "holds a private key (certificate files are world-readable)",
                       "put the key under key, only certificates here")
    try:
        return x509.load_pem_x509_certificates(text.encode())
    except ValueError as exc:
        raise _invalid(key, f"cannot be read as PEM certificates ({exc})",
                       "paste the certificates as PEM") from None


def _load_key(text, key):
    """A PEM private key; errors name ``key`` and never hold its text."""
    _, _, serialization = _crypto()
    if not isinstance(text, str) or "PRIVATE KEY-----" not in text:
        raise _invalid(key, "is not a PEM private key", "give the key as PEM (not shown)")
    try:
        loaded = serialization.load_pem_private_key(text.encode(), password=None)
    except TypeError:
        raise _invalid(key, "is encrypted with a passphrase, which PgBouncer cannot ask for",
                       "store it unencrypted inside the encrypted pillar") from None
    except ValueError:
        raise _invalid(key, "cannot be read as a PEM private key",
                       "give an RSA or EC key as PEM (not shown)") from None
    if _key_kind(loaded).startswith("RSA") and loaded.key_size < 2048:
        raise _invalid(key, f"is a {loaded.key_size}-bit RSA key, which OpenSSL refuses",
                       "use RSA 2048 or more, or an EC key")
    return loaded


def _fingerprint(data):
    return hashlib.sha256(data).hexdigest()[:16]


def _spki(public_key):
    _, _, serialization = _crypto()
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def _describe_cert(cert):
    _, _, serialization = _crypto()
    return (f"certificate {cert.subject.rfc4514_string()} until "
            f"{cert.not_valid_after_utc:%Y-%m-%d} (sha256 "
            f"{_fingerprint(cert.public_bytes(serialization.Encoding.DER))})")


def _key_kind(private_key):
    # pylint: disable-next=import-outside-toplevel
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    if isinstance(private_key, rsa.RSAPrivateKey):
        return f"RSA {private_key.key_size}-bit"
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return f"EC {private_key.curve.name}"
    return type(private_key).__name__


def _describe_key(private_key):
    """A key by its public half only (nothing secret)."""
    kind = _key_kind(private_key)
    digest = _fingerprint(_spki(private_key.public_key()))
    return f"{kind} private key of public key sha256 {digest}"


def _check_validity(cert, key, now):
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise _invalid(key, f"{cert.subject.rfc4514_string()} is valid only from "
                       f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
                       f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC", "renew it")


def _san_dns_names(cert):
    x509, _, _ = _crypto()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [name.lower() for name in san.get_values_for_type(x509.DNSName)]


def _name_covered(name, sans):
    """Whether DNS ``name`` is among ``sans`` (a wildcard covers one leftmost label)."""
    name = name.lower().rstrip(".")
    return any(san == name or (san.startswith("*.") and "." in name
                               and name.split(".", 1)[1] == san[2:]) for san in sans)


def _issued_by(cert, issuer):
    from cryptography.exceptions import InvalidSignature  # pylint: disable=import-outside-toplevel
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _check_client_tls(cert, key, ca=None, dns_names=(), where="tls:client", now=None):
    """Check PgBouncer's certificate for the pods (internal: ``key`` is the key's text).

    ``cert``: PEM, the certificate then its intermediates; each valid now, each issued by the
    next, the last by one of ``ca``'s certificates (when given); the first names every
    ``dns_names`` in its subjectAltName; ``key`` is its private key. Returns
    {"cert": description, "key": description}; SaltInvocationError names ``where:FIELD``.
    """
    import datetime  # pylint: disable=import-outside-toplevel
    now = now or datetime.datetime.now(datetime.timezone.utc)
    certs = _load_certs(cert, f"{where}:cert")
    private_key = _load_key(key, f"{where}:key")
    import salt.utils.x509  # pylint: disable=import-outside-toplevel
    if not salt.utils.x509.is_pair(certs[0].public_key(), private_key):
        raise _invalid(f"{where}:key", "is not the key of the certificate in cert "
                       f"({_describe_cert(certs[0])})", "give the key the certificate was "
                       "issued for, or the certificate of this key")
    for item in certs:
        _check_validity(item, f"{where}:cert", now)
    sans = _san_dns_names(certs[0])
    missing = [name for name in dns_names if not _name_covered(name, sans)]
    if missing:
        raise _invalid(f"{where}:cert", f"does not name {', '.join(missing)} in its "
                       f"subjectAltName (it names {', '.join(sans) or 'no DNS name'})",
                       "issue it for the Service's names (vpn_gateway:kubernetes:service)")
    for child, parent in zip(certs, certs[1:]):
        if not _issued_by(child, parent):
            raise _invalid(f"{where}:cert", f"{child.subject.rfc4514_string()} is not issued "
                           f"by the next certificate, {parent.subject.rfc4514_string()}",
                           "put the certificate first, then each issuer in order")
    if ca is not None:
        roots = _load_certs(ca, f"{where}:ca")
        for root in roots:
            _check_validity(root, f"{where}:ca", now)
        last = certs[-1]
        if not any(_issued_by(last, root) or _spki(last.public_key()) == _spki(root.public_key())
                   for root in roots):
            raise _invalid(f"{where}:cert", f"does not chain to {where}:ca "
                           f"({last.issuer.rfc4514_string()} did not sign "
                           f"{last.subject.rfc4514_string()})",
                           "give the CA that issued it, or a certificate that CA issued")
    return {"cert": _describe_cert(certs[0]), "key": _describe_key(private_key)}


def check_server_ca(ca, sslmode="verify-full", where="tls:server", now=None):
    """Check the database's CA (PEM, CA certificates valid now) -> its description.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.check_server_ca "$(cat /etc/pgbouncer/server-ca.crt)"
    """
    import datetime  # pylint: disable=import-outside-toplevel
    x509, _, _ = _crypto()
    if sslmode not in SSLMODES:
        raise _invalid(f"{where}:sslmode", f"{sslmode!r} is not one of {', '.join(SSLMODES)}",
                       "pick one of those")
    if ca is None:
        if sslmode in ("verify-ca", "verify-full"):
            raise _invalid(f"{where}:ca", f"is missing but sslmode is {sslmode}",
                           "give the database's CA certificate (PEM)")
        return None
    now = now or datetime.datetime.now(datetime.timezone.utc)
    roots = _load_certs(ca, f"{where}:ca")
    for root in roots:
        _check_validity(root, f"{where}:ca", now)
        try:
            is_ca = root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise _invalid(f"{where}:ca", f"{root.subject.rfc4514_string()} is not a CA "
                           "certificate (basicConstraints CA:TRUE)",
                           "give the CA that issued the database's certificate, not the "
                           "database's own")
    return "; ".join(_describe_cert(root) for root in roots)


def _tls_pillar(key):
    if not key:
        return {}
    value = _pillar_secret(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid("tls", "is not a mapping", "give client: and server: mappings")
    return value


def _tls_wanted(files, client_pillar=None, server_pillar=None, dns_names=()):
    """{path: (content, mode, description, kind)} from pillar, checked (internal: holds the
    key's text)."""
    files = dict(files or {})
    client, server = _tls_pillar(client_pillar), _tls_pillar(server_pillar)
    wanted = {}
    if client.get("cert") is not None or client.get("key") is not None:
        described = _check_client_tls(client.get("cert"), client.get("key"),
                                      client.get("ca"), list(dns_names or ()))
        for kind in ("cert", "key"):
            if not files.get(kind):
                raise _invalid(f"files:{kind}", "is not set", "give the path to write it to")
            text = client[kind].strip() + "\n"
            wanted[files[kind]] = (text, TLS_MODES[kind], described[kind], kind)
    if server:
        described = check_server_ca(server.get("ca"), server.get("sslmode", "verify-full"))
        if described is not None:
            if not files.get("server_ca"):
                raise _invalid("files:server_ca", "is not set", "give the path to write it to")
            wanted[files["server_ca"]] = (server["ca"].strip() + "\n", TLS_MODES["server_ca"],
                                          described, "server_ca")
    return wanted


def _describe_file(path, kind):
    """(description, text) of what is at ``path`` now (its certificates or key described,
    mode, owner); (None, None) when there is nothing. ``kind``: cert, key or server_ca."""
    try:
        stat = os.stat(path)
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except FileNotFoundError:
        return None, None
    try:
        if kind == "key":
            what = _describe_key(_load_key(text, "old"))
        elif kind == "cert":
            what = _describe_cert(_load_certs(text, "old")[0])
        else:
            what = "; ".join(_describe_cert(c) for c in _load_certs(text, "old"))
    except (SaltInvocationError, CommandExecutionError):
        what = "a file that is not what PgBouncer needs here"
    try:
        owner = f"{pwd.getpwuid(stat.st_uid).pw_name}:{grp.getgrgid(stat.st_gid).gr_name}"
    except KeyError:
        owner = f"{stat.st_uid}:{stat.st_gid}"
    return f"{what}, {stat.st_mode & 0o7777:04o} {owner}", text


def tls_changes(files, client_pillar=None, server_pillar=None, dns_names=None):
    """What writing the TLS files from pillar would change: {path: {"old": description or
    None, "new": description}}; descriptions name certificates and, for the key, its public
    half only. Checks the pillar's certificates and key first (SaltInvocationError naming the
    key, never its text).

    files
        {"cert": path, "key": path, "server_ca": path}: where each goes.
    client_pillar, server_pillar
        Pillar keys of the client and server sections (``vpn_gateway:pooler:tls:client``).
    dns_names
        Names the client certificate must hold (the Service's DNS names).

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.tls_changes '{"cert": "/etc/pgbouncer/client.crt", ...}' \\
            vpn_gateway:pooler:tls:client vpn_gateway:pooler:tls:server \\
            '["postgres.databases.svc", "postgres.databases.svc.cluster.local"]'
    """
    group = _option("group")
    changes = {}
    for path, (content, mode, described, kind) in _tls_wanted(
            files, client_pillar, server_pillar, dns_names).items():
        new = f"{described}, {mode:04o} root:{group}"
        old, text = _describe_file(path, kind)
        if old == new and text == content:
            continue
        if old == new:
            new += " (rewritten: same certificate or key, other text)"
        changes[path] = {"old": old, "new": new}
    return changes


def write_tls(files, client_pillar=None, server_pillar=None, dns_names=None):
    """Check the TLS certificates and key from pillar (see ``tls_changes``), then write each
    file that differs atomically, mode and owner set before the rename (certificates 0644,
    the key 0640, root:<pgbouncer group>). Returns the paths written. PgBouncer reads them
    on its next RELOAD.

    CLI Example:

    .. code-block:: bash

        salt '*' pgbouncer.write_tls '{"cert": "/etc/pgbouncer/client.crt", ...}' \\
            vpn_gateway:pooler:tls:client vpn_gateway:pooler:tls:server
    """
    wanted = _tls_wanted(files, client_pillar, server_pillar, dns_names)
    return [path for path, (content, mode, _, _) in wanted.items()
            if write_file(path, content, mode=mode, owner="root", group=_option("group"))]
