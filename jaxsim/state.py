"""The scan carry: clock, slot table, per-request results, accumulators, status."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from jaxsim import status as st_bits
from jaxsim.params import SimParams, as_f32, as_i32
from jaxsim.shapes import SimShape
from jaxsim.types import Array, Bool, Float, Int
from jaxsim.workload import Workload


def _as_bool(x) -> Array:
    return jnp.asarray(x, dtype=jnp.bool_)


class SimState(eqx.Module):
    """State of one lane between iterations.

    The slot table holds every admitted, unfinished request: rows ``[0, n_run)`` are the
    ``running`` list in admission order, rows ``[n_run, n_act)`` are the preempted
    requests at the front of the waiting queue, in queue order. The rest of the waiting
    queue is the trace itself from row ``ptr`` on. Only slot rows and the rows of
    finishing requests are touched per iteration, so the cost of a step does not depend
    on R.

    Attributes:
        clock_hi, clock_lo: ``f32[]`` simulated time (hi + lo), seconds.
        start_hi, start_lo: ``f32[]`` start time of the latest iteration (with
            asynchronous scheduling, the next batch sees the arrivals up to it, §2.10;
            kept only when ``SimShape.async_scheduling`` compiles it in).
        ptr: ``i32[]`` first never-admitted request (arrival order); under priority
            scheduling (§10) the number of requests admitted at least once.
        n_run: ``i32[]`` running requests.
        n_act: ``i32[]`` running + preempted requests (occupied slots).
        slot_req: ``i32[S]`` request index of each slot.
        slot_prompt, slot_output: ``i32[S]`` P and O of the slot's request.
        slot_computed: ``i32[S]`` tokens with KV in the cache (c).
        slot_generated: ``i32[S]`` emitted output tokens (g).
        slot_preemptions: ``i32[S]`` times the request was preempted.
        slot_tokens: ``i32[S]`` tokens scheduled for it so far (incl. recompute).
        slot_arrival_hi, slot_arrival_lo: ``f32[S]`` its arrival time.
        slot_first_hi, slot_first_lo: ``f32[S]`` its first-token time (valid if g >= 1).
        slot_queue_s: ``f32[S]`` first admission minus arrival.
        ttft_s, decode_s, queue_s: ``f32[R]`` per-request TTFT, first-to-last token
            time and queueing delay (written on finish; E2E = ttft_s + decode_s).
        preemptions, tokens_scheduled: ``i32[R]`` per-request counts (written on finish).
        completed: ``bool[R]`` request finished.
        iterations: ``i32[]`` iterations that scheduled at least one token.
        iter_limit: ``i32[]`` iteration budget; the lane stops when it is reached.
        steps: ``i32[]`` simulator steps the lane took while not done (one step is an
            iteration, or a macro-step of several, docs/semantics.md §6).
        busy_hi, busy_lo: ``f32[]`` sum of iteration times.
        tokens_total: ``i32[]`` scheduled tokens.
        preemptions_total: ``i32[]``.
        num_completed: ``i32[]``.
        kv_used_s_hi, kv_used_s_lo: ``f32[]`` sum of used KV blocks x iteration time.
        kv_peak_blocks: ``i32[]`` peak used KV blocks.
        status: ``i32[]`` status bits (``jaxsim.status``).

    Prefix cache (docs/semantics.md §5; sizes 0 when ``SimShape.cache_entries`` is 0):
        loc: ``i32[U]`` cache-table row of each block id (-1: not cached).
        e_id, e_tier, e_last, e_hits, e_depth: ``i32[K]`` per table row: block id (-1:
            free row), tier, iteration of last use, hits, depth.
        hit_tok_hi, hit_tok_lo: ``f32[T]`` prompt tokens served from each tier at first
            admissions; adm_tok_hi, adm_tok_lo: ``f32[]`` prompt tokens first admitted.
        read_hi, read_lo, write_hi, write_lo: ``f32[T]`` bytes read from / written to
            each tier.
        xfer_exposed_hi, xfer_exposed_lo, xfer_hidden_hi, xfer_hidden_lo: ``f32[]``
            transfer time added to iterations / hidden behind compute, seconds.
        peak_entries: ``i32[T]`` peak cached blocks per tier.
        slot_load_s: ``f32[S]`` exposed transfer time while the slot's request had no
            token yet (§5.7 TTFT split); load_s: ``f32[R]`` the same per finished request.
        slot_swapped: ``i32[S]`` tokens of the slot's KV held in the swap tier (§5.10).
        swap_used: ``i32[]`` swap-tier blocks held by swapped requests.
        swaps_total, prefetched_total: ``i32[]`` swap-outs and prefetched blocks (§5.11).

    Speculative decoding (docs/semantics.md §9):
        slot_spec_acc: ``i32[S]`` the slot's acceptance accumulator (size 0 when
            ``SimShape.speculative`` is off).
        spec_drafted, spec_accepted: ``i32[]`` draft tokens scheduled and accepted.

    Priority scheduling (docs/semantics.md §10; size 0 unless
    ``SimShape.priority_levels`` compiles it in):
        cptr: ``i32[L]`` per priority level, its requests admitted at least once (the
            level's never-admitted requests are ``Workload.prio_order`` from
            ``prio_start[p] + cptr[p]`` on). ``ptr`` then counts every level's.
    """

    # evolving state
    clock_hi: Float[Array, ""] = eqx.field(converter=as_f32)
    clock_lo: Float[Array, ""] = eqx.field(converter=as_f32)
    start_hi: Float[Array, ""] = eqx.field(converter=as_f32)
    start_lo: Float[Array, ""] = eqx.field(converter=as_f32)
    ptr: Int[Array, ""] = eqx.field(converter=as_i32)
    n_run: Int[Array, ""] = eqx.field(converter=as_i32)
    n_act: Int[Array, ""] = eqx.field(converter=as_i32)
    # slot table
    slot_req: Int[Array, " S"] = eqx.field(converter=as_i32)
    slot_prompt: Int[Array, " S"] = eqx.field(converter=as_i32)
    slot_output: Int[Array, " S"] = eqx.field(converter=as_i32)
    slot_computed: Int[Array, " S"] = eqx.field(converter=as_i32)
    slot_generated: Int[Array, " S"] = eqx.field(converter=as_i32)
    slot_preemptions: Int[Array, " S"] = eqx.field(converter=as_i32)
    slot_tokens: Int[Array, " S"] = eqx.field(converter=as_i32)
    slot_arrival_hi: Float[Array, " S"] = eqx.field(converter=as_f32)
    slot_arrival_lo: Float[Array, " S"] = eqx.field(converter=as_f32)
    slot_first_hi: Float[Array, " S"] = eqx.field(converter=as_f32)
    slot_first_lo: Float[Array, " S"] = eqx.field(converter=as_f32)
    slot_queue_s: Float[Array, " S"] = eqx.field(converter=as_f32)
    # per-request results (written once, when the request finishes)
    ttft_s: Float[Array, " R"] = eqx.field(converter=as_f32)
    decode_s: Float[Array, " R"] = eqx.field(converter=as_f32)
    queue_s: Float[Array, " R"] = eqx.field(converter=as_f32)
    preemptions: Int[Array, " R"] = eqx.field(converter=as_i32)
    tokens_scheduled: Int[Array, " R"] = eqx.field(converter=as_i32)
    completed: Bool[Array, " R"] = eqx.field(converter=_as_bool)
    # accumulators
    iterations: Int[Array, ""] = eqx.field(converter=as_i32)
    iter_limit: Int[Array, ""] = eqx.field(converter=as_i32)
    steps: Int[Array, ""] = eqx.field(converter=as_i32)
    busy_hi: Float[Array, ""] = eqx.field(converter=as_f32)
    busy_lo: Float[Array, ""] = eqx.field(converter=as_f32)
    tokens_total: Int[Array, ""] = eqx.field(converter=as_i32)
    preemptions_total: Int[Array, ""] = eqx.field(converter=as_i32)
    num_completed: Int[Array, ""] = eqx.field(converter=as_i32)
    kv_used_s_hi: Float[Array, ""] = eqx.field(converter=as_f32)
    kv_used_s_lo: Float[Array, ""] = eqx.field(converter=as_f32)
    kv_peak_blocks: Int[Array, ""] = eqx.field(converter=as_i32)
    # status
    status: Int[Array, ""] = eqx.field(converter=as_i32)
    # prefix cache
    loc: Int[Array, " U"] = eqx.field(converter=as_i32)
    e_id: Int[Array, " K"] = eqx.field(converter=as_i32)
    e_tier: Int[Array, " K"] = eqx.field(converter=as_i32)
    e_last: Int[Array, " K"] = eqx.field(converter=as_i32)
    e_hits: Int[Array, " K"] = eqx.field(converter=as_i32)
    e_depth: Int[Array, " K"] = eqx.field(converter=as_i32)
    hit_tok_hi: Float[Array, " T"] = eqx.field(converter=as_f32)
    hit_tok_lo: Float[Array, " T"] = eqx.field(converter=as_f32)
    adm_tok_hi: Float[Array, ""] = eqx.field(converter=as_f32)
    adm_tok_lo: Float[Array, ""] = eqx.field(converter=as_f32)
    read_hi: Float[Array, " T"] = eqx.field(converter=as_f32)
    read_lo: Float[Array, " T"] = eqx.field(converter=as_f32)
    write_hi: Float[Array, " T"] = eqx.field(converter=as_f32)
    write_lo: Float[Array, " T"] = eqx.field(converter=as_f32)
    xfer_exposed_hi: Float[Array, ""] = eqx.field(converter=as_f32)
    xfer_exposed_lo: Float[Array, ""] = eqx.field(converter=as_f32)
    xfer_hidden_hi: Float[Array, ""] = eqx.field(converter=as_f32)
    xfer_hidden_lo: Float[Array, ""] = eqx.field(converter=as_f32)
    peak_entries: Int[Array, " T"] = eqx.field(converter=as_i32)
    slot_load_s: Float[Array, " S"] = eqx.field(converter=as_f32)
    load_s: Float[Array, " R"] = eqx.field(converter=as_f32)
    slot_swapped: Int[Array, " S"] = eqx.field(converter=as_i32)
    swap_used: Int[Array, ""] = eqx.field(converter=as_i32)
    swaps_total: Int[Array, ""] = eqx.field(converter=as_i32)
    prefetched_total: Int[Array, ""] = eqx.field(converter=as_i32)
    # speculative decoding (§9; zero-size without it compiled in)
    slot_spec_acc: Int[Array, " S"] = eqx.field(converter=as_i32)
    spec_drafted: Int[Array, ""] = eqx.field(converter=as_i32)
    spec_accepted: Int[Array, ""] = eqx.field(converter=as_i32)
    # priority scheduling (§10; zero-size without it compiled in)
    cptr: Int[Array, " L"] = eqx.field(converter=as_i32)


def init_state(
    shape: SimShape, params: SimParams, workload: Workload, iter_limit
) -> SimState:
    """The state before the first iteration (one lane; vmap it for a batch)."""
    S, R = shape.max_slots, shape.max_requests
    zi_s = jnp.zeros((S,), jnp.int32)
    zf_s = jnp.zeros((S,), jnp.float32)
    zi_r = jnp.zeros((R,), jnp.int32)
    K, T = shape.cache_entries, shape.num_tiers
    zf_t = jnp.zeros((T,), jnp.float32)
    sp = params.scheduler
    # Device-side guards in addition to the host checks (params built by hand).
    no_blocks = sp.num_gpu_blocks <= 0
    status = params.status0 | jnp.where(
        no_blocks, st_bits.INFEASIBLE | st_bits.INF_NO_KV_MEMORY, 0
    )
    return SimState(
        clock_hi=0.0,
        clock_lo=0.0,
        start_hi=0.0,
        start_lo=0.0,
        ptr=0,
        n_run=0,
        n_act=0,
        slot_req=zi_s,
        slot_prompt=zi_s,
        slot_output=zi_s,
        slot_computed=zi_s,
        slot_generated=zi_s,
        slot_preemptions=zi_s,
        slot_tokens=zi_s,
        slot_arrival_hi=zf_s,
        slot_arrival_lo=zf_s,
        slot_first_hi=zf_s,
        slot_first_lo=zf_s,
        slot_queue_s=zf_s,
        ttft_s=jnp.full((R,), jnp.nan, jnp.float32),
        decode_s=jnp.full((R,), jnp.nan, jnp.float32),
        queue_s=jnp.full((R,), jnp.nan, jnp.float32),
        preemptions=zi_r,
        tokens_scheduled=zi_r,
        completed=jnp.zeros((R,), jnp.bool_),
        iterations=0,
        iter_limit=iter_limit,
        steps=0,
        busy_hi=0.0,
        busy_lo=0.0,
        tokens_total=0,
        preemptions_total=0,
        num_completed=0,
        kv_used_s_hi=0.0,
        kv_used_s_lo=0.0,
        kv_peak_blocks=0,
        status=status,
        loc=jnp.full((shape.hash_space if K else 0,), -1, jnp.int32),
        e_id=jnp.full((K,), -1, jnp.int32),
        e_tier=jnp.zeros((K,), jnp.int32),
        e_last=jnp.zeros((K,), jnp.int32),
        e_hits=jnp.zeros((K,), jnp.int32),
        e_depth=jnp.zeros((K,), jnp.int32),
        hit_tok_hi=zf_t,
        hit_tok_lo=zf_t,
        adm_tok_hi=0.0,
        adm_tok_lo=0.0,
        read_hi=zf_t,
        read_lo=zf_t,
        write_hi=zf_t,
        write_lo=zf_t,
        xfer_exposed_hi=0.0,
        xfer_exposed_lo=0.0,
        xfer_hidden_hi=0.0,
        xfer_hidden_lo=0.0,
        peak_entries=jnp.zeros((T,), jnp.int32),
        slot_load_s=jnp.zeros((S if K else 0,), jnp.float32),
        load_s=jnp.full((R if K else 0,), jnp.nan, jnp.float32),
        slot_swapped=jnp.zeros((S if K else 0,), jnp.int32),
        swap_used=0,
        swaps_total=0,
        prefetched_total=0,
        slot_spec_acc=jnp.zeros((S if shape.speculative else 0,), jnp.int32),
        spec_drafted=0,
        spec_accepted=0,
        cptr=jnp.zeros((shape.priority_levels,), jnp.int32),
    )


def is_done(state: SimState, workload: Workload) -> Array:
    """Lane finished (all requests done), halted by a status bit, or out of budget."""
    finished = (state.ptr >= workload.num_requests) & (state.n_act == 0)
    halted = (state.status & st_bits.HALTED_MASK) != 0
    return finished | halted | (state.iterations >= state.iter_limit)


def flush_in_flight(state: SimState) -> SimState:
    """Write the counts of unfinished (running or preempted) requests into the request
    table, so a truncated lane still reports every request's preemptions and scheduled
    tokens. Finished requests were written when they finished."""
    S = state.slot_req.shape[0]
    R = state.preemptions.shape[0]
    live = jnp.arange(S) < state.n_act
    idx = jnp.where(live, state.slot_req, R)
    return eqx.tree_at(
        lambda s: (s.preemptions, s.tokens_scheduled),
        state,
        (
            state.preemptions.at[idx].set(state.slot_preemptions, mode="drop"),
            state.tokens_scheduled.at[idx].set(state.slot_tokens, mode="drop"),
        ),
    )
