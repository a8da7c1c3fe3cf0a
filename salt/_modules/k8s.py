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
import re

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
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
PROTOCOLS = ("TCP", "UDP", "SCTP")


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
    """Endpoints as a list of {"address", "family", "hostname", "ready"} dicts.

    Accepts addresses as strings or dicts with ``address`` and optional
    ``hostname`` and ``ready``. Raises ValueError for a bad or repeated address.
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
        ready = entry.get("ready")
        if ready is not None and not isinstance(ready, bool):
            raise ValueError(f"ready of {address} must be true or false")
        result.append({"address": address, "family": family, "hostname": hostname, "ready": ready})
    return result


def normalize_service_ports(ports):
    """Service ports as [{"name", "port", "targetPort", "protocol"}]; ValueError when wrong."""
    if not isinstance(ports, (list, tuple)) or not ports:
        raise ValueError("ports must be a non-empty list of {name, port, target_port, protocol}")
    result, names = [], set()
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
        metadata["labels"] = dict(labels)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {"ports": normalize_service_ports(ports)},
    }


def endpointslice_manifests(
    service, namespace, endpoints, ports, ready_default=True, max_per_slice=MAX_ENDPOINTS_PER_SLICE
):
    """The EndpointSlices for a Service: one list per family, max_per_slice endpoints each.

    ``endpoints`` come from normalize_endpoints; an endpoint whose ``ready`` is
    None gets ready_default. Slice names are stable (``SERVICE-ipv4-0``) so a
    re-apply updates the same objects.
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
                    },
                    "addressType": family,
                    "endpoints": [_endpoint(e, ready_default) for e in chunk],
                    "ports": copy.deepcopy(ports),
                }
            )
    return manifests


def _endpoint(entry, ready_default):
    ready = ready_default if entry["ready"] is None else entry["ready"]
    endpoint = {"addresses": [entry["address"]], "conditions": {"ready": ready}}
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
    return {
        "labels": labels,
        "addressType": obj.get("addressType"),
        "ports": {
            p.get("name") or "": {"port": p.get("port"), "protocol": p.get("protocol", "TCP")}
            for p in obj.get("ports") or []
        },
        "endpoints": {
            a: {"ready": (e.get("conditions") or {}).get("ready"), "hostname": e.get("hostname")}
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
    return {
        a: (e.get("conditions") or {}).get("ready")
        for s in slices
        for e in s.get("endpoints") or []
        for a in e.get("addresses", [])
    }


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
        configuration.retries = 1
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
        except ValueError:  # not the API server (a proxy's error page?)
            answer = {"message": data[:200].decode(errors="replace")}
        if response.status < 400:
            return answer
        if response.status == 404 and missing_ok and not _namespace_missing(answer):
            return None
        if _stale(response.status, answer):
            raise _StaleWrite(self.explain(response.status, answer, what or path, namespace))
        raise CommandExecutionError(self.explain(response.status, answer, what or path, namespace))

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
        return f"{what}: {status} {answer.get('reason') or ''}: {message}"


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
        conditions.ready for every endpoint; None keeps each live value
        (new endpoints start ready).

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
    api = _Api(kubeconfig, context)
    what = f"Service {namespace}/{service}"
    svc = api.request(
        "GET", _service_path(namespace, service), missing_ok=True, what=what, namespace=namespace
    )
    _refuse_selector(svc, what)
    ports = _slice_ports_for(svc, ports, what, dry_run)

    def attempt():
        existing = _list_slices(api, service, namespace, managed_only=True)
        wanted = entries
        if ready is None:
            known = live_ready(existing)
            wanted = [
                dict(e, ready=known.get(e["address"])) if e["ready"] is None else e
                for e in entries
            ]
        manifests = endpointslice_manifests(
            service, namespace, wanted, ports, ready_default=True if ready is None else ready
        )
        return _sync_slices(api, manifests, existing, force, dry_run)

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
    Set conditions.ready on the endpoints of a Service's slices (for the tunnel's health).

    Re-applies this module's slices as they are with ready changed, for all
    endpoints or only for ``addresses``. Pods stop getting a not-ready
    endpoint from kube-proxy without the slice going away. Returns the changes
    (empty when nothing changed: no new resourceVersion).

    CLI Example:

    .. code-block:: bash

        salt-call k8s.set_endpoints_ready postgres databases False
    """
    if not isinstance(ready, bool):
        raise SaltInvocationError(f"ready must be true or false, not {ready!r}")
    api = _Api(kubeconfig, context)
    only = None if addresses is None else {str(ipaddress.ip_address(a)) for a in addresses}

    def attempt():
        existing = _list_slices(api, service, namespace, managed_only=True)
        if not existing:
            raise CommandExecutionError(
                f"Service {namespace}/{service} has no EndpointSlices managed by "
                f"{MANAGED_BY}; apply k8s.endpointslice_present first"
            )
        manifests = []
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
            manifest["endpoints"] = copy.deepcopy(current.get("endpoints") or [])
            for endpoint in manifest["endpoints"]:
                if only is None or set(endpoint.get("addresses", [])) & only:
                    endpoint.setdefault("conditions", {})["ready"] = ready
            manifests.append(manifest)
        return _sync_slices(api, manifests, existing, False, False)

    return _retrying(f"the EndpointSlices of Service {namespace}/{service}", attempt)
