"""Removal of what the pack created (issue 13): the ownership record, the pruning of users
and pools pillar no longer declares, and the state's test=True prediction. Files live in a
temporary directory; PgBouncer itself is a stand-in (the lab test runs the real one)."""
import json

import pytest
from repo_modules import load
from salt.exceptions import CommandExecutionError

pytestmark = pytest.mark.unit

INI = """; Managed by Salt (pgbouncer states): edits here are replaced.

[databases]
appdb = host=198.19.1.10 dbname=app
gonedb = host=198.19.1.10 dbname=app
handdb = host=198.19.1.11 dbname=app

[users]

[pgbouncer]
auth_file = {auth}
"""
AUTH = ('# an operator\'s note\n"app" "app-secret"\n"gone" "gone-secret"\n'
        '"handmade" "hand-secret"\n')


@pytest.fixture
def pgb(tmp_path):
    module = load("salt/_modules/pgbouncer.py")
    auth = tmp_path / "userlist.txt"
    auth.write_text(AUTH)
    (tmp_path / "pgbouncer.ini").write_text(INI.format(auth=auth))
    options = {"pgbouncer.config": str(tmp_path / "pgbouncer.ini"), "pgbouncer.user": "root",
               "pgbouncer.group": "root",
               "pgbouncer.owned_file": str(tmp_path / "state" / "owned.json")}
    module.__salt__ = {"config.get": lambda key, default=None: options.get(key, default)}
    module.__opts__ = {"test": False}
    module.written = []

    def write_config(sections, hba=None):  # the scratch PgBouncer check is the lab's
        module.written.append(sections)
        text = module._render_ini({**sections, "databases": {
            name: module._format_connstr(entry) for name, entry in sections["databases"].items()}})
        return module.write_file(options["pgbouncer.config"], text, group="root")

    module.write_config = write_config
    module.running = lambda: False
    module.tmp = tmp_path
    return module


def test_without_users_keeps_every_other_line_as_it_is(pgb):
    assert pgb._without_users(AUTH, ["gone"]) == (
        '# an operator\'s note\n"app" "app-secret"\n"handmade" "hand-secret"\n')
    assert pgb._without_users(AUTH, ["nobody"]) == AUTH


def test_the_record_starts_empty_and_holds_names_only(pgb):
    assert pgb.owned() == {"databases": [], "users": []}
    assert pgb.set_owned("users", "gone") is True
    assert pgb.set_owned("users", "gone") is False
    assert pgb.set_owned("databases", "gonedb") is True
    path = pgb.tmp / "state" / "owned.json"
    assert json.loads(path.read_text()) == {"databases": ["gonedb"], "users": ["gone"]}
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert pgb.set_owned("users", "gone", owned=False) is True
    assert pgb.owned() == {"databases": ["gonedb"], "users": []}


def test_a_broken_record_is_an_error_that_says_what_to_do(pgb):
    path = pgb.tmp / "state" / "owned.json"
    path.parent.mkdir()
    path.write_text("{not json")
    with pytest.raises(CommandExecutionError, match="fix or remove it"):
        pgb.owned()
    path.write_text('{"users": "gone"}')
    with pytest.raises(CommandExecutionError, match="is not"):
        pgb.prune_owned([], [])


def test_prune_removes_only_what_the_pack_created_and_pillar_no_longer_declares(pgb):
    for kind, name in (("users", "gone"), ("users", "app"), ("databases", "gonedb"),
                       ("databases", "appdb"), ("users", "vanished")):
        pgb.set_owned(kind, name)
    before = (pgb.tmp / "pgbouncer.ini").read_text(), (pgb.tmp / "userlist.txt").read_text()
    expected = {"users": ["gone"], "apply": "none",
                "databases": {"gonedb": {"host": "198.19.1.10", "dbname": "app"}}}
    # test=True predicts and touches nothing.
    assert pgb.prune_owned(["app"], ["appdb"], test=True) == expected
    assert ((pgb.tmp / "pgbouncer.ini").read_text(),
            (pgb.tmp / "userlist.txt").read_text()) == before
    assert pgb.prune_owned(["app"], ["appdb"]) == expected
    ini = pgb._parse_ini((pgb.tmp / "pgbouncer.ini").read_text())
    assert sorted(ini["databases"]) == ["appdb", "handdb"]  # an operator's pool stays
    assert (pgb.tmp / "userlist.txt").read_text() == (
        '# an operator\'s note\n"app" "app-secret"\n"handmade" "hand-secret"\n')
    # Removed and vanished names are forgotten; the declared ones stay the pack's.
    assert pgb.owned() == {"databases": ["appdb"], "users": ["app"]}
    assert pgb.prune_owned(["app"], ["appdb"]) == {"users": [], "databases": {},
                                                   "apply": "none"}


def test_prune_reloads_a_running_pgbouncer_and_checks_the_pool_is_gone(pgb):
    pgb.set_owned("databases", "gonedb")
    pgb.running = lambda: True
    calls = []
    pgb.reload = lambda: calls.append("RELOAD")
    pgb.show = lambda subject: [{"name": "appdb"}, {"name": "gonedb"}]
    with pytest.raises(CommandExecutionError, match=r"still lists \['gonedb'\] after RELOAD"):
        pgb.prune_owned([], ["appdb"])
    assert calls == ["RELOAD"]
    assert pgb.owned()["databases"] == ["gonedb"]  # not forgotten: the next run retries


def test_nothing_owned_reads_nothing(pgb):
    (pgb.tmp / "pgbouncer.ini").unlink()  # a fresh host: no config yet
    assert pgb.prune_owned(["app"], ["appdb"], test=True) == {"users": [], "databases": {},
                                                              "apply": "none"}


@pytest.fixture
def state():
    module = load("salt/_states/pgbouncer.py")
    module.__opts__ = {"test": True}
    return module


def test_the_state_predicts_exactly_what_it_removes(state):
    result = {"users": ["gone"], "databases": {"gonedb": {"host": "198.19.1.10"}},
              "apply": "reload"}
    calls = []

    def prune_owned(users, databases, test):
        calls.append(test)
        return result

    state.__salt__ = {"pgbouncer.prune_owned": prune_owned}
    predicted = state.pruned("p", users=["app"], databases=["appdb"])
    state.__opts__ = {"test": False}
    applied = state.pruned("p", users=["app"], databases=["appdb"])
    assert predicted["result"] is None and applied["result"] is True
    assert predicted["changes"] == applied["changes"] == {
        "users": {"gone": {"old": "in the auth file", "new": None}},
        "databases": {"gonedb": {"old": {"host": "198.19.1.10"}, "new": None}},
        "apply": "reload"}
    assert "gone-secret" not in json.dumps([predicted, applied])
    assert calls == [True, True, False]
    result.update(users=[], databases={}, apply="none")
    assert state.pruned("p", users=["app"], databases=["appdb"])["changes"] == {}
