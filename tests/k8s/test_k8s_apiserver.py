"""The API semantics the k8s module relies on, driven by the real client and kubectl.

Against the loopback fake these pin down that it behaves like kube-apiserver;
with VPN_GATEWAY_TEST_KUBECONFIG they run unchanged against a real cluster.
"""

import json

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

pytestmark = pytest.mark.unit

APPLY = "application/apply-patch+yaml"


def service(name, namespace, target_port=6432, **spec):
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": [{"name": "postgres", "port": 5432, "targetPort": target_port}], **spec},
    }


def endpointslice(name, namespace, addresses=("198.18.2.11",), family="IPv4", labels=None):
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels or {"kubernetes.io/service-name": "postgres"},
        },
        "addressType": family,
        "endpoints": [{"addresses": [a]} for a in addresses],
        "ports": [{"name": "postgres", "port": 6432, "protocol": "TCP"}],
    }


def raw(call, *args, **kwargs):
    """Call a typed client method and return the server's JSON as it is."""
    return json.loads(call(*args, _preload_content=False, **kwargs).data)


def api_error(call, *args, **kwargs):
    with pytest.raises(ApiException) as caught:
        call(*args, **kwargs)
    return caught.value.status, json.loads(caught.value.body)


def test_kubectl_applies_and_lists_services_and_slices(cluster, namespace):
    documents = yaml.safe_dump_all(
        [service("postgres", namespace), endpointslice("postgres-1", namespace)]
    )
    applied = cluster.kubectl("apply", "--server-side", "-f", "-", input=documents)
    assert "service/postgres serverside-applied" in applied.stdout
    assert "endpointslice.discovery.k8s.io/postgres-1 serverside-applied" in applied.stdout
    listed = cluster.kubectl("get", "services,endpointslices", "-n", namespace, "-o", "name").stdout
    assert listed.split() == ["service/postgres", "endpointslice.discovery.k8s.io/postgres-1"]
    table = cluster.kubectl(
        "get", "endpointslices", "-n", namespace, "-l", "kubernetes.io/service-name=postgres"
    ).stdout
    assert "postgres-1" in table and "198.18.2.11" in table and "IPv4" in table
    resources = cluster.kubectl(
        "api-resources", "--api-group=discovery.k8s.io", "-o", "name"
    ).stdout
    assert "endpointslices.discovery.k8s.io" in resources.split()


def test_label_selectors_filter_lists(cluster, namespace):
    for name, labels in (
        ("a", {"kubernetes.io/service-name": "pg", "tier": "db"}),
        ("b", {"kubernetes.io/service-name": "pg"}),
        ("c", {"kubernetes.io/service-name": "other", "tier": "cache"}),
    ):
        cluster.discovery.create_namespaced_endpoint_slice(
            namespace, endpointslice(name, namespace, labels=labels)
        )

    def names(selector):
        answer = raw(
            cluster.discovery.list_namespaced_endpoint_slice, namespace, label_selector=selector
        )
        return sorted(item["metadata"]["name"] for item in answer["items"])

    assert names("kubernetes.io/service-name=pg") == ["a", "b"]
    assert names("kubernetes.io/service-name!=pg") == ["c"]
    assert names("tier") == ["a", "c"]
    assert names("!tier") == ["b"]
    assert names("tier in (db,cache),kubernetes.io/service-name=pg") == ["a"]
    assert names("tier notin (db)") == ["b", "c"]


def test_a_write_with_a_stale_resource_version_is_409(cluster, namespace):
    created = raw(cluster.core.create_namespaced_service, namespace, service("pg", namespace))
    cluster.core.patch_namespaced_service(
        "pg",
        namespace,
        {"metadata": {"labels": {"x": "1"}}},
        _content_type="application/merge-patch+json",
    )
    stale = dict(created, metadata=dict(created["metadata"], labels={"x": "2"}))
    status, answer = api_error(cluster.core.replace_namespaced_service, "pg", namespace, stale)
    assert (status, answer["reason"]) == (409, "Conflict")
    assert "the object has been modified" in answer["message"]
    current = raw(cluster.core.read_namespaced_service, "pg", namespace)
    assert current["metadata"]["labels"] == {"x": "1"}
    current["metadata"]["labels"] = {"x": "3"}
    replaced = raw(cluster.core.replace_namespaced_service, "pg", namespace, current)
    assert int(replaced["metadata"]["resourceVersion"]) > int(
        current["metadata"]["resourceVersion"]
    )


def test_an_apply_with_a_stale_resource_version_is_409(cluster, namespace):
    """The storage checks a resourceVersion in any update of an existing object, apply
    patches included (API conventions, "Concurrency Control and Consistency"): the k8s
    module's read-compute-apply of EndpointSlices relies on it."""
    def apply(body):
        return raw(cluster.discovery.patch_namespaced_endpoint_slice, "s", namespace, body,
                   field_manager="me", _content_type=APPLY)

    first = apply(endpointslice("s", namespace))
    version = first["metadata"]["resourceVersion"]
    moved = apply(endpointslice("s", namespace, addresses=("198.18.2.12",)))
    stale = endpointslice("s", namespace, addresses=("198.18.2.13",))
    stale["metadata"]["resourceVersion"] = version
    status, answer = api_error(cluster.discovery.patch_namespaced_endpoint_slice, "s",
                               namespace, stale, field_manager="me", _content_type=APPLY)
    assert (status, answer["reason"]) == (409, "Conflict")
    assert "the object has been modified" in answer["message"]
    live = raw(cluster.discovery.read_namespaced_endpoint_slice, "s", namespace)
    assert live["endpoints"][0]["addresses"] == ["198.18.2.12"]
    stale["metadata"]["resourceVersion"] = moved["metadata"]["resourceVersion"]
    assert apply(stale)["endpoints"][0]["addresses"] == ["198.18.2.13"]


def managers(obj):
    return {e["manager"]: json.dumps(e["fieldsV1"]) for e in obj["metadata"]["managedFields"]}


def test_apply_tracks_owners_conflicts_and_force(cluster, namespace):
    manifest = json.dumps(service("pg", namespace))
    cluster.kubectl("apply", "--server-side", "--field-manager=alice", "-f", "-", input=manifest)
    cluster.kubectl("apply", "--server-side", "--field-manager=bob", "-f", "-", input=manifest)
    shared = managers(raw(cluster.core.read_namespaced_service, "pg", namespace))
    assert "f:targetPort" in shared["alice"] and "f:targetPort" in shared["bob"]

    changed = json.dumps(service("pg", namespace, target_port=6433))
    refused = cluster.kubectl(
        "apply", "--server-side", "--field-manager=bob", "-f", "-", input=changed, check=False
    )
    assert refused.returncode != 0
    assert 'conflict with "alice"' in refused.stderr and "targetPort" in refused.stderr
    live = raw(cluster.core.read_namespaced_service, "pg", namespace)
    assert live["spec"]["ports"][0]["targetPort"] == 6432

    cluster.kubectl(
        "apply",
        "--server-side",
        "--field-manager=bob",
        "--force-conflicts",
        "-f",
        "-",
        input=changed,
    )
    live = raw(cluster.core.read_namespaced_service, "pg", namespace)
    assert live["spec"]["ports"][0]["targetPort"] == 6433
    owners = managers(live)
    assert "f:targetPort" in owners["bob"] and "f:targetPort" not in owners["alice"]


def test_apply_removes_what_its_manager_no_longer_applies(cluster, namespace):
    labelled = endpointslice(
        "s", namespace, labels={"kubernetes.io/service-name": "pg", "extra": "x"}
    )
    plain = endpointslice("s", namespace, labels={"kubernetes.io/service-name": "pg"})
    for body in (labelled, plain):
        cluster.discovery.patch_namespaced_endpoint_slice(
            "s", namespace, body, field_manager="me", _content_type=APPLY
        )
    live = raw(cluster.discovery.read_namespaced_endpoint_slice, "s", namespace)
    assert live["metadata"]["labels"] == {"kubernetes.io/service-name": "pg"}


def test_noop_apply_and_dry_run_keep_the_resource_version(cluster, namespace):
    body = endpointslice("s", namespace)
    first = raw(
        cluster.discovery.patch_namespaced_endpoint_slice,
        "s",
        namespace,
        body,
        field_manager="me",
        _content_type=APPLY,
    )
    again = raw(
        cluster.discovery.patch_namespaced_endpoint_slice,
        "s",
        namespace,
        body,
        field_manager="me",
        _content_type=APPLY,
    )
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]

    moved = endpointslice("s", namespace, addresses=("198.18.2.12",))
    predicted = raw(
        cluster.discovery.patch_namespaced_endpoint_slice,
        "s",
        namespace,
        moved,
        field_manager="me",
        dry_run="All",
        _content_type=APPLY,
    )
    assert predicted["endpoints"][0]["addresses"] == ["198.18.2.12"]
    live = raw(cluster.discovery.read_namespaced_endpoint_slice, "s", namespace)
    assert live["endpoints"][0]["addresses"] == ["198.18.2.11"]
    assert live["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    status, _ = api_error(cluster.discovery.read_namespaced_endpoint_slice, "t", namespace)
    raw(
        cluster.discovery.create_namespaced_endpoint_slice,
        namespace,
        endpointslice("t", namespace),
        dry_run="All",
    )
    assert status == 404
    assert api_error(cluster.discovery.read_namespaced_endpoint_slice, "t", namespace)[0] == 404


def addresses(count):
    return [f"198.18.{4 + i // 250}.{1 + i % 250}" for i in range(count)]


@pytest.mark.parametrize(
    "body,field",
    [
        (dict(endpointslice("s", "NS"), addressType="IPv5"), "addressType"),
        (endpointslice("s", "NS", addresses=addresses(1001)), "endpoints"),
        (endpointslice("s", "NS", addresses=("2001:db8::1",)), "endpoints[0].addresses[0]"),
        (
            endpointslice("s", "NS", addresses=("198.18.2.11", "127.0.0.1")),
            "endpoints[1].addresses[0]",
        ),
        (endpointslice("s", "NS", addresses=("169.254.1.1",)), "endpoints[0].addresses[0]"),
        (endpointslice("Bad_Name", "NS"), "metadata.name"),
    ],
    ids=[
        "addressType-enum",
        "1001-endpoints",
        "wrong-family",
        "loopback",
        "link-local",
        "bad-name",
    ],
)
def test_endpointslice_validation_is_422(cluster, namespace, body, field):
    body["metadata"]["namespace"] = namespace
    status, answer = api_error(cluster.discovery.create_namespaced_endpoint_slice, namespace, body)
    assert (status, answer["reason"]) == (422, "Invalid")
    assert field in [cause["field"] for cause in answer["details"]["causes"]]
    assert answer["details"]["kind"] == "EndpointSlice"


def test_service_validation_is_422(cluster, namespace):
    status, answer = api_error(
        cluster.core.create_namespaced_service,
        namespace,
        service("9-starts-with-a-digit", namespace),
    )
    assert (status, answer["reason"]) == (422, "Invalid")
    assert [c["field"] for c in answer["details"]["causes"]] == ["metadata.name"]
    two_unnamed = service("pg", namespace)
    two_unnamed["spec"]["ports"] = [{"port": 5432}, {"port": 5433}]
    status, answer = api_error(cluster.core.create_namespaced_service, namespace, two_unnamed)
    assert status == 422 and "spec.ports[0].name" in [
        c["field"] for c in answer["details"]["causes"]
    ]


def test_missing_namespace_is_404_naming_the_namespace(cluster):
    status, answer = api_error(
        cluster.discovery.create_namespaced_endpoint_slice,
        "vgw-test-absent",
        endpointslice("s", "vgw-test-absent"),
    )
    assert status == 404
    assert (
        answer["details"]["kind"] == "namespaces" and answer["details"]["name"] == "vgw-test-absent"
    )


def test_delete_collection_by_label_and_delete_one(cluster, namespace):
    for name, service_name in (("a", "pg"), ("b", "pg"), ("c", "other")):
        labels = {"kubernetes.io/service-name": service_name}
        cluster.discovery.create_namespaced_endpoint_slice(
            namespace, endpointslice(name, namespace, labels=labels)
        )
    cluster.discovery.delete_collection_namespaced_endpoint_slice(
        namespace, label_selector="kubernetes.io/service-name=pg"
    )
    left = raw(cluster.discovery.list_namespaced_endpoint_slice, namespace)["items"]
    assert [s["metadata"]["name"] for s in left] == ["c"]
    cluster.discovery.delete_namespaced_endpoint_slice("c", namespace)
    assert api_error(cluster.discovery.delete_namespaced_endpoint_slice, "c", namespace)[0] == 404


def test_bad_credentials_are_401(cluster, tmp_path):
    from kubernetes import client, config

    api = config.new_client_from_config(
        cluster.with_token("not-a-valid-token"), persist_config=False
    )
    status, answer = api_error(client.CoreV1Api(api).list_namespaced_service, "default")
    assert (status, answer["reason"]) == (401, "Unauthorized")


def test_a_read_only_user_gets_403_on_writes(cluster, namespace, readonly):
    from kubernetes import client, config

    api = client.DiscoveryV1Api(config.new_client_from_config(readonly, persist_config=False))
    assert raw(api.list_namespaced_endpoint_slice, namespace)["items"] == []
    status, answer = api_error(
        api.create_namespaced_endpoint_slice, namespace, endpointslice("s", namespace)
    )
    assert (status, answer["reason"]) == (403, "Forbidden")
