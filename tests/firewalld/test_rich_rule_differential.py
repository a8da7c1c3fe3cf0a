"""Differential test: this pack's rich rule validator (firewalld_rich's pure
helpers, which vpn_gateway.firewall_rules also uses) against firewalld's own
parser (``firewall.core.rich.Rich_Rule`` of the system's python3), over 2,000
generated rules, structured and string, valid and invalid (rich_rule_gen).

What must hold (issue 14, "validators must agree with the daemons"):

- whatever we accept, firewalld accepts the rule as we render it, and prints it
  back unchanged (what test=True promises is what firewalld takes);
- when both accept a string, firewalld's reading and ours mean the same rule;
- every other difference falls in one of the documented classes below
  (docs/firewalld.md "Where the validator differs from firewalld").
"""
import json
import random
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

import rich_rule_gen as gen

pytestmark = pytest.mark.unit

ORACLE = Path(__file__).with_name("firewalld_oracle.py")
SYSTEM_PYTHON = "/usr/bin/python3"

# We accept, firewalld refuses the string as written, and takes our normal form.
LENIENT = {
    "family left to the address": re.compile(r"MISSING_FAMILY"),
    "keywords and values in capitals": re.compile(
        r"INVALID_PROTOCOL: [^a-z]*[A-Z]|unknown element [A-Z]+$|INVALID_LOG_LEVEL: [A-Z]+$"
        r"|INVALID_LIMIT: \d+/[A-Z]$"),
}
# We refuse, firewalld accepts: elements and shapes this pack does not manage.
STRICT = {
    "unsupported element (forward-port, nflog, mark, tcp-mss-clamp)":
        re.compile(r"unknown or unsupported element"),
    "icmp-block and masquerade (no action allowed)": re.compile(r"is not supported here"),
    "a rule without an action (log or audit only)": re.compile(r"missing action"),
    "port 0": re.compile(r"out of range: ports are 1-65535"),
    "a service name /etc/services lacks for that protocol":
        re.compile(r"unknown port .* name from /etc/services"),
    "an attribute or limit given twice (firewalld keeps the last)":
        re.compile(r"given twice|'limit' must follow"),
    "a limit over 10000 per second (firewalld 2 refuses it, 1.3 not)": re.compile(r"too fast"),
}


def run_here(argv, stdin):
    """The oracle on this machine (the lab's debian13 test runs it in a host)."""
    if not Path(SYSTEM_PYTHON).exists() or subprocess.run(
            [SYSTEM_PYTHON, "-c", "import firewall.core.rich"], capture_output=True,
            check=False).returncode != 0:
        pytest.skip(f"{SYSTEM_PYTHON} has no firewall package: apt-get install firewalld")
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120,
                          check=True).stdout


def _firewalld(texts, run):
    return json.loads(run([SYSTEM_PYTHON, str(ORACLE)], json.dumps(texts)))


def _ours(fr, item):
    try:
        return True, fr._to_rule(item).render()
    except fr.RuleError as exc:
        return False, str(exc)


def _classify(classes, text):
    return next((name for name, pattern in classes.items() if pattern.search(text)), None)


def compare(fr, run):
    """One row per generated case: (kind, string given to firewalld, ours, firewalld's
    verdict on the string, firewalld's verdict on our normal form or None)."""
    cases = gen.cases()
    rnd = random.Random(0)
    strings = [item if kind == "string" else gen.to_string(item, rnd) for kind, item in cases]
    ours = [_ours(fr, item) for _, item in cases]
    renders = [text for ok, text in ours if ok]
    verdicts = _firewalld(strings + renders, run)
    raw, on_render = verdicts[:len(strings)], iter(verdicts[len(strings):])
    return [(kind, text, mine, theirs, next(on_render) if mine[0] else None)
            for (kind, _), text, mine, theirs in zip(cases, strings, ours, raw)]


def unsound(compared):
    """What we accept and firewalld refuses as we render it, or prints otherwise."""
    return [(text, mine[1], render[1]) for _, text, mine, _, render in compared
            if mine[0] and (not render[0] or render[1] != mine[1])]


def unexplained(fr, compared):
    """Differences outside the documented classes (and both accepting, another rule);
    prints the tally of the documented ones."""
    tally, found = Counter(), []
    for kind, text, mine, theirs, _ in compared:
        if mine[0] == theirs[0]:
            if mine[0] and fr._parse_rule(theirs[1]).render() != mine[1]:
                found.append(("another rule", kind, text, mine, theirs))
            continue
        name = _classify(LENIENT, theirs[1]) if mine[0] else _classify(STRICT, mine[1])
        tally[name] += 1
        if name is None:
            found.append((kind, text, mine, theirs))
    print(dict(tally))
    return found


@pytest.fixture(scope="module")
def compared(fr):
    return compare(fr, run_here)


def test_enough_cases_of_each_kind(compared):
    kinds = Counter((kind, mine[0]) for kind, _, mine, _, _ in compared)
    assert len(compared) >= 1000
    # valid and invalid rules of both forms, so neither direction is vacuous
    for key in (("string", True), ("string", False), ("structured", True),
                ("structured", False)):
        assert kinds[key] >= 100, kinds


def test_what_we_accept_firewalld_accepts_as_we_render_it(compared):
    assert unsound(compared) == []


def test_differences_are_the_documented_ones(fr, compared):
    assert unexplained(fr, compared) == []


@pytest.mark.parametrize("rule", [
    # issue 14: accepted here, refused by firewalld
    "rule accept",
    'rule family="ipv4" accept',
    "rule family=ipv4 drop limit value=3/m",
    # found by the differential test
    'rule family="ipv4" source address="198.18.0.21" accept limit value="1/d"',
    # firewalld 2.3 (Debian 13): too fast
    'rule family="ipv4" source address="198.18.0.21" accept limit value="10001/s"',
    'rule family="ipv4" source ipset="' + "x" * 33 + '" accept',
    'rule family="ipv4" source mac="00:11:22:33:44:GG" accept',
    'rule family="ipv4" source address="198.18.0.21" icmp-block name="echo-request" accept',
    'rule family="ipv4" source address="198.18.0.21" masquerade accept',
])
def test_rules_firewalld_refuses_are_refused(fr, rule):
    with pytest.raises(fr.RuleError):
        fr._parse_rule(rule)


@pytest.mark.parametrize("rule, normal", [
    ('rule priority=1 accept', 'rule priority="1" accept'),
    ('rule family=ipv4 source mac=00:11:22:AA:BB:CC accept',
     'rule family="ipv4" source mac="00:11:22:aa:bb:cc" accept'),
    ('rule family=ipv4 source address=198.18.0.21 accept limit value=2/day',
     'rule family="ipv4" source address="198.18.0.21" accept limit value="2/d"'),
    ('rule family=ipv4 source ipset=' + "x" * 32 + ' accept',
     'rule family="ipv4" source ipset="' + "x" * 32 + '" accept'),
    ('rule family=ipv4 source address=198.18.0.21 icmp-type name=echo-request drop',
     'rule family="ipv4" source address="198.18.0.21" icmp-type name="echo-request" drop'),
])
def test_rules_at_the_edges_firewalld_accepts_are_accepted(fr, rule, normal):
    assert fr._parse_rule(rule).render() == normal
