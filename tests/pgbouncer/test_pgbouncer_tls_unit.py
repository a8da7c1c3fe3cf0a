"""TLS on both legs (issue 15): the checks pgbouncer.tls_present runs before it writes
PgBouncer's certificate, key and the database's CA (key matches certificate, the Service's
names, validity, chain to the pods' CA, CA certificates only), the files' modes, owner and
atomic write, test=True predicting the real run exactly, and no key text in any change,
comment or error. Also: the example pillar's TLS material fits the lab (the Service's names,
the database CA lab/postgres.py issues remote-db's certificate with)."""
import datetime
import json

import jinja2
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from repo_modules import REPO, load

from lab import pillar_gpg, postgres

pytestmark = pytest.mark.unit

NAMES = ["postgres.databases.svc", "postgres.databases.svc.cluster.local"]
NOW = datetime.datetime(2026, 11, 30, tzinfo=datetime.timezone.utc)


def ca(name="unit CA"):
    key = ec.generate_private_key(ec.SECP256R1())
    return key, postgres.issue(name, key, ca=True, serial=1)


def leaf(issuer, names=NAMES, key=None):
    issuer_key, issuer_cert = issuer
    key = key or ec.generate_private_key(ec.SECP256R1())
    cert = postgres.issue(names[0] if names else "x", key, issuer_key,
                          issuer_cert.subject.rfc4514_string()[3:], dns_names=names)
    return key, cert


@pytest.fixture(scope="module")
def material():
    root = ca()
    key, cert = leaf(root)
    return {"root": root, "key": key, "cert": cert, "cert_pem": postgres.pem(cert),
            "key_pem": postgres.pem(key), "ca_pem": postgres.pem(root[1])}


@pytest.fixture
def pgb():
    module = load("salt/_modules/pgbouncer.py")
    module.__salt__ = {"config.get": lambda key, default=None: default}
    module.__opts__ = {"test": False}
    return module


def check(pgb, material, **changed):
    args = {"cert": material["cert_pem"], "key": material["key_pem"],
            "ca": material["ca_pem"], "dns_names": NAMES, "now": NOW, **changed}
    return pgb._check_client_tls(**args)


def refused(pgb, material, **changed):
    with pytest.raises(pgb.SaltInvocationError) as caught:
        check(pgb, material, **changed)
    message = str(caught.value)
    assert "PRIVATE KEY" not in message and material["key_pem"].splitlines()[1] not in message
    return message


def test_a_certificate_for_the_service_names_with_its_key_and_ca_passes(pgb, material):
    described = check(pgb, material)
    assert described["cert"].startswith("certificate CN=postgres.databases.svc until 2126-01-01")
    assert described["key"].startswith("EC secp256r1 private key of public key sha256 ")
    assert material["key_pem"].splitlines()[1] not in json.dumps(described)
    # A wildcard for the namespace covers both names' leftmost label only.
    key, cert = leaf(material["root"], names=["*.databases.svc", "*.databases.svc.cluster.local"])
    assert check(pgb, material, cert=postgres.pem(cert), key=postgres.pem(key))
    key, cert = leaf(material["root"], names=["*.svc", "*.svc.cluster.local"])
    assert "does not name postgres.databases.svc, postgres.databases.svc.cluster.local" in \
        refused(pgb, material, cert=postgres.pem(cert), key=postgres.pem(key))


def test_a_key_of_another_certificate_is_refused(pgb, material):
    other = postgres.pem(ec.generate_private_key(ec.SECP256R1()))
    assert refused(pgb, material, key=other).startswith(
        "tls:client:key: is not the key of the certificate in cert (certificate "
        "CN=postgres.databases.svc")


def test_a_certificate_without_a_service_name_is_refused(pgb, material):
    key, cert = leaf(material["root"], names=["postgres.databases.svc"])
    assert refused(pgb, material, cert=postgres.pem(cert), key=postgres.pem(key)).startswith(
        "tls:client:cert: does not name postgres.databases.svc.cluster.local in its "
        "subjectAltName (it names postgres.databases.svc)")


def test_expired_and_not_yet_valid_certificates_are_refused(pgb, material):
    assert "is valid only from 2026-01-01 00:00 to 2126-01-01 00:00 UTC; renew it" in refused(
        pgb, material, now=datetime.datetime(2127, 1, 1, tzinfo=datetime.timezone.utc))
    assert refused(pgb, material, now=datetime.datetime(
        2025, 1, 1, tzinfo=datetime.timezone.utc)).startswith("tls:client:cert: ")


def test_a_certificate_from_another_ca_is_refused(pgb, material):
    other = postgres.pem(ca("unit CA")[1])  # same name, another key: the signature decides
    assert refused(pgb, material, ca=other).startswith(
        "tls:client:cert: does not chain to tls:client:ca (CN=unit CA did not sign "
        "CN=postgres.databases.svc)")
    # Without a CA in pillar the chain is not checked (the rest still is).
    assert check(pgb, material, ca=None)


def test_an_intermediate_chain_in_order_passes_out_of_order_is_refused(pgb, material):
    inter_key = ec.generate_private_key(ec.SECP256R1())
    root_key, root = material["root"]
    inter = postgres.issue("unit intermediate", inter_key, root_key, "unit CA", ca=True)
    key, cert = leaf((inter_key, inter))
    chain = postgres.pem(cert) + postgres.pem(inter)
    assert check(pgb, material, cert=chain, key=postgres.pem(key))
    assert "is not issued by the next certificate" in refused(
        pgb, material, cert=postgres.pem(cert) + postgres.pem(root), key=postgres.pem(key))
    assert "does not chain to tls:client:ca" in refused(
        pgb, material, cert=postgres.pem(cert), key=postgres.pem(key))


def test_unreadable_encrypted_weak_and_misplaced_keys_are_refused(pgb, material):
    encrypted = material["key"].private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")).decode()
    assert "is encrypted with a passphrase" in refused(pgb, material, key=encrypted)
    broken = material["key_pem"].replace(material["key_pem"].splitlines()[1], "AAAA")
    assert refused(pgb, material, key=broken) == (
        "tls:client:key: cannot be read as a PEM private key; give an RSA or EC key as PEM "
        "(not shown)")
    weak = rsa.generate_private_key(65537, 1024)
    assert "1024-bit RSA key" in refused(pgb, material, key=postgres.pem(weak))
    assert refused(pgb, material, key=None).startswith("tls:client:key: is not a PEM private key")
    # A key pasted into cert would land in a world-readable file: refused.
    assert refused(pgb, material, cert=material["cert_pem"] + material["key_pem"]).startswith(
        "tls:client:cert: holds a private key")
    assert refused(pgb, material, cert="not a certificate").startswith(
        "tls:client:cert: is not PEM certificate text")


def test_the_server_ca_must_be_ca_certificates_when_verifying(pgb, material):
    assert pgb.check_server_ca(material["ca_pem"], now=NOW).startswith("certificate CN=unit CA")
    with pytest.raises(pgb.SaltInvocationError, match=r"^tls:server:ca: CN=postgres\.databases"
                       r"\.svc is not a CA certificate"):
        pgb.check_server_ca(material["cert_pem"], now=NOW)
    for mode in ("verify-full", "verify-ca"):
        with pytest.raises(pgb.SaltInvocationError,
                           match=f"^tls:server:ca: is missing but sslmode is {mode}"):
            pgb.check_server_ca(None, mode)
    assert pgb.check_server_ca(None, "require") is None
    with pytest.raises(pgb.SaltInvocationError, match="^tls:server:sslmode: 'verify'"):
        pgb.check_server_ca(material["ca_pem"], "verify")


def on_host(pgb, tmp_path, pillar, test=False):
    """The module and the state module on a stand-in host: pillar from ``pillar``, files in
    ``tmp_path`` owned by root:root (the group option), PgBouncer running (RELOADs counted)."""
    states = load("salt/_states/pgbouncer.py")
    reloads = []
    pgb.__salt__ = {"config.get": lambda key, default=None: "root" if key.endswith("group")
                    else default,
                    "pillar.get": lambda key, default=None, unmask=False: _at(pillar, key)}
    pgb.__opts__ = states.__opts__ = {"test": test}
    states.__salt__ = {"pgbouncer.console": True, "pgbouncer.tls_changes": pgb.tls_changes,
                       "pgbouncer.write_tls": pgb.write_tls, "pgbouncer.running": lambda: True,
                       "pgbouncer.reload": lambda: reloads.append(1) or True}
    files = {kind: str(tmp_path / name) for kind, name in (
        ("cert", "client.crt"), ("key", "client.key"), ("server_ca", "server-ca.crt"))}
    ret = states.tls_present("pgbouncer-tls", files, "tls:client", "tls:server", NAMES,
                             pillar_key="vpn_gateway:pooler")
    return ret, reloads, files


def _at(data, key):
    for part in key.split(":"):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def tls_pillar(material, **client):
    return {"tls": {"client": {"cert": material["cert_pem"], "key": material["key_pem"],
                               "ca": material["ca_pem"], **client},
                    "server": {"sslmode": "verify-full", "ca": material["ca_pem"]}}}


def snapshot(files):
    import os
    return {kind: (open(path).read(), oct(os.stat(path).st_mode & 0o777))
            if os.path.exists(path) else None for kind, path in files.items()}


def test_tls_present_predicts_writes_with_modes_then_changes_nothing(pgb, material, tmp_path):
    pillar = tls_pillar(material)
    predicted, reloads, files = on_host(pgb, tmp_path, pillar, test=True)
    assert predicted["result"] is None and reloads == []
    assert snapshot(files) == dict.fromkeys(files)  # a dry run writes nothing
    applied, reloads, _ = on_host(pgb, tmp_path, pillar)
    assert applied["result"] is True, applied["comment"]
    assert applied["changes"] == predicted["changes"] and reloads == [1]
    assert set(applied["changes"]) == {*files.values(), "apply"}
    assert applied["changes"][files["key"]] == {
        "old": None, "new": check(pgb, material)["key"] + ", 0640 root:root"}
    assert applied["changes"][files["cert"]]["new"].endswith(", 0644 root:root")
    shown = json.dumps(applied) + json.dumps(predicted)
    assert "PRIVATE KEY" not in shown and material["key_pem"].splitlines()[1] not in shown
    written = snapshot(files)
    assert written["key"] == (material["key_pem"], "0o640")
    assert written["cert"] == (material["cert_pem"], "0o644")
    assert written["server_ca"] == (material["ca_pem"], "0o644")
    again, reloads, _ = on_host(pgb, tmp_path, pillar)
    assert (again["changes"], again["comment"], reloads) == (
        {}, "PgBouncer's TLS files are in place", [])
    # A key loosened by hand is put back (and reported by mode only).
    import os
    os.chmod(files["key"], 0o644)
    fixed, _, _ = on_host(pgb, tmp_path, pillar)
    assert fixed["changes"][files["key"]]["old"].endswith(", 0644 root:root")
    assert snapshot(files)["key"][1] == "0o640"


def test_a_bad_certificate_changes_no_file(pgb, material, tmp_path):
    on_host(pgb, tmp_path, tls_pillar(material))
    _, files = None, None
    other = postgres.pem(ec.generate_private_key(ec.SECP256R1()))
    for test in (True, False):
        ret, reloads, files = on_host(pgb, tmp_path, tls_pillar(material, key=other), test=test)
        before = snapshot(files)
        assert ret["result"] is False and reloads == []
        assert ret["comment"].startswith(
            "vpn_gateway:pooler:tls:client:key: is not the key of the certificate")
        assert ret["comment"].endswith("(nothing changed)")
        assert "PRIVATE KEY" not in json.dumps(ret) and other.splitlines()[1] not in ret["comment"]
        assert snapshot(files) == before
    assert snapshot(files)["key"][0] == material["key_pem"]


def test_a_dry_run_scratch_check_leaves_out_a_leg_whose_files_are_not_written_yet(pgb, tmp_path):
    there = tmp_path / "there.crt"
    there.write_text("x")
    settings = {"client_tls_sslmode": "require", "client_tls_cert_file": str(there),
                "client_tls_key_file": str(tmp_path / "missing.key"),
                "server_tls_sslmode": "verify-full", "server_tls_ca_file": str(there),
                "listen_port": "6432"}
    assert pgb._without_missing_tls(settings) == {
        "server_tls_sslmode": "verify-full", "server_tls_ca_file": str(there),
        "listen_port": "6432"}


def example_pillar():
    """pillar/vpn_gateway/*.sls for vpn-gw1, decrypted with the lab's key, merged."""
    import tempfile
    from pathlib import Path
    env = jinja2.Environment()
    env.filters["json"] = json.dumps
    merged = {}
    with tempfile.TemporaryDirectory() as plain:
        pillar_gpg.plain_pillar(REPO / "pillar", Path(plain))
        for path in sorted((Path(plain) / "vpn_gateway").glob("*.sls")):
            data = yaml.safe_load(env.from_string(path.read_text()).render(
                grains={"id": "vpn-gw1"})) or {}
            for key, value in data.get("vpn_gateway", {}).items():
                merged[key] = value
    return merged


def test_the_example_pillars_tls_fits_the_service_and_the_labs_database(pgb):
    pillar = example_pillar()
    service = pillar["kubernetes"]["service"]
    names = [f"{service['name']}.{service['namespace']}.svc",
             f"{service['name']}.{service['namespace']}.svc.cluster.local"]
    client, server = pillar["pooler"]["tls"]["client"], pillar["pooler"]["tls"]["server"]
    assert pgb._check_client_tls(client["cert"], client["key"], client["ca"], names)
    assert (client["sslmode"], server["sslmode"]) == ("require", "verify-full")
    assert pgb.check_server_ca(server["ca"]).startswith(
        "certificate CN=vpn-gateway lab database CA")
    # remote-db's certificate, issued at lab start, verifies against the pillar's CA for
    # every address the pooler connects to.
    from cryptography import x509
    committed = x509.load_pem_x509_certificate(server["ca"].encode())
    _, cert = postgres.server_certificate()
    cert = x509.load_pem_x509_certificate(cert.encode())
    cert.verify_directly_issued_by(committed)
    ips = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.IPAddress)
    assert sorted(str(ip) for ip in ips) == sorted(postgres.SERVER_IPS)
    assert {address for pool in pillar["pooler"]["databases"].values()
            for address in [pool["host"]]} <= set(postgres.SERVER_IPS)
