"""Fixtures shared by every test tier.

- ``lab_factory(hosts)``: a started lab with those hosts (module scope: torn
  down after the test module, also on failure). Needs root. Every test that
  uses it runs once per platform that ``--platform`` names (``debian12``,
  ``debian13``, ``all``: the default); ``platform`` is the one in use.
- ``salt_call(function, *args, **kwargs)``: ``salt-call --local`` with this
  repo's modules, states and SLS tree, JSON result; no lab needed.
- ``esp``: (supported, reason) of the kernel; ``require_esp`` skips without it.
"""
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lab import DEFAULT, Lab, capabilities, images, saltstack  # noqa: E402

VENV_BIN = Path(sys.executable).parent
_lab_counter = itertools.count()


def pytest_addoption(parser):
    parser.addoption("--platform", choices=[*sorted(images.PLATFORMS), "all"], default="all",
                     help="the lab hosts' Debian: debian12, debian13 or all (default)")
    parser.addoption("--guest-platforms", choices=[*sorted(images.PLATFORMS), "all"],
                     default=None, help="the platforms of the in-guest tests (marker guest), "
                     "when they differ from --platform (scripts/test runs both guests, one "
                     "after the other, in its debian13 run)")


def pytest_generate_tests(metafunc):
    """Lab tests run once per platform, module by module (one lab at a time)."""
    if "platform" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--platform")
        if metafunc.definition.get_closest_marker("guest"):
            chosen = metafunc.config.getoption("--guest-platforms") or chosen
        platforms = sorted(images.PLATFORMS) if chosen == "all" else [chosen]
        only = metafunc.definition.get_closest_marker("platforms")  # a test for some only
        if only:
            platforms = [p for p in platforms if p in only.args]
        metafunc.parametrize("platform", platforms, scope="module")


@pytest.hookimpl(hookwrapper=True)
def pytest_collection_modifyitems(config, items):
    """Each module's tests run in file order, one platform after the other: a
    lab module's tests share one lab per platform and build on each other, and
    pytest's own regrouping by fixture (inside the yield) interleaves platforms
    where a test has parameters of its own. The in-guest tests (marker
    ``guest``) go last: their guests run in the background meanwhile
    (pytest_collection_finish)."""
    file_order = {item.nodeid: n for n, item in enumerate(items)}
    yield
    grouped_order = {item.nodeid: n for n, item in enumerate(items)}
    module_order = {}
    for item in sorted(items, key=lambda i: file_order[i.nodeid]):
        module_order.setdefault(item.nodeid.split("::")[0], len(module_order))

    def key(item):
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec else {}
        # str(): a test for other platforms only (marker platforms) has NOTSET here
        platform = str(params.get("platform", ""))
        # A module without platforms keeps pytest's grouping, so that a module-scoped
        # fixture with parameters of its own is set up once per parameter.
        order = file_order if "platform" in params else grouped_order
        return (item.get_closest_marker("guest") is not None,
                module_order[item.nodeid.split("::")[0]], platform, order[item.nodeid])

    items.sort(key=key)


def pytest_collection_finish(session):
    platforms = [item.callspec.params["platform"] for item in session.items
                 if item.get_closest_marker("guest") and hasattr(item, "callspec")]
    if session.config.option.collectonly or os.geteuid() != 0:
        return
    if platforms and not capabilities.esp_support()[0]:
        from lab import qemu

        if qemu.available()[0]:
            qemu.GuestRuns.started(platforms)


@pytest.fixture(scope="module")
def platform():
    return images.DEFAULT_PLATFORM


@pytest.fixture(scope="module")
def lab_factory(platform):
    """Start lab hosts: ``lab = lab_factory(["salt-master", "vpn-gw1"])``."""
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces, mounts, systemd-nspawn)")
    started = []

    def start(hosts=None, topology=DEFAULT, **options):
        name = f"vgwlab-t{os.getpid()}x{next(_lab_counter)}"
        lab = Lab(topology.subset(hosts) if hosts else topology, name=name, platform=platform,
                  **options)
        started.append(lab)
        return lab.start()

    yield start
    for lab in started:
        lab.stop()


@pytest.fixture(scope="session")
def esp():
    return capabilities.esp_support()


@pytest.fixture
def require_esp(esp):
    supported, reason = esp
    if not supported:
        pytest.skip(reason)


class SaltCallError(AssertionError):
    pass


@pytest.fixture(scope="session")
def salt_call_config(tmp_path_factory):
    """A minion config dir for ``salt-call --local`` over this repo's tree."""
    root = tmp_path_factory.mktemp("salt-local")
    config = {
        **saltstack.local_minion_config(REPO, root / "pillar"),
        "root_dir": str(root),
        "log_file": str(root / "minion.log"),
        "log_level_logfile": "debug",
        "cachedir": str(root / "cache"),
        "pki_dir": str(root / "pki"),
        "sock_dir": str(root / "sock"),
        "id": "vpn-gw-local",
    }
    (root / "pillar").mkdir()
    (root / "minion").write_text(yaml.safe_dump(config))
    return root


@pytest.fixture
def salt_call(salt_call_config):
    """Run one function with ``salt-call --local``; return its value.

    ``salt_call("test.ping")``; states: ``salt_call("state.single",
    "libreswan.conn_present", name="x", test=True)``. Keyword arguments are
    passed as ``key=value`` (values JSON-encoded where not strings). Raises
    SaltCallError when salt-call fails or prints no JSON, unless check=False.
    """

    def call(function, *args, check=True, timeout=120, **kwargs):
        argv = [str(VENV_BIN / "salt-call"), "--local", f"--config-dir={salt_call_config}",
                "--out=json", "--retcode-passthrough", function, *map(str, args)]
        for key, value in kwargs.items():
            argv.append(f"{key}={value if isinstance(value, str) else json.dumps(value)}")
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        try:
            value = json.loads(proc.stdout)["local"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise SaltCallError(
                f"{argv}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}") from exc
        if check and proc.returncode != 0:
            raise SaltCallError(f"{argv}: rc={proc.returncode}\n{json.dumps(value, indent=1)}")
        return value

    call.config_dir = salt_call_config
    return call


# pytest-salt-factories (pinned for root-namespace Salt daemons and its event
# listener) binds its log server and event listener to 0.0.0.0 by default; in
# this project the root namespace listens on loopback only (FACTS).
@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    log_server = session.config.pluginmanager.get_plugin("saltfactories-log-server")
    if log_server is not None:
        log_server.log_host = "127.0.0.1"


@pytest.fixture(scope="session")
def event_listener():
    from saltfactories.plugins.event_listener import EventListener

    listener = EventListener()
    listener.host = "127.0.0.1"
    listener.address = f"tcp://127.0.0.1:{listener.port}"
    with listener:
        yield listener
