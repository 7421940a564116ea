"""``jaxsim demo``: sweep >= 1024 serving configurations on a real trace in one batch.

Llama-3.1-70B on the bundled Azure LLM conversation trace (2023; CC-BY-4.0), every
combination of GPU type x tensor parallelism x ``max_num_seqs`` x
``max_num_batched_tokens`` simulated together by one compiled function. Prints the
configurations that meet a latency SLO with the fewest GPUs, writes a CSV table (one row
per configuration) and a plot.
"""

from __future__ import annotations

import csv
import itertools
import os
import time

import numpy as np

GPUS = ("A100-80GB", "H100-SXM", "H200", "B200", "L40S")
TPS = (1, 2, 4, 8)
MAX_NUM_SEQS = (8, 16, 32, 48, 64, 96, 128, 256)
MAX_BATCHED_TOKENS = (512, 1024, 2048, 4096, 8192, 16384, 32768)
MODEL = "Llama-3.1-70B"
SLO_TTFT_P99_S = 2.0
SLO_TPOT_P99_S = 0.1


def grid() -> list[dict]:
    """The demo's design space (1,120 configurations)."""
    return [
        {"model": MODEL, "gpu": g, "tp": tp, "max_num_seqs": s, "max_num_batched_tokens": b}
        for g, tp, s, b in itertools.product(GPUS, TPS, MAX_NUM_SEQS, MAX_BATCHED_TOKENS)
    ]


def main(out_dir: str = "demo_out", num_requests: int = 300, quiet: bool = False) -> int:
    from jaxsim import api, traces
    from jaxsim import status as st_bits
    from jaxsim.sim import simulate_batch

    def say(*a):
        if not quiet:
            print(*a, flush=True)

    trace = traces.bundled("azure_conv").head(num_requests)
    configs = grid()
    say(f"jaxsim demo: {len(configs)} configurations of {MODEL} "
        f"({len(GPUS)} GPUs x TP {TPS} x max_num_seqs x max_num_batched_tokens)")
    say(f"workload: first {len(trace)} requests of the Azure LLM conversation trace 2023 "
        f"(mean prompt {trace.prompt_tokens.mean():.0f}, mean output "
        f"{trace.output_tokens.mean():.0f} tokens, {trace.arrival_s.max():.0f} s)")
    t0 = time.perf_counter()
    prep = api.prepare(configs, trace, chunk_iterations=512)
    res = simulate_batch(prep.shape, prep.params, prep.workload, auto_slots=True)
    wall = time.perf_counter() - t0
    m = res.metrics
    status = res.status
    ok = status == 0
    meets = ok & (m["ttft_p99_s"] <= SLO_TTFT_P99_S) & (m["tpot_p99_s"] <= SLO_TPOT_P99_S)
    n_inf = int(np.sum((status & st_bits.INFEASIBLE) != 0))
    say(f"simulated {len(configs)} configurations x {len(trace)} requests in {wall:.1f} s "
        f"({len(configs) * len(trace) / wall:,.0f} config-requests/s, compile included); "
        f"{n_inf} infeasible (model does not fit, TP shape, or vLLM limits), "
        f"{int(meets.sum())} meet the SLO (p99 TTFT <= {SLO_TTFT_P99_S} s, "
        f"p99 TPOT <= {SLO_TPOT_P99_S * 1e3:.0f} ms)")

    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for i, c in enumerate(configs):
        rows.append({
            "gpu": c["gpu"], "tp": c["tp"], "max_num_seqs": c["max_num_seqs"],
            "max_num_batched_tokens": c["max_num_batched_tokens"],
            "status": st_bits.describe(int(status[i])),
            "meets_slo": bool(meets[i]),
            "ttft_p50_s": float(m["ttft_p50_s"][i]), "ttft_p99_s": float(m["ttft_p99_s"][i]),
            "tpot_p50_s": float(m["tpot_p50_s"][i]), "tpot_p99_s": float(m["tpot_p99_s"][i]),
            "e2e_p99_s": float(m["e2e_p99_s"][i]),
            "throughput_rps": float(m["throughput_rps"][i]),
            "output_tps": float(m["output_tps"][i]),
            "preemptions": int(m["preemptions"][i]),
            "kv_occupancy_peak": float(m["kv_occupancy_peak"][i]),
            "num_gpu_blocks": int(prep.info["num_gpu_blocks"][i]),
        })
    table_path = os.path.join(out_dir, "results.csv")
    with open(table_path + ".tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(table_path + ".tmp", table_path)

    # Best knob setting per (GPU, TP), ranked by GPU count then p99 TTFT.
    per_group: dict = {}
    for r in rows:
        if r["meets_slo"]:
            key = (r["gpu"], r["tp"])
            if key not in per_group or r["ttft_p99_s"] < per_group[key]["ttft_p99_s"]:
                per_group[key] = r
    best = sorted(per_group.values(), key=lambda r: (r["tp"], r["ttft_p99_s"]))
    if best:
        say("\nbest setting per (GPU, TP) meeting the SLO, fewest GPUs first:")
        say(f"  {'gpu':<10}{'tp':>3}{'seqs':>6}{'tokens':>8}{'TTFT p99':>10}{'TPOT p99':>10}"
            f"{'E2E p99':>9}{'out tok/s':>10}{'preempt':>8}")
        for r in best[:10]:
            say(f"  {r['gpu']:<10}{r['tp']:>3}{r['max_num_seqs']:>6}"
                f"{r['max_num_batched_tokens']:>8}{r['ttft_p99_s'] * 1e3:>8.0f}ms"
                f"{r['tpot_p99_s'] * 1e3:>8.1f}ms{r['e2e_p99_s']:>8.1f}s"
                f"{r['output_tps']:>10.0f}{r['preemptions']:>8}")
    else:
        say("\nno configuration meets the SLO")
    plot_path = os.path.join(out_dir, "latency_map.png")
    _plot(rows, plot_path)
    say(f"\nwrote {table_path} ({len(rows)} rows) and {plot_path}")
    return 0


def _plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    colors = dict(zip(GPUS, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"),
                      strict=True))
    for g in GPUS:
        sel = [r for r in rows if r["gpu"] == g and r["status"] == "ok"]
        if not sel:
            continue
        ax.scatter([r["ttft_p99_s"] for r in sel], [r["tpot_p99_s"] * 1e3 for r in sel],
                   s=[12 * r["tp"] for r in sel], c=colors[g], alpha=0.55,
                   label=f"{g}", edgecolors="none")
    ax.axvline(SLO_TTFT_P99_S, color="k", lw=0.8, ls="--")
    ax.axhline(SLO_TPOT_P99_S * 1e3, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("p99 TTFT (s)")
    ax.set_ylabel("p99 TPOT (ms)")
    ax.set_title(f"{MODEL}, Azure conversation trace: every configuration "
                 "(marker size = TP; SLO box dashed)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=120)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)
