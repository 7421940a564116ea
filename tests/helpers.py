"""Shared helpers for the tests: building lanes and converting them for the oracle."""

from __future__ import annotations

import functools

import jax
import numpy as np

from jaxsim import config as config_mod
from jaxsim import params as P
from jaxsim.workload import Trace

SCHED_INT_FIELDS = (
    "max_num_seqs", "max_num_batched_tokens", "long_prefill_token_threshold",
    "block_size", "num_gpu_blocks", "watermark_blocks", "max_model_len", "tp",
)
MODEL_FIELDS = (
    "num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "ffn_size",
    "vocab_size", "num_experts", "experts_per_token", "bytes_per_weight", "bytes_per_kv",
    "bytes_per_lm_head_weight", *P.MODEL_EXTRA_FIELDS,
)


#: Compiled once (a new lambda per call would compile once per lane).
_cost_values = jax.jit(lambda c: c.values())


@functools.partial(jax.jit, static_argnums=0)
def _step(shape, params, wl, st):
    from jaxsim.step import step

    return step(shape, params, wl, st)


def step_states(shape, params, wl, n: int) -> list:
    """States of one lane after each of n steps (index 0 = initial state). Asynchronous
    scheduling and speculative decoding are compiled in when the lane asks for them, as
    ``simulate_batch`` does."""
    import dataclasses

    import jax.numpy as jnp

    from jaxsim.state import init_state

    if int(params.scheduler.async_scheduling):
        shape = dataclasses.replace(shape, async_scheduling=True)
    if params.spec is not None and int(params.spec.num_tokens) > 0:
        shape = dataclasses.replace(shape, speculative=True,
                                    spec_draft=bool(int(params.spec.has_draft)))

    st = init_state(shape, params, wl, jnp.int32(10**6))
    out = [st]
    for _ in range(n):
        st = _step(shape, params, wl, st)
        out.append(st)
    return out


def lane_params(cfg: dict, trace: Trace) -> P.SimParams:
    """SimParams (no lane axis) for one partial configuration dict and a trace."""
    full = config_mod.validate(cfg)
    cols = config_mod.columns_from_configs([full])
    params, _ = config_mod.params_from_columns(cols, trace.max_len())
    return P.index(params, 0)


def oracle_config(params: P.SimParams) -> dict:
    """Flat oracle configuration of one lane, with the exact float32 values JAX uses."""
    sp = params.scheduler
    cfg = {k: int(getattr(sp, k)) for k in SCHED_INT_FIELDS}
    cfg["mode"] = "v0" if int(sp.mode) == 1 else "v1"
    cfg["enable_chunked_prefill"] = bool(int(sp.enable_chunked_prefill))
    cfg["reserve_full_isl"] = bool(int(sp.reserve_full_isl))
    cfg["async_scheduling"] = bool(int(sp.async_scheduling))
    if int(sp.scheduling_policy):  # §10
        cfg["scheduling_policy"] = "priority"
    for k in MODEL_FIELDS:
        if getattr(params.model, k) is None:  # an optional field of a plain model
            continue
        v = float(getattr(params.model, k))
        cfg[k] = v if k.startswith("bytes_per") else int(v)
    cfg["peak_flops"] = float(params.hardware.peak_flops)
    cfg["peak_flops_16bit"] = float(params.hardware.peak_flops_16bit)
    cfg["hbm_bw"] = float(params.hardware.hbm_bw_bytes_per_s)
    cfg["link_bw"] = float(params.hardware.link_bw_bytes_per_s)
    values = _cost_values(params.cost)
    for k, v in values.items():
        cfg[k] = float(v)
    cfg["smooth_p"] = float(2 ** int(params.cost.smooth_p_log2))
    corr = np.asarray(params.cost.shape_corr, np.float64)
    if corr.shape[-1] > 0:
        from jaxsim.shapecorr import CORR_OPS

        cfg["shape_corr"] = {op: corr[c] for c, op in enumerate(CORR_OPS) if np.any(corr[c])}
    cfg["ttft_slo_s"] = float(params.ttft_slo_s)
    cfg["tpot_slo_s"] = float(params.tpot_slo_s)
    spec = params.spec
    if spec is not None and int(spec.num_tokens) > 0:  # §9
        k = int(spec.num_tokens)
        cfg["spec_tokens"] = k
        cfg["spec_accept_units"] = [int(x) for x in np.asarray(spec.accept_units)[:k + 1]]
        if int(spec.has_draft):
            draft = {}
            for f in MODEL_FIELDS:
                if getattr(spec.draft, f) is None:
                    continue
                v = float(getattr(spec.draft, f))
                draft[f] = v if f.startswith("bytes_per") else int(v)
            cfg["spec_draft"] = draft
    return cfg


def oracle_workload(trace: Trace) -> dict:
    out = {
        "arrival_s": np.asarray(trace.arrival_s, np.float64),
        "prompt_tokens": np.asarray(trace.prompt_tokens),
        "output_tokens": np.asarray(trace.output_tokens),
    }
    if trace.external_tokens is not None:
        out["external_tokens"] = np.asarray(trace.external_tokens)
    if trace.priority is not None:  # §10
        out["priority"] = np.asarray(trace.priority)
    return out


def scalar_close(a, b, rtol: float, atol: float) -> bool:
    """Two scalars agree (both NaN counts)."""
    a, b = float(a), float(b)
    return (np.isnan(a) and np.isnan(b)) or abs(a - b) <= atol + rtol * abs(b)


def fleet_errors(status: int, m: dict, ref: dict, trace: Trace,
                 rate_keys=("throughput_rps", "output_tps", "goodput_rps")) -> list[str]:
    """Where a configuration's metrics (``m``, one configuration's entries) differ from
    a reference composed of reference-simulator runs (``ref``: its truncation flag,
    totals, §4 metrics and per-request ``finish``): counts exact, latencies to 2e-6
    relative plus 5e-8 of the last finish (float32 clock readings), ``rate_keys`` to
    2e-6 relative."""
    from jaxsim import status as st_bits

    errs = []
    if bool(status & st_bits.TRUNCATED) != ref["truncated"]:
        errs.append(f"truncated {status} vs {ref['truncated']}")
    for key, rkey in (("iterations", "iterations"), ("preemptions", "total_preemptions"),
                      ("tokens_scheduled", "total_tokens"), ("completed", "num_completed")):
        if int(m[key]) != int(ref[rkey]):
            errs.append(f"{key} {m[key]} vs {ref[rkey]}")
    clock = float(np.nanmax(ref["finish"] - trace.arrival_s.min()))
    atol = 1e-9 + 5e-8 * clock
    for key in ("ttft_mean_s", "ttft_p50_s", "ttft_p99_s", "tpot_mean_s", "tpot_p90_s",
                "e2e_p99_s", "queue_mean_s", "itl_mean_s", "duration_s"):
        if not scalar_close(m[key], ref[key], 2e-6, atol):
            errs.append(f"{key} {m[key]!r} vs {ref[key]!r}")
    for key in rate_keys:
        if not scalar_close(m[key], ref[key], 2e-6, 1e-9):
            errs.append(f"{key} {m[key]!r} vs {ref[key]!r}")
    return errs
