"""libreswan.conn_absent with test=True is exact (issue 14): through the module's own
remove_conn on a stand-in pluto (the loaded conns) and a temp conf directory, the dry run
predicts the real run's changes compared whole and deletes, unloads and re-reads nothing;
the next run has nothing to do. The lab test (test_lab.py, the ``side`` conn) compares the
same against pluto."""
import pytest
from repo_modules import load

pytestmark = pytest.mark.unit


@pytest.fixture
def host(tmp_path, monkeypatch):
    module = load("salt/_modules/libreswan.py")
    monkeypatch.setattr(module, "CONF_DIR", str(tmp_path))
    module.loaded, module.calls = set(), []
    monkeypatch.setattr(module, "_status", lambda reasons, timeout=None: {
        "conns": {name: {} for name in module.loaded}})
    monkeypatch.setattr(module, "down", lambda name: module.calls.append(("down", name)))

    def ipsec(*args, timeout=None):
        module.calls.append(args)
        if args[:1] == ("whack",) and "--delete" in args:
            module.loaded.discard(args[args.index("--name") + 1])
        return {"retcode": 0, "stdout": "", "stderr": ""}

    monkeypatch.setattr(module, "_ipsec", ipsec)
    monkeypatch.setattr(module, "reread_secrets",
                        lambda: module.calls.append(("rereadsecrets",)))
    state = load("salt/_states/libreswan.py")
    state.__salt__ = {"libreswan.remove_conn": module.remove_conn}
    state.__opts__ = {"test": True}
    module.state, module.dir = state, tmp_path
    return module


@pytest.mark.parametrize("files, loaded", [
    (("side.conf", "side.secrets"), {"side", "side-backup"}),
    (("side.conf",), {"side-backup"}),
    ((), {"side"}),
    (("side.secrets",), set()),
])
def test_the_prediction_is_the_run_compared_whole(host, files, loaded):
    for name in files:
        (host.dir / name).write_text("x\n")
    host.loaded.update(loaded | {"other"})
    predicted = host.state.conn_absent("side")
    assert predicted["result"] is None and predicted["changes"], predicted
    assert sorted(p.name for p in host.dir.iterdir()) == sorted(files)
    assert host.loaded == loaded | {"other"} and host.calls == []  # the dry run touched nothing
    host.state.__opts__["test"] = False
    applied = host.state.conn_absent("side")
    assert applied["result"] is True, applied
    assert applied["changes"] == predicted["changes"]
    assert list(host.dir.iterdir()) == [] and host.loaded == {"other"}
    for test in (True, False):
        host.state.__opts__["test"] = test
        again = host.state.conn_absent("side")
        assert (again["result"], again["changes"]) == (True, {}), again
