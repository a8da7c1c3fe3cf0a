"""States for Libreswan tunnels; the work is done by the ``libreswan`` module.

.. code-block:: yaml

    remote-db:
      libreswan.conn_present:
        - psk_pillar: vpn_gateway:tunnel:psk
        - source: vpn_gateway:tunnel
        - local: {address: 198.18.0.11, id: "@vpn-gw1", tunnel_ip: 198.19.10.1}
        - peers:
            primary: {address: 198.18.0.21, id: "@remote-gw-primary"}
            backup: {address: 198.18.0.22, id: "@remote-gw-backup"}
        - remote_subnets: [198.19.1.10/32, 198.19.1.11/32]
        - track: true

    gone-tunnels:
      libreswan.pruned:
        - conns: [remote-db]
"""
import json
import os

import salt.utils.atomicfile
import salt.utils.files
from salt.exceptions import CommandExecutionError

__virtualname__ = "libreswan"
# The tunnels conn_present created with ``track: true`` (names only, no secrets):
# ``pruned`` removes those no longer declared, and never a conn someone else made.
OWNED_FILE = "/var/lib/vpn-gateway/libreswan-conns.json"
CONF_DIR = "/etc/ipsec.d"  # the libreswan module's CONF_DIR (map.jinja: ipsec.conf_dir)


def __virtual__():
    if "libreswan.apply_conn" in __salt__:
        return __virtualname__
    return (False, "libreswan state: the libreswan execution module is not loaded "
                   "(install libreswan; run saltutil.sync_all)")


def _owned():
    path = __opts__.get("libreswan.owned_file", OWNED_FILE)
    try:
        with salt.utils.files.fopen(path, "r") as handle:
            record = json.load(handle)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise CommandExecutionError(
            f"cannot read the tunnel ownership record {path}: {exc} (fix or remove it; "
            "removing forgets which tunnels the pack created)") from None
    conns = record.get("conns") if isinstance(record, dict) else None
    if not isinstance(conns, list):
        raise CommandExecutionError(
            f"the tunnel ownership record {path} is not {{\"conns\": [...]}} (fix or remove "
            "it; removing forgets which tunnels the pack created)")
    return sorted({str(conn) for conn in conns})


def _set_owned(names, add=True):
    owned = set(_owned())
    new = sorted(owned | set(names) if add else owned - set(names))
    if new == sorted(owned):
        return
    path = __opts__.get("libreswan.owned_file", OWNED_FILE)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    with salt.utils.atomicfile.atomic_open(path, "w") as handle:
        json.dump({"conns": new}, handle, indent=1)
    os.chmod(path, 0o644)


def conn_present(name, psk_pillar, backup_psk_pillar=None, source=None, track=False, **spec):
    """
    Tunnel ``name``: conn NAME to ``peers:primary`` and, if ``peers:backup``
    is given, NAME-backup (``auto=add``) with the same selectors, in
    ``/etc/ipsec.d/NAME.conf`` and ``NAME.secrets``.

    psk_pillar
        Pillar key of the PSK (the PSK itself never passes through state
        arguments or output; a change shows as ``psk: changed``).
    backup_psk_pillar
        Pillar key of the backup peer's PSK (default: the primary's).
    source
        Pillar key the settings come from, used to name the key in errors
        (default ``conn NAME``).
    track
        When this state creates the tunnel (``NAME.conf`` did not exist), record it as
        the pack's, so that ``libreswan.pruned`` removes it once it is no longer
        declared. A conn file that already existed stays its maker's.
    local, peers, remote_subnets, ike, phase2alg, pfs, ikelifetime, salifetime,
    dpddelay, fragmentation, narrowing, auto, ike_version, allow_weak_algorithms
        See docs/libreswan.md.
    """
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    spec = {k: v for k, v in spec.items() if not k.startswith("__")}
    source = source or f"conn {name}"
    if __opts__["test"]:
        plan = __salt__["libreswan.plan_conn"](name, psk_pillar, backup_psk_pillar, source, **spec)
        if plan["errors"]:
            ret["comment"] = "\n".join(plan["errors"])
            return ret
        if plan["conf_changed"]:
            ret["changes"]["diff"] = plan["diff"]
        if plan["secrets_changed"]:
            ret["changes"]["psk"] = "changed"
        if plan["to_load"]:
            ret["changes"]["loaded"] = plan["to_load"]
        if plan["stale_loaded"]:
            ret["changes"]["deleted"] = plan["stale_loaded"]
        ret["result"] = None if ret["changes"] else True
        ret["comment"] = (f"conn {name} would be updated" if ret["changes"]
                          else f"conn {name} is as declared")
        return ret
    created = track and not os.path.exists(os.path.join(CONF_DIR, f"{name}.conf"))
    ret.update(__salt__["libreswan.apply_conn"](name, psk_pillar, backup_psk_pillar, source,
                                                **spec))
    if created and ret["result"] and os.path.exists(os.path.join(CONF_DIR, f"{name}.conf")):
        try:
            _set_owned([name])
        except (OSError, CommandExecutionError) as exc:
            ret.update(result=False, comment=f"{ret['comment']}; not recorded as the pack's: "
                                             f"{exc}")
    return ret


def nss_initialized(name="libreswan"):
    """
    Pluto's NSS database exists where this Libreswan puts it (``libreswan.nss_dir``:
    ipsec.conf's ``nssdir`` or the compiled default), created with ``ipsec
    checknss`` when missing. test=True on a host without libreswan predicts
    the creation (the directory is only known once libreswan is installed).
    The changes are ``{"nss": "initialized"}`` in both modes.
    """
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    if not __salt__["libreswan.installed"]():
        if __opts__["test"]:
            ret.update(result=None, changes={"nss": "initialized"},
                       comment="libreswan is not installed yet: its NSS database would be "
                               "initialized in its default directory")
        else:
            ret.update(result=False, comment="libreswan is not installed: install the "
                                             "libreswan package first (pkg.installed)")
        return ret
    directory = __salt__["libreswan.nss_dir"]()
    if __salt__["libreswan.nss_initialized"]():
        ret["comment"] = f"NSS database in {directory}"
        return ret
    if __opts__["test"]:
        ret.update(result=None, changes={"nss": "initialized"},
                   comment=f"NSS database would be initialized in {directory}")
        return ret
    try:
        created = __salt__["libreswan.init_nss"]()
    except CommandExecutionError as exc:
        ret.update(result=False, comment=str(exc))
        return ret
    ret.update(changes={"nss": "initialized"} if created["created"] else {},
               comment=f"NSS database initialized in {created['nss_dir']}")
    return ret


def conn_absent(name):
    """
    Tunnel ``name`` gone: NAME and NAME-backup down and deleted from pluto,
    ``NAME.conf`` and ``NAME.secrets`` removed.
    """
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    ret.update(__salt__["libreswan.remove_conn"](name, test=__opts__["test"]))
    if not ret["changes"]:
        ret["comment"] = f"conn {name} is absent"
    elif __opts__["test"]:
        ret["comment"] = f"conn {name} would be removed"
    return ret


def pruned(name="libreswan-pruned", conns=None):
    """
    Remove the tunnels this pack created (``conn_present`` with ``track: true``) that
    are not in ``conns`` (the declared tunnel names), as ``conn_absent`` does: ``NAME``
    and ``NAME-backup`` down and deleted from pluto, ``NAME.conf`` and ``NAME.secrets``
    removed, secrets re-read. Conns the pack did not create (an operator's own file, one
    made without ``track``) are never touched. The ownership record is
    ``/var/lib/vpn-gateway/libreswan-conns.json`` (names only); removing it forgets
    ownership. Changes: ``{NAME: {"removed": [files], "deleted": [conns]}}``, the same
    with test=True.
    """
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    try:
        gone = [conn for conn in _owned() if conn not in set(conns or [])]
    except CommandExecutionError as exc:
        ret.update(result=False, comment=str(exc))
        return ret
    test = __opts__["test"]
    failed, forget = [], []
    for conn in gone:
        try:
            removed = __salt__["libreswan.remove_conn"](conn, test=test)
        except CommandExecutionError as exc:
            failed.append(f"conn {conn}: {exc}")
            continue
        if removed.get("changes"):
            ret["changes"][conn] = removed["changes"]
        if removed.get("result") is False:
            failed.append(f"conn {conn}: {removed.get('comment')}")
        else:
            forget.append(conn)
    if not test and forget:
        _set_owned(forget, add=False)
    if failed:
        ret.update(result=False, comment="\n".join(failed))
    elif ret["changes"]:
        ret.update(result=None if test else True, comment=(
            f"{'would remove' if test else 'removed'} {', '.join(sorted(ret['changes']))}: "
            "created by the pack, no longer declared"))
    else:
        ret["comment"] = "no tunnel the pack created is undeclared"
    return ret
