"""Hand-worked tests of §9 (speculative decoding) in the reference oracle.

Every expected number is worked out by hand from docs/semantics.md in the comments.
Like tests/test_reference_prefix.py these tests never import jaxsim: they check the
oracle (tests/reference/event_sim.py) against the specification on its own.

The base config is the hand-checkable one of tests/test_reference_prefix.py: one
layer, h = 2, one head of dimension 2, FFN 4, vocab 8, 1-byte weights and KV,
peak = hbm = link = 1, all efficiencies 0.5, F0 = B0 = 0, kernel overhead 1 s,
cpu_iter 10 s, cpu_seq 100 s, p = 1 (smax is a plain sum), block_size 4, budget 64.
For tp = 1 (see tests/test_reference_swap.py), for any batch with §3 features
T, n, ns, Tp, Ap, Kp, D, Kd:

    G   = 480·T + 93 + attnp + attnd + (168·ns + 34 if ns > 0 else 0)   (GPU time)
    dtc = G + 10 + 100·n,
    attnp = 16·Ap + 16·Tp + 8·Kp + 1   (if Tp > 0),
    attnd = 24·Kd + 16·D + 1           (if D > 0).

Values used below (one request; §9 counts a decoding request with j >= 1 drafts as a
prefill of q = 1 + j tokens at context c that samples at each of its q positions):

    prefill of 8 with c = 0 that samples (T 8, ns 1, Ap 36, Kp 8):  G 4904, dtc 5014;
    q = 4 at c = 8 (ns 4, Ap 4·(8 + 2.5) = 42, Kp 12):  attnp 833,  G 3552, dtc 3662;
    q = 4 at c = 12 (ns 4, Ap 58, Kp 16):               attnp 1121, G 3840, dtc 3950;
    one decode at c = 8 (Kd 9):   attnd 233, G 1008, dtc 1118;
    one decode at c = 12 (Kd 13): attnd 329, G 1104, dtc 1214;
    one decode at c = 16 (Kd 17): attnd 425, G 1200, dtc 1310.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from tests.reference.event_sim import (
    MODEL_KEYS,
    OPTIONAL_CONFIG_KEYS,
    SHAPE_CORR_KNOTS,
    SHAPE_CORR_OPS,
    CostModel,
    simulate_reference,
    spec_accept_units,
    validate_config,
)
from tests.test_reference_prefix import BASE, approx, make_config, make_workload
from tests.test_reference_swap import _assert_same_results, _random_lane

#: The draft model with the lane's own (tiny) dimensions: its G_d is the G above.
SAME_DRAFT: dict[str, Any] = {key: BASE[key] for key in MODEL_KEYS}


def run_spec(
    arrival: list[float], prompt: list[int], output: list[int], **overrides: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    trace: list[dict[str, Any]] = []
    res = simulate_reference(make_workload(arrival, prompt, output),
                             make_config(**overrides), trace=trace)
    return res, trace


def spec(k: int, alpha: float, **more: Any) -> dict[str, Any]:
    return {"spec_tokens": k, "spec_accept_units": spec_accept_units(alpha, k), **more}


def qs(trace: list[dict[str, Any]]) -> list[list[tuple[int, int]]]:
    """Per iteration: [(request, q), ...]."""
    return [[(r, q) for r, q, *_ in it["batch"]] for it in trace]


# --------------------------------------------------------------------------------------
# Config keys and A
# --------------------------------------------------------------------------------------


def test_spec_keys_defaults_and_accept_units() -> None:
    assert {"spec_tokens", "spec_accept_units", "spec_draft"} <= set(OPTIONAL_CONFIG_KEYS)
    cfg = validate_config(make_config())
    assert cfg["spec_tokens"] == 0 and cfg["spec_accept_units"] == (0,)
    assert cfg["spec_draft"] is None
    cfg = validate_config(make_config(spec_tokens=3))
    assert cfg["spec_accept_units"] == (0, 0, 0, 0)  # default: all zeros
    cfg = validate_config(make_config(spec_tokens=np.int64(2),
                                      spec_accept_units=np.array([0, 1, 2])))
    assert cfg["spec_tokens"] == 2 and cfg["spec_accept_units"] == (0, 1, 2)
    # The draft's LM-head bytes default to its bytes per weight.
    cfg = validate_config(make_config(spec_draft=dict(SAME_DRAFT, bytes_per_weight=2)))
    assert cfg["spec_draft"]["bytes_per_lm_head_weight"] == 2.0
    assert isinstance(cfg["spec_draft"]["num_layers"], int)
    # A[j] = round(65536 · Σ_{i=1..j} α^i).
    assert spec_accept_units(0.5, 2) == [0, 32768, 49152]
    assert spec_accept_units(1.0, 3) == [0, 65536, 131072, 196608]
    assert spec_accept_units(0.0, 2) == [0, 0, 0]
    assert spec_accept_units(0.3, 0) == [0]
    # 0.8: 52428.8 -> 52429; 0.8 + 0.64 = 1.44 -> 94371.84 -> 94372.
    assert spec_accept_units(0.8, 2) == [0, 52429, 94372]
    for alpha, k in ((-0.1, 2), (1.5, 2), (0.5, -1), (0.5, 17), (0.5, 1.5)):
        with pytest.raises(ValueError):
            spec_accept_units(alpha, k)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"spec_tokens": -1}, "spec_tokens"),
        ({"spec_tokens": 17}, "spec_tokens"),
        ({"spec_tokens": 1.5}, "spec_tokens"),
        ({"spec_tokens": "two"}, "spec_tokens"),
        ({"spec_tokens": True}, "spec_tokens"),
        ({"spec_tokens": 2, "spec_accept_units": [0, 1]}, "spec_accept_units"),
        ({"spec_accept_units": [0, 1]}, "spec_accept_units"),
        ({"spec_tokens": 1, "spec_accept_units": [1, 2]}, r"spec_accept_units'\]\[0"),
        ({"spec_tokens": 2, "spec_accept_units": [0, 5, 4]}, "non-decreasing"),
        ({"spec_tokens": 2, "spec_accept_units": [0, 65537, 70000]}, "65536"),
        ({"spec_tokens": 2, "spec_accept_units": [0, 1, 131073]}, "131072"),
        ({"spec_tokens": 1, "spec_accept_units": [0, 0.5]}, "spec_accept_units"),
        ({"spec_tokens": 1, "spec_accept_units": 7}, "spec_accept_units"),
        ({"spec_draft": 5}, "spec_draft"),
        ({"spec_draft": {"num_layers": 1}}, "missing"),
        ({"spec_draft": dict(SAME_DRAFT, bogus=1)}, "bogus"),
        ({"spec_draft": dict(SAME_DRAFT, num_heads=0)}, "num_heads"),
        ({"spec_draft": dict(SAME_DRAFT, num_layers=1.5)}, "num_layers"),
        ({"spec_draft": dict(SAME_DRAFT, bytes_per_lm_head_weight=0)},
         "bytes_per_lm_head_weight"),
        ({"spec_draft": dict(SAME_DRAFT, bytes_per_kv="x")}, "bytes_per_kv"),
    ],
)
def test_spec_validation_errors(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        validate_config(make_config(**overrides))


# --------------------------------------------------------------------------------------
# (1) Off means off
# --------------------------------------------------------------------------------------


def test_spec_tokens_zero_is_identical_to_omitting_the_keys() -> None:
    # §9: "K = 0 turns it off and changes nothing", bit for bit, traces included,
    # also with a draft model given; and K > 0 in mode v0 is K = 0 ("in v0 it is 0").
    rng = np.random.default_rng(29)
    for i in range(60):
        wl, cfg = _random_lane(rng)
        if i % 2 == 0:
            cfg = dict(cfg, enable_prefix_caching=False)
        t0: list[dict[str, Any]] = []
        t1: list[dict[str, Any]] = []
        base = simulate_reference(wl, cfg, trace=t0)
        zero = simulate_reference(
            wl, dict(cfg, spec_tokens=0, spec_accept_units=[0], spec_draft=SAME_DRAFT),
            trace=t1)
        _assert_same_results(base, zero)
        assert t0 == t1
        assert base["metrics"]["spec_drafted_tokens"] == 0
        assert base["metrics"]["spec_accepted_tokens"] == 0
        assert math.isnan(base["metrics"]["spec_acceptance_rate"])
        if cfg["mode"] == "v0":
            t2: list[dict[str, Any]] = []
            v0 = simulate_reference(wl, dict(cfg, **spec(3, 0.7, spec_draft=SAME_DRAFT)),
                                    trace=t2)
            _assert_same_results(base, v0)
            assert t0 == t2


# --------------------------------------------------------------------------------------
# (2)-(4) One request, P = 8, O = 10
# --------------------------------------------------------------------------------------


def test_every_draft_accepted() -> None:
    # K = 3, α = 1: A = [0, 65536, 131072, 196608].
    # it 1: prefill q = 8 -> c = 8, g = 1 (first token).
    # it 2: decoding (g 1, c 8 = n_known - 1): d = min(3, 10 - 1 - 1) = 3, q = 4, j = 3;
    #       acc = 196608 -> a = 3, acc = 0; c = 12, g = 5.
    # it 3: d = min(3, 10 - 5 - 1) = 3, q = 4, a = 3 -> c = 16, g = 9.
    # it 4: d = min(3, 0) = 0, q = 1, an ordinary decode -> g = 10, finished.
    res, trace = run_spec([0.0], [8], [10], **spec(3, 1.0))
    assert res["completed"].all() and res["iterations"] == 4
    assert qs(trace) == [[(0, 8)], [(0, 4)], [(0, 4)], [(0, 1)]]
    assert [it["spec"] for it in trace] == [[], [(0, 3, 3)], [(0, 3, 3)], [(0, 0, 0)]]
    assert [it["batch"][0][4] for it in trace] == [0, 1, 5, 9]  # g before
    assert [it["batch"][0][2] for it in trace] == [0, 8, 12, 16]  # c before
    assert res["spec_drafted_tokens"] == 6 and res["spec_accepted_tokens"] == 6
    m = res["metrics"]
    assert (m["spec_drafted_tokens"], m["spec_accepted_tokens"]) == (6, 6)
    assert m["spec_acceptance_rate"] == 1.0
    assert res["tokens_scheduled"].tolist() == [8 + 4 + 4 + 1]
    assert res["total_tokens"] == 17 and res["generated"].tolist() == [10]
    # §2.8: used blocks are those of c + q: 8, 12, 16, 17 tokens.
    assert [it["used_blocks"] for it in trace] == [2, 3, 4, 5]
    # Times (module docstring): 5014, 3662 (q 4 at c 8), 3950 (q 4 at c 12), 1310.
    assert [it["dt"] for it in trace] == [approx(5014.0), approx(3662.0),
                                          approx(3950.0), approx(1310.0)]
    assert [it["dt_draft"] for it in trace] == [0.0] * 4  # no draft model
    assert res["first_token_s"][0] == approx(5014.0)
    # Every token emitted in an iteration is stamped with its end: the last at 13936.
    assert res["finish_s"][0] == approx(13936.0)
    assert res["busy_s"] == approx(13936.0)
    assert m["tpot_mean_s"] == approx((13936.0 - 5014.0) / 9)


def test_no_draft_accepted() -> None:
    # α = 0: A = [0, 0, 0, 0], never a draft accepted, so one token per decode step:
    # O - 1 = 9 decode iterations, as without speculation, but each schedules
    # 1 + min(3, O - g - 1) tokens: g = 1..6 -> 4, g = 7 -> 3, g = 8 -> 2, g = 9 -> 1.
    res, trace = run_spec([0.0], [8], [10], **spec(3, 0.0))
    plain, plain_trace = run_spec([0.0], [8], [10])
    assert res["iterations"] == plain["iterations"] == 10
    assert qs(trace) == [[(0, 8)]] + [[(0, 4)]] * 6 + [[(0, 3)], [(0, 2)], [(0, 1)]]
    assert res["tokens_scheduled"].tolist() == [8 + 24 + 3 + 2 + 1]
    assert plain["tokens_scheduled"].tolist() == [8 + 9]
    assert res["spec_drafted_tokens"] == 3 * 6 + 2 + 1 == 21
    assert res["spec_accepted_tokens"] == 0
    assert res["metrics"]["spec_acceptance_rate"] == 0.0
    # c advances by one per iteration (rejected drafts' KV discarded): c = g + 7.
    assert [it["batch"][0][2] for it in trace[1:]] == list(range(8, 17))
    # used blocks of c + q: 12, 13, 14, 15, 16, 17, 17, 17, 17 tokens after the prefill.
    assert [it["used_blocks"] for it in trace] == [2, 3, 4, 4, 4, 4, 5, 5, 5, 5]
    # without drafts: c + 1 = 9 … 17 tokens after the prefill.
    assert [it["used_blocks"] for it in plain_trace] == [2, 3, 3, 3, 3, 4, 4, 4, 4, 5]
    # Verifying drafts costs more than plain decoding, so the request finishes later.
    assert res["finish_s"][0] > plain["finish_s"][0]
    assert res["first_token_s"][0] == plain["first_token_s"][0]


def test_fractional_acceptance() -> None:
    # K = 2, α = 0.5: A = [0, 32768, 49152].
    #   it 2: g 1, j = 2: acc = 49152,            a = 0 -> g = 2
    #   it 3: g 2, j = 2: acc = 98304  -> 32768,  a = 1 -> g = 4
    #   it 4: g 4, j = 2: acc = 81920  -> 16384,  a = 1 -> g = 6
    #   it 5: g 6, j = 2: acc = 65536  -> 0,      a = 1 -> g = 8
    #   it 6: g 8, d = min(2, 1) = 1: acc = 32768, a = 0 -> g = 9
    #   it 7: g 9, d = 0, j = 0: acc = 32768,     a = 0 -> g = 10, finished.
    res, trace = run_spec([0.0], [8], [10], **spec(2, 0.5))
    assert res["iterations"] == 7 and res["completed"].all()
    assert [it["batch"][0][4] for it in trace] == [0, 1, 2, 4, 6, 8, 9]
    assert [it["batch"][0][2] for it in trace] == [0, 8, 9, 11, 13, 15, 16]
    assert [it["spec"] for it in trace[1:]] == [
        [(0, 2, 0)], [(0, 2, 1)], [(0, 2, 1)], [(0, 2, 1)], [(0, 1, 0)], [(0, 0, 0)]
    ]
    assert res["spec_drafted_tokens"] == 9 and res["spec_accepted_tokens"] == 3
    assert res["metrics"]["spec_acceptance_rate"] == approx(1.0 / 3.0)
    assert res["tokens_scheduled"].tolist() == [8 + 3 + 3 + 3 + 3 + 2 + 1]


def test_threshold_caps_drafts() -> None:
    # thr = 2 caps every request's tokens, the prefill (4 chunks of 2) and the
    # decoding want 1 + 3 alike: q = 2, j = 1, a = 1 (α = 1) -> g 1, 3, 5, 7, 9; then
    # d = 0 at g = 9. 4 + 5 = 9 iterations, 4 drafts, all accepted.
    res, trace = run_spec([0.0], [8], [10], long_prefill_token_threshold=2,
                          **spec(3, 1.0))
    assert res["iterations"] == 9
    assert qs(trace) == [[(0, 2)]] * 8 + [[(0, 1)]]
    assert [it["batch"][0][4] for it in trace[4:]] == [1, 3, 5, 7, 9]
    assert res["spec_drafted_tokens"] == 4 and res["spec_accepted_tokens"] == 4


# --------------------------------------------------------------------------------------
# (5) The token budget truncates drafts
# --------------------------------------------------------------------------------------


def test_budget_truncates_drafts() -> None:
    # Two requests P = 2, O = 10 at t = 0, K = 3, α = 1, budget 6, max_num_seqs 2.
    # it 1: both admitted, q = 2 each (budget 6 -> 2) -> g = 1, c = 2 each.
    # it 2: r0 wants 4, q = 4 (j 3, a 3: g 5, c 6), budget 2; r1 wants 4, q = 2
    #       (j 1, a 1: g 3, c 4).
    # it 3: the same: r0 g 9, c 10; r1 g 5, c 6.
    # it 4: r0 d = 0: q = 1 -> g 10, finished; r1 q = min(4, 5) = 4 (j 3) -> g 9.
    # it 5: r1 q = 1 -> g 10, finished.
    res, trace = run_spec([0.0, 0.0], [2, 2], [10, 10], max_num_batched_tokens=6,
                          max_num_seqs=2, **spec(3, 1.0))
    assert res["iterations"] == 5 and res["completed"].all()
    assert qs(trace) == [[(0, 2), (1, 2)], [(0, 4), (1, 2)], [(0, 4), (1, 2)],
                         [(0, 1), (1, 4)], [(1, 1)]]
    assert [it["spec"] for it in trace[1:]] == [
        [(0, 3, 3), (1, 1, 1)], [(0, 3, 3), (1, 1, 1)], [(0, 0, 0), (1, 3, 3)],
        [(1, 0, 0)],
    ]
    assert res["spec_drafted_tokens"] == res["spec_accepted_tokens"] == 11
    assert res["tokens_scheduled"].tolist() == [11, 11]
    assert res["finish_s"][0] == trace[3]["end_s"]
    assert res["finish_s"][1] == trace[4]["end_s"]


# --------------------------------------------------------------------------------------
# (6) The drafter's GPU time
# --------------------------------------------------------------------------------------


def test_draft_model_time_by_hand() -> None:
    # The K = 3, α = 1 request of test_every_draft_accepted with a draft model of the
    # lane's own dimensions: G_draft = G_d(F) + 2·G_d(F_dec), F_dec = the request
    # itself while it has not finished (one decode, Kd = c + 1 with c after retire).
    # it 1: G(F) = 4904; F_dec Kd 9 -> 1008:           G_draft = 4904 + 2016 = 6920
    # it 2: G(F) = 3552; F_dec Kd 13 -> 1104:          G_draft = 3552 + 2208 = 5760
    # it 3: G(F) = 3840; F_dec Kd 17 -> 1200:          G_draft = 3840 + 2400 = 6240
    # it 4: G(F) = 1200; finished, F_dec empty -> 0:   G_draft = 1200
    res, trace = run_spec([0.0], [8], [10], **spec(3, 1.0, spec_draft=SAME_DRAFT))
    plain, _ = run_spec([0.0], [8], [10], **spec(3, 1.0))
    assert res["iterations"] == 4
    assert [it["dt_draft"] for it in trace] == [approx(6920.0), approx(5760.0),
                                                approx(6240.0), approx(1200.0)]
    assert [it["dt"] for it in trace] == [approx(5014.0 + 6920.0), approx(3662.0 + 5760.0),
                                          approx(3950.0 + 6240.0), approx(1310.0 + 1200.0)]
    assert res["busy_s"] == approx(34056.0)
    assert res["busy_s"] - plain["busy_s"] == approx(20120.0)
    # The drafter changes no scheduling decision here, only the times.
    assert res["spec_accepted_tokens"] == plain["spec_accepted_tokens"] == 6


def test_draft_model_time_async() -> None:
    # §2.10: an overlapped iteration takes max(G + G_draft, C): it 2..4 have the
    # request running at their start. it 1 is not overlapped: 5014 + 6920.
    res, trace = run_spec([0.0], [8], [10], async_scheduling=True,
                          **spec(3, 1.0, spec_draft=SAME_DRAFT))
    assert [it["dt"] for it in trace] == [approx(11934.0), approx(3552.0 + 5760.0),
                                          approx(3840.0 + 6240.0), approx(1200.0 + 1200.0)]


def test_small_draft_model_adds_g_d_without_shape_tables() -> None:
    # A smaller draft model on a lane with §3.1 tables: the drafter's time is §3's GPU
    # time with the draft's dimensions and no tables, computed here through the
    # reference's own cost functions. With K = 1, G_draft = G_d(F) (no F_dec term),
    # so the first iteration's time difference is exactly G_d(F) of the prefill.
    rng = np.random.default_rng(3)
    corr = {op: [float(v) for v in rng.uniform(-0.3, 0.3, len(SHAPE_CORR_KNOTS))]
            for op in SHAPE_CORR_OPS}
    small = dict(SAME_DRAFT, ffn_size=2, vocab_size=4, num_layers=1, bytes_per_kv=0.5)
    lane = dict(shape_corr=corr, **spec(1, 0.6))
    res, trace = run_spec([0.0], [8], [6], spec_draft=small, **lane)
    plain, plain_trace = run_spec([0.0], [8], [6], **lane)
    assert res["busy_s"] > plain["busy_s"]
    assert qs(trace) == qs(plain_trace)
    draft_cfg = dict(make_config(**small_model_keys(small)))
    g_d = CostModel(validate_config(draft_cfg))  # no shape_corr: no tables
    # Prefill of 8 (c 0) that samples: T = Tp = Kp = 8, ns = 1, Ap = 36, no decodes.
    g_prefill = g_d.gpu_time(8, 1, 8, 36.0, 8, 0, 0)
    assert trace[0]["dt_draft"] == g_prefill
    assert trace[0]["dt"] - plain_trace[0]["dt"] == approx(g_prefill)
    # Every later iteration: G_d of the target batch's own features (K - 1 = 0).
    for it, pit in zip(trace[1:], plain_trace[1:], strict=True):
        (_r, q, c0, nk, g0), = it["batch"]
        j = it["spec"][0][1]
        feats = CostModel.batch_features([(q, c0, nk, g0)], [j])
        T, _n, ns, Tp, Ap, Kp, D, Kd = feats
        assert it["dt_draft"] == g_d.gpu_time(T, ns, Tp, Ap, Kp, D, Kd)
        assert it["dt"] - pit["dt"] == approx(it["dt_draft"])
    # The tables are the target's only: a draft of the target's dimensions differs
    # from the target's own (corrected) GPU time.
    same, same_trace = run_spec([0.0], [8], [6], spec_draft=SAME_DRAFT, **lane)
    target = CostModel(validate_config(make_config(shape_corr=corr)))
    assert same_trace[0]["dt_draft"] != target.gpu_time(8, 1, 8, 36.0, 8, 0, 0)
    assert same_trace[0]["dt_draft"] == approx(4904.0)


def small_model_keys(model: dict[str, Any]) -> dict[str, Any]:
    """The lane config's model keys replaced by ``model``'s."""
    return {key: model[key] for key in MODEL_KEYS}


# --------------------------------------------------------------------------------------
# Random lanes: invariants
# --------------------------------------------------------------------------------------


def test_random_lanes_with_speculation_invariants() -> None:
    # Every feasible lane completes with g = O; Σ j and Σ a match the trace; a <= j;
    # per-request scheduled tokens add up to the total; c + q never passes the
    # blocks used.
    rng = np.random.default_rng(31)
    num_feasible = drafted = accepted = carried = 0
    for i in range(150):
        wl, cfg = _random_lane(rng)
        K = int(rng.integers(1, 5))
        alpha = float(rng.choice([0.0, 0.3, 0.7, 1.0]))
        cfg = dict(cfg, mode="v1", spec_tokens=K, spec_accept_units=spec_accept_units(
            alpha, K), swap=int(rng.integers(0, 2)),
            async_scheduling=bool(rng.integers(0, 2)))
        if i % 2:
            cfg = dict(cfg, enable_prefix_caching=False)
        if i % 3 == 0:
            cfg["spec_draft"] = dict(SAME_DRAFT, num_layers=2)
        trace: list[dict[str, Any]] = []
        res = simulate_reference(wl, cfg, trace=trace)
        if res["infeasible"]:
            continue
        num_feasible += 1
        assert res["completed"].all()
        assert res["generated"].tolist() == list(wl["output_tokens"])
        assert res["tokens_scheduled"].sum() == res["total_tokens"]
        spec_rows = [row for it in trace for row in it["spec"]]
        assert all(0 <= a <= j <= K for _, j, a in spec_rows)
        assert res["spec_drafted_tokens"] == sum(j for _, j, _ in spec_rows)
        assert res["spec_accepted_tokens"] == sum(a for _, _, a in spec_rows)
        if alpha == 0.0:
            assert res["spec_accepted_tokens"] == 0
        # The accumulator is per request and kept across preemptions: replaying
        # acc += A[j]; a = acc // 65536; acc -= 65536·a over the request's steps in
        # order, preempted or not, gives the trace's a.
        units = cfg["spec_accept_units"]
        acc: dict[int, int] = {}
        preempted_with_acc = set()
        for it in trace:
            for r in it["preempted"]:
                if acc.get(r, 0) > 0:
                    preempted_with_acc.add(r)
            for r, j, a in it["spec"]:
                acc[r] = acc.get(r, 0) + units[j]
                assert a == acc[r] // 65536
                acc[r] -= 65536 * a
        carried += len(preempted_with_acc)
        for it in trace:
            q_of = {r: q for r, q, *_ in it["batch"]}
            for r, j, _a in it["spec"]:
                assert q_of[r] == 1 + j
            if "spec_draft" not in cfg:
                assert it["dt_draft"] == 0.0
        drafted += res["spec_drafted_tokens"]
        accepted += res["spec_accepted_tokens"]
    assert num_feasible > 50 and drafted > 100 and 0 < accepted < drafted
    assert carried > 0  # some request was preempted holding a fractional accumulator
