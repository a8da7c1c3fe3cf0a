"""The gateway role's pillar schema: check pillar against it, render its reference.

The schema lives in the state tree (``salt://vpn_gateway/schema.yaml``): every
key with its type, default, example and meaning. The role checks pillar
against it when it renders, so a wrong key stops the run before anything on
the host changes, with an error that names the key and says how to fix it.
``docs/pillar.md`` is rendered from the same file.

A schema node is a mapping:

.. code-block:: yaml

    listen_port:
      type: port            # str int bool float list dict ip cidr port secret
      default: 6432         # or required: true
      example: 6432
      doc: The port PgBouncer listens on.
    users:
      type: dict
      values: {type: dict, keys: {password: {type: secret, required: true}}}
    nodes:
      type: list
      items: {type: ip}

``keys`` lists the known keys of a dict (others are refused); ``values`` is
the schema of every value of a dict whose keys are names chosen by the user;
``secret: true`` makes a node of another type a secret (a kubeconfig).

Errors never print a value found under a secret path, whatever its shape: a
node that is a secret, or holds one anywhere below it (``tunnel`` holds
``psk``; ``pooler:users:<name>`` holds ``password``), is described by its
kind only (``got a string (not shown: ...)``), so a password written straight
under the user name, or a webhook URL in place of the monitoring section,
stays out of the job cache and the logs. Under such a node a key whose value
is empty is not named either: that is the shape of a secret written as a key
(``app: {s3cret}``). Elsewhere a mapping or a list is described by its kind,
only a scalar is shown.

``firewall_rules`` derives the gateway's firewalld rich rules from pillar. It is
pure and lives here, not in the ``firewalld`` module: on a fresh host firewalld
is not installed yet and Salt core's ``firewalld`` module does not load, but the
role must render (and ``test=True`` predict) before the formula installs it.
"""
import importlib.util
import ipaddress
import json
import os

import salt.utils.yaml
from salt.exceptions import CommandExecutionError

__virtualname__ = "vpn_gateway"
SCHEMA_URL = "salt://vpn_gateway/schema.yaml"


def __virtual__():
    return __virtualname__


def _is_ip(value):
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return False
    return True


def _is_cidr(value):
    try:
        ipaddress.ip_network(str(value), strict=True)
    except ValueError:
        return False
    return True


# type name -> (check, what the fix asks for)
TYPES = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "secret": (lambda v: isinstance(v, str), "a string (a secret: keep it in an encrypted pillar)"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "dict": (lambda v: isinstance(v, dict), "a mapping"),
    "ip": (_is_ip, "an IPv4 or IPv6 address such as 198.18.0.11"),
    "cidr": (_is_cidr, "a network without host bits, such as 198.19.1.10/32"),
    "port": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536,
             "a port number from 1 to 65535"),
}


def _is_secret(node):
    return node.get("type") == "secret" or node.get("secret") is True


def _holds_secret(node):
    """True when ``node`` is a secret or has one anywhere below it."""
    children = list((node.get("keys") or {}).values())
    children += [node[k] for k in ("values", "items") if isinstance(node.get(k), dict)]
    return _is_secret(node) or any(_holds_secret(child) for child in children)


def _kind(value):
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    return {str: "a string", bool: "a boolean", int: "an integer",
            float: "a number"}.get(type(value), f"a {type(value).__name__}")


def _shown(node, value, secret=False):
    """How an error shows ``value`` found at ``node`` (``secret``: below a
    secret node): never a secret's value."""
    if secret or _is_secret(node):
        return "(secret, not shown)"
    if _holds_secret(node):
        return f"{_kind(value)} (not shown: this key holds secrets)"
    if isinstance(value, (dict, list)):
        return _kind(value)
    return repr(value)


def _named(node, key, value, secret=False):
    """``key`` as an error shows it, in a mapping at ``node``."""
    if secret or (value is None and _holds_secret(node)):
        return "<a key with an empty value, not shown: it may be a secret>"
    return str(key)


def _validate(schema, data, path, secret=False):
    """Errors (a list of strings, empty when valid) of ``data`` against ``schema``.

    ``path`` is the pillar key of ``data``, e.g. ``vpn_gateway``; each error
    starts with the full key of what is wrong and says what would be right.
    ``secret``: ``data`` lies below a secret node (none of it is shown).
    """
    secret = secret or _is_secret(schema)
    kind = schema.get("type", "dict")
    if kind not in TYPES:
        raise ValueError(f"schema for {path}: unknown type {kind!r}")
    check, wanted = TYPES[kind]
    if not check(data):
        return [f"pillar key {path}: expected {wanted}, got {_shown(schema, data, secret)}"]
    if "choices" in schema and data not in schema["choices"]:
        return [f"pillar key {path}: {_shown(schema, data, secret)} is not one of "
                f"{schema['choices']}"]
    errors = []
    if kind == "list" and "items" in schema:
        for index, item in enumerate(data):
            errors += _validate(schema["items"], item, f"{path}:{index}", secret)
    if kind == "dict":
        known = schema.get("keys")
        for key, value in data.items():
            if known is not None and key in known:
                errors += _validate(known[key], value, f"{path}:{key}", secret)
            elif "values" in schema:
                errors += _validate(schema["values"], value,
                                    f"{path}:{_named(schema, key, value, secret)}", secret)
            elif known is not None:
                errors.append(f"pillar key {path}:{_named(schema, key, value, secret)}: "
                              f"unknown key; known keys under {path}: "
                              f"{', '.join(sorted(known))} (see docs/pillar.md)")
        for key, node in (known or {}).items():
            if node.get("required") and key not in data:
                errors.append(f"pillar key {path}:{key}: required, {TYPES[node['type']][1]}; "
                              f"add it (example: {node.get('example', '...')})")
    return errors


def _load_schema():
    text = __salt__["cp.get_file_str"](SCHEMA_URL)
    if not text:
        raise CommandExecutionError(f"cannot read the pillar schema {SCHEMA_URL}")
    return salt.utils.yaml.safe_load(text)


def check_pillar(schema=None, pillar=None, raise_on_error=False):
    """Check the ``vpn_gateway`` pillar against the role's schema.

    Returns ``{"valid": bool, "errors": [...]}``; with ``raise_on_error`` an
    invalid pillar raises instead (the role's SLS does this at render time, so
    nothing on the host changes).

    schema
        The schema (a mapping with the top key ``vpn_gateway``); default: read
        from ``salt://vpn_gateway/schema.yaml``.
    pillar
        The data to check; default: this minion's ``vpn_gateway`` pillar.

    CLI Example:

    .. code-block:: bash

        salt-call vpn_gateway.check_pillar
    """
    schema = schema or _load_schema()
    data = __pillar__.get("vpn_gateway", {}) if pillar is None else pillar
    errors = _validate(schema["vpn_gateway"], data, "vpn_gateway")
    if errors and raise_on_error:
        raise CommandExecutionError("invalid pillar:\n  " + "\n  ".join(errors))
    return {"valid": not errors, "errors": errors}


def _reference_rows(node, path, rows):
    default = ("required" if node.get("required")
               else json.dumps(node["default"]) if "default" in node else "")
    example = node.get("example", "")
    meaning = node.get("doc", "")
    if "choices" in node:
        meaning += f" One of: {', '.join(map(str, node['choices']))}."
    kind = node.get("type", "dict") + (", secret" if node.get("secret") is True else "")
    rows.append((path, kind, default.replace("|", "\\|"),
                 str(example).replace("|", "\\|"), meaning.strip()))
    for key, child in (node.get("keys") or {}).items():
        _reference_rows(child, f"{path}:{key}", rows)
    if "values" in node:
        _reference_rows(node["values"], f"{path}:<name>", rows)
    if "items" in node:
        _reference_rows(node["items"], f"{path}:<n>", rows)
    return rows


def render_reference(schema=None):
    """The pillar reference (Markdown) for ``schema``: a table row per key.

    CLI Example:

    .. code-block:: bash

        salt-call vpn_gateway.render_reference
    """
    schema = schema or _load_schema()
    rows = _reference_rows(schema["vpn_gateway"], "vpn_gateway", [])
    lines = [
        "# Pillar reference",
        "",
        "Generated from `salt/states/vpn_gateway/schema.yaml` by",
        "`scripts/pillar-reference`; the role checks pillar against the same schema",
        "when it renders (`salt-call vpn_gateway.check_pillar` does it on demand).",
        "A complete example is in `pillar/vpn_gateway/`; its secrets are encrypted",
        "for the salt-master's key ([Secrets in Git](#secrets-in-git), below).",
        "",
        "| key | type | default | example | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| `{k}` | {t} | {d} | {e} | {doc} |" for k, t, d, e, doc in rows]
    return "\n".join(lines + ["", REFERENCE_END]) + "\n"


# docs/pillar.md: the generated reference, this line, then sections written by hand.
REFERENCE_END = "<!-- end of the generated reference: what follows is written by hand -->"


def _firewalld_rules_code():
    """The pure rule helpers of ``firewalld_rich.py`` (beside this file wherever the
    pack's modules are: synced extmods, the repo, the installed package), loaded as
    plain Python: no Salt loader, no firewalld needed."""
    global _FIREWALLD_RICH
    if _FIREWALLD_RICH is None:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "firewalld_rich.py")
        spec = importlib.util.spec_from_file_location("vpn_gateway_firewalld_rules", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _FIREWALLD_RICH = module
    return _FIREWALLD_RICH


_FIREWALLD_RICH = None


def firewall_rules(peers, nodes, pooler_port, node_exporter_port=None, salt_master=None):
    """
    The gateway's firewalld rich rules (normal form) from pillar values: IKE
    udp 500, NAT-T udp 4500 and ESP from the remote gateways (ipset vgw-peers);
    the pooler port and the node exporter port from the Kubernetes nodes
    (ipset vgw-nodes, see ``firewall_ipsets``); the salt-master's
    packets from its ports 4505/4506. Pure: needs neither firewalld nor Salt's
    firewalld module (``vpn_gateway.firewall`` renders with it on a fresh host).
    Bad pillar raises with the key at fault.

    CLI Example:

    .. code-block:: bash

        salt '*' vpn_gateway.firewall_rules \\
            '{"primary": {"address": "198.18.0.21"}}' '["198.18.2.31"]' 6432 9100 198.18.1.2
    """
    rules = _firewalld_rules_code()
    try:
        return rules._gateway_rules(peers, nodes, pooler_port, node_exporter_port, salt_master)
    except rules.RuleError as exc:
        raise CommandExecutionError(str(exc)) from None


def firewall_ipsets(peers, nodes):
    """
    The firewalld ipsets the gateway's rich rules take their sources from:
    ``vgw-peers`` (the remote gateways) and ``vgw-nodes`` (the Kubernetes
    nodes), ``vgw-peers6``/``vgw-nodes6`` for IPv6 addresses. Pure, like
    ``firewall_rules``. Bad pillar raises with the key at fault.

    CLI Example:

    .. code-block:: bash

        salt '*' vpn_gateway.firewall_ipsets '{"primary": {"address": "198.18.0.21"}}' \\
            '["198.18.2.31"]'
    """
    rules = _firewalld_rules_code()
    try:
        return rules._gateway_ipsets(peers, nodes)
    except rules.RuleError as exc:
        raise CommandExecutionError(str(exc)) from None
