"""The modules on every Salt release line setup.cfg declares (issue 17; README: Supported
Salt), through Salt's own loader rather than stand-ins: a secret the modules read from
pillar (libreswan's PSKs, pgbouncer's passwords) arrives whole. Salt 3008 masks
``pillar.get``'s answer unless called with ``unmask=True``; before 3008 that argument is a
TypeError. scripts/test-salt-oldest runs this file on 3007, scripts/test on 3008."""
import secrets
import sys
from pathlib import Path

import pytest
import salt.config
import salt.loader
import salt.version

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cret-" + secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    """Salt's execution module loader over salt/_modules, with SECRET in the pillar."""
    root = tmp_path_factory.mktemp("salt-versions")
    opts = salt.config.minion_config(None)
    opts.update({"root_dir": str(root), "cachedir": str(root / "cache"), "id": "vgw-unit",
                 "file_client": "local", "module_dirs": [str(REPO / "salt" / "_modules")],
                 "grains": {}, "pillar": {"vpn_gateway": {"secret": SECRET}}})
    return salt.loader.minion_mods(opts)


@pytest.mark.parametrize("module", ["libreswan", "pgbouncer"])
def test_a_pillar_secret_comes_whole_through_salts_own_pillar_get(modules, module):
    loaded = modules[f"{module}.version"]  # any function: its module as the loader loaded it
    read = loaded.func.__globals__["_pillar_secret"]
    # loader.run: inside the loader's context, where __salt__ is Salt's own pillar.get
    assert loaded.loader.run(read, "vpn_gateway:secret") == SECRET
    assert loaded.loader.run(read, "vpn_gateway:absent") is None
    assert sys.modules[loaded.func.__module__].SALT_MASKS_PILLAR == (
        salt.version.__saltstack_version__.info >= (3008,))


def test_salt_masks_pillar_get_from_3008_on(modules):
    """What the modules' switch (SALT_MASKS_PILLAR) stands on: this Salt masks or not."""
    masked = modules["pillar.get"]("vpn_gateway:secret") != SECRET
    assert masked == (salt.version.__saltstack_version__.info >= (3008,)), \
        salt.version.__version__
