"""Speculative decoding (docs/semantics.md §9): what it does to latency, and what it costs
the simulator.

    python benchmarks/spec_compare.py [--requests 1000] [--lanes 128] [--out FILE]

1. Effect: Poisson arrivals of 512/256-token requests (shipped presets), without
   speculative decoding and with 3 n-gram drafts, 3 EAGLE drafts (one layer of the
   model's shape) and, for Llama-3.1-70B at TP 4, 4 drafts of Llama-3.1-8B, all at a
   per-token acceptance of 0.7, at a low and a high rate. Prints TTFT and TPOT p50,
   throughput and the acceptance rate.
2. Cost: ``--lanes`` lanes of the core scenario (Llama-3.1-8B, H100, uncalibrated,
   10 req/s) with ``speculative`` off (event skipping on) and with 3 n-gram drafts and
   3 EAGLE drafts (compiled in: every iteration is its own step), each compiled once,
   then timed in alternation; best wall time of ``--repeats`` each, steps and
   iterations per lane, and the ratios.
"""

from __future__ import annotations

import argparse
import time

from jaxsim import api, bench
from jaxsim.workload import synthetic

OFF = {}
NGRAM = {"speculative": {"num_tokens": 3, "acceptance": 0.7, "method": "ngram"}}
EAGLE = {"speculative": {"num_tokens": 3, "acceptance": 0.7, "method": "eagle"}}
DRAFT = {"speculative": {"num_tokens": 4, "acceptance": 0.7, "method": "draft_model",
                         "draft_model": "Llama-3.1-8B"}}
EFFECT = (  # (model, tp, rates, variants)
    ("Llama-3.1-8B", 1, (10.0, 40.0), (("off", OFF), ("ngram K=3", NGRAM),
                                       ("eagle K=3", EAGLE))),
    ("Llama-3.1-70B", 4, (5.0, 20.0), (("off", OFF), ("eagle K=3", EAGLE),
                                       ("draft 8B K=4", DRAFT))),
)


def effect(requests: int) -> list[dict]:
    rows = []
    print(f"{'model':<15}{'tp':>3}{'rate':>6}  {'speculative':<14}{'TTFT p50':>10}"
          f"{'TPOT p50':>10}{'TPOT p99':>10}{'req/s':>8}{'accept':>8}")
    for model, tp, rates, variants in EFFECT:
        for rate in rates:
            tr = synthetic("poisson", requests, 512, 256, rate=rate, seed=0)
            for name, cfg in variants:
                r = api.run({"model": model, "tp": tp, **cfg}, tr)
                m = {k: float(v[0]) for k, v in r.metrics.items()}
                row = {"model": model, "tp": tp, "rate": rate, "speculative": name,
                       "status": int(r.status[0]),
                       **{k: m[k] for k in ("ttft_p50_s", "ttft_p99_s", "tpot_p50_s",
                                            "tpot_p99_s", "throughput_rps", "completed",
                                            "spec_acceptance_rate", "kv_occupancy_peak")}}
                rows.append(row)
                print(f"{model:<15}{tp:>3}{rate:>6g}  {name:<14}"
                      f"{m['ttft_p50_s'] * 1e3:>10.1f}{m['tpot_p50_s'] * 1e3:>10.2f}"
                      f"{m['tpot_p99_s'] * 1e3:>10.2f}{m['throughput_rps']:>8.2f}"
                      f"{m['spec_acceptance_rate']:>8.3f}")
    return rows


def cost(lanes: int, repeats: int) -> dict:
    tr = synthetic("poisson", 1000, 512, 256, rate=10.0, seed=0)
    variants = {"off": OFF, "ngram": NGRAM, "eagle": EAGLE}
    prepared = {k: api.prepare([{"cost_preset": "uncalibrated", "max_slots": 64, **c}]
                               * lanes, tr) for k, c in variants.items()}
    times, counts = bench.alternate(prepared, repeats)
    best = {k: min(v) for k, v in times.items()}
    print(f"\n{lanes} core-scenario lanes x {len(tr)} requests, best of {repeats}:")
    for k in variants:
        print(f"  {k:<6} {best[k]:6.2f} s ({lanes * len(tr) / best[k]:>9,.0f} "
              f"config-requests/s), {counts[k][0]} steps, {counts[k][1]} iterations per lane;"
              f" {best[k] / best['off']:.2f}x off")
    return {"lanes": lanes, "requests": len(tr), "repeats": repeats, "seconds": times,
            "steps_per_lane": {k: c[0] for k, c in counts.items()},
            "iterations_per_lane": {k: c[1] for k, c in counts.items()},
            "ratio_over_off": {k: best[k] / best["off"] for k in variants}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--lanes", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", help="file to write the record to (JSON; default: none)")
    args = p.parse_args(argv)
    rows = effect(args.requests)
    c = cost(args.lanes, args.repeats)
    if args.out:
        bench.write_record(args.out, {
            "machine": bench.machine(), "requests": args.requests, "rows": rows,
            "cost": c, "command": "python benchmarks/spec_compare.py",
            "date": time.strftime("%Y-%m-%d")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
