"""The k8s formula through a real salt-master: the pillar picks the minion that applies it.

The fake API server runs inside the salt-master host (on its lab address
198.18.1.2, as a transient systemd unit); vpn-gw1 holds the kubeconfig and is
the pillar's vpn_gateway:kubernetes:minion, vpn-gw2 renders a no-op. Tests run
in file order and share one lab.
"""
import json

import pytest

from lab import kubeapi, saltstack
from lab.kubeapi import kubectl

pytestmark = pytest.mark.lab

HOSTS = ["salt-master", "vpn-gw1", "vpn-gw2"]
KUBECONFIG = "/etc/vpn-gateway/kubeconfig"  # as in pillar/vpn_gateway/kubernetes.sls


@pytest.fixture(scope="module")
def lab(lab_factory):
    lab = lab_factory(HOSTS)
    lab["vpn-gw1"].put(KUBECONFIG, kubeapi.start(lab), mode=0o600)
    saltstack.salt(lab, "vpn-gw*", "saltutil.sync_all")
    return lab


def apply(lab, test=False):
    """state.apply vpn_gateway.k8s on both gateways -> {minion: {state id: return}}."""
    returns = saltstack.salt(lab, "vpn-gw*", "state.apply", "vpn_gateway.k8s",
                             *(["test=True"] if test else []))
    assert set(returns) == {"vpn-gw1", "vpn-gw2"}, returns
    for minion, ret in returns.items():
        assert isinstance(ret, dict), (minion, ret)
    return {minion: {v["__id__"]: v for v in ret.values()} for minion, ret in returns.items()}


def objects(lab):
    if not kubeapi.KUBECTL.exists():
        pytest.skip(kubeapi.KUBECTL_MISSING)
    listed = kubectl(lab, "get", "services,endpointslices", "-n", "databases", "-o", "json")
    return json.loads(listed)["items"]


def test_test_mode_predicts_on_the_chosen_minion_only(lab):
    returns = apply(lab, test=True)
    gw1 = returns["vpn-gw1"]
    assert [gw1[s]["result"] for s in ("vpn_gateway_k8s_service",
                                       "vpn_gateway_k8s_endpointslices")] == [None, None]
    assert "Service databases/postgres" in gw1["vpn_gateway_k8s_service"]["changes"]
    [elsewhere] = returns["vpn-gw2"].values()
    assert elsewhere["result"] is True and "vpn-gw1" in elsewhere["comment"]
    assert objects(lab) == []


def test_apply_creates_the_service_and_slice_then_nothing_changes(lab):
    returns = apply(lab)
    assert all(r["result"] is True for r in returns["vpn-gw1"].values()), returns["vpn-gw1"]
    items = {o["kind"]: o for o in objects(lab)}
    service, endpointslice = items["Service"], items["EndpointSlice"]
    assert "selector" not in service["spec"]
    assert service["spec"]["ports"][0]["port"] == 5432
    assert endpointslice["endpoints"][0]["addresses"] == ["198.18.2.11"]
    assert endpointslice["ports"][0]["name"] == service["spec"]["ports"][0]["name"]
    assert endpointslice["ports"][0]["port"] == service["spec"]["ports"][0]["targetPort"]
    versions = sorted(o["metadata"]["resourceVersion"] for o in items.values())

    again = apply(lab)
    assert all(r["result"] is True and r["changes"] == {} for r in again["vpn-gw1"].values())
    assert sorted(o["metadata"]["resourceVersion"] for o in objects(lab)) == versions
