"""Helpers for tests of the scripts in train/."""

import importlib
import sys
from pathlib import Path

import pytest

TRAIN_DIR = Path(__file__).resolve().parents[1] / "train"


def import_train_script(name):
    """The module of ``train/<name>.py`` (train/ is no package: on ``sys.path`` only while importing)."""
    sys.path.insert(0, str(TRAIN_DIR))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def assert_refused_in_one_line(main, argv, message, capsys, output_dir):
    """``main(argv)`` exits with status 2 before any work: ``message`` on the last stderr line (argparse's
    ``prog: error: ...``), no traceback, nothing written to ``output_dir``."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    error = stderr.strip().splitlines()[-1]
    assert ": error: " in error and message in error, error
    assert "Traceback" not in stderr
    assert not output_dir.exists()
