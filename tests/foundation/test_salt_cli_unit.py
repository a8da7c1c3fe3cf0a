"""The lab's side of the master's command line: lab/salt_cli.py's child handling and
lab.saltstack's reading of ``salt --out=json`` (one JSON document per minion's return,
as Salt prints it without ``--static``)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab.saltstack import minion_returns

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_each_minions_document_is_merged_and_one_that_did_not_return_is_left_out():
    printed = ('{\n    "vpn-gw1": {"state": "up"}\n}\n{"vpn-gw2": true}\n'
               '{"vpn-gw3": "Minion did not return. [Not connected]"}\n')
    assert minion_returns(printed) == {"vpn-gw1": {"state": "up"}, "vpn-gw2": True}
    assert minion_returns('"The salt master could not be contacted. Is master running?"\n') == {}
    assert minion_returns("") == {}
    with pytest.raises(json.JSONDecodeError):
        minion_returns('{"vpn-gw1": tr')


def test_the_served_child_gives_its_exit_code_and_is_killed_at_its_timeout(tmp_path):
    """salt_cli.serve forks and waits on the child's pidfd: its code, or -9 at the timeout
    with the whole group killed (the child runs ``sleep`` in a group of its own)."""
    script = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(REPO / 'lab')!r})\n"
        "import salt_cli\n"
        "salt_cli.PROGRAMS['salt'] = lambda: sys.exit(int(sys.argv[1]))\n"
        "salt_cli.PROGRAMS['salt-run'] = lambda: __import__('os').system('sleep 30')\n"
        "print(salt_cli.serve({'argv': ['salt', '3'], 'timeout': 10})['returncode'])\n"
        "start = time.monotonic()\n"
        "answer = salt_cli.serve({'argv': ['salt-run'], 'timeout': 0.5})\n"
        "print(answer['returncode'], time.monotonic() - start < 10, answer['stderr'].strip())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=60, check=True)
    assert proc.stdout.splitlines() == ["3", "-9 True salt-run: killed after 0.5s"]
