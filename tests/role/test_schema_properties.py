"""Property tests (Hypothesis, issue 14) of the pillar schema validator
(``vpn_gateway._validate`` with salt/states/vpn_gateway/schema.yaml):

- the example pillar (pillar/, rendered with Jinja for each gateway as the
  master would, its PGP ciphertext left as it is: a secret is a string either
  way) stays valid under generated valid edits, the values drawn from the
  schema itself;
- each generated invalid edit (a wrong type, an unknown key, a bad address
  or network, a port out of range, a value outside the choices, a required
  key removed, a wrong shape at a secret path) is refused with one error that
  names the exact pillar key;
- no error ever holds a value found at a secret path, whatever its shape
  (random secret strings and numbers put at each secret and in place of each
  section that holds one, every error searched for each of them).
"""
import ipaddress
import json
import string

import jinja2
import pytest
import yaml
from hypothesis import given, settings, strategies as st
from repo_modules import REPO, load

pytestmark = pytest.mark.unit

vpn_gateway = load("salt/_modules/vpn_gateway.py")
SCHEMA = yaml.safe_load((REPO / "salt/states/vpn_gateway/schema.yaml").read_text())["vpn_gateway"]
GATEWAYS = ("vpn-gw1", "vpn-gw2")


def _merge(into, data):
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def example_pillar(minion_id):
    """The ``vpn_gateway`` pillar of pillar/ for ``minion_id``: each SLS through
    Jinja (grains id; Salt's ``json`` filter) and YAML, without the gpg step."""
    env = jinja2.Environment()
    env.filters["json"] = json.dumps
    pillar = {}
    for sls in sorted((REPO / "pillar" / "vpn_gateway").glob("*.sls")):
        data = yaml.safe_load(env.from_string(sls.read_text()).render(grains={"id": minion_id}))
        _merge(pillar, (data or {}).get("vpn_gateway") or {})
    return pillar


EXAMPLES = {minion: example_pillar(minion) for minion in GATEWAYS}


def errors(pillar):
    return vpn_gateway._validate(SCHEMA, pillar, "vpn_gateway")


def key_of(path):
    return ":".join(["vpn_gateway", *map(str, path)])


def is_secret(node):
    return node.get("type") == "secret" or node.get("secret") is True


def holds_secret(node):
    below = list((node.get("keys") or {}).values())
    below += [node[k] for k in ("values", "items") if isinstance(node.get(k), dict)]
    return is_secret(node) or any(holds_secret(child) for child in below)


def test_the_example_pillar_is_valid_as_rendered_here():
    for minion, pillar in EXAMPLES.items():
        assert set(pillar) == {"tunnel", "pooler", "kubernetes", "firewall", "monitoring"}
        assert errors(pillar) == [], minion


# -- values a schema node accepts ---------------------------------------------------------------
SCALARS = st.one_of(st.text(max_size=8), st.integers(), st.booleans(), st.none(),
                    st.floats(allow_nan=False))
ANYTHING = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
NAMES = st.from_regex(r"[a-z][a-z0-9_-]{0,10}", fullmatch=True)


def _network(address, prefix):
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


VALID_SCALARS = {
    "str": st.text(max_size=12),
    "secret": st.text(max_size=40),
    "int": st.integers(-10 ** 6, 10 ** 6),
    "float": st.integers(-100, 100) | st.floats(-1e6, 1e6),
    "bool": st.booleans(),
    "ip": st.ip_addresses().map(str),
    "cidr": st.one_of(
        st.builds(_network, st.ip_addresses(v=4), st.integers(0, 32)),
        st.builds(_network, st.ip_addresses(v=6), st.integers(0, 128))),
    "port": st.integers(1, 65535),
}


def valid(node):
    """A strategy of the values ``node`` accepts (what the docs promise)."""
    kind = node.get("type", "dict")
    if "choices" in node:
        return st.sampled_from(node["choices"])
    if kind == "dict":
        if "keys" in node:
            keys = node["keys"]
            return st.fixed_dictionaries(
                {k: valid(n) for k, n in keys.items() if n.get("required")},
                optional={k: valid(n) for k, n in keys.items() if not n.get("required")})
        if "values" in node:
            return st.dictionaries(NAMES, valid(node["values"]), max_size=2)
        return st.dictionaries(st.text(max_size=6), ANYTHING, max_size=3)
    if kind == "list":
        return st.lists(valid(node["items"]) if "items" in node else ANYTHING, max_size=3)
    return VALID_SCALARS[kind]


# -- values a schema node refuses ---------------------------------------------------------------
def _not_ip(text):
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return True
    return False


def _not_cidr(text):
    try:
        ipaddress.ip_network(text, strict=True)
    except ValueError:
        return True
    return False


_LISTS = st.lists(SCALARS, max_size=2)
_DICTS = st.dictionaries(NAMES, SCALARS, max_size=2)
_FLOATS = st.floats(allow_nan=False).filter(lambda f: f != int(f) if f == f and abs(f) < 1e300
                                            else True)
_HOST_BITS = st.builds(lambda a, p: f"{a}/{p}", st.ip_addresses(v=4), st.integers(0, 31)).filter(
    _not_cidr)
WRONG = {
    "str": st.one_of(st.integers(), st.booleans(), st.none(), _LISTS, _DICTS, _FLOATS),
    "int": st.one_of(st.text(max_size=6), _FLOATS, st.booleans(), st.none(), _LISTS, _DICTS),
    "float": st.one_of(st.text(max_size=6), st.booleans(), st.none(), _LISTS, _DICTS),
    "bool": st.one_of(st.text(max_size=6), st.integers(), st.none(), _LISTS, _DICTS, _FLOATS),
    "list": st.one_of(st.text(max_size=6), st.integers(), st.booleans(), st.none(), _DICTS),
    "dict": st.one_of(st.text(max_size=6), st.integers(), st.booleans(), st.none(), _LISTS),
    "ip": st.one_of(st.sampled_from(["198.18.0.300", "198.18.0", "198.18.0.11/32", "", "::g",
                                     "198.18.0.11 ", "localhost"]),
                    st.text(max_size=12).filter(_not_ip), st.integers(), st.booleans(),
                    st.none(), _LISTS),
    "cidr": st.one_of(_HOST_BITS, st.sampled_from(["198.19.1.0/33", "198.19.1.10/24",
                                                   "198.19.1.0/", "2001:db8::1/64"]),
                      st.text(max_size=12).filter(_not_cidr), st.integers(), st.none(), _LISTS),
    "port": st.one_of(st.integers(max_value=0), st.integers(min_value=65536), st.booleans(),
                      st.sampled_from(["6432", 6432.0]), st.none(), _LISTS),
}
WRONG["secret"] = WRONG["str"]


def wrong(node):
    kind = node.get("type", "dict")
    refused = [WRONG[kind]]
    if "choices" in node:  # the right type, outside the choices
        right = VALID_SCALARS.get(kind, st.nothing()) if kind != "str" else st.text(max_size=10)
        refused.append(right.filter(lambda v: v not in node["choices"]))
    return st.one_of(refused)


# -- where an edit can go: the dicts and lists of a pillar, with their schema nodes --------------
def containers(node, value, path=()):
    """``(path, node)`` of every dict or list in ``value`` that has a schema below it."""
    kind = node.get("type", "dict")
    if kind == "dict" and isinstance(value, dict) and ("keys" in node or "values" in node):
        yield path, node
        for key, item in value.items():
            child = (node.get("keys") or {}).get(key) or node.get("values")
            if child is not None:
                yield from containers(child, item, path + (key,))
    elif kind == "list" and isinstance(value, list) and "items" in node:
        yield path, node
        for index, item in enumerate(value):
            yield from containers(node["items"], item, path + (index,))


def at(pillar, path):
    for part in path:
        pillar = pillar[part]
    return pillar


def copy(value):
    return json.loads(json.dumps(value))


@st.composite
def valid_edit(draw, pillar):
    """Change ``pillar`` in place the way the schema allows; returns what was done."""
    path, node = draw(st.sampled_from(list(containers(SCHEMA, pillar))))
    target = at(pillar, path)
    if isinstance(target, list):
        if target and draw(st.booleans()):
            index = draw(st.integers(0, len(target) - 1))
            if draw(st.booleans()):
                del target[index]
                return ("delete", path + (index,))
            target[index] = draw(valid(node["items"]))
            return ("set", path + (index,))
        target.append(draw(valid(node["items"])))
        return ("append", path)
    if "keys" in node:
        key = draw(st.sampled_from(sorted(node["keys"])))
        if key in target and not node["keys"][key].get("required") and draw(st.booleans()):
            del target[key]
            return ("delete", path + (key,))
        target[key] = draw(valid(node["keys"][key]))
        return ("set", path + (key,))
    key = draw(st.sampled_from(sorted(target)) | NAMES) if target else draw(NAMES)
    if key in target and draw(st.booleans()):
        del target[key]
        return ("delete", path + (key,))
    target[key] = draw(valid(node["values"]))
    return ("set", path + (key,))


HIDDEN_NAME = "<a key with an empty value, not shown: it may be a secret>"


@st.composite
def invalid_edit(draw, pillar):
    """One edit the schema refuses, made in place; returns the pillar key its
    error must name."""
    path, node = draw(st.sampled_from(list(containers(SCHEMA, pillar))))
    target = at(pillar, path)
    if isinstance(target, list):
        index = draw(st.integers(0, len(target)))
        value = draw(wrong(node["items"]))
        target[index:index + 1] = [value]
        return key_of(path + (index,))
    if "values" in node:  # a user-chosen name (a pooler user, a database)
        name = draw(st.sampled_from(sorted(target)) | NAMES) if target else draw(NAMES)
        value = draw(wrong(node["values"]))
        target[name] = value
        # documented: under a node that holds secrets, an empty value's key is not named
        shown = HIDDEN_NAME if value is None and holds_secret(node) else name
        return key_of(path + (shown,))
    keys = node["keys"]
    required = [k for k in sorted(keys) if keys[k].get("required") and k in target]
    how = draw(st.sampled_from(["wrong", "unknown"] + (["remove"] if required else [])))
    if how == "remove":
        key = draw(st.sampled_from(required))
        del target[key]
        return key_of(path + (key,))
    if how == "unknown":
        key = draw(NAMES.filter(lambda k: k not in keys))
        value = draw(ANYTHING)
        target[key] = value
        shown = HIDDEN_NAME if value is None and holds_secret(node) else key
        return key_of(path + (shown,))
    key = draw(st.sampled_from(sorted(keys)))
    target[key] = draw(wrong(keys[key]))
    return key_of(path + (key,))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(GATEWAYS), st.data())
def test_the_example_stays_valid_under_valid_edits(minion, data):
    pillar = copy(EXAMPLES[minion])
    done = [data.draw(valid_edit(pillar)) for _ in range(data.draw(st.integers(1, 5)))]
    assert errors(pillar) == [], done


@settings(max_examples=50, deadline=None)
@given(valid(SCHEMA))
def test_a_pillar_drawn_from_the_schema_is_valid(pillar):
    assert errors(pillar) == []


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(GATEWAYS), st.data())
def test_each_invalid_edit_is_refused_naming_its_key(minion, data):
    pillar = copy(EXAMPLES[minion])
    data.draw(st.lists(valid_edit(pillar), max_size=2))  # not always the example as it is
    key = data.draw(invalid_edit(pillar))
    found = errors(pillar)
    assert len(found) == 1 and found[0].startswith(f"pillar key {key}: "), (key, found)


# -- secrets never in an error, whatever their shape -------------------------------------------
def secret_paths(node, path=()):
    """Schema paths (``None`` for a user-chosen name, ``0`` for a list item) of
    every secret node and of every node that holds one (the root too)."""
    if holds_secret(node):
        yield path, node
    if is_secret(node):
        return
    for key, child in (node.get("keys") or {}).items():
        yield from secret_paths(child, path + (key,))
    if isinstance(node.get("values"), dict):
        yield from secret_paths(node["values"], path + (None,))
    if isinstance(node.get("items"), dict):
        yield from secret_paths(node["items"], path + (0,))


SECRET_PATHS = list(secret_paths(SCHEMA))
# long enough that no error text holds one by chance
SECRET_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=12, max_size=24) | \
    st.text(string.ascii_letters + string.digits + "+/=-_.:@", min_size=12, max_size=24)
SECRET_NUMBER = st.integers(min_value=10 ** 11) | st.integers(max_value=-10 ** 11)
SHAPES = st.recursive(
    st.one_of(SECRET_TEXT, SECRET_NUMBER, st.none(), st.booleans()),
    lambda inner: st.lists(inner, min_size=1, max_size=3)
    | st.dictionaries(SECRET_TEXT, inner, min_size=1, max_size=3), max_leaves=6)
# in place of a section that holds secrets: the secret itself, a list of
# anything, or secrets written as keys without a value (``app: {s3cret}``)
CONTAINER_SHAPES = st.one_of(SECRET_TEXT, SECRET_NUMBER, st.lists(SHAPES, min_size=1, max_size=3),
                             st.dictionaries(SECRET_TEXT, st.none(), min_size=1, max_size=3))


def secrets_in(value):
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in secrets_in(k) + secrets_in(v)]
    if isinstance(value, list):
        return [s for item in value for s in secrets_in(item)]
    if isinstance(value, bool) or value is None:
        return []
    return [str(value)]


def spellings(secret):
    """The secret and how repr or an escape would print it."""
    return {secret, repr(secret)[1:-1], secret.encode("unicode_escape").decode("ascii"),
            json.dumps(secret)[1:-1]}


@st.composite
def secret_placement(draw, pillar):
    """Put a secret-made shape at a secret path of ``pillar`` (a dict; parents
    made as needed); returns the path and the shape."""
    path, node = draw(st.sampled_from([(p, n) for p, n in SECRET_PATHS if p]))
    shape = draw(SHAPES if is_secret(node) else CONTAINER_SHAPES)
    concrete, target = [], pillar
    for depth, part in enumerate(path):
        if part is None:  # a user name: one of the example's or a new one
            names = sorted(target)
            part = draw(st.sampled_from(names) | NAMES) if names else draw(NAMES)
        concrete.append(part)
        if depth == len(path) - 1:
            target[part] = shape
        else:
            if not isinstance(target.get(part), dict):  # an earlier shape was put there
                target[part] = {}
            target = target[part]
    # what is secret is what was drawn, before anything else is put in or beside it
    return tuple(concrete), node, shape, secrets_in(shape)


def test_every_secret_of_the_schema_is_placed():
    assert [path for path, node in SECRET_PATHS if is_secret(node)] == [
        ("tunnel", "psk"), ("tunnel", "backup_psk"), ("pooler", "users", None, "password"),
        ("pooler", "tls", "client", "key"), ("kubernetes", "kubeconfig_contents"),
        ("monitoring", "webhook_url")]
    assert all(0 not in path for path, _ in SECRET_PATHS)  # no secret in a list item


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(GATEWAYS), st.data())
def test_no_error_holds_a_value_found_at_a_secret_path(minion, data):
    pillar = copy(EXAMPLES[minion])
    placed = []
    for _ in range(data.draw(st.integers(1, 3))):
        if not isinstance(pillar, dict):
            break
        if data.draw(st.integers(0, 9)) == 0:  # the whole vpn_gateway section
            pillar = data.draw(CONTAINER_SHAPES)
            placed.append(((), SCHEMA, pillar, secrets_in(pillar)))
        else:
            placed.append(data.draw(secret_placement(pillar)))
    if data.draw(st.booleans()) and isinstance(pillar, dict):
        pillar["firewall"] = {"zonee": "public"}  # an unrelated error beside them
    found = errors(pillar)
    # A key that a later placement went through is a name (a user's, a pool's), which an
    # error may name: ``users: {0000: {...}}``, then ``users:0000`` made a string.
    names = {step for path, _, _, _ in placed for step in path if isinstance(step, str)}
    for _, _, _, secrets in placed:
        for secret in set(secrets) - names:
            for spelling in spellings(secret):
                for error in found:
                    assert spelling not in error, (secret, error)
    # the last one (nothing put over it) is named by its key when it is refused
    path, node, shape, _ = placed[-1]
    accepted = isinstance(shape, dict if node.get("type") == "dict" else str) and is_secret(node)
    if not accepted:
        assert any(e.startswith(f"pillar key {key_of(path)}") for e in found), (path, found)
