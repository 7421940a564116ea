"""End-to-end calibration of one GPU: kernel fit, iteration fit, error report, preset.

``calibrate(data, "H100-SXM")`` takes a measurement table (any mix of kernel and
iteration rows), keeps the rows of that GPU that the cost model can represent, fits
the kernel stage and then the iteration stage (see :mod:`calibration.fit`), and returns
the fitted ``CostParams`` with a per-operator error report on held-out rows.

With ``iteration_fit="separate"`` the iteration stage is still fitted and reported, but
its parameters are kept out of the result (``Calibration.engine_fit``): whole-iteration
times carry the CPU, launch and attention costs of the engine that produced them, and
when that engine is not the one simulated (the Splitwise iterations behind the shipped
presets) those parameters do not transfer to other models or engines.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import time

import numpy as np

from calibration import fit as F
from calibration.schema import Measurements
from jaxsim import costpresets, presets, shapecorr
from jaxsim.fileio import atomic_open
from jaxsim.params import COST_PARAM_NAMES, CostParams


@dataclasses.dataclass
class Calibration:
    """The result of :func:`calibrate`."""

    hardware: str
    cost: CostParams
    report: dict[str, dict]
    skipped: dict[str, int]
    holdout: str
    data_sha256: str
    n_rows: int
    fitted: list[str]
    copied: dict[str, str]
    seconds: dict[str, float]
    train: np.ndarray
    data: Measurements
    #: parameters neither fitted nor copied: they keep the ``init`` (default) values
    defaults: list[str] = dataclasses.field(default_factory=list)
    #: ``iteration_fit="separate"``: the iteration stage's fit, not applied to ``cost``
    #: (``note``, ``values``, ``smooth_p``, ``report``); else None
    engine_fit: dict | None = None
    #: per-kernel-shape correction tables: key -> (first knot, values)
    tables: dict = dataclasses.field(default_factory=dict)
    #: the error report of the roofline alone (without ``tables``)
    report_roofline: dict | None = None

    def values(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.cost.values().items()}

    def predict(self, m: Measurements | None = None, tables: bool = True) -> np.ndarray:
        """Predicted seconds for ``m`` (default: the rows used), with the shape tables
        (``tables=False``: the roofline alone)."""
        m = self.data if m is None else m
        _, hw = F.hardware_params(self.hardware)
        rows = F.prepare_rows(m, F.expand_tables(self.tables) or None)
        rows = rows if tables else F.roofline_rows(rows)
        return np.asarray(F.predict(self.cost, hw, rows), np.float64)

    def preset(self, command: str = "") -> dict:
        return {
            "format": costpresets.FORMAT,
            "hardware": self.hardware,
            "values": self.values(),
            "smooth_p": 2 ** int(self.cost.smooth_p_log2),
            "data_sha256": self.data_sha256,
            "n_rows": self.n_rows,
            "holdout": self.holdout,
            "report": self.report,
            **({"report_roofline": self.report_roofline}
               if self.report_roofline is not None else {}),
            **({"shape_tables": {
                "grid": f"jaxsim.shapecorr.KNOTS ({shapecorr.GRID} token counts)",
                "smoothing": F.TABLE_SMOOTHING,
                "tables": tables_json(self.tables)}}
               if self.tables else {}),
            "skipped_rows": self.skipped,
            "fitted": self.fitted,
            "copied": self.copied,
            "defaults": self.defaults,
            **({"engine_fit": self.engine_fit} if self.engine_fit is not None else {}),
            "fit_seconds": self.seconds,
            "created": datetime.date.today().isoformat(),
            "command": command,
        }


def representable(m: Measurements) -> tuple[np.ndarray, dict[str, int]]:
    """Rows the cost model can predict, and counts of the others by reason."""
    op = m["op"].astype(str)
    gated = np.asarray(m["gated"])
    keep = np.isin(op, (*F.KERNEL_OPS, "iteration"))
    skipped = {}
    for o in sorted(set(op[~keep].tolist())):
        skipped[f"{o}: not an operator of the cost model"] = int((op[~keep] == o).sum())
    plain = keep & (gated == 0) & np.isin(op, ("mlp_up", "activation", "iteration"))
    if plain.any():
        skipped["non-gated MLP (the cost model is SwiGLU)"] = int(plain.sum())
    # an all-reduce over one GPU is no collective: the cost model's time for it is 0 s,
    # whose log would make the training loss infinite for every smooth-max exponent
    alone = keep & (op == "all_reduce") & (np.asarray(m["num_workers"]) < 2)
    if alone.any():
        skipped["all_reduce over 1 GPU (no collective; the cost model gives 0 s)"] = int(
            alone.sum())
    return keep & ~plain & ~alone, skipped


#: A prefill batch measured this many times faster than a smaller batch of the same
#: prompts (same model, GPU and TP) is a failed run, not a timing: more tokens of the
#: same prompts cannot take less time. Splitwise's Llama-2-70B prefill of 64 x 512 tokens
#: on two A100s reads 794 ms in all 5 repeats, against 6.6 s for 32 x 512.
FAILED_RUN_FACTOR = 1.5


def failed_runs(m: Measurements) -> np.ndarray:
    """Prefill-only iteration rows that are failed runs (see ``FAILED_RUN_FACTOR``)."""
    op = m["op"].astype(str)
    pre = (op == "iteration") & (np.asarray(m["num_decodes"]) == 0)
    bad = np.zeros(len(m), bool)
    if not pre.any():
        return bad
    b = np.asarray(m["batch_size"])
    t = np.asarray(m["time_s"], np.float64)
    group = list(zip(m["model"].astype(str), m["hardware"].astype(str),
                     np.asarray(m["tp"]), np.asarray(m["chunk_len"]),
                     np.asarray(m["context_len"]), strict=True))
    # the slowest smaller batch of each group, from the batch sizes in increasing order
    by_group: dict = {}
    for i in np.flatnonzero(pre):
        by_group.setdefault(group[i], []).append(i)
    for rows in by_group.values():
        rows.sort(key=lambda i: b[i])
        slowest, k = -np.inf, 0
        for i in rows:
            while b[rows[k]] < b[i]:
                slowest = max(slowest, t[rows[k]])
                k += 1
            bad[i] = t[i] * FAILED_RUN_FACTOR < slowest
    return bad


ITERATION_FIT = ("apply", "separate")


def tables_json(tables: dict[str, tuple[int, np.ndarray]]) -> dict[str, dict]:
    """Correction tables as a preset stores them: key -> {"first", "delta"}."""
    return {k: {"first": int(first), "delta": [round(float(x), 5) for x in v]}
            for k, (first, v) in sorted(tables.items())}


#: What ``engine_fit`` holds (written into the preset next to it).
ENGINE_FIT_NOTE = (
    "Iteration-stage fit on this GPU's whole-iteration rows. Those times include the "
    "per-iteration, per-request and kernel-launch costs and the attention implementation "
    "of the engine that measured them, and with one model in the data they cannot be told "
    "apart from GPU kernel time, so these values describe that engine and are NOT part of "
    "'values'. To simulate that engine, pass them as 'cost' overrides on top of this preset.")
ENGINE_TP_NOTE = (
    " The engine's overheads and all-reduce (" + ", ".join(F.ENGINE_TP_PARAMS) + ") are "
    "then fitted again for each TP degree, from those values, and 'by_tp' holds them: "
    "for a TP degree listed there, its values replace the shared ones ('report' is of "
    "the per-TP values, 'report_shared' of the shared ones alone). The config key "
    "cost_engine_fit applies all of this.")
ENGINE_TABLE_NOTE = (
    " With the per-kernel-shape tables on, each TP degree above 1 then also gets a "
    "correction table for the engine's all-reduce over the message size, fitted to the "
    "iteration rows with that degree's values ('tables', in the format of "
    "'shape_tables'; it replaces the kernel table of the same key for lanes with "
    "cost_engine_fit; 'report' includes it): it carries whatever of that engine's "
    "iteration time changes with the iteration's token count at that degree and the "
    "kernel model does not follow, so it is not a measurement of the all-reduce.")


def calibrate(data: Measurements, hardware: str, *, holdout: str = "shape",
              robust: bool = False, steps: int = 400, smooth_p=(2, 4),
              init: CostParams | None = None,
              iteration_fit: str = "apply", shape_tables: bool = True,
              engine_per_tp: bool = True) -> Calibration:
    """Fit one GPU's cost parameters to ``data`` and report held-out errors.

    Args:
        data: measurements (rows of other GPUs are ignored).
        hardware: GPU preset name; rows are matched to it case-insensitively.
        holdout: ``shape``, ``model:NAME`` or ``none`` (see :func:`calibration.fit.split`).
        robust: Huber loss on the log error instead of the squared log error.
        steps: Adam steps per stage and smooth-max exponent.
        smooth_p: smooth-max exponents to try (subset of 1, 2, 4, 8).
        init: starting parameters (default: the uncalibrated defaults).
        iteration_fit: ``apply`` (default) puts the iteration stage's parameters into the
            result; ``separate`` fits and reports them in ``engine_fit`` but returns the
            kernel-stage parameters (with copies, and ``init`` values for everything the
            kernel rows do not determine), and reports the iteration rows as held out.
        shape_tables: after the kernel stage, fit per-kernel-shape correction tables
            to the GEMM and elementwise rows (``calibration.fit.fit_tables``); the
            iteration stage and the report use them.
        engine_per_tp: with ``separate``, when the iteration rows have several TP
            degrees, refit the engine terms ``calibration.fit.ENGINE_TP_PARAMS`` for each
            (``engine_fit["by_tp"]``): the measuring engine's overheads and all-reduce
            need not scale with TP the way its kernels do.
    """
    from jaxsim.params import SMOOTH_P_CHOICES

    if iteration_fit not in ITERATION_FIT:
        raise ValueError(f"--iteration-fit: {iteration_fit!r}; allowed: "
                         f"{', '.join(ITERATION_FIT)}")
    if not isinstance(data, Measurements):
        raise TypeError(f"data: {type(data).__name__}; expected Measurements (from "
                        "calibration.loaders.load)")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"--steps: {steps!r} must be an integer >= 1")
    p_set = tuple(smooth_p) if isinstance(smooth_p, list | tuple) else ()
    if not p_set or any(isinstance(p, bool) or p not in SMOOTH_P_CHOICES for p in p_set):
        raise ValueError(f"smooth_p: {smooth_p!r} must be a non-empty list of "
                         f"{', '.join(map(str, SMOOTH_P_CHOICES))}")
    try:
        canon, _ = presets.gpu(hardware)
    except KeyError as e:
        raise ValueError(f"--hardware: {e.args[0]}") from None
    hw_col = np.char.lower(data["hardware"].astype(str))
    if not np.any(hw_col == canon.lower()):
        have = sorted(set(data["hardware"].astype(str).tolist()))
        hint = ("" if not have else "; rows are matched by their hardware column "
                "(label a profile of this GPU with `jaxsim profile --hardware NAME`)")
        unknown = []
        for h in have:
            try:
                presets.gpu(h)
            except KeyError:
                unknown.append(h)
        if unknown:
            hint += (f"; {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} no GPU "
                     "preset, so such rows fit only once their hardware column names one "
                     "(the GPU whose figures the cost model should take)")
        raise ValueError(f"--hardware: no rows measured on {canon}; the data has: "
                         f"{', '.join(have) or 'no rows'}{hint}")
    m = data.select(hw_col == canon.lower())
    keep, skipped = representable(m)
    m = m.select(keep)
    if len(m) == 0:
        raise ValueError(f"--hardware {canon}: none of its rows can be fitted ({skipped})")
    train = F.split(m, holdout)
    if not train.any():
        raise ValueError(f"--holdout {holdout}: holds out all {len(m)} rows of {canon}, "
                         "so nothing is left to fit; hold out another model, or use shape")
    # after the split, so that dropping a failed run moves no other row in or out
    bad = failed_runs(m)
    if bad.any():
        skipped[f"failed run (a prefill over {FAILED_RUN_FACTOR}x faster than a smaller "
                "batch of the same prompts)"] = int(bad.sum())
        m, train = m.select(~bad), train[~bad]
    op = m["op"].astype(str)
    kern = op != "iteration"
    if iteration_fit == "separate" and not kern.any():
        raise ValueError("--iteration-fit separate: the data has no kernel rows, so "
                         "nothing would be fitted; use apply")
    cost = init if init is not None else CostParams.default()
    fitted, copied, seconds = [], {}, {}
    if kern.any():
        ops = set(op[kern].tolist())
        names = F.kernel_param_names(ops)
        r = F.fit(m.select(kern), canon, train[kern], names=names, init=cost, robust=robust,
                  steps=steps, smooth_p=smooth_p)
        cost, copied = F.copy_missing(r.cost, ops)
        fitted += names
        seconds["kernels"] = r.seconds
    tables, full = {}, None
    _, hw = F.hardware_params(canon)
    if shape_tables and kern.any():
        t0 = time.perf_counter()
        # the roofline of every row, predicted with zero tables for the shapes that will
        # get one: the rows' shapes are then those of the final predictions below, which
        # reuse this compile (shapecorr.apply leaves a time unchanged at 0)
        zero = {k: np.zeros(shapecorr.GRID, np.float32)
                for k in F.table_keys(m.select(kern), train[kern])}
        roof = np.asarray(F.predict(cost, hw, F.prepare_rows(m, zero or None)), np.float64)
        tables = F.fit_tables(m.select(kern), canon, train[kern], cost, roof=roof[kern])
        full = F.expand_tables(tables) or None
        seconds["tables"] = time.perf_counter() - t0
    engine_fit = None
    # an iteration stage without training rows (all held out by --holdout model:NAME)
    # fits nothing: its parameters keep their values and are not listed as fitted
    if (~kern).any() and train[~kern].any():
        names = list(F.ITERATION_PARAMS)
        # attention without attention rows; and always for an engine fit kept apart:
        # the measuring engine's attention implementation is part of what it describes
        if iteration_fit == "separate" or not {"attn_prefill", "attn_decode"} <= set(
                op[kern].tolist()):
            names += F.ATTN_PARAMS
        if not kern.any():
            names += list(F.ITERATION_ONLY_PARAMS)
        p = (2 ** int(cost.smooth_p_log2),) if kern.any() else smooth_p
        r = F.fit(m.select(~kern), canon, train[~kern], names=names, init=cost,
                  robust=robust, steps=steps, smooth_p=p, tables=full)
        seconds["iterations"] = r.seconds
        if iteration_fit == "apply":
            cost = r.cost
            fitted += [n for n in names if n not in fitted]
            # a value copied from another operator and then fitted is a fitted one
            copied = {k: v for k, v in copied.items() if k not in names}
        else:
            it = m.select(~kern)
            ipred = np.asarray(F.predict(r.cost, hw, F.prepare_rows(it, full)), np.float64)
            vals = r.cost.values()
            engine_fit = {
                "note": ENGINE_FIT_NOTE,
                "values": {n: float(vals[n]) for n in names},
                "smooth_p": 2 ** int(r.cost.smooth_p_log2),
                "report": F.error_table(it, ipred, train[~kern]),
            }
            it_tp = np.asarray(it["tp"]).astype(int)
            several = len(set(it_tp.tolist())) > 1
            if engine_per_tp and (several or full):
                t0 = time.perf_counter()
                if several:
                    costs, tpred = F.fit_groups(it, canon, train[~kern], it_tp,
                                                names=F.ENGINE_TP_PARAMS, init=r.cost,
                                                robust=robust, steps=steps, tables=full)
                else:  # one TP degree: the shared values are its values
                    costs, tpred = {int(it_tp[0]): r.cost}, ipred
                etables = {}
                if full:
                    etables = F.fit_engine_ar_tables(it, canon, train[~kern], costs, full)
                    tpred = F.predict_by_tp(it, canon, costs, full, etables)
                seconds["engine_per_tp"] = time.perf_counter() - t0
                if several or etables:
                    engine_fit["report_shared"] = engine_fit["report"]
                    engine_fit["report"] = F.error_table(it, tpred, train[~kern])
                if several:
                    engine_fit["by_tp"] = {
                        str(g): {n: float(c.values()[n]) for n in F.ENGINE_TP_PARAMS}
                        for g, c in sorted(costs.items())}
                    engine_fit["note"] = ENGINE_FIT_NOTE + ENGINE_TP_NOTE
                if etables:
                    engine_fit["tables"] = tables_json(etables)
                    engine_fit["note"] += ENGINE_TABLE_NOTE
            # the returned parameters never saw the iteration rows: all are held out
            train = train & kern
    rows = F.prepare_rows(m, full)
    pred = np.asarray(F.predict(cost, hw, rows), np.float64)
    report = F.error_table(m, pred, train)
    report_roofline = None
    if full:
        pred0 = np.asarray(F.predict(cost, hw, F.roofline_rows(rows)), np.float64)
        report_roofline = F.error_table(m, pred0, train)
    defaults = [n for n in COST_PARAM_NAMES if n not in fitted and n not in copied]
    return Calibration(hardware=canon, cost=cost, report=report, skipped=skipped,
                       holdout=holdout, data_sha256=m.digest(), n_rows=len(m),
                       fitted=fitted, copied=copied, seconds=seconds, train=train, data=m,
                       defaults=defaults, engine_fit=engine_fit, tables=tables,
                       report_roofline=report_roofline)


def _clean(x):
    """NaN -> None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def preset_text(d: dict) -> str:
    """A preset as JSON text: indented, with each correction table's values (shape
    tables and the engine's) on one line."""
    tables = [*((d.get("shape_tables") or {}).get("tables") or {}).values(),
              *((d.get("engine_fit") or {}).get("tables") or {}).values()]
    compact = {}
    for i, t in enumerate(tables):
        compact[f"@@delta{i}@@"] = json.dumps(t["delta"], separators=(",", ":"))
        t["delta"] = f"@@delta{i}@@"
    text = json.dumps(d, indent=1)
    for tag, values in compact.items():
        text = text.replace(f'"{tag}"', values, 1)
    return text


def write_preset(cal: Calibration, path: str, command: str = "") -> None:
    """Write the preset JSON atomically."""
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise ValueError(f"--out: folder {d!r} does not exist")
    text = preset_text(_clean(cal.preset(command)))
    try:  # what jaxsim simulate will read: refuse here a preset it would refuse
        costpresets.check(json.loads(text), path)
    except costpresets.PresetError as e:
        raise ValueError(f"--out {path}: not written, the fitted preset would not load: "
                         f"{e}") from None
    with atomic_open(path) as f:
        f.write(text + "\n")


def evaluated_on(entry: dict) -> str:
    """Which rows an error-table entry's MAPE, p90, max and bias describe: ``holdout``,
    or ``train`` where the operator has no held-out rows (``fit.error_table``)."""
    return "holdout" if entry["n_holdout"] > 0 else "train"


#: ``data_notes`` warns when the kernel rows' median time is this many times slower, or
#: faster, than the uncalibrated cost model predicts for the named GPU.
UNIT_WARN_FACTOR = 20.0


def data_notes(data: Measurements, cal: Calibration) -> list[str]:
    """What the command line says about the data beside the error table: rows of other
    hardware that were not used, fp32 rows, kernel times far from the named GPU's
    roofline (seconds mistaken for milliseconds, or a profile of another device), and
    the roofline alone where shape tables carry the fit."""
    notes = []
    hw = data["hardware"].astype(str)
    other = hw[np.char.lower(hw) != cal.hardware.lower()]
    if other.size:
        labels, counts = np.unique(other, return_counts=True)
        notes.append(f"not used: {other.size} rows of other hardware ("
                     + ", ".join(f"{str(k)!r}: {int(n)}" for k, n in zip(labels, counts,
                                                                       strict=True)) + ")")
    m = cal.data
    n32 = int(np.sum(m["dtype"].astype(str) == "fp32"))
    if n32:
        notes.append(f"{n32} fp32 rows are fitted against the BF16 peak; the preset applies "
                     "to bf16 lanes (the simulator models bf16 and fp8)")
    kern = m["op"].astype(str) != "iteration"
    if kern.any():
        km = m.select(kern)
        _, hw_p = F.hardware_params(cal.hardware)
        ref = np.asarray(F.predict(CostParams.default(), hw_p, F.prepare_rows(km)), np.float64)
        ratio = float(np.median(np.asarray(km["time_s"], np.float64) / ref))
        if not 1 / UNIT_WARN_FACTOR <= ratio <= UNIT_WARN_FACTOR:
            notes.append(
                f"warning: the kernel times are {ratio:.3g}x what the uncalibrated model "
                f"predicts for {cal.hardware} (median over {int(kern.sum())} rows): check that "
                "time_s is in seconds and that the rows were measured on this GPU; the "
                "fitted preset would simulate it at that speed")
    if cal.report_roofline:
        fams = [k for k in ("gemm", "elementwise") if k in cal.report_roofline]
        if fams:
            notes.append("without the shape tables (the roofline alone, which shapes the data "
                         "did not measure get): " + ", ".join(
                             f"{k} MAPE {cal.report_roofline[k]['mape']:.2f}% (train "
                             f"{cal.report_roofline[k]['train_mape']:.2f}%)" for k in fams))
    return notes


def format_table(report: dict[str, dict]) -> str:
    """The error table as text (percent). MAPE, p90, max and bias are on the held-out
    rows; the ``on`` column says ``train`` where an operator has none."""
    w = max([14, *(len(k) + 1 for k in report)])
    lines = [f"{'op':<{w}}{'n_train':>9}{'n_holdout':>10}{'on':>8}{'MAPE%':>8}{'p90%':>8}"
             f"{'max%':>8}{'bias%':>8}{'train MAPE%':>13}"]
    for k, v in report.items():
        lines.append(f"{k:<{w}}{v['n_train']:>9}{v['n_holdout']:>10}{evaluated_on(v):>8}"
                     f"{v['mape']:>8.2f}{v['p90_ape']:>8.2f}{v['max_ape']:>8.2f}"
                     f"{v.get('bias', math.nan):>8.2f}"
                     # no training rows (a stage that fitted nothing on them): say so
                     f"{'-' if v['n_train'] == 0 else format(v['train_mape'], '.2f'):>13}")
    return "\n".join(lines)
