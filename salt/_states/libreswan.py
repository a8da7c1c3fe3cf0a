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
"""

from salt.exceptions import CommandExecutionError

__virtualname__ = "libreswan"


def __virtual__():
    if "libreswan.apply_conn" in __salt__:
        return __virtualname__
    return (False, "libreswan state: the libreswan execution module is not loaded "
                   "(install libreswan; run saltutil.sync_all)")


def conn_present(name, psk_pillar, backup_psk_pillar=None, source=None, **spec):
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
        to_load = plan["conns"] if plan["conf_changed"] else plan["not_loaded"]
        if to_load:
            ret["changes"]["loaded"] = to_load
        if plan["stale_loaded"]:
            ret["changes"]["deleted"] = plan["stale_loaded"]
        ret["result"] = None if ret["changes"] else True
        ret["comment"] = (f"conn {name} would be updated" if ret["changes"]
                          else f"conn {name} is as declared")
        return ret
    ret.update(__salt__["libreswan.apply_conn"](name, psk_pillar, backup_psk_pillar, source,
                                                **spec))
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
