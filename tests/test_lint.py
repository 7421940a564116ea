"""ruff lint (rules in pyproject.toml) over the package, tests and benchmarks."""

import shutil
import subprocess
import sys

import pytest


def test_lint__ruff_check_passes():
    if shutil.which("ruff") is None and subprocess.run(
        [sys.executable, "-m", "ruff", "--version"], capture_output=True
    ).returncode != 0:
        pytest.skip("ruff is not installed (pip install -e '.[test]' installs it)")
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "."], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:]
