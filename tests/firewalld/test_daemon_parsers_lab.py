"""The validators against the daemons' own parsers of Debian 13 (firewalld 2.3,
Libreswan 5.2, PostgreSQL 17's SCRAM verifiers): the differential tests of
test_rich_rule_differential.py, tests/libreswan/test_algorithm_differential.py and
tests/pgbouncer/test_saslprep_postgres.py (which use this machine's firewalld 1.3,
Libreswan 4.10 and PostgreSQL 15), with the oracle run in one lab host of the
provisioned debian13 image: no master, no Salt, seconds in all."""
import sys

import pytest
from repo_modules import REPO, load

sys.path.insert(0, str(REPO / "tests" / "libreswan"))  # algorithm_gen, for the module below
FIREWALLD = load("tests/firewalld/test_rich_rule_differential.py")
ALGORITHMS = load("tests/libreswan/test_algorithm_differential.py")
SASLPREP = load("tests/pgbouncer/test_saslprep_postgres.py")

pytestmark = [pytest.mark.lab, pytest.mark.platforms("debian13")]
HOST = "remote-gw-primary"  # a provisioned image: firewalld and libreswan installed


@pytest.fixture(scope="module")
def host(lab_factory):
    return lab_factory([HOST])[HOST]


def test_the_host_has_the_debian13_parsers(host):
    assert host.run(["ipsec", "--version"], check=True).stdout.split()[1].startswith("5.")
    assert host.run(["dpkg-query", "-W", "-f", "${Version}", "python3-firewall"],
                    check=True).stdout.startswith("2.")


def test_rich_rules_against_firewalld_2(fr, host):
    def run(argv, stdin):
        return host.run(argv, input=stdin, timeout=120, check=True).stdout

    compared = FIREWALLD.compare(fr, run)
    assert len(compared) >= 1000
    assert FIREWALLD.unsound(compared) == []
    assert FIREWALLD.unexplained(fr, compared) == []


def test_algorithm_lists_against_libreswan_5(host):
    def run(argv):
        result = host.run(argv, timeout=60)
        return result.stdout + result.stderr

    compared = ALGORITHMS.compare(load("salt/_modules/libreswan.py"), run)
    assert len(compared) >= 500
    assert ALGORITHMS.disagreements(compared) == []


def test_scram_verifiers_against_postgresql_17(host):
    """tests/pgbouncer/test_saslprep_postgres.py's passwords in a scratch cluster of the
    host's PostgreSQL 17 (Unicode 15.1 tables) against _scram_verifier here."""
    def run(argv, stdin):
        return host.run(argv, input=stdin, timeout=300, check=True).stdout

    version, stored = SASLPREP.postgres_verifiers(run, host.lab.venv / "bin" / "python",
                                                  SASLPREP.batch())
    assert version.startswith("17"), version
    assert len(stored) >= 220
    assert SASLPREP.disagreements(stored) == []
