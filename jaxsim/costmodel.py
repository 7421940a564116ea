"""Differentiable kernel-time model: the time of one engine iteration.

Each operator is a smoothed roofline,
``smax((F + F0) / (peak * eta_c), (B + B0) / (bw * eta_m)) + kernel_overhead``,
where ``F`` is FLOPs, ``B`` bytes, and ``F0`` / ``B0`` make efficiency a saturating
function of size (``F / (F + F0)``): small GEMMs and short contexts under-use the GPU.
``smax(a, b) = (a^p + b^p)^(1/p)`` is a smooth maximum with ``p = 2^k`` (``k`` in 0..3;
``p -> inf`` would be the hard roofline). Families with their own coefficients:
projection/MLP GEMMs, prefill attention, decode attention, elementwise ops (norms,
residual adds, activation, rotary, KV write), and the tensor-parallel all-reduce
(``latency + bytes / (link * eta)``, two per layer). The exact formula is
docs/semantics.md §3; the coefficient list is ``jaxsim.params.COST_SPEC``.

The arithmetic is double-float (``jaxsim.dd``): the simulated clock sums one iteration
time per step for millions of steps, and float32 rounding of a repeated batch shape
would otherwise bias it. Everything is a pure function of one lane's scalars;
gradients with respect to the coefficients and hardware figures are exact.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsim import dd, shapecorr
from jaxsim.dd import DD
from jaxsim.params import CostParams, HardwareParams, ModelParams
from jaxsim.types import Array

ACT_BYTES = 2.0  # activations are BF16
MAX_SMOOTH_P_LOG2 = 3


class BatchFeatures(NamedTuple):
    """Aggregate features of one scheduled batch, exact.

    Attributes:
        tokens: T, all scheduled tokens (int32).
        num_seqs: n, scheduled requests (int32).
        num_sampled: ns, requests that sample a token this iteration (int32).
        prefill_tokens: Tp, tokens of prefill (non-decode) requests (int32).
        prefill_pairs_x2: 2 * Ap, twice the sum of q * (c + (q + 1) / 2) over prefill
            requests (DD: it can exceed 2**31).
        prefill_kv_tokens: Kp, sum of (c + q) over prefill requests (DD).
        num_decodes: D, decode requests (int32).
        decode_kv_tokens: Kd, sum of (c + 1) over decode requests (DD).
    """

    tokens: Array
    num_seqs: Array
    num_sampled: Array
    prefill_tokens: Array
    prefill_pairs_x2: DD
    prefill_kv_tokens: DD
    num_decodes: Array
    decode_kv_tokens: DD


def int_to_dd(x: Array) -> DD:
    """An int32 value as an exact DD."""
    x = jnp.asarray(x, jnp.int32)
    hi = x.astype(jnp.float32)
    # hi is x rounded to 24 bits; the remainder is small and exact in float32
    rem = x - jnp.clip(hi, -(2.0**31), 2.0**31 - 256).astype(jnp.int32)
    return DD(hi, rem.astype(jnp.float32))


def features_from_floats(**kw) -> BatchFeatures:
    """BatchFeatures from plain numbers (for calibration and tests).

    Takes the field names, with ``prefill_pairs`` (Ap) in place of ``prefill_pairs_x2``;
    missing fields are 0. Large sums are split into exact (hi, lo) float32 pairs.
    """
    big = {"prefill_pairs": "prefill_pairs_x2", "prefill_kv_tokens": "prefill_kv_tokens",
           "decode_kv_tokens": "decode_kv_tokens"}
    out = {}
    for name in BatchFeatures._fields:
        out[name] = jnp.int32(0)
    for src, dst in big.items():
        v = float(kw.pop(src, 0.0)) * (2.0 if src == "prefill_pairs" else 1.0)
        hi = jnp.float32(v)
        out[dst] = DD(hi, jnp.float32(v - float(hi)))
    for k, v in kw.items():
        if k not in out:
            raise KeyError(f"unknown batch feature {k!r}")
        out[k] = jnp.asarray(v, jnp.int32)
    return BatchFeatures(**out)


def _pow2k(x: DD, k: Array) -> DD:
    """x ** (2 ** k) for integer k in [0, MAX_SMOOTH_P_LOG2], by repeated squaring."""
    out = x
    for i in range(MAX_SMOOTH_P_LOG2):
        out = dd.where(k > i, dd.mul(out, out), out)
    return out


def _root2k(x: DD, k: Array) -> DD:
    """x ** (1 / 2 ** k) by repeated square roots."""
    out = x
    for i in range(MAX_SMOOTH_P_LOG2):
        out = dd.where(k > i, dd.sqrt(out), out)
    return out


def smooth_max(a: DD, b: DD, p_log2: Array) -> DD:
    """``(a^p + b^p)^(1/p)`` with ``p = 2**p_log2``, for a, b >= 0 (0 when both are 0).

    Computed as ``M * (1 + (m/M)^p)^(1/p)`` with M = max, m = min (no overflow).
    """
    big = dd.maximum(a, b)
    small = dd.minimum(a, b)
    pos = big.hi > 0
    big_safe = dd.where(pos, big, dd.dd(jnp.ones_like(big.hi)))
    u = dd.div(small, big_safe)
    g = _root2k(dd.add_f(_pow2k(u, p_log2), jnp.float32(1.0)), p_log2)
    out = dd.mul(big_safe, g)
    zero = dd.dd(jnp.zeros_like(big.hi))
    return dd.where(pos, out, zero)


#: Roofline operators (vectorised: one smooth max over all of them) and their family.
ROOF_OPS = ("qkv_proj", "o_proj", "mlp_up", "mlp_down", "lm_head", "attn_prefill",
            "attn_decode")
#: Roofline operators whose FLOP/s peak is the weight dtype's; the LM head and attention
#: run at the 16-bit peak whatever it is.
_WEIGHT_DTYPE_OPS = ("qkv_proj", "o_proj", "mlp_up", "mlp_down")
#: Coefficient group of each elementwise operator (``final_norm`` is a norm).
_MEM_GROUP = ("norm", "residual_add", "activation", "rotary", "kv_write", "embedding",
              "norm", "sampling")
#: Memory-bound elementwise operators, how many of each per layer / iteration, and the
#: coefficient c in bytes = c * count * size (see docs/semantics.md §3).
MEM_OPS = ("norm", "residual_add", "activation", "rotary", "kv_write", "embedding",
           "final_norm", "sampling")
_MEM_MULT = (2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
_MEM_COEF = (2.0 * ACT_BYTES, 3.0 * ACT_BYTES, 3.0 * ACT_BYTES, 2.0 * ACT_BYTES, 2.0,
             2.0 * ACT_BYTES, 2.0 * ACT_BYTES, 4.0)
#: Table row (``shapecorr.CORR_OPS``) of each of ``MEM_OPS`` (by its coefficient group,
#: so ``final_norm`` uses the norm table), and whether it has one (KV write and
#: sampling have none).
_MEM_CORR_ROW = (
    np.asarray([shapecorr.CORR_OPS.index(g) if g in shapecorr.CORR_OPS else 0
                for g in _MEM_GROUP]),
    np.asarray([g in shapecorr.CORR_OPS for g in _MEM_GROUP]),
)
PER_LAYER_OPS = (
    "qkv_proj", "o_proj", "mlp_up", "mlp_down", "attn_prefill", "attn_decode", "norm",
    "residual_add", "activation", "rotary", "kv_write", "all_reduce",
)
PER_ITERATION_OPS = ("embedding", "final_norm", "lm_head", "sampling", "cpu")
#: The per-iteration operators that run on the GPU (all but the CPU overheads).
GPU_ONCE_OPS = PER_ITERATION_OPS[:-1]
_LAYER_OPS_BUT_DECODE = tuple(o for o in PER_LAYER_OPS if o != "attn_decode")
#: Binary digits of the token count used by the exact MoE expert-coverage term
#: (tokens per iteration are validated to be < 2**18).
TOKEN_BITS = 18


def _stack(xs) -> DD:
    return DD(jnp.stack([x.hi for x in xs], axis=-1), jnp.stack([x.lo for x in xs], axis=-1))


def _f32(xs) -> Array:
    return jnp.stack([jnp.asarray(x, jnp.float32) for x in xs], axis=-1)


def _dd_reduce(x: DD, op) -> DD:
    """Reduce over the last axis with a DD operation by a pairwise tree."""
    n = x.hi.shape[-1]
    while n > 1:
        half = n // 2
        a = DD(x.hi[..., :half], x.lo[..., :half])
        b = DD(x.hi[..., half:2 * half], x.lo[..., half:2 * half])
        s = op(a, b)
        if n % 2:
            s = DD(jnp.concatenate([s.hi, x.hi[..., -1:]], -1),
                   jnp.concatenate([s.lo, x.lo[..., -1:]], -1))
        x, n = s, s.hi.shape[-1]
    return DD(x.hi[..., 0], x.lo[..., 0])


def _dd_sum(x: DD) -> DD:
    """Sum over the last axis."""
    return _dd_reduce(x, dd.add)


def _dd_prod(x: DD) -> DD:
    """Product over the last axis."""
    return _dd_reduce(x, dd.mul)


class CostConsts(NamedTuple):
    """Per-lane constants of the cost model (computed once, outside the scan).

    Attributes:
        c: physical coefficient values (``CostParams.values()``).
        p_log2: smooth-max exponent k (p = 2**k).
        roof_inv_c, roof_inv_m: 1 / (peak * eta_c) and 1 / (hbm * eta_m) of each roofline
            operator (DD, [7]); peak is the GEMMs' for the projections and MLP, the
            16-bit one for the LM head and attention.
        roof_f0, roof_b0: F0 and B0 of each roofline operator ([7]).
        roof_kn: K N of the five GEMMs (inner dimension times output width; DD, [5]):
            a GEMM of M rows does 2 M K N FLOPs. MLA's chain of query and KV
            projections: its FLOPs per row over 2 (docs/semantics.md §3).
        roof_ka: K + N of the five GEMMs ([5]): the activations read and written per row
            (MLA's chain: every GEMM's input and output that is not the next one's).
        roof_w: weight bytes per GPU of the five GEMMs (DD, [5]; MLP per activated expert).
        inv_m_elem: 1 / (hbm * eta_m) of each elementwise operator (DD, [8]).
        b0_elem: B0 of each elementwise operator ([8]).
        mem_size: per-operator size factor of the elementwise ops ([8]).
        inv_link: 1 / (link * eta_ar) (DD).
        dims: per-GPU model sizes (float32 scalars).
        miss_pow: ``(1 - k/E) ** (2 ** i)`` for i < TOKEN_BITS (DD, [TOKEN_BITS]) for the
            expected number of experts a batch touches, ``E * (1 - (1 - k/E) ** T)``.
        shape_corr: the per-kernel-shape correction tables (``[C, G]``; G = 0: none).
    """

    c: dict
    p_log2: Array
    roof_inv_c: DD
    roof_inv_m: DD
    roof_f0: Array
    roof_b0: Array
    roof_kn: DD
    roof_ka: Array
    roof_w: DD
    inv_m_elem: DD
    b0_elem: Array
    mem_size: Array
    inv_link: DD
    dims: dict
    miss_pow: DD
    shape_corr: Array


def _prod(*xs) -> DD:
    acc = dd.dd(jnp.asarray(xs[0], jnp.float32))
    for x in xs[1:]:
        acc = dd.mul_f(acc, jnp.asarray(x, jnp.float32))
    return acc


def prepare(model: ModelParams, hw: HardwareParams, tp: Array, cost: CostParams
            ) -> CostConsts:
    """The per-lane constants of the cost model."""
    c = cost.values()
    one = dd.dd(jnp.float32(1.0))

    def inv(x: Array, y: Array) -> DD:
        return dd.div(one, dd.two_prod(x, y))

    peak, hbm = hw.peak_flops, hw.hbm_bw_bytes_per_s
    tp_f = tp.astype(jnp.float32)
    h, hd = model.hidden_size, model.head_dim
    nh_g = model.num_heads / tp_f
    nkv_g = jnp.maximum(model.num_kv_heads / tp_f, 1.0)
    f_g = model.ffn_size / tp_f
    v_g = model.vocab_size / tp_f
    bw_w = model.bytes_per_weight
    kvb = kv_bytes_per_token_layer(model, tp)
    qkv_n = (nh_g + 2.0 * nkv_g) * hd
    if model.mla is None:  # a plain model: none of §3's optional inputs compiled in
        ext = {"qkv_kn": _prod(h, qkv_n), "qkv_ka": h + qkv_n, "up_w": None, "dv": hd,
               "att_p": nh_g * (2.0 * hd), "att_d": nh_g * (2.0 * hd), "up_f": None,
               "kv_p": kvb, "n_rot": (nh_g + nkv_g) * hd, "mix_a": None, "mix_b": None,
               "plain_mix": None, "ke": None}
    else:
        ext = _extended(model, h, hd, nh_g, nkv_g, kvb, qkv_n)
    miss = dd.add_f(dd.neg(dd.div(dd.dd(model.experts_per_token), dd.dd(model.num_experts))),
                    jnp.float32(1.0))
    def square(x, _):
        x = DD(*x)
        return tuple(dd.mul(x, x)), tuple(x)

    _, pows_arr = jax.lax.scan(square, tuple(miss), None, length=TOKEN_BITS)
    dims = {
        "h": h, "hd": hd, "nh_g": nh_g, "nkv_g": nkv_g, "f_g": f_g, "kvb": kvb,
        "e": model.num_experts, "k": model.experts_per_token, "L": model.num_layers,
        "tp": tp, "ar_factor": 2.0 * (tp_f - 1.0) / tp_f,
        **{k: ext[k] for k in ("att_p", "att_d", "up_f", "kv_p", "mix_a", "mix_b",
                               "plain_mix", "ke")},
    }
    qkv_kn, dv, up_w = ext["qkv_kn"], ext["dv"], ext["up_w"]
    # the projection and MLP GEMMs run at the weight dtype's peak; the LM head and
    # attention stay 16-bit under FP8 weights (vLLM quantises linear layers only)
    peak16 = hw.peak_flops_16bit
    peak_op = jnp.stack([peak if op in _WEIGHT_DTYPE_OPS else peak16 for op in ROOF_OPS])
    roof_inv_c = inv(peak_op, _f32([c[f"eta_c_{op}"] for op in ROOF_OPS]))
    roof_inv_m = inv(hbm, _f32([c[f"eta_m_{op}"] for op in ROOF_OPS]))
    roof_f0 = _f32([c[f"f0_{op}"] for op in ROOF_OPS])
    roof_b0 = _f32([c[f"b0_{op}"] for op in ROOF_OPS])
    inv_m_elem = inv(hbm, _f32([c[f"eta_m_{g}"] for g in _MEM_GROUP]))
    b0_elem = _f32([c[f"b0_{g}"] for g in _MEM_GROUP])
    # A non-finite constant (a NaN coefficient, a zero peak or efficiency) makes every
    # operator time NaN through the launch overhead each of them adds: the roofline's
    # smooth maximum would otherwise drop the bad term and keep the other one, an
    # operator faster than any finite parameter makes it, where the lane should halt
    # with ``nonfinite``. Checked once here rather than in every smooth maximum.
    # A negative peak, bandwidth or efficiency (hand-built parameters: the configuration
    # refuses them) is as bad: the smooth maximum would keep the other, positive term.
    finite = jnp.ones(jnp.shape(c["kernel_overhead_s"]), bool)
    for x in (roof_inv_c.hi, roof_inv_c.lo, roof_inv_m.hi, roof_inv_m.lo, roof_f0, roof_b0,
              inv_m_elem.hi, inv_m_elem.lo, b0_elem):
        finite = finite & jnp.all(jnp.isfinite(x), axis=-1)
    for x in (roof_inv_c.hi, roof_inv_m.hi, inv_m_elem.hi):
        finite = finite & jnp.all(x > 0, axis=-1)
    c = {**c, "kernel_overhead_s": jnp.where(finite, c["kernel_overhead_s"], jnp.nan)}
    return CostConsts(
        c=c,
        p_log2=cost.smooth_p_log2,
        roof_inv_c=roof_inv_c,
        roof_inv_m=roof_inv_m,
        roof_f0=roof_f0,
        roof_b0=roof_b0,
        roof_kn=_stack([qkv_kn, _prod(nh_g * dv, h), _prod(h, 2.0 * f_g), _prod(f_g, h),
                        _prod(h, v_g)]),
        roof_ka=_f32([ext["qkv_ka"], nh_g * dv + h, h + 2.0 * f_g, f_g + h, h + v_g]),
        roof_w=_stack([dd.mul_f(qkv_kn, bw_w) if up_w is None
                       else dd.add(dd.mul_f(qkv_kn, bw_w), _prod(bw_w, up_w)),
                       _prod(bw_w, nh_g * dv, h),
                       _prod(bw_w, h, 2.0 * f_g), _prod(bw_w, f_g, h),
                       _prod(model.bytes_per_lm_head_weight, h, v_g)]),
        inv_m_elem=inv_m_elem,
        b0_elem=b0_elem,
        mem_size=_f32([h, h, f_g, ext["n_rot"], kvb, h, h, model.vocab_size]),
        inv_link=inv(hw.link_bw_bytes_per_s, c["eta_ar"]),
        dims=dims,
        miss_pow=DD(pows_arr[0], pows_arr[1]),
        shape_corr=cost.shape_corr,
    )


def _extended(model: ModelParams, h, hd, nh_g, nkv_g, kvb, qkv_n) -> dict:
    """The sizes of docs/semantics.md §3 that its optional inputs change (a lane may be
    plain all the same: every field 0)."""
    # multi-head latent attention: the query and KV down-projections (replicated on
    # every GPU) and up-projections (split by heads) as one GEMM of their FLOPs and
    # weights; the KV up-projection's FLOPs (per context token in prefill, per decode
    # with absorbed weights) are charged to attention
    mla = model.mla > 0
    r_q, r_kv = model.q_lora_rank, model.kv_lora_rank
    d_r, d_v = model.qk_rope_head_dim, model.v_head_dim
    d_n = hd - d_r
    has_q = r_q > 0
    mla_kn = dd.add(dd.where(has_q, dd.add(_prod(h, r_q), _prod(r_q, nh_g, hd)),
                             _prod(h, nh_g, hd)),
                    _prod(h, r_kv + d_r))
    up_w = jnp.where(mla, r_kv * nh_g * (d_n + d_v), 0.0)  # KV up-projection weights
    # layer mix: shared experts and leading dense layers, averaged over the layers
    # (to double-float precision: a = (L - Ld) / L, b = ((L - Ld) s f + Ld fd) / (L f),
    # ke = k a + b; a lane without either keeps k and E_act as they are)
    L, Ld, f = model.num_layers, model.num_dense_layers, model.ffn_size
    mix_a = dd.div(dd.dd(L - Ld), dd.dd(L))
    mix_b = dd.div(dd.add(_prod(L - Ld, model.num_shared_experts, f),
                          _prod(Ld, model.dense_ffn_size)), dd.two_prod(L, f))
    plain_mix = (Ld == 0) & (model.num_shared_experts == 0)
    return {
        "qkv_kn": dd.where(mla, mla_kn, _prod(h, qkv_n)),
        "qkv_ka": jnp.where(mla, h + jnp.where(has_q, r_q, 0.0) + nh_g * hd + r_kv + d_r,
                            h + qkv_n),
        "up_w": up_w,
        "dv": jnp.where(mla, d_v, hd),
        # per-GPU widths: attention's query-key plus value widths over the heads
        # (prefill, decode); the KV up-projection's FLOPs per token; prefill's bytes per
        # context token (the latent, the decompressed keys and values)
        "att_p": nh_g * jnp.where(mla, hd + d_v, 2.0 * hd),
        "att_d": nh_g * jnp.where(mla, 2.0 * r_kv + d_r, 2.0 * hd),
        "up_f": 2.0 * up_w,
        "kv_p": kvb + jnp.where(mla, ACT_BYTES * nh_g * (d_n + d_v), 0.0),
        "n_rot": jnp.where(mla, (nh_g + 1.0) * d_r, (nh_g + nkv_g) * hd),
        "mix_a": mix_a, "mix_b": mix_b, "plain_mix": plain_mix,
        "ke": dd.where(plain_mix, dd.dd(model.experts_per_token),
                       dd.add(dd.mul_f(mix_a, model.experts_per_token), mix_b)),
    }


def kv_bytes_per_token_layer(model: ModelParams, tp: Array) -> Array:
    """``kvb`` of docs/semantics.md §3: KV-cache bytes per token per layer per GPU
    (float32); with MLA the latent and the rotary key, on every GPU."""
    nkv_g = jnp.maximum(model.num_kv_heads / jnp.asarray(tp).astype(jnp.float32), 1.0)
    if model.mla is None:
        return 2.0 * nkv_g * model.head_dim * model.bytes_per_kv
    return jnp.where(model.mla > 0,
                     (model.kv_lora_rank + model.qk_rope_head_dim) * model.bytes_per_kv,
                     2.0 * nkv_g * model.head_dim * model.bytes_per_kv)


def decode_attention_time(k: CostConsts, num_decodes: Array, kv_tokens: DD) -> DD:
    """Time of the decode-attention operator (one layer) for ``num_decodes`` sequences
    whose KV lengths sum to ``kv_tokens``; ``kv_tokens`` may carry extra trailing axes
    (a series of context sums), the arithmetic per element is the same."""
    i = ROOF_OPS.index("attn_decode")
    d = k.dims
    nd = num_decodes.astype(jnp.float32)
    flops = dd.mul_f(kv_tokens, 2.0 * d["att_d"])
    if d["up_f"] is not None:  # (MLA's absorbed KV up-projection, per decode)
        flops = dd.add(flops, dd.two_prod(nd, d["up_f"]))
    nbytes = dd.add(dd.two_prod(nd, ACT_BYTES * d["att_d"]), dd.mul_f(kv_tokens, d["kvb"]))
    t_c = dd.mul(dd.add_f(flops, k.roof_f0[i]), DD(k.roof_inv_c.hi[i], k.roof_inv_c.lo[i]))
    t_m = dd.mul(dd.add_f(nbytes, k.roof_b0[i]), DD(k.roof_inv_m.hi[i], k.roof_inv_m.lo[i]))
    roof = dd.add_f(smooth_max(t_c, t_m, k.p_log2), k.c["kernel_overhead_s"])
    zero = jnp.zeros_like(roof.hi)
    return DD(jnp.where(nd > 0, roof.hi, zero), jnp.where(nd > 0, roof.lo, zero))


def op_times_from_consts(k: CostConsts, f: BatchFeatures) -> dict[str, DD]:
    """Per-operator times of one iteration (seconds, as DD); per-layer ops for one layer."""
    c, d = k.c, k.dims
    k_o = c["kernel_overhead_s"]
    i32, f32 = jnp.int32, jnp.float32
    T = f.tokens
    Tf = T.astype(f32)
    zf = jnp.zeros_like(Tf)
    # expert rows: T k, or T ke with shared experts or dense layers
    Tk = (DD((T * d["k"].astype(i32)).astype(f32), zf) if d["ke"] is None
          else dd.mul_f(d["ke"], Tf))
    ns = f.num_sampled

    # experts touched: E * (1 - (1 - k/E) ** T), by binary exponentiation (exact in DD)
    bits = ((T >> jnp.arange(TOKEN_BITS, dtype=i32)) & 1) == 1
    ones = jnp.ones((TOKEN_BITS,), f32)
    miss_t = _dd_prod(DD(jnp.where(bits, k.miss_pow.hi, ones),
                         jnp.where(bits, k.miss_pow.lo, 0.0 * ones)))
    e_act = dd.mul_f(dd.add_f(dd.neg(miss_t), f32(1.0)), d["e"])
    # experts' weights read per layer (E_act for a plain model; docs/semantics.md §3)
    if d["mix_a"] is not None:
        e_act = dd.where(d["plain_mix"], e_act, dd.add(dd.mul(e_act, d["mix_a"]), d["mix_b"]))

    # --- roofline operators, all at once: [qkv, o, up, down, lm_head, attn_p]; decode
    # attention on its own (decode_attention_time), so an event-skipping macro-step can
    # evaluate it for many context sums with the same arithmetic
    m_dd = DD(jnp.stack([Tf, Tf, Tk.hi, Tk.hi, ns.astype(f32)]),
              jnp.stack([zf, zf, Tk.lo, Tk.lo, zf]))
    m = m_dd.hi
    g_flops = dd.mul(dd.mul_f(m_dd, 2.0), k.roof_kn)
    weights = dd.mul(k.roof_w, DD(
        jnp.stack([f32(1), f32(1), e_act.hi, e_act.hi, f32(1)]),
        jnp.stack([f32(0), f32(0), e_act.lo, e_act.lo, f32(0)])))
    g_bytes = dd.add(weights, dd.mul_f(dd.mul_f(m_dd, k.roof_ka), ACT_BYTES))
    kp = f.prefill_kv_tokens
    tp_f = f.prefill_tokens.astype(f32)
    # 2 nh_g wp Ap (4 nh hd Ap for a plain model) + the MLA KV up-projection's
    a_flops = dd.mul_f(f.prefill_pairs_x2, d["att_p"])
    if d["up_f"] is not None:
        a_flops = dd.add(a_flops, dd.mul_f(kp, d["up_f"]))
    a_bytes = dd.add(dd.two_prod(tp_f, ACT_BYTES * d["att_p"]), dd.mul_f(kp, d["kv_p"]))
    flops = DD(jnp.concatenate([g_flops.hi, a_flops.hi[None]]),
               jnp.concatenate([g_flops.lo, a_flops.lo[None]]))
    nbytes = DD(jnp.concatenate([g_bytes.hi, a_bytes.hi[None]]),
                jnp.concatenate([g_bytes.lo, a_bytes.lo[None]]))
    nr = len(ROOF_OPS) - 1
    t_c = dd.mul(dd.add_f(flops, k.roof_f0[:nr]), DD(k.roof_inv_c.hi[:nr],
                                                      k.roof_inv_c.lo[:nr]))
    t_m = dd.mul(dd.add_f(nbytes, k.roof_b0[:nr]), DD(k.roof_inv_m.hi[:nr],
                                                       k.roof_inv_m.lo[:nr]))
    roof = dd.add_f(smooth_max(t_c, t_m, k.p_log2), k_o)
    active = jnp.concatenate([m > 0, (tp_f > 0)[None]])
    zero6 = jnp.zeros_like(roof.hi)
    roof = DD(jnp.where(active, roof.hi, zero6), jnp.where(active, roof.lo, zero6))
    corr = k.shape_corr.shape[-1] > 0  # static: no table, no work
    if corr:
        # tables of the four GEMMs and the elementwise kernels (shapecorr.CORR_OPS)
        delta = shapecorr.delta(k.shape_corr, shapecorr.op_positions(T, Tk.hi, d["h"]))
        ng = len(shapecorr.GEMM_CORR_OPS)
        zpad = jnp.zeros((nr - ng,), f32)
        roof = shapecorr.apply(roof, DD(jnp.concatenate([delta.hi[:ng], zpad]),
                                        jnp.concatenate([delta.lo[:ng], zpad])))

    # --- elementwise operators: bytes = coef * count * size
    count = DD(jnp.stack([Tf, Tf, Tk.hi, Tf, Tf, Tf, Tf, ns.astype(f32)]),
               jnp.zeros((len(MEM_OPS),), f32).at[2].set(Tk.lo))
    mem_bytes = dd.mul_f(dd.mul_f(count, k.mem_size), _f32(_MEM_COEF))
    mem = dd.add_f(dd.mul(dd.add_f(mem_bytes, k.b0_elem), k.inv_m_elem), k_o)
    if corr:
        rows, has = _MEM_CORR_ROW
        mem = shapecorr.apply(mem, DD(jnp.where(has, delta.hi[rows], 0.0),
                                      jnp.where(has, delta.lo[rows], 0.0)))
    mem = dd.mul_f(mem, _f32(_MEM_MULT))
    mem_on = jnp.ones((len(MEM_OPS),), bool).at[-1].set(ns > 0)
    zero8 = jnp.zeros_like(mem.hi)
    mem = DD(jnp.where(mem_on, mem.hi, zero8), jnp.where(mem_on, mem.lo, zero8))

    ar_one = dd.add_f(dd.mul(_prod(ACT_BYTES * d["h"], T.astype(f32), d["ar_factor"]),
                             k.inv_link), c["ar_latency_s"])
    if corr:
        i_ar = shapecorr.CORR_OPS.index("all_reduce")
        ar_one = shapecorr.apply(ar_one, DD(delta.hi[i_ar], delta.lo[i_ar]))
    zero = dd.dd(f32(0.0))
    out = {name: DD(roof.hi[i], roof.lo[i]) for i, name in enumerate(ROOF_OPS[:nr])}
    out["attn_decode"] = decode_attention_time(k, f.num_decodes, f.decode_kv_tokens)
    out.update({name: DD(mem.hi[i], mem.lo[i]) for i, name in enumerate(MEM_OPS)})
    out["all_reduce"] = dd.where(d["tp"] > 1, dd.mul_f(ar_one, f32(2.0)), zero)
    out["cpu"] = dd.add_f(dd.two_prod(c["cpu_seq_s"], f.num_seqs.astype(f32)),
                          c["cpu_iter_s"])
    return out


def op_times_dd(model, hw, tp, cost, f: BatchFeatures) -> dict[str, DD]:
    """Per-operator times of one iteration (seconds, as DD)."""
    return op_times_from_consts(prepare(model, hw, tp, cost), f)


def _stack_ops(t: dict[str, DD], names) -> DD:
    xs = [t[n] for n in names]
    shape = jnp.broadcast_shapes(*(x.hi.shape for x in xs))
    return DD(jnp.stack([jnp.broadcast_to(x.hi, shape) for x in xs], axis=-1),
              jnp.stack([jnp.broadcast_to(x.lo, shape) for x in xs], axis=-1))


def _total(k: CostConsts, t: dict[str, DD], tokens: Array, overlap=None,
           extra_gpu: DD | None = None) -> DD:
    """Iteration time from the operator times (any may carry a trailing series axis)."""
    # decode attention last: in an event-skipping run it alone varies with the context,
    # so the sum of the others can come from a table (decode_table)
    layer = _dd_sum(_stack_ops(t, _LAYER_OPS_BUT_DECODE))
    return _combine(k, layer, t["attn_decode"], _dd_sum(_stack_ops(t, GPU_ONCE_OPS)),
                    t["cpu"], tokens, overlap, extra_gpu)


def gpu_time_from_consts(k: CostConsts, f: BatchFeatures) -> DD:
    """``G`` alone: the GPU time of one iteration with batch features ``f`` (the
    per-layer and per-iteration GPU operators, no CPU overheads; 0 when nothing is
    scheduled). A speculative-decoding drafter's time (docs/semantics.md §9)."""
    t = op_times_from_consts(k, f)
    layer = _dd_sum(_stack_ops(t, _LAYER_OPS_BUT_DECODE))
    gpu = dd.add(dd.mul_f(dd.add(layer, t["attn_decode"]), k.dims["L"]),
                 _dd_sum(_stack_ops(t, GPU_ONCE_OPS)))
    return dd.where(f.tokens > 0, gpu, dd.dd(jnp.zeros_like(gpu.hi)))


def _combine(k: CostConsts, layer: DD, attn_decode: DD, once: DD, cpu: DD, tokens: Array,
             overlap, extra_gpu: DD | None = None) -> DD:
    """``G + C``, or ``max(G, C)`` where ``overlap`` (asynchronous scheduling, §2.10),
    with ``G`` the GPU time (layers and the per-iteration GPU operators, plus
    ``extra_gpu``: a drafter's, §9) and ``C`` the CPU overheads."""
    gpu = dd.add(dd.mul_f(dd.add(layer, attn_decode), k.dims["L"]), once)
    if extra_gpu is not None:
        gpu = dd.add(gpu, extra_gpu)
    total = dd.add(gpu, cpu)
    if overlap is not None:
        total = dd.where(overlap, dd.maximum(gpu, cpu), total)
    return dd.where(tokens > 0, total, dd.dd(jnp.zeros_like(total.hi)))


def iteration_time_from_consts(k: CostConsts, f: BatchFeatures, overlap=None,
                               extra_gpu: DD | None = None) -> DD:
    """Seconds for one iteration with batch features ``f`` (0 when nothing is scheduled);
    ``overlap`` (bool, default off): the iteration's CPU overheads overlap its GPU time
    (asynchronous scheduling, docs/semantics.md §2.10); ``extra_gpu``: GPU time added
    to the iteration's (a speculative-decoding drafter's, §9)."""
    return _total(k, op_times_from_consts(k, f), f.tokens, overlap, extra_gpu)


class DecodeTable(NamedTuple):
    """Per-lane sums of the operator times of a decode-only batch of ``n`` sequences, for
    ``n`` = 0 .. size - 1, without decode attention (the only operator that depends on
    the context): ``layer`` over the per-layer operators, ``once`` over the
    per-iteration GPU ones, ``cpu`` the CPU overheads (DD, ``[size]`` each)."""

    layer: DD
    once: DD
    cpu: DD


def decode_only(n: Array, kv_tokens: DD) -> BatchFeatures:
    """Features of a decode-only batch of ``n`` sequences whose contexts sum to
    ``kv_tokens`` (each sequence schedules and samples one token)."""
    zero = dd.dd(jnp.float32(0.0))
    return BatchFeatures(tokens=n, num_seqs=n, num_sampled=n, prefill_tokens=jnp.int32(0),
                         prefill_pairs_x2=zero, prefill_kv_tokens=zero, num_decodes=n,
                         decode_kv_tokens=kv_tokens)


def decode_table(k: CostConsts, size: int) -> DecodeTable:
    """The :class:`DecodeTable` of one lane (computed once per chunk of steps)."""
    def one(n):
        t = op_times_from_consts(k, decode_only(n, dd.dd(jnp.float32(0.0))))
        return (_dd_sum(_stack([t[o] for o in _LAYER_OPS_BUT_DECODE])),
                _dd_sum(_stack([t[o] for o in GPU_ONCE_OPS])), t["cpu"])

    layer, once, cpu = jax.vmap(one)(jnp.arange(size, dtype=jnp.int32))
    return DecodeTable(layer=layer, once=once, cpu=cpu)


def decode_gpu_time(k: CostConsts, table: DecodeTable, n: Array, kv_tokens: DD) -> DD:
    """``gpu_time_from_consts`` of ``decode_only(n, kv_tokens)`` (the same operations, the
    context-free sums from ``table``; ``0 <= n < table size``): a drafter's one-token
    passes (docs/semantics.md §9)."""
    layer = DD(table.layer.hi[n], table.layer.lo[n])
    once = DD(table.once.hi[n], table.once.lo[n])
    gpu = dd.add(dd.mul_f(dd.add(layer, decode_attention_time(k, n, kv_tokens)),
                          k.dims["L"]), once)
    return dd.where(n > 0, gpu, dd.dd(jnp.zeros_like(gpu.hi)))


def decode_series_times(k: CostConsts, table: DecodeTable, n: Array, kv_tokens: DD,
                        overlap=None) -> DD:
    """Times of decode-only iterations of ``n[j]`` sequences whose contexts sum to
    ``kv_tokens[j]`` (shapes ``[m]``; ``0 <= n < table size``): the iterations an
    event-skipping macro-step advances, as their context grows and requests finish.
    Element ``j`` equals ``iteration_time_from_consts`` of ``decode_only(n[j],
    kv_tokens[j])`` with the same ``overlap`` (the same operations, the context-free
    sums from ``table``)."""
    layer = DD(table.layer.hi[n], table.layer.lo[n])
    once = DD(table.once.hi[n], table.once.lo[n])
    cpu = DD(table.cpu.hi[n], table.cpu.lo[n])
    return _combine(k, layer, decode_attention_time(k, n, kv_tokens), once, cpu, n, overlap)


def iteration_time_dd(model, hw, tp, cost, f: BatchFeatures) -> DD:
    """Seconds for one iteration (DD); see :func:`iteration_time_from_consts`."""
    return iteration_time_from_consts(prepare(model, hw, tp, cost), f)


def iteration_time(model, hw, tp, cost, f: BatchFeatures) -> Array:
    """Iteration time in seconds, rounded to float32."""
    return iteration_time_dd(model, hw, tp, cost, f).value()


def op_times(model, hw, tp, cost, f: BatchFeatures) -> dict[str, Array]:
    """Per-operator times in seconds (float32; per-layer ops are for one layer)."""
    return {k: v.value() for k, v in op_times_dd(model, hw, tp, cost, f).items()}
