"""The k8s states and the vpn_gateway.k8s formula through Salt's loader in this process
(conftest's salt_loader: state.apply and state.single as salt-call --local ran them, with
the same pillar override), with and without test=True."""

import json
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

PILLAR = Path(__file__).resolve().parents[2] / "pillar" / "vpn_gateway" / "kubernetes.sls"
MANAGED = "kubernetes.io/service-name={},endpointslice.kubernetes.io/managed-by=vpn-gateway.salt"


def pillar(cluster, namespace, **overrides):
    """The example pillar pointed at the test API server and namespace."""
    kubernetes = yaml.safe_load(PILLAR.read_text())["vpn_gateway"]["kubernetes"]
    kubernetes.update(minion="vpn-gw-local", kubeconfig=cluster.kubeconfig, context=cluster.context)
    kubernetes["service"]["namespace"] = namespace
    kubernetes.update(overrides)
    return {"vpn_gateway": {"kubernetes": kubernetes, "pooler": {"listen_port": 6543}}}


# Every sub-state holds the host's recovery lock (vpn_gateway.recovery_lock; its
# states change nothing and are tested in tests/monitoring).
LOCK_SLS = "vpn_gateway.recovery_lock"


def states(ret):
    """{state id: (result, changes, comment)} of a state.apply return, lock states left out."""
    return {v["__id__"]: (v["result"], v["changes"], v["comment"]) for v in ret.values()
            if v.get("__sls__") != LOCK_SLS}


def live(cluster, namespace, name="postgres"):
    service = cluster.core.read_namespaced_service(name, namespace, _preload_content=False)
    slices = cluster.discovery.list_namespaced_endpoint_slice(
        namespace, label_selector=MANAGED.format(name), _preload_content=False
    )
    return json.loads(service.data), json.loads(slices.data)["items"]


def test_formula_predicts_applies_and_then_has_nothing_to_do(salt_loader, cluster, namespace):
    data = pillar(cluster, namespace)
    predicted = states(salt_loader("state.apply", "vpn_gateway.k8s", test=True, pillar=data))
    service, slices = (
        predicted["vpn_gateway_k8s_service"],
        predicted["vpn_gateway_k8s_endpointslices"],
    )
    assert service[0] is None and slices[0] is None
    new_service = service[1][f"Service {namespace}/postgres"]["new"]
    assert new_service["ports"] == {
        "postgres": {"port": 5432, "targetPort": 6543, "protocol": "TCP"}
    }
    assert new_service["selector"] == {}
    new_slice = slices[1][f"EndpointSlice {namespace}/postgres-ipv4-0"]["new"]
    assert new_slice["endpoints"] == {
        a: {"ready": True, "serving": True, "terminating": False, "hostname": None}
        for a in ("198.18.2.11", "198.18.2.12")}
    assert new_slice["owner"] == "Service/postgres"  # the prediction names the owner-to-be
    assert new_slice["ports"] == {"postgres": {"port": 6543, "protocol": "TCP"}}
    assert cluster.core.list_namespaced_service(namespace).items == []  # test=True wrote nothing

    applied = states(salt_loader("state.apply", "vpn_gateway.k8s", pillar=data))
    assert {k: (v[0], v[1]) for k, v in applied.items()} == {
        "vpn_gateway_k8s_service": (True, service[1]),
        "vpn_gateway_k8s_endpointslices": (True, slices[1]),
    }
    svc, [endpointslice] = live(cluster, namespace)
    assert "selector" not in svc["spec"] and svc["spec"]["ports"][0]["targetPort"] == 6543
    assert endpointslice["addressType"] == "IPv4"
    assert [e["addresses"] for e in endpointslice["endpoints"]] == [["198.18.2.11"],
                                                                    ["198.18.2.12"]]
    versions = (svc["metadata"]["resourceVersion"], endpointslice["metadata"]["resourceVersion"])

    again = states(salt_loader("state.apply", "vpn_gateway.k8s", pillar=data))
    assert all(result is True and changes == {} for result, changes, _ in again.values())
    svc, [endpointslice] = live(cluster, namespace)
    assert (
        svc["metadata"]["resourceVersion"],
        endpointslice["metadata"]["resourceVersion"],
    ) == versions


def test_endpointslice_absent_removes_only_our_slices(salt_loader, cluster, namespace):
    cluster.core.create_namespaced_service(
        namespace, {"metadata": {"name": "pg"}, "spec": {"ports": [{"port": 5432}]}}
    )
    for name, manager in (("pg-ipv4-0", "vpn-gateway.salt"), ("pg-theirs", "someone-else")):
        cluster.discovery.create_namespaced_endpoint_slice(
            namespace,
            {
                "metadata": {
                    "name": name,
                    "labels": {
                        "kubernetes.io/service-name": "pg",
                        "endpointslice.kubernetes.io/managed-by": manager,
                    },
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["198.18.2.11"]}],
            },
        )
    args = ("state.single", "k8s.endpointslice_absent")
    kwargs = {"name": "pg", "namespace": namespace, **cluster.conn}

    def names():
        return sorted(
            s.metadata.name
            for s in cluster.discovery.list_namespaced_endpoint_slice(namespace).items
        )

    [(result, changes, _)] = states(salt_loader(*args, test=True, **kwargs)).values()
    assert result is None and list(changes) == [f"EndpointSlice {namespace}/pg-ipv4-0"]
    assert names() == ["pg-ipv4-0", "pg-theirs"]
    [(result, changes_done, _)] = states(salt_loader(*args, **kwargs)).values()
    assert result is True and changes_done == changes
    assert names() == ["pg-theirs"]
    [(result, changes, comment)] = states(salt_loader(*args, **kwargs)).values()
    assert result is True and changes == {} and "in sync" in comment


def test_bad_input_fails_the_state_before_anything_is_written(salt_loader, cluster, namespace):
    data = pillar(cluster, namespace, gateway_addresses=["198.18.2.11", "127.0.0.1"])
    ret = states(salt_loader("state.apply", "vpn_gateway.k8s", pillar=data, check=False))
    result, changes, comment = ret["vpn_gateway_k8s_endpointslices"]
    assert result is False and changes == {}
    assert "vpn_gateway:kubernetes:gateway_addresses" in comment and "127.0.0.1" in comment
    assert cluster.discovery.list_namespaced_endpoint_slice(namespace).items == []

    del data["vpn_gateway"]["kubernetes"]["service"]["namespace"]
    message = salt_loader("state.apply", "vpn_gateway.k8s", pillar=data, check=False)
    assert "vpn_gateway:kubernetes:service:namespace is missing" in json.dumps(message)


def test_rejected_credentials_fail_without_showing_the_token(salt_loader, cluster, namespace):
    token = "secret-token-that-must-not-leak"
    ret = salt_loader(
        "state.single",
        "k8s.service_present",
        name="pg",
        namespace=namespace,
        ports=[{"name": "postgres", "port": 5432}],
        test=True,
        kubeconfig=cluster.with_token(token),
        check=False,
    )
    [(result, _, comment)] = states(ret).values()
    assert result is False and "401 Unauthorized" in comment
    assert token not in json.dumps(ret)


def test_other_minions_render_a_noop(salt_loader, cluster, namespace):
    data = pillar(cluster, namespace, minion="k8s-admin")
    [(result, changes, comment)] = states(
        salt_loader("state.apply", "vpn_gateway.k8s", pillar=data)
    ).values()
    assert result is True and changes == {} and "k8s-admin" in comment
    assert cluster.core.list_namespaced_service(namespace).items == []


def test_formula_drains_through_pillar_on_a_cluster_that_refuses_dry_runs(
    salt_loader, cluster, namespace
):
    """vpn_gateway:kubernetes:draining marks an address terminating (never ready), and
    dry_run: test_only applies without the dry run such a cluster refuses."""
    if not cluster.fake:
        pytest.skip("needs the stand-in's refuse_dry_run")
    data = pillar(cluster, namespace, draining=["198.18.2.12"], dry_run="test_only")
    cluster.fake.refuse_dry_run("policy.example.com")
    try:
        applied = states(salt_loader("state.apply", "vpn_gateway.k8s", pillar=data))
    finally:
        cluster.fake.refuse_dry_run(None)
    assert all(result is True for result, _, _ in applied.values()), applied
    _, [endpointslice] = live(cluster, namespace)
    assert {e["addresses"][0]: e["conditions"] for e in endpointslice["endpoints"]} == {
        "198.18.2.11": {"ready": True, "serving": True, "terminating": False},
        "198.18.2.12": {"ready": False, "serving": True, "terminating": True},
    }
