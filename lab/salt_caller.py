"""``salt-call --local`` from one long-lived process, run inside a lab host.

Under TCG (the QEMU guest) every ``salt-call`` pays Salt's imports and the
minion's set-up (grains, pillar, loaders) again: 19-34 s each for
``test.true`` in a debian13 guest, against 0.001 s for a call on a Caller
already made (2026-11-30). This process makes ``salt.client.Caller`` (what
``salt-call`` itself runs) once and serves calls on it; lab.saltstack's
CallerSession talks to it.

One JSON line in per call, ``[function, [arg, ...]]`` with the arguments as
``salt-call`` takes them on its command line (``to=backup``); one JSON line
out, ``{"local": return}`` or ``{"error": "..."}``. The Caller is made again
when the minion config changed since it was made (a test writes minion.d),
so a call sees the config that a ``salt-call`` started then would see.
"""
import json
import os
import sys
from pathlib import Path

import salt.client
import salt.config

CONFIG = Path("/etc/salt/minion")


def config_stamp():
    paths = [CONFIG, *sorted((CONFIG.parent / "minion.d").glob("*.conf"))]
    return [(str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in paths if p.exists()]


def make_caller():
    opts = salt.config.minion_config(str(CONFIG))
    opts["file_client"] = "local"  # what salt-call --local sets
    return salt.client.Caller(mopts=opts)


def main():
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # what a function prints must not mix with the answers
    stamp, caller = None, None
    for line in sys.stdin:
        function, args = json.loads(line)
        try:
            if config_stamp() != stamp:
                stamp, caller = config_stamp(), make_caller()
            answer = {"local": caller.function(function, *args)}
        except Exception as exc:  # noqa: BLE001 -- the session raises it with the call
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        answers.write(json.dumps(answer, default=repr) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
