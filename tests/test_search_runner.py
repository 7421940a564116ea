"""Sweep runner: exact rows, resume, kill -9, no recompiles, overflow re-runs, sharding."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from jaxsim import api
from jaxsim import status as st_bits
from search import runner, space

HERE = os.path.dirname(__file__)
TINY = os.path.join(HERE, "data", "tiny_space.yaml")
ROOT = os.path.dirname(HERE)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sweep") / "full")
    sp = space.load(TINY)
    res = runner.run_sweep(sp, out, chunk_size=4, progress=False)
    return sp, out, res, runner.load_results(out)


def test_rows_exact_and_match_direct_simulation(full_run):
    sp, out, res, df = full_run
    assert len(df) == sp.size == 18
    assert list(df["config_id"]) == list(range(18))
    assert res.plan.num_chunks == 5  # 18 = 4 * 4 + 2 (last chunk padded)
    cfgs = sp.configs(sp.sample(np.arange(sp.size)))
    ok = sp.constraint_mask(cfgs)
    # constraint-violating points are infeasible lanes, not errors
    bad = df["status"].to_numpy()[~ok]
    assert np.all(bad & st_bits.INF_CONSTRAINT) and np.all(bad & st_bits.INFEASIBLE)
    assert set(df["status_str"][~ok]) == {"infeasible,violates_space_constraint"}
    # feasible points equal a direct simulation of the same configuration
    for i in np.flatnonzero(ok)[:2]:
        c = cfgs[i]
        direct = api.run(c).lane(0)  # the trace built from c's own workload section
        for k in ("ttft_p99_s", "tpot_p50_s", "throughput_rps", "preemptions"):
            assert df[k][i] == pytest.approx(direct[k], rel=1e-6), (i, k)


def test_resume_skips_finished_chunks_and_gives_same_table(full_run, tmp_path):
    sp, _, _, df = full_run
    out = str(tmp_path / "part")
    r1 = runner.run_sweep(sp, out, chunk_size=4, progress=False, max_chunks=2)
    assert r1.chunks_run == [0, 1]
    with pytest.raises(runner.SweepError, match="--resume"):
        runner.run_sweep(sp, out, chunk_size=4, progress=False)
    with pytest.raises(runner.SweepError, match="chunked by 4"):
        runner.run_sweep(sp, out, chunk_size=2, progress=False, resume=True)
    # new objectives (SLOs, prices) change no simulation: the resume takes them, and
    # best and pareto read them from the manifest
    import dataclasses
    import json

    sp_new = dataclasses.replace(sp, objectives={"slo": {"ttft_p99_s": 0.025}})
    r2 = runner.run_sweep(sp_new, out, chunk_size=4, progress=False, resume=True)
    with open(os.path.join(out, runner.MANIFEST)) as f:
        assert json.load(f)["objectives"] == {"slo": {"ttft_p99_s": 0.025}}
    assert r2.chunks_skipped == [0, 1] and r2.chunks_run == [2, 3, 4]
    assert r2.compiles == 0  # same shapes as the first run: nothing recompiles
    df2 = runner.load_results(out)
    num = df.select_dtypes("number").columns
    np.testing.assert_array_equal(df2[num].to_numpy(), df[num].to_numpy())
    other = space.from_dict({**space.load(TINY).spec(), "axes": {"max_num_seqs": [2, 4]},
                             "constraints": [], "seed": 0, "name": "x", "sampler": "grid",
                             "num_samples": None})
    with pytest.raises(runner.SweepError, match="different sweep"):
        runner.run_sweep(other, out, chunk_size=4, progress=False, resume=True)


def test_one_compile_per_bucket(full_run, tmp_path):
    """Chunks of one shape share one compiled function: a new sweep of the same shapes
    (B, R, S) compiles nothing, whatever its values."""
    d = space.load(TINY).spec()
    d.pop("axes")
    d["constraints"] = []
    d["base"] = {**d["base"], "max_num_seqs": 8}
    sp = space.from_dict({**d, "axes": {"max_num_batched_tokens": [256, 384, 512, 640, 768,
                                                                    896, 1024, 1152],
                                        "workload.rate": [10.0, 40.0]}})
    before = runner.compile_count()
    res = runner.run_sweep(sp, str(tmp_path / "a"), chunk_size=4, progress=False)
    assert res.plan.num_chunks == 4 and res.plan.slots == full_run[2].plan.slots
    assert res.compiles == 0 and runner.compile_count() == before


def test_resume_reruns_damaged_chunks(full_run, tmp_path, capsys):
    """A chunk file that cannot be read (or is short) is not counted as done: a resume
    runs it again, and load_results names it instead of failing with a traceback."""
    import shutil

    sp, src, _, df = full_run
    out = str(tmp_path / "damaged")
    shutil.copytree(src, out)
    with open(os.path.join(out, runner.CHUNK_FMT.format(1)), "w") as f:
        f.write("not parquet")
    with open(os.path.join(src, runner.CHUNK_FMT.format(3)), "rb") as f:
        head = f.read(200)
    with open(os.path.join(out, runner.CHUNK_FMT.format(3)), "wb") as f:
        f.write(head)  # truncated: no footer
    with pytest.raises(runner.SweepError, match=r"chunk-000001\.parquet: unreadable"):
        runner.load_results(out)
    res = runner.run_sweep(sp, out, chunk_size=4, progress=False, resume=True)
    assert res.chunks_run == [1, 3] and res.chunks_skipped == [0, 2, 4]
    err = capsys.readouterr().err
    assert "chunk-000001.parquet: unreadable" in err and "chunk-000003.parquet" in err
    df2 = runner.load_results(out)
    num = df.select_dtypes("number").columns
    np.testing.assert_array_equal(df2[num].to_numpy(), df[num].to_numpy())


def test_bad_out_and_max_chunks_refused_before_work(tmp_path):
    sp = space.load(TINY)
    f = tmp_path / "afile"
    f.write_text("keep")
    with pytest.raises(runner.SweepError, match="is a file, not a folder"):
        runner.run_sweep(sp, str(f), chunk_size=4, progress=False)
    assert f.read_text() == "keep"
    for bad in (0, -1):
        with pytest.raises(runner.SweepError, match=f"max_chunks: {bad} must be an integer "
                                                    ">= 1"):
            runner.run_sweep(sp, str(tmp_path / "o"), chunk_size=4, max_chunks=bad,
                             progress=False)
    assert not os.path.exists(tmp_path / "o")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / runner.MANIFEST).write_text("{not json")
    with pytest.raises(runner.SweepError, match="sweep.json: unreadable"):
        runner.run_sweep(sp, str(tmp_path / "m"), chunk_size=4, progress=False)


def test_default_chunk_size_from_memory_per_lane():
    """Without --chunk-size, B comes from the memory one lane holds (no simulation)."""
    import jax

    plan = runner.make_plan(space.load(TINY))
    n_dev = len(jax.local_devices())
    assert plan.chunk_size % n_dev == 0 and n_dev <= plan.chunk_size <= -(-18 // n_dev) * n_dev
    from jaxsim.shapes import SimShape

    assert runner.bytes_per_lane(SimShape(max_requests=24, max_slots=8), False) > 0


def test_progress_rate_has_significant_digits():
    import io

    bar = runner.Progress(100, 0, stream=io.StringIO())
    bar.t0 -= 40.0  # one configuration in ~40 s
    assert " 0.025 configs/s" in bar.update(1, 0, 100)
    bar = runner.Progress(10**6, 0, stream=io.StringIO())
    bar.t0 -= 1.0
    assert " 12,3" in bar.update(12_345, 0, 100)


@pytest.mark.slow  # long (25-40 s on 2 cores): runs in CI's slow step
def test_overflow_rerun_is_exact(tmp_path):
    """Lanes outgrowing the slot table re-run with a larger one in fixed-size batches."""
    d = space.load(TINY).spec()
    d.pop("axes")
    d["constraints"] = []
    d["base"] = {**d["base"], "workload": {"kind": "all_at_once", "num_requests": 24,
                                           "prompt_tokens": 64, "output_tokens": 16}}
    sp = space.from_dict({**d, "axes": {"max_num_seqs": [2, 16]}})
    res = runner.run_sweep(sp, str(tmp_path / "o"), chunk_size=2, slots=8, progress=False)
    df = runner.load_results(str(tmp_path / "o"))
    assert list(df["slots"]) == [8, 16]
    # up to twice the largest max_num_seqs (rows finished inside a decode run)
    assert res.plan.slot_ladder() == [8, 16, 32]
    cfg = sp.configs(sp.sample(np.array([1])))[0]
    direct = api.run(cfg, max_slots=16).lane(0)
    assert (df["status"] == 0).all()
    assert df["ttft_p99_s"][1] == pytest.approx(direct["ttft_p99_s"], rel=1e-6)
    assert df["e2e_mean_s"][1] == pytest.approx(direct["e2e_mean_s"], rel=1e-6)


def _run_py(code: str, env_extra: dict | None = None, timeout=240):
    env = {**os.environ, "PYTHONPATH": ROOT, **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # a fresh two-device process compiles the sweep (about 30 s): CI's slow step
def test_sharded_over_two_cpu_devices_matches(full_run, tmp_path):
    _, _, _, df = full_run
    out = str(tmp_path / "sharded")
    r = _run_py(f"""
        import jax
        assert jax.device_count() == 2, jax.devices()
        from search import runner, space
        res = runner.run_sweep(space.load({TINY!r}), {out!r}, chunk_size=4, progress=False)
        assert res.plan.num_devices == 2
    """, {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert r.returncode == 0, r.stderr[-2000:]
    df2 = runner.load_results(out)
    for k in ("status", "ttft_p99_s", "tpot_p99_s", "throughput_rps", "iterations"):
        np.testing.assert_allclose(df2[k].to_numpy(), df[k].to_numpy(), rtol=1e-6)


@pytest.mark.slow
def test_kill_dash_9_then_resume(full_run, tmp_path):
    _, _, _, df = full_run
    out = str(tmp_path / "killed")
    cmd = [sys.executable, "-m", "jaxsim", "sweep", TINY, "--out", out, "--chunk-size", "2",
           "--quiet"]
    env = {**os.environ, "PYTHONPATH": ROOT}
    log = tmp_path / "log"
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        t0 = time.time()
        while len(runner.finished_chunks(out)) < 2 and time.time() - t0 < 180:
            time.sleep(0.05)
            assert p.poll() is None, log.read_text()[-2000:]
        p.send_signal(signal.SIGKILL)
        p.wait()
    # a chunk file a killed writer left half-written is removed by the resume
    stale = os.path.join(out, f".chunk-000008.parquet.{p.pid}.tmp")
    with open(stale, "wb") as f:
        f.write(b"PAR1")
    n_before = len(runner.finished_chunks(out))
    assert 2 <= n_before < 9
    r = subprocess.run([*cmd, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{9 - n_before} chunks run, {n_before} already done" in r.stdout
    df2 = runner.load_results(out)
    assert len(df2) == 18 and df2["config_id"].is_unique
    np.testing.assert_allclose(df2["ttft_p99_s"].to_numpy(), df["ttft_p99_s"].to_numpy(),
                               rtol=1e-6)
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_interrupted_chunk_write_leaves_no_file(tmp_path, monkeypatch):
    """Ctrl-C (or an error) while a chunk is written removes its temporary file."""
    import pyarrow.parquet as pq

    def half_then_interrupt(table, path):
        with open(path, "wb") as f:
            f.write(b"PAR1")
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        runner.write_chunk(str(tmp_path), 0, {"config_id": np.arange(2)})
    assert os.listdir(tmp_path) == []


def test_configurations_max_iterations_bounds_their_lanes(tmp_path):
    """A space's ``max_iterations`` (here on an axis) bounds each lane as ``api.run`` and
    ``jaxsim simulate`` do; ``run_sweep(max_iterations=...)`` overrides it for all."""
    import yaml

    with open(TINY) as f:
        d = yaml.safe_load(f)
    d["axes"] = {"max_iterations": [10, 100000], "max_num_seqs": [4]}
    d.pop("constraints")
    sp = space.from_dict(d, source="test")
    df = runner.load_results(runner.run_sweep(sp, str(tmp_path / "a"), chunk_size=2,
                                              progress=False).out_dir)
    assert list(df["max_iterations"]) == [10, 100000]
    assert list(df["status_str"]) == ["truncated", "ok"]
    assert df["iterations"][0] == 10 and df["iterations"][1] > 10
    df = runner.load_results(runner.run_sweep(sp, str(tmp_path / "b"), chunk_size=2,
                                              progress=False, max_iterations=12).out_dir)
    assert list(df["iterations"]) == [12, 12]


PREFIX_SPACE = """\
base: {model: Llama-3.1-8B, gpu: H100-SXM, cost_preset: uncalibrated, max_num_seqs: 8,
       num_gpu_blocks: 160, preemption_mode: recompute,
       workload: {kind: sessions, sessions: 4, rate: 2, num_requests: 24}}
axes:
  enable_prefix_caching: [false, true]
  tiers: ["", dram]
  seed: [0, 1]
"""


@pytest.mark.slow  # two sweeps' compiles and one direct batch (about a minute on 2 cores)
def test_prefix_caching_and_tiers_sweep_equal_direct_simulation(tmp_path):
    """Lanes with the prefix cache and a DRAM tier (and per-lane workloads with block ids)
    give the rows a direct simulation gives; the sweep used to compile no cache and
    simulate them as if caching were off."""
    p = tmp_path / "s.yaml"
    p.write_text(PREFIX_SPACE)
    sp = space.load(str(p))
    runner.run_sweep(sp, str(tmp_path / "out"), chunk_size=4, progress=False)
    df = runner.load_results(str(tmp_path / "out"))
    cfgs, reasons = sp.expand(sp.sample(np.arange(sp.size)))
    ok = df["ok"].to_numpy()
    assert [r is None for r in reasons] == list(ok)
    # (caching off, a DRAM tier) is the invalid combination: 2 of 8 rows
    assert int((~ok).sum()) == 2
    direct = api.run([c for c, o in zip(cfgs, ok, strict=True) if o])
    rows = np.flatnonzero(ok)
    hit = [direct.lane(j)["prefix_hit_rate"] for j in range(len(rows))]
    caching = [cfgs[i]["enable_prefix_caching"] for i in rows]
    assert all(h > 0 for h, c in zip(hit, caching, strict=True) if c)  # the cache is used
    for j, i in enumerate(rows):
        d = direct.lane(j)
        for k in ("ttft_p50_s", "ttft_p99_s", "e2e_p99_s", "preemptions", "iterations",
                  "prefix_hit_rate"):
            assert df[k][i] == pytest.approx(d[k], rel=1e-6, nan_ok=True), (i, k)


def test_ray_address_that_refuses_connections_fails_fast():
    """``ray.init`` keeps retrying an unreachable cluster for minutes; a host:port that
    accepts no connection is refused at once (Ray itself is not needed for the check)."""
    import socket

    from search import ray_runner
    with socket.socket() as srv:  # a port that listens, then one that was just freed
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        ray_runner._check_reachable(f"127.0.0.1:{port}")
        ray_runner._check_reachable(f"ray://127.0.0.1:{port}")
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
        ray_runner._check_reachable(f"ray://127.0.0.1:{port}")
    assert time.perf_counter() - t0 < ray_runner.CONNECT_TIMEOUT_S
    ray_runner._check_reachable("auto")  # no port: left to Ray


def test_sessions_without_a_request_limit_size_the_batch_by_their_turns():
    """``workload.num_requests: null`` with sessions (valid: every turn is simulated) sizes
    the sweep's request axis by the generated turns, as a trace file's length does."""
    from jaxsim import config

    base = {"workload": {"kind": "sessions", "sessions": 3, "turns": 2, "rate": 1.0,
                         "num_requests": None, "think_time_s": 1.0}}
    cfg = config.validate(base)
    assert runner._num_requests(cfg) == len(config.build_trace(cfg)) == 6
    cfg = config.validate({"workload": {**base["workload"], "num_requests": 4}})
    assert runner._num_requests(cfg) == 4
