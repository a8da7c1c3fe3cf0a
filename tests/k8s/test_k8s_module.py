"""The k8s execution module through Salt's loader in this process (conftest's
salt_loader: salt-call --local's config, no process per call), against the API of
conftest. One test also runs salt-call itself: what its command line prints."""

import json
import socket
import traceback

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

pytestmark = pytest.mark.unit

PORTS = [{"name": "postgres", "port": 5432, "target_port": 6432}]
MANAGED = "kubernetes.io/service-name=pg,endpointslice.kubernetes.io/managed-by=vpn-gateway.salt"


def slices(cluster, namespace, selector=MANAGED):
    answer = cluster.discovery.list_namespaced_endpoint_slice(
        namespace, label_selector=selector, _preload_content=False
    )
    return {s["metadata"]["name"]: s for s in json.loads(answer.data)["items"]}


def read_service(cluster, namespace, name="pg"):
    answer = cluster.core.read_namespaced_service(name, namespace, _preload_content=False)
    return json.loads(answer.data)


def addresses(count):
    return [f"198.18.{4 + i // 250}.{1 + i % 250}" for i in range(count)]


def failure(salt_loader, *args, **kwargs):
    """Salt's error message of a failing call (what salt-call printed before it exited 1)."""
    with pytest.raises((CommandExecutionError, SaltInvocationError)) as caught:
        salt_loader(*args, **kwargs)
    return str(caught.value)


def process_failure(salt_call, *args, **kwargs):
    """What a failing salt-call printed (its JSON output), without its command line."""
    with pytest.raises(AssertionError) as caught:  # tests/conftest.py's SaltCallError
        salt_call(*args, **kwargs)
    return str(caught.value).split("\n", 1)[1]


def create_service(cluster, namespace, **spec):
    """The Service made directly (for tests that are not about k8s.apply_service)."""
    ports = [{"name": "postgres", "port": 5432, "targetPort": 6432}]
    cluster.core.create_namespaced_service(
        namespace, {"metadata": {"name": "pg"}, "spec": {"ports": ports, **spec}}
    )


def test_dry_run_predicts_then_apply_writes_and_a_second_apply_is_a_noop(
    salt_loader, cluster, namespace
):
    conn = cluster.conn
    plan = salt_loader("k8s.apply_service", "pg", namespace, ports=PORTS, dry_run=True, **conn)
    assert plan["changes"][f"Service {namespace}/pg"]["old"] is None
    assert salt_loader("k8s.get_service", "pg", namespace, **conn) is None  # nothing written

    done = salt_loader("k8s.apply_service", "pg", namespace, ports=PORTS, **conn)
    assert done["changes"] == plan["changes"]
    service = read_service(cluster, namespace)
    assert "selector" not in service["spec"]
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("postgres", 5432, 6432)
    ]
    assert salt_loader("k8s.apply_service", "pg", namespace, ports=PORTS, **conn)["changes"] == {}
    again = salt_loader("k8s.get_service", "pg", namespace, **conn)  # as the server has it
    assert again == read_service(cluster, namespace)
    assert again["metadata"]["resourceVersion"] == service["metadata"]["resourceVersion"]
    assert [
        e["manager"] for e in again["metadata"]["managedFields"] if e["operation"] == "Apply"
    ] == ["vpn-gateway"]

    plan = salt_loader(
        "k8s.apply_endpointslices", "pg", namespace, ["198.18.2.11"], dry_run=True, **conn
    )
    assert list(plan["changes"]) == [f"EndpointSlice {namespace}/pg-ipv4-0"]
    assert slices(cluster, namespace) == {}
    done = salt_loader("k8s.apply_endpointslices", "pg", namespace, ["198.18.2.11"], **conn)
    assert done["changes"] == plan["changes"]
    [live] = slices(cluster, namespace).values()
    assert live["addressType"] == "IPv4"
    assert live["endpoints"][0]["addresses"] == ["198.18.2.11"]
    assert live["endpoints"][0]["conditions"]["ready"] is True
    assert live["ports"] == [{"name": "postgres", "port": 6432, "protocol": "TCP"}]
    assert live["metadata"]["labels"] == {
        "kubernetes.io/service-name": "pg",
        "endpointslice.kubernetes.io/managed-by": "vpn-gateway.salt",
    }
    assert (
        salt_loader("k8s.apply_endpointslices", "pg", namespace, ["198.18.2.11"], **conn)["changes"]
        == {}
    )
    [same] = slices(cluster, namespace).values()
    assert same["metadata"]["resourceVersion"] == live["metadata"]["resourceVersion"]


def test_dual_stack_and_more_than_1000_endpoints_then_shrink(salt_loader, cluster, namespace):
    conn = cluster.conn
    create_service(cluster, namespace)
    many = addresses(2100) + ["2001:db8::11"]
    salt_loader("k8s.apply_endpointslices", "pg", namespace, many, **conn)
    live = slices(cluster, namespace)
    assert {n: (s["addressType"], len(s["endpoints"])) for n, s in live.items()} == {
        "pg-ipv4-0": ("IPv4", 1000),
        "pg-ipv4-1": ("IPv4", 1000),
        "pg-ipv4-2": ("IPv4", 100),
        "pg-ipv6-0": ("IPv6", 1),
    }
    listed = sorted(a for s in live.values() for e in s["endpoints"] for a in e["addresses"])
    assert listed == sorted(many)

    listing = salt_loader("k8s.list_endpointslices", "pg", namespace, summary=True, **conn)
    assert sorted(listing) == sorted(live)

    shrink = salt_loader("k8s.apply_endpointslices", "pg", namespace, ["198.18.2.11"], **conn)
    gone = {f"EndpointSlice {namespace}/{n}" for n in ("pg-ipv4-1", "pg-ipv4-2", "pg-ipv6-0")}
    assert gone <= set(shrink["changes"])
    assert all(shrink["changes"][g]["new"] is None for g in gone)
    assert list(slices(cluster, namespace)) == ["pg-ipv4-0"]


def test_ready_is_driven_by_set_endpoints_ready_and_kept_by_later_applies(
    salt_loader, cluster, namespace
):
    conn = cluster.conn
    create_service(cluster, namespace)
    salt_loader("k8s.apply_endpointslices", "pg", namespace, ["198.18.2.11", "198.18.2.12"], **conn)
    changed = salt_loader(
        "k8s.set_endpoints_ready", "pg", namespace, False, addresses=["198.18.2.12"], **conn
    )
    [change] = changed.values()
    assert change == {"endpoints": {"198.18.2.12": {"ready": {"old": True, "new": False},
                                                    "serving": {"old": True, "new": False}}}}
    [live] = slices(cluster, namespace).values()
    assert [e["conditions"]["ready"] for e in live["endpoints"]] == [True, False]
    # A later apply of the same endpoints (ready unset) keeps what the monitoring set.
    assert (
        salt_loader(
            "k8s.apply_endpointslices", "pg", namespace, ["198.18.2.11", "198.18.2.12"], **conn
        )["changes"]
        == {}
    )
    [same] = slices(cluster, namespace).values()
    assert same["metadata"]["resourceVersion"] == live["metadata"]["resourceVersion"]
    salt_loader("k8s.set_endpoints_ready", "pg", namespace, True, **conn)
    [live] = slices(cluster, namespace).values()
    assert [e["conditions"]["ready"] for e in live["endpoints"]] == [True, True]


@pytest.mark.parametrize("address", ["127.0.0.1", "fe80::7"])  # all kinds: test_k8s_helpers
def test_special_addresses_are_refused_before_any_request(salt_loader, cluster, namespace, address):
    before = len(cluster.fake.requests) if cluster.fake else None
    message = failure(
        salt_loader,
        "k8s.apply_endpointslices",
        "pg",
        namespace,
        ["198.18.2.11", address],
        **cluster.conn,
    )
    assert "vpn_gateway:kubernetes:gateway_addresses" in message and address in message
    if cluster.fake:
        assert len(cluster.fake.requests) == before
    assert slices(cluster, namespace, "kubernetes.io/service-name=pg") == {}


def test_a_service_with_a_selector_is_refused(salt_loader, cluster, namespace):
    create_service(cluster, namespace, selector={"app": "pg"})
    for function, args in (
        ("k8s.apply_endpointslices", [["198.18.2.11"]]),
        ("k8s.apply_service", []),
    ):
        kwargs = {"ports": PORTS} if function == "k8s.apply_service" else {}
        message = failure(salt_loader, function, "pg", namespace, *args, **kwargs, **cluster.conn)
        assert "has a selector" in message
    assert slices(cluster, namespace, "kubernetes.io/service-name=pg") == {}


def test_slices_need_the_service_and_its_port_names(salt_loader, cluster, namespace):
    conn = cluster.conn
    message = failure(
        salt_loader, "k8s.apply_endpointslices", "pg", namespace, ["198.18.2.11"], **conn
    )
    assert f"Service {namespace}/pg does not exist" in message
    salt_loader("k8s.apply_service", "pg", namespace, ports=PORTS, **conn)
    message = failure(
        salt_loader,
        "k8s.apply_endpointslices",
        "pg",
        namespace,
        ["198.18.2.11"],
        ports=[{"name": "pgbouncer", "port": 6432}],
        **conn,
    )
    assert "differ from the Service's" in message


def test_field_manager_conflicts_are_explained_and_force_takes_over(
    salt_loader, cluster, namespace
):
    conn = cluster.conn
    salt_loader("k8s.apply_service", "pg", namespace, ports=PORTS, **conn)
    other = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "pg", "namespace": namespace},
        "spec": {"ports": [{"name": "postgres", "port": 5432, "targetPort": 7000}]},
    }
    cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=someone-else",
        "-f",
        "-",
        input=json.dumps(other),
    )
    changed = [{"name": "postgres", "port": 5432, "target_port": 6433}]
    message = failure(salt_loader, "k8s.apply_service", "pg", namespace, ports=changed, **conn)
    assert "field manager conflict (409)" in message and "someone-else" in message
    assert "force_conflicts" in message
    done = salt_loader("k8s.apply_service", "pg", namespace, ports=changed, force=True, **conn)
    assert done["object"]["ports"]["postgres"]["targetPort"] == 6433


@pytest.mark.parametrize("labels, named", [
    ({"team": "not a label value!"}, "value 'not a label value!'"),
    ({"bad key!": "x"}, "label key 'bad key!'"),
    ({"Example.com/x": "y"}, "label key 'Example.com/x'"),
    ({"a/b/c": "y"}, "label key 'a/b/c'"),
])
def test_labels_the_server_would_refuse_are_refused_before_any_request(
    salt_loader, cluster, namespace, labels, named
):
    requests = len(cluster.fake.requests) if cluster.fake else None
    message = failure(salt_loader, "k8s.apply_service", "pg", namespace, ports=PORTS,
                      labels=labels, **cluster.conn)
    assert "vpn_gateway:kubernetes:service" in message and named in message, message
    if cluster.fake:
        assert len(cluster.fake.requests) == requests  # test=True tells the truth, offline


def test_missing_namespace_is_named(salt_loader, cluster):
    message = failure(
        salt_loader, "k8s.apply_service", "pg", "vgw-test-nowhere", ports=PORTS, **cluster.conn
    )
    assert "namespace vgw-test-nowhere does not exist" in message
    assert "vpn_gateway:kubernetes:service:namespace" in message


def test_bad_credentials_are_401_and_the_token_is_not_shown(
    salt_call, salt_loader, cluster, namespace
):
    """In this process: not in the error nor in any exception chained to it (a
    traceback in the minion's log). Through salt-call, a process, kept: what its
    command line prints on this failure (error path, outputter), and its exit code."""
    token = "secret-token-that-must-not-leak"
    kubeconfig = cluster.with_token(token)
    with pytest.raises(CommandExecutionError) as caught:
        salt_loader("k8s.get_service", "pg", namespace, kubeconfig=kubeconfig)
    assert "401 Unauthorized" in str(caught.value)
    assert token not in "".join(traceback.format_exception(caught.value))
    message = process_failure(salt_call, "k8s.get_service", "pg", namespace,
                              kubeconfig=kubeconfig)
    assert "401 Unauthorized" in message and token not in message


def test_a_read_only_user_is_403_with_the_rbac_needed(salt_loader, cluster, namespace, readonly):
    message = failure(
        salt_loader, "k8s.apply_service", "pg", namespace, ports=PORTS, kubeconfig=readonly
    )
    assert "forbidden (403)" in message and "endpointslices.discovery.k8s.io" in message


def test_an_unreachable_api_is_named(salt_loader, tmp_path, cluster):
    with socket.socket() as sock:  # a port on 127.0.0.1 that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    message = failure(salt_loader, "k8s.get_service", "pg", "default", kubeconfig=str(kubeconfig))
    assert f"https://127.0.0.1:{port} is unreachable" in message


def test_a_missing_kubeconfig_is_named(salt_loader, tmp_path):
    message = failure(
        salt_loader, "k8s.get_service", "pg", "default", kubeconfig=str(tmp_path / "absent")
    )
    assert "cannot load kubeconfig" in message and "vpn_gateway:kubernetes:kubeconfig" in message
