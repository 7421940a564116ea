"""Core benchmark: jaxsim batched vs single configuration vs the reference event simulator.

    python benchmarks/bench_core.py [--quick] [--out benchmarks/results]

Runs ``jaxsim.bench`` (compile time, config-requests/s at B=1 and B=1024, the latter on
one CPU device per core and on one device, iteration
time with 1k and 100k requests, memory per lane) and times the plain-Python reference
simulator (tests/reference/event_sim.py, single thread) on the same scenario, then
prints the ratios and writes a JSON record with the machine it ran on and the command.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from jaxsim import bench, cli  # noqa: E402


def reference_rps(repeats: int = 3) -> dict:
    """Requests/s of the single-threaded reference simulator on the scenario."""
    from jaxsim import api
    from jaxsim.workload import synthetic
    from tests.helpers import oracle_config, oracle_workload
    from tests.reference.event_sim import simulate_reference

    trace = synthetic("poisson", 1000, bench.PROMPT, bench.OUTPUT, rate=bench.RATE, seed=0)
    prep = api.prepare(bench.SCENARIO, trace, max_slots=bench.SLOTS)
    from jaxsim import params as P

    cfg = oracle_config(P.index(prep.params, 0))
    wl = oracle_workload(trace)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        ref = simulate_reference(wl, cfg)
        best = min(best, time.perf_counter() - t0)
    return {"reference_wall_s": best, "reference_requests_per_s": 1000 / best,
            "reference_iterations": int(ref["iterations"]),
            "reference_ttft_p50_s": float(ref["metrics"]["ttft_p50_s"])}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"),
                    help="folder of the record core_<tag>.json (default benchmarks/results)")
    ap.add_argument("--tag", default=None, help="file name tag (default: backend + cpus)")
    ap.add_argument("--slots", type=bench.arg_int(1), default=bench.SLOTS,
                    help="slot-table size S (default 64)")
    args = ap.parse_args()
    cli.use_every_core()  # one CPU device per core, as the `jaxsim bench` command does
    result = bench.run(quick=args.quick, verbose=True, slots=args.slots)
    ref = reference_rps()
    result.update(ref)
    big_key = [k for k in result if k.startswith("config_requests_per_s_b")
               and not k.endswith(("_b1", "_one_device"))][0]
    cores = result["machine"]["cpu_count"] or 1
    result["ratio_batched_over_reference"] = result[big_key] / ref["reference_requests_per_s"]
    result["ratio_batched_over_reference_per_core"] = result["ratio_batched_over_reference"] / \
        cores
    print(f"  reference event simulator (1 thread): {ref['reference_requests_per_s']:.0f} "
          f"requests/s ({ref['reference_wall_s']:.2f} s for 1000 requests, "
          f"{ref['reference_iterations']} iterations)")
    print(f"  ratio jaxsim {big_key[len('config_requests_per_s_'):]} / reference: "
          f"{result['ratio_batched_over_reference']:.1f}x on {cores} cores "
          f"({result['ratio_batched_over_reference_per_core']:.1f}x per core)")
    result["command"] = shlex.join(["python", "benchmarks/bench_core.py", *sys.argv[1:]])
    result["date"] = time.strftime("%Y-%m-%d")
    os.makedirs(args.out, exist_ok=True)
    m = result["machine"]
    tag = args.tag or f"{m['backend']}_{m['cpu_count']}cpu" + ("_quick" if args.quick else "") \
        + (f"_s{args.slots}" if args.slots != bench.SLOTS else "")
    path = os.path.join(args.out, f"core_{tag}.json")
    bench.write_record(path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
