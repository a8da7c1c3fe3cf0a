"""firewalld's own rich rule parser as an oracle: run by the system's python3
(Debian's, which has the ``firewall`` package), it reads a JSON list of rule
strings on stdin and prints, for each, ``[true, str(rule)]`` or ``[false, error]``.
One process for the whole batch: importing firewall costs more than 1,000 parses."""
import json
import sys

from firewall.core.rich import Rich_Rule


def verdict(text):
    if not text.strip():  # Rich_Rule(rule_str="") parses nothing; firewall-cmd refuses it
        return [False, "FirewallError: INVALID_RULE: empty rule"]
    try:
        return [True, str(Rich_Rule(rule_str=text))]
    except Exception as exc:  # FirewallError, and the parser's own crashes
        return [False, f"{type(exc).__name__}: {exc}"]


print(json.dumps([verdict(text) for text in json.load(sys.stdin)]))
