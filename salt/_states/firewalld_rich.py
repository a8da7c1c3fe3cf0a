"""
States for firewalld rich rules, beside Salt core's ``firewalld.present`` and
``firewalld.service`` (this file shares their virtual name, so both load).

.. code-block:: yaml

    ike_from_primary:
      firewalld.rich_rule_present:
        - zone: public
        - source: 198.18.0.21
        - port: 500
        - protocol: udp
        - action: accept

    gateway_rules:
      firewalld.rich_rules_managed:
        - name: public
        - rules:
          - rule family="ipv4" source address="198.18.2.31" port port="6432" protocol="tcp" accept
        - prune_owned: true

Each state reads the zone once and writes each configuration (runtime,
permanent) at most once, whatever the number of rules. With ``aggregate:
True`` on ``rich_rule_present``/``rich_rule_absent`` states (or
``state_aggregate`` in the minion config), all of them for one zone in a run
are applied by the first one as one batch; the others then report that.
"""

__virtualname__ = "firewalld"

FUNCTIONS = ("rich_rule_present", "rich_rule_absent")
# The structured arguments of a rule (firewalld.normalize_rich_rule's).
RULE_ARGUMENTS = ("family", "priority", "source", "source_ipset", "source_invert", "destination",
                  "destination_ipset", "destination_invert", "port", "source_port", "protocol",
                  "service", "action", "reject_type", "limit", "log_prefix", "log_level",
                  "log_limit", "audit")


def __virtual__():
    if "firewalld.apply_rich_rules" in __salt__:
        return __virtualname__
    return (False, "the firewalld rich rule states need the firewalld_rich execution module "
                   "(run saltutil.sync_all, or install the vpn-gateway package)")


def _spec(name, rule, arguments):
    """A rule as the execution module takes it: a string or structured arguments."""
    structured = {k: v for k, v in arguments.items() if k in RULE_ARGUMENTS}
    if rule is not None:
        return rule
    return structured or name


def _key(spec):
    """The rule's normal form (raises on a bad rule)."""
    normalize = __salt__["firewalld.normalize_rich_rule"]
    return normalize(spec) if isinstance(spec, str) else normalize(**spec)


def rich_rule_present(name, zone=None, rule=None, batch=None, **structured):
    """
    Make sure a rich rule is in a zone, in runtime and permanent configuration.

    name
        A label, or the rule itself when neither ``rule`` nor structured
        arguments are given.
    zone
        The firewalld zone (default: firewalld's default zone).
    rule
        A rich rule string; or use structured arguments: family, priority,
        source, source_ipset, source_invert, destination, destination_ipset,
        destination_invert, port, source_port, protocol (with a port:
        tcp/udp/...; without: a protocol element such as esp), service, action
        (accept, reject, drop), reject_type, limit, log_prefix, log_level,
        log_limit, audit.
    """
    return _run(name, zone, "present", _spec(name, rule, structured), batch)


def rich_rule_absent(name, zone=None, rule=None, batch=None, **structured):
    """
    Make sure a rich rule is not in a zone (runtime and permanent), whatever
    its spelling there. Arguments as ``rich_rule_present``.
    """
    return _run(name, zone, "absent", _spec(name, rule, structured), batch)


def rich_rules_managed(name, rules=None, prune_owned=False, management_networks=None,
                       salt_master=None, ipsets=None):
    """
    Make a zone hold ``rules`` (runtime and permanent) in one batch, and the
    ``ipsets`` the rules take their sources from their entries.

    name
        The zone.
    rules
        Rich rule strings or mappings of structured arguments.
    prune_owned
        Remove the rules this pack added to the zone before and no longer
        declares, and the ipset entries it added and no longer declares;
        rules and entries anyone else added stay.
    management_networks, salt_master
        Refuse a rule set that would block, or stop allowing, SSH from these
        networks or the salt-master's ports 4505/4506.
    ipsets
        ``{name: {type: hash:ip|hash:net, family: inet|inet6, entries: [...]}}``.
        An entry added or removed is one call per configuration, no reload;
        creating an ipset needs firewalld's one reload (the changes say so).
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    try:
        applied = __salt__["firewalld.apply_rich_rules"](
            zone=name, present=rules or [], prune_owned=prune_owned,
            management_networks=management_networks, salt_master=salt_master,
            test=__opts__["test"], **({"ipsets": ipsets} if ipsets else {}))
    except Exception as exc:  # noqa: BLE001 - every failure is the state's failure
        return {**ret, "result": False, "comment": str(exc)}
    what = f"{len(rules or [])} rich rules" + (f", {len(ipsets)} ipsets" if ipsets else "")
    return _report(ret, applied, what)


def _run(name, zone, kind, spec, batch):
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    done = __context__.get("firewalld_rich.batched", {})
    try:
        key = _key(spec)
        if (zone, kind, key) in done:
            leader, changed = done[(zone, kind, key)]
            return {**ret, "result": None if __opts__["test"] and changed else True,
                    "comment": f"rule {kind} with the batch of state {leader}"
                               + (" (changed there)" if changed else " (no change)")}
        lists = {"present": [], "absent": [], **(batch or {})}
        lists[kind] = [spec, *lists[kind]]
        applied = __salt__["firewalld.apply_rich_rules"](
            zone=zone, present=lists["present"], absent=lists["absent"], test=__opts__["test"])
    except Exception as exc:  # noqa: BLE001 - every failure is the state's failure
        return {**ret, "result": False, "comment": str(exc)}
    changed = {_key(text) for side in ("runtime", "permanent") for op in ("add", "remove")
               for text in applied[side][op]}
    for which in ("present", "absent"):
        for item in (batch or {}).get(which, []):
            other = _key(item)
            done[(zone, which, other)] = (name, other in changed)
    __context__["firewalld_rich.batched"] = done
    what = f"rule {key!r}" if not batch else f"{1 + sum(map(len, batch.values()))} rich rules"
    return _report(ret, applied, what)


def _report(ret, applied, what):
    changes = {side: {op: applied[side][op] for op in ("add", "remove") if applied[side][op]}
               for side in ("runtime", "permanent")}
    changes = {side: ops for side, ops in changes.items() if ops}
    counts = [f"{side} +{len(applied[side]['add'])} -{len(applied[side]['remove'])}"
              for side in changes]
    if applied.get("ipsets"):
        changes["ipsets"] = applied["ipsets"]
        for name, change in applied["ipsets"].items():
            sides = "".join(f" {side} +{len(change[side].get('add', []))}"
                            f" -{len(change[side].get('remove', []))}"
                            for side in ("runtime", "permanent") if side in change)
            counts.append(f"ipset {name}" + (" created" if change.get("create") else "") + sides)
    if applied.get("reload"):
        changes["reload"] = applied["reload"]
    zone = applied["zone"]
    if not changes:
        return {**ret, "comment": f"{what}: zone {zone} already as declared"}
    counts = ", ".join(counts)
    if applied["test"]:
        source = f" (predicted from what it will load: {applied['predicted_from']})" \
            if applied.get("predicted_from") else ""
        return {**ret, "result": None, "changes": changes,
                "comment": f"{what}: zone {zone} would change: {counts}{source}"}
    reload = " (reloaded once to create ipsets)" if applied.get("reload") else " (no reload)"
    return {**ret, "changes": changes, "comment": f"{what}: zone {zone} changed: {counts}{reload}"}


def mod_aggregate(low, chunks, running):
    """Fold every other rich_rule_present/absent of the same zone into ``low``."""
    if low.get("fun") not in FUNCTIONS:
        return low
    batch = {"present": [], "absent": []}
    leader = __utils__["state.gen_tag"](low)
    for chunk in chunks:
        tag = __utils__["state.gen_tag"](chunk)
        if tag == leader or tag in running or chunk.get("__agg__") \
                or chunk.get("state") != "firewalld" or chunk.get("fun") not in FUNCTIONS \
                or chunk.get("zone") != low.get("zone"):
            continue
        batch[chunk["fun"].rpartition("_")[2]].append(
            _spec(chunk["name"], chunk.get("rule"), chunk))
        chunk["__agg__"] = True
    if batch["present"] or batch["absent"]:
        low["batch"] = batch
    return low
