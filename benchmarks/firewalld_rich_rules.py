"""Apply N rich rules to a zone three ways and print a table with ratios.

- ours: ``firewalld.rich_rules_managed`` (one D-Bus write per configuration)
- core: Salt core's ``firewalld.present(rich_rules=...)`` (one firewall-cmd per
  rule, permanent only, then a full --reload)
- per rule: one ``firewall-cmd`` per rule and configuration (runtime, then
  --permanent); the no-change run queries each rule the same way.

Each is timed on a first run (zone empty) and a no-change run, for each size,
in one lab host (real firewalld under systemd) with ``salt-call --local``.
Run by hand as root: ``.venv/bin/python benchmarks/firewalld_rich_rules.py
[--sizes 10,100,500]``. It takes minutes: the per-rule way at 500 rules makes
2,000 firewall-cmd calls.
"""
import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lab import DEFAULT, Lab  # noqa: E402

DBUS = "org.fedoraproject.FirewallD1"
PATH = "/org/fedoraproject/FirewallD1"
MINION = f"""\
file_client: local
root_dir: /root/bench-salt
module_dirs: [{REPO}/salt/_modules]
states_dirs: [{REPO}/salt/_states]
id: bench
"""
PER_RULE = """\
set -e
while IFS= read -r rule; do
  for p in "" --permanent; do
    if [ "$1" = query ]; then
      firewall-cmd $p --query-rich-rule="$rule" >/dev/null ||
        firewall-cmd $p --add-rich-rule="$rule" >/dev/null
    else
      firewall-cmd $p --add-rich-rule="$rule" >/dev/null
    fi
  done
done
"""


def rules(count):
    """``count`` distinct rules, written as firewalld prints them (so core's
    string compare sees them on the second run)."""
    return [f'rule family="ipv4" source address="198.18.{100 + i // 250}.{i % 250 + 1}" '
            'port port="6432" protocol="tcp" accept' for i in range(count)]


def salt_call(host, *args):
    result = host.run([f"{host.lab.venv}/bin/salt-call", "--local", "-c", "/root/bench-salt",
                       "--out=json", *args], timeout=3600)
    ret = json.loads(result.stdout)["local"]
    state = next(iter(ret.values()))
    if state["result"] is not True:
        raise RuntimeError(f"{args[:2]}: {state['comment'][:300]}")


def ours(host, texts, _):
    salt_call(host, "state.single", "firewalld.rich_rules_managed", "name=public",
              f"rules={json.dumps(texts)}")


def core(host, texts, _):
    salt_call(host, "state.single", "firewalld.present", "name=public",
              f"rich_rules={json.dumps(texts)}")


def per_rule(host, texts, second):
    host.run(["sh", "-c", PER_RULE, "per-rule", "query" if second else "add"],
             input="\n".join(texts) + "\n", timeout=7200, check=True)


def empty_zone(host):
    path = host.run(["busctl", "--json=short", "call", DBUS, f"{PATH}/config", f"{DBUS}.config",
                     "getZoneByName", "s", "public"], check=True).stdout
    path = json.loads(path)["data"][0]
    host.run(["busctl", "--timeout=600", "call", DBUS, PATH, f"{DBUS}.zone", "setZoneSettings2",
              "sa{sv}", "public", "1", "rules_str", "as", "0"], check=True, timeout=700)
    host.run(["busctl", "call", DBUS, path, f"{DBUS}.config.zone", "update2", "a{sv}", "1",
              "rules_str", "as", "0"], check=True)
    host.run(["rm", "-f", "/var/lib/vpn-gateway/firewalld-rich-rules.json"], check=True)


def timed(function, *args):
    started = time.monotonic()
    function(*args)
    return time.monotonic() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,500")
    sizes = [int(n) for n in parser.parse_args().sizes.split(",")]
    methods = {"ours": ours, "core firewalld.present": core, "firewall-cmd per rule": per_rule}
    rows = []
    with Lab(DEFAULT.subset(["vpn-gw1"]), name="vgwlab-fwbench", log=None) as lab:
        host = lab["vpn-gw1"]
        host.run(["systemctl", "start", "firewalld"], check=True)
        host.put("/root/bench-salt/minion", MINION)
        for size in sizes:
            texts = rules(size)
            for name, method in methods.items():
                empty_zone(host)
                first = timed(method, host, texts, False)
                again = timed(method, host, texts, True)
                rows.append((size, name, first, again))
                print(f"  {size:>4} {name:<24} {first:8.1f} s {again:8.1f} s", file=sys.stderr)
    base = {size: (first, again) for size, name, first, again in rows if name == "ours"}
    print(f"{'rules':>5}  {'method':<24} {'first run':>10} {'x ours':>7} {'no change':>10} "
          f"{'x ours':>7}")
    for size, name, first, again in rows:
        print(f"{size:>5}  {name:<24} {first:>9.1f}s {first / base[size][0]:>6.1f}x "
              f"{again:>9.1f}s {again / base[size][1]:>6.1f}x")


if __name__ == "__main__":
    main()
