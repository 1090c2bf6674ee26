"""Helpers for the Space tests: the app module (imported once per session) and a free local port."""

import importlib.util
import socket
import sys
from pathlib import Path

SPACE = Path(__file__).resolve().parents[1] / "space"


def load_space_app():
    """Import space/app.py once per session (also used by the browser test)."""
    name = "spa3_space_app"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SPACE / "app.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
