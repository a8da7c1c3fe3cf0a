"""
Rotation of the gateway's own logs without duplicating another package's entry.

logrotate refuses a log that two entries name (``error: ...: duplicate log entry
for /var/log/salt/minion``) and fails its whole run, so no log gets rotated.
Salt's packages rotate ``/var/log/salt/minion`` themselves (``salt-common``),
and so do the EL PgBouncer packages (``/etc/logrotate.d/pgbouncer``). The
formula (``vpn_gateway.monitoring``) therefore lists a log only when no other
file in ``/etc/logrotate.d`` covers it (``uncovered``, at render time), and its
``check_cmd`` runs ``logrotate --debug`` over the whole configuration with the
candidate in place of the old file before it replaces anything
(docs/monitoring.md, "Log rotation").

Entries are read with Salt core's ``logrotate.show_conf``.
"""
import fnmatch
import glob
import os

__virtualname__ = "vpn_logrotate"
DIRECTORY = "/etc/logrotate.d"
# Files logrotate skips in an included directory (its default tabooext/taboopat list).
TABOO = (",v", ".cfsaved", ".disabled", ".dpkg-bak", ".dpkg-del", ".dpkg-dist", ".dpkg-new",
         ".dpkg-old", ".rpmnew", ".rpmorig", ".rpmsave", ".swp", ".ucf-dist", ".ucf-new",
         ".ucf-old", "~")


def __virtual__():
    return __virtualname__


def _overlaps(ours, theirs):
    """Whether two logrotate patterns (paths or globs) can name the same file: the same
    text, one matching the other, or an existing file matched by both."""
    if ours == theirs or fnmatch.fnmatchcase(ours, theirs) or fnmatch.fnmatchcase(theirs, ours):
        return True
    return any(fnmatch.fnmatchcase(path, theirs) for path in glob.glob(ours))


def _entries(path):
    """The log patterns one logrotate file names."""
    try:
        conf = __salt__["logrotate.show_conf"](conf_file=path)
    except (OSError, UnicodeDecodeError):
        return []
    names = (key.strip("\"'") for key in conf if isinstance(key, str))
    return [name for name in names if name.startswith("/")]


def covered(logs, directory=DIRECTORY, exclude="vpn-gateway"):
    """
    ``{log: file}`` for each of ``logs`` (paths or globs) that another file in
    ``directory`` (not ``exclude``, the pack's own) already rotates.

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw*' vpn_logrotate.covered '["/var/log/salt/minion"]'
    """
    found = {}
    if not os.path.isdir(directory):
        return found
    for entry in sorted(os.listdir(directory)):
        path = os.path.join(directory, entry)
        if (entry == exclude or entry.startswith(".") or entry.endswith(TABOO)
                or not os.path.isfile(path)):
            continue
        names = _entries(path)
        for log in logs:
            if log not in found and any(_overlaps(log, name) for name in names):
                found[log] = path
    return found


def uncovered(logs, directory=DIRECTORY, exclude="vpn-gateway"):
    """
    ``logs`` (in order, once each) without those another file in ``directory``
    already rotates (see ``covered``): what the pack's own entry may list.

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw*' vpn_logrotate.uncovered \
            '["/var/log/salt/minion", "/var/log/pgbouncer/*.log"]'
    """
    taken = covered(logs, directory, exclude)
    return [log for log in dict.fromkeys(logs) if log not in taken]
