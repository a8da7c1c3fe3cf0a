"""Command line: python -m lab {up,clean,leftovers,probe,demo,guest,images}.

``up`` starts hosts and keeps them until Ctrl-C (or ``--detach``);
``clean`` removes everything of a lab (default: every lab on this machine);
``images`` builds the hosts' root filesystems that are missing or stale.
"""
import argparse
import signal
import subprocess
import sys

from . import capabilities, images, topology
from .lab import HOST_PATH, PREFIX, Lab, clean, leftovers, running_pid


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lab")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start lab hosts and keep them until Ctrl-C")
    up.add_argument("hosts", nargs="*", help=f"a subset of {topology.DEFAULT.names()}")
    up.add_argument("--name", help=f"lab name, {PREFIX}-<tag> (default {PREFIX}-demo)")
    up.add_argument("--detach", action="store_true", help="leave the hosts running and return")
    up.add_argument("--platform", choices=sorted(images.PLATFORMS), default=None,
                    help=f"the hosts' Debian (default {images.DEFAULT_PLATFORM})")
    build = sub.add_parser("images", help="build the lab's images (mmdebstrap) that are "
                           "missing or stale")
    build.add_argument("platforms", nargs="*", choices=[[], *sorted(images.PLATFORMS)],
                       help="default: all")
    build.add_argument("--rebuild", action="store_true", help="build even when cached")
    for verb in ("clean", "leftovers"):
        p = sub.add_parser(verb, help=f"{verb} a lab (default: every lab)")
        p.add_argument("name", nargs="?", default=PREFIX)
    run = sub.add_parser("run", help="run a command in a host of a running lab "
                         "(python -m lab run vgwlab-demo vpn-gw1 -- salt-call libreswan.status)")
    run.add_argument("name")
    run.add_argument("host")
    run.add_argument("host_argv", nargs=argparse.REMAINDER, metavar="-- CMD...")
    sub.add_parser("probe", help="can this kernel install an ESP SA?")
    demo = sub.add_parser("demo", help="README command 1: the gateway role on the whole lab")
    demo.add_argument("--keep", action="store_true", help="leave the lab running afterwards")
    demo.add_argument("--platform", choices=sorted(images.PLATFORMS), default=None,
                      help=f"the hosts' Debian (default {images.DEFAULT_PLATFORM})")
    guest = sub.add_parser("guest", help="run a command in a fresh QEMU guest with ESP "
                           "(python -m lab guest -- python3 -m lab probe)")
    guest.add_argument("--timeout", type=float, default=1800, help="seconds (default 1800)")
    guest.add_argument("guest_argv", nargs=argparse.REMAINDER, metavar="-- CMD...")
    args = parser.parse_args(argv)

    if args.command == "up":
        topo = topology.DEFAULT.subset(args.hosts) if args.hosts else topology.DEFAULT
        lab = Lab(topo, name=args.name, platform=args.platform).start()
        if args.detach:
            print(f"lab: {lab.name} left running; stop it with: python -m lab clean {lab.name}")
            return 0
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        # Started in the background by a non-interactive shell, SIGINT arrives ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            print("lab: running; Ctrl-C tears it down")
            signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            lab.stop()
    elif args.command == "clean":
        clean(args.name)
        if args.name == PREFIX:
            from . import qemu

            for orphan in qemu.orphaned_exchanges():
                qemu.remove_exchange(orphan)
        print("\n".join(_leftovers(args.name)) or "lab: nothing left")
    elif args.command == "run":
        command = args.host_argv[1:] if args.host_argv[:1] == ["--"] else args.host_argv
        argv = ["nsenter", "-t", str(running_pid(args.name, args.host)), "-a", "--wdns=/", "--",
                "/usr/bin/env", "-i", f"PATH={HOST_PATH}", "LANG=C.UTF-8", "HOME=/root",
                *(command or ["/bin/bash", "-l"])]
        return subprocess.call(argv)
    elif args.command == "leftovers":
        left = _leftovers(args.name)
        print("\n".join(left) or "lab: nothing left")
        return 1 if left else 0
    elif args.command == "demo":
        from . import demo as demo_job

        demo_job.run(keep=args.keep, platform=args.platform)
    elif args.command == "images":
        for platform in args.platforms or sorted(images.PLATFORMS):
            for kind, path in images.ensure(platform, rebuild=args.rebuild).items():
                print(f"{platform} {kind}: {path}")
    elif args.command == "guest":
        from . import qemu

        command = args.guest_argv[1:] if args.guest_argv[:1] == ["--"] else args.guest_argv
        if not command:
            parser.error("guest: give a command after --")
        try:
            result = qemu.run(command, timeout=args.timeout, stream=True, log=print)
        except qemu.GuestError as exc:
            print(exc, file=sys.stderr)
            return 125  # as env(1) and timeout(1): the command could not be run
        print(f"guest: booted in {result.timings['boot']:.1f}s, command took "
              f"{result.timings['command']:.1f}s, exit {result.returncode}", file=sys.stderr)
        return result.returncode
    elif args.command == "probe":
        ok, reason = capabilities.esp_support()
        print(("ESP: yes — " if ok else "ESP: no — ") + reason)
        return 0 if ok else 1
    return 0


def _leftovers(name):
    """The lab's leftovers; for every lab (the bare prefix) also the exchange dirs of
    guest runs that were killed."""
    left = leftovers(name)
    if name == PREFIX:
        from . import qemu

        left += [f"dir {orphan}" for orphan in qemu.orphaned_exchanges()]
    return left


if __name__ == "__main__":
    sys.exit(main())
