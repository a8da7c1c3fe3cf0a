"""Helpers of the monitoring tests (a plain module: conftest names collide)."""
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def load(relative):
    """A loader module file of this repo as a plain Python module (pure helpers only)."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(f"vgw_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parsed_status(name, rename=None):
    """A captured ``whack --status`` parsed by libreswan._parse_status (conns renamed)."""
    text = (FIXTURES / name).read_text()
    for old, new in (rename or {}).items():
        text = text.replace(old, new)
    return dict(load("salt/_modules/libreswan.py")._parse_status(text), running=True)
