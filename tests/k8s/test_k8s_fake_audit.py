"""The stand-in's parts for a stand-in in another process (the lab's): its audit log, as
kube-apiserver's --audit-log-path writes it, and its knobs over HTTP (lab/kubeapi.knobs).
Stand-in only (a real cluster has no knobs), so these start their own server."""

import json
import subprocess
import sys

import pytest
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from fake_apiserver import KNOBS_PATH, READONLY_TOKEN, FakeApiServer

from lab import kubeapi

pytestmark = pytest.mark.unit

# The audit.k8s.io/v1 Event fields at level Metadata
# (https://kubernetes.io/docs/reference/config-api/apiserver-audit.v1/#audit-k8s-io-v1-Event).
EVENT_FIELDS = {"kind", "apiVersion", "level", "auditID", "stage", "requestURI", "verb", "user",
                "sourceIPs", "userAgent", "responseStatus", "requestReceivedTimestamp",
                "stageTimestamp"}


@pytest.fixture
def fake(tmp_path):
    with FakeApiServer(audit_log=str(tmp_path / "audit.log")) as server:
        server.kubeconfig(tmp_path / "kubeconfig")
        server.kubeconfig(tmp_path / "kubeconfig-readonly", token=READONLY_TOKEN)
        yield server


def events(fake):
    with open(fake.audit_log, encoding="utf-8") as log:
        return [json.loads(line) for line in log]


def post(kubeconfig, path, body):
    """lab/kubeapi.py's POST script, run as the lab runs it: (exit code, output)."""
    done = subprocess.run([sys.executable, "-c", kubeapi.POST, str(kubeconfig), path,
                           json.dumps(body)], capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


def set_knobs(kubeconfig, settings):
    return post(kubeconfig, KNOBS_PATH, settings)


def test_the_lab_creates_its_namespace_with_a_plain_post_the_client_then_reads(fake, tmp_path):
    # lab/kubeapi.start's request (POST /api/v1/namespaces, as kubectl create namespace)
    code, out = post(tmp_path / "kubeconfig", "/api/v1/namespaces",
                     {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "databases"}})
    assert code == 0, out
    assert json.loads(out)["metadata"]["name"] == "databases"
    core = k8s_client.CoreV1Api(k8s_config.new_client_from_config(str(tmp_path / "kubeconfig")))
    assert core.read_namespace("databases").status.phase == "Active"
    assert events(fake)[0]["verb"] == "create" and events(fake)[0]["responseStatus"]["code"] == 201


def test_each_request_is_one_audit_event_with_its_verb_uri_user_and_code(fake, tmp_path):
    api = k8s_config.new_client_from_config(str(tmp_path / "kubeconfig"))
    core = k8s_client.CoreV1Api(api)
    core.list_namespaced_service("default")
    with pytest.raises(k8s_client.ApiException):
        core.read_namespaced_service("missing", "default")
    core.patch_namespaced_service(
        "pg", "default", {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "pg"},
                          "spec": {"ports": [{"port": 5432}]}},
        field_manager="test", dry_run="All", _content_type="application/apply-patch+yaml")
    logged = events(fake)
    assert all(set(e) - {"objectRef"} == EVENT_FIELDS for e in logged), logged
    # (an apply that creates answers 201 on a real server, 200 here: docs/k8s.md)
    assert [(e["verb"], e["responseStatus"]["code"] // 100, e["user"]["username"])
            for e in logged] == [("list", 2, "admin"), ("get", 4, "admin"), ("patch", 2, "admin")]
    assert logged[1]["responseStatus"]["code"] == 404
    assert logged[1]["objectRef"] == {"resource": "services", "namespace": "default",
                                      "name": "missing", "apiVersion": "v1"}
    assert logged[2]["requestURI"].startswith("/api/v1/namespaces/default/services/pg?")
    assert "dryRun=All" in logged[2]["requestURI"]
    assert {(e["kind"], e["apiVersion"], e["level"], e["stage"]) for e in logged} == {
        ("Event", "audit.k8s.io/v1", "Metadata", "ResponseComplete")}


def test_the_knobs_over_http_refuse_dry_runs_and_inject_faults_for_the_admin_only(fake,
                                                                                  tmp_path):
    assert set_knobs(tmp_path / "kubeconfig-readonly", {"refuse_dry_run": "x"})[0] != 0
    assert fake.dry_run_refused_by is None
    code, out = set_knobs(tmp_path / "kubeconfig", {"refuse_dry_run": "policy.example.com",
                                                    "fail_next": {"count": 1, "code": 429,
                                                                  "retry_after": 1,
                                                                  "methods": ["GET"]}})
    assert code == 0, out
    assert json.loads(out) == {"refuse_dry_run": "policy.example.com", "faults": [
        {"left": 1, "code": 429, "retry_after": 1, "methods": ["GET"]}]}
    assert set_knobs(tmp_path / "kubeconfig", {"unknown": 1})[0] != 0
    core = k8s_client.CoreV1Api(k8s_config.new_client_from_config(str(tmp_path / "kubeconfig")))
    core.list_namespaced_service("default")  # the client sleeps the Retry-After, asks again
    assert [e["responseStatus"]["code"] for e in events(fake)] == [429, 200]
    with pytest.raises(k8s_client.ApiException, match="does not support dry run"):
        core.create_namespaced_service("default", {"metadata": {"name": "pg"}, "spec": {
            "ports": [{"port": 5432}]}}, dry_run="All")
    code, out = set_knobs(tmp_path / "kubeconfig", {"refuse_dry_run": None, "clear_faults": True})
    assert (code, json.loads(out)) == (0, {"refuse_dry_run": None, "faults": []})
    # POST trusts the kubeconfig's CA, with no verification turned off
    assert "CERT_NONE" not in kubeapi.POST and "check_hostname" not in kubeapi.POST
