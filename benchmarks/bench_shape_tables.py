"""Cost of the per-kernel-shape correction tables in the simulator.

The same sweep (Llama-3.1-8B on one H100 with the shipped preset, Poisson 10 req/s,
512 in / 256 out, 1,000 requests, ``max_num_seqs`` varied across lanes) is run with
``cost_shape_tables`` on (the lanes carry the preset's O-projection, elementwise and
all-reduce tables) and off, alternating, after one compile each; the best wall time of
the repeats is compared. Also prints the memory the tables add per lane.

Usage: python benchmarks/bench_shape_tables.py [--lanes 256] [--repeats 3]
       [--out benchmarks/results/shape_tables_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

from jaxsim import api, shapecorr
from jaxsim.workload import synthetic


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lanes", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", help="file to write the record to (JSON; default: none)")
    args = p.parse_args(argv)
    tr = synthetic("poisson", 1000, 512, 256, rate=10.0, seed=0)
    times: dict[bool, list[float]] = {False: [], True: []}
    tpot = {}
    for rep in range(args.repeats + 1):
        for use in (False, True):
            cfgs = [{"model": "Llama-3.1-8B", "gpu": "H100-SXM", "max_num_seqs": 64 + i % 64,
                     "cost_shape_tables": use} for i in range(args.lanes)]
            t0 = time.perf_counter()
            r = api.run(cfgs, tr)
            dt = time.perf_counter() - t0
            if rep:  # the first round compiles
                times[use].append(dt)
            tpot[use] = float(r.lane(0)["tpot_p50_s"])
    best = {k: min(v) for k, v in times.items()}
    rate = {k: args.lanes * len(tr) / v for k, v in best.items()}
    table_bytes = len(shapecorr.CORR_OPS) * shapecorr.GRID * 4
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.processor()}",
        "lanes": args.lanes, "requests": len(tr), "repeats": args.repeats,
        "seconds_no_tables": times[False], "seconds_tables": times[True],
        "config_requests_per_s_no_tables": rate[False],
        "config_requests_per_s_tables": rate[True],
        "slowdown_best": best[True] / best[False],
        "table_bytes_per_lane": table_bytes,
        "tpot_p50_s_lane0": {"no_tables": tpot[False], "tables": tpot[True]},
    }
    print(f"{args.lanes} lanes x {len(tr)} requests, best of {args.repeats}:")
    print(f"  without tables {best[False]:.2f} s ({rate[False]:,.0f} config-req/s)")
    print(f"  with tables    {best[True]:.2f} s ({rate[True]:,.0f} config-req/s)")
    print(f"  ratio (with / without): {out['slowdown_best']:.3f}; tables add "
          f"{table_bytes:,} bytes per lane")
    print(f"  lane 0 TPOT p50: {tpot[False] * 1e3:.2f} ms without, {tpot[True] * 1e3:.2f} ms with")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
