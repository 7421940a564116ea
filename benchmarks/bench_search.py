"""Optimiser benchmark and runner-overhead benchmark (search/).

1. Optimisers: on ``examples/optimizer_bench.yaml`` (4,608 grid points), the exhaustive
   optimum is compared with CMA-ES and gradient search, each limited to 5% of the
   evaluations (230 distinct points), over 10 seeds. The exhaustive pass simulates every
   point; the optimisers then read those exact results (simulation is deterministic),
   which makes many seeds cheap. Bar: within 1% of the exhaustive optimum.
2. Runner overhead: configs/s of ``search.runner`` (decode, validate, batch, simulate,
   write Parquet) against bare ``simulate_batch`` on the same batch, same B. Bar: >= 90%.

    python benchmarks/bench_search.py [--seeds 5] [--skip-runner]

Writes ``benchmarks/results/search_<backend>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxsim.bench import machine  # noqa: E402
from search import optimize, runner, space  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def optimisers(seeds: int) -> dict:
    sp = space.load(os.path.join(ROOT, "examples", "optimizer_bench.yaml"))
    o = sp.objectives
    prices = {"gpu_hour_usd": o["gpu_hour_usd"]}
    ev = optimize.Evaluator(sp, o["objective"], o["slo"], prices, batch_size=256)
    t = time.perf_counter()
    costs, values, status = optimize.grid_table(ev)
    ex_s = time.perf_counter() - t
    i_best = int(np.argmin(costs))
    best_cfg = sp.configs(sp.sample(np.array([i_best])))[0]
    budget = int(0.05 * sp.size)
    out = {"space": "examples/optimizer_bench.yaml", "grid_points": sp.size,
           "budget_evals": budget, "exhaustive_cost": float(costs[i_best]),
           "exhaustive_s": ex_s, "feasible_points": int(np.isfinite(costs).sum()),
           "exhaustive_config": {k: best_cfg[k] for k in ("gpu", "tp", "max_num_seqs",
                                                         "max_num_batched_tokens")}
           | {"rate": best_cfg["workload"]["rate"]},
           "note": "optimisers read the exhaustive pass's exact results (simulation is "
                   "deterministic); evaluations = distinct grid points read"}
    print(f"exhaustive: {sp.size} points simulated in {ex_s:.1f} s; optimum "
          f"{costs[i_best]:.5f} USD/Mtok at {out['exhaustive_config']}", flush=True)
    for name in ("cmaes", "gradient"):
        runs = []
        for seed in range(seeds):
            e2 = optimize.TableEvaluator(sp, costs, values, status)
            fn = optimize.cmaes_search if name == "cmaes" else optimize.gradient_search
            r = fn(e2, max_evals=budget, seed=seed)
            gap = r.cost / costs[i_best] - 1.0
            runs.append({"seed": seed, "cost": r.cost, "gap": gap, "evals": r.evaluations,
                         "status": r.status_str, "gpu": r.config["gpu"],
                         "tp": r.config["tp"], "rate": r.config["workload"]["rate"]})
            print(f"{name} seed {seed}: cost {r.cost:.5f} ({gap * 100:+.2f}% vs exhaustive) "
                  f"with {r.evaluations} evaluations ({r.evaluations / sp.size * 100:.1f}% of "
                  f"the grid), status {r.status_str}", flush=True)
        gaps = np.array([x["gap"] for x in runs])
        out[name] = {"runs": runs, "seeds_within_1pct": int(np.sum(gaps <= 0.01)),
                     "seeds": seeds, "median_gap": float(np.median(gaps)),
                     "max_evals": max(x["evals"] for x in runs)}
        print(f"{name}: {out[name]['seeds_within_1pct']}/{seeds} seeds within 1%", flush=True)
    return out


def runner_overhead(reps: int = 2) -> dict:
    from jaxsim import sim

    sp = space.load(os.path.join(ROOT, "examples", "sweep_100k.yaml"))
    plan = runner.make_plan(sp, chunk_size=1024)
    tmp = tempfile.mkdtemp()
    # warm up (compile) once
    b = runner.build_batch(sp, plan, runner.chunk_ids(plan, 0))
    runner.simulate_chunk(plan, b)
    t_run, t_bare = [], []
    for rep in range(reps):
        c = 1 + rep
        t = time.perf_counter()
        runner.run_chunk(sp, plan, c, tmp)
        t_run.append(time.perf_counter() - t)
        b = runner.build_batch(sp, plan, runner.chunk_ids(plan, c))
        from jaxsim.shapes import SimShape

        shape = SimShape(max_requests=plan.max_requests, max_slots=plan.slots,
                         chunk_iterations=plan.chunk_iterations)
        t = time.perf_counter()
        res = sim.simulate_batch(shape, b.params, b.workload, auto_slots=False)
        np.asarray(res.metrics["ttft_p99_s"])
        t_bare.append(time.perf_counter() - t)
        print(f"chunk {c}: runner {t_run[-1]:.2f} s, bare simulate_batch {t_bare[-1]:.2f} s",
              flush=True)
    ratio = min(t_bare) / min(t_run)
    print(f"runner throughput / bare simulate_batch throughput = {ratio:.3f}", flush=True)
    return {"chunk_size": 1024, "runner_s": t_run, "bare_s": t_bare,
            "runner_configs_per_s": 1024 / min(t_run), "bare_configs_per_s": 1024 / min(t_bare),
            "ratio_runner_over_bare": ratio}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--skip-runner", action="store_true")
    ap.add_argument("--skip-optimisers", action="store_true")
    a = ap.parse_args()
    path = os.path.join(ROOT, "benchmarks", "results", f"search_{machine()['backend']}.json")
    rec: dict = {}
    if os.path.exists(path):  # a skipped part keeps its previous record
        with open(path) as f:
            old = json.load(f)
        rec = {k: old[k] for k in ("runner", "optimisers") if k in old}
    cmd = ("python benchmarks/bench_search.py " + " ".join(sys.argv[1:])).strip()
    today = datetime.date.today().isoformat()
    if not a.skip_runner:
        rec["runner"] = runner_overhead() | {"command": cmd, "date": today}
    if not a.skip_optimisers:
        rec["optimisers"] = optimisers(a.seeds) | {"command": cmd, "date": today}
    rec["machine"] = machine()
    rec["command"] = cmd
    rec["date"] = today
    with open(path + ".tmp", "w") as f:
        json.dump(rec, f, indent=1)
    os.replace(path + ".tmp", path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
