"""ServeGen-shaped workloads (``workload.kind: servegen``) against Poisson arrivals at the
same rate: what production's burstiness and time of day do to latency.

    python benchmarks/servegen_compare.py [--requests 2000] [--out FILE]

Llama-3.1-8B on one H100 (shipped preset). For each pool and mean rate, three traces of
the same requests (the same drawn lengths):

- ``servegen <hour>``: the pool's arrivals from its busiest and from its quietest hour of
  day 1 (by the recorded rate of the hour's six windows), the record scaled to the mean
  rate;
- ``poisson``: the busiest hour's lengths with Poisson arrivals at the rate that trace
  actually ran at (requests / span), so only the arrival process differs.

Prints the realised rate, TTFT p50/p99, TPOT p99 and throughput; then the time to draw
10^6 requests of each pool.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from jaxsim import api, bench, servegen
from jaxsim.servegen import WINDOW_S
from jaxsim.workload import Trace

CASES = (("m-large", 10.0), ("deepseek-r1", 1.0))
CONFIG = {"model": "Llama-3.1-8B", "gpu": "H100-SXM"}


def _hours(pool: str) -> tuple[int, int]:
    """(busiest, quietest) hour of the record's first day, by recorded rate."""
    rates = servegen.window_rates(pool)[1][:144].reshape(24, 6).mean(axis=1)
    return int(np.argmax(rates)), int(np.argmin(rates))


def effect(requests: int) -> list[dict]:
    rows = []
    print(f"{'pool':<12}{'mean':>6}  {'arrivals':<22}{'req/s':>8}{'TTFT p50':>10}"
          f"{'TTFT p99':>10}{'TPOT p99':>10}{'done/s':>8}")
    for pool, rate in CASES:
        busy, quiet = _hours(pool)
        traces = {}
        for label, hour in ((f"servegen busiest h{busy}", busy),
                            (f"servegen quietest h{quiet}", quiet)):
            traces[label] = servegen.generate(pool, requests, rate=rate,
                                              start_s=hour * 6 * WINDOW_S, seed=0)
        ref = next(iter(traces.values()))
        own = (len(ref) - 1) / ref.arrival_s[-1]
        gaps = np.random.default_rng(0).exponential(1.0 / own, len(ref))
        traces["poisson (busiest's rate)"] = Trace(np.cumsum(gaps) - gaps[0],
                                                   ref.prompt_tokens, ref.output_tokens,
                                                   name="poisson")
        r = api.run([CONFIG] * len(traces), list(traces.values()))
        for i, (label, tr) in enumerate(traces.items()):
            m = {k: float(v[i]) for k, v in r.metrics.items()}
            got = (len(tr) - 1) / tr.arrival_s[-1]
            row = {"pool": pool, "mean_rate": rate, "arrivals": label, "rate": got,
                   "status": int(r.status[i]),
                   **{k: m[k] for k in ("ttft_p50_s", "ttft_p99_s", "tpot_p99_s",
                                        "throughput_rps", "completed", "preemptions")}}
            rows.append(row)
            print(f"{pool:<12}{rate:>6g}  {label:<22}{got:>8.2f}"
                  f"{m['ttft_p50_s'] * 1e3:>10.1f}{m['ttft_p99_s'] * 1e3:>10.1f}"
                  f"{m['tpot_p99_s'] * 1e3:>10.2f}{m['throughput_rps']:>8.2f}")
    return rows


def draw_cost() -> dict:
    out = {}
    for pool in servegen.POOLS:
        t0 = time.perf_counter()
        servegen.generate(pool, 10**6, rate=100.0, seed=0)
        out[pool] = time.perf_counter() - t0
        print(f"10^6 requests of {pool} at a mean of 100 req/s drawn in {out[pool]:.2f} s")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--out", help="file to write the record to (JSON; default: none)")
    args = p.parse_args(argv)
    rows = effect(args.requests)
    cost = draw_cost()
    if args.out:
        bench.write_record(args.out, {
            "machine": bench.machine(), "requests": args.requests, "rows": rows,
            "draw_seconds_1e6": cost, "command": "python benchmarks/servegen_compare.py",
            "date": time.strftime("%Y-%m-%d")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
