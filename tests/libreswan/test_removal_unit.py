"""Removal of tunnels the pack created and pillar no longer declares (issue 13): the
ownership record kept by libreswan.conn_present (track) and libreswan.pruned, which
removes through libreswan.remove_conn and predicts the same changes with test=True.
remove_conn is a stand-in here; the lab test runs it against pluto."""
import json

import pytest

from repo_modules import load

pytestmark = pytest.mark.unit


@pytest.fixture
def state(tmp_path, monkeypatch):
    module = load("salt/_states/libreswan.py")
    record = tmp_path / "state" / "conns.json"
    module.__opts__ = {"test": False, "libreswan.owned_file": str(record)}
    monkeypatch.setattr(module, "CONF_DIR", str(tmp_path))
    module.calls = []
    module.on_host = {"old-db", "remote-db"}

    def remove_conn(name, test=False):
        module.calls.append((name, test))
        if name not in module.on_host:
            return {"result": True, "changes": {}}
        if not test:
            module.on_host.discard(name)
        return {"result": None if test else True,
                "changes": {"removed": [f"/etc/ipsec.d/{name}.conf"], "deleted": [name]}}

    def apply_conn(name, *args, **spec):
        (tmp_path / f"{name}.conf").write_text("conn\n")
        return {"result": True, "changes": {"diff": "..."}, "comment": f"conn {name} updated"}

    module.__salt__ = {"libreswan.remove_conn": remove_conn,
                       "libreswan.apply_conn": apply_conn}
    module.record = record
    return module


def test_conn_present_with_track_records_only_a_tunnel_it_creates(state, tmp_path):
    assert state.conn_present("remote-db", "k", track=True)["result"] is True
    assert json.loads(state.record.read_text()) == {"conns": ["remote-db"]}
    (tmp_path / "handmade.conf").write_text("conn handmade\n")  # someone else's file
    state.conn_present("handmade", "k", track=True)
    state.conn_present("untracked", "k")
    assert state._owned() == ["remote-db"]


def test_pruned_removes_only_owned_undeclared_tunnels_and_predicts_it(state):
    state._set_owned(["old-db", "remote-db", "vanished"])
    state.__opts__["test"] = True
    predicted = state.pruned(conns=["remote-db"])
    assert predicted["result"] is None and state.on_host == {"old-db", "remote-db"}
    state.__opts__["test"] = False
    applied = state.pruned(conns=["remote-db"])
    assert applied["result"] is True
    assert predicted["changes"] == applied["changes"] == {
        "old-db": {"removed": ["/etc/ipsec.d/old-db.conf"], "deleted": ["old-db"]}}
    assert state.calls == [("old-db", True), ("vanished", True), ("old-db", False),
                           ("vanished", False)]
    assert state._owned() == ["remote-db"]  # removed and vanished names forgotten
    again = state.pruned(conns=["remote-db"])
    assert (again["result"], again["changes"]) == (True, {})
    # No tunnel declared (the section removed): the pack's own goes too.
    assert set(state.pruned(conns=[])["changes"]) == {"remote-db"}


def test_a_failed_removal_stays_owned_and_fails_the_state(state):
    state._set_owned(["old-db"])
    state.__salt__["libreswan.remove_conn"] = lambda name, test=False: {
        "result": True if test else False, "comment": "still present: ['old-db']",
        "changes": {"deleted": ["old-db"]}}
    ret = state.pruned(conns=[])
    assert ret["result"] is False and "still present" in ret["comment"]
    assert state._owned() == ["old-db"]


def test_nothing_recorded_calls_nothing(state):
    state.__opts__["test"] = True
    ret = state.pruned(conns=["remote-db"])
    assert (ret["result"], ret["changes"], state.calls) == (True, {}, [])
    state.record.parent.mkdir()
    state.record.write_text('["remote-db"]')
    ret = state.pruned(conns=[])
    assert ret["result"] is False and "fix or remove it" in ret["comment"]
