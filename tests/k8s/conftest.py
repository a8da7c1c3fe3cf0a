"""The Kubernetes API for the k8s tests: the loopback fake, or a real cluster.

Set VPN_GATEWAY_TEST_KUBECONFIG to a kubeconfig (its current context, or
VPN_GATEWAY_TEST_CONTEXT) and the same tests run against that cluster; they
create one namespace per test (vgw-test-...) and delete it afterwards. The
403 tests need VPN_GATEWAY_TEST_READONLY_KUBECONFIG there (a user that may only
get/list); without it they are skipped.
"""

import os
import subprocess
import uuid

import pytest
import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from fake_apiserver import READONLY_TOKEN, FakeApiServer

from lab.kubeapi import KUBECTL, KUBECTL_MISSING


class Cluster:
    """Where the tests talk to: kubeconfig paths and clients."""

    def __init__(self, kubeconfig, context, readonly, fake, tmp):
        self.kubeconfig, self.context, self.readonly, self.fake, self.tmp = (
            kubeconfig,
            context,
            readonly,
            fake,
            tmp,
        )
        self.api = k8s_config.new_client_from_config(kubeconfig, context, persist_config=False)
        self.core = k8s_client.CoreV1Api(self.api)
        self.discovery = k8s_client.DiscoveryV1Api(self.api)

    @property
    def conn(self):
        """kubeconfig/context keyword arguments for the module and the states."""
        return {
            "kubeconfig": self.kubeconfig,
            **({"context": self.context} if self.context else {}),
        }

    def with_token(self, token):
        """A copy of the kubeconfig whose user presents this bearer token (for 401)."""
        config = yaml.safe_load(open(self.kubeconfig))
        current = self.context or config["current-context"]
        context = next(c for c in config["contexts"] if c["name"] == current)["context"]
        config["users"] = [{"name": "test-token-user", "user": {"token": token}}]
        context["user"] = "test-token-user"
        path = self.tmp / f"kubeconfig-{uuid.uuid4().hex[:6]}"
        path.write_text(yaml.safe_dump(config))
        return str(path)

    def kubectl(self, *args, input=None, check=True):
        if not KUBECTL.exists():
            pytest.skip(KUBECTL_MISSING)
        argv = [str(KUBECTL), f"--kubeconfig={self.kubeconfig}", *args]
        if self.context:
            argv.insert(2, f"--context={self.context}")
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=60)
        if check and proc.returncode:
            raise AssertionError(f"{argv}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("k8s")
    real = os.environ.get("VPN_GATEWAY_TEST_KUBECONFIG")
    if real:
        yield Cluster(
            real,
            os.environ.get("VPN_GATEWAY_TEST_CONTEXT"),
            os.environ.get("VPN_GATEWAY_TEST_READONLY_KUBECONFIG"),
            None,
            tmp,
        )
        return
    with FakeApiServer() as fake:
        yield Cluster(
            fake.kubeconfig(tmp / "kubeconfig"),
            None,
            fake.kubeconfig(tmp / "kubeconfig-readonly", token=READONLY_TOKEN),
            fake,
            tmp,
        )


@pytest.fixture
def namespace(cluster):
    name = f"vgw-test-{uuid.uuid4().hex[:8]}"
    cluster.core.create_namespace(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    yield name
    cluster.core.delete_namespace(name)


@pytest.fixture
def readonly(cluster):
    if not cluster.readonly:
        pytest.skip(
            "set VPN_GATEWAY_TEST_READONLY_KUBECONFIG (a get/list-only user) for the 403 tests"
        )
    return cluster.readonly
