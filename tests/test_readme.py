"""The README's counts are what the code has."""

import re
import subprocess
import sys
from collections import Counter


def test_readme_counts_the_reliability_tests_it_lists(repo_root):
    """The "Bad input" table names one module per area with its number of tests; pytest collects exactly those."""
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    quoted = {path: int(count) for path, count in re.findall(r"\| `(tests/test_reliability_\w+\.py)` \| (\d+) \|", readme)}
    on_disk = sorted(str(p.relative_to(repo_root)) for p in (repo_root / "tests").glob("test_reliability_*.py"))
    assert sorted(quoted) == on_disk, "the README's table and tests/test_reliability_*.py list different modules"
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *on_disk],
        cwd=repo_root, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    counts = Counter(line.split("::")[0] for line in collected.stdout.splitlines() if "::" in line)
    assert dict(counts) == quoted
