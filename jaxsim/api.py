"""Convenience layer: configuration dicts + a trace -> shape, params, workload -> results."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from jaxsim import config as config_mod
from jaxsim import disagg, prefix, replicas
from jaxsim.params import SimParams, concatenate
from jaxsim.shapes import DEFAULT_MACRO, SimShape
from jaxsim.sim import SimResult, iteration_limits, simulate_batch
from jaxsim.workload import (
    Trace,
    Workload,
    shared_hash_block_tokens,
    stack_workloads,
    to_workload,
)

#: Default slot-table size (grown per lane on overflow).
DEFAULT_SLOTS = 64


@dataclasses.dataclass
class Prepared:
    """Everything ``simulate_batch`` needs, plus host-side derived figures per lane."""

    shape: SimShape
    params: SimParams
    workload: Workload
    info: dict[str, np.ndarray]
    configs: list[dict]


def prepare(
    configs: Mapping | Sequence[Mapping],
    trace: Trace | Sequence[Trace],
    max_slots: int | None = None,
    chunk_iterations: int = 256,
    max_requests: int | None = None,
    cache_entries: int | None = None,
) -> Prepared:
    """Validate configurations (partial dicts; defaults fill the rest) for a workload.

    ``trace`` is one trace shared by every lane, or one trace per configuration
    (per-lane workloads, e.g. an arrival-rate axis). ``cache_entries`` fixes the
    prefix-cache table size K (default: ``prefix.table_size`` of these lanes); give the
    same K to batches of one sweep so they share one compiled function. ``max_slots``
    (the slot table, S) defaults to ``min(largest max_num_seqs, 64)``: the step costs O(S), and
    ``simulate_batch`` re-runs the few lanes whose concurrency outgrows S with a larger
    table, so results stay exact.
    """
    for name, v in (("max_slots", max_slots), ("chunk_iterations", chunk_iterations),
                    ("max_requests", max_requests), ("cache_entries", cache_entries)):
        _check_count(name, v, none_ok=name != "chunk_iterations")
    if isinstance(configs, Mapping):
        configs = [configs]
    configs = _check_configs(configs)
    cfgs = [config_mod.validate(c) for c in configs]
    for i, c in enumerate(cfgs):
        if c["num_replicas"] > 1:
            raise config_mod.ConfigError(
                f"num_replicas: {c['num_replicas']} (configuration {i}): prepare() builds "
                "one lane per configuration; a fleet of replicas runs through "
                "jaxsim.api.run, jaxsim simulate or a sweep (jaxsim.replicas.split gives "
                "each replica's trace, for one lane each)")
    for i, c in enumerate(cfgs):
        if c["disaggregation"]["enabled"]:
            raise config_mod.ConfigError(
                f"disaggregation.enabled: true (configuration {i}): prepare() builds one "
                "lane per configuration; a disaggregated deployment runs through "
                "jaxsim.api.run or jaxsim simulate (jaxsim.disagg builds each pool's "
                "configurations and traces)")
    _check_trace(trace)
    per_lane = not isinstance(trace, Trace)
    caching = any(c["enable_prefix_caching"] for c in cfgs)
    T = 1 + max(len(c["tiers"]) for c in cfgs) if caching else 1
    all_traces = list(trace) if per_lane else [trace]
    U = shared_hash_block_tokens(all_traces) if caching else all_traces[0].hash_block_tokens
    H = max(t.num_hash_blocks() for t in all_traces) if caching else 0
    build = dict(hash_block_tokens=U, num_tiers=T if caching else None)
    if per_lane:
        traces = list(trace)
        if len(traces) != len(cfgs):
            raise ValueError(f"{len(traces)} traces for {len(cfgs)} configurations; give "
                             "one trace, or one per configuration")
        R = max(len(t) for t in traces) if max_requests is None else max_requests
        cols = config_mod.columns_from_configs(cfgs)
        parts = [config_mod.params_from_columns({k: [v[i]] for k, v in cols.items()},
                                                traces[i].max_len(), **build)
                 for i in range(len(cfgs))]
        params = concatenate([p for p, _ in parts])
        info = {k: np.concatenate([inf[k] for _, inf in parts]) for k in parts[0][1]}
        workload = stack_workloads([to_workload(t, R, H) for t in traces])
    else:
        cols = config_mod.columns_from_configs(cfgs)
        params, info = config_mod.params_from_columns(cols, trace.max_len(), **build)
        R = len(trace) if max_requests is None else max_requests
        workload = to_workload(trace, R, H)
    if max_slots is None:
        max_slots = max(int(c["max_slots"] or (min(c["max_num_seqs"], DEFAULT_SLOTS)
                                                + _window_rows(c))) for c in cfgs)
    cache_kw = {}
    if caching:
        Uh = max(1, int(np.max(np.asarray(workload.num_hash_ids))))
        sp = params.scheduler
        K = prefix.table_size(sp.num_gpu_blocks, sp.block_size, sp.max_num_batched_tokens,
                              params.cache.capacity_blocks, U, max_slots, H, Uh)
        if cache_entries is not None:
            K = int(cache_entries)
        cache_kw = dict(num_tiers=T, cache_entries=max(K, 1), hash_space=Uh,
                        prefetch=any(c["cache"]["prefetch"] for c in cfgs))
    shape = SimShape(max_requests=R, max_slots=max_slots, chunk_iterations=chunk_iterations,
                     macro_iterations=DEFAULT_MACRO,
                     async_scheduling=any(c["async_scheduling"] for c in cfgs),
                     speculative=any(c["speculative"]["num_tokens"] > 0 for c in cfgs),
                     spec_draft=any(c["speculative"]["num_tokens"] > 0
                                    and c["speculative"]["method"] != "ngram" for c in cfgs),
                     **cache_kw)
    return Prepared(shape, params, workload, info, cfgs)


def _check_trace(trace) -> None:
    if not isinstance(trace, Trace) and (
            isinstance(trace, str | bytes) or not isinstance(trace, Sequence) or not trace
            or not all(isinstance(t, Trace) for t in trace)):
        raise TypeError(f"trace: {type(trace).__name__} {trace!r:.60} is not a Trace or a "
                        "non-empty list of Traces (load a file or a bundled trace with "
                        "jaxsim.traces.load(path, fmt) or jaxsim.traces.bundled(name))")


def _check_count(name: str, v, none_ok: bool = True) -> None:
    """A size argument: an integer >= 1 (or None where a default exists)."""
    if v is None and none_ok:
        return
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
        raise ValueError(f"{name}: {v!r} must be an integer >= 1"
                         + (" (or None for the default)" if none_ok else ""))


def _check_configs(configs) -> list:
    try:
        out = None if isinstance(configs, str | bytes) else list(configs)
    except TypeError:
        out = None
    if not out:
        raise config_mod.ConfigError(
            f"configs: {type(configs).__name__} {configs!r:.60} is not a configuration "
            "mapping or a non-empty list of them")
    return out


def _window_rows(cfg: Mapping) -> int:
    """Extra slot rows a lane's admission / prefetch window needs (§5.8, §5.11)."""
    cache = cfg["cache"]
    if cfg["enable_prefix_caching"] and (cache["admission_weight"] > 0 or cache["prefetch"]):
        return int(cache["admission_window"])
    return 0


def run(
    configs: Mapping | Sequence[Mapping],
    trace: Trace | Sequence[Trace] | None = None,
    max_slots: int | None = None,
    chunk_iterations: int = 256,
    max_iterations: int | None = None,
    auto_slots: bool = True,
    cache_entries: int | None = None,
) -> SimResult:
    """Prepare and simulate in one call.

    Without ``trace``, each configuration's ``workload`` section (the defaults where it
    has none) builds its trace, as ``jaxsim simulate`` does; a given ``trace`` is used
    instead, and the sections are not read. ``max_iterations`` (default: each
    configuration's own ``max_iterations``, the generous default where that is null)
    bounds every lane. ``cache_entries`` is :func:`prepare`'s (the prefix-cache table
    size; a lane whose table runs out is flagged ``overflow_cache_table``).

    A configuration with ``num_replicas`` N > 1 runs as N lanes, one per replica, each
    with the requests its ``router`` sends it (``jaxsim.replicas``); its metrics are
    over all of them, and ``max_iterations`` bounds each replica. The result has one
    entry per configuration; :attr:`SimResult.per_replica` holds the replicas' own.
    """
    if not isinstance(auto_slots, bool | np.bool_):
        raise ValueError(f"auto_slots: {auto_slots!r} must be True or False")
    if isinstance(configs, Mapping):
        configs = [configs]
    configs = _check_configs(configs)
    cfgs = [config_mod.validate(c) for c in configs]
    if trace is None:
        built: dict[str, Trace] = {}
        traces = []
        for c in cfgs:  # one trace per distinct workload section
            key = repr((c["workload"], c["seed"]))
            if key not in built:
                built[key] = config_mod.build_trace(c)
            traces.append(built[key])
        trace = traces[0] if len(built) == 1 else traces
    kw = dict(max_slots=max_slots, chunk_iterations=chunk_iterations,
              max_iterations=max_iterations, auto_slots=auto_slots,
              cache_entries=cache_entries)
    if any(c["disaggregation"]["enabled"] for c in cfgs):
        return _run_disagg(cfgs, trace, **kw)
    if any(c["num_replicas"] > 1 for c in cfgs):
        return _run_fleet(cfgs, trace, **kw)
    return _run_lanes(configs, trace, **kw)[1]


def _run_disagg(cfgs: list[dict], trace, max_iterations, **kw) -> SimResult:
    """Configurations with disaggregated prefill and decode (docs/semantics.md §8): the
    prefill pools of all of them, then the KV transfers, then the decode pools; the
    metrics are over the whole requests."""
    _check_trace(trace)
    traces = [trace] * len(cfgs) if isinstance(trace, Trace) else list(trace)
    if len(traces) != len(cfgs):
        raise ValueError(f"{len(traces)} traces for {len(cfgs)} configurations; give "
                         "one trace, or one per configuration")
    if not all(c["disaggregation"]["enabled"] for c in cfgs):
        raise config_mod.ConfigError(
            "disaggregation.enabled: true in some configurations of this call and false "
            "in others; run the two kinds in separate calls")
    if max_iterations is not None and np.ndim(max_iterations) != 0:
        raise ValueError(f"max_iterations: {list(max_iterations)!r:.60} (one per "
                         "configuration) is not supported with disaggregation; give one "
                         "value, which bounds each instance of both pools")
    for t in traces:
        if t.external_tokens is not None and np.any(t.external_tokens):
            raise ValueError(f"{t.name}: external_tokens with disaggregation.enabled: the "
                             "decode pool gives its requests the KV of P - 1 prompt tokens "
                             "itself; give the trace without external_tokens")
    pre_cfgs = [disagg.prefill_config(c) for c in cfgs]
    pre_traces = [disagg.prefill_trace(t) for t in traces]
    one = prepare([{**c, "num_replicas": 1} for c in pre_cfgs], pre_traces)
    pre = _run_fleet(pre_cfgs, pre_traces, max_iterations=max_iterations, **kw)
    dec_cfgs, dec_traces, dec_of, delays, positions, xfers = [], [], [], [], [], []
    dec_assign = []
    for i, (c, t) in enumerate(zip(cfgs, traces, strict=True)):
        n, dg = len(t), c["disaggregation"]
        arr = np.sort(t.arrival_s, kind="stable")
        arr = arr - arr[0]  # from the first arrival, as the simulator's clock
        done = np.asarray(pre.state.completed[i])[:n]
        end = np.where(done, arr + np.asarray(pre.state.ttft_s[i], np.float64)[:n], np.nan)
        rep = replicas.assign(pre_traces[i], dg["prefill_replicas"], c["router"], c["seed"])
        at = disagg.transfer(end, rep, t.prompt_tokens[t.order()], c["block_size"],
                             float(one.info["kv_bytes_per_token"][i]), dg["kv_link_gbs"],
                             dg["kv_link_latency_us"])
        dtr, pos = disagg.decode_trace(t, at)
        delays.append(at - arr)
        xfers.append((at - end)[np.isfinite(at)])  # prefill end to decode-pool arrival
        positions.append(pos)
        dec_of.append(None if dtr is None else len(dec_cfgs))
        if dtr is not None:
            dec_cfgs.append(disagg.decode_config(c))
            dec_traces.append(dtr)
            dec_assign.append(disagg.decode_assignment(t, end, dtr, pos, c))
    dec = (_run_fleet(dec_cfgs, dec_traces, max_iterations=max_iterations,
                      assignments=dec_assign, **kw) if dec_cfgs else None)
    states = []
    for i, j in enumerate(dec_of):
        states.append(disagg.merge_pools(
            replicas._get(pre.state, i), None if j is None else replicas._get(dec.state, j),
            positions[i], np.zeros(0, np.int64) if j is None else dec_traces[j].order(),
            delays[i]))
    state = jax.tree.map(lambda *xs: np.stack(xs), *states)
    R = max(len(t) for t in traces)
    wl = stack_workloads([to_workload(t, R, 0) for t in traces])
    params = replicas.fleet_params(one.params, [[i] for i in range(len(cfgs))],
                                   [c["disaggregation"]["prefill_replicas"] for c in cfgs])
    metrics = replicas.fleet_metrics(params, wl, state)
    for name, f in (("mean", np.mean), ("p50", lambda x: np.percentile(x, 50)),
                    ("p99", lambda x: np.percentile(x, 99)), ("max", np.max)):
        metrics[f"kv_transfer_{name}_s"] = np.array([f(x) if x.size else np.nan
                                                     for x in xfers])
    out = SimResult(metrics=metrics, state=state, status=np.asarray(metrics["status"]),
                    iterations_run=max(pre.iterations_run, dec.iterations_run if dec else 0),
                    wall_s=pre.wall_s + (dec.wall_s if dec else 0.0),
                    pools={"prefill": pre, "decode": dec, "decode_of": dec_of})
    if max_iterations is None:
        max_iterations = [c["max_iterations"] for c in cfgs]
    limits = iteration_limits(max_iterations, wl, len(cfgs))

    def explain(i: int) -> list[str]:
        # a budget is per instance: name the iterations of the instance that ran most
        m = {k: v[i] for k, v in metrics.items()}
        runs = [pre.per_replica.metrics["iterations"][pre.replica_lanes[i]]]
        if dec_of[i] is not None:
            runs.append(dec.per_replica.metrics["iterations"][dec.replica_lanes[dec_of[i]]])
        m["iterations"] = int(max(np.max(r) for r in runs))
        return config_mod.status_reasons(
            {**cfgs[i], "max_iterations": int(limits[i])}, int(out.status[i]),
            {k: v[i] for k, v in one.info.items()}, traces[i].max_len(), m)

    out.explain = explain
    return out


def _run_lanes(configs, trace, max_slots, chunk_iterations, max_iterations, auto_slots,
               cache_entries) -> tuple[Prepared, SimResult]:
    p = prepare(configs, trace, max_slots=max_slots, chunk_iterations=chunk_iterations,
                cache_entries=cache_entries)
    if max_iterations is None and any(c["max_iterations"] is not None for c in p.configs):
        max_iterations = [c["max_iterations"] for c in p.configs]
    res = simulate_batch(p.shape, p.params, p.workload, max_iterations=max_iterations,
                         auto_slots=auto_slots)
    lane_traces = trace if not isinstance(trace, Trace) else None
    # the limits applied (this call's max_iterations overrides the configurations')
    limits = iteration_limits(max_iterations, p.workload, len(p.configs))

    def explain(i: int) -> list[str]:
        t = trace if lane_traces is None else lane_traces[i]
        return config_mod.status_reasons(
            {**p.configs[i], "max_iterations": int(limits[i])}, int(res.status[i]),
            {k: v[i] for k, v in p.info.items()}, t.max_len(),
            {k: v[i] for k, v in res.metrics.items()})

    res.explain = explain
    return p, res


def _run_fleet(cfgs: list[dict], trace, max_iterations, assignments=None,
               **kw) -> SimResult:
    """Configurations with replicas: one lane per replica, metrics over each fleet."""
    _check_trace(trace)
    traces = [trace] * len(cfgs) if isinstance(trace, Trace) else list(trace)
    if len(traces) != len(cfgs):
        raise ValueError(f"{len(traces)} traces for {len(cfgs)} configurations; give "
                         "one trace, or one per configuration")
    if (max_iterations is not None and np.ndim(max_iterations) != 0
            and len(max_iterations) != len(cfgs)):
        raise ValueError(f"max_iterations: {len(max_iterations)} values for {len(cfgs)} "
                         "configurations; give one, or one per configuration")
    lane_cfgs, lane_traces, lanes, positions, lane_limits, ids = [], [], [], [], [], []
    for i, (c, t) in enumerate(zip(cfgs, traces, strict=True)):
        sp = replicas.split(t, c["num_replicas"], c["router"], c["seed"],
                            None if assignments is None else assignments[i])
        lanes.append(np.arange(len(lane_cfgs), len(lane_cfgs) + len(sp.traces)))
        positions.append(sp.positions)
        ids.append(np.asarray(sp.replica))
        lane_cfgs += [{**c, "num_replicas": 1}] * len(sp.traces)
        lane_traces += sp.traces
        lim = (max_iterations if max_iterations is None or np.ndim(max_iterations) == 0
               else max_iterations[i])
        lane_limits += [lim] * len(sp.traces)
    if max_iterations is not None and np.ndim(max_iterations) != 0:
        max_iterations = lane_limits
    p, res = _run_lanes(lane_cfgs, lane_traces, max_iterations=max_iterations, **kw)
    R = max(len(t) for t in traces)
    state = replicas.merge_states(res.state, lanes, positions, R)
    params = replicas.fleet_params(p.params, lanes, [c["num_replicas"] for c in cfgs])
    wl = stack_workloads([to_workload(t, R, 0) for t in traces])
    metrics = replicas.fleet_metrics(params, wl, state)
    first = [int(ls[0]) for ls in lanes]
    info = {k: np.asarray(v)[first] for k, v in p.info.items()}
    # the budgets the lanes ran with (each replica's own), as _run_lanes applied them
    if max_iterations is None:
        max_iterations = [c["max_iterations"] for c in lane_cfgs]
    limits = iteration_limits(max_iterations, p.workload, len(lane_cfgs))[first]
    out = SimResult(metrics=metrics, state=state, status=np.asarray(metrics["status"]),
                    iterations_run=res.iterations_run, wall_s=res.wall_s,
                    per_replica=res, replica_lanes=lanes, replica_ids=ids)

    def explain(i: int) -> list[str]:
        # a budget is per replica: name the iterations of the replica that ran most
        m = {k: v[i] for k, v in metrics.items()}
        m["iterations"] = int(np.max(res.metrics["iterations"][lanes[i]]))
        return config_mod.status_reasons(
            {**cfgs[i], "max_iterations": int(limits[i])}, int(out.status[i]),
            {k: v[i] for k, v in info.items()}, traces[i].max_len(), m)

    out.explain = explain
    return out
