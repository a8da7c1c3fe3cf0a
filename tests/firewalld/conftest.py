"""Shared for the firewalld tests: the execution module, loaded from its file, and
``salt-call --local`` on a minion where firewalld's Salt modules do not load."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from repo_modules import load


@pytest.fixture(scope="session")
def fr():
    return load("salt/_modules/firewalld_rich.py")


@pytest.fixture(scope="session")
def salt_call_without_firewalld(salt_call_config, tmp_path_factory):
    """``salt-call --local`` over this repo like ``salt_call``, but with Salt core's
    ``firewalld`` module and this pack's ``firewalld_rich`` both disabled: what a
    host without firewalld gives the renderer when neither would load.
    Returns ``call(function, *args, **kwargs) -> (returncode, value or stdout+stderr)``."""
    root = tmp_path_factory.mktemp("salt-local-no-firewalld")
    config = yaml.safe_load((salt_call_config / "minion").read_text())
    config.update({key: str(root / key) for key in ("cachedir", "pki_dir", "sock_dir")})
    config.update({"root_dir": str(root), "log_file": str(root / "minion.log"),
                   "disable_modules": ["firewalld", "firewalld_rich"],
                   "disable_states": ["firewalld", "firewalld_rich"]})
    (root / "minion").write_text(yaml.safe_dump(config))

    def call(function, *args, **kwargs):
        argv = [str(Path(sys.executable).parent / "salt-call"), "--local",
                f"--config-dir={root}", "--out=json", "--retcode-passthrough",
                function, *map(str, args),
                *(f"{k}={v if isinstance(v, str) else json.dumps(v)}"
                  for k, v in kwargs.items())]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        try:
            return proc.returncode, json.loads(proc.stdout)["local"]
        except (json.JSONDecodeError, KeyError):
            return proc.returncode, proc.stdout + proc.stderr

    return call
