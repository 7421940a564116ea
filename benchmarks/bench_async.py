"""The cost of asynchronous scheduling (docs/semantics.md §2.10) in the simulator.

    python benchmarks/bench_async.py [--lanes 128] [--repeats 2] [--out FILE]

Lanes of the core scenario (Llama-3.1-8B, H100, uncalibrated, Poisson 10 req/s, 512/256
tokens, 1,000 requests) with ``async_scheduling`` off and on, each compiled once, then
timed in alternation; prints the best wall times, the steps and iterations per lane, and
their ratio. A batch without an asynchronous lane does not compile it in
(``SimShape.async_scheduling``), so "off" is the ordinary step.
"""

from __future__ import annotations

import argparse
import time

from jaxsim import api, bench
from jaxsim.workload import synthetic


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lanes", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", help="file to write the record to (JSON; default: none)")
    args = p.parse_args(argv)
    tr = synthetic("poisson", 1000, 512, 256, rate=10.0, seed=0)
    prepared = {a: api.prepare([{"cost_preset": "uncalibrated", "async_scheduling": a,
                                 "max_slots": 64}] * args.lanes, tr) for a in (False, True)}
    times, counts = bench.alternate(prepared, args.repeats)
    best = {a: min(v) for a, v in times.items()}
    out = {
        "machine": bench.machine(), "lanes": args.lanes, "requests": len(tr),
        "repeats": args.repeats, "seconds_off": times[False], "seconds_on": times[True],
        "steps_per_lane": {"off": counts[False][0], "on": counts[True][0]},
        "iterations_per_lane": {"off": counts[False][1], "on": counts[True][1]},
        "ratio_on_over_off": best[True] / best[False],
        "command": "python benchmarks/bench_async.py", "date": time.strftime("%Y-%m-%d"),
    }
    print(f"{args.lanes} lanes x {len(tr)} requests, best of {args.repeats}:")
    for a, name in ((False, "off"), (True, "on ")):
        print(f"  async_scheduling {name}: {best[a]:.2f} s "
              f"({args.lanes * len(tr) / best[a]:,.0f} config-requests/s), "
              f"{counts[a][0]} steps, {counts[a][1]} iterations per lane")
    print(f"  ratio (on / off): {out['ratio_on_over_off']:.3f}")
    if args.out:
        bench.write_record(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
