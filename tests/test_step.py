"""Hand-worked scenarios, one per scheduling rule of docs/semantics.md §2.

Each test builds a tiny workload, steps the JAX simulator iteration by iteration and
checks the state against numbers worked out by hand in the comments.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsim import params as P
from jaxsim import simulate_batch
from jaxsim import status as st_bits
from jaxsim.shapes import SimShape
from jaxsim.workload import Trace, to_workload
from tests.helpers import lane_params, step_states

BASE = {"max_num_batched_tokens": 64, "max_num_seqs": 8, "block_size": 4,
        "num_gpu_blocks": 1000}


def lane(cfg: dict, trace: Trace):
    return lane_params({**BASE, **cfg}, trace)


def steps(cfg: dict, trace: Trace, n: int, slots: int = 8) -> list:
    """States after each of n iterations (index 0 = initial state); event skipping off,
    so each step is one iteration."""
    params = lane(cfg, trace)
    shape = SimShape(max_requests=len(trace), max_slots=slots, macro_iterations=0)
    return step_states(shape, params, to_workload(trace), n)


#: Request rows of every ``run``: traces are padded to it, so the tests share a few
#: compiled shapes instead of compiling one per trace length.
RUN_ROWS = 8


def run(cfg: dict, trace: Trace, slots: int = 8, **kw):
    params = P.stack([lane(cfg, trace)])
    shape = SimShape(max_requests=RUN_ROWS, max_slots=slots, chunk_iterations=64)
    return simulate_batch(shape, params, to_workload(trace, RUN_ROWS), **kw)


def slot(st, name, n=None):
    a = np.asarray(getattr(st, name))
    return a if n is None else a[:n]


def clock(st) -> float:
    return float(st.clock_hi) + float(st.clock_lo)


def test_step__prefill_then_decode():
    # One request, P=10, O=3: iteration 1 computes the 10 prompt tokens and samples the
    # first output token (TTFT = dt1); iterations 2 and 3 decode one token each.
    tr = Trace([0.0], [10], [3])
    s = steps({}, tr, 4)
    assert slot(s[1], "slot_computed", 1).tolist() == [10]
    assert slot(s[1], "slot_generated", 1).tolist() == [1]
    assert slot(s[2], "slot_computed", 1).tolist() == [11]
    assert int(s[3].num_completed) == 1 and int(s[3].n_act) == 0
    dt = [clock(s[i + 1]) - clock(s[i]) for i in range(3)]
    assert float(s[3].ttft_s[0]) == pytest.approx(dt[0], rel=1e-6)
    assert float(s[3].ttft_s[0] + s[3].decode_s[0]) == pytest.approx(sum(dt), rel=1e-6)
    assert int(s[3].tokens_scheduled[0]) == 12  # P + O - 1
    assert int(s[4].iterations) == 3  # nothing left: no 4th iteration
    assert clock(s[4]) == clock(s[3])


def test_step__chunked_prefill_splits_prompt_by_budget():
    # P=100 with a 32-token budget: chunks of 32, 32, 32, 4; the 4th samples token 1.
    tr = Trace([0.0], [100], [2])
    s = steps({"max_num_batched_tokens": 32}, tr, 4)
    assert [int(slot(x, "slot_computed", 1)[0]) for x in s[1:5]] == [32, 64, 96, 100]
    assert [int(slot(x, "slot_generated", 1)[0]) for x in s[1:5]] == [0, 0, 0, 1]


def test_step__running_first_then_waiting_gets_the_rest():
    # Budget 16. A (P=8, O=5) and B (P=50, O=2) arrive together.
    # it1: A gets 8 (prefill done, g=1), B gets the remaining 8.
    # it2, it3: A decodes 1, B gets 15 -> c_B = 23, 38.
    # it4: A decodes, B gets 12 -> c_B = 50 = P: B samples its first token.
    # it5: A decodes its 5th token and B its 2nd: both finish.
    tr = Trace([0.0, 0.0], [8, 50], [5, 2])
    s = steps({"max_num_batched_tokens": 16}, tr, 5)
    assert slot(s[1], "slot_computed", 2).tolist() == [8, 8]
    assert slot(s[2], "slot_computed", 2).tolist() == [9, 23]
    assert slot(s[3], "slot_computed", 2).tolist() == [10, 38]
    assert slot(s[4], "slot_computed", 2).tolist() == [11, 50]
    assert slot(s[4], "slot_generated", 2).tolist() == [4, 1]
    assert int(s[5].num_completed) == 2


def test_step__fcfs_admission_does_not_skip_ahead():
    # No chunking, budget 64: R0 (40) fits; R1 (40) does not fit the remaining 24, and
    # R2 (10) would, but admission stops at R1.
    tr = Trace([0.0, 0.0, 0.0], [40, 40, 10], [2, 2, 2])
    s = steps({"enable_chunked_prefill": False}, tr, 1)
    assert int(s[1].n_run) == 1 and int(s[1].ptr) == 1
    assert slot(s[1], "slot_req", 1).tolist() == [0]


def test_step__arrival_ties_keep_file_order():
    # Same arrival time: the earlier row of the input is admitted first.
    tr = Trace([0.5, 0.5, 0.1], [30, 30, 30], [2, 2, 2])
    res = run({"max_num_seqs": 1}, tr)
    ttft = np.asarray(res.state.ttft_s[0])[:3]  # arrival order: rows 2, 0, 1
    e2e = res.requests(0)["e2e_s"]
    finish = np.array([0.1, 0.5, 0.5]) + e2e
    assert finish[0] < finish[1] < finish[2]
    assert np.all(np.isfinite(ttft))


def test_step__max_num_seqs_limits_running():
    tr = Trace([0.0] * 3, [4, 4, 4], [5, 5, 5])
    s = steps({"max_num_seqs": 2}, tr, 1)
    assert int(s[1].n_run) == 2 and int(s[1].ptr) == 2


def test_step__long_prefill_threshold_caps_chunks():
    tr = Trace([0.0], [20], [2])
    s = steps({"long_prefill_token_threshold": 8}, tr, 3)
    assert [int(slot(x, "slot_computed", 1)[0]) for x in s[1:4]] == [8, 16, 20]


def test_step__threshold_splits_prompts_with_chunked_prefill_off():
    # vLLM v1 caps a request's tokens at the threshold before its chunked-prefill check:
    # R0 (P=6) takes 6 of the budget of 10, R1's capped 6 > 4 left stops admission (no
    # partial chunk without chunked prefill); R1 then runs 6 and 3. v0 ignores it.
    tr = Trace([0.0, 0.0], [6, 9], [1, 1])
    cfg = {"enable_chunked_prefill": False, "long_prefill_token_threshold": 6,
           "max_num_batched_tokens": 16, "max_model_len": 16}
    s = steps({**cfg, "max_num_batched_tokens": 10, "max_model_len": 10}, tr, 3)
    assert [int(x.ptr) for x in s[1:4]] == [1, 2, 2]
    assert [int(x.tokens_total) for x in s[1:4]] == [6, 12, 15]
    s = steps({**cfg, "scheduler": "v0"}, tr, 1)
    assert int(s[1].tokens_total) == 15  # both prompts whole


def test_step__v0_decode_needs_a_free_block_to_touch():
    # block_size 4, 4 blocks, R0 and R1 with P=4, O=8 at t=0 (max_model_len 12: 3 blocks,
    # and the spare one v0 needs to be feasible). it1: both prefill (1 block
    # each). it2: both open a second block (free 0). it3: R0's token fits in its block,
    # but vLLM v0's block manager counts the block it touches and none is free: R1 (the
    # last running) is preempted. it4: prefill-first, R1 (6 known tokens, 2 blocks) is
    # readmitted, leaving none free; it5: the same preemption again. v1 schedules both
    # until R0 needs a new block (it6).
    tr = Trace([0.0, 0.0], [4, 4], [8, 8])
    v0 = steps({"scheduler": "v0", "num_gpu_blocks": 4}, tr, 6)
    assert [int(x.n_run) for x in v0[1:7]] == [2, 2, 1, 2, 1, 2]
    assert [int(x.preemptions_total) for x in v0[1:7]] == [0, 0, 1, 1, 2, 2]
    assert [int(x.slot_computed[0]) for x in v0[1:7]] == [4, 5, 6, 6, 7, 7]  # R0 decodes
    v1 = steps({"num_gpu_blocks": 4}, tr, 6)
    assert [int(x.n_run) for x in v1[1:7]] == [2, 2, 2, 2, 2, 1]
    assert int(v1[5].preemptions_total) == 0 and int(v1[6].preemptions_total) == 1


def test_step__v0_needs_a_spare_block_to_be_feasible():
    """One request whose sequence fills the cache exactly (4 blocks of 4 for 16 tokens):
    in v0 its decode of a token that fits in its last block finds no block to touch and
    preempts itself, an iteration with nothing in it; such a lane is infeasible in v0."""
    from jaxsim import config as cfg_mod
    from tests.helpers import oracle_config
    from tests.reference.event_sim import is_feasible

    tr = Trace([0.0], [4], [12])
    for sched, ok in (("v0", False), ("v1", True)):
        cfg = {"scheduler": sched, "block_size": 4, "num_gpu_blocks": 4, "watermark": 0.0,
               "max_num_seqs": 4, "max_num_batched_tokens": 64}
        p = lane(cfg, tr)
        assert bool(int(p.status0) & st_bits.INF_KV_TOO_SMALL) is not ok, sched
        assert is_feasible(oracle_config(p), [4], [12]) is ok
    v = cfg_mod.validate({"scheduler": "v0", "num_gpu_blocks": 4, "block_size": 4,
                          "watermark": 0.0, "max_num_batched_tokens": 64,
                          "max_num_seqs": 4})
    params, info = cfg_mod.params_from_columns(cfg_mod.columns_from_configs([v]), 16)
    why = cfg_mod.status_reasons(v, int(params.status0[0]),
                                 {k: np.asarray(x)[0] for k, x in info.items()}, 16,
                                 {"iterations": 0, "completed": 0})
    assert any("the workload's longest request) and the free block a v0 decode touches" in r
               for r in why), why


def test_step__preempts_last_admitted_and_recomputes():
    # block_size 4, 6 blocks (24 tokens). R0, R1: P=8, O=10, both at t=0.
    # it1: both prefill (2 blocks each; free 2), g=1.  it2: both need a 3rd block
    # (free 0).  it3-5: no new block.  it6: R0 needs a 4th block, none free: the last
    # running request (R1, g=5) is preempted (its 3 blocks freed); no admissions in an
    # iteration that preempted.  it7-9: R1 (queue front) needs ceil(13/4)=4 blocks for
    # P+g=13 tokens but only 2 are free.  it10: R0 finishes (17 tokens scheduled).
    # it11: R1 recomputes 13 tokens and samples token 6; it12-15: tokens 7-10.
    tr = Trace([0.0, 0.0], [8, 8], [10, 10])
    cfg = {"num_gpu_blocks": 6}
    s = steps(cfg, tr, 15)
    assert int(s[5].n_run) == 2
    assert int(s[6].n_run) == 1 and int(s[6].n_act) == 2  # R1 is the preempted row
    assert slot(s[6], "slot_req", 2).tolist() == [0, 1]
    assert slot(s[6], "slot_computed", 2).tolist() == [13, 0]
    assert slot(s[6], "slot_generated", 2).tolist() == [6, 5]
    assert slot(s[6], "slot_preemptions", 2).tolist() == [0, 1]
    assert int(s[9].n_run) == 1  # still waiting for blocks
    assert int(s[10].num_completed) == 1
    assert int(s[11].n_run) == 1 and slot(s[11], "slot_computed", 1).tolist() == [13]
    assert slot(s[11], "slot_generated", 1).tolist() == [6]
    assert int(s[15].num_completed) == 2
    assert np.asarray(s[15].preemptions).tolist() == [0, 1]
    assert np.asarray(s[15].tokens_scheduled).tolist() == [17, 29]
    assert int(s[15].iterations) == 15
    # TTFT is stamped once: R1's first token came in iteration 1, not at the recompute.
    assert float(s[15].ttft_s[1]) == pytest.approx(clock(s[1]), rel=1e-6)


def test_step__self_preemption_waits_for_memory():
    # 10 blocks of 4. R0: P=20, O=6 (5 blocks, needs 7 in the end), R1: P=16, O=2.
    # it1: both admitted (5 + 4 blocks, free 1). it2: R0 decode needs a 6th block -> ok
    # (free 0); R1 decode needs a 5th -> R1 preempts itself (it is the last).
    tr = Trace([0.0, 0.0], [20, 16], [6, 2])
    s = steps({"num_gpu_blocks": 10}, tr, 2)
    assert int(s[2].n_run) == 1 and int(s[2].n_act) == 2
    assert slot(s[2], "slot_preemptions", 2).tolist() == [0, 1]
    res = run({"num_gpu_blocks": 10}, tr)
    assert int(res.metrics["completed"][0]) == 2


def test_step__watermark_blocks_admission():
    # 10 blocks of 4, watermark 0.2 -> 2 blocks must stay free after an admission.
    # R0 needs 6 blocks (free 4 >= 2: admitted). R1 needs 3 (free 1 < 2): not admitted.
    tr = Trace([0.0, 0.0], [24, 12], [2, 2])
    s = steps({"num_gpu_blocks": 10, "watermark": 0.2}, tr, 1)
    assert int(s[1].n_run) == 1
    # with an 8-token R1 (2 blocks, leaves exactly 2) both are admitted
    s = steps({"num_gpu_blocks": 10, "watermark": 0.2}, Trace([0.0, 0.0], [24, 8], [2, 2]), 1)
    assert int(s[1].n_run) == 2


def test_step__full_sequence_must_fit_to_be_admitted():
    # 8 blocks of 4, budget 8, chunked. R0 (P=8, O=3) and R1 (P=24, O=2) at t=0.
    # it1: R0 prefills 8 (2 blocks, free 6); the budget is spent.  it2: R0 decodes (its
    # 3rd block, free 5); R1's chunk would be 7 tokens (2 blocks: fits), but its 24
    # tokens need 6 blocks > 5 free: with scheduler_reserve_full_isl (the default) it
    # waits; without, it is admitted for 7 tokens.  it3: R0's last token, no new block;
    # R1 still waits.  it4: R0's blocks are free; R1 gets 8 tokens.
    tr = Trace([0.0, 0.0], [8, 24], [3, 2])
    cfg = {"num_gpu_blocks": 8, "max_num_batched_tokens": 8}
    s = steps(cfg, tr, 4)
    assert [int(x.n_run) for x in s[1:5]] == [1, 1, 0, 1]  # R0 alone, then R1 alone
    assert int(s[3].num_completed) == 1 and int(s[3].ptr) == 1  # R1 not yet read
    assert slot(s[4], "slot_req", 1).tolist() == [1]
    assert slot(s[4], "slot_computed", 1).tolist() == [8]
    s = steps({**cfg, "scheduler_reserve_full_isl": False}, tr, 2)
    assert int(s[2].n_run) == 2 and slot(s[2], "slot_computed", 2).tolist() == [9, 7]


def test_step__v0_prefill_batches_exclude_decodes():
    # v0: R0 arrives at 0, R1 just after (1 us). it1: prefill R0. it2: R1 has arrived, so
    # the iteration is a prefill batch of R1 alone: R0 is not decoded. it3: decode both.
    tr = Trace([0.0, 1e-6], [8, 8], [4, 4])
    s = steps({"scheduler": "v0"}, tr, 3)
    assert slot(s[1], "slot_computed", 1).tolist() == [8]
    assert slot(s[2], "slot_computed", 2).tolist() == [8, 8]
    assert slot(s[2], "slot_generated", 2).tolist() == [1, 1]
    assert slot(s[3], "slot_computed", 2).tolist() == [9, 9]


def test_step__v1_mixes_prefill_and_decode():
    tr = Trace([0.0, 1e-6], [8, 8], [4, 4])
    s = steps({"scheduler": "v1"}, tr, 2)
    assert slot(s[2], "slot_computed", 2).tolist() == [9, 8]


def test_step__idle_jump_to_next_arrival():
    # R0 at 0 (P=8, O=2) is done after 2 iterations; R1 arrives at 100 s. The clock jumps
    # to 100 s: R1 is admitted on arrival (no queueing), no empty iterations.
    tr = Trace([0.0, 100.0], [8, 8], [2, 2])
    res = run({}, tr)
    m = res.lane(0)
    assert m["iterations"] == 4
    assert float(res.state.queue_s[0, 1]) == 0.0
    assert float(res.state.ttft_s[0, 1]) == pytest.approx(float(res.state.ttft_s[0, 0]),
                                                          rel=1e-6)
    assert m["busy_s"] < 1.0
    assert m["duration_s"] == pytest.approx(100.0 + float(res.requests(0)["e2e_s"][1]),
                                            rel=1e-7)


def test_step__single_output_token_finishes_at_prefill():
    tr = Trace([0.0], [16], [1])
    res = run({}, tr)
    m = res.lane(0)
    assert m["completed"] == 1 and m["iterations"] == 1
    assert m["ttft_mean_s"] == pytest.approx(m["e2e_mean_s"])
    assert np.isnan(m["tpot_mean_s"])  # no TPOT for single-token outputs


def test_step__finished_request_frees_its_blocks():
    # 6 blocks of 4: R0 (P=16, O=2) takes 4 then 5 blocks... R1 (P=16) must wait for R0.
    tr = Trace([0.0, 0.0], [16, 16], [2, 2])
    s = steps({"num_gpu_blocks": 6}, tr, 3)
    assert int(s[1].n_run) == 1  # R1 needs 4 blocks, only 2 free
    assert int(s[2].num_completed) == 1
    assert int(s[3].n_run) == 1 and slot(s[3], "slot_req", 1).tolist() == [1]


@pytest.mark.parametrize(
    "cfg, bit",
    [
        ({"enable_chunked_prefill": False, "max_num_batched_tokens": 16},
         st_bits.INF_BUDGET_TOO_SMALL),
        ({"model": "Qwen2.5-7B", "tp": 8}, st_bits.INF_TP_SHAPE),
        ({"model": "Llama-3.1-70B", "gpu": "L40S", "num_gpu_blocks": None},
         st_bits.INF_NO_KV_MEMORY),
        ({"max_model_len": 20}, st_bits.INF_REQUEST_TOO_LONG),
        ({"max_num_seqs": 128, "max_num_batched_tokens": 64}, st_bits.INF_BUDGET_LT_SEQS),
        ({"num_gpu_blocks": 5}, st_bits.INF_KV_TOO_SMALL),
    ],
)
def test_step__infeasible_lanes_are_flagged_and_idle(cfg, bit):
    tr = Trace([0.0, 0.0], [30, 10], [3, 3])
    res = run(cfg, tr)  # an infeasible lane never admits, so 8 slots do for 128 seats
    status = int(res.status[0])
    assert status & st_bits.INFEASIBLE and status & bit, st_bits.describe(status)
    assert int(res.metrics["completed"][0]) == 0
    assert int(res.metrics["iterations"][0]) == 0
    assert np.isnan(res.metrics["ttft_mean_s"][0])


def test_step__slot_overflow_is_flagged_and_auto_rerun_is_exact():
    tr = Trace(np.zeros(6), [5] * 6, [4] * 6)
    small = run({}, tr, slots=2, auto_slots=False)
    assert int(small.status[0]) & st_bits.OVERFLOW_SLOTS
    exact = run({}, tr, slots=8)
    assert int(exact.status[0]) == 0
    auto = run({}, tr, slots=2, auto_slots=True)
    assert int(auto.status[0]) == 0
    for k in ("ttft_mean_s", "e2e_p99_s", "iterations"):
        assert auto.metrics[k][0] == exact.metrics[k][0]
    # the final state is the re-run's too, except the slot table's own rows
    for name in ("status", "iterations", "busy_hi", "clock_hi", "num_completed", "ttft_s"):
        np.testing.assert_array_equal(getattr(auto.state, name), getattr(exact.state, name),
                                      err_msg=name)


def test_step__no_overflow_flag_when_max_num_seqs_fits():
    tr = Trace(np.zeros(6), [5] * 6, [4] * 6)
    res = run({"max_num_seqs": 2}, tr, slots=2)
    assert int(res.status[0]) == 0


def test_step__v0_preemption_with_a_full_slot_table_is_not_an_overflow():
    """v0 tries admission before its decode batch preempts: with max_num_seqs running
    then, a row freed by the preemption could not have admitted the next request, so a
    table of max_num_seqs rows is no overflow. Hand-worked (block 16, 5 blocks, 2 seats):
    r0, r1 prefill in iteration 0; in iteration 17 r0 takes the last free block for its
    33rd token and r1 preempts itself; r2 (1 token) waits behind r1 until r0 finishes."""
    tr = Trace([0.0, 0.0, 0.0], [16, 16, 1], [20, 20, 1])
    cfg = {"scheduler": "v0", "max_num_seqs": 2, "block_size": 16, "num_gpu_blocks": 5}
    res = run(cfg, tr, slots=2, auto_slots=False)
    assert int(res.status[0]) == 0, st_bits.describe(int(res.status[0]))
    assert int(res.metrics["completed"][0]) == 3
    assert int(res.metrics["preemptions"][0]) >= 1


def test_step__nan_parameter_halts_lane_with_flag():
    tr = Trace([0.0, 0.1], [8, 8], [3, 3])
    p = lane({}, tr)
    p = jax.tree_util.tree_map(lambda x: x, p)
    import equinox as eqx

    from jaxsim.params import COST_INDEX

    bad = eqx.tree_at(lambda q: q.hardware.hbm_bw_bytes_per_s, p, jnp.float32(jnp.nan))
    # a NaN in one operator's compute term, a zero peak, an efficiency that underflows
    # to 0: the smooth maximum must not drop the bad term and keep the other one (an
    # operator faster than any finite value makes it, with status ok)
    theta = p.cost.theta
    bad_c = eqx.tree_at(lambda q: q.cost.theta, p,
                        theta.at[COST_INDEX["eta_c_mlp_up"]].set(jnp.nan))
    no_peak = eqx.tree_at(lambda q: q.hardware.peak_flops, p, jnp.float32(0.0))
    eta_zero = eqx.tree_at(lambda q: q.cost.theta, p,
                           theta.at[COST_INDEX["eta_c_attn_prefill"]].set(-120.0))
    # negative figures (hand-built: the configuration refuses them) halt the lane too
    neg_peak = eqx.tree_at(lambda q: q.hardware.peak_flops, p, jnp.float32(-1e15))
    neg_hbm = eqx.tree_at(lambda q: q.hardware.hbm_bw_bytes_per_s, p, jnp.float32(-3e12))
    shape = SimShape(max_requests=2, max_slots=8, chunk_iterations=16)
    res = simulate_batch(shape, P.stack([bad, p, bad_c, no_peak, eta_zero, neg_peak,
                                         neg_hbm]), to_workload(tr))
    assert [int(s) & st_bits.NONFINITE for s in res.status] == [
        st_bits.NONFINITE, 0] + [st_bits.NONFINITE] * 5
    assert int(res.status[1]) == 0
    assert int(res.metrics["completed"][1]) == 2


def test_step__truncation_sets_status():
    tr = Trace([0.0], [8], [50])
    res = run({}, tr, max_iterations=10)
    assert int(res.status[0]) & st_bits.TRUNCATED
    assert int(res.metrics["iterations"][0]) == 10
    assert int(res.metrics["completed"][0]) == 0


@pytest.mark.slow  # compiles lanes of its own (21 s cold on 2 cores): CI's slow step
def test_step__max_iterations_per_lane_from_the_configurations():
    """``max_iterations`` in a configuration bounds that lane alone, in ``api.run`` as in
    ``jaxsim simulate``; a lane past its budget stops and is flagged, the others run on,
    and an explicit per-lane list does the same."""
    from jaxsim import api

    tr = Trace([0.0, 0.01], [8, 8], [50, 50])
    res = api.run([{"max_iterations": 10}, {}, {"max_iterations": 10**6}], tr)
    assert [int(s) & st_bits.TRUNCATED for s in res.status] == [st_bits.TRUNCATED, 0, 0]
    assert res.metrics["iterations"][0] == 10
    assert list(res.metrics["completed"]) == [0, 2, 2]
    assert res.metrics["iterations"][1] == res.metrics["iterations"][2] > 10
    prep = api.prepare([{}, {}, {}], tr)  # three lanes: api.run's compiled shape
    both = simulate_batch(prep.shape, prep.params, prep.workload,
                          max_iterations=[7, None, 5])
    assert list(both.metrics["iterations"]) == [7, res.metrics["iterations"][1], 5]
    with pytest.raises(ValueError, match=r"max_iterations\[1\]=0 must be an int in 1\.\."):
        simulate_batch(prep.shape, prep.params, prep.workload, max_iterations=[7, 0, 1])
    with pytest.raises(ValueError, match="2 values for 3 lanes"):
        simulate_batch(prep.shape, prep.params, prep.workload, max_iterations=[7, 8])


def test_api_run__builds_traces_from_workload_sections_unless_given_one():
    """(Three lanes of two-request traces: the compiled shape of the test above.)"""
    from jaxsim import api, config

    cfg = {"workload": {"num_requests": 2, "rate": 4.0, "prompt_tokens": 64}}
    own = api.run([cfg, cfg, cfg])
    v = config.validate(cfg)
    direct = api.run([v, v, v], config.build_trace(v))
    assert list(own.metrics["completed"]) == [2, 2, 2]
    assert own.metrics["ttft_mean_s"][0] == direct.metrics["ttft_mean_s"][0]
    given = api.run([cfg, cfg, cfg], Trace([0.0, 0.01], [8, 8], [50, 50]))  # trace wins
    assert given.metrics["ttft_mean_s"][0] < own.metrics["ttft_mean_s"][0]
