"""test=True is exact for the pgbouncer states (issue 14): on a stand-in host (a running
PgBouncer whose pgbouncer.ini, HBA file, auth file and SHOW output live in memory, the
module's own renderers and checks), each state's prediction equals the real run's changes,
compared whole, the dry run changes nothing, and the next run has nothing to do. The lab
(tests/pgbouncer/test_pgbouncer_lab.py) compares the same on real PgBouncers;
packaged_instance_absent and pruned have their own unit tests (fresh, removal)."""
import copy

import pytest
from repo_modules import load

pytestmark = pytest.mark.unit

HBA = ["host all all 127.0.0.1/32 scram-sha-256", "host pgbouncer all 198.18.2.0/24 reject"]


class Host:
    """A running PgBouncer as the states see it through the execution module."""

    def __init__(self, tmp_path):
        self.pgb = load("salt/_modules/pgbouncer.py")
        self.pgb.__salt__ = {"config.get": lambda key, default=None: default}
        self.pgb.__opts__ = {"test": False}
        self.hba_path = tmp_path / "pg_hba.conf"
        self.hba_path.write_text("".join(f"{rule}\n" for rule in HBA))
        self.settings = {"listen_addr": "198.18.2.11", "listen_port": 6432, "auth_type": "hba",
                         "auth_hba_file": str(self.hba_path), "server_idle_timeout": 300}
        self.ini = {"databases": {"appdb": {"host": "198.19.1.10", "port": "5432",
                                            "dbname": "app"}},
                    "users": {},
                    "pgbouncer": self.render(self.settings)}
        self.live = copy.deepcopy(self.ini)  # what PgBouncer runs (after RELOAD/restart)
        self.auth = {"app": ("plain", "pw")}
        self.actions = []

    def render(self, settings):
        return self.pgb.render_settings(settings, version="1.24")

    def state(self):
        return (copy.deepcopy(self.ini), self.hba_path.read_text(), dict(self.auth),
                copy.deepcopy(self.live))

    def show(self, subject):
        if subject == "config":
            return [{"key": key, "value": value,
                     "changeable": "no" if key in self.pgb.RESTART_SETTINGS else "yes"}
                    for key, value in self.live["pgbouncer"].items()]
        return [{"name": name} for name in self.live["databases"]]

    def write_config(self, sections, hba=None):
        self.pgb.render_config(sections)
        self.actions.append("write")
        self.ini = copy.deepcopy(sections)
        if hba is not None:
            self.hba_path.write_text(hba)

    def apply(self, how):
        self.actions.append(how)
        self.live = copy.deepcopy(self.ini)
        return True

    def functions(self):
        pgb = self.pgb
        return {
            "config.get": lambda key, default=None: default,
            "pgbouncer.console": True,
            "pgbouncer.read_config": lambda: copy.deepcopy(self.ini),
            "pgbouncer.render_settings": self.render,
            "pgbouncer.render_database": pgb.render_database,
            "pgbouncer.check_hba": pgb.check_hba,
            "pgbouncer.check_pool_sizes": pgb.check_pool_sizes,
            "pgbouncer.same_setting": pgb.same_setting,
            "pgbouncer.validate_config": lambda sections, hba=None: pgb.render_config(sections),
            "pgbouncer.running": lambda: True,
            "pgbouncer.show": self.show,
            "pgbouncer.port_in_use": lambda addr, port: None,
            "pgbouncer.service_instance": lambda name=None: {"running": True, "ours": True},
            "pgbouncer.write_config": self.write_config,
            "pgbouncer.reload": lambda: self.apply("reload"),
            "service.restart": lambda name: self.apply("restart"),
            "pgbouncer.database_mismatch": lambda name, wanted: (
                None if self.live["databases"].get(name) == wanted else "another entry"),
            "pgbouncer.wait_close": lambda name, timeout=60: self.actions.append("wait_close"),
            "pgbouncer.set_owned": lambda kind, name, owned=True: None,
            "pgbouncer.check_user": lambda name, key="users", **source: True,
            "pgbouncer.user_matches": lambda name, stored="plain", salt=None, iterations=4096,
            **source: self.auth.get(name) == (stored, "pw"),
            "pgbouncer.read_auth_file": lambda: dict(self.auth),
            "pgbouncer.set_user": lambda name, stored="plain", salt=None, iterations=4096,
            **source: self.auth.__setitem__(name, (stored, "pw")),
        }


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path)


def run(stand_in, function, *args, test, **kwargs):
    states = load("salt/_states/pgbouncer.py")
    states.__salt__ = stand_in.functions()
    states.__opts__ = {"test": test}
    return getattr(states, function)(*args, **kwargs)


CASES = {
    "settings, reload and HBA": ("settings", ("pgbouncer-settings",), lambda h: {
        "settings": {**h.settings, "server_idle_timeout": 200},
        "hba": HBA + ["host app all 198.18.2.99/32 scram-sha-256"]}, "reload"),
    "settings, restart": ("settings", ("pgbouncer-settings",), lambda h: {
        "settings": {**h.settings, "listen_port": 6433}, "hba": HBA, "restart": True},
        "restart"),
    "pool added": ("pool_present", ("app2db",), lambda h: {
        "host": "198.19.1.11", "dbname": "app2"}, "reload"),
    "pool moved": ("pool_present", ("appdb",), lambda h: {
        "host": "198.19.1.12", "port": 5432, "dbname": "app"}, "reload"),
    "pool removed": ("pool_absent", ("appdb",), lambda h: {}, "reload"),
    "user added": ("user_present", ("app2",), lambda h: {
        "password_pillar": "vpn_gateway:pooler:users:app2:password"}, "reload"),
    "user changed": ("user_present", ("app",), lambda h: {
        "password_pillar": "vpn_gateway:pooler:users:app:password",
        "stored": "scram-sha-256"}, "reload"),
}


@pytest.mark.parametrize("case", CASES)
def test_the_prediction_is_the_run_compared_whole(host, case):
    function, args, kwargs, how = CASES[case]
    kwargs = kwargs(host)
    before = host.state()
    predicted = run(host, function, *args, test=True, **kwargs)
    assert predicted["result"] is None and predicted["changes"], predicted
    assert host.state() == before and host.actions == []  # the dry run touched nothing
    applied = run(host, function, *args, test=False, **kwargs)
    assert applied["result"] is True, applied
    assert applied["changes"] == predicted["changes"]
    assert how in host.actions
    for test in (True, False):
        again = run(host, function, *args, test=test, **kwargs)
        assert (again["result"], again["changes"]) == (True, {}), again
