"""DeepSeek-V3/R1: multi-head latent attention, shared experts and leading dense layers
(docs/semantics.md §3), against the published sizes and the reference simulator."""

from __future__ import annotations

import equinox as eqx
import numpy as np
import pytest

from jaxsim import config, presets, shapecorr
from jaxsim import params as P
from jaxsim.workload import Trace
from tests.helpers import lane_params
from tests.test_against_reference import _check, random_case
from tests.test_costmodel import _check_against_reference

ONE = Trace([0.0], [4], [2])


def _info(cfg: dict) -> dict:
    full = config.validate(cfg)
    _, info = config.params_from_columns(config.columns_from_configs([full]), 1024)
    return {k: np.asarray(v)[0] for k, v in info.items()}


def test_deepseek_v3__sizes_match_the_published_figures():
    m = presets.model("DeepSeek-V3")[1]
    # DeepSeek-V3 technical report: 671B parameters, 37B activated per token (without
    # the multi-token-prediction module); the embedding and LM head count here
    assert presets.param_count(m) == pytest.approx(671e9, rel=1e-3)
    assert 36.5e9 < presets.active_params(m) < 38.5e9
    assert presets.param_count(presets.model("DeepSeek-R1")[1]) == presets.param_count(m)
    # the latent cache: (512 + 64) x 61 layers x 2 bytes, whole on every GPU
    for tp in (1, 2, 8):
        info = _info({"model": "DeepSeek-V3", "gpu": "H200", "tp": tp})
        assert info["kv_bytes_per_token"] == 70272.0
    info = _info({"model": "DeepSeek-V3", "gpu": "H200", "tp": 8, "dtype": "fp8",
                  "kv_cache_dtype": "fp8"})
    assert info["kv_bytes_per_token"] == 35136.0
    # FP8 weights per GPU at TP 8: the down-projections whole, the rest split, the
    # embedding and LM head in BF16
    rep = presets.replicated_params(m)
    emb = 2 * 129280 * 7168
    assert rep == 61 * (7168 * 1536 + 1536 + 7168 * 576 + 512)
    want = ((presets.param_count(m) - emb - rep) + 2 * emb) / 8 + rep
    assert info["weights_gb"] == pytest.approx(want / 1e9, rel=1e-12)
    # a grouped-query model's cache is split by TP (for comparison)
    assert (_info({"model": "Llama-3.1-70B", "gpu": "H200", "tp": 8})["kv_bytes_per_token"]
            == 2 * 80 * 1 * 128 * 2)


def test_deepseek_v3__memory_feasibility():
    # BF16 (1.34 TB of weights) does not fit eight H200s; FP8 does, with room for cache
    bf16 = _info({"model": "DeepSeek-V3", "gpu": "H200", "tp": 8})
    fp8 = _info({"model": "DeepSeek-V3", "gpu": "H200", "tp": 8, "dtype": "fp8"})
    assert bf16["num_gpu_blocks"] == 0 and bf16["weights_gb"] > 141
    assert fp8["num_gpu_blocks"] > 10_000 and 80 < fp8["weights_gb"] < 90
    # nor FP8 eight H100s
    assert _info({"model": "DeepSeek-V3", "gpu": "H100-SXM", "tp": 8,
                  "dtype": "fp8"})["num_gpu_blocks"] == 0


def _variants():
    base = lane_params({"model": "DeepSeek-V3", "gpu": "H200", "tp": 8, "dtype": "fp8"}, ONE)
    yield "DeepSeek-V3 H200 tp8 fp8", base
    # the H100 preset's shape tables (elementwise medians) at T ke, BF16, TP 4
    yield "DeepSeek-V3 H100 tp4", lane_params(
        {"model": "DeepSeek-V3", "gpu": "H100-SXM", "tp": 4}, ONE)
    m = base.model
    # no query compression; fractional ke (dense layers of another width, two shared)
    yield "no q_lora, mixed layers", eqx.tree_at(
        lambda p: (p.model.q_lora_rank, p.model.num_dense_layers, p.model.dense_ffn_size,
                   p.model.num_shared_experts),
        base, (m.q_lora_rank * 0, m.num_dense_layers * 0 + 5, m.dense_ffn_size * 0 + 10944,
               m.num_shared_experts * 0 + 2))
    # grouped-query attention with shared experts and dense layers (no MLA)
    q = lane_params({"model": "Qwen3-30B-A3B", "gpu": "H100-SXM", "tp": 2}, ONE)
    assert q.model.mla is None  # a plain model compiles without the optional fields
    q = eqx.tree_at(lambda p: p.model, q, P.with_model_extras(q.model))
    yield "GQA + shared + dense", eqx.tree_at(
        lambda p: (p.model.num_shared_experts, p.model.num_dense_layers,
                   p.model.dense_ffn_size),
        q, (q.model.num_shared_experts + 1, q.model.num_dense_layers + 1,
            q.model.dense_ffn_size + 6144))


def test_mla__cost_model_matches_the_reference_formula():
    rng = np.random.default_rng(71)
    for label, p in _variants():
        _check_against_reference(p, rng, label, batches=12)


def test_mla__decode_attention_reads_the_latent_per_gpu():
    from jaxsim import costmodel

    f = costmodel.features_from_floats(tokens=64, num_seqs=64, num_sampled=64,
                                       num_decodes=64, decode_kv_tokens=64 * 4096)
    t = {}
    for tp in (1, 8):
        p = lane_params({"model": "DeepSeek-V3", "gpu": "H200", "tp": tp}, ONE)
        t[tp] = float(costmodel.op_times(p.model, p.hardware, p.scheduler.tp, p.cost,
                                         f)["attn_decode"])
    # each GPU reads the whole latent cache of its heads' sequences (not 1/8 of it):
    # memory-bound decode attention gains far less than 8x from TP 8
    assert t[8] > t[1] / 3


@pytest.mark.slow  # its own batch compiles (about 20 s on 2 cores); the default suite has
# one DeepSeek lane against the reference (the mixed batch below)
def test_mla__simulation_matches_the_reference():
    rng = np.random.default_rng(20261125)
    cases = []
    for i in range(12):
        trace, cfg = random_case(rng)
        _deepseek(i, cfg)
        cases.append((trace, cfg))
    res, refs = _check(cases)
    assert sum(r["num_completed"] > 0 for r in refs) >= 8


def _deepseek(i: int, cfg: dict) -> None:
    cfg.update(model="DeepSeek-V3" if i % 2 else "DeepSeek-R1",
               gpu=["H200", "B200", "H100-SXM"][i % 3], tp=[8, 4, 8, 2][i % 4])
    if "num_gpu_blocks" not in cfg:  # the memory rule would leave no room
        cfg["num_gpu_blocks"] = 4096


@pytest.mark.slow  # its own prefix-cache shape compiles (about 30 s on 2 cores)
def test_mla__prefix_caching_and_tiers_match_the_reference():
    # the cache blocks' bytes (U L kvb, the latent's) set every tier transfer's time
    from tests.test_against_reference_prefix import _check as check_prefix

    cases, refs, res = check_prefix(20261126, 10, override=_deepseek)
    moved = sum(sum(r["bytes_read_by_tier"][1:]) + sum(r["bytes_written_by_tier"][1:]) > 0
                for r in refs)
    assert moved >= 3, moved


def test_mla__shape_keys_and_profiler():
    k = shapecorr.shape_keys(7168, 128, 1, 192, 2048, 8, 1, 256, mla=1, dv=128, d_r=64)
    assert k["qkv_proj"].endswith("/mla")
    assert k["o_proj"] == "o_proj/2048x7168/fp8"
    assert k["rotary"] == "rotary/1088/fp8"
    assert k["mlp_up"].endswith("/moe")
    from jaxsim import profile

    with pytest.raises(ValueError, match="DeepSeek-V3 uses multi-head latent attention"):
        profile.profile("DeepSeek-V3", tp=8)


def test_mla__eagle_drafts_with_one_moe_layer():
    p = lane_params({"model": "DeepSeek-V3", "gpu": "H200", "tp": 8, "dtype": "fp8",
                     "speculative": {"num_tokens": 1, "method": "eagle"}}, ONE)
    d = p.spec.draft
    assert float(d.num_layers) == 1 and float(d.num_dense_layers) == 0
    assert float(d.mla) == 1 and float(d.num_shared_experts) == 1
    assert float(d.kv_lora_rank) == 512


def test_presets__extras_default_to_a_plain_model():
    for name in presets.model_names():
        m = presets.model(name)[1]
        x = presets.extras(m)
        assert set(x) == set(P.MODEL_EXTRA_FIELDS)
        # (every optional field is one of ModelParams's)
        assert set(x) <= set(P.ModelParams.__dataclass_fields__)
        if not x["mla"]:
            assert presets.replicated_params(m) == 0
        if m["num_experts"] == 1:
            assert presets.active_params(m) == presets.param_count(m)
    table = presets.table()
    assert "MLA kv_lora=512" in table
    assert "KV 70,272 B/token on every GPU" in table  # the shared presets' figure
    assert "KV 131,072 B/token)" in table  # Llama-3.1-8B: 2 x 32 x 8 x 128 x 2


def test_mla__a_plain_lane_batched_with_deepseek_matches_the_reference():
    # the optional fields are compiled in for the whole batch (zeros for Llama), and
    # per-lane traces concatenate lanes built apart: both lanes still match the oracle
    from jaxsim import api
    from jaxsim.workload import synthetic
    from tests.helpers import oracle_config, oracle_workload
    from tests.reference.event_sim import simulate_reference
    from tests.test_against_reference import compare_lane

    cfgs = [{"model": "Llama-3.1-8B", "gpu": "H100-SXM"},
            {"model": "DeepSeek-V3", "gpu": "H200", "tp": 8, "dtype": "fp8"}]
    traces = [synthetic("poisson", 30, 200, 20, rate=20.0, seed=1),
              synthetic("poisson", 20, 300, 30, rate=5.0, seed=2)]
    res = api.run(cfgs, traces)
    assert res.status.tolist() == [0, 0]
    for i, (c, t) in enumerate(zip(cfgs, traces, strict=True)):
        p = lane_params(c, t)
        assert (p.model.mla is None) == (i == 0)
        ref = simulate_reference(oracle_workload(t), oracle_config(p))
        assert not compare_lane(i, t, res, ref), i


def test_mla__gradients_of_the_iteration_time_are_finite():
    # calibration and gradient search differentiate the cost model: the MLA and
    # layer-mix terms keep every coefficient's gradient finite (and the ones a mixed
    # batch uses nonzero)
    import jax

    from jaxsim import costmodel
    from jaxsim.params import COST_PARAM_NAMES, CostParams

    p = lane_params({"model": "DeepSeek-V3", "gpu": "H200", "tp": 8, "dtype": "fp8",
                     "cost_preset": "uncalibrated"}, ONE)
    f = costmodel.features_from_floats(
        tokens=300, num_seqs=40, num_sampled=39, prefill_tokens=261,
        prefill_pairs=261 * 400.0, prefill_kv_tokens=800, num_decodes=39,
        decode_kv_tokens=39 * 700)

    def dt(theta):
        return costmodel.iteration_time(p.model, p.hardware, p.scheduler.tp,
                                        CostParams(theta=theta), f)

    g = np.asarray(jax.grad(dt)(p.cost.theta))
    assert np.all(np.isfinite(g))
    for name in ("eta_c_qkv_proj", "eta_m_mlp_up", "eta_c_attn_prefill",
                 "eta_m_attn_decode", "eta_ar", "cpu_iter_s"):
        assert g[COST_PARAM_NAMES.index(name)] != 0, name
