"""One engine iteration as a fixed-shape state transition (one lane, no batch axis).

Semantics (the contract; full text with the cost formula in docs/semantics.md, which the
reference simulator in tests/reference implements independently):

1. **Idle jump.** If nothing is running or preempted and the next request has not
   arrived, the clock jumps to its arrival (no empty iterations).
2. **Running phase** (v1). Walk ``running`` in admission order while budget remains:
   ``q = min(n_known - c, threshold, budget)``; if its new KV blocks do not fit, preempt
   the *last* running request (recompute: blocks freed, ``c = 0``, to the front of the
   waiting queue), repeatedly; a request that preempts itself stops the phase.
3. **Waiting phase** (v1, only if nothing was preempted). FCFS over preempted requests
   then arrived requests: admit while ``running < max_num_seqs``, budget remains (the
   whole prompt, capped by the threshold, must fit without chunked prefill), and the
   blocks for the scheduled chunk (``reserve_full_isl``: for the whole known sequence)
   leave ``watermark_blocks`` free; the first failure stops admission.
4. **v0** (prefill-first): admit a prefill-only batch by the rules of 3 with the full
   budget; if nothing is admitted, run the decode batch of 2, where a request needs a
   free block to touch even when its token fits in its last block.
5. **Iteration time** from the cost model on the batch's aggregate features.
6. **Advance** the clock (double-float) by the iteration time.
7. **Retire.** ``c += q``; a request whose ``c`` reaches ``P + g`` samples a token
   (``g += 1``; the first stamps TTFT); ``g == O`` finishes it and frees its blocks.
8. **Account** tokens, busy time, KV occupancy, preemptions.
9. **Asynchronous scheduling** (§2.10, compiled in with ``SimShape.async_scheduling``):
   an iteration with requests running at its start sees the arrivals up to the previous
   iteration's start (``SimState.start``) and takes ``max(G, C)`` of the cost model.
10. **Speculative decoding** (§9, compiled in with ``SimShape.speculative``; a drafter's
    time with ``SimShape.spec_draft``): a decoding row of the running walk wants
    ``1 + d`` tokens (``d`` drafts); its accumulator (``SimState.slot_spec_acc``)
    decides how many of the drafts scheduled are accepted, and a drafter's GPU time
    joins the iteration's. Its decode runs are ``_spec_decode_run``'s.

How it is vectorised: the slot table keeps ``running`` (rows ``[0, n_run)``) and the
preempted queue front (rows ``[n_run, n_act)``) contiguous and in order, and the trace
window ``ptr, ptr+1, ...`` is loaded into the free rows ``[n_act, S)``. Candidates for
admission are then simply the rows ``>= n_run`` in row order, every sequential walk of
the vLLM scheduler becomes a prefix sum, and:

- the running walk with pop-from-the-end preemption keeps exactly the longest prefix
  ``m`` of ``running`` with ``sum_{j<m} (held_j + need_j) <= num_gpu_blocks`` (v0: plus
  one for a last request that opens no block, the block it touches) (the
  victims are rows ``[m, n_run)``, which then already sit in queue order in front of the
  older preempted rows);
- FCFS admission is the longest prefix of candidates that all pass their checks;
- finished requests are removed by an order-preserving compaction.

With the prefix cache compiled in, the candidates are first permuted into the §5.8 walk
order (one S-sized sort; the identity when the admission weight is 0), admission is the
longest passing prefix in that order, and the compaction places the admitted rows in walk
order after the running ones; skipped trace rows stay in the table as waiting rows.
Swap preemption (§5.10) keeps a victim's computed tokens in ``slot_swapped``; its
re-admission starts there instead of at its cached prefix. Prefetch (§5.11, compiled in
only with ``SimShape.prefetch``) runs after the cache update on the rows that wait after
the iteration, which are in queue order before the compaction.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxsim import costmodel, prefix
from jaxsim import dd as ddm
from jaxsim import status as st_bits
from jaxsim.dd import DD
from jaxsim.guard import when_needed
from jaxsim.params import SimParams
from jaxsim.shapes import MAX_PRIORITY_LEVELS, SimShape
from jaxsim.state import SimState
from jaxsim.timeutil import dd_add, dd_add2, dd_le, dd_lt, dd_sub
from jaxsim.workload import Workload

_CACHE_FIELDS = (
    "loc", "e_id", "e_tier", "e_last", "e_hits", "e_depth", "hit_tok_hi", "hit_tok_lo",
    "adm_tok_hi", "adm_tok_lo", "read_hi", "read_lo", "write_hi", "write_lo",
    "xfer_exposed_hi", "xfer_exposed_lo", "xfer_hidden_hi", "xfer_hidden_lo",
    "peak_entries", "slot_load_s", "load_s", "slot_swapped", "swap_used", "swaps_total",
    "prefetched_total",
)

MODE_V1 = 0
MODE_V0 = 1


def _ceil_div(a, b):
    return (a + b - 1) // b


def _exact_dot(a, x) -> DD:
    """sum(a * x) for int32 a, x >= 0 as an exact DD (no int32 overflow).

    x is split into 12-bit halves so each partial sum stays below 2**31 for
    sum(a) <= 2**18 and x < 2**25 (the validated ranges of tokens per iteration and
    context length).
    """
    i32 = jnp.int32
    hi = jnp.sum(a * (x >> 12), dtype=i32)
    lo = jnp.sum(a * (x & 4095), dtype=i32)
    return ddm.add(ddm.mul_f(costmodel.int_to_dd(hi), jnp.float32(4096.0)),
                   costmodel.int_to_dd(lo))


def _floordiv(a, b, inv_b):
    """``a // b`` for int32 ``0 <= a < 2**31`` and ``1 <= b <= 4096``, exactly, with
    ``inv_b = 1 / b`` in float32: a float estimate and two integer corrections (integer
    division is not vectorised on CPU and costs several times more)."""
    i32 = jnp.int32
    q = jnp.floor(a.astype(jnp.float32) * inv_b).astype(i32)
    q = q + jnp.floor((a - q * b).astype(jnp.float32) * inv_b).astype(i32)
    r = a - q * b
    return q + (r >= b).astype(i32) - (r < 0).astype(i32)


def _sort_order(*keys, sizes=None, needed=None):
    """``(perm, inv)`` of the stable lexicographic sort of ``S`` rows by ``keys`` (``[S]``
    each, int32 or float without NaN or -0.0; most significant first; ties keep row
    order): ``perm[k]`` is the row at position ``k`` and ``inv[row]`` its position. The
    same permutation as ``lax.sort((*keys, row), num_keys=len(keys) + 1)``, computed
    from an ``[S, S]`` comparison of every pair of rows instead: on CPU XLA's sort of a
    few dozen rows per lane costs several times more (benchmarks/README.md, priority
    scheduling).

    ``sizes``: static exclusive upper bounds of int32 keys (each then in ``0 .. size - 1``);
    when their product fits in int32 the keys are packed into one. ``needed``: a bool
    scalar, false where the caller knows the order is the identity (or will not use
    it); a vmapped batch then computes the order only while one of its lanes needs it
    (:func:`jaxsim.guard.when_needed`), and the others get the identity.
    """
    i32 = jnp.int32
    S = keys[0].shape[0]
    row = jnp.arange(S, dtype=i32)
    if sizes is not None and math.prod(sizes) < 2**31:
        packed = keys[0]
        for k, n in zip(keys[1:], sizes[1:], strict=True):
            packed = packed * n + k
        keys = (packed,)

    def order(*ks):
        before = row[None, :] < row[:, None]  # [i, j]: row j goes before row i
        for k in reversed(ks):
            before = (k[None, :] < k[:, None]) | ((k[None, :] == k[:, None]) & before)
        inv = jnp.sum(before, axis=1, dtype=i32)
        return jnp.zeros((S,), i32).at[inv].set(row), inv

    if needed is None:
        return order(*keys)
    return when_needed(needed, order, keys, (row, row))


def _batch_features(got, computed, sched, n_sampled, is_pre, is_dec
                    ) -> costmodel.BatchFeatures:
    """§3's features of a batch: rows scheduled ``got`` tokens at context ``computed``."""
    i32 = jnp.int32
    return costmodel.BatchFeatures(
        tokens=jnp.sum(got, dtype=i32),
        num_seqs=jnp.sum(sched, dtype=i32),
        num_sampled=n_sampled,
        prefill_tokens=jnp.sum(jnp.where(is_pre, got, 0), dtype=i32),
        # 2 * sum q (c + (q + 1) / 2) = sum q * (2c + q + 1), exactly
        prefill_pairs_x2=_exact_dot(jnp.where(is_pre, got, 0), 2 * computed + got + 1),
        prefill_kv_tokens=_exact_dot(is_pre.astype(i32), computed + got),
        num_decodes=jnp.sum(is_dec, dtype=i32),
        decode_kv_tokens=_exact_dot(is_dec.astype(i32), computed + 1),
    )


def draft_consts(params: SimParams, size: int) -> tuple[costmodel.CostConsts,
                                                       costmodel.DecodeTable]:
    """§9: the cost-model constants of the lane's drafter (no shape tables) and its
    decode table for batches of up to ``size`` sequences (``size + 1`` entries; the scan
    drivers compute them once per chunk)."""
    cost = params.cost
    dconsts = costmodel.prepare(
        params.spec.draft, params.hardware, params.scheduler.tp,
        eqx.tree_at(lambda c: c.shape_corr, cost,
                    jnp.zeros((*cost.shape_corr.shape[:-1], 0), jnp.float32)))
    return dconsts, costmodel.decode_table(dconsts, size + 1)


def _draft_batch(drafting, computed1) -> tuple:
    """§9: the sequences of the drafter's one-token passes (the ``drafting`` rows) and
    their contexts after retire plus the token each drafts from, as ``_draft_time``
    takes them."""
    i32 = jnp.int32
    return jnp.sum(drafting, dtype=i32), _exact_dot(drafting.astype(i32), computed1 + 1)


def _draft_time(params: SimParams, draft, K, feats, n_dec, kv_dec: DD) -> DD:
    """§9's ``G_draft``: a pass of the drafter over the batch (``feats``) and ``K - 1``
    one-token passes of the ``n_dec`` requests that sampled and did not finish, whose
    contexts after retire (plus the token each drafts from) sum to ``kv_dec``; 0 without
    a draft model. ``draft`` is :func:`draft_consts`'s pair."""
    dconsts, dtab = draft
    g_first = costmodel.gpu_time_from_consts(dconsts, feats)
    g_dec = costmodel.decode_gpu_time(dconsts, dtab, n_dec, kv_dec)
    g_draft = ddm.add(g_first, ddm.mul_f(g_dec, (K - 1).astype(jnp.float32)))
    on = (params.spec.has_draft != 0) & (K > 0)
    return ddm.where(on, g_draft, ddm.dd(jnp.zeros_like(g_draft.hi)))


def _priority_running_walk(running, want, computed, held, level, req, budget, free, bs,
                           active, num_requests: int):
    """§10's running phase of a priority lane, row by row: the victim of a preemption is
    the running request with the largest key ``(level, req)`` (the one at hand and the
    ones already scheduled included: those give their blocks and tokens back). Returns
    the victims, each row's scheduled tokens and the blocks it took (0 for victims).

    The walk runs only for a lane that ``active`` marks (one that must preempt: without
    a preemption the walk is §2.2's, which the caller computes as a prefix sum); its
    loop stops after the last running row, so a batch pays for it only while one of its
    lanes preempts."""
    i32 = jnp.int32
    S = running.shape[0]
    row = jnp.arange(S, dtype=i32)
    n_run = jnp.sum(running, dtype=i32)
    # victim order: the running rows by key, largest first
    Lm, R = MAX_PRIORITY_LEVELS, num_requests
    vorder, vpos = _sort_order(jnp.where(running, 0, 1),
                               jnp.where(running, Lm - 1 - level, 0),
                               jnp.where(running, R - 1 - req, 0), sizes=(2, Lm, R),
                               needed=active)

    def body(carry):
        i, free, bud, stop, vk, got, took = carry
        live = running[i] & (vpos[i] >= vk) & ~stop
        reach = live & (bud > 0)
        stop = stop | (live & (bud <= 0))  # the budget is spent: the walk ends
        q = jnp.minimum(want[i], bud)
        need = _ceil_div(computed[i] + q, bs) - held[i]
        # blocks freed by taking victims vk, vk+1, ... (in victim order), before each
        freed = jnp.where(running & (vpos >= vk), held + took, 0)[vorder]
        before = jnp.cumsum(freed, dtype=i32) - freed
        n_take = jnp.sum((row >= vk) & (row < n_run) & (free + before < need), dtype=i32)
        self_hit = reach & (vpos[i] < vk + n_take)
        n_new = jnp.where(reach, jnp.where(self_hit, vpos[i] - vk + 1, n_take), 0)
        new_v = running & (vpos >= vk) & (vpos < vk + n_new)
        bud = bud + jnp.sum(jnp.where(new_v, got, 0), dtype=i32)
        free = free + jnp.sum(jnp.where(new_v, held + took, 0), dtype=i32)
        got = jnp.where(new_v, 0, got)
        took = jnp.where(new_v, 0, took)
        sched = reach & ~self_hit
        got = got.at[i].set(jnp.where(sched, q, got[i]))
        took = took.at[i].set(jnp.where(sched, need, took[i]))
        free = free - jnp.where(sched, need, 0)
        bud = bud - jnp.where(sched, q, 0)
        return i + 1, free, bud, stop | self_hit, vk + n_new, got, took

    zero = jnp.zeros((S,), i32)
    # (rows of requests that finished in a decode run sit among the running ones)
    limit = jnp.where(active, jnp.max(jnp.where(running, row + 1, 0)), 0)
    *_, vk, got, took = jax.lax.while_loop(
        lambda c: c[0] < limit, body,
        (jnp.int32(0), free, budget, jnp.bool_(False), jnp.int32(0), zero, zero))
    return running & (vpos < vk), got, took


def _priority_head(shape: SimShape, params: SimParams, wl: Workload, st: SimState):
    """§10: whether the lane schedules by priority, and its earliest never-admitted
    request (the first in request order of its levels' next ones); None when priority
    scheduling is not compiled in."""
    if not shape.priority_levels:
        return None
    Lv, R = shape.priority_levels, wl.arrival_hi.shape[-1]
    pos = wl.prio_start[:Lv] + st.cptr
    heads = jnp.where(pos < wl.prio_start[1:Lv + 1],
                      wl.prio_order[jnp.clip(pos, 0, R - 1)], R - 1)
    return params.scheduler.scheduling_policy != 0, jnp.min(heads)


def _run_series(st: SimState, dts: DD, used, async_on):
    """The clock, busy time and KV integral (DD pairs, ``[KC + 1]`` each) after each
    iteration of a decode run with times ``dts`` and ``used`` blocks (``[KC]``), summed
    one iteration at a time as stepping does (a scan: unrolled, XLA would fuse the chain
    into every output and recompute it); and the time up to which iteration j's batch
    sees arrivals: its start, or (§2.10, ``async_on``) the start of the iteration
    before it."""
    f32 = jnp.float32
    KC = used.shape[0]

    def acc(carry, jj):
        # the run's times are read by index (scanning over them as inputs would
        # transpose them, and XLA fuses the whole evaluation into that transpose)
        c_hi, c_lo, b_hi, b_lo, u_hi, u_lo = carry
        dh, dl, u = dts.hi[jj], dts.lo[jj], used[jj]
        # three sums carried apart: stacking them costs a concatenation per iteration
        c_hi, c_lo = dd_add2(c_hi, c_lo, dh, dl)
        b_hi, b_lo = dd_add2(b_hi, b_lo, dh, dl)
        u_hi, u_lo = dd_add(u_hi, u_lo, u.astype(f32) * (dh + dl))
        out = (c_hi, c_lo, b_hi, b_lo, u_hi, u_lo)
        return out, out

    init = (st.clock_hi, st.clock_lo, st.busy_hi, st.busy_lo, st.kv_used_s_hi,
            st.kv_used_s_lo)
    _, series = jax.lax.scan(acc, init, jnp.arange(KC, dtype=jnp.int32))
    series = tuple(jnp.concatenate([x0[None], xs])
                   for x0, xs in zip(init, series, strict=True))
    clk_hi, clk_lo = series[0], series[1]
    vis_hi, vis_lo = clk_hi[:KC], clk_lo[:KC]
    if async_on is not None:
        vis_hi = jnp.where(async_on, jnp.concatenate([st.start_hi[None], clk_hi[:KC - 1]]),
                           vis_hi)
        vis_lo = jnp.where(async_on, jnp.concatenate([st.start_lo[None], clk_lo[:KC - 1]]),
                           vis_lo)
    return series, (vis_hi, vis_lo)


def _run_start(st: SimState, k, clk_hi, clk_lo) -> SimState:
    """§2.10: after a run of ``k`` iterations, the start of its last one."""
    km1 = jnp.maximum(k - 1, 0)
    return eqx.tree_at(lambda s: (s.start_hi, s.start_lo), st,
                       (jnp.where(k > 0, clk_hi[km1], st.start_hi),
                        jnp.where(k > 0, clk_lo[km1], st.start_lo)))


def _decode_run(shape: SimShape, params: SimParams, wl: Workload, st: SimState,
                consts: costmodel.CostConsts, dtab: costmodel.DecodeTable, active, inv_bs,
                prio_head=None):
    """Event skipping (docs/semantics.md §6): advance the lane by ``k`` decode-only
    iterations at once, where ``k`` is the longest run (at most
    ``shape.macro_iterations`` and the block size) in which per-iteration stepping would
    schedule exactly the running requests that have not finished, one token each: every
    running request is decoding, their KV blocks fit, the budget covers them, at least
    one is left, and nothing is admitted (the next request arrives after the start of
    the run's last iteration, or the queue's head is blocked by a limit that only a
    finish could lift, in which case the run ends with the first finish). The iteration
    times are the cost model's, one per iteration as the context grows and requests
    finish (``costmodel.decode_series_times``); the clock, busy time and KV-occupancy
    integral are summed in the same order as stepping would. With the prefix cache
    compiled in, the run also ends before a running request completes a hashed block
    and before tier 0 would evict, and it sets the last use of the blocks the running
    requests touched (§6).

    Returns the advanced state, the rows that finished in the run (still in the table;
    the ordinary iteration that follows removes them) and the clock at the end of each
    one's last iteration (DD; meaningful at those rows).
    """
    S, R, KC = shape.max_slots, shape.max_requests, shape.macro_iterations
    sp = params.scheduler
    i32, f32 = jnp.int32, jnp.float32
    row = jnp.arange(S, dtype=i32)
    n = st.n_run
    running = row < n
    c, g = st.slot_computed, st.slot_generated
    bs, total = sp.block_size, sp.num_gpu_blocks
    is_v0 = sp.mode == MODE_V0
    decoding = (g >= 1) & (st.slot_prompt + g - c == 1)
    big = jnp.int32(2**30)
    # a request with ``left`` tokens to go finishes in iteration left - 1 of the run and
    # is out of the batch from iteration ``left`` on (bin KC: not within the run)
    left = jnp.where(running, st.slot_output - g, big)
    k_fin = jnp.min(left)
    gone = jnp.minimum(left, KC)
    fl = _floordiv(c, bs, inv_bs)
    rem = c - fl * bs
    blocks1 = jnp.sum(jnp.where(running, fl + 1, 0), dtype=i32)  # after the first token
    held0 = jnp.sum(jnp.where(running, fl + (rem > 0), 0), dtype=i32)
    first_new = jnp.where(running, bs - rem, big)  # iteration that opens its next block
    opens = first_new < left
    j = jnp.arange(KC, dtype=i32)
    # Per iteration j of the run, by histograms over the rows (an [S, KC] comparison was
    # slower, see benchmarks/README.md): every request opens at most one block in the
    # run, and a finished one no longer holds blocks, counts or adds context.
    x = c + 1
    # what each row takes out of the batch when it is gone: a sequence, its blocks, and
    # its context (in 12-bit halves, so the sums stay exact in int32)
    w = jnp.where(running[:, None],
                  jnp.stack([jnp.ones_like(x), fl + 1 + opens, x >> 12, x & 4095], -1), 0)
    out = jnp.cumsum(jnp.zeros((KC + 1, 4), i32).at[gone].add(w)[:KC], axis=0)
    n_j = n - out[:, 0]
    opened = jnp.zeros((KC + 1,), i32).at[jnp.where(opens, jnp.minimum(first_new, KC),
                                                     KC)].add(1)
    used = blocks1 + jnp.cumsum(opened[:KC]) - out[:, 1]
    tot = jnp.sum(w, axis=0, dtype=i32)
    a_hi, a_lo = tot[2] - out[:, 2], tot[3] - out[:, 3]

    # The queue's head: blocked now (and so until a finish), or not yet arrived.
    nreq = wl.num_requests
    has_pre = st.n_act > n
    hrow = jnp.minimum(n, S - 1)
    p_c = jnp.minimum(st.ptr, R - 1)
    if prio_head is not None:
        # §10: a priority lane's earliest never-admitted request (``prio_head``: the
        # lane's policy and that request)
        p_c = jnp.where(prio_head[0], prio_head[1], p_c)
    h_left = jnp.where(has_pre, st.slot_prompt[hrow] + g[hrow], wl.prompt_tokens[p_c])
    # §8: a never-admitted head that brings E tokens' KV computes the rest, in E + q blocks
    h_ext = (jnp.where(has_pre, 0, wl.external_tokens[p_c]) if shape.external_kv
             else jnp.int32(0))
    h_left = h_left - h_ext
    chunked = (sp.enable_chunked_prefill != 0) & ~is_v0
    thr = jnp.where(is_v0, 0, sp.long_prefill_token_threshold)  # v1, chunked or not
    h_want = jnp.where(thr > 0, jnp.minimum(h_left, thr), h_left)
    b_rem = jnp.where(is_v0, sp.max_num_batched_tokens, sp.max_num_batched_tokens - n)
    h_got = jnp.where(chunked, jnp.clip(b_rem, 0, h_want), h_want)
    h_budget = jnp.where(chunked, h_got > 0, h_want <= b_rem)
    h_free = total - jnp.where(is_v0, held0, blocks1)
    h_need = h_ext + jnp.where((sp.reserve_full_isl != 0) & ~is_v0, h_left, h_got)  # §2.3 r. 4
    h_blocks = h_free - _floordiv(h_need + bs - 1, bs, inv_bs) >= sp.watermark_blocks
    h_ok = h_budget & h_blocks & (n < sp.max_num_seqs)
    a_hi_t, a_lo_t = wl.arrival_hi[p_c], wl.arrival_lo[p_c]
    trace_head = st.ptr < nreq
    # §2.10: with asynchronous scheduling every iteration of a run is overlapped; its
    # batch sees the arrivals up to the start of the iteration before it
    asy = shape.async_scheduling  # compiled in only when a lane needs it
    async_on = ((sp.async_scheduling != 0) & ~is_v0) if asy else None
    seen0_hi = jnp.where(async_on, st.start_hi, st.clock_hi) if asy else st.clock_hi
    seen0_lo = jnp.where(async_on, st.start_lo, st.clock_lo) if asy else st.clock_lo
    ready0 = has_pre | (trace_head & dd_le(a_hi_t, a_lo_t, seen0_hi, seen0_lo))
    cache_on = shape.cache_entries > 0
    # With the prefix cache a request that arrives during the run may come first in the
    # §5.8 walk, so a blocked head does not keep the run going past an arrival.
    blocked = (ready0 & ~h_ok) if not cache_on else jnp.bool_(False)
    if prio_head is not None:
        # §10: the queue's head is the smallest key, which an arrival can change, so a
        # priority lane's run needs an empty queue throughout, as with the cache
        blocked = blocked & ~prio_head[0]

    # Iteration times as the decode context grows by one token per running request.
    kd = ddm.add_f(ddm.add(ddm.mul_f(costmodel.int_to_dd(a_hi), f32(4096.0)),
                           costmodel.int_to_dd(a_lo)), (j * n_j).astype(f32))
    dts = costmodel.decode_series_times(consts, dtab, n_j, kd, async_on)
    # a negative time (a hand-built negative bandwidth or FLOP/s) halts the lane as NaN does
    finite = jnp.isfinite(dts.hi) & jnp.isfinite(dts.lo) & (dts.hi >= 0)

    series, (vis_hi, vis_lo) = _run_series(st, dts, used, async_on)
    clk_hi, clk_lo, bsy_hi, bsy_lo, kvs_hi, kvs_lo = series
    arrived = trace_head & dd_le(a_hi_t, a_lo_t, vis_hi, vis_lo)

    eligible = (active & (n >= 1) & (n < S) & (n <= sp.max_num_batched_tokens)
                & jnp.all(decoding | ~running))
    # (v0: a free block to touch after every iteration of the run, §2.4; a run that
    # ends one iteration early leaves that iteration to ordinary stepping)
    ok = (eligible & (j < bs) & (n_j >= 1) & (used + is_v0 <= total) & finite
          & (j < st.iter_limit - st.iterations)
          & jnp.where(blocked, j < k_fin, ~has_pre & ~arrived))
    if cache_on:
        # §5.5 in a decode run changes only the entries' last use, when no running
        # request completes a hashed block (a new entry) and tier 0 needs no eviction as
        # the running requests' blocks grow (checked as if none finished: a finish frees
        # at least as much HBM room as it unpins entries).
        U = jnp.maximum(wl.hash_block_tokens, 1)
        enable = params.cache.enable != 0
        H = wl.hash_ids.shape[-1]
        ids = wl.hash_ids[jnp.clip(st.slot_req, 0, R - 1)]  # [S, H]
        nh = jnp.sum(ids >= 0, axis=-1, dtype=i32)
        cblk = c // U
        cross = jnp.where(running & (cblk < nh), U * (cblk + 1) - c - 1, big)
        touch = running[:, None] & (jnp.arange(H, dtype=i32)[None, :]
                                    < jnp.minimum(nh, cblk)[:, None])
        K = st.e_id.shape[0]
        ent = jnp.where(touch, st.loc[jnp.maximum(ids, 0)], -1)
        tgt = jnp.where(ent >= 0, ent, K)
        pinned = jnp.zeros((K,), jnp.bool_).at[tgt].set(True, mode="drop")
        member0 = jnp.sum((st.e_id >= 0) & (st.e_tier == 0) & ~pinned, dtype=i32)
        free_j = jnp.maximum(total - (blocks1 + jnp.cumsum(opened[:KC])), 0)
        cap0_j = (free_j // U) * bs + ((free_j % U) * bs) // U
        ok = ok & (~enable | ((j < jnp.min(cross)) & (member0 <= cap0_j)))
    k = jnp.sum(jnp.cumsum(~ok, dtype=i32) == 0, dtype=i32)

    adv = jnp.where(running, jnp.minimum(k, left), 0)
    ghost = running & (left <= k) & (k > 0)
    st = eqx.tree_at(
        lambda s: (s.clock_hi, s.clock_lo, s.busy_hi, s.busy_lo, s.kv_used_s_hi,
                   s.kv_used_s_lo, s.kv_peak_blocks, s.slot_computed, s.slot_generated,
                   s.slot_tokens, s.tokens_total, s.iterations),
        st,
        (clk_hi[k], clk_lo[k], bsy_hi[k], bsy_lo[k], kvs_hi[k], kvs_lo[k],
         jnp.maximum(st.kv_peak_blocks, jnp.max(jnp.where(j < k, used, 0))),
         c + adv, g + adv, st.slot_tokens + adv,
         st.tokens_total + jnp.sum(adv, dtype=i32), st.iterations + k),
    )
    if cache_on:
        # every running request touched its cached blocks in each of its iterations of
        # the run: last use = the index of its last one (the latest toucher wins)
        last = st.iterations - k + adv - 1  # st.iterations is already advanced by k
        tgt = jnp.where(enable & (adv > 0)[:, None], tgt, K)
        st = eqx.tree_at(lambda s: s.e_last, st, st.e_last.at[tgt].max(
            jnp.broadcast_to(last[:, None], tgt.shape), mode="drop"))
    if asy:
        st = _run_start(st, k, clk_hi, clk_lo)
    fin = jnp.minimum(left, KC)
    return st, ghost, (clk_hi[fin], clk_lo[fin])


def _spec_decode_run(shape: SimShape, params: SimParams, wl: Workload, st: SimState,
                     consts: costmodel.CostConsts, draft, active, inv_bs):
    """Event skipping with speculative decoding compiled in (docs/semantics.md §6, §9):
    up to ``shape.macro_iterations`` iterations in which every running request is
    decoding and stepping would schedule each its full ``1 + d`` tokens (``d`` drafts,
    capped by the threshold) and nothing else, with no queued request ready. Unlike
    :func:`_decode_run`, each iteration's features come from a scan over the rows'
    tokens, accumulators and finishes, and its time from a full cost-model evaluation
    (the drafter's included); a ready queue head (preempted, or arrived by the
    iteration's start, §2.10's ``seen`` with asynchronous scheduling) ends the run even
    when it is blocked. A request that finishes leaves the batch from the next
    iteration, as in :func:`_decode_run`, which also says what is returned.
    """
    S, R, KC = shape.max_slots, shape.max_requests, shape.macro_iterations
    sp = params.scheduler
    i32 = jnp.int32
    row = jnp.arange(S, dtype=i32)
    n = st.n_run
    running = row < n
    c0, g0, acc0 = st.slot_computed, st.slot_generated, st.slot_spec_acc
    prompt, output = st.slot_prompt, st.slot_output
    bs, total = sp.block_size, sp.num_gpu_blocks
    is_v0 = sp.mode == MODE_V0
    K = jnp.where(is_v0, 0, params.spec.num_tokens)
    thr = jnp.where(is_v0, 0, sp.long_prefill_token_threshold)
    units = params.spec.accept_units
    decoding = (g0 >= 1) & (prompt + g0 - c0 == 1)

    def one(carry, _):
        c, g, acc, live = carry
        want = 1 + jnp.clip(jnp.minimum(K, output - g - 1), 0)
        q = jnp.where(live, jnp.where(thr > 0, jnp.minimum(want, thr), want), 0)
        drafts = jnp.where(live, q - 1, 0)
        acc1 = acc + jnp.where(live, units[drafts], 0)
        a = jnp.where(live, acc1 >> 16, 0)
        acc1 = acc1 - a * (1 << 16)
        used = jnp.sum(jnp.where(live, _floordiv(c + q + bs - 1, bs, inv_bs), 0), dtype=i32)
        c1 = jnp.where(live, c + 1 + a, c)
        g1 = jnp.where(live, g + 1 + a, g)
        fin = live & (g1 == output)
        is_dec = live & (drafts == 0)
        feats = _batch_features(q, c, live, jnp.sum(q, dtype=i32), live & ~is_dec, is_dec)
        # the drafter's one-token passes: its sequences and their contexts (its time is
        # evaluated after the scan, with the target's, for every iteration at once)
        dec = _draft_batch(live & ~fin, c1) if shape.spec_draft else ()
        per_it = (feats, dec, used, jnp.sum(live, dtype=i32), fin, q, drafts, a)
        return (c1, g1, acc1, live & ~fin), (per_it, (c1, g1, acc1))

    _, (per_it, rows_after) = jax.lax.scan(one, (c0, g0, acc0, running), None, length=KC)
    feats, dec, used, n_j, fin, q, drafts, a = per_it
    extra = (jax.vmap(lambda f, n_d, kv_d: _draft_time(params, draft, K, f, n_d, kv_d))(
        feats, *dec) if shape.spec_draft else None)
    asy = shape.async_scheduling
    async_on = ((sp.async_scheduling != 0) & ~is_v0) if asy else None
    dts = jax.vmap(lambda f, e: costmodel.iteration_time_from_consts(
        consts, f, async_on, e))(feats, extra)
    finite = jnp.isfinite(dts.hi) & jnp.isfinite(dts.lo) & (dts.hi >= 0)

    j = jnp.arange(KC, dtype=i32)
    series, (vis_hi, vis_lo) = _run_series(st, dts, used, async_on)
    clk_hi, clk_lo, bsy_hi, bsy_lo, kvs_hi, kvs_lo = series
    p_c = jnp.minimum(st.ptr, R - 1)
    arrived = (st.ptr < wl.num_requests) & dd_le(wl.arrival_hi[p_c], wl.arrival_lo[p_c],
                                                  vis_hi, vis_lo)
    has_pre = st.n_act > n
    eligible = active & (n >= 1) & (n < S) & jnp.all(decoding | ~running)
    # every row gets its full q within the budget, and its blocks fit (v0: with one left
    # to touch, §2.4, as in _decode_run)
    ok = (eligible & (n_j >= 1) & (jnp.sum(q, axis=1) <= sp.max_num_batched_tokens)
          & (used + is_v0 <= total) & finite & (j < st.iter_limit - st.iterations)
          & ~has_pre & ~arrived)
    k = jnp.sum(jnp.cumsum(~ok, dtype=i32) == 0, dtype=i32)

    taken = (j < k)[:, None]
    c_k, g_k, acc_k = (jnp.concatenate([x0[None], xs])[k]
                       for x0, xs in zip((c0, g0, acc0), rows_after, strict=True))
    q_k = jnp.sum(jnp.where(taken, q, 0), axis=0)
    fin_k = taken & fin
    ghost = jnp.any(fin_k, axis=0)
    fin_at = jnp.argmax(fin_k, axis=0) + 1  # a ghost row's iterations in the run
    st = eqx.tree_at(
        lambda s: (s.clock_hi, s.clock_lo, s.busy_hi, s.busy_lo, s.kv_used_s_hi,
                   s.kv_used_s_lo, s.kv_peak_blocks, s.slot_computed, s.slot_generated,
                   s.slot_spec_acc, s.slot_tokens, s.tokens_total, s.iterations,
                   s.spec_drafted, s.spec_accepted),
        st,
        (clk_hi[k], clk_lo[k], bsy_hi[k], bsy_lo[k], kvs_hi[k], kvs_lo[k],
         jnp.maximum(st.kv_peak_blocks, jnp.max(jnp.where(j < k, used, 0))),
         c_k, g_k, acc_k, st.slot_tokens + q_k, st.tokens_total + jnp.sum(q_k, dtype=i32),
         st.iterations + k,
         st.spec_drafted + jnp.sum(jnp.where(taken, drafts, 0), dtype=i32),
         st.spec_accepted + jnp.sum(jnp.where(taken, a, 0), dtype=i32)),
    )
    if asy:
        st = _run_start(st, k, clk_hi, clk_lo)
    return st, ghost, (clk_hi[fin_at], clk_lo[fin_at])


def step(
    shape: SimShape,
    params: SimParams,
    workload: Workload,
    st: SimState,
    consts: costmodel.CostConsts | None = None,
    pconsts: prefix.PrefixConsts | None = None,
    dtab: costmodel.DecodeTable | None = None,
    draft: tuple | None = None,
) -> SimState:
    """Advance one lane by one engine iteration (see the module docstring).

    ``consts`` are the lane's cost-model constants (``costmodel.prepare``) and
    ``pconsts`` its prefix-cache constants (``prefix.prepare``) and ``dtab`` its
    decode-only operator sums (``costmodel.decode_table`` of size ``shape.max_slots``;
    used by event skipping) and ``draft`` its speculative drafter's constants and decode
    table (:func:`draft_consts`, with ``SimShape.spec_draft``); the scan drivers compute
    them once per run instead of once per iteration.
    """
    if consts is None:
        consts = costmodel.prepare(params.model, params.hardware, params.scheduler.tp,
                                   params.cost)
    S, R = shape.max_slots, shape.max_requests
    sp = params.scheduler
    wl = workload
    row = jnp.arange(S, dtype=jnp.int32)
    i32 = jnp.int32

    active = ((st.status & st_bits.HALTED_MASK) == 0) & (st.iterations < st.iter_limit)
    working = active & ((st.ptr < workload.num_requests) | (st.n_act > 0))
    inv_bs = 1.0 / params.scheduler.block_size.astype(jnp.float32)
    # §6 event skipping: first a run of decode-only iterations in closed form; requests
    # that finished in its last iteration ("ghost" rows) leave in this iteration's
    # compaction and take no part in it.
    spec = shape.speculative
    if shape.spec_draft and draft is None:
        draft = draft_consts(params, S)
    # (with speculative decoding and the prefix cache both compiled in, no decode runs)
    macro = shape.event_skipping and not (spec and shape.cache_entries > 0)
    if macro:
        if spec:
            st, ghost, (ghost_hi, ghost_lo) = _spec_decode_run(
                shape, params, workload, st, consts, draft, active, inv_bs)
        else:
            if dtab is None:
                dtab = costmodel.decode_table(consts, S)
            st, ghost, (ghost_hi, ghost_lo) = _decode_run(
                shape, params, workload, st, consts, dtab, active, inv_bs,
                _priority_head(shape, params, workload, st))
        active = active & (st.iterations < st.iter_limit)
        live = (row < st.n_run) & ~ghost
        n_ghost = jnp.sum(ghost, dtype=jnp.int32)
    else:
        ghost = jnp.zeros((S,), jnp.bool_)
        ghost_hi = ghost_lo = jnp.zeros((S,), jnp.float32)
        live = row < st.n_run
        n_ghost = jnp.int32(0)

    # ---- 1. idle jump -------------------------------------------------------------
    nreq = wl.num_requests
    p0 = jnp.minimum(st.ptr, R - 1)
    pri = shape.priority_levels > 0
    if pri:
        # §10: each level's next never-admitted requests (J of them, in arrival order)
        Lv, J = shape.priority_levels, S + 1
        pol, head = _priority_head(shape, params, wl, st)
        lv_pos = ((wl.prio_start[:Lv] + st.cptr)[:, None]
                  + jnp.arange(J, dtype=i32)[None, :])
        lv_in = lv_pos < wl.prio_start[1:Lv + 1][:, None]
        lv_req = wl.prio_order[jnp.clip(lv_pos, 0, R - 1)]  # [Lv, J] request indices
        p0 = jnp.where(pol, head, p0)
    nxt_hi, nxt_lo = wl.arrival_hi[p0], wl.arrival_lo[p0]
    idle = (
        active
        & (st.n_act == 0)
        & (st.ptr < nreq)
        & dd_lt(st.clock_hi, st.clock_lo, nxt_hi, nxt_lo)
    )
    clock_hi = jnp.where(idle, nxt_hi, st.clock_hi)
    clock_lo = jnp.where(idle, nxt_lo, st.clock_lo)
    # §2.10: with asynchronous scheduling an iteration with requests running at its start
    # is overlapped: its batch sees the arrivals up to the previous iteration's start
    # (``seen``) and its CPU overheads overlap its GPU time
    if shape.async_scheduling:
        overlapped = ((sp.async_scheduling != 0) & (sp.mode != MODE_V0)
                      & (st.n_run - n_ghost > 0))
        seen_hi = jnp.where(overlapped, st.start_hi, clock_hi)
        seen_lo = jnp.where(overlapped, st.start_lo, clock_lo)
    else:  # not compiled in: no lane has it
        overlapped, seen_hi, seen_lo = None, clock_hi, clock_lo

    # ---- load the trace window into the free rows [n_act, S) -------------------------
    window = row >= st.n_act
    t_idx = st.ptr + (row - st.n_act)
    t_in = window & (t_idx < nreq)
    if pri:
        # §10: a priority lane's window holds the arrived never-admitted requests in key
        # order: each level's arrived ones (a prefix of the level, in arrival order),
        # level after level
        lv_arr = lv_in & dd_le(wl.arrival_hi[lv_req], wl.arrival_lo[lv_req], seen_hi,
                               seen_lo)
        lv_cnt = jnp.sum(lv_arr, axis=1, dtype=i32)
        lv_cum = jnp.cumsum(lv_cnt, dtype=i32)
        lv_cex = lv_cum - lv_cnt

        def _lv_locate(k):  # position k of the merged list -> (level or Lv, request)
            lv = jnp.sum(lv_cum.reshape((1,) * k.ndim + (Lv,)) <= k[..., None], axis=-1,
                         dtype=i32)
            lc = jnp.minimum(lv, Lv - 1)
            return lv, lv_req[lc, jnp.clip(k - lv_cex[lc], 0, J - 1)]

        lv_of, p_idx = _lv_locate(row - st.n_act)
        t_idx = jnp.where(pol, p_idx, t_idx)
        t_in = jnp.where(pol, window & (lv_of < Lv), t_in)
    t_c = jnp.clip(t_idx, 0, R - 1)
    w_arr_hi = wl.arrival_hi[t_c]
    w_arr_lo = wl.arrival_lo[t_c]
    arrived = t_in & dd_le(w_arr_hi, w_arr_lo, seen_hi, seen_lo)
    prompt = jnp.where(window, wl.prompt_tokens[t_c], st.slot_prompt)
    output = jnp.where(window, wl.output_tokens[t_c], st.slot_output)
    computed = jnp.where(window, 0, st.slot_computed)
    generated = jnp.where(window, 0, st.slot_generated)

    n_known = prompt + generated
    is_v0 = sp.mode == MODE_V0
    chunked = (sp.enable_chunked_prefill != 0) & ~is_v0
    thr = jnp.where(is_v0, 0, sp.long_prefill_token_threshold)  # §2.2: v1, chunked or not
    budget = sp.max_num_batched_tokens
    bs = sp.block_size
    total_blocks = sp.num_gpu_blocks

    # ---- prefix lookup for the admission candidates (docs/semantics.md §5.4) ----------
    cache_on = shape.cache_entries > 0
    cand = row >= st.n_run
    if cache_on:
        if pconsts is None:
            pconsts = prefix.prepare(params, wl, consts)
        U = wl.hash_block_tokens
        enable = params.cache.enable != 0
        req_row = jnp.where(window, t_c, st.slot_req)
        ids = wl.hash_ids[req_row]
        hit_blocks, ent, etier = prefix.lookup(st, pconsts, ids, n_known, U)
        # §5.10: a swapped request does no lookup; it starts from its swapped tokens
        sw_prev = jnp.where(window, 0, st.slot_swapped)
        hit_blocks = jnp.where(enable & cand & (sw_prev == 0), hit_blocks, 0)
        hit = hit_blocks * U
        start = jnp.where(sw_prev > 0, sw_prev, hit)
    elif shape.external_kv:
        # §8: a request that has never been admitted brings the KV of E prompt tokens
        # and starts at c = E (a preempted one recomputes from 0)
        start = jnp.where(window & t_in, wl.external_tokens[t_c], 0)
    else:
        hit = start = jnp.zeros((S,), i32)

    # ---- 2. running phase -----------------------------------------------------------
    running = row < st.n_run
    rem = n_known - computed
    if spec:  # §9: a decoding request also wants d = min(K, O - g - 1) drafts
        K = jnp.where(is_v0, 0, params.spec.num_tokens)
        decoding = running & (generated >= 1) & (rem == 1)
        n_draft = jnp.where(decoding, jnp.clip(jnp.minimum(K, output - generated - 1), 0),
                            0)
        want = rem + n_draft
        want = jnp.where(thr > 0, jnp.minimum(want, thr), want)
    else:
        want = jnp.where(thr > 0, jnp.minimum(rem, thr), rem)
    want_run = jnp.where(live & active, want, 0)
    cum_run = jnp.cumsum(want_run, dtype=i32)
    got_run = jnp.clip(budget - (cum_run - want_run), 0, want_run)
    held = jnp.where(live, _floordiv(computed + bs - 1, bs, inv_bs), 0)
    need_run = jnp.where(live, _floordiv(computed + got_run + bs - 1, bs, inv_bs), 0) - held
    # §2.4: v0 schedules a request only with a free block to touch, even when its token
    # fits in the block it holds (vLLM v0's block manager counts that block)
    touch = (is_v0 & (need_run == 0) & (got_run > 0)).astype(i32)
    fits = jnp.cumsum(held + need_run, dtype=i32) + touch <= total_blocks
    # a prefix: a ghost row (finished in a decode run, no blocks) after a row that failed
    # by its touch block alone would fit again
    keep_run = running & (jnp.cumsum(~fits & running, dtype=i32) == 0)
    m = jnp.sum(keep_run, dtype=i32)
    if pri:
        req_row = jnp.where(window, t_c, st.slot_req)
        key_lv = wl.priority[req_row]
        # without a preemption (every running row fits) the walk is §2.2's prefix sum
        walk = pol & active & (m < st.n_run)
        victim_p, got_p, need_p = _priority_running_walk(
            live, want_run, computed, held, key_lv, req_row, budget,
            total_blocks - jnp.sum(held, dtype=i32), bs, walk, R)
        got_run = jnp.where(walk, got_p, got_run)
        need_run = jnp.where(walk, need_p, need_run)
        keep_run = jnp.where(walk, running & ~victim_p, keep_run)
        m = jnp.where(walk, st.n_run - jnp.sum(victim_p, dtype=i32), m)
        victim_p = victim_p & walk

    # ---- 3./4. waiting phase ----------------------------------------------------------
    cand_ok = cand & ((row < st.n_act) | arrived)
    if cache_on:
        # §5.8: walk the ready candidates by (position - w_adm * hit_blocks, position) in
        # the first W positions; every array below is in walk order (identity for FCFS).
        pos = row - st.n_run
        w_adm = jnp.where(enable, params.cache.w_admission, 0.0)
        in_window = pos < params.cache.admission_window
        k_hi, k_lo = prefix.exact_key(pos.astype(jnp.float32), [
            ((w_adm, jnp.where(in_window, hit_blocks, 0)), -1)])  # compared exactly
        group = jnp.where(cand, jnp.where(cand_ok, 1, 2), 0)
        # with w_adm = 0 the key is the position: the walk order is the rows' own
        perm, inv = _sort_order(group, jnp.where(cand_ok, k_hi, 0.0),
                                jnp.where(cand_ok, k_lo, 0.0), needed=w_adm > 0)
        cand_w, cand_ok_w, hit_w, n_known_w = (x[perm] for x in (cand, cand_ok, start,
                                                                  n_known))
    elif pri:
        # §10: a priority lane walks its waiting rows (preempted, then the window's) in
        # key order (priority, request); the empty window rows go last. FCFS lanes keep
        # row order (the identity permutation).
        real = cand & ((row < st.n_act) | t_in)
        group = jnp.where(cand, jnp.where(real | ~pol, 1, 2), 0)
        # rows [n_run, n_act) hold preempted requests; the window's rows come in key
        # order, so without preempted rows the walk order is the rows' own
        perm, inv = _sort_order(group, jnp.where(pol & cand, key_lv, 0),
                                jnp.where(pol & cand, req_row, row),
                                sizes=(3, MAX_PRIORITY_LEVELS, max(R, S)),
                                needed=pol & (st.n_act > st.n_run))
        cand_w, cand_ok_w, hit_w, n_known_w = (x[perm] for x in (cand, cand_ok, start,
                                                                  n_known))
    else:
        cand_w, cand_ok_w, hit_w, n_known_w = cand, cand_ok, start, n_known
    left_w = n_known_w - hit_w
    want_w = jnp.where(cand_w, jnp.where(thr > 0, jnp.minimum(left_w, thr), left_w), 0)
    kept_got = jnp.sum(jnp.where(keep_run, got_run, 0), dtype=i32)
    b_rem = jnp.where(is_v0, budget, budget - kept_got)
    cum_w = jnp.cumsum(want_w, dtype=i32)
    got_w_chunk = jnp.clip(b_rem - (cum_w - want_w), 0, want_w)
    got_w = jnp.where(chunked, got_w_chunk, want_w)
    ok_budget = jnp.where(chunked, got_w_chunk > 0, cum_w <= b_rem)
    need_w = jnp.where(cand_w, _floordiv(hit_w + got_w + bs - 1, bs, inv_bs), 0)
    free0 = total_blocks - jnp.sum(held, dtype=i32)
    free_w = jnp.where(is_v0, free0, free0 - jnp.sum(jnp.where(keep_run, need_run, 0), dtype=i32))
    cum_need = jnp.cumsum(need_w, dtype=i32)
    # §2.3 rule 4: the blocks of the chunk, or (scheduler_reserve_full_isl) of the whole
    # known sequence, must leave the watermark free after the earlier admissions' chunks
    full_isl = (sp.reserve_full_isl != 0) & ~is_v0
    need_chk = jnp.where(full_isl & cand_w, _floordiv(n_known_w + bs - 1, bs, inv_bs), need_w)
    ok_blocks = free_w - (cum_need - need_w) - need_chk >= sp.watermark_blocks
    # n_run + k < max_num_seqs with k = row - n_run (ghost rows are not running)
    ok_seqs = row - n_ghost < sp.max_num_seqs
    ok = cand_ok_w & ok_budget & ok_blocks & ok_seqs
    enabled = active & (is_v0 | (m == st.n_run))
    bad = cand_w & ~ok
    admit = cand_w & enabled & (jnp.cumsum(bad, dtype=i32) == 0)
    n_admit = jnp.sum(admit, dtype=i32)
    if cache_on or pri:  # back from walk order to rows
        admit_walk = admit
        admit, got_w, need_w = admit[inv], got_w[inv], need_w[inv]

    prefill_batch = is_v0 & (n_admit > 0)
    run_sched = keep_run & ~prefill_batch
    m_eff = jnp.where(prefill_batch, st.n_run, m)
    victim = running & (row >= m_eff) & ~ghost
    kept_rows = row < m_eff  # the rows that stay running
    if pri:
        victim = jnp.where(pol, victim_p, victim)
        kept_rows = jnp.where(pol, running & ~victim_p, kept_rows)
    got = jnp.where(run_sched, got_run, 0) + jnp.where(admit, got_w, 0)

    n_pre = st.n_act - st.n_run
    if cache_on:  # trace rows up to the last admitted one are consumed (§5.8 skips)
        new_trace = jnp.max(jnp.where(admit & window, row - st.n_act + 1, 0))
    elif pri:  # §10: the admitted window rows (each level's, a prefix of the level)
        new_trace = jnp.sum(admit & window, dtype=i32)
        adm_lv = jnp.sum((admit & window)[:, None]
                         & (lv_of[:, None] == jnp.arange(Lv, dtype=i32)[None, :]),
                         axis=0, dtype=i32)
        cptr1 = jnp.where(pol, st.cptr + adm_lv, st.cptr)
    else:
        new_trace = jnp.maximum(n_admit - n_pre, 0)
    n_run1 = m_eff + n_admit
    n_act1 = st.n_act + new_trace

    # Slot overflow: every row up to S was admitted; would the next request have been?
    b_left = b_rem - jnp.sum(jnp.where(admit, got_w, 0), dtype=i32)
    free_left = free_w - jnp.sum(jnp.where(admit, need_w, 0), dtype=i32)
    q_idx = st.ptr + new_trace
    if pri:  # §10: a priority lane's next request in key order after its window
        q_lv, q_pidx = _lv_locate(S - st.n_act)
        q_idx = jnp.where(pol, q_pidx, q_idx)
    q_c = jnp.minimum(q_idx, R - 1)
    q_exists = (q_idx < nreq) & dd_le(wl.arrival_hi[q_c], wl.arrival_lo[q_c], seen_hi, seen_lo)
    if pri:
        q_exists = jnp.where(pol, q_lv < Lv, q_exists)
    q_prompt = wl.prompt_tokens[q_c]
    if cache_on:
        q_hit, _, _ = prefix.lookup(st, pconsts, wl.hash_ids[q_c], q_prompt, U)
        q_hit = jnp.where(enable, q_hit * U, 0)
    elif shape.external_kv:
        q_hit = wl.external_tokens[q_c]
    else:
        q_hit = jnp.int32(0)
    q_left = q_prompt - q_hit
    q_want = jnp.where(thr > 0, jnp.minimum(q_left, thr), q_left)
    q_got = jnp.where(chunked, jnp.minimum(q_want, b_left), q_want)
    q_ok = (
        enabled
        & (n_admit == S - st.n_run)
        & (n_pre <= n_admit)
        & q_exists
        & jnp.where(chunked, b_left > 0, q_want <= b_left)
        & (free_left - jnp.where(full_isl, _ceil_div(q_prompt, bs), _ceil_div(q_hit + q_got, bs))
           >= sp.watermark_blocks)
        # the rows running when admission was tried (v0 tries before the decode batch's
        # preemptions: n_run1 would count a victim's row as free)
        & (st.n_run + n_admit - n_ghost < sp.max_num_seqs)
    )
    if cache_on:
        # §5.8 needs the whole admission window in the slot table: flag a lane whose
        # window reaches past row S while an unseen request has arrived.
        u_idx = st.ptr + (S - st.n_act)
        u_c = jnp.minimum(u_idx, R - 1)
        q_ok = q_ok | (
            enabled & (w_adm > 0) & (S - st.n_run < params.cache.admission_window)
            & (st.n_run < sp.max_num_seqs) & (u_idx < nreq)
            & dd_le(wl.arrival_hi[u_c], wl.arrival_lo[u_c], seen_hi, seen_lo))

    # ---- 5. iteration time ------------------------------------------------------------
    if cache_on:  # §5.10 swap-out of victims (in pop order, while they fit) and swap-in
        ts = pconsts.next_tier[0]
        swap_on = enable & (params.cache.swap != 0) & (ts >= 0)
        cap_ts = params.cache.capacity_blocks[jnp.maximum(ts, 0)]
        kv_tok = _ceil_div(computed, bs) * bs  # the tokens of its KV blocks
        sblk = _ceil_div(kv_tok, U)
        pop_cum = jnp.cumsum(jnp.where(victim, sblk, 0)[::-1], dtype=i32)[::-1]
        swap_out = victim & swap_on & (st.swap_used + pop_cum <= cap_ts)
        swap_in = admit & (sw_prev > 0)
        in_tok = _ceil_div(sw_prev, bs) * bs
        tok_bytes = pconsts.block_bytes / U.astype(jnp.float32)
        out_bytes = jnp.sum(jnp.where(swap_out, kv_tok, 0), dtype=i32).astype(jnp.float32)
        in_bytes = jnp.sum(jnp.where(swap_in, in_tok, 0), dtype=i32).astype(jnp.float32)
        swap_used1 = (st.swap_used + jnp.sum(jnp.where(swap_out, sblk, 0), dtype=i32)
                      - jnp.sum(jnp.where(swap_in, _ceil_div(in_tok, U), 0), dtype=i32))
        at_ts = jnp.arange(params.cache.capacity_blocks.shape[-1]) == ts
        slot_sw1 = jnp.where(swap_out, computed, jnp.where(admit, 0, sw_prev))
    computed = computed + jnp.where(admit, start, 0)  # an admitted hit starts at c = h
    rem = n_known - computed
    sched = got > 0
    samples = sched & (computed + got == n_known)
    is_dec = sched & (generated >= 1) & (rem == 1)
    if spec:  # §9: j drafts scheduled; a row with drafts is costed as a prefill of 1 + j
        spec_row = run_sched & decoding & sched  # (a row the budget did not reach: none)
        drafts = jnp.where(spec_row, got - 1, 0)
        samples = samples | spec_row
        is_dec = is_dec & (drafts == 0)
        n_sampled = jnp.sum(samples, dtype=i32) + jnp.sum(drafts, dtype=i32)
    else:
        n_sampled = jnp.sum(samples, dtype=i32)
    is_pre = sched & ~is_dec
    feats = _batch_features(got, computed, sched, n_sampled, is_pre, is_dec)

    # ---- 7a. retire (counts; times are stamped after the clock advances) --------------
    q_prev = jnp.where(window, -1.0, st.slot_queue_s)  # < 0: never admitted yet
    first_adm = admit & (q_prev < 0)
    computed_q = jnp.where(victim, 0, computed + got)  # held during the iteration
    if spec:  # §9: a of the j drafts are accepted, by the lane's accumulator
        unit = 1 << 16
        acc = (jnp.where(window, 0, st.slot_spec_acc)
               + jnp.where(spec_row, params.spec.accept_units[drafts], 0))
        accepted = jnp.where(spec_row, acc >> 16, 0)
        acc1 = acc - accepted * unit
        computed1 = computed_q - drafts + accepted
        generated1 = generated + samples.astype(i32) + accepted
    else:
        computed1 = computed_q
        generated1 = generated + samples.astype(i32)
    finished = (samples & (generated1 == output)) | ghost
    extra_gpu = None
    if shape.spec_draft:  # §9: a drafter's GPU time, a pass over the batch, K - 1 steps
        extra_gpu = _draft_time(params, draft, K, feats,
                                *_draft_batch(samples & ~finished, computed1))
    dt_dd = costmodel.iteration_time_from_consts(consts, feats, overlapped, extra_gpu)

    # ---- §5.5/§5.6 cache update and transfer time ----------------------------------------
    if cache_on:
        cu = prefix.update(
            st, params, pconsts, U, st.iterations,
            enable & active & (feats.tokens > 0), ids, ent, etier, hit_blocks, admit,
            first_adm, ((row < m_eff) | admit) & ~ghost, finished, computed1, total_blocks,
            bs,
            jnp.where(at_ts, in_bytes * tok_bytes, 0.0),
            jnp.where(at_ts, out_bytes * tok_bytes, 0.0), jnp.where(at_ts, swap_used1, 0))
        xfer = prefix.transfer_time(params, cu.read_bytes, cu.write_bytes)
        dtc = dt_dd.hi + dt_dd.lo
        exposed = jnp.maximum(xfer - params.cache.load_overlap * dtc, 0.0)
        dt_dd = ddm.add_f(dt_dd, exposed)
    finite = jnp.isfinite(dt_dd.hi) & jnp.isfinite(dt_dd.lo) & (dt_dd.hi >= 0)
    dt = jnp.where(finite, dt_dd.hi, 0.0)
    dt_lo = jnp.where(finite, dt_dd.lo, 0.0)

    # ---- 6. advance -----------------------------------------------------------------
    end_hi, end_lo = dd_add2(clock_hi, clock_lo, dt, dt_lo)

    if cache_on:
        if shape.prefetch:
            # §5.11 prefetch for the first W waiting requests after this iteration (rows
            # in queue order: victims, the old queue front, skipped and unread trace rows)
            waiting1 = ~((row < m_eff) | admit) & ((row < st.n_act) | t_in)
            ready1 = (row < st.n_act) | dd_le(w_arr_hi, w_arr_lo, end_hi, end_lo)
            W = params.cache.admission_window
            pf_on = enable & active & (feats.tokens > 0) & (params.cache.prefetch != 0)
            pf_want = (pf_on & waiting1 & ready1 & (slot_sw1 == 0)
                       & (jnp.cumsum(waiting1, dtype=i32) <= W))
            bound = jnp.maximum(xfer, params.cache.load_overlap * dtc)
            pf = prefix.prefetch(cu, params, pconsts, U, st.iterations, ids,
                                 prompt + generated1, pf_want, bound)
            xfer = prefix.transfer_time(params, pf.read_bytes, cu.write_bytes)
            # the window must be in the table: flag a lane whose next unseen request is
            # needed
            u_idx = st.ptr + (S - st.n_act)
            u_c = jnp.minimum(u_idx, R - 1)
            pf_over = (pf_on & (jnp.sum(waiting1, dtype=i32) < W) & (u_idx < nreq)
                       & dd_le(wl.arrival_hi[u_c], wl.arrival_lo[u_c], end_hi, end_lo))
        else:
            pf = prefix.Prefetch(e_tier=cu.e_tier, e_last=cu.e_last,
                                 read_bytes=cu.read_bytes, count=jnp.int32(0))
            pf_over = jnp.bool_(False)
        hidden = xfer - exposed

    # ---- 7b. retire (times) ----------------------------------------------------------
    arr_hi = jnp.where(window, w_arr_hi, st.slot_arrival_hi)
    arr_lo = jnp.where(window, w_arr_lo, st.slot_arrival_lo)
    req = jnp.where(window, t_idx, st.slot_req)
    queue_s = jnp.where(first_adm, dd_sub(clock_hi, clock_lo, arr_hi, arr_lo), q_prev)
    preempt = jnp.where(window, 0, st.slot_preemptions) + victim.astype(i32)
    tokens = jnp.where(window, 0, st.slot_tokens) + got
    first = samples & (generated == 0)
    first_hi = jnp.where(first, end_hi, jnp.where(window, 0.0, st.slot_first_hi))
    first_lo = jnp.where(first, end_lo, jnp.where(window, 0.0, st.slot_first_lo))
    if cache_on:  # §5.7 TTFT split: exposed transfer time while the request had no token
        load = (jnp.where(window, 0.0, st.slot_load_s)
                + jnp.where(sched & (generated == 0), exposed, 0.0))

    # per-request results, written at the rows of finishing requests only
    out_idx = jnp.where(finished, req, R)  # R is out of range: dropped
    ttft = dd_sub(first_hi, first_lo, arr_hi, arr_lo)
    decode = dd_sub(jnp.where(ghost, ghost_hi, end_hi), jnp.where(ghost, ghost_lo, end_lo),
                    first_hi, first_lo)

    def put(a, v):
        return a.at[out_idx].set(v, mode="drop")

    # ---- 8. account -------------------------------------------------------------------
    in_run1 = kept_rows | admit  # RUN (admitted rows may be out of row order, §5.8)
    used_blocks = jnp.sum(jnp.where(in_run1 & ~ghost,
                                    _floordiv(computed_q + bs - 1, bs, inv_bs), 0), dtype=i32)
    kv_hi, kv_lo = dd_add(st.kv_used_s_hi, st.kv_used_s_lo,
                          used_blocks.astype(jnp.float32) * (dt + dt_lo))
    busy_hi, busy_lo = dd_add2(st.busy_hi, st.busy_lo, dt, dt_lo)
    n_fin = jnp.sum(finished, dtype=i32)
    # finished rows that were running (a ghost row may sit past the preemption cut)
    n_fin_run = jnp.sum(finished & in_run1, dtype=i32) if macro else n_fin

    # ---- compaction: drop finished rows, keep order -----------------------------------
    keep = (row < n_act1) & ~finished
    if pri:  # §10: the window rows not admitted go back to the trace
        keep = ((row < st.n_act) | admit) & ~finished
    if cache_on or pri:
        # running rows kept, then the admitted rows in walk order, then the waiting rows
        # (victims, the old queue front, skipped trace rows) in row order
        run_k = keep & kept_rows
        adm_k = keep & admit
        rest_k = keep & ~kept_rows & ~admit
        n_run_k = jnp.sum(run_k, dtype=i32)
        n_adm_k = jnp.sum(adm_k, dtype=i32)
        adm_rank = (jnp.cumsum(admit_walk & ~finished[perm], dtype=i32) - 1)[inv]
        dest = jnp.where(run_k, jnp.cumsum(run_k, dtype=i32) - 1,
                         jnp.where(adm_k, n_run_k + adm_rank,
                                   jnp.where(rest_k, n_run_k + n_adm_k
                                             + jnp.cumsum(rest_k, dtype=i32) - 1, S)))
    else:
        dest = jnp.where(keep, jnp.cumsum(keep, dtype=i32) - 1, S)
    src = jnp.full((S,), S - 1, i32).at[dest].set(row, mode="drop")

    # One gather per slot field (on CPU, cheaper than packing the fields into one array
    # and gathering its rows: the packing and unpacking cost more than the gathers).
    i_fields = (req, prompt, output, computed1, generated1, preempt, tokens)
    if cache_on:
        i_fields = (*i_fields, slot_sw1)
    if spec:
        i_fields = (*i_fields, acc1)
    f_fields = (arr_hi, arr_lo, first_hi, first_lo, queue_s)
    if cache_on:
        f_fields = (*f_fields, load)
    c_i = [x.astype(i32)[src] for x in i_fields]
    c_f = [x.astype(jnp.float32)[src] for x in f_fields]

    status = st.status
    status = status | jnp.where(q_ok, st_bits.OVERFLOW_SLOTS, 0)
    status = status | jnp.where(finite, 0, st_bits.NONFINITE)

    cache_fields = {}
    if cache_on:
        status = status | jnp.where(cu.overflow, st_bits.OVERFLOW_CACHE, 0)
        status = status | jnp.where(pf_over, st_bits.OVERFLOW_SLOTS, 0)
        prompt_first = jnp.sum(jnp.where(first_adm, prompt, 0), dtype=i32).astype(jnp.float32)
        hit_hi, hit_lo = dd_add(st.hit_tok_hi, st.hit_tok_lo,
                                cu.hit_tokens_first.astype(jnp.float32))
        adm_hi, adm_lo = dd_add(st.adm_tok_hi, st.adm_tok_lo, prompt_first)
        rd_hi, rd_lo = dd_add(st.read_hi, st.read_lo, pf.read_bytes)
        wr_hi, wr_lo = dd_add(st.write_hi, st.write_lo, cu.write_bytes)
        ex_hi, ex_lo = dd_add(st.xfer_exposed_hi, st.xfer_exposed_lo, exposed)
        hd_hi, hd_lo = dd_add(st.xfer_hidden_hi, st.xfer_hidden_lo, hidden)
        cache_fields = dict(
            loc=cu.loc, e_id=cu.e_id, e_tier=pf.e_tier, e_last=pf.e_last,
            e_hits=cu.e_hits, e_depth=cu.e_depth, hit_tok_hi=hit_hi, hit_tok_lo=hit_lo,
            adm_tok_hi=adm_hi, adm_tok_lo=adm_lo, read_hi=rd_hi, read_lo=rd_lo,
            write_hi=wr_hi, write_lo=wr_lo, xfer_exposed_hi=ex_hi,
            xfer_exposed_lo=ex_lo, xfer_hidden_hi=hd_hi, xfer_hidden_lo=hd_lo,
            peak_entries=jnp.maximum(st.peak_entries, cu.entries),
            slot_load_s=c_f[5], load_s=put(st.load_s, load), slot_swapped=c_i[7],
            swap_used=swap_used1,
            swaps_total=st.swaps_total + jnp.sum(swap_out, dtype=i32),
            prefetched_total=st.prefetched_total + pf.count,
        )
    else:
        cache_fields = {k: getattr(st, k) for k in _CACHE_FIELDS}

    return SimState(
        clock_hi=end_hi,
        clock_lo=end_lo,
        start_hi=(jnp.where(feats.tokens > 0, clock_hi, st.start_hi)
                  if shape.async_scheduling else st.start_hi),
        start_lo=(jnp.where(feats.tokens > 0, clock_lo, st.start_lo)
                  if shape.async_scheduling else st.start_lo),
        ptr=st.ptr + new_trace,
        n_run=n_run1 - n_fin_run,
        n_act=n_act1 - n_fin,
        slot_req=c_i[0],
        slot_prompt=c_i[1],
        slot_output=c_i[2],
        slot_computed=c_i[3],
        slot_generated=c_i[4],
        slot_preemptions=c_i[5],
        slot_tokens=c_i[6],
        slot_arrival_hi=c_f[0],
        slot_arrival_lo=c_f[1],
        slot_first_hi=c_f[2],
        slot_first_lo=c_f[3],
        slot_queue_s=c_f[4],
        ttft_s=put(st.ttft_s, ttft),
        decode_s=put(st.decode_s, decode),
        queue_s=put(st.queue_s, queue_s),
        preemptions=put(st.preemptions, preempt),
        tokens_scheduled=put(st.tokens_scheduled, tokens),
        completed=put(st.completed, True),
        iterations=st.iterations + (feats.tokens > 0).astype(i32),
        iter_limit=st.iter_limit,
        steps=st.steps + working.astype(i32),
        busy_hi=busy_hi,
        busy_lo=busy_lo,
        tokens_total=st.tokens_total + feats.tokens,
        preemptions_total=st.preemptions_total + jnp.sum(victim, dtype=i32),
        num_completed=st.num_completed + n_fin,
        kv_used_s_hi=kv_hi,
        kv_used_s_lo=kv_lo,
        kv_peak_blocks=jnp.maximum(st.kv_peak_blocks, used_blocks),
        status=status,
        slot_spec_acc=c_i[-1] if spec else st.slot_spec_acc,
        spec_drafted=(st.spec_drafted + jnp.sum(drafts, dtype=i32)) if spec
        else st.spec_drafted,
        spec_accepted=(st.spec_accepted + jnp.sum(accepted, dtype=i32)) if spec
        else st.spec_accepted,
        cptr=cptr1 if pri else st.cptr,
        **cache_fields,
    )
