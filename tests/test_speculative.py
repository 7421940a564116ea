"""Speculative decoding (docs/semantics.md §9), worked by hand, and against the oracle.

A decoding request schedules its last sampled token plus ``d = min(K, O - g - 1)``
drafts; of the ``j`` drafts scheduled, ``a`` are accepted by the request's integer
accumulator (``acc += A[j]; a = acc // 65536``), and it advances by ``1 + a`` tokens.
"""

from __future__ import annotations

import re

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsim import config, costmodel, simulate_batch
from jaxsim import params as P
from jaxsim import status as st_bits
from jaxsim.shapes import SimShape
from jaxsim.workload import Trace, stack_workloads, to_workload
from tests.helpers import lane_params, oracle_config, oracle_workload, step_states
from tests.reference.event_sim import simulate_reference
from tests.test_against_reference import R_MAX, S_MAX, compare_lane, random_case
from tests.test_step import clock, lane, slot, steps


def spec(k: int, alpha: float, method: str = "ngram", **kw) -> dict:
    return {"speculative": {"num_tokens": k, "acceptance": alpha, "method": method, **kw}}


def dts(states) -> list[float]:
    return [clock(states[i + 1]) - clock(states[i]) for i in range(len(states) - 1)]


def test_spec__accept_units_follow_the_formula():
    a = P.spec_accept_units(0.5, 2)
    assert a[:3].tolist() == [0, 32768, 49152]  # 65536 * (0.5), 65536 * (0.5 + 0.25)
    assert a[3:].tolist() == [49152] * (P.MAX_SPEC_TOKENS - 2)  # never read past K
    assert P.spec_accept_units(1.0, 4)[:5].tolist() == [0, 65536, 131072, 196608, 262144]
    assert P.spec_accept_units(0.0, 3).tolist() == [0] * (P.MAX_SPEC_TOKENS + 1)
    with pytest.raises(ValueError, match="acceptance"):
        P.spec_accept_units(1.5, 2)
    with pytest.raises(ValueError, match="num_tokens"):
        P.spec_accept_units(0.5, 17)


def test_spec__every_draft_accepted():
    # P=8, O=10, K=3, alpha=1: iteration 1 prefills and samples token 1; then each
    # iteration schedules 1 + min(3, O - g - 1) tokens and accepts them all:
    # g = 1 -> 5 -> 9 -> 10 (the last has no draft: O - g - 1 = 0). c = 8 -> 12 -> 16 -> 17.
    tr = Trace([0.0], [8], [10])
    s = steps(spec(3, 1.0), tr, 4)
    assert [int(slot(x, "slot_generated", 1)[0]) for x in s[1:4]] == [1, 5, 9]
    assert [int(slot(x, "slot_computed", 1)[0]) for x in s[1:4]] == [8, 12, 16]
    out = s[4]
    assert int(out.num_completed) == 1 and int(out.iterations) == 4
    assert int(out.spec_drafted) == 6 and int(out.spec_accepted) == 6
    assert int(out.tokens_scheduled[0]) == 8 + 4 + 4 + 1
    # every token emitted in an iteration is stamped with its end: 9 gaps, 3 iterations
    d = dts(s)
    assert float(out.decode_s[0]) == pytest.approx(d[1] + d[2] + d[3], rel=1e-6)


def test_spec__no_draft_accepted_costs_tokens_not_progress():
    # alpha = 0: every iteration still schedules 1 + K tokens (while O - g - 1 >= K) but
    # advances by one; the request takes O - 1 = 5 decode iterations, as without drafts.
    tr = Trace([0.0], [8], [6])
    s = steps(spec(2, 0.0), tr, 6)
    out = s[6]
    assert int(out.num_completed) == 1 and int(out.iterations) == 6
    assert int(out.spec_accepted) == 0
    # drafts per decode iteration: g = 1..5, d = min(2, 6 - g - 1) = 2, 2, 2, 1, 0
    assert int(out.spec_drafted) == 7
    assert int(out.tokens_scheduled[0]) == 8 + 5 + 7
    plain = steps({}, tr, 6)[6]
    assert int(plain.tokens_scheduled[0]) == 8 + 5


def test_spec__the_accumulator_spreads_fractional_acceptance():
    # K=2, alpha=0.5: A = [0, 32768, 49152]. P=8, O=10. After the prefill (g=1):
    #   it2: j=2, acc 0+49152 -> a=0, acc 49152; g=2
    #   it3: j=2, acc 98304 -> a=1, acc 32768; g=4
    #   it4: j=2, acc 81920 -> a=1, acc 16384; g=6
    #   it5: j=2, acc 65536 -> a=1, acc 0; g=8
    #   it6: j=min(2, 10-8-1)=1, acc 32768 -> a=0; g=9
    #   it7: j=0; g=10, finished. Drafted 9, accepted 3.
    tr = Trace([0.0], [8], [10])
    s = steps(spec(2, 0.5), tr, 7)
    assert [int(slot(x, "slot_generated", 1)[0]) for x in s[1:7]] == [1, 2, 4, 6, 8, 9]
    assert [int(slot(x, "slot_spec_acc", 1)[0]) for x in s[1:7]] == [
        0, 49152, 32768, 16384, 0, 32768]
    assert int(s[7].num_completed) == 1
    assert int(s[7].spec_drafted) == 9 and int(s[7].spec_accepted) == 3


def test_spec__the_token_budget_cuts_drafts():
    # A and B (P=4, O=20) at 0, K=3, alpha=1, budget 6, chunked prefill:
    #   it1: A prefills 4, B gets the 2 left: g = [1, 0], c = [4, 2]
    #   it2: A (decoding) wants 1 + 3 = 4 -> 4; B finishes its prompt with the 2 left:
    #        A accepts 3: g = [5, 1], c = [8, 4]
    #   it3: A wants 4 -> 4; B (decoding) wants 4, gets 2 = 1 + 1 draft:
    #        g = [9, 3], c = [12, 6]; drafted 3 + 3 + 1 = 7
    tr = Trace([0.0, 0.0], [4, 4], [20, 20])
    s = steps({**spec(3, 1.0), "max_num_batched_tokens": 6, "max_num_seqs": 4}, tr, 3)
    assert slot(s[1], "slot_generated", 2).tolist() == [1, 0]
    assert slot(s[1], "slot_computed", 2).tolist() == [4, 2]
    assert slot(s[2], "slot_generated", 2).tolist() == [5, 1]
    assert slot(s[2], "slot_computed", 2).tolist() == [8, 4]
    assert slot(s[3], "slot_generated", 2).tolist() == [9, 3]
    assert slot(s[3], "slot_computed", 2).tolist() == [12, 6]
    assert int(s[3].spec_drafted) == 7 and int(s[3].spec_accepted) == 7


def test_spec__a_decoding_request_the_budget_does_not_reach_waits():
    # A, B, C (P=2, O=20) at 0, K=3, alpha=1, budget 8: iteration 1 prefills all three
    # (6 tokens); in iteration 2 A and B take 4 tokens each and C, running but not
    # reached, gets nothing: it neither drafts nor advances (found by the random oracle
    # lanes: such a row once took the drafts of "-1" scheduled tokens).
    tr = Trace([0.0, 0.0, 0.0], [2, 2, 2], [20, 20, 20])
    s = steps({**spec(3, 1.0), "max_num_batched_tokens": 8, "max_num_seqs": 4}, tr, 2)
    assert slot(s[1], "slot_generated", 3).tolist() == [1, 1, 1]
    assert slot(s[2], "slot_generated", 3).tolist() == [5, 5, 1]
    assert slot(s[2], "slot_computed", 3).tolist() == [6, 6, 2]
    assert int(s[2].spec_drafted) == 6 and slot(s[2], "slot_spec_acc", 3).tolist() == [0] * 3


def test_spec__draft_blocks_count_while_the_iteration_runs():
    # block_size 4, P=3, O=10, K=3, alpha=0: iteration 2 schedules the last token and 3
    # drafts (c = 3 -> 7), so it holds ceil(7/4) = 2 blocks while it runs, against
    # ceil(4/4) = 1 without drafts; the rejected drafts are dropped (c = 4 after it).
    tr = Trace([0.0], [3], [10])
    s = steps(spec(3, 0.0), tr, 2)
    plain = steps({}, tr, 2)
    assert int(s[2].kv_peak_blocks) == 2 and int(plain[2].kv_peak_blocks) == 1
    assert int(slot(s[2], "slot_computed", 1)[0]) == 4


def _features_time(cfg, **feats) -> float:
    params = lane(cfg, Trace([0.0], [8], [10]))
    f = costmodel.features_from_floats(**feats)
    t = costmodel.iteration_time_dd(params.model, params.hardware, params.scheduler.tp,
                                    params.cost, f)
    return float(t.hi) + float(t.lo)


def test_spec__a_verification_is_costed_as_a_prefill_of_its_tokens():
    # Iteration 2 of P=8, O=10, K=3 (n-gram drafts: no GPU time of their own): one
    # request with q = 4 tokens at context c = 8, sampling at 4 positions.
    tr = Trace([0.0], [8], [10])
    d = dts(steps(spec(3, 0.5), tr, 2))
    q, c = 4, 8
    want = _features_time(spec(3, 0.5), tokens=q, num_seqs=1, num_sampled=q,
                          prefill_tokens=q, prefill_pairs=q * (c + (q + 1) / 2),
                          prefill_kv_tokens=c + q)
    assert d[1] == pytest.approx(want, rel=1e-6)
    plain = _features_time({}, tokens=1, num_seqs=1, num_sampled=1, num_decodes=1,
                           decode_kv_tokens=c + 1)
    assert want > plain


def test_spec__an_eagle_drafter_adds_its_gpu_time():
    # The same iteration with an EAGLE drafter (one layer of the target's shape): the
    # difference is G_d(F) + (K - 1) G_d(F_dec), F the batch above and F_dec one decode
    # at context c + 1 + a (alpha = 1: a = 3, c after = 12).
    tr = Trace([0.0], [8], [10])
    ng = dts(steps(spec(3, 1.0), tr, 2))
    eg = dts(steps(spec(3, 1.0, "eagle"), tr, 2))
    params = lane(spec(3, 1.0, "eagle"), tr)
    draft = params.spec.draft
    assert float(draft.num_layers) == 1.0
    corr = params.cost.shape_corr
    cost = eqx.tree_at(lambda c: c.shape_corr, params.cost,
                       jnp.zeros((*corr.shape[:-1], 0), jnp.float32))
    k = costmodel.prepare(draft, params.hardware, params.scheduler.tp, cost)

    def g(**feats) -> float:
        t = costmodel.gpu_time_from_consts(k, costmodel.features_from_floats(**feats))
        return float(t.hi) + float(t.lo)

    q, c = 4, 8
    first = g(tokens=q, num_seqs=1, num_sampled=q, prefill_tokens=q,
              prefill_pairs=q * (c + (q + 1) / 2), prefill_kv_tokens=c + q)
    dec = g(tokens=1, num_seqs=1, num_sampled=1, num_decodes=1, decode_kv_tokens=12 + 1)
    assert eg[1] - ng[1] == pytest.approx(first + 2 * dec, rel=1e-5)
    # the prefill iteration drafts too (the first pass over its 8 tokens, then K - 1
    # decode steps of the request that sampled)
    assert eg[0] > ng[0]


def test_spec__off_is_unchanged_and_v0_ignores_k():
    tr = Trace([0.0, 0.01], [8, 20], [10, 5])
    a = steps({}, tr, 12)[-1]
    b = steps(spec(0, 0.7), tr, 12)[-1]
    assert clock(a) == clock(b) and int(a.iterations) == int(b.iterations)
    # a hand-built v0 lane with K > 0 (the configuration layer refuses it): K is 0
    params = lane({"scheduler": "v0", "max_num_batched_tokens": 64}, tr)
    sp = P.SpecParams(num_tokens=3, accept_units=P.spec_accept_units(1.0, 3),
                      draft=params.model, has_draft=0)
    with_k = eqx.tree_at(lambda p: p.spec, params, sp, is_leaf=lambda x: x is None)
    shape = SimShape(max_requests=2, max_slots=8, speculative=True)
    s_k = step_states(shape, with_k, to_workload(tr), 12)[-1]
    s_0 = steps({"scheduler": "v0", "max_num_batched_tokens": 64}, tr, 12)[-1]
    assert clock(s_k) == clock(s_0) and int(s_k.spec_drafted) == 0


@pytest.mark.parametrize("bad, match", [
    ({"scheduler": "v0", **spec(2, 0.7)}, "scheduler=v0"),
    (spec(2, 0.7, "draft_model"), "required with speculative.method: draft_model"),
    (spec(2, 0.7, "eagle", draft_model="Llama-3.1-8B"), "read only"),
    ({"model": "Llama-2-7B", **spec(2, 0.7, "draft_model", draft_model="Llama-3.1-8B")},
     "vocabulary"),
    (spec(2, 0.7, "medusa"), "speculative.method"),
    (spec(17, 0.7), "speculative.num_tokens"),
    (spec(2, 1.5), "speculative.acceptance"),
    (spec(2, 0.7, "draft_model", draft_model="Llama-9B"), "not a model preset"),
    ({"speculative": {"tokens": 2}}, "speculative.tokens: unknown key"),
])
def test_spec__bad_configuration_is_refused(bad, match):
    with pytest.raises(config.ConfigError, match=match):
        config.validate(bad)


def test_spec__draft_model_weights_take_kv_memory():
    base = {"model": "Llama-3.1-70B", "gpu": "H100-SXM", "tp": 4}
    cols = config.columns_from_configs([
        config.validate(base),
        config.validate({**base, **spec(4, 0.6, "draft_model", draft_model="Llama-3.1-8B")}),
        config.validate({**base, **spec(4, 0.6, "ngram")})])
    _, info = config.params_from_columns(cols, 1024)
    w = info["weights_gb"]
    # Llama-3.1-8B in BF16 over 4 GPUs: about 16 GB / 4
    assert 3.5 < w[1] - w[0] < 4.5 and w[2] == w[0]
    assert info["num_gpu_blocks"][1] < info["num_gpu_blocks"][0]


def spec_case(rng: np.random.Generator) -> tuple[Trace, dict]:
    """A random oracle lane (tests/test_against_reference.py) with speculative decoding
    drawn on its v1 lanes: K, the acceptance and the drafter."""
    trace, cfg = random_case(rng, external=True)  # §8: some bring part of their KV
    if cfg["scheduler"] == "v1" and rng.random() < 0.85:
        method = str(rng.choice(["ngram", "eagle", "draft_model"]))
        draft = {}
        if method == "draft_model":
            if cfg["model"] in ("Llama-3.1-8B", "Llama-3.1-70B"):
                draft = {"draft_model": "Llama-3.1-8B"}
            else:
                method = "eagle"
        cfg.update(spec(int(rng.integers(1, 8)), float(rng.choice([0.0, 0.3, 0.62, 0.9, 1.0])),
                        method, **draft))
    return trace, cfg


def _has_drafter(c: dict) -> bool:
    sp = c.get("speculative", {})
    return sp.get("num_tokens", 0) > 0 and sp.get("method") != "ngram"


def _oracle_group(cases):
    """Run ``cases`` as one batch (event skipping on) and compare every lane with the
    reference simulator; return the results and the reference runs."""
    traces = [t for t, _ in cases]
    lanes = [lane_params(c, t) for t, c in cases]
    wl = stack_workloads([to_workload(t, R_MAX) for t in traces])
    shape = SimShape(max_requests=R_MAX, max_slots=S_MAX, macro_iterations=16)
    res = simulate_batch(shape, P.stack(lanes), wl)
    failures, refs = [], []
    for i, ((t, c), lane_p) in enumerate(zip(cases, lanes, strict=True)):
        ref = simulate_reference(oracle_workload(t), oracle_config(lane_p))
        refs.append(ref)
        errs = compare_lane(i, t, res, ref)
        for key in ("spec_drafted_tokens", "spec_accepted_tokens"):
            # (a lane whose weights do not fit is infeasible in jaxsim alone: the
            # reference is given the KV blocks, compare_lane skips it)
            if not int(res.status[i]) & st_bits.INFEASIBLE and \
                    int(res.metrics[key][i]) != ref[key]:
                errs.append(f"{key} {int(res.metrics[key][i])} vs ref {ref[key]}")
        if errs:
            failures.append(f"lane {i} ({c}): " + "; ".join(errs[:4]))
    assert not failures, f"{len(failures)} lanes differ:\n" + "\n".join(failures[:6])
    return res, refs


def test_spec__random_lanes_match_the_reference_simulator():
    # two batches: lanes with a drafter's GPU time (eagle, draft_model: SimShape.spec_draft
    # compiled in), and n-gram lanes with lanes without speculative decoding (not)
    rng = np.random.default_rng(20261125)
    cases = [spec_case(rng) for _ in range(96)]
    groups = [[x for x in cases if _has_drafter(x[1])],
              [x for x in cases if not _has_drafter(x[1])]]
    cases = groups[0] + groups[1]
    runs = [_oracle_group(g) for g in groups]
    refs = runs[0][1] + runs[1][1]
    drafted = sum(r["spec_drafted_tokens"] for r in refs)
    accepted = sum(r["spec_accepted_tokens"] for r in refs)
    # the drawn lanes exercise drafting, partial acceptance, drafters and preemption
    assert drafted > 2000 and 0 < accepted < drafted, (drafted, accepted)
    on = [c for _, c in cases if c.get("speculative", {}).get("num_tokens", 0) > 0]
    assert len(on) >= 40 and min(len(g) for g in groups) >= 20
    assert sum(c["speculative"]["method"] == "draft_model" for c in on) >= 5
    assert sum(r["total_preemptions"] > 0 for r in refs) >= 5
    assert sum(t.external_tokens is not None
               and c.get("speculative", {}).get("num_tokens", 0) > 0 for t, c in cases) >= 8
    # event skipping (§6) took part on the speculative lanes of both batches
    for (res, _), group in zip(runs, groups, strict=True):
        steps, iters = res.metrics["steps"], res.metrics["iterations"]
        on = np.array([c.get("speculative", {}).get("num_tokens", 0) > 0 for _, c in group])
        assert np.sum((steps < iters) & on) >= 8
        assert steps[on].sum() < 0.85 * iters[on].sum()


@pytest.mark.slow  # two command-line runs compile (about 20 s): CI's slow step
def test_spec__simulate_prints_the_acceptance_and_export_carries_the_config(capsys):
    from search import export
    from tests.test_cli import SMALL, run_cli

    args = ["simulate", *SMALL, "--set", "speculative.num_tokens=3", "--set",
            "speculative.acceptance=0.7", "--set", "workload.output_tokens=32"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    line = re.search(r"speculative decoding \(ngram, K=3\): drafted (\d+), accepted (\d+) "
                     r"\(rate ([0-9.]+)\)", out)
    assert line, out
    drafted, accepted, rate = int(line[1]), int(line[2]), float(line[3])
    # 40 requests of 32 outputs, at most 3 drafts for each of at most 31 decode steps;
    # drafts near a request's end are fewer (min(3, O - g - 1)), so the rate is below
    # the 0.512 of three drafts (0.7 + 0.49 + 0.343 over 3)
    assert 0 < accepted < drafted <= 40 * 31 * 3
    assert rate == pytest.approx(accepted / drafted, abs=5e-4) and rate < 0.512
    cmd = export.vllm_serve_command({"speculative": {"num_tokens": 3}})
    assert ("--speculative-config '{\"method\":\"ngram\",\"num_speculative_tokens\":3,"
            "\"prompt_lookup_max\":4}'") in cmd
    cmd = export.vllm_serve_command({"model": "Llama-3.1-70B", "tp": 4, "speculative": {
        "num_tokens": 4, "method": "draft_model", "draft_model": "Llama-3.1-8B"}})
    assert "\"model\":\"meta-llama/Llama-3.1-8B-Instruct\"" in cmd
    assert any("acceptance" in n for n in export.vllm_caveats({"speculative": {
        "num_tokens": 2}}))
