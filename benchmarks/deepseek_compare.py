"""DeepSeek-R1 under its own production workload: ServeGen's deepseek-r1 pool on one
8-GPU node, against the same requests on Qwen3-235B-A22B.

    python benchmarks/deepseek_compare.py [--requests 1000] [--out FILE]

The requests are ServeGen's deepseek-r1 pool (``workload.kind: servegen``) from the
record's busiest hour of day 1, scaled to each mean rate, at most 32,768 tokens each
(so that they fit Qwen3-235B-A22B's context too). Every configuration is FP8
weights at TP 8 (DeepSeek-R1's 671B parameters do not fit eight GPUs in BF16):
DeepSeek-R1 on H200 with a BF16 and an FP8 KV cache and on B200, and Qwen3-235B-A22B on
H200 (grouped-query attention, 4 KV heads: its cache is split over the 8 GPUs where
DeepSeek's latent is whole on each). Prints the KV capacity per GPU in tokens, TTFT and
TPOT p50/p99, throughput, preemptions and the peak KV occupancy; all lanes run in one
batch.

No DeepSeek or MLA kernel timings calibrate these runs (README, Known limits): the
times are the roofline's with the GPUs' default coefficients.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from jaxsim import api, bench, servegen
from jaxsim.servegen import WINDOW_S

RATES = (1.0, 2.0, 4.0, 8.0)
SETUPS = (
    ("DeepSeek-R1 8xH200", {"model": "DeepSeek-R1", "gpu": "H200"}),
    ("DeepSeek-R1 8xH200 KV fp8", {"model": "DeepSeek-R1", "gpu": "H200",
                                   "kv_cache_dtype": "fp8"}),
    ("DeepSeek-R1 8xB200", {"model": "DeepSeek-R1", "gpu": "B200"}),
    ("Qwen3-235B-A22B 8xH200", {"model": "Qwen3-235B-A22B", "gpu": "H200"}),
)
#: Longest request (prompt + output): Qwen3-235B-A22B's context is 40,960 tokens, and a
#: few of the pool's requests are longer (ServeGen's lengths are drawn again above it).
MAX_TOKENS = 32768
COMMON = {"tp": 8, "dtype": "fp8", "max_num_seqs": 256, "max_num_batched_tokens": 8192}


def run(requests: int) -> list[dict]:
    rates = servegen.window_rates("deepseek-r1")[1][:144].reshape(24, 6).mean(axis=1)
    busy = int(np.argmax(rates))
    traces = {r: servegen.generate("deepseek-r1", requests, rate=r, max_tokens=MAX_TOKENS,
                                   start_s=busy * 6 * WINDOW_S, seed=0) for r in RATES}
    cfgs, trs, keys = [], [], []
    for label, cfg in SETUPS:
        for r in RATES:
            cfgs.append({**COMMON, **cfg})
            trs.append(traces[r])
            keys.append((label, r))
    blocks = api.prepare(cfgs, trs).info["num_gpu_blocks"]
    t0 = time.perf_counter()
    res = api.run(cfgs, trs)
    wall = time.perf_counter() - t0
    print(f"deepseek-r1 pool from hour {busy} of day 1, {requests} requests per lane; "
          f"{len(cfgs)} lanes simulated in {wall:.1f} s")
    print(f"{'setup':<28}{'mean':>5}{'KV tok/GPU':>12}{'TTFT p50':>10}{'p99':>9}"
          f"{'TPOT p50':>10}{'p99':>8}{'done/s':>8}{'preempt':>8}{'KV peak':>8}")
    rows = []
    for i, (label, r) in enumerate(keys):
        m = {k: float(v[i]) for k, v in res.metrics.items()}
        kv_tokens = int(blocks[i]) * 16  # (block_size 16, the default)
        row = {"setup": label, "mean_rate": r, "status": int(res.status[i]),
               "kv_tokens_per_gpu": kv_tokens,
               **{k: m[k] for k in ("ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s",
                                    "throughput_rps", "completed", "preemptions",
                                    "kv_occupancy_peak")}}
        rows.append(row)
        print(f"{label:<28}{r:>5g}{kv_tokens:>12,}{m['ttft_p50_s']:>9.2f}s"
              f"{m['ttft_p99_s']:>8.2f}s{m['tpot_p50_s'] * 1e3:>8.1f}ms"
              f"{m['tpot_p99_s'] * 1e3:>6.1f}ms{m['throughput_rps']:>8.2f}"
              f"{m['preemptions']:>8.0f}{m['kv_occupancy_peak']:>8.2f}")
    return rows, wall


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--out", help="file to write the record to (JSON; default: none)")
    args = p.parse_args(argv)
    rows, wall = run(args.requests)
    if args.out:
        bench.write_record(args.out, {
            "machine": bench.machine(), "requests": args.requests, "rows": rows,
            "wall_s": wall, "max_tokens": MAX_TOKENS,
            "command": "python benchmarks/deepseek_compare.py --out FILE",
            "date": time.strftime("%Y-%m-%d")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
