"""What a free fit of Splitwise's prefill iterations reaches on the same held-out rows.

    python -m calibration.engine_floor ../shared/data/measurements/splitwise_perf_model

``jaxsim calibrate`` fits Splitwise's engine with the cost model: physical terms (kernels,
attention, all-reduce, CPU overheads) that every iteration shares, whatever its phase.
This check asks how well a model with no such constraint does on the same rows. For
each GPU and TP degree it fits the prefill iterations of the training rows by least
squares on the relative error, with four free coefficients (signs unconstrained):

    time = a + k * tokens + q * (batch * prompt^2) + c * batch

(a fixed cost, a cost per token, attention's quadratic work, and a cost per prompt),
and reports the held-out prefill rows' absolute percentage errors. The rows, the
hold-out split (``--holdout shape``) and the dropped failed runs are those of
``jaxsim calibrate``. Where this free fit does no better than the calibrated engine fit,
the remaining error is in the data (the engine's time is not a smooth function of the
batch), not in the cost model's form.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from calibration import calibrate as C
from calibration import fit as F
from calibration import loaders

#: The free model's terms, as functions of (batch size, prompt length).
TERMS = {
    "fixed": lambda b, p: np.ones_like(b),
    "per_token": lambda b, p: b * p,
    "attention": lambda b, p: b * p * p,
    "per_prompt": lambda b, p: b,
}


def prefill_rows(data, hardware: str):
    """(prefill rows, training mask) of one GPU, split as ``calibrate`` splits them."""
    m = data.select(np.char.lower(data["hardware"].astype(str)) == hardware.lower())
    keep, _ = C.representable(m)
    m = m.select(keep)
    train = F.split(m, "shape")
    bad = C.failed_runs(m)
    m, train = m.select(~bad), train[~bad]
    pre = (m["op"].astype(str) == "iteration") & (np.asarray(m["num_decodes"]) == 0)
    return m.select(pre), train[pre]


def free_fit(m, train: np.ndarray, terms=tuple(TERMS)) -> np.ndarray:
    """Predicted times of every row, from a least-squares fit per TP degree."""
    b = np.asarray(m["batch_size"], np.float64)
    p = np.asarray(m["chunk_len"], np.float64)
    t = np.asarray(m["time_s"], np.float64)
    tp = np.asarray(m["tp"]).astype(int)
    x = np.stack([TERMS[n](b, p) for n in terms], 1)
    pred = np.full(len(t), np.nan)
    for g in sorted(set(tp.tolist())):
        sel = tp == g
        fit_rows = sel & train
        if fit_rows.sum() < len(terms):
            continue  # too few rows to fit: leave NaN, reported as missing
        a = x[fit_rows] / t[fit_rows, None]
        coef = np.linalg.lstsq(a, np.ones(int(fit_rows.sum())), rcond=None)[0]
        pred[sel] = x[sel] @ coef
    return pred


def report(m, train: np.ndarray, pred: np.ndarray) -> dict:
    """Held-out prefill errors: per TP degree and pooled."""
    t = np.asarray(m["time_s"], np.float64)
    tp = np.asarray(m["tp"]).astype(int)
    ape = np.abs(pred / t - 1) * 100
    held = ~train & np.isfinite(ape)
    out = {}
    for g in sorted(set(tp[held].tolist())):
        e = ape[held & (tp == g)]
        out[f"tp{g}"] = {"n_holdout": int(e.size), "mape": float(e.mean()),
                         "max_ape": float(e.max())}
    e = ape[held]
    out["pooled"] = {"n_holdout": int(e.size), "mape": float(e.mean()) if e.size else None,
                     "max_ape": float(e.max()) if e.size else None}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m calibration.engine_floor",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("data", nargs="+", help="Splitwise perf_model.csv (or its folder)")
    ap.add_argument("--hardware", default="A100-80GB,H100-SXM",
                    help="comma-separated GPU presets (default: %(default)s)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        data = loaders.load(args.data)
    except (loaders.DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = {}
    for gpu in args.hardware.split(","):
        m, train = prefill_rows(data, gpu)
        if len(m) == 0:
            print(f"error: --hardware: no Splitwise prefill rows on {gpu!r}", file=sys.stderr)
            return 2
        result[gpu] = {
            "four_terms": report(m, train, free_fit(m, train)),
            "without_per_prompt": report(
                m, train, free_fit(m, train, ("fixed", "per_token", "attention"))),
        }
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    for gpu, r in result.items():
        for name, rep in r.items():
            parts = [f"{k} {v['mape']:.1f}% (n={v['n_holdout']}, max {v['max_ape']:.1f}%)"
                     for k, v in rep.items() if v["mape"] is not None]
            print(f"{gpu:10s} {name:18s} " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
