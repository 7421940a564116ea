"""Rebuild the calibrated cost presets shipped in ``jaxsim/data/cost_presets/``.

    python -m calibration.build_presets --data ../shared/data --out jaxsim/data/cost_presets

``--data`` is a folder holding ``vidur_profiling/`` and ``measurements/`` (the public
files named in ``calibration/data/README.md``, in full). Each GPU is fitted on its
Vidur per-operator profiles, its single-node all-reduce profile, the legacy attention
profile (A100 only) and its Splitwise iteration times, held out by shape, with the
robust (Huber) loss, and written with its error report and data hash.

The Splitwise iterations are fitted with ``iteration_fit="separate"``: they come from
Splitwise's own vLLM-based engine on Llama-2-70B, whose fixed and per-request costs
(an H100 TP-8 decode iteration takes 30 ms where the kernel fit accounts for 13 ms; the
fitted CPU cost is 0.3 ms per request) and prefill attention are properties of that
engine, and with one model they cannot be separated from GPU time. Applied, they
made Llama-3.1-8B on one H100 overloaded at 10 req/s (TPOT 128 ms) and a 10k-token
prefill 2.6x slower than vLLM's published figure. So the shipped ``values`` hold the
kernel fit only (parameters without kernel rows keep the uncalibrated defaults, listed
under ``defaults``), the iteration fit is written under ``engine_fit`` with its own
report, and the preset's ``report`` shows how the shipped values do on those
iterations (all held out). Within ``engine_fit``, the engine's overheads and
all-reduce are refitted per TP degree (``by_tp``): Splitwise's engine decodes Llama-2-70B
slower at TP 8 than at TP 4 on H100 (31 ms against 29 ms), which no per-GPU kernel
model can produce; then each TP degree gets a correction table for the engine's
all-reduce over the message size (``engine_fit.tables``), which follows how that
engine's prefill time per token changes with the iteration's token count (on H100 at
TP 8, 65-76 ms per 1,000 tokens from 1,024 to 2,048 tokens and 90-103 ms from 4,096).
``cost_engine_fit: true`` simulates with all of it.
"""

from __future__ import annotations

import argparse
import os
import sys

#: GPU preset -> data paths relative to --data.
SOURCES = {
    "H100-SXM": ["vidur_profiling/compute/h100", "vidur_profiling/network/h100_dgx/all_reduce.csv",
                 "measurements/splitwise_perf_model/perf_model.csv"],
    "A100-80GB": ["vidur_profiling/compute/a100",
                  "vidur_profiling/network/a100_dgx/all_reduce.csv",
                  "vidur_profiling/legacy/e2d00e9_2024-05-08/a100/attention.csv",
                  "measurements/splitwise_perf_model/perf_model.csv"],
    "A40": ["vidur_profiling/compute/a40"],
}


def main(argv=None) -> int:
    from calibration import calibrate as C
    from calibration import loaders

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--gpus", default=",".join(SOURCES))
    args = p.parse_args(argv)
    for gpu in args.gpus.split(","):
        paths = [os.path.join(args.data, s) for s in SOURCES[gpu]]
        data = loaders.load(paths)
        cal = C.calibrate(data, gpu, holdout="shape", robust=True, iteration_fit="separate")
        out = os.path.join(args.out, f"{gpu}.json")
        rel = [os.path.join("<data>", s) for s in SOURCES[gpu]]
        C.write_preset(cal, out, command="python -m calibration.build_presets (robust, "
                       "held out by shape, iteration fit kept separate) on "
                       f"{' '.join(rel)}")
        print(f"== {gpu}: {cal.n_rows} rows, smooth_p {2 ** int(cal.cost.smooth_p_log2)}, "
              f"fit " + ", ".join(f"{k} {v:.1f} s" for k, v in cal.seconds.items()))
        print(C.format_table(cal.report))
        if cal.engine_fit is not None:
            print("-- iteration stage (engine_fit, not in the shipped values), shared:")
            print(C.format_table(cal.engine_fit.get("report_shared", cal.engine_fit["report"])))
            if "by_tp" in cal.engine_fit:
                print("-- with the engine terms per TP degree (engine_fit.by_tp):")
                print(C.format_table(cal.engine_fit["report"]))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
