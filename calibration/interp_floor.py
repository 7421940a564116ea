"""What per-operator kernel tables allow: the leave-one-out interpolation error.

    python -m calibration.interp_floor ../shared/data/vidur_profiling/compute/h100

For every series of one operator on one GPU, model and TP degree, sorted by token
count, each interior point is predicted by linear interpolation in (log tokens,
log time) between its two neighbours, and the absolute percentage error is reported
per operator and per family. No parametric model sees these rows; the figure is what
a lookup table with the data's own token grid would achieve on shapes left out one at a
time, so it estimates the floor of held-out error that the measurement noise and the
kernel-selection steps of the library (cuBLAS picks different tiles at neighbouring
token counts) leave to any smooth model of the same data.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from calibration.fit import REPORT_FAMILIES
from calibration.schema import ELEM_OPS, GEMM_OPS, Measurements

#: Operators measured over a token axis.
TOKEN_OPS = GEMM_OPS + ELEM_OPS


def loo_errors(m: Measurements) -> dict[str, np.ndarray]:
    """Absolute percentage errors of leave-one-out interpolation, by operator."""
    op = m["op"].astype(str)
    keys = np.stack([m["hardware"].astype(str), m["model"].astype(str),
                     np.asarray(m["tp"]).astype(str), op], 1)
    out: dict[str, list] = {}
    for key in {tuple(k) for k in keys[np.isin(op, TOKEN_OPS)]}:
        sel = np.flatnonzero(np.all(keys == np.asarray(key), axis=1))
        x = np.log(np.asarray(m["num_tokens"], np.float64)[sel])
        y = np.log(np.asarray(m["time_s"], np.float64)[sel])
        # one point per token count (the two norms of a layer share a count): mean log time
        x, inv = np.unique(x, return_inverse=True)
        y = np.bincount(inv, weights=y) / np.bincount(inv)
        if len(x) < 3:
            continue
        w = (x[1:-1] - x[:-2]) / (x[2:] - x[:-2])
        pred = y[:-2] + w * (y[2:] - y[:-2])
        out.setdefault(key[3], []).append(np.abs(np.expm1(pred - y[1:-1])) * 100.0)
    return {k: np.concatenate(v) for k, v in out.items()}


def table(errors: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per operator and per family: rows, MAPE, p90 and max absolute percentage error."""
    groups = {k: [k] for k in sorted(errors)}
    for fam, ops in REPORT_FAMILIES.items():
        groups[fam] = [k for k in sorted(errors) if k in ops]
    rep = {}
    for name, ops in groups.items():
        if not ops:
            continue
        e = np.concatenate([errors[o] for o in ops])
        rep[name] = {"n": int(e.size), "mape": float(e.mean()),
                     "p90_ape": float(np.quantile(e, 0.9)), "max_ape": float(e.max())}
    return rep


def main(argv=None) -> int:
    from calibration import loaders

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", nargs="+", help="files or folders (as for jaxsim calibrate)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    rep = table(loo_errors(loaders.load(args.data)))
    if args.json:
        print(json.dumps(rep))
        return 0
    print(f"{'op':<14}{'rows':>7}{'MAPE%':>8}{'p90%':>8}{'max%':>8}")
    for k, v in rep.items():
        print(f"{k:<14}{v['n']:>7}{v['mape']:>8.2f}{v['p90_ape']:>8.2f}{v['max_ape']:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
