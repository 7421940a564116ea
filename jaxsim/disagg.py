"""Disaggregated prefill and decode (docs/semantics.md §8).

A configuration with ``disaggregation.enabled`` serves its workload on two pools of
instances, as vLLM's disaggregated prefilling does (a proxy in front of prefill
instances with ``max_tokens = 1`` and decode instances, a KV connector between them):

1. **Prefill pool** (``prefill_replicas`` instances behind the configuration's router):
   each request runs there with one output token, so it leaves the pool when its last
   prompt token is computed (prefix caching, its tiers, swap and prefetch apply here).
2. **KV transfer**: its prompt's KV (whole blocks, per GPU) goes to the decode pool over
   the prefill instance's link, one transfer at a time in the order the prefills end:
   ``start = max(prefill end, link free)``, ``arrival = start + bytes / kv_link_gbs +
   kv_link_latency_us``.
3. **Decode pool** (``decode_replicas`` instances behind the same router kind, which
   the proxy applies in the order the prefills end): the request arrives with the KV of
   ``P - 1`` prompt tokens (``Trace.external_tokens``), computes its last prompt token
   (the first output token, vLLM's decode instance samples it itself) and then its
   other output tokens.
   The pool runs without prefix caching.

With a static router the pools do not feed back into each other, so each runs as
ordinary lanes (``jaxsim.replicas``), one pool after the other, and the configuration's
metrics are computed over the whole requests (TTFT from the arrival at the prefill pool
to the first token of the decode pool) by :func:`merge_pools`.
"""

from __future__ import annotations

import copy

import equinox as eqx
import jax
import numpy as np

from jaxsim import replicas
from jaxsim.workload import Trace

#: Per-request fields of the fleet that add up over the two pools (the rest: the decode
#: pool's, or the prefill pool's for the prefix cache's own).
_ADD = ("queue_s", "preemptions", "tokens_scheduled")


def prefill_config(cfg: dict) -> dict:
    """One configuration's prefill pool (a validated configuration)."""
    dg = cfg["disaggregation"]
    return {**cfg, "num_replicas": dg["prefill_replicas"],
            "disaggregation": {**dg, "enabled": False}}


def decode_config(cfg: dict) -> dict:
    """One configuration's decode pool: no prefix caching (nor its tiers, swap or
    prefetch)."""
    from jaxsim.config import DEFAULTS

    dg = cfg["disaggregation"]
    return {**cfg, "num_replicas": dg["decode_replicas"],
            "disaggregation": {**dg, "enabled": False},
            "enable_prefix_caching": False, "tiers": [], "tier": {},
            "preemption_mode": "recompute", "cache": copy.deepcopy(DEFAULTS["cache"])}


def prefill_trace(trace: Trace) -> Trace:
    """The requests as the prefill pool sees them: one output token each."""
    o = trace.order()
    t = trace._take(o)
    t.output_tokens = np.ones(len(t), np.int64)
    t.name = f"{trace.name} (prefill pool)"
    t.whole_max_len = trace.max_len()  # max_model_len is the deployment's
    return t


#: Prefill ends (seconds from the first arrival) closer than this fraction are one
#: iteration's: four times float32's half-ulp, the rounding of a stored TTFT.
TIE_REL = 2.4e-7


def transfer(end_s: np.ndarray, replica: np.ndarray, prompt: np.ndarray, block_size: int,
             kv_bytes_per_token: float, link_gbs: float, latency_us: float) -> np.ndarray:
    """Arrival time at the decode pool of each request (NaN where ``end_s``, its prefill
    end in seconds from the workload's first arrival, is NaN):
    each prefill replica's link carries one transfer at a time, in the order the
    prefills end (ties: request order), of ``ceil(P / block_size)`` blocks' KV per GPU."""
    n = len(end_s)
    out = np.full(n, np.nan)
    nbytes = -(-prompt.astype(np.int64) // block_size) * block_size * float(kv_bytes_per_token)
    dur = nbytes / (float(link_gbs) * 1e9)
    lat = float(latency_us) * 1e-6
    done = np.isfinite(end_s)
    for k in np.unique(replica[done]):
        # prefills that ended in the same iteration go in request order: an end is an
        # arrival plus a float32 TTFT, so ends closer than its rounding are one
        idx = end_order(np.where(replica == k, end_s, np.nan))
        free = -np.inf
        for i in idx:
            start = max(end_s[i], free)
            free = start + dur[i]
            out[i] = free + lat
    return out


def end_order(end_s: np.ndarray) -> np.ndarray:
    """Requests whose prefill ended (finite ``end_s``, seconds from the first arrival,
    indexed in arrival order) in order of prefill end; ends within ``TIE_REL`` of each
    other (one iteration's, across instances too) in arrival order."""
    idx = np.flatnonzero(np.isfinite(end_s))
    if idx.size == 0:
        return idx
    idx = idx[np.argsort(end_s[idx], kind="stable")]
    e = end_s[idx]
    group = np.concatenate([[0], np.cumsum(np.diff(e) > TIE_REL * np.abs(e[1:]) + 1e-12)])
    return idx[np.lexsort((idx, group))]


def decode_assignment(trace: Trace, end_s: np.ndarray, dec: Trace, pos: np.ndarray,
                      cfg: dict) -> np.ndarray:
    """The decode instance of each request of ``dec`` (the decode pool's trace, whose
    requests are ``trace``'s arrival-order positions ``pos``), in ``dec``'s arrival
    order: the configuration's router over the requests in order of prefill end (the
    proxy picks a decode instance when the prefill instance answers)."""
    o = end_order(end_s)  # arrival-order positions, in the order the router sees them
    seen = trace._take(trace.order()[o], np.arange(len(o), dtype=np.float64))
    by_end = replicas.assign(seen, cfg["disaggregation"]["decode_replicas"], cfg["router"],
                             cfg["seed"])
    rep = np.empty(len(end_s), np.int64)
    rep[o] = by_end
    return rep[pos[dec.order()]]


def decode_trace(trace: Trace, arrival_s: np.ndarray) -> tuple[Trace | None, np.ndarray]:
    """The decode pool's trace (requests in ``trace``'s arrival order whose transfer
    arrived, with arrival times ``arrival_s`` in that order, NaN: none) and the
    arrival-order positions of its requests (in its own input order)."""
    o = trace.order()
    pos = np.flatnonzero(np.isfinite(arrival_s))
    if pos.size == 0:
        return None, pos
    t = trace._take(o[pos], arrival_s[pos])
    t.external_tokens = t.prompt_tokens - 1
    t.name = f"{trace.name} (decode pool)"
    t.whole_max_len = trace.max_len()
    return t, pos


def merge_pools(pre_state, dec_state, pos: np.ndarray, dec_order: np.ndarray,
                delay_s: np.ndarray):
    """The whole configuration's state (numpy, one configuration) from its pools'.

    ``pre_state`` and ``dec_state`` are the pools' fleet states (``jaxsim.replicas``;
    ``dec_state`` None when no request reached the decode pool). Decode-pool row ``j``
    is request ``pos[dec_order[j]]`` of the whole trace (arrival order); ``delay_s`` is,
    per request of the whole trace, its decode-pool arrival minus its arrival.
    Per-request: TTFT = delay + the decode pool's TTFT, decode time the decode pool's,
    queueing, preemptions and scheduled tokens the sum of both pools', completed when
    the decode pool completed it; totals and peaks as ``jaxsim.replicas`` merges
    replicas (over the two pools; the prefix cache's are the prefill pool's).
    """
    pre = jax.tree.map(np.asarray, pre_state)
    R = pre.ttft_s.shape[-1]
    new = {}
    ttft = np.full(R, np.nan, np.float32)
    dec = np.full(R, np.nan, np.float32)
    done = np.zeros(R, bool)
    adds = {f: np.asarray(getattr(pre, f)).copy() for f in _ADD}
    if dec_state is not None:
        d = jax.tree.map(np.asarray, dec_state)
        rows = pos[dec_order]
        n = len(rows)
        ttft[rows] = (delay_s[rows] + d.ttft_s[:n].astype(np.float64)).astype(np.float32)
        dec[rows] = d.decode_s[:n]
        done[rows] = d.completed[:n]
        for f in _ADD:
            a = adds[f]
            a[rows] = a[rows] + getattr(d, f)[:n]
    new["ttft_s"], new["decode_s"], new["completed"] = ttft, dec, done
    new.update(adds)
    pools = [pre] if dec_state is None else [pre, d]
    for f in replicas.SUM_INT:
        if f in ("swap_used", "swaps_total", "prefetched_total", "cptr"):
            continue  # the prefill pool's (no cache in the decode pool; no §10)
        if f == "num_completed":  # a request completes in the decode pool
            new[f] = np.int32(done.sum())
            continue
        tot = sum(np.int64(getattr(s, f)) for s in pools)
        new[f] = np.int32(min(tot, np.iinfo(np.int32).max))
    for f in replicas.SUM_DD:
        if f not in ("busy", "kv_used_s"):
            continue
        tot = sum(np.float64(getattr(s, f + "_hi")) + np.float64(getattr(s, f + "_lo"))
                  for s in pools)
        new[f + "_hi"] = np.float32(tot)
        new[f + "_lo"] = np.float32(tot - np.float64(np.float32(tot)))
    for f in ("kv_peak_blocks", "iter_limit"):
        new[f] = max(getattr(s, f) for s in pools)
    new["status"] = np.bitwise_or.reduce([s.status for s in pools])
    # every request is read and none is in flight unless one did not complete: §4's
    # truncation rule then sees an unfinished deployment (not halted: TRUNCATED)
    new["ptr"], new["n_act"] = np.int32(done.sum()), np.int32(0)
    names = list(new)
    return eqx.tree_at(lambda s: [getattr(s, n) for n in names], pre,
                       [np.asarray(new[n], np.asarray(getattr(pre, n)).dtype) for n in names])
