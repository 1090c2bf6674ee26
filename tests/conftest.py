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


# Shared by an area's test module and its reliability module (tests/test_reliability_*.py). Each is cheap (well
# under a second), so each module still builds its own; a module that defines a fixture of the same name uses its own.


@pytest.fixture(scope="module")
def processor():
    """The tiny Spa3-VLM processor (hub_configs/spa3-vlm-tiny)."""
    from spa3_vlm.processing_spa3_vlm import Spa3VLMProcessor

    return Spa3VLMProcessor.from_pretrained(REPO_ROOT / "hub_configs" / "spa3-vlm-tiny")


@pytest.fixture(scope="module")
def spa3r_folder(tmp_path_factory):
    """A random Spa3R saved as train/pretrain_psfm.py saves it (the tiny SynthRooms pre-training config)."""
    from spa3_vlm import Spa3RConfig, Spa3RForFieldPrediction

    folder = tmp_path_factory.mktemp("spa3r")
    torch.manual_seed(3)
    Spa3RForFieldPrediction(Spa3RConfig.from_pretrained(REPO_ROOT / "hub_configs" / "spa3r-tiny-synthrooms")).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def spa3_dir(tmp_path_factory):
    from eval_testing import save_tiny_spa3_vlm

    # The folder name says "qwen": the class must come from config.json's model_type, not from the path.
    return save_tiny_spa3_vlm(tmp_path_factory.mktemp("qwen2.5-vl-lookalike") / "model")


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    from spa3_vlm.data.synthrooms_qa import build_synthrooms_qa

    dataset = build_synthrooms_qa(1, 4, (56, 70), seed=0, split="test", per_scene=6)
    folder = tmp_path_factory.mktemp("synthrooms-qa") / "test"
    dataset.save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def vsibench_dir(tmp_path_factory):
    """A fake VSI-Bench folder (eval_testing.write_fake_vsibench): ten questions, videos of 100 and 10 frames."""
    from eval_testing import write_fake_vsibench

    return write_fake_vsibench(tmp_path_factory.mktemp("vsibench"))


@pytest.fixture(scope="module")
def loaded_metric():
    """The VSI-Bench metric as ``evaluate.load`` gives it (skips without the evaluate package)."""
    pytest.importorskip("evaluate")
    import evaluate

    from spa3_vlm.evaluation import VSIBENCH_METRIC_PATH

    return evaluate.load(str(VSIBENCH_METRIC_PATH))


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


@pytest.fixture(scope="module")
def app():
    """space/app.py, imported once per session."""
    from space_testing import load_space_app

    return load_space_app()


@pytest.fixture(scope="module")
def core(app):
    """The Space's logic (space/spa3_demo.py, which re-exports the space/space_*.py modules)."""
    return app.core

