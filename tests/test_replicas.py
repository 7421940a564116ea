"""Data-parallel replicas behind a static router (docs/semantics.md §7).

The oracle: each replica's share of the trace, routed here independently of
``jaxsim.replicas`` (round robin) or with its assignment (random), simulated by the
reference simulator, the per-request results put back together and the metrics
computed over the whole trace by the reference's own metric code.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import jaxsim
from jaxsim import api, replicas
from jaxsim import config as config_mod
from jaxsim import status as st_bits
from jaxsim.state import SimState
from jaxsim.workload import Trace
from tests.helpers import fleet_errors, lane_params, oracle_config, oracle_workload
from tests.reference.event_sim import lane_metrics, simulate_reference
from tests.test_against_reference import random_case

DD_MAX = ("clock", "start")  # (hi, lo) pairs merged by the larger value


def test_replicas__every_state_field_has_one_merge_rule():
    fields = [f.name for f in dataclasses.fields(SimState)]
    ruled = (list(replicas.PER_REQUEST) + list(replicas.SUM_INT) + list(replicas.OR)
             + list(replicas.FIRST)
             + [f"{b}_{s}" for b in replicas.SUM_DD for s in ("hi", "lo")]
             + [f"{b}_{s}" if b in DD_MAX else b for b in replicas.MAX
                for s in (("hi", "lo") if b in DD_MAX else ("",))])
    assert sorted(ruled) == sorted(fields)


def test_replicas__round_robin_and_random_assignment():
    tr = Trace([3.0, 1.0, 2.0, 0.0, 5.0], [1] * 5, [1] * 5)
    np.testing.assert_array_equal(replicas.assign(tr, 2, "round_robin"), [0, 1, 0, 1, 0])
    sp = replicas.split(tr, 2, "round_robin")
    # arrival order is 3, 1, 2, 0, 4 (indices); replica 0 gets positions 0, 2, 4
    np.testing.assert_array_equal(sp.traces[0].arrival_s, [0.0, 2.0, 5.0])
    np.testing.assert_array_equal(sp.traces[1].arrival_s, [1.0, 3.0])
    np.testing.assert_array_equal(np.concatenate(sp.positions), [0, 2, 4, 1, 3])
    big = jaxsim.synthetic("poisson", 4000, prompt_tokens=8, output_tokens=8, rate=1.0)
    a = replicas.assign(big, 4, "random", seed=3)
    np.testing.assert_array_equal(a, replicas.assign(big, 4, "random", seed=3))
    assert not np.array_equal(a, replicas.assign(big, 4, "random", seed=4))
    counts = np.bincount(a, minlength=4)
    assert counts.min() > 900 and counts.max() < 1100  # 1000 each, sd about 27
    # more replicas than requests: the empty ones get no lane
    sp = replicas.split(tr, 8, "round_robin")
    assert sp.replica == [0, 1, 2, 3, 4] and all(len(t) == 1 for t in sp.traces)


def _oracle_fleet(trace: Trace, cfg: dict, assignment: np.ndarray) -> dict:
    """Reference results of a fleet: each replica simulated alone, metrics over all."""
    order = trace.order()
    n = len(trace)
    first = np.full(n, np.nan)
    finish = np.full(n, np.nan)
    admitted = np.full(n, np.nan)
    completed = np.zeros(n, bool)
    tot = {"iterations": 0, "total_preemptions": 0, "total_tokens": 0, "busy_s": 0.0}
    peak = 0.0
    flags = {"infeasible": False, "truncated": False}
    for k in np.unique(assignment):
        idx = order[assignment == k]  # original indices, arrival order
        sub = Trace(trace.arrival_s[idx], trace.prompt_tokens[idx],
                    trace.output_tokens[idx])
        p = lane_params(cfg, sub)
        ref = simulate_reference(oracle_workload(sub), oracle_config(p))
        first[idx] = ref["first_token_s"]
        finish[idx] = ref["finish_s"]
        admitted[idx] = ref["admitted_s"]
        completed[idx] = ref["completed"]
        for key in tot:
            tot[key] += ref[key]
        peak = max(peak, ref["kv_occupancy_peak"])
        for key in flags:
            flags[key] |= ref[key]
    full = config_mod.validate(cfg)
    m = lane_metrics(trace.arrival_s, trace.prompt_tokens, trace.output_tokens, first,
                     finish, admitted, completed, full["slo"]["ttft_s"],
                     full["slo"]["tpot_s"])
    return {**m, **tot, **flags, "kv_occupancy_peak": peak,
            "num_completed": int(completed.sum()), "completed_mask": completed,
            "first": first, "finish": finish}


def test_replicas__fleets_match_the_reference_per_replica():
    rng = np.random.default_rng(20261124)
    cases = []
    for _ in range(14):
        trace, cfg = random_case(rng)
        cfg["num_replicas"] = int(rng.choice([1, 2, 2, 3, 4, 7]))
        cfg["router"] = str(rng.choice(replicas.ROUTERS))
        cfg["seed"] = int(rng.integers(0, 100))
        cases.append((trace, cfg))
    # a fleet with more replicas than requests
    cases.append((Trace([0.0, 0.1, 0.2], [30, 40, 50], [5, 6, 7]), {"num_replicas": 5}))
    res = api.run([c for _, c in cases], [t for t, _ in cases])
    failures = []
    for i, (trace, cfg) in enumerate(cases):
        full = config_mod.validate(cfg)
        if full["router"] != "random":  # independently of jaxsim.replicas (these traces
            # have no block ids: prefix_hash is round robin on them)
            assert trace.hash_ids is None
            assignment = np.arange(len(trace)) % full["num_replicas"]
        else:
            assignment = replicas.assign(trace, full["num_replicas"], "random", full["seed"])
        ref = _oracle_fleet(trace, cfg, assignment)
        status = int(res.status[i])
        errs = []
        if bool(status & st_bits.INFEASIBLE) != ref["infeasible"] and not (
                status & st_bits.INF_NO_KV_MEMORY):
            errs.append(f"infeasible {status} vs {ref['infeasible']}")
        if status & st_bits.INFEASIBLE:
            if errs:
                failures.append(f"case {i}: {errs}")
            continue
        m = {k: v[i] for k, v in res.metrics.items()}
        errs += fleet_errors(status, m, ref, trace, ("throughput_rps", "output_tps",
                                                     "goodput_rps", "busy_s",
                                                     "kv_occupancy_peak"))
        per = res.requests(i)
        np.testing.assert_array_equal(per["completed"], ref["completed_mask"][trace.order()])
        assert len(res.replica_lanes[i]) == min(full["num_replicas"], len(trace))
        if errs:
            failures.append(f"case {i} ({cfg}): " + "; ".join(errs[:4]))
    assert not failures, "\n".join(failures)
    # the cases exercise preemptions and fleets of several lanes
    assert res.metrics["preemptions"].max() > 0
    assert max(len(ls) for ls in res.replica_lanes) >= 4


@pytest.mark.slow  # about 10 s on 2 cores: runs in CI's slow step
def test_replicas__one_replica_is_the_plain_lane_and_merging_it_changes_nothing():
    tr = jaxsim.synthetic("poisson", 60, prompt_tokens=300, output_tokens=40, rate=30.0)
    cfg = {"max_num_seqs": 8, "num_gpu_blocks": 200}
    plain = api.run(cfg, tr)
    # a fleet of two where one configuration has one replica: the merge path
    both = api.run([{**cfg, "num_replicas": 1}, {**cfg, "num_replicas": 2}], tr)
    assert both.replica_lanes[0].tolist() == [0]
    for k, v in plain.metrics.items():
        a, b = np.asarray(v[0], np.float64), np.asarray(both.metrics[k][0], np.float64)
        assert (np.isnan(a) and np.isnan(b)) or abs(a - b) <= 1e-6 * abs(a) + 1e-9, k


@pytest.mark.slow  # about 10 s on 2 cores: runs in CI's slow step
def test_replicas__fleet_sums_and_peaks_and_tier_energy():
    cfg = {"enable_prefix_caching": True, "tiers": "ssd", "num_replicas": 3,
           "max_num_seqs": 8, "num_gpu_blocks": 300,
           "workload": {"kind": "sessions", "sessions": 12, "turns": 3, "rate": 4.0,
                        "prompt_tokens": 600, "new_tokens": 100, "output_tokens": 30,
                        "think_time_s": 2.0}}
    tr = config_mod.build_trace(config_mod.validate(cfg))
    res = api.run(cfg, tr)
    per = res.per_replica
    lanes = res.replica_lanes[0]
    for k in ("iterations", "preemptions", "tokens_scheduled", "completed", "steps"):
        assert int(res.metrics[k][0]) == int(per.metrics[k][lanes].sum()), k
    assert res.metrics["busy_s"][0] == pytest.approx(per.metrics["busy_s"][lanes].sum(),
                                                     rel=1e-6)
    assert res.metrics["kv_occupancy_peak"][0] == per.metrics["kv_occupancy_peak"][lanes].max()
    assert res.metrics["bytes_written_tier1"][0] == pytest.approx(
        per.metrics["bytes_written_tier1"][lanes].sum(), rel=1e-6)
    # each replica has its own SSD tier: three times its static power
    cp = api.prepare({**cfg, "num_replicas": 1}, tr).params.cache
    watts = float(np.asarray(cp.static_power_w)[0, 1])
    pj = float(np.asarray(cp.energy_pj_per_bit)[0, 1])
    m = {k: float(v[0]) for k, v in res.metrics.items()}
    moved = m["bytes_read_tier1"] + m["bytes_written_tier1"]
    assert watts > 0 and moved > 0
    assert m["energy_j_tier1"] == pytest.approx(
        3 * watts * m["duration_s"] + pj * 8e-12 * moved, rel=1e-5)


def test_replicas__bad_input_and_prepare():
    with pytest.raises(config_mod.ConfigError, match="num_replicas: 0 must be >= 1"):
        api.run({"num_replicas": 0})
    with pytest.raises(config_mod.ConfigError, match="router: 'least_loaded' is not one of"):
        api.run({"num_replicas": 2, "router": "least_loaded"})
    tr = Trace([0.0], [8], [8])
    with pytest.raises(config_mod.ConfigError, match="num_replicas: 2 .*prepare"):
        api.prepare({"num_replicas": 2}, tr)


@pytest.mark.slow  # about 10 s on 2 cores: runs in CI's slow step
def test_replicas__sweep_rows_equal_api_run(tmp_path):
    """A num_replicas axis in a sweep: P lanes per configuration (padding lanes stop at
    once), slot-table re-runs inside fleets, rows equal to jaxsim.api.run's; the per-GPU
    objectives count every replica's GPUs."""
    from search import objectives, runner, space

    sp = space.from_dict({
        "base": {"model": "Llama-3.1-8B", "gpu": "H100-SXM", "num_gpu_blocks": 400,
                 "workload": {"kind": "all_at_once", "num_requests": 60,
                              "prompt_tokens": 200, "output_tokens": 24}},
        "axes": {"num_replicas": [1, 3], "max_num_seqs": [2, 16],
                 "router": ["round_robin", "random"]}})
    out = str(tmp_path / "o")
    res = runner.run_sweep(sp, out, chunk_size=3, slots=8, progress=False)
    assert res.plan.replicas == 3 and res.plan.lanes == 9
    df = runner.load_results(out).sort_values("config_id").reset_index(drop=True)
    assert len(df) == 8 and (df["status"] == 0).all()
    cfgs = sp.configs(sp.sample(np.arange(8)))
    direct = api.run(cfgs)
    for k in ("ttft_p99_s", "tpot_p50_s", "e2e_mean_s", "throughput_rps", "busy_s",
              "iterations", "kv_occupancy_mean", "completed"):
        np.testing.assert_allclose(df[k].to_numpy(np.float64), direct.metrics[k],
                                   rtol=1e-6, err_msg=k)
    fleets = df["num_replicas"] == 3
    assert fleets.sum() == 4 and set(df["slots"][df["max_num_seqs"] == 16]) == {16}
    gpus = objectives.derived({k: df[k].to_numpy() for k in df.columns}, "num_gpus")
    np.testing.assert_array_equal(gpus, np.where(fleets, 3.0, 1.0))
    # rows of chunks written before the column existed (NaN after a resume) count one
    old = {"tp": np.array([2, 2]), "num_replicas": np.array([np.nan, 3.0])}
    np.testing.assert_array_equal(objectives.derived(old, "num_gpus"), [2.0, 6.0])


@pytest.mark.slow  # about 30 s on 2 cores: runs in CI's slow step
def test_replicas__capacity_of_two_replicas():
    """A random router splits a Poisson stream into two of half the rate: two replicas
    serve about twice one's rate at the same SLO. Round robin makes each replica's
    arrivals more regular (every second request), so the tail waits less and it serves
    more than that (measured: 2.8x with two seats per replica)."""
    from search import capacity

    cfg = {"model": "Llama-3.1-8B", "gpu": "H100-SXM", "cost_preset": "uncalibrated",
           "max_num_seqs": 2, "max_num_batched_tokens": 512,
           "workload": {"kind": "poisson", "rate": 1.0, "num_requests": 300,
                        "prompt_tokens": 256, "output_tokens": 32}}
    res = capacity.capacity_search(
        [cfg, {**cfg, "num_replicas": 2, "router": "random"}, {**cfg, "num_replicas": 2}],
        {"e2e_p99_s": 0.5}, rate_lo=4.0, rate_hi=256.0, rounds=6)
    assert res.status.tolist() == [0, 0, 0]
    one, rand, rr = res.capacity_rps
    assert 1.7 <= rand / one <= 2.3, rand / one
    assert rr > 1.2 * rand


@pytest.mark.slow  # 43 s from a cold compile cache on 2 cores: CI's slow step
def test_replicas__max_model_len_and_budgets_are_the_deployments():
    """Every replica sizes max_model_len for the whole workload's longest request (the
    replicas are configured alike): a fleet is infeasible on every replica, with the
    one-lane reason and no partial metrics. A configuration's max_iterations bounds
    each replica, and its reasons name the replica's iterations."""
    n = 10
    prompt = np.full(n, 80)
    prompt[1] = 1900
    tr = Trace(np.arange(n) * 0.1, prompt, np.full(n, 20))
    cfg = {"max_num_seqs": 8, "num_gpu_blocks": 50}
    one = api.run(cfg, tr).metrics["status"]
    res = api.run({**cfg, "num_replicas": 2}, tr)
    assert int(res.status[0]) == int(one[0]) and int(res.status[0]) & st_bits.INFEASIBLE
    assert all(int(s) == int(one[0]) for s in res.per_replica.status)
    assert res.metrics["completed"][0] == 0 and np.isnan(res.metrics["ttft_p50_s"][0])
    assert any("max_model_len 1920" in r for r in res.reasons(0)), res.reasons(0)
    ok = Trace(np.arange(n) * 0.1, np.full(n, 80), np.full(n, 20))
    res = api.run({"max_num_seqs": 8, "max_iterations": 12, "num_replicas": 2}, ok)
    assert all(int(i) == 12 for i in res.per_replica.metrics["iterations"])
    assert int(res.metrics["iterations"][0]) == 24
    why = " ".join(res.reasons(0))
    assert "12 iterations" in why and "max_iterations 12" in why, why


@pytest.mark.slow  # the CLI's 1,000-request fleet compiles (23 s cold on 2 cores): CI's slow step
def test_replicas__requests_per_replica_in_the_command_line(capsys):
    from jaxsim import cli

    assert cli.main(["simulate", "--set", "num_replicas=3", "--set", "router=random",
                     "--set", "workload.num_requests=5", "--set", "seed=1",
                     "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    tr = config_mod.build_trace(config_mod.validate({"workload": {"num_requests": 5},
                                                     "seed": 1}))
    counts = np.bincount(replicas.assign(tr, 3, "random", 1), minlength=3)
    assert out["requests_per_replica"] == counts.tolist()
    assert out["num_gpus"] == 3 and out["completed"] == 5


def _sessions_config() -> dict:
    return config_mod.validate({
        "enable_prefix_caching": True, "max_num_seqs": 16,
        "workload": {"kind": "sessions", "sessions": 12, "turns": 3, "rate": 2.0,
                     "prompt_tokens": 1500, "new_tokens": 300, "output_tokens": 50,
                     "think_time_s": 4.0}})


def test_replicas__prefix_hash_keeps_a_conversation_on_one_replica():
    """prefix_hash routes by the first block id: every turn of a chat session (its
    prompt starts with the session's first block) lands on one replica; requests without
    block ids go round robin among themselves."""
    tr = config_mod.build_trace(_sessions_config())
    a = replicas.assign(tr, 3, "prefix_hash")
    first = np.array([tr.hash_ids[i][0] for i in tr.order()])
    for f in np.unique(first):  # one replica per session
        assert len(set(a[first == f].tolist())) == 1
    assert len(np.unique(first)) == 12 and len(set(a.tolist())) > 1
    plain = Trace([0.0, 1.0, 2.0, 3.0], [5] * 4, [5] * 4,
                  hash_ids=[[7], [], [7], []], hash_block_tokens=4)
    got = replicas.assign(plain, 3, "prefix_hash")
    assert got[0] == got[2] and got[1] == 0 and got[3] == 1  # the id-less ones: 0, 1


@pytest.mark.slow  # about 10 s on 2 cores: runs in CI's slow step
def test_replicas__prefix_hash_keeps_the_hit_rate_round_robin_loses():
    """With the prefix cache on, round robin spreads a conversation's turns over the
    replicas and loses their cached prefixes; prefix_hash keeps one replica's hit rate."""
    cfg = _sessions_config()
    tr = config_mod.build_trace(cfg)
    res = api.run([{**cfg, "num_replicas": 3, "router": r}
                   for r in ("round_robin", "prefix_hash")] + [cfg], tr)
    rr, ph, one = res.metrics["prefix_hit_rate"]
    assert ph == pytest.approx(one, rel=1e-6) and ph > rr + 0.2, (rr, ph, one)
    assert (res.status == 0).all()
