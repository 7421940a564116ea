"""Hand-worked tests of §10 (priority scheduling) in the reference oracle.

Every expected number is worked out by hand from docs/semantics.md in the comments.
Like tests/test_reference_prefix.py these tests never import jaxsim: they check the
oracle (tests/reference/event_sim.py) against the specification on its own.

The lanes use the base config of tests/test_reference_prefix.py with a trivial cost
model: peak, HBM and link bandwidths of 1e30 (every GPU term is below 1e-26 s),
kernel overhead 0, cpu_iter 1 s and cpu_seq 0, so that every iteration that
schedules a token takes dt = 1.0 exactly (1.0 + 1e-26 rounds to 1.0; with async
scheduling max(G, C) = 1.0 too). Times are then iteration counts: an iteration that
starts at clock t ends at t + 1, and a token it samples is stamped t + 1.

Block size 4 throughout: a request with c computed tokens holds ceil(c/4) blocks, and
scheduling q tokens needs ceil((c + q)/4) - ceil(c/4) new ones.

Notation in the comments: ``key(X) = (priority, arrival_s, i)`` with i the index in
request order (§0: sorted stably by arrival); the victim of §10 is the running request
with the LARGEST key, and `waiting` is kept in increasing key order.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from tests.reference.event_sim import (
    OPTIONAL_CONFIG_KEYS,
    PRIORITY_LEVELS,
    SCHEDULING_POLICIES,
    iteration_time,
    simulate_reference,
    validate_config,
)
from tests.test_reference_prefix import approx, make_config, make_workload
from tests.test_reference_swap import _assert_same_results

#: The trivial cost model: dt = 1.0 per iteration.
TRIVIAL: dict[str, Any] = {
    "peak_flops": 1e30,
    "hbm_bw": 1e30,
    "link_bw": 1e30,
    "kernel_overhead_s": 0.0,
    "cpu_iter_s": 1.0,
    "cpu_seq_s": 0.0,
}


def lane(**overrides: Any) -> dict[str, Any]:
    return make_config(**{**TRIVIAL, **overrides})


def run_prio(
    arrival: list[float],
    prompt: list[int],
    output: list[int],
    priority: list[int] | None,
    policy: str = "priority",
    max_iterations: int | None = None,
    **overrides: Any,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    wl: dict[str, Any] = make_workload(arrival, prompt, output)
    if priority is not None:
        wl["priority"] = np.asarray(priority, dtype=np.int64)
    trace: list[dict[str, Any]] = []
    res = simulate_reference(wl, lane(scheduling_policy=policy, **overrides),
                             max_iterations, trace=trace)
    return res, trace


def batches(trace: list[dict[str, Any]]) -> list[list[tuple[int, int, int, int, int]]]:
    """Per iteration: [(request, q, c_before, n_known_before, g_before), ...]."""
    return [it["batch"] for it in trace]


def victims(trace: list[dict[str, Any]]) -> list[list[int]]:
    return [it["preempted"] for it in trace]


def test_trivial_cost_model_is_one_second_per_iteration() -> None:
    cfg = lane()
    for batch in ([(4, 0, 4, 0)], [(1, 8, 9, 1)] * 3, [(60, 0, 60, 0), (1, 8, 9, 1)]):
        assert iteration_time(cfg, batch) == 1.0


def test_policy_key_default_and_normalisation() -> None:
    assert "scheduling_policy" in OPTIONAL_CONFIG_KEYS
    assert SCHEDULING_POLICIES == ("fcfs", "priority") and PRIORITY_LEVELS == 8
    assert validate_config(lane())["scheduling_policy"] == "fcfs"
    assert validate_config(lane(scheduling_policy="priority"))["scheduling_policy"] == (
        "priority")
    assert validate_config(lane(scheduling_policy=np.str_("fcfs")))[
        "scheduling_policy"] == "fcfs"


# --------------------------------------------------------------------------------------
# (a) waiting order
# --------------------------------------------------------------------------------------

# Original order: 0 = H (arr 1.5, prio 0), 1 = A (arr 0, prio 5, O 2), 2 = B (arr 0.5,
# prio 5), 3 = H2 (arr 1.5, prio 0); P = 4 each. Request order (stable by arrival):
# A (i 0), B (i 1), H (i 2), H2 (i 3). max_num_seqs = 1.
A_ARR, A_P, A_O, A_PRIO = [1.5, 0.0, 0.5, 1.5], [4, 4, 4, 4], [1, 2, 1, 1], [0, 5, 5, 0]


def test_waiting_queue_in_key_order_with_max_num_seqs() -> None:
    # it0 @0: waiting [A] -> admit A (q 4). End 1: A g 1 (first token at 1).
    # it1 @1: B joins (0.5 <= 1). A decodes; rule 1 (1 running = max_num_seqs) stops
    #         the waiting phase. End 2: A g 2 = O, finished at 2.
    # it2 @2: H and H2 join (1.5 <= 2): waiting in key order [H (0,1.5,2),
    #         H2 (0,1.5,3), B (5,0.5,1)]. Admit H; rule 1 stops. End 3: H done.
    # it3 @3: admit H2, done at 4.  it4 @4: admit B, done at 5.
    res, trace = run_prio(A_ARR, A_P, A_O, A_PRIO, max_num_seqs=1)
    assert batches(trace) == [
        [(1, 4, 0, 4, 0)],
        [(1, 1, 4, 5, 1)],
        [(0, 4, 0, 4, 0)],
        [(3, 4, 0, 4, 0)],
        [(2, 4, 0, 4, 0)],
    ]
    assert [it["dt"] for it in trace] == [1.0] * 5
    assert [it["start_s"] for it in trace] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert victims(trace) == [[]] * 5
    assert list(res["admitted_s"]) == [2.0, 0.0, 4.0, 3.0]
    assert list(res["first_token_s"]) == [3.0, 1.0, 5.0, 4.0]
    assert list(res["finish_s"]) == [3.0, 2.0, 5.0, 4.0]
    assert list(res["queue_s"]) == [0.5, 0.0, 3.5, 1.5]
    assert res["iterations"] == 5 and res["total_preemptions"] == 0

    # Under fcfs (priorities ignored) it2 admits B (the head of [B, H, H2]), then H, H2.
    res_f, trace_f = run_prio(A_ARR, A_P, A_O, A_PRIO, policy="fcfs", max_num_seqs=1)
    assert [[r for r, *_ in b] for b in batches(trace_f)] == [[1], [1], [2], [0], [3]]
    assert list(res_f["admitted_s"]) == [3.0, 0.0, 2.0, 4.0]

    # §10 metrics by hand (levels 0 and 5; every request completed, none preempted):
    # level 0: H ttft = e2e = 3 - 1.5 = 1.5, H2 = 4 - 1.5 = 2.5 -> mean = p50 = 2.0,
    #   p99 = 1.5 + 0.99·1.0 = 2.49; no TPOT (O = 1): NaN; queue 0.5, 1.5 -> 1.0.
    # level 5: A ttft 1, e2e 2, tpot (2 - 1)/1 = 1, queue 0; B ttft = e2e = 4.5,
    #   queue 3.5 -> ttft mean = p50 = 2.75, p99 = 1 + 0.99·3.5 = 4.465; tpot p50 =
    #   p99 = 1 (A only); e2e p50 = 3.25, p99 = 2 + 0.99·2.5 = 4.475; queue 1.75.
    m = res["metrics"]
    assert m["ttft_mean_s_prio0"] == approx(2.0)
    assert m["ttft_p50_s_prio0"] == approx(2.0)
    assert m["ttft_p99_s_prio0"] == approx(2.49)
    assert math.isnan(m["tpot_p50_s_prio0"]) and math.isnan(m["tpot_p99_s_prio0"])
    assert m["e2e_p50_s_prio0"] == approx(2.0)
    assert m["e2e_p99_s_prio0"] == approx(2.49)
    assert m["queue_mean_s_prio0"] == approx(1.0)
    assert m["completed_prio0"] == 2 and m["preemptions_prio0"] == 0
    assert m["ttft_mean_s_prio5"] == approx(2.75)
    assert m["ttft_p50_s_prio5"] == approx(2.75)
    assert m["ttft_p99_s_prio5"] == approx(4.465)
    assert m["tpot_p50_s_prio5"] == approx(1.0) and m["tpot_p99_s_prio5"] == approx(1.0)
    assert m["e2e_p50_s_prio5"] == approx(3.25)
    assert m["e2e_p99_s_prio5"] == approx(4.475)
    assert m["queue_mean_s_prio5"] == approx(1.75)
    assert m["completed_prio5"] == 2 and m["preemptions_prio5"] == 0
    # Only the levels the workload contains.
    assert {k for k in m if "_prio" in k} == {
        f"{stat}_prio{p}" for p in (0, 5) for stat in (
            "ttft_mean_s", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s",
            "e2e_p50_s", "e2e_p99_s", "queue_mean_s", "completed", "preemptions")}


def test_async_scheduling_sees_arrivals_by_seen_in_key_order() -> None:
    # 0 = A (arr 0, prio 5, O 4), 1 = B (arr 0.5, prio 5), 2 = H (arr 0.7, prio 1),
    # 3 = C (arr 1.5, prio 0); P = 4, O = 1 but A. max_num_seqs = 2. §2.10: an
    # iteration with requests running at its start is overlapped and only sees the
    # arrivals up to `seen` = the previous iteration's start.
    # it0 @0 (not overlapped, seen 0): admit A. End 1.
    # it1 @1 (overlapped, seen 0): nothing joins; A decodes. End 2.
    # it2 @2 (overlapped, seen 1): B, H join -> [H, B]; A decodes, admit H, rule 1
    #         stops B. End 3: H done.
    # it3 @3 (overlapped, seen 2): C joins AHEAD of B -> [C, B]; A decodes (its 4th
    #         token, done at 4), admit C (done at 4).
    # it4 @4 (nothing running: not overlapped, seen 4): admit B, done at 5.
    arr, P, O, prio = [0.0, 0.5, 0.7, 1.5], [4, 4, 4, 4], [4, 1, 1, 1], [5, 5, 1, 0]
    res, trace = run_prio(arr, P, O, prio, max_num_seqs=2, async_scheduling=True)
    assert [[r for r, *_ in b] for b in batches(trace)] == [[0], [0], [0, 2], [0, 3], [1]]
    assert list(res["admitted_s"]) == [0.0, 4.0, 2.0, 3.0]
    assert list(res["finish_s"]) == [4.0, 5.0, 3.0, 4.0]
    # Without async scheduling every arrival is seen by the clock:
    # it1 @1: B, H join -> [H, B]: admit H (done 2). it2 @2: C joins -> [C, B]: admit C
    # (done 3). it3 @3: admit B (done 4), A's 4th token at 4.
    res_s, trace_s = run_prio(arr, P, O, prio, max_num_seqs=2)
    assert [[r for r, *_ in b] for b in batches(trace_s)] == [[0], [0, 2], [0, 3], [0, 1]]
    assert list(res_s["admitted_s"]) == [0.0, 3.0, 1.0, 2.0]


# --------------------------------------------------------------------------------------
# (b) victim selection in the running phase
# --------------------------------------------------------------------------------------


def test_victim_by_key_not_yet_scheduled_is_skipped_by_the_walk() -> None:
    # 0 = Y (arr 0, prio 0, P 3), 1 = X (arr 0, prio 3, P 4), 2 = Z (arr 1, prio 1,
    # P 4); O = 6 each. 4 blocks (feasible: mml 10 needs 3).
    # it0 @0: [Y, X]: admit Y (q 3, 1 block), X (q 4, 1 block): free 2.
    # it1 @1: Z joins. Y c3 -> 4 needs 0; X c4 -> 5 needs 1 (free 1); admit Z (q 4,
    #         1 block, free 0). running [Y, X, Z].
    # it2 @2: free = 4 - (1 + 2 + 1) = 0. Y c4 -> 5 needs 1 > 0: the victim is the
    #         largest key, X (prio 3), in the MIDDLE of `running` and not scheduled
    #         yet: it frees its 2 blocks (free 2). Y is scheduled (free 1); the walk
    #         skips X and schedules Z (c4 -> 5, 1 block, free 0). used = 4.
    # it3..it5: Y and Z decode (no new block: c 5..7 -> 2 blocks each); X (g 2,
    #         n_known 6, needs 2 blocks) is blocked. Y finishes at 6 (g 6).
    # it6 @6: Z c8 -> 9 takes the free block of 2 (free 1); X still needs 2. Z done 7.
    # it7 @7: X re-admitted, q 6 (g 3 at 8); decodes at it8..it10: done at 11.
    res, trace = run_prio([0.0, 0.0, 1.0], [3, 4, 4], [6, 6, 6], [0, 3, 1],
                          num_gpu_blocks=4, max_model_len=10)
    assert batches(trace)[:3] == [
        [(0, 3, 0, 3, 0), (1, 4, 0, 4, 0)],
        [(0, 1, 3, 4, 1), (1, 1, 4, 5, 1), (2, 4, 0, 4, 0)],
        [(0, 1, 4, 5, 2), (2, 1, 4, 5, 1)],
    ]
    assert victims(trace)[2] == [1]
    assert trace[2]["used_blocks"] == 4
    assert batches(trace)[7] == [(1, 6, 0, 6, 2)]
    assert list(res["finish_s"]) == [6.0, 11.0, 7.0]
    assert list(res["preemptions"]) == [0, 1, 0]
    assert res["iterations"] == 11 and res["total_preemptions"] == 1
    # fcfs pops the LAST running request, Z, instead; X is scheduled.
    _, trace_f = run_prio([0.0, 0.0, 1.0], [3, 4, 4], [6, 6, 6], [0, 3, 1], policy="fcfs",
                          num_gpu_blocks=4, max_model_len=10)
    assert [r for r, *_ in batches(trace_f)[2]] == [0, 1] and victims(trace_f)[2] == [2]


def test_victim_already_scheduled_gives_back_blocks_and_budget() -> None:
    # 0 = A (arr 0, prio 2, P 2, O 4), 1 = B (arr 1, prio 1, P 4, O 7), 2 = C (arr 2,
    # prio 1, P 7, O 3). 4 blocks, budget 4 tokens, mml 11. Keys: A (2,0,0) > C
    # (1,2,2) > B (1,1,1).
    # it0 @0: admit A q2 (1 block, free 3). End 1: A c2 g1.
    # it1 @1: B joins. A c2 q1 (0 blocks, budget 3); admit B q3 (1 block, free 2,
    #         budget 0). End 2: A c3 g2, B c3.
    # it2 @2: C joins. A q1 (c3 -> 4, 0 blocks, budget 3), B q1 (c3 -> 4, 0 blocks,
    #         samples: g1), admit C q2 (1 block, free 1, budget 0). End 3: A c4 g3,
    #         B c4 g1, C c2.
    # it3 @3: free = 4 - 3 = 1. A c4 q1 needs 1 -> scheduled: free 0, budget 3.
    #         B c4 q1 needs 1 > 0: victim = largest key = A, ALREADY SCHEDULED: it
    #         frees its ceil(4/4) = 1 block and the 1 it took now (free 2) and gives
    #         back its q (budget 4). B scheduled: free 1, budget 3. C c2 wants 5:
    #         q = min(5, 3) = 3 (2 without the refund), needs ceil(5/4) - 1 = 1:
    #         free 0. A is not in the batch; used = 4.
    res, trace = run_prio([0.0, 1.0, 2.0], [2, 4, 7], [4, 7, 3], [2, 1, 1],
                          num_gpu_blocks=4, max_num_batched_tokens=4, max_num_seqs=4,
                          max_model_len=11)
    assert batches(trace)[3] == [(1, 1, 4, 5, 1), (2, 3, 2, 7, 0)]
    assert victims(trace)[3] == [0]
    assert trace[3]["used_blocks"] == 4
    # it4 @4: free 0. B c5 q1 (0 blocks), C c5 q2 (0 blocks; budget 1 left). No
    #         victim, so the waiting phase runs: A (n_known 2 + 3 = 5) q = min(5, 1)
    #         = 1 needs 1 block > 0 free: stop. End 5: C c7 samples (g1, at 5).
    # it5 @5: B c6, C c7 -> 8 (0 blocks each); A still blocked.
    # it6 @6: B c7 -> 8 needs 0; C c8 -> 9 needs 1 > 0: victim = largest running
    #         key = C, the request AT HAND: preempted (frees 2 blocks), the phase
    #         stops. waiting = [C (1,2,2), A (2,0,0)]: C enters at its key's place,
    #         in front of A although A was preempted earlier.
    # it7 @7: free 2. B c8 -> 9 takes 1 (free 1). C (n_known 7 + 2 = 9) q3, 1 block.
    # it8 @8: free 0. B c9 q1 needs 0. C c3 wants 6, q3 needs 1 > 0: victim = C
    #         (largest of B, C), at hand again: preempted a second time. B done 9.
    # it9 @9: C q4 (1 block). it10 @10: C c4 q4 (1 more). it11 @11: C c8 q1 (1 more,
    #         free 1) samples g3 = O: done at 12; A q = min(5, 3) = 3 (1 block).
    # it12 @12: A c3 q2 -> samples g4 = O: done at 13.
    assert batches(trace)[4:] == [
        [(1, 1, 5, 6, 2), (2, 2, 5, 7, 0)],
        [(1, 1, 6, 7, 3), (2, 1, 7, 8, 1)],
        [(1, 1, 7, 8, 4)],
        [(1, 1, 8, 9, 5), (2, 3, 0, 9, 2)],
        [(1, 1, 9, 10, 6)],
        [(2, 4, 0, 9, 2)],
        [(2, 4, 4, 9, 2)],
        [(2, 1, 8, 9, 2), (0, 3, 0, 5, 3)],
        [(0, 2, 3, 5, 3)],
    ]
    assert victims(trace) == [[], [], [], [0], [], [], [2], [], [2], [], [], [], []]
    assert list(res["finish_s"]) == [13.0, 9.0, 12.0]
    assert list(res["first_token_s"]) == [1.0, 3.0, 5.0]
    assert list(res["preemptions"]) == [1, 0, 2]
    assert res["total_preemptions"] == 3 and res["iterations"] == 13
    # The refunded iteration's tokens are not scheduled tokens: A 2 + 1 + 1 + 3 + 2,
    # B 3 + 1·7, C 2 + 3 + 2 + 1 + 3 + 4 + 4 + 1.
    assert list(res["tokens_scheduled"]) == [9, 10, 20]
    assert res["metrics"]["preemptions_prio2"] == 1
    assert res["metrics"]["preemptions_prio1"] == 2


def test_victim_at_hand_at_the_front_leaves_an_empty_iteration() -> None:
    # 0 = A (arr 1, prio 2, P 3, O 4), 1 = B (arr 2, prio 1, P 3, O 3). 2 blocks, mml 7.
    # it0 @1 (idle jump to 1): admit A q3 (1 block, free 1). End 2: A c3 g1.
    # it1 @2: B joins. A c3 q1 (0 blocks); admit B q3 (1 block, free 0). End 3.
    # it2 @3: free 0. A (front) c4 q1 needs 1 > 0: victim = largest key of {A, B} = A,
    #         the request at hand: preempted, the running phase stops, and the waiting
    #         phase does not run (a preemption happened). Nothing is scheduled: dt 0
    #         (§2.5), not counted in `iterations`; used = 2 - 1 = 1.
    # it3 @3: B c3 q1 (0 blocks); A (n_known 5, 2 blocks) blocked (1 free). End 4.
    # it4 @4: B c4 q1 takes the free block; A blocked. B done at 5.
    # it5 @5: admit A q5 (2 blocks): g3 at 6. it6 @6: A decodes, done at 7.
    res, trace = run_prio([1.0, 2.0], [3, 3], [4, 3], [2, 1],
                          num_gpu_blocks=2, max_model_len=7)
    assert batches(trace) == [
        [(0, 3, 0, 3, 0)],
        [(0, 1, 3, 4, 1), (1, 3, 0, 3, 0)],
        [],
        [(1, 1, 3, 4, 1)],
        [(1, 1, 4, 5, 2)],
        [(0, 5, 0, 5, 2)],
        [(0, 1, 5, 6, 3)],
    ]
    assert victims(trace) == [[], [], [0], [], [], [], []]
    assert [it["start_s"] for it in trace] == [1.0, 2.0, 3.0, 3.0, 4.0, 5.0, 6.0]
    assert [it["dt"] for it in trace] == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert [it["used_blocks"] for it in trace] == [1, 2, 1, 1, 2, 2, 2]
    assert res["iterations"] == 6 and res["busy_s"] == 6.0
    assert list(res["finish_s"]) == [7.0, 5.0]
    assert list(res["preemptions"]) == [1, 0]
    # The empty iteration counts against no iteration budget: with 3 iterations the
    # lane stops after it3 (the empty one is not one of them).
    res3, trace3 = run_prio([1.0, 2.0], [3, 3], [4, 3], [2, 1], max_iterations=3,
                            num_gpu_blocks=2, max_model_len=7)
    assert res3["truncated"] and res3["iterations"] == 3 and len(trace3) == 4
    # fcfs pops B (the last running request) and schedules A instead.
    _, trace_f = run_prio([1.0, 2.0], [3, 3], [4, 3], [2, 1], policy="fcfs",
                          num_gpu_blocks=2, max_model_len=7)
    assert batches(trace_f)[2] == [(0, 1, 4, 5, 2)] and victims(trace_f)[2] == [1]


def test_empty_iteration_under_async_scheduling() -> None:
    # 0 = A (arr 0, prio 2, P 2, O 6), 1 = B (arr 0.5, prio 1, P 3, O 3), 2 = D (arr 2.5,
    # prio 0, P 1, O 1); 2 blocks, mml 8, async scheduling (§2.10: an iteration with
    # requests running at its start only sees the arrivals by `seen`, the start of the
    # previous iteration that scheduled tokens).
    # it0 @0 (not overlapped): admit A q2 (1 block). End 1.
    # it1 @1 (seen 0): A c2 -> 3 (0 blocks). End 2.
    # it2 @2 (seen 1): B joins. A c3 -> 4 (0 blocks); admit B q3 (1 block, free 0).
    #   End 3: A c4 g3, B c3 g1.
    # it3 @3 (seen 2): A c4 -> 5 needs 1 > 0: victim = largest key = A, at hand: an
    #   empty iteration (dt 0, `seen` not moved: it stays 2).
    # it4 @3 (seen 2: D, arr 2.5, is NOT seen): B c3 -> 4 (0 blocks); A (n_known 5,
    #   2 blocks) blocked by the 1 free block. End 4: B g2.
    # it5 @4 (seen 3): D joins -> [D, A]. B c4 -> 5 takes the free block; D (1 block)
    #   blocked. End 5: B g3 done.
    # it6 @5 (nothing running: not overlapped): admit D (1 block); A (2) blocked.
    #   End 6: D done.
    # it7 @6 (not overlapped): admit A q5 (2 blocks): g4 at 7. it8, it9: A decodes
    #   (c5, c6: 0 blocks), done at 9.
    res, trace = run_prio([0.0, 0.5, 2.5], [2, 3, 1], [6, 3, 1], [2, 1, 0],
                          num_gpu_blocks=2, max_model_len=8, async_scheduling=True)
    assert [[r for r, *_ in b] for b in batches(trace)] == [
        [0], [0], [0, 1], [], [1], [1], [2], [0], [0], [0]]
    assert victims(trace) == [[], [], [], [0], [], [], [], [], [], []]
    assert [it["start_s"] for it in trace] == [0.0, 1.0, 2.0, 3.0, 3.0, 4.0, 5.0, 6.0,
                                              7.0, 8.0]
    assert list(res["admitted_s"]) == [0.0, 2.0, 5.0]
    assert list(res["finish_s"]) == [9.0, 5.0, 6.0]
    assert res["iterations"] == 9 and list(res["preemptions"]) == [1, 0, 0]


# --------------------------------------------------------------------------------------
# (c) a victim re-enters `waiting` at its key's place
# --------------------------------------------------------------------------------------


def test_victim_reenters_waiting_at_its_key_place() -> None:
    # 0 = R0 (arr 0, prio 0, O 6), 1 = V (arr 0, prio 2, O 4), 2 = H (arr 0.5, prio 1,
    # O 1), 3 = L2 (arr 0.6, prio 2, O 1); P = 4. max_num_seqs 2, 3 blocks, mml 10.
    # it0 @0: [R0, V]: both admitted (1 block each, free 1). End 1: g1 each.
    # it1 @1: H, L2 join -> [H, L2]. R0 c4 q1 takes the free block (free 0). V c4 q1
    #         needs 1 > 0: victim = largest running key = V (at hand): preempted
    #         (frees 1), phase ends. waiting = [H (1,0.5,2), V (2,0,1), L2 (2,0.6,3)]:
    #         behind H (higher priority), ahead of L2 (same level, later arrival).
    # it2 @2: free 1. R0 c5 (0 blocks); admit H (q4, 1 block); rule 1 (2 running).
    #         H done at 3.
    # it3..it5: R0 decodes (c6, c7 need 0; c8 -> 9 at it5 needs 1). V (n_known 5,
    #         2 blocks) is blocked by the free blocks (1, then 0), and L2, behind it,
    #         waits although its 1 block would fit at it3 and it4. R0 done at 6.
    # it6 @6: [V, L2]: admit V (q5, 2 blocks), L2 (q4, 1 block). L2 done at 7.
    # it7, it8: V decodes, done at 9.
    arr, P, O, prio = [0.0, 0.0, 0.5, 0.6], [4, 4, 4, 4], [6, 4, 1, 1], [0, 2, 1, 2]
    kw: dict[str, Any] = {"max_num_seqs": 2, "num_gpu_blocks": 3, "max_model_len": 10}
    res, trace = run_prio(arr, P, O, prio, **kw)
    assert batches(trace) == [
        [(0, 4, 0, 4, 0), (1, 4, 0, 4, 0)],
        [(0, 1, 4, 5, 1)],
        [(0, 1, 5, 6, 2), (2, 4, 0, 4, 0)],
        [(0, 1, 6, 7, 3)],
        [(0, 1, 7, 8, 4)],
        [(0, 1, 8, 9, 5)],
        [(1, 5, 0, 5, 1), (3, 4, 0, 4, 0)],
        [(1, 1, 5, 6, 2)],
        [(1, 1, 6, 7, 3)],
    ]
    assert victims(trace)[1] == [1]
    assert list(res["admitted_s"]) == [0.0, 0.0, 2.0, 6.0]
    assert list(res["finish_s"]) == [6.0, 9.0, 3.0, 7.0]
    # fcfs puts V at the FRONT: [V, H, L2]; V blocks H until R0 is done, then V and H
    # are admitted at 6 and L2 (rule 1) when H is done, at 7.
    res_f, _ = run_prio(arr, P, O, prio, policy="fcfs", **kw)
    assert list(res_f["admitted_s"]) == [0.0, 0.0, 6.0, 7.0]


# --------------------------------------------------------------------------------------
# (d) a request that has not arrived stops nothing
# --------------------------------------------------------------------------------------


def test_unarrived_high_priority_request_stops_nothing() -> None:
    # 0 = H (arr 1.5, prio 0, P 4, O 1), 1 = L1 (arr 0, prio 7, O 2), 2 = L2 (arr 0.5,
    # prio 7, O 1). H has the smallest key but is not in `waiting` before 1.5.
    # it0 @0: admit L1. it1 @1: L2 joins (H has not arrived): L1 decodes (done 2),
    # admit L2 (done 2). it2 @2: H joins, admitted, done at 3.
    res, trace = run_prio([1.5, 0.0, 0.5], [4, 4, 4], [1, 2, 1], [0, 7, 7])
    assert [[r for r, *_ in b] for b in batches(trace)] == [[1], [1, 2], [0]]
    assert list(res["admitted_s"]) == [2.0, 0.0, 1.0]
    # Idle jump (§2.1): nothing has arrived at 0; the clock jumps to the EARLIEST
    # arrival, L (arr 2, prio 7), not to the smallest key, H (arr 3, prio 0).
    res, trace = run_prio([3.0, 2.0], [4, 4], [1, 1], [0, 7])
    assert [it["start_s"] for it in trace] == [2.0, 3.0]
    assert list(res["admitted_s"]) == [3.0, 2.0]


# --------------------------------------------------------------------------------------
# (e) equal priorities: "priority" is "fcfs"
# --------------------------------------------------------------------------------------


def _random_plain_lane(rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, Any]]:
    """A random small v1 lane (no §5, §8 or §9) with tight KV memory, random arrival
    ties, and the scheduler options that §10 keeps (threshold, chunked prefill on or
    off, reserve_full_isl, async scheduling, watermark)."""
    R = int(rng.integers(1, 14))
    mml = int(rng.integers(6, 40))
    P = rng.integers(1, mml // 2 + 1, R)
    O = rng.integers(1, mml // 2 + 1, R)
    arrival = np.round(rng.exponential(3.0, R).cumsum() * rng.integers(0, 2))
    rng.shuffle(arrival)
    bs = int(rng.integers(1, 6))
    wm = int(rng.integers(0, 3))
    cfg = lane(
        block_size=bs,
        watermark_blocks=wm,
        num_gpu_blocks=-(-mml // bs) + wm + int(rng.integers(0, 4)),
        max_model_len=mml,
        max_num_batched_tokens=int(rng.integers(4, 50)),
        max_num_seqs=int(rng.integers(1, 5)),
        enable_chunked_prefill=bool(rng.integers(0, 2)),
        long_prefill_token_threshold=int(rng.choice([0, 0, 3, 7])),
        reserve_full_isl=bool(rng.integers(0, 2)),
        async_scheduling=bool(rng.integers(0, 2)),
        cpu_seq_s=float(rng.choice([0.0, 0.25])),
    )
    wl = {"arrival_s": arrival, "prompt_tokens": P, "output_tokens": O}
    return wl, cfg


def test_equal_priorities_are_fcfs() -> None:
    # With every priority equal the key is (arrival_s, i): request order. Under fcfs
    # (v1, no §5.8 reordering) `running` and `waiting` together always stay in request
    # order: admissions take the head of `waiting` (the earliest request there) and
    # append it to `running`; a victim is the last of `running`, which is then the
    # latest arrival in it, and goes to the front of `waiting`, where every request
    # arrived after it. So fcfs's victim is §10's (the largest key; never a request
    # scheduled before the one at hand, unless it is that one), and its queue is in
    # key order: the two policies agree iteration by iteration, preemptions
    # included. (A case where they differ needs different priorities.)
    rng = np.random.default_rng(10)
    num_feasible = num_preempting = 0
    for _ in range(250):
        wl, cfg = _random_plain_lane(rng)
        level = int(rng.integers(0, PRIORITY_LEVELS))
        wl["priority"] = np.full(len(wl["arrival_s"]), level)
        t_f: list[dict[str, Any]] = []
        t_p: list[dict[str, Any]] = []
        res_f = simulate_reference(wl, cfg, trace=t_f)
        res_p = simulate_reference(wl, dict(cfg, scheduling_policy="priority"), trace=t_p)
        _assert_same_results(res_f, res_p)
        assert t_f == t_p
        if not res_f["infeasible"]:
            num_feasible += 1
            assert res_f["completed"].all()
            num_preempting += res_f["total_preemptions"] > 0
    assert num_feasible > 150 and num_preempting > 40


def test_equal_priorities_with_preemption_by_hand() -> None:
    # 0 = A (arr 0), 1 = B (arr 1), both prio 3, P 3, O 3; 2 blocks, mml 6.
    # it0 @0: admit A q3 (1 block). it1 @1: A c3 q1 (0 blocks); admit B q3 (1 block,
    # free 0). it2 @2: A c4 q1 needs 1 > 0: victim = largest key = B, the latest
    # arrival, which is also fcfs's last running request: frees 1; A scheduled (done
    # at 3); the walk skips B. it3 @3: B re-admitted q4 (g 1). it4 @4: B done at 5.
    for policy in ("priority", "fcfs"):
        res, trace = run_prio([0.0, 1.0], [3, 3], [3, 3], [3, 3], policy=policy,
                              num_gpu_blocks=2, max_model_len=6)
        assert batches(trace) == [
            [(0, 3, 0, 3, 0)],
            [(0, 1, 3, 4, 1), (1, 3, 0, 3, 0)],
            [(0, 1, 4, 5, 2)],
            [(1, 4, 0, 4, 1)],
            [(1, 1, 4, 5, 2)],
        ]
        assert victims(trace) == [[], [], [1], [], []]
        assert list(res["finish_s"]) == [3.0, 5.0]


def test_random_lanes_with_priorities_invariants() -> None:
    # Random levels: every feasible lane completes; no request is both scheduled and
    # preempted in one iteration; `used_blocks` never exceeds the cache; a victim's
    # key is larger than that of every request scheduled in the same iteration that
    # was already running (c > 0 before it: no §5 hits, no §8 KV here), since each
    # victim is the largest key of `running`, which holds those requests; the trace
    # lists every preemption, and `iterations` counts the non-empty iterations.
    rng = np.random.default_rng(11)
    num_feasible = num_preempting = num_empty = 0
    for _ in range(200):
        wl, cfg = _random_plain_lane(rng)
        R = len(wl["arrival_s"])
        prio = rng.integers(0, 4, R)
        wl["priority"] = prio
        cfg = dict(cfg, scheduling_policy="priority")
        trace: list[dict[str, Any]] = []
        res = simulate_reference(wl, cfg, trace=trace)
        if res["infeasible"]:
            continue
        num_feasible += 1
        assert res["completed"].all()
        num_preempting += res["total_preemptions"] > 0
        arrival = np.asarray(wl["arrival_s"], dtype=np.float64)
        order = np.argsort(arrival, kind="stable")
        pos = np.empty(R, np.int64)
        pos[order] = np.arange(R)

        key = {r: (int(prio[r]), float(arrival[r]), int(pos[r])) for r in range(R)}
        for it in trace:
            scheduled = [r for r, *_ in it["batch"]]
            assert not set(scheduled) & set(it["preempted"])
            assert it["used_blocks"] <= cfg["num_gpu_blocks"]
            running_before = [r for r, _q, c0, _nk, _g in it["batch"] if c0 > 0]
            for v in it["preempted"]:
                assert all(key[v] > key[r] for r in running_before)
        assert sum(len(it["preempted"]) for it in trace) == res["total_preemptions"]
        assert res["iterations"] == sum(1 for it in trace if it["batch"])
        num_empty += sum(1 for it in trace if not it["batch"])
    assert num_feasible > 120 and num_preempting > 30 and num_empty > 0


# --------------------------------------------------------------------------------------
# (f) per-level metrics
# --------------------------------------------------------------------------------------


def test_per_level_metrics_match_numpy() -> None:
    # 16 requests at levels {0, 3, 5, 7} with tight memory (preemptions) and an
    # iteration budget that leaves the lowest level (7) unfinished. Level 5 has O = 1
    # only (no TPOT). Each statistic is recomputed with numpy over the per-request
    # arrays of the level's completed requests.
    rng = np.random.default_rng(5)
    R = 16
    prio = np.array([0, 3, 5, 7] * 4)
    rng.shuffle(prio)
    P = rng.integers(1, 12, R)
    O = np.where(prio == 5, 1, rng.integers(2, 10, R))
    arrival = np.round(rng.uniform(0.0, 6.0, R), 1)
    wl = {"arrival_s": arrival, "prompt_tokens": P, "output_tokens": O, "priority": prio}
    cfg = lane(scheduling_policy="priority", num_gpu_blocks=7, max_model_len=24,
               max_num_batched_tokens=8, max_num_seqs=4, cpu_seq_s=0.25)
    res = simulate_reference(wl, cfg, max_iterations=20)
    assert res["truncated"] and res["total_preemptions"] > 0
    m = res["metrics"]
    assert {k for k in m if k.startswith("completed_prio")} == {
        "completed_prio0", "completed_prio3", "completed_prio5", "completed_prio7"}
    done = res["completed"]
    assert m["completed_prio7"] == 0
    for stat in ("ttft_mean_s", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s",
                 "e2e_p50_s", "e2e_p99_s", "queue_mean_s"):
        assert math.isnan(m[f"{stat}_prio7"])
    assert m["preemptions_prio7"] == 0  # over completed requests only
    assert math.isnan(m["tpot_p50_s_prio5"]) and math.isnan(m["tpot_p99_s_prio5"])
    for p in (0, 3, 5):
        sel = done & (prio == p)
        assert m[f"completed_prio{p}"] == int(sel.sum()) > 0
        ttft, e2e, queue = res["ttft_s"][sel], res["e2e_s"][sel], res["queue_s"][sel]
        assert m[f"ttft_mean_s_prio{p}"] == approx(float(np.mean(ttft)))
        assert m[f"ttft_p50_s_prio{p}"] == approx(float(np.percentile(ttft, 50)))
        assert m[f"ttft_p99_s_prio{p}"] == approx(float(np.percentile(ttft, 99)))
        assert m[f"e2e_p50_s_prio{p}"] == approx(float(np.percentile(e2e, 50)))
        assert m[f"e2e_p99_s_prio{p}"] == approx(float(np.percentile(e2e, 99)))
        assert m[f"queue_mean_s_prio{p}"] == approx(float(np.mean(queue)))
        assert m[f"preemptions_prio{p}"] == int(res["preemptions"][sel].sum())
        if p != 5:
            tpot = (e2e - ttft) / (O[sel] - 1)
            assert m[f"tpot_p50_s_prio{p}"] == approx(float(np.percentile(tpot, 50)))
            assert m[f"tpot_p99_s_prio{p}"] == approx(float(np.percentile(tpot, 99)))
    # Some level had a preempted completed request.
    assert sum(m[f"preemptions_prio{p}"] for p in (0, 3, 5)) > 0
    # The same metrics under fcfs: the statistics over the same levels.
    res_f = simulate_reference(wl, dict(cfg, scheduling_policy="fcfs"))
    m_f = res_f["metrics"]
    for p in (0, 3, 5, 7):
        sel = res_f["completed"] & (prio == p)
        assert m_f[f"completed_prio{p}"] == int(sel.sum())
        assert m_f[f"ttft_mean_s_prio{p}"] == approx(float(np.mean(res_f["ttft_s"][sel])))


def test_levels_are_reported_only_when_some_priority_is_not_zero() -> None:
    # §10: a workload without the key, or with every request at level 0, reports no
    # per-level metrics.
    for prio in (None, [0, 0]):
        res, _ = run_prio([0.0, 1.0], [4, 4], [3, 1], prio, policy="fcfs")
        assert {k for k in res["metrics"] if "_prio" in k} == set()
    # With a level other than 0, level 0's statistics are those of its requests.
    res, _ = run_prio([0.0, 1.0], [4, 4], [3, 1], [0, 1], policy="fcfs")
    m = res["metrics"]
    assert {k for k in m if k.startswith("completed_prio")} == {"completed_prio0",
                                                                "completed_prio1"}
    assert m["completed_prio0"] == 1 and m["completed_prio1"] == 1
    assert math.isnan(m["tpot_p50_s_prio1"])  # its only request has one output token
    # An infeasible lane completes nothing: NaN statistics, zero counts.
    res, trace = run_prio([0.0], [40], [40], [4], max_model_len=64)
    assert res["infeasible"] and trace == []
    assert res["metrics"]["completed_prio4"] == 0
    assert math.isnan(res["metrics"]["ttft_mean_s_prio4"])


# --------------------------------------------------------------------------------------
# (g) validation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"scheduling_policy": "lifo"}, r"scheduling_policy.*'fcfs', 'priority'.*'lifo'"),
        ({"scheduling_policy": 1}, r"scheduling_policy.*got 1"),
        ({"scheduling_policy": None}, r"scheduling_policy.*got None"),
        ({"scheduling_policy": "priority", "mode": "v0"},
         r"scheduling_policy'\] = 'priority'.*mode = 'v0'"),
        ({"scheduling_policy": "priority", "enable_prefix_caching": True},
         r"scheduling_policy'\] = 'priority'.*enable_prefix_caching = True"),
        ({"scheduling_policy": "priority", "spec_tokens": 2,
          "spec_accept_units": [0, 1, 2]},
         r"scheduling_policy'\] = 'priority'.*spec_tokens = 2"),
    ],
)
def test_invalid_policy_config_names_the_key(overrides: dict[str, Any], match: str) -> None:
    cfg = lane(**overrides)
    with pytest.raises(ValueError, match=match):
        validate_config(cfg)
    with pytest.raises(ValueError, match=match):
        simulate_reference(make_workload([0.0], [4], [2]), cfg)


def test_fcfs_accepts_what_priority_refuses() -> None:
    # The refused combinations are §10's only: fcfs in v0, with prefix caching or
    # speculation is fine.
    for overrides in ({"mode": "v0"}, {"enable_prefix_caching": True},
                      {"spec_tokens": 2, "spec_accept_units": [0, 1, 2]}):
        res = simulate_reference(make_workload([0.0], [4], [2]),
                                 lane(scheduling_policy="fcfs", **overrides))
        assert res["completed"].all()


def test_priority_with_external_tokens_is_refused() -> None:
    wl = dict(make_workload([0.0, 0.0], [4, 4], [2, 2]), external_tokens=[0, 3])
    with pytest.raises(ValueError, match=r"scheduling_policy'\] = 'priority'.*"
                                         r"external_tokens.*\[0, 3\]"):
        simulate_reference(wl, lane(scheduling_policy="priority"))
    # All zeros is no external KV: accepted (and the same as without the key).
    wl0 = dict(make_workload([0.0, 0.0], [4, 4], [2, 2]), external_tokens=[0, 0])
    res0 = simulate_reference(wl0, lane(scheduling_policy="priority"))
    res = simulate_reference(make_workload([0.0, 0.0], [4, 4], [2, 2]),
                             lane(scheduling_policy="priority"))
    _assert_same_results(res0, res)
    # fcfs with external KV is §8's business, not refused.
    assert simulate_reference(wl, lane())["completed"].all()


@pytest.mark.parametrize(
    ("priority", "match"),
    [
        ([0, 8], r"workload\['priority'\].*0\.\.7.*got 8"),
        ([-1, 0], r"workload\['priority'\].*0\.\.7.*got -1"),
        ([0, 1.5], r"workload\['priority'\].*0\.\.7.*got 1\.5"),
        ([0, float("nan")], r"workload\['priority'\].*0\.\.7.*got nan"),
        (["a", "b"], r"workload\['priority'\].*0\.\.7.*'a'"),
        ([True, False], r"workload\['priority'\].*0\.\.7.*True"),
        ([0, 1, 2], r"workload\['priority'\] has 3 entries for 2 requests"),
        ([3], r"workload\['priority'\] has 1 entries for 2 requests"),
    ],
)
@pytest.mark.parametrize("policy", ["fcfs", "priority"])
def test_invalid_priority_array_names_the_key(priority: list[Any], match: str,
                                               policy: str) -> None:
    wl = dict(make_workload([0.0, 1.0], [4, 4], [2, 2]), priority=priority)
    with pytest.raises(ValueError, match=match):
        simulate_reference(wl, lane(scheduling_policy=policy))


def test_integral_float_priorities_are_accepted() -> None:
    res_f, _ = run_prio([0.0, 1.0], [4, 4], [2, 2], None)
    wl = dict(make_workload([0.0, 1.0], [4, 4], [2, 2]), priority=[0.0, 0.0])
    _assert_same_results(simulate_reference(wl, lane(scheduling_policy="priority")), res_f)


# --------------------------------------------------------------------------------------
# (h) fcfs ignores the priorities
# --------------------------------------------------------------------------------------


def _without_level_metrics(res: dict[str, Any]) -> dict[str, Any]:
    return dict(res, metrics={k: v for k, v in res["metrics"].items() if "_prio" not in k})


def test_fcfs_with_priorities_is_fcfs_without() -> None:
    # Scheduling ignores the priorities under fcfs, bit for bit (traces included);
    # only the per-level metric keys follow the array's levels.
    rng = np.random.default_rng(12)
    for i in range(120):
        wl, cfg = _random_plain_lane(rng)
        R = len(wl["arrival_s"])
        t0: list[dict[str, Any]] = []
        t1: list[dict[str, Any]] = []
        t2: list[dict[str, Any]] = []
        base = simulate_reference(wl, cfg, trace=t0)
        explicit = simulate_reference(dict(wl, priority=rng.integers(0, 8, R)),
                                      dict(cfg, scheduling_policy="fcfs"), trace=t1)
        _assert_same_results(_without_level_metrics(base), _without_level_metrics(explicit))
        assert t0 == t1
        # An all-zero array is the default: identical, metrics included.
        zeros = simulate_reference(dict(wl, priority=np.zeros(R, np.int64)), cfg,
                                   trace=t2)
        _assert_same_results(base, zeros)
        assert t0 == t2
        if i < 3:
            # And the hand-worked (a) lane: fcfs with its priorities = without.
            res_a, tr_a = run_prio(A_ARR, A_P, A_O, A_PRIO, policy="fcfs", max_num_seqs=1)
            res_n, tr_n = run_prio(A_ARR, A_P, A_O, None, policy="fcfs", max_num_seqs=1)
            _assert_same_results(_without_level_metrics(res_a), _without_level_metrics(res_n))
            assert tr_a == tr_n
