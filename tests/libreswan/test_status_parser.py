"""_parse_status on real outputs of Libreswan 4.10 (captured here), 4.12 and 5.x
(public sources, see tests/fixtures/libreswan/README.md)."""
import pytest

pytestmark = pytest.mark.unit


def test_4_10_ike_up_child_refused(libreswan, fixture_text):
    parsed = libreswan._parse_status(fixture_text("4.10-child-ts-unacceptable.status"), "")
    conn = parsed["conns"]["db-primary"]
    assert conn["template"] is True
    assert conn["instances"] == ['"db-primary/0x3"[1]']
    assert conn["subconns"] == ["db-primary/0x1", "db-primary/0x2", "db-primary/0x3"]
    assert conn["local"] == {"address": "198.18.0.11", "id": "@vpn-gw1",
                             "subnets": ["198.19.10.1/32"]}
    assert conn["remote"]["address"] == "198.18.0.21"
    assert conn["remote"]["id"] == "@remote-gw-primary"
    assert conn["remote"]["subnets"] == ["198.19.1.10/32", "198.19.1.11/32", "198.19.1.12/32"]
    assert conn["ike_sa"]["serial"] == 4
    assert conn["ike_sa"]["state"] == "STATE_V2_ESTABLISHED_IKE_SA"
    assert conn["ike_sa"]["age"] == 3600 - 3587  # "REPLACE in 3587s" of ike_life 3600s
    assert conn["ike_established"] is True
    assert conn["child_sas"] == []
    assert conn["up"] is False
    assert conn["reason"] == "IKE SA established, no Child SA"
    assert (conn["state"], conn["partial"]) == ("down", False)
    assert conn["subnets_missing"] == ["198.19.1.10/32", "198.19.1.11/32", "198.19.1.12/32"]
    assert parsed["summary"] == {"conns_loaded": 1, "tunnels": 1, "up": 0, "partial": 0,
                                 "down": 1}


def test_4_10_backup_is_loaded_and_idle(libreswan, fixture_text):
    parsed = libreswan._parse_status(fixture_text("4.10-primary-up-backup-added.status"))
    backup = parsed["conns"]["db-backup"]
    assert backup["loaded"] and backup["ike_sa"] is None and backup["reason"] == "no IKE SA"
    assert backup["remote"]["address"] == "198.18.0.22"
    assert parsed["conns"]["db-primary"]["ike_established"] is True


def test_4_10_psk_mismatch_has_no_state_and_the_log_says_why(libreswan, fixture_text):
    parsed = libreswan._parse_status(fixture_text("4.10-psk-mismatch.status"))
    assert parsed["conns"]["db-primary"]["ike_sa"] is None
    log = fixture_text("4.10-psk-mismatch.pluto.log").splitlines()
    reason = libreswan._failure_reason(log, "db-primary")
    assert "AUTHENTICATION_FAILED" in reason
    assert reason.startswith('"db-primary/0x3"[2]')
    assert libreswan._failure_reason(log, "db-primary-other") is None


def test_failure_reason_is_the_latest_failure(libreswan, fixture_text):
    log = fixture_text("4.10-responder.pluto.log").splitlines()
    no_esp = log[:log.index(next(line for line in log if line == "forgetting secrets"))]
    assert "TS_UNACCEPTABLE" in libreswan._failure_reason(no_esp, "gw1")
    assert "AUTHENTICATION_FAILED" in libreswan._failure_reason(log, "gw1")


def test_4_12_child_established_with_traffic_lines_ignored(libreswan, fixture_text):
    parsed = libreswan._parse_status(fixture_text("4.12-child-established.status"))
    conn = parsed["conns"]["vpc1-vpc2"]
    assert conn["template"] is False
    assert conn["local"] == {"address": "10.88.100.246", "id": "99.79.175.155",
                             "subnets": ["10.88.0.0/16"]}
    # No [id] after the address: pluto uses the address as the id.
    assert conn["remote"] == {"address": "3.85.251.173", "id": "3.85.251.173",
                              "subnets": ["10.2.0.0/16"]}
    assert conn["ike_sa"]["age"] == 28800 - 28250
    [child] = conn["child_sas"]
    assert (child["serial"], child["ike_sa"], child["established"]) == (3, 2, True)
    assert conn["up"] is True and conn["reason"] is None
    assert parsed["tunnels"]["vpc1-vpc2"]["active"] == "primary"
    assert parsed["summary"]["up"] == 1


def test_5_x_connection_and_traffic_without_prefixes(libreswan, fixture_text):
    parsed = libreswan._parse_status(fixture_text("5.x-west-tcp.status"),
                                     fixture_text("5.x-west-tcp.trafficstatus"),
                                     now=1234567890 + 42)
    conn = parsed["conns"]["west"]
    assert conn["local"] == {"address": "192.1.2.45", "id": "@west", "subnets": ["192.0.1.0/24"]}
    assert conn["remote"] == {"address": "192.1.2.23", "id": "@east", "subnets": ["192.0.2.0/24"]}
    assert (conn["ike_life"], conn["ipsec_life"]) == (28800, 60)
    assert (conn["in_bytes"], conn["out_bytes"]) == (168, 168)


def test_5_3_states_without_state_v2_prefix(libreswan, fixture_text):
    parsed = libreswan._parse_status(fixture_text("5.3-showstates.status"))
    conn = parsed["conns"]["55d87b5d-969e-4363-a2ac-1c60e80ab6b9"]
    assert conn["ike_sa"]["serial"] == 6 and conn["ike_sa"]["state"] == "ESTABLISHED_IKE_SA"
    assert [c["serial"] for c in conn["child_sas"]] == [5]
    assert conn["up"] is True


def test_traffic_counts_attach_to_child_sas(libreswan, fixture_text):
    status = fixture_text("4.12-child-established.status")
    traffic = ('006 #3: "vpc1-vpc2", type=ESP, add_time=1700000000, inBytes=8192, '
               "outBytes=4096, maxBytes=2^63B, id='3.85.251.173'")
    conn = libreswan._parse_status(status, traffic, now=1700000100)["conns"]["vpc1-vpc2"]
    assert conn["child_sas"][0]["in_bytes"] == 8192 and conn["child_sas"][0]["age"] == 100
    assert (conn["in_bytes"], conn["out_bytes"]) == (8192, 4096)


def test_tunnel_pairs_primary_and_backup(libreswan, fixture_text):
    # The backup conn of a tunnel NAME is NAME-backup; rename the captured pair.
    text = fixture_text("4.10-primary-up-backup-added.status")
    text = text.replace('"db-primary', '"db').replace('"db-backup', '"db-backup')
    parsed = libreswan._parse_status(text)
    assert parsed["tunnels"] == {"db": {
        "primary": "db", "backup": "db-backup", "active": "primary", "up": False,
        "state": "down", "missing": ["198.19.1.10/32", "198.19.1.11/32", "198.19.1.12/32"]}}
    swapped = text.replace('"db/', '"db-tmp/').replace('"db-backup/', '"db/').replace(
        '"db-tmp/', '"db-backup/')
    assert libreswan._parse_status(swapped)["tunnels"]["db"]["active"] == "backup"


def test_version(libreswan):
    assert libreswan._parse_version("Libreswan 4.10\n")["major"] == 4
    assert libreswan._parse_version("Libreswan U5.1/K6.1.0-13-amd64")["version"] == "5.1"
    assert libreswan._parse_version("strongSwan 5.9") is None


# -- Libreswan 5.2, captured in the debian13 lab (tests/fixtures/libreswan/README.md) --------
def test_5_2_real_status_one_conn_line_per_selector(libreswan, fixture_text):
    """5.2 prints the connection line once per remote selector, without ``000 ``
    and without ``/0xN`` sub-conns: a 4.x-only parser (first line, prefixes)
    would see one remote subnet or none."""
    text = fixture_text("5.2-ike-up-child-pending.status")
    assert text and not any(line.startswith("000 ") for line in text.splitlines())
    parsed = libreswan._parse_status(text, "")
    conn = parsed["conns"]["remote-db"]
    assert conn["subconns"] == [] and conn["template"] is True
    assert conn["instances"] == ['"remote-db"[1]']
    assert conn["local"] == {"address": "198.18.0.11", "id": "@vpn-gw1",
                             "subnets": ["198.19.10.1/32"]}
    assert conn["remote"] == {"address": "198.18.0.21", "id": "@remote-gw-primary",
                              "subnets": ["198.19.1.10/32", "198.19.1.11/32", "198.19.1.12/32"]}
    assert (conn["ike_life"], conn["ipsec_life"]) == (3600, 3600)
    assert conn["ike_sa"]["state"] == "ESTABLISHED_IKE_SA" and conn["ike_sa"]["serial"] == 1
    assert conn["ike_sa"]["age"] == 3600 - 3557
    [child] = conn["child_sas"]
    # 5.2's Child SA line names no parent: the conn's IKE SA is its parent.
    assert (child["serial"], child["state"], child["ike_sa"]) == (2, "NEW_CHILD_I1", 1)
    assert conn["ike_established"] and not conn["up"]
    assert conn["reason"].startswith("Child SA #2 in NEW_CHILD_I1")
    backup = parsed["conns"]["remote-db-backup"]
    assert backup["remote"]["subnets"] == conn["remote"]["subnets"]
    assert backup["ike_sa"] is None and backup["reason"] == "no IKE SA"
    assert parsed["tunnels"]["remote-db"]["active"] == "primary"
    assert parsed["summary"] == {"conns_loaded": 2, "tunnels": 1, "up": 0, "partial": 0,
                                 "down": 1}


def test_5_2_showstates_alone(libreswan, fixture_text):
    parsed = libreswan._parse_status(fixture_text("5.2-ike-up-child-pending.showstates"))
    conn = parsed["conns"]["remote-db"]
    assert conn["ike_sa"]["serial"] == 1 and conn["ike_established"]
    assert [c["serial"] for c in conn["child_sas"]] == [2]


@pytest.mark.parametrize("version", ["4.10", "5.2"])
def test_algparse_output(libreswan, fixture_text, version):
    blocks = fixture_text(f"{version}-algparse.txt").split("algparse -v2 ")[1:]
    parsed = [libreswan._parse_algparse("algparse -v2 " + block) for block in blocks]
    assert "key length 999 invalid" in parsed[0]["errors"][0]
    assert parsed[1]["errors"] == ["IKE DH algorithm 'modp1024' is not supported"]
    assert parsed[2] == {"proposals": ["AES_CBC_256-HMAC_SHA1-MODP2048"], "errors": []}
    assert parsed[3] == {"proposals": ["AES_CBC_256-HMAC_SHA1_96"], "errors": []}


@pytest.mark.parametrize("version", ["4.10", "5.2"])
def test_configsetup_names_the_nss_directory(libreswan, fixture_text, version):
    setup = libreswan._parse_configsetup(fixture_text(f"{version}-configsetup.txt"))
    assert setup["nssdir"] == "/var/lib/ipsec/nss"
    assert setup["ipsecdir"] == "/etc/ipsec.d"


@pytest.mark.parametrize("text, expected", [
    ("5.2-2.2", (5, 2)), ("4.10-2+deb12u1", (4, 10)), ("1:4.10-2", (4, 10)),
    ("5.2-6.el10", (5, 2)), ("4.15.1-1", (4, 15)), ("", None), ("latest", None)])
def test_package_version(libreswan, text, expected):
    info = libreswan._parse_package_version(text)
    assert (info and (info["major"], info["minor"])) == expected


# -- up means every declared subnet is carried: up, partial, down ----------------------------
# The *-derived-* fixtures are the captured 4.10 and 5.2 outputs with established
# Child SAs written in (this kernel has no ESP; README.md says what was edited).
DB = ["198.19.1.10/32", "198.19.1.11/32", "198.19.1.12/32"]
COVERAGE = {
    # fixture, conn: state, covered, missing
    "4.10-derived-child-all.status": ("db-primary", "up", DB, []),
    "4.10-derived-child-partial.status": ("db-primary", "partial", DB[::2], DB[1:2]),
    "4.10-child-ts-unacceptable.status": ("db-primary", "down", [], DB),
    "5.2-derived-child-all.status": ("remote-db", "up", DB, []),
    "5.2-derived-child-partial.status": ("remote-db", "partial", DB[::2], DB[1:2]),
    "5.2-ike-up-child-pending.status": ("remote-db", "down", [], DB),
}


@pytest.mark.parametrize("fixture", list(COVERAGE))
def test_up_only_when_every_declared_subnet_has_a_child_sa(libreswan, fixture_text, fixture):
    name, state, covered, missing = COVERAGE[fixture]
    parsed = libreswan._parse_status(fixture_text(fixture))
    conn = parsed["conns"][name]
    assert conn["ike_established"]
    assert conn["remote"]["subnets"] == DB  # declared: the conn's own lines
    assert (conn["state"], conn["subnets_covered"], conn["subnets_missing"]) == \
        (state, covered, missing)
    assert conn["up"] is (state == "up") and conn["partial"] is (state == "partial")
    assert conn["child_established"] is (state != "down")
    tunnel = parsed["tunnels"][name]
    assert (tunnel["state"], tunnel["up"], tunnel["missing"]) == (state, state == "up", missing)
    assert parsed["summary"][state] == 1
    assert sum(parsed["summary"][s] for s in ("up", "partial", "down")) == 1
    if state == "up":
        assert conn["reason"] is None
    elif state == "partial":
        assert conn["reason"] == ("partial: Child SAs carry 2 of 3 remote subnets; missing "
                                  "198.19.1.11/32")


def test_4_x_child_sa_of_a_plain_sub_conn_carries_its_own_selectors(libreswan, fixture_text):
    """narrowing=no: no instance, the Child SA's line names the sub-conn itself."""
    text = fixture_text("4.10-derived-child-partial.status")
    plain = "\n".join(line.replace('"[1] 198.18.0.21:500 STATE_V2_ESTABLISHED_CHILD',
                                   '" 198.18.0.21:500 STATE_V2_ESTABLISHED_CHILD')
                      for line in text.splitlines())
    conn = libreswan._parse_status(plain)["conns"]["db-primary"]
    assert conn["state"] == "partial" and conn["subnets_missing"] == ["198.19.1.11/32"]


def test_a_narrowed_selector_does_not_cover_the_declared_network(libreswan):
    declared = [("198.19.10.1/32", "198.19.1.0/24"), ("198.19.10.1/32", "198.19.2.10/32")]
    narrowed = [("198.19.10.1/32", "198.19.1.10/32"), ("198.19.10.0/24", "198.19.2.0/24")]
    assert libreswan._coverage(declared, narrowed) == (["198.19.2.10/32"], ["198.19.1.0/24"])
    # The local side counts too: a Child SA for another local address covers nothing.
    assert libreswan._coverage(declared, [("198.19.10.2/32", "0.0.0.0/0")]) == \
        ([], ["198.19.1.0/24", "198.19.2.10/32"])
    assert libreswan._coverage([], []) == ([], [])
