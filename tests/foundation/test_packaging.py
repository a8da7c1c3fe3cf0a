"""``pip install .`` registers the pack through Salt's ``salt.loader`` entry
point: a minion then finds every custom module without ``saltutil.sync_all``.
(The other way, a master's file tree plus sync_all, is shown in test_lab_hosts.py.)"""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SALT_CALL = Path(sys.executable).parent / "salt-call"


def public_functions(path):
    """(virtual name, public function names) that a loader module file defines."""
    tree = ast.parse(path.read_text())
    names = {"__virtualname__": path.stem, "__func_alias__": {}, "__load__": None}
    functions = set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id in names:
                    names[target.id] = ast.literal_eval(node.value)
        elif isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            functions.add(node.name)
    if names["__load__"] is not None:  # Salt exports only these
        functions &= set(names["__load__"])
    aliases = names["__func_alias__"]
    return names["__virtualname__"], {aliases.get(f, f) for f in functions}


def shipped(kind):
    return [public_functions(p) for p in sorted((REPO / "salt" / kind).glob("*.py"))]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--target", str(target), str(REPO)], check=True)
    return target


@pytest.fixture(scope="module")
def bare_minion(tmp_path_factory):
    """A masterless minion config with no module_dirs and no file_roots of ours."""
    root = tmp_path_factory.mktemp("bare-minion")
    (root / "minion").write_text(json.dumps({
        "root_dir": str(root), "file_client": "local", "log_file": str(root / "log"),
        "file_roots": {"base": [str(root / "srv")]},
    }))
    return root


def list_functions(config_dir, function, pythonpath=None):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    proc = subprocess.run([str(SALT_CALL), "--local", f"--config-dir={config_dir}", "--out=json",
                           function], capture_output=True, text=True, env=env, cwd="/",
                          check=True)
    return set(json.loads(proc.stdout)["local"])


def test_the_package_ships_every_loader_module(installed):
    for kind in ("_modules", "_states", "_beacons"):
        ours = sorted(p.name for p in (REPO / "salt" / kind).glob("*.py"))
        # the template's layout: one sub-package per loader kind, named as Salt names it
        theirs = sorted(p.name for p in (installed / "vpn_gateway_loader" / kind.lstrip("_"))
                        .glob("*.py"))
        assert theirs == ours


@pytest.mark.parametrize("kind, lister", [("_modules", "sys.list_functions"),
                                          ("_states", "sys.list_state_functions")])
def test_a_minion_finds_the_modules_through_the_entry_point(installed, bare_minion, kind, lister):
    modules = shipped(kind)
    if not modules:
        pytest.skip(f"salt/{kind} is empty")
    with_package = list_functions(bare_minion, lister, pythonpath=installed)
    without = list_functions(bare_minion, lister)
    for virtualname, functions in modules:
        expected = {f"{virtualname}.{f}" for f in functions}
        assert expected <= with_package, (virtualname, expected - with_package)
        # the control: without the package the same minion lacks them
        assert not expected <= without, virtualname


def _install_report(python, *args):
    """What ``pip install`` would install into ``python``'s environment (names and versions)."""
    proc = subprocess.run([str(python), "-m", "pip", "install", "--dry-run", "-q", "--report", "-",
                           *args],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {i["metadata"]["name"].lower(): i["metadata"]["version"]
            for i in json.loads(proc.stdout)["install"]}


def test_pip_install_keeps_the_salt_it_finds():
    """``pip install .`` (salt-pip on a minion) beside a supported Salt installs only the pack:
    setup.cfg holds ranges, so the Salt already there satisfies them and stays."""
    import salt.version
    wanted = _install_report(sys.executable, str(REPO))
    assert set(wanted) == {"vpn-gateway"}, wanted
    assert salt.version.__version__ == "3008.3" or salt.version.__version__.startswith("3007")


def test_install_requires_are_ranges_and_cover_the_oldest_salt():
    """The declared Salt range includes the oldest release CI tests (3007) and every pin of the
    project's venv lives in requirements/constraints.txt, not in install_requires."""
    import configparser
    from packaging.requirements import Requirement
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    requires = [Requirement(r) for r in cfg.get("options", "install_requires").splitlines()
                if r.strip()]
    assert {r.name for r in requires} == {"salt", "kubernetes"}  # what the modules import
    for r in requires:
        assert not any(s.operator == "==" for s in r.specifier), r
    salt_range = next(r.specifier for r in requires if r.name == "salt")
    for version in ("3007.0", "3007.13", "3008.3", "3008.5"):
        assert salt_range.contains(version), version
    assert not salt_range.contains("3006.23")
    constraints = (REPO / "requirements" / "constraints.txt").read_text()
    assert "\nsalt==3008.3\n" in constraints
