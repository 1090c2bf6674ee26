"""Helpers for tests of the scripts in train/."""

import pytest


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
