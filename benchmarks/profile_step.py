"""Where a step's time goes: an XLA profile of the core scenario's compiled chunk.

    python benchmarks/profile_step.py [--batch 1024] [--top 25] [--macro K]

Runs the core scenario (``jaxsim.bench``) for B lanes, traces three chunks of 64 steps
with ``jax.profiler.trace``, and sums the duration of every compiled operation by name
(over all threads, so a 2-core machine can show up to twice the wall time). Prints the
wall time per lane-step, the kernel time per lane-step by kind of operation
(reduce-window is ``cumsum`` on CPU; concatenate comes from stacking per-lane scalars),
the number of distinct operations in a step, and the largest ones.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

KINDS = ("reduce-window", "concatenate", "gather", "scatter", "sort", "dot")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--macro", type=int, default=None,
                    help="SimShape.macro_iterations (default: the benchmark's)")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp

    from jaxsim import bench, sim

    B, L, chunks = args.batch, 64, 3
    prep, params = bench._prepare(1000, B, macro=args.macro)
    shape = dataclasses.replace(prep.shape, chunk_iterations=L)
    state = sim._init_batch(shape, params, prep.workload, jnp.int32(10**6), False)
    state, _, _ = sim._run_chunk_batch(shape, params, prep.workload, state, False)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(chunks):
        state, _, _ = sim._run_chunk_batch(shape, params, prep.workload, state, False)
    jax.block_until_ready(state)
    wall = (time.perf_counter() - t0) / (chunks * L)
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(chunks):
                state, _, _ = sim._run_chunk_batch(shape, params, prep.workload, state, False)
            jax.block_until_ready(state)
        path = glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True)[0]
        with gzip.open(path) as f:
            events = json.load(f)["traceEvents"]
    total, count = collections.Counter(), collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or name.startswith(("ThunkExecutor", "$", "while")):
            continue
        total[name] += e["dur"]
        count[name] += 1
    steps = chunks * L
    per_lane = {k: v / steps / B * 1e3 for k, v in total.items()}  # ns per lane-step
    kinds = collections.Counter()
    for k, v in per_lane.items():
        kinds[next((x for x in KINDS if x in k), "other (elementwise and reductions)")] += v
    print(f"B = {B}: {wall * 1e3:.2f} ms per step, {wall / B * 1e6:.2f} us per lane-step "
          f"(wall); kernel time {sum(per_lane.values()) / 1e3:.2f} us per lane-step "
          f"(all threads), {len(total)} distinct operations")
    for k, v in kinds.most_common():
        print(f"  {k:36s} {v:7.0f} ns per lane-step")
    print("largest operations (ns per lane-step, calls per step):")
    for k, v in sorted(per_lane.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {v:7.1f}  {count[k] / steps:5.1f}x  {k[:80]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
