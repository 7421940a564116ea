"""ruff lint (rules in pyproject.toml) over the package, tests and benchmarks; the
dependency floors that CI tests are pyproject's."""

import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest


def test_lint__ruff_check_passes():
    if shutil.which("ruff") is None and subprocess.run(
        [sys.executable, "-m", "ruff", "--version"], capture_output=True
    ).returncode != 0:
        pytest.skip("ruff is not installed (pip install -e '.[test]' installs it)")
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "."], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:]


def test_lint__ci_oldest_dependencies_are_pyprojects_floors():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    floors = {}
    for d in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)", d)
        assert m, f"pyproject.toml: dependency {d!r} has no plain '>=' floor to test"
        floors[m.group(1).lower()] = m.group(2)
    with open(os.path.join(root, ".ci", "oldest.txt")) as f:
        pins = dict(ln.strip().lower().split("==") for ln in f
                    if ln.strip() and not ln.startswith("#"))
    assert pins == floors
