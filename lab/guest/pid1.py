"""PID 1 of the QEMU guest (after switch_root): run one command, then power off.

Standard library only: it runs under the host's /usr/bin/python3; the
initramfs (lab/guest/initramfs-init) has mounted everything already. The host
talks to it through the "exchange" 9p share (a fresh host directory per
guest), the guest's only channel: it has no network device.

- request.json (host -> guest): {"argv": [...], "cwd": "...", "env": {...}}
- ready (guest -> host): written just before the command starts (boot done)
- stdout, stderr: the command's output, as it runs
- result.json (guest -> host): {"returncode": N} or {"error": "..."}
"""
import ctypes
import json
import os
import signal
import subprocess
import time
import traceback

EXCHANGE = "/run/vgw-exchange"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RB_POWER_OFF = 0x4321FEDC


def note(text):
    """A line on the guest's console (the host keeps it as console.log)."""
    print(f"vgw-guest [{time.clock_gettime(time.CLOCK_BOOTTIME):.2f}] {text}", flush=True)


def run(request):
    env = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb",
           **request.get("env", {})}
    with open(f"{EXCHANGE}/stdout", "wb") as out, open(f"{EXCHANGE}/stderr", "wb") as err:
        write(f"{EXCHANGE}/ready", f"{time.clock_gettime(time.CLOCK_BOOTTIME):.3f}\n")
        note(f"running {request['argv']}")
        child = subprocess.Popen(request["argv"], cwd=request.get("cwd") or "/", env=env,
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        # As PID 1 we also reap every orphan the command leaves behind.
        while True:
            pid, status = os.waitpid(-1, 0)
            if pid == child.pid:
                note(f"command exited ({os.waitstatus_to_exitcode(status)})")
                return os.waitstatus_to_exitcode(status)


def write(path, text):
    with open(path + ".tmp", "w") as handle:
        handle.write(text)
    os.rename(path + ".tmp", path)


def power_off():
    os.kill(-1, signal.SIGKILL)  # everything but PID 1: labs, daemons, stray children
    os.sync()
    note("powering off")
    ctypes.CDLL(None, use_errno=True).reboot(RB_POWER_OFF)


def main():
    try:
        with open(f"{EXCHANGE}/request.json") as handle:
            request = json.load(handle)
        result = {"returncode": run(request)}
    except Exception:  # noqa: BLE001 - whatever happened must reach the host
        result = {"error": traceback.format_exc()}
        note(result["error"])
    try:
        write(f"{EXCHANGE}/result.json", json.dumps(result))
    finally:
        power_off()


if __name__ == "__main__":
    main()
