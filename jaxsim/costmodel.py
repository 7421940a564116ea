"""Differentiable kernel-time model: the time of one engine iteration.

Each operator is a smoothed roofline,
``smax((F + F0) / (peak * eta_c), (B + B0) / (bw * eta_m)) + kernel_overhead``,
where ``F`` is FLOPs, ``B`` bytes, and ``F0`` / ``B0`` make efficiency a saturating
function of size (``F / (F + F0)``): small GEMMs and short contexts under-use the GPU.
``smax(a, b) = (a^p + b^p)^(1/p)`` is a smooth maximum (``p -> inf`` is the hard
roofline). Families with their own coefficients: projection/MLP GEMMs, prefill
attention, decode attention, elementwise ops (norms, residual adds, activation, rotary,
KV write), and the tensor-parallel all-reduce (``latency + bytes / (link * eta)``, two per
layer). The exact formula is docs/semantics.md §3; the coefficient list is
``jaxsim.params.COST_SPEC``.

Everything here is a pure function of scalars (one lane); gradients with respect to the
coefficients and the hardware figures are exact (no branches on traced values).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from jaxsim.params import CostParams, HardwareParams, ModelParams
from jaxsim.types import Array

ACT_BYTES = 2.0  # activations are BF16


class BatchFeatures(NamedTuple):
    """Aggregate features of one scheduled batch (all float32 scalars).

    Attributes:
        tokens: T, all scheduled tokens.
        num_seqs: n, scheduled requests.
        num_sampled: ns, requests that sample a token this iteration.
        prefill_tokens: Tp, tokens of prefill (non-decode) requests.
        prefill_pairs: Ap, sum of q * (c + (q + 1) / 2) over prefill requests.
        prefill_kv_tokens: Kp, sum of (c + q) over prefill requests.
        num_decodes: D, decode requests.
        decode_kv_tokens: Kd, sum of (c + 1) over decode requests.
    """

    tokens: Array
    num_seqs: Array
    num_sampled: Array
    prefill_tokens: Array
    prefill_pairs: Array
    prefill_kv_tokens: Array
    num_decodes: Array
    decode_kv_tokens: Array


def _pow(x: Array, p: Array) -> Array:
    # x ** p for x >= 0 with finite gradients at x == 0 (double-where, STYLE P7).
    pos = x > 0
    return jnp.where(pos, jnp.exp(p * jnp.log(jnp.where(pos, x, 1.0))), 0.0)


def smooth_max(a: Array, b: Array, p: Array) -> Array:
    """``(a^p + b^p)^(1/p)`` for a, b >= 0, scaled to avoid overflow; 0 when both are 0."""
    m = jnp.maximum(a, b)
    pos = m > 0
    m_safe = jnp.where(pos, m, 1.0)
    s = _pow(a / m_safe, p) + _pow(b / m_safe, p)
    return jnp.where(pos, m_safe * _pow(s, 1.0 / p), 0.0)


def op_times(
    model: ModelParams,
    hw: HardwareParams,
    tp: Array,
    cost: CostParams,
    f: BatchFeatures,
) -> dict[str, Array]:
    """Per-operator times of one iteration, seconds.

    Per-layer entries are for one layer; ``iteration_time`` multiplies them by the layer
    count. Useful for calibration against per-op measurements and for reports.
    """
    c = cost.values()
    p = c["smooth_p"]
    peak, hbm = hw.peak_flops, hw.hbm_bw_bytes_per_s
    k_o = c["kernel_overhead_s"]
    tp_f = tp.astype(jnp.float32)

    def roof(fam: str, flops: Array, nbytes: Array) -> Array:
        t_c = (flops + c[f"f0_{fam}"]) / (peak * c[f"eta_c_{fam}"])
        t_m = (nbytes + c[f"b0_{fam}"]) / (hbm * c[f"eta_m_{fam}"])
        return smooth_max(t_c, t_m, p) + k_o

    def mem(nbytes: Array) -> Array:
        return (nbytes + c["b0_elem"]) / (hbm * c["eta_m_elem"]) + k_o

    def gemm(m: Array, k: Array, n: Array, weight_bytes: Array) -> Array:
        t = roof("gemm", 2.0 * m * k * n, weight_bytes + ACT_BYTES * (m * k + m * n))
        return jnp.where(m > 0, t, 0.0)

    h, hd = model.hidden_size, model.head_dim
    nh_g = model.num_heads / tp_f
    nkv_g = jnp.maximum(model.num_kv_heads / tp_f, 1.0)
    f_g = model.ffn_size / tp_f
    v_g = model.vocab_size / tp_f
    bw_w = model.bytes_per_weight
    kvb = 2.0 * nkv_g * hd * model.bytes_per_kv
    e, k = model.num_experts, model.experts_per_token
    T = f.tokens
    e_act = e * (1.0 - _pow(1.0 - k / e, T))
    qkv_n = (nh_g + 2.0 * nkv_g) * hd

    out = {
        "qkv_proj": gemm(T, h, qkv_n, bw_w * h * qkv_n),
        "o_proj": gemm(T, nh_g * hd, h, bw_w * nh_g * hd * h),
        "mlp_up": gemm(T * k, h, 2.0 * f_g, bw_w * e_act * h * 2.0 * f_g),
        "mlp_down": gemm(T * k, f_g, h, bw_w * e_act * f_g * h),
        "attn_prefill": jnp.where(
            f.prefill_tokens > 0,
            roof(
                "attn_prefill",
                4.0 * nh_g * hd * f.prefill_pairs,
                ACT_BYTES * 2.0 * f.prefill_tokens * nh_g * hd + kvb * f.prefill_kv_tokens,
            ),
            0.0,
        ),
        "attn_decode": jnp.where(
            f.num_decodes > 0,
            roof(
                "attn_decode",
                4.0 * nh_g * hd * f.decode_kv_tokens,
                ACT_BYTES * 2.0 * f.num_decodes * nh_g * hd + kvb * f.decode_kv_tokens,
            ),
            0.0,
        ),
        "norm": 2.0 * mem(2.0 * ACT_BYTES * T * h),
        "residual_add": 2.0 * mem(3.0 * ACT_BYTES * T * h),
        "activation": mem(3.0 * ACT_BYTES * T * k * f_g),
        "rotary": mem(2.0 * ACT_BYTES * T * (nh_g + nkv_g) * hd),
        "kv_write": mem(2.0 * kvb * T),
        "all_reduce": jnp.where(
            tp > 1,
            2.0
            * (
                c["ar_latency_s"]
                + (2.0 * (tp_f - 1.0) / tp_f)
                * ACT_BYTES
                * T
                * h
                / (hw.link_bw_bytes_per_s * c["eta_ar"])
            ),
            0.0,
        ),
        # once per iteration
        "embedding": mem(2.0 * ACT_BYTES * T * h),
        "final_norm": mem(2.0 * ACT_BYTES * T * h),
        "lm_head": gemm(f.num_sampled, h, v_g, bw_w * h * v_g),
        "sampling": jnp.where(f.num_sampled > 0, mem(4.0 * f.num_sampled * model.vocab_size),
                              0.0),
        "cpu": c["cpu_iter_s"] + c["cpu_seq_s"] * f.num_seqs,
    }
    return out


PER_LAYER_OPS = (
    "qkv_proj", "o_proj", "mlp_up", "mlp_down", "attn_prefill", "attn_decode", "norm",
    "residual_add", "activation", "rotary", "kv_write", "all_reduce",
)
PER_ITERATION_OPS = ("embedding", "final_norm", "lm_head", "sampling", "cpu")


def iteration_time(
    model: ModelParams,
    hw: HardwareParams,
    tp: Array,
    cost: CostParams,
    f: BatchFeatures,
) -> Array:
    """Seconds for one iteration with batch features ``f`` (0 when no token is scheduled)."""
    t = op_times(model, hw, tp, cost, f)
    layer = sum(t[name] for name in PER_LAYER_OPS)
    once = sum(t[name] for name in PER_ITERATION_OPS)
    return jnp.where(f.tokens > 0, model.num_layers * layer + once, 0.0)
