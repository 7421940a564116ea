"""Sweep runner: a design space in chunks of B configurations through one compiled function.

- Chunk ``c`` holds configuration ids ``[c*B, (c+1)*B)``; the last chunk is padded to B
  (padding lanes repeat a real one and are dropped), so every chunk has the same shapes
  and nothing recompiles across chunks.
- The batch axis is sharded over all local devices (``jax.sharding``: each device
  simulates B / n lanes; lanes are independent, so no communication).
- Each chunk's results are written to ``DIR/chunk-NNNNNN.parquet`` atomically (written
  to a hidden temporary name, then renamed). A killed sweep resumes from the finished
  chunks and loses at most the chunks in flight. ``DIR/sweep.json`` records the space and
  the chunking; a resume with a different space or chunk size is refused.
- The slot table starts at S rows (a static shape); lanes whose concurrency outgrows it
  (``OVERFLOW_SLOTS``) are re-run with 2S, 4S, ... rows in sub-batches of fixed size, so
  each table size compiles once for the whole sweep and results stay exact.
- Results: one row per configuration (id, the axis values and main configuration keys,
  status, derived memory figures, every metric); :func:`load_results` returns a pandas
  DataFrame.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxsim import config as config_mod
from jaxsim import prefix, replicas
from jaxsim import sim as sim_mod
from jaxsim import status as st_bits
from jaxsim.shapes import DEFAULT_MACRO, SimShape
from jaxsim.workload import (
    Trace,
    Workload,
    shared_hash_block_tokens,
    stack_workloads,
    to_workload,
)
from search.space import DesignSpace, SpaceError, _get_key

#: Configuration keys always written to the results (besides the axes).
RESULT_KEYS = (
    "model", "gpu", "tp", "num_replicas", "router", "dtype", "scheduler",
    "enable_chunked_prefill", "max_num_seqs", "max_num_batched_tokens", "block_size",
    "gpu_memory_utilization", "workload.rate", "slo.ttft_s", "slo.tpot_s",
)
MANIFEST = "sweep.json"
CHUNK_FMT = "chunk-{:06d}.parquet"


class SweepError(RuntimeError):
    """A sweep cannot start or resume (e.g. the output folder holds a different sweep)."""


# --------------------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static decisions of a sweep.

    Attributes:
        size: configurations in the space.
        chunk_size: B, configurations per compiled call (a multiple of the device
            count); a call runs ``B * replicas`` lanes.
        num_chunks: ceil(size / B).
        slots: S, initial slot-table rows.
        max_slots: largest slot table needed (twice the space's largest
            ``max_num_seqs``: with event skipping, finished rows stay until a step ends).
        max_requests: R, request rows per lane (the longest workload of the space).
        per_lane_workload: whether lanes have their own workloads (an axis changes one).
        chunk_iterations: iterations per compiled scan.
        num_devices: local devices the batch is sharded over.
        replicas: P, lanes per configuration: the most ``num_replicas`` of the space
            (each replica is a lane, ``jaxsim.replicas``; a chunk runs B x P lanes).
    """

    size: int
    chunk_size: int
    num_chunks: int
    slots: int
    max_slots: int
    max_requests: int
    per_lane_workload: bool
    chunk_iterations: int
    num_devices: int
    replicas: int = 1

    @property
    def lanes(self) -> int:
        """Lanes per chunk: B configurations of P replica lanes each."""
        return self.chunk_size * self.replicas

    def lane_plan(self) -> Plan:
        """The plan of a chunk's lanes, one replica each (for :func:`simulate_chunk`)."""
        if self.replicas == 1:
            return self
        return dataclasses.replace(self, chunk_size=self.lanes, replicas=1,
                                   per_lane_workload=True)

    def rerun_batch(self) -> int:
        """Fixed lanes per overflow re-run call."""
        b = max(self.num_devices, (self.chunk_size // 8) // self.num_devices * self.num_devices)
        return min(b, self.chunk_size)

    def slot_ladder(self) -> list[int]:
        """Slot-table sizes: S, 2S, ... up to :attr:`max_slots`."""
        out = [self.slots]
        while out[-1] < self.max_slots:
            out.append(min(2 * out[-1], self.max_slots))
        return out


def _workload_keys(space: DesignSpace) -> bool:
    return any(a.key.startswith("workload.") or a.key == "seed" for a in space.axes)


def _memory_bytes() -> tuple[str, float]:
    dev = jax.local_devices()[0]
    try:
        stats = dev.memory_stats() or {}
    except Exception:  # noqa: BLE001  (backends without memory stats)
        stats = {}
    if "bytes_limit" in stats:
        return dev.platform, float(stats["bytes_limit"])
    try:
        return dev.platform, float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return dev.platform, 8e9


def bytes_per_lane(shape: SimShape, per_lane_workload: bool) -> int:
    """Device bytes one lane of a chunk holds (state + params + its workload rows)."""
    from jaxsim import config as cm

    cfg = cm.validate({})
    params, _ = cm.params_from_columns(cm.columns_from_configs([cfg]), 1024)
    wl = to_workload(Trace([0.0], [1], [1]), shape.max_requests)
    st = jax.eval_shape(lambda p, w: sim_mod._init_batch(shape, p, w, jnp.ones(1, jnp.int32),
                                                         False), params, wl)
    n = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(st))
    n += sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    if per_lane_workload:
        n += sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(wl))
    return int(n)


def make_plan(space: DesignSpace, chunk_size: int | None = None, slots: int | None = None,
              chunk_iterations: int = 256) -> Plan:
    """Choose B, S and R for a space (B from the memory per lane and the device)."""
    n_dev = len(jax.local_devices())
    probe = space.probe_configs  # the valid configurations among the probe points
    P = max_replicas(space)
    per_lane = _workload_keys(space) or P > 1
    cache = _TraceCache()
    R = max(_num_requests(c, cache) for c in probe)
    max_seqs = max(int(c["max_num_seqs"]) for c in probe)
    if slots is None:
        given = [c["max_slots"] for c in probe if c["max_slots"]]
        slots = int(max(given)) if given else min(max_seqs, 64)
    if slots < 1:
        raise SpaceError(f"slots: {slots} must be >= 1")
    size = space.size
    if chunk_size is None:
        platform, mem = _memory_bytes()
        shape = SimShape(max_requests=R, max_slots=slots, chunk_iterations=chunk_iterations)
        per = bytes_per_lane(shape, per_lane)
        target = 1024 if platform == "cpu" else 16384
        by_mem = max(1, int(0.25 * mem / (4 * per)))  # state is double-buffered, plus temps
        chunk_size = max(1, min(target, by_mem) // P) * n_dev
        chunk_size = min(chunk_size, -(-size // n_dev) * n_dev)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise SpaceError(f"chunk_size: {chunk_size!r} must be an integer >= 1")
    if chunk_size % n_dev:
        raise SpaceError(f"chunk_size: {chunk_size} must be a multiple of the {n_dev} local "
                         "devices")
    # no chunk larger than the space: the lanes beyond it would be padding
    chunk_size = min(chunk_size, -(-size // n_dev) * n_dev)
    return Plan(size=size, chunk_size=chunk_size, num_chunks=-(-size // chunk_size),
                slots=int(slots), max_slots=max_slots_for(slots, max_seqs), max_requests=R,
                per_lane_workload=per_lane, chunk_iterations=chunk_iterations,
                num_devices=n_dev, replicas=P)


def max_replicas(space: DesignSpace) -> int:
    """The most ``num_replicas`` any configuration of the space asks for (its base, its
    probe points and every level of a ``num_replicas`` axis)."""
    from search.space import _levels

    out = [int(c["num_replicas"]) for c in space.probe_configs]
    base = space.base.get("num_replicas", 1)
    out += [base] if isinstance(base, int | np.integer) else []
    for a in space.axes:
        if a.key == "num_replicas":
            out += [int(v) for v in _levels(a) if isinstance(v, int | float | np.number)
                    and not isinstance(v, bool) and np.isfinite(v) and float(v).is_integer()]
    # a level above the limit is an invalid configuration, not a lane
    return min(max([1, *out]), config_mod.MAX_REPLICAS)


def max_slots_for(slots: int, max_num_seqs: int) -> int:
    """The largest slot table an overflowing lane is re-run with: up to ``max_num_seqs``
    running and admitted rows, and as many again of requests that finished inside an
    event-skipping decode run, whose rows stay until the step's compaction
    (``SimShape.max_slots``)."""
    return max(int(slots), 2 * int(max_num_seqs))


def _num_requests(cfg: Mapping, cache: _TraceCache | None = None) -> int:
    w = cfg["workload"]
    if w["kind"] not in ("trace", "sessions") or (
            w["kind"] == "sessions" and w["num_requests"] is not None):
        return int(w["num_requests"])
    # a trace file, or sessions with no request limit: as many as the workload has
    return len((cache or _TraceCache()).get(cfg))


# --------------------------------------------------------------------------------------
# Evaluating one chunk
# --------------------------------------------------------------------------------------


class _TraceCache:
    """Traces by workload description (file traces are read once, then rescaled)."""

    def __init__(self):
        self._cache: dict[str, Trace] = {}

    def get(self, cfg: Mapping) -> Trace:
        w = cfg["workload"]
        key = json.dumps([w, cfg["seed"]], sort_keys=True, default=str)
        tr = self._cache.get(key)
        if tr is None:
            if w["kind"] == "trace" and w["rate"] is not None:
                base = self.get({**cfg, "workload": {**w, "rate": None}})
                try:
                    tr = base.scaled_to_rate(w["rate"])
                except ValueError as e:  # a rate that spreads it too far: one error line
                    raise config_mod.ConfigError(str(e)) from None
            else:
                tr = config_mod.build_trace(cfg)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = tr
        return tr


def _stack_traces(traces: Sequence[Trace], R: int) -> Workload:
    B = len(traces)
    arrival = np.full((B, R), np.inf)
    prompt = np.ones((B, R), np.int32)
    output = np.ones((B, R), np.int32)
    n = np.zeros(B, np.int32)
    for i, t in enumerate(traces):
        o = t.order()
        k = len(t)
        arrival[i, :k] = t.arrival_s[o] - t.arrival_s[o[0]]  # as to_workload does
        prompt[i, :k] = t.prompt_tokens[o]
        output[i, :k] = t.output_tokens[o]
        n[i] = k
    from jaxsim.timeutil import split_f64

    hi, lo = split_f64(arrival)
    return Workload(arrival_hi=hi, arrival_lo=lo, prompt_tokens=prompt,
                    output_tokens=output, num_requests=n)


@dataclasses.dataclass
class Batch:
    """A chunk ready to simulate."""

    ids: np.ndarray
    cfgs: list[dict]
    params: object
    workload: Workload
    info: dict[str, np.ndarray]
    constraint_ok: np.ndarray
    reasons: list[str | None] | None = None
    #: SimShape's prefix-cache fields (num_tiers, cache_entries, hash_space, prefetch)
    #: when a lane enables prefix caching, else empty
    cache_kw: dict = dataclasses.field(default_factory=dict)
    #: configurations with replicas: how the chunk's lanes make up each configuration
    fleet: Fleet | None = None
    #: a chunk with disaggregated configurations (docs/semantics.md §8): each
    #: configuration's trace; the chunk runs through ``jaxsim.api.run``
    disagg_traces: list | None = None


@dataclasses.dataclass
class Fleet:
    """How a chunk's B x P lanes make up its B configurations (``jaxsim.replicas``).

    Attributes:
        lanes: each configuration's replica lanes (the rest of its P lanes pad it and
            stop after one iteration).
        positions: for each configuration, each replica lane's requests' positions in
            the configuration's whole trace (arrival order).
        workload: each configuration's whole trace, ``[B, R]`` (for its metrics).
        num_replicas: ``num_replicas`` of each configuration.
        budget_one: lanes that only pad a configuration.
    """

    lanes: list[np.ndarray]
    positions: list[list[np.ndarray]]
    workload: Workload
    num_replicas: np.ndarray
    budget_one: np.ndarray


def _pow2(n: int) -> int:
    """``n`` rounded up to a power of two (0 stays 0), so chunks whose workloads differ a
    little share one compiled function."""
    return 0 if n <= 0 else 1 << (int(n) - 1).bit_length()


def build_batch(space: DesignSpace, plan: Plan, ids: np.ndarray,
                traces: _TraceCache | None = None) -> Batch:
    """Decode, validate and batch the configurations ``ids`` (padded to B)."""
    ids = np.asarray(ids, np.int64)
    n = len(ids)
    B = plan.chunk_size
    if n < B:
        ids = np.concatenate([ids, np.full(B - n, ids[-1])])
    batch = batch_at_points(space, plan, space.sample(ids), traces)
    return dataclasses.replace(batch, ids=ids[:n], cfgs=batch.cfgs[:n],
                               constraint_ok=batch.constraint_ok[:n],
                               reasons=batch.reasons[:n])


def batch_at_points(space: DesignSpace, plan: Plan, u: np.ndarray,
                    traces: _TraceCache | None = None) -> Batch:
    """Batch the configurations at points ``u`` [B, d] of a space: constraint violators
    and invalid combinations of levels become infeasible lanes."""
    cfgs, reasons = space.expand(u)
    return batch_from_configs(cfgs, plan, space.constraint_mask(cfgs), traces,
                              reasons=reasons, stand_in=space.stand_in)


def batch_from_configs(cfgs: Sequence[Mapping], plan: Plan,
                       constraint_ok: np.ndarray | None = None,
                       traces: _TraceCache | None = None,
                       reasons: Sequence[str | None] | None = None,
                       stand_in: Mapping | None = None) -> Batch:
    """Batch validated configurations (exactly ``plan.chunk_size`` of them).

    With ``plan.replicas`` P > 1 each configuration gets P lanes: one per replica, with
    the requests its router sends it, then padding (see :class:`Fleet`). Constraint
    violators and invalid combinations are flagged as in :func:`_lane_batch`.
    """
    if any((reasons is None or reasons[i] is None) and c["disaggregation"]["enabled"]
           for i, c in enumerate(cfgs)):
        return _disagg_batch(cfgs, plan, constraint_ok, traces, reasons, stand_in)
    if plan.replicas == 1:
        for i, c in enumerate(cfgs):
            valid = reasons is None or reasons[i] is None  # an invalid one is not run
            if valid and c["num_replicas"] > 1:
                raise ValueError(f"num_replicas: {c['num_replicas']} (configuration {i}): "
                                 "the plan has one lane per configuration; make the plan "
                                 "with replicas >= the largest num_replicas")
        return _lane_batch(cfgs, plan, constraint_ok, traces, reasons, stand_in)
    if len(cfgs) != plan.chunk_size:
        raise ValueError(f"{len(cfgs)} configurations for a plan of B={plan.chunk_size}")
    traces = traces or _TraceCache()
    P = plan.replicas
    ok = np.ones(len(cfgs), bool) if constraint_ok is None else np.asarray(constraint_ok)
    invalid = np.array([r is not None for r in reasons] if reasons is not None
                       else [False] * len(cfgs))
    if invalid.any() and stand_in is None:
        raise ValueError("invalid configurations need a stand_in configuration")
    ok = ok & ~invalid
    lane_cfgs, lane_traces, lanes, positions, pad, whole, nrep = [], [], [], [], [], [], []
    for i, (c, bad) in enumerate(zip(cfgs, invalid, strict=True)):
        run = stand_in if bad else c
        r = min(int(run["num_replicas"]), P)
        if not bad and int(c["num_replicas"]) > P:
            raise ValueError(f"num_replicas: {c['num_replicas']} (configuration {i}) is "
                             f"more than the plan's {P} lanes per configuration")
        t = traces.get(run)
        sp = replicas.split(t, r, run["router"], run["seed"])
        k = len(sp.traces)
        lanes.append(np.arange(i * P, i * P + k))
        positions.append(sp.positions)
        lane_traces += sp.traces + [sp.traces[0]] * (P - k)
        lane_cfgs += [{**run, "num_replicas": 1}] * P
        pad += [False] * k + [True] * (P - k)
        whole.append(t)
        nrep.append(int(c["num_replicas"]) if not bad else r)
    inner = _lane_batch(lane_cfgs, plan.lane_plan(), np.repeat(ok, P),
                        lane_traces=lane_traces)
    first = [int(ls[0]) for ls in lanes]
    info = {k: np.asarray(v)[first] for k, v in inner.info.items()}
    if invalid.any():
        info = {k: np.where(invalid, np.nan if v.dtype.kind == "f" else 0, v)
                for k, v in info.items()}
    fleet = Fleet(lanes=lanes, positions=positions,
                  workload=_stack_traces(whole, plan.max_requests),
                  num_replicas=np.asarray(nrep), budget_one=np.asarray(pad))
    return Batch(ids=np.arange(len(cfgs)), cfgs=list(cfgs), params=inner.params,
                 workload=inner.workload, info=info, constraint_ok=ok,
                 reasons=list(reasons) if reasons is not None else None,
                 cache_kw=inner.cache_kw, fleet=fleet)


def _lane_batch(cfgs: Sequence[Mapping], plan: Plan,
                constraint_ok: np.ndarray | None = None,
                traces: _TraceCache | None = None,
                reasons: Sequence[str | None] | None = None,
                stand_in: Mapping | None = None,
                lane_traces: Sequence[Trace] | None = None) -> Batch:
    """One lane per configuration (exactly ``plan.chunk_size`` of them); the lanes'
    traces are ``lane_traces`` where given, else each configuration's workload.

    Lanes where ``constraint_ok`` is False get ``INFEASIBLE | INF_CONSTRAINT``. So do
    lanes with a ``reasons`` entry (an invalid combination of levels, see
    ``DesignSpace.expand``): they are not simulated (``stand_in``, a valid configuration
    of the space, fills their parameters; the lane halts at once), their memory figures
    are NaN (0 blocks), and the results give the reason after the status.
    """
    from jaxsim.params import concatenate

    if len(cfgs) != plan.chunk_size:
        raise ValueError(f"{len(cfgs)} configurations for a plan of B={plan.chunk_size}")
    traces = traces or _TraceCache()
    ok = np.ones(len(cfgs), bool) if constraint_ok is None else np.asarray(constraint_ok)
    shown = list(cfgs)
    invalid = np.array([r is not None for r in reasons] if reasons is not None
                       else [False] * len(cfgs))
    if invalid.any():
        if stand_in is None:
            raise ValueError("invalid configurations need a stand_in configuration")
        ok = ok & ~invalid
        cfgs = [stand_in if bad else c for c, bad in zip(cfgs, invalid, strict=True)]
    if lane_traces is not None:
        trs = list(lane_traces)
    elif plan.per_lane_workload:
        trs = [traces.get(c) for c in cfgs]
    else:
        trs = [traces.get(cfgs[0])]
    if not plan.per_lane_workload:
        first = json.dumps([cfgs[0]["workload"], cfgs[0]["seed"]], sort_keys=True, default=str)
        for c in cfgs[1:]:
            if json.dumps([c["workload"], c["seed"]], sort_keys=True, default=str) != first:
                raise ValueError("configurations have different workloads; use a plan with "
                                 "per_lane_workload=True")
    if max(len(t) for t in trs) > plan.max_requests:
        raise ValueError(f"a workload has {max(len(t) for t in trs)} requests; the plan "
                         f"holds {plan.max_requests}")
    # the prefix cache, as jaxsim.api.prepare compiles it: tiers, block ids, table size
    caching = any(c["enable_prefix_caching"] for c in cfgs)
    build: dict = {}
    H = 0
    if caching:
        build = dict(hash_block_tokens=shared_hash_block_tokens(trs),
                     num_tiers=1 + max(len(c["tiers"]) for c in cfgs))
        H = _pow2(max(t.num_hash_blocks() for t in trs))
    cols = config_mod.columns_from_configs(cfgs)
    max_len = np.array([t.max_len() for t in trs])
    if plan.per_lane_workload and len(np.unique(max_len)) > 1:
        # params_from_columns takes one workload length: group lanes by it, keep order.
        parts, infos, order = [], [], []
        for m in np.unique(max_len):
            sel = np.flatnonzero(max_len == m)
            p, inf = config_mod.params_from_columns(
                {k: [v[i] for i in sel] for k, v in cols.items()}, int(m), **build)
            parts.append(p)
            infos.append(inf)
            order.append(sel)
        inv = np.argsort(np.concatenate(order), kind="stable")
        params = jax.tree.map(lambda x: np.asarray(x)[inv], concatenate(parts))
        info = {k: np.concatenate([inf[k] for inf in infos])[inv] for k in infos[0]}
    else:
        params, info = config_mod.params_from_columns(cols, int(max_len.max()), **build)
    bad = np.where(ok, 0, st_bits.INFEASIBLE | st_bits.INF_CONSTRAINT).astype(np.int32)
    params = eqx.tree_at(lambda p: p.status0, params,
                         np.asarray(params.status0, np.int32) | bad)
    if invalid.any():
        info = {k: np.where(invalid, np.nan if np.asarray(v).dtype.kind == "f" else 0,
                            np.asarray(v)) for k, v in info.items()}
    cache_kw: dict = {}
    if caching:
        wl = (stack_workloads([to_workload(t, plan.max_requests, H) for t in trs])
              if plan.per_lane_workload else to_workload(trs[0], plan.max_requests, H))
        Uh = _pow2(max(1, int(np.max(np.asarray(wl.num_hash_ids)))))
        sp = params.scheduler
        K = prefix.table_size(sp.num_gpu_blocks, sp.block_size, sp.max_num_batched_tokens,
                              params.cache.capacity_blocks, build["hash_block_tokens"],
                              plan.max_slots, H, Uh)
        cache_kw = dict(num_tiers=build["num_tiers"], cache_entries=max(_pow2(K), 1),
                        hash_space=Uh, prefetch=any(c["cache"]["prefetch"] for c in cfgs))
    elif plan.per_lane_workload:
        wl = _stack_traces(trs, plan.max_requests)
    else:
        wl = to_workload(trs[0], plan.max_requests)
    return Batch(ids=np.arange(len(cfgs)), cfgs=shown, params=params, workload=wl,
                 info=info, constraint_ok=ok,
                 reasons=list(reasons) if reasons is not None else None, cache_kw=cache_kw)


def _disagg_batch(cfgs, plan: Plan, constraint_ok, traces, reasons, stand_in) -> Batch:
    """A chunk with disaggregated configurations (docs/semantics.md §8): its
    configurations run through ``jaxsim.api.run`` (each pool a batched call), not as one
    fixed-shape call; the memory figures are one instance's."""
    from jaxsim import api, disagg

    if len(cfgs) != plan.chunk_size:
        raise ValueError(f"{len(cfgs)} configurations for a plan of B={plan.chunk_size}")
    traces = traces or _TraceCache()
    ok = np.ones(len(cfgs), bool) if constraint_ok is None else np.asarray(constraint_ok)
    invalid = np.array([r is not None for r in reasons] if reasons is not None
                       else [False] * len(cfgs))
    if invalid.any() and stand_in is None:
        raise ValueError("invalid configurations need a stand_in configuration")
    runs = [stand_in if bad else c for c, bad in zip(cfgs, invalid, strict=True)]
    lane_traces = [traces.get(c) for c in runs]
    one = [{**(disagg.prefill_config(c) if c["disaggregation"]["enabled"] else c),
            "num_replicas": 1} for c in runs]
    info = api.prepare(one, lane_traces).info
    if invalid.any():
        info = {k: np.where(invalid, np.nan if v.dtype.kind == "f" else 0, v)
                for k, v in info.items()}
    return Batch(ids=np.arange(len(cfgs)), cfgs=list(cfgs), params=None, workload=None,
                 info=info, constraint_ok=ok & ~invalid,
                 reasons=list(reasons) if reasons is not None else None,
                 disagg_traces=lane_traces)


def _simulate_disagg(plan: Plan, batch: Batch, max_iterations) -> dict:
    """A disaggregated chunk's metrics: the configurations that run, through
    ``jaxsim.api.run`` (disaggregated ones and the others in separate calls); the rest
    halt as infeasible, as constraint violators do in a fixed-shape chunk."""
    from jaxsim import api

    B = plan.chunk_size
    out: dict[str, np.ndarray] = {}
    run = np.flatnonzero(batch.constraint_ok)
    for flag in (True, False):
        idx = [int(i) for i in run if batch.cfgs[i]["disaggregation"]["enabled"] == flag]
        if not idx:
            continue
        res = api.run([batch.cfgs[i] for i in idx], [batch.disagg_traces[i] for i in idx],
                      max_iterations=max_iterations)
        for k, v in res.metrics.items():
            v = np.asarray(v)
            if k not in out:
                out[k] = np.full(B, np.nan if v.dtype.kind == "f" else 0, v.dtype)
            out[k][idx] = v
    status = out.setdefault("status", np.zeros(B, np.int32))
    halt = np.ones(B, bool)
    halt[run] = False
    status[halt] = st_bits.INFEASIBLE | st_bits.INF_CONSTRAINT
    out["slots"] = np.full(B, plan.slots, np.int32)  # api.run grows its own tables
    return out


def _shard(tree, plan: Plan):
    """Put a lane-batched pytree on the local devices, split along the lane axis."""
    if plan.num_devices <= 1:
        return jax.tree.map(jnp.asarray, tree)
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.local_devices()), ("lanes",))
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec("lanes")))


def simulate_chunk(plan: Plan, batch: Batch, max_iterations: int | None = None) -> dict:
    """Simulate one chunk; returns metrics (name -> [B] numpy) with exact overflow re-runs.

    A chunk of configurations with replicas (``batch.fleet``) runs its B x P lanes, and
    each configuration's metrics are computed over its replicas' requests
    (``jaxsim.replicas``); ``slots`` is then the largest table of its replicas."""
    if batch.disagg_traces is not None:
        return _simulate_disagg(plan, batch, max_iterations)
    if batch.fleet is None:
        if max_iterations is None and any(c["max_iterations"] is not None
                                          for c in batch.cfgs):
            # the configurations' own budgets (the padding lanes copy the last one)
            own = [c["max_iterations"] for c in batch.cfgs]
            max_iterations = own + own[-1:] * (plan.chunk_size - len(own))
        return _simulate_lanes(plan, batch, max_iterations)[0]
    f = batch.fleet
    P = plan.replicas
    cfg_budget = [max_iterations if max_iterations is not None else c["max_iterations"]
                  for c in batch.cfgs]
    cfg_budget += cfg_budget[-1:] * (plan.chunk_size - len(cfg_budget))
    budgets = [1 if f.budget_one[j] else cfg_budget[j // P] for j in range(plan.lanes)]
    m, state = _simulate_lanes(plan.lane_plan(), batch, budgets, keep_state=True,
                               ignore=f.budget_one)
    merged = replicas.merge_states(state, f.lanes, f.positions, plan.max_requests)
    params = replicas.fleet_params(batch.params, f.lanes, f.num_replicas)
    out = replicas.fleet_metrics(params, f.workload, merged)
    out["slots"] = np.array([int(m["slots"][ls].max()) for ls in f.lanes], np.int32)
    return out


def _simulate_lanes(plan: Plan, batch: Batch, max_iterations, keep_state: bool = False,
                    ignore: np.ndarray | None = None):
    """The lanes of a chunk, one per configuration of ``plan``: (metrics, final state
    as numpy, with re-run lanes' per-request results and totals, when ``keep_state``).
    Lanes where ``ignore`` is True are not re-run when their slot table overflows."""
    shape = SimShape(max_requests=plan.max_requests, max_slots=plan.slots,
                     chunk_iterations=plan.chunk_iterations, macro_iterations=DEFAULT_MACRO,
                     **batch.cache_kw)
    params = _shard(batch.params, plan)
    wl = _shard(batch.workload, plan) if plan.per_lane_workload else batch.workload
    res = sim_mod.simulate_batch(shape, params, wl, max_iterations=max_iterations,
                                 auto_slots=False)
    metrics = {k: np.array(v) for k, v in res.metrics.items()}
    state = jax.tree.map(np.array, res.state) if keep_state else None
    slots_used = np.full(plan.chunk_size, plan.slots, np.int32)
    ladder = plan.slot_ladder()
    for s_next in ladder[1:]:
        over = np.flatnonzero(metrics["status"].astype(np.int64) & st_bits.OVERFLOW_SLOTS)
        if ignore is not None:
            over = over[~ignore[over]]
        if over.size == 0:
            break
        sub_shape = dataclasses.replace(shape, max_slots=s_next)
        bs = plan.rerun_batch()
        for start in range(0, over.size, bs):
            sel = over[start:start + bs]
            pad = np.concatenate([sel, np.full(bs - sel.size, sel[0])])
            sp = _shard(jax.tree.map(lambda x, pad=pad: np.asarray(x)[pad], batch.params),
                        plan)
            sw = (_shard(jax.tree.map(lambda x, pad=pad: np.asarray(x)[pad], batch.workload),
                         plan) if plan.per_lane_workload else batch.workload)
            sub = sim_mod.simulate_batch(
                sub_shape, sp, sw, auto_slots=False,
                max_iterations=(max_iterations if np.ndim(max_iterations) == 0
                                else [max_iterations[i] for i in pad]))
            for k in metrics:
                metrics[k][sel] = np.asarray(sub.metrics[k])[:sel.size]
            if keep_state:
                def put(a, b, sel=sel):
                    b = np.asarray(b)
                    if a.shape[1:] == b.shape[1:]:  # not the slot table (S changed)
                        a[sel] = b[:sel.size]
                    return a

                state = jax.tree.map(put, state, sub.state)
            slots_used[sel] = s_next
    metrics["slots"] = slots_used
    return metrics, state


def rows_from_chunk(space: DesignSpace, batch: Batch, metrics: Mapping) -> dict[str, list]:
    """Columns of the results table for the real (unpadded) lanes of a chunk."""
    n = len(batch.ids)
    out: dict[str, object] = {"config_id": batch.ids.astype(np.int64)}
    keys = [a.key for a in space.axes] + [k for k in RESULT_KEYS
                                          if k not in {a.key for a in space.axes}]
    for k in keys:
        out[k] = [_get_key(c, k) for c in batch.cfgs]
    status = np.asarray(metrics["status"]).astype(np.int64)[:n]
    out["status"] = status.astype(np.int32)
    out["status_str"] = [st_bits.describe(int(s)) for s in status]
    for i, r in enumerate((batch.reasons or [])[:n]):
        if r is not None:  # an invalid combination of levels: why, after the status
            out["status_str"][i] += f": {r}"
    out["ok"] = status == 0
    for k in ("weights_gb", "kv_gb", "num_gpu_blocks"):
        out[k] = np.asarray(batch.info[k])[:n]
    # tp x instances (both pools' of a disaggregated configuration)
    out["num_gpus"] = np.array([
        c["tp"] * (c["disaggregation"]["prefill_replicas"] + c["disaggregation"]["decode_replicas"]
                   if c["disaggregation"]["enabled"] else c["num_replicas"])
        for c in batch.cfgs[:n]], np.int64)
    for k, v in metrics.items():
        if k in ("status", "num_gpu_blocks"):
            continue
        out[k] = np.asarray(v)[:n]
    return out


# --------------------------------------------------------------------------------------
# Parquet I/O
# --------------------------------------------------------------------------------------


def _arrow_table(cols: Mapping[str, object]):
    import pyarrow as pa

    arrays, names = [], []
    for k, v in cols.items():
        try:
            arr = pa.array(v)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arr = pa.array([json.dumps(x, default=str) for x in v])
        arrays.append(arr)
        names.append(k)
    return pa.Table.from_arrays(arrays, names=names)


def write_chunk(out_dir: str, c: int, cols: Mapping[str, object]) -> str:
    """Write chunk ``c`` atomically; returns its path."""
    import pyarrow.parquet as pq

    path = os.path.join(out_dir, CHUNK_FMT.format(c))
    tmp = os.path.join(out_dir, f".{CHUNK_FMT.format(c)}.{os.getpid()}.tmp")
    try:
        pq.write_table(_arrow_table(cols), tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # an error or Ctrl-C: no partial file is left behind
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def remove_stale_temporaries(out_dir: str) -> list[str]:
    """Remove the temporary chunk files of writers that no longer run (a sweep killed
    with ``kill -9`` while writing); returns their names."""
    gone = []
    for name in os.listdir(out_dir) if os.path.isdir(out_dir) else []:
        parts = name.split(".")
        if not (name.startswith(".chunk-") and name.endswith(".tmp") and len(parts) >= 4):
            continue
        try:
            pid = int(parts[-2])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)  # signal 0: does the writer still run on this machine?
            alive = pid != os.getpid()
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        if alive:
            continue
        try:
            os.unlink(os.path.join(out_dir, name))
            gone.append(name)
        except FileNotFoundError:
            pass
    return gone


def finished_chunks(out_dir: str) -> set[int]:
    """Chunk numbers with a results file."""
    done = set()
    if not os.path.isdir(out_dir):
        return done
    for name in os.listdir(out_dir):
        if name.startswith("chunk-") and name.endswith(".parquet"):
            try:
                done.add(int(name[6:-8]))
            except ValueError:
                continue
    return done


def unreadable_chunks(out_dir: str, plan: Plan, chunks) -> dict[int, str]:
    """Of the finished ``chunks``, those whose file is not a whole chunk of ``plan``:
    chunk number -> why. Reads only each file's Parquet footer (cheap); a file written by
    :func:`write_chunk` always passes, so this catches files damaged afterwards."""
    import pyarrow.parquet as pq

    bad = {}
    for c in sorted(chunks):
        if c >= plan.num_chunks:
            continue
        try:
            rows = pq.read_metadata(os.path.join(out_dir, CHUNK_FMT.format(c))).num_rows
        except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
            bad[c] = str(e)
            continue
        if rows != len(chunk_ids(plan, c)):
            bad[c] = f"{rows} rows, not {len(chunk_ids(plan, c))}"
    return bad


def resumable_chunks(out_dir: str, plan: Plan) -> set[int]:
    """The finished chunks a resume keeps: damaged chunk files are run again (a note on
    stderr names each one)."""
    done = finished_chunks(out_dir)
    for c, why in unreadable_chunks(out_dir, plan, done).items():
        print(f"[sweep] {os.path.join(out_dir, CHUNK_FMT.format(c))}: unreadable ({why}); "
              "running this chunk again", file=sys.stderr, flush=True)
        done.discard(c)
    return done


def load_results(out_dir: str):
    """Every finished chunk of a sweep as one pandas DataFrame, sorted by config_id."""
    import pandas as pd
    import pyarrow.parquet as pq

    files = sorted(os.path.join(out_dir, CHUNK_FMT.format(c))
                   for c in finished_chunks(out_dir))
    if not files:
        raise SweepError(f"{out_dir}: no finished chunks (chunk-*.parquet)")
    parts = []
    for f in files:
        try:
            parts.append(pq.read_table(f).to_pandas())
        except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
            raise SweepError(f"{f}: unreadable chunk ({e}); run the sweep again with "
                             "--resume to redo it") from None
    df = pd.concat(parts, ignore_index=True)
    return df.sort_values("config_id", kind="stable").reset_index(drop=True)


def _manifest(space: DesignSpace, plan: Plan) -> dict:
    return {
        "space": space.spec(), "digest": space.digest(), "legacy_digest":
        space.legacy_digest(), "size": plan.size,
        "objectives": space.objectives,
        "chunk_size": plan.chunk_size, "num_chunks": plan.num_chunks, "slots": plan.slots,
        "max_requests": plan.max_requests,
    }


def _check_manifest(out_dir: str, man: dict, resume: bool) -> None:
    path = os.path.join(out_dir, MANIFEST)
    man = dict(man)
    legacy_digest = man.pop("legacy_digest")
    if os.path.exists(path):
        try:
            with open(path) as f:
                old = json.load(f)
            if not isinstance(old, dict):
                raise ValueError(old)
        except (OSError, ValueError):
            raise SweepError(f"{path}: unreadable (not the manifest of a sweep); use another "
                             "--out") from None
        legacy = "axis_order" not in (old.get("space") or {})
        if legacy and old.get("digest") == legacy_digest:
            raise SweepError(f"{path}: this sweep was begun by an earlier jaxsim, whose "
                             "manifest does not record the order of the axes, so a resume "
                             "cannot check that each id is the same configuration; begin "
                             "it again in another --out")
        if old.get("digest") != man["digest"]:
            raise SweepError(f"{path}: this folder holds a different sweep (space digest "
                             f"{str(old.get('digest'))[:12]}, not {man['digest'][:12]}); use "
                             "another --out, or the same space file")
        if old.get("chunk_size") != man["chunk_size"]:
            raise SweepError(f"{path}: the sweep was chunked by {old.get('chunk_size')} "
                             f"configurations; resume with --chunk-size "
                             f"{old.get('chunk_size')}")
        if not resume and finished_chunks(out_dir):
            raise SweepError(f"{out_dir}: holds {len(finished_chunks(out_dir))} finished "
                             "chunks of this sweep; pass --resume to continue it, or use "
                             "another --out")
        remove_stale_temporaries(out_dir)
        if old.get("objectives") != man["objectives"]:
            # The objectives (SLOs, prices) rank results but change no simulation: the
            # space file's latest ones are what jaxsim best and pareto read.
            print(f"jaxsim sweep: {out_dir}: objectives changed since the sweep began; "
                  "jaxsim best and pareto will use the new ones", file=sys.stderr)
            _write_manifest(path, {**old, "objectives": man["objectives"]})
    else:
        _write_manifest(path, man)


def _write_manifest(path: str, man: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(man, f, indent=1, sort_keys=True, default=str)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------


class Progress:
    """One status line on stderr: chunks, configs, configs/s, ETA."""

    def __init__(self, total: int, already: int, enabled: bool = True, stream=None):
        self.total, self.done0, self.done = total, already, already
        self.t0 = time.perf_counter()
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, n: int, chunk: int, num_chunks: int) -> str:
        self.done += n
        dt = time.perf_counter() - self.t0
        rate = (self.done - self.done0) / dt if dt > 0 else 0.0
        left = self.total - self.done
        eta = left / rate if rate > 0 else math.inf
        line = (f"[sweep] chunk {chunk + 1}/{num_chunks}  {self.done:,}/{self.total:,} "
                f"configs  {_fmt_rate(rate)} configs/s  ETA {_fmt_s(eta)}")
        if self.enabled:
            end = "\r" if self.tty and left > 0 else "\n"
            print(line, end=end, file=self.stream, flush=True)
        return line


def _fmt_rate(r: float) -> str:
    """Three significant digits below 100/s (0.0523, 1.43, 12.3), whole numbers above."""
    return f"{r:,.0f}" if r >= 99.95 else f"{r:.3g}"


def _fmt_s(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


@dataclasses.dataclass
class SweepResult:
    """What :func:`run_sweep` did."""

    out_dir: str
    plan: Plan
    chunks_run: list[int]
    chunks_skipped: list[int]
    wall_s: float
    sim_s: float
    compiles: int


def compile_count() -> int:
    """Compiled variants of the batched chunk function so far (recompilation guard)."""
    return int(sim_mod._run_chunk_batch._cache_size())


def chunk_ids(plan: Plan, c: int) -> np.ndarray:
    return np.arange(c * plan.chunk_size, min((c + 1) * plan.chunk_size, plan.size),
                     dtype=np.int64)


def run_chunk(space: DesignSpace, plan: Plan, c: int, out_dir: str,
              traces: _TraceCache | None = None,
              max_iterations: int | None = None) -> tuple[int, float]:
    """Evaluate and write chunk ``c``; returns (rows written, simulation seconds)."""
    batch = build_batch(space, plan, chunk_ids(plan, c), traces)
    t = time.perf_counter()
    metrics = simulate_chunk(plan, batch, max_iterations=max_iterations)
    sim_s = time.perf_counter() - t
    write_chunk(out_dir, c, rows_from_chunk(space, batch, metrics))
    return len(batch.ids), sim_s


def check_sweep_args(out_dir: str, max_chunks: int | None) -> None:
    """Refuse, before any work, an output path that is a file and a bad ``max_chunks``."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise SweepError(f"{out_dir}: is a file, not a folder; give a new folder, or the "
                         "results folder of this sweep")
    if max_chunks is not None and (isinstance(max_chunks, bool) or not isinstance(
            max_chunks, int) or max_chunks < 1):
        raise SweepError(f"max_chunks: {max_chunks!r} must be an integer >= 1 (or None for "
                         "all)")


def make_out_dir(out_dir: str) -> None:
    """Create the results folder (and its parents)."""
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise SweepError(f"{out_dir}: cannot create the results folder: "
                         f"{e.strerror or e}") from None


def run_sweep(space: DesignSpace, out_dir: str, resume: bool = False,
              chunk_size: int | None = None, slots: int | None = None,
              chunk_iterations: int = 256, progress: bool = True,
              max_chunks: int | None = None, max_iterations: int | None = None,
              on_chunk: Callable[[int], None] | None = None) -> SweepResult:
    """Evaluate every configuration of ``space``, one Parquet file per chunk in ``out_dir``.

    Args:
        space: the design space.
        out_dir: results folder (created).
        resume: continue a sweep whose folder already has finished chunks.
        chunk_size: B (default: from memory per lane and the device).
        slots: initial slot-table rows S (default: min(largest max_num_seqs, 64)).
        chunk_iterations: iterations per compiled scan.
        progress: print a progress line per chunk on stderr.
        max_chunks: stop after this many chunks (for tests and partial runs).
        max_iterations: iteration budget of every lane (default: each configuration's
            own `max_iterations`, generous where that is null).
        on_chunk: called with the chunk number after each chunk is written.
    """
    t0 = time.perf_counter()
    check_sweep_args(out_dir, max_chunks)
    plan = make_plan(space, chunk_size=chunk_size, slots=slots,
                     chunk_iterations=chunk_iterations)
    make_out_dir(out_dir)
    _check_manifest(out_dir, _manifest(space, plan), resume)
    done = resumable_chunks(out_dir, plan)
    todo = [c for c in range(plan.num_chunks) if c not in done]
    if max_chunks is not None:
        todo = todo[:max_chunks]
    already = sum(len(chunk_ids(plan, c)) for c in done if c < plan.num_chunks)
    bar = Progress(plan.size, already, enabled=progress)
    traces = _TraceCache()
    compiles0 = compile_count()
    sim_s = 0.0
    for c in todo:
        n, s = run_chunk(space, plan, c, out_dir, traces, max_iterations)
        sim_s += s
        bar.update(n, c, plan.num_chunks)
        if on_chunk is not None:
            on_chunk(c)
    return SweepResult(out_dir=out_dir, plan=plan, chunks_run=todo,
                       chunks_skipped=sorted(done), wall_s=time.perf_counter() - t0,
                       sim_s=sim_s, compiles=compile_count() - compiles0)
