"""Rebuild the calibrated cost presets shipped in ``jaxsim/data/cost_presets/``.

    python -m calibration.build_presets --data ../shared/data --out jaxsim/data/cost_presets

``--data`` is a folder holding ``vidur_profiling/`` and ``measurements/`` (the public
files named in ``calibration/data/README.md``, in full). Each GPU is fitted on its
Vidur per-operator profiles, its single-node all-reduce profile, the legacy attention
profile (A100 only) and its Splitwise iteration times, held out by shape, with the
robust (Huber) loss, and written with its error report and data hash.
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
        cal = C.calibrate(data, gpu, holdout="shape", robust=True)
        out = os.path.join(args.out, f"{gpu}.json")
        rel = [os.path.join("<data>", s) for s in SOURCES[gpu]]
        C.write_preset(cal, out, command="python -m calibration.build_presets (robust, "
                       f"held out by shape) on {' '.join(rel)}")
        print(f"== {gpu}: {cal.n_rows} rows, smooth_p {2 ** int(cal.cost.smooth_p_log2)}, "
              f"fit " + ", ".join(f"{k} {v:.1f} s" for k, v in cal.seconds.items()))
        print(C.format_table(cal.report))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
