"""Asynchronous scheduling (docs/semantics.md §2.10), worked by hand.

With ``async_scheduling`` on, an iteration that starts with requests running was formed
while the previous one ran: it sees the arrivals up to the previous iteration's start,
and its CPU overheads (``cpu_iter_s + cpu_seq_s * n``) overlap its GPU time, so it takes
``max(G, C)`` instead of ``G + C``. An iteration with nothing running at its start is
formed at its own start and takes ``G + C``. The random oracle lanes
(tests/test_against_reference.py) draw the option too.
"""

from __future__ import annotations

import numpy as np
import pytest

from jaxsim import config, simulate_batch
from jaxsim import params as P
from jaxsim.shapes import SimShape
from jaxsim.workload import Trace, to_workload
from tests.test_step import clock, lane, run, slot, steps

CPU_ITER, CPU_SEQ = 3e-4, 2e-6  # the defaults of cost.cpu_iter_s and cost.cpu_seq_s
ASYNC = {"async_scheduling": True}


def dts(states) -> list[float]:
    return [clock(states[i + 1]) - clock(states[i]) for i in range(len(states) - 1)]


def test_async__an_arrival_during_an_iteration_joins_the_batch_after_next():
    # A (P=8, O=4) at 0; B (P=8, O=2) at 1 us, while A's prefill runs.
    # Synchronous: iteration 2 (start d1 > 1 us) already admits B.
    # Asynchronous: iteration 2 was formed when iteration 1 started (t = 0), before B
    # arrived: A decodes alone. Iteration 3 was formed at iteration 2's start (d1), when
    # B had arrived: B is admitted there, queued d1 + d2 - 1 us.
    tr = Trace([0.0, 1e-6], [8, 8], [4, 2])
    sync = steps({}, tr, 3)
    asy = steps(ASYNC, tr, 3)
    assert slot(sync[2], "slot_computed", 2).tolist() == [9, 8]  # A decoded, B prefilled
    assert int(asy[2].n_act) == 1 and int(asy[2].ptr) == 1  # B not yet seen
    assert slot(asy[3], "slot_computed", 2).tolist() == [10, 8]
    # iteration 1 had nothing running at its start: formed at once, G + C as in sync
    d_sync, d_async = dts(sync), dts(asy)
    assert d_async[0] == pytest.approx(d_sync[0], rel=1e-12)
    # iteration 2 (A's first decode, overlapped): max(G, C) with G = the same batch's
    # synchronous time less its CPU term; a decode of Llama-3.1-8B on an H100 takes
    # milliseconds, so G is the larger
    alone = steps({}, Trace([0.0], [8], [4]), 2)
    g_dec = dts(alone)[1] - (CPU_ITER + CPU_SEQ * 1)
    assert g_dec > CPU_ITER
    # (the CPU figures are float32 values of the cost parameters: 1e-9 s is far below C)
    assert d_async[1] == pytest.approx(g_dec, abs=1e-9)
    # B's queueing: admitted at the start of iteration 3
    out = steps(ASYNC, tr, 6)[-1]
    assert float(out.queue_s[1]) == pytest.approx(d_async[0] + d_async[1] - 1e-6, rel=1e-6)
    out_sync = steps({}, tr, 6)[-1]
    assert float(out_sync.queue_s[1]) == pytest.approx(d_sync[0] - 1e-6, rel=1e-6)


@pytest.mark.slow  # 15 s from a cold compile cache on 2 cores: CI's slow step
def test_async__simulate_batch_compiles_it_in_when_a_lane_needs_it():
    # A hand-built shape without SimShape.async_scheduling: simulate_batch turns it on
    # for a batch with an asynchronous lane, whose results are those of stepping above.
    tr = Trace([0.0, 1e-6], [8, 8], [4, 2])
    res = run(ASYNC, tr)
    stepped = steps(ASYNC, tr, 6)[-1]
    assert float(res.state.queue_s[0, 1]) == float(stepped.queue_s[1])
    assert float(res.state.queue_s[0, 1]) > float(run({}, tr).state.queue_s[0, 1])


def test_async__cpu_bound_iterations_take_the_cpu_time():
    # One request (P=8, O=4) with a 0.5 s CPU overhead per iteration, far above any GPU
    # time. Iteration 1 (nothing running at its start) takes G1 + C; the three decode
    # iterations are overlapped and take C = 0.5 + 2e-6 each.
    cost = {"cost": {"cpu_iter_s": 0.5}}
    tr = Trace([0.0], [8], [4])
    asy = steps({**ASYNC, **cost}, tr, 4)
    sync = steps(cost, tr, 4)
    c1 = 0.5 + CPU_SEQ
    d_async, d_sync = dts(asy), dts(sync)
    assert d_async[0] == pytest.approx(d_sync[0], rel=1e-12)
    assert d_async[1:] == pytest.approx([c1] * 3, rel=1e-7)
    assert all(d > c1 for d in d_sync[1:])  # synchronous: G + C
    assert float(asy[4].ttft_s[0]) == pytest.approx(d_async[0], rel=1e-6)
    assert float(asy[4].decode_s[0]) == pytest.approx(3 * c1, rel=1e-6)
    assert float(asy[4].busy_hi) + float(asy[4].busy_lo) == pytest.approx(
        d_async[0] + 3 * c1, rel=1e-7)


def test_async__an_engine_that_ran_dry_forms_its_batch_at_once():
    # A (P=8, O=2) at 0; B (P=8, O=1) at 1 us. Iteration 2 (overlapped, formed at t = 0)
    # decodes A, which finishes. Iteration 3 starts with nothing running, so it is formed
    # at its own start and admits B: B waited d1 + d2 - 1 us, and iteration 3 takes
    # G + C, the synchronous time of B's prefill alone.
    tr = Trace([0.0, 1e-6], [8, 8], [2, 1])
    asy = steps(ASYNC, tr, 3)
    d = dts(asy)
    assert int(asy[2].num_completed) == 1 and int(asy[2].ptr) == 1
    assert int(asy[3].num_completed) == 2
    assert float(asy[3].queue_s[1]) == pytest.approx(d[0] + d[1] - 1e-6, rel=1e-6)
    b_alone = dts(steps({}, Trace([0.0], [8], [1]), 1))[0]
    assert d[2] == pytest.approx(b_alone, rel=1e-9)


def test_async__an_idle_engine_has_no_lag():
    # B arrives long after A finished: the clock jumps to B's arrival and B is admitted
    # in that iteration (queue 0), exactly as without asynchronous scheduling.
    tr = Trace([0.0, 10.0], [8, 8], [1, 3])
    asy = steps(ASYNC, tr, 5)[-1]
    sync = steps({}, tr, 5)[-1]
    assert float(asy.queue_s[1]) == 0.0
    assert float(asy.ttft_s[1]) == pytest.approx(float(sync.ttft_s[1]), rel=1e-12)


def test_async__event_skipping_matches_stepping():
    # Poisson arrivals into a decode-heavy batch: decode runs end where the lagged
    # arrivals are seen (§6); every metric equals per-iteration stepping's.
    rng = np.random.default_rng(5)
    n = 40
    tr = Trace(np.cumsum(rng.exponential(0.02, n)), rng.integers(4, 40, n),
               rng.integers(2, 60, n))
    params = P.stack([lane(ASYNC, tr)])
    out = {}
    for macro in (0, 16):
        shape = SimShape(max_requests=n, max_slots=16, chunk_iterations=256,
                         macro_iterations=macro)
        out[macro] = simulate_batch(shape, params, to_workload(tr))
    assert int(out[16].metrics["steps"][0]) < int(out[0].metrics["steps"][0])
    assert int(out[16].metrics["iterations"][0]) == int(out[0].metrics["iterations"][0])
    for k in ("ttft", "tpot", "e2e", "queue"):
        for q in ("mean", "p50", "p99"):
            a, b = (float(out[m].metrics[f"{k}_{q}_s"][0]) for m in (16, 0))
            assert a == pytest.approx(b, rel=1e-6), (k, q)


@pytest.mark.parametrize(("cfg", "msg"), [
    ({"async_scheduling": "sometimes"}, "async_scheduling: 'sometimes' must be true or false"),
    ({"async_scheduling": True, "scheduler": "v0"},
     "async_scheduling: true is not allowed with scheduler=v0"),
])
def test_async__bad_config_names_the_field(cfg, msg):
    with pytest.raises(config.ConfigError, match=msg):
        config.validate(cfg)


def test_async__set_from_the_command_line():
    assert config.parse_set("async_scheduling=true") == (["async_scheduling"], True)
    assert config.validate({})["async_scheduling"] is False  # vLLM before 0.14
    assert config.validate({"async_scheduling": "true"})["async_scheduling"] is True
