"""Calibrated cost-model presets: fitted ``CostParams`` per GPU, stored as JSON.

A preset file (written by ``jaxsim calibrate``) holds the physical coefficient values,
the smooth-max exponent, the per-kernel-shape correction tables (``shape_tables``, see
``jaxsim.shapecorr``), the sha256 of the data it was fitted to, and its held-out
error report. The presets shipped in ``jaxsim/data/cost_presets/<GPU>.json`` are the
defaults for those GPUs (``cost_preset: auto``); any other GPU uses the uncalibrated
defaults of ``jaxsim.params.COST_SPEC``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from importlib import resources

import numpy as np

from jaxsim import shapecorr
from jaxsim.params import COST_PARAM_NAMES, SMOOTH_P_CHOICES, CostParams

FORMAT = "jaxsim-cost-preset/1"
#: Values of ``cost_preset`` with a special meaning.
AUTO, UNCALIBRATED = "auto", "uncalibrated"


class PresetError(ValueError):
    """A bad preset file or name; the message names the file and the field."""


def shipped() -> list[str]:
    """GPU names with a calibrated preset in the package."""
    d = resources.files("jaxsim").joinpath("data/cost_presets")
    return sorted(p.name[:-5] for p in d.iterdir() if p.name.endswith(".json"))


def _shipped_path(gpu: str) -> str | None:
    for name in shipped():
        if name.lower() == gpu.lower():
            return str(resources.files("jaxsim").joinpath(f"data/cost_presets/{name}.json"))
    return None


def read(path: str) -> dict:
    """Read and check a preset file."""
    try:
        with open(path) as f:
            d = json.load(f)
    except FileNotFoundError:
        raise PresetError(f"cost_preset: {path!r}: no such file") from None
    except IsADirectoryError:
        raise PresetError(f"cost_preset: {path}: is a folder, expected a preset JSON written "
                          "by `jaxsim calibrate`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PresetError(f"cost_preset: {path}: not JSON ({e})") from None
    except RecursionError:
        raise PresetError(f"cost_preset: {path}: nested too deeply to be a preset") from None
    except OSError as e:
        raise PresetError(f"cost_preset: {path}: cannot read it ({e.strerror or e})") from None
    return check(d, path)


def check(d, path: str) -> dict:
    """Check a parsed preset (``path`` names it in errors); returns it."""
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise PresetError(f"cost_preset: {path}: field 'format' must be {FORMAT!r}")
    vals = d.get("values")
    if not isinstance(vals, dict):
        raise PresetError(f"cost_preset: {path}: field 'values' must be an object")
    unknown = sorted(set(vals) - set(COST_PARAM_NAMES))
    if unknown:
        raise PresetError(f"cost_preset: {path}: unknown parameter(s) {unknown} in 'values'")
    _check_numbers(f"cost_preset: {path}: field 'values'", vals)
    if isinstance(d.get("smooth_p"), bool) or d.get("smooth_p") not in SMOOTH_P_CHOICES:
        raise PresetError(f"cost_preset: {path}: field 'smooth_p' is {d.get('smooth_p')!r}; "
                          f"allowed: {', '.join(map(str, SMOOTH_P_CHOICES))}")
    try:
        CostParams.from_values({**vals, "smooth_p": d["smooth_p"]})
    except (ValueError, KeyError) as e:
        raise PresetError(f"cost_preset: {path}: {e}") from None
    _check_tables(path, d.get("shape_tables"))
    _check_engine(path, d.get("engine_fit"))
    return d


#: Range of a cost coefficient, in a preset as in ``cost.*`` (``jaxsim.config``): outside
#: it the unconstrained value, or its transform back, leaves float32.
COST_MIN, COST_MAX = 1e-30, 1e30


def _check_numbers(where: str, vals: dict) -> None:
    """Every parameter value is a number in (0, COST_MAX] (not a bool, null, string or
    list)."""
    for k, v in vals.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise PresetError(f"{where}: parameter {k!r} is {v!r}; allowed: a finite number")
        if not 0 < v <= COST_MAX:  # (a fit may take an offset far below COST_MIN)
            raise PresetError(f"{where}: parameter {k!r} is {v!r}; allowed: a number "
                              f"> 0 and <= {COST_MAX:g}")


def _check_engine(path: str, ef) -> None:
    """``engine_fit`` (optional): {"values": {...}, "by_tp": {"<tp>": {...}}, ...}."""
    if ef is None:
        return
    where = f"cost_preset: {path}: field 'engine_fit'"
    if not isinstance(ef, dict) or not isinstance(ef.get("values"), dict):
        raise PresetError(f"{where} must be an object with an object 'values'")
    by_tp = ef.get("by_tp", {})
    if not isinstance(by_tp, dict):
        raise PresetError(f"{where}: 'by_tp' must be an object (TP degree -> values)")
    bad = [k for k in by_tp if not re.fullmatch(r"[1-9][0-9]*", k)]
    if bad:
        raise PresetError(f"{where}: 'by_tp' has key {bad[0]!r}; allowed: TP degrees "
                          "(integers >= 1)")
    for name, vals in [("values", ef["values"]), *((f"by_tp.{k}", v) for k, v in by_tp.items())]:
        if not isinstance(vals, dict):
            raise PresetError(f"{where}: {name!r} must be an object")
        _check_numbers(f"{where}: {name!r}", vals)
        try:
            CostParams.from_values(vals)
        except (ValueError, KeyError) as e:
            raise PresetError(f"{where}: {name!r}: {e}") from None
    tabs = ef.get("tables")
    if tabs is not None:
        if not isinstance(tabs, dict):
            raise PresetError(f"{where}: 'tables' must be an object (key -> table)")
        bad = [k for k in tabs if not re.fullmatch(r"all_reduce/tp[1-9][0-9]*", str(k))]
        if bad:
            raise PresetError(f"{where}: 'tables' has key {bad[0]!r}; allowed: "
                              "all_reduce/tpN (the engine's all-reduce over N GPUs)")
        _check_tables(path, {"tables": tabs}, field="engine_fit.tables")


#: Largest shape-table value a preset may hold: a kernel 10^6 times slower than its
#: roofline is a unit error, not a measurement (a fit stopped early on CPU timings of
#: GPU-sized kernels gave corrections of a few thousand, which must still load).
TABLE_MAX = 1e6


def _check_tables(path: str, st, field: str = "shape_tables") -> None:
    """``shape_tables`` (optional): {"tables": {key: {"first": i, "delta": [...]}}}."""
    if st is None:
        return
    where = f"cost_preset: {path}: field '{field}'"
    if not isinstance(st, dict) or not isinstance(st.get("tables"), dict):
        raise PresetError(f"{where} must be an object with an object 'tables'")
    gemm = "|".join(shapecorr.GEMM_CORR_OPS)
    elem = "|".join(o for o in shapecorr.CORR_OPS[4:] if o != "all_reduce")
    key_re = (rf"({gemm})/[0-9]+x[0-9]+/[a-z0-9]+|({elem})/[0-9]+/[a-z0-9]+"
              r"|all_reduce/tp[1-9][0-9]*")
    for key, t in st["tables"].items():
        if not re.fullmatch(key_re, str(key)):  # a misspelt key would never be looked up
            raise PresetError(f"{where}: table key {key!r} is not a kernel shape; allowed: "
                              "OP/KxN/DTYPE for the GEMMs (qkv_proj/4096x6144/bf16), "
                              "OP/SIZE/DTYPE for the elementwise operators (norm/4096/bf16), "
                              "all_reduce/tpN")
        first = t.get("first") if isinstance(t, dict) else None
        vals = t.get("delta") if isinstance(t, dict) else None
        if (isinstance(first, bool) or not isinstance(first, int) or not isinstance(vals, list)
                or not vals):
            raise PresetError(f"{where}: table {key!r} needs an integer 'first' and a "
                              "non-empty list 'delta'")
        if first < 0 or first + len(vals) > shapecorr.GRID:
            raise PresetError(f"{where}: table {key!r} covers knots {first}.."
                              f"{first + len(vals) - 1}; allowed: 0..{shapecorr.GRID - 1}")
        bad = [v for v in vals if isinstance(v, bool) or not isinstance(v, int | float)
               or not -1.0 < v < TABLE_MAX]
        if bad:
            raise PresetError(f"{where}: table {key!r} has value {bad[0]!r}; allowed: "
                              f"numbers above -1 and below {TABLE_MAX:g} (a relative "
                              "correction: the time is multiplied by 1 + value)")


@functools.cache
def _cached(path: str, mtime: float) -> tuple[tuple[str, float], ...]:
    d = read(path)
    return tuple(sorted({**d["values"], "smooth_p": d["smooth_p"]}.items()))


def resolve(preset: str, gpu: str) -> str | None:
    """The preset file for a ``cost_preset`` value and GPU (None: uncalibrated)."""
    if preset == UNCALIBRATED:
        return None
    if preset == AUTO:
        return _shipped_path(gpu)
    path = _shipped_path(preset)
    if path is not None:
        return path
    if os.path.exists(preset):
        return preset
    raise PresetError(f"cost_preset: {preset!r} is neither a file nor a shipped preset; "
                      f"allowed: {AUTO}, {UNCALIBRATED}, {', '.join(shipped())}, or a "
                      "path to a preset JSON written by `jaxsim calibrate`")


@functools.cache
def _cached_tables(path: str, mtime: float) -> dict[str, np.ndarray]:
    st = read(path).get("shape_tables") or {"tables": {}}
    return {k: shapecorr.expand(t["first"], t["delta"]) for k, t in st["tables"].items()}


def tables(preset: str, gpu: str) -> dict[str, np.ndarray]:
    """Per-kernel-shape correction tables (key -> full ``[G]`` row, see
    ``jaxsim.shapecorr``) of a ``cost_preset`` and GPU; empty when it has none."""
    path = resolve(preset, gpu)
    if path is None:
        return {}
    return _cached_tables(os.path.abspath(path), os.path.getmtime(path))


def values(preset: str, gpu: str) -> dict[str, float]:
    """Physical coefficient values (and ``smooth_p``) for a ``cost_preset`` and GPU;
    empty for the uncalibrated defaults."""
    path = resolve(preset, gpu)
    if path is None:
        return {}
    return dict(_cached(os.path.abspath(path), os.path.getmtime(path)))


@functools.cache
def _cached_engine(path: str, mtime: float) -> tuple[tuple, tuple]:
    ef = read(path).get("engine_fit")
    if ef is None:
        return (), ()
    by_tp = tuple(sorted((int(k), tuple(sorted(v.items())))
                         for k, v in ef.get("by_tp", {}).items()))
    return tuple(sorted(ef["values"].items())), by_tp


def engine_values(preset: str, gpu: str, tp: int) -> dict[str, float]:
    """The iteration-stage fit a preset keeps apart (``engine_fit``) for TP degree ``tp``:
    its shared values, with that TP degree's values (``by_tp``) over them when it has
    them. Raises ``PresetError`` when the preset has no ``engine_fit``."""
    path = resolve(preset, gpu)
    shared, by_tp = ((), ()) if path is None else _cached_engine(
        os.path.abspath(path), os.path.getmtime(path))
    if not shared:
        raise PresetError(f"cost_engine_fit: cost_preset {preset!r} on {gpu} has no "
                          "'engine_fit' (written by `jaxsim calibrate --iteration-fit "
                          "separate`); allowed: false, or a preset that has one")
    return {**dict(shared), **dict(dict(by_tp).get(int(tp), ()))}


@functools.cache
def _cached_engine_tables(path: str, mtime: float) -> dict[str, np.ndarray]:
    ef = read(path).get("engine_fit") or {}
    return {k: shapecorr.expand(t["first"], t["delta"])
            for k, t in (ef.get("tables") or {}).items()}


def engine_tables(preset: str, gpu: str) -> dict[str, np.ndarray]:
    """The engine's all-reduce tables of a preset's ``engine_fit`` (key
    ``all_reduce/tpN`` -> full ``[G]`` row), which lanes with ``cost_engine_fit`` use in
    place of the kernel table of the same key; empty when it has none."""
    path = resolve(preset, gpu)
    if path is None:
        return {}
    return _cached_engine_tables(os.path.abspath(path), os.path.getmtime(path))


def load(preset: str, gpu: str = "") -> CostParams:
    """``CostParams`` of a preset (name, path, ``auto`` with ``gpu``, or ``uncalibrated``)."""
    return CostParams.from_values(values(preset, gpu))
