"""
firewalld rich rules, compared on their meaning and applied in one batch per zone.

This file shares the virtual name ``firewalld`` with Salt core's
``salt/modules/firewalld.py``: the loader merges the functions of both, so
``firewalld.add_port`` (core) and ``firewalld.apply_rich_rules`` (here) live
side by side. A file named ``firewalld.py`` would replace core instead.

firewalld is driven through its D-Bus API with ``busctl`` (systemd's D-Bus
client, JSON output): a zone's rich rules are read with one call per
configuration (runtime, permanent) and written with one call each, however
many rules change. ``firewall-cmd`` costs a process and a round trip per
rule, and the ``firewall`` Python client exists only for Debian's own Python.

Rules are compared on a parsed, normalised form (``RichRule``): the order of
elements and attributes, quoting and spacing do not matter, and neither do
value spellings (``/32`` or a bare address, ``isakmp`` or ``500``, ``esp`` or
``50``). Rules this pack added are remembered per zone in ``OWNED_FILE`` so a
formula can remove the ones it no longer declares and never touch others.

Pure helpers (``_parse_rule``, ``_build_rule``, ``_plan_zone``, ``_check_guard``,
``_gateway_rules``) take plain values and are importable without Salt.
"""
import ipaddress
import json
import logging
import os
import functools
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from xml.etree import ElementTree

try:
    import salt.utils.atomicfile
    from salt.exceptions import CommandExecutionError, SaltInvocationError
except ImportError:  # imported by a unit test without Salt: the same contract
    class CommandExecutionError(Exception):
        pass

    class SaltInvocationError(Exception):
        pass

log = logging.getLogger(__name__)

__virtualname__ = "firewalld"

OWNED_FILE = "/var/lib/vpn-gateway/firewalld-rich-rules.json"
DBUS_NAME = "org.fedoraproject.FirewallD1"
DBUS_PATH = "/org/fedoraproject/FirewallD1"
# A runtime write costs firewalld one nftables transaction per rule
# (about 14 ms each at 1,000 rules): far above busctl's 25 s default.
BUSCTL_TIMEOUT = 600

FAMILIES = ("ipv4", "ipv6")
ACTIONS = ("accept", "reject", "drop")
PORT_PROTOCOLS = ("tcp", "udp", "sctp", "dccp")
LOG_LEVELS = ("emerg", "alert", "crit", "error", "warning", "notice", "info", "debug")
LIMIT_UNITS = {"s": "s", "second": "s", "m": "m", "minute": "m", "h": "h", "hour": "h",
               "d": "d", "day": "d"}
REJECT_TYPES = {
    "ipv4": ("icmp-host-prohibited", "host-prohib", "icmp-net-unreachable", "net-unreach",
             "icmp-host-unreachable", "host-unreach", "icmp-port-unreachable", "port-unreach",
             "icmp-protocol-unreachable", "prot-unreach", "icmp-net-prohibited", "net-prohib",
             "tcp-reset", "tcp-rst", "icmp-admin-prohibited", "admin-prohib"),
    "ipv6": ("icmp6-adm-prohibited", "adm-prohibited", "icmp6-no-route", "no-route",
             "icmp6-addr-unreachable", "addr-unreach", "icmp6-port-unreachable", "port-unreach",
             "tcp-reset"),
}
IPSET_MAX_NAME = 32  # firewalld's IPSET_MAXNAMELEN
# The ipsets this module manages: addresses (hash:ip) or networks (hash:net), per family.
IPSET_TYPES = ("hash:ip", "hash:net")
IPSET_FAMILIES = {"inet": "ipv4", "inet6": "ipv6"}
IPSET_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,%d}" % IPSET_MAX_NAME)
# The gateway's ipsets: the sources of its derived rules (inet; the ...6 ones inet6).
NODES_IPSET, PEERS_IPSET = "vgw-nodes", "vgw-peers"
# Up to this many changed entries of one ipset are written at runtime one D-Bus call each
# (addEntry/removeEntry: the others stay in the set); more in one setEntries, which
# firewalld applies as a flush and a refill of the set (new connections from its
# addresses meet the zone's default for those milliseconds, established ones do not).
RUNTIME_ENTRY_CALLS = 20
MAC_RE = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")
# Elements that say what traffic a rule is about; a rule holds at most one.
ELEMENTS = ("service", "port", "protocol", "source-port", "icmp-block", "icmp-type",
            "masquerade")


def __virtual__():
    # Loads without firewalld: on a fresh host the formula installs it in the
    # same run, and test=True must predict the rules before that (firewalld's
    # permanent configuration, or none yet). What needs the daemon says so.
    return __virtualname__


class RuleError(SaltInvocationError):
    """A rich rule that cannot be applied; the message names the fault and the fix."""


# -- parsed form ---------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """A source or destination: an address/network, an ipset or a MAC, maybe inverted."""

    kind: str  # address | ipset | mac
    value: str
    invert: bool = False

    def render(self, side):
        return f'{side}{" NOT" if self.invert else ""} {self.kind}="{self.value}"'


@dataclass(frozen=True)
class RichRule:
    """A rich rule in normal form: equal objects mean the same firewall rule."""

    action: str
    family: str = None
    priority: int = 0
    source: Match = None
    destination: Match = None
    element: tuple = ()  # (kind, attr, ...) e.g. ("port", "500", "udp")
    log: tuple = ()  # (prefix, level, limit)
    audit: tuple = ()  # (limit,) when auditing
    reject_type: str = None
    limit: str = None  # on the action

    def render(self):
        """The rule as firewalld itself prints it (same order and quoting)."""
        parts = ["rule"]
        if self.priority:
            parts.append(f'priority="{self.priority}"')
        if self.family:
            parts.append(f'family="{self.family}"')
        if self.source:
            parts.append(self.source.render("source"))
        if self.destination:
            parts.append(self.destination.render("destination"))
        if self.element:
            parts.append(_render_element(self.element))
        if self.log:
            prefix, level, limit = self.log
            parts.append("log" + (f' prefix="{prefix}"' if prefix else "")
                         + (f' level="{level}"' if level else "")
                         + (f' limit value="{limit}"' if limit else ""))
        if self.audit:
            parts.append("audit" + (f' limit value="{self.audit[0]}"' if self.audit[0] else ""))
        action = self.action
        if self.reject_type:
            action += f' type="{self.reject_type}"'
        if self.limit:
            action += f' limit value="{self.limit}"'
        parts.append(action)
        return " ".join(parts)


def _render_element(element):
    kind = element[0]
    if kind == "service":
        return f'service name="{element[1]}"'
    if kind in ("port", "source-port"):
        return f'{kind} port="{element[1]}" protocol="{element[2]}"'
    if kind == "protocol":
        return f'protocol value="{_protocol_name(element[1])}"'
    if kind in ("icmp-block", "icmp-type"):
        return f'{kind} name="{element[1]}"'
    return kind  # masquerade


# -- value normalisation ---------------------------------------------------------


# The IP protocols a gateway's rules name, as /etc/protocols (netbase) spells them:
# the rules render the same on a host without netbase (Debian 12's minbase has none).
KNOWN_PROTOCOLS = {"icmp": 1, "igmp": 2, "ipencap": 4, "tcp": 6, "udp": 17, "dccp": 33,
                   "ipv6": 41, "gre": 47, "esp": 50, "ah": 51, "ipv6-icmp": 58, "ospf": 89,
                   "pim": 103, "vrrp": 112, "l2tp": 115, "sctp": 132, "udplite": 136}


def _protocols(path="/etc/protocols"):
    """{name or alias: number} and {number: name}: KNOWN_PROTOCOLS, then /etc/protocols."""
    by_name = dict(KNOWN_PROTOCOLS)
    by_number = {number: name for name, number in KNOWN_PROTOCOLS.items()}
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                fields = line.split("#", 1)[0].split()
                if len(fields) >= 2 and fields[1].isdigit():
                    number = int(fields[1])
                    by_number.setdefault(number, fields[0])
                    for name in (fields[0], *fields[2:]):
                        by_name.setdefault(name.lower(), number)
    except OSError:
        pass
    return by_name, by_number


_PROTOCOLS = _protocols()


def _protocol_number(value):
    """``esp``, ``ESP`` or ``50`` -> 50; RuleError for an unknown protocol."""
    text = str(value).strip().lower()
    if text.isdigit() and 0 <= int(text) <= 255:
        return int(text)
    if text in _PROTOCOLS[0]:
        return _PROTOCOLS[0][text]
    raise RuleError(f"unknown protocol {value!r}: use a name from /etc/protocols (esp, ah, gre, "
                    "...) or a number 0-255")


def _protocol_name(number):
    return _PROTOCOLS[1].get(number, str(number))


def _normalize_address(value, family=None):
    """(family, text): ``198.18.0.2/32`` -> ``198.18.0.2``,
    ``198.18.0.5/24`` -> ``198.18.0.0/24``."""
    try:
        network = ipaddress.ip_network(str(value).strip(), strict=False)
    except ValueError:
        raise RuleError(f"bad address {value!r}: write an IPv4/IPv6 address or network such as "
                        "198.18.0.21 or 198.18.2.0/24") from None
    found = f"ipv{network.version}"
    if family and family != found:
        raise RuleError(f"family mismatch: {value} is an {found} address but the rule says "
                        f"family {family!r}; fix the family or the address")
    if network.prefixlen == network.max_prefixlen:
        return found, str(network.network_address)
    return found, str(network)


def _normalize_port(value, protocol):
    """``0500`` -> ``500``, ``isakmp`` -> ``500``, ``1000-2000`` stays.

    RuleError for an unknown name or a port out of range."""
    text = str(value).strip()
    # a range is numbers only: service names may hold a dash (ipsec-nat-t)
    ends = text.split("-", 1) if re.fullmatch(r"\d+-\d+", text) else [text]
    numbers = []
    for end in ends:
        if end.isdigit():
            number = int(end)
        else:
            try:
                number = socket.getservbyname(end, protocol)
            except OSError:
                raise RuleError(f"unknown port {end!r} for {protocol}: use a number 1-65535 or a "
                                "name from /etc/services") from None
        if not 1 <= number <= 65535:
            raise RuleError(f"port {value!r} out of range: ports are 1-65535")
        numbers.append(number)
    if len(numbers) == 2 and numbers[0] > numbers[1]:
        raise RuleError(f"port range {value!r} is reversed: write low-high")
    if len(numbers) == 2 and numbers[0] != numbers[1]:
        return f"{numbers[0]}-{numbers[1]}"
    return str(numbers[0])


def _normalize_limit(value):
    """``1/minute`` -> ``1/m``."""
    rate, _, unit = str(value).strip().partition("/")
    if not rate.isdigit() or int(rate) < 1 or unit.lower() not in LIMIT_UNITS:
        raise RuleError(f"bad limit {value!r}: write RATE/UNIT such as 10/m (unit s, m, h or d)")
    normal = f"{int(rate)}/{LIMIT_UNITS[unit.lower()]}"
    if normal == "1/d":  # firewalld: "too slow" (iptables has no 1/d)
        raise RuleError(f"bad limit {value!r}: firewalld refuses 1/d as too slow; use 2/d or 1/h")
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400}[normal[-1]]
    if 10000 * seconds // int(rate) == 0:  # firewalld 2.x: "too fast"
        raise RuleError(f"bad limit {value!r}: firewalld 2 refuses more than 10000 per second "
                        "as too fast")
    return normal


def _port_protocol(value):
    protocol = str(value or "").strip().lower()
    if protocol not in PORT_PROTOCOLS:
        raise RuleError(f"a port needs protocol one of {', '.join(PORT_PROTOCOLS)} "
                        f"(got {value!r})")
    return protocol


# -- parsing a rule string ---------------------------------------------------------


# A word, or key=value with the value bare, "double" or 'single' quoted.
# (shlex would do, at five times the cost: it matters at 1,000 rules.)
_TOKEN = re.compile(r"""\s*(?:
    ([^\s="']+)=(?:"([^"]*)"|'([^']*)'|([^\s"']+))   # key=value
    |([^\s="']+)                                   # word
)(?=\s|$)""", re.VERBOSE)


def _tokens(text):
    """[(word, {attr: value})]: each element keyword with the attributes after it."""
    text = str(text)
    out, position = [], 0
    while position < len(text.rstrip()):
        found = _TOKEN.match(text, position)
        if not found:
            raise RuleError(f"rule {text!r}: cannot read it from {text[position:].strip()!r} "
                            "(unbalanced quotes, or an attribute that is not key=\"value\"?)")
        position = found.end()
        key, *values, word = found.groups()
        if word is not None:
            out.append((word.lower(), {}))
            continue
        value = next(v for v in values if v is not None)
        if not out or not value:
            raise RuleError(f"rule {text!r}: attribute {key}={value!r} is not key=\"value\"")
        # as firewalld: no element takes family or priority, so they belong to
        # the rule wherever they stand
        attrs = out[0][1] if key.lower() in ("family", "priority") else out[-1][1]
        if key.lower() in attrs:
            raise RuleError(f"rule {text!r}: {key} given twice in {out[-1][0]}")
        attrs[key.lower()] = value
    return out


def _parse_rule(text, services=None):
    """Parse a firewalld rich rule string into a RichRule (normal form).

    ``services``: the firewalld service names to accept (None: any).
    """
    tokens = _tokens(text)
    if not tokens or tokens[0][0] != "rule":
        raise RuleError(f"rule {text!r}: a rich rule starts with 'rule'")
    spec = {"family": tokens[0][1].pop("family", None), "priority": tokens[0][1].pop("priority", 0)}
    _no_more(tokens[0], text)
    index, last = 1, None  # last: log, audit or action, which a following "limit" belongs to
    while index < len(tokens):
        word, attrs = tokens[index]
        invert = False
        if word in ("source", "destination") and index + 1 < len(tokens) \
                and tokens[index + 1][0] == "not" and not attrs:
            invert, attrs = True, tokens[index + 1][1]
            index += 1
        if word == "limit":
            if last is None:
                raise RuleError(f"rule {text!r}: 'limit' must follow log, audit or the action")
            _once(spec, f"{last}_limit", attrs.pop("value", None), text)
        elif word in ("source", "destination"):
            _once(spec, word, (attrs.pop("address", None), attrs.pop("ipset", None),
                               attrs.pop("mac", None), invert), text)
        elif word in ELEMENTS:
            if "element" in spec:
                raise RuleError(f"conflicting elements in {text!r}: a rule holds one of "
                                f"{', '.join(ELEMENTS)}; split it into one rule each")
            spec["element"] = (word, {k: attrs.pop(k, None)
                                      for k in ("name", "port", "protocol", "value")})
        elif word == "log":
            _once(spec, "log", (attrs.pop("prefix", None), attrs.pop("level", None)), text)
        elif word == "audit":
            _once(spec, "audit", True, text)
        elif word in ACTIONS:
            _once(spec, "action", word, text)
            spec["reject_type"] = attrs.pop("type", None)
        else:
            raise RuleError(f"rule {text!r}: unknown or unsupported element {word!r}")
        _no_more((word, attrs), text)
        last = {"log": "log", "audit": "audit", **dict.fromkeys(ACTIONS, "action")}.get(word)
        index += 1
    return _make(spec, services, text)


def _once(spec, key, value, text):
    if key in spec:
        raise RuleError(f"conflicting elements in {text!r}: {key.replace('_', ' ')} given twice")
    spec[key] = value


def _no_more(token, text):
    word, attrs = token
    if attrs:
        raise RuleError(f"rule {text!r}: unknown attribute(s) {', '.join(sorted(attrs))} "
                        f"for {word}")


# -- building from structured arguments ---------------------------------------------


def _build_rule(action=None, family=None, priority=0, source=None, source_ipset=None,
                source_invert=False, destination=None, destination_ipset=None,
                destination_invert=False, port=None, source_port=None, protocol=None,
                service=None, reject_type=None, limit=None, log_prefix=None, log_level=None,
                log_limit=None, audit=False, services=None):
    """A RichRule from structured arguments.

    ``protocol`` with ``port`` or ``source_port`` is the port's protocol (tcp,
    udp, ...); without them it is a protocol element (``esp``, ``ah``, a
    number). The family may be left out when an address gives it.
    """
    spec = {"family": family, "priority": priority, "action": action,
            "reject_type": reject_type, "action_limit": limit}
    if source is not None or source_ipset is not None:
        spec["source"] = (source, source_ipset, None, bool(source_invert))
    if destination is not None or destination_ipset is not None:
        spec["destination"] = (destination, destination_ipset, None, bool(destination_invert))
    elements = []
    if port is not None:
        elements.append(("port", {"port": port, "protocol": protocol}))
    if source_port is not None:
        elements.append(("source-port", {"port": source_port, "protocol": protocol}))
    if port is None and source_port is None and protocol is not None:
        elements.append(("protocol", {"value": protocol}))
    if service is not None:
        elements.append(("service", {"name": service}))
    if len(elements) > 1:
        raise RuleError("conflicting elements: a rule holds one of port, source_port, protocol "
                        "or service "
                        f"(got {' and '.join(e[0] for e in elements)}); "
                        "split it into one rule each")
    if elements:
        spec["element"] = elements[0]
    if log_prefix is not None or log_level is not None or log_limit is not None:
        spec["log"] = (log_prefix, log_level)
        spec["log_limit"] = log_limit
    if audit:
        spec["audit"] = True
    return _make(spec, services, "structured rule")


def _make(spec, services, what):
    """Validate a rule spec (from a string or arguments) into a RichRule."""
    family = spec.get("family")
    if family is not None:
        family = str(family).lower()
        if family not in FAMILIES:
            raise RuleError(f"{what}: family {family!r} is not one of {', '.join(FAMILIES)}")
    try:
        priority = int(spec.get("priority") or 0)
    except (TypeError, ValueError):
        raise RuleError(f"{what}: priority {spec.get('priority')!r} is not a number") from None
    if not -32768 <= priority <= 32767:
        raise RuleError(f"{what}: priority {priority} out of range -32768..32767")
    matches = {}
    for side in ("source", "destination"):
        if not spec.get(side):
            continue
        address, ipset, mac, invert = spec[side]
        given = [v for v in (address, ipset, mac) if v is not None]
        if len(given) != 1:
            raise RuleError(f"conflicting elements in {what}: a {side} takes one of address, "
                            "ipset or mac")
        if address is not None:
            family, value = _normalize_address(address, family)
            matches[side] = Match("address", value, invert)
        elif ipset is not None:
            if not str(ipset) or len(str(ipset)) > IPSET_MAX_NAME:
                raise RuleError(f"{what}: ipset name {ipset!r} must be 1-{IPSET_MAX_NAME} "
                                "characters (firewalld's limit)")
            matches[side] = Match("ipset", str(ipset), invert)
        else:
            if not MAC_RE.fullmatch(str(mac)):
                raise RuleError(f"{what}: mac {mac!r} is not a MAC address such as "
                                "00:11:22:33:44:55")
            matches[side] = Match("mac", str(mac).lower(), invert)
    element = _element(spec.get("element"), services, what)
    action = spec.get("action")
    if action is None:
        raise RuleError(f"{what}: missing action: add accept, reject or drop")
    action = str(action).lower()
    if action not in ACTIONS:
        raise RuleError(f"{what}: action {action!r} is not one of {', '.join(ACTIONS)}")
    reject_type = spec.get("reject_type")
    if reject_type is not None:
        if action != "reject":
            raise RuleError(f"{what}: a reject type needs action reject (got {action})")
        if family is None or reject_type not in REJECT_TYPES[family]:
            raise RuleError(f"{what}: reject type {reject_type!r} needs a family and one of "
                            f"{', '.join(REJECT_TYPES[family or 'ipv4'])}")
    log_entry = ()
    if spec.get("log"):
        prefix, level = spec["log"]
        if level is not None and str(level).lower() not in LOG_LEVELS:
            raise RuleError(f"{what}: log level {level!r} is not one of {', '.join(LOG_LEVELS)}")
        if prefix is not None and len(str(prefix)) > 127:
            raise RuleError(f"{what}: log prefix longer than 127 characters")
        log_entry = (prefix or None, str(level).lower() if level else None,
                     _normalize_limit(spec["log_limit"]) if spec.get("log_limit") else None)
    if not element and not matches and not priority:
        # firewalld: INVALID_RULE "no element, no source, no destination"
        raise RuleError(f"{what}: a rule needs a source, a destination, an element (port, "
                        "protocol, service, ...) or a priority: firewalld refuses a rule that "
                        "matches all traffic with none of them")
    return RichRule(
        action=action, family=family, priority=priority,
        source=matches.get("source"), destination=matches.get("destination"),
        element=element, log=log_entry,
        audit=((_normalize_limit(spec["audit_limit"]) if spec.get("audit_limit") else None),)
        if spec.get("audit") else (),
        reject_type=reject_type,
        limit=_normalize_limit(spec["action_limit"]) if spec.get("action_limit") else None,
    )


def _element(element, services, what):
    if not element:
        return ()
    kind, attrs = element
    if kind == "service":
        name = attrs.get("name")
        if not name:
            raise RuleError(f"{what}: service needs a name")
        if services is not None and name not in services:
            raise RuleError(f"{what}: unknown service {name!r}: use a firewalld service "
                            "(firewall-cmd --get-services) or a port")
        return ("service", name)
    if kind in ("port", "source-port"):
        if attrs.get("port") is None:
            raise RuleError(f"{what}: {kind} needs a port")
        protocol = _port_protocol(attrs.get("protocol"))
        return (kind, _normalize_port(attrs["port"], protocol), protocol)
    if kind == "protocol":
        if attrs.get("value") is None:
            raise RuleError(f"{what}: protocol needs a value such as esp")
        return ("protocol", _protocol_number(attrs["value"]))
    if kind == "icmp-type":
        if not attrs.get("name"):
            raise RuleError(f"{what}: icmp-type needs a name such as echo-request")
        return (kind, attrs.get("name"))
    # icmp-block and masquerade take no action in firewalld, and every rule here has one
    raise RuleError(f"{what}: {kind} is not supported here (firewalld refuses it with an "
                    "action, and this module's rules all have one): use icmp-type with drop or "
                    "reject instead of icmp-block")


def _to_rule(item, services=None):
    """A RichRule from a rule string or a dict of _build_rule's arguments."""
    if isinstance(item, RichRule):
        return item
    if isinstance(item, str):
        return _parse_rule(item, services)
    if isinstance(item, dict):
        if "rule" in item:
            return _parse_rule(item["rule"], services)
        code = _build_rule.__code__
        unknown = set(item) - set(code.co_varnames[:code.co_argcount])
        if unknown:
            raise RuleError(f"unknown rule argument(s) {', '.join(sorted(unknown))}")
        return _build_rule(services=services, **item)
    raise RuleError(f"a rule is a string or a mapping, not {type(item).__name__}")


@functools.lru_cache(maxsize=4096)
def _rule_key(text):
    """The comparison key of a rule firewalld holds: its normal form, or the raw
    text for a rule this module cannot parse (then it never equals ours)."""
    try:
        return _parse_rule(text).render()
    except RuleError:
        return "raw:" + text


# -- planning ------------------------------------------------------------------------


def _plan_zone(current, present=(), absent=(), owned=(), prune_owned=False):
    """What to change in a zone so it holds ``present`` and not ``absent``.

    ``current``: {"runtime": [rule text], "permanent": [rule text]} as firewalld
    holds them; ``present``/``absent``: RichRules; ``owned``: keys of rules this
    pack added. With ``prune_owned``, owned rules not in ``present`` go too.
    Returns {"runtime": {"add": [...], "remove": [...]}, "permanent": {...},
    "rules": {side: the full new list}, "owned": sorted keys owned afterwards}.
    Removals name firewalld's own text, so its string compare matches.
    """
    wanted = {rule.render(): rule for rule in present}
    unwanted = {rule.render() for rule in absent}
    both = sorted(set(wanted) & unwanted)
    if both:
        raise RuleError(f"conflicting rules: {both[0]!r} is declared both present and absent")
    if prune_owned:
        unwanted |= set(owned) - set(wanted)
    keys = {side: {text: _rule_key(text) for text in current.get(side, [])}
            for side in ("runtime", "permanent")}
    before = set(keys["runtime"].values()) | set(keys["permanent"].values())
    plan = {"rules": {}}
    _plan_sides(keys, wanted, unwanted, plan, plan["rules"])
    after = {_rule_key(text) for side in plan["rules"].values() for text in side}
    plan["owned"] = sorted(key for key in (set(owned) | (set(wanted) - before)) if key in after)
    return plan


def _plan_sides(keys, wanted, unwanted, plan, lists):
    """For each side of ``keys`` ({side: {text as held: key}}): into ``plan[side]`` the
    texts to remove (key unwanted, firewalld's own text) and to add (wanted, key not
    held); into ``lists[side]`` the full new list."""
    for side, held in keys.items():
        remove = [text for text, key in held.items() if key in unwanted]
        there = set(held.values())
        add = [text for text in wanted if text not in there]
        plan[side] = {"add": add, "remove": remove}
        lists[side] = [text for text in held if text not in remove] + add


def _has_changes(plan):
    return any(plan[side][op] for side in ("runtime", "permanent") for op in ("add", "remove"))


# -- ipsets: the sources of the derived rules ------------------------------------------


@dataclass(frozen=True)
class IPSet:
    """A declared ipset: its entries in normal form, sorted."""

    name: str
    type: str
    family: str  # inet | inet6
    entries: tuple

    def describe(self):
        return f"{self.type} family={self.family}"


@functools.lru_cache(maxsize=65536)
def _ipset_entry(value, ipset_type, family):
    """An entry in normal form (``198.18.2.31``, ``198.18.2.0/24``, IPv6 compressed);
    RuleError for a bad one, one of another family or a network in a hash:ip set."""
    _, text = _normalize_address(value, IPSET_FAMILIES[family])
    if ipset_type == "hash:ip" and "/" in text:
        raise RuleError(f"entry {value!r}: a hash:ip ipset holds addresses; use hash:net for "
                        "networks")
    if text in ("0.0.0.0", "::") or text.endswith("/0"):
        raise RuleError(f"entry {value!r}: firewalld refuses the any address in an ipset")
    return text


@functools.lru_cache(maxsize=65536)
def _entry_key(text, family):
    """The comparison key of an entry firewalld holds (raw text when unreadable)."""
    try:
        return _normalize_address(text, IPSET_FAMILIES.get(family))[1]
    except RuleError:
        return "raw:" + text


def _to_ipset(name, spec):
    """An IPSet from ``{type, family, entries}`` (type default hash:ip; family default:
    the entries', else inet)."""
    name = str(name)
    if not IPSET_NAME_RE.fullmatch(name):
        raise RuleError(f"ipset name {name!r}: 1-{IPSET_MAX_NAME} letters, digits, '_', '.' "
                        "or '-'")
    spec = dict(spec or {})
    unknown = set(spec) - {"type", "family", "entries"}
    if unknown:
        raise RuleError(f"ipset {name}: unknown key(s) {', '.join(sorted(unknown))} "
                        "(type, family, entries)")
    ipset_type = str(spec.get("type") or "hash:ip")
    if ipset_type not in IPSET_TYPES:
        raise RuleError(f"ipset {name}: type {ipset_type!r} is not one of "
                        f"{', '.join(IPSET_TYPES)}")
    entries = spec.get("entries") or []
    if not isinstance(entries, (list, tuple)):
        raise RuleError(f"ipset {name}: entries must be a list of addresses")
    family = spec.get("family")
    if family is None:
        first = next(iter(entries), None)
        family = "inet6" if first is not None and ":" in str(first) else "inet"
    if family not in IPSET_FAMILIES:
        raise RuleError(f"ipset {name}: family {family!r} is not one of inet, inet6")
    normal = set()
    for entry in entries:
        try:
            normal.add(_ipset_entry(str(entry), ipset_type, family))
        except RuleError as exc:
            raise RuleError(f"ipset {name}: {exc}") from None
    return IPSet(name, ipset_type, family, tuple(sorted(normal, key=_address_order)))


@functools.lru_cache(maxsize=65536)
def _address_order(text):
    network = ipaddress.ip_network(text, strict=False)
    return network.version, network.network_address, network.prefixlen


def _owned_ipsets(owned):
    """{ipset name: [entry keys]} from the ownership record."""
    return {key[len(IPSET_OWNED):]: value for key, value in owned.items()
            if key.startswith(IPSET_OWNED)}


IPSET_OWNED = "ipset:"  # the ownership record's key of an ipset's entries


def _plan_ipsets(current, declared, owned=None, prune_owned=False):
    """What to change in the ipsets so they hold the ``declared`` entries.

    ``current``: {name: {"type", "family", "runtime": [entry text] or None (no such
    ipset), "permanent": ...}} as firewalld holds them; ``declared``: {name: IPSet};
    ``owned``: {name: [entry keys this pack added]}. With ``prune_owned``, owned entries
    no longer declared go, also from ipsets no longer declared (the ipset itself stays:
    firewalld removes an ipset only from its permanent configuration, with a reload).
    Returns {name: {"create": type and family when it is not in the permanent
    configuration, "reload": when not at runtime, "family", "runtime"/"permanent": {add,
    remove}, "entries": {side: the full new list}, "owned": sorted keys afterwards}}.
    Entries are removed under firewalld's own text.
    """
    owned = owned or {}
    plan = {}
    for name in sorted(set(declared) | (set(owned) if prune_owned else set())):
        held = current.get(name) or {}
        want = declared.get(name)
        if want is not None and held.get("type") and (held["type"], held["family"]) \
                != (want.type, want.family):
            raise RuleError(f"ipset {name} exists in firewalld as {held['type']} family="
                            f"{held['family']}, not {want.describe()}: remove it "
                            f"(firewall-cmd --permanent --delete-ipset={name}; --reload) or "
                            "name another")
        if want is None and held.get("runtime") is None and held.get("permanent") is None:
            plan[name] = {"gone": True, "owned": []}  # forget it
            continue
        family = want.family if want else held.get("family", "inet")
        wanted = list(want.entries) if want else []
        unwanted = set(owned.get(name, [])) - set(wanted) if prune_owned else set()
        keys = {side: {text: _entry_key(text, family) for text in held.get(side) or []}
                for side in ("runtime", "permanent")}
        before = set(keys["runtime"].values()) | set(keys["permanent"].values())
        entry = {"family": family, "entries": {},
                 "create": want.describe() if want and held.get("permanent") is None else None,
                 "reload": bool(want) and held.get("runtime") is None}
        _plan_sides(keys, wanted, unwanted, entry, entry["entries"])
        after = {_entry_key(t, family) for side in entry["entries"].values() for t in side}
        entry["owned"] = sorted((set(owned.get(name, [])) | (set(wanted) - before)) & after,
                                key=_address_order_or_raw)
        plan[name] = entry
    return plan


def _address_order_or_raw(text):
    try:
        return (0, *_address_order(text))
    except ValueError:
        return (1, 0, 0, text)


def _ipset_changes(plan):
    """The ipsets' part of a state's changes: {name: {create?, runtime?, permanent?}}."""
    changes = {}
    for name, entry in plan.items():
        if entry.get("gone"):
            continue
        change = {"create": entry["create"]} if entry["create"] else {}
        for side in ("runtime", "permanent"):
            ops = {op: entry[side][op] for op in ("add", "remove") if entry[side][op]}
            if ops:
                change[side] = ops
        if change:
            changes[name] = change
    return changes


# -- the guard: management access must survive a change -------------------------------

SALT_MASTER_PORTS = "4505-4506"
SSH_PORT = "22"
# Where a minion's own end of its connections to the master lies (Linux's
# ip_local_port_range): packets from the master arrive on these ports.
EPHEMERAL_PORTS = "32768-60999"


@dataclass(frozen=True)
class Flow:
    """New TCP packets a rule set must let in: from ``network``, from source ports
    ``source_ports`` to destination ports ``ports`` (ranges as text)."""

    label: str
    network: object
    ports: str
    source_ports: str = "1-65535"


def _guard_flows(management_networks=(), masters=None):
    """The connections a rule set must not cut.

    SSH from each management network, and the salt-master's connection: the
    minion connects out to ports 4505/4506, so the master's packets come from
    those source ports. ``masters``: an address or name, or a list of them.
    """
    flows = []
    for network in management_networks or ():
        try:
            net = ipaddress.ip_network(str(network), strict=False)
        except ValueError:
            raise RuleError(f"vpn_gateway:firewall:management_networks: bad network {network!r}: "
                            "write one such as 198.18.1.0/24") from None
        flows.append(Flow(f"SSH from management network {net}", net, SSH_PORT))
    for master in [masters] if isinstance(masters, str) else masters or ():
        for address in _resolve(master):
            flows.append(Flow(f"the salt-master connection ({address} ports 4505/4506)",
                              ipaddress.ip_network(address), EPHEMERAL_PORTS, SALT_MASTER_PORTS))
    return flows


def _resolve(host):
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        return sorted({info[4][0] for info in infos})
    except OSError:
        raise RuleError(f"cannot resolve the salt-master {host!r}: set "
                        "vpn_gateway:firewall:salt_master to its address") from None


def _range(text):
    low, _, high = str(text).partition("-")
    return int(low), int(high or low)


def _covers(rule_ports, flow_ports, certain):
    """Whether a rule's port range takes in the flow's: all of it (certain) or any."""
    (rule_low, rule_high), (low, high) = _range(rule_ports), _range(flow_ports)
    if certain:
        return rule_low <= low and high <= rule_high
    return rule_low <= high and low <= rule_high


def _side_matches(match, net, certain, ipsets=None):
    """Whether a source match covers ``net``: all of it (certain) or any of it.

    ``ipsets``: {name: [entry]} of the ipsets whose entries are known (the declared
    ones as they will be, and those read from firewalld); another ipset or a MAC is
    unknowable here."""
    if match is None:
        return True
    if match.kind == "ipset" and ipsets is not None and match.value in ipsets:
        networks = []
        for entry in ipsets[match.value]:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:  # an entry we cannot read: the set is unknowable
                return not certain
    elif match.kind != "address":
        return not certain
    else:
        networks = [ipaddress.ip_network(match.value)]
    networks = [n for n in networks if n.version == net.version]
    # certain: all of net inside (or, inverted, all outside); else: any part of it
    if certain != match.invert:
        inside = any(net.subnet_of(n) for n in networks)
    else:
        inside = any(net.overlaps(n) for n in networks)
    return inside != match.invert


def _element_matches(element, flow, service_ports, certain):
    if not element:
        return True
    kind = element[0]
    if kind in ("port", "source-port"):
        ports = flow.ports if kind == "port" else flow.source_ports
        return element[2] == "tcp" and _covers(element[1], ports, certain)
    if kind == "protocol":
        return element[1] == socket.IPPROTO_TCP
    if kind == "service":
        if element[1] not in service_ports:
            return not certain
        return any(proto == "tcp" and _covers(ports, flow.ports, certain)
                   for ports, proto in service_ports[element[1]])
    return False  # icmp, masquerade: not TCP


def _rule_matches(rule, flow, service_ports, ipsets=None):
    """Does ``rule`` decide ``flow``? Deny rules count if they may match, accept
    rules only if they surely match (the guard errs on the side of refusing)."""
    certain = rule.action == "accept"
    if rule.family and rule.family != f"ipv{flow.network.version}":
        return False
    if rule.destination is not None and certain:
        return False
    return (_side_matches(rule.source, flow.network, certain, ipsets)
            and _element_matches(rule.element, flow, service_ports, certain))


def _verdict(rules, zone, flow, service_ports, ipsets=None):
    """("accept" | "deny" | "default", deciding rule or None) for a new packet.

    Follows firewalld's order: rich rules with a negative priority, then deny
    rules, then accept rules and the zone's services and ports, then positive
    priorities, then the zone's target.
    """
    def first(candidates):
        for rule in sorted(candidates, key=lambda r: r.priority):
            if _rule_matches(rule, flow, service_ports, ipsets):
                return ("accept" if rule.action == "accept" else "deny"), rule
        return None

    found = (first(r for r in rules if r.priority < 0)
             or first(r for r in rules if r.priority == 0 and r.action != "accept")
             or first(r for r in rules if r.priority == 0 and r.action == "accept"))
    if found:
        return found
    zone_elements = [("port", ports, proto) for ports, proto in zone.get("ports", [])]
    zone_elements += [("service", name) for name in zone.get("services", [])]
    if any(_element_matches(e, flow, service_ports, True) for e in zone_elements):
        return "accept", None
    found = first(r for r in rules if r.priority > 0)
    if found:
        return found
    return ("accept" if zone.get("target") == "ACCEPT" else "default"), None


def _check_guard(before, after, zone, flows, service_ports, ipsets_before=None,
                 ipsets_after=None):
    """RuleError naming every protected connection the change would cut.

    ``ipsets_before``/``ipsets_after``: {name: [entry]} of the ipsets known before and
    after the change (a rule's ipset source then matches by its entries)."""
    problems = []
    for flow in flows:
        now, rule = _verdict(after, zone, flow, service_ports, ipsets_after)
        if now == "deny":
            problems.append(f"{flow.label} would be blocked by {rule.render()!r}")
        elif now != "accept" \
                and _verdict(before, zone, flow, service_ports, ipsets_before)[0] == "accept":
            problems.append(f"{flow.label} is allowed now and would no longer be")
    if problems:
        raise RuleError("refused, the rule set would cut management access: "
                        + "; ".join(problems)
                        + " (allow it with a rule, or fix "
                        "vpn_gateway:firewall:management_networks)")


def _parsed(texts):
    rules = []
    for text in texts:
        try:
            rules.append(_parse_rule(text))
        except RuleError:
            log.debug("firewalld: the guard ignores a rule it cannot parse: %s", text)
    return rules


# -- the gateway's rules from pillar ---------------------------------------------------

# From each remote gateway: IKE, NAT-T and ESP itself (a port of None: a protocol).
PEER_TRAFFIC = (("500", "udp"), ("4500", "udp"), (None, "esp"))


def _gateway_sources(peers, nodes):
    """(peer addresses, node addresses) from pillar, each [(pillar key, address)];
    RuleError with the key at fault."""
    if not isinstance(peers, dict) or not peers:
        raise RuleError("vpn_gateway:tunnel:peers is missing or empty: declare primary and "
                        "backup with an address each")
    if not isinstance(nodes, (list, tuple)):
        raise RuleError("vpn_gateway:kubernetes:nodes must be a list of node IP addresses")
    found = []
    for name in sorted(peers):
        key = f"vpn_gateway:tunnel:peers:{name}:address"
        address = (peers[name] or {}).get("address")
        if not address:
            raise RuleError(f"{key} is missing: set the remote gateway's public address")
        found.append((key, address))
    return found, [(f"vpn_gateway:kubernetes:nodes[{i}]", node) for i, node in enumerate(nodes)]


def _gateway_ports(pooler_port, node_exporter_port):
    ports = [("vpn_gateway:pooler:listen_port", pooler_port)]
    if node_exporter_port:
        ports.append(("vpn_gateway:firewall:node_exporter_port", node_exporter_port))
    for key, port in ports:
        _from_pillar(key, _normalize_port, port, "tcp")
    return [port for _, port in ports]


def _gateway_ipsets(peers, nodes):
    """The gateway's ipsets from pillar: ``vgw-peers`` (the remote gateways) and
    ``vgw-nodes`` (the Kubernetes nodes), hash:ip family inet, always; ``vgw-peers6``
    and ``vgw-nodes6`` (inet6) when an address of that family is declared.
    {name: {type, family, entries}}; RuleError with the pillar key at fault."""
    peer_sources, node_sources = _gateway_sources(peers, nodes)
    ipsets = {}
    for base, sources in ((PEERS_IPSET, peer_sources), (NODES_IPSET, node_sources)):
        by_family = {"inet": [], "inet6": []}
        for key, address in sources:
            family, text = _from_pillar(key, _normalize_address, address)
            if "/" in text:
                raise RuleError(f"{key}: {address!r} is a network: write the address")
            by_family["inet6" if family == "ipv6" else "inet"].append(text)
        for family, entries in by_family.items():
            if family == "inet" or entries:
                name = base + ("6" if family == "inet6" else "")
                ipsets[name] = {"type": "hash:ip", "family": family,
                                "entries": sorted(set(entries), key=_address_order)}
    return ipsets


def _gateway_rules(peers, nodes, pooler_port, node_exporter_port=None, salt_master=None,
                   ipsets=True):
    """The gateway's rich rules, as normal-form strings, from pillar values.

    IKE (udp 500), NAT-T (udp 4500) and ESP from the remote gateways in ``peers``
    ({name: {address: ...}}); the pooler port and the node exporter port from the
    Kubernetes nodes in ``nodes``; the salt-master's packets from its ports 4505/4506
    (``salt_master``: its address or addresses).

    ``ipsets`` (the formula's way): the sources are the ipsets of ``_gateway_ipsets``,
    so the rule count does not grow with the cluster (five rules per family and one per
    master). Without it, one rule per address and port (the pack's way before ipsets;
    the benchmark compares the two).
    """
    peer_sources, node_sources = _gateway_sources(peers, nodes)
    ports = _gateway_ports(pooler_port, node_exporter_port)
    rules = []
    if ipsets:
        for name, ipset in _gateway_ipsets(peers, nodes).items():
            family = IPSET_FAMILIES[ipset["family"]]
            if name.startswith(PEERS_IPSET):
                rules += [_accept_set(name, family, port, proto) for port, proto in PEER_TRAFFIC]
            else:
                rules += [_accept_set(name, family, port) for port in ports]
        return rules + _master_rules(salt_master)
    for key, address in peer_sources:
        rules += [_from_pillar(key, _accept, address, port, proto) for port, proto in PEER_TRAFFIC]
    for key, node in node_sources:
        rules += [_from_pillar(key, _accept, node, port) for port in ports]
    return rules + _master_rules(salt_master)


def _accept_set(ipset, family, port, protocol="tcp"):
    return _build_rule(family=family, source_ipset=ipset, port=port, protocol=protocol,
                       action="accept").render()


def _master_rules(masters):
    """Accept the salt-master's side of the minion's connections to it.

    Conntrack normally lets those packets in as established, but when
    firewalld starts on a host whose kernel tracked nothing before, the
    minion's open connections are picked up mid-stream as new and would be
    rejected until the minion reconnects. The master commands the minion
    anyway, so opening to its source ports gives it nothing new.
    """
    return [_build_rule(source=str(flow.network), source_port=flow.source_ports,
                        protocol="tcp", action="accept").render()
            for flow in _guard_flows((), masters)]


def _accept(source, port, protocol="tcp"):
    return _build_rule(source=source, port=port, protocol=protocol, action="accept").render()


def _from_pillar(key, function, *args):
    """``function(*args)``, its RuleError prefixed with the pillar key at fault."""
    try:
        return function(*args)
    except RuleError as exc:
        raise RuleError(f"{key}: {exc}") from None


# -- firewalld over D-Bus ----------------------------------------------------------------


def _busctl(path, method, signature=None, *args, interface=""):
    """Call a firewalld D-Bus method; its unwrapped return values (a list)."""
    if not shutil.which("busctl"):
        raise CommandExecutionError("talking to firewalld needs busctl (Debian package systemd)")
    argv = ["busctl", "--json=short", f"--timeout={BUSCTL_TIMEOUT}", "call", DBUS_NAME, path,
            DBUS_NAME + interface, method]
    if signature:
        argv += [signature, *map(str, args)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=BUSCTL_TIMEOUT + 30,
                          check=False)
    if proc.returncode:
        reason = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        if "was not provided" in reason or "not activatable" in reason:
            reason += " (is firewalld running? systemctl start firewalld)"
        raise CommandExecutionError(f"firewalld {method}: {reason}")
    return json.loads(proc.stdout)["data"] if proc.stdout.strip() else []


def _settings(data):
    """An a{sv} reply as a plain dict (busctl wraps each value with its type)."""
    return {key: value["data"] for key, value in data[0].items()}


def _rules_signature(rules):
    return ["rules_str", "as", len(rules), *rules]


class _Zone:
    """One zone's runtime settings and permanent rich rules, read in three calls."""

    def __init__(self, name=None):
        self.name = name or _busctl(DBUS_PATH, "getDefaultZone")[0]
        try:
            self.runtime = _settings(_busctl(DBUS_PATH, "getZoneSettings2", "s", self.name,
                                             interface=".zone"))
            self.config_path = _busctl(DBUS_PATH + "/config", "getZoneByName", "s", self.name,
                                       interface=".config")[0]
        except CommandExecutionError as exc:
            if "INVALID_ZONE" in str(exc):
                raise RuleError(f"zone {self.name!r} does not exist in firewalld: create it "
                                "or name another (firewall-cmd --get-zones)") from None
            raise
        permanent = _settings(_busctl(self.config_path, "getSettings2",
                                      interface=".config.zone"))
        self.rules = {"runtime": self.runtime.get("rules_str", []),
                      "permanent": permanent.get("rules_str", [])}

    def write(self, side, rules):
        """Replace the zone's rich rules on one side; firewalld applies the difference."""
        if side == "runtime":
            _busctl(DBUS_PATH, "setZoneSettings2", "sa{sv}", self.name, 1,
                    *_rules_signature(rules), interface=".zone")
        else:
            _busctl(self.config_path, "update2", "a{sv}", 1, *_rules_signature(rules),
                    interface=".config.zone")


IPSET_SIGNATURE = "(ssssa{ss}as)"  # version, short, description, type, options, entries


def _ipset_struct(settings):
    """(type, family, entries) from an ipset's settings struct as busctl prints it."""
    _, _, _, ipset_type, options, entries = settings
    return ipset_type, (options or {}).get("family", "inet"), list(entries)


class _IPSets:
    """The ipsets ``names`` as firewalld holds them at runtime and in permanent
    configuration: two calls to list them, then one (runtime) and two (permanent) per
    ipset that exists."""

    def __init__(self, names):
        self.paths = {}
        self.held = {}
        if not names:
            return
        runtime = set(_busctl(DBUS_PATH, "getIPSets", interface=".ipset")[0])
        permanent = set(_busctl(DBUS_PATH + "/config", "getIPSetNames", interface=".config")[0])
        for name in sorted(names):
            held = {"runtime": None, "permanent": None}
            if name in runtime:
                held["type"], held["family"], held["runtime"] = _ipset_struct(_busctl(
                    DBUS_PATH, "getIPSetSettings", "s", name, interface=".ipset")[0])
            if name in permanent:
                path = _busctl(DBUS_PATH + "/config", "getIPSetByName", "s", name,
                               interface=".config")[0]
                self.paths[name] = path
                held["type"], held["family"], held["permanent"] = _ipset_struct(_busctl(
                    path, "getSettings", interface=".config.ipset")[0])
            self.held[name] = held

    def create(self, ipset, entries):
        """Create ``ipset`` (an IPSet) in the permanent configuration with ``entries``."""
        self.paths[ipset.name] = _busctl(
            DBUS_PATH + "/config", "addIPSet", "s" + IPSET_SIGNATURE, ipset.name, "",
            ipset.name, "vpn-gateway: sources of the gateway's rich rules", ipset.type,
            1, "family", ipset.family, len(entries), *entries, interface=".config")[0]

    def delete(self, name):
        _busctl(self.paths.pop(name), "remove", interface=".config.ipset")

    def write(self, side, name, entries, before=()):
        """Make the ipset hold ``entries`` on one side: permanent in one call; runtime
        one call per changed entry (``before``: what it holds), or one setEntries for
        more than RUNTIME_ENTRY_CALLS changes."""
        if side == "permanent":
            _busctl(self.paths[name], "setEntries", "as", len(entries), *entries,
                    interface=".config.ipset")
            return
        held, wanted = set(before), set(entries)
        add = [e for e in entries if e not in held]
        remove = [e for e in before if e not in wanted]
        if len(add) + len(remove) > RUNTIME_ENTRY_CALLS:
            _busctl(DBUS_PATH, "setEntries", "sas", name, len(entries), *entries,
                    interface=".ipset")
            return
        for entry in add:
            _busctl(DBUS_PATH, "addEntry", "ss", name, entry, interface=".ipset")
        for entry in remove:
            _busctl(DBUS_PATH, "removeEntry", "ss", name, entry, interface=".ipset")


IPSET_DIRS = ("/etc/firewalld/ipsets", "/usr/lib/firewalld/ipsets")  # first wins


class _OfflineIPSets:
    """The ipsets as firewalld will hold them once it starts (its permanent
    configuration: the ipset files it will load; none when it is not installed)."""

    def __init__(self, names, dirs=IPSET_DIRS):
        self.held = {}
        for name in sorted(names or ()):
            held = {"runtime": None, "permanent": None}
            for folder in dirs:
                try:
                    root = ElementTree.parse(os.path.join(folder, f"{name}.xml")).getroot()
                except FileNotFoundError:
                    continue
                except (OSError, ElementTree.ParseError) as exc:
                    raise CommandExecutionError(f"cannot read firewalld's ipset {name}: "
                                                f"{exc}") from None
                options = {o.get("name"): o.get("value") for o in root.iter("option")}
                entries = [e.text.strip() for e in root.iter("entry") if e.text]
                held = {"type": root.get("type"), "family": options.get("family") or "inet",
                        "runtime": list(entries), "permanent": entries}
                break
            self.held[name] = held


def _running():
    """Whether firewalld holds its name on the system bus (it does once its unit is
    active: the unit is Type=dbus)."""
    if not shutil.which("busctl"):
        return False
    proc = subprocess.run(["busctl", "--json=short", "call", "org.freedesktop.DBus",
                           "/org/freedesktop/DBus", "org.freedesktop.DBus", "NameHasOwner", "s",
                           DBUS_NAME], capture_output=True, text=True, timeout=60, check=False)
    return not proc.returncode and json.loads(proc.stdout)["data"] == [True]


# -- firewalld not running: what it will load when it starts ----------------------------

FIREWALLD_CONF = "/etc/firewalld/firewalld.conf"
SERVICE_DIRS = ("/etc/firewalld/services", "/usr/lib/firewalld/services")  # first wins


class _OfflineZone:
    """A zone as firewalld will hold it at runtime and in permanent configuration
    once it starts, for ``test=True`` while it does not run (the formula installs
    or starts it earlier in the same run): its permanent configuration, read with
    ``firewall-offline-cmd`` (firewalld's own reader of its files, which changes
    nothing when it only lists); or, firewalld not installed yet, an empty zone:
    a freshly installed firewalld holds no rich rules. Never written."""

    def __init__(self, name=None):
        if not shutil.which("firewall-offline-cmd"):
            self.source = "firewalld is not installed yet: an empty zone"
            self.name = name or _default_zone()
            self.runtime, rules = {}, []
        else:
            self.source = "firewalld is not running: its permanent configuration"
            self.name = name or _default_zone()
            self.runtime, rules = _parse_listing(_offline_cmd(f"--zone={self.name}",
                                                              "--list-all"))
        self.rules = {"runtime": list(rules), "permanent": list(rules)}


def _default_zone(path=FIREWALLD_CONF):
    """firewalld.conf's DefaultZone (firewalld's own default: public)."""
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.strip().partition("=")
                if key.strip() == "DefaultZone" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return "public"


def _offline_cmd(*args):
    proc = subprocess.run(["firewall-offline-cmd", *args], capture_output=True, text=True,
                          timeout=120, check=False)
    if proc.returncode:
        reason = (proc.stderr.strip() or proc.stdout.strip() or "no message").splitlines()[-1]
        if "INVALID_ZONE" in reason:
            raise RuleError(f"zone {args[0].partition('=')[2]!r} does not exist in firewalld: "
                            "create it or name another (firewall-offline-cmd --get-zones)")
        raise CommandExecutionError(f"firewall-offline-cmd {' '.join(args)}: {reason}")
    return proc.stdout


def _parse_listing(text):
    """({target, services, ports}, [rich rule]) from ``--list-all`` output: two-space
    indented ``key: value`` lines, rich rules tab-indented after ``rich rules:``."""
    settings, rules = {}, []
    for line in text.splitlines():
        if line.startswith("\t"):
            if line.strip():
                rules.append(line.strip())
            continue
        key, colon, value = line.strip().partition(":")
        if not colon or not line.startswith(" "):
            continue
        if key == "target":
            settings["target"] = value.strip()
        elif key == "services":
            settings["services"] = value.split()
        elif key == "ports":
            settings["ports"] = [tuple(p.split("/", 1)) for p in value.split() if "/" in p]
    return settings, rules


def _offline_services():
    """Service names firewalld will know (None: not installed, any name goes)."""
    if not shutil.which("firewall-offline-cmd"):
        return None
    return {name[:-4] for folder in SERVICE_DIRS if os.path.isdir(folder)
            for name in os.listdir(folder) if name.endswith(".xml")}


def _offline_service_ports(names):
    ports = {}
    for name in names:
        for folder in SERVICE_DIRS:
            try:
                root = ElementTree.parse(os.path.join(folder, f"{name}.xml")).getroot()
            except (OSError, ElementTree.ParseError):
                continue
            ports[name] = [(p.get("port"), p.get("protocol")) for p in root.iter("port")]
            break
    return ports


def _services():
    return set(_busctl(DBUS_PATH, "listServices")[0])


def _service_ports(names):
    ports = {}
    for name in names:
        try:
            settings = _settings(_busctl(DBUS_PATH, "getServiceSettings2", "s", name))
        except CommandExecutionError:
            continue  # unknown to firewalld: the guard treats it as unknowable
        ports[name] = [tuple(p) for p in settings.get("ports", [])]
    return ports


# -- ownership record ---------------------------------------------------------------------


def _read_owned(path=OWNED_FILE):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CommandExecutionError(f"cannot read the rich rule ownership record {path}: {exc} "
                                    "(fix or remove it; removing forgets which rules are ours)")


def _write_owned(zone, keys, path=OWNED_FILE):
    owned = _read_owned(path)
    if keys:
        owned[zone] = keys
    else:
        owned.pop(zone, None)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    with salt.utils.atomicfile.atomic_open(path, "w") as handle:
        json.dump(owned, handle, indent=1, sort_keys=True)
    os.chmod(path, 0o644)


# -- public functions -----------------------------------------------------------------------


def normalize_rich_rule(rule=None, **structured):
    """
    Return a rich rule in normal form, as this module compares and writes it.

    rule
        A rich rule string; or leave it out and pass structured arguments
        (family, priority, source, source_ipset, source_invert, destination,
        destination_ipset, destination_invert, port, source_port, protocol,
        service, action, reject_type, limit, log_prefix, log_level, log_limit,
        audit).

    CLI Example:

    .. code-block:: bash

        salt '*' firewalld.normalize_rich_rule \
            'rule source address=198.18.0.21/32 port port=isakmp protocol=UDP accept'
        salt '*' firewalld.normalize_rich_rule source=198.18.0.21 protocol=esp action=accept
    """
    structured = {k: v for k, v in structured.items() if not k.startswith("__")}
    return _to_rule(rule if rule is not None else structured).render()


def zone_rich_rules(zone=None):
    """
    Return a zone's rich rules: runtime, permanent (as firewalld holds them),
    drift between the two, and the ones this pack added (normal form); and the
    ipset entries this pack added, per ipset.

    zone
        The firewalld zone; default: firewalld's default zone.

    CLI Example:

    .. code-block:: bash

        salt '*' firewalld.zone_rich_rules public
    """
    found = _Zone(zone)
    runtime = {_rule_key(t) for t in found.rules["runtime"]}
    permanent = {_rule_key(t) for t in found.rules["permanent"]}
    record = _read_owned()
    return {
        "zone": found.name,
        "runtime": sorted(found.rules["runtime"]),
        "permanent": sorted(found.rules["permanent"]),
        "runtime_only": sorted(runtime - permanent),
        "permanent_only": sorted(permanent - runtime),
        "owned": record.get(found.name, []),
        "owned_ipset_entries": _owned_ipsets(record),
    }


def apply_rich_rules(zone=None, present=None, absent=None, prune_owned=False,
                     management_networks=None, salt_master=None, ipsets=None, test=False):
    """
    Make a zone hold the ``present`` rich rules and none of the ``absent``
    ones, and the ``ipsets`` their entries, in runtime and permanent
    configuration, without a reload: one firewalld call per configuration that
    changes, however many rules; an ipset entry is one call per configuration.

    zone
        The firewalld zone; default: firewalld's default zone.
    present, absent
        Lists of rules: rich rule strings, or mappings of structured arguments
        (see ``firewalld.normalize_rich_rule``).
    prune_owned
        Also remove the rules this pack added to the zone earlier and
        ``present`` no longer declares, and the ipset entries it added and no
        longer declares. Rules and entries others added are never touched.
    management_networks, salt_master
        Refuse the change (before anything changes) if it would block, or stop
        allowing, SSH from these networks or the master's ports 4505/4506.
    ipsets
        ``{name: {type: hash:ip|hash:net, family: inet|inet6, entries: [...]}}``:
        ipsets the rules use as sources. An ipset firewalld does not hold yet is
        created in its permanent configuration and firewalld is reloaded once
        (firewalld creates ipsets nowhere else); the zone's runtime-only rich
        rules are written back after that reload.
    test
        Only say what would change; touches nothing. While firewalld does not
        run, predicts what the first real run (after the formula installs or
        starts it) will change: against its permanent configuration, or an
        empty zone when it is not installed yet (``predicted_from`` says which;
        service names are then not checked).

    Returns the changes per configuration (``runtime``/``permanent``: ``add``
    and ``remove``), per ipset (``ipsets``) and ``reload`` when one is needed;
    raises on bad input or when firewalld does not end up as planned.

    CLI Example:

    .. code-block:: bash

        salt '*' firewalld.apply_rich_rules public \
            present='["rule family=ipv4 source address=198.18.0.21 protocol value=esp accept"]'
        salt '*' firewalld.apply_rich_rules public \
            present='["rule family=ipv4 source ipset=vgw-peers protocol value=esp accept"]' \
            ipsets='{"vgw-peers": {"entries": ["198.18.0.21", "198.18.0.22"]}}'
    """
    live = not test or _running()
    services = _services() if live else _offline_services()
    present = [_to_rule(item, services) for item in present or []]
    absent = [_to_rule(item, services) for item in absent or []]
    if ipsets is not None and not isinstance(ipsets, dict):
        raise RuleError("ipsets must be a mapping {name: {type, family, entries}}")
    declared = {str(name): _to_ipset(name, spec) for name, spec in (ipsets or {}).items()}
    found = _Zone(zone) if live else _OfflineZone(zone)
    record = _read_owned()
    owned = record.get(found.name, [])
    owned_sets = _owned_ipsets(record)
    plan = _plan_zone(found.rules, present, absent, owned, prune_owned)
    names = set(declared) | (set(owned_sets) if prune_owned else set())
    sets = _IPSets(names) if live else _OfflineIPSets(names)
    plan["ipsets"] = _plan_ipsets(sets.held, declared, owned_sets, prune_owned)
    flows = _guard_flows(management_networks, salt_master)
    if flows:
        after = _parsed(plan["rules"]["runtime"])
        services_used = {r.element[1] for r in after if r.element[:1] == ("service",)}
        service_ports = _service_ports if live else _offline_service_ports
        known = {name: held["runtime"] for name, held in sets.held.items()
                 if held.get("runtime") is not None}
        planned = {**known, **{name: entry["entries"]["runtime"]
                               for name, entry in plan["ipsets"].items() if not entry.get("gone")}}
        _check_guard(_parsed(found.rules["runtime"]), after, found.runtime, flows,
                     service_ports(services_used | set(found.runtime.get("services", []))),
                     known, planned)
    result = {"zone": found.name, "test": bool(test), "owned": plan["owned"],
              **{side: plan[side] for side in ("runtime", "permanent")}}
    changed_sets = _ipset_changes(plan["ipsets"])
    if changed_sets:
        result["ipsets"] = changed_sets
    reloads = [name for name, entry in plan["ipsets"].items() if entry.get("reload")]
    if reloads:
        result["reload"] = (f"firewalld reloaded once: it creates ipset(s) {', '.join(reloads)} "
                            "only in its permanent configuration")
    if not live:
        result["predicted_from"] = found.source
    if test or not (_has_changes(plan) or changed_sets or reloads):
        return result
    _write_all(found, sets, plan)
    for name, entry in plan["ipsets"].items():
        _write_owned(IPSET_OWNED + name, entry["owned"])
    if _has_changes(plan):
        _write_owned(found.name, plan["owned"])
    _verify(_Zone(found.name), plan, _IPSets(set(plan["ipsets"])))
    return result


def _write_all(found, sets, plan):
    """Write the permanent configuration (ipsets, then the zone's rules), then the
    runtime one (ipset entries, then the zone's rules).

    When a runtime write fails after permanent writes, everything written is put back
    as it was, so the zone and its ipsets end as they were (both configurations agree,
    nothing recorded as the pack's) instead of half changed; the error says so. When an
    ipset must be created, firewalld is reloaded after the permanent writes (its runtime
    then holds the permanent configuration) and the runtime writes restore what the
    reload dropped of the zone's rich rules and these ipsets' entries; a failure after
    the reload is reported as it is."""
    undo = []  # (what, function) to put back, newest last
    ipsets = {n: e for n, e in plan["ipsets"].items() if not e.get("gone")}
    try:
        for name, entry in ipsets.items():
            if entry["create"]:
                sets.create(_to_ipset(name, {"type": entry["create"].split()[0],
                                             "family": entry["family"]}),
                            entry["entries"]["permanent"])
                undo.append((f"ipset {name}", functools.partial(sets.delete, name)))
            elif entry["permanent"]["add"] or entry["permanent"]["remove"]:
                sets.write("permanent", name, entry["entries"]["permanent"])
                undo.append((f"ipset {name}", functools.partial(
                    sets.write, "permanent", name, sets.held[name]["permanent"])))
        if plan["permanent"]["add"] or plan["permanent"]["remove"]:
            found.write("permanent", plan["rules"]["permanent"])
            undo.append((f"zone {found.name}", functools.partial(
                found.write, "permanent", found.rules["permanent"])))
    except CommandExecutionError as exc:
        _put_back(exc, undo, found.name, "permanent")
    if any(entry["reload"] for entry in ipsets.values()):
        _busctl(DBUS_PATH, "reload")
        _after_reload(found, plan, ipsets)
        return
    try:
        for name, entry in ipsets.items():
            if entry["runtime"]["add"] or entry["runtime"]["remove"]:
                before = sets.held[name]["runtime"]
                sets.write("runtime", name, entry["entries"]["runtime"], before)
                undo.append((f"the runtime entries of ipset {name}", functools.partial(
                    sets.write, "runtime", name, before, entry["entries"]["runtime"])))
        if plan["runtime"]["add"] or plan["runtime"]["remove"]:
            found.write("runtime", plan["rules"]["runtime"])
    except CommandExecutionError as exc:
        _put_back(exc, undo, found.name, "runtime")


def _put_back(exc, undo, zone, side):
    """Undo the writes done (newest first) and raise ``exc`` saying what was put back."""
    if not undo:
        raise exc
    failed = []
    for what, function in reversed(undo):
        try:
            function()
        except CommandExecutionError as again:
            failed.append(str(again) if what == f"zone {zone}" else f"{what}: {again}")
    if failed:
        raise CommandExecutionError(
            f"{exc}; putting back the permanent configuration of zone {zone} failed too: "
            + "; ".join(failed)) from None
    what = sorted({w for w, _ in undo if w != f"zone {zone}"})
    raise CommandExecutionError(
        f"{exc}; the permanent configuration of zone {zone} was put back as it was"
        + (f" (with {', '.join(what)})" if what else "") + " (nothing changed)") from None


def _after_reload(found, plan, ipsets):
    """After the reload that created ipsets: write back what it dropped at runtime (the
    zone's planned runtime rules, the planned entries of ipsets that existed there)."""
    now = _Zone(found.name)
    if {_rule_key(t) for t in now.rules["runtime"]} \
            != {_rule_key(t) for t in plan["rules"]["runtime"]}:
        now.write("runtime", plan["rules"]["runtime"])
    held = _IPSets(set(ipsets))
    for name, entry in ipsets.items():
        runtime = held.held[name]["runtime"] or []
        if set(runtime) != set(entry["entries"]["runtime"]):
            held.write("runtime", name, entry["entries"]["runtime"], runtime)


def _verify(found, plan, sets=None):
    """Re-read the zone and the ipsets: everything planned there, everything removed gone."""
    for side in ("runtime", "permanent"):
        held = {_rule_key(text) for text in found.rules[side]}
        missing = [text for text in plan[side]["add"] if text not in held]
        left = [text for text in plan[side]["remove"] if text in found.rules[side]]
        if missing or left:
            raise CommandExecutionError(
                f"firewalld zone {found.name} ({side}) does not hold what was applied: "
                f"missing {missing}, still there {left}")
    for name, entry in (plan.get("ipsets") or {}).items():
        if entry.get("gone"):
            continue
        for side in ("runtime", "permanent"):
            texts = (sets.held.get(name) or {}).get(side) if sets else None
            if texts is None:
                raise CommandExecutionError(f"firewalld ipset {name} ({side}) is missing "
                                            "after it was applied")
            held = {_entry_key(t, entry["family"]) for t in texts}
            missing = [t for t in entry[side]["add"] if t not in held]
            left = [t for t in entry[side]["remove"] if t in texts]
            if missing or left:
                raise CommandExecutionError(
                    f"firewalld ipset {name} ({side}) does not hold what was applied: "
                    f"missing {missing}, still there {left}")


def vpn_gateway_rules(peers, nodes, pooler_port, node_exporter_port=None, salt_master=None):
    """
    Return the gateway's rich rules (normal form) derived from pillar values:
    IKE udp 500, NAT-T udp 4500 and ESP from the remote gateways (ipset
    ``vgw-peers``); the pooler port and the node exporter port from the
    Kubernetes nodes (ipset ``vgw-nodes``); the salt-master's packets from its
    ports 4505/4506. The formula calls the same pure code as
    ``vpn_gateway.firewall_rules``, which renders without firewalld.

    CLI Example:

    .. code-block:: bash

        salt '*' firewalld.vpn_gateway_rules \
            '{"primary": {"address": "198.18.0.21"}}' '["198.18.2.31"]' 6432 9100 198.18.1.2
    """
    return _gateway_rules(peers, nodes, pooler_port, node_exporter_port, salt_master)


def vpn_gateway_ipsets(peers, nodes):
    """
    Return the gateway's ipsets derived from pillar values: ``vgw-peers`` (the
    remote gateways' addresses) and ``vgw-nodes`` (the Kubernetes nodes'),
    hash:ip family inet; ``vgw-peers6``/``vgw-nodes6`` for IPv6 addresses.
    The same pure code as ``vpn_gateway.firewall_ipsets``.

    CLI Example:

    .. code-block:: bash

        salt '*' firewalld.vpn_gateway_ipsets '{"primary": {"address": "198.18.0.21"}}' \
            '["198.18.2.31"]'
    """
    return _gateway_ipsets(peers, nodes)
