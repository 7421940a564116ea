"""Event skipping with the prefix cache compiled in: steps, iterations and wall time.

Nine tier set-ups from HBM alone to remote memory (those of
``notebooks/03_memory_tiers.ipynb``), Llama-3.1-8B on one H100 with prefix caching, on
one of two workloads:

- ``shared`` (default): the core benchmark's workload (Poisson 10 req/s, 512 prompt and
  256 output tokens) whose requests share one of four 256-token system prompts (block
  ids every 16 tokens);
- ``mooncake``: the first N requests of the bundled Mooncake conversation trace with
  their outputs as recorded (multi-turn: block ids of 512 tokens cover earlier outputs).

Each runs with event skipping (``macro_iterations`` 16, the default of
``api.prepare``) and without it (0: every iteration a step), alternating, after one
first call each. Prints steps and iterations per lane, the best wall time of each and
their ratio, and the largest relative difference between the two runs' metrics. Writes
``results/prefix_skipping_<scenario>_cpu.json``.

    python benchmarks/bench_prefix_skipping.py [--scenario shared|mooncake]
        [--requests 300] [--repeats 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

HERE = os.path.dirname(os.path.abspath(__file__))

VARIANTS = {
    "HBM 50%": {"gpu_memory_utilization": 0.5},
    "HBM 90%": {},
    "+DRAM 64 GB": {"tiers": "dram", "tier": {"dram": {"capacity_gb": 64}}},
    "+DRAM 512 GB": {"tiers": "dram", "tier": {"dram": {"capacity_gb": 512}}},
    "+CXL 512 GB": {"tiers": "cxl", "tier": {"cxl": {"capacity_gb": 512}}},
    "+SSD": {"tiers": "ssd"},
    "+SSD at 1 GB/s": {"tiers": "ssd", "tier": {"ssd": {"read_gbps": 1.0}}},
    "+DRAM 64 GB +SSD": {"tiers": "dram,ssd", "tier": {"dram": {"capacity_gb": 64}}},
    "+remote (400G NIC)": {"tiers": "remote"},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", choices=("mooncake", "shared"), default="shared")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None,
                    help="the record's file (default: "
                         "benchmarks/results/prefix_skipping_<scenario>_cpu.json)")
    args = ap.parse_args(argv)
    out_path = args.out or os.path.join(HERE, "results",
                                        f"prefix_skipping_{args.scenario}_cpu.json")

    from jaxsim import cli

    cli.use_every_core()
    import jax
    import numpy as np

    from jaxsim import api, traces
    from jaxsim.bench import machine, write_record
    from jaxsim.sim import simulate_batch
    from jaxsim.workload import synthetic, with_shared_prefixes

    if args.scenario == "mooncake":
        trace = traces.bundled("mooncake_conversation_2k").head(args.requests)
        base = {"model": "Llama-3.1-8B", "gpu": "H100-SXM", "enable_prefix_caching": True,
                "max_num_batched_tokens": 16384, "cache": {"load_overlap": 1.0}}
    else:  # the core benchmark's workload, with four 256-token system prompts
        trace = with_shared_prefixes(
            synthetic("poisson", args.requests, 512, 256, rate=10.0, seed=0), 4, 256,
            block_tokens=16)
        base = {"model": "Llama-3.1-8B", "gpu": "H100-SXM", "enable_prefix_caching": True,
                "max_num_seqs": 256, "max_num_batched_tokens": 2048}
    configs = [{**base, **v} for v in VARIANTS.values()]
    prep = api.prepare(configs, trace, chunk_iterations=256)
    shapes = {"skipping": prep.shape,
              "stepping": dataclasses.replace(prep.shape, macro_iterations=0)}
    print(f"{args.scenario}: {len(trace)} requests, {len(configs)} tier set-ups, K = "
          f"{prep.shape.cache_entries} cache rows, T = {prep.shape.num_tiers}, "
          f"macro_iterations {prep.shape.macro_iterations}", flush=True)
    res, wall, compile_s = {}, {}, {}
    for name, shape in shapes.items():  # first run: compile + run
        print(f"  {name}: first call", flush=True)
        t0 = time.perf_counter()
        res[name] = simulate_batch(shape, prep.params, prep.workload)
        compile_s[name] = time.perf_counter() - t0
        wall[name] = float("inf")
    for _ in range(args.repeats):
        for name, shape in shapes.items():
            t0 = time.perf_counter()
            r = simulate_batch(shape, prep.params, prep.workload)
            jax.block_until_ready(r.state)
            wall[name] = min(wall[name], time.perf_counter() - t0)
    a, b = res["skipping"], res["stepping"]
    worst, worst_key = 0.0, ""
    for k in sorted(set(a.metrics) - {"steps"}):
        x = np.asarray(a.metrics[k], np.float64)
        y = np.asarray(b.metrics[k], np.float64)
        if x.shape != y.shape:
            continue
        both = np.isfinite(x) & np.isfinite(y)
        if not np.array_equal(np.isfinite(x), np.isfinite(y)):
            worst, worst_key = float("inf"), k
            break
        d = np.abs(x - y)[both] / np.maximum(np.abs(y[both]), 1e-30)
        if d.size and float(d.max()) > worst:
            worst, worst_key = float(d.max()), k
    steps = np.asarray(a.metrics["steps"], np.float64)
    iters = np.asarray(a.metrics["iterations"], np.float64)
    out = {
        "requests": len(trace),
        "lanes": len(configs),
        "steps_per_lane_skipping": float(steps.mean()),
        "steps_per_lane_stepping": float(np.asarray(b.metrics["steps"], np.float64).mean()),
        "iterations_per_lane": float(iters.mean()),
        "wall_s_skipping": wall["skipping"],
        "wall_s_stepping": wall["stepping"],
        "speedup": wall["stepping"] / wall["skipping"],
        "first_call_s_skipping": compile_s["skipping"],
        "first_call_s_stepping": compile_s["stepping"],
        "max_rel_metric_diff": worst,
        "max_rel_metric_diff_key": worst_key,
        "status_ok": bool(np.all(np.asarray(a.status) == 0)),
        "machine": machine(),
        "scenario": args.scenario,
        "command": (f"python benchmarks/bench_prefix_skipping.py --scenario {args.scenario} "
                    f"--requests {args.requests} --repeats {args.repeats}"),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(f"  steps per lane {out['steps_per_lane_skipping']:.0f} with skipping, "
          f"{out['steps_per_lane_stepping']:.0f} without "
          f"({out['iterations_per_lane']:.0f} iterations)")
    print(f"  wall (best of {args.repeats}): {wall['skipping']:.2f} s skipping, "
          f"{wall['stepping']:.2f} s stepping: {out['speedup']:.2f}x")
    print(f"  largest relative metric difference {worst:.2e} ({worst_key}); "
          f"all lanes ok: {out['status_ok']}")
    write_record(out_path, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
