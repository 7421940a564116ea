"""Prefix caching and KV memory tiers inside one engine iteration (one lane).

The contract is docs/semantics.md §5. The cache is a fixed table of K entries (one per
cached block: block id, tier, last use, hits, depth) plus a map from block id to entry
(``U`` ints), so a lookup is a gather and the per-iteration cost depends on S, H, K and
T, never on the trace length. One sort of the K entries by (score, -depth, id) per
iteration gives the eviction order; each tier evicts the first of its members in it.
Swapped KV (§5.10) is not a cache entry but takes room in its tier; prefetch (§5.11)
promotes entries of queued requests' prefixes with a prefix-sum over candidates.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxsim import costmodel, scan
from jaxsim import dd as ddm
from jaxsim.guard import when_needed
from jaxsim.params import SimParams
from jaxsim.types import Array
from jaxsim.workload import Workload

i32 = jnp.int32
f32 = jnp.float32


class PrefixConsts(NamedTuple):
    """Per-lane constants of §5, computed once per run.

    Attributes:
        usable: ``bool[T]`` tier usable for hits (§5.3; tier 0 always).
        block_bytes: ``f32[]`` bytes of one cache block per GPU (Bblk).
        next_tier: ``i32[T]`` where an entry evicted from tier t goes (-1 = dropped).
    """

    usable: Array
    block_bytes: Array
    next_tier: Array


def _prefill_alone(consts: costmodel.CostConsts, x: Array) -> ddm.DD:
    """§3 time of a batch with one prefill request, c = 0, q = x, not sampling."""
    x = jnp.asarray(x, i32)
    xd = costmodel.int_to_dd(x)
    pairs = ddm.mul(xd, costmodel.int_to_dd(x + 1))
    feats = costmodel.BatchFeatures(
        tokens=x, num_seqs=jnp.int32(1), num_sampled=jnp.int32(0), prefill_tokens=x,
        prefill_pairs_x2=pairs, prefill_kv_tokens=xd, num_decodes=jnp.int32(0),
        decode_kv_tokens=costmodel.int_to_dd(jnp.int32(0)),
    )
    return costmodel.iteration_time_from_consts(consts, feats)


def prepare(params: SimParams, workload: Workload,
            consts: costmodel.CostConsts) -> PrefixConsts:
    """§5.3 usable tiers, the block size in bytes and the demotion targets."""
    cp, m = params.cache, params.model
    T = cp.capacity_blocks.shape[-1]
    U = workload.hash_block_tokens
    bblk = (U.astype(f32) * m.num_layers
            * costmodel.kv_bytes_per_token_layer(m, params.scheduler.tp))
    saved = ddm.add(_prefill_alone(consts, U), ddm.neg(_prefill_alone(consts, 1)))
    saved = saved.hi + saved.lo
    link_bw = cp.link_bps[jnp.clip(cp.link_id, 0, T - 1)]
    one = jnp.maximum(cp.latency_s + bblk / cp.read_bps, bblk / link_bw)
    t = jnp.arange(T)
    enabled = (cp.capacity_blocks > 0) & (t > 0)
    usable = (t == 0) | (enabled & (one <= saved))
    # next enabled tier strictly below t (or -1)
    later = enabled[None, :] & (t[None, :] > t[:, None])
    first = jnp.argmax(later, axis=1)
    next_tier = jnp.where(jnp.any(later, axis=1), first, -1).astype(i32)
    return PrefixConsts(usable=usable, block_bytes=bblk, next_tier=next_tier)


def lookup(st, pc: PrefixConsts, ids: Array, n_known: Array, U: Array):
    """Longest usable cached prefix (§5.4) of rows of block ids.

    Args:
        st: the state (``loc``, ``e_tier``).
        ids: ``i32[..., H]`` block ids (-1 pads).
        n_known: ``i32[...]`` tokens known to the engine.

    Returns:
        (hit_blocks ``i32[...]``, entry ``i32[..., H]`` (-1: none), tier ``i32[..., H]``).
    """
    H = ids.shape[-1]
    has = ids >= 0
    e = jnp.where(has, st.loc[jnp.maximum(ids, 0)], -1)
    tier = jnp.where(e >= 0, st.e_tier[jnp.maximum(e, 0)], -1)
    ok = (e >= 0) & pc.usable[jnp.maximum(tier, 0)]
    nh = jnp.sum(has, axis=-1, dtype=i32)
    kmax = jnp.minimum(nh, jnp.maximum(n_known - 1, 0) // U)
    j = jnp.arange(H, dtype=i32).reshape((1,) * (ids.ndim - 1) + (H,))
    ok = ok & (j < kmax[..., None])
    hit_blocks = jnp.sum(jnp.cumprod(ok.astype(i32), axis=-1), axis=-1, dtype=i32)
    return hit_blocks, e, tier


def exact_terms(w: Array, x: Array) -> tuple[Array, Array, Array, Array]:
    """Four float32 numbers, each exact, whose sum is ``w * x`` exactly, for a float32
    ``w >= 0`` and an int32 ``x`` with ``|x| < 2**24``: the products of 12-bit halves,
    split by bit masks. No multiply-add fused by the compiler can round them, so a sum
    of them is the same on every backend."""
    wh = jax.lax.bitcast_convert_type(jax.lax.bitcast_convert_type(w, i32) & jnp.int32(-4096),
                                      f32)
    wl = w - wh  # exact: the low 12 bits of w's significand
    xh = (x & jnp.int32(-4096)).astype(f32)
    xl = (x & 4095).astype(f32)
    return wh * xh, wh * xl, wl * xh, wl * xl


def exact_key(first: Array, terms: list[tuple[Array, int]]) -> tuple[Array, Array]:
    """``first + Σ sign · w · x`` as a normalised double-float (hi, lo) summed from the
    exact terms of :func:`exact_terms`, to sort by: equal real values give equal keys
    (and -0.0 is made 0.0, which a sort would put first)."""
    acc = ddm.dd(first)
    for (w, x), sign in terms:
        for t in exact_terms(w, x):
            acc = ddm.add_f(acc, t if sign > 0 else -t)
    return jnp.where(acc.hi == 0, 0.0, acc.hi), jnp.where(acc.lo == 0, 0.0, acc.lo)


def _eviction_order(e_id, e_last, e_hits, e_depth, w_recency, w_frequency, w_depth
                    ) -> Array:
    """Permutation of the table rows in eviction order (§5.2). The score does not
    depend on the tier, so one sort serves every tier: the order restricted to any set
    of entries is that set's eviction order. Scores are compared as real numbers (to a
    double-float's ~48 bits), so equal scores tie whatever the weights' rounding."""
    K = e_id.shape[0]
    hi, lo = exact_key(jnp.zeros((K,), f32), [
        ((w_recency, e_last), 1), ((w_frequency, e_hits), 1), ((w_depth, e_depth), -1)])
    idx = jnp.arange(K, dtype=i32)
    *_, perm = jax.lax.sort((hi, lo, -e_depth, e_id, idx), num_keys=4)
    return perm


def _evict(perm, member, n_ev):
    """Mask of the ``n_ev`` members first in the eviction order ``perm``."""
    m_sorted = member[perm]
    first = m_sorted & (scan.cumsum(m_sorted) <= n_ev)
    return jnp.zeros_like(member).at[perm].set(first)


class CacheUpdate(NamedTuple):
    loc: Array
    e_id: Array
    e_tier: Array
    e_last: Array
    e_hits: Array
    e_depth: Array
    read_bytes: Array  # f32[T]
    write_bytes: Array  # f32[T]
    hit_tokens_first: Array  # i32[T] (first admissions only)
    entries: Array  # i32[T] entries per tier after the update
    overflow: Array  # bool[]
    room: Array  # i32[] cap_0 minus unpinned tier-0 entries after step 5 (§5.11)


def update(st, params: SimParams, pc: PrefixConsts, U: Array, it: Array, live: Array,
           ids: Array, ent: Array, tier0: Array, hit_blocks: Array, admit: Array,
           first_admit: Array, run_after: Array, finished: Array, computed1: Array,
           num_gpu_blocks: Array, block_size: Array, swap_read: Array, swap_write: Array,
           swap_held: Array) -> CacheUpdate:
    """§5.5: hits, touch, pinning, the HBM limit and demotion (one lane).

    ``swap_read``/``swap_write`` (``f32[T]``) are this iteration's swap bytes and
    ``swap_held`` (``i32[T]``) the blocks swapped requests hold in each tier after it
    (§5.10); they are not cache entries but take tier space.
    """
    cp = params.cache
    T = cp.capacity_blocks.shape[-1]
    K = st.e_id.shape[0]
    Uh = st.loc.shape[0]
    S, H = ids.shape
    j = jnp.arange(H, dtype=i32)[None, :]
    tiers = jnp.arange(T, dtype=i32)

    # 1. hits
    hb = live & admit[:, None] & (j < hit_blocks[:, None])
    e_hits = st.e_hits.at[jnp.where(hb, ent, K)].add(1, mode="drop")
    onehot = (tier0[..., None] == tiers[None, None, :]) & hb[..., None]  # [S, H, T]
    per_tier = jnp.sum(onehot, axis=(0, 1), dtype=i32)
    read_bytes = jnp.where(tiers > 0, per_tier.astype(f32) * pc.block_bytes, 0.0) + swap_read
    first_hits = jnp.sum(onehot & first_admit[:, None, None], axis=(0, 1), dtype=i32) * U

    # 2. touch (create missing entries, move to HBM, last = it)
    nh = jnp.sum(ids >= 0, axis=-1, dtype=i32)
    done_blocks = jnp.minimum(nh, computed1 // U)
    touch = live & run_after[:, None] & (j < done_blocks[:, None])
    fid = ids.reshape(-1)
    fent = ent.reshape(-1)
    ftouch = touch.reshape(-1)
    fj = jnp.broadcast_to(j, (S, H)).reshape(-1)
    fnew = ftouch & (fent < 0)
    # One winner per new id: every position claiming id x writes -2-p into loc[x] with a
    # scatter-min (in place on the map, O(S*H), never O(U)); the largest p wins.
    p = jnp.arange(S * H, dtype=i32)
    loc = st.loc.at[jnp.where(fnew, fid, Uh)].min(-2 - p, mode="drop")
    winner = fnew & (loc[jnp.maximum(fid, 0)] == -2 - p)
    rank = scan.cumsum(winner) - 1
    efree = st.e_id < 0
    free_rank = scan.cumsum(efree) - 1
    free_pos = jnp.full((K,), K, i32).at[jnp.where(efree, free_rank, K)].set(
        jnp.arange(K, dtype=i32), mode="drop")
    n_free = jnp.sum(efree, dtype=i32)
    got_row = winner & (rank < n_free)
    new_e = jnp.where(got_row, free_pos[jnp.clip(rank, 0, K - 1)], K)
    overflow = jnp.any(winner & ~got_row)
    # every claimed id has a winner: its row, or -1 when the table is full
    loc = loc.at[jnp.where(winner, fid, Uh)].set(jnp.where(got_row, new_e, -1), mode="drop")
    e_id = st.e_id.at[new_e].set(fid, mode="drop")
    e_hits = e_hits.at[new_e].set(1, mode="drop")
    e_depth = st.e_depth.at[new_e].set(jnp.iinfo(i32).max, mode="drop")
    e2 = jnp.where(ftouch, loc[jnp.maximum(fid, 0)], -1)
    tgt = jnp.where(ftouch & (e2 >= 0), e2, K)
    e_depth = e_depth.at[jnp.where(fnew, tgt, K)].min(fj, mode="drop")
    e_tier = st.e_tier.at[tgt].set(0, mode="drop")
    e_last = st.e_last.at[tgt].set(it, mode="drop")

    # 3. pinned
    fpin = ftouch & jnp.repeat(~finished, H)
    pinned = jnp.zeros((K,), jnp.bool_).at[jnp.where(fpin, tgt, K)].set(True, mode="drop")

    # 4. HBM limit
    held = jnp.where(run_after & ~finished, (computed1 + block_size - 1) // block_size, 0)
    free = jnp.maximum(num_gpu_blocks - jnp.sum(held, dtype=i32), 0)
    cap0 = (free // U) * block_size + ((free % U) * block_size) // U
    write_bytes = swap_write
    valid = e_id >= 0
    member = valid & (e_tier == 0) & ~pinned
    n_ev = jnp.where(live, jnp.maximum(jnp.sum(member, dtype=i32) - cap0, 0), 0)
    # The eviction order is needed only where some tier evicts: tier 0 over its limit,
    # or a lower tier already over (demotions only add to the tiers below one that
    # evicts). A batch sorts only in a step where one of its lanes evicts.
    lower_over = jnp.bool_(False)
    for t in range(1, T):
        lower_over = lower_over | (
            jnp.sum((e_id >= 0) & (e_tier == t), dtype=i32)
            > cp.capacity_blocks[t] - swap_held[t])
    perm = when_needed((n_ev > 0) | lower_over, _eviction_order,
                       (e_id, e_last, e_hits, e_depth, cp.w_recency, cp.w_frequency,
                        cp.w_depth), jnp.arange(K, dtype=i32))
    ev = _evict(perm, member, n_ev)

    def demote(ev, src, e_id, e_tier, loc, write_bytes):
        dest = pc.next_tier[src]
        e_tier = jnp.where(ev & (dest >= 0), dest, e_tier)
        drop = ev & (dest < 0)
        loc = loc.at[jnp.where(drop, e_id, Uh)].set(-1, mode="drop")
        e_id = jnp.where(drop, -1, e_id)
        n = jnp.sum(ev, dtype=i32)
        write_bytes = write_bytes.at[jnp.maximum(dest, 0)].add(
            jnp.where(dest >= 0, n.astype(f32) * pc.block_bytes, 0.0))
        return e_id, e_tier, loc, write_bytes

    e_id, e_tier, loc, write_bytes = demote(ev, 0, e_id, e_tier, loc, write_bytes)
    # 5. cascade down the lower tiers
    for t in range(1, T):
        member = (e_id >= 0) & (e_tier == t)
        n_ev = jnp.maximum(jnp.sum(member, dtype=i32)
                           - (cp.capacity_blocks[t] - swap_held[t]), 0)
        ev = _evict(perm, member, n_ev)
        e_id, e_tier, loc, write_bytes = demote(ev, t, e_id, e_tier, loc, write_bytes)

    entries = jnp.sum((e_tier[:, None] == tiers[None, :]) & (e_id >= 0)[:, None], axis=0,
                      dtype=i32)
    unpinned0 = jnp.sum((e_id >= 0) & (e_tier == 0) & ~pinned, dtype=i32)
    return CacheUpdate(loc=loc, e_id=e_id, e_tier=e_tier, e_last=e_last, e_hits=e_hits,
                       e_depth=e_depth, read_bytes=read_bytes, write_bytes=write_bytes,
                       hit_tokens_first=first_hits, entries=entries, overflow=overflow,
                       room=jnp.maximum(cap0 - unpinned0, 0))


class Prefetch(NamedTuple):
    e_tier: Array
    e_last: Array
    read_bytes: Array  # f32[T] the iteration's reads, prefetch included
    count: Array  # i32[] blocks prefetched


def prefetch(cu: CacheUpdate, params: SimParams, pc: PrefixConsts, U: Array, it: Array,
             ids: Array, n_known: Array, want: Array, bound: Array) -> Prefetch:
    """§5.11: move the lower-tier blocks of the queued requests' cached prefixes to HBM.

    Args:
        ids: ``i32[S, H]`` block ids of the slot rows (-1 pads).
        n_known: ``i32[S]`` tokens known to the engine.
        want: ``bool[S]`` prefetch requests (rows are in queue order).
        bound: ``f32[]`` the largest transfer time that leaves the iteration's exposed
            time unchanged, ``max(x, f * dtc)``.
    """
    cp = params.cache
    T = cp.capacity_blocks.shape[-1]
    K = cu.e_id.shape[0]
    S, H = ids.shape
    if S * H == 0:  # a workload without block ids: nothing is cached, nothing to move
        return Prefetch(e_tier=cu.e_tier, e_last=cu.e_last, read_bytes=cu.read_bytes,
                        count=jnp.int32(0))
    has = ids >= 0
    e = jnp.where(has, cu.loc[jnp.maximum(ids, 0)], -1)
    tier = jnp.where(e >= 0, cu.e_tier[jnp.maximum(e, 0)], -1)
    nh = jnp.sum(has, axis=-1, dtype=i32)
    kmax = jnp.minimum(nh, jnp.maximum(n_known - 1, 0) // U)
    j = jnp.arange(H, dtype=i32)[None, :]
    in_prefix = jnp.cumprod(((e >= 0) & (j < kmax[:, None])).astype(i32), axis=-1) > 0
    fc = (want[:, None] & in_prefix & (tier >= 1)).reshape(-1)  # (p, j) order
    fe = e.reshape(-1)
    ft = tier.reshape(-1)
    n = S * H
    idx = jnp.arange(n, dtype=i32)
    first = jnp.full((K,), n, i32).at[jnp.where(fc, fe, K)].min(idx, mode="drop")
    fc = fc & (first[jnp.maximum(fe, 0)] == idx)
    tiers = jnp.arange(T, dtype=i32)
    cnt_t = scan.cumsum((ft[:, None] == tiers[None, :]) & fc[:, None], axis=0)
    rd = cu.read_bytes[None, :] + cnt_t.astype(f32) * pc.block_bytes  # [n, T]
    x_n = transfer_time(params, rd, cu.write_bytes[None, :])  # [n]
    cnt = jnp.sum(cnt_t, axis=-1)
    bad = fc & ~((cnt <= cu.room) & (x_n <= bound))
    # x(n) and the count never decrease: the candidates before the first failure
    first_bad = jnp.where(jnp.any(bad), jnp.argmax(bad), n)
    take = fc & (idx < first_bad)
    tgt = jnp.where(take, fe, K)
    taken_t = jnp.sum((ft[:, None] == tiers[None, :]) & take[:, None], axis=0, dtype=i32)
    return Prefetch(
        e_tier=cu.e_tier.at[tgt].set(0, mode="drop"),
        e_last=cu.e_last.at[tgt].set(it, mode="drop"),
        read_bytes=cu.read_bytes + taken_t.astype(f32) * pc.block_bytes,
        count=jnp.sum(take, dtype=i32),
    )


def transfer_time(params: SimParams, read_bytes: Array, write_bytes: Array) -> Array:
    """§5.6 x: the iteration's transfer time (float32 seconds).

    ``read_bytes``/``write_bytes`` are ``f32[..., T]``; leading axes broadcast.
    """
    cp = params.cache
    T = cp.capacity_blocks.shape[-1]
    lead = max(read_bytes.ndim, write_bytes.ndim) - 1
    read_bytes, write_bytes = (jnp.broadcast_to(x, (*x.shape[:-1], T)) for x in
                               (read_bytes, write_bytes))
    per_t = lambda x: x.reshape((1,) * lead + (T,))  # noqa: E731
    tiers = per_t(jnp.arange(T))
    moved = read_bytes + write_bytes
    dev = (read_bytes / per_t(cp.read_bps) + write_bytes / per_t(cp.write_bps)
           + jnp.where(moved > 0, per_t(cp.latency_s), 0.0))
    dev = jnp.where(tiers > 0, dev, 0.0)
    # full duplex: reads into HBM and writes out of it each have the link's bandwidth;
    # link l carries the tiers t >= 1 with link_id[t] == l (T <= 6: a static loop)
    x = jnp.max(dev, axis=-1)
    for link in range(T):
        on = per_t((cp.link_id == link) & (jnp.arange(T) > 0))
        rd = jnp.sum(jnp.where(on, read_bytes, 0.0), axis=-1)
        wr = jnp.sum(jnp.where(on, write_bytes, 0.0), axis=-1)
        x = jnp.maximum(x, jnp.maximum(rd, wr) / cp.link_bps[link])
    return jnp.maximum(x, 0.0)


def table_size(num_gpu_blocks, block_size, max_num_batched_tokens, capacity_blocks,
               hash_block_tokens: int, max_slots: int, max_prefix_blocks: int,
               hash_space: int) -> int:
    """Cache-table rows K that no lane of a batch can outgrow.

    Per lane: HBM holds at most ``num_gpu_blocks * block_size / U`` entries after an
    iteration (pinned blocks are held KV, the rest fit in the free KV), one iteration
    adds at most ``max_num_batched_tokens / U + S`` before the limit is enforced (plus
    up to S*H recomputed ids), and each lower tier holds at most its capacity. No more
    than ``hash_space`` distinct ids exist. Rounded up to a multiple of 256 so nearby
    sweeps share a compiled function.
    """
    import numpy as np

    U = int(hash_block_tokens)
    hbm = np.asarray(num_gpu_blocks, np.int64) * np.asarray(block_size, np.int64) // U + 1
    step = np.asarray(max_num_batched_tokens, np.int64) // U + max_slots + 1
    caps = np.asarray(capacity_blocks, np.int64)
    lower = caps[..., 1:].sum(axis=-1) if caps.ndim and caps.shape[-1] > 1 else 0
    need = int(np.max(hbm + step + lower)) if np.size(hbm) else 1
    need = min(need, int(hash_space))
    return max(256, -(-need // 256) * 256) if need > 0 else 0
