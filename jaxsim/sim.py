"""Entry points: ``simulate`` (one configuration) and ``simulate_batch`` (jit of vmap).

Steps run in chunks: one compiled function advances every lane by
``SimShape.chunk_iterations`` steps (a step is one iteration, or with event skipping a
run of decode-only iterations plus one, docs/semantics.md §6), then the host checks which
lanes are done. Lanes that finish early step as no-ops (a step of a done lane changes
nothing), but a chunk ends as soon as every lane of the batch is done (checked every
``CHECK_STEPS`` steps); once at most a quarter of the batch is still running, the running
lanes continue alone in a smaller batch (lane compaction). The compiled function depends
only on the ``SimShape``, the batch size, whether the workload is shared or per lane, and
the shapes of the parameter arrays: the cost presets' shape-correction tables have no
columns when no lane uses one (GPUs without a calibrated preset, ``uncalibrated``, or
``cost_shape_tables: false``). Sweeping any traced value never recompiles.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxsim import costmodel, prefix
from jaxsim import metrics as metrics_mod
from jaxsim import status as st_bits
from jaxsim.params import SimParams, num_lanes
from jaxsim.shapes import SimShape
from jaxsim.state import SimState, flush_in_flight, init_state, is_done
from jaxsim.step import draft_consts, step
from jaxsim.workload import Workload

#: Lane compaction never shrinks the working batch below this many lanes.
COMPACT_MIN_LANES = 64

#: A batch is split over several local devices only with at least this many lanes each.
MIN_LANES_PER_DEVICE = 64

#: XLA options of the compiled chunk function. On a GPU, XLA by default times candidate
#: kernels for the fusions of every new shape (autotuning); a step has hundreds of small
#: fusions and no large matrix products to tune. On one H200 (JAX 0.11.2) the chunk
#: function compiled in 7.5 s for 1,000 lanes and in 38 s for 3,000 with autotuning on,
#: and in 6.9 s for 10,000 with it off (benchmarks/README.md): what the option saves is not
#: settled, and it costs nothing measurable here. Other backends ignore it. JAX takes
#: compiler options only on a top-level jit, so only the chunk function carries them.
XLA_OPTIONS = {"xla_gpu_autotune_level": 0}

#: Lane counts (per device, both ends excluded) that a working batch never runs at on a
#: GPU: such a batch is padded to the upper end (copies of its last lane, dropped from the
#: result), and lane compaction skips them. On one H200 (JAX 0.11.2, 2026-11-23) the chunk
#: function for 1,536, 2,048, 2,500, 3,000 and 4,096 lanes compiled 2-5x slower than for
#: 1,024 or 10,000 and its first call had not returned after one to three minutes, while
#: 1,024, 1,200, 6,000, 8,192, 9,000, 12,000 and 2^18 lanes ran 256 steps in 0.08-0.35 s
#: (benchmarks/README.md). The cause is not found. ``None`` turns the padding off.
GPU_AVOID_LANES: tuple[int, int] | None = (1200, 6000)

#: Quick compiles (``use_quick_compile``, off by default; the notebooks turn it on): on a
#: CPU, a working batch of at most ``QUICK_COMPILE_MAX_LANES`` lanes per device and at
#: most ``QUICK_COMPILE_MAX_WORK`` lane-requests per device (those lanes times the shape's
#: request slots), without a prefix cache, runs chunk and metrics functions compiled for
#: compile time, not run time: LLVM's backend optimisation off and XLA's older CPU code
#: generator (``QUICK_COMPILE_OPTIONS``). Such batches are compile-bound: a 13-lane fleet
#: of 1,200 requests (notebook 01) compiled its two chunk functions in 10 s instead of
#: 30 s and then ran 2.6 s instead of 1.0 s. The optimised code wins where lanes run long
#: or many: a 10,000-configuration sweep of 40 requests took 93 s with every function
#: compiled quick, against 44 s, and a prefix-cache lane's steps cost far more (its
#: eviction order is sorted every iteration): nine such lanes of 400 requests took 156 s
#: quick (notebook 03's simulation cell; the whole notebook runs in 80 s optimised).
#: The two variants' results agree to float32 precision, not bit for bit, so with quick
#: compiles on, a lane's results can depend in their last bits on the size of the batch
#: it runs in (and on lane compaction and overflow re-runs, which shrink the batch).
#: Off, they do not: that is why it is off by default.
QUICK_COMPILE_MAX_LANES = 0
QUICK_COMPILE_MAX_WORK = 1 << 15

#: The compiler options of the quick variant (see ``QUICK_COMPILE_MAX_WORK``).
QUICK_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0,
                         "xla_cpu_use_fusion_emitters": False}


def _avoided_lanes() -> tuple[int, int] | None:
    """``GPU_AVOID_LANES`` on a GPU backend, else ``None``."""
    if GPU_AVOID_LANES is None or jax.local_devices()[0].platform != "gpu":
        return None
    return GPU_AVOID_LANES


def _run_lanes(n: int, per_device: int, band: tuple[int, int] | None) -> int:
    """The lane count a working batch of ``n`` lanes (a multiple of the device count, with
    ``per_device`` lanes on each) runs at: ``n``, or padded up past ``band``."""
    if band is not None and band[0] < per_device < band[1]:
        return n // per_device * band[1]
    return n


@jax.jit
def _gather(tree, idx):
    return jax.tree.map(lambda x: x[idx], tree)


@jax.jit
def _scatter(full, sub, idx):
    return jax.tree.map(lambda f, x: f.at[idx].set(x), full, sub)


def _lane_placer(n_lanes: int, wl_batched: bool, devices: int | None = None):
    """How a batch is laid out over the local devices.

    With more than one local device (several GPUs, or a CPU split into one device per
    core with ``jax.config.update("jax_num_cpu_devices", N)``, which the ``jaxsim`` command
    does), the lane axis is split over as many of them as get ``MIN_LANES_PER_DEVICE``
    lanes each (``jax.sharding``); lanes are independent, so each device runs its share
    with no communication. Returns ``(devices, place_lanes, place_workload)``:
    ``place_lanes`` puts a lane-batched pytree on the devices, ``place_workload`` the
    workload (split too when per lane, else replicated). With one device both are the
    identity. ``devices`` caps how many are used.
    """
    devs = jax.local_devices()
    cap = len(devs) if devices is None else devices
    devs = devs[:max(1, min(len(devs), cap, n_lanes // MIN_LANES_PER_DEVICE))]
    if len(devs) <= 1:
        return 1, (lambda t: t), (lambda t: t)
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(devs), ("lanes",))
    lanes = NamedSharding(mesh, PartitionSpec("lanes"))
    rep = NamedSharding(mesh, PartitionSpec())

    def place_lanes(tree):
        return jax.device_put(tree, lanes)

    return len(devs), place_lanes, (place_lanes if wl_batched
                                    else lambda t: jax.device_put(t, rep))


def _pad_lanes(tree, pad: int):
    """Append ``pad`` copies of the last lane (so B divides over the devices, or skips
    ``GPU_AVOID_LANES``)."""
    return jax.tree.map(
        lambda x: np.concatenate([np.asarray(x), np.repeat(np.asarray(x)[-1:], pad, 0)]),
        tree)


def _compacted_size(size: int, live: int, n_dev: int, band: tuple[int, int] | None) -> int:
    """Lanes of the next working batch when ``live`` of ``size`` lanes still run: a
    quarter, a sixteenth, ... of ``size`` while the running lanes fit (never below
    ``COMPACT_MIN_LANES``), a whole number per device, and not inside ``band`` per device
    (down to its lower end if the running lanes fit there, else up to its upper end)."""
    new = size
    while live <= new // 4 and new // 4 >= COMPACT_MIN_LANES:
        new //= 4
    new = min(size, -(-new // n_dev) * n_dev)
    if band is not None and band[0] < new // n_dev < band[1]:
        fits = live <= band[0] * n_dev and band[0] >= COMPACT_MIN_LANES
        new = min(size, (band[0] if fits else band[1]) * n_dev)
    return new


def iteration_limits(max_iterations, workload: Workload, lanes: int) -> np.ndarray:
    """Per-lane iteration budgets (int32 ``[B]``) from ``None`` (the default budget for
    every lane), one int, or one value per lane (``None`` entries: the default)."""
    if max_iterations is None:
        return np.full(lanes, default_iteration_budget(workload), np.int32)
    vals = np.asarray(max_iterations, dtype=object)
    if vals.ndim == 0:  # one budget: checked once (B may be a million lanes)
        return np.full(lanes, iteration_limits([max_iterations], workload, 1)[0], np.int32)
    if vals.shape != (lanes,):
        raise ValueError(f"max_iterations: {vals.size} values for {lanes} lanes; give "
                         "one int, or one per lane")
    default = None
    out = np.empty(lanes, np.int64)
    for i, v in enumerate(vals.tolist()):
        if v is None:
            default = default_iteration_budget(workload) if default is None else default
            v = default
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or not (
                1 <= v <= 2**31 - 1):
            where = "max_iterations" if lanes == 1 else f"max_iterations[{i}]"
            raise ValueError(f"{where}={v!r} must be an int in 1..{2**31 - 1}")
        out[i] = v
    return out.astype(np.int32)


def default_iteration_budget(workload: Workload) -> int:
    """A generous iteration budget: every token in its own iteration, plus slack."""
    n = int(workload.num_requests.max())
    p = np.asarray(workload.prompt_tokens)[..., :n].astype(np.int64)
    o = np.asarray(workload.output_tokens)[..., :n].astype(np.int64)
    return int(min(2**31 - 1, 2 * (p.sum(axis=-1).max() + o.sum(axis=-1).max()) + n + 1024))


def _lane_consts(shape: SimShape, params: SimParams, workload: Workload):
    """The per-lane constants every step reads: the cost model's, the prefix cache's when
    compiled in, the decode table event skipping looks up, and a speculative drafter's
    constants and decode table when compiled in."""
    consts = costmodel.prepare(params.model, params.hardware, params.scheduler.tp,
                               params.cost)
    pconsts = (prefix.prepare(params, workload, consts) if shape.cache_entries > 0
               else None)
    dtab = (costmodel.decode_table(consts, shape.max_slots)
            if shape.event_skipping else None)
    draft = draft_consts(params, shape.max_slots) if shape.spec_draft else None
    return consts, pconsts, dtab, draft


def _steps(shape: SimShape, params: SimParams, workload: Workload, state: SimState,
           lane_consts, length: int) -> SimState:
    consts, pconsts, dtab, draft = lane_consts

    def body(s, _):
        return step(shape, params, workload, s, consts, pconsts, dtab, draft), None

    return jax.lax.scan(body, state, None, length=length)[0]


def _scan_steps(shape: SimShape, params: SimParams, workload: Workload, state: SimState,
                length: int) -> SimState:
    """``length`` steps of one lane, the per-lane constants computed once, before the
    scan."""
    return _steps(shape, params, workload, state, _lane_consts(shape, params, workload),
                  length)


#: Within a chunk, every this many steps the batch checks whether all its lanes are
#: done and, if so, ends the chunk there (a step of a done lane changes nothing).
CHECK_STEPS = 16


@functools.partial(jax.jit, static_argnames=("shape", "wl_batched"), donate_argnums=(3,),
                   compiler_options=XLA_OPTIONS)
def _run_chunk_batch(shape, params, workload, state, wl_batched: bool):
    """Up to ``shape.chunk_iterations`` steps of every lane; ends early (at a multiple of
    ``CHECK_STEPS``) once every lane of the batch is done. Returns the state, which lanes
    are done and how many steps ran."""
    wl_ax = 0 if wl_batched else None
    consts = jax.vmap(functools.partial(_lane_consts, shape), in_axes=(0, wl_ax))(
        params, workload)
    length = shape.chunk_iterations
    group = math.gcd(length, CHECK_STEPS)
    run = jax.vmap(functools.partial(_steps, shape, length=group),
                   in_axes=(0, wl_ax, 0, 0))
    done = jax.vmap(is_done, in_axes=(0, wl_ax))

    def cond(carry):
        i, s = carry
        return (i < length) & ~jnp.all(done(s, workload))

    def body(carry):
        i, s = carry
        return i + group, run(params, workload, s, consts)

    n, state = jax.lax.while_loop(cond, body, (jnp.int32(0), state))
    return state, done(state, workload), n


_run_chunk_batch_quick = jax.jit(_run_chunk_batch.__wrapped__,
                                 static_argnames=("shape", "wl_batched"), donate_argnums=(3,),
                                 compiler_options={**XLA_OPTIONS, **QUICK_COMPILE_OPTIONS})


def use_quick_compile(max_lanes: int = 16, max_work: int = 1 << 15) -> None:
    """Compile small batches for compile time (see ``QUICK_COMPILE_MAX_LANES``): for
    interactive work, where a few configurations are simulated once and compiling
    dominates. ``max_lanes=0`` turns it off again."""
    global QUICK_COMPILE_MAX_LANES, QUICK_COMPILE_MAX_WORK
    for name, v in (("max_lanes", max_lanes), ("max_work", max_work)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0:
            raise ValueError(f"use_quick_compile: {name}={v!r} must be an int >= 0")
    QUICK_COMPILE_MAX_LANES, QUICK_COMPILE_MAX_WORK = int(max_lanes), int(max_work)


def _quick(shape: SimShape, lanes_per_device: int) -> bool:
    """Whether a working batch runs the quick-compiled variant (QUICK_COMPILE_MAX_WORK)."""
    return (lanes_per_device <= QUICK_COMPILE_MAX_LANES
            and lanes_per_device * shape.max_requests <= QUICK_COMPILE_MAX_WORK
            and shape.cache_entries == 0 and jax.default_backend() == "cpu")


@functools.partial(jax.jit, static_argnames=("shape", "wl_batched"))
def _init_batch(shape, params, workload, iter_limit, wl_batched: bool):
    """Initial states of a lane batch; ``iter_limit`` is one budget or one per lane."""
    iter_limit = jnp.broadcast_to(iter_limit, (num_lanes(params),))
    return jax.vmap(
        functools.partial(init_state, shape), in_axes=(0, 0 if wl_batched else None, 0)
    )(params, workload, iter_limit)


def _finish_batch_impl(params, workload, state, wl_batched: bool):
    state = jax.vmap(flush_in_flight)(state)
    m = jax.vmap(metrics_mod.compute_metrics, in_axes=(0, 0 if wl_batched else None, 0))(
        params, workload, state
    )
    return state, m


_finish_batch = jax.jit(_finish_batch_impl, static_argnames=("wl_batched",))
_finish_batch_quick = jax.jit(_finish_batch_impl, static_argnames=("wl_batched",),
                              compiler_options=QUICK_COMPILE_OPTIONS)


@dataclasses.dataclass
class SimResult:
    """Output of a simulation.

    Attributes:
        metrics: name -> array with a leading lane axis (B,) (see ``jaxsim.metrics``).
        state: final ``SimState`` (leading lane axis), with per-request results in
            arrival order. For a lane re-run with a larger slot table (``auto_slots``)
            every array is its re-run's except the slot table's rows (arrays with an
            axis of ``SimShape.max_slots``), which keep the first run's.
        status: ``int32[B]`` status bits including ``TRUNCATED``.
        iterations_run: steps the compiled chunks ran (a chunk ends early once every
            lane of its batch is done); with re-runs, the most of any run.
        wall_s: wall time of the simulation, seconds (compile included on first call).
        per_replica: for configurations with ``num_replicas`` > 1 (``jaxsim.api.run``),
            the result of the lanes that simulated their replicas, and
            ``replica_lanes[i]`` the lanes of configuration ``i``; ``state`` then holds
            each configuration's merged per-request results and totals
            (``jaxsim.replicas``), and its slot table and cache table are its first
            lane's; ``replica_ids[i]`` the replica number of each of those lanes (a
            replica the router sent nothing has no lane).
    """

    metrics: dict[str, np.ndarray]
    state: SimState
    status: np.ndarray
    iterations_run: int
    wall_s: float
    #: lane index -> status sentences; set by ``jaxsim.api.run``, which knows the
    #: configurations (see :meth:`reasons`)
    explain: Callable[[int], list[str]] | None = dataclasses.field(default=None, repr=False)
    per_replica: SimResult | None = dataclasses.field(default=None, repr=False)
    replica_lanes: list[np.ndarray] | None = dataclasses.field(default=None, repr=False)
    replica_ids: list[np.ndarray] | None = dataclasses.field(default=None, repr=False)
    #: for configurations with disaggregated prefill and decode (``jaxsim.api.run``,
    #: docs/semantics.md §8): ``{"prefill": SimResult, "decode": SimResult or None,
    #: "decode_of": [decode-pool index of configuration i, or None]}``, each pool's own
    #: result (fleets as for ``num_replicas``); ``state`` holds the merged requests
    pools: dict | None = dataclasses.field(default=None, repr=False)

    def requests(self, i: int) -> dict[str, np.ndarray]:
        """Per-request results of lane ``i``, in arrival order (padding rows dropped)."""
        n = int(self.metrics["num_requests"][i])
        st = self.state
        out = {
            name: np.asarray(getattr(st, name)[i])[:n]
            for name in ("ttft_s", "decode_s", "queue_s", "preemptions", "tokens_scheduled",
                         "completed")
        }
        out["e2e_s"] = out["ttft_s"] + out["decode_s"]
        if st.load_s.shape[-1]:  # prefix cache compiled in: the §5.7 TTFT split
            out["load_s"] = np.asarray(st.load_s[i])[:n]
            out["prefill_s"] = out["ttft_s"] - out["queue_s"] - out["load_s"]
        return out

    def reasons(self, i: int) -> list[str]:
        """Why lane ``i`` is not ``ok``: one sentence per independent problem, with the
        values involved and what would lift it (empty for an ``ok`` lane), as ``jaxsim
        simulate`` prints them. Available on results of ``jaxsim.api.run``."""
        if self.explain is None:
            raise ValueError("reasons() needs the configurations: use jaxsim.api.run, or "
                             "jaxsim.config.status_reasons with a lane's configuration")
        return self.explain(int(i))

    def lane(self, i: int) -> dict[str, float]:
        """Metrics of lane ``i`` as Python floats, plus its status string."""
        out = {k: v[i].item() for k, v in self.metrics.items()}
        out["status"] = st_bits.describe(int(self.status[i]))
        return out


def simulate_batch(
    shape: SimShape,
    params: SimParams,
    workload: Workload,
    max_iterations: int | None = None,
    auto_slots: bool = True,
    compact_lanes: bool = True,
    devices: int | None = None,
) -> SimResult:
    """Simulate a batch of configurations on a shared (or per-lane) workload.

    Args:
        shape: static capacities (R must equal the workload's padded length).
        params: ``SimParams`` with a leading lane axis B on every leaf.
        workload: shared ``Workload`` (leaves ``[R]``) or per-lane (leaves ``[B, R]``).
        max_iterations: iteration budget, one int for every lane or one per lane
            (``None`` entries: the default, generous, see
            :func:`default_iteration_budget`); lanes that reach it get ``TRUNCATED``.
        auto_slots: re-run lanes flagged ``OVERFLOW_SLOTS`` with a doubled slot table
            (up to their ``max_num_seqs``, twice that with event skipping, plus the
            admission window with the prefix cache) until none overflows, so results
            are exact whatever S the shape starts with. Each new S compiles once per
            size of re-run batch (padded to a power of two).
        compact_lanes: between chunks, once at most a quarter of the working batch is
            still running (and at least ``COMPACT_MIN_LANES`` lanes would remain), the
            running lanes continue alone in a batch a quarter the size, so a sweep's
            wall time is not set by its slowest lanes. Each batch size compiles once;
            results do not depend on it.
        devices: at most this many local devices (default: all). With several, the
            lanes are split over them, each getting at least ``MIN_LANES_PER_DEVICE``
            (padded with copies of the last lane to a multiple of the device count; the
            copies are dropped from the result). Counts and statuses do not depend on
            it; times may differ in the last float32 bit (XLA rounds a lane of a
            vector body and of its scalar tail differently). On a GPU, a batch whose
            lanes per device fall inside ``GPU_AVOID_LANES`` is padded the same way.

    Returns:
        A :class:`SimResult`.
    """
    t0 = time.perf_counter()
    wl_batched = workload.arrival_hi.ndim == 2
    _check_inputs(shape, params, workload)
    B = num_lanes(params)
    if params.scheduler.mode.ndim == 0:
        raise ValueError("simulate_batch needs batched params (leading axis B); "
                         "use simulate() or jaxsim.params.broadcast()")
    if wl_batched and workload.arrival_hi.shape[0] != B:
        raise ValueError(f"per-lane workload has {workload.arrival_hi.shape[0]} lanes, "
                         f"params have {B}")
    if params.cache is not None and not shape.prefetch and not isinstance(
            params.cache.prefetch, jax.core.Tracer):
        n_pf = int(np.sum(np.asarray(params.cache.prefetch) != 0))
        if n_pf:
            raise ValueError(f"{n_pf} lane(s) set CacheParams.prefetch=1 but "
                             "SimShape.prefetch=False; build the shape with prefetch=True "
                             "(jaxsim.api.prepare does) or set prefetch=0")
    if not shape.async_scheduling and not isinstance(
            params.scheduler.async_scheduling, jax.core.Tracer) and np.any(
            np.asarray(params.scheduler.async_scheduling) != 0):
        # §2.10 compiled in only for batches that need it
        shape = dataclasses.replace(shape, async_scheduling=True)
    if shape.speculative and params.spec is None:
        raise ValueError("SimShape.speculative=True needs SimParams.spec (see "
                         "jaxsim.params.SpecParams)")
    if not shape.speculative and params.spec is not None and not isinstance(
            params.spec.num_tokens, jax.core.Tracer) and np.any(
            np.asarray(params.spec.num_tokens) != 0):
        # §9 compiled in only for batches that need it
        shape = dataclasses.replace(shape, speculative=True)
    if shape.speculative and not shape.spec_draft and not isinstance(
            params.spec.has_draft, jax.core.Tracer) and np.any(
            (np.asarray(params.spec.has_draft) != 0)
            & (np.asarray(params.spec.num_tokens) != 0)):
        shape = dataclasses.replace(shape, spec_draft=True)  # a drafter's GPU time
    if not shape.external_kv and not isinstance(
            workload.external_tokens, jax.core.Tracer) and np.any(
            np.asarray(workload.external_tokens) != 0):
        # §8 requests that bring KV: compiled in only for workloads that have them
        if shape.cache_entries > 0:
            raise ValueError("workload: external_tokens > 0 (requests that bring their "
                             "KV, docs/semantics.md §8) cannot be simulated with the prefix "
                             "cache compiled in (SimShape.cache_entries > 0)")
        shape = dataclasses.replace(shape, external_kv=True)
    if not isinstance(params.scheduler.scheduling_policy, jax.core.Tracer) and not isinstance(
            workload.priority, jax.core.Tracer):
        pol = np.asarray(params.scheduler.scheduling_policy)
        levels = int(np.max(np.asarray(workload.priority), initial=0)) + 1
        # (the per-level metrics of FCFS lanes only where §10 can be compiled in)
        metrics_only = (levels > 1 and shape.cache_entries == 0 and not shape.speculative
                        and not shape.external_kv)
        if (np.any(pol != 0) or metrics_only) and shape.priority_levels < levels:
            # §10 compiled in only for batches that schedule by priority or report
            # metrics per level, with the workload's levels
            shape = dataclasses.replace(shape, priority_levels=levels)
        if shape.priority_levels and levels > shape.priority_levels:
            raise ValueError(f"workload: priority {levels - 1} is beyond "
                             f"SimShape.priority_levels={shape.priority_levels} (levels "
                             f"0..{shape.priority_levels - 1} compiled in)")
        if np.any((pol != 0) & (np.asarray(params.scheduler.mode) != 0)):
            raise ValueError("SchedulerParams.scheduling_policy=1 (priority, "
                             "docs/semantics.md §10) needs mode 0 (v1)")
    budget = iteration_limits(max_iterations, workload, B)
    if devices is not None and (isinstance(devices, bool | np.bool_) or not isinstance(
            devices, int | np.integer) or devices < 1):
        raise ValueError(f"devices={devices!r} must be an integer >= 1 (or None for all)")
    if not isinstance(compact_lanes, bool | np.bool_):
        raise ValueError(f"compact_lanes={compact_lanes!r} must be True or False")
    n_dev, place, place_wl = _lane_placer(B, wl_batched, devices)
    band = _avoided_lanes()
    per_dev = -(-B // n_dev)
    pad = _run_lanes(per_dev * n_dev, per_dev, band) - B
    if pad:
        return _trim(simulate_batch(
            shape, _pad_lanes(params, pad), _pad_lanes(workload, pad) if wl_batched
            else workload, _pad_lanes(budget, pad), auto_slots, compact_lanes, n_dev), B, t0)
    params, workload = place(params), place_wl(workload)
    state = place(_init_batch(shape, params, workload, jnp.asarray(budget), wl_batched))
    n_chunks = -(-int(budget.max()) // shape.chunk_iterations)
    iters = 0
    # Lane compaction: when few lanes are still running, they continue alone in a
    # smaller batch (a quarter, a sixteenth, ... of B), so finished lanes stop costing.
    idx = None  # lanes of the working batch (None: all B, in order)
    cur = (params, workload, state)
    for _ in range(n_chunks):
        run = (_run_chunk_batch_quick if _quick(shape, num_lanes(cur[0]) // n_dev)
               else _run_chunk_batch)
        c_state, done, ran = run(shape, cur[0], cur[1], cur[2], wl_batched)
        # XLA may give an output another sharding than its input (a zero-size leaf comes
        # back replicated); putting it back keeps the next chunk on the same executable
        c_state = place(c_state)
        cur = (cur[0], cur[1], c_state)
        iters += int(ran)
        done = np.asarray(done)
        if done.all():
            break
        size = done.size
        live = np.flatnonzero(~done)
        new = _compacted_size(size, live.size, n_dev, band) if compact_lanes else size
        if new < size:
            state = c_state if idx is None else _scatter(state, c_state, idx)
            pos = np.concatenate([live, np.flatnonzero(done)[:new - live.size]])
            idx = jnp.asarray(pos if idx is None else np.asarray(idx)[pos])
            cur = (place(_gather(params, idx)),
                   place(_gather(workload, idx)) if wl_batched else workload,
                   place(_gather(state, idx)))
    state = cur[2] if idx is None else _scatter(state, cur[2], idx)
    finish = _finish_batch_quick if _quick(shape, per_dev) else _finish_batch
    state, m = finish(params, workload, state, wl_batched)
    metrics = {k: np.array(v) for k, v in m.items()}
    status = metrics["status"].astype(np.int32)
    result = SimResult(metrics=metrics, state=state, status=status, iterations_run=iters,
                       wall_s=time.perf_counter() - t0)
    if auto_slots:
        result = _rerun_overflow(shape, params, workload, result, budget,
                                 compact_lanes, devices)
    result.wall_s = time.perf_counter() - t0
    return result


def _check_inputs(shape: SimShape, params: SimParams, workload: Workload) -> None:
    """The shape, parameters and workload were built for each other."""
    if workload.arrival_hi.shape[-1] != shape.max_requests:
        raise ValueError(
            f"workload has {workload.arrival_hi.shape[-1]} rows but "
            f"SimShape.max_requests={shape.max_requests}"
        )
    if (params.cache is not None) != (shape.cache_entries > 0):
        raise ValueError(
            "params and shape disagree on the prefix cache: params.cache is "
            f"{'set' if params.cache is not None else 'None'} but SimShape.cache_entries="
            f"{shape.cache_entries}; build both with jaxsim.api.prepare from the same "
            "configurations")


def _trim(result: SimResult, n: int, t0: float) -> SimResult:
    """The first ``n`` lanes of a padded batch's result."""
    result.metrics = {k: v[:n] for k, v in result.metrics.items()}
    result.status = result.status[:n]
    result.state = jax.tree.map(lambda x: x[:n], result.state)
    result.wall_s = time.perf_counter() - t0
    return result


def _rerun_overflow(shape, params, workload, result, max_iterations, compact_lanes=True,
                    devices=None):
    over = np.flatnonzero(result.status & st_bits.OVERFLOW_SLOTS)
    if over.size == 0:
        return result
    seqs = np.asarray(params.scheduler.max_num_seqs)[over]
    if shape.macro_iterations:
        # the rows of requests that finished inside a decode run stay in the table until
        # the step's compaction, beside up to max_num_seqs running and admitted rows
        seqs = 2 * seqs
    if params.cache is not None:  # §5.8/§5.11: the window must fit in the table too
        cp = params.cache
        uses_window = (np.asarray(cp.w_admission)[over] > 0) | (np.asarray(cp.prefetch)[over]
                                                                 != 0)
        seqs = seqs + np.where(uses_window, np.asarray(cp.admission_window)[over], 0)
    new_s = int(min(max(2 * shape.max_slots, 1), max(int(seqs.max()), shape.max_slots)))
    if new_s <= shape.max_slots:
        return result
    # the re-run batch is padded (copies of its last lane) to a power of two, so a sweep
    # compiles one function per S and size bucket, not one per count of overflowing lanes
    rows = np.concatenate([over, np.full((1 << (over.size - 1).bit_length()) - over.size,
                                         over[-1])])
    sub_params = jax.tree.map(lambda x: x[rows], params)
    sub_wl = (jax.tree.map(lambda x: x[rows], workload)
              if workload.arrival_hi.ndim == 2 else workload)
    sub = simulate_batch(dataclasses.replace(shape, max_slots=new_s), sub_params, sub_wl,
                         max_iterations=np.asarray(max_iterations)[rows], auto_slots=True,
                         compact_lanes=compact_lanes, devices=devices)
    sub = _trim(sub, over.size, 0.0)
    for k in result.metrics:
        result.metrics[k][over] = sub.metrics[k]
    result.status[over] = sub.status
    # The re-run lanes' final state: every array whose shape does not depend on the slot
    # table (the request table, counters, clocks, the prefix cache); the slot table's own
    # rows cannot be copied into the smaller table and keep the first run's (SimResult).
    idx = jnp.asarray(over)
    result.state = jax.tree.map(
        lambda a, b: a.at[idx].set(b) if a.shape[1:] == b.shape[1:] else a,
        result.state, sub.state)
    result.iterations_run = max(result.iterations_run, sub.iterations_run)
    return result


def simulate(
    shape: SimShape,
    params: SimParams,
    workload: Workload,
    max_iterations: int | None = None,
    auto_slots: bool = True,
) -> SimResult:
    """Simulate one configuration (params without a lane axis). Lane 0 of the result."""
    if params.scheduler.mode.ndim != 0:
        raise ValueError("simulate() takes one configuration; use simulate_batch()")
    batched = jax.tree.map(lambda x: x[None], params)
    return simulate_batch(shape, batched, workload, max_iterations=max_iterations,
                          auto_slots=auto_slots)


def run_fixed(
    shape: SimShape, params: SimParams, workload: Workload, num_iterations: int
) -> tuple[SimState, dict]:
    """Run one lane for exactly ``num_iterations`` iterations; pure and differentiable.

    No host loop and no jit: wrap it in ``jax.jit`` / ``jax.grad`` / ``jax.vmap`` as
    needed (``num_iterations`` must be static). Gradients flow through iteration times
    into every float parameter (cost coefficients, hardware figures); scheduling
    decisions are discrete and contribute none.
    """
    if params.scheduler.mode.ndim != 0 or workload.arrival_hi.ndim != 1:
        raise ValueError("run_fixed runs one lane: give params without a lane axis "
                         "(jaxsim.params.index(p.params, i)) and a shared workload, or "
                         "wrap it in jax.vmap")
    _check_inputs(shape, params, workload)
    if isinstance(num_iterations, bool) or not isinstance(num_iterations, int | np.integer) \
            or num_iterations < 0:
        raise ValueError(f"num_iterations: {num_iterations!r} must be a (static) integer "
                         ">= 0")
    state = init_state(shape, params, workload, jnp.int32(num_iterations))
    state = flush_in_flight(_scan_steps(shape, params, workload, state, num_iterations))
    return state, metrics_mod.compute_metrics(params, workload, state)
