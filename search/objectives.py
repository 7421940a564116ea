"""Objectives and constraints over sweep results; infeasible or flagged lanes rank last.

Every objective is turned into a *cost* (lower is better): maximised quantities are
negated. A lane whose status is not OK, that misses an SLO, or whose objective is NaN
gets cost ``+inf``, so it can never be best.

Objectives (column names of the results table, or derived here):

- any metric column (``ttft_p99_s``, ``tpot_p50_s``, ``e2e_p99_s``, ...): minimised;
- ``throughput_rps``, ``output_tps``, ``goodput_rps``, ``slo_attainment``,
  ``prefix_hit_rate`` and ``hit_rate_tier<N>``: maximised;
- ``throughput_per_gpu``: output tokens/s per GPU (maximised);
- ``goodput_per_gpu``: requests/s meeting the per-request SLOs, per GPU (maximised);
- ``cost_per_mtok``: USD per million output tokens at the simulated load:
  ``num_gpus * gpu_hour_usd[gpu] / 3600 / output_tps * 1e6``, plus, when ``mem_gb_hour_usd``
  is given, the price of the memory the configuration holds beyond the GPU
  (``host_memory_gb`` column, if present) (minimised);
- ``num_gpus``: ``tp * num_replicas`` (minimised); the per-GPU objectives divide by it.

SLOs are upper bounds on metric columns, e.g. ``{"ttft_p99_s": 1.0, "tpot_p99_s": 0.05}``
(lower bounds with a ``min_`` prefix: ``{"min_slo_attainment": 0.99}``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

MAXIMISED = ("throughput_rps", "output_tps", "input_tps", "goodput_rps", "slo_attainment",
             "throughput_per_gpu", "goodput_per_gpu", "capacity_rps", "prefix_hit_rate")


def is_maximised(name: str) -> bool:
    """Whether larger is better for an objective (the others are minimised)."""
    return name in MAXIMISED or re.fullmatch(r"hit_rate_tier[0-9]+", name) is not None
DERIVED = ("throughput_per_gpu", "goodput_per_gpu", "cost_per_mtok", "num_gpus")


#: Numeric columns every sweep's results hold (``search.runner.rows_from_chunk``), besides
#: the axes and the per-tier columns of :data:`TIER_COLUMN`.
METRIC_COLUMNS = (
    "busy_s", "completed", "duration_s", "energy_tiers_j", "goodput_rps", "input_tps",
    "iterations", "itl_mean_s", "kv_gb", "kv_occupancy_mean", "kv_occupancy_peak",
    "max_num_batched_tokens", "max_num_seqs", "num_gpu_blocks", "num_requests",
    "output_tps", "preemptions", "prefetched_blocks", "prefix_hit_rate", "slo_attainment",
    "slots", "steps", "swaps", "throughput_rps", "tokens_scheduled", "tp", "num_replicas",
    "ttft_load_mean_s", "ttft_load_p99_s", "ttft_prefill_mean_s", "weights_gb",
    "xfer_exposed_s", "xfer_hidden_s", "block_size", "gpu_memory_utilization",
    "workload.rate", "slo.ttft_s", "slo.tpot_s", "spec_drafted_tokens",
    "spec_accepted_tokens", "spec_acceptance_rate", "speculative.num_tokens",
    "speculative.acceptance",
    *(f"{m}_{s}_s" for m in ("ttft", "tpot", "e2e", "queue")
      for s in ("mean", "p50", "p90", "p95", "p99")),
)
TIER_COLUMN = re.compile(r"(hit_rate|bytes_read|bytes_written|energy_j|peak_blocks)_tier[0-9]+")


def check_name(field: str, name: str, axes: Iterable[str] = ()) -> None:
    """ObjectiveError unless ``name`` is an objective or SLO a sweep's results can give: a
    metric column, a derived objective, or a numeric axis (``axes``). Checked when the
    space file is read, so a misspelt metric does not wait for the sweep's end."""
    names = set(METRIC_COLUMNS) | set(DERIVED) | set(axes)
    if name in names or TIER_COLUMN.fullmatch(name):
        return
    close = difflib.get_close_matches(name, sorted(names), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ObjectiveError(f"{field}: {name!r} is not a metric of the results; {hint}metrics: "
                         "ttft_p99_s, tpot_p99_s, e2e_p99_s, throughput_rps, goodput_rps, "
                         "slo_attainment, ... (any column of the results), or "
                         f"{', '.join(DERIVED)}")


def checked_slo(items, label: str = "slo", axes: Iterable[str] = ()) -> dict[str, float]:
    """:func:`parse_slo`, then :func:`check_name` on every bounded metric (a lower bound's
    ``min_`` prefix taken off), each named ``{label}.{key}`` in errors."""
    slo = parse_slo(items, label=label)
    for k in slo:
        check_name(f"{label}.{k}", k.removeprefix("min_"), axes)
    return slo


class ObjectiveError(ValueError):
    """A bad objective or SLO; the message names it and what is allowed."""


def _col(table: Mapping, name: str) -> np.ndarray:
    if name not in table:
        raise ObjectiveError(f"{name}: not a column of the results; columns: "
                             f"{', '.join(sorted(map(str, table.keys())))}")
    return np.asarray(table[name])


def _price(field: str, v) -> float:
    """A price: a finite number >= 0 (a negative one would turn the ranking around)."""
    if isinstance(v, bool) or not isinstance(v, int | float | np.number) or not (
            np.isfinite(v) and v >= 0):
        raise ObjectiveError(f"{field}: {v!r} must be a finite number >= 0")
    return float(v)


def canonical_prices(gpu_prices: Mapping) -> dict:
    """``{GPU: price}`` keyed by the presets' spelling of each GPU (names are matched
    case-insensitively, as everywhere else); names that are no preset are kept as given."""
    from jaxsim import presets

    out = {}
    for name, v in gpu_prices.items():
        try:
            out[presets.gpu(str(name))[0]] = v
        except KeyError:
            out[str(name)] = v
    return out


def _gpus(table: Mapping) -> np.ndarray:
    """GPUs of each row's configuration: its ``num_gpus`` column (``tp`` times the
    instances: ``num_replicas``, or both pools' of a disaggregated one), else ``tp``
    times ``num_replicas`` (results written before replicas existed have no such
    column: one replica)."""
    gpus = _col(table, "tp").astype(np.float64)
    if "num_replicas" in table:  # NaN in rows of chunks written before the column
        r = np.asarray(table["num_replicas"], np.float64)
        gpus = gpus * np.where(np.isfinite(r), r, 1.0)
    if "num_gpus" in table:  # NaN in rows of chunks written before the column
        g = np.asarray(table["num_gpus"], np.float64)
        gpus = np.where(np.isfinite(g), g, gpus)
    return gpus


def derived(table: Mapping, name: str, prices: Mapping | None = None) -> np.ndarray:
    """Value of objective ``name`` per row (not yet signed as a cost)."""
    prices = prices or {}
    if name == "num_gpus":
        return _gpus(table)
    if name == "throughput_per_gpu":
        return _col(table, "output_tps") / _gpus(table)
    if name == "goodput_per_gpu":
        return _col(table, "goodput_rps") / _gpus(table)
    if name == "cost_per_mtok":
        gpu_prices = prices.get("gpu_hour_usd")
        if gpu_prices is None:
            raise ObjectiveError("cost_per_mtok: needs gpu_hour_usd (a price per GPU-hour, "
                                 "a number or {GPU: price}) in the objectives settings, "
                                 "or --price GPU=USD on the command line")
        gpus = _col(table, "gpu")
        if isinstance(gpu_prices, Mapping):
            gpu_prices = canonical_prices(gpu_prices)
            missing = sorted({str(g) for g in gpus} - set(gpu_prices))
            if missing:
                raise ObjectiveError(f"gpu_hour_usd: no price for {', '.join(missing)}; "
                                     f"given: {', '.join(sorted(gpu_prices))}")
            used = {str(g): _price(f"gpu_hour_usd.{g}", gpu_prices[g]) for g in set(gpus)}
            price = np.array([used[str(g)] for g in gpus])
        else:
            price = np.full(len(gpus), _price("gpu_hour_usd", gpu_prices))
        usd_per_s = _gpus(table) * price / 3600.0
        mem_price = prices.get("mem_gb_hour_usd")
        if mem_price is not None and "host_memory_gb" in table:
            usd_per_s = usd_per_s + np.asarray(table["host_memory_gb"]) * _price(
                "mem_gb_hour_usd", mem_price) / 3600.0
        tps = _col(table, "output_tps").astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(tps > 0, usd_per_s / tps * 1e6, np.inf)
    col = _col(table, name)
    if col.dtype.kind not in "biuf":
        held = "text" if col.dtype.kind in "OUS" else str(col.dtype)
        raise ObjectiveError(f"{name}: not a numeric column of the results (it holds "
                             f"{held}); give a metric such as ttft_p99_s, "
                             "throughput_per_gpu or cost_per_mtok")
    return col.astype(np.float64)


def parse_slo(items: Sequence[str] | Mapping | str | None,
              label: str = "--slo") -> dict[str, float]:
    """``["ttft_p99_s<=1", "slo_attainment>=0.99"]`` (the operators are ``<=`` and ``>=``;
    one such string alone is a list of one) or a mapping (``{"ttft_p99_s": 1,
    "min_slo_attainment": 0.99}``) -> {name: bound}. ``label`` names the source in errors.

    Bounds are numbers, not NaN (a NaN bound would make every lane miss the SLO)."""
    if items is None:
        return {}
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, Mapping | list | tuple) or not all(
            isinstance(it, str) for it in (() if isinstance(items, Mapping) else items)):
        raise ObjectiveError(f"{label}: {items!r} must be a mapping (metric: bound) or a "
                             "list of METRIC<=VALUE / METRIC>=VALUE")
    if isinstance(items, Mapping):
        out = {}
        for k, v in items.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or np.isnan(v):
                raise ObjectiveError(f"slo.{k}: {v!r} must be a number (not NaN)")
            out[str(k)] = float(v)
        return out
    out = {}
    for it in items:
        s = it.replace(" ", "")
        for sep in ("<=", ">="):
            if sep in s:
                k, v = s.split(sep, 1)
                break
        else:
            k = v = ""
        if not k or "=" in k or "<" in k or ">" in k:
            raise ObjectiveError(f"{label} {it!r}: expected METRIC<=VALUE (e.g. ttft_p99_s<=1.0) "
                                 "or METRIC>=VALUE; the operators are <= and >=")
        if k.startswith("min_"):  # the mapping form's prefix: min_X<=V would read as X>=V
            raise ObjectiveError(f"{label} {it!r}: write {k[4:]}>=VALUE for a lower bound "
                                 "(min_ is the prefix of the mapping form, {min_METRIC: V})")
        try:
            val = float(v)
        except ValueError:
            raise ObjectiveError(f"{label} {it!r}: {v!r} is not a number") from None
        if np.isnan(val):
            raise ObjectiveError(f"{label} {it!r}: {v!r} is not a bound; give a number "
                                 "(not NaN)")
        key = f"min_{k}" if sep == ">=" else k
        if key in out:  # the same metric bounded twice: both bounds hold, the tighter wins
            val = max(val, out[key]) if sep == ">=" else min(val, out[key])
        out[key] = val
    return out


def feasible(table: Mapping, slo: Mapping[str, float] | None = None,
             prices: Mapping | None = None) -> np.ndarray:
    """True where the lane is OK and meets every SLO (``prices`` for a bound on
    ``cost_per_mtok``)."""
    ok = _col(table, "status").astype(np.int64) == 0
    for k, bound in (slo or {}).items():
        if k.startswith("min_"):
            v = derived(table, k[4:], prices).astype(np.float64)
            ok &= np.nan_to_num(v, nan=-np.inf) >= bound
        else:
            v = derived(table, k, prices).astype(np.float64)
            ok &= np.nan_to_num(v, nan=np.inf) <= bound
    return ok


def costs(table: Mapping, objectives: Sequence[str], slo: Mapping[str, float] | None = None,
          prices: Mapping | None = None) -> np.ndarray:
    """``[N, k]`` costs (minimise); ``+inf`` rows for infeasible / SLO-missing lanes."""
    if not objectives:
        raise ObjectiveError("objectives: give at least one (e.g. cost_per_mtok, ttft_p99_s)")
    ok = feasible(table, slo, prices)
    cols = []
    for name in objectives:
        v = derived(table, name, prices).astype(np.float64)
        c = -v if is_maximised(name) else v
        cols.append(np.where(ok & np.isfinite(c), c, np.inf))
    return np.stack(cols, axis=1)


def rank(table: Mapping, objective: str, slo: Mapping[str, float] | None = None,
         prices: Mapping | None = None) -> np.ndarray:
    """Row indices best first (stable; infeasible rows last)."""
    c = costs(table, [objective], slo, prices)[:, 0]
    return np.argsort(c, kind="stable")
