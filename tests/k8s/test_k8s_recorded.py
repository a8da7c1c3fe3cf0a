"""The API of conftest (the stand-in, or a real cluster) against answers recorded from
Kubernetes' documentation, API reference, source and issue threads
(recorded_api_answers.yaml: each entry names its sources)."""

import json
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

pytestmark = pytest.mark.unit

RECORDED = yaml.safe_load((Path(__file__).parent / "recorded_api_answers.yaml").read_text())


def raw_client(cluster):
    """An ApiClient that retries nothing: urllib3 would otherwise answer a 429 or 503 with a
    Retry-After itself, and the test would never see it."""
    configuration = k8s_client.Configuration()
    k8s_config.load_kube_config(config_file=cluster.kubeconfig, context=cluster.context,
                                client_configuration=configuration, persist_config=False)
    configuration.retries = False
    return k8s_client.ApiClient(configuration)


def exchange(cluster, request, namespace):
    """Send one recorded request as it is; (status, headers, body text)."""
    path = request["path"].replace("{namespace}", namespace)
    headers = {"Accept": "application/json",
               "Content-Type": request.get("content_type", "application/json")}
    api = raw_client(cluster)
    serialized = api.param_serialize(
        request["method"], path, query_params=list((request.get("query") or {}).items()),
        header_params=headers, body=request.get("body"), auth_settings=["BearerToken"])
    response = api.call_api(*serialized, _request_timeout=20)
    return response.status, response.headers, response.read().decode()


@pytest.mark.parametrize("record", RECORDED, ids=[r["id"] for r in RECORDED])
def test_the_api_answers_as_recorded(cluster, namespace, record):
    if record.get("knob"):
        if not cluster.fake:
            pytest.skip("needs the stand-in's knob to play a loaded or webhook-guarded cluster")
        for knob, value in record["knob"].items():
            if knob == "fail_next":
                cluster.fake.fail_next(**value)
            else:
                getattr(cluster.fake, knob)(value)
    try:
        status, headers, text = exchange(cluster, record["request"], namespace)
    finally:
        if cluster.fake:
            cluster.fake.refuse_dry_run(None)
    want = record["answer"]
    assert status == want["code"], text
    for name, value in (want.get("headers") or {}).items():
        assert headers.get(name) == value
    if "text" in want:  # not a Status: the priority-and-fairness 429
        assert text.strip() == want["text"]
        return
    body = json.loads(text)
    if status >= 400:
        assert body["kind"] == "Status" and body["status"] == "Failure" and body["code"] == status
        assert body.get("reason") == want.get("reason"), body
        if "message" in want:
            assert body["message"] == want["message"].replace("{namespace}", namespace)
        causes = [{"field": c.get("field"), "reason": c.get("reason")}
                  for c in (body.get("details") or {}).get("causes") or []]
        for cause in want.get("causes") or []:
            assert cause in causes, body
    for field in want.get("absent") or []:
        assert field not in body
    if "warning" in want:
        # 299 - "unknown field \"invalidPart\"" (the text quoted inside the header)
        assert want["warning"].replace('"', '\\"') in (headers.get("Warning") or ""), headers


def test_deleting_the_service_deletes_its_slices_in_the_background(cluster, namespace):
    """Garbage collection (kubernetes.io, Garbage Collection: "each EndpointSlice that is
    managed on behalf of a Service has an owner reference"; background cascading deletion
    is the default): the owner goes at once, its dependents shortly after. A slice without
    the reference stays."""
    service = cluster.core.create_namespaced_service(namespace, {
        "metadata": {"name": "pg"}, "spec": {"ports": [{"name": "postgres", "port": 5432}]}})
    owner = {"apiVersion": "v1", "kind": "Service", "name": "pg", "uid": service.metadata.uid,
             "controller": True, "blockOwnerDeletion": True}
    for name, refs in (("owned", [owner]), ("free", None)):
        cluster.discovery.create_namespaced_endpoint_slice(namespace, {
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "pg"},
                         **({"ownerReferences": refs} if refs else {})},
            "addressType": "IPv4", "endpoints": [{"addresses": ["198.18.2.11"]}]})
    cluster.core.delete_namespaced_service("pg", namespace, _preload_content=False)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        names = [s.metadata.name for s in
                 cluster.discovery.list_namespaced_endpoint_slice(namespace).items]
        if names == ["free"]:
            break
        time.sleep(0.2)
    assert names == ["free"]
