"""Metrics computed on device from a lane's final state (definitions: docs/semantics.md §4).

Definitions follow vLLM's serving benchmark: TTFT = first token - arrival; TPOT =
(E2E - TTFT) / (output - 1) over requests with more than one output token; mean ITL =
sum of inter-token gaps / number of gaps. Throughput = completed / (last finish - first
arrival): vLLM's benchmark divides by its run time, from before its first send to the
last completion (about one arrival gap longer at a rate). Percentiles interpolate linearly
between order statistics (numpy's default). Undefined values (e.g. no completed request)
are NaN (vLLM's benchmark prints 0), and the lane's status says why.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxsim import status as st_bits
from jaxsim.params import SimParams
from jaxsim.state import SimState
from jaxsim.types import Array
from jaxsim.workload import Workload

PERCENTILES = (50, 90, 95, 99)
LATENCY_METRICS = ("ttft", "tpot", "e2e", "queue")


def masked_percentiles(x: Array, mask: Array, qs=PERCENTILES) -> dict[int, Array]:
    """Percentiles (whole percents) of ``x[mask]``, linear interpolation as numpy's
    default; NaN when the mask is empty."""
    n = jnp.sum(mask, dtype=jnp.int32)
    v = jnp.sort(jnp.where(mask, x, jnp.inf))
    out = {}
    for q in qs:
        # position q/100 * (n - 1) in exact integer arithmetic (q in whole percent)
        num = int(q) * jnp.maximum(n - 1, 0)
        lo = jnp.clip(num // 100, 0, x.shape[0] - 1)
        hi = jnp.clip(jnp.minimum(lo + 1, n - 1), 0, x.shape[0] - 1)
        frac = (num % 100).astype(jnp.float32) / 100.0
        val = v[lo] + (v[hi] - v[lo]) * frac
        out[q] = jnp.where(n > 0, val, jnp.nan)
    return out


def _masked_mean(x: Array, mask: Array) -> Array:
    n = jnp.sum(mask)
    s = jnp.sum(jnp.where(mask, x, 0.0))
    return jnp.where(n > 0, s / jnp.maximum(n, 1), jnp.nan)


def compute_metrics(params: SimParams, workload: Workload, state: SimState) -> dict:
    """All per-lane metrics from the final state (one lane; vmap for a batch)."""
    st = state
    R = workload.arrival_hi.shape[-1]
    real = jnp.arange(R) < workload.num_requests
    done = st.completed & real
    out_tok = workload.output_tokens.astype(jnp.float32)
    in_tok = workload.prompt_tokens.astype(jnp.float32)
    multi = done & (workload.output_tokens > 1)
    decode_s = st.decode_s
    e2e_s = st.ttft_s + st.decode_s
    tpot = jnp.where(multi, decode_s / jnp.maximum(out_tok - 1.0, 1.0), 0.0)

    m: dict[str, Array] = {}
    series = {"ttft": (st.ttft_s, done), "tpot": (tpot, multi), "e2e": (e2e_s, done),
              "queue": (st.queue_s, done)}
    for name, (x, mask) in series.items():
        m[f"{name}_mean_s"] = _masked_mean(x, mask)
        for q, v in masked_percentiles(x, mask).items():
            m[f"{name}_p{q}_s"] = v
    n_gaps = jnp.sum(jnp.where(multi, out_tok - 1.0, 0.0))
    m["itl_mean_s"] = jnp.where(
        n_gaps > 0, jnp.sum(jnp.where(multi, decode_s, 0.0)) / jnp.maximum(n_gaps, 1.0),
        jnp.nan)

    # duration = last finish - first arrival (arrival 0 is the earliest: sorted)
    rel_arrival = (workload.arrival_hi - workload.arrival_hi[0]) + (
        workload.arrival_lo - workload.arrival_lo[0])
    finish_rel = jnp.where(done, rel_arrival + e2e_s, -jnp.inf)
    duration = jnp.max(finish_rel)
    n_done = jnp.sum(done, dtype=jnp.int32)
    ok_dur = (n_done > 0) & (duration > 0)
    safe_dur = jnp.where(ok_dur, duration, 1.0)

    def rate(x):
        return jnp.where(ok_dur, x / safe_dur, jnp.nan)

    good = done & (st.ttft_s <= params.ttft_slo_s) & (
        (workload.output_tokens <= 1) | (tpot <= params.tpot_slo_s))
    n_good = jnp.sum(good, dtype=jnp.int32)
    m["duration_s"] = jnp.where(n_done > 0, duration, jnp.nan)
    m["throughput_rps"] = rate(n_done.astype(jnp.float32))
    m["input_tps"] = rate(jnp.sum(jnp.where(done, in_tok, 0.0)))
    m["output_tps"] = rate(jnp.sum(jnp.where(done, out_tok, 0.0)))
    m["goodput_rps"] = rate(n_good.astype(jnp.float32))
    m["slo_attainment"] = jnp.where(
        n_done > 0, n_good / jnp.maximum(workload.num_requests, 1), jnp.nan)

    busy = st.busy_hi + st.busy_lo
    blocks = params.scheduler.num_gpu_blocks.astype(jnp.float32)
    kv_int = st.kv_used_s_hi + st.kv_used_s_lo
    m["kv_occupancy_mean"] = jnp.where(
        (busy > 0) & (blocks > 0), kv_int / jnp.where(busy > 0, busy, 1.0)
        / jnp.maximum(blocks, 1.0), jnp.nan)
    m["kv_occupancy_peak"] = jnp.where(
        blocks > 0, st.kv_peak_blocks.astype(jnp.float32) / jnp.maximum(blocks, 1.0),
        jnp.nan)
    m["busy_s"] = busy
    m["completed"] = n_done
    m["num_requests"] = workload.num_requests
    m["preemptions"] = st.preemptions_total
    m["iterations"] = st.iterations
    m["steps"] = st.steps  # step calls while the lane worked; < iterations when skipping
    m["tokens_scheduled"] = st.tokens_total
    m["num_gpu_blocks"] = params.scheduler.num_gpu_blocks

    # prefix cache and tiers (docs/semantics.md §5.7); T = 1 and zeros without them
    adm = st.adm_tok_hi + st.adm_tok_lo
    hits = st.hit_tok_hi + st.hit_tok_lo
    safe_adm = jnp.where(adm > 0, adm, 1.0)
    if st.e_id.shape[-1] == 0:  # prefix caching not compiled in: nothing is ever hit
        m["prefix_hit_rate"] = jnp.where(st.ptr > 0, 0.0, jnp.nan)
    else:
        m["prefix_hit_rate"] = jnp.where(adm > 0, jnp.sum(hits) / safe_adm, jnp.nan)
    for t in range(st.hit_tok_hi.shape[-1]):
        m[f"hit_rate_tier{t}"] = m["prefix_hit_rate"] * 0.0 + hits[t] / safe_adm
        if t > 0:
            m[f"bytes_read_tier{t}"] = st.read_hi[t] + st.read_lo[t]
            m[f"bytes_written_tier{t}"] = st.write_hi[t] + st.write_lo[t]
        m[f"peak_blocks_tier{t}"] = st.peak_entries[t]
    m["swaps"] = st.swaps_total  # §5.10 swap-outs (0 without swap preemption)
    m["prefetched_blocks"] = st.prefetched_total  # §5.11
    # §9 speculative decoding (0 drafted without it)
    m["spec_drafted_tokens"] = st.spec_drafted
    m["spec_accepted_tokens"] = st.spec_accepted
    m["spec_acceptance_rate"] = jnp.where(
        st.spec_drafted > 0,
        st.spec_accepted.astype(jnp.float32) / jnp.maximum(st.spec_drafted, 1), jnp.nan)
    m["xfer_exposed_s"] = st.xfer_exposed_hi + st.xfer_exposed_lo
    m["xfer_hidden_s"] = st.xfer_hidden_hi + st.xfer_hidden_lo
    if st.load_s.shape[-1]:  # §5.7 TTFT split into queueing, load and prefill
        m["ttft_load_mean_s"] = _masked_mean(st.load_s, done)
        m["ttft_load_p99_s"] = masked_percentiles(st.load_s, done, (99,))[99]
        m["ttft_prefill_mean_s"] = _masked_mean(st.ttft_s - st.queue_s - st.load_s, done)
    T = st.hit_tok_hi.shape[-1]
    if T > 1:  # §5.9 energy of the lower tiers' devices
        cp = params.cache
        total = jnp.float32(0.0)
        for t in range(1, T):
            moved = (st.read_hi[t] + st.read_lo[t]) + (st.write_hi[t] + st.write_lo[t])
            e = (cp.static_power_w[t] * m["duration_s"]
                 + cp.energy_pj_per_bit[t] * 8e-12 * moved)
            m[f"energy_j_tier{t}"] = e
            total = total + e
        m["energy_tiers_j"] = total

    L = st.cptr.shape[-1]
    if L > 1:  # docs/semantics.md §10: the statistics of each priority level's requests
        for p in range(L):
            lv = done & (workload.priority == p)
            lv_multi = multi & (workload.priority == p)
            m[f"ttft_mean_s_prio{p}"] = _masked_mean(st.ttft_s, lv)
            for name, x, mask in (("ttft", st.ttft_s, lv), ("tpot", tpot, lv_multi),
                                  ("e2e", e2e_s, lv)):
                pct = masked_percentiles(x, mask, (50, 99))
                m[f"{name}_p50_s_prio{p}"] = pct[50]
                m[f"{name}_p99_s_prio{p}"] = pct[99]
            m[f"queue_mean_s_prio{p}"] = _masked_mean(st.queue_s, lv)
            m[f"completed_prio{p}"] = jnp.sum(lv, dtype=jnp.int32)
            m[f"preemptions_prio{p}"] = jnp.sum(jnp.where(lv, st.preemptions, 0),
                                                dtype=jnp.int32)

    halted = (st.status & st_bits.HALTED_MASK) != 0
    unfinished = (st.ptr < workload.num_requests) | (st.n_act > 0)
    m["status"] = st.status | jnp.where(unfinished & ~halted, st_bits.TRUNCATED, 0)
    return m
