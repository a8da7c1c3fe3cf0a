"""Point Kubernetes pods at the gateway: a selector-less Service and its EndpointSlices.

Pods reach the database as ``NAME.NAMESPACE.svc.cluster.local:PORT``. The
Service has no selector, so Kubernetes' endpointslice controller leaves it
alone; this module writes its EndpointSlices, one per address family and per
1000 endpoints, labelled ``kubernetes.io/service-name`` and
``endpointslice.kubernetes.io/managed-by: vpn-gateway.salt``.

Every write is a server-side apply with the field manager ``vpn-gateway``.
EndpointSlices are written from what was just read (the state's endpoints,
the monitoring's ``ready``: ``endpoints`` is an atomic list, so one field
manager cannot own a condition alone), so each apply of a slice that exists
carries the ``resourceVersion`` it was computed from: the API server refuses
a stale one (409 Conflict), and the read-compute-apply starts again (at most
``CONFLICT_RETRIES`` times). ``k8s.endpointslice_present`` and
``k8s.set_endpoints_ready`` never lose each other's update;
``dry_run=True`` asks the server for its dry run (``dryRun=All``) and reports
what would change. The kubeconfig and its context come from the function's
arguments, else from ``vpn_gateway:kubernetes:kubeconfig`` and
``vpn_gateway:kubernetes:context`` (minion config or pillar, via
``config.get``), else from the client's defaults (``$KUBECONFIG``,
``~/.kube/config``).

The helpers at the top (address checks, manifests, diffs) are pure functions;
tests import them directly.
"""

import copy
import ipaddress
import json
import logging
import os
import re
import time

import salt.utils.atomicfile
import salt.utils.files
from salt.exceptions import CommandExecutionError, SaltInvocationError

try:
    import urllib3
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config
    from kubernetes.config.config_exception import ConfigException

    HAS_KUBERNETES = True
except ImportError:
    HAS_KUBERNETES = False

log = logging.getLogger(__name__)

__virtualname__ = "k8s"
# Only these are execution functions; the pure helpers stay plain functions.
__load__ = [
    "get_service",
    "list_endpointslices",
    "apply_service",
    "apply_endpointslices",
    "delete_endpointslices",
    "set_endpoints_ready",
    "set_endpoint_conditions",
    "sync_readiness",
]

FIELD_MANAGER = "vpn-gateway"
MANAGED_BY = "vpn-gateway.salt"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
# The API server's hard limit per EndpointSlice (its validation answers 422 above it).
MAX_ENDPOINTS_PER_SLICE = 1000
FAMILIES = {4: "IPv4", 6: "IPv6"}
REQUEST_TIMEOUT = 20
# Read-compute-apply rounds when another writer changed a slice in between (409 Conflict).
CONFLICT_RETRIES = 5
# 429 and 5xx: tries per request, the longest wait between two, and the whole budget (s).
# The wait is the answer's Retry-After when it has one (capped), else 1, 2, 4 ... s.
TRANSIENT_TRIES = 5
TRANSIENT_WAIT_MAX = 10
TRANSIENT_BUDGET = 30
TRANSIENT_STATUSES = (429, 500, 502, 503, 504)
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
PROTOCOLS = ("TCP", "UDP", "SCTP")
CONDITIONS = ("ready", "serving", "terminating")


def __virtual__():
    if not HAS_KUBERNETES:
        return (
            False,
            "the k8s module needs the kubernetes Python client: "
            "pip install kubernetes==37.0.2 into Salt's Python",
        )
    return __virtualname__


# --- pure helpers ----------------------------------------------------------------


def check_address(address):
    """Return the address family ("IPv4"/"IPv6") of one endpoint address.

    Raises ValueError for anything that is not a plain address, and for the
    addresses a Service must never point at: unspecified, loopback and
    link-local ones (a pod would reach itself or nothing).
    """
    try:
        ip = ipaddress.ip_address(str(address))
    except ValueError:
        raise ValueError(f"{address!r} is not an IPv4 or IPv6 address") from None
    if ip.version == 6 and ip.ipv4_mapped:
        # The API server parses it as IPv4: refused in an IPv6 slice; write it as IPv4.
        raise ValueError(
            f"{address} is an IPv4-mapped IPv6 address; write it as {ip.ipv4_mapped}"
        )
    for test, what in (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
    ):
        if test:
            raise ValueError(f"{address} is {what}; an endpoint must be an address pods can reach")
    return FAMILIES[ip.version]


def normalize_endpoints(endpoints):
    """Endpoints as a list of {"address", "family", "hostname", "ready", "serving",
    "terminating"} dicts.

    Accepts addresses as strings or dicts with ``address`` and optional
    ``hostname``, ``ready``, ``serving`` and ``terminating``. Raises ValueError
    for a bad or repeated address.
    """
    if not isinstance(endpoints, (list, tuple)) or not endpoints:
        raise ValueError("endpoints must be a non-empty list of addresses")
    result, seen = [], set()
    for entry in endpoints:
        entry = {"address": entry} if isinstance(entry, str) else dict(entry)
        family = check_address(entry.get("address"))
        address = str(ipaddress.ip_address(entry["address"]))  # one spelling per address
        if address in seen:
            raise ValueError(f"endpoint {address} is listed twice")
        seen.add(address)
        hostname = entry.get("hostname")
        if hostname is not None and not DNS1123_LABEL.match(hostname):
            raise ValueError(f"hostname {hostname!r} of {address} is not a DNS label")
        conditions = {}
        for condition in CONDITIONS:
            value = entry.get(condition)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"{condition} of {address} must be true or false")
            conditions[condition] = value
        result.append({"address": address, "family": family, "hostname": hostname, **conditions})
    return result


def label_errors(labels):
    """The API server's label rules (keys: qualified names; values): a list of messages."""
    errors = []
    if not isinstance(labels, dict):
        return [f"labels must be a mapping, not {labels!r}"]
    for key, value in labels.items():
        key = str(key)
        prefix, _, name = key.rpartition("/")
        if key.count("/") > 1:
            errors.append(f"label key {key!r}: at most one '/' (an optional DNS subdomain prefix)")
            continue
        if "/" in key and not prefix:
            errors.append(f"label key {key!r}: the prefix before '/' must be non-empty")
        elif prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
            errors.append(f"label key {key!r}: the prefix must be a lowercase DNS subdomain "
                          "(a-z, 0-9, '-', '.'), at most 253 characters")
        if not name:
            errors.append(f"label key {key!r}: the name part must be non-empty")
        elif len(name) > 63 or not QUALIFIED_NAME.match(name):
            errors.append(f"label key {key!r}: the name part must be at most 63 characters of "
                          "a-z, A-Z, 0-9, '-', '_', '.', starting and ending with a letter or "
                          "digit")
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            errors.append(f"label {key!r}: value {value!r} must be empty or at most 63 characters "
                          "of a-z, A-Z, 0-9, '-', '_', '.', starting and ending with a letter or "
                          "digit")
    return errors


def normalize_service_ports(ports):
    """Service ports as [{"name", "port", "targetPort", "protocol"}]; ValueError when wrong."""
    if not isinstance(ports, (list, tuple)) or not ports:
        raise ValueError("ports must be a non-empty list of {name, port, target_port, protocol}")
    result, names, numbers = [], set(), set()
    for entry in ports:
        entry = dict(entry)
        name = entry.get("name", "")
        port = entry.get("port")
        target = entry.get("target_port", entry.get("targetPort", port))
        protocol = entry.get("protocol", "TCP")
        if len(ports) > 1 and not name:
            raise ValueError("every port needs a name when there is more than one")
        if name and (len(name) > 63 or not DNS1123_LABEL.match(name)):
            raise ValueError(f"port name {name!r} must be a lowercase DNS label (a-z, 0-9, '-')")
        if name in names:
            raise ValueError(f"port name {name!r} is used twice")
        names.add(name)
        for what, value in (("port", port), ("target_port", target)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
                raise ValueError(
                    f"{what} of port {name or port!r} must be a number 1-65535, not {value!r}"
                )
        if protocol not in PROTOCOLS:
            raise ValueError(
                f"protocol of port {name or port!r} must be one of {', '.join(PROTOCOLS)}"
            )
        if (port, protocol) in numbers:  # the API server's rule: 422 Duplicate value
            raise ValueError(f"port {port}/{protocol} is listed twice (port {name!r})")
        numbers.add((port, protocol))
        result.append({"name": name, "port": port, "targetPort": target, "protocol": protocol})
    return result


def slice_ports(service_ports):
    """EndpointSlice ports for a selector-less Service: its port names, its target ports.

    kube-proxy pairs a Service port with the slice port of the same name; the
    slice's port number is where the backend (the gateway's pooler) listens.
    """
    result = []
    for port in service_ports:
        target = port.get("targetPort", port["port"])
        if not isinstance(target, int):
            raise ValueError(
                f"Service port {port.get('name')!r} has a named targetPort {target!r}; "
                "a selector-less Service needs a number"
            )
        result.append(
            {"name": port.get("name", ""), "port": target, "protocol": port.get("protocol", "TCP")}
        )
    return result


def service_manifest(name, namespace, ports, labels=None):
    """The selector-less Service as applied (no selector, no defaults)."""
    if not DNS1035_LABEL.match(name or "") or len(name) > 63:
        raise ValueError(
            f"Service name {name!r} must be a DNS-1035 label (a-z, 0-9, '-', "
            "starting with a letter, at most 63 characters)"
        )
    metadata = {"name": name, "namespace": namespace}
    if labels:
        errors = label_errors(labels)
        if errors:
            raise ValueError("; ".join(errors))
        metadata["labels"] = dict(labels)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {"ports": normalize_service_ports(ports)},
    }


def endpointslice_manifests(
    service, namespace, endpoints, ports, ready_default=True, max_per_slice=MAX_ENDPOINTS_PER_SLICE,
    owner=None,
):
    """The EndpointSlices for a Service: one list per family, max_per_slice endpoints each.

    ``endpoints`` come from normalize_endpoints; see ``conditions`` for how
    ready, serving and terminating are derived (ready_default for an unknown
    serving). Slice names are stable (``SERVICE-ipv4-0``) so a re-apply updates
    the same objects. ``owner`` (the live Service: its uid) becomes each slice's
    ownerReference, so the garbage collector deletes the slices with the Service.
    """
    manifests = []
    for family in ("IPv4", "IPv6"):
        members = [e for e in endpoints if e["family"] == family]
        for index, start in enumerate(range(0, len(members), max_per_slice)):
            chunk = members[start:start + max_per_slice]
            manifests.append(
                {
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "name": f"{service}-{family.lower()}-{index}",
                        "namespace": namespace,
                        "labels": {SERVICE_NAME_LABEL: service, MANAGED_BY_LABEL: MANAGED_BY},
                        **({"ownerReferences": [owner_reference(owner)]} if owner else {}),
                    },
                    "addressType": family,
                    "endpoints": [_endpoint(e, ready_default) for e in chunk],
                    "ports": copy.deepcopy(ports),
                }
            )
    return manifests


def conditions(serving=None, terminating=None, ready_default=True):
    """EndpointConditions with the API's meaning.

    serving: the gateway can carry connections (its tunnel is up, as seen from
    outside it); None (unknown) becomes ready_default. terminating: the gateway
    is drained through pillar before it is removed. ready = serving and not
    terminating ("ready should never be true for terminating endpoints").
    """
    serving = ready_default if serving is None else serving
    terminating = bool(terminating)
    return {"ready": serving and not terminating, "serving": serving,
            "terminating": terminating}


def owner_reference(service):
    """The ownerReference of a slice to its (live) Service."""
    metadata = service["metadata"]
    return {"apiVersion": "v1", "kind": "Service", "name": metadata["name"],
            "uid": metadata["uid"], "controller": True, "blockOwnerDeletion": True}


def _endpoint(entry, ready_default):
    serving = entry.get("serving")
    if serving is None:  # an explicit ready (state, old callers) stands for serving
        serving = entry.get("ready")
    endpoint = {"addresses": [entry["address"]],
                "conditions": conditions(serving, entry.get("terminating"), ready_default)}
    if entry["hostname"]:
        endpoint["hostname"] = entry["hostname"]
    return endpoint


def view(obj):
    """The parts of a Service or EndpointSlice that this module manages, for diffs.

    Endpoints are keyed by address so that a diff names the addresses that
    change rather than list positions.
    """
    if obj is None:
        return None
    labels = (obj.get("metadata") or {}).get("labels") or {}
    if obj.get("kind", "Service") == "Service" and "spec" in obj:
        spec = obj["spec"]
        return {
            "labels": labels,
            "selector": spec.get("selector") or {},
            "ports": {
                p.get("name")
                or str(p["port"]): {k: p.get(k) for k in ("port", "targetPort", "protocol")}
                for p in spec.get("ports") or []
            },
        }
    owners = (obj.get("metadata") or {}).get("ownerReferences") or []
    return {
        "labels": labels,
        "owner": next((f"{o.get('kind')}/{o.get('name')}" for o in owners
                       if o.get("controller")), None),
        "addressType": obj.get("addressType"),
        "ports": {
            p.get("name") or "": {"port": p.get("port"), "protocol": p.get("protocol", "TCP")}
            for p in obj.get("ports") or []
        },
        "endpoints": {
            a: {**{c: (e.get("conditions") or {}).get(c) for c in CONDITIONS},
                "hostname": e.get("hostname")}
            for e in obj.get("endpoints") or []
            for a in e.get("addresses", [])
        },
    }


def diff(old, new):
    """Nested differences between two views: {key: ...} down to {"old": x, "new": y}."""
    if isinstance(old, dict) and isinstance(new, dict):
        result = {}
        for key in list(old) + [k for k in new if k not in old]:
            sub = diff(old.get(key), new.get(key))
            if sub:
                result[key] = sub
        return result
    return {} if old == new else {"old": old, "new": new}


def live_ready(slices):
    """{address: ready} of existing slices (what the monitoring last set)."""
    return {a: c["ready"] for a, c in live_conditions(slices).items()}


def live_conditions(slices):
    """{address: {ready, serving, terminating}} of existing slices (serving defaults to
    ready, as the API says consumers should read a missing serving)."""
    result = {}
    for s in slices:
        for e in s.get("endpoints") or []:
            found = e.get("conditions") or {}
            current = {"ready": found.get("ready"),
                       "serving": found.get("serving", found.get("ready")),
                       "terminating": found.get("terminating")}
            for a in e.get("addresses", []):
                result[a] = current
    return result


def readiness_decision(gateways, beats, memory, now, deadline, require_tunnel=True):
    """Who serves, from the gateways' heartbeats as the observer sees them (pure).

    ``gateways`` {minion: address}; ``beats`` {minion: the mine's latest beat or
    None}; ``memory`` {minion: {"beat", "seen"}} from the previous call (``seen``
    on the observer's clock when the beat last changed). A gateway first seen
    gets one deadline of grace; ``written`` in memory is what the observer last
    wrote for it (``written``, after the write). Returns (memory, {address:
    serving or None}, report): None (leave the endpoint as it is) for a fresh
    beat whose verdict was written already. A beat is acted on once: since then
    the gateway's own recovery may have set its endpoint from fresher knowledge
    (``endpoint_ready``), and the same beat, taken before the fault, would set it
    ready again (seen in the e2e guest run: vpn-gw1 not ready at 27.6 s after
    pluto was killed, ready at 49.1 s from its last beat before the kill, not
    ready again at 59.9 s). A verdict that changes without a new beat (a pillar
    change) or was never written (the API failed) is acted on.
    """
    memory, serving, report = dict(memory or {}), {}, {}
    for minion, address in sorted(gateways.items()):
        beat = beats.get(minion)
        beat = beat if isinstance(beat, dict) else {}
        previous, value = memory.get(minion), beat.get("beat")
        new = (not previous or "seen" not in previous  # first look: one deadline of grace
               or (value is not None and value != previous.get("beat")))
        entry = ({"beat": value, "seen": now, "written": (previous or {}).get("written")}
                 if new else dict(previous))
        silent = max(0.0, now - entry["seen"])
        fresh = silent <= deadline
        up = fresh and (bool(beat.get("serving")) if require_tunnel else True)
        memory[minion] = entry
        serving[address] = None if not new and fresh and entry.get("written") == up else up
        report[minion] = {"address": address, "silent_for": round(silent, 1), "fresh": fresh,
                          "tunnels": beat.get("tunnels"), "serving": up}
    return memory, serving, report


# --- the API client ----------------------------------------------------------------


class _StaleWrite(CommandExecutionError):
    """409 Conflict on a resourceVersion precondition: read again and redo."""


class _Api:
    """A kubeconfig's ApiClient plus where it came from (for error messages)."""

    def __init__(self, kubeconfig=None, context=None):
        self.kubeconfig = (
            kubeconfig or __salt__["config.get"]("vpn_gateway:kubernetes:kubeconfig") or None
        )
        self.context = context or __salt__["config.get"]("vpn_gateway:kubernetes:context") or None
        configuration = k8s_client.Configuration()
        try:
            k8s_config.load_kube_config(
                config_file=self.kubeconfig,
                context=self.context,
                client_configuration=configuration,
                persist_config=False,
            )
        except (ConfigException, OSError) as exc:
            raise CommandExecutionError(
                f"cannot load kubeconfig {self.kubeconfig or '(default)'}"
                f"{' context ' + self.context if self.context else ''}: {exc}; set "
                "vpn_gateway:kubernetes:kubeconfig (and :context) in pillar or minion config"
            ) from None
        # One reconnect, but no retry on an HTTP status: urllib3 would sleep any Retry-After
        # of a 429/503 itself, unbounded; request() retries those within its own bounds.
        configuration.retries = urllib3.util.Retry(
            total=1, status=0, respect_retry_after_header=False)
        self.host = configuration.host
        self.client = k8s_client.ApiClient(configuration)

    def request(
        self,
        method,
        path,
        query=None,
        body=None,
        content_type="application/json",
        missing_ok=False,
        what=None,
        namespace=None,
    ):
        """One API call; the decoded JSON answer, None for a 404 when missing_ok."""
        headers = {"Accept": "application/json", "Content-Type": content_type}
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        serialized = self.client.param_serialize(
            method,
            path,
            query_params=params,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        started, tries = time.monotonic(), 0
        while True:
            tries += 1
            response, answer = self._call(serialized)
            wait = _transient_wait(response, answer, tries, time.monotonic() - started)
            if wait is None:
                break
            log.info("k8s: %s %s answered %s: trying again in %.1f s (try %d of %d)", method,
                     path, response.status, wait, tries + 1, TRANSIENT_TRIES)
            time.sleep(wait)
        if tries > 1 and response.status in TRANSIENT_STATUSES:
            what = f"{what or path} ({tries} tries in {time.monotonic() - started:.0f} s)"
        if response.status < 400:
            return answer
        if response.status == 404 and missing_ok and not _namespace_missing(answer):
            return None
        if _stale(response.status, answer):
            raise _StaleWrite(self.explain(response.status, answer, what or path, namespace))
        raise CommandExecutionError(self.explain(response.status, answer, what or path, namespace))

    def _call(self, serialized):
        """One HTTP exchange: (response, decoded answer)."""
        try:
            response = self.client.call_api(*serialized, _request_timeout=REQUEST_TIMEOUT)
            data = response.read()
        except (urllib3.exceptions.HTTPError, k8s_client.ApiException, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise CommandExecutionError(
                f"Kubernetes API at {self.host} is unreachable ({reason}); check the server "
                "in kubeconfig "
                f"{self.kubeconfig or '(default)'} and the network path to it"
            ) from None
        try:
            answer = json.loads(data) if data else None
        except ValueError:  # not JSON: a proxy's page, or the priority-and-fairness 429 text
            answer = {"message": data[:200].decode(errors="replace").strip()}
        return response, answer

    def explain(self, status, answer, what, namespace):
        answer = answer if isinstance(answer, dict) else {}
        message = answer.get("message") or "no message"
        where = f"kubeconfig {self.kubeconfig or '(default)'}" + (
            f" context {self.context}" if self.context else ""
        )
        if status == 401:
            return (
                f"{what}: the API server at {self.host} rejected the credentials of {where} "
                "(401 Unauthorized); renew the token or client certificate"
            )
        if status == 403:
            return (
                f"{what}: forbidden (403): {message}; the user of {where} needs get, list, create, "
                "patch and delete on services and endpointslices.discovery.k8s.io in namespace "
                f"{namespace}"
            )
        if _namespace_missing(answer):
            return (
                f"{what}: namespace {namespace} does not exist (404); create it or fix "
                "vpn_gateway:kubernetes:service:namespace"
            )
        if status == 409 and answer.get("reason") == "Conflict" and "Apply failed" in message:
            return (
                f"{what}: field manager conflict (409): {message}; another field manager "
                "owns these "
                "fields: drop them there, or set vpn_gateway:kubernetes:force_conflicts: true so "
                f"{FIELD_MANAGER} takes them over"
            )
        if status == 422:
            return f"{what}: the API server refused it (422 Invalid): {message}"
        if status == 400 and "does not support dry run" in message:
            return (
                f"{what}: the API server refused the dry run (400): {message}; this cluster "
                "cannot predict changes (test=True). Set vpn_gateway:kubernetes:dry_run: "
                "test_only so that real runs apply without a dry run first (docs/k8s.md)"
            )
        if status in TRANSIENT_STATUSES:
            return (
                f"{what}: the API server at {self.host} is overloaded or failing ({status} "
                f"{answer.get('reason') or ''}): {message}; try again later"
            )
        return f"{what}: {status} {answer.get('reason') or ''}: {message}"


def _retry_after(response):
    """Seconds from a Retry-After header (delta-seconds; an HTTP date counts as 1), or None."""
    value = response.headers.get("Retry-After") if response.headers is not None else None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return 1.0


def _transient_wait(response, answer, tries, elapsed):
    """How long to wait before trying a request again, or None (not transient, or the
    tries or the time budget are spent).

    429 (priority and fairness, storage initializing) and 500/502/503/504 are transient
    (API conventions: retry after Retry-After, or with exponential backoff), except the
    server-side apply 500 for a field not in the schema: that one answers the same
    every time.
    """
    status = response.status
    if status not in TRANSIENT_STATUSES or tries >= TRANSIENT_TRIES:
        return None
    answer = answer if isinstance(answer, dict) else {}
    if status == 500 and "failed to create typed patch object" in (answer.get("message") or ""):
        return None
    hinted = _retry_after(response)
    if hinted is None:
        hinted = ((answer.get("details") or {}).get("retryAfterSeconds"))
    wait = float(hinted) if isinstance(hinted, (int, float)) else 2.0 ** (tries - 1)
    wait = min(wait, TRANSIENT_WAIT_MAX)
    if elapsed + wait > TRANSIENT_BUDGET:
        return None
    return wait


def _stale(status, answer):
    """The storage's optimistic-lock refusal (a resourceVersion precondition), not a field
    manager conflict (those say "Apply failed")."""
    answer = answer if isinstance(answer, dict) else {}
    return (status == 409 and answer.get("reason") == "Conflict"
            and "the object has been modified" in (answer.get("message") or ""))


def _retrying(what, attempt):
    """Run ``attempt()`` (a whole read-compute-apply) again while another writer wins."""
    for _ in range(CONFLICT_RETRIES - 1):
        try:
            return attempt()
        except _StaleWrite:
            log.info("k8s: %s changed under us (409 Conflict): reading it again", what)
    try:
        return attempt()
    except _StaleWrite as exc:
        raise CommandExecutionError(
            f"{exc} ({CONFLICT_RETRIES} tries: another writer keeps changing it)") from None


def _namespace_missing(answer):
    details = (answer or {}).get("details") or {}
    return (answer or {}).get("code") == 404 and details.get("kind") == "namespaces"


def _service_path(namespace, name=None):
    return f"/api/v1/namespaces/{namespace}/services" + (f"/{name}" if name else "")


def _slice_path(namespace, name=None):
    return f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices" + (
        f"/{name}" if name else ""
    )


def _apply(api, path, manifest, force, dry_run, what):
    if not dry_run:
        log.info("k8s: server-side apply of %s", what)
    query = {
        "fieldManager": FIELD_MANAGER,
        "force": "true" if force else "false",
        "fieldValidation": "Strict",  # an unknown field is an error, never silently dropped
        "dryRun": "All" if dry_run else None,
    }
    return api.request(
        "PATCH",
        path,
        query,
        manifest,
        content_type="application/apply-patch+yaml",
        what=what,
        namespace=manifest["metadata"]["namespace"],
    )


def _invalid(key, exc):
    return SaltInvocationError(f"{key}: {exc}")


# --- execution functions -----------------------------------------------------------


def get_service(name, namespace, summary=False, kubeconfig=None, context=None):
    """
    Return the Service NAMESPACE/NAME as the API server has it, or None.

    summary
        Only what this module manages: labels, selector, ports.

    CLI Example:

    .. code-block:: bash

        salt-call k8s.get_service postgres databases
    """
    api = _Api(kubeconfig, context)
    service = api.request(
        "GET",
        _service_path(namespace, name),
        missing_ok=True,
        what=f"Service {namespace}/{name}",
        namespace=namespace,
    )
    return view(service) if summary else service


def list_endpointslices(
    service, namespace, managed_only=False, summary=False, kubeconfig=None, context=None
):
    """
    List the EndpointSlices of a Service (label kubernetes.io/service-name).

    managed_only
        Only the slices this module manages (managed-by vpn-gateway.salt).
    summary
        ``{name: view}``: labels, addressType, ports, endpoints by address.

    CLI Example:

    .. code-block:: bash

        salt-call k8s.list_endpointslices postgres databases
    """
    slices = _list_slices(_Api(kubeconfig, context), service, namespace, managed_only)
    return {s["metadata"]["name"]: view(s) for s in slices} if summary else slices


def _list_slices(api, service, namespace, managed_only):
    selector = f"{SERVICE_NAME_LABEL}={service}"
    if managed_only:
        selector += f",{MANAGED_BY_LABEL}={MANAGED_BY}"
    answer = api.request(
        "GET",
        _slice_path(namespace),
        {"labelSelector": selector},
        what=f"EndpointSlices of {namespace}/{service}",
        namespace=namespace,
    )
    return sorted(answer.get("items") or [], key=lambda s: s["metadata"]["name"])


def apply_service(
    name, namespace, ports, labels=None, force=False, dry_run=False, kubeconfig=None, context=None
):
    """
    Server-side apply the selector-less Service NAMESPACE/NAME.

    ports
        List of ``{name, port, target_port, protocol}`` (target_port defaults
        to port, protocol to TCP).

    Returns ``{"changes": {...}, "object": <view after apply>}``; with
    dry_run=True the server's dry run, nothing is written. Refuses a live
    Service that has a selector (Kubernetes' controller owns its endpoints).

    CLI Example:

    .. code-block:: bash

        salt-call k8s.apply_service postgres databases \\
            ports='[{name: postgres, port: 5432, target_port: 6432}]' dry_run=True
    """
    try:
        manifest = service_manifest(name, namespace, ports, labels)
    except ValueError as exc:
        raise _invalid("vpn_gateway:kubernetes:service", exc) from None
    api = _Api(kubeconfig, context)
    what = f"Service {namespace}/{name}"
    live = api.request(
        "GET", _service_path(namespace, name), missing_ok=True, what=what, namespace=namespace
    )
    _refuse_selector(live, what)
    result = _apply(api, _service_path(namespace, name), manifest, force, dry_run, what)
    changes = diff(view(live), view(result))
    return {"changes": {what: changes} if changes else {}, "object": view(result)}


def _refuse_selector(service, what):
    selector = ((service or {}).get("spec") or {}).get("selector")
    if selector:
        raise CommandExecutionError(
            f"{what} has a selector {selector}: Kubernetes' endpointslice controller manages its "
            "endpoints; use a Service without selector (delete it, or choose another name)"
        )


def apply_endpointslices(
    service,
    namespace,
    endpoints,
    ports=None,
    ready=None,
    force=False,
    dry_run=False,
    kubeconfig=None,
    context=None,
    terminating=None,
):
    """
    Server-side apply the EndpointSlices that point Service NAMESPACE/SERVICE at endpoints.

    endpoints
        Addresses (IPv4 and/or IPv6, one slice per family and per 1000), as
        strings or ``{address, hostname, ready}``. Loopback, link-local and
        unspecified addresses are refused.
    ports
        ``[{name, port, protocol}]``; default: the Service's port names with
        their target ports. When given, the names must equal the Service's.
    ready
        conditions.serving for every endpoint (ready follows it); None keeps
        each live value, which the readiness check sets (new endpoints start
        serving).
    terminating
        Addresses being drained (``vpn_gateway:kubernetes:draining``): their
        conditions.terminating is true and ready false (serving still follows
        the gateway's health); every other endpoint is not terminating.

    Each slice carries an ownerReference to the Service (its uid), so the
    garbage collector deletes the slices when the Service is deleted.
    Slices of this module that are no longer needed are deleted. Returns
    ``{"changes": {...}, "slices": {name: view}}``; dry_run=True uses the
    server's dry run and writes nothing.

    CLI Example:

    .. code-block:: bash

        salt-call k8s.apply_endpointslices postgres databases '["198.18.2.11"]' dry_run=True
    """
    try:
        entries = normalize_endpoints(endpoints)
    except (ValueError, KeyError, TypeError) as exc:
        raise _invalid("vpn_gateway:kubernetes:gateway_addresses", exc) from None
    if ready is not None and not isinstance(ready, bool):
        raise SaltInvocationError(f"ready must be true, false or None, not {ready!r}")
    try:
        draining = {str(ipaddress.ip_address(a)) for a in terminating or []}
    except (ValueError, TypeError) as exc:
        raise _invalid("vpn_gateway:kubernetes:draining", exc) from None
    unknown = draining - {e["address"] for e in entries}
    if unknown:
        raise _invalid("vpn_gateway:kubernetes:draining",
                       f"{sorted(unknown)} are not among the endpoints")
    api = _Api(kubeconfig, context)
    what = f"Service {namespace}/{service}"
    svc = api.request(
        "GET", _service_path(namespace, service), missing_ok=True, what=what, namespace=namespace
    )
    _refuse_selector(svc, what)
    ports = _slice_ports_for(svc, ports, what, dry_run)

    def attempt():
        existing = _list_slices(api, service, namespace, managed_only=True)
        known = live_conditions(existing)
        wanted = []
        for entry in entries:
            serving = entry["serving"] if entry["serving"] is not None else entry["ready"]
            if serving is None:
                serving = ready if ready is not None else (known.get(entry["address"]) or {}).get(
                    "serving")
            wanted.append(dict(entry, serving=serving,
                               terminating=entry["address"] in draining or bool(
                                   entry["terminating"])))
        manifests = endpointslice_manifests(
            service, namespace, wanted, ports, ready_default=True, owner=svc
        )
        result = _sync_slices(api, manifests, existing, force, dry_run)
        if svc is None:  # a dry run before the Service exists: it will own them
            for name, predicted in result["slices"].items():
                predicted["owner"] = f"Service/{service}"
                change = diff(view(next((s for s in existing if s["metadata"]["name"] == name),
                                        None)), predicted)
                if change:
                    result["changes"][f"EndpointSlice {namespace}/{name}"] = change
        return result

    return _retrying(f"the EndpointSlices of {what}", attempt)


def _slice_ports_for(svc, ports, what, dry_run):
    if svc is None and not dry_run:
        raise CommandExecutionError(
            f"{what} does not exist: apply k8s.service_present first " "(require it in the state)"
        )
    try:
        derived = slice_ports(svc["spec"].get("ports") or []) if svc else None
        if ports is None:
            if derived is None:
                raise ValueError(f"{what} does not exist yet, so its ports are unknown: pass ports")
            return derived
        given = [
            {"name": p.get("name", ""), "port": p["port"], "protocol": p.get("protocol", "TCP")}
            for p in ports
        ]
        if derived is not None and sorted(p["name"] for p in given) != sorted(
            p["name"] for p in derived
        ):
            raise ValueError(
                f"port names {sorted(p['name'] for p in given)} differ from the Service's "
                f"{sorted(p['name'] for p in derived)}; kube-proxy matches them by name"
            )
        return given
    except (ValueError, KeyError, TypeError) as exc:
        raise _invalid(
            "ports (vpn_gateway:kubernetes:service:port_name, vpn_gateway:pooler:listen_port)", exc
        ) from None


def _sync_slices(api, manifests, existing, force, dry_run):
    changes, slices = {}, {}
    live = {s["metadata"]["name"]: s for s in existing}
    for manifest in manifests:
        name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
        what = f"EndpointSlice {namespace}/{name}"
        version = (live.get(name) or {}).get("metadata", {}).get("resourceVersion")
        if version:  # computed from this version: a precondition (409 if it changed since)
            manifest["metadata"]["resourceVersion"] = version
        result = _apply(api, _slice_path(namespace, name), manifest, force, dry_run, what)
        slices[name] = view(result)
        change = diff(view(live.get(name)), slices[name])
        if change:
            changes[what] = change
    wanted = {m["metadata"]["name"] for m in manifests}
    for name, stale in live.items():
        if name not in wanted:
            namespace = stale["metadata"]["namespace"]
            what = f"EndpointSlice {namespace}/{name}"
            if not dry_run:
                log.info("k8s: deleting %s (no longer needed)", what)
            api.request(
                "DELETE",
                _slice_path(namespace, name),
                {"dryRun": "All" if dry_run else None},
                what=what,
                namespace=namespace,
            )
            changes[what] = {"old": view(stale), "new": None}
    return {"changes": changes, "slices": slices}


def delete_endpointslices(service, namespace, dry_run=False, kubeconfig=None, context=None):
    """
    Delete the EndpointSlices this module manages for a Service (others stay).

    CLI Example:

    .. code-block:: bash

        salt-call k8s.delete_endpointslices postgres databases
    """
    api = _Api(kubeconfig, context)
    return _sync_slices(api, [], _list_slices(api, service, namespace, True), False, dry_run)


def set_endpoints_ready(service, namespace, ready, addresses=None, kubeconfig=None, context=None):
    """
    Set the serving condition (and so ready) of a Service's endpoints (for the tunnel's health).

    Re-applies this module's slices as they are with conditions.serving set to
    ``ready``, for all endpoints or only for ``addresses``; conditions.ready
    becomes ``ready`` unless the endpoint is terminating (drained: never ready).
    Pods stop getting a not-ready endpoint from kube-proxy without the slice
    going away. Returns the changes (empty when nothing changed: no write, no
    new resourceVersion).

    CLI Example:

    .. code-block:: bash

        salt-call k8s.set_endpoints_ready postgres databases False
    """
    if not isinstance(ready, bool):
        raise SaltInvocationError(f"ready must be true or false, not {ready!r}")
    only = None if addresses is None else {str(ipaddress.ip_address(a)) for a in addresses}
    return _set_serving(_Api(kubeconfig, context), service, namespace,
                        lambda address: ready if only is None or address in only else None)


def set_endpoint_conditions(service, namespace, serving, kubeconfig=None, context=None):
    """
    Set conditions.serving per address (``{address: true|false}``); ready follows it
    unless the endpoint is terminating. Addresses not listed keep their conditions.
    Writes nothing when every condition already has its value.

    CLI Example:

    .. code-block:: bash

        salt-call k8s.set_endpoint_conditions postgres databases '{"198.18.2.12": false}'
    """
    if not isinstance(serving, dict) or not all(isinstance(v, bool) for v in serving.values()):
        raise SaltInvocationError(f"serving must be a mapping of address to true/false, "
                                  f"not {serving!r}")
    wanted = {str(ipaddress.ip_address(a)): v for a, v in serving.items()}
    return _set_serving(_Api(kubeconfig, context), service, namespace, wanted.get)


def _set_serving(api, service, namespace, serving_of):
    """Re-apply the managed slices with serving_of(address) (None: unchanged) where it
    differs; nothing at all when no condition changes."""

    def attempt():
        existing = _list_slices(api, service, namespace, managed_only=True)
        if not existing:
            raise CommandExecutionError(
                f"Service {namespace}/{service} has no EndpointSlices managed by "
                f"{MANAGED_BY}; apply k8s.endpointslice_present first"
            )
        manifests, changed = [], False
        for current in existing:
            manifest = {
                k: copy.deepcopy(current[k])
                for k in ("apiVersion", "kind", "addressType", "ports")
                if k in current
            }
            manifest.setdefault("apiVersion", "discovery.k8s.io/v1")
            manifest.setdefault("kind", "EndpointSlice")
            metadata = current["metadata"]
            manifest["metadata"] = {
                "name": metadata["name"],
                "namespace": metadata["namespace"],
                "labels": {SERVICE_NAME_LABEL: service, MANAGED_BY_LABEL: MANAGED_BY},
            }
            if metadata.get("ownerReferences"):
                manifest["metadata"]["ownerReferences"] = copy.deepcopy(
                    metadata["ownerReferences"])
            manifest["endpoints"] = copy.deepcopy(current.get("endpoints") or [])
            for endpoint in manifest["endpoints"]:
                found = endpoint.get("conditions") or {}
                serving = next((serving_of(a) for a in endpoint.get("addresses", [])
                                if serving_of(a) is not None), None)
                if serving is None:
                    continue
                new = conditions(serving, found.get("terminating"))
                if {c: found.get(c) for c in CONDITIONS} != new:
                    changed = True
                endpoint["conditions"] = new
            manifests.append(manifest)
        if not changed:
            return {}
        return _sync_slices(api, manifests, existing, False, False)["changes"]

    return _retrying(f"the EndpointSlices of Service {namespace}/{service}", attempt)


READINESS_DEFAULTS = {"enabled": False, "deadline": 30, "require_tunnel": True, "gateways": {}}
HEARTBEAT_MINE = "vpn_gateway_heartbeat"


def sync_readiness(kubeconfig=None, context=None):
    """
    Set each gateway's endpoint serving (and ready) from its heartbeat, seen from here.

    For the minion that writes the EndpointSlices (``vpn_gateway:kubernetes:minion``),
    run by its schedule every few seconds. Reads every gateway's latest beat
    (``vpn_heartbeat.beat``, sent to the master's mine by each gateway's schedule)
    for ``vpn_gateway:kubernetes:readiness:gateways`` ({minion: address}). A gateway
    whose beat has not changed for ``readiness:deadline`` seconds (host down, minion
    down, network cut), or whose tunnel is not carried (``require_tunnel``), is not
    serving; ready = serving and not terminating. Writes only what changes.

    CLI Example:

    .. code-block:: bash

        salt-call k8s.sync_readiness
    """
    settings = __salt__["config.get"]("vpn_gateway:kubernetes", {}) or {}
    readiness = dict(READINESS_DEFAULTS, **(settings.get("readiness") or {}))
    if not readiness["enabled"]:
        return {"enabled": False, "comment": "vpn_gateway:kubernetes:readiness:enabled is false"}
    gateways = {str(m): str(ipaddress.ip_address(a))
                for m, a in (readiness.get("gateways") or {}).items()}
    service = settings.get("service") or {}
    if not gateways or not service.get("name") or not service.get("namespace"):
        raise SaltInvocationError(
            "vpn_gateway:kubernetes:readiness needs gateways ({minion: address}) and "
            "vpn_gateway:kubernetes:service:name and :namespace")
    beats = __salt__["mine.get"](sorted(gateways), HEARTBEAT_MINE, tgt_type="list") or {}
    if __opts__.get("id") in gateways:  # its own health now, not its last beat in the mine
        beats[__opts__["id"]] = __salt__["vpn_heartbeat.beat"]()
    path = os.path.join(
        __salt__["config.get"]("vpn_gateway:monitoring:state_dir", "/var/lib/vpn-gateway")
        or "/var/lib/vpn-gateway", "readiness.json")
    try:
        with salt.utils.files.fopen(path) as handle:
            memory = json.load(handle)
    except (OSError, ValueError):
        memory = {}
    memory, serving, report = readiness_decision(
        gateways, beats, memory, time.time(), float(readiness["deadline"]),
        bool(readiness["require_tunnel"]))
    os.makedirs(os.path.dirname(path), exist_ok=True)

    def save():
        with salt.utils.atomicfile.atomic_open(path, "w") as handle:
            json.dump(memory, handle)

    save()  # the beats seen count even if the write below fails
    changes = _set_serving(_Api(kubeconfig, context), service["name"], service["namespace"],
                           serving.get)
    for minion, address in gateways.items():
        if serving.get(address) is not None:
            memory[minion]["written"] = serving[address]
    save()
    if changes:
        log.warning("k8s: readiness from heartbeats changed: %s",
                    {m: r["serving"] for m, r in report.items()})
    return {"enabled": True, "gateways": report, "changes": changes}
