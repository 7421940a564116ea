"""Lane compaction: a sweep's wall time is not set by its slowest lanes.

One batch of lanes with per-lane workloads of two lengths: every 8th lane serves 1,000
requests, the others 125 (Llama-3.1-8B on one H100, uncalibrated, Poisson 10 req/s,
512 in / 256 out). Once the short lanes finish, at most a quarter of the batch is
still running, and with compaction (``simulate_batch(compact_lanes=True)``, the
default) the long lanes continue alone in a batch a quarter the size. The batch is
run with compaction on and off, alternating, after one compile round, and the long
lanes are also run alone (a batch of just them: what the tail costs at best). Every
metric must be identical with and without compaction.

Compaction is checked between chunks (``chunk_iterations`` steps), so it can only help
once a run spans several chunks: ``--chunk`` sets the chunk length.

Usage: python benchmarks/bench_compaction.py [--lanes 256] [--repeats 3] [--chunk 256]
       [--out benchmarks/results/compaction_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from jaxsim import api, bench
from jaxsim.fileio import cannot_write
from jaxsim.sim import simulate_batch
from jaxsim.workload import synthetic

LONG, SHORT, EVERY = 1000, 125, 8


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lanes", type=bench.arg_int(1), default=256)
    p.add_argument("--repeats", type=bench.arg_int(1), default=3)
    p.add_argument("--chunk", type=bench.arg_int(1), default=256,
                   help="chunk_iterations: steps between compaction checks (default 256)")
    p.add_argument("--out", help="file to write the record to (JSON; default: none)")
    args = p.parse_args(argv)
    why = args.out and cannot_write(args.out)  # before the work whose record it is
    if why:
        p.error(f"--out {args.out!r}: {why}")
    cfg = {"model": "Llama-3.1-8B", "gpu": "H100-SXM", "cost_preset": "uncalibrated"}
    lengths = [LONG if i % EVERY == 0 else SHORT for i in range(args.lanes)]
    traces = [synthetic("poisson", n, 512, 256, rate=10.0, seed=i)
              for i, n in enumerate(lengths)]
    prep = api.prepare([cfg] * args.lanes, traces, chunk_iterations=args.chunk)
    long_idx = [i for i, n in enumerate(lengths) if n == LONG]
    prep_long = api.prepare([cfg] * len(long_idx), [traces[i] for i in long_idx],
                            chunk_iterations=args.chunk)

    def run(which):
        if which == "long lanes alone":
            return simulate_batch(prep_long.shape, prep_long.params, prep_long.workload)
        return simulate_batch(prep.shape, prep.params, prep.workload,
                              compact_lanes=which == "compaction on")

    kinds = ("compaction on", "compaction off", "long lanes alone")
    times: dict[str, list[float]] = {k: [] for k in kinds}
    res = {}
    for rep in range(args.repeats + 1):
        for k in kinds:
            t0 = time.perf_counter()
            res[k] = run(k)
            dt = time.perf_counter() - t0
            if rep:  # the first round compiles
                times[k].append(dt)
    on, off = res["compaction on"].metrics, res["compaction off"].metrics
    identical = all(np.array_equal(on[k], off[k], equal_nan=True) for k in on)
    best = {k: min(v) for k, v in times.items()}
    reqs = sum(lengths)
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor()}",
        "lanes": args.lanes, "long_lanes": len(long_idx), "long_requests": LONG,
        "short_requests": SHORT, "repeats": args.repeats, "chunk_iterations": args.chunk,
        "steps_per_lane": {"long": float(np.mean(res["compaction on"].metrics["steps"][
            np.asarray(long_idx)])), "short": float(np.median(
                res["compaction on"].metrics["steps"]))},
        "seconds": times,
        "best_s": best,
        "config_requests_per_s": {k: reqs / best[k] for k in kinds[:2]},
        "speedup_compaction": best["compaction off"] / best["compaction on"],
        "tail_share_of_compacted_run": best["long lanes alone"] / best["compaction on"],
        "metrics_identical": bool(identical),
        "lanes_not_ok": int(np.sum(res["compaction on"].status != 0)),
    }
    print(f"{args.lanes} lanes ({len(long_idx)} x {LONG} requests, the rest x {SHORT}), "
          f"chunks of {args.chunk} steps, best of {args.repeats}; steps per lane: long "
          f"{out['steps_per_lane']['long']:.0f}, short {out['steps_per_lane']['short']:.0f}")
    for k in kinds:
        print(f"  {k:<17} {best[k]:6.2f} s")
    print(f"  ratio off / on: {out['speedup_compaction']:.2f}x; the long lanes alone take "
          f"{out['tail_share_of_compacted_run']:.2f} of the compacted run; metrics identical: "
          f"{identical}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
