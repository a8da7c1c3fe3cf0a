"""The lab salt-master's GnuPG key, for the encrypted pillar (docs/pillar.md).

``pillar/`` holds every secret as ciphertext for this key, rendered by Salt's
own gpg renderer (``#!jinja|yaml|gpg``). The key is the lab's alone and its
private half is published in ``lab/keys``: it keeps the lab's secrets out of
Git's plaintext, as an operator's own key does for real ones, and protects
nothing else. The lab puts it in the master's keyring (``MASTER_KEYDIR``).

Two stand-ins, both on this machine's side, for hosts that cannot decrypt:
``keyring()`` for ``salt-call --local`` renders of ``pillar/`` here, and
``plain_pillar()`` for masterless lab gateways, which are fresh hosts without
gpg: it writes the tree with each PGP message decrypted, as the master would
have sent it.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

KEYS = Path(__file__).resolve().parent / "keys"
SECRET_KEY = KEYS / "lab-master.secret.asc"
PUBLIC_KEY = KEYS / "lab-master.pub.asc"
MASTER_KEYDIR = "/etc/salt/gpgkeys"  # Salt's default gpg_keydir on a master
CACHE = Path(os.environ.get("VPN_GATEWAY_GPG_CACHE", "/var/cache/vpn-gateway"))
BEGIN, END = "-----BEGIN PGP MESSAGE-----", "-----END PGP MESSAGE-----"
BLOCK_KEY = re.compile(r"^(?P<indent> *)(?P<key>[^\s:#][^:]*): \|$")


def _gpg(home, *args, data=None):
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--quiet", "--no-tty", *args],
                          input=data, capture_output=True, timeout=60, check=True).stdout


def make_keyring(home):
    """A GnuPG home at ``home`` (0700) holding the lab master's key pair."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    try:
        _gpg(home, "--import", str(SECRET_KEY))
    finally:
        # gpg started an agent for the import: it must not outlive the call.
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"],
                       capture_output=True, timeout=30, check=False)


def keyring():
    """This machine's keyring with the lab key (for ``gpg_keydir`` of local renders)."""
    digest = hashlib.sha256(SECRET_KEY.read_bytes()).hexdigest()[:12]
    home = CACHE / f"gpgkeys-{digest}"
    if not home.is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".gpgkeys-", dir=CACHE))
        make_keyring(staging)
        try:
            os.rename(staging, home)
        except OSError:  # another process made it first
            shutil.rmtree(staging, ignore_errors=True)
    return home


def decrypt(armour, home):
    return _gpg(home, "--decrypt", data=armour.encode()).decode()


def plain_sls(text, home):
    """``text`` with each ``key: |`` PGP block replaced by its plaintext (a YAML
    double-quoted scalar) and the renderer line without ``|gpg``."""
    lines, out, index = text.splitlines(), [], 0
    while index < len(lines):
        line = lines[index]
        match = BLOCK_KEY.match(line)
        if index == 0 and line.startswith("#!"):
            out.append(line.replace("|gpg", ""))
        elif match and index + 1 < len(lines) and lines[index + 1].strip() == BEGIN:
            end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == END)
            armour = "\n".join(block.strip() for block in lines[index + 1:end + 1]) + "\n"
            plain = decrypt(armour, home)
            out.append(f"{match['indent']}{match['key']}: {json.dumps(plain)}")
            index = end
        else:
            out.append(line)
        index += 1
    return "\n".join(out) + "\n"


def plain_pillar(source, dest):
    """Copy the pillar tree ``source`` to ``dest`` with its secrets decrypted."""
    home = keyring()
    for path in Path(source).rglob("*"):
        target = Path(dest) / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.suffix == ".sls":
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(plain_sls(path.read_text(), home))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
