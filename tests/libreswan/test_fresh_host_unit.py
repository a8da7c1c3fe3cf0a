"""The libreswan modules on a host without libreswan (a fresh gateway): they
load, test=True predicts with the version the package manager would install,
and what needs pluto says that libreswan is missing. Salt's loader dunders are
faked; no Salt, no ipsec."""
import pytest
from salt.exceptions import CommandExecutionError

from libreswan_helpers import PSK, load_module, tunnel_spec
from repo_modules import load

pytestmark = pytest.mark.unit


def fresh(candidate="5.2-2.2"):
    module = load_module()
    module._ipsec_path = lambda: None

    def no_command(*args, **kwargs):
        raise AssertionError(f"ran a command on a host without libreswan: {args}")

    module.__salt__ = {"pkg.latest_version": lambda name, refresh=True: candidate,
                       "pillar.get": lambda key, default=None, unmask=False: PSK,
                       "cmd.run_all": no_command}
    module.__context__ = {}
    return module


def plan(module):
    return module.plan_conn("remote-db", "vpn_gateway:tunnel:psk", source="vpn_gateway:tunnel",
                            **tunnel_spec())


def test_loads_and_reports_the_candidate_version():
    module = fresh()
    assert module.__virtual__() == "libreswan"
    assert module.installed() is False
    assert module.version() == {"version": "5.2", "major": 5, "minor": 2, "installed": False,
                                "package_version": "5.2-2.2"}
    status = module.status()
    assert (status["installed"], status["running"], status["conns"]) == (False, False, {})
    assert "libreswan is not installed" in status["error"]
    assert module.nss_initialized() is False


@pytest.mark.parametrize("candidate, major", [("5.2-2.2", 5), ("4.10-2+deb12u1", 4)])
def test_plan_renders_for_the_version_apt_would_install(candidate, major):
    planned = plan(fresh(candidate))
    assert planned["errors"] == [] and planned["major"] == major
    assert planned["conf_changed"] and planned["secrets_changed"]
    assert planned["not_loaded"] == ["remote-db", "remote-db-backup"]
    line = "+\tkeyexchange=ikev2\n" if major == 5 else "+\tikev2=insist\n"
    assert line in planned["diff"]
    assert PSK not in planned["diff"]


def test_no_candidate_is_an_error_not_a_guess():
    planned = plan(fresh(candidate=""))
    assert "pkg.refresh_db" in planned["errors"][0]


@pytest.mark.parametrize("call", [
    lambda m: m.up("remote-db"), lambda m: m.down("remote-db"),
    lambda m: m.switch("remote-db"), lambda m: m.reread_secrets(), lambda m: m.nss_dir(),
    lambda m: m.check_config("/dev/null")])
def test_what_needs_pluto_says_libreswan_is_missing(call):
    with pytest.raises(CommandExecutionError, match="libreswan is not installed"):
        call(fresh())


def test_apply_without_libreswan_fails_clearly():
    module = fresh()
    ret = module.apply_conn("remote-db", "vpn_gateway:tunnel:psk", **tunnel_spec())
    assert ret["result"] is False and "libreswan is not installed" in ret["comment"]


def states(test):
    module = fresh()
    state = load("salt/_states/libreswan.py")
    state.__salt__ = {f"libreswan.{name}": getattr(module, name) for name in
                      ("installed", "nss_dir", "nss_initialized", "init_nss", "plan_conn",
                       "apply_conn", "remove_conn")}
    state.__opts__ = {"test": test}
    return state


def test_states_predict_on_a_fresh_host():
    state = states(test=True)
    assert state.__virtual__() == "libreswan"
    nss = state.nss_initialized("libreswan")
    assert (nss["result"], nss["changes"]) == (None, {"nss": "initialized"})
    conn = state.conn_present("remote-db", "vpn_gateway:tunnel:psk",
                              source="vpn_gateway:tunnel", **tunnel_spec())
    assert conn["result"] is None
    assert set(conn["changes"]) == {"diff", "psk", "loaded"}
    assert conn["changes"]["loaded"] == ["remote-db", "remote-db-backup"]
    absent = state.conn_absent("remote-db")
    assert (absent["result"], absent["changes"]) == (True, {})


def test_nss_state_without_libreswan_fails_in_a_real_run():
    nss = states(test=False).nss_initialized("libreswan")
    assert nss["result"] is False and "not installed" in nss["comment"]
