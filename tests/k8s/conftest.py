"""The Kubernetes API for the k8s tests (the loopback fake, or a real cluster) and
Salt's loader in this process (the module and state tests: no salt-call process).

Set VPN_GATEWAY_TEST_KUBECONFIG to a kubeconfig (its current context, or
VPN_GATEWAY_TEST_CONTEXT) and the same tests run against that cluster; they
create one namespace per test (vgw-test-...) and delete it afterwards. The
403 tests need VPN_GATEWAY_TEST_READONLY_KUBECONFIG there (a user that may only
get/list); without it they are skipped.

``salt_loader(function, *args, **kwargs)`` calls a function as ``salt-call
--local`` did, but in this process: pytest-salt-factories' ``Loaders`` (as the
Salt extensions' functional suites use it) over the minion config salt-call
used (this repo's salt/_modules, salt/_states, the SLS tree, an empty
pillar_roots), so ``__salt__``, ``__opts__``, ``__pillar__`` and
``__context__`` are Salt's own. What salt-call checked besides the value stays
checked: the return must be JSON (the outputter's and a master's return), and
the retcode Salt puts in ``__context__`` (a failed state, a render error) must
be 0 unless check=False. A function that fails raises its exception (salt-call
printed it and exited non-zero).
"""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import salt.config
import salt.loader
import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from saltfactories.utils.functional import Loaders, MultiStateResult, StateResult

from fake_apiserver import READONLY_TOKEN, FakeApiServer

from lab import saltstack
from lab.kubeapi import KUBECTL, KUBECTL_MISSING

REPO = Path(__file__).resolve().parents[2]


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


@pytest.fixture(scope="session")
def loaders(tmp_path_factory):
    """Salt's loaders for a minion with salt-call's --local config (tests/conftest.py
    salt_call_config), built once: grains, a saltutil.sync_all as a minion does, pillar."""
    root = tmp_path_factory.mktemp("salt-loader")
    (root / "pillar").mkdir()
    config = {
        **saltstack.local_minion_config(REPO, root / "pillar"),
        "root_dir": str(root),
        "log_file": str(root / "minion.log"),
        "cachedir": str(root / "cache"),
        "pki_dir": str(root / "pki"),
        "sock_dir": str(root / "sock"),
        "id": "vpn-gw-local",
    }
    (root / "minion").write_text(yaml.safe_dump(config))
    return Loaders(salt.config.minion_config(str(root / "minion")),
                   loaded_base_name="vgw_k8s_tests.loaded")


class LoaderCallError(AssertionError):
    pass


@pytest.fixture
def salt_loader(loaders):
    """``salt_loader("k8s.get_service", "pg", "ns", kubeconfig=...)``: the function's
    return as salt-call's JSON outputter gave it. ``salt_loader.loaders``: the Loaders;
    its ``__context__`` is cleared after the test."""

    def call(function, *args, check=True, **kwargs):
        loaders.context.pop("retcode", None)
        value = loaders.modules[function](*args, **kwargs)
        if isinstance(value, (StateResult, MultiStateResult)):  # saltfactories' wrappers
            value = value.raw
        value = json.loads(json.dumps(value))
        retcode = loaders.context.pop("retcode", 0)
        if check and retcode:
            raise LoaderCallError(f"{function}: retcode {retcode}\n{json.dumps(value, indent=1)}")
        return value

    call.loaders = loaders
    try:
        yield call
    finally:
        loaders.reset_state()
    # A state run in this process holds the host's recovery lock (vpn_gateway.recovery_lock)
    # until its last state lets go; salt-call's exit dropped it, this process lives on.
    holder = sys.modules.get("_vpn_gateway_recovery_lock")
    if getattr(holder, "held", None):
        loaders.modules["libreswan.release_recovery_lock"]()
        pytest.fail("a state run left the host's recovery lock held")


@pytest.fixture
def k8s_loaded(loaders):
    """(module, states) for the race tests: the k8s execution module as Salt's loader
    loaded it (its Python module, to put a hook between its reads and writes; every
    attribute set on it is undone after the test) and Salt's state loader bound to the
    same execution modules (as a state run binds them), called without state.single."""
    module = sys.modules[loaders.modules["k8s.apply_endpointslices"].func.__module__]
    saved = dict(vars(module))
    states = salt.loader.states(loaders.opts, loaders.modules, loaders.utils,
                                loaders.serializers, context=loaders.context,
                                loaded_base_name=loaders.loaded_base_name)
    try:
        yield module, states
    finally:
        for name in set(vars(module)) - set(saved):
            delattr(module, name)
        vars(module).update(saved)
        loaders.reset_state()
