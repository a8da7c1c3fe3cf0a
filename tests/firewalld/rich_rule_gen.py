"""A seeded generator of firewalld rich rules, valid and invalid, as strings
and as structured arguments (the differential test against firewalld's parser)."""
import random

ADDRESSES = {
    "ipv4": ["198.18.0.21", "198.18.0.21/32", "198.18.2.0/24", "198.18.2.5/24", "10.0.0.0/8",
             "0.0.0.0/0"],
    "ipv6": ["2001:db8::1", "2001:DB8:0::1/128", "2001:db8::/32", "2001:db8::5/64", "::/0"],
}
BAD_ADDRESSES = ["198.18.0.300", "198.18.0.0/33", "198.18", "198.18.0.21/", "2001:db8::g",
                 "2001:db8::/129"]
MACS = ["00:11:22:33:44:55", "00:11:22:33:44:GG", "00-11-22-33-44-55", "001122334455"]
SERVICES = ["ssh", "ipsec", "postgresql", "https", "no-such-service"]
PORTS = ["500", "4500", "0500", "isakmp", "1000-2000", "22-22", "65535", "6432"]
BAD_PORTS = ["2000-1000", "0", "65536", "-1", "1-", "abc", "ipsec-nat-t"]
PORT_PROTOCOLS = ["tcp", "udp", "sctp", "dccp", "UDP"]
BAD_PORT_PROTOCOLS = ["icmp", "esp", ""]
PROTOCOLS = ["esp", "ah", "gre", "50", "51", "0", "255", "ESP", "ipv6-icmp", "icmp"]
BAD_PROTOCOLS = ["256", "no-such-proto", "-1"]
ICMP = ["echo-request", "echo-reply", "timestamp-request"]
LIMITS = ["3/m", "1/s", "10/minute", "2/h", "2/d", "3/M", "100000/s", "10/second", "5/hour",
          "2/day"]
BAD_LIMITS = ["1/d", "0/m", "3/x", "3", "m/3", "1/day"]
LEVELS = ["emerg", "alert", "crit", "error", "warning", "notice", "info", "debug", "INFO"]
BAD_LEVELS = ["verbose"]
PREFIXES = ["gw", "db-drop", "x" * 127]
BAD_PREFIXES = ["x" * 128]
REJECT_TYPES = ["icmp-host-prohibited", "tcp-reset", "icmp6-adm-prohibited", "port-unreach",
                "net-unreach", "adm-prohibited"]
BAD_REJECT_TYPES = ["no-such-type"]
ACTIONS = ["accept", "drop", "reject", "ACCEPT"]
BAD_ACTIONS = ["mark", "allow"]
FAMILIES = ["ipv4", "ipv6", "IPv4", "ipx"]
PRIORITIES = ["0", "1", "-1", "32767", "-32768", "10"]
BAD_PRIORITIES = ["32768", "-32769", "x"]
IPSETS = ["gateways", "db-nodes", "a", "bad name", "x" * 32]
BAD_IPSETS = ["x" * 33]


def _q(value, rnd):
    """value=, quoted one of three ways (the attribute spellings firewalld reads)."""
    style = rnd.random()
    if style < 0.5:
        return f'"{value}"'
    if style < 0.75 and " " not in value and value:
        return value
    return f"'{value}'"


def _pick(rnd, valid, invalid, p_invalid=0.04):
    """Mostly a valid value, now and then an invalid one."""
    if rnd.random() < p_invalid:
        return rnd.choice(invalid)
    return rnd.choice(valid)


def structured(rnd):
    """One rule as keyword arguments: mostly sensible, now and then wrong."""
    family = rnd.choice([None, "ipv4", "ipv6", "ipv4", "ipv6", "ipv4", "ipv6", "ipx"])
    fam = family if family in ADDRESSES else rnd.choice(["ipv4", "ipv6"])
    args = {}
    if family is not None:
        args["family"] = family
    if rnd.random() < 0.2:
        args["priority"] = _pick(rnd, PRIORITIES, BAD_PRIORITIES)
    if rnd.random() < 0.85:
        if rnd.random() < 0.85:
            args["source"] = _pick(rnd, ADDRESSES[fam], BAD_ADDRESSES)
        else:
            args["source_ipset"] = _pick(rnd, IPSETS, BAD_IPSETS)
        if rnd.random() < 0.1:
            args["source_invert"] = True
    if rnd.random() < 0.3:
        args["destination"] = _pick(rnd, ADDRESSES[fam], BAD_ADDRESSES)
    element = rnd.random()
    if element < 0.4:
        args["port"] = _pick(rnd, PORTS, BAD_PORTS)
        args["protocol"] = _pick(rnd, PORT_PROTOCOLS, BAD_PORT_PROTOCOLS)
    elif element < 0.5:
        args["source_port"] = _pick(rnd, PORTS, BAD_PORTS)
        args["protocol"] = _pick(rnd, PORT_PROTOCOLS, BAD_PORT_PROTOCOLS)
    elif element < 0.7:
        args["protocol"] = _pick(rnd, PROTOCOLS, BAD_PROTOCOLS)
    elif element < 0.8:
        args["service"] = rnd.choice(SERVICES)
    if rnd.random() < 0.15:
        args["log_prefix"] = _pick(rnd, PREFIXES, BAD_PREFIXES)
        args["log_level"] = _pick(rnd, LEVELS, BAD_LEVELS)
        if rnd.random() < 0.5:
            args["log_limit"] = _pick(rnd, LIMITS, BAD_LIMITS)
    if rnd.random() < 0.1:
        args["audit"] = True
    if rnd.random() < 0.95:
        args["action"] = _pick(rnd, ACTIONS, BAD_ACTIONS)
        if args["action"] == "reject" and rnd.random() < 0.3:
            args["reject_type"] = _pick(rnd, REJECT_TYPES, BAD_REJECT_TYPES)
        if rnd.random() < 0.2:
            args["limit"] = _pick(rnd, LIMITS, BAD_LIMITS)
    return args


def to_string(args, rnd):
    """The rule string firewall-cmd would be given for ``args`` (family as given)."""
    parts = ["rule"]
    if "priority" in args:
        parts.append(f"priority={_q(str(args['priority']), rnd)}")
    if "family" in args:
        parts.append(f"family={_q(args['family'], rnd)}")
    for side in ("source", "destination"):
        value, ipset = args.get(side), args.get(f"{side}_ipset")
        if value is None and ipset is None:
            continue
        parts.append(side + (" NOT" if args.get(f"{side}_invert") else ""))
        parts.append(f"address={_q(value, rnd)}" if value is not None
                     else f"ipset={_q(ipset, rnd)}")
    if "port" in args or "source_port" in args:
        kind = "port" if "port" in args else "source-port"
        parts.append(f"{kind} port={_q(args.get('port', args.get('source_port')), rnd)} "
                     f"protocol={_q(args['protocol'], rnd)}")
    elif "protocol" in args:
        parts.append(f"protocol value={_q(args['protocol'], rnd)}")
    elif "service" in args:
        parts.append(f"service name={_q(args['service'], rnd)}")
    if any(k.startswith("log_") for k in args):
        log = "log"
        if args.get("log_prefix") is not None:
            log += f" prefix={_q(args['log_prefix'], rnd)}"
        if args.get("log_level") is not None:
            log += f" level={_q(args['log_level'], rnd)}"
        if args.get("log_limit") is not None:
            log += f" limit value={_q(args['log_limit'], rnd)}"
        parts.append(log)
    if args.get("audit"):
        parts.append("audit")
    if "action" in args:
        action = args["action"]
        if args.get("reject_type"):
            action += f" type={_q(args['reject_type'], rnd)}"
        if args.get("limit"):
            action += f" limit value={_q(args['limit'], rnd)}"
        parts.append(action)
    return " ".join(parts)


def _any(rnd, valid, invalid):
    return _q(rnd.choice(valid + invalid), rnd)


def free_string(rnd):
    """A rule string built from the grammar's pieces with no regard for sense:
    elements firewalld has and this pack does not, repeats, misorders, typos."""
    pieces = [
        lambda: f"family={_q(rnd.choice(FAMILIES), rnd)}",
        lambda: f"priority={_any(rnd, PRIORITIES, BAD_PRIORITIES)}",
        lambda: "source address="
                + _any(rnd, ADDRESSES[rnd.choice(['ipv4', 'ipv6'])], BAD_ADDRESSES),
        lambda: f"source NOT address={_q(rnd.choice(ADDRESSES['ipv4']), rnd)}",
        lambda: f"source ipset={_any(rnd, IPSETS, BAD_IPSETS)}",
        lambda: f"source mac={_q(rnd.choice(MACS), rnd)}",
        lambda: f"destination address={_q(rnd.choice(ADDRESSES['ipv4']), rnd)}",
        lambda: f"port port={_any(rnd, PORTS, BAD_PORTS)} "
                f"protocol={_any(rnd, PORT_PROTOCOLS, BAD_PORT_PROTOCOLS)}",
        lambda: f"port protocol={_any(rnd, PORT_PROTOCOLS, BAD_PORT_PROTOCOLS)} "
                f"port={_any(rnd, PORTS, BAD_PORTS)}",
        lambda: f"source-port port={_any(rnd, PORTS, BAD_PORTS)} protocol=tcp",
        lambda: f"protocol value={_any(rnd, PROTOCOLS, BAD_PROTOCOLS)}",
        lambda: f"service name={_q(rnd.choice(SERVICES), rnd)}",
        lambda: f"icmp-block name={rnd.choice(ICMP)}",
        lambda: f"icmp-type name={rnd.choice(ICMP)}",
        lambda: "masquerade",
        lambda: "forward-port port=22 protocol=tcp to-port=2222",
        lambda: f"log prefix={_any(rnd, PREFIXES, BAD_PREFIXES)} "
                f"level={_any(rnd, LEVELS, BAD_LEVELS)}",
        lambda: f"log limit value={_any(rnd, LIMITS, BAD_LIMITS)}",
        lambda: "log",
        lambda: "audit",
        lambda: f"audit limit value={_any(rnd, LIMITS, BAD_LIMITS)}",
        lambda: "nflog",
        lambda: rnd.choice(ACTIONS + BAD_ACTIONS),
        lambda: f"reject type={_any(rnd, REJECT_TYPES, BAD_REJECT_TYPES)}",
        lambda: f"{rnd.choice(ACTIONS + BAD_ACTIONS)} limit value={_any(rnd, LIMITS, BAD_LIMITS)}",
        lambda: rnd.choice(["limit value=3/m", "not", "foo", "value=1", "rule"]),
    ]
    count = rnd.choice([0, 1, 1, 2, 2, 3, 3, 4])
    parts = [rnd.choice(pieces)() for _ in range(count)]
    head = "rule" if rnd.random() < 0.95 else rnd.choice(["", "Rule", "rules"])
    return " ".join(filter(None, [head, *parts]))


def cases(seed=14, structured_count=600, free_count=800):
    """[(kind, input)]: kind "structured" (input a dict) or "string"."""
    rnd = random.Random(seed)
    out = []
    for _ in range(structured_count):
        args = structured(rnd)
        out.append(("structured", args))
        out.append(("string", to_string(args, rnd)))
    out += [("string", free_string(rnd)) for _ in range(free_count)]
    return out
