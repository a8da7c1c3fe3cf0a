"""States for the gateway's Kubernetes objects: the selector-less Service and its EndpointSlices.

Each state asks the API server for a dry run of its server-side apply first:
no difference means no write (so no new resourceVersion); ``test=True``
reports that difference and stops. After a real apply the state reads the
objects back and fails when they differ from what the dry run predicted.

``dry_run: test_only`` (pillar ``vpn_gateway:kubernetes:dry_run``) is for
clusters whose admission webhooks refuse dry runs (400 "does not support dry
run"): real runs apply directly (an apply that changes nothing writes nothing
either, so the changes are still exact); only ``test=True`` asks for a dry run.

.. code-block:: yaml

    postgres-service:
      k8s.service_present:
        - name: postgres
        - namespace: databases
        - ports: [{name: postgres, port: 5432, target_port: 6432}]

    postgres-endpoints:
      k8s.endpointslice_present:
        - name: postgres
        - namespace: databases
        - endpoints: [198.18.2.11]
        - require: [k8s: postgres-service]
"""

from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = "k8s"


def __virtual__():
    if "k8s.apply_endpointslices" in __salt__:
        return __virtualname__
    return (
        False,
        "the k8s execution module is not loaded: sync salt/_modules "
        "(saltutil.sync_modules) and install the kubernetes Python client",
    )


DRY_RUN_MODES = ("always", "test_only")


def _run(name, apply, read_back, predicted_key, dry_run="always", owned=lambda view: view):
    """Dry run, then (unless test) apply and compare the read-back with the prediction,
    both seen through ``owned`` (what this state sets; another writer may own the rest).

    dry_run=test_only: no dry run before a real apply (for clusters whose admission
    webhooks refuse dry runs)."""
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    if dry_run not in DRY_RUN_MODES:
        ret["comment"] = (f"dry_run must be one of {', '.join(DRY_RUN_MODES)}, not {dry_run!r} "
                          "(vpn_gateway:kubernetes:dry_run)")
        return ret
    try:
        if dry_run == "test_only" and not __opts__["test"]:
            done = apply(dry_run=False)
            if not done["changes"]:
                ret.update(result=True, comment="in sync with the API server (applied without "
                                                "a dry run: dry_run is test_only)")
                return ret
            plan = done
        else:
            plan = apply(dry_run=True)
        if not plan["changes"]:
            ret.update(result=True, comment="in sync with the API server")
            return ret
        if __opts__["test"]:
            ret.update(
                result=None,
                changes=plan["changes"],
                comment="would apply (the API server's dry run)",
            )
            return ret
        done = plan if dry_run == "test_only" else apply(dry_run=False)
        actual = read_back()
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret["comment"] = str(exc)
        return ret
    ret["changes"] = done["changes"]
    if owned(actual) != owned(done[predicted_key]):
        ret["comment"] = (
            "applied, but the API server now holds something else (another writer?): "
            f"expected {done[predicted_key]}, read back {actual}"
        )
        return ret
    ret.update(result=True, comment="applied")
    return ret


def service_present(
    name, namespace, ports, labels=None, force=False, kubeconfig=None, context=None,
    dry_run="always",
):
    """
    Ensure the selector-less Service NAMESPACE/NAME exists with these ports.

    name
        Service name (pods use ``NAME.NAMESPACE.svc.cluster.local``).
    namespace
        Its namespace; it must exist.
    ports
        ``[{name, port, target_port, protocol}]``; target_port is where the
        gateway listens (default: port), protocol defaults to TCP.
    labels
        Extra labels on the Service.
    force
        Take over fields another field manager owns (409 conflicts).
    kubeconfig, context
        Default: vpn_gateway:kubernetes:kubeconfig / :context (config.get).
    dry_run
        ``always`` (default): a server dry run before every apply; ``test_only``:
        only for test=True (clusters whose admission webhooks refuse dry runs).
    """
    conn = {"kubeconfig": kubeconfig, "context": context}

    def apply(dry_run):
        return __salt__["k8s.apply_service"](
            name, namespace, ports, labels=labels, force=force, dry_run=dry_run, **conn
        )

    def read_back():
        return __salt__["k8s.get_service"](name, namespace, summary=True, **conn)

    return _run(name, apply, read_back, "object", dry_run)


def endpointslice_present(
    name, namespace, endpoints, ports=None, ready=None, force=False, kubeconfig=None, context=None,
    terminating=None, dry_run="always",
):
    """
    Ensure the EndpointSlices of Service NAMESPACE/NAME point at endpoints.

    name
        The Service's name (label kubernetes.io/service-name).
    endpoints
        Addresses (IPv4 and/or IPv6; one slice per family and per 1000
        endpoints), as strings or ``{address, hostname, ready}``.
    ports
        ``[{name, port, protocol}]``; default: the Service's port names with
        their target ports. Needed with test=True before the Service exists.
    ready
        conditions.serving (and so ready) of every endpoint; None (default)
        keeps the live value, which the readiness check sets
        (k8s.sync_readiness, k8s.set_endpoints_ready).
    terminating
        Addresses drained for maintenance (vpn_gateway:kubernetes:draining):
        terminating true, ready false; serving still follows health.
    force
        Take over fields another field manager owns.
    dry_run
        ``always`` or ``test_only`` (see service_present).
    """
    conn = {"kubeconfig": kubeconfig, "context": context}

    def apply(dry_run):
        return __salt__["k8s.apply_endpointslices"](
            name,
            namespace,
            endpoints,
            ports=ports,
            ready=ready,
            force=force,
            dry_run=dry_run,
            terminating=terminating,
            **conn,
        )

    def read_back():
        return __salt__["k8s.list_endpointslices"](
            name, namespace, managed_only=True, summary=True, **conn
        )

    # ready=None leaves serving/ready to the readiness check, which may change them
    # between the apply and the read-back (k8s.sync_readiness runs on a schedule).
    owned = _without_health if ready is None else (lambda view: view)
    return _run(name, apply, read_back, "slices", dry_run, owned)


def _without_health(slices):
    """EndpointSlice views without the conditions the readiness check owns."""
    return {
        name: dict(view, endpoints={
            address: {k: v for k, v in endpoint.items() if k not in ("ready", "serving")}
            for address, endpoint in (view.get("endpoints") or {}).items()})
        for name, view in (slices or {}).items()
    }


def endpointslice_absent(name, namespace, kubeconfig=None, context=None, dry_run="always"):
    """
    Ensure Service NAMESPACE/NAME has no EndpointSlices managed by this module.

    Slices of other managers are left alone.
    """
    conn = {"kubeconfig": kubeconfig, "context": context}

    def apply(dry_run):
        return __salt__["k8s.delete_endpointslices"](name, namespace, dry_run=dry_run, **conn)

    def read_back():
        return __salt__["k8s.list_endpointslices"](
            name, namespace, managed_only=True, summary=True, **conn
        )

    return _run(name, apply, read_back, "slices", dry_run)
