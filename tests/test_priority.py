"""Priority scheduling (docs/semantics.md §10) in the JAX simulator: random lanes
against the reference simulator, FCFS lanes unchanged by the compiled-in priority path,
per-level metrics, and the configuration's refusals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jaxsim import api
from jaxsim import status as st_bits
from jaxsim.config import ConfigError
from jaxsim.shapes import SimShape
from jaxsim.workload import Trace, to_workload
from tests.helpers import lane_params
from tests.test_against_reference import compare_lane, random_case, run_both

LEVEL_KEYS = ("ttft_mean_s", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s",
              "e2e_p50_s", "e2e_p99_s", "queue_mean_s")


def priority_case(rng: np.random.Generator) -> tuple[Trace, dict]:
    """A random v1 lane (test_against_reference's draws, v0 lanes redrawn) whose requests
    carry priorities 0..3; two lanes in three schedule by them."""
    while True:
        trace, cfg = random_case(rng)
        if cfg["scheduler"] == "v1":
            break
    n = len(trace)
    levels = int(rng.choice([2, 3, 4]))
    trace = dataclasses.replace(trace, priority=rng.integers(0, levels, size=n))
    cfg["scheduling_policy"] = "priority" if rng.random() < 2 / 3 else "fcfs"
    return trace, cfg


def _level_errors(i, res, ref, L):
    errs = []
    finish = ref["finish_s"]
    done = np.isfinite(finish)
    atol = 1e-9 + 5e-8 * (float(np.max(finish[done])) if done.any() else 0.0)
    for p in range(L):
        for k in LEVEL_KEYS:
            key = f"{k}_prio{p}"
            a = float(res.metrics[key][i])
            b = float(ref["metrics"].get(key, np.nan))
            if not ((np.isnan(a) and np.isnan(b)) or abs(a - b) <= atol + 2e-6 * abs(b)):
                errs.append(f"{key} {a!r} vs ref {b!r}")
        for k in ("completed", "preemptions"):
            key = f"{k}_prio{p}"
            b = ref["metrics"].get(key, 0)
            if int(res.metrics[key][i]) != int(b):
                errs.append(f"{key} {int(res.metrics[key][i])} vs ref {b}")
    return errs


def _random_lanes(seed: int, n: int):
    rng = np.random.default_rng(seed)
    cases = [priority_case(rng) for _ in range(n)]
    _, res, refs = run_both(cases)
    L = int(max(np.max(t.priority) for t, _ in cases)) + 1
    failures = []
    for i, ((t, c), ref) in enumerate(zip(cases, refs, strict=True)):
        errs = compare_lane(i, t, res, ref)
        if not (ref["infeasible"] or res.status[i] & st_bits.INFEASIBLE
                or not np.any(t.priority)):
            # (a lane whose weights do not fit is infeasible here only: a host-side rule;
            # a lane whose requests are all at level 0 reports its batch's levels, the
            # reference none)
            errs += _level_errors(i, res, ref, int(np.max(t.priority)) + 1)
        if errs:
            failures.append(f"lane {i} ({c}): " + "; ".join(errs[:4]))
    assert not failures, f"{len(failures)} of {len(cases)} lanes differ:\n" + "\n".join(
        failures[:8])
    assert L == 4
    # the interesting paths were taken: priority lanes that preempted, FCFS lanes too
    pri = [c["scheduling_policy"] == "priority" and not r["infeasible"]
           for (_, c), r in zip(cases, refs, strict=True)]
    pre = [r["total_preemptions"] > 0 for r in refs]
    return sum(p and q for p, q in zip(pri, pre, strict=True)), sum(
        not p and q for p, q in zip(pri, pre, strict=True))


def test_priority__random_lanes_match_reference():
    pri_pre, fcfs_pre = _random_lanes(20261125, 120)
    assert pri_pre >= 8 and fcfs_pre >= 4, (pri_pre, fcfs_pre)


@pytest.mark.slow
def test_priority__many_random_lanes_match_reference():
    pri_pre, fcfs_pre = _random_lanes(20261126, 480)
    assert pri_pre >= 30 and fcfs_pre >= 15, (pri_pre, fcfs_pre)


BASE = {"model": "Llama-3.1-8B", "gpu": "H100-SXM", "cost_preset": "uncalibrated",
        "block_size": 16, "max_num_batched_tokens": 2048}


def _both(cfg: dict, trace: Trace) -> dict:
    """Per-request results (arrival order) under each policy, one batch of two lanes."""
    res = api.run([{**BASE, **cfg, "scheduling_policy": p} for p in ("fcfs", "priority")],
                  trace)
    assert list(res.status) == [0, 0], res.status
    return {p: res.requests(i) for i, p in enumerate(("fcfs", "priority"))}


def test_priority__waiting_queue_is_walked_by_priority_then_arrival():
    # One sequence at a time. r0 (level 1) runs first, alone; r1 (level 1) and r2
    # (level 0) arrive while it runs. FCFS admits r1 next; priority admits r2 first,
    # although it arrived after r1.
    tr = Trace([0.0, 0.001, 0.002], [100, 100, 100], [20, 20, 20], priority=[1, 1, 0])
    out = _both({"max_num_seqs": 1}, tr)
    admitted = {p: np.asarray(tr.arrival_s) + r["queue_s"] for p, r in out.items()}
    assert admitted["fcfs"][1] < admitted["fcfs"][2]
    assert admitted["priority"][2] < admitted["priority"][1]
    assert admitted["priority"][0] == 0.0  # nothing else had arrived


def test_priority__victim_is_the_lowest_priority_running_request():
    # Both arrive at 0; 12 blocks of 16 tokens; each request grows to 164 tokens (11
    # blocks). When both hold 6 blocks (96 tokens) the walk's first request needs a 7th:
    # FCFS preempts the last admitted (r1, level 0: admitted second in arrival order),
    # priority the largest key (r0, level 1; admitted second under priority, since r1's
    # level comes first in the waiting queue).
    tr = Trace([0.0, 0.0], [64, 64], [100, 100], priority=[1, 0])
    out = _both({"max_num_seqs": 2, "num_gpu_blocks": 12}, tr)
    assert list(out["fcfs"]["preemptions"]) == [0, 1]
    assert list(out["priority"]["preemptions"]) == [1, 0]
    for r in out.values():
        assert r["completed"].all()


def _preempting_steps(arrival_b: float) -> list:
    """r0 (level 1) arrives at 0 and r1 (level 0) at ``arrival_b``, 64 + 100 tokens each,
    12 blocks of 16 tokens, stepped one iteration at a time under priority: the
    (before, after) states of the steps that preempted."""
    from tests.helpers import step_states

    tr = Trace([0.0, arrival_b], [64, 64], [100, 100], priority=[1, 0])
    p = lane_params({**BASE, "max_num_seqs": 2, "num_gpu_blocks": 12,
                     "scheduling_policy": "priority"}, tr)
    sts = step_states(SimShape(max_requests=2, max_slots=4, priority_levels=2), p,
                      to_workload(tr), 250)
    assert int(sts[-1].num_completed) == 2
    return [(a, b) for a, b in zip(sts, sts[1:], strict=False)
            if int(b.preemptions_total) > int(a.preemptions_total)]


def test_priority__an_already_scheduled_victim_gives_back_its_tokens_and_blocks():
    # r1 arrives 0.1 s after r0, about 18 iterations behind. r0 (at 97 tokens) takes the
    # 12th block first. When r1 reaches 81 tokens and needs a 6th block, the walk has
    # already scheduled r0 (98 tokens: no new block) in that iteration; the victim is
    # r0 all the same (the larger key): its token goes back, its 7 blocks are freed,
    # and the iteration schedules r1's token alone.
    (a, b), = _preempting_steps(0.1)
    assert list(np.asarray(a.slot_req)[:2]) == [0, 1]
    assert list(np.asarray(a.slot_computed)[:2]) == [98, 80]
    assert int(b.tokens_total) - int(a.tokens_total) == 1
    assert int(b.iterations) == int(a.iterations) + 1
    assert int(b.n_run) == 1 and int(b.slot_req[0]) == 1 and int(b.slot_computed[0]) == 81


def test_priority__a_front_request_that_preempts_itself_leaves_an_empty_iteration():
    # r1 arrives 10 ms after r0, two tokens behind. r0 reaches 97 tokens while both
    # hold 6 blocks (none free): r0, at the front of `running`, has the larger key and
    # preempts itself, so the iteration schedules nothing (§10): no time passes, it is
    # not counted, and r1 decodes in the next one.
    (a, b), = _preempting_steps(0.01)
    assert list(np.asarray(a.slot_computed)[:2]) == [96, 94]
    assert int(b.tokens_total) == int(a.tokens_total)
    assert int(b.iterations) == int(a.iterations)
    assert (float(b.clock_hi), float(b.clock_lo)) == (float(a.clock_hi), float(a.clock_lo))
    assert int(b.n_run) == 1 and int(b.slot_req[0]) == 1


def test_priority__fcfs_lanes_ignore_priorities_and_keep_event_skipping():
    rng = np.random.default_rng(7)
    n = 60
    base = Trace(np.sort(rng.uniform(0, 4, n)), rng.integers(20, 400, n),
                 rng.integers(2, 60, n))
    with_pri = dataclasses.replace(base, priority=rng.integers(0, 3, n))
    cfg = {**BASE, "max_num_seqs": 16, "num_gpu_blocks": 200}
    plain = api.run(cfg, base)
    pri = api.run(cfg, with_pri)  # priority compiled in (levels), FCFS lane
    a, b = plain.requests(0), pri.requests(0)
    for k in ("ttft_s", "e2e_s", "preemptions", "tokens_scheduled"):
        np.testing.assert_array_equal(a[k], b[k])
    assert int(pri.metrics["steps"][0]) < int(pri.metrics["iterations"][0])
    assert "completed_prio2" in pri.metrics and "completed_prio0" not in plain.metrics
    assert sum(int(pri.metrics[f"completed_prio{p}"][0]) for p in range(3)) == n


def test_priority__configuration_refusals_name_the_field():
    from jaxsim import config

    for extra, word in (({"scheduler": "v0"}, "scheduler=v0"),
                        ({"enable_prefix_caching": True}, "enable_prefix_caching"),
                        ({"speculative": {"num_tokens": 2}}, "speculative.num_tokens"),
                        ({"disaggregation": {"enabled": True}}, "disaggregation.enabled")):
        with pytest.raises(ConfigError, match=word):
            config.validate({"scheduling_policy": "priority", **extra})
    with pytest.raises(ConfigError, match="scheduling_policy: 'lifo'"):
        config.validate({"scheduling_policy": "lifo"})
    for bad in ([], "0.5", [0.5] * 9, [0.0, 0.0], [0.5, -1]):
        with pytest.raises(ConfigError, match="workload.priority_mix"):
            config.validate({"workload": {"priority_mix": bad}})
    with pytest.raises(ValueError, match=r"priority\[1\] = 8"):
        Trace([0.0, 1.0], [5, 5], [5, 5], priority=[0, 8])
    with pytest.raises(ValueError, match=r"priority\[0\] = 0.5"):
        Trace([0.0, 1.0], [5, 5], [5, 5], priority=[0.5, 1])


def test_priority__mix_draws_levels_from_its_own_generator(tmp_path):
    from jaxsim import config

    cfg = config.validate({"workload": {"num_requests": 4000, "priority_mix": [1, 3]}})
    tr = config.build_trace(cfg)
    plain = config.build_trace(config.validate({"workload": {"num_requests": 4000}}))
    np.testing.assert_array_equal(tr.arrival_s, plain.arrival_s)  # other draws unchanged
    share = float(np.mean(tr.priority == 0))
    assert 0.22 < share < 0.28, share
    # a CSV trace carries its own priorities; a mix on top of it is refused
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,prompt_tokens,output_tokens,priority\n0,10,5,1\n0.5,10,5,0\n")
    t_cfg = config.validate({"workload": {"kind": "trace", "format": "csv",
                                          "path": str(path)}})
    np.testing.assert_array_equal(config.build_trace(t_cfg).priority, [1, 0])
    with pytest.raises(ConfigError, match="priority column"):
        config.build_trace(config.validate({"workload": {
            "kind": "trace", "format": "csv", "path": str(path), "priority_mix": [1, 1]}}))


def test_priority__sort_order_is_lax_sorts_permutation_and_skips_lanes_that_do_not_need_it():
    """step._sort_order (priority's walk orders, by comparing every pair of rows) gives
    lax.sort's stable permutation, packed or not; lanes whose ``needed`` is false get the
    identity, in a vmapped batch where other lanes sort."""
    import jax
    import jax.numpy as jnp

    from jaxsim.step import _sort_order

    rng = np.random.default_rng(3)
    S, B = 24, 6
    keys = [jnp.asarray(rng.integers(0, n, (B, S)), jnp.int32) for n in (3, 4, 50)]
    row = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))
    *_, want = jax.vmap(lambda a, b, c, r: jax.lax.sort((a, b, c, r), num_keys=4))(*keys, row)
    want_inv = jax.vmap(lambda p: jnp.zeros((S,), jnp.int32).at[p].set(jnp.arange(S)))(want)
    needed = jnp.asarray([True, False, True, True, False, True])
    for sizes in (None, (3, 4, 50), (3, 4, 2**30)):  # the last cannot be packed
        perm, inv = jax.jit(jax.vmap(lambda a, b, c, sz=sizes: _sort_order(a, b, c, sizes=sz))
                            )(*keys)
        np.testing.assert_array_equal(perm, want)
        np.testing.assert_array_equal(inv, want_inv)
        perm, inv = jax.jit(jax.vmap(lambda a, b, c, n, sz=sizes: _sort_order(
            a, b, c, sizes=sz, needed=n)))(*keys, needed)
        sel = np.asarray(needed)
        np.testing.assert_array_equal(np.asarray(perm)[sel], np.asarray(want)[sel])
        np.testing.assert_array_equal(np.asarray(inv)[sel], np.asarray(want_inv)[sel])
        np.testing.assert_array_equal(np.asarray(perm)[~sel], np.asarray(row)[~sel])
        np.testing.assert_array_equal(np.asarray(inv)[~sel], np.asarray(row)[~sel])
    assert len(set(np.asarray(want[0]).tolist())) == S and not np.array_equal(want[0], row[0])
