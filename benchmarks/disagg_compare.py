"""Disaggregated prefill and decode against colocated replicas on the same GPUs.

    python benchmarks/disagg_compare.py [--requests 1000] [--out FILE]

Llama-3.1-8B on H100-SXM (shipped preset), Poisson arrivals, two workloads: the core
scenario's 512/256 tokens and long prompts (4,096 prompt, 256 output tokens). For each
rate, 2 GPUs (two colocated replicas behind round robin, or one prefill and one decode
instance) and 4 GPUs (four replicas, 1 prefill + 3 decode, 2 + 2), all through
``jaxsim.api.run`` (docs/semantics.md §7 and §8; KV link at the default 23.75 GB/s per
GPU). Prints TTFT and TPOT percentiles, throughput and the simulator's wall time per
deployment; writes the table as a record with ``--out``.
"""

from __future__ import annotations

import argparse
import time

from jaxsim import api, bench
from jaxsim.workload import synthetic

SCENARIOS = (  # (name, prompt, output, rates)
    ("512/256", 512, 256, (10.0, 20.0, 40.0)),
    ("4096/256", 4096, 256, (2.0, 4.0, 8.0)),
)
DEPLOYMENTS = (  # (name, GPUs, config)
    ("2 replicas", 2, {"num_replicas": 2}),
    ("1P + 1D", 2, {"disaggregation": {"enabled": True}}),
    ("4 replicas", 4, {"num_replicas": 4}),
    ("1P + 3D", 4, {"disaggregation": {"enabled": True, "decode_replicas": 3}}),
    ("2P + 2D", 4, {"disaggregation": {"enabled": True, "prefill_replicas": 2,
                                       "decode_replicas": 2}}),
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--out", help="file to write the record to (JSON; default: none)")
    args = p.parse_args(argv)
    rows = []
    print(f"{'workload':<10}{'rate':>6}  {'deployment':<12}{'GPUs':>5}{'TTFT p50':>10}"
          f"{'TTFT p99':>10}{'TPOT p50':>10}{'TPOT p99':>10}{'req/s':>8}{'xfer ms':>9}"
          f"{'sim s':>7}")
    for name, prompt, output, rates in SCENARIOS:
        for rate in rates:
            tr = synthetic("poisson", args.requests, prompt, output, rate=rate, seed=0)
            for dname, gpus, cfg in DEPLOYMENTS:
                t0 = time.perf_counter()
                r = api.run({"max_num_seqs": 256, **cfg}, tr)
                wall = time.perf_counter() - t0
                m = {k: float(v[0]) for k, v in r.metrics.items()}
                row = {"workload": name, "rate": rate, "deployment": dname, "gpus": gpus,
                       "status": int(r.status[0]), "wall_s": wall,
                       **{k: m[k] for k in ("ttft_p50_s", "ttft_p99_s", "tpot_p50_s",
                                            "tpot_p99_s", "throughput_rps", "completed")},
                       "kv_transfer_mean_s": m.get("kv_transfer_mean_s")}
                rows.append(row)
                xfer = row["kv_transfer_mean_s"]
                print(f"{name:<10}{rate:>6g}  {dname:<12}{gpus:>5}"
                      f"{m['ttft_p50_s'] * 1e3:>10.1f}{m['ttft_p99_s'] * 1e3:>10.1f}"
                      f"{m['tpot_p50_s'] * 1e3:>10.2f}{m['tpot_p99_s'] * 1e3:>10.2f}"
                      f"{m['throughput_rps']:>8.2f}"
                      + (f"{xfer * 1e3:>9.2f}" if xfer is not None else f"{'':>9}")
                      + f"{wall:>7.1f}")
    if args.out:
        bench.write_record(args.out, {
            "machine": bench.machine(), "requests": args.requests, "rows": rows,
            "command": "python benchmarks/disagg_compare.py",
            "date": time.strftime("%Y-%m-%d")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
