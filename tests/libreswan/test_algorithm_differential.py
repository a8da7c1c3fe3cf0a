"""Differential test: the pack's ike=/phase2alg= validator (libreswan._algorithms,
which _validate and check_config use) against Libreswan's own parser,
``ipsec algparse -v2 -pfs``, over 700 generated lists (algorithm_gen), valid and
invalid, in one algparse call. Issue 14: 0 disagreements.

allow_weak=True here: without it the validator also refuses md5, 3des and
null, which algparse accepts (the pack's policy, test_validate_render)."""
import shutil
import subprocess
from collections import Counter

import pytest

import algorithm_gen as gen

pytestmark = pytest.mark.unit

HEADER = "algparse -v2 -pfs "


def run_here(argv):
    if not shutil.which("ipsec"):
        pytest.skip("no ipsec command on this machine: apt-get install libreswan")
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    return result.stdout + result.stderr


def algparse(args, run):
    """[(accepted, output lines)] for each ``kind=list`` argument, one algparse run."""
    blocks = []
    for line in run(["ipsec", "algparse", "-v2", "-pfs", *args]).splitlines():
        if line.startswith(HEADER):
            blocks.append([])
        elif blocks:
            blocks[-1].append(line.strip())
    assert len(blocks) == len(args), "algparse printed one block per argument"
    return [(not any(line.startswith("ERROR") for line in block), block) for block in blocks]


def verdict(libreswan, kind, text):
    errors = []
    libreswan._algorithms(text, "phase2alg" if kind == "esp" else "ike", True, errors,
                          kind=kind)
    return not errors, errors


def compare(libreswan, run):
    cases = gen.cases()
    theirs = algparse([f"{kind}={text}" for kind, text in cases], run)
    return [(kind, text, verdict(libreswan, kind, text), found)
            for (kind, text), found in zip(cases, theirs)]


def disagreements(compared):
    return [(kind, text, ours, found) for kind, text, ours, found in compared
            if ours[0] != found[0]]


@pytest.fixture(scope="module")
def compared(libreswan):
    return compare(libreswan, run_here)


def test_enough_cases_of_each_kind(compared):
    tally = Counter((kind, found[0]) for kind, _, _, found in compared)
    assert len(compared) >= 500
    for key in (("ike", True), ("ike", False), ("esp", True), ("esp", False)):
        assert tally[key] >= 40, tally


def test_we_agree_with_algparse(compared):
    assert disagreements(compared) == []


@pytest.mark.parametrize("kind, text", [
    # issue 14: accepted here, refused by algparse
    ("esp", "aes_gcm128-sha1"),
    ("esp", "aes_ccm_8-sha1"),
    ("ike", "aes_ccm_8-sha1;modp2048"),
    # found by the differential test
    ("ike", "aes-sha2-modp2048-dh19"),
    ("ike", "aes+aes_gcm-sha2"),
    ("esp", "aes-none"),
    ("esp", "aes-sha1-none,aes-sha2"),
    ("esp", "aes-sha1-dh14,aes-sha2-dh19"),
    ("ike", "aes-sha2;none"),
    ("ike", "aes256-sha1;modp1024"),
    ("esp", "aes-sha2,"),
])
def test_lists_algparse_refuses_are_refused(libreswan, kind, text):
    assert not verdict(libreswan, kind, text)[0]


@pytest.mark.parametrize("kind, text", [
    ("esp", "aes_gcm128"), ("esp", "aes_gcm128-none"), ("esp", "aes_ccm_8"),
    ("ike", "aes_gcm-none-sha2-modp2048"), ("ike", "aes256-sha2_256;modp2048"),
    ("esp", "aes-sha1-dh14+dh19"), ("esp", "aes-sha1-modp2048,aes_gcm;dh14"),
    ("esp", "aes-sha1+none"), ("ike", "AES256-SHA2_256-MODP2048"),
])
def test_lists_algparse_accepts_are_accepted(libreswan, kind, text):
    assert verdict(libreswan, kind, text) == (True, [])
