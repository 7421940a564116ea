"""Lanes split over several devices (``sim._lane_placer``): the results are those of one
device, lane for lane (counts exactly, times to float32 rounding), whether B divides over
the devices or is padded, and through lane compaction. Two CPU devices are made in a
subprocess (``JAX_NUM_CPU_DEVICES=2``); the parent process, with one device, computes the
same batch and compares."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxsim import cli, sim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One scenario, built the same way in both processes: B lanes that differ in
# max_num_seqs and, when `long` is set, per-lane workloads where every 16th lane has 8x
# longer outputs (so the other lanes finish first and the batch is compacted).
SCENARIO = """
import numpy as np
from jaxsim import params as P
from jaxsim.shapes import SimShape
from jaxsim.workload import Trace, stack_workloads, to_workload
from tests.helpers import lane_params

def scenario(B, long):
    n, R = 6, 12
    tr = Trace(np.linspace(0, 0.05, n), np.full(n, 32), np.full(n, 16))
    base = {"max_num_batched_tokens": 64, "block_size": 16, "num_gpu_blocks": 1000}
    params = P.stack([lane_params({**base, "max_num_seqs": 2 + i % 7}, tr)
                      for i in range(B)])
    if long:
        out = np.where(np.arange(B)[:, None] % 16 == 0, 128, 16) * np.ones((1, n), int)
        wl = stack_workloads([to_workload(Trace(tr.arrival_s, tr.prompt_tokens, o), R)
                              for o in out])
    else:
        wl = to_workload(tr, R)
    return SimShape(max_requests=R, max_slots=8, chunk_iterations=8), params, wl
"""


def _results(res) -> dict:
    out = {f"m_{k}": np.asarray(v) for k, v in res.metrics.items()}
    for k in ("ttft_s", "decode_s", "queue_s", "completed"):
        out[f"s_{k}"] = np.asarray(getattr(res.state, k))
    return out


def _two_devices(B: int, long: bool, path: str, min_lanes: int | None = None) -> str:
    code = SCENARIO + textwrap.dedent(f"""
        import jax
        from jaxsim import sim
        from tests.test_devices import _results
        assert jax.device_count() == 2, jax.devices()
        sim.MIN_LANES_PER_DEVICE = {min_lanes or sim.MIN_LANES_PER_DEVICE}
        n_dev, _, _ = sim._lane_placer({B}, {long})
        res = sim.simulate_batch(*scenario({B}, {long}))
        compiles = sim._run_chunk_batch._cache_size()
        np.savez({path!r}, n_dev=n_dev, compiles=compiles, **_results(res))
    """)
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_NUM_CPU_DEVICES": "2"}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return path


def _one_device(B: int, long: bool) -> dict:
    ns: dict = {}
    exec(SCENARIO, ns)  # the same scenario text the subprocess runs
    return _results(sim.simulate_batch(*ns["scenario"](B, long)))


def _compare(B: int, long: bool, tmp_path, min_lanes: int | None = None) -> None:
    got = np.load(_two_devices(B, long, str(tmp_path / "two.npz"), min_lanes))
    assert int(got["n_dev"]) == 2
    # one executable per batch size (the full batch, and the compacted one): a chunk's
    # output goes back to the input's sharding, so the next chunk does not recompile
    assert int(got["compiles"]) == (2 if long else 1)
    _assert_same_results(_one_device(B, long),
                         {k: got[k] for k in got.files if k not in ("n_dev", "compiles")})


def _assert_same_results(want: dict, got: dict) -> None:
    assert set(want) == set(got)
    for k, v in want.items():
        assert got[k].shape == v.shape, k
        if v.dtype.kind != "f":  # counts, status bits, completion: exactly equal
            np.testing.assert_array_equal(got[k], v, err_msg=k)
        else:  # times: XLA's CPU code for a batch of another size may round a lane
            # differently in the last bit (vector body against its scalar tail), and may
            # order the end-of-run sums over requests differently; a queue time is a
            # difference of clocks (tens of ms here) and inherits their last-bit error
            # (4e-10 s seen on 0.39 ms), hence the absolute term
            np.testing.assert_allclose(got[k], v, rtol=1e-6, atol=1e-9, err_msg=k)


@pytest.mark.slow  # 34 s from a cold compile cache on 2 cores: CI's slow step
def test_devices__odd_batch_is_padded_and_trimmed_and_equals_one_device(tmp_path):
    # 5 lanes over two devices (the split threshold lowered to 2 lanes per device, to keep
    # the test small): one padding lane added, three lanes per device, the copy dropped.
    _compare(5, False, tmp_path, min_lanes=2)


@pytest.mark.slow  # compiles two batch sizes in each process; CI's slow step
def test_devices__compaction_over_two_devices_equals_one_device(tmp_path):
    # 257 lanes padded to 258; 17 long lanes continue in a compacted batch of 64.
    _compare(257, True, tmp_path)


def test_devices__small_batches_stay_on_one_device():
    # Fewer than MIN_LANES_PER_DEVICE lanes per device: no split (here, one device).
    n, place, _ = sim._lane_placer(2 * sim.MIN_LANES_PER_DEVICE - 1, False)
    assert n == 1
    tree = {"x": np.arange(3)}
    assert place(tree) is tree


def test_devices__use_every_core_leaves_a_running_backend_and_user_choice_alone(
        monkeypatch):
    import jax

    jax.devices()  # the backend is up in this process: the count cannot change
    assert cli.use_every_core() == 0
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
    assert cli.use_every_core() == 0


def test_devices__the_command_line_uses_every_core():
    # `jaxsim bench`/`sweep`/`demo` from the command line make one CPU device per core.
    code = ("import jax, os\nfrom jaxsim import cli\n"
            "n = cli.use_every_core()\n"
            "print(n, jax.device_count(), len(os.sched_getaffinity(0)))")
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_NUM_CPU_DEVICES",
                                                             "XLA_FLAGS")}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                       env={**env, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    n, count, cores = map(int, r.stdout.split())
    assert count == max(cores, 1)
    assert n == (cores if cores > 1 else 0)


def test_devices__gpu_avoided_lane_counts_are_padded_past_or_compacted_around():
    # sim.GPU_AVOID_LANES: a working batch never runs at a per-device lane count inside
    # the range (both ends excluded); arithmetic only, and off on a CPU backend.
    band = (1200, 6000)
    assert sim._avoided_lanes() is None  # this suite runs on CPU
    assert sim._run_lanes(2500, 2500, band) == 6000
    assert sim._run_lanes(5000, 2500, band) == 12000  # two devices, 2,500 each
    assert sim._run_lanes(1200, 1200, band) == 1200  # the ends are allowed
    assert sim._run_lanes(6000, 6000, band) == 6000
    assert sim._run_lanes(2500, 2500, None) == 2500
    # compaction: 100,000 lanes, 1,000 running -> a sixteenth would be 1,562, inside the
    # range: down to 1,200 (the running lanes fit); with 1,500 running, up to 6,000
    assert sim._compacted_size(100_000, 1_000, 1, None) == 1_562
    assert sim._compacted_size(100_000, 1_000, 1, band) == 1_200
    assert sim._compacted_size(25_000, 1_500, 1, band) == 6_000
    assert sim._compacted_size(6_000, 5_000, 1, band) == 6_000  # no smaller batch
    assert sim._compacted_size(10_000, 100, 1, band) == 156  # below the range: unchanged
    assert sim._compacted_size(10_000, 100, 2, band) == 156
    assert sim._compacted_size(200, 100, 1, band) == 200  # too many running to compact


@pytest.mark.slow  # compiles three batch sizes; CI's slow step
def test_devices__padding_past_an_avoided_lane_count_keeps_every_result(monkeypatch):
    # With a small avoided range monkeypatched in (it is GPU-only otherwise): 5 lanes run
    # padded to 8, and 256 lanes compact to 100 instead of 64; results are those of the
    # plain run, lane for lane.
    ns: dict = {}
    exec(SCENARIO, ns)
    plain = {B: _one_device(B, long) for B, long in ((5, False), (256, True))}
    monkeypatch.setattr(sim, "_avoided_lanes", lambda: (3, 8))
    got = _results(sim.simulate_batch(*ns["scenario"](5, False)))
    monkeypatch.setattr(sim, "_avoided_lanes", lambda: (32, 100))
    sizes = []
    real = sim._run_chunk_batch

    def spy(shape, params, *a, **k):
        sizes.append(int(np.shape(params.scheduler.mode)[0]))
        return real(shape, params, *a, **k)

    monkeypatch.setattr(sim, "_run_chunk_batch", spy)
    got_long = _results(sim.simulate_batch(*ns["scenario"](256, True)))
    assert sizes[0] == 256 and 100 in sizes and 64 not in sizes, sizes
    _assert_same_results(plain[5], got)
    _assert_same_results(plain[256], got_long)
