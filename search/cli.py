"""``jaxsim sweep | best | pareto``: run a design space, rank it, and draw its Pareto front.

Errors (bad space file, bad objective or SLO, a folder holding another sweep) end in one
line on stderr, ``jaxsim: error: ...``, exit status 2, before anything runs.
"""

from __future__ import annotations

import json
import math
import os
import sys

from jaxsim import fileio
from jaxsim.cli import _fail

# ---- sweep ---------------------------------------------------------------------------


def add_sweep_arguments(p) -> None:
    p.add_argument("space", help="design-space file (YAML); see examples/")
    p.add_argument("--out", required=True, help="results folder (one Parquet file per chunk)")
    p.add_argument("--resume", action="store_true",
                   help="continue a sweep whose folder has finished chunks")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="configurations per compiled call B (default: from memory per lane)")
    p.add_argument("--slots", type=int, default=None,
                   help="initial slot-table rows S (default: min(max max_num_seqs, 64))")
    p.add_argument("--max-chunks", type=int, default=None,
                   help="stop after this many chunks (resume later with --resume)")
    p.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="run chunks as Ray tasks: a cluster address, or 'local' to start "
                        "Ray here (needs pip install 'jaxsim[ray]')")
    p.add_argument("--quiet", action="store_true", help="no progress line")


def cmd_sweep(args) -> int:
    from jaxsim.config import ConfigError
    from search import runner, space

    if args.ray is not None and not args.ray.strip():
        return _fail(f"--ray {args.ray!r}: give a cluster address (ray://host:port, auto) "
                     "or 'local'; leave out --ray to run here without Ray")
    try:
        sp = space.load(args.space)
        if args.ray:
            from search import ray_runner

            res = ray_runner.run_sweep(sp, args.out, address=args.ray, resume=args.resume,
                                       chunk_size=args.chunk_size, slots=args.slots,
                                       progress=not args.quiet, max_chunks=args.max_chunks)
        else:
            res = runner.run_sweep(sp, args.out, resume=args.resume,
                                   chunk_size=args.chunk_size, slots=args.slots,
                                   progress=not args.quiet, max_chunks=args.max_chunks)
    except (space.SpaceError, runner.SweepError, ConfigError) as e:
        msg = str(e)
        for name in ("chunk_size", "max_chunks", "slots"):  # the API's argument: the flag
            if msg.startswith(f"{name}: "):
                msg = ("--" + name.replace("_", "-") + msg[len(name):]).replace(
                    "(or None for all)", "(omit it for all)")
        return _fail(msg)
    except KeyboardInterrupt:
        done = len(runner.finished_chunks(args.out))
        print(f"\njaxsim sweep: interrupted; {done} finished chunk(s) are kept in {args.out}; "
              "run the same command with --resume to continue", file=sys.stderr)
        return 130
    from jaxsim.sim import MIN_LANES_PER_DEVICE

    done = len(runner.finished_chunks(args.out))
    n = res.plan.size
    # the devices a chunk runs on: each gets at least MIN_LANES_PER_DEVICE lanes
    used = max(1, min(res.plan.num_devices, res.plan.lanes // MIN_LANES_PER_DEVICE))
    where = ("on Ray workers" if args.ray else f"{used} device(s)")
    print(f"jaxsim sweep: {sp.name}: {len(res.chunks_run)} chunks run, "
          f"{len(res.chunks_skipped)} already done, {done}/{res.plan.num_chunks} finished "
          f"({n:,} configurations, B={res.plan.chunk_size}"
          f"{f' of {res.plan.replicas} replica lanes each' if res.plan.replicas > 1 else ''}"
          f", {where}); {res.wall_s:.1f} s; "
          f"{'' if args.ray else f'compiles {res.compiles}; '}results in {args.out}")
    return 0


# ---- best ----------------------------------------------------------------------------


def _manifest(out_dir: str) -> dict | None:
    """The parsed ``sweep.json`` of a results folder (None when unreadable)."""
    try:
        with open(os.path.join(out_dir, "sweep.json")) as f:
            man = json.load(f)
    except (OSError, ValueError):
        return None
    return man if isinstance(man, dict) else None


def _check_results_dir(out_dir: str) -> str | None:
    """Why ``out_dir`` is not a results folder of ``jaxsim sweep`` (None when it is)."""
    if not os.path.isdir(out_dir):
        what = "a file, not a folder" if os.path.exists(out_dir) else "no such folder"
        return f"{out_dir}: {what}; give the results folder of jaxsim sweep (--out)"
    path = os.path.join(out_dir, "sweep.json")
    if not os.path.isfile(path):
        return (f"{out_dir}: not a results folder of jaxsim sweep (no sweep.json); give the "
                "folder passed to jaxsim sweep --out")
    spec = (_manifest(out_dir) or {}).get("space")
    if not (isinstance(spec, dict) and isinstance(spec.get("base"), dict)
            and isinstance(spec.get("axes"), dict)):
        return (f"{path}: unreadable (not the manifest jaxsim sweep writes); run the sweep "
                "again into a new folder")
    return None


def _sweep_gpus(out_dir: str, df) -> list[str]:
    """GPUs of a sweep: those in its results and the values of a ``gpu`` axis (so a
    partial sweep can be priced for GPUs of chunks not yet run)."""
    gpus = {str(g) for g in df["gpu"]} if "gpu" in df.columns else set()
    axis = (((_manifest(out_dir) or {}).get("space") or {}).get("axes") or {}).get("gpu")
    if isinstance(axis, dict):
        gpus |= {str(g) for g in axis.get("values") or []}
    return sorted(gpus)


def _settings(out_dir: str) -> dict:
    return (_manifest(out_dir) or {}).get("objectives", {}) or {}


def _prices(args, settings, gpus) -> dict:
    """Prices from the space file's objectives, overridden by ``--price`` (whose GPUs must
    be among ``gpus``, the GPUs of the sweep)."""
    from search import objectives as ob

    prices = {k: settings[k] for k in ("gpu_hour_usd", "mem_gb_hour_usd") if k in settings}
    for item in args.price or []:
        if "=" not in item:
            raise ValueError(f"--price {item!r}: expected GPU=USD_PER_HOUR or mem=USD_PER_GB_HOUR")
        k, v = item.split("=", 1)
        try:
            val = float(v)
        except ValueError:
            raise ValueError(f"--price {item!r}: {v!r} is not a number") from None
        if not (math.isfinite(val) and val >= 0):
            raise ValueError(f"--price {item!r}: {v} must be a finite number >= 0")
        spelt = {x.lower(): x for x in gpus}  # GPU names are case-insensitive
        if k != "mem" and k.lower() not in spelt:
            raise ValueError(f"--price {item!r}: {k!r} is not a GPU of this sweep; its GPUs: "
                             f"{', '.join(gpus)} (or mem=USD_PER_GB_HOUR)")
        if k == "mem":
            prices["mem_gb_hour_usd"] = val
        else:
            k = spelt[k.lower()]
            g = prices.get("gpu_hour_usd") or {}
            # one price for every GPU (a number in the space file): per GPU from here on
            g = ob.canonical_prices(g) if isinstance(g, dict) else {x: g for x in gpus}
            g[k] = val
            prices["gpu_hour_usd"] = g
    return prices


def add_best_arguments(p) -> None:
    p.add_argument("dir", help="results folder of jaxsim sweep")
    p.add_argument("--slo", action="append", metavar="'METRIC<=VALUE'",
                   help="SLO bound, e.g. --slo 'ttft_p99_s<=1.0' --slo 'tpot_p99_s<=0.05' "
                        "(default: the space file's objectives.slo)")
    p.add_argument("--objective", default=None,
                   help="what to optimise (default: the space file's objectives.objective, "
                        "else cost_per_mtok when prices are known, else throughput_per_gpu)")
    p.add_argument("--price", action="append", metavar="GPU=USD",
                   help="GPU-hour price, e.g. --price H100-SXM=3.0; mem=USD per GB-hour")
    p.add_argument("--top", type=int, default=10, help="rows of the table to print")
    p.add_argument("--json", action="store_true",
                   help="print only the winner, as one JSON object (no table: --top and "
                        "--why do not apply)")
    p.add_argument("--why", action="store_true",
                   help="also print d objective / d knob at the winner for each continuous "
                        "axis (a few more simulations), ranked")


def _slo_text(slo: dict) -> str:
    """SLO bounds as given: ``ttft_p99_s <= 1.0`` (``min_X`` is an ``X >= v`` bound)."""
    return ", ".join(f"{k[4:]} >= {v}" if k.startswith("min_") else f"{k} <= {v}"
                     for k, v in slo.items())


def _status_counts(status) -> str:
    """``800 ok, 320 infeasible (model_does_not_fit 200, ...), 8 truncated``."""
    import collections

    import numpy as np

    from jaxsim import status as st_bits

    status = np.asarray(status).astype(np.int64)
    parts = [f"{int(np.sum(status == 0)):,} ok"]
    reasons = collections.Counter()
    others = collections.Counter()
    for s, n in zip(*np.unique(status[status != 0], return_counts=True), strict=True):
        names = st_bits.decode(int(s))
        if "infeasible" in names:
            others["infeasible"] += int(n)
            reasons.update({r: int(n) for r in names if r != "infeasible"})
        else:
            others.update({r: int(n) for r in names})
    for name, n in sorted(others.items(), key=lambda kv: -kv[1]):
        why = (" (" + ", ".join(f"{r} {c:,}" for r, c in reasons.most_common()) + ")"
               if name == "infeasible" and reasons else "")
        parts.append(f"{n:,} {name}{why}")
    return ", ".join(parts)


def _slo_misses(table, slo: dict, prices: dict) -> list[str]:
    """Per SLO bound: how many ok configurations meet it alone, and the best value."""
    import numpy as np

    from search import objectives as ob

    ok = np.asarray(table["status"]).astype(np.int64) == 0
    lines = []
    for k, bound in slo.items():
        name, ge = (k[4:], True) if k.startswith("min_") else (k, False)
        met = int(ob.feasible(table, {k: bound}, prices).sum())  # one bound's rule
        v = ob.derived(table, name, prices).astype(np.float64)[ok]
        v = v[np.isfinite(v)]
        best = (f"; best {float(v.max() if ge else v.min()):.4g}" if v.size else "")
        lines.append(f"  {name} {'>=' if ge else '<='} {bound}: met by {met:,} of "
                     f"{int(ok.sum()):,} ok configurations{best}")
    return lines


def cmd_best(args) -> int:
    import numpy as np

    from search import objectives as ob
    from search import runner

    if args.top < 1:
        return _fail(f"--top: {args.top} must be >= 1")
    bad = _check_results_dir(args.dir)
    if bad:
        return _fail(bad)
    settings = _settings(args.dir)
    try:
        df = runner.load_results(args.dir)
        slo = (ob.parse_slo(args.slo) if args.slo
               else ob.parse_slo(settings.get("slo"), label="objectives.slo"))
        prices = _prices(args, settings, _sweep_gpus(args.dir, df))
        objective = (args.objective or settings.get("objective")
                     or ("cost_per_mtok" if prices.get("gpu_hour_usd")
                         else "throughput_per_gpu"))
        table = {c: df[c].to_numpy() for c in df.columns}
        c = ob.costs(table, [objective], slo, prices)[:, 0]
        value = ob.derived(table, objective, prices)
    except (runner.SweepError, ob.ObjectiveError, ValueError) as e:
        return _fail(str(e))
    order = np.argsort(c, kind="stable")
    n_ok = int(np.isfinite(c).sum())
    size = (_manifest(args.dir) or {}).get("size")
    partial = (f" (a partial sweep: {len(df):,} of its {size:,} configurations have run)"
               if isinstance(size, int) and len(df) < size else "")
    if n_ok == 0:
        lines = [f"status: {_status_counts(table['status'])}",
                 *(x.strip() for x in _slo_misses(table, slo, prices))]
        if args.json:
            print(json.dumps({"meets_slo": 0, "configurations": len(df),
                              "sweep_size": size, "slo": slo, "why": lines}))
            return 1
        print(f"jaxsim best: none of {len(df):,} configurations meets the SLOs "
              f"({_slo_text(slo) or 'none given'}){partial}")
        for line in lines:
            print(f"  {line}")
        return 1
    best = df.iloc[int(order[0])]
    from search.export import vllm_caveats, vllm_serve_command

    cfg = _config_of(args.dir, best)
    cmd = vllm_serve_command(cfg)
    caveats = vllm_caveats(cfg)
    if args.json:
        out = {k: _jsonable(best[k]) for k in df.columns}
        out[objective] = _jsonable(value[order[0]])
        out["vllm_serve"] = cmd
        out["vllm_caveats"] = caveats
        print(json.dumps(out))
        return 0
    axes = list(_settings_axes(args.dir)) or ["max_num_seqs", "max_num_batched_tokens"]
    if slo:
        print(f"jaxsim best: {n_ok:,} of {len(df):,} configurations meet the SLOs "
              f"({_slo_text(slo)}); ranked by {objective}{partial}")
    else:
        print(f"jaxsim best: {n_ok:,} of {len(df):,} configurations are feasible (no SLO "
              f"given: --slo or the space file's objectives.slo); ranked by "
              f"{objective}{partial}")
    axes = [a for a in axes if a != objective]  # an axis ranked on is shown once
    extra = [m for m in ("ttft_p99_s", "tpot_p99_s") if m != objective and m not in axes]
    head = ["rank", "config_id", *axes, objective, *extra]
    print("  " + "  ".join(f"{h:>14}" for h in head))
    for r, i in enumerate(order[:min(args.top, n_ok)]):
        row = df.iloc[int(i)]
        vals = [r + 1, row["config_id"], *(row[a] for a in axes), value[i],
                *(row[m] for m in extra)]
        print("  " + "  ".join(f"{_fmt(v):>14}" for v in vals))
    print(f"\nwinner as a vLLM launch command:\n  {cmd}")
    if caveats:
        print("  where it differs from what was simulated:")
        for note in caveats:
            print(f"  - {note}")
    if args.why:
        from search import optimize, pareto, space

        with open(os.path.join(args.dir, "sweep.json")) as f:
            sp = space.from_dict(json.load(f)["space"])
        ev = optimize.Evaluator(sp, objective, slo, prices, batch_size=8)
        u = sp.point({a.key: _jsonable(best[a.key]) for a in sp.axes})
        names, grads, vals = optimize.sensitivities(ev, u)
        if names:
            print("\nwhy this configuration (central differences of exact simulations, "
                  "+-5% of each knob):")
            print(pareto.sensitivity_table(names, grads, vals, objective=objective))
        else:
            print("\n(no continuous axes: nothing to differentiate)")
    return 0


def _settings_axes(out_dir):
    try:
        with open(os.path.join(out_dir, "sweep.json")) as f:
            spec = json.load(f)["space"]
        return spec.get("axis_order") or list(spec["axes"])
    except (OSError, ValueError, KeyError):
        return []


def _config_of(out_dir: str, row) -> dict:
    """The full configuration of a results row (base + axis values)."""
    from search.space import _set_key

    with open(os.path.join(out_dir, "sweep.json")) as f:
        spec = json.load(f)["space"]
    cfg = json.loads(json.dumps(spec["base"]))
    for k in spec["axes"]:
        _set_key(cfg, k, _jsonable(row[k]))
    return cfg


def _jsonable(v):
    if hasattr(v, "tolist") and getattr(v, "ndim", 0) > 0:  # a list-valued key (tiers)
        return [_jsonable(x) for x in v.tolist()]
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _fmt(v) -> str:
    if isinstance(v, float) or hasattr(v, "dtype") and v.dtype.kind == "f":
        v = float(v)
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    return str(v)


# ---- pareto --------------------------------------------------------------------------

#: ``--plot`` suffixes (no suffix: PNG, as :func:`search.pareto.plot_pareto` does).
PLOT_FORMATS = fileio.PLOT_FORMATS


def _check_out_file(flag: str, path: str, formats=None) -> str | None:
    """Why ``path`` cannot be written as the output of ``flag`` (None when it can)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"{flag} {path!r}: folder {folder!r} does not exist"
    if os.path.isdir(path):
        return f"{flag} {path!r}: is a folder; give a file name"
    if not os.access(folder, os.W_OK):
        return f"{flag} {path!r}: folder {folder!r} is not writable"
    fmt = os.path.splitext(path)[1].lstrip(".").lower()
    if formats is not None and fmt and fmt not in formats:
        return (f"{flag} {path!r}: suffix {'.' + fmt!r} is not a format it can write; "
                f"allowed: {', '.join('.' + f for f in formats)}")
    return None


def add_pareto_arguments(p) -> None:
    p.add_argument("dir", help="results folder of jaxsim sweep")
    p.add_argument("--objectives", required=True,
                   help="2-4 comma-separated objectives, e.g. ttft_p99_s,cost_per_mtok")
    p.add_argument("--slo", action="append", metavar="'METRIC<=VALUE'", help="as for best")
    p.add_argument("--price", action="append", metavar="GPU=USD", help="as for best")
    p.add_argument("--plot", default=None, help="write a Pareto plot (PNG; 2 objectives)")
    p.add_argument("--csv", default=None, help="write the front as CSV")


def cmd_pareto(args) -> int:
    import numpy as np

    from search import objectives as ob
    from search import pareto, runner

    names = [s.strip() for s in args.objectives.split(",") if s.strip()]
    if not 2 <= len(names) <= 4:
        return _fail(f"--objectives {args.objectives!r}: give 2 to 4 objectives")
    if len(set(names)) != len(names):
        return _fail(f"--objectives {args.objectives!r}: an objective is given twice")
    if args.plot and len(names) != 2:
        return _fail(f"--plot {args.plot!r}: needs exactly 2 objectives, not {len(names)}")
    # output paths are checked before any work, so a bad one costs nothing
    for flag, path, formats in (("--csv", args.csv, None), ("--plot", args.plot, PLOT_FORMATS)):
        bad = path and _check_out_file(flag, path, formats)
        if bad:
            return _fail(bad)
    bad = _check_results_dir(args.dir)
    if bad:
        return _fail(bad)
    settings = _settings(args.dir)
    try:
        df = runner.load_results(args.dir)
        slo = (ob.parse_slo(args.slo) if args.slo
               else ob.parse_slo(settings.get("slo"), label="objectives.slo"))
        prices = _prices(args, settings, _sweep_gpus(args.dir, df))
        table = {c: df[c].to_numpy() for c in df.columns}
        c = ob.costs(table, names, slo, prices)
    except (runner.SweepError, ob.ObjectiveError, ValueError) as e:
        return _fail(str(e))
    valid = np.all(np.isfinite(c), axis=1)
    front = pareto.pareto_front(c, valid)
    if front.size == 0:
        print("jaxsim pareto: no configuration meets the SLOs")
        return 1
    ref = np.max(c[front], axis=0) * 1.1 + 1e-12
    ref = np.where(ref > 0, ref, np.max(c[front], axis=0) * 0.9 + 1e-12)
    hv = pareto.hypervolume(c[front], ref)
    print(f"jaxsim pareto: {front.size} non-dominated of {int(valid.sum()):,} feasible "
          f"configurations; hypervolume {hv:.6g} (reference {np.round(ref, 6).tolist()}; "
          "maximised objectives are negated)")
    axes = list(_settings_axes(args.dir))
    cols = ["config_id", *axes, *names]
    print("  " + "  ".join(f"{h:>14}" for h in cols))
    shown = df.iloc[front].copy()
    for n in names:  # derived objectives (cost_per_mtok, ...) become columns of the front
        shown[n] = ob.derived(table, n, prices)[front]
    for _, row in shown.head(40).iterrows():
        vals = [row["config_id"], *(row[a] for a in axes), *(row[n] for n in names)]
        print("  " + "  ".join(f"{_fmt(v):>14}" for v in vals))
    if args.csv:
        from jaxsim.fileio import atomic_open

        try:
            with atomic_open(args.csv, "w", newline="") as fh:
                shown.to_csv(fh, index=False)
        except OSError as e:
            return _fail(f"--csv {args.csv!r}: cannot write: {e.strerror or e}")
    if args.plot:
        try:
            # the metrics' own values: the costs negate maximised objectives
            sign = np.array([-1.0 if ob.is_maximised(n) else 1.0 for n in names])
            pareto.plot_pareto(c * sign, front_idx=front, labels=tuple(names),
                               path=args.plot)
        except OSError as e:
            return _fail(f"--plot {args.plot!r}: cannot write: {e.strerror or e}")
        print(f"wrote {args.plot}")
    return 0
