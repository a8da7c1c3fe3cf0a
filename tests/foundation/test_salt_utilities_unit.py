"""The pack uses Salt's own utilities (issue 17): one atomic writer
(salt.utils.atomicfile), salt.utils.dictupdate, and loader conventions kept
alike across modules; and it runs on every Salt release setup.cfg declares."""
import ast
import os
import re
import stat
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from repo_modules import REPO, load  # noqa: E402

pytestmark = pytest.mark.unit

LOADER_FILES = sorted(p for kind in ("_modules", "_states", "_beacons")
                      for p in (REPO / "salt" / kind).glob("*.py"))


@pytest.mark.parametrize("path", LOADER_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_hand_written_atomic_write_or_dict_merge(path):
    text = path.read_text()
    assert "mkstemp(" not in text, "write through salt.utils.atomicfile.atomic_open"
    assert not re.search(r"def _?(deep_)?merge\(", text), "use salt.utils.dictupdate"


def _exported(path):
    """Names the loader exports from an execution module file, with their docstrings."""
    tree = ast.parse(path.read_text())
    load_list = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__load__" for t in node.targets):
            load_list = ast.literal_eval(node.value)
    functions = {n.name: ast.get_docstring(n) or "" for n in tree.body
                 if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}
    return load_list, functions


@pytest.mark.parametrize("path", sorted((REPO / "salt" / "_modules").glob("*.py")),
                         ids=lambda p: p.name)
def test_every_public_function_is_a_loader_verb(path):
    """Public (exported) means an execution function with a CLI Example; a pure
    helper is private (_name). k8s.py still lists its helpers out with __load__."""
    load_list, functions = _exported(path)
    if path.name != "k8s.py":
        assert load_list is None, "make the helpers private instead of __load__"
    exported = set(functions) & set(load_list) if load_list is not None else set(functions)
    for name in sorted(exported):
        assert "CLI Example:" in functions[name], f"{path.stem}.{name}: a helper? make it _{name}"


@pytest.fixture
def libreswan(tmp_path):
    module = load("salt/_modules/libreswan.py")
    return module


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to root needs root")
def test_a_secrets_file_never_takes_a_looser_old_mode(libreswan, tmp_path):
    path = tmp_path / "t.secrets"
    path.write_text("old")
    os.chmod(path, 0o644)  # atomic_open hands the old file's mode on
    libreswan._write_atomic(str(path), "new psk", 0o600)
    assert path.read_text() == "new psk"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["t.secrets"]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to root needs root")
def test_a_new_secrets_file_is_born_private(libreswan, tmp_path, monkeypatch):
    import salt.utils.atomicfile
    path = tmp_path / "new.secrets"
    seen = []
    rename = salt.utils.atomicfile.atomic_rename

    def spy(src, dst):  # the mode at the moment the file appears under its name
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        return rename(src, dst)
    monkeypatch.setattr(salt.utils.atomicfile, "atomic_rename", spy)
    old = os.umask(0o022)
    try:
        libreswan._write_atomic(str(path), "psk", 0o600)
    finally:
        os.umask(old)
    assert seen == [0o600]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("relative", ["salt/_modules/libreswan.py", "salt/_modules/pgbouncer.py"])
def test_secrets_come_from_pillar_get_on_salt_before_3008(relative):
    """pillar.get has no unmask before 3008 (TypeError there); it does not mask either."""
    module = load(relative)
    module.SALT_MASKS_PILLAR = False
    module.__salt__ = {"pillar.get": lambda key, default=None: {"k": "s3cret"}.get(key, default)}
    assert module._pillar_secret("k") == "s3cret"
    module.SALT_MASKS_PILLAR = True
    module.__salt__ = {"pillar.get": lambda key, default=None, unmask=False:
                       "s3cret" if unmask else "**********"}
    assert module._pillar_secret("k") == "s3cret"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
@pytest.mark.parametrize("old_mode", [None, 0o644])
def test_pgbouncer_write_file_shows_the_auth_file_to_nobody_else(tmp_path, monkeypatch, old_mode):
    import salt.utils.atomicfile
    pgb = load("salt/_modules/pgbouncer.py")
    path = tmp_path / "userlist.txt"
    if old_mode is not None:
        path.write_text("old")
        os.chmod(path, old_mode)
    seen = []
    rename = salt.utils.atomicfile.atomic_rename

    def spy(src, dst):
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        return rename(src, dst)
    monkeypatch.setattr(salt.utils.atomicfile, "atomic_rename", spy)
    assert pgb.write_file(str(path), '"u" "SCRAM-SHA-256$..."\n', mode=0o640, group="root")
    assert seen == [0o640]
    assert path.read_text() == '"u" "SCRAM-SHA-256$..."\n'
    assert (stat.S_IMODE(path.stat().st_mode), path.stat().st_uid) == (0o640, 0)
    assert not pgb.write_file(str(path), '"u" "SCRAM-SHA-256$..."\n', mode=0o640, group="root")


def test_firewalld_ownership_record_round_trip(tmp_path):
    fr = load("salt/_modules/firewalld_rich.py")
    path = str(tmp_path / "lib" / "rich.json")
    fr._write_owned("public", ["r1"], path)
    fr._write_owned("dmz", ["r2"], path)
    assert fr._read_owned(path) == {"public": ["r1"], "dmz": ["r2"]}
    fr._write_owned("public", [], path)
    assert fr._read_owned(path) == {"dmz": ["r2"]}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert os.listdir(tmp_path / "lib") == ["rich.json"]  # no temp file left
