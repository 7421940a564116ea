"""Where a batch size stalls: compile and run the chunk function for several lane counts.

    python benchmarks/probe_chunk.py --sizes 1000,2500,3000,10000 [--timeout 120]

For each B, in a child process of its own (killed after ``--timeout`` seconds, so one
stalled size does not stop the others), the core-scenario lanes of ``bench_gpu.py`` are
built and the chunk function is lowered, compiled ahead of time and run for four chunks
(compaction and metrics are not involved). Each stage prints its time as it ends, so the
last line of a killed size names the stage it stalled in. ``--simulate`` instead runs the
whole ``simulate_batch`` for each B twice, each in its own child: with lane compaction off
(one batch size, then the metrics) and on (as ``bench_gpu.py`` runs it), printing the
time of each; a size that finishes without compaction but not with it stalls in a
compacted batch size (B/4, B/16, ... down to 64). Environment variables pass to the
children unchanged, e.g. ``XLA_FLAGS=--xla_gpu_autotune_level=4`` to compare autotuning.

Each child logs its compiles (``JAX_LOG_COMPILES``), times every jitted piece that
``simulate_batch`` calls, and prints its Python stacks ten seconds before it is killed.

On one H200 (JAX 0.11.2, 2026-11-23) this found the chunk function stalling at 1,536 to
4,096 lanes and running at 1,024, 1,200 and 6,000 or more; ``jaxsim.sim.GPU_AVOID_LANES``
keeps working batches out of that range (benchmarks/README.md). Several sizes can be
probed at once, one process each, with ``XLA_PYTHON_CLIENT_PREALLOCATE=false``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from jaxsim import bench  # noqa: E402


def probe(b: int, chunks: int) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, os.path.dirname(__file__))
    import bench_gpu

    from jaxsim import sim

    def say(msg: str) -> None:
        print(f"B={b}: {msg}", flush=True)

    t = time.perf_counter()
    prep, params = bench_gpu._lanes(b)
    shape, wl = prep.shape, prep.workload
    st = sim._init_batch(shape, params, wl, jnp.int32(10**6), False)
    jax.block_until_ready(st)
    say(f"lanes built and initialised in {time.perf_counter() - t:.1f} s "
        f"({jax.devices()[0].device_kind})")
    t = time.perf_counter()
    lowered = sim._run_chunk_batch.lower(shape, params, wl, st, False)
    say(f"lowered in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    compiled = lowered.compile()
    say(f"compiled in {time.perf_counter() - t:.1f} s")
    for c in range(chunks):
        t = time.perf_counter()
        st, done, n = compiled(params, wl, st)
        done = np.asarray(done)
        say(f"chunk {c}: {int(n)} steps in {time.perf_counter() - t:.3f} s, "
            f"{int(done.sum())} lanes done")


def _trace_calls(sim, label: str) -> None:
    """Wrap the jitted pieces ``simulate_batch`` calls so that each call blocks on its
    result and prints its time and lane count: the last line before a stall names it."""
    import jax

    def wrap(name):
        fn = getattr(sim, name)

        def traced(*args, **kwargs):
            lanes = [x.shape[0] for x in jax.tree_util.tree_leaves(args)
                     if getattr(x, "ndim", 0) >= 1][:1]
            print(f"{label}: {name} on {lanes} lanes ...", flush=True)
            t = time.perf_counter()
            out = jax.block_until_ready(fn(*args, **kwargs))
            print(f"{label}: {name} done in {time.perf_counter() - t:.3f} s", flush=True)
            return out

        setattr(sim, name, traced)

    for name in ("_init_batch", "_run_chunk_batch", "_gather", "_scatter", "_finish_batch"):
        wrap(name)


def probe_simulate(b: int, compact: bool) -> None:
    import jax

    sys.path.insert(0, os.path.dirname(__file__))
    import bench_gpu

    from jaxsim import sim

    sim.GPU_AVOID_LANES = None  # probe the sizes themselves, not their padded stand-ins
    prep, params = bench_gpu._lanes(b)
    _trace_calls(sim, f"B={b} compaction {'on' if compact else 'off'}")
    t = time.perf_counter()
    res = sim.simulate_batch(prep.shape, params, prep.workload, compact_lanes=compact)
    jax.block_until_ready(res.metrics)
    print(f"B={b}: simulate_batch with compaction {'on' if compact else 'off'}: "
          f"{time.perf_counter() - t:.1f} s including compilation, "
          f"{int((res.status != 0).sum())} lanes not ok", flush=True)


def _child(args: list[str], label: str, timeout: float) -> None:
    t = time.perf_counter()
    try:
        # the child prints every thread's Python stack shortly before it is killed
        subprocess.run([sys.executable, __file__, *args, "--dump-after",
                        str(max(timeout - 10, 1))], timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        print(f"{label}: killed after {time.perf_counter() - t:.0f} s (the stage after "
              "the last line above did not end)", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=bench.arg_sizes, default="1000,2500,3000,10000")
    ap.add_argument("--timeout", type=bench.arg_seconds, default=120.0,
                    help="seconds per size")
    ap.add_argument("--chunks", type=bench.arg_int(1), default=4)
    ap.add_argument("--simulate", action="store_true",
                    help="run simulate_batch with compaction off, then on, per size")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--compact", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dump-after", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        if args.dump_after:
            import faulthandler

            faulthandler.dump_traceback_later(args.dump_after, exit=False)
        os.environ.setdefault("JAX_LOG_COMPILES", "1")
        if args.compact is None:
            probe(args.child, args.chunks)
        else:
            probe_simulate(args.child, bool(args.compact))
        return 0
    for b in args.sizes:
        if not args.simulate:
            _child(["--child", str(b), "--chunks", str(args.chunks)], f"B={b}",
                   args.timeout)
            continue
        for compact in (0, 1):
            _child(["--child", str(b), "--compact", str(compact)],
                   f"B={b} compaction {'on' if compact else 'off'}", args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
