"""The core benchmark (``jaxsim bench``; ``benchmarks/bench_core.py`` adds the reference).

Scenario: Llama-3.1-8B on one H100-SXM, Poisson 10 req/s, 512 prompt / 256 output
tokens, 1000 requests, max_num_seqs 256, max_num_batched_tokens 2048, block 16,
gpu_memory_utilization 0.9. Measures compile time, wall time and simulated
config-requests per second for a batch of 1 and of 1024 configurations, the time of one
batched iteration with 1k and 100k requests in the trace, and memory per lane.

Lanes of a batch are independent copies of the scenario (each lane does all the work).
Wall times are the best of 2 runs (5 for B = 1) after a warm-up run.
The slot table has S = 64 rows: a lane whose admission that limits is flagged
``OVERFLOW_SLOTS`` and re-run with a larger S, so the figures are for exact results.
"""

from __future__ import annotations

import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np


def arg_sizes(text: str) -> list[int]:
    """argparse type of a benchmark's ``--sizes``: a comma list of integers >= 1."""
    import argparse

    try:
        sizes = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} must be a comma list of integers, e.g. 1000,10000") from None
    if min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every size must be >= 1")
    return sizes


def arg_int(low: int):
    """argparse type of an integer flag that must be >= ``low``."""
    import argparse

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"{v} must be >= {low}")
        return v

    return parse


def arg_seconds(text: str) -> float:
    """argparse type of a time limit: a finite number of seconds > 0."""
    import argparse

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number of seconds > 0")
    return v


SCENARIO = {
    "model": "Llama-3.1-8B",
    "gpu": "H100-SXM",
    "tp": 1,
    "max_num_seqs": 256,
    "max_num_batched_tokens": 2048,
    "block_size": 16,
    "gpu_memory_utilization": 0.9,
    # The benchmark measures simulator speed: pin the cost model so that a refit of the
    # shipped calibrated presets does not change the work it measures.
    "cost_preset": "uncalibrated",
}
RATE = 10.0
PROMPT, OUTPUT = 512, 256
SLOTS = 64
CHUNK = 256


def machine() -> dict:
    """Where the benchmark ran."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    dev = jax.devices()[0]
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "num_devices": jax.device_count(),
    }


def _prepare(num_requests: int, batch: int, slots: int = SLOTS, macro: int | None = None,
             priority: bool = False):
    import dataclasses

    import numpy as np

    from jaxsim import api
    from jaxsim import params as P
    from jaxsim.workload import synthetic

    trace = synthetic("poisson", num_requests, PROMPT, OUTPUT, rate=RATE, seed=0)
    cfg = SCENARIO
    if priority:  # a fifth of the requests at level 0 (benchmarks/priority_compare.py)
        level = np.random.default_rng(1).choice(2, size=len(trace), p=[0.2, 0.8])
        trace = dataclasses.replace(trace, priority=level)
        cfg = {**SCENARIO, "scheduling_policy": "priority"}
    prep = api.prepare(cfg, trace, max_slots=slots, chunk_iterations=CHUNK)
    if macro is not None:
        prep = dataclasses.replace(prep, shape=dataclasses.replace(
            prep.shape, macro_iterations=macro))
    params = P.broadcast(P.index(prep.params, 0), batch)
    return prep, params


def alternate(prepared: dict, repeats: int) -> tuple[dict, dict]:
    """Time ``simulate_batch`` on each prepared batch (``jaxsim.api.Prepared`` by name),
    in alternation, ``repeats`` rounds after one that compiles (so a slow spell of the
    machine does not land on one variant only). Returns the wall times of each variant
    (seconds, one per round) and its first lane's (steps, iterations)."""
    from jaxsim import sim

    times: dict = {k: [] for k in prepared}
    counts = {}
    for rep in range(repeats + 1):
        for k, pr in prepared.items():
            t0 = time.perf_counter()
            r = sim.simulate_batch(pr.shape, pr.params, pr.workload)
            dt = time.perf_counter() - t0
            if rep:  # the first round compiles
                times[k].append(dt)
            counts[k] = (int(r.metrics["steps"][0]), int(r.metrics["iterations"][0]))
    return times, counts


def write_record(path: str, result: dict) -> None:
    """Write a benchmark record as JSON, atomically (a temporary file, then a rename)."""
    import json

    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)
    print(f"  wrote {path}")


def copy_bandwidth() -> float:
    """Bytes/s of a large array copy on the default device (read + write counted)."""
    x = jnp.ones((64 * 2**20 // 4,), jnp.float32)  # 64 MiB
    f = jax.jit(lambda a: a + 1.0)
    jax.block_until_ready(f(x))
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        jax.block_until_ready(f(x))
        best = min(best, time.perf_counter() - t0)
    return 2 * x.size * 4 / best


def step_bytes(batch: int = 128, slots: int = SLOTS) -> float:
    """Bytes one step moves per lane, from XLA's cost analysis of one compiled step
    (operand and result bytes of every fusion), with the per-lane constants a chunk
    computes once (cost-model constants, decode table) passed in, not recomputed."""
    from jaxsim import costmodel, sim
    from jaxsim.step import step

    prep, params = _prepare(1000, batch, slots)
    shape, wl = prep.shape, prep.workload
    state = sim._init_batch(shape, params, wl, jnp.int32(1), False)

    def consts(p):
        c = costmodel.prepare(p.model, p.hardware, p.scheduler.tp, p.cost)
        return c, costmodel.decode_table(c, shape.max_slots)

    c, d = jax.jit(jax.vmap(consts))(params)
    one = jax.jit(jax.vmap(lambda p, s, c, d: step(shape, p, wl, s, c, None, d)))
    ca = one.lower(params, state, c, d).compile().cost_analysis()
    ca = ca[0] if isinstance(ca, list) else ca
    return float(ca["bytes accessed"]) / batch


def _bytes_per_lane(shape, params, workload) -> int:
    from jaxsim import sim

    state = jax.eval_shape(lambda p, w: sim._init_batch(shape, p, w, jnp.int32(1), False),
                           params, workload)
    b = params.scheduler.mode.shape[0]
    leaves = jax.tree.leaves(state) + jax.tree.leaves(params)
    return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in leaves) // b)


def _simulate(batch: int, verbose: bool, slots: int = SLOTS, repeats: int = 2,
              macro: int | None = None, devices: int | None = None) -> dict:
    from jaxsim import sim

    prep, params = _prepare(1000, batch, slots, macro)
    shape, wl = prep.shape, prep.workload
    # every batch size runs the optimised code, single lanes too (with quick compiles on,
    # simulate_batch would compile those quick: sim.use_quick_compile), so the ratios
    # compare like code
    quick_lanes, sim.QUICK_COMPILE_MAX_LANES = sim.QUICK_COMPILE_MAX_LANES, 0
    try:
        return _simulate_optimised(batch, verbose, shape, params, wl, repeats, devices)
    finally:
        sim.QUICK_COMPILE_MAX_LANES = quick_lanes


def _simulate_optimised(batch, verbose, shape, params, wl, repeats, devices) -> dict:
    from jaxsim import sim
    from jaxsim import status as st_bits

    # compile time, measured ahead of time, for the lanes laid out as simulate_batch does
    n_dev, place, place_wl = sim._lane_placer(batch, False, devices)
    state0 = place(sim._init_batch(shape, params, wl, jnp.int32(10**6), False))
    t0 = time.perf_counter()
    sim._run_chunk_batch.lower(shape, place(params), place_wl(wl), state0, False).compile()
    compile_s = time.perf_counter() - t0
    sim.simulate_batch(shape, params, wl, auto_slots=True, devices=devices)  # warm caches
    wall = float("inf")
    for _ in range(repeats):  # best of `repeats`: these machines are noisy
        t0 = time.perf_counter()
        res = sim.simulate_batch(shape, params, wl, auto_slots=True, devices=devices)
        wall = min(wall, time.perf_counter() - t0)
    bad = int(np.sum(res.status != 0))
    out = {
        "batch": batch,
        "devices": n_dev,
        "wall_s": wall,
        "repeats": repeats,
        "compile_s": compile_s,
        "config_requests_per_s": batch * 1000 / wall,
        "iterations_run": res.iterations_run,
        "iterations_per_lane": float(np.mean(res.metrics["iterations"])),
        "steps_per_lane": float(np.mean(res.metrics["steps"])),
        "lanes_not_ok": bad,
        "status": sorted({st_bits.describe(int(s)) for s in res.status}),
        "ttft_p50_s": float(res.metrics["ttft_p50_s"][0]),
        "tpot_p50_s": float(res.metrics["tpot_p50_s"][0]),
        "bytes_per_lane": _bytes_per_lane(shape, params, wl),
    }
    if verbose:
        print(f"  B={batch:<5} on {n_dev} device{'s' if n_dev > 1 else ' '} wall {wall:8.2f} s"
              f"  compile {compile_s:5.2f} s  "
              f"{out['config_requests_per_s']:>10,.0f} config-requests/s  "
              f"({out['iterations_per_lane']:.0f} iterations in {out['steps_per_lane']:.0f} "
              f"steps per lane, status {out['status']})", flush=True)
    return out


def _iteration_times(sizes, batch: int, rounds: int = 4, slots: int = SLOTS) -> list[float]:
    """Seconds per batched step for each trace size, best of ``rounds``.

    The sizes are timed in alternation (one chunk each per round), so a slow spell of a
    noisy machine does not land on one size only.
    """
    from jaxsim import sim

    runs = []
    for n in sizes:
        prep, params = _prepare(n, batch, slots)
        shape, wl = prep.shape, prep.workload
        state = sim._init_batch(shape, params, wl, jnp.int32(2**31 - 1), False)
        state, _, _ = sim._run_chunk_batch(shape, params, wl, state, False)  # compile, warm
        jax.block_until_ready(state)
        runs.append([shape, params, wl, state])
    best = [float("inf")] * len(sizes)
    for _ in range(rounds):
        for i, r in enumerate(runs):
            t0 = time.perf_counter()
            r[3], _, ran = sim._run_chunk_batch(r[0], r[1], r[2], r[3], False)
            jax.block_until_ready(r[3])
            if int(ran) != r[0].chunk_iterations:  # lanes done: the steps would be no-ops
                raise RuntimeError(f"trace of {sizes[i]} requests ended within the timing")
            best[i] = min(best[i], (time.perf_counter() - t0) / int(ran))
    return best


def run(quick: bool = False, verbose: bool = True, slots: int = SLOTS) -> dict:
    """Run the benchmark; returns a flat dict (``jaxsim bench --json`` prints it).

    ``slots`` is the slot-table size S (the step costs O(S)); lanes that outgrow it are
    re-run exactly with a larger table.
    """
    big = 128 if quick else 1024
    iter_batch = 16 if quick else 128
    sizes = (1000, 10_000, 100_000)
    if verbose:
        print("jaxsim core benchmark: Llama-3.1-8B, H100-SXM, TP1, Poisson 10 req/s, "
              "512/256 tokens, 1000 requests, max_num_seqs 256, max_num_batched_tokens "
              f"2048, block 16, util 0.9 (slot table S={slots})", flush=True)
    b1 = _simulate(1, verbose, slots, repeats=5)
    bb = _simulate(big, verbose, slots)
    # The same batch on one device, when the lanes were split over several (a CPU made
    # into one device per core by the `jaxsim` command, or several accelerators).
    one = _simulate(big, verbose, slots, devices=1) if bb["devices"] > 1 else bb
    if verbose:
        print(f"  event skipping off (every iteration a step), B={iter_batch}:", flush=True)
    off = _simulate(iter_batch, verbose, slots, repeats=1, macro=0)
    on = bb if big == iter_batch else _simulate(iter_batch, False, slots, repeats=1)
    it_1k, it_10k, it_100k = _iteration_times(sizes, iter_batch, slots=slots)
    sbytes = step_bytes(iter_batch, slots)
    bw = copy_bandwidth()
    lane_steps_per_s = bb["steps_per_lane"] * big / bb["wall_s"]
    result = {
        "config_requests_per_s_b1": b1["config_requests_per_s"],
        f"config_requests_per_s_b{big}": bb["config_requests_per_s"],
        "wall_s_b1": b1["wall_s"],
        f"wall_s_b{big}": bb["wall_s"],
        f"devices_b{big}": bb["devices"],
        f"config_requests_per_s_b{big}_one_device": one["config_requests_per_s"],
        "speedup_devices": bb["config_requests_per_s"] / one["config_requests_per_s"],
        "compile_s": bb["compile_s"],
        "compile_s_b1": b1["compile_s"],
        "iteration_s_1k_requests": it_1k,
        "iteration_s_10k_requests": it_10k,
        "iteration_s_100k_requests": it_100k,
        "iteration_batch": iter_batch,
        "iteration_ratio_100k_over_1k": it_100k / it_1k,
        "steps_per_lane": bb["steps_per_lane"],
        "iterations_per_step": bb["iterations_per_lane"] / bb["steps_per_lane"],
        "wall_s_stepping": off["wall_s"],
        "wall_s_skipping": on["wall_s"],
        "speedup_event_skipping": off["wall_s"] / on["wall_s"],
        "stepping_batch": iter_batch,
        "bytes_per_lane_step": sbytes,
        "lane_steps_per_s": lane_steps_per_s,
        "achieved_bytes_per_s": sbytes * lane_steps_per_s,
        "copy_bytes_per_s": bw,
        "speedup_b1024_over_b1" if not quick else f"speedup_b{big}_over_b1":
            bb["config_requests_per_s"] / b1["config_requests_per_s"],
        "bytes_per_lane": bb["bytes_per_lane"],
        "iterations_per_lane": bb["iterations_per_lane"],
        "lanes_not_ok": b1["lanes_not_ok"] + bb["lanes_not_ok"],
        "slots": slots,
        "machine": machine(),
    }
    if verbose:
        if bb["devices"] > 1:
            print(f"  B={big} split over {bb['devices']} devices: "
                  f"{result['speedup_devices']:.2f}x one device")
        print(f"  event skipping: {bb['iterations_per_lane']:.0f} iterations in "
              f"{bb['steps_per_lane']:.0f} steps per lane "
              f"({result['iterations_per_step']:.1f} iterations per step); wall at "
              f"B={iter_batch}: {off['wall_s']:.2f} s stepping, {on['wall_s']:.2f} s skipping "
              f"(speedup {result['speedup_event_skipping']:.1f}x)")
        print(f"  step time (B={iter_batch}): {it_1k * 1e6:.1f} us with 1k requests, "
              f"{it_10k * 1e6:.1f} us with 10k, {it_100k * 1e6:.1f} us with 100k "
              f"(ratio 100k/1k {it_100k / it_1k:.2f})")
        print(f"  roofline: {sbytes / 1024:.0f} KiB moved per lane-step (XLA cost analysis) "
              f"x {lane_steps_per_s:,.0f} lane-steps/s = {sbytes * lane_steps_per_s / 1e9:.1f}"
              f" GB/s, against {bw / 1e9:.1f} GB/s for a plain array copy on this device "
              f"({sbytes * lane_steps_per_s / bw:.2f}x it)")
        print(f"  memory per lane: {bb['bytes_per_lane'] / 1024:.1f} KiB; speedup of "
              f"B={big} over B=1: {bb['config_requests_per_s'] / b1['config_requests_per_s']:.1f}x")
    return result
