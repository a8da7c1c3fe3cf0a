"""The k8s module's pure helpers: address checks, manifests, slicing, diffs."""

import pytest
from repo_modules import load

k8s = load("salt/_modules/k8s.py")

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("address,family", [("198.18.2.11", "IPv4"), ("2001:db8::11", "IPv6")])
def test_check_address_gives_the_family(address, family):
    assert k8s.check_address(address) == family


@pytest.mark.parametrize(
    "address,reason",
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.10.1", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.5", "multicast"),
        ("198.18.2.300", "not an IPv4 or IPv6"),
        ("198.18.2.0/24", "not an IPv4 or IPv6"),
        ("gw.example", "not an IPv4 or IPv6"),
    ],
)
def test_check_address_refuses_what_pods_cannot_use(address, reason):
    with pytest.raises(ValueError, match=reason):
        k8s.check_address(address)


def test_normalize_endpoints_accepts_strings_and_dicts_and_canonicalizes():
    entries = k8s.normalize_endpoints(
        ["198.18.2.11", {"address": "2001:DB8:0::11", "ready": False, "hostname": "gw1"}]
    )
    assert entries == [
        {"address": "198.18.2.11", "family": "IPv4", "hostname": None, "ready": None,
         "serving": None, "terminating": None},
        {"address": "2001:db8::11", "family": "IPv6", "hostname": "gw1", "ready": False,
         "serving": None, "terminating": None},
    ]


@pytest.mark.parametrize(
    "endpoints,message",
    [
        ([], "non-empty"),
        ("198.18.2.11", "non-empty list"),
        (["198.18.2.11", "198.18.2.11"], "twice"),
        (["2001:db8::1", "2001:DB8::1"], "twice"),
        ([{"address": "198.18.2.11", "ready": "yes"}], "ready"),
        ([{"address": "198.18.2.11", "hostname": "Bad_Name"}], "DNS label"),
    ],
)
def test_normalize_endpoints_refuses_bad_input(endpoints, message):
    with pytest.raises(ValueError, match=message):
        k8s.normalize_endpoints(endpoints)


def test_service_manifest_has_no_selector_and_explicit_ports():
    manifest = k8s.service_manifest(
        "postgres", "databases", [{"name": "postgres", "port": 5432, "target_port": 6432}]
    )
    assert manifest == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "postgres", "namespace": "databases"},
        "spec": {
            "ports": [{"name": "postgres", "port": 5432, "targetPort": 6432, "protocol": "TCP"}]
        },
    }


@pytest.mark.parametrize(
    "name,ports,message",
    [
        ("Postgres", [{"port": 5432}], "DNS-1035"),
        ("9db", [{"port": 5432}], "DNS-1035"),
        ("postgres", [], "non-empty"),
        ("postgres", [{"port": 5432}, {"name": "b", "port": 5433}], "needs a name"),
        ("postgres", [{"name": "a", "port": 5432}, {"name": "a", "port": 5433}], "twice"),
        ("postgres", [{"name": "a", "port": 70000}], "1-65535"),
        ("postgres", [{"name": "a", "port": 5432, "target_port": "pgbouncer"}], "1-65535"),
        ("postgres", [{"name": "a", "port": 5432, "protocol": "tcp"}], "protocol"),
        ("postgres", [{"name": "Pg", "port": 5432}], "DNS label"),
    ],
)
def test_service_manifest_refuses_bad_input(name, ports, message):
    with pytest.raises(ValueError, match=message):
        k8s.service_manifest(name, "databases", ports)


def test_slice_ports_take_the_service_port_names_and_target_ports():
    ports = [
        {"name": "postgres", "port": 5432, "targetPort": 6432, "protocol": "TCP"},
        {"name": "metrics", "port": 9100, "protocol": "TCP"},
    ]
    assert k8s.slice_ports(ports) == [
        {"name": "postgres", "port": 6432, "protocol": "TCP"},
        {"name": "metrics", "port": 9100, "protocol": "TCP"},
    ]
    with pytest.raises(ValueError, match="named targetPort"):
        k8s.slice_ports([{"name": "postgres", "port": 5432, "targetPort": "pgbouncer"}])


def addresses(count, template="198.18.{}.{}"):
    return [template.format(4 + i // 250, 1 + i % 250) for i in range(count)]


def test_endpointslices_split_per_family_and_per_thousand():
    ports = [{"name": "postgres", "port": 6432, "protocol": "TCP"}]
    entries = k8s.normalize_endpoints(addresses(2500) + ["2001:db8::1", "2001:db8::2"])
    manifests = k8s.endpointslice_manifests("postgres", "databases", entries, ports)
    shape = [(m["metadata"]["name"], m["addressType"], len(m["endpoints"])) for m in manifests]
    assert shape == [
        ("postgres-ipv4-0", "IPv4", 1000),
        ("postgres-ipv4-1", "IPv4", 1000),
        ("postgres-ipv4-2", "IPv4", 500),
        ("postgres-ipv6-0", "IPv6", 2),
    ]
    listed = [a for m in manifests for e in m["endpoints"] for a in e["addresses"]]
    assert listed == [e["address"] for e in entries]  # every address once, in order, one per entry
    for m in manifests:
        assert m["metadata"]["labels"] == {
            "kubernetes.io/service-name": "postgres",
            "endpointslice.kubernetes.io/managed-by": "vpn-gateway.salt",
        }
        assert m["ports"] == ports
        assert all(e["conditions"] == {"ready": True, "serving": True, "terminating": False}
                   for e in m["endpoints"])


def test_endpointslices_ready_default_and_per_endpoint_ready():
    entries = k8s.normalize_endpoints(["198.18.2.11", {"address": "198.18.2.12", "ready": True}])
    [manifest] = k8s.endpointslice_manifests("pg", "db", entries, [], ready_default=False)
    assert [e["conditions"]["ready"] for e in manifest["endpoints"]] == [False, True]


def test_view_and_diff_name_the_addresses_that_change():
    old = {
        "kind": "EndpointSlice",
        "metadata": {"labels": {"a": "b"}},
        "addressType": "IPv4",
        "ports": [{"name": "postgres", "port": 6432, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["198.18.2.11"], "conditions": {"ready": True}},
            {"addresses": ["198.18.2.12"], "conditions": {"ready": True}},
        ],
    }
    new = {
        **old,
        "endpoints": [
            {"addresses": ["198.18.2.11"], "conditions": {"ready": False}},
            {"addresses": ["198.18.2.13"], "conditions": {"ready": True}},
        ],
    }
    assert k8s.diff(k8s.view(old), k8s.view(new)) == {
        "endpoints": {
            "198.18.2.11": {"ready": {"old": True, "new": False}},
            "198.18.2.12": {"old": {"ready": True, "serving": None, "terminating": None,
                                    "hostname": None}, "new": None},
            "198.18.2.13": {"old": None, "new": {"ready": True, "serving": None,
                                                 "terminating": None, "hostname": None}},
        }
    }
    assert k8s.diff(k8s.view(old), k8s.view(old)) == {}
    assert k8s.diff(None, k8s.view(old)) == {"old": None, "new": k8s.view(old)}


def test_view_of_a_service_ignores_server_defaults():
    applied = k8s.service_manifest("pg", "db", [{"name": "postgres", "port": 5432}])
    served = {
        "kind": "Service",
        "metadata": {"name": "pg", "resourceVersion": "7", "uid": "u"},
        "spec": {
            "ports": [{"name": "postgres", "port": 5432, "targetPort": 5432, "protocol": "TCP"}],
            "clusterIP": "198.18.254.3",
            "type": "ClusterIP",
            "sessionAffinity": "None",
        },
        "status": {"loadBalancer": {}},
    }
    assert k8s.view(served) == k8s.view(applied)


def test_live_ready_reads_what_the_monitoring_set():
    slices = [
        {
            "endpoints": [
                {"addresses": ["198.18.2.11"], "conditions": {"ready": False}},
                {"addresses": ["198.18.2.12"], "conditions": {}},
            ]
        }
    ]
    assert k8s.live_ready(slices) == {"198.18.2.11": False, "198.18.2.12": None}
