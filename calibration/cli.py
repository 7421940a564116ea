"""``jaxsim calibrate DATA... --hardware NAME [--holdout ...] [--iteration-fit ...]
--out PRESET.json [--json]``."""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys

from jaxsim import fileio
from jaxsim.cli import _fail


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="+", metavar="DATA",
                   help="measurement files or folders (Vidur profiling layout, Splitwise "
                        "perf_model.csv, Sarathi-Serve folder, jaxsim CSV)")
    p.add_argument("--hardware", required=True, help="GPU preset to calibrate (H100-SXM, ...)")
    p.add_argument("--holdout", default="shape",
                   help="held-out rows: shape (default), model:NAME, or none")
    p.add_argument("--out", required=True, metavar="PRESET.json", help="preset file to write")
    p.add_argument("--robust", action="store_true", help="Huber loss on the log error")
    p.add_argument("--steps", type=int, default=400, help="Adam steps per stage (default 400)")
    p.add_argument("--iteration-fit", default="apply", choices=("apply", "separate"),
                   help="apply (default): iteration rows fit the CPU overheads, LM head, "
                        "sampling (and attention without attention rows) into the preset; "
                        "separate: fit and report them under 'engine_fit' but keep them out "
                        "of the preset's values (for iterations of another engine)")
    p.add_argument("--no-engine-per-tp", action="store_true",
                   help="with --iteration-fit separate: one engine fit for all TP degrees "
                        "(default: the engine's overheads and all-reduce are refitted per "
                        "TP degree, under engine_fit.by_tp, and each TP degree above 1 "
                        "gets an all-reduce table, under engine_fit.tables)")
    p.add_argument("--no-shape-tables", action="store_true",
                   help="fit the roofline only, without per-kernel-shape correction tables")
    p.add_argument("--plot", metavar="FILE.png", help="write a parity plot")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: op family -> held-out error statistics "
                        "(\"on\": \"train\" where an operator has no held-out rows)")


#: File suffixes ``--plot`` accepts.
PLOT_FORMATS = fileio.PLOT_FORMATS




def cmd(args) -> int:
    import os

    from calibration import calibrate as C
    from calibration import loaders
    from calibration.schema import DataError

    if args.steps < 1:
        return _fail(f"--steps: {args.steps} must be >= 1")
    for flag, path in (("--out", args.out), ("--plot", args.plot)):
        if path is None:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            return _fail(f"{flag}: folder {folder!r} does not exist")
        if os.path.isdir(path):
            return _fail(f"{flag}: {path!r} is a folder; give a file name")
        for d in args.data:
            if os.path.isfile(d) and os.path.exists(path) and os.path.samefile(d, path):
                return _fail(f"{flag}: {path!r} is one of the measurement files read; "
                             "give another file name")
        why = fileio.cannot_write(path)  # before the fit, whose result would be lost
        if why:
            return _fail(f"{flag}: {path!r}: {why}")
    if args.plot is not None and os.path.abspath(args.plot) == os.path.abspath(args.out):
        return _fail(f"--plot: {args.plot!r} is the --out file too; give the plot another "
                     "name")
    args.hardware = args.hardware.strip()
    if args.plot is not None:
        fmt = os.path.splitext(args.plot)[1].lstrip(".").lower()
        if fmt not in PLOT_FORMATS:
            return _fail(f"--plot: {args.plot!r} has suffix {fmt!r}; allowed: "
                         f"{', '.join('.' + f for f in PLOT_FORMATS)}")
    try:
        data = loaders.load(args.data)
        cal = C.calibrate(data, args.hardware, holdout=args.holdout, robust=args.robust,
                          steps=args.steps, iteration_fit=args.iteration_fit,
                          shape_tables=not args.no_shape_tables,
                          engine_per_tp=not args.no_engine_per_tp)
    except (DataError, ValueError) as e:
        return _fail(str(e))
    command = "jaxsim calibrate " + " ".join(shlex.quote(a) for a in sys.argv[2:]) \
        if len(sys.argv) > 2 and sys.argv[1] == "calibrate" else ""
    plot_was_there = args.plot is not None and os.path.exists(args.plot)
    if args.plot:
        from calibration.plots import parity

        # before the preset, so that a plot that cannot be written leaves no preset
        try:
            parity(cal.data, cal.predict(), cal.train, args.plot,
                   title=f"{cal.hardware}, held out by {cal.holdout}")
        except OSError as e:
            return _fail(f"--plot: cannot write {args.plot!r}: {e.strerror or e}")
    try:
        C.write_preset(cal, args.out, command=command)
    except (ValueError, OSError) as e:
        if args.plot and not plot_was_there and os.path.exists(args.plot):
            os.unlink(args.plot)  # nothing half-written: no plot without its preset
        if isinstance(e, OSError):
            return _fail(f"--out: cannot write {args.out!r}: {e.strerror or e}")
        return _fail(str(e))
    notes = C.data_notes(data, cal)
    if args.json:
        for reason, n in cal.skipped.items():  # stdout holds the JSON only
            print(f"jaxsim calibrate: skipped {n} rows: {reason}", file=sys.stderr)
        for note in notes:
            print(f"jaxsim calibrate: {note}", file=sys.stderr)
        keys = ("n_train", "n_holdout", "mape", "p90_ape", "max_ape")
        obj = {op: {**{k: (None if isinstance(v[k], float) and not math.isfinite(v[k])
                           else v[k]) for k in keys}, "on": C.evaluated_on(v)}
               for op, v in cal.report.items()}
        print(json.dumps(obj))
        return 0
    print(f"jaxsim calibrate: {cal.hardware}, {cal.n_rows} rows "
          f"(data sha256 {cal.data_sha256[:12]}), held out by {cal.holdout}, "
          f"smooth_p {2 ** int(cal.cost.smooth_p_log2)}")
    for reason, n in cal.skipped.items():
        print(f"  skipped {n} rows: {reason}")
    print(C.format_table(cal.report))
    for note in notes:
        print(f"  {note}")
    if cal.engine_fit is not None:
        per_tp = " (engine terms per TP degree: by_tp)" if "by_tp" in cal.engine_fit else ""
        if "tables" in cal.engine_fit:
            per_tp += (" (engine all-reduce tables: "
                       + ", ".join(sorted(cal.engine_fit["tables"])) + ")")
        print(f"  iteration stage, kept out of the preset's values (engine_fit){per_tp}:")
        print(C.format_table(cal.engine_fit["report"]))
    print("  fit time: " + ", ".join(f"{k} {v:.1f} s" for k, v in cal.seconds.items()))
    print(f"  wrote {args.out}")
    return 0
