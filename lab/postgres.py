"""PostgreSQL (the platform's: 15 on debian12, 17 on debian13) with SCRAM auth
in the lab's remote-db host (the remote cloud's
database): listens on every lab address, accepts SCRAM logins from
198.18.0.0/15 over TLS only (``hostssl``, as managed PostgreSQL services require
it), with the example pillar's pooler user and its databases.
Used by the demo, the pooler and data-path tests and the pgbench benchmark.

TLS (issue 15): the server certificate is issued at start by the lab's
database CA, whose key is derived from a fixed seed (``DB_CA_SEED``), so the
CA certificate in the example pillar (``vpn_gateway:pooler:tls:server:ca``,
what PgBouncer verifies with ``verify-full``) stays valid for every lab run.
The CA protects nothing but the lab. Its names: the addresses the pooler
connects to (``SERVER_IPS``) and ``remote-db``.
"""
import datetime
import hashlib

ROLE, PASSWORD = "app", "lab-app-password"  # the example pillar's pooler user
DATABASES = ("app", "app2")

DB_CA_SEED = b"vpn-gateway lab: the database's CA (issue 15)"
DB_CA_NAME = "vpn-gateway lab database CA"
SERVER_NAMES = ("remote-db",)
SERVER_IPS = ("198.19.1.10", "198.19.1.11", "198.19.1.12")
# The lab's certificates' validity: fixed, so that the committed CA certificate is stable.
NOT_BEFORE = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
NOT_AFTER = datetime.datetime(2126, 1, 1, tzinfo=datetime.timezone.utc)
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def derived_key(seed):
    """An ECDSA P-256 private key derived from ``seed`` (the same key every time)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    value = int.from_bytes(hashlib.sha256(seed).digest(), "big") % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(value, ec.SECP256R1())


def issue(common_name, key, issuer_key=None, issuer_name=None, dns_names=(), ips=(),
          ca=False, serial=None):
    """A certificate for ``key`` (self-signed when ``issuer_key`` is None), SHA-256."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer = subject if issuer_key is None else x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)])
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(key.public_key())
               .serial_number(serial or x509.random_serial_number())
               .not_valid_before(NOT_BEFORE).not_valid_after(NOT_AFTER)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   (issuer_key or key).public_key()), critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    names = [x509.DNSName(n) for n in dns_names] + [
        x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def pem(obj):
    """PEM text of a certificate or an (unencrypted, PKCS#8) private key."""
    from cryptography.hazmat.primitives import serialization

    if hasattr(obj, "public_bytes") and hasattr(obj, "subject"):
        return obj.public_bytes(serialization.Encoding.PEM).decode()
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def db_ca():
    """(key, certificate) of the lab's database CA (the key is the same every time)."""
    key = derived_key(DB_CA_SEED)
    return key, issue(DB_CA_NAME, key, ca=True, serial=1)


def server_certificate():
    """(key PEM, certificate PEM) for remote-db, issued now by the database CA."""
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_key, _ = db_ca()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue("remote-db", key, ca_key, DB_CA_NAME, dns_names=SERVER_NAMES, ips=SERVER_IPS)
    return pem(key), pem(cert)


def start(db, max_connections=100):
    """Configure and start the cluster in host ``db`` (TLS on, remote logins over TLS
    only); create role ``app`` and its databases."""
    version = db.platform.postgresql
    conf = f"/etc/postgresql/{version}/main"
    key, cert = server_certificate()
    db.put(f"{conf}/lab-server.crt", cert, mode=0o644, owner="postgres")
    db.put(f"{conf}/lab-server.key", key, mode=0o600, owner="postgres")
    db.put(f"{conf}/conf.d/lab.conf",
           f"listen_addresses = '*'\nmax_connections = {max_connections}\n"
           "password_encryption = 'scram-sha-256'\n"
           f"ssl = on\nssl_cert_file = '{conf}/lab-server.crt'\n"
           f"ssl_key_file = '{conf}/lab-server.key'\n")
    hba = db.read(f"{conf}/pg_hba.conf")
    # TCP logins over TLS only: every host line becomes hostssl (local ones stay).
    lines = ["hostssl" + line[4:] if line.startswith("host ") else line
             for line in hba.splitlines()]
    rule = "hostssl all all 198.18.0.0/15 scram-sha-256"
    if rule not in lines:
        lines.append(rule)
    db.put(f"{conf}/pg_hba.conf", "\n".join(lines) + "\n", mode=0o640, owner="postgres")
    db.run(["systemctl", "start", f"postgresql@{version}-main"], check=True, timeout=60)
    db.wait_port(5432, "198.19.1.10")
    sql(db, f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
    for name in DATABASES:
        sql(db, f"CREATE DATABASE {name} OWNER {ROLE}")


def sql(db, query, database="postgres"):
    """Run ``query`` as the postgres superuser over the local socket; rows as lists."""
    result = db.run(["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-v",
                     "ON_ERROR_STOP=1", "-At", "-F", "\t", "-d", database, "-c", query],
                    check=True)
    return [line.split("\t") for line in result.stdout.splitlines()]
