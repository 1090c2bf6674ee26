"""Test-wide settings: offline, no analytics, a throw-away HF cache."""

import importlib.metadata
import os
import tempfile
from pathlib import Path

# Set before any test module imports transformers/datasets/gradio, which read them at import.
_HF_HOME = tempfile.mkdtemp(prefix="spa3-hf-home-")
os.environ["HF_HOME"] = _HF_HOME  # never the user's real cache
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models gain nothing from a second thread, and two threads stall each other when another process
# (a subprocess test, another job) shares the 2 cores.
torch.set_num_threads(1)

FIXTURES = Path(__file__).parent / "fixtures"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


KEY_PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "huggingface-hub", "gradio", "evaluate")


def pytest_terminal_summary(terminalreporter):
    """Name the versions this run tested, so a CI log says which releases passed."""
    versions = []
    for name in KEY_PACKAGES:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    terminalreporter.write_line("tested with " + ", ".join(versions))
