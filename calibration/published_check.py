"""End-to-end check of cost presets against published vLLM Llama-3(.1)-8B / 1×H100 figures.

    python -m calibration.published_check [PRESET ...]     # default: uncalibrated auto

Each published figure is a row of ``measurements/published_numbers/published_numbers.csv``
(line numbers below, header = line 1); jaxsim runs a synthetic stand-in of its workload.
These figures are validation only: nothing in the calibration is fitted to them. The
v0.6.0 figures (vLLM blog 2024-09-05, multi-step scheduling) are run with the v0
scheduler, no chunked prefill and 8192 batched tokens; the 2026 figures (vLLM blog
2026-01-08, >= v0.12) with v1 and 8192 batched tokens.
"""

from __future__ import annotations

import argparse
import sys

#: (label, csv line, published value, config overrides, workload args, metric)
V0 = {"scheduler": "v0", "enable_chunked_prefill": False, "max_num_batched_tokens": 8192}
V1 = {"max_num_batched_tokens": 8192, "max_model_len": 131072}
CHECKS = (
    ("sonnet 462/256, 500 at once, req/s (v0.6.0)", 66, 31.0, V0,
     ("all_at_once", 500, 462, 256), "throughput_rps"),
    ("sonnet 462/16, 500 at once, req/s (v0.6.0)", 70, 59.0, V0,
     ("all_at_once", 500, 462, 16), "throughput_rps"),
    *((f"TTFT of one {n}-token prefill, ms (2026)", line, pub, V1,
       ("all_at_once", 1, n, 1), "ttft_ms")
      for n, line, pub in ((1000, 90, 25.0), (10000, 91, 260.0), (50000, 95, 2290.0),
                           (100000, 100, 6850.0))),
    ("512-token prefills at once, tok/s (2026)", 122, 43500.0, V1,
     ("all_at_once", 2000, 512, 1), "prefill_tps"),
)


def main(argv=None) -> int:
    from jaxsim import api
    from jaxsim.workload import synthetic

    base = {"model": "Llama-3.1-8B", "gpu": "H100-SXM"}

    ap = argparse.ArgumentParser(
        prog="python -m calibration.published_check",
        description="Cost presets against published vLLM Llama-3(.1)-8B / 1xH100 figures.")
    ap.add_argument("presets", nargs="*", metavar="PRESET",
                    help="cost presets to compare: a shipped name, 'auto', 'uncalibrated' or "
                         "a path to a preset JSON (default: uncalibrated auto)")
    presets = ap.parse_args(argv).presets or ["uncalibrated", "auto"]
    from jaxsim import costpresets

    for p in presets:  # a bad name is one line before anything runs
        try:
            costpresets.resolve(p, base["gpu"])
        except costpresets.PresetError as e:
            ap.error(str(e))
    print(f"{'figure':46s}{'line':>5}{'published':>11}" + "".join(f"{p[-16:]:>17}"
                                                               for p in presets))
    for label, line, pub, over, (kind, n, pin, pout), metric in CHECKS:
        r = api.run([{**base, **over, "cost_preset": p} for p in presets],
                    synthetic(kind, n, pin, pout, seed=0))
        vals = []
        for i in range(len(presets)):
            lane = r.lane(i)
            vals.append({"throughput_rps": lane["throughput_rps"],
                         "ttft_ms": lane["ttft_p50_s"] * 1e3,
                         "prefill_tps": n * pin / lane["duration_s"]}[metric])
        print(f"{label:46s}{line:>5}{pub:>11.1f}" + "".join(f"{v:>17.1f}" for v in vals))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
