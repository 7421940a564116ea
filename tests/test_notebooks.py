"""The notebooks run top to bottom on CPU within their time budget."""

from __future__ import annotations

import os
import time

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.notebook

NOTEBOOKS = ["notebooks/00_quickstart.ipynb", "notebooks/01_design_sweep.ipynb",
             "notebooks/02_calibration.ipynb", "notebooks/03_memory_tiers.ipynb",
             "notebooks/04_production_workloads.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_notebook__runs_under_two_minutes(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    os.environ.setdefault("MPLBACKEND", "Agg")
    client = NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.perf_counter()
    client.execute(cwd=os.getcwd())
    assert time.perf_counter() - t0 < 120
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
