"""A loopback Kubernetes API server for the tests (no kube-apiserver can run here).

It serves the part of the API that ``k8s`` uses, with the real server's
semantics, so the same tests pass against a real cluster:

- discovery (/api, /apis, /api/v1, /apis/discovery.k8s.io/v1, /version) and
  Table output, enough for ``kubectl get`` and ``kubectl apply --server-side``;
- namespaces, services (v1) and endpointslices (discovery.k8s.io/v1): GET,
  LIST (label selectors, all namespaces), POST, PUT, PATCH (merge, JSON patch,
  strategic merge as merge, apply), DELETE and DELETE collection;
- resourceVersion (409 on a stale write, no new version for a no-op apply);
  as the real server's storage, a ``metadata.resourceVersion`` in any update
  of an existing object, apply patches included, is a precondition: 409
  Conflict "the object has been modified" when it is not the live one;
- server-side apply with field managers: managedFields (FieldsV1), ownership,
  409 conflicts and ``force``; defaulted fields are owned by nobody;
- ``dryRun=All``; bearer tokens (401 unknown, 403 for a read-only user);
- the real validation answers (422): names, the addressType enum, more than
  1000 endpoints, an address of the wrong family or a special one, port names.

It listens on 127.0.0.1 (or, inside a lab host, an address of the lab's
198.18.0.0/15; nothing else is accepted), on an ephemeral port, over TLS with a
throw-away self-signed certificate (kubectl sends no credentials over plain
HTTP).
Run by hand: ``python tests/k8s/fake_apiserver.py`` prints a kubeconfig path.
"""

import base64
import copy
import datetime
import ipaddress
import itertools
import json
import re
import ssl
import subprocess
import tempfile
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

ADMIN_TOKEN = "fake-admin-token"
READONLY_TOKEN = "fake-readonly-token"
USERS = {ADMIN_TOKEN: "admin", READONLY_TOKEN: "viewer"}
READ_VERBS = {"get", "list", "watch"}

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# Fields of metadata no manager owns (as structured-merge-diff resets them).
UNOWNED_METADATA = {
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "generateName",
}
MAX_ENDPOINTS = 1000
# The stand-in's own control path (FakeApiServer.set_knobs), for a stand-in in another
# process: no part of the Kubernetes API (a real server answers 404 there).
KNOBS_PATH = "/fake-apiserver/knobs"


class ApiError(Exception):
    """An error answered as a metav1.Status."""

    def __init__(self, code, reason, message, details=None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self):
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if not self.reason:  # a plain Go error: StatusReasonUnknown ("") is left out
            del body["reason"]
        if self.details:
            body["details"] = self.details
        return body


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro():
    """metav1.MicroTime, as audit events carry their timestamps."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- schemas (the fields each kind knows, for fieldValidation) ------------------

ANY, MAP = None, "map"  # any value / a map with free keys
OBJECT_META = {
    **{k: ANY for k in ("name", "generateName", "namespace", "selfLink", "uid",
                        "resourceVersion", "generation", "creationTimestamp",
                        "deletionTimestamp", "deletionGracePeriodSeconds", "finalizers",
                        "managedFields")},
    "labels": MAP,
    "annotations": MAP,
    "ownerReferences": [{k: ANY for k in ("apiVersion", "kind", "name", "uid", "controller",
                                          "blockOwnerDeletion")}],
}


def unknown_fields(schema, value, path=""):
    """The paths of the fields ``value`` has that ``schema`` does not know."""
    found = []
    if isinstance(schema, dict) and isinstance(value, dict):
        for key, child in value.items():
            where = f"{path}.{key}" if path else key
            if key not in schema:
                found.append(where)
            else:
                found += unknown_fields(schema[key], child, where)
    elif isinstance(schema, list) and isinstance(value, list):
        for i, item in enumerate(value):
            found += unknown_fields(schema[0], item, f"{path}[{i}]")
    return found


def prune(schema, value):
    """``value`` without the fields ``schema`` does not know (what Ignore and Warn store)."""
    if isinstance(schema, dict) and isinstance(value, dict):
        return {k: prune(schema[k], v) for k, v in value.items() if k in schema}
    if isinstance(schema, list) and isinstance(value, list):
        return [prune(schema[0], item) for item in value]
    return value


# --- resource kinds ---------------------------------------------------------


class Kind:
    """One resource type: its names, schema facts for apply, defaults, validation."""

    group = ""
    version = "v1"
    namespaced = True
    short_names = []
    # Lists merged by key under apply (listType=map): path -> key fields.
    list_keys = {}
    # Maps replaced whole under apply (mapType=atomic).
    atomic_maps = set()

    @property
    def api_version(self):
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self):
        return f"{self.resource}.{self.group}" if self.group else self.resource

    def normalize(self, obj):
        """Defaults that depend only on the object (applied configs get them too)."""

    def default(self, obj, server):
        self.normalize(obj)

    def validate(self, obj, old):
        """Return a list of (field, cause type, message) tuples."""
        return []

    # The name rule: (pattern, maximum length, the real server's explanation).
    name_rule = (DNS1123_SUBDOMAIN, 253, "a lowercase RFC 1123 subdomain must consist of lower "
                 "case alphanumeric characters, '-' or '.', and must start and end with an "
                 "alphanumeric character (e.g. 'example.com', regex used for validation is "
                 "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")

    def name_errors(self, name):
        if not name:
            return [("metadata.name", "FieldValueRequired",
                     "Required value: name or generateName is required")]
        pattern, longest, rule = self.name_rule
        if len(name) > longest or not pattern.match(name):
            return [("metadata.name", "FieldValueInvalid", f'Invalid value: "{name}": {rule}')]
        return []

    def table(self, obj):
        return []

    columns = []
    spec_schema = {}

    @property
    def schema(self):
        return {"apiVersion": ANY, "kind": ANY, "metadata": OBJECT_META, **self.spec_schema}


QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
QUALIFIED_NAME_RULE = ("must consist of alphanumeric characters, '-', '_' or '.', and must "
                       "start and end with an alphanumeric character (e.g. 'MyName',  or "
                       "'my.name',  or '123-abc', regex used for validation is "
                       "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")
SUBDOMAIN_RULE = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                  "characters, '-' or '.', and must start and end with an alphanumeric character "
                  "(e.g. 'example.com', regex used for validation is "
                  "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")


def qualified_name_errors(value):
    """apimachinery's IsQualifiedName: the messages for one label key."""
    parts = value.split("/")
    if len(parts) == 1:
        prefix, name = None, parts[0]
    elif len(parts) == 2:
        prefix, name = parts
    else:
        return ["a qualified name " + QUALIFIED_NAME_RULE + " with an optional DNS subdomain "
                "prefix and '/' (e.g. 'example.com/MyName')"]
    errors = []
    if prefix is not None:
        if not prefix:
            errors.append("prefix part must be non-empty")
        else:
            if len(prefix) > 253:
                errors.append("prefix part must be no more than 253 characters")
            if not DNS1123_SUBDOMAIN.match(prefix):
                errors.append("prefix part " + SUBDOMAIN_RULE)
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > 63:
        errors.append("name part must be no more than 63 characters")
    if not QUALIFIED_NAME.match(name):
        errors.append("name part " + QUALIFIED_NAME_RULE)
    return errors


def label_errors(labels, path="metadata.labels"):
    errors = []
    for key, value in (labels or {}).items():
        for message in qualified_name_errors(str(key)):
            errors.append((path, "FieldValueInvalid", f'Invalid value: "{key}": {message}'))
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            errors.append(
                (
                    f"{path}",
                    "FieldValueInvalid",
                    f'Invalid value: "{value}": a valid label must be an empty string or consist '
                    "of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                    "alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex "
                    "used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
                )
            )
    return errors


def owner_reference_errors(references, path="metadata.ownerReferences"):
    """ValidateOwnerReferences: apiVersion (its version), kind, name and uid must be set."""
    errors = []
    for ref in references or []:
        for field, value, message in (
            ("apiVersion", ref.get("apiVersion") or "", "version must not be empty"),
            ("kind", ref.get("kind") or "", "kind must not be empty"),
            ("name", ref.get("name") or "", "name must not be empty"),
            ("uid", ref.get("uid") or "", "uid must not be empty"),
        ):
            if not (value.rpartition("/")[2] if field == "apiVersion" else value):
                errors.append((f"{path}.{field}", "FieldValueInvalid",
                               f'Invalid value: "{value}": {message}'))
    if sum(bool(r.get("controller")) for r in references or []) > 1:
        errors.append((path, "FieldValueInvalid",
                       "Invalid value: []: Only one reference can have Controller set to true"))
    return errors


def age(obj):
    created = datetime.datetime.strptime(obj["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")
    seconds = int((datetime.datetime.utcnow() - created).total_seconds())
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m"


def port_errors(path, ports, port_required):
    """Validation of a Service's or an EndpointSlice's ports (names, numbers, protocols)."""
    errors, names = [], set()
    for i, port in enumerate(ports):
        name = port.get("name") or ""
        if port_required and len(ports) > 1 and not name:
            errors.append((f"{path}[{i}].name", "FieldValueRequired", "Required value"))
        elif name and (len(name) > 63 or not DNS1123_LABEL.match(name)):
            errors.append((f"{path}[{i}].name", "FieldValueInvalid",
                           f'Invalid value: "{name}": a lowercase RFC 1123 label must consist of '
                           "lower case alphanumeric characters or '-', and must start and end with "
                           "an alphanumeric character"))
        elif name in names:
            errors.append((f"{path}[{i}].name", "FieldValueDuplicate",
                           f'Duplicate value: "{name}"'))
        names.add(name)
        number = port.get("port")
        if (port_required or "port" in port) and not (
            isinstance(number, int) and 1 <= number <= 65535
        ):
            errors.append((f"{path}[{i}].port", "FieldValueInvalid",
                           f"Invalid value: {json.dumps(number)}: must be between 1 and 65535, "
                           "inclusive"))
        if port.get("protocol", "TCP") not in ("TCP", "UDP", "SCTP"):
            errors.append((f"{path}[{i}].protocol", "FieldValueNotSupported",
                           f'Unsupported value: "{port.get("protocol")}": supported values: '
                           '"SCTP", "TCP", "UDP"'))
    return errors


class Namespace(Kind):
    resource, kind, singular = "namespaces", "Namespace", "namespace"
    namespaced = False
    short_names = ["ns"]
    name_rule = (DNS1123_LABEL, 63, "a lowercase RFC 1123 label must consist of lower case "
                 "alphanumeric characters or '-', and must start and end with an alphanumeric "
                 "character (e.g. 'my-name',  or '123-abc', regex used for validation is "
                 "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
    columns = ["Status", "Age"]
    spec_schema = {"spec": {"finalizers": ANY}, "status": ANY}

    def default(self, obj, server):
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj["status"] = {"phase": "Active"}
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"][
            "name"
        ]

    def table(self, obj):
        return [obj["status"]["phase"], age(obj)]


class Service(Kind):
    resource, kind, singular = "services", "Service", "service"
    short_names = ["svc"]
    name_rule = (DNS1035_LABEL, 63, "a DNS-1035 label must consist of lower case alphanumeric "
                 "characters or '-', start with an alphabetic character, and end with an "
                 "alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation "
                 "is '[a-z]([-a-z0-9]*[a-z0-9])?')")
    list_keys = {("spec", "ports"): ("port", "protocol")}
    atomic_maps = {("spec", "selector")}
    columns = ["Type", "Cluster-IP", "External-IP", "Port(s)", "Age"]
    spec_schema = {
        "spec": {
            **{k: ANY for k in (
                "clusterIP", "clusterIPs", "type", "externalIPs", "sessionAffinity",
                "loadBalancerIP", "loadBalancerSourceRanges", "externalName",
                "externalTrafficPolicy", "healthCheckNodePort", "publishNotReadyAddresses",
                "sessionAffinityConfig", "ipFamilies", "ipFamilyPolicy",
                "allocateLoadBalancerNodePorts", "loadBalancerClass", "internalTrafficPolicy",
                "trafficDistribution")},
            "selector": MAP,
            "ports": [{k: ANY for k in ("name", "protocol", "appProtocol", "port", "targetPort",
                                        "nodePort")}],
        },
        "status": ANY,
    }

    def normalize(self, obj):
        for port in (obj.get("spec") or {}).get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))

    def default(self, obj, server):
        self.normalize(obj)
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        spec.setdefault("internalTrafficPolicy", "Cluster")
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("ipFamilies", ["IPv4"])
        if "clusterIP" not in spec:
            spec["clusterIP"] = server.allocate_cluster_ip()
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        obj.setdefault("status", {"loadBalancer": {}})

    def validate(self, obj, old):
        spec = obj.get("spec") or {}
        errors = label_errors(obj["metadata"].get("labels"))
        ports = spec.get("ports") or []
        if (
            spec.get("type", "ClusterIP") == "ClusterIP"
            and spec.get("clusterIP") != "None"
            and not ports
        ):
            errors.append(("spec.ports", "FieldValueRequired", "Required value"))
        errors += port_errors("spec.ports", ports, port_required=True)
        seen = set()
        for i, port in enumerate(ports):  # ValidateService: (port, protocol) pairs are unique
            key = (port.get("port"), port.get("protocol", "TCP"))
            if key in seen:
                errors.append((
                    f"spec.ports[{i}]", "FieldValueDuplicate",
                    f'Duplicate value: core.ServicePort{{Name:"", Protocol:"{key[1]}", '
                    f'AppProtocol:(*string)(nil), Port:{key[0]}, '
                    'TargetPort:intstr.IntOrString{Type:0, IntVal:0, StrVal:""}, NodePort:0}'))
            seen.add(key)
        if old and old["spec"].get("clusterIP") != spec.get("clusterIP"):
            errors.append(
                (
                    "spec.clusterIPs[0]",
                    "FieldValueInvalid",
                    f'Invalid value: []string{{"{spec.get("clusterIP")}"}}: may not change '
                    'once set',
                )
            )
        return errors

    def table(self, obj):
        spec = obj["spec"]
        ports = (
            ",".join(f"{p['port']}/{p['protocol']}" for p in spec.get("ports") or []) or "<none>"
        )
        return [spec["type"], spec.get("clusterIP", ""), "<none>", ports, age(obj)]


class EndpointSlice(Kind):
    resource, kind, singular = "endpointslices", "EndpointSlice", "endpointslice"
    group = "discovery.k8s.io"
    columns = ["AddressType", "Ports", "Endpoints", "Age"]
    spec_schema = {
        "addressType": ANY,
        "endpoints": [{
            "addresses": ANY, "hostname": ANY, "targetRef": ANY, "nodeName": ANY, "zone": ANY,
            "hints": ANY, "deprecatedTopology": MAP,
            "conditions": {"ready": ANY, "serving": ANY, "terminating": ANY},
        }],
        "ports": [{k: ANY for k in ("name", "protocol", "port", "appProtocol")}],
    }

    def validate(self, obj, old):
        errors = label_errors(obj["metadata"].get("labels"))
        family = obj.get("addressType")
        if family is None:
            errors.append(("addressType", "FieldValueRequired", "Required value"))
        elif family not in ("IPv4", "IPv6", "FQDN"):
            errors.append(
                (
                    "addressType",
                    "FieldValueNotSupported",
                    f'Unsupported value: "{family}": supported values: "FQDN", "IPv4", "IPv6"',
                )
            )
        if old is not None and old.get("addressType") != family:
            errors.append(
                (
                    "addressType",
                    "FieldValueInvalid",
                    f'Invalid value: "{family}": field is immutable',
                )
            )
        endpoints = obj.get("endpoints")
        if endpoints is None:
            endpoints = obj["endpoints"] = []
        if len(endpoints) > MAX_ENDPOINTS:
            errors.append(
                (
                    "endpoints",
                    "FieldValueTooMany",
                    f"Too many: {len(endpoints)}: must have at most {MAX_ENDPOINTS} items",
                )
            )
            endpoints = []  # as the real server: no per-endpoint errors past the limit
        for i, endpoint in enumerate(endpoints):
            addresses = endpoint.get("addresses") or []
            if not 1 <= len(addresses) <= 100:
                errors.append(
                    (
                        f"endpoints[{i}].addresses",
                        "FieldValueRequired" if not addresses else "FieldValueTooMany",
                        (
                            "Required value: must contain at least 1 address"
                            if not addresses
                            else f"Too many: {len(addresses)}: must have at most 100 items"
                        ),
                    )
                )
            for j, address in enumerate(addresses):
                message = address_error(family, address)
                if message:
                    errors.append(
                        (
                            f"endpoints[{i}].addresses[{j}]",
                            "FieldValueInvalid",
                            f'Invalid value: "{address}": {message}',
                        )
                    )
            hostname = endpoint.get("hostname")
            if hostname is not None and not DNS1123_LABEL.match(hostname):
                errors.append(
                    (
                        f"endpoints[{i}].hostname",
                        "FieldValueInvalid",
                        f'Invalid value: "{hostname}": a lowercase RFC 1123 label must consist '
                        "of lower case alphanumeric characters or '-'",
                    )
                )
        ports = obj.get("ports") or []
        if len(ports) > 100:
            errors.append(
                (
                    "ports",
                    "FieldValueTooMany",
                    f"Too many: {len(ports)}: must have at most 100 items",
                )
            )
        errors += port_errors("ports", ports, port_required=False)
        return errors

    def normalize(self, obj):
        for endpoint in obj.get("endpoints") or []:
            endpoint.setdefault("conditions", {})
        for port in obj.get("ports") or []:
            port.setdefault("protocol", "TCP")

    def table(self, obj):
        ports = ",".join(str(p.get("port", "<unset>")) for p in obj.get("ports") or []) or "<unset>"
        addresses = [a for e in obj.get("endpoints") or [] for a in e.get("addresses", [])]
        shown = ",".join(addresses[:3]) + (
            f" + {len(addresses) - 3} more..." if len(addresses) > 3 else ""
        )
        return [obj.get("addressType", ""), ports, shown or "<unset>", age(obj)]


def address_error(family, address):
    """The real validation of one endpoint address (ValidateEndpointIP), or None."""
    if family not in ("IPv4", "IPv6"):
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        ip = None
    # Go's net.ParseIP: an IPv4-mapped IPv6 address is an IPv4 address (To4() != nil), so
    # it is valid in an IPv4 slice and refused in an IPv6 one.
    if ip is not None and ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if (
        ip is None
        or (family == "IPv4") != (ip.version == 4)
        or (ip.version == 4 and "/" in address)
    ):
        return f"must be a valid {family} address"
    if ip.is_unspecified:
        return (
            "may not be unspecified (0.0.0.0)" if ip.version == 4 else "may not be unspecified (::)"
        )
    if ip.is_loopback:
        return "may not be in the loopback range (127.0.0.0/8, ::1/128)"
    if ip.is_link_local:
        return "may not be in the link-local range (169.254.0.0/16, fe80::/10)"
    if ip in ipaddress.ip_network("224.0.0.0/24") or (
        ip.version == 6 and ip in ipaddress.ip_network("ff02::/16")
    ):
        return "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"
    return None


KINDS = [Namespace(), Service(), EndpointSlice()]


# --- field sets (structured-merge-diff, simplified) ---------------------------


def item_key(kind, path, item):
    keys = kind.list_keys.get(tuple(p for p in path if not p.startswith("k:")))
    return "k:" + json.dumps({k: item.get(k) for k in keys}, separators=(",", ":"), sort_keys=True)


def field_paths(kind, obj):
    """The set of field paths an object sets: leaves, map-list items, atomic values."""
    paths = set()

    def walk(value, path, plain):
        if isinstance(value, dict) and value and plain not in kind.atomic_maps:
            for key, child in value.items():
                walk(child, path + (f"f:{key}",), plain + (key,))
        elif isinstance(value, list) and plain in kind.list_keys:
            for item in value:
                item_path = path + (item_key(kind, plain, item),)
                paths.add(item_path)
                for key, child in item.items():
                    walk(child, item_path + (f"f:{key}",), plain + (key,))
        else:
            paths.add(path)

    for key, value in obj.items():
        if key in ("apiVersion", "kind", "status"):
            continue
        if key == "metadata":
            for mkey, mvalue in value.items():
                if mkey not in UNOWNED_METADATA:
                    walk(mvalue, ("f:metadata", f"f:{mkey}"), ("metadata", mkey))
        else:
            walk(value, (f"f:{key}",), (key,))
    return paths


MISSING = object()


def lookup(kind, obj, path):
    """The value at a field path, or MISSING."""
    value, plain = obj, ()
    for element in path:
        if element.startswith("f:"):
            if not isinstance(value, dict) or element[2:] not in value:
                return MISSING
            value, plain = value[element[2:]], plain + (element[2:],)
        else:
            if not isinstance(value, list):
                return MISSING
            matches = [item for item in value if item_key(kind, plain, item) == element]
            if not matches:
                return MISSING
            value = matches[0]
    return value


def remove(kind, obj, path):
    parent = lookup(kind, obj, path[:-1]) if len(path) > 1 else obj
    last = path[-1]
    if parent is MISSING:
        return
    if last.startswith("f:") and isinstance(parent, dict):
        parent.pop(last[2:], None)
    elif isinstance(parent, list):
        plain = tuple(p[2:] for p in path[:-1] if p.startswith("f:"))
        parent[:] = [item for item in parent if item_key(kind, plain, item) != last]


def merge(kind, live, applied, plain=()):
    """Apply's merge: maps field by field, map-lists by key, everything else replaced."""
    for key, value in applied.items():
        here = plain + (key,)
        if (
            isinstance(value, dict)
            and isinstance(live.get(key), dict)
            and here not in kind.atomic_maps
        ):
            merge(kind, live[key], value, here)
        elif isinstance(value, list) and here in kind.list_keys and isinstance(live.get(key), list):
            for item in value:
                k = item_key(kind, here, item)
                for existing in live[key]:
                    if item_key(kind, here, existing) == k:
                        merge(kind, existing, item, here)
                        break
                else:
                    live[key].append(copy.deepcopy(item))
        else:
            live[key] = copy.deepcopy(value)


def encode_fields(paths):
    root = {}
    for path in sorted(paths):
        node = root
        for element in path:
            node = node.setdefault(element, {})
        node["."] = {}
    return _collapse(root)


def _collapse(node):
    """Leaves are {}; a member with children keeps '.' as in FieldsV1."""
    children = {k: _collapse(v) for k, v in node.items() if k != "."}
    if not children:
        return {}
    if "." in node:
        children["."] = {}
    return children


def decode_fields(fields, prefix=()):
    paths = set()
    for key, child in fields.items():
        if key == ".":
            paths.add(prefix)
        elif child:
            paths |= decode_fields(child, prefix + (key,))
        else:
            paths.add(prefix + (key,))
    return paths


def path_text(path):
    text = ""
    for element in path:
        if element.startswith("f:"):
            text += "." + element[2:]
        else:
            key = json.loads(element[2:])
            text += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in key.items()) + "]"
    return text


# --- label selectors -----------------------------------------------------------

SELECTOR = re.compile(
    r"\s*(!?)([A-Za-z0-9./_-]+)\s*"
    r"(?:(==|=|!=)\s*([A-Za-z0-9._-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$"
)


def parse_selector(text):
    """A label selector as a list of predicates on a labels dict; 400 when malformed."""
    predicates = []
    for part in re.split(r",(?![^(]*\))", text or ""):
        if not part.strip():
            continue
        m = SELECTOR.match(part)
        if not m or (m.group(1) and (m.group(3) or m.group(5))):
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
        neg, key, op, value, setop, values = m.groups()
        if op in ("=", "=="):
            predicates.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif op == "!=":
            predicates.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif setop:
            choices = {v.strip() for v in values.split(",")}
            if setop == "in":
                predicates.append(lambda labels, k=key, c=choices: labels.get(k) in c)
            else:
                predicates.append(lambda labels, k=key, c=choices: labels.get(k) not in c)
        elif neg:
            predicates.append(lambda labels, k=key: k not in labels)
        else:
            predicates.append(lambda labels, k=key: k in labels)
    return predicates


# --- the server ------------------------------------------------------------------


class FakeApiServer:
    """Start with ``with FakeApiServer() as api: api.kubeconfig(...)``."""

    def __init__(self, host="127.0.0.1", port=0, audit_log=None):
        address = ipaddress.ip_address(host)
        if not (address.is_loopback or address in ipaddress.ip_network("198.18.0.0/15")):
            raise ValueError(f"{host}: the fake API server listens on 127.0.0.1 or in "
                             "198.18.0.0/15 only")
        self.lock = threading.RLock()
        self.objects = {}  # (resource, namespace, name) -> object
        self.revision = itertools.count(1000)
        self.cluster_ips = itertools.count(2)
        self.current = "1"  # the latest resourceVersion, as lists report it
        self.requests = []  # (method, path, query) for tests that look at the traffic
        self.faults = []  # fail_next
        self.dry_run_refused_by = None  # refuse_dry_run
        self.gc_delay = 0.2  # s before the garbage collector sweeps after a delete
        self.audit_log = audit_log  # kube-apiserver's --audit-log-path (write_audit)
        for name in ("default", "kube-system"):
            self._store(
                KINDS[0],
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
                "kube-apiserver",
                "Update",
            )
        handler = type("Handler", (Handler,), {"api": self})
        self.host = host
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.certificate = self._serve_tls()
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _serve_tls(self):
        with tempfile.TemporaryDirectory(prefix="fake-apiserver-") as tmp:
            cert, key = f"{tmp}/tls.crt", f"{tmp}/tls.key"
            subprocess.run(
                [
                    "openssl",
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=fake-apiserver",
                    "-addext",
                    f"subjectAltName=IP:{self.host}",
                    "-keyout",
                    key,
                    "-out",
                    cert,
                ],
                check=True,
                capture_output=True,
            )
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            with open(cert, "rb") as f:
                pem = f.read()
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        return pem

    @property
    def url(self):
        return f"https://{self.host}:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def kubeconfig(self, path, token=ADMIN_TOKEN, context="fake"):
        """Write a kubeconfig for this server; return its path."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": context,
            "clusters": [
                {
                    "name": "fake",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": base64.b64encode(self.certificate).decode(),
                    },
                }
            ],
            "users": [{"name": f"user-{context}", "user": {"token": token}}],
            "contexts": [
                {"name": context, "context": {"cluster": "fake", "user": f"user-{context}"}}
            ],
        }
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        return str(path)

    # -- knobs for tests: what real clusters do under load and with admission webhooks --

    def fail_next(self, count, code, retry_after=None, methods=("GET", "POST", "PUT", "PATCH",
                                                                "DELETE")):
        """Answer the next ``count`` requests (of ``methods``) with ``code`` (429: the
        priority-and-fairness plain-text answer; 500/503/504: a Status), with a
        Retry-After header when given, as an overloaded or failing server does."""
        with self.lock:
            self.faults.append({"left": count, "code": code, "retry_after": retry_after,
                                "methods": set(methods)})

    def refuse_dry_run(self, webhook="deny-dry-run.example.com"):
        """From now on, refuse every dry-run write as a cluster with an admission webhook
        of sideEffects Unknown/Some does (None: accept again)."""
        self.dry_run_refused_by = webhook

    def set_knobs(self, knobs):
        """The knobs above from a JSON body (``POST KNOBS_PATH``, admin only), for a
        stand-in that runs in another process (a lab host): ``refuse_dry_run``
        (a webhook name, or None), ``fail_next`` ({count, code, retry_after, methods}),
        ``clear_faults`` (true: the pending fail_next faults are dropped). This path
        is the stand-in's own, no part of the Kubernetes API."""
        if not isinstance(knobs, dict) or set(knobs) - {"refuse_dry_run", "fail_next",
                                                        "clear_faults"}:
            raise ApiError(400, "BadRequest", f"knobs: refuse_dry_run, fail_next, clear_faults, "
                                              f"not {knobs!r}")
        with self.lock:
            if knobs.get("clear_faults"):
                self.faults.clear()
            if "refuse_dry_run" in knobs:
                self.refuse_dry_run(knobs["refuse_dry_run"])
            if knobs.get("fail_next"):
                self.fail_next(**knobs["fail_next"])
            return {"refuse_dry_run": self.dry_run_refused_by,
                    "faults": [dict(f, methods=sorted(f["methods"])) for f in self.faults]}

    def write_audit(self, event):
        """Append one audit event as a JSON line, as kube-apiserver's log backend does
        (--audit-log-path, --audit-log-format=json)."""
        if self.audit_log:
            with self.lock, open(self.audit_log, "a", encoding="utf-8") as log:
                log.write(json.dumps(event, separators=(",", ":")) + "\n")

    def allocate_cluster_ip(self):
        # Data only, never routed: stays inside the lab's 198.18.0.0/15.
        return f"198.18.254.{next(self.cluster_ips) % 250 + 2}"

    # -- storage operations (called with the lock held) --

    def _store(self, kind, obj, manager, operation, old=None, dry_run=False, managed=None):
        """Default, validate, record ownership and persist (unless dry run)."""
        meta = obj["metadata"]
        kind.default(obj, self)
        errors = kind.name_errors(meta.get("name")) if old is None else []
        errors += kind.validate(obj, old)
        errors += owner_reference_errors(meta.get("ownerReferences"))
        if errors:
            raise invalid(kind, meta.get("name"), errors)
        if managed is None:  # an update: the manager takes the fields it changed
            managed = entries(old)
            changed = {
                p
                for p in field_paths(kind, obj)
                if old is None or lookup(kind, old, p) != lookup(kind, obj, p)
            }
            removed = (
                set()
                if old is None
                else {p for p in field_paths(kind, old) if lookup(kind, obj, p) is MISSING}
            )
            managed = {k: v - changed - removed for k, v in managed.items()}
            key = (manager, operation)
            managed[key] = managed.get(key, set()) | changed
        managed = {k: v for k, v in managed.items() if v}
        if old is not None and strip(old) == strip(obj) and managed == entries(old):
            return old  # a no-op write keeps its resourceVersion
        meta["managedFields"] = [
            {
                "manager": m,
                "operation": op,
                "apiVersion": kind.api_version,
                "time": now(),
                "fieldsType": "FieldsV1",
                "fieldsV1": encode_fields(paths),
            }
            for (m, op), paths in sorted(managed.items())
        ]
        if old is None:
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now()
        if not dry_run:
            meta["resourceVersion"] = self.current = str(next(self.revision))
            self.objects[(kind.resource, meta.get("namespace"), meta["name"])] = obj
        elif old is None:
            meta.pop("resourceVersion", None)
        return obj

    def get(self, kind, namespace, name):
        obj = self.objects.get((kind.resource, namespace, name))
        if obj is None:
            raise not_found(kind, name)
        return obj

    def check_namespace(self, namespace):
        if namespace is not None and ("namespaces", None, namespace) not in self.objects:
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                {"name": namespace, "kind": "namespaces"},
            )

    def create(self, kind, namespace, body, manager, dry_run):
        body = prepare(kind, namespace, body)
        meta = body["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        self.check_namespace(namespace)
        if (kind.resource, namespace, meta.get("name")) in self.objects:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{kind.qualified} "{meta["name"]}" already exists',
                {"name": meta["name"], "group": kind.group, "kind": kind.resource},
            )
        for field in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
            meta.pop(field, None)
        return self._store(kind, body, manager, "Update", dry_run=dry_run)

    def replace(self, kind, namespace, name, body, manager, dry_run):
        body = prepare(kind, namespace, body)
        old = self.get(kind, namespace, name)
        if body["metadata"].get("name") != name:
            raise ApiError(
                400, "BadRequest", "the name of the object does not match the name on the URL"
            )
        version = body["metadata"].get("resourceVersion")
        if version and version != old["metadata"]["resourceVersion"]:
            raise stale(kind, name)
        for field in ("uid", "creationTimestamp", "resourceVersion"):
            body["metadata"][field] = old["metadata"][field]
        body["metadata"]["managedFields"] = old["metadata"].get("managedFields", [])
        if "status" in old:
            body["status"] = copy.deepcopy(old["status"])
        return self._store(kind, body, manager, "Update", old=old, dry_run=dry_run)

    def apply(self, kind, namespace, name, applied, manager, force, dry_run):
        if not manager:
            raise ApiError(
                400,
                "BadRequest",
                "PATCH, application/apply-patch+yaml requires fieldManager " "parameter to be set",
            )
        applied = prepare(kind, namespace, applied)
        kind.normalize(applied)
        if applied["metadata"].get("name") != name:
            raise ApiError(
                400, "BadRequest", "the name of the object does not match the name on the URL"
            )
        old = self.objects.get((kind.resource, namespace, name))
        if old is None:
            self.check_namespace(namespace)
        live = (
            copy.deepcopy(old)
            if old
            else {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": {"name": name}}
        )
        if namespace:
            live["metadata"]["namespace"] = namespace
        managed = entries(old)
        mine = managed.pop((manager, "Apply"), set())
        wanted = field_paths(kind, applied)
        conflicts = []
        for (other, op), paths in managed.items():
            for path in sorted(wanted & paths):
                if lookup(kind, live, path) != lookup(kind, applied, path):
                    conflicts.append((other, op, path))
        if conflicts and not force:
            lines = [
                f'conflict with "{m}"'
                + (" using " + kind.api_version if op == "Update" else "")
                + f": {path_text(p)}"
                for m, op, p in conflicts
            ]
            raise ApiError(
                409,
                "Conflict",
                f"Apply failed with {len(conflicts)} conflict"
                f"{'s' if len(conflicts) > 1 else ''}: " + "\n".join(lines),
                {
                    "causes": [
                        {"reason": "FieldManagerConflict", "message": line, "field": path_text(p)}
                        for line, (_, _, p) in zip(lines, conflicts)
                    ]
                },
            )
        version = applied["metadata"].get("resourceVersion")
        if old is not None and version and version != old["metadata"]["resourceVersion"]:
            # The real server merges the applied resourceVersion into the object it stores
            # (it only owns no field), and its storage refuses a stale one: a precondition.
            raise stale(kind, name)
        for other, op, path in conflicts:
            managed[(other, op)].discard(path)
        still_owned = set().union(*managed.values()) if managed else set()
        for path in sorted(mine - wanted, key=len, reverse=True):
            if path not in still_owned and not any(p[: len(path)] == path for p in still_owned):
                remove(kind, live, path)
        body = {k: v for k, v in applied.items() if k not in ("apiVersion", "kind", "status")}
        body["metadata"] = {
            k: v for k, v in applied["metadata"].items() if k not in UNOWNED_METADATA
        }
        merge(kind, live, body)
        managed[(manager, "Apply")] = wanted
        live["metadata"].pop("managedFields", None)
        return self._store(kind, live, manager, "Apply", old=old, dry_run=dry_run, managed=managed)

    def delete(self, kind, namespace, name, dry_run, propagation="Background"):
        obj = self.get(kind, namespace, name)
        if kind.resource == "namespaces":
            for key in [k for k in self.objects if k[1] == name]:
                if not dry_run:
                    del self.objects[key]
        if not dry_run:
            del self.objects[(kind.resource, namespace, name)]
            uid = obj["metadata"].get("uid")
            if propagation == "Orphan":  # the dependents stay, without this owner
                for dependent in self.objects.values():
                    refs = dependent["metadata"].get("ownerReferences")
                    if refs and any(r.get("uid") == uid for r in refs):
                        kept = [r for r in refs if r.get("uid") != uid]
                        if kept:
                            dependent["metadata"]["ownerReferences"] = kept
                        else:
                            del dependent["metadata"]["ownerReferences"]
                        dependent["metadata"]["resourceVersion"] = self.current = str(
                            next(self.revision))
            else:
                # Background propagation: the owner is gone at once; the garbage
                # collector (kube-controller-manager) deletes its dependents a little later.
                timer = threading.Timer(self.gc_delay, self.collect_garbage)
                timer.daemon = True
                timer.start()
        return obj

    def collect_garbage(self):
        """Delete every object whose owners are all gone (by uid; a namespaced owner must be
        in the dependent's namespace), until none is left: the garbage collector, as a
        stand-in (the real one works from its own informer graph, in the background)."""
        with self.lock:
            while True:
                owners = {o["metadata"].get("uid"): key[1] for key, o in self.objects.items()}
                orphans = [
                    key for key, o in self.objects.items()
                    if o["metadata"].get("ownerReferences") and not any(
                        r.get("uid") in owners and owners[r.get("uid")] in (None, key[1])
                        for r in o["metadata"]["ownerReferences"])
                ]
                if not orphans:
                    return
                for key in orphans:
                    del self.objects[key]

    def list(self, kind, namespace, selector):
        predicates = parse_selector(selector)
        items = [
            obj
            for (resource, ns, _), obj in sorted(
                self.objects.items(), key=lambda kv: (kv[0][1] or "", kv[0][2])
            )
            if resource == kind.resource
            and (namespace is None or ns == namespace)
            and all(p(obj["metadata"].get("labels") or {}) for p in predicates)
        ]
        return items


def prepare(kind, namespace, body):
    if not isinstance(body, dict):
        raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
    body = copy.deepcopy(body)
    if (
        body.get("kind", kind.kind) != kind.kind
        or body.get("apiVersion", kind.api_version) != kind.api_version
    ):
        raise ApiError(
            400,
            "BadRequest",
            f"the API version in the data ({body.get('apiVersion')}) does not "
            f"match the expected API version ({kind.api_version})",
        )
    body["apiVersion"], body["kind"] = kind.api_version, kind.kind
    meta = body.setdefault("metadata", {})
    if namespace is not None:
        if meta.get("namespace", namespace) != namespace:
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the "
                "namespace sent on the request",
            )
        meta["namespace"] = namespace
    return body


def entries(obj):
    """managedFields as {(manager, operation): set of paths}."""
    if obj is None:
        return {}
    return {
        (e["manager"], e["operation"]): decode_fields(e.get("fieldsV1", {}))
        for e in obj["metadata"].get("managedFields", [])
    }


def strip(obj):
    obj = copy.deepcopy(obj)
    for field in ("managedFields", "resourceVersion"):
        obj["metadata"].pop(field, None)
    return obj


def stale(kind, name):
    """The storage's optimistic-lock refusal (OptimisticLockErrorMsg)."""
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {kind.qualified} "{name}": '
        "the object has been modified; please apply your changes to the latest version "
        "and try again",
        {"name": name, "group": kind.group, "kind": kind.resource},
    )


def not_found(kind, name):
    return ApiError(
        404,
        "NotFound",
        f'{kind.qualified} "{name}" not found',
        {"name": name, "group": kind.group, "kind": kind.resource},
    )


def invalid(kind, name, errors):
    text = ", ".join(f"{field}: {message}" for field, _, message in errors)
    qualified = f"{kind.kind}.{kind.group}" if kind.group else kind.kind
    return ApiError(
        422,
        "Invalid",
        (
            f'{qualified} "{name}" is invalid: [{text}]'
            if len(errors) > 1
            else f'{qualified} "{name}" is invalid: {text}'
        ),
        {
            "name": name,
            "group": kind.group,
            "kind": kind.kind,
            "causes": [
                {"reason": reason, "message": message, "field": field}
                for field, reason, message in errors
            ],
        },
    )


# --- HTTP ---------------------------------------------------------------------------


def discovery_resources(kinds):
    resources = []
    for kind in kinds:
        resources.append(
            {
                "name": kind.resource,
                "singularName": kind.singular,
                "namespaced": kind.namespaced,
                "kind": kind.kind,
                "shortNames": kind.short_names,
                "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update"],
            }
        )
    return resources


def gv_path(group_version):
    return f"apis/{group_version}" if "/" in group_version else f"api/{group_version}"


def openapi_v3(kinds):
    """Just enough OpenAPI v3 for kubectl to see that PATCH takes fieldValidation and dryRun.

    Schemas are left out: the server does not enforce fieldValidation=Strict.
    """
    paths = {}
    for kind in kinds:
        scope = "/namespaces/{namespace}" if kind.namespaced else ""
        params = [
            {"name": name, "in": "query", "schema": {"type": "string"}}
            for name in ("dryRun", "fieldManager", "fieldValidation", "force")
        ]
        paths[f"/{gv_path(kind.api_version)}{scope}/{kind.resource}/{{name}}"] = {
            "patch": {
                "operationId": f"patch{kind.kind}",
                "parameters": params,
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {
                    "group": kind.group,
                    "version": kind.version,
                    "kind": kind.kind,
                },
            }
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0-fake"},
        "paths": paths,
        "components": {"schemas": {}},
    }


ROUTE = re.compile(
    r"^/(?:api/(?P<cv>v1)|apis/(?P<group>[^/]+)/(?P<gv>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+)(?=/))?/(?P<resource>[^/]+)(?:/(?P<name>[^/]+))?/?$"
)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api = None  # set by FakeApiServer
    warnings = ()  # Warning headers of the current answer
    auditing = None  # (method, url, received) of the request to log (audit)
    field_validation = "Warn"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.handle_api("GET")

    def do_POST(self):
        self.handle_api("POST")

    def do_PUT(self):
        self.handle_api("PUT")

    def do_PATCH(self):
        self.handle_api("PATCH")

    def do_DELETE(self):
        self.handle_api("DELETE")

    def send(self, code, body, headers=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.sent = code
        if self.auditing:  # logged before the client has its answer: a test reads it next
            self.audit(*self.auditing)
            self.auditing = None
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8"
                         if isinstance(body, bytes) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in list(headers) + [("Warning", w) for w in self.warnings]:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def fault(self, method):
        """An injected 429/5xx for this request (FakeApiServer.fail_next), or None."""
        with self.api.lock:
            for fault in self.api.faults:
                if fault["left"] and method in fault["methods"]:
                    fault["left"] -= 1
                    return fault
        return None

    def send_fault(self, fault):
        headers = [("Retry-After", str(fault["retry_after"]))] if fault["retry_after"] else []
        if fault["code"] == 429:  # priority and fairness: a plain-text body (filters/maxinflight)
            return self.send(429, b"Too many requests, please try again later.\n", headers)
        reason, message = {
            500: ("InternalError", "Internal error occurred: etcdserver: request timed out"),
            503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
            504: ("Timeout", "Timeout: request did not complete within requested timeout"),
        }.get(fault["code"], ("InternalError", "Internal error occurred"))
        return self.send(fault["code"], ApiError(fault["code"], reason, message).status(), headers)

    def read_body(self):
        if self.headers.get("Transfer-Encoding") == "chunked":  # as kubectl sends
            raw = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                raw += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
        else:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        if "protobuf" in (self.headers.get("Content-Type") or ""):
            # kubectl's typed generators (create namespace) speak protobuf; use -f FILE.
            raise ApiError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown "
                "format - accepted media types include: application/json, application/yaml",
            )
        try:
            if "yaml" in (self.headers.get("Content-Type") or ""):
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as exc:
            raise ApiError(400, "BadRequest", f"error decoding request body: {exc}")

    def handle_api(self, method):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        # The body is read before anything can fail so that keep-alive stays in sync.
        try:
            body = self.read_body()
        except ApiError as exc:
            return self.send(exc.code, exc.status())
        if url.path == KNOBS_PATH:
            return self.knobs(method, body)
        self.api.requests.append((method, url.path, query))
        self.warnings, self.user, self.sent = [], None, None
        self.auditing = (method, url, now_micro())  # logged by send(), before the answer
        self.answer(method, url, query, body)

    def answer(self, method, url, query, body):
        try:
            # authentication comes before priority and fairness (the 429) in the real
            # server's filter chain, so an injected fault is answered to a known user
            self.user = user = self.authenticate()
            fault = self.fault(method)
            if fault:
                return self.send_fault(fault)
            discovery = self.discovery(url.path)
            if discovery is not None:
                return self.send(200, discovery)
            self.send(*self.resource_request(method, url.path, query, body, user))
        except ApiError as exc:
            self.send(exc.code, exc.status())

    def knobs(self, method, body):
        try:
            if self.authenticate() != "admin" or method != "POST":
                raise ApiError(403, "Forbidden", f"{KNOBS_PATH}: POST by the admin only")
            self.send(200, self.api.set_knobs(body))
        except ApiError as exc:
            self.send(exc.code, exc.status())

    def audit(self, method, url, received):
        """One audit.k8s.io/v1 Event at level Metadata, stage ResponseComplete, as the
        real server logs a request with an audit policy of ``level: Metadata`` (and
        omitStages RequestReceived). Fields and meaning: the Event type of
        https://kubernetes.io/docs/reference/config-api/apiserver-audit.v1/ and
        https://kubernetes.io/docs/tasks/debug/debug-cluster/audit/ (verb: the
        Kubernetes verb, for non-resource requests the lower-cased HTTP method;
        objectRef: not for non-resource requests). As there, a request the priority
        and fairness filter refuses (429, fail_next) is audited too."""
        if not self.api.audit_log:
            return
        match = ROUTE.match(url.path)
        event = {
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
            "auditID": str(uuid.uuid4()), "stage": "ResponseComplete",
            "requestURI": self.path, "verb": method.lower(),
            "user": {"username": self.user or "system:anonymous"},
            "sourceIPs": [self.client_address[0]],
            "userAgent": self.headers.get("User-Agent") or "",
            "responseStatus": {"metadata": {}, "code": self.sent},
            "requestReceivedTimestamp": received, "stageTimestamp": now_micro(),
        }
        if match and match["resource"]:
            name = match["name"]
            event["verb"] = {"GET": "get" if name else "list", "POST": "create",
                             "PUT": "update", "PATCH": "patch",
                             "DELETE": "delete" if name else "deletecollection"}.get(
                                 method, method.lower())
            event["objectRef"] = {k: v for k, v in (
                ("resource", match["resource"]), ("namespace", match["ns"]), ("name", name),
                ("apiGroup", match["group"]), ("apiVersion", match["cv"] or match["gv"]))
                if v}
        self.api.write_audit(event)

    def authenticate(self):
        header = self.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ") if header.startswith("Bearer ") else None
        if token not in USERS:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        return USERS[token]

    def discovery(self, path):
        if path == "/version":
            return {
                "major": "1",
                "minor": "32",
                "gitVersion": "v1.32.0-fake",
                "platform": "linux/amd64",
            }
        if path == "/api":
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": self.api.host}
                ],
            }
        if path == "/apis":
            groups = sorted({k.group for k in KINDS if k.group})
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    {
                        "name": g,
                        "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                        "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"},
                    }
                    for g in groups
                ],
            }
        if path == "/openapi/v3":
            return {
                "paths": {
                    gv_path(gv): {"serverRelativeURL": f"/openapi/v3/{gv_path(gv)}?hash=fake"}
                    for gv in {k.api_version for k in KINDS}
                }
            }
        for group_version in {k.api_version for k in KINDS}:
            if path == f"/openapi/v3/{gv_path(group_version)}":
                return openapi_v3([k for k in KINDS if k.api_version == group_version])
            prefix = "/api/" if "/" not in group_version else "/apis/"
            if path.rstrip("/") == prefix + group_version:
                return {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": group_version,
                    "resources": discovery_resources(
                        k for k in KINDS if k.api_version == group_version
                    ),
                }
        return None

    def resource_request(self, method, path, query, body, user):
        match = ROUTE.match(path)
        group = match and (match["group"] or "")
        version = match and (match["cv"] or match["gv"])
        kind = match and next(
            (
                k
                for k in KINDS
                if (k.group, k.version, k.resource) == (group, version, match["resource"])
            ),
            None,
        )
        if kind is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace, name = (match["ns"], match["name"]) if kind.namespaced else (None, match["name"])
        if not kind.namespaced and match["ns"]:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        verb = {
            "GET": "get" if name else "list",
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if name else "deletecollection",
        }[method]
        if user != "admin" and verb not in READ_VERBS:
            where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
            raise ApiError(
                403,
                "Forbidden",
                f'{kind.qualified} "{name or ""}" is forbidden: User "{user}" '
                f'cannot {verb} resource "{kind.resource}" in API group "{kind.group}"{where}',
                {"name": name or "", "group": kind.group, "kind": kind.resource},
            )
        dry_run = query.get("dryRun") == "All"
        if "dryRun" in query and not dry_run:
            raise ApiError(400, "BadRequest", f'Invalid dryRun value: "{query["dryRun"]}"')
        webhook = self.api.dry_run_refused_by
        if dry_run and webhook and verb not in READ_VERBS and kind.resource != "namespaces":
            # A webhook with sideEffects Unknown/Some matches: the whole request is refused.
            raise ApiError(400, "BadRequest",
                           f'admission webhook "{webhook}" does not support dry run')
        validation = query.get("fieldValidation", "Warn")
        if validation not in ("Ignore", "Warn", "Strict"):
            raise ApiError(400, "BadRequest",
                           f'fieldValidation parameter unsupported: "{validation}"')
        self.field_validation = validation
        if verb in ("create", "update") and isinstance(body, dict):
            body = self.validate_fields(kind, body)
        manager = query.get("fieldManager") or self.default_manager()
        with self.api.lock:
            if verb == "get":
                return 200, self.render(kind, self.api.get(kind, namespace, name))
            if verb == "list":
                items = self.api.list(kind, namespace, query.get("labelSelector"))
                return 200, self.render_list(kind, items)
            if verb == "create":
                obj = self.api.create(kind, namespace, body, manager, dry_run)
                return 201, obj
            if verb == "update":
                return 200, self.api.replace(kind, namespace, name, body, manager, dry_run)
            if verb == "patch":
                return 200, self.patch(kind, namespace, name, body, manager, query, dry_run)
            if verb == "delete":
                policy = query.get("propagationPolicy") or (
                    body.get("propagationPolicy") if isinstance(body, dict) else None)
                self.api.delete(kind, namespace, name, dry_run, policy or "Background")
                return 200, {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {"name": name, "group": kind.group, "kind": kind.resource},
                }
            items = self.api.list(kind, namespace, query.get("labelSelector"))
            for obj in items:
                self.api.delete(kind, namespace, obj["metadata"]["name"], dry_run)
            return 200, self.render_list(kind, items, table=False)

    def validate_fields(self, kind, obj):
        """fieldValidation for create, update and non-apply patches: Strict refuses an
        unknown field (400), Warn drops it with a Warning header, Ignore drops it."""
        unknown = unknown_fields(kind.schema, obj)
        if not unknown:
            return obj
        if self.field_validation == "Strict":
            raise ApiError(
                400, "BadRequest",
                f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: '
                "strict decoding error: " + ", ".join(f'unknown field "{u}"' for u in unknown))
        if self.field_validation == "Warn":
            self.warnings += [f'299 - "unknown field \\"{u}\\""' for u in unknown]
        return prune(kind.schema, obj)

    def default_manager(self):
        # As the real server: the user agent up to the first "/".
        return (self.headers.get("User-Agent") or "unknown").split("/")[0]

    def patch(self, kind, namespace, name, body, manager, query, dry_run):
        content_type = (self.headers.get("Content-Type") or "").split(";")[0]
        force = query.get("force") == "true"
        if force and content_type != "application/apply-patch+yaml":
            raise ApiError(400, "BadRequest", "force is only allowed for apply patches")
        if content_type == "application/apply-patch+yaml":
            unknown = unknown_fields(kind.schema, body) if isinstance(body, dict) else []
            if unknown:
                # Whatever fieldValidation says: the typed conversion of the applied object
                # fails, and the server answers with a plain error (500, no reason).
                gvk = f"{kind.group}/{kind.version}, Kind={kind.kind}"
                where = f"{namespace}/{name}" if namespace else f"/{name}"
                lines = [f".{u}: field not declared in schema" for u in unknown]
                detail = lines[0] if len(lines) == 1 else "errors:\n  " + "\n  ".join(lines)
                raise ApiError(500, "", f"failed to create typed patch object ({where}; {gvk}): "
                                        + detail)
            return self.api.apply(
                kind, namespace, name, body, query.get("fieldManager"), force, dry_run
            )
        old = self.api.get(kind, namespace, name)
        new = copy.deepcopy(old)
        if content_type == "application/json-patch+json":
            new = json_patch(new, body)
        elif content_type in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ):
            new = merge_patch(new, body)
        else:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - "
                "accepted media types include: application/json-patch+json, "
                "application/merge-patch+json, application/apply-patch+yaml",
            )
        new = self.validate_fields(kind, new)
        version = (
            (body or {}).get("metadata", {}).get("resourceVersion")
            if isinstance(body, dict)
            else None
        )
        if not version:
            new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        return self.api.replace(kind, namespace, name, new, manager, dry_run)

    def wants_table(self):
        return "as=Table" in (self.headers.get("Accept") or "")

    def render(self, kind, obj):
        return self.render_list(kind, [obj], single=True) if self.wants_table() else obj

    def render_list(self, kind, items, single=False, table=True):
        meta = {"resourceVersion": self.api.current}
        if table and self.wants_table():
            return {
                "kind": "Table",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": meta,
                "columnDefinitions": [
                    {
                        "name": c,
                        "type": "string",
                        "format": "name" if c == "Name" else "",
                        "description": c,
                        "priority": 0,
                    }
                    for c in ["Name"] + kind.columns
                ],
                "rows": [
                    {
                        "cells": [o["metadata"]["name"]] + kind.table(o),
                        "object": {
                            "kind": "PartialObjectMetadata",
                            "apiVersion": "meta.k8s.io/v1",
                            "metadata": o["metadata"],
                        },
                    }
                    for o in items
                ],
            }
        listed = [{k: v for k, v in o.items() if k not in ("apiVersion", "kind")} for o in items]
        return {
            "kind": f"{kind.kind}List",
            "apiVersion": kind.api_version,
            "metadata": meta,
            "items": listed,
        }


def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    target = target if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = merge_patch(target.get(key), value)
    return target


def json_patch(doc, operations):
    """RFC 6902 (add, remove, replace, test)."""
    for op in operations or []:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        if op["op"] == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != op["value"]:
                raise ApiError(
                    422,
                    "Invalid",
                    f"the server rejected our request due to an error in our "
                    f"request: testing value {op['path']} failed",
                )
        elif op["op"] == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        elif isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if op["op"] == "add":
                parent.insert(index, op["value"])
            else:
                parent[index] = op["value"]
        else:
            parent[last] = op["value"]
    return doc


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description="a loopback Kubernetes API server for tests")
    parser.add_argument("--listen", default="127.0.0.1", help="127.0.0.1, or a lab address")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--kubeconfig", help="where to write the admin kubeconfig")
    parser.add_argument("--audit-log-path", help="append an audit event per request (JSON lines, "
                                                 "as kube-apiserver's flag of that name)")
    args = parser.parse_args(argv)
    with FakeApiServer(args.listen, args.port, audit_log=args.audit_log_path) as server:
        path = server.kubeconfig(args.kubeconfig or tempfile.mktemp(prefix="fake-kubeconfig-"))
        print(f"KUBECONFIG={path} ({server.url}); Ctrl-C stops", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
