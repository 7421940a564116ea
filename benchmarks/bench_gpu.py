"""Accelerator scaling: the core scenario for B = 10^3 .. 10^6 configurations.

    pip install -e '.[cuda]' && python benchmarks/bench_gpu.py

(runs on any JAX backend; on CPU pass small sizes, e.g. ``--sizes 256,1024``). Each
configuration is the core scenario of ``jaxsim.bench`` (Llama-3.1-8B, H100-SXM, Poisson
10 req/s, 512/256 tokens, 1000 requests) with ``max_num_batched_tokens`` cycling over
512 / 1024 / 2048 / 4096, so lanes differ. For each B the lanes run in chunks of at most
``--chunk`` through ``simulate_batch`` and every lane's metrics are written to an
``.npz`` file; the time reported is end to end (simulation, transfer back, file
written), after one warm-up chunk that compiles (a short last chunk runs padded to the
chunk size, so nothing compiles inside the timing). It also finds the largest single batch
that fits in device memory and records memory per lane: XLA's buffer assignment of the
chunk function compiled (not run) for 1,024 and 8,192 lanes gives the bytes per lane,
and with the device's memory limit a predicted largest batch; the search then tries 90%,
100% and 110% of the prediction (or, where the device reports no limit, doubles from the
chunk size), each size in a child process with a time limit (``--fit-timeout``), until
one does not run.
Writes ``results/gpu_<device>.json``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxsim import bench  # noqa: E402

BUDGETS = (512, 1024, 2048, 4096)


def _lanes(n: int):
    from jaxsim import api
    from jaxsim import params as P
    from jaxsim.workload import synthetic

    trace = synthetic("poisson", 1000, bench.PROMPT, bench.OUTPUT, rate=bench.RATE, seed=0)
    prep = api.prepare(bench.SCENARIO, trace, max_slots=bench.SLOTS,
                       chunk_iterations=bench.CHUNK)
    params = P.broadcast(P.index(prep.params, 0), n)
    budget = np.resize(np.asarray(BUDGETS, np.int32), n)
    return prep, _set_budget(params, budget)


def _set_budget(params, budget):
    import equinox as eqx
    import jax.numpy as jnp

    return eqx.tree_at(lambda p: p.scheduler.max_num_batched_tokens, params,
                       jnp.asarray(budget, jnp.int32))


def run_size(total: int, chunk: int, out_dir: str) -> dict:
    from jaxsim import sim

    prep, params = _lanes(min(chunk, total))
    shape, wl = prep.shape, prep.workload
    t0 = time.perf_counter()
    jax.block_until_ready(sim.simulate_batch(shape, params, wl).metrics)  # compile, warm up
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics: dict[str, list] = {}
    steps = iters = 0.0
    done = 0
    while done < total:
        n = min(chunk, total - done)
        # a short last chunk is padded to the chunk's size (its extra lanes dropped), so
        # that it reuses the compiled chunk instead of compiling another batch size
        # inside the timing
        res = sim.simulate_batch(shape, params, wl)
        for k, v in res.metrics.items():
            metrics.setdefault(k, []).append(np.asarray(v)[:n])
        steps += float(np.sum(metrics["steps"][-1]))
        iters += float(np.sum(metrics["iterations"][-1]))
        done += n
    path = os.path.join(out_dir, f"metrics_b{total}.npz")
    np.savez(path, **{k: np.concatenate(v) for k, v in metrics.items()})
    wall = time.perf_counter() - t0
    os.remove(path)  # the file is written as part of the timing; it is not kept
    bad = int(np.sum(np.concatenate(metrics["status"]) != 0))
    return {"configs": total, "chunk": chunk, "wall_s": wall, "warmup_s": warm,
            "config_requests_per_s": total * 1000 / wall, "lanes_not_ok": bad,
            "steps_per_lane": steps / total, "iterations_per_lane": iters / total}


#: Exit status of a :func:`fits` child whose batch did not fit in device memory.
OOM_EXIT = 3


def fits(b: int) -> int:
    """Run one chunk of ``b`` lanes (a child of :func:`largest_batch`): exit status 0 if
    it ran, ``OOM_EXIT`` if the device ran out of memory."""
    from jaxsim import sim

    try:
        prep, params = _lanes(b)
        st = sim._init_batch(prep.shape, params, prep.workload, jax.numpy.int32(10), False)
        st, _, _ = sim._run_chunk_batch(prep.shape, params, prep.workload, st, False)
        jax.block_until_ready(st)
    except Exception as e:  # out of memory is an answer; anything else is an error
        if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
            raise
        return OOM_EXIT
    return 0


#: Batch sizes whose chunk function is compiled (not run) to read XLA's memory use.
MEMORY_SIZES = (1024, 8192)
#: Sizes the largest-batch search tries, as fractions of the predicted largest batch.
PREDICTED_FRACTIONS = (0.9, 1.0, 1.1)


def xla_memory(b: int) -> dict:
    """XLA's buffer assignment for the chunk function of ``b`` lanes, compiled and not
    run: argument, output, temporary and aliased bytes, and their total (arguments +
    outputs + temporaries - aliased, what one call holds on the device)."""
    from jaxsim import sim

    prep, params = _lanes(b)
    state = jax.eval_shape(lambda p: sim._init_batch(prep.shape, p, prep.workload,
                                                     jax.numpy.int32(10), False), params)
    m = sim._run_chunk_batch.lower(prep.shape, params, prep.workload, state,
                                   False).compile().memory_analysis()
    row = {"lanes": b, "argument": int(m.argument_size_in_bytes),
           "output": int(m.output_size_in_bytes), "temp": int(m.temp_size_in_bytes),
           "alias": int(m.alias_size_in_bytes)}
    row["total"] = row["argument"] + row["output"] + row["temp"] - row["alias"]
    return row


def predicted_largest(rows: list[dict], bytes_limit: float | None) -> dict:
    """Bytes per lane (the slope of XLA's total between the two sizes in ``rows``), the
    fixed bytes (its intercept) and, when the device's memory limit is known, the
    largest batch whose total fits in it."""
    (a, b) = rows[0], rows[-1]
    per_lane = (b["total"] - a["total"]) / (b["lanes"] - a["lanes"])
    fixed = a["total"] - per_lane * a["lanes"]
    out = {"xla_bytes_per_lane": per_lane, "xla_fixed_bytes": fixed,
           "device_bytes_limit": bytes_limit, "predicted_largest_batch": None}
    if bytes_limit and per_lane > 0:
        out["predicted_largest_batch"] = int((bytes_limit - max(fixed, 0.0)) // per_lane)
    return out


def search_sizes(start: int, limit: int, predicted: int | None) -> list[int]:
    """Sizes the largest-batch search tries, in order: around the prediction (fractions
    :data:`PREDICTED_FRACTIONS`, rounded down to a multiple of 1024) when there is one,
    else doubling from ``start``; none above ``limit``."""
    if predicted:
        sizes = [max(int(f * predicted) // 1024 * 1024, 1024) for f in PREDICTED_FRACTIONS]
        return [b for b in dict.fromkeys(sizes) if b <= limit]
    sizes, b = [], start
    while b <= limit:
        sizes.append(b)
        b *= 2
    return sizes


def largest_batch(start: int, limit: int, timeout: float,
                  predicted: int | None = None) -> tuple[int, list[dict]]:
    """The largest batch of :func:`search_sizes` whose chunk runs, and one row per size
    tried. Each size runs in a child process of its own, killed after ``timeout`` seconds
    (compiling a very large batch can take minutes); the search ends at the first size
    that does not fit, fails or runs out of time."""
    import subprocess

    ok, tried = 0, []
    for b in search_sizes(start, limit, predicted):
        t = time.perf_counter()
        try:
            r = subprocess.run([sys.executable, os.path.abspath(__file__), "--fits", str(b)],
                               timeout=timeout, check=False, capture_output=True, text=True)
            result = {0: "ran", OOM_EXIT: "out of memory"}.get(
                r.returncode, f"failed (exit {r.returncode}): {r.stderr[-300:]}")
        except subprocess.TimeoutExpired:
            result = f"not done after {timeout:.0f} s"
        tried.append({"lanes": b, "result": result,
                      "seconds": round(time.perf_counter() - t, 1)})
        print(f"  largest-batch search: {b:,} lanes: {result} "
              f"({tried[-1]['seconds']} s)", flush=True)
        if result != "ran":
            break
        ok = b
    return ok, tried


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=bench.arg_sizes, default="1000,10000,100000,1000000",
                    help="comma list of batch sizes B to time (default 1000,...,1000000)")
    ap.add_argument("--chunk", type=int, default=262_144,
                    help="lanes per simulate_batch call (default 2^18)")
    ap.add_argument("--max-batch", type=int, default=2**22,
                    help="upper end of the largest-batch search (0 skips the search)")
    ap.add_argument("--fit-timeout", type=bench.arg_seconds, default=240.0,
                    help="seconds each size of the largest-batch search may take")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"),
                    help="folder of the record gpu_<device>.json (default benchmarks/results)")
    ap.add_argument("--fits", type=int, default=None, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    for flag, v, low in (("--chunk", args.chunk, 1), ("--max-batch", args.max_batch, 0)):
        if v < low:
            ap.error(f"{flag}: {v} must be >= {low}")
    if args.fits is not None:
        return fits(args.fits)
    sizes = args.sizes
    os.makedirs(args.out, exist_ok=True)
    m = bench.machine()
    print(f"jaxsim accelerator benchmark on {m['device']} ({m['backend']})", flush=True)
    prep, params = _lanes(1)
    per_lane = bench._bytes_per_lane(prep.shape, params, prep.workload)
    tag = m["device"].replace(" ", "_").replace("/", "_")
    path = os.path.join(args.out, f"gpu_{tag}.json")
    result = {"rows": [], "bytes_per_lane": per_lane, "largest_batch": None,
              "machine": m,
              "command": " ".join(["python", "benchmarks/bench_gpu.py",
                                   *map(shlex.quote, argv)]),
              "date": time.strftime("%Y-%m-%d"), "complete": False,
              "env": {k: os.environ[k] for k in ("XLA_PYTHON_CLIENT_MEM_FRACTION",
                                                 "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_FLAGS")
                      if k in os.environ}}
    # the record is rewritten after every size, so a run cut short keeps what it measured
    for total in sizes:
        r = run_size(total, min(args.chunk, total), args.out)
        result["rows"].append(r)
        print(f"  B={total:>9,}  wall {r['wall_s']:8.2f} s  {r['config_requests_per_s']:>14,.0f}"
              f" config-requests/s  ({r['steps_per_lane']:.0f} steps, "
              f"{r['iterations_per_lane']:.0f} iterations per lane; "
              f"{r['lanes_not_ok']} lanes not ok; warm-up {r['warmup_s']:.1f} s)", flush=True)
        bench.write_record(path, result)
    if args.max_batch:
        rows = [xla_memory(b) for b in MEMORY_SIZES]
        stats = jax.devices()[0].memory_stats() or {}
        pred = predicted_largest(rows, stats.get("bytes_limit"))
        result.update(pred, xla_memory=rows)
        bench.write_record(path, result)
        print(f"  XLA's buffers: {pred['xla_bytes_per_lane'] / 1024:.1f} KiB per lane "
              f"(state + params {per_lane / 1024:.1f} KiB); predicted largest batch "
              f"{pred['predicted_largest_batch']}", flush=True)
        big, tried = largest_batch(min(args.chunk, args.max_batch), args.max_batch,
                                   args.fit_timeout, pred["predicted_largest_batch"])
        result["largest_batch"], result["largest_batch_search"] = big, tried
        print(f"  memory per lane {per_lane / 1024:.1f} KiB (state + params); largest batch "
              f"that ran: {big:,}", flush=True)
    result["complete"] = True
    bench.write_record(path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
