"""The ESP data-plane tests (tests/dataplane/esp) in a QEMU guest, once per
platform, when this kernel cannot install an ESP SA itself (FACTS:
CONFIG_INET_ESP is off here). The guests run in the background while the rest
of the suite runs (tests/conftest.py); this test collects each result."""
import re

import pytest

from lab import qemu

pytestmark = [pytest.mark.lab, pytest.mark.guest]


def test_esp_data_plane_in_a_qemu_guest(esp, guest_result, platform, capsys):
    if esp[0]:
        pytest.skip("this kernel has ESP: tests/dataplane/esp runs directly, not in a guest")
    result = guest_result
    output = f"{result.stdout}\n{result.stderr}"
    with capsys.disabled():
        print(f"\nguest ({platform}): booted in {result.timings['boot']:.1f}s, "
              f"tests took {result.timings['command']:.1f}s")
        durations = False  # what the in-guest tests measured, and pytest's slowest steps
        for line in result.stdout.splitlines():
            if line.startswith("="):
                durations = "slowest" in line
            elif durations or "full data path" in line or line.startswith("failback"):
                print(f"guest ({platform}): {line.strip()}")
    assert result.returncode == 0, output
    counts = qemu.pytest_outcomes(result.stdout)
    # Every test ran and passed in the guest: a skip there would mean no ESP after all,
    # save a test for other platforms only (marker platforms: pytest's empty parameter set).
    not_here = len(re.findall(r"^SKIPPED .*got empty parameter set", result.stdout, re.M))
    assert counts.get("passed", 0) >= 2 and set(counts) <= {"passed", "skipped"}, output
    assert counts.get("skipped", 0) == not_here, output
