"""Objectives, capacity search, optimisers and the sweep CLI on tiny spaces."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from jaxsim import config
from jaxsim import status as st_bits
from search import capacity, objectives, optimize, space
from search.cli import cmd_best  # noqa: F401  (import check)

HERE = os.path.dirname(__file__)
TINY = os.path.join(HERE, "data", "tiny_space.yaml")


def _table():
    return {
        "status": np.array([0, 0, st_bits.INFEASIBLE, 0, 0]),
        "tp": np.array([1, 2, 1, 1, 4]),
        "gpu": np.array(["H100-SXM", "H100-SXM", "H100-SXM", "A100-80GB", "H100-SXM"]),
        "output_tps": np.array([1000.0, 3000.0, 5000.0, 800.0, np.nan]),
        "goodput_rps": np.array([4.0, 9.0, 9.0, 3.0, 1.0]),
        "ttft_p99_s": np.array([0.5, 0.9, 0.1, 2.0, 0.2]),
    }


def test_costs_rank_infeasible_and_slo_missing_last():
    t = _table()
    prices = {"gpu_hour_usd": {"H100-SXM": 3.6, "A100-80GB": 1.8}}
    c = objectives.costs(t, ["cost_per_mtok"], {"ttft_p99_s": 1.0}, prices)[:, 0]
    # 1 GPU * 3.6 $/h = 1e-3 $/s over 1000 tok/s -> 1 $/Mtok; 2 GPUs over 3000 -> 0.667
    assert c[0] == pytest.approx(1.0) and c[1] == pytest.approx(2 / 3)
    assert np.isinf(c[2]) and np.isinf(c[3]) and np.isinf(c[4])  # infeasible, SLO, NaN
    assert list(objectives.rank(t, "cost_per_mtok", {"ttft_p99_s": 1.0}, prices)[:2]) == [1, 0]
    thr = objectives.costs(t, ["throughput_per_gpu"])[:, 0]
    assert thr[1] == pytest.approx(-1500.0)  # maximised -> negated
    with pytest.raises(objectives.ObjectiveError, match="no price for A100-80GB"):
        objectives.costs(t, ["cost_per_mtok"], None, {"gpu_hour_usd": {"H100-SXM": 1}})
    with pytest.raises(objectives.ObjectiveError, match="ttft_p42_s: not a column"):
        objectives.costs(t, ["ttft_p42_s"])
    assert objectives.parse_slo(["ttft_p99_s<=1", "slo_attainment>=0.9"]) == {
        "ttft_p99_s": 1.0, "min_slo_attainment": 0.9}
    with pytest.raises(objectives.ObjectiveError, match="expected METRIC<=VALUE"):
        objectives.parse_slo(["ttft_p99_s"])


def _cfg(seqs, n=24):
    return {"model": "Llama-3.1-8B", "gpu": "H100-SXM", "cost_preset": "uncalibrated",
            "max_num_seqs": seqs, "max_num_batched_tokens": 512,
            "workload": {"kind": "poisson", "rate": 1.0, "num_requests": n,
                         "prompt_tokens": 256, "output_tokens": 32}}


@pytest.mark.slow  # long (25-40 s on 2 cores): runs in CI's slow step
def test_capacity_bisection_brackets_the_slo_boundary():
    slo = {"e2e_p99_s": 0.5}
    # at 8 seats 24 requests end before steady state at the capacity found; 400 do not
    with pytest.warns(capacity.CapacityWarning, match=r"configuration\(s\) \[1\]: .* "
                      "fewer than 5 mean request lifetimes"):
        res = capacity.capacity_search([_cfg(2), _cfg(8), _cfg(8, 400)], slo, rate_lo=4.0,
                                       rate_hi=256.0, rounds=5)
    assert res.status.tolist() == [0, 0, 0]
    assert res.steady.tolist() == [True, False, True]
    np.testing.assert_array_equal(res.steady, res.span_s >= 5 * res.metrics["e2e_mean_s"])
    # the span is the trace's at the capacity rate: the unit-rate trace's over the rate
    unit = config.build_trace(config.validate(_cfg(8, 400))).arrival_s  # rate 1
    assert res.span_s[2] * res.capacity_rps[2] == pytest.approx(np.ptp(unit), rel=1e-6)
    assert np.all(res.capacity_rps < res.upper_rps)
    np.testing.assert_allclose(res.upper_rps / res.capacity_rps, 64 ** (1 / 32), rtol=1e-6)
    assert res.capacity_rps[1] > res.capacity_rps[0]  # more concurrency, more capacity
    assert np.all(res.metrics["e2e_p99_s"] <= 0.5)
    # check the bracket directly: capacity meets the SLO, the upper end does not
    check = capacity.capacity_search([_cfg(2)], slo, rate_lo=float(res.capacity_rps[0]),
                                     rate_hi=float(res.upper_rps[0]), rounds=0)
    assert check.status[0] == 0
    with pytest.raises(ValueError, match="rate_lo"):
        capacity.capacity_search([_cfg(2)], slo, rate_lo=2.0, rate_hi=1.0)


@pytest.mark.slow  # 36 s from a cold compile cache on 2 cores: CI's slow step
def test_capacity_reruns_lanes_whose_slot_table_overflows_like_the_sweep():
    """A lane that needs more slot-table rows than ``max_num_seqs`` (rows of requests that
    finished inside an event-skipping decode run stay until compaction) is re-run with up
    to twice that, as the sweep runner does; it was counted as missing the SLO."""
    cfg = {**_cfg(20, 400), "max_num_batched_tokens": 384}
    # (bounds on configuration columns, as a sweep's results have them, hold too: they
    # raised 'not a column' after the simulations)
    res = capacity.capacity_search([cfg], {"ttft_p99_s": 0.5, "tpot_p99_s": 0.03,
                                           "weights_gb": 100, "min_max_num_seqs": 20},
                                   rate_lo=10.0, rate_hi=80.0, rounds=0, slots=20)
    assert res.status.tolist() == [1]  # 80 req/s meets the SLOs
    assert 10 < res.metrics["weights_gb"][0] < 20 and res.metrics["workload.rate"][0] == 80
    assert res.metrics["slots"][0] > 20 and res.metrics["status"][0] == 0


@pytest.fixture(scope="module")
def evaluator():
    sp = space.load(TINY)
    return optimize.Evaluator(sp, "cost_per_mtok", {"ttft_p99_s": 5.0},
                              {"gpu_hour_usd": 3.0}, batch_size=8)


@pytest.mark.slow  # 42 s from a cold compile cache on 2 cores: CI's slow step
def test_optimisers_return_exactly_simulated_feasible_points(evaluator):
    ex = optimize.exhaustive(evaluator)
    assert np.isfinite(ex.cost) and ex.status == 0 and ex.evaluations == 18
    cm = optimize.cmaes_search(evaluator, max_evals=40, seed=0)
    gr = optimize.gradient_search(evaluator, max_evals=40, seed=0, pairs=4)
    for r in (cm, gr):
        assert r.cost >= ex.cost - 1e-12  # never better than the exhaustive optimum
        c, v, s = evaluator(r.u[None])
        assert c[0] == r.cost and s[0] == r.status  # the reported point is what was run
        assert r.config["max_num_batched_tokens"] >= 64 * r.config["max_num_seqs"] or \
            not np.isfinite(r.cost)
    # each search counts its own simulations within its budget (they were the
    # evaluator's running total: 57 and 93 here)
    assert 1 <= cm.evaluations <= 40 and 1 <= gr.evaluations <= 40
    assert ex.evaluations + cm.evaluations + gr.evaluations == evaluator.evaluations
    # the table evaluator reads the same exact results and counts distinct points
    sp = evaluator.space
    d = {**sp.spec(), "axes": {**sp.spec()["axes"]}}
    table = optimize.grid_table(evaluator)
    assert np.min(table[0]) == ex.cost
    disc = space.from_dict({**{k: v for k, v in d.items() if k != "axes"},
                            "axes": {"max_num_seqs": [2, 4, 8],
                                     "max_num_batched_tokens": [256, 512, 1024],
                                     "workload.rate": {"kind": "float", "low": 10,
                                                       "high": 40, "log": True, "num": 2,
                                                       "discrete": True}}})
    tab = optimize.TableEvaluator(disc, *table)
    r = optimize.cmaes_search(tab, max_evals=10, seed=1, warm_start=4)
    assert r.evaluations <= 10 and r.cost >= ex.cost
    # the budget holds whatever it is: the warm start is part of it, and a budget below
    # one CMA-ES generation with no warm start returns the centre, simulated once
    for search in (optimize.cmaes_search, optimize.gradient_search):
        for budget, warm in ((1, 32), (3, 32), (5, 32), (3, 0), (12, 4)):
            t = optimize.TableEvaluator(disc, *table)
            r = search(t, max_evals=budget, seed=0, warm_start=warm)
            assert 1 <= r.evaluations <= budget, (search.__name__, budget, warm)
            assert r.cost == t(r.u[None])[0][0]
        with pytest.raises(ValueError, match="max_evals: 0 must be an integer >= 1"):
            search(optimize.TableEvaluator(disc, *table), max_evals=0)
    assert tab(disc.sample(np.arange(18)))[0].tolist() == table[0].tolist()
    # "why this configuration": d cost / d rate at the winner, as a ranked table
    from search.pareto import sensitivity_table

    names, grads, vals = optimize.sensitivities(evaluator, ex.u)
    assert names == ["workload.rate"] and np.isfinite(grads).all() and vals[0] > 0
    assert "workload.rate" in sensitivity_table(names, grads, vals)
    # a space rebuilt from its own spec is the same space
    assert space.from_dict(evaluator.space.spec()).digest() == evaluator.space.digest()
    # a point violating the space constraint is infeasible, never best
    bad = evaluator.space.point({"max_num_seqs": 8, "max_num_batched_tokens": 256,
                                 "workload.rate": 10.0})
    c, _, s = evaluator(bad[None])
    assert np.isinf(c[0]) and s[0] & st_bits.INF_CONSTRAINT


def test_cli_sweep_best_pareto(tmp_path, capsys):
    from jaxsim import cli

    out = str(tmp_path / "sw")
    assert cli.main(["sweep", TINY, "--out", out, "--chunk-size", "6", "--quiet"]) == 0
    assert "3/3 finished" in capsys.readouterr().out
    assert cli.main(["best", out, "--json"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert best["status"] == 0 and best["vllm_serve"].startswith("vllm serve ")
    assert f"--max-num-seqs {best['max_num_seqs']}" in best["vllm_serve"]
    plot = str(tmp_path / "front.png")
    assert cli.main(["pareto", out, "--objectives", "ttft_p99_s,cost_per_mtok",
                     "--plot", plot]) == 0
    assert "non-dominated" in capsys.readouterr().out and os.path.getsize(plot) > 0
    assert cli.main(["best", out, "--why"]) == 0
    why = capsys.readouterr().out
    assert "why this configuration" in why and "workload.rate" in why
    assert cli.main(["best", out, "--objective", "nope"]) == 2
    assert "nope: not a column" in capsys.readouterr().err


def test_cli_bad_space_file_is_one_line_before_running(tmp_path, capsys):
    from jaxsim import cli

    p = tmp_path / "bad.yaml"
    p.write_text("base: {model: Llama-3.1-8B}\naxes:\n  max_num_seqs: []\n")
    assert cli.main(["sweep", str(p), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "axes.max_num_seqs.values" in err
    assert not os.path.exists(tmp_path / "o")


def test_evaluator_ranks_by_any_column_of_the_results():
    """The optimisers' evaluator has the sweep's results columns: an objective or SLO on
    an axis (workload.rate, max_num_seqs) or a memory figure (weights_gb) raised
    'not a column of the results' after simulating, although the space file took it."""
    sp = space.load(TINY)
    u = np.array([[0.1, 0.5, 0.2], [0.9, 0.9, 0.9]])
    ev = optimize.Evaluator(sp, "weights_gb", {"min_max_num_seqs": 4}, batch_size=8)
    c, v, status = ev(u)
    seqs = [cfg["max_num_seqs"] for cfg in sp.expand(u)[0]]
    assert list(status) == [0, 0] and np.all(v > 10) and v[0] == v[1]  # one model: 8B
    assert [np.isfinite(x) for x in c] == [s >= 4 for s in seqs]
    ev2 = optimize.Evaluator(sp, "workload.rate", None, batch_size=8)
    rates = [cfg["workload"]["rate"] for cfg in sp.expand(u)[0]]
    np.testing.assert_allclose(ev2(u)[1], rates)


def test_hit_rates_are_maximised():
    t = {"status": np.zeros(2, np.int64), "prefix_hit_rate": np.array([0.1, 0.9]),
         "hit_rate_tier1": np.array([0.2, 0.6]), "kv_occupancy_mean": np.array([0.1, 0.9])}
    assert objectives.rank(t, "prefix_hit_rate")[0] == 1
    assert objectives.rank(t, "hit_rate_tier1")[0] == 1
    assert objectives.rank(t, "kv_occupancy_mean")[0] == 0  # other metrics: minimised


def test_slo_as_one_string_or_wrong_type():
    assert objectives.parse_slo("ttft_p99_s<=1.0") == {"ttft_p99_s": 1.0}
    with pytest.raises(objectives.ObjectiveError,
                       match=r"^objectives.slo: 5 must be a mapping \(metric: bound\) or a"):
        objectives.parse_slo(5, label="objectives.slo")
    with pytest.raises(objectives.ObjectiveError, match=r"^objectives.slo 'ttft': expected"):
        objectives.parse_slo("ttft", label="objectives.slo")


def test_capacity_arguments_are_checked_before_any_simulation():
    """Bad arguments name themselves (they gave another field's error or a traceback);
    an SLO may be METRIC<=VALUE strings, and a misspelt metric is refused up front."""
    cfg = [_cfg(2)]
    for kw, msg in ((dict(chunk_size=-1), "chunk_size: -1 must be an integer >= 1"),
                    (dict(chunk_size=0), "chunk_size: 0 must be"),
                    (dict(slots=0), "slots: 0 must be"),
                    (dict(rate_hi=float("inf")), "rate_hi: inf must be a finite number"),
                    (dict(rate_lo=float("nan")), "rate_lo: nan must be a finite number")):
        with pytest.raises(ValueError, match=msg):
            capacity.capacity_search(cfg, {"ttft_p99_s": 1.0}, **kw)
    with pytest.raises(objectives.ObjectiveError, match="slo.ttft_p99: 'ttft_p99' is not a "
                                                        "metric.*did you mean"):
        capacity.capacity_search(cfg, ["ttft_p99<=0.5"])
    with pytest.raises(objectives.ObjectiveError, match="slo.min_goodput: 'goodput'"):
        capacity.capacity_search(cfg, {"min_goodput": 1.0})


def test_slo_bounds_on_one_metric_both_hold():
    """``--slo a<=0.03 --slo a<=5`` kept the last bound only (16 of 18 configurations met
    it instead of 2): the tighter bound of each kind holds."""
    assert objectives.parse_slo(["ttft_p99_s<=0.03", "ttft_p99_s<=5",
                                 "goodput_rps>=2", "goodput_rps>=1"]) == {
        "ttft_p99_s": 0.03, "min_goodput_rps": 2.0}


@pytest.mark.slow  # two simulations of a compiled batch (10-20 s on 2 cores)
def test_capacity_warns_when_the_slo_is_not_monotone_in_the_rate():
    """A lower bound on throughput fails at low rates and holds at high ones: the
    bisection does not apply, and the configurations are named."""
    # (24 requests at 64 req/s also end before steady state: the other warning)
    with pytest.warns(capacity.CapacityWarning, match="fewer than 5 mean request"), \
            pytest.warns(capacity.CapacityWarning, match=r"configuration\(s\) \[0\] meet "
                         "the SLOs at rate_hi=64 but miss them at rate_lo=0.5: the SLOs "
                         "are not monotone"):
        res = capacity.capacity_search([_cfg(8)], {"min_throughput_rps": 5.0},
                                       rate_lo=0.5, rate_hi=64.0, rounds=0)
    assert res.status.tolist() == [1]


def _disc_table_evaluator(n_seqs=2, n_tokens=2):
    sp = space.from_dict({"base": {"workload": {"num_requests": 8}},
                          "axes": {"max_num_seqs": [4, 8, 16][:n_seqs],
                                   "max_num_batched_tokens": [512, 1024, 2048][:n_tokens]}})
    c = np.arange(sp.size, 0, -1).astype(np.float64)
    return optimize.TableEvaluator(sp, c, c, np.zeros(sp.size, np.int64))


def test_cmaes_returns_when_the_budget_exceeds_the_space():
    """With every point of a small discrete space simulated, restarts found nothing new
    and the loop ran forever (it ended only when the budget was spent)."""
    ev = _disc_table_evaluator()
    r = optimize.cmaes_search(ev, max_evals=50, seed=0, warm_start=4)
    assert r.evaluations == 4 and r.cost == 1.0
    r = optimize.cmaes_search(_disc_table_evaluator(3, 3), max_evals=500, seed=1)
    assert r.evaluations <= 9 and r.cost == 1.0


def test_optimiser_arguments_are_checked():
    for fn, kw, msg in (
            (optimize.cmaes_search, dict(warm_start=-3), "warm_start: -3 must be an integer"),
            (optimize.cmaes_search, dict(sigma_init=float("nan")), r"sigma_init: nan must "
             r"be a number in \(0, 1\]"),
            (optimize.cmaes_search, dict(sigma_init=-0.2), "sigma_init: -0.2"),
            (optimize.cmaes_search, dict(patience=0), "patience: 0"),
            (optimize.gradient_search, dict(pairs=0), "pairs: 0 must be an integer >= 1"),
            (optimize.gradient_search, dict(starts=0), "starts: 0"),
            (optimize.gradient_search, dict(sigma=-0.1), "sigma: -0.1"),
            (optimize.gradient_search, dict(learning_rate=0.0), "learning_rate: 0.0"),
            (optimize.gradient_search, dict(round_budget=1.5), r"round_budget: 1.5 must be a "
             r"number in \[0, 1\)")):
        ev = _disc_table_evaluator()
        with pytest.raises(ValueError, match=msg):
            fn(ev, 20, **kw)
        assert ev.evaluations == 0


def test_evaluator_checks_names_and_fits_its_batch_to_the_space():
    """A misspelt objective or SLO was found only after the first compile and simulation
    (14 s); a batch size above the space's size (the default 64 against 18 points)
    crashed when a batch was built."""
    sp = space.load(TINY)
    for args, msg in ((("ttft_p99",), r"^objective: 'ttft_p99' is not a metric.*did you "
                                      r"mean ttft_p99_s"),
                      (("ttft_p99_s", {"ttft_p99": 1.0}), r"^slo.ttft_p99: 'ttft_p99'"),
                      (("ttft_p99_s", ["e2e_p99<=1"]), r"^slo.e2e_p99: "),
                      (("cost_per_mtok",), r"^cost_per_mtok: needs gpu_hour_usd"),
                      (("ttft_p99_s", {"cost_per_mtok": 2.0}), r"^cost_per_mtok: needs")):
        with pytest.raises(objectives.ObjectiveError, match=msg):
            optimize.Evaluator(sp, *args)
    from search import runner

    ev = optimize.Evaluator(sp, "ttft_p99_s", ["goodput_rps>=1"])
    assert ev.slo == {"min_goodput_rps": 1.0}
    assert ev.batch_size == ev.plan.chunk_size == sp.size == 18
    batch = runner.batch_at_points(sp, ev.plan, sp.sample(np.arange(18)), ev.traces)
    assert len(batch.cfgs) == 18


def test_a_min_prefixed_metric_in_a_bound_string_is_refused():
    """'min_slo_attainment<=0.5' became the lower bound slo_attainment >= 0.5."""
    with pytest.raises(objectives.ObjectiveError, match=r"^--slo 'min_slo_attainment<=0.5': "
                       r"write slo_attainment>=VALUE for a lower bound"):
        objectives.parse_slo(["min_slo_attainment<=0.5"])


def test_capacity_bounds_on_configuration_columns_and_cost():
    cfg = [_cfg(2)]
    with pytest.raises(objectives.ObjectiveError, match=r"^slo.cost_per_mtok: capacity_search "
                       "takes no GPU prices"):
        capacity.capacity_search(cfg, ["cost_per_mtok<=2"])
