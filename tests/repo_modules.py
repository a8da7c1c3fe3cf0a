"""The pack's loader modules as plain Python modules, for testing their pure
helpers (parsers, renderers, validators) without Salt's loader."""
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load(relative):
    """``load("salt/_modules/libreswan.py")``: a fresh module object per call."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(f"vgw_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
