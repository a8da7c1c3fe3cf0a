"""
PgBouncer states: the package's own instance retired, the [pgbouncer] settings,
[databases] pools and auth file users.

Each state validates its input and the whole resulting config (schema, then a
scratch PgBouncer) before anything on the host changes, applies it with RELOAD
(a restart only for settings PgBouncer reads at start, and only when allowed),
then reads PgBouncer back and fails when it does not run what was asked.
``pillar_key`` (for example ``vpn_gateway:pooler``) prefixes the keys named in
errors so that they point at the pillar the values came from.
Secrets never appear in changes, comments or errors.
"""
from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = "pgbouncer"


def __virtual__():
    if "pgbouncer.console" in __salt__:
        return __virtualname__
    return (False, "the pgbouncer execution module is not available (see its __virtual__)")


def _ret(name):
    return {"name": name, "changes": {}, "result": True, "comment": ""}


def _fail(ret, exc, pillar_key):
    message = str(exc)
    if isinstance(exc, SaltInvocationError) and pillar_key and not message.startswith("PgBouncer"):
        message = f"{pillar_key}:{message}"
    ret.update(result=False, comment=f"{message} (nothing changed)", changes={})
    return ret


def _apply(ret, changes, label, steps, done):
    """Run ``steps`` (write, reload, verify); the state's return either way."""
    try:
        steps()
    except (SaltInvocationError, CommandExecutionError) as exc:
        ret.update(result=False, changes=changes, comment=f"{label}: {exc}")
        return ret
    ret.update(changes=changes, comment=done)
    return ret


PACKAGED_STOPPED = {"old": "running: the package's own instance", "new": "stopped"}


def packaged_instance_absent(name="pgbouncer", package="pgbouncer", starts_on_install=None,
                             pillar_key=None):
    """Take the PgBouncer unit and pgbouncer.ini over from the package: stop an instance of
    unit ``name`` that does not run under the managed account (Debian's package starts its
    own as ``postgres`` on 127.0.0.1:6432 when installed), and move a pgbouncer.ini this
    module did not write (the package's default) to ``pgbouncer.ini.packaged``. The managed
    unit has the same name and overrides the package's (``/etc/systemd/system``), so the
    package's enablement and its restarts on upgrade apply to the managed instance.

    name
        The unit (the package's and the formula's).
    package
        The package; when it is not installed yet, ``test=True`` predicts what its install
        brings: a default pgbouncer.ini, and on Debian a started instance.
    starts_on_install
        Whether the package starts its own instance when installed (default: true on the
        Debian family, false elsewhere).

    .. code-block:: yaml

        pgbouncer-packaged-instance:
          pgbouncer.packaged_instance_absent:
            - require:
              - pkg: pgbouncer-package
    """
    ret = _ret(name)
    if starts_on_install is None:
        starts_on_install = __grains__.get("os_family") == "Debian"
    try:
        installed = bool(__salt__["pkg.version"](package))
        instance = __salt__["pgbouncer.service_instance"](name)
        config = __salt__["pgbouncer.config_path"]()
        foreign_config = (not __salt__["pgbouncer.config_managed"]()
                          and __salt__["file.file_exists"](config))
    except (SaltInvocationError, CommandExecutionError) as exc:
        return _fail(ret, exc, pillar_key)
    changes = {}
    if not installed and __opts__["test"]:
        # What installing the package brings: a default pgbouncer.ini (Debian and EL ship
        # one) and, on Debian, its own started instance.
        stop = starts_on_install
        foreign_config = not __salt__["pgbouncer.config_managed"]()
    else:
        stop = instance["running"] and not instance["ours"]
    if stop:
        changes["service"] = dict(PACKAGED_STOPPED)
    if foreign_config:
        changes["config"] = {"old": config, "new": f"{config}.packaged"}
    if not changes:
        ret["comment"] = "no instance or config of the package's own"
        return ret
    if __opts__["test"]:
        ret.update(result=None, changes=changes, comment=(
            "the package's own " + " and ".join(
                (["instance would be stopped"] if stop else [])
                + (["pgbouncer.ini would be moved aside"] if foreign_config else []))
            + ("" if installed else f" (predicted: {package} is not installed yet)")))
        return ret

    def steps():
        if stop:
            if __salt__["service.stop"](name) is not True:
                raise CommandExecutionError(f"systemctl stop {name} failed (see its journal)")
            if __salt__["pgbouncer.service_instance"](name)["running"]:
                raise CommandExecutionError(f"{name} still runs after systemctl stop")
        if foreign_config:
            __salt__["pgbouncer.retire_packaged_config"]()

    return _apply(ret, changes, "the package's own instance", steps,
                  "took PgBouncer over from the package: "
                  + ", ".join((["its instance stopped"] if stop else [])
                              + ([f"its pgbouncer.ini moved to {config}.packaged"]
                                 if foreign_config else [])))


def tls_present(name, files, client_pillar=None, server_pillar=None, dns_names=None,
                pillar_key=None):
    """PgBouncer's TLS files from pillar: the pods' leg (its certificate and key) and the
    database's CA (docs/pgbouncer.md, "TLS"). The certificate must be valid now, name every
    ``dns_names`` (the Service's DNS names), belong to the key and chain to the client
    section's ``ca``; the server CA must be CA certificates valid now. Nothing is written
    unless all of it holds. Written atomically, certificates 0644 and the key 0640,
    root:<pgbouncer group>; then RELOAD when PgBouncer runs (it re-reads them). Changes and
    comments describe certificates and the key by fingerprints, never by their text.

    name
        A label for the state.
    files
        {"cert": path, "key": path, "server_ca": path}.
    client_pillar, server_pillar
        Pillar keys of the sections (``vpn_gateway:pooler:tls:client`` with cert, key, ca;
        ``vpn_gateway:pooler:tls:server`` with sslmode, ca); read on the minion, never
        passed as values.

    .. code-block:: yaml

        pgbouncer-tls:
          pgbouncer.tls_present:
            - files: {cert: /etc/pgbouncer/client.crt, key: /etc/pgbouncer/client.key,
                      server_ca: /etc/pgbouncer/server-ca.crt}
            - client_pillar: vpn_gateway:pooler:tls:client
            - server_pillar: vpn_gateway:pooler:tls:server
            - dns_names: [postgres.databases.svc, postgres.databases.svc.cluster.local]
    """
    ret = _ret(name)
    args = (files, client_pillar, server_pillar, dns_names or [])
    try:
        changes = __salt__["pgbouncer.tls_changes"](*args)
        live = __salt__["pgbouncer.running"]() if changes else False
    except (SaltInvocationError, CommandExecutionError) as exc:
        return _fail(ret, exc, pillar_key)
    if not changes:
        ret["comment"] = "PgBouncer's TLS files are in place"
        return ret
    action = "reload" if live else "none"
    changes = {**changes, "apply": action}
    if __opts__["test"]:
        ret.update(result=None, changes=changes,
                   comment=f"PgBouncer's TLS files would change ({action})")
        return ret

    def steps():
        __salt__["pgbouncer.write_tls"](*args)
        if live:
            __salt__["pgbouncer.reload"]()
        left = __salt__["pgbouncer.tls_changes"](*args)
        if left:
            raise CommandExecutionError(f"{sorted(left)} still differ after writing")

    return _apply(ret, changes, "PgBouncer's TLS files", steps,
                  "PgBouncer's TLS files written" + (" and reloaded" if live else ""))


def _running_config():
    """{key: row} of SHOW CONFIG, or None when PgBouncer does not run."""
    if not __salt__["pgbouncer.running"]():
        return None
    return {row["key"]: row for row in __salt__["pgbouncer.show"]("config")}


def settings(name, settings, hba=None, restart=False, pillar_key=None):
    """The whole [pgbouncer] section (keys not given go back to PgBouncer's defaults).

    name
        A label for the state.
    settings
        {setting: value}; unknown settings and wrong types are refused.
    hba
        A list of HBA rules written to ``auth_hba_file`` (with ``auth_type: hba``); a rule
        PgBouncer cannot parse is refused (PgBouncer would only skip it).
    restart
        Allow a restart (which drops every client) for settings PgBouncer reads only at start
        (``listen_addr``, ``listen_port``, ``unix_socket_dir``, ``pidfile``, ...). Without it such a
        change is reported, nothing is written and PgBouncer keeps running untouched.

    .. code-block:: yaml

        pgbouncer-settings:
          pgbouncer.settings:
            - settings: {listen_addr: 198.18.2.11, listen_port: 6432, auth_type: hba, ...}
            - hba: ['host all all 198.18.2.0/24 scram-sha-256']
    """
    ret = _ret(name)
    try:
        current = __salt__["pgbouncer.read_config"]()
        wanted = __salt__["pgbouncer.render_settings"](settings)
        hba_text = None if hba is None else "".join(f"{rule}\n" for rule in hba)
        if hba_text is not None:  # also when nothing changes: an open console is reported
            __salt__["pgbouncer.check_hba"](hba_text)
        old = current["pgbouncer"]
        diff = {key: {"old": old.get(key), "new": wanted.get(key)}
                for key in sorted(set(old) | set(wanted)) if old.get(key) != wanted.get(key)}
        old_hba = _read_hba(wanted) if hba_text is not None else None
        if not diff and hba_text == old_hba:
            ret["comment"] = "PgBouncer settings are in place"
            return ret
        live = _running_config()
        _check_listen(wanted, live, __opts__["test"])
        sections = {**current, "pgbouncer": wanted}
        __salt__["pgbouncer.validate_config"](sections, hba=hba_text)
    except (SaltInvocationError, CommandExecutionError) as exc:
        return _fail(ret, exc, pillar_key)

    changeable = ({k: row["changeable"] == "yes" for k, row in live.items()} if live else {})
    needs_restart = sorted(k for k in diff if live is not None and not changeable.get(k, True))
    changes = {}
    if diff:
        changes["settings"] = diff
    if hba_text != old_hba:
        changes["hba"] = {"old": (old_hba or "").splitlines(), "new": hba_text.splitlines()}
    if needs_restart and not restart:
        ret.update(result=False, comment=(
            f"{', '.join(needs_restart)} changed: PgBouncer reads "
            f"{'it' if len(needs_restart) == 1 else 'them'} only at start and a restart drops "
            f"every client; not restarted and nothing written (allow it with "
            f"{pillar_key + ':' if pillar_key else ''}restart: true)"))
        return ret
    action = "restart" if needs_restart else ("reload" if live is not None else "none")
    if __opts__["test"]:
        ret.update(result=None, changes={**changes, "apply": action},
                   comment=f"PgBouncer settings would change ({action})")
        return ret

    def steps():
        __salt__["pgbouncer.write_config"](sections, hba=hba_text)
        service = __salt__["config.get"]("pgbouncer.service", "pgbouncer")
        if action == "restart" and __salt__["service.restart"](service) is not True:
            raise CommandExecutionError(f"systemctl restart {service} failed (see its journal)")
        if action == "reload":
            __salt__["pgbouncer.reload"]()
        if live is not None:
            _verify_settings(wanted)

    return _apply(ret, {**changes, "apply": action}, "PgBouncer settings", steps,
                  f"PgBouncer settings changed ({action})" if live is not None else
                  "PgBouncer settings written; PgBouncer is not running and reads them at start")


def _read_hba(wanted):
    path = wanted.get("auth_hba_file")
    if not path:
        raise SaltInvocationError("settings:auth_hba_file: is not set but hba rules are given; "
                                  "set auth_hba_file and auth_type: hba")
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _check_listen(wanted, live, test=False):
    """Refuse a listen address:port another process holds (unless it is PgBouncer's own).

    In a dry run the package's own instance may hold it still: packaged_instance_absent
    stops it before this state applies (the real run checks again)."""
    port = wanted.get("listen_port", "6432")
    addr = wanted.get("listen_addr", "")
    if live and (live["listen_port"]["value"], live["listen_addr"]["value"]) == (port, addr):
        return
    busy = __salt__["pgbouncer.port_in_use"](addr, port) if addr else None
    if busy and test:
        instance = __salt__["pgbouncer.service_instance"]()
        if instance["running"] and not instance["ours"]:
            return
    if busy:
        raise SaltInvocationError(f"settings:listen_port: {port} is already in use on {busy}; "
                                  "stop what holds it or choose another port")


def _verify_settings(wanted):
    shown = {row["key"]: row["value"] for row in __salt__["pgbouncer.show"]("config")}
    wrong = [f"{key}={shown.get(key)!r} (wanted {value!r})" for key, value in wanted.items()
             if key in shown and not __salt__["pgbouncer.same_setting"](key, value, shown[key])]
    if wrong:
        raise CommandExecutionError(f"PgBouncer runs with {', '.join(wrong)} after applying")


def pool_present(name, host, port=None, dbname=None, user=None, auth_user=None, pool_size=None,
                 reserve_pool=None, max_db_connections=None, pool_mode=None, connect_query=None,
                 client_encoding=None, datestyle=None, timezone=None, wait_close_timeout=60,
                 pillar_key=None, track=False):
    """One [databases] entry, applied with RELOAD (clients stay connected).

    ``track``: when this state adds the entry, record it as the pack's
    (``pgbouncer.owned``), so that ``pgbouncer.pruned`` removes it once it is no
    longer declared. An entry that already existed stays its maker's.

    When the target (host, port, dbname, user) of an existing pool changes, WAIT_CLOSE waits
    (up to ``wait_close_timeout`` seconds) until the server connections to the old target are
    closed. Afterwards SHOW DATABASES must show the entry.

    .. code-block:: yaml

        appdb:
          pgbouncer.pool_present:
            - host: 198.19.1.10
            - port: 5432
            - dbname: app
            - pool_size: 20
            - pool_mode: transaction
    """
    ret = _ret(name)
    given = {"host": host, "port": port, "dbname": dbname, "user": user, "auth_user": auth_user,
             "pool_size": pool_size, "reserve_pool": reserve_pool,
             "max_db_connections": max_db_connections, "pool_mode": pool_mode,
             "connect_query": connect_query, "client_encoding": client_encoding,
             "datestyle": datestyle, "timezone": timezone}
    try:
        wanted = __salt__["pgbouncer.render_database"](
            name, {k: v for k, v in given.items() if v is not None})
        current = __salt__["pgbouncer.read_config"]()
        old = current["databases"].get(name)
        running = __salt__["pgbouncer.running"]()
        stale = running and __salt__["pgbouncer.database_mismatch"](name, wanted)
        if old == wanted and not stale:
            ret["comment"] = f"pool {name} is in place"
            return ret
        # The other sections are the settings state's; write_config checks the whole file.
        __salt__["pgbouncer.check_pool_sizes"]({name: wanted}, current["pgbouncer"])
        sections = {**current, "databases": {**current["databases"], name: wanted}}
    except (SaltInvocationError, CommandExecutionError) as exc:
        return _fail(ret, exc, pillar_key)

    moved = old is not None and any(old.get(k) != wanted.get(k)
                                    for k in ("host", "port", "dbname", "user"))
    changes = {name: {"old": old, "new": wanted}} if old != wanted else {
        name: {"reload": "PgBouncer ran an older entry"}}
    if __opts__["test"]:
        ret.update(result=None, changes=changes, comment=(
            f"pool {name} would be {'added' if old is None else 'changed'}"
            + (" (RELOAD" + (", WAIT_CLOSE" if moved else "") + ")" if running else "")))
        return ret

    def steps():
        __salt__["pgbouncer.write_config"](sections)
        if running:
            __salt__["pgbouncer.reload"]()
            if moved:
                __salt__["pgbouncer.wait_close"](name, timeout=wait_close_timeout)
            mismatch = __salt__["pgbouncer.database_mismatch"](name, wanted)
            if mismatch:
                raise CommandExecutionError(f"after RELOAD SHOW DATABASES shows {mismatch}")
        if track and old is None:
            __salt__["pgbouncer.set_owned"]("databases", name)

    return _apply(ret, changes, f"pool {name}", steps, (
        f"pool {name} {'added' if old is None else 'changed'}"
        + ((" and reloaded" + (", old server connections closed" if moved else ""))
           if running else "; PgBouncer is not running and reads it at start")))


def pool_absent(name, pillar_key=None):
    """No [databases] entry ``name``; applied with RELOAD.

    .. code-block:: yaml

        olddb:
          pgbouncer.pool_absent
    """
    ret = _ret(name)
    try:
        current = __salt__["pgbouncer.read_config"]()
        running = __salt__["pgbouncer.running"]()
        listed = running and any(row["name"] == name
                                 for row in __salt__["pgbouncer.show"]("databases"))
        if name not in current["databases"] and not listed:
            ret["comment"] = f"pool {name} is absent"
            return ret
        databases = {k: v for k, v in current["databases"].items() if k != name}
        sections = {**current, "databases": databases}
    except (SaltInvocationError, CommandExecutionError) as exc:
        return _fail(ret, exc, pillar_key)
    changes = {name: {"old": current["databases"].get(name), "new": None}}
    if __opts__["test"]:
        ret.update(result=None, changes=changes, comment=f"pool {name} would be removed")
        return ret

    def steps():
        __salt__["pgbouncer.write_config"](sections)
        if running:
            __salt__["pgbouncer.reload"]()
            if any(row["name"] == name for row in __salt__["pgbouncer.show"]("databases")):
                raise CommandExecutionError("SHOW DATABASES still lists it after RELOAD")

    return _apply(ret, changes, f"pool {name}", steps, f"pool {name} removed")


def user_present(name, password_pillar=None, stored="plain", salt=None, iterations=4096,
                 pillar_key=None, password_file=None, track=False):
    """An auth file entry: the plaintext, or a SCRAM-SHA-256 verifier made from it.

    password_pillar
        The pillar key holding the password. The plaintext is never an argument: it would
        land in the rendered SLS, the job cache and logs.
    password_file
        Instead of a pillar key: a file (mode 0600) whose first line is the password.
    stored
        ``plain`` or ``scram-sha-256``. A verifier lets PgBouncer log in to the server only
        when the server holds the identical verifier: give the server's ``salt`` (base64) and
        ``iterations`` then. Without a salt an existing verifier that matches the password is
        kept, else a random salt is used.
    track
        When this state adds the entry, record it as the pack's (``pgbouncer.owned``), so
        that ``pgbouncer.pruned`` removes it once it is no longer declared. An entry that
        already existed stays its maker's.

    .. code-block:: yaml

        app:
          pgbouncer.user_present:
            - password_pillar: vpn_gateway:pooler:users:app:password
    """
    ret = _ret(name)
    key = f"users:{name}"
    source = {"password_pillar": password_pillar, "password_file": password_file}
    try:
        __salt__["pgbouncer.check_user"](name, key="users", **source)
        if stored not in ("plain", "scram-sha-256"):
            raise SaltInvocationError(f"{key}:stored: {stored!r} is not plain or scram-sha-256")
        in_place = __salt__["pgbouncer.user_matches"](name, stored=stored, salt=salt,
                                                      iterations=iterations, **source)
        exists = name in __salt__["pgbouncer.read_auth_file"]()
    except (SaltInvocationError, CommandExecutionError) as exc:
        return _fail(ret, exc, pillar_key)
    if in_place:
        ret["comment"] = f"user {name} is in the auth file"
        return ret
    try:  # asked before the write: a console that does not answer leaves the file as it was
        live = __salt__["pgbouncer.running"]()
    except CommandExecutionError as exc:
        return _fail(ret, exc, pillar_key)
    changes = {name: {"password": "set" if not exists else "changed", "stored": stored}}
    if __opts__["test"]:
        ret.update(result=None, changes=changes,
                   comment=f"user {name} would be {'added' if not exists else 'updated'}")
        return ret

    def steps():
        __salt__["pgbouncer.set_user"](name, stored=stored, salt=salt, iterations=iterations,
                                       **source)
        if live:
            __salt__["pgbouncer.reload"]()
        if not __salt__["pgbouncer.user_matches"](name, stored=stored, salt=salt,
                                                  iterations=iterations, **source):
            raise CommandExecutionError("the auth file does not hold it after writing")
        if track and not exists:
            __salt__["pgbouncer.set_owned"]("users", name)

    return _apply(ret, changes, f"user {name}", steps,
                  f"user {name} {'added' if not exists else 'updated'}")


def pruned(name, users=None, databases=None, pillar_key=None):
    """Remove the users and pools this pack created (``user_present`` / ``pool_present``
    with ``track: true``, see ``pgbouncer.owned``) that are no longer declared, applied with
    RELOAD (no restart). What the pack did not create (an operator's own entry, one made
    without ``track``) is never touched.

    users, databases
        The declared user and pool names.

    .. code-block:: yaml

        pgbouncer-pruned:
          pgbouncer.pruned:
            - users: [app]
            - databases: [appdb]
    """
    ret = _ret(name)
    try:
        plan = __salt__["pgbouncer.prune_owned"](users or [], databases or [], test=True)
    except (SaltInvocationError, CommandExecutionError) as exc:
        return _fail(ret, exc, pillar_key)

    def as_changes(result):
        changes = {}
        if result["users"]:
            changes["users"] = {user: {"old": "in the auth file", "new": None}
                                for user in result["users"]}
        if result["databases"]:
            changes["databases"] = {pool: {"old": entry, "new": None}
                                    for pool, entry in result["databases"].items()}
        if changes:
            changes["apply"] = result["apply"]
        return changes

    changes = as_changes(plan)
    count = len(plan["users"]) + len(plan["databases"])
    what = ", ".join([f"user {user}" for user in plan["users"]]
                     + [f"pool {pool}" for pool in plan["databases"]])
    if __opts__["test"]:
        if changes:
            ret.update(result=None, changes=changes,
                       comment=f"would remove {what}: the pack created and pillar no longer "
                               f"declares {'it' if count == 1 else 'them'}")
        else:
            ret["comment"] = "nothing the pack created is undeclared"
        return ret
    applied = {}

    def steps():
        applied.update(as_changes(__salt__["pgbouncer.prune_owned"](
            users or [], databases or [], test=False)))

    _apply(ret, changes, "removing what the pack created and pillar no longer declares", steps,
           f"removed {what}" if changes else "nothing the pack created is undeclared")
    if ret["result"]:
        ret["changes"] = applied
    return ret
