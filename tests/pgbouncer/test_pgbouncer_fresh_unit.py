"""The pgbouncer modules on a host without PgBouncer: the execution module loads, the
settings table follows the PgBouncer version (1.18, 1.24), and the state that takes
the package's own instance over predicts in test=True what the real run changes.
No host changes (Salt's functions are stand-ins)."""
import pytest
from repo_modules import load
from salt.exceptions import CommandExecutionError, SaltInvocationError

pytestmark = pytest.mark.unit


@pytest.fixture
def pgb(tmp_path, monkeypatch):
    module = load("salt/_modules/pgbouncer.py")
    options = {"pgbouncer.config": str(tmp_path / "pgbouncer.ini"),
               "pgbouncer.user": "no-such-pgbouncer-user"}
    module.__salt__ = {"config.get": lambda key, default=None: options.get(key, default)}
    module.__opts__ = {"test": True}
    return module


def without_binaries(module, monkeypatch):
    monkeypatch.setattr(module.shutil, "which", lambda name, path=None: None)


def test_the_module_loads_and_answers_without_pgbouncer_or_psql(pgb, monkeypatch):
    without_binaries(pgb, monkeypatch)
    assert pgb.__virtual__() == "pgbouncer"
    assert pgb.running() is False
    with pytest.raises(CommandExecutionError, match="psql is not installed; install a "
                                                    "PostgreSQL client"):
        pgb.console("SHOW VERSION")
    # A dry run before the package is there checks the schema only, and starts nothing.
    text = pgb.validate_config({"pgbouncer": {"listen_port": 6432}, "databases": {}})
    assert "listen_port = 6432" in text


def test_version_from_the_package_manager_when_pgbouncer_is_not_installed(pgb, monkeypatch):
    without_binaries(pgb, monkeypatch)
    asked = []
    pgb.__salt__.update({
        "pkg.version": lambda name: "",
        "pkg.latest_version": lambda name, refresh=True: asked.append(refresh)
        or "1.24.1-1+deb13u2"})
    assert pgb.version() == "1.24"
    assert asked == [False]  # no apt-get update in a dry run
    assert pgb.render_settings({"max_prepared_statements": 200}) == {
        "max_prepared_statements": "200"}
    pgb.__salt__["pkg.latest_version"] = lambda name, refresh=True: "1.18.0-1+deb12u1"
    with pytest.raises(SaltInvocationError,
                       match="settings:max_prepared_statements: is not a PgBouncer 1.18 setting"):
        pgb.render_settings({"max_prepared_statements": 200})


@pytest.mark.parametrize("version, table", [
    ("1.18", (1, 18)), ("1.21", (1, 18)), ("1.24", (1, 24)), ("1.25", (1, 24)),
    ("1.12", (1, 18))])
def test_one_settings_table_per_version(pgb, version, table):
    assert pgb._settings_table(version)[0] == table


def test_pgbouncer_1_24_settings_are_typed(pgb):
    rendered = pgb.render_settings(
        {"max_prepared_statements": 100, "cancel_wait_timeout": 10, "peer_id": 1,
         "track_extra_parameters": "IntervalStyle", "max_db_client_connections": 400,
         "auth_dbname": "postgres"}, version="1.24")
    assert rendered["max_prepared_statements"] == "100"
    with pytest.raises(SaltInvocationError, match="settings:max_prepared_statements: "):
        pgb.render_settings({"max_prepared_statements": "lots"}, version="1.24")
    assert "track_extra_parameters" in pgb.RESTART_SETTINGS


def test_version_text_is_parsed():
    pgb = load("salt/_modules/pgbouncer.py")
    assert pgb._parse_version("PgBouncer 1.24.1\nlibevent 2.1.13-stable") == (1, 24)
    assert pgb._parse_version("1.18.0-1+deb12u1") == (1, 18)
    assert pgb._parse_version("") is None


def test_the_package_default_config_is_foreign_and_moved_aside(pgb, tmp_path):
    ini = tmp_path / "pgbouncer.ini"
    assert not pgb.config_managed() and pgb.retire_packaged_config() is None
    ini.write_text("[pgbouncer]\nlisten_port = 6432\n")
    assert not pgb.config_managed()
    assert pgb.retire_packaged_config() == f"{ini}.packaged"
    assert not ini.exists() and (tmp_path / "pgbouncer.ini.packaged").exists()
    ini.write_text(pgb._render_ini({"pgbouncer": {"listen_port": "6432"}}))
    assert pgb.config_managed() and pgb.retire_packaged_config() is None


class Host:
    """The few facts packaged_instance_absent reads, and what it does to them."""

    def __init__(self, installed, running_as=None, config="absent"):
        self.installed, self.running_as, self.config = installed, running_as, config
        self.stopped = self.moved = 0

    def functions(self):
        return {
            "pkg.version": lambda name: "1.24.1-1+deb13u2" if self.installed else "",
            "pgbouncer.service_instance": lambda name=None: {
                "running": self.running_as is not None, "user": self.running_as,
                "pid": 7 if self.running_as else 0, "ours": self.running_as == "pgbouncer"},
            "pgbouncer.config_path": lambda: "/etc/pgbouncer/pgbouncer.ini",
            "pgbouncer.config_managed": lambda: self.config == "managed",
            "file.file_exists": lambda path: self.config != "absent",
            "service.stop": self.stop,
            "pgbouncer.retire_packaged_config": self.move,
        }

    def stop(self, name):
        self.stopped += 1
        self.running_as = None
        return True

    def move(self):
        self.moved += 1
        self.config = "absent"


def run_state(host, test, os_family="Debian"):
    states = load("salt/_states/pgbouncer.py")
    states.__salt__ = host.functions()
    states.__opts__ = {"test": test}
    states.__grains__ = {"os_family": os_family}
    return states.packaged_instance_absent("pgbouncer")


@pytest.mark.parametrize("os_family, after_install", [
    ("Debian", {"installed": True, "running_as": "postgres", "config": "package"}),
    ("RedHat", {"installed": True, "running_as": None, "config": "package"}),
])
def test_takeover_predicted_on_a_fresh_host_equals_the_first_run(os_family, after_install):
    predicted = run_state(Host(installed=False), test=True, os_family=os_family)
    assert predicted["result"] is None
    assert "not installed yet" in predicted["comment"]
    host = Host(**after_install)  # what the package's install left
    first = run_state(host, test=False, os_family=os_family)
    assert first["result"] is True, first
    assert first["changes"] == predicted["changes"]
    assert ("service" in first["changes"]) == (os_family == "Debian")
    assert first["changes"]["config"] == {"old": "/etc/pgbouncer/pgbouncer.ini",
                                          "new": "/etc/pgbouncer/pgbouncer.ini.packaged"}
    assert (host.stopped, host.moved) == (int(os_family == "Debian"), 1)


def test_takeover_leaves_the_managed_instance_alone():
    host = Host(installed=True, running_as="pgbouncer", config="managed")
    for test in (True, False):
        ret = run_state(host, test=test)
        assert (ret["result"], ret["changes"]) == (True, {})
    assert (host.stopped, host.moved) == (0, 0)


def test_takeover_fails_when_the_instance_does_not_stop():
    host = Host(installed=True, running_as="postgres", config="managed")
    host.stop = lambda name: False
    ret = run_state(host, test=False)
    assert ret["result"] is False and "systemctl stop pgbouncer failed" in ret["comment"]


def test_running_without_psql_is_an_error_when_our_instance_runs(pgb, monkeypatch):
    without_binaries(pgb, monkeypatch)
    monkeypatch.setattr(pgb, "_account_exists", lambda: True)
    monkeypatch.setattr(pgb, "service_instance", lambda service=None: {"ours": False})
    assert pgb.running() is False  # nothing of ours to ask
    monkeypatch.setattr(pgb, "service_instance", lambda service=None: {"ours": True})
    with pytest.raises(CommandExecutionError, match="psql is not installed"):
        pgb.running()
