"""The sweep runner on a local Ray instance: same dataset as the local runner, retries."""

from __future__ import annotations

import os

import numpy as np
import pytest

from search import runner, space

ray = pytest.importorskip("ray")

HERE = os.path.dirname(__file__)
TINY = os.path.join(HERE, "data", "tiny_space.yaml")


# Ray starts its processes with fork + exec from a process where JAX already runs; JAX
# warns about the fork (harmless here: the child execs at once).
@pytest.mark.ray
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ray_sweep_matches_local_and_retries_a_failed_chunk(tmp_path, monkeypatch):
    from search import ray_runner

    sp = space.load(TINY)
    local = str(tmp_path / "local")
    runner.run_sweep(sp, local, chunk_size=6, progress=False)
    # the workers (started below, with this environment) keep compiled executables in
    # their node's jaxsim cache folder, not in the driver's
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    out = str(tmp_path / "ray")
    marker = str(tmp_path / "failed_once")
    # half on Ray first, then resume the rest on Ray: one task fails once and is retried
    r1 = ray_runner.run_sweep(sp, out, address="local", chunk_size=6, progress=False,
                              max_chunks=1)
    assert r1.chunks_run == [0]
    r2 = ray_runner.run_sweep(sp, out, address="local", chunk_size=6, progress=False,
                              resume=True, _fail_once=marker)
    assert os.path.exists(marker)  # a task did fail, and the sweep still completed
    assert r2.chunks_run == [1, 2] and r2.chunks_skipped == [0]
    a, b = runner.load_results(local), runner.load_results(out)
    assert len(b) == 18 and b["config_id"].is_unique
    for k in ("status", "ttft_p99_s", "tpot_p50_s", "throughput_rps"):
        np.testing.assert_allclose(b[k].to_numpy(), a[k].to_numpy(), rtol=1e-6)
    assert any((tmp_path / "xdg" / "jaxsim" / "xla").glob("*-cache"))
    with pytest.raises(runner.SweepError, match="--resume"):
        ray_runner.run_sweep(sp, out, address="local", chunk_size=6, progress=False)
    # bad input fails the same way on every attempt: not retried, and its own message
    with pytest.raises(runner.SweepError, match=r"^max_iterations=-5 must be an int in "
                                                r"1\.\.2147483647$"):
        ray_runner.run_sweep(sp, str(tmp_path / "bad"), address="local", chunk_size=6,
                             progress=False, max_iterations=-5)
