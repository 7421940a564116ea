"""Event skipping (docs/semantics.md §6): hand-worked decode runs, each of their limits,
and equality with per-iteration stepping.

The oracle test (tests/test_against_reference.py) runs with event skipping on (the
default shape) and checks every lane against the reference simulator; here each rule that
ends a run gets its own scenario, with the step counts worked out by hand, and the
results are compared with the same lanes stepped one iteration at a time.
"""

from __future__ import annotations

import numpy as np
import pytest

from jaxsim import params as P
from jaxsim import simulate_batch
from jaxsim import status as st_bits
from jaxsim.shapes import SimShape
from jaxsim.workload import Trace, to_workload
from tests.helpers import lane_params, step_states

BASE = {"max_num_batched_tokens": 64, "max_num_seqs": 8, "block_size": 16,
        "num_gpu_blocks": 1000}
R = 12  # every workload is padded to R rows, so the tests share compiled functions


def _run(cfg: dict, trace: Trace, macro: int, **kw):
    params = P.stack([lane_params({**BASE, **cfg}, trace)])
    shape = SimShape(max_requests=R, max_slots=8, chunk_iterations=32,
                     macro_iterations=macro)
    return simulate_batch(shape, params, to_workload(trace, R), **kw)


def _both(cfg: dict, trace: Trace, **kw):
    """(event skipping with 16-iteration runs, per-iteration stepping); asserts that every
    metric and per-request value agrees."""
    a = _run(cfg, trace, 16, **kw)
    b = _run(cfg, trace, 0, **kw)
    for k, v in b.metrics.items():
        if k == "steps":
            continue
        np.testing.assert_allclose(a.metrics[k], v, rtol=1e-9, atol=0, err_msg=k)
    for name in ("ttft_s", "decode_s", "queue_s", "preemptions", "tokens_scheduled",
                 "completed"):
        np.testing.assert_allclose(np.asarray(getattr(a.state, name)),
                                   np.asarray(getattr(b.state, name)), rtol=1e-9,
                                   err_msg=name)
    assert int(b.metrics["steps"][0]) == int(b.metrics["iterations"][0])
    return a, b


def _states(cfg: dict, trace: Trace, n: int, macro: int = 16) -> list:
    params = lane_params({**BASE, **cfg}, trace)
    shape = SimShape(max_requests=R, max_slots=8, macro_iterations=macro)
    return step_states(shape, params, to_workload(trace, R), n)


def test_macro__one_request_runs_of_block_size():
    # P=10, O=40, block 16. Step 1: the prefill iteration (c=10, g=1). Step 2: a run of
    # 16 decodes (the cap: min(macro_iterations, block_size)), then one ordinary decode:
    # 17 iterations, g=18. Step 3: the same, g=35. Step 4: 40-35=5 tokens remain, so a
    # run of 5 whose last iteration finishes the request; the ordinary iteration of that
    # step has nothing to schedule. 1 + 17 + 17 + 5 = 40 iterations in 4 steps.
    tr = Trace([0.0], [10], [40])
    s = _states({}, tr, 5)
    assert [int(x.iterations) for x in s] == [0, 1, 18, 35, 40, 40]
    assert [int(x.slot_generated[0]) for x in s[:4]] == [0, 1, 18, 35]
    assert int(s[4].num_completed) == 1 and int(s[4].n_act) == 0
    a, b = _both({}, tr)
    assert int(a.metrics["steps"][0]) == 4 and int(b.metrics["steps"][0]) == 40
    # the clock is the sum of the per-iteration times, in the same order
    assert float(a.metrics["busy_s"][0]) == float(b.metrics["busy_s"][0])


def test_macro__macro_iterations_caps_the_run():
    # macro_iterations=4: step 2 decodes 4 + 1 tokens, and so on.
    tr = Trace([0.0], [10], [40])
    s = _states({}, tr, 3, macro=4)
    assert [int(x.iterations) for x in s] == [0, 1, 6, 11]


def test_macro__arrival_ends_the_run():
    # Request 0 (P=8, O=30) prefills at t=0; request 1 arrives at 3.5 iterations' time.
    # The run may not contain the iteration that starts after the arrival: stepping
    # admits request 1 in iteration 5 (the first to start at or after 3.5 dt), so step
    # 2's run is 3 decodes and its ordinary iteration admits request 1.
    tr0 = Trace([0.0], [8], [30])
    s0 = _states({}, tr0, 2, macro=0)
    dt = float(s0[2].clock_hi) - float(s0[1].clock_hi)  # one decode of one request
    t1 = float(s0[1].clock_hi) + 2.5 * dt
    tr = Trace([0.0, t1], [8, 8], [30, 30])
    s = _states({}, tr, 2)
    assert int(s[2].iterations) == 5 and int(s[2].n_run) == 2
    assert int(s[2].slot_generated[1]) == 1  # request 1 prefilled in iteration 5
    _both({}, tr)


def test_macro__finish_inside_the_run_when_nothing_waits():
    # Requests 0 (P=8, O=5) and 1 (P=8, O=20) arrive together. Step 1 prefills both
    # (g=1 each). Step 2: request 0 has 4 tokens to go, so it finishes in the run's
    # iteration 3; nothing waits (the trace is exhausted), so the run goes on with request
    # 1 alone to the cap of 16, and the ordinary iteration decodes request 1 (g=18) and
    # removes request 0. Step 3: request 1's last 2 tokens are a run of 2.
    tr = Trace([0.0, 0.0], [8, 8], [5, 20])
    s = _states({}, tr, 3)
    assert [int(x.iterations) for x in s] == [0, 1, 18, 20]
    assert [int(x.num_completed) for x in s] == [0, 0, 1, 2]
    assert int(s[2].n_act) == 1 and int(s[2].slot_generated[0]) == 18
    assert int(s[2].tokens_total) == 16 + 4 + 16 + 1  # prefills, request 0, request 1
    a, b = _both({}, tr)
    assert int(a.metrics["steps"][0]) == 3
    # request 0's E2E ends with the run's iteration 3, as in stepping
    assert float(a.state.decode_s[0, 0]) == float(b.state.decode_s[0, 0])


def test_macro__finish_ends_the_run_and_frees_the_seat():
    # max_num_seqs=1: request 1 waits (ready, blocked by max_num_seqs) while request 0
    # decodes, so arrivals do not end the run; the finish of request 0 does (it could
    # free the seat: the run ends with the first finish while the head waits). Request 0:
    # P=8, O=20: step 1 prefill (g=1); step 2: 16 + 1 (g=18); step 3: a run of 2 ends
    # with its finish, and the step's ordinary iteration admits request 1.
    tr = Trace([0.0, 0.0], [8, 8], [20, 5])
    s = _states({"max_num_seqs": 1}, tr, 3)
    assert [int(x.iterations) for x in s] == [0, 1, 18, 21]
    assert int(s[3].num_completed) == 1 and int(s[3].slot_generated[0]) == 1
    _both({"max_num_seqs": 1}, tr)


def test_macro__kv_capacity_ends_the_run():
    # 3 blocks of 16 tokens; request 0 (P=20, O=60) holds 2 blocks after its prefill and
    # needs a third at token 33, a fourth at token 49, which does not fit: the second
    # request is preempted. Runs stop before any iteration whose blocks do not fit.
    cfg = {"num_gpu_blocks": 5}
    tr = Trace([0.0, 0.0], [20, 20], [60, 60])
    a, b = _both(cfg, tr)
    assert int(b.metrics["preemptions"][0]) > 0
    assert int(a.metrics["steps"][0]) < int(a.metrics["iterations"][0])


def test_macro__iteration_budget_inside_a_run():
    tr = Trace([0.0], [10], [200])
    a, b = _both({}, tr, max_iterations=23)
    assert int(a.metrics["iterations"][0]) == 23
    assert a.status[0] & st_bits.TRUNCATED


@pytest.mark.parametrize("mode", ["v0", "v1"])
def test_macro__blocked_head_by_budget_and_blocks(mode):
    # Many requests at once with a small budget and KV: the queue head is blocked by the
    # budget (no chunking; 128 tokens hold two prompts) or the watermark while the running
    # requests decode.
    rng = np.random.default_rng(3)
    n = 12
    tr = Trace(np.zeros(n), rng.integers(20, 60, n), rng.integers(10, 50, n))
    cfg = {"scheduler": mode, "enable_chunked_prefill": False, "max_num_batched_tokens": 128,
           "num_gpu_blocks": 14, "watermark": 0.1}
    a, _ = _both(cfg, tr)
    assert int(a.metrics["completed"][0]) == n
    assert int(a.metrics["steps"][0]) < int(a.metrics["iterations"][0]) // 2


@pytest.mark.slow  # its prefix-cache shapes compile (24 s cold on 2 cores): CI's slow step
def test_macro__on_with_the_prefix_cache_and_off_with_prefetch():
    # Two requests sharing one cached block decode in runs; with prefetch compiled in,
    # every iteration is a step. The metrics are the same either way.
    from jaxsim import api
    tr = Trace([0.0, 0.1], [64, 64], [20, 20], hash_ids=[[7, 1], [7, 2]],
               hash_block_tokens=32)
    cfg = {"model": "Llama-3.1-8B", "gpu": "H100-SXM", "enable_prefix_caching": True,
           "tiers": "dram"}  # (prefetch needs a tier to prefetch from)
    runs = {}
    for pf in (False, True):
        prep = api.prepare({**cfg, "cache": {"prefetch": pf}}, tr)
        assert prep.shape.cache_entries > 0 and prep.shape.prefetch == pf
        runs[pf] = simulate_batch(prep.shape, prep.params, prep.workload)
    on, off = runs[False].metrics, runs[True].metrics
    assert int(off["steps"][0]) == int(off["iterations"][0])
    assert int(on["steps"][0]) < int(on["iterations"][0]) // 2
    assert int(on["iterations"][0]) == int(off["iterations"][0])
    assert float(on["prefix_hit_rate"][0]) == float(off["prefix_hit_rate"][0]) > 0
    np.testing.assert_allclose(on["e2e_mean_s"], off["e2e_mean_s"], rtol=1e-6)


def test_macro__shape_validation():
    with pytest.raises(ValueError, match="macro_iterations"):
        SimShape(max_requests=4, max_slots=4, macro_iterations=-1)
    with pytest.raises(ValueError, match="macro_iterations"):
        SimShape(max_requests=4, max_slots=4, macro_iterations=65)


@pytest.mark.slow  # its compacted batch sizes compile (12 s cold on 2 cores): CI's slow step
def test_macro__lane_compaction_gives_the_same_results():
    # 256 lanes, of which 16 have 8x longer outputs: once the short lanes are done the
    # long ones continue in a batch of 64; results equal the uncompacted run.
    n = 6
    tr = Trace(np.linspace(0, 0.05, n), np.full(n, 32), np.full(n, 16))
    lanes = [lane_params(BASE, tr) for _ in range(256)]
    params = P.stack(lanes)
    long = np.arange(256) % 16 == 0
    out = np.where(long[:, None], 128, 16) * np.ones((1, n), np.int64)
    from jaxsim.workload import stack_workloads
    wls = [to_workload(Trace(tr.arrival_s, tr.prompt_tokens, o), R) for o in out]
    wl = stack_workloads(wls)
    shape = SimShape(max_requests=R, max_slots=8, chunk_iterations=8)
    a = simulate_batch(shape, params, wl, compact_lanes=True)
    b = simulate_batch(shape, params, wl, compact_lanes=False)
    for k in a.metrics:
        np.testing.assert_array_equal(a.metrics[k], b.metrics[k], err_msg=k)
    np.testing.assert_array_equal(np.asarray(a.state.ttft_s), np.asarray(b.state.ttft_s))
    assert np.all(a.metrics["completed"] == n)
