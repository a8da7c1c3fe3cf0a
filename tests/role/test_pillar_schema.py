"""The role's pillar schema against the real example pillar, through Salt:
the example is valid for both gateways, a wrong key fails the role's render
naming the key, and docs/pillar.md is the schema's own reference."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from repo_modules import load

from lab import peers, saltstack

REPO = Path(__file__).resolve().parents[2]
SALT_CALL = Path(sys.executable).parent / "salt-call"
SCHEMA = yaml.safe_load((REPO / "salt/states/vpn_gateway/schema.yaml").read_text())


def load_module():
    return load("salt/_modules/vpn_gateway.py")


@pytest.mark.unit
def test_the_pillar_reference_is_generated_from_the_schema():
    reference = load_module().render_reference(SCHEMA)
    assert (REPO / "docs/pillar.md").read_text() == reference, \
        "docs/pillar.md is stale: run scripts/pillar-reference"


@pytest.fixture(scope="module")
def example_minion(tmp_path_factory):
    """salt-call --local over the repo's state tree and its example pillar."""
    root = tmp_path_factory.mktemp("example-pillar")
    (root / "minion").write_text(yaml.safe_dump({
        **saltstack.local_minion_config(REPO, REPO / "pillar"),
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


@pytest.mark.unit
def test_the_labs_remote_gateways_use_the_example_pillars_psk():
    assert f"psk: '{peers.EXAMPLE_PSK}'" in (REPO / "pillar/vpn_gateway/tunnel.sls").read_text()
