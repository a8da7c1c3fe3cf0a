"""How long the QEMU guest for the ESP data plane takes; prints a table.

- boot: from starting QEMU until the guest's PID 1 starts the command (kernel,
  initramfs, 9p root), over ``--boots`` guests running ``true``;
- probe: ``python3 -m lab probe`` in a guest (command time: an ESP SA added);
- ESP tests: ``pytest tests/dataplane/esp`` in a guest (four lab hosts boot,
  the role's formulas configure vpn-gw1 masterless, ``SELECT 1`` from
  k8s-node1 through the pooler and the tunnel), boot and command time, with
  ``--esp-tests``.

Run by hand as root: ``.venv/bin/python benchmarks/dataplane.py [--boots 3]
[--esp-tests]``. The numbers depend heavily on how busy the machine's cores
are: QEMU runs in TCG mode (no KVM), so the guest competes for CPU like any
other process.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lab import qemu  # noqa: E402


def row(name, values):
    return (f"| {name:<24} | {len(values):>4} | {min(values):>7.1f} | "
            f"{statistics.median(values):>7.1f} | {max(values):>7.1f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("--esp-tests", action="store_true", help="also run tests/dataplane/esp")
    args = parser.parse_args()

    started = time.monotonic()
    kern = qemu.kernel(log=print)
    kern.initramfs()
    prepare = time.monotonic() - started
    boots, totals = [], []
    for _ in range(args.boots):
        result = qemu.run(["true"], cwd=REPO, timeout=600)
        boots.append(result.timings["boot"])
        totals.append(result.timings["total"])
    probe = qemu.run(["python3", "-m", "lab", "probe"], cwd=REPO, timeout=600)
    rows = [row("kernel + initramfs (s)", [prepare]), row("guest boot (s)", boots),
            row("guest true, total (s)", totals),
            row("probe command (s)", [probe.timings["command"]])]
    if args.esp_tests:
        esp = qemu.pytest([REPO / "tests/dataplane/esp"], "-q", timeout=1800)
        counts = qemu.pytest_outcomes(esp.stdout)
        rows += [row("ESP tests boot (s)", [esp.timings["boot"]]),
                 row(f"ESP tests {counts} (s)", [esp.timings["command"]])]
    print(f"\nkernel {kern.version}; ESP in the guest: {probe.stdout.strip()}\n")
    print("| measure                  | runs |     min |  median |     max |")
    print("| ------------------------ | ---- | ------- | ------- | ------- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
