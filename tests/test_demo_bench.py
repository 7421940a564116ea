"""Smoke tests of `jaxsim demo` and `jaxsim bench` (reduced sizes)."""

from __future__ import annotations

import csv
import json

import pytest

from jaxsim import bench, cli, demo


@pytest.mark.slow  # long (28-32 s on 2 cores): runs in CI's slow step
def test_demo__writes_table_and_plot(tmp_path, capsys):
    assert len(demo.grid()) >= 1024
    code = demo.main(out_dir=str(tmp_path), num_requests=12, quiet=False)
    assert code == 0
    out = capsys.readouterr().out
    assert "meet the SLO" in out
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(demo.grid())
    assert {"gpu", "tp", "max_num_seqs", "max_num_batched_tokens", "status",
            "ttft_p99_s", "meets_slo"} <= set(rows[0])
    assert any(r["status"] == "ok" for r in rows)
    assert any("infeasible" in r["status"] for r in rows)
    assert (tmp_path / "latency_map.png").stat().st_size > 10_000


def test_demo__an_out_folder_it_cannot_write_is_refused_before_simulating(tmp_path, capsys,
                                                                        monkeypatch):
    monkeypatch.setattr(demo, "main", lambda **kw: pytest.fail("simulated"))
    f = tmp_path / "afile"
    f.write_text("keep")
    assert cli.main(["demo", "--out", str(f / "sub")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"jaxsim: error: --out: {f / 'sub'}: cannot write there (Not a directory)"
    assert f.read_text() == "keep"


@pytest.mark.slow  # 30 s: runs in CI's slow step, which keeps the default suite well under 10 min
def test_bench__quick_json(capsys, monkeypatch):
    monkeypatch.setattr(bench, "_iteration_times",
                        lambda sizes, b, rounds=4, slots=64: [1e-4] * len(sizes))
    code = cli.main(["bench", "--quick", "--json"])
    assert code == 0
    obj = json.loads(capsys.readouterr().out)
    for k in ("config_requests_per_s_b1", "config_requests_per_s_b128",
              "iteration_s_1k_requests", "iteration_s_100k_requests", "compile_s",
              "bytes_per_lane"):
        assert k in obj, k
    assert obj["lanes_not_ok"] == 0 and obj["bytes_per_lane"] > 0


def _benchmark_script(name: str = "bench_gpu"):
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _bench_gpu():
    return _benchmark_script("bench_gpu")


def test_profile_step__charges_operations_to_the_jaxsim_function_that_built_them():
    import jax
    import jax.numpy as jnp

    from jaxsim import costmodel, dd

    ps = _benchmark_script("profile_step")

    def f(a, b, k):
        # smooth_max calls the dd helpers, which are charged to it, not to dd.py
        return costmodel.smooth_max(dd.dd(a), dd.dd(b), k).hi * 2.0

    x = jnp.linspace(0.5, 2.0, 16, dtype=jnp.float32)
    hlo = jax.jit(f).lower(x, x[::-1], jnp.int32(2)).compile().as_text()
    src = ps.source_of_ops(hlo)
    owners = set(src.values())
    if "StackFrames" in hlo:
        assert "costmodel.py:smooth_max" in owners
        assert not any(o.startswith(("dd.py", "test_")) for o in owners), owners
    else:  # older JAX records only the innermost frame, as file:line
        assert {o.split(":")[0] for o in owners} >= {"costmodel.py", "dd.py"}, owners
    # every operation name that carries a frame is a real instruction of the module
    assert src and all(f" {name} = " in hlo or f"%{name} = " in hlo for name in src)


@pytest.mark.slow  # about a minute on 2 cores (three batch sizes compile): CI's slow step
def test_bench_gpu__runs_on_cpu_and_a_short_last_chunk_does_not_recompile(tmp_path, capsys):
    from jaxsim import sim

    bg = _bench_gpu()
    first = bg.run_size(64, 64, str(tmp_path))
    assert first["configs"] == 64 and first["lanes_not_ok"] == 0
    assert first["iterations_per_lane"] > first["steps_per_lane"] > 0
    compiled = sim._run_chunk_batch._cache_size()
    # 100 lanes in chunks of 64: the second chunk runs padded to 64 lanes
    second = bg.run_size(100, 64, str(tmp_path))
    assert sim._run_chunk_batch._cache_size() == compiled
    assert second["configs"] == 100 and second["lanes_not_ok"] == 0
    assert list(tmp_path.iterdir()) == []  # the metrics file is timed, then removed
    out = tmp_path / "out"
    bg.MEMORY_SIZES = (64, 128)  # XLA's buffer sizes from two small compiles
    assert bg.main(["--sizes", "64", "--chunk", "64", "--max-batch", "128",
                    "--out", str(out)]) == 0
    (path,) = out.iterdir()
    rec = json.loads(path.read_text())
    assert path.name.startswith("gpu_") and rec["largest_batch"] == 128
    # each size ran in a child process of its own, doubling from the chunk size
    assert [(r["lanes"], r["result"]) for r in rec["largest_batch_search"]] == [
        (64, "ran"), (128, "ran")]
    assert [r["configs"] for r in rec["rows"]] == [64]
    assert rec["bytes_per_lane"] > 0 and "--sizes 64" in rec["command"]
    # the state is one of XLA's buffers; the step's temporaries come on top
    assert [r["lanes"] for r in rec["xla_memory"]] == [64, 128]
    assert rec["xla_bytes_per_lane"] > rec["bytes_per_lane"]
    assert rec["predicted_largest_batch"] is None  # a CPU device reports no memory limit
    assert "B=" in capsys.readouterr().out


def test_bench_gpu__largest_batch_prediction_and_the_sizes_searched():
    bg = _bench_gpu()
    rows = [{"lanes": 1024, "total": 1000 + 1024 * 50_000},
            {"lanes": 8192, "total": 1000 + 8192 * 50_000}]
    pred = bg.predicted_largest(rows, 100e9)
    assert pred["xla_bytes_per_lane"] == pytest.approx(50_000)
    assert pred["xla_fixed_bytes"] == pytest.approx(1000)
    assert pred["predicted_largest_batch"] == (100e9 - 1000) // 50_000 == 1_999_999
    assert bg.predicted_largest(rows, None)["predicted_largest_batch"] is None
    # around the prediction, in multiples of 1024, none above the limit
    assert bg.search_sizes(64, 2**22, 1_999_999) == [1_799_168, 1_999_872, 2_199_552]
    assert bg.search_sizes(64, 2_000_000, 1_999_999) == [1_799_168, 1_999_872]
    # without a prediction: doubling from the start
    assert bg.search_sizes(64, 1000, None) == [64, 128, 256, 512]


def test_bench_gpu__largest_batch_search_ends_at_a_size_that_runs_out_of_time():
    # a size whose child has not finished within the time limit ends the search; nothing
    # is counted as fitting
    big, tried = _bench_gpu().largest_batch(64, 1024, timeout=0.01)
    assert big == 0 and len(tried) == 1
    assert tried[0]["lanes"] == 64 and tried[0]["result"].startswith("not done after")


@pytest.mark.parametrize("script, argv, msg", [
    ("bench_compaction", ["--lanes", "0"], "argument --lanes: 0 must be >= 1"),
    ("bench_compaction", ["--repeats", "0"], "argument --repeats: 0 must be >= 1"),
    ("bench_compaction", ["--chunk", "-3"], "argument --chunk: -3 must be >= 1"),
    ("bench_compaction", ["--out", "/nonexistent-dir/x.json"],
     "--out '/nonexistent-dir/x.json': cannot write in '/nonexistent-dir'"),
    ("probe_chunk", ["--sizes", "64,,128"], "'64,,128' must be a comma list of integers"),
    ("probe_chunk", ["--sizes", "0"], "'0': every size must be >= 1"),
    ("probe_chunk", ["--timeout", "-5"], "-5 must be a finite number of seconds > 0"),
    ("bench_gpu", ["--fit-timeout", "inf"], "inf must be a finite number of seconds > 0"),
    ("bench_gpu", ["--sizes", "abc"], "'abc' must be a comma list of integers"),
])
def test_benchmark_flags_are_refused_before_any_work(script, argv, msg, capsys):
    """Bad flags give argparse's one-line error (exit 2): they gave tracebacks, some only
    after the whole benchmark had run (``--repeats 0``, an ``--out`` in no folder)."""
    with pytest.raises(SystemExit) as e:
        _benchmark_script(script).main(argv)
    assert e.value.code == 2 and msg in capsys.readouterr().err
