"""Libreswan site-to-site tunnels: status, control and per-conn configuration.

A *tunnel* is one IKEv2/PSK conn ``NAME`` to a primary remote gateway plus,
optionally, ``NAME-backup``: the same selectors to a backup gateway, loaded
with ``auto=add`` so that it never fights the primary (FACTS: identical
selectors on two live conns give duplicate SAs). Which of the two is up is
run-time state (``libreswan.switch``), never an edit of the files.

Each tunnel lives in ``/etc/ipsec.d/NAME.conf`` and ``NAME.secrets`` (0600),
applied per conn without restarting pluto (``whack --delete`` + ``addconn``,
``--rereadsecrets``, ``--initiate``). The PSK is read from pillar by key
(``psk_pillar``) and goes only into the secrets file: never into a return
value, a log line, a command line or an exception.

Pure helpers (``_validate``, ``_render_conf``, ``_parse_status``...) take and
return plain data so that tests import them from this file directly.
"""
import difflib
import ipaddress
import os
import re
import shutil
import tempfile
import time

import salt.utils.atomicfile
import salt.utils.files
import salt.version
from salt.exceptions import CommandExecutionError

__virtualname__ = "libreswan"

PACKAGE = "libreswan"
NOT_INSTALLED = ("libreswan is not installed (no ipsec command, so no pluto): install the "
                 "libreswan package (pkg.installed: libreswan, or apply vpn_gateway.ipsec)")
CONF_DIR = "/etc/ipsec.d"
IPSEC_CONF = "/etc/ipsec.conf"
BACKUP_SUFFIX = "-backup"
MIN_PSK_LENGTH = 32
MANAGED_HEADER = "# Managed by Salt (libreswan.conn_present): local edits are replaced.\n"
# pillar.get masks secrets from Salt 3008 on and takes ``unmask`` (older: TypeError).
SALT_MASKS_PILLAR = salt.version.__saltstack_version__.info >= (3008,)
# The least IKE and IPsec SA lifetime (seconds) that every supported pluto keeps:
# Libreswan 5 raises a shorter one to rekeymargin x (1 + rekeyfuzz), 540 s x 2 with
# the defaults this pack keeps ("ipsec-lifetime=300 must be greater than
# rekeymargin=0s + rekeyfuzz=100%, setting to 1080 seconds"); 4.x keeps it.
LIFETIME_FLOOR = 1080

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")
ID_RE = re.compile(r"^@[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")
AUTO_VALUES = ("start", "add")

# The algorithm grammar of ike= and phase2alg= (esp=) as ``ipsec algparse -v2``
# reads it (Libreswan 4.10 and 5.2; tests/libreswan/test_algorithm_differential.py
# compares the two over generated lists): proposals joined by ``,``; a proposal
# is ENCR[-INTEG][-PRF][-DH] for IKE (PRF alone when it is also an integrity
# algorithm, INTEG only before a PRF), ENCR[-INTEG][-DH] for ESP, with ``;``
# before the DH group instead of ``-``; each part one or more names joined by
# ``+``. Names are case-insensitive. Weak ones (WEAK) are refused unless
# allow_weak_algorithms is set.
_KEYLEN = r"(_?(128|192|256))?"
_CBC_LIKE = rf"(aes(_cbc|_ctr)?|camellia(_cbc)?){_KEYLEN}|3des(_cbc)?"
_AES_GCM = rf"aes_gcm(_(8|12|16|a|b|c))?{_KEYLEN}|chacha20_poly1305"
_AES_CCM = rf"aes_ccm(_(8|12|16|a|b|c))?{_KEYLEN}"
_ALGORITHMS = {
    # (kind, role) -> names
    ("ike", "encr"): rf"{_CBC_LIKE}|{_AES_GCM}",
    ("esp", "encr"): rf"{_CBC_LIKE}|{_AES_GCM}|{_AES_CCM}|null|null_auth_aes_gmac|aes_gmac",
    ("ike", "prf"): r"sha1?|sha2(_(256|384|512))?|sha(256|384|512)|md5|aes_xcbc",
    ("ike", "integ"): r"sha1?|sha2(_(256|384|512))?|sha(256|384|512)|md5|aes_xcbc|none"
                      r"|sha1_96|sha2_256_128|sha2_384_192|sha2_512_256|md5_96|aes_xcbc_96",
    ("esp", "integ"): r"sha1?|sha2(_(256|384|512))?|sha(256|384|512)|md5|aes_xcbc|aes_cmac|none"
                      r"|sha1_96|sha2_256_128|sha2_384_192|sha2_512_256|md5_96|aes_xcbc_96"
                      r"|aes_cmac_96",
    ("ike", "dh"): r"modp(1536|2048|3072|4096|6144|8192)|dh(5|14|15|16|17|18|19|20|21|31)"
                   r"|ecp_?(256|384|521)|curve25519",
    ("esp", "dh"): r"modp(1536|2048|3072|4096|6144|8192)|dh(5|14|15|16|17|18|19|20|21|31)"
                   r"|ecp_?(256|384|521)|curve25519|none|null",
}
_AEAD = rf"{_AES_GCM}|{_AES_CCM}|null_auth_aes_gmac|aes_gmac"
_WEAK = r"md5(_96)?|3des(_cbc)?|null"
_NAMES = {
    "encr": "encryption", "integ": "integrity", "prf": "PRF", "dh": "DH",
}


def _is(kind, role, name):
    return re.fullmatch(_ALGORITHMS[(kind, role)], name) is not None


def _proposal_errors(kind, proposal):
    """What algparse -v2 refuses in one proposal (no commas), as messages."""
    label = kind.upper()
    head, semicolon, dh_part = proposal.partition(";")
    parts = head.split("-")
    if semicolon:
        if ";" in dh_part or "-" in dh_part:
            return [f"{label} proposal {proposal!r}: one DH part after ';'"]
        parts.append(dh_part)
    if not parts[0]:
        return [f"{label} encryption algorithm is empty"]
    lists = [part.split("+") for part in parts]
    if any(not name for names in lists for name in names):
        return [f"{label} proposal {proposal!r} has an empty algorithm (doubled '-', '+' "
                "or ';'?)"]
    encr, rest = lists[0], lists[1:]
    for name in encr:
        if not _is(kind, "encr", name):
            return [f"{label} encryption algorithm {name!r} is not recognized"]
    aead = [re.fullmatch(_AEAD, name) is not None for name in encr]
    if any(aead) and not all(aead):
        return [f"AEAD and non-AEAD {label} encryption algorithm cannot be combined"]
    if semicolon:  # the last part is the DH group: what comes before it is INTEG[-PRF]
        dh, rest = rest[-1], rest[:-1]
    else:
        dh = None
    roles = {}
    if kind == "ike":
        if rest and not all(_is("ike", "prf", n) for n in rest[0]) \
                and all(_is("ike", "integ", n) for n in rest[0]):
            roles["integ"], rest = rest[0], rest[1:]
        if rest:
            roles["prf"], rest = rest[0], rest[1:]
    elif rest:
        roles["integ"], rest = rest[0], rest[1:]
    if rest and dh is None:
        dh, rest = rest[0], rest[1:]
    if rest:
        return [f"{label} proposal contains unexpected {'-'.join('+'.join(r) for r in rest)!r}"]
    if dh is not None:
        roles["dh"] = dh
    for role, names in roles.items():
        for name in names:
            if not _is(kind, role, name):
                return [f"{label} {_NAMES[role]} algorithm {name!r} is not recognized"
                        + (" (or not permitted)" if name in ("none", "null") else "")]
    integ = roles.get("integ")
    if integ is not None and all(aead) and any(n != "none" for n in integ):
        return [f"AEAD {label} encryption algorithm {encr[0]!r} must have 'none' as the "
                "integrity algorithm"]
    if integ is not None and not any(aead) and all(n == "none" for n in integ):
        return [f"non-AEAD {label} encryption algorithm {encr[0]!r} cannot have 'none' as the "
                "integrity algorithm"]
    return []


# -- errors -------------------------------------------------------------------
class ConnError(ValueError):
    """Bad input for a conn: ``errors`` lists ``(key, message)`` pairs."""

    def __init__(self, errors):
        self.errors = errors
        super().__init__("; ".join(f"{key}: {message}" for key, message in errors))


# -- validation (pure) ----------------------------------------------------------
def _ipv4(value, key, errors, fix):
    try:
        return str(ipaddress.IPv4Address(str(value).strip()))
    except ValueError:
        errors.append((key, f"{value!r} is not an IPv4 address; {fix}"))
        return None


def _ipv4_network(value, key, errors):
    text = str(value).strip()
    try:
        return str(ipaddress.IPv4Network(text, strict=True))
    except ValueError as exc:
        if "host bits set" in str(exc):
            net = ipaddress.IPv4Network(text, strict=False)
            errors.append((key, f"{text!r} has host bits set; write the network {net} "
                                f"or the single host {text.split('/')[0]}/32"))
        else:
            errors.append((key, f"{text!r} is not an IPv4 network (address/prefix, prefix 0-32), "
                                f"for example 198.19.1.10/32"))
        return None


def _ike_id(value, address, key, errors):
    if value in (None, ""):
        return address
    text = str(value)
    if ID_RE.fullmatch(text):
        return text
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        errors.append((key, f"{text!r} is not an IKE id: use @fqdn (letters, digits, dots, "
                            "hyphens) or an IPv4 address"))
        return None


# DH groups by their RFC number, as algparse compares them across ESP proposals
_DH_ALIASES = {"modp1536": "dh5", "modp2048": "dh14", "modp3072": "dh15", "modp4096": "dh16",
               "modp6144": "dh17", "modp8192": "dh18", "ecp256": "dh19", "ecp_256": "dh19",
               "ecp384": "dh20", "ecp_384": "dh20", "ecp521": "dh21", "ecp_521": "dh21",
               "curve25519": "dh31", "null": "none"}


def _esp_dh(proposal):
    """The first DH group of a valid ESP proposal (by number), or None without one."""
    head, semicolon, dh = proposal.partition(";")
    parts = head.split("-")
    if not semicolon:
        if len(parts) < 3:
            return None
        dh = parts[2]
    first = dh.split("+")[0]
    return _DH_ALIASES.get(first, first)


def _esp_dh_errors(proposals):
    """algparse across ESP proposals: all or none name a DH group, and one group
    (a Child SA cannot renegotiate it: no INVALID_KE for Child SAs)."""
    groups = [_esp_dh(proposal) for proposal in proposals]
    if any(g is None for g in groups) and any(g is not None for g in groups):
        return ["either all or no ESP proposals should specify DH"]
    if len(set(groups) - {None, "none"}) > 1:
        return [f"more than one ESP DH group across proposals ({', '.join(sorted(set(groups)))})"
                " needs Child SA INVALID_KE, which Libreswan does not implement: name one group"]
    return []


def _algorithms(value, key, allow_weak, errors, kind=None):
    """Check an ike= (kind "ike") or phase2alg= (kind "esp", from the key when not
    given) list as algparse -v2 would, and refuse weak names unless allow_weak."""
    kind = kind or ("esp" if str(key).endswith(("phase2alg", "esp")) else "ike")
    text = str(value or "").strip().lower()
    if not text or re.search(r"[^a-z0-9_;+,-]", text):
        errors.append((key, f"{value!r} is not an algorithm list like aes256-sha2_256;modp2048"))
        return None
    proposals = text.split(",")
    problems = [problem for proposal in proposals
                for problem in (_proposal_errors(kind, proposal) if proposal
                                else [f"{kind.upper()} proposal is empty (a stray ',')"])]
    if kind == "esp" and not problems and len(proposals) > 1:
        problems = _esp_dh_errors(proposals)
    for problem in problems:
        errors.append((key, f"{problem}: write e.g. "
                            + ("aes256-sha2_256;modp2048" if kind == "ike" else "aes256-sha2_256")
                            + " (ipsec algparse -v2 " + f"'{kind}=...' checks one)"))
    if not problems and not allow_weak:
        for token in sorted(set(filter(None, re.split(r"[-;+,]", text)))):
            if re.fullmatch(_WEAK, token):
                errors.append((key, f"{token!r} is a weak algorithm (refused: md5, 3des, null); "
                                    "use e.g. aes256-sha2_256;modp2048, or set "
                                    "allow_weak_algorithms: true if the peer cannot do better"))
    return text


def _seconds(value, key, low, high, errors):
    text = str(value).strip().lower().removesuffix("s")
    if not text.isdigit() or not low <= int(text) <= high:
        errors.append((key, f"{value!r} is not a number of seconds between {low} and {high}"))
        return None
    return int(text)


def _flag(value, key, errors):
    if isinstance(value, bool):
        return value
    errors.append((key, f"{value!r} is not true or false"))
    return None


def _validate(name, spec, psks, source="conn", psk_keys=None):
    """Check one tunnel's settings; return the normalised conn or raise ConnError.

    ``spec`` holds the pillar-shaped arguments of ``conn_present`` (local,
    peers, remote_subnets, ike, ...); ``psks`` maps "primary"/"backup" to the
    PSK read from pillar (None when the key is missing). Error keys are
    ``source:path`` so that a message names the pillar key to fix; a PSK
    error names ``psk_keys[role]`` (the pillar key it was read from).
    """
    psk_keys = psk_keys or {}
    errors = []

    def key(*path):
        return ":".join([source, *map(str, path)])

    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name.endswith(BACKUP_SUFFIX):
        errors.append((key("name"), f"{name!r} is not a safe conn name: a letter, then up to 39 "
                                    "letters, digits, '_' or '-', not ending in -backup"))
    unknown = set(spec) - {"local", "peers", "remote_subnets", "ike", "phase2alg", "pfs",
                           "ikelifetime", "salifetime", "dpddelay", "fragmentation", "narrowing",
                           "auto", "ike_version", "allow_weak_algorithms"}
    for extra in sorted(unknown):
        errors.append((key(extra), "unknown setting"))
    if spec.get("ike_version", 2) != 2:
        errors.append((key("ike_version"), f"IKEv{spec.get('ike_version')} is refused: only "
                                           "IKEv2 is supported (remove the key or set it to 2)"))
    allow_weak = spec.get("allow_weak_algorithms", False) is True

    local = spec.get("local") or {}
    left = _ipv4(local.get("address"), key("local", "address"), errors,
                 "set it to this gateway's public (wan) address")
    tunnel_ip = _ipv4(local.get("tunnel_ip"), key("local", "tunnel_ip"), errors,
                      "set it to this gateway's tunnel /32 (the leftsubnet)")
    conn = {
        "name": name,
        "left": left,
        "leftid": _ike_id(local.get("id"), left, key("local", "id"), errors),
        "tunnel_ip": tunnel_ip,
    }
    peers = spec.get("peers") or {}
    for role in ("primary", "backup"):
        peer = peers.get(role)
        if peer is None:
            if role == "primary":
                errors.append((key("peers", "primary", "address"),
                               "missing: the primary remote gateway's address (right=) "
                               "is required"))
            conn[role] = None
            continue
        for extra in sorted(set(peer) - {"address", "id"}):
            errors.append((key("peers", role, extra), "unknown key (a peer has address and id; "
                                                      "its PSK goes in its own pillar key)"))
        if not peer.get("address"):
            errors.append((key("peers", role, "address"),
                           f"missing: the {role} remote gateway's address (right=) is required"))
            right = None
        else:
            right = _ipv4(peer["address"], key("peers", role, "address"), errors,
                          f"set it to the {role} remote gateway's public address")
        conn[role] = {"right": right,
                      "rightid": _ike_id(peer.get("id"), right, key("peers", role, "id"), errors)}
        psk = psks.get(role)
        psk_key = psk_keys.get(role) or (key("psk") if role == "primary"
                                         else key("peers", "backup", "psk"))
        if psk is None:
            errors.append((psk_key, "missing: put the pre-shared key in pillar (at least "
                                    f"{MIN_PSK_LENGTH} characters)"))
        elif not isinstance(psk, str) or len(psk) < MIN_PSK_LENGTH:
            errors.append((psk_key, f"too short: a PSK has at least {MIN_PSK_LENGTH} characters "
                                    "(generate one: openssl rand -base64 48)"))
        elif re.search(r'["\\\x00-\x1f\x7f]', psk):
            errors.append((psk_key, "contains a double quote, backslash, newline or other control "
                                    "character, which the secrets file cannot hold; use "
                                    "printable characters only"))

    subnets = spec.get("remote_subnets")
    if not subnets or not isinstance(subnets, list):
        errors.append((key("remote_subnets"), "missing: a list of remote networks "
                                              "(the database endpoints' /32s)"))
        subnets = []
    conn["remote_subnets"] = [_ipv4_network(s, key("remote_subnets", i), errors)
                              for i, s in enumerate(subnets)]
    conn["ike"] = _algorithms(spec.get("ike", "aes256-sha2_256;modp2048"), key("ike"),
                              allow_weak, errors)
    conn["phase2alg"] = _algorithms(spec.get("phase2alg", "aes256-sha2_256"), key("phase2alg"),
                                    allow_weak, errors)
    conn["pfs"] = _flag(spec.get("pfs", True), key("pfs"), errors)
    conn["ikelifetime"] = _seconds(spec.get("ikelifetime", 3600), key("ikelifetime"),
                                   LIFETIME_FLOOR, 86400, errors)
    conn["salifetime"] = _seconds(spec.get("salifetime", 3600), key("salifetime"),
                                  LIFETIME_FLOOR, 86400, errors)
    conn["dpddelay"] = _seconds(spec.get("dpddelay", 30), key("dpddelay"), 0, 3600, errors)
    conn["fragmentation"] = _flag(spec.get("fragmentation", True), key("fragmentation"), errors)
    conn["narrowing"] = _flag(spec.get("narrowing", False), key("narrowing"), errors)
    conn["auto"] = spec.get("auto", "start")
    if conn["auto"] not in AUTO_VALUES:
        errors.append((key("auto"), f"{conn['auto']!r} is not one of {', '.join(AUTO_VALUES)}"))
    if errors:
        raise ConnError(errors)
    return conn


# -- rendering (pure) -----------------------------------------------------------
def _yes(flag):
    return "yes" if flag else "no"


def _conn_lines(conn, name, peer, auto, major):
    subnets = conn["remote_subnets"]
    if len(subnets) == 1:
        right_subnets = f"rightsubnet={subnets[0]}"
    elif major >= 5:  # one Child SA with several traffic selectors
        right_subnets = f"rightsubnet={','.join(subnets)}"
    else:  # 4.x takes no lists in rightsubnet=: one Child SA per subnet
        right_subnets = f"rightsubnets={{{' '.join(subnets)}}}"
    lines = [
        f"conn {name}",
        "type=tunnel",
        "authby=secret",
        "keyexchange=ikev2" if major >= 5 else "ikev2=insist",
        f"ike={conn['ike']}",
        f"phase2alg={conn['phase2alg']}",
        f"pfs={_yes(conn['pfs'])}",
        f"left={conn['left']}",
        f"leftid={conn['leftid']}",
        f"leftsubnet={conn['tunnel_ip']}/32",
        f"leftsourceip={conn['tunnel_ip']}",
        f"right={peer['right']}",
        f"rightid={peer['rightid']}",
        right_subnets,
        f"ikelifetime={conn['ikelifetime']}s",
        f"salifetime={conn['salifetime']}s",
        f"dpddelay={conn['dpddelay']}",
    ]
    if major < 5:  # 5.x dropped dpdaction= (it always restarts)
        lines.append("dpdaction=restart")
    lines += [
        f"fragmentation={_yes(conn['fragmentation'])}",
        f"narrowing={_yes(conn['narrowing'])}",
        f"auto={auto}",
    ]
    return lines[0] + "\n" + "".join(f"\t{line}\n" for line in lines[1:])


def _render_conf(conn, major):
    """The text of NAME.conf: the primary conn and, if declared, NAME-backup."""
    text = MANAGED_HEADER + _conn_lines(conn, conn["name"], conn["primary"], conn["auto"], major)
    if conn.get("backup"):
        # auto=add: the backup is loaded but only brought up by a switch.
        text += "\n" + _conn_lines(conn, conn["name"] + BACKUP_SUFFIX, conn["backup"], "add", major)
    return text


def _render_secrets(conn, psks):
    """The text of NAME.secrets. Holds the PSK: write it 0600, never log it."""
    lines = [MANAGED_HEADER.rstrip("\n")]
    for role in ("primary", "backup"):
        if conn.get(role):
            lines.append(f'{conn["leftid"]} {conn[role]["rightid"]} : PSK "{psks[role]}"')
    return "\n".join(lines) + "\n"


def _parse_conf(text):
    """``{conn name: {key: value}}`` of an ipsec.conf-style text (conn sections only)."""
    conns, current = {}, None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not raw[0].isspace():
            words = line.split()
            current = conns.setdefault(words[1], {}) if words[0] == "conn" and len(words) == 2 \
                else None
            continue
        if current is not None and "=" in line:
            k, v = line.strip().split("=", 1)
            current[k.strip()] = v.strip()
    return conns


def _check_settings(settings):
    """Errors in one rendered conn's key/values that addconn --checkconfig lets through."""
    errors = []
    if not settings.get("right"):
        errors.append("right= is missing")
    for k in ("left", "right", "leftsourceip"):
        if settings.get(k):
            _ipv4(settings[k], k, errors, "an IPv4 address is required")
    for k in ("leftsubnet", "rightsubnet", "rightsubnets"):
        for subnet in re.split(r"[\s,{}]+", settings.get(k, "")):
            if subnet:
                _ipv4_network(subnet, k, errors)
    for k in ("ike", "phase2alg"):
        if k in settings:
            _algorithms(settings[k], k, False, errors)
    if settings.get("authby") != "secret":
        errors.append(f"authby={settings.get('authby')!r}: only authby=secret is managed here")
    for k in ("dpddelay",):
        if k in settings and not settings[k].isdigit():
            errors.append(f"{k}={settings[k]!r} is not a number of seconds")
    return [e if isinstance(e, str) else f"{e[0]}: {e[1]}" for e in errors]


# -- status parsing (pure) -------------------------------------------------------
_PREFIX_RE = re.compile(r"^\d{3} ?")
_CONN_RE = re.compile(r'^"(?P<conn>[^"]+)"(?:\[(?P<inst>\d+)\])?(?: [^:]*)?:\s(?P<rest>.*)$')
_STATE_RE = re.compile(
    r'^#(?P<serial>\d+): "(?P<conn>[^"]+)"(?:\[(?P<inst>\d+)\])?(?: (?P<peer>[^\s:]+))?'
    r"(?::(?P<port>\d+))? (?P<state>[A-Z][A-Z0-9_]+) \((?P<desc>[^)]*)\);?(?P<rest>.*)$")
_TRAFFIC_RE = re.compile(
    r'^#(?P<serial>\d+): "(?P<conn>[^"]+)"(?:\[(?P<inst>\d+)\])?[^,]*, type=(?P<type>\w+), '
    r"add_time=(?P<add_time>\d+), inBytes=(?P<in>\d+), outBytes=(?P<out>\d+)"
    r"(?:, maxBytes=[^,]*)?(?:, id='(?P<id>[^']*)')?")


def _unprefix(text):
    """Lines without Libreswan 4's ``000 `` codes (5.x prints none)."""
    return [_PREFIX_RE.sub("", line, count=1) if _PREFIX_RE.match(line) else line
            for line in (text or "").splitlines()]


def _base(whack_name):
    """``"db/0x2"`` (one of rightsubnets={...}) belongs to conn ``db``."""
    return whack_name.split("/", 1)[0]


_ID_BRACKETS_RE = re.compile(r"\[[^\]]*\]")


def _masked(text):
    """``text`` with the ``.`` and ``-`` inside ``[id]`` replaced by NUL and SOH:
    an id may hold ``...`` and ``---`` (ID_RE allows them), the separators of
    a connection line do not."""
    return _ID_BRACKETS_RE.sub(lambda m: m.group(0).replace(".", "\0").replace("-", "\1"), text)


def _unmasked(text):
    return text.replace("\0", ".").replace("\1", "-") if isinstance(text, str) else text


def _endpoint(text, side):
    """``sub===host:port[id]---hop`` (left) or ``hop---host[id]===sub`` (right)."""
    endpoint = _masked_endpoint(_masked(text), side)
    return {"address": _unmasked(endpoint["address"]), "id": _unmasked(endpoint["id"]),
            "subnets": endpoint["subnets"]}


def _masked_endpoint(text, side):
    if side == "left":
        subnet, _, host = text.rpartition("===")
        host = host.split("---", 1)[0]
    else:
        host, _, subnet = text.partition("===")
        host = host.rsplit("---", 1)[-1]
    match = re.match(r"^(?P<addr>[^\[:]+)(?::\d+)?(?:\[(?P<id>[^\]]*)\])?", host)
    address = match.group("addr") if match else host
    return {
        "address": address,
        "id": match.group("id") or address if match else None,  # no [id]: the id is the address
        "subnets": [s for s in subnet.split(",") if s],
    }


def _selector_pairs(topology):
    """``(local, remote)`` CIDR pairs of one connection line's ``left...right``
    (5.x prints one line per pair; a protocol/port suffix is dropped)."""
    left, _, right = _masked(topology).partition("...")
    local, remote = _endpoint(left, "left"), _endpoint(right, "right")
    return [(_cidr(mine), _cidr(theirs)) for mine in local["subnets"]
            for theirs in remote["subnets"]]


def _cidr(text):
    match = re.match(r"^[0-9A-Fa-f:.]+/\d+", text.strip())
    return match.group(0) if match else text.strip()


def _covers(have, want):
    """True when selector ``have`` (a CIDR) contains the declared CIDR ``want``."""
    try:
        return ipaddress.ip_network(want, strict=False).subnet_of(
            ipaddress.ip_network(have, strict=False))
    except (ValueError, TypeError):
        return have == want


def _coverage(declared, covered):
    """``(covered, missing)`` declared remote subnets: a remote subnet is covered
    when each of its declared ``(local, remote)`` pairs lies inside the
    selectors of an established Child SA (``covered``)."""
    remotes = []
    for _, remote in declared:
        if remote not in remotes:
            remotes.append(remote)
    ok = [r for r in remotes if all(
        any(_covers(have_l, want_l) and _covers(have_r, want_r) for have_l, have_r in covered)
        for want_l, want_r in declared if want_r == r)]
    return ok, [r for r in remotes if r not in ok]


def _seconds_after(rest, event):
    match = re.search(rf"\b{event} in (\d+)s", rest)
    return int(match.group(1)) if match else None


def _parse_status(status_text, traffic_text="", now=None):
    """Structured ``whack --status`` + ``--trafficstatus`` (Libreswan 4.x and 5.x).

    Returns ``{"conns": {base name: {...}}, "tunnels": {...}, "summary": {...}}``;
    see ``status`` for the fields.
    """
    now = time.time() if now is None else now
    conns = {}

    def conn_entry(base):
        return conns.setdefault(base, {
            "loaded": True, "template": False, "instances": [], "subconns": [],
            "local": None, "remote": None, "ike_life": None, "ipsec_life": None,
            "ike_sa": None, "child_sas": [], "in_bytes": 0, "out_bytes": 0,
        })

    # Traffic selectors per connection as whack names it ('"db/0x1"', '"db"[2]'):
    # a conn's (or 4.x sub-conn's) own lines are what it declares, an instance's
    # what was negotiated for it (narrowed, with narrowing=yes).
    selectors, declared = {}, {}

    for line in _unprefix(status_text):
        state = _STATE_RE.match(line)
        if state:
            entry = conn_entry(_base(state["conn"]))
            rest, name = state["rest"], state["state"]
            replace_in = _seconds_after(rest, "REPLACE")  # "REPLACE in 0s" is 0, not absent
            sa = {
                "serial": int(state["serial"]),
                "conn": f'"{state["conn"]}"' + (f'[{state["inst"]}]' if state["inst"] else ""),
                "state": name,
                "description": state["desc"],
                "established": "ESTABLISHED" in name,
                "replace_in": (replace_in if replace_in is not None
                               else _seconds_after(rest, "EXPIRE")),
            }
            if "CHILD" in name or re.search(r"\bIKE SA #\d+", rest):
                parent = re.search(r"\bIKE SA #(\d+)", rest)
                sa["ike_sa"] = int(parent.group(1)) if parent else None
                entry["child_sas"].append(sa)
            elif entry["ike_sa"] is None or "newest" in rest or sa["established"]:
                entry["ike_sa"] = sa
            continue
        match = _CONN_RE.match(line)
        if not match:
            continue
        whack_name, rest = match["conn"], match["rest"]
        entry = conn_entry(_base(whack_name))
        if match["inst"]:
            instance = f'"{whack_name}"[{match["inst"]}]'
            if instance not in entry["instances"]:
                entry["instances"].append(instance)
            entry["template"] = True
        elif "/" in whack_name and whack_name not in entry["subconns"]:
            entry["subconns"].append(whack_name)
        if "..." in rest:
            label = f'"{whack_name}"' + (f'[{match["inst"]}]' if match["inst"] else "")
            pairs = _selector_pairs(rest.split(";", 1)[0])
            for target in [selectors.setdefault(label, [])] + (
                    [] if match["inst"] else [declared.setdefault(_base(whack_name), [])]):
                target += [p for p in pairs if p not in target]
        if "..." in rest and not match["inst"]:
            topology = rest.split(";", 1)[0]
            left, _, right = _masked(topology).partition("...")
            local, remote = _endpoint(left, "left"), _endpoint(right, "right")
            if entry["local"] is None:
                entry["local"], entry["remote"] = local, remote
            else:  # another of rightsubnets={...}: collect its selector
                for subnet in remote["subnets"]:
                    if subnet not in entry["remote"]["subnets"]:
                        entry["remote"]["subnets"].append(subnet)
        lives = re.search(r"ike_life: (\d+)s; ipsec_life: (\d+)s", rest)
        if lives:
            entry["ike_life"], entry["ipsec_life"] = int(lives.group(1)), int(lives.group(2))

    for line in _unprefix(traffic_text):
        match = _TRAFFIC_RE.match(line)
        if not match:
            continue
        entry = conn_entry(_base(match["conn"]))
        serial = int(match["serial"])
        entry["in_bytes"] += int(match["in"])
        entry["out_bytes"] += int(match["out"])
        for sa in entry["child_sas"]:
            if sa["serial"] == serial:
                sa.update(in_bytes=int(match["in"]), out_bytes=int(match["out"]),
                          age=max(0, int(now) - int(match["add_time"])))

    for base, entry in conns.items():
        ike = entry["ike_sa"]
        if ike and ike["replace_in"] is not None and entry["ike_life"]:
            # REPLACE fires at ike_life after the SA was made: age = life - time left.
            ike["age"] = max(0, entry["ike_life"] - ike["replace_in"])
        elif ike:
            ike["age"] = None
        for sa in entry["child_sas"]:
            if sa["ike_sa"] is None and ike:  # 5.x names no parent on a Child SA's line
                sa["ike_sa"] = ike["serial"]
        children = [sa for sa in entry["child_sas"] if sa["established"]]
        entry["ike_established"] = bool(ike and ike["established"])
        entry["child_established"] = bool(children)
        # Up means every declared (local, remote) selector pair is carried by an
        # established Child SA: a peer with narrowing may accept only some.
        wanted = declared.get(base, [])
        covered = []
        for sa in children:
            found = selectors.get(sa["conn"]) or selectors.get(sa["conn"].split("[", 1)[0])
            # A state line without any connection line (--showstates alone):
            # nothing says what it carries, take it for the whole conn.
            covered += found if found is not None else wanted
        entry["subnets_covered"], entry["subnets_missing"] = _coverage(wanted, covered)
        carried = entry["ike_established"] and bool(children)
        entry["up"] = carried and not entry["subnets_missing"]
        # Partial: some declared subnets carried. Child SAs narrowed to none of them
        # carry nothing the tunnel is for: down, so that recovery may fail over.
        entry["partial"] = (carried and bool(entry["subnets_covered"])
                            and bool(entry["subnets_missing"]))
        entry["state"] = "up" if entry["up"] else ("partial" if entry["partial"] else "down")
        entry["reason"] = None if entry["up"] else _state_reason(entry)
    return {"conns": conns, "tunnels": _tunnels(conns), "summary": _summary(conns)}


def _state_reason(entry):
    if entry.get("partial"):
        total = len(entry["subnets_covered"]) + len(entry["subnets_missing"])
        return (f"partial: Child SAs carry {len(entry['subnets_covered'])} of {total} remote "
                f"subnets; missing {', '.join(entry['subnets_missing'])}")
    ike = entry["ike_sa"]
    if ike is None:
        return "no IKE SA"
    if not ike["established"]:
        return f"IKE SA #{ike['serial']} in {ike['state']} ({ike['description']})"
    if entry.get("child_established") and entry["subnets_missing"]:
        return (f"Child SAs carry none of the {len(entry['subnets_missing'])} remote subnets; "
                f"missing {', '.join(entry['subnets_missing'])}")
    if entry["child_sas"]:
        child = entry["child_sas"][-1]
        return f"Child SA #{child['serial']} in {child['state']} ({child['description']})"
    return "IKE SA established, no Child SA"


def _tunnels(conns):
    """Pair NAME with NAME-backup: which one carries the tunnel now."""
    tunnels = {}
    for name in sorted(conns):
        if name.endswith(BACKUP_SUFFIX) and name[: -len(BACKUP_SUFFIX)] in conns:
            continue
        backup = name + BACKUP_SUFFIX if name + BACKUP_SUFFIX in conns else None
        live = [role for role, conn in (("primary", name), ("backup", backup))
                if conn and conns[conn]["ike_established"]]
        active = live[0] if len(live) == 1 else ("both" if live else None)
        carrying = [conns[c] for c in (name, backup) if c]
        up = any(c["up"] for c in carrying)
        partial = [c for c in carrying if c["partial"]]
        state = "up" if up else ("partial" if partial else "down")
        # What no conn of the tunnel carries: nothing when up, the partial
        # conn's gaps, else every declared remote subnet.
        missing = [] if up else (partial[0]["subnets_missing"] if partial else
                                 list((conns[name]["remote"] or {}).get("subnets") or []))
        tunnels[name] = {"primary": name, "backup": backup, "active": active, "up": up,
                         "state": state, "missing": missing}
    return tunnels


def _summary(conns):
    tunnels = _tunnels(conns)
    up = sum(1 for t in tunnels.values() if t["state"] == "up")
    partial = sum(1 for t in tunnels.values() if t["state"] == "partial")
    return {"conns_loaded": len(conns), "tunnels": len(tunnels), "up": up, "partial": partial,
            "down": len(tunnels) - up - partial}


# Specific causes first (a notification, the kernel's refusal), generic ones after.
_FAILURE_MARKERS = (
    ("AUTHENTICATION_FAILED", "authentication failed", "TS_UNACCEPTABLE", "NO_PROPOSAL_CHOSEN",
     "INVALID_KE_PAYLOAD", "INVALID_SYNTAX", "Protocol not supported", "no suitable connection",
     "timeout", "retransmission"),
    ("rejected", "failed", "ERROR"),
)


def _failure_reason(log_lines, conn):
    """The latest pluto log message about ``conn`` (or its ``/NxM`` sub-conns)
    that says why it failed, preferring a specific cause; None if none."""
    pattern = re.compile(rf'"{re.escape(conn)}(/[^"]*)?"')
    for markers in _FAILURE_MARKERS:
        for line in reversed(log_lines):
            found = pattern.search(line)
            if found and any(m in line for m in markers):
                return line[found.start():].strip()
    return None


def _parse_version(text):
    """``ipsec --version`` (``Libreswan 5.2``, ``Libreswan U5.1/K6.1...``) as a dict."""
    match = re.search(r"Libreswan\s+\D*(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    if not match:
        return None
    return {"version": ".".join(g for g in match.groups() if g), "major": int(match.group(1)),
            "minor": int(match.group(2))}


def _parse_package_version(text):
    """A package manager's version (``5.2-2.2``, ``1:4.10-2+deb12u1``, ``5.2-6.el10``)
    as ``_parse_version``'s dict; None when empty or not a version."""
    match = re.match(r"^(?:\d+:)?(\d+)\.(\d+)(?:\.(\d+))?(?=$|[-+~_.])", (text or "").strip())
    if not match:
        return None
    return {"version": ".".join(g for g in match.groups() if g), "major": int(match.group(1)),
            "minor": int(match.group(2))}


def _parse_algparse(text):
    """``ipsec algparse -v2 'ike=...'`` output (4.x and 5.x print the same): the
    proposals it understood and its ERROR lines, without the echoed command line."""
    proposals, errors = [], []
    for line in (text or "").splitlines():
        line = line.strip()
        if not line or line.startswith("algparse "):
            continue
        if line.startswith("ERROR"):
            errors.append(line.removeprefix("ERROR:").strip())
        else:
            proposals.append(line)
    return {"proposals": proposals, "errors": errors}


def _parse_configsetup(text):
    """``ipsec addconn --configsetup`` (``export key='value'`` lines, what pluto
    will use: ipsec.conf's config setup over the compiled defaults) as a dict."""
    values = {}
    for line in (text or "").splitlines():
        match = re.match(r"^(?:export\s+)?(\w+)='([^']*)'$", line.strip())
        if match:
            values[match.group(1)] = match.group(2)
    return values


# -- Salt side ---------------------------------------------------------------------
def __virtual__():
    # Always: the role must render and test=True predict on a host without libreswan;
    # the functions that need pluto say that it is missing (NOT_INSTALLED).
    return __virtualname__


def _ipsec_path():
    return shutil.which("ipsec") or next(
        (p for p in ("/usr/sbin/ipsec", "/sbin/ipsec") if os.path.exists(p)), None)


def installed():
    """
    True when the ipsec command (the libreswan package) is installed.

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw*' libreswan.installed
    """
    return _ipsec_path() is not None


# Every subprocess gets a timeout (s): a hung pluto (SIGSTOP, deadlock) must never hang a
# job, a state run or the beacon, which runs inside the salt-minion process.
QUERY_TIMEOUT = 10    # whack --status/--trafficstatus, --version, addconn --configsetup, algparse
CONTROL_TIMEOUT = 30  # whack --initiate/--terminate/--delete, addconn (loads a conn), checknss
LOG_TIMEOUT = 10      # journalctl
QUERY_ARGS = frozenset(("--status", "--trafficstatus", "--version", "--configsetup",
                        "--checkconfig", "algparse"))


def _timeout_for(args):
    """The timeout of ``ipsec ARGS``: short for read-only queries, longer for control calls
    (their own waits, e.g. ``up``'s, are separate and bounded by ``wait``)."""
    return QUERY_TIMEOUT if QUERY_ARGS.intersection(args) else CONTROL_TIMEOUT


def _timed_out(result, elapsed, timeout):
    """Did cmd.run_all kill the command at its timeout? Salt then returns retcode 1,
    empty stderr and ``CMD : Timed out after N seconds`` in stdout."""
    return (result.get("retcode") == 1 and not result.get("stderr")
            and elapsed >= timeout * 0.9 and "Timed out after" in str(result.get("stdout", "")))


def _timeout_arg(value):
    """A timeout argument as a number (3, 2.5); None/0/'' for the default."""
    if not value:
        return None
    value = float(value)
    if value <= 0:
        raise ValueError(f"timeout={value}: must be positive")
    return int(value) if value.is_integer() else value


def _timeout_message(args, timeout):
    """The error of a timed-out ``ipsec ARGS`` (names what did not answer and the bound)."""
    command = " ".join(("ipsec",) + tuple(args))
    who = "pluto" if args and args[0] == "whack" else command.split()[1] if args else "ipsec"
    return f"{who} did not answer `{command}` within {timeout} s"


def _run_bounded(argv, timeout, message, **kwargs):
    """cmd.run_all ARGV with ``timeout``; a timeout becomes retcode 124 with ``message`` in
    stderr and ``timed_out`` True (never a hang, never Salt's bare "Timed out")."""
    started = time.monotonic()
    result = __salt__["cmd.run_all"](argv, python_shell=False, ignore_retcode=True,
                                     timeout=timeout, **kwargs)
    if _timed_out(result, time.monotonic() - started, timeout):
        return {"retcode": 124, "stdout": "", "stderr": message, "timed_out": True,
                "pid": result.get("pid")}
    result["timed_out"] = False
    return result


def _ipsec(*args, timeout=None):
    """Run ``ipsec ARGS`` (never with a secret in argv) with a timeout (``_timeout_for``);
    return cmd.run_all's dict plus ``timed_out`` (then retcode 124 and the reason in
    stderr). Raises CommandExecutionError (NOT_INSTALLED) without libreswan."""
    path = _ipsec_path()
    if path is None:
        raise CommandExecutionError(NOT_INSTALLED)
    timeout = timeout or _timeout_for(args)
    return _run_bounded([path, *args], timeout, _timeout_message(args, timeout),
                        env={"LC_ALL": "C"})


def _candidate():
    """The Libreswan version the package manager would install (no refresh: a
    pkg state of the same run refreshes first), or None."""
    try:
        text = __salt__["pkg.latest_version"](PACKAGE, refresh=False)
    except (CommandExecutionError, KeyError):
        return None
    info = _parse_package_version(text if isinstance(text, str) else "")
    if info:
        info.update(installed=False, package_version=text)
    return info


def version():
    """
    The installed Libreswan version: ``{"version": "5.2", "major": 5, "minor": 2,
    "installed": true}``. Without libreswan, the version the package manager
    would install (``"installed": false``, ``package_version``), which is what
    test=True renders for; None if neither is known.

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw*' libreswan.version
    """
    path = _ipsec_path()
    if path is None:
        return _candidate()
    key = (path, os.stat(path).st_mtime)  # an upgrade in place changes the version
    cached = __context__.get("libreswan.version")
    if not cached or cached[0] != key:
        result = _ipsec("--version")
        info = _parse_version(result["stdout"] + result["stderr"])
        if info:
            info["installed"] = True
        cached = __context__["libreswan.version"] = (key, info)
    return cached[1]


def _major():
    info = version()
    if not info:
        raise CommandExecutionError(
            f"cannot tell which Libreswan to render for: no ipsec command and no installable "
            f"{PACKAGE} package known to the package manager (refresh it: pkg.refresh_db)")
    return info["major"]


def nss_dir():
    """
    The NSS database directory pluto uses: ``nssdir`` of ``ipsec addconn
    --configsetup`` (ipsec.conf's config setup over Libreswan's compiled
    default; /var/lib/ipsec/nss on Debian 12/13 and EL9/10).

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw*' libreswan.nss_dir
    """
    result = _ipsec("addconn", "--configsetup")
    found = _parse_configsetup(result["stdout"]).get("nssdir")
    if result["retcode"] != 0 or not found:
        raise CommandExecutionError("ipsec addconn --configsetup named no nssdir: "
                                    + (result["stderr"] or result["stdout"]).strip()[-500:])
    return found


def nss_initialized():
    """
    True when pluto's NSS database exists (``cert9.db`` and ``key4.db`` in
    ``nss_dir``); False without libreswan. Read-only: the guard of the
    formula's ``ipsec initnss``.

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw*' libreswan.nss_initialized
    """
    if not installed():
        return False
    directory = nss_dir()
    paths = [os.path.join(directory, name) for name in ("cert9.db", "key4.db")]
    return all(os.path.isfile(path) and os.path.getsize(path) > 0 for path in paths)


def init_nss():
    """
    Create pluto's NSS database in ``nss_dir`` if it is missing (``ipsec
    checknss --nssdir DIR``: what ipsec.service runs before pluto, a no-op
    when the database exists). Returns ``{"nss_dir", "created"}``.

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw*' libreswan.init_nss
    """
    directory = nss_dir()
    if nss_initialized():
        return {"nss_dir": directory, "created": False}
    result = _ipsec("checknss", "--nssdir", directory)
    if result["retcode"] != 0 or not nss_initialized():
        raise CommandExecutionError(f"ipsec checknss --nssdir {directory} failed (exit "
                                    f"{result['retcode']}): "
                                    + (result["stderr"] or result["stdout"]).strip()[-500:])
    return {"nss_dir": directory, "created": True}


def _pluto_log(lines=400, timeout=LOG_TIMEOUT):
    result = _run_bounded(
        ["journalctl", "-u", "ipsec.service", "-o", "cat", "-n", str(lines), "--no-pager"],
        timeout, f"journalctl did not answer within {timeout} s")
    return result["stdout"].splitlines() if result["retcode"] == 0 else []


def _ike_established_in(lines, name):
    """Whether pluto's log ``lines`` record an IKE SA of conn ``name`` (or of its 4.x
    sub-conns ``name/0x1``...) established, as initiator or responder."""
    conn = re.compile(rf'^"{re.escape(name)}(?:/0x[0-9a-f]+)?"(?:\[\d+\])? .*'
                      r"\b(?:initiator|responder) established IKE SA\b")
    return any(conn.search(line) for line in lines)


def peer_answered(name, since):
    """
    Whether conn ``name``'s peer completed an IKE SA with this host since ``since``
    (UNIX time), from pluto's log: the peer answers, even where that IKE SA did
    not last (Libreswan 4.10 deletes it at once when its first Child SA cannot
    route over another conn's, as a primary's cannot beside the backup that
    carries the tunnel: ``cannot route -- route already in use``).

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw1' libreswan.peer_answered remote-db 1796000000
    """
    result = _run_bounded(
        ["journalctl", "-u", "ipsec.service", "-o", "cat", "--since", f"@{int(float(since))}",
         "--no-pager"], LOG_TIMEOUT, f"journalctl did not answer within {LOG_TIMEOUT} s")
    return result["retcode"] == 0 and _ike_established_in(result["stdout"].splitlines(), name)


def status(timeout=None, reasons=True):
    """
    Structured tunnel status from one ``whack --status`` and one
    ``whack --trafficstatus`` (Libreswan 4.x and 5.x output).

    ``conns``: per conn (``NAME``, ``NAME-backup``): ``loaded``, ``template``
    and ``instances`` (``"name"[N]``), ``local``/``remote`` (address, id,
    subnets = traffic selectors), ``ike_sa`` (serial, state, age in s),
    ``child_sas`` (state, in/out bytes, age), ``in_bytes``/``out_bytes``,
    ``up`` and, when down, ``reason`` (from the states, else pluto's log).
    ``tunnels``: per tunnel which of primary/backup is ``active``.
    ``summary``: tunnels up and down. ``running``: pluto answers;
    ``installed``: libreswan is installed (if not, ``error`` says so).
    Each ``whack`` query is bounded by ``timeout`` s (default ``QUERY_TIMEOUT``):
    a pluto that does not answer gives ``running`` false, ``timed_out`` true
    and an ``error`` naming the command and the bound. ``reasons=False``
    leaves pluto's log unread: a down conn's ``reason`` then comes from its
    states alone (the pack's polls, which only need up or down, pass it).

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw*' libreswan.status
        salt 'vpn-gw*' libreswan.status timeout=3
        salt 'vpn-gw*' libreswan.status reasons=False
    """
    return _status(reasons=reasons, timeout=timeout)


def _not_running(error, installed_=True):
    return {"running": False, "installed": installed_, "error": error,
            "conns": {}, "tunnels": {},
            "summary": {"conns_loaded": 0, "tunnels": 0, "up": 0, "partial": 0,
                        "down": 0}}


def _status(reasons, timeout=None):
    if not installed():
        return _not_running(NOT_INSTALLED, installed_=False)
    timeout = _timeout_arg(timeout)
    result = _ipsec("whack", "--status", timeout=timeout)
    if result["retcode"] != 0:
        return dict(_not_running((result["stderr"] or result["stdout"]).strip()),
                    timed_out=result["timed_out"])
    traffic = _ipsec("whack", "--trafficstatus", timeout=timeout)
    parsed = _parse_status(result["stdout"], traffic["stdout"])
    down = [name for name, conn in parsed["conns"].items() if not conn["up"]]
    if down and reasons:
        log_lines = _pluto_log(timeout=timeout or LOG_TIMEOUT)
        for name in down:
            logged = _failure_reason(log_lines, name)
            conn = parsed["conns"][name]
            if logged and conn["partial"]:  # keep which subnets are missing
                conn["reason"] += f"; pluto's log: {logged}"
            elif logged:
                conn["reason"] = logged
    parsed["running"] = True
    parsed["installed"] = True
    return parsed


def list_conns():
    """
    Names of the conns loaded into pluto (sub-conns and instances folded into
    their conn).

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw*' libreswan.list_conns
    """
    return sorted(_status(reasons=False)["conns"])


def check_config(path):
    """
    Validate a rendered conn file before it replaces anything: our own checks
    of every conn's values (what ``addconn --checkconfig`` lets through: bad
    CIDRs, a missing right=, unknown algorithms), ``addconn --checkconfig``
    (any complaint fails, not only its exit code) and ``algparse`` on ike= and
    phase2alg=. Returns ``{"valid": bool, "errors": [...]}``.

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw*' libreswan.check_config /etc/ipsec.d/remote-db.conf
    """
    with open(path, encoding="utf-8") as handle:
        conns = _parse_conf(handle.read())
    errors = [] if conns else [f"{path}: no conn section"]
    for name, settings in conns.items():
        errors += [f"conn {name}: {e}" for e in _check_settings(settings)]
        for key, kind in (("ike", "ike"), ("phase2alg", "esp")):
            if key in settings:
                result = _ipsec("algparse", "-v2", f"{kind}={settings[key]}")
                parsed = _parse_algparse(result["stdout"] + result["stderr"])
                if result["retcode"] != 0 or parsed["errors"]:
                    errors.append(f"conn {name}: {key}: "
                                  + ("; ".join(parsed["errors"])
                                     or f"algparse exited {result['retcode']}"))
    with tempfile.TemporaryDirectory(prefix="libreswan-check-") as scratch:
        config = os.path.join(scratch, "ipsec.conf")
        with open(config, "w", encoding="utf-8") as handle:
            handle.write(f"config setup\n\ninclude {os.path.abspath(path)}\n")
        checked = _ipsec("addconn", "--checkconfig", "--config", config)
        complaints = [line for line in (checked["stdout"] + checked["stderr"]).splitlines()
                      if line.strip()]
        if checked["retcode"] != 0 or complaints:
            errors += [f"addconn --checkconfig: {line}" for line in complaints] or [
                f"addconn --checkconfig exited {checked['retcode']}"]
    return {"valid": not errors, "errors": errors}


def _whack_conn(action, name):
    result = _ipsec("whack", "--name", name, action)
    return {"name": name, "ok": result["retcode"] == 0,
            "output": [line for line in _unprefix(result["stdout"] + result["stderr"]) if line]}


def up(name, wait=10, timeout=None):
    """
    Initiate conn ``name`` (asynchronously) and wait up to ``wait`` seconds for
    its IKE SA. Returns the conn's status entry plus ``initiated``. Each read
    of pluto's status is bounded by ``timeout`` s (default ``QUERY_TIMEOUT``;
    the recovery passes ``status_timeout``).

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw1' libreswan.up remote-db
        salt 'vpn-gw1' libreswan.up remote-db-backup wait=20
    """
    before = _status(reasons=False, timeout=timeout)["conns"].get(name)
    negotiating = before and before["ike_sa"] and not before["ike_sa"]["established"]
    # An IKE SA still negotiating is retried by pluto itself; a second initiate of a
    # narrowing template makes a second instance, and Libreswan 5.2's pluto aborts
    # (ASSERTION FAILED ... still in use) when that conn is then terminated.
    result = {"retcode": 0} if negotiating else _ipsec(
        "whack", "--name", name, "--initiate", "--asynchronous")
    deadline = time.monotonic() + float(wait)
    while True:  # pluto's log is read once, for the reason of a conn that did not come up
        conn = _status(reasons=False, timeout=timeout)["conns"].get(name)
        if conn is None or conn["ike_established"] or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if conn is not None and not conn["up"]:
        conn = _status(reasons=True, timeout=timeout)["conns"].get(name) or conn
    return {"name": name, "initiated": result["retcode"] == 0, "loaded": conn is not None,
            "ike_established": bool(conn and conn["ike_established"]),
            "up": bool(conn and conn["up"]), "reason": conn["reason"] if conn else "not loaded"}


def down(name):
    """
    Terminate conn ``name``'s SAs (it stays loaded; ``auto=start`` does not
    bring it back until pluto restarts).

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw1' libreswan.down remote-db
    """
    return _whack_conn("--terminate", name)


def restart_conn(name, wait=10, timeout=None):
    """
    Take conn ``name`` down and up again (configuration unchanged).

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw1' libreswan.restart_conn remote-db
    """
    down(name)
    return up(name, wait=wait, timeout=timeout)


def switch(name, to="backup", wait=10, timeout=None):
    """
    Move tunnel ``name`` to its ``primary`` or ``backup`` peer: the other conn
    is taken down first, so the two never carry the same selectors at once.

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw1' libreswan.switch remote-db to=backup
    """
    if to not in ("primary", "backup"):
        raise ValueError(f"to={to!r}: use primary or backup")
    target, other = (name + BACKUP_SUFFIX, name) if to == "backup" else (name, name + BACKUP_SUFFIX)
    down(other)
    return up(target, wait=wait, timeout=timeout)


def reread_secrets():
    """
    Make pluto re-read ``/etc/ipsec.secrets`` (and the files it includes).

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw*' libreswan.reread_secrets
    """
    result = _ipsec("whack", "--rereadsecrets")
    return {"ok": result["retcode"] == 0,
            "output": [line for line in _unprefix(result["stdout"]) if "PSK" not in line]}


# -- per-conn files ------------------------------------------------------------------
def _paths(name):
    return os.path.join(CONF_DIR, f"{name}.conf"), os.path.join(CONF_DIR, f"{name}.secrets")


def _read(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _write_atomic(path, text, mode):
    """``salt.utils.atomicfile``: a temp file beside ``path`` (``.___atomic_write*``, which
    ipsec.d's ``*.conf``/``*.secrets`` includes never match), renamed over it. The new file
    takes the old one's mode and owner, so the old one gets root and ``mode`` first; a new
    one is born under a umask that allows no more than ``mode`` (a PSK is never readable)."""
    if os.path.exists(path):
        os.chown(path, 0, 0)
        os.chmod(path, mode)
    with salt.utils.files.set_umask(0o777 & ~mode):
        with salt.utils.atomicfile.atomic_open(path, "w") as handle:
            try:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            except OSError:
                # atomic_open's exit closes the file before it removes it: the close
                # flushes the refused text again (disk full) and raises first.
                os.unlink(handle.name)
                raise
    os.chown(path, 0, 0)


def _pillar_secret(key):
    # Salt 3008 masks pillar.get's answer ("**********") unless asked not to; older
    # releases neither mask it nor take the argument (TypeError).
    if not key:
        return None
    if SALT_MASKS_PILLAR:
        return __salt__["pillar.get"](key, None, unmask=True)
    return __salt__["pillar.get"](key, None)


def _psks(psk_pillar, backup_psk_pillar):
    psk = _pillar_secret(psk_pillar)
    return {"primary": psk, "backup": _pillar_secret(backup_psk_pillar) if backup_psk_pillar
            else psk}


def plan_conn(name, psk_pillar, backup_psk_pillar=None, source="conn", **spec):
    """
    What ``conn_present`` would change, without changing anything: validation
    errors (naming the pillar key), the unified diff of ``NAME.conf``,
    whether the secrets differ (never their content) and whether pluto has
    the conns loaded.

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw1' libreswan.plan_conn remote-db psk_pillar=vpn_gateway:tunnel:psk \\
            local='{address: 198.18.0.11, tunnel_ip: 198.19.10.1}' \\
            peers='{primary: {address: 198.18.0.21}}' remote_subnets='[198.19.1.10/32]'
    """
    spec = {k: v for k, v in spec.items() if not k.startswith("__")}
    conf_path, secrets_path = _paths(name)
    try:
        conn = _validate(name, spec, _psks(psk_pillar, backup_psk_pillar), source,
                         {"primary": psk_pillar, "backup": backup_psk_pillar or psk_pillar})
        major = _major()
    except ConnError as exc:
        return {"name": name, "errors": [f"{key}: {message}" for key, message in exc.errors]}
    except CommandExecutionError as exc:
        return {"name": name, "errors": [str(exc)]}
    new_conf = _render_conf(conn, major)
    old_conf = _read(conf_path)
    if old_conf != new_conf and installed():
        # what the real run refuses, test=True refuses too (addconn --checkconfig,
        # algparse: read-only, on a scratch copy); without libreswan yet the run
        # installs it and checks then
        with tempfile.TemporaryDirectory(prefix="libreswan-") as scratch:
            candidate = os.path.join(scratch, f"{name}.conf")
            with open(candidate, "w", encoding="utf-8") as handle:
                handle.write(new_conf)
            checked = check_config(candidate)
        if not checked["valid"]:
            return {"name": name, "errors": ["rendered conn refused, nothing changed:",
                                             *checked["errors"]]}
    old_secrets, psks = _read(secrets_path), _psks(psk_pillar, backup_psk_pillar)
    secrets_same = old_secrets == _render_secrets(conn, psks)
    current = _status(reasons=False)
    loaded = current["conns"]
    roles = {name: "primary", name + BACKUP_SUFFIX: "backup"}
    expected = [c for c in roles if conn[roles[c]]]
    # Only the conns whose own section changed, that pluto lacks or holds
    # otherwise are reloaded: a reload deletes a conn's SAs, and a change to the
    # backup must not cut the primary's live tunnel.
    old_sections, new_sections = _parse_conf(old_conf or ""), _parse_conf(new_conf)
    to_load = [c for c in expected if old_sections.get(c) != new_sections.get(c)
               or c not in loaded or _matches(conn, loaded[c], roles[c])]
    # Conns whose PSK line is new: their live SA was made with the old key.
    old_lines = set((old_secrets or "").splitlines())
    rekeyed = [c for c in expected
               if _render_secrets({"leftid": conn["leftid"], roles[c]: conn[roles[c]]},
                                  psks).splitlines()[-1] not in old_lines]
    return {
        "active": current["tunnels"].get(name, {}).get("active"),
        "name": name,
        "errors": [],
        "conf_path": conf_path,
        "conf_changed": old_conf != new_conf,
        "diff": "".join(difflib.unified_diff(
            (old_conf or "").splitlines(True), new_conf.splitlines(True),
            fromfile=conf_path if old_conf is not None else "/dev/null", tofile=conf_path)),
        "secrets_changed": not secrets_same,
        "conns": expected,
        "not_loaded": [c for c in expected if c not in loaded],
        "to_load": to_load,
        "rekeyed": rekeyed if not secrets_same else [],
        "stale_loaded": [name + BACKUP_SUFFIX] if not conn["backup"]
        and name + BACKUP_SUFFIX in loaded else [],
        "conn": conn,
        "major": major,
    }


def _load(names):
    """Swap conns into pluto one by one (replace = delete + add), pluto keeps running."""
    errors = []
    for conn in names:
        _ipsec("whack", "--name", conn, "--delete")
        added = _ipsec("addconn", "--config", IPSEC_CONF, conn)
        output = (added["stdout"] + added["stderr"]).strip()
        if added["retcode"] != 0 or re.search(r"\b(error|bad|fail)", output, re.I):
            errors.append(f"addconn {conn}: {output or 'exit ' + str(added['retcode'])}")
    return errors


def _matches(conn, loaded, role):
    """Differences between the conn as declared and as pluto shows it."""
    peer = conn[role]
    local, remote = loaded["local"] or {}, loaded["remote"] or {}
    wanted = {
        "local address": (conn["left"], local.get("address")),
        "local id": (conn["leftid"], local.get("id")),
        "local subnets": ([f"{conn['tunnel_ip']}/32"], local.get("subnets")),
        "remote address": (peer["right"], remote.get("address")),
        "remote id": (peer["rightid"], remote.get("id")),
        "remote subnets": (sorted(conn["remote_subnets"]), sorted(remote.get("subnets") or [])),
        "ike lifetime": (conn["ikelifetime"], loaded["ike_life"]),
        "ipsec lifetime": (conn["salifetime"], loaded["ipsec_life"]),
    }
    return [f"{what}: want {want}, pluto has {have}"
            for what, (want, have) in wanted.items() if want != have]


def _verify(name, conn, current):
    """Differences between a declared tunnel (``_validate``'s result) and what
    pluto has loaded (``status()["conns"]``); empty when they match."""
    problems = []
    for role, conn_name in (("primary", name), ("backup", name + BACKUP_SUFFIX)):
        if not conn.get(role):
            if conn_name in current:
                problems.append(f"{conn_name}: loaded but not declared")
            continue
        if conn_name not in current:
            problems.append(f"{conn_name}: not loaded")
            continue
        problems += [f"{conn_name}: {p}" for p in _matches(conn, current[conn_name], role)]
    return problems


def apply_conn(name, psk_pillar, backup_psk_pillar=None, source="conn", **spec):
    """
    Make tunnel ``name`` as declared: validate, check the rendered file, write
    ``NAME.conf``/``NAME.secrets`` (0600) atomically, load the changed conns
    into the running pluto, bring the tunnel back to the peer that carried it
    (or up, if ``auto=start``), and verify. On a failed load the previous files
    are put back and reloaded. Returns ``{"result", "changes", "comment"}``
    without any secret.

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw1' libreswan.apply_conn remote-db psk_pillar=vpn_gateway:tunnel:psk ...
    """
    plan = plan_conn(name, psk_pillar, backup_psk_pillar, source, **spec)
    if plan["errors"]:
        return {"result": False, "changes": {}, "comment": "\n".join(plan["errors"])}
    if not installed():
        return {"result": False, "changes": {}, "comment": NOT_INSTALLED}
    conn = plan["conn"]
    major = plan["major"]
    conf_path, secrets_path = _paths(name)
    changes = {}  # plan_conn ran check_config on the rendered file (test=True too)
    old_conf, old_secrets = _read(conf_path), _read(secrets_path)
    conns = plan["conns"]
    writing = None
    try:
        if plan["secrets_changed"]:
            writing = secrets_path
            _write_atomic(secrets_path,
                          _render_secrets(conn, _psks(psk_pillar, backup_psk_pillar)), 0o600)
            reread_secrets()
            changes["psk"] = "changed"
        if plan["conf_changed"]:
            writing = conf_path
            _write_atomic(conf_path, _render_conf(conn, major), 0o644)
            changes["diff"] = plan["diff"]
    except OSError as exc:  # disk full, read-only /etc: the atomic write left the old file
        return _unwritten(writing, exc, secrets_path, old_secrets, "psk" in changes)
    to_load = plan["to_load"]
    for stale in plan["stale_loaded"]:
        _ipsec("whack", "--name", stale, "--delete")
        changes.setdefault("deleted", []).append(stale)
    # Run-time choice survives: the peer that carried the tunnel keeps it.
    target = name + BACKUP_SUFFIX if plan["active"] == "backup" and conn["backup"] \
        else (name if conn["auto"] == "start" or plan["active"] == "primary" else None)
    errors = _load(to_load)
    problems = list(errors)
    # Nothing loaded or deleted: plan_conn already found pluto's conns as declared
    # (a difference or a missing conn would be in to_load, an undeclared backup in
    # stale_loaded), so only a changed pluto is read again.
    if to_load or plan["stale_loaded"]:
        problems += _verify(name, conn, _status(reasons=False)["conns"])
    if problems:
        restored = _restore(conf_path, old_conf, secrets_path, old_secrets, conns, to_load)
        # addconn NAME ignores auto=: the reloaded conn that carried the tunnel
        # has no SA until it is initiated again.
        again = target if target in restored else None
        if again:
            _ipsec("whack", "--name", again, "--initiate", "--asynchronous")
        return {"result": False, "changes": {},
                "comment": "pluto did not load the conn as declared; the previous files were "
                           "put back" + (f" and {again} initiated again" if again else "")
                           + ":\n" + "\n".join(problems)}
    if to_load:
        changes["loaded"] = to_load
    initiated = None
    # Only the carrying conn, and only when its SA is gone (reloaded) or was
    # made with a PSK that changed: the other conn's changes leave it alone.
    if target and (target in to_load or target in plan["rekeyed"]):
        if target not in to_load:
            down(target)
        _ipsec("whack", "--name", target, "--initiate", "--asynchronous")
        initiated = target
    comment = f"conn {name} updated" if changes else f"conn {name} is as declared"
    return {"result": True, "changes": changes,
            "comment": comment + (f"; initiated {initiated}" if initiated else "")}


def _unwritten(path, exc, secrets_path, old_secrets, secrets_written):
    """The return of apply_conn when ``path`` could not be written (``exc``: disk full,
    read-only /etc): nothing is loaded, so pluto keeps running the previous tunnel; a
    secrets file written before a failing conf file is put back (and re-read). Only the
    reason's text goes out (never a secret)."""
    comment = (f"cannot write {path}: {exc.strerror or type(exc).__name__}; the previous "
               "file stays and pluto was not reloaded")
    if not secrets_written:
        return {"result": False, "changes": {}, "comment": comment}
    try:
        if old_secrets is None:
            os.unlink(secrets_path)
        else:
            _write_atomic(secrets_path, old_secrets, 0o600)
        reread_secrets()
    except (OSError, CommandExecutionError) as again:
        return {"result": False, "changes": {"psk": "changed"},
                "comment": f"{comment}; putting {secrets_path} back failed too: "
                           f"{getattr(again, 'strerror', None) or type(again).__name__}"}
    return {"result": False, "changes": {}, "comment": f"{comment}; {secrets_path} was put back"}


def _restore(conf_path, old_conf, secrets_path, old_secrets, conns, loaded):
    """Put the previous files back and reload the conns ``_load`` replaced
    (``loaded``): those of the previous file again, the new ones deleted.
    Returns the conns loaded again."""
    for path, text, mode in ((conf_path, old_conf, 0o644), (secrets_path, old_secrets, 0o600)):
        if text is None:
            if os.path.exists(path):
                os.unlink(path)
        else:
            _write_atomic(path, text, mode)
    reread_secrets()
    previous = _parse_conf(old_conf or "")
    for conn in (conns if old_conf is None else loaded):
        if conn not in previous:
            _ipsec("whack", "--name", conn, "--delete")
    again = [conn for conn in loaded if conn in previous]
    _load(again)
    return again


def remove_conn(name, test=False):
    """
    Take tunnel ``name`` (and ``name-backup``) down, delete them from pluto
    and remove ``NAME.conf``/``NAME.secrets``.

    CLI Example:

    .. code-block:: bash

        salt 'vpn-gw1' libreswan.remove_conn remote-db
    """
    paths = [p for p in _paths(name) if os.path.exists(p)]
    loaded = [c for c in (name, name + BACKUP_SUFFIX) if c in _status(reasons=False)["conns"]]
    changes = {}
    if paths:
        changes["removed"] = paths
    if loaded:
        changes["deleted"] = loaded
    if test or not changes:
        return {"result": None if changes and test else True, "changes": changes}
    for conn in loaded:
        down(conn)
        _ipsec("whack", "--name", conn, "--delete")
    for path in paths:
        os.unlink(path)
    reread_secrets()
    left = [c for c in (name, name + BACKUP_SUFFIX) if c in _status(reasons=False)["conns"]]
    left += [p for p in _paths(name) if os.path.exists(p)]
    return {"result": not left, "changes": changes,
            "comment": f"still present: {left}" if left else f"conn {name} removed"}
