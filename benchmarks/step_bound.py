"""How many steps event skipping needs on the core scenario, and how few any rule for
ending a decode run could need.

    PYTHONPATH=. python benchmarks/step_bound.py

Runs the reference simulator on the core scenario (``jaxsim.bench``: Llama-3.1-8B, H100,
Poisson 10 req/s, 512/256, 1000 requests), puts its admissions (the start of the
iteration that admits a request) and finishes (the end of the iteration that finishes
one) on a grid of iterations of the mean iteration time, and replays the macro-step
rule over that grid: a step is a run of decode iterations that ends before the
iteration in which a request is admitted, at the ``levels``-th iteration in which a
request finishes, or after ``cap`` iterations, then one ordinary iteration. ``levels
1`` is the older rule (a run ends with the first finish, measured 1,946 steps); jaxsim
now folds finishes into runs, so ``levels`` unlimited with ``cap`` 16 is the rule it
implements, and ``levels`` and ``cap`` unlimited is the bound set by admissions alone.
The grid is an approximation (iteration times vary with the batch); the measured step
count of the implemented rule is in ``results/core_cpu_2cpu.json`` (``steps_per_lane``)
for comparison. No options.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def replay(admit_it: np.ndarray, finish_it: np.ndarray, levels: int, cap: int) -> int:
    """Steps to cover the grid under the rule described in the module docstring."""
    n = len(admit_it)
    p = steps = 0
    while p < n:
        k = seen = 0
        while k < cap and p + k < n and admit_it[p + k] == 0:
            k += 1
            if finish_it[p + k - 1]:
                seen += 1
                if seen == levels:
                    break
        p += k + 1  # the run, then the ordinary iteration
        steps += 1
    return steps


def main(argv=None) -> int:
    import argparse

    argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " ")
                            ).parse_args(argv)
    from jaxsim import api, bench
    from jaxsim import params as P
    from jaxsim.workload import synthetic
    from tests.helpers import oracle_config, oracle_workload
    from tests.reference.event_sim import simulate_reference

    trace = synthetic("poisson", 1000, bench.PROMPT, bench.OUTPUT, rate=bench.RATE, seed=0)
    prep = api.prepare(bench.SCENARIO, trace, max_slots=bench.SLOTS)
    ref = simulate_reference(oracle_workload(trace), oracle_config(P.index(prep.params, 0)))
    dt = ref["busy_s"] / ref["iterations"]
    adm, fin = np.asarray(ref["admitted_s"]), np.asarray(ref["finish_s"])
    n = int(np.ceil(max(adm.max(), fin.max()) / dt)) + 2
    admit_it, finish_it = np.zeros(n, int), np.zeros(n, int)
    np.add.at(admit_it, (adm / dt).astype(int), 1)
    np.add.at(finish_it, np.minimum((fin / dt).astype(int), n - 1), 1)
    out = {"iterations": int(ref["iterations"]), "mean_iteration_s": dt, "steps": {}}
    print(f"{ref['iterations']} iterations, mean {dt * 1e3:.2f} ms; steps per lane:")
    for levels, cap in ((1, 16), (2, 16), (3, 16), (10**9, 16), (1, 32), (10**9, 32),
                        (10**9, 10**9)):
        s = replay(admit_it, finish_it, levels, cap)
        name = (f"run ends at finish {'never' if levels > 10**6 else f'no. {levels}'}, "
                f"cap {'none' if cap > 10**6 else cap}")
        out["steps"][name] = s
        print(f"  {name:36s} {s:6d}")
    measured = os.path.join(os.path.dirname(__file__), "results", "core_cpu_2cpu.json")
    if os.path.exists(measured):
        with open(measured) as f:
            print(f"  measured (finishes never end it, cap 16: jaxsim's rule) "
                  f"{json.load(f)['steps_per_lane']:6.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
