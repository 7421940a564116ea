"""Cost model: hand-computed rooflines, smooth max, monotonicity, gradients, and an
independent cross-check against the reference implementation's formula."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsim import costmodel, shapecorr
from jaxsim.dd import DD
from jaxsim.params import COST_PARAM_NAMES, CostParams, HardwareParams, ModelParams
from jaxsim.workload import Trace
from tests.helpers import lane_params, oracle_config
from tests.reference.event_sim import iteration_time as ref_iteration_time


def feats(**kw):
    return costmodel.features_from_floats(**kw)


def tiny_model():
    return ModelParams(num_layers=1, hidden_size=4, num_heads=2, num_kv_heads=1,
                       head_dim=2, ffn_size=8, vocab_size=16, num_experts=1,
                       experts_per_token=1, bytes_per_weight=2, bytes_per_kv=2,
                       bytes_per_lm_head_weight=2)


def tiny_hw():
    return HardwareParams(peak_flops=1000.0, hbm_bw_bytes_per_s=100.0,
                          link_bw_bytes_per_s=10.0, peak_flops_16bit=1000.0)


def _smax(a, b, k):
    from jaxsim import dd

    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    return np.asarray(costmodel.smooth_max(dd.dd(a), dd.dd(b), jnp.int32(k)).value())


def test_smooth_max__properties():
    a = np.array([0.0, 1.0, 3.0, 2.0, 5.0, 1e-9], np.float32)
    b = np.array([0.0, 1.0, 1.0, 7.0, 0.0, 3e-9], np.float32)
    for k in range(4):
        s = _smax(a, b, k)
        p = 2.0**k
        ref = np.where(np.maximum(a, b) > 0,
                       (a.astype(np.float64) ** p + b.astype(np.float64) ** p) ** (1 / p), 0)
        np.testing.assert_allclose(s, ref, rtol=1e-7)
        assert np.all(s >= np.maximum(a, b) * (1 - 1e-7))
        np.testing.assert_allclose(s, _smax(b, a, k))
    np.testing.assert_allclose(_smax(a, b, 0), a + b, rtol=1e-7)
    g = jax.grad(lambda x: costmodel.smooth_max(
        __import__("jaxsim").dd.dd(x), __import__("jaxsim").dd.dd(x), jnp.int32(2)).value())(
        jnp.float32(0.0))
    assert np.isfinite(g)


def test_dd__arithmetic_is_double_precision():
    from jaxsim import dd

    rng = np.random.default_rng(0)
    x = rng.uniform(1e-6, 1e3, 500)
    y = rng.uniform(1e-6, 1e3, 500)

    def to_dd(v):
        hi = v.astype(np.float32)
        return dd.DD(jnp.asarray(hi), jnp.asarray((v - hi).astype(np.float32)))

    def val(d):
        return np.asarray(d.hi, np.float64) + np.asarray(d.lo, np.float64)

    X, Y = to_dd(x), to_dd(y)
    for got, want in [(dd.add(X, Y), x + y), (dd.mul(X, Y), x * y), (dd.div(X, Y), x / y),
                      (dd.sqrt(X), np.sqrt(x)), (dd.mul_f(X, Y.hi), x * val(dd.dd(Y.hi)))]:
        np.testing.assert_allclose(val(jax.jit(lambda d: d)(got)), want, rtol=1e-13)


def test_costmodel__hand_computed_decode_gemm():
    # One decode token (T=1) on the tiny model with p = 1 (smax = sum), all offsets tiny.
    cost = CostParams.from_values({
        "eta_c_gemm": 0.5, "f0_gemm": 1e-9, "eta_m_gemm": 0.5, "b0_gemm": 1e-9,
        "kernel_overhead_s": 1e-12, "smooth_p": 1,
    })
    t = costmodel.op_times(tiny_model(), tiny_hw(), jnp.int32(1), cost,
                           feats(tokens=1, num_seqs=1, num_sampled=1, num_decodes=1,
                                 decode_kv_tokens=5))
    # qkv: M=1, K=4, N=(2+2)*2=8: F = 2*1*4*8 = 64 FLOP -> 64/(1000*0.5) = 0.128 s;
    # bytes = 2*4*8 (weights) + 2*(1*4 + 1*8) = 64 + 24 = 88 -> 88/(100*0.5) = 1.76 s.
    assert float(t["qkv_proj"]) == pytest.approx(0.128 + 1.76, rel=1e-4)
    # o: M=1, K=2*2=4, N=4: F = 32 -> 0.064 s; bytes = 2*16 + 2*(4+4) = 48 -> 0.96 s
    assert float(t["o_proj"]) == pytest.approx(0.064 + 0.96, rel=1e-4)
    # lm_head: M=1, K=4, N=16: F = 128 -> 0.256; bytes = 2*64 + 2*(4+16) = 168 -> 3.36
    assert float(t["lm_head"]) == pytest.approx(0.256 + 3.36, rel=1e-4)


def test_costmodel__hard_roofline_limit():
    # With a large p the GEMM time is the max of the compute and memory times.
    cost = CostParams.from_values({"f0_gemm": 1e-9, "b0_gemm": 1e-9,
                                   "kernel_overhead_s": 1e-12, "smooth_p": 8,
                                   "eta_c_gemm": 0.5, "eta_m_gemm": 0.5})
    t = costmodel.op_times(tiny_model(), tiny_hw(), jnp.int32(1), cost,
                           feats(tokens=1, num_seqs=1, num_sampled=1))
    assert float(t["qkv_proj"]) == pytest.approx(1.76, rel=1e-2)


def test_costmodel__empty_batch_costs_nothing():
    p = lane_params({}, Trace([0.0], [4], [2]))
    dt = costmodel.iteration_time(p.model, p.hardware, p.scheduler.tp, p.cost, feats())
    assert float(dt) == 0.0


def _dt(p, f, **hw):
    h = HardwareParams(
        peak_flops=hw.get("peak", p.hardware.peak_flops),
        hbm_bw_bytes_per_s=hw.get("hbm", p.hardware.hbm_bw_bytes_per_s),
        link_bw_bytes_per_s=hw.get("link", p.hardware.link_bw_bytes_per_s),
        peak_flops_16bit=hw.get("peak16", p.hardware.peak_flops_16bit),
    )
    return float(costmodel.iteration_time(p.model, h, p.scheduler.tp, p.cost, f))


def test_costmodel__monotone_in_hardware():
    p = lane_params({"tp": 2}, Trace([0.0], [4], [2]))
    for f in (feats(tokens=512, num_seqs=1, num_sampled=1, prefill_tokens=512,
                    prefill_pairs=512 * 256.5, prefill_kv_tokens=512),
              feats(tokens=64, num_seqs=64, num_sampled=64, num_decodes=64,
                    decode_kv_tokens=64 * 900)):
        base = _dt(p, f)
        hbm = float(p.hardware.hbm_bw_bytes_per_s)
        peak = float(p.hardware.peak_flops)
        link = float(p.hardware.link_bw_bytes_per_s)
        assert _dt(p, f, hbm=2 * hbm) < base
        assert _dt(p, f, peak=2 * peak) < base
        assert _dt(p, f, link=2 * link) < base
        assert _dt(p, f, hbm=0.5 * hbm) > base


def test_costmodel__decode_is_memory_bound_prefill_compute_bound():
    # Llama-3.1-8B on H100: a 1-token decode is bounded by reading the 16 GB of weights,
    # a 2048-token prefill by FLOPs.
    p = lane_params({"cost_preset": "uncalibrated"}, Trace([0.0], [4], [2]))
    dec = _dt(p, feats(tokens=1, num_seqs=1, num_sampled=1, num_decodes=1,
                       decode_kv_tokens=100))
    weights_s = 16.06e9 / 3.35e12
    assert weights_s < dec < 2 * weights_s
    pre = _dt(p, feats(tokens=2048, num_seqs=1, num_sampled=1, prefill_tokens=2048,
                       prefill_pairs=2048 * 1024.5, prefill_kv_tokens=2048))
    flops_s = 2 * 8.03e9 * 2048 / 989e12
    assert flops_s < pre < 3 * flops_s


def test_cost_params__roundtrip():
    vals = {"eta_c_mlp_up": 0.7, "f0_qkv_proj": 3e9, "cpu_iter_s": 1e-4}
    cp = CostParams.from_values({**vals, "smooth_p": 8})
    assert int(cp.smooth_p_log2) == 3
    got = {k: float(v) for k, v in cp.values().items()}
    for k, v in vals.items():
        assert got[k] == pytest.approx(v, rel=1e-5)
    # family shorthands set every member; an explicit per-operator value wins
    got = {k: float(v) for k, v in CostParams.from_values(
        {"eta_m_elem": 0.5, "eta_m_norm": 0.6}).values().items()}
    assert got["eta_m_norm"] == pytest.approx(0.6, rel=1e-6)
    assert got["eta_m_rotary"] == got["eta_m_sampling"] == pytest.approx(0.5, rel=1e-6)
    with pytest.raises(KeyError, match="unknown cost parameter"):
        CostParams.from_values({"nope": 1.0})
    with pytest.raises(ValueError):
        CostParams.from_values({"eta_ar": 1.5})
    with pytest.raises(ValueError, match="smooth_p"):
        CostParams.from_values({"smooth_p": 3})
    assert len(COST_PARAM_NAMES) == CostParams.default().theta.shape[0]


def test_costmodel__gradients_match_finite_differences():
    p = lane_params({"tp": 2, "cost_preset": "uncalibrated"}, Trace([0.0], [4], [2]))
    f = feats(tokens=300, num_seqs=40, num_sampled=39, prefill_tokens=261,
              prefill_pairs=261 * 400.0, prefill_kv_tokens=800, num_decodes=39,
              decode_kv_tokens=39 * 700)

    @jax.jit  # (one compile instead of dozens of eager evaluations)
    def dt(theta):
        return costmodel.iteration_time(p.model, p.hardware, p.scheduler.tp,
                                        CostParams(theta=theta), f)

    theta = p.cost.theta
    g = np.asarray(jax.jit(jax.grad(dt))(theta))
    assert np.all(np.isfinite(g)) and np.count_nonzero(g) == len(g)
    eps = 1e-2
    for i in range(len(g)):
        e = jnp.zeros_like(theta).at[i].set(eps)
        fd = (float(dt(theta + e)) - float(dt(theta - e))) / (2 * eps)
        assert g[i] == pytest.approx(fd, rel=2e-2, abs=1e-7), COST_PARAM_NAMES[i]


def _check_against_reference(p, rng, label, batches=20):
    cfg = oracle_config(p)
    for _ in range(batches):
        batch = []
        for _ in range(int(rng.integers(1, 30))):
            g = int(rng.integers(0, 5))
            P_ = int(rng.integers(1, 3000))
            n_known = P_ + g
            c = int(rng.integers(0, n_known))
            q = int(rng.integers(1, n_known - c + 1))
            batch.append((q, c, n_known, g))
        ref = ref_iteration_time(cfg, batch)
        q = np.array([b[0] for b in batch], np.float64)
        c = np.array([b[1] for b in batch], np.float64)
        nk = np.array([b[2] for b in batch])
        gen = np.array([b[3] for b in batch])
        dec = (gen >= 1) & (nk - c == 1)
        pre = ~dec
        f = feats(tokens=int(q.sum()), num_seqs=len(batch),
                  num_sampled=int(np.sum(c + q == nk)),
                  prefill_tokens=int(q[pre].sum()),
                  prefill_pairs=float(np.sum(q[pre] * (c[pre] + (q[pre] + 1) / 2))),
                  prefill_kv_tokens=float(np.sum(c[pre] + q[pre])),
                  num_decodes=int(dec.sum()),
                  decode_kv_tokens=float(np.sum(c[dec] + 1)))
        got = costmodel.iteration_time_dd(p.model, p.hardware, p.scheduler.tp, p.cost, f)
        # double-float evaluation: agrees with the float64 reference to ~1e-14
        assert float(got.hi) + float(got.lo) == pytest.approx(ref, rel=1e-12), (label, batch)


def test_costmodel__matches_reference_formula_on_random_batches():
    rng = np.random.default_rng(5)
    for model, gpu, tp in [("Llama-3.1-8B", "H100-SXM", 1), ("Llama-3.1-70B", "A100-80GB", 4),
                           ("Mixtral-8x7B", "H200", 2), ("Qwen2.5-7B", "L40S", 2)]:
        p = lane_params({"model": model, "gpu": gpu, "tp": tp}, Trace([0.0], [4], [2]))
        _check_against_reference(p, rng, model)


def test_costmodel__shape_tables_match_reference_formula():
    """§3.1 tables (random, some rows empty) on random batches, including token counts
    past the last knot and on knots; and a table of zeros changes nothing, bit for bit."""
    rng = np.random.default_rng(11)
    for model, gpu, tp in [("Llama-3.1-8B", "H100-SXM", 1), ("Mixtral-8x7B", "H200", 2)]:
        p = lane_params({"model": model, "gpu": gpu, "tp": tp, "cost_preset": "uncalibrated"},
                        Trace([0.0], [4], [2]))
        table = rng.uniform(-0.5, 1.0, (len(shapecorr.CORR_OPS), shapecorr.GRID))
        table[rng.random(len(table)) < 0.3] = 0.0
        pt = eqx.tree_at(lambda q: q.cost.shape_corr, p, jnp.asarray(table, jnp.float32))
        _check_against_reference(pt, rng, model)
        for tokens in (1, 3, 8, 1024, 1030, 32768, 40000):
            f = feats(tokens=tokens, num_seqs=1, num_sampled=1, prefill_tokens=tokens,
                      prefill_pairs=tokens * (tokens + 1) / 2, prefill_kv_tokens=tokens)
            zero = eqx.tree_at(lambda q: q.cost.shape_corr, p,
                               jnp.zeros((len(shapecorr.CORR_OPS), shapecorr.GRID)))
            a = costmodel.iteration_time_dd(p.model, p.hardware, p.scheduler.tp, p.cost, f)
            b = costmodel.iteration_time_dd(zero.model, zero.hardware, zero.scheduler.tp,
                                            zero.cost, f)
            assert (float(a.hi), float(a.lo)) == (float(b.hi), float(b.lo)), tokens
            ref = ref_iteration_time(oracle_config(pt), [(tokens, 0, tokens, 0)])
            got = costmodel.iteration_time_dd(pt.model, pt.hardware, pt.scheduler.tp,
                                              pt.cost, f)
            assert float(got.hi) + float(got.lo) == pytest.approx(ref, rel=1e-12), tokens


def test_shape_tables__interpolation_rule():
    knots = shapecorr.KNOTS
    assert len(knots) == 451 and knots[0] == 1 and knots[-1] == 32768
    assert np.all(np.diff(knots) > 0)
    assert list(knots[:6]) == [1, 2, 4, 8, 16, 24] and 1024 in knots and 1040 in knots
    # the closed-form knot index equals a search of the knots, on every token count
    # and on fractional all-reduce positions
    x = np.concatenate([np.arange(1, 32769),
                        np.random.default_rng(0).uniform(1, 32768, 20000)]).astype(np.float32)
    want = np.clip(np.searchsorted(knots, x.astype(np.float64), side="right") - 1, 0,
                   shapecorr.GRID - 2)
    np.testing.assert_array_equal(np.asarray(shapecorr.knot_index(jnp.asarray(x))), want)
    row = np.arange(shapecorr.GRID, dtype=np.float64)  # delta = knot index
    got = shapecorr.delta_np(row, np.array([0, 1, 3, 8, 12, 1024, 1032, 32768, 99999]))
    np.testing.assert_allclose(got, [0, 0, 1.5, 3, 3.5, 130, 130.5, 450, 450])
    table = jnp.asarray(np.stack([row, -row, row]), jnp.float32)
    x = DD(jnp.array([12.0, 1032.0, 1.0 + 2.0**-20], jnp.float32), jnp.zeros(3, jnp.float32))
    d = shapecorr.delta(table, x)
    np.testing.assert_allclose(np.asarray(d.hi, np.float64) + np.asarray(d.lo),
                               [3.5, -130.5, 2.0**-20], rtol=1e-12)
    # the all-reduce axis: 2 h T bytes in 2 KiB units, exact past 2**24 bytes
    pos = shapecorr.op_positions(jnp.int32(3000), jnp.int32(6000), jnp.float32(8192))
    got = np.asarray(pos.hi, np.float64) + np.asarray(pos.lo, np.float64)
    assert list(got) == [3000] * 2 + [6000] * 2 + [3000] * 2 + [6000] + [3000] * 2 + [24000]


def _llama8b_lane(gpu, dtype):
    """One configured Llama-3.1-8B lane (uncalibrated costs) and its weights in GB."""
    from jaxsim import config

    cfg = config.validate({"model": "Llama-3.1-8B", "gpu": gpu, "dtype": dtype,
                           "cost_preset": "uncalibrated"})
    p, info = config.params_from_columns(config.columns_from_configs([cfg]), 4096)
    assert int(p.status0[0]) == 0
    return jax.tree.map(lambda x: x[0], p), float(info["weights_gb"][0])


def test_costmodel__fp8_weights_leave_attention_and_the_lm_head_16_bit():
    # vLLM's --quantization fp8 quantises linear layers and experts; the LM head (a
    # vocab-parallel embedding) and attention stay BF16. Llama-3.1-8B on one H100.
    p16, w16 = _llama8b_lane("H100-SXM", "bf16")
    p8, w8 = _llama8b_lane("H100-SXM", "fp8")
    # weights: 8,030,261,248 parameters, of which 2 x 128,256 x 4,096 = 1,050,673,152 in
    # the embedding and LM head (BF16): 6,979,588,096 + 2,101,346,304 bytes
    assert w16 * 1e9 == pytest.approx(2 * 8_030_261_248)
    assert w8 * 1e9 == pytest.approx(6_979_588_096 + 2_101_346_304)
    assert float(p8.hardware.peak_flops) == pytest.approx(1979e12)
    assert float(p8.hardware.peak_flops_16bit) == pytest.approx(989e12)
    f = feats(tokens=8192, num_seqs=64, num_sampled=64, prefill_tokens=8192,
              prefill_pairs=8192 * 4096.5, prefill_kv_tokens=8192)

    def ops(p):
        t = costmodel.op_times_dd(p.model, p.hardware, p.scheduler.tp, p.cost, f)
        return {k: float(v.hi) + float(v.lo) for k, v in t.items()}

    t16, t8 = ops(p16), ops(p8)
    for op in ("attn_prefill", "lm_head"):  # same FLOPs, bytes and peak
        assert t8[op] == pytest.approx(t16[op], rel=1e-6), op
    for op in ("qkv_proj", "o_proj", "mlp_up", "mlp_down"):  # compute-bound at 8192 tokens
        assert t8[op] < 0.6 * t16[op], op
    # the reference simulator agrees, random batches
    _check_against_reference(p8, np.random.default_rng(0), "fp8")


def test_fp8_on_a_gpu_without_fp8_tensor_cores_runs_weight_only():
    # vLLM's FP8 Marlin (W8A16) on Ampere: 1-byte weights, BF16 GEMMs. An A100 decode
    # reads half the weights; a long prefill is as fast as in BF16.
    (p16, _), (p8, _) = _llama8b_lane("A100-80GB", "bf16"), _llama8b_lane("A100-80GB", "fp8")
    assert float(p8.hardware.peak_flops) == pytest.approx(312e12)
    assert float(p8.model.bytes_per_weight) == 1.0

    def dt(p, f):
        return float(costmodel.iteration_time(p.model, p.hardware, p.scheduler.tp, p.cost, f))

    dec = feats(tokens=1, num_seqs=1, num_sampled=1, num_decodes=1, decode_kv_tokens=100)
    assert dt(p8, dec) < 0.65 * dt(p16, dec)
    pre = feats(tokens=8192, num_seqs=1, num_sampled=1, prefill_tokens=8192,
                prefill_pairs=8192 * 4096.5, prefill_kv_tokens=8192)
    assert dt(p8, pre) == pytest.approx(dt(p16, pre), rel=0.02)
