"""Priority scheduling (docs/semantics.md §10): what it does to each class, and its cost.

    python benchmarks/priority_compare.py [--lanes 128] [--repeats 2] [--out FILE]

Part 1, the README's table: Llama-3.1-8B on one H100 (shipped preset), 1,000 Poisson
requests of 512/256 tokens, a fifth of them at priority 0 (interactive) and the rest at
1 (batch; ``workload.priority_mix: [0.2, 0.8]``), at 10, 20 and 40 req/s, and at 20 req/s
with the KV cache cut to 2,000 blocks (32,000 tokens: preemptions), each under
``scheduling_policy`` fcfs and priority: TTFT p50/p99 and TPOT p99 per level,
preemptions per level, throughput.

Part 2, the simulator's cost: ``--lanes`` lanes of the core scenario (uncalibrated,
10 req/s) without priorities, with the same priorities under fcfs (priority scheduling
compiled in for the metrics per level), and under priority, each compiled once, then
timed in alternation; best wall times, steps per lane and the ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from jaxsim import api, bench, config
from jaxsim.workload import synthetic

MIX = [0.2, 0.8]


def _table() -> list[dict]:
    rows = []
    for rate, blocks in ((10.0, None), (20.0, None), (40.0, None), (20.0, 2000)):
        base = {"model": "Llama-3.1-8B", "gpu": "H100-SXM",
                "workload": {"rate": rate, "num_requests": 1000, "priority_mix": MIX}}
        if blocks:
            base["num_gpu_blocks"] = blocks
        cfgs = [{**base, "scheduling_policy": p} for p in ("fcfs", "priority")]
        tr = config.build_trace(config.validate(cfgs[0]))
        res = api.run(cfgs, tr)
        for i, c in enumerate(cfgs):
            m = {k: float(v[i]) for k, v in res.metrics.items()}
            row = {"rate": rate, "num_gpu_blocks": blocks, "policy": c["scheduling_policy"],
                   "status": int(res.status[i]), "throughput_rps": m["throughput_rps"],
                   "preemptions": int(m["preemptions"])}
            for p in range(len(MIX)):
                for k in ("ttft_p50_s", "ttft_p99_s", "tpot_p99_s"):
                    row[f"{k}_prio{p}"] = m[f"{k}_prio{p}"]
                row[f"preemptions_prio{p}"] = int(m[f"preemptions_prio{p}"])
            rows.append(row)
    return rows


def _cost(lanes: int, repeats: int) -> dict:
    tr = synthetic("poisson", 1000, 512, 256, rate=10.0, seed=0)
    rng = np.random.default_rng(1)
    tr_p = dataclasses.replace(tr, priority=rng.choice(2, size=len(tr), p=MIX))
    cases = {"fcfs, no priorities": (tr, "fcfs"), "fcfs, priorities": (tr_p, "fcfs"),
             "priority": (tr_p, "priority")}
    prepared = {k: api.prepare([{"cost_preset": "uncalibrated", "max_slots": 64,
                                 "scheduling_policy": pol}] * lanes, t)
                for k, (t, pol) in cases.items()}
    times, steps = bench.alternate(prepared, repeats)
    best = {k: min(v) for k, v in times.items()}
    base = best["fcfs, no priorities"]
    return {"lanes": lanes, "requests": len(tr), "repeats": repeats, "seconds": times,
            "steps_iterations_per_lane": steps,
            "ratio_over_fcfs_without_priorities": {k: v / base for k, v in best.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lanes", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", help="file to write the record to (JSON; default: none)")
    args = p.parse_args(argv)
    rows = _table()
    print("Llama-3.1-8B, 1x H100-SXM, 1,000 Poisson requests of 512/256, levels 0/1 = "
          "20%/80% (ms)")
    print(f"  {'rate':>5} {'blocks':>6} {'policy':<9}{'TTFT p50 0':>11}{'p99 0':>9}"
          f"{'TPOT p99 0':>11}{'TTFT p50 1':>11}{'p99 1':>9}{'TPOT p99 1':>11}"
          f"{'preempt 0/1':>12}{'req/s':>7}")
    for r in rows:
        print(f"  {r['rate']:>5g} {r['num_gpu_blocks'] or '-':>6} {r['policy']:<9}"
              + "".join(f"{r[f'{k}_prio{p}'] * 1e3:>{w}.1f}" for p in (0, 1)
                        for k, w in (("ttft_p50_s", 11), ("ttft_p99_s", 9),
                                     ("tpot_p99_s", 11)))
              + f"{r['preemptions_prio0']:>6}/{r['preemptions_prio1']:<5}"
              + f"{r['throughput_rps']:>7.2f}")
    cost = _cost(args.lanes, args.repeats)
    print(f"Simulator cost: {args.lanes} core-scenario lanes x 1,000 requests, best of "
          f"{args.repeats}:")
    for k, v in cost["seconds"].items():
        s_, it = cost["steps_iterations_per_lane"][k]
        print(f"  {k:<22} {min(v):6.2f} s  ({cost['ratio_over_fcfs_without_priorities'][k]:.2f}"
              f"x), {s_} steps for {it} iterations per lane")
    if args.out:
        bench.write_record(args.out, {
            "machine": bench.machine(), "table": rows, "cost": cost,
            "command": "python benchmarks/priority_compare.py",
            "date": time.strftime("%Y-%m-%d")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
