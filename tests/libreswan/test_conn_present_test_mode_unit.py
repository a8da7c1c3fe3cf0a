"""conn_present with test=True runs the same check of the rendered file as the
real run (addconn --checkconfig, algparse; issue 14: test=True predicted a
change the real run then refused), and touches nothing."""
import os

import pytest
from repo_modules import load

from test_apply_conn_unit import TUNNEL, FakePluto, module  # noqa: F401 (fixture)
from libreswan_helpers import tunnel_spec

pytestmark = pytest.mark.unit

COMPLAINT = "warning: unknown keyword in conn remote-db"


class RefusingCheck(FakePluto):
    """A pluto whose addconn --checkconfig complains about every file."""

    def __call__(self, *args, timeout=None):
        if args[0] == "addconn" and "--checkconfig" in args:
            self.calls.append(args)
            return {"retcode": 0, "stdout": "", "stderr": COMPLAINT + "\n", "timed_out": False}
        return super().__call__(*args, timeout=timeout)


@pytest.fixture
def state(module):  # noqa: F811 (the module fixture)
    state = load("salt/_states/libreswan.py")
    state.__salt__ = {"libreswan.plan_conn": module.plan_conn,
                      "libreswan.apply_conn": module.apply_conn}
    state.__opts__ = {"test": True}
    return state


def run(state, test):
    state.__opts__["test"] = test
    return state.conn_present(TUNNEL, "vpn_gateway:tunnel:psk",
                              **tunnel_spec(dpddelay=45))


def test_test_mode_refuses_what_the_run_refuses(module, state):  # noqa: F811
    module._ipsec = pluto = RefusingCheck(module)
    conf = module._paths(TUNNEL)[0]
    before = open(conf).read(), os.stat(conf).st_mtime_ns
    predicted = run(state, True)
    assert any("--checkconfig" in call for call in pluto.calls)
    assert predicted["result"] is False and predicted["changes"] == {}
    assert f"addconn --checkconfig: {COMPLAINT}" in predicted["comment"]
    applied = run(state, False)
    assert applied["result"] is False and applied["changes"] == {}
    assert applied["comment"] == predicted["comment"]
    assert (open(conf).read(), os.stat(conf).st_mtime_ns) == before


def test_test_mode_predicts_a_change_the_check_accepts(module, state):  # noqa: F811
    module._ipsec = FakePluto(module)
    predicted = run(state, True)
    assert predicted["result"] is None and "diff" in predicted["changes"]
    assert "dpddelay=45" in predicted["changes"]["diff"]
