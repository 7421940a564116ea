"""Entry points: ``simulate`` (one configuration) and ``simulate_batch`` (jit of vmap).

Iterations run in chunks: one compiled function advances every lane by
``SimShape.chunk_iterations`` iterations (``lax.scan``), then the host checks, once per
chunk, whether every lane is done. Lanes that finish early keep stepping as cheap no-ops
until the chunk ends. The compiled function depends only on the ``SimShape`` (and whether
the workload is shared or per lane), so sweeping any traced value never recompiles.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxsim import costmodel, prefix
from jaxsim import metrics as metrics_mod
from jaxsim import status as st_bits
from jaxsim.params import SimParams, num_lanes
from jaxsim.shapes import SimShape
from jaxsim.state import SimState, flush_in_flight, init_state, is_done
from jaxsim.step import step
from jaxsim.workload import Workload


def default_iteration_budget(workload: Workload) -> int:
    """A generous iteration budget: every token in its own iteration, plus slack."""
    n = int(workload.num_requests.max())
    p = np.asarray(workload.prompt_tokens)[..., :n].astype(np.int64)
    o = np.asarray(workload.output_tokens)[..., :n].astype(np.int64)
    return int(min(2**31 - 1, 2 * (p.sum(axis=-1).max() + o.sum(axis=-1).max()) + n + 1024))


def _run_chunk_single(shape: SimShape, params: SimParams, workload: Workload,
                      state: SimState) -> tuple[SimState, jax.Array]:
    consts = costmodel.prepare(params.model, params.hardware, params.scheduler.tp,
                               params.cost)
    pconsts = (prefix.prepare(params, workload, consts) if shape.cache_entries > 0
               else None)

    def body(s, _):
        return step(shape, params, workload, s, consts, pconsts), None

    state, _ = jax.lax.scan(body, state, None, length=shape.chunk_iterations)
    return state, is_done(state, workload)


@functools.partial(jax.jit, static_argnames=("shape", "wl_batched"), donate_argnums=(3,))
def _run_chunk_batch(shape, params, workload, state, wl_batched: bool):
    fn = jax.vmap(
        functools.partial(_run_chunk_single, shape),
        in_axes=(0, 0 if wl_batched else None, 0),
    )
    state, done = fn(params, workload, state)
    return state, jnp.all(done)


@functools.partial(jax.jit, static_argnames=("shape", "wl_batched"))
def _init_batch(shape, params, workload, iter_limit, wl_batched: bool):
    return jax.vmap(
        functools.partial(init_state, shape), in_axes=(0, 0 if wl_batched else None, None)
    )(params, workload, iter_limit)


@functools.partial(jax.jit, static_argnames=("wl_batched",))
def _finish_batch(params, workload, state, wl_batched: bool):
    state = jax.vmap(flush_in_flight)(state)
    m = jax.vmap(metrics_mod.compute_metrics, in_axes=(0, 0 if wl_batched else None, 0))(
        params, workload, state
    )
    return state, m


@dataclasses.dataclass
class SimResult:
    """Output of a simulation.

    Attributes:
        metrics: name -> array with a leading lane axis (B,) (see ``jaxsim.metrics``).
        state: final ``SimState`` (leading lane axis), with per-request results in
            arrival order.
        status: ``int32[B]`` status bits including ``TRUNCATED``.
        iterations_run: iterations the host ran (chunks x chunk length).
        wall_s: wall time of the simulation, seconds (compile included on first call).
    """

    metrics: dict[str, np.ndarray]
    state: SimState
    status: np.ndarray
    iterations_run: int
    wall_s: float

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
) -> SimResult:
    """Simulate a batch of configurations on a shared (or per-lane) workload.

    Args:
        shape: static capacities (R must equal the workload's padded length).
        params: ``SimParams`` with a leading lane axis B on every leaf.
        workload: shared ``Workload`` (leaves ``[R]``) or per-lane (leaves ``[B, R]``).
        max_iterations: per-lane iteration budget (default: generous, see
            :func:`default_iteration_budget`); lanes that reach it get ``TRUNCATED``.
        auto_slots: re-run lanes flagged ``OVERFLOW_SLOTS`` with a doubled slot table
            (up to their ``max_num_seqs``) until none overflows, so results are exact
            whatever S the shape starts with. Each new S compiles once.

    Returns:
        A :class:`SimResult`.
    """
    t0 = time.perf_counter()
    wl_batched = workload.arrival_hi.ndim == 2
    if workload.arrival_hi.shape[-1] != shape.max_requests:
        raise ValueError(
            f"workload has {workload.arrival_hi.shape[-1]} rows but "
            f"SimShape.max_requests={shape.max_requests}"
        )
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
    budget = default_iteration_budget(workload) if max_iterations is None else int(
        max_iterations)
    if budget < 1:
        raise ValueError(f"max_iterations={max_iterations!r} must be >= 1")
    state = _init_batch(shape, params, workload, jnp.int32(budget), wl_batched)
    n_chunks = -(-budget // shape.chunk_iterations)
    iters = 0
    for _ in range(n_chunks):
        state, all_done = _run_chunk_batch(shape, params, workload, state, wl_batched)
        iters += shape.chunk_iterations
        if bool(all_done):
            break
    state, m = _finish_batch(params, workload, state, wl_batched)
    metrics = {k: np.array(v) for k, v in m.items()}
    status = metrics["status"].astype(np.int32)
    result = SimResult(metrics=metrics, state=state, status=status, iterations_run=iters,
                       wall_s=time.perf_counter() - t0)
    if auto_slots:
        result = _rerun_overflow(shape, params, workload, result, max_iterations)
    result.wall_s = time.perf_counter() - t0
    return result


def _rerun_overflow(shape, params, workload, result, max_iterations):
    over = np.flatnonzero(result.status & st_bits.OVERFLOW_SLOTS)
    if over.size == 0:
        return result
    seqs = np.asarray(params.scheduler.max_num_seqs)[over]
    if params.cache is not None:  # §5.8/§5.11: the window must fit in the table too
        cp = params.cache
        uses_window = (np.asarray(cp.w_admission)[over] > 0) | (np.asarray(cp.prefetch)[over]
                                                                 != 0)
        seqs = seqs + np.where(uses_window, np.asarray(cp.admission_window)[over], 0)
    new_s = int(min(max(2 * shape.max_slots, 1), max(int(seqs.max()), shape.max_slots)))
    if new_s <= shape.max_slots:
        return result
    sub_params = jax.tree.map(lambda x: x[over], params)
    sub_wl = (jax.tree.map(lambda x: x[over], workload)
              if workload.arrival_hi.ndim == 2 else workload)
    sub = simulate_batch(dataclasses.replace(shape, max_slots=new_s), sub_params, sub_wl,
                         max_iterations=max_iterations, auto_slots=True)
    for k in result.metrics:
        result.metrics[k][over] = sub.metrics[k]
    result.status[over] = sub.status
    # Per-request state of the re-run lanes: copy the request-table arrays.
    st = result.state
    idx = jnp.asarray(over)
    updates = {}
    names = ["ttft_s", "decode_s", "queue_s", "preemptions", "tokens_scheduled", "completed"]
    if st.load_s.shape[-1]:
        names.append("load_s")
    for name in names:
        updates[name] = getattr(st, name).at[idx].set(getattr(sub.state, name))
    result.state = eqx.tree_at(
        lambda s: [getattr(s, n) for n in updates], st, list(updates.values())
    )
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
    state = init_state(shape, params, workload, jnp.int32(num_iterations))
    consts = costmodel.prepare(params.model, params.hardware, params.scheduler.tp,
                               params.cost)
    pconsts = (prefix.prepare(params, workload, consts) if shape.cache_entries > 0
               else None)

    def body(s, _):
        return step(shape, params, workload, s, consts, pconsts), None

    state, _ = jax.lax.scan(body, state, None, length=num_iterations)
    state = flush_in_flight(state)
    return state, metrics_mod.compute_metrics(params, workload, state)
