"""The recovery benchmarks' anchor: the cron script the pack's monitoring
replaces (``*/2 * * * *``), run in a lab gateway by a systemd timer on the
minute as cron would. Every 2 minutes it checks the tunnel (an ``ipsec
status`` grep for the IKE SA, and where the kernel has ESP its ping through
the tunnel, here a TCP connection to the database's port: the lab's gateways
have no ping, and a connection is what the pooler needs); when the check fails
it runs ``ipsec down/up`` twice with 15 s waits, then ``systemctl restart
ipsec`` and its alert ("log alert" is its mail). It never fails over: it has
no backup peer.

Used by benchmarks/recovery.py (this host's kernel, IKE SA only) and
benchmarks/recovery_child_sa.py (the QEMU guest, with the check through the
tunnel).
"""
import shlex
import time

PERIOD = 120
WAITS = 2 * 15
GIVES_UP = PERIOD + WAITS + 5  # two down/up rounds, then a service restart
LOG = "/var/log/vpn-check.log"
UNIT = "vpn-check"
SCRIPT = r"""#!/bin/sh
log() { echo "$(date +%s.%N) $1" >>@LOG@; }
up() {  # Libreswan 4 names the IKE SA of a conn with rightsubnets "remote-db/0x1"
  ipsec status | grep -Eq '"remote-db(/0x[0-9]+)?"[^ ]* [^ ]+ (STATE_V2_)?ESTABLISHED_IKE_SA'@PING@
}
up && exit 0
log down
for try in 1 2; do
  ipsec down remote-db
  ipsec up remote-db
  sleep 15
  up && { log recovered; exit 0; }
done
systemctl restart ipsec
log alert
"""


def through_tunnel(address, port):
    """The script's check that traffic passes the tunnel: a TCP connection to
    ``address``:``port`` (behind the remote gateways) within 5 s."""
    return ["timeout", "5", "bash", "-c", f":</dev/tcp/{address}/{port}"]


def script(probe=None):
    """The script's text; ``probe``: (address, port) reached through the tunnel."""
    check = ""
    if probe:
        check = " &&\n  " + " ".join(shlex.quote(a) for a in through_tunnel(*probe))
    return SCRIPT.replace("@LOG@", LOG).replace("@PING@", check)


def start(gw, text):
    """Install the script in ``gw`` and start its timer (every PERIOD s, on the minute)."""
    gw.put("/usr/local/sbin/vpn-check", text, mode=0o755)
    gw.run(["systemd-run", f"--unit={UNIT}", f"--on-calendar=*:0/{PERIOD // 60}:00",
            "--timer-property=AccuracySec=1s", "/usr/local/sbin/vpn-check"], check=True)


def events(gw, t0, event):
    """Seconds from t0 to the script's first ``event`` line after it, or None."""
    text = gw.run(["cat", LOG]).stdout
    return next((float(at) - t0 for at, what in (line.split() for line in text.splitlines())
                 if what == event and float(at) >= t0), None)


def wait_idle(gw, timeout):
    """Until no run of the script is left from the last fault (the timer would start the
    next one beside it: its restart or its alert would count against the next fault)."""
    deadline = time.monotonic() + timeout
    while gw.run(["systemctl", "is-active", f"{UNIT}.service"]).stdout.strip() == "active":
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: cron: the script's last run ended")
        time.sleep(1)
