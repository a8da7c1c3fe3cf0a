"""The role's pillar schema against the real example pillar, through Salt:
the example is valid for both gateways, a wrong key fails the role's render
naming the key, and docs/pillar.md is the schema's own reference."""
import json
import re
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
import yaml
from repo_modules import load

from lab import peers, pillar_gpg, postgres, saltstack

REPO = Path(__file__).resolve().parents[2]
SALT_CALL = Path(sys.executable).parent / "salt-call"
SCHEMA = yaml.safe_load((REPO / "salt/states/vpn_gateway/schema.yaml").read_text())


def load_module():
    return load("salt/_modules/vpn_gateway.py")


@pytest.mark.unit
def test_the_pillar_reference_is_generated_from_the_schema():
    module = load_module()
    doc = (REPO / "docs/pillar.md").read_text()
    generated = doc.partition(module.REFERENCE_END + "\n")
    assert "".join(generated[:2]) == module.render_reference(SCHEMA), \
        "docs/pillar.md is stale: run scripts/pillar-reference"


@pytest.fixture(scope="module")
def example_minion(tmp_path_factory):
    """salt-call --local over the repo's state tree and its example pillar."""
    root = tmp_path_factory.mktemp("example-pillar")
    (root / "minion").write_text(yaml.safe_dump({
        **saltstack.local_minion_config(REPO, REPO / "pillar"),
        "gpg_keydir": str(pillar_gpg.keyring()),  # the example pillar's secrets (lab key)
        "root_dir": str(root), "log_file": str(root / "log"),
    }))

    def call(minion_id, *args):
        proc = subprocess.run([str(SALT_CALL), "--local", f"--config-dir={root}", "--id",
                               minion_id, "--out=json", *args], capture_output=True, text=True)
        return proc.returncode, json.loads(proc.stdout)["local"] if proc.stdout else proc.stderr

    return call


@pytest.mark.parametrize("minion_id", ["vpn-gw1", "vpn-gw2"])
def test_the_example_pillar_is_valid_for_each_gateway(example_minion, minion_id):
    rc, result = example_minion(minion_id, "vpn_gateway.check_pillar")
    assert (rc, result) == (0, {"valid": True, "errors": []})


def test_check_pillar_names_every_wrong_key(example_minion):
    wrong = {"tunnel": {"ikee": "aes", "peers": {"primary": {}}},
             "pooler": {"listen_port": "6432x"}, "kubernetes": {"nodes": ["198.18.2.300"]}}
    rc, result = example_minion("vpn-gw1", "vpn_gateway.check_pillar",
                                f"pillar={json.dumps(wrong)}")
    assert rc == 0 and result["valid"] is False
    keys = sorted(re.match(r"pillar key (\S+): ", error).group(1) for error in result["errors"])
    assert keys == sorted(f"vpn_gateway:{key}" for key in [
        "tunnel:ikee", "tunnel:peers:primary:address", "tunnel:local", "tunnel:remote_subnets",
        "tunnel:psk", "pooler:listen_port", "kubernetes:nodes:0"])


def test_a_wrong_key_fails_the_role_before_anything_runs(example_minion):
    override = {"vpn_gateway": {"pooler": {"listen_prot": 6432}}}
    rc, result = example_minion("vpn-gw1", "state.show_sls", "vpn_gateway",
                                f"pillar={json.dumps(override)}")
    assert rc != 0
    text = json.dumps(result)
    assert "pillar key vpn_gateway:pooler:listen_prot: unknown key" in text
    assert "listen_port" in text  # the fix: the known keys are listed


def secret_paths(node, path=()):
    """Every pillar path the schema calls a secret ("*" for a user-chosen name)."""
    if node.get("type") == "secret" or node.get("secret"):
        yield path
    for key, child in (node.get("keys") or {}).items():
        yield from secret_paths(child, path + (key,))
    if node.get("values"):
        yield from secret_paths(node["values"], path + ("*",))


def at(data, path):
    """The values at ``path`` ("*" matches every key) in ``data``."""
    if not path:
        yield data
    elif isinstance(data, dict):
        for key in (data if path[0] == "*" else [path[0]] if path[0] in data else []):
            yield from at(data[key], path[1:])


def example_pillar_files(plain=None):
    """{file: data} of pillar/vpn_gateway/*.sls rendered for vpn-gw1, without decrypting."""
    env = jinja2.Environment()
    env.filters["json"] = json.dumps
    root = plain or REPO / "pillar"
    return {path.name: yaml.safe_load(env.from_string(path.read_text()).render(
                grains={"id": "vpn-gw1"}))
            for path in sorted((root / "vpn_gateway").glob("*.sls"))}


@pytest.mark.unit
def test_every_secret_in_the_example_pillar_is_a_pgp_message_for_the_masters_key():
    """pillar/ is what operators copy into their Git: no secret in it is plaintext."""
    paths = [p for p in secret_paths(SCHEMA["vpn_gateway"], ("vpn_gateway",))]
    found = {}
    for name, data in example_pillar_files().items():
        for path in paths:
            for value in at(data or {}, path):
                found[(name, path)] = value
    assert {name for name, _ in found} >= {"tunnel.sls", "pooler.sls", "monitoring.sls"}
    plaintext = {key: value for key, value in found.items()
                 if not (isinstance(value, str)
                         and value.startswith(pillar_gpg.BEGIN) and pillar_gpg.END in value)}
    assert not plaintext, f"plaintext secrets in pillar/: {sorted(plaintext)}"
    for path in (REPO / "pillar").rglob("*.sls"):
        assert path.read_text().startswith("#!jinja|yaml|gpg\n") or \
            pillar_gpg.BEGIN not in path.read_text(), f"{path}: ciphertext without |gpg"


@pytest.mark.unit
def test_the_labs_hosts_use_the_example_pillars_secrets(tmp_path):
    """Decrypted with the lab's key, the example pillar holds what the lab's remote
    gateways, database and webhook receiver expect."""
    pillar_gpg.plain_pillar(REPO / "pillar", tmp_path)
    data = example_pillar_files(tmp_path)
    assert data["tunnel.sls"]["vpn_gateway"]["tunnel"]["psk"] == peers.EXAMPLE_PSK
    users = data["pooler.sls"]["vpn_gateway"]["pooler"]["users"]
    assert users[postgres.ROLE]["password"] == postgres.PASSWORD
    assert data["monitoring.sls"]["vpn_gateway"]["monitoring"]["webhook_url"].startswith(
        "http://198.18.")
