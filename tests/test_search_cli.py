"""``jaxsim sweep | best | pareto`` on bad input: one error line, exit status 2, no output
written, nothing half done."""

from __future__ import annotations

import json
import os
import types

import numpy as np
import pytest

from search import cli as search_cli
from search import objectives

HERE = os.path.dirname(__file__)
TINY = os.path.join(HERE, "data", "tiny_space.yaml")
OBJ = "ttft_p99_s,cost_per_mtok"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from jaxsim import cli

    out = str(tmp_path_factory.mktemp("cli") / "sw")
    assert cli.main(["sweep", TINY, "--out", out, "--chunk-size", "6", "--quiet"]) == 0
    return out


def _error(capsys, *argv) -> str:
    """Run the command; it must fail with one error line and print nothing else."""
    from jaxsim import cli

    assert cli.main(list(argv)) == 2
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert cap.out == "" and err.startswith("jaxsim: error: ") and "\n" not in err, cap
    return err


def test_sweep_out_is_a_file_or_bad_max_chunks(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("keep")
    err = _error(capsys, "sweep", TINY, "--out", str(f), "--chunk-size", "6")
    assert "is a file, not a folder" in err and f.read_text() == "keep"
    out = str(tmp_path / "o")
    for bad in ("-1", "0"):
        err = _error(capsys, "sweep", TINY, "--out", out, "--max-chunks", bad)
        assert f"--max-chunks: {bad} must be an integer >= 1 (omit it for all)" in err
    err = _error(capsys, "sweep", TINY, "--out", out, "--chunk-size", "-2")
    assert "--chunk-size: -2 must be an integer >= 1" in err
    err = _error(capsys, "sweep", TINY, "--out", out, "--ray", "")
    assert "--ray '': give a cluster address" in err  # it ran locally, silently
    assert not os.path.exists(out)


def test_best_and_pareto_on_a_folder_that_is_not_a_sweep(results, tmp_path, capsys):
    import shutil

    empty = tmp_path / "empty"
    empty.mkdir()
    chunks_only = tmp_path / "chunks_only"  # results without the manifest
    shutil.copytree(results, chunks_only)
    os.remove(chunks_only / "sweep.json")
    broken = tmp_path / "broken"
    shutil.copytree(results, broken)
    (broken / "sweep.json").write_text("{")
    for d in (empty, chunks_only):
        for argv in (["best", str(d)], ["pareto", str(d), "--objectives", OBJ]):
            err = _error(capsys, *argv)
            assert f"{d}: not a results folder of jaxsim sweep (no sweep.json)" in err
    assert "sweep.json: unreadable" in _error(capsys, "best", str(broken))
    assert "no such folder" in _error(capsys, "best", str(tmp_path / "nope"))
    (tmp_path / "f").write_text("")
    assert "a file, not a folder" in _error(capsys, "pareto", str(tmp_path / "f"),
                                            "--objectives", OBJ)


def test_pareto_output_paths_checked_before_the_work(results, tmp_path, capsys):
    missing = str(tmp_path / "no" / "dir")
    err = _error(capsys, "pareto", results, "--objectives", OBJ, "--plot", missing + "/f.png")
    assert f"--plot '{missing}/f.png': folder '{missing}' does not exist" in err
    err = _error(capsys, "pareto", results, "--objectives", OBJ, "--csv", missing + "/f.csv")
    assert f"--csv '{missing}/f.csv': folder '{missing}' does not exist" in err
    err = _error(capsys, "pareto", results, "--objectives", OBJ, "--csv", str(tmp_path))
    assert "is a folder; give a file name" in err
    err = _error(capsys, "pareto", results, "--objectives", OBJ,
                 "--plot", str(tmp_path / "f.txt"))
    assert "suffix '.txt' is not a format it can write; allowed: .png" in err
    # a CSV before a plot that cannot be drawn: neither is written
    err = _error(capsys, "pareto", results, "--objectives", OBJ + ",tpot_p99_s",
                 "--csv", str(tmp_path / "f.csv"), "--plot", str(tmp_path / "f.png"))
    assert "needs exactly 2 objectives, not 3" in err
    assert os.listdir(tmp_path) == []
    from jaxsim import cli

    assert cli.main(["pareto", results, "--objectives", OBJ, "--csv", str(tmp_path / "f.csv"),
                     "--plot", str(tmp_path / "f.svg")]) == 0
    assert sorted(os.listdir(tmp_path)) == ["f.csv", "f.svg"]  # no temporary files left
    assert "config_id" in (tmp_path / "f.csv").read_text().splitlines()[0]


def test_best_prices_and_slos_are_checked(results, capsys):
    for price, msg in (("H100-SXM=-1", "-1 must be a finite number >= 0"),
                       ("H100-SXM=nan", "nan must be a finite number >= 0"),
                       ("H100-SXM=inf", "inf must be a finite number >= 0"),
                       ("H100=3", "'H100' is not a GPU of this sweep; its GPUs: H100-SXM")):
        for cmd in (["best", results], ["pareto", results, "--objectives", OBJ]):
            assert msg in _error(capsys, *cmd, "--price", price)
    err = _error(capsys, "best", results, "--slo", "ttft_p99_s<=nan")
    assert "--slo 'ttft_p99_s<=nan'" in err and "not NaN" in err
    err = _error(capsys, "best", results, "--slo", "ttft_p99_s=0.05")
    assert "the operators are <= and >=" in err
    from jaxsim import cli

    assert cli.main(["best", results, "--json", "--price", "H100-SXM=0"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == 0


def test_parse_slo_and_prices_units():
    assert objectives.parse_slo(["ttft_p99_s <= 1", "slo_attainment>=0.9"]) == {
        "ttft_p99_s": 1.0, "min_slo_attainment": 0.9}
    assert search_cli._slo_text({"ttft_p99_s": 1.0, "min_slo_attainment": 0.9}) == (
        "ttft_p99_s <= 1.0, slo_attainment >= 0.9")
    for bad in (["ttft_p99_s=1"], ["ttft_p99_s<=nan"], ["<=1"], ["a=b<=1"], ["x<1"]):
        with pytest.raises(objectives.ObjectiveError, match="--slo"):
            objectives.parse_slo(bad)
    with pytest.raises(objectives.ObjectiveError, match="slo.ttft_p99_s: nan"):
        objectives.parse_slo({"ttft_p99_s": float("nan")})
    table = {"status": np.array([0, 0]), "tp": np.array([1, 2]),
             "gpu": np.array(["A", "B"]), "output_tps": np.array([10.0, 10.0])}
    for prices, field in (({"gpu_hour_usd": {"A": 1.0, "B": -2.0}}, "gpu_hour_usd.B: -2.0"),
                          ({"gpu_hour_usd": float("inf")}, "gpu_hour_usd: inf")):
        with pytest.raises(objectives.ObjectiveError, match=field):
            objectives.derived(table, "cost_per_mtok", prices)
    # --price on top of one price for every GPU (a number in the space file)
    args = types.SimpleNamespace(price=["A=2"])
    assert search_cli._prices(args, {"gpu_hour_usd": 3.0}, ["A", "B"]) == {
        "gpu_hour_usd": {"A": 2.0, "B": 3.0}}


def test_price_gpus_include_the_gpu_axis(tmp_path):
    """A partial sweep may be priced for GPUs of its space whose chunks have not run."""
    import pandas as pd

    (tmp_path / "sweep.json").write_text(json.dumps({"space": {"base": {}, "axes": {
        "gpu": {"kind": "choice", "values": ["H100-SXM", "A100-80GB"]}}}}))
    df = pd.DataFrame({"gpu": ["H100-SXM"]})
    assert search_cli._sweep_gpus(str(tmp_path), df) == ["A100-80GB", "H100-SXM"]


CROSS = """\
base: {model: Llama-3.1-8B, gpu: H100-SXM, cost_preset: uncalibrated, max_num_seqs: 4,
       workload: {kind: poisson, rate: 20, num_requests: 8, prompt_tokens: 64, output_tokens: 8}}
axes:
  enable_prefix_caching: [false, true]
  tiers: ["", "%s"]
"""


@pytest.mark.slow  # compiles a prefix-cache chunk (about 20-40 s): CI's slow step; batch-level
# cross-axis checks stay in the default suite (test_search_space.py)
def test_sweep_cross_axis_space(tmp_path, capsys):
    """Axes that depend on each other: the space sweeps; the invalid combination (no prefix
    caching, a DRAM tier) is an infeasible row with the validation message as reason, the
    valid ones run; `best` skips it."""
    from jaxsim import cli
    from jaxsim import status as st_bits
    from search import runner

    p = tmp_path / "cross.yaml"
    p.write_text(CROSS % "dram")
    out = str(tmp_path / "sw")
    assert cli.main(["sweep", str(p), "--out", out, "--chunk-size", "4", "--quiet"]) == 0
    df = runner.load_results(out)
    assert [(c, list(t)) for c, t in zip(df["enable_prefix_caching"], df["tiers"],
                                                     strict=True)] == [
        (False, []), (False, ["dram"]), (True, []), (True, ["dram"])]
    assert list(df["ok"]) == [True, False, True, True]
    assert df["status"][1] == st_bits.INFEASIBLE | st_bits.INF_CONSTRAINT
    assert df["status_str"][1] == ("infeasible,violates_space_constraint: tiers: dram needs "
                                   "enable_prefix_caching: true (lower tiers hold evicted "
                                   "prefix-cache blocks)")
    assert (df["completed"][[0, 2, 3]] == 8).all()
    capsys.readouterr()
    assert cli.main(["best", out]) == 0
    assert "3 of 4 configurations" in capsys.readouterr().out
    # --why finds the winner's coordinates from its stored (normalised) tiers value
    assert cli.main(["best", out, "--why"]) == 0
    assert "no continuous axes" in capsys.readouterr().out


def test_sweep_cross_axis_typo_and_no_valid_point_refused(tmp_path, capsys):
    """A level invalid whatever the other axes are (a typo), and a space with no valid
    combination, are refused before anything runs."""
    out = str(tmp_path / "sw")
    p = tmp_path / "typo.yaml"
    p.write_text(CROSS % "drma")
    err = _error(capsys, "sweep", str(p), "--out", out)
    assert "axes.tiers: tiers: 'drma' is not a tier preset; allowed: dram" in err
    p = tmp_path / "none.yaml"
    p.write_text(CROSS.replace("[false, true]", "[false]") % "dram")
    err = _error(capsys, "sweep", str(p), "--out", out)
    assert "axes.tiers: tiers: dram needs enable_prefix_caching: true" in err
    assert not os.path.exists(out)


def test_best_with_no_configuration_meeting_the_slos_says_how_close_they_came(results, capsys):
    """Exit 1 with the status counts and, per bound, how many ok configurations meet it
    alone and the best value among them."""
    import pandas as pd

    from jaxsim import cli
    from jaxsim import status as st_bits
    from search import runner

    df = runner.load_results(results)
    ok = df["status"].to_numpy() == 0
    ttft = df["ttft_p99_s"].to_numpy()[ok]
    tput = df["throughput_rps"].to_numpy()[ok]
    assert cli.main(["best", results, "--slo", "ttft_p99_s<=1e-9",
                     "--slo", f"throughput_rps>={tput.min()}"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"jaxsim best: none of {len(df):,} configurations meets")
    assert out[1].startswith(f"  status: {int(ok.sum()):,} ok")
    assert out[2] == (f"  ttft_p99_s <= 1e-09: met by 0 of {int(ok.sum()):,} ok "
                      f"configurations; best {ttft.min():.4g}")
    assert out[3].startswith(f"  throughput_rps >= {tput.min()}: met by {int(ok.sum()):,} ")
    # the status counts name each infeasibility reason
    status = pd.Series([0, 0, st_bits.INFEASIBLE | st_bits.INF_TP_SHAPE,
                        st_bits.INFEASIBLE | st_bits.INF_TP_SHAPE | st_bits.INF_BUDGET_LT_SEQS,
                        st_bits.TRUNCATED])
    assert search_cli._status_counts(status) == (
        "2 ok, 2 infeasible (tp_does_not_divide_heads 2, max_num_batched_tokens_lt_max_num_seqs"
        " 1), "
        "1 truncated")


def test_best_and_pareto_refuse_bad_ranking_flags(results, capsys):
    """--top below 1, an objective given twice and a text column as an objective or SLO
    are refused with one line naming the flag or column."""
    assert _error(capsys, "best", results, "--top", "-1") == \
        "jaxsim: error: --top: -1 must be >= 1"
    err = _error(capsys, "pareto", results, "--objectives", "ttft_p99_s,ttft_p99_s")
    assert "an objective is given twice" in err
    for argv in (("best", results, "--objective", "model"),
                 ("best", results, "--slo", "model<=1"),
                 ("pareto", results, "--objectives", "ttft_p99_s,model")):
        assert "model: not a numeric column of the results (it holds text)" in \
            _error(capsys, *argv)


@pytest.mark.parametrize("objectives, needle", [
    ("{slo: {ttft_p99_s: fast}}", "objectives: "),
    ("{objective: [1]}", "objectives.objective: [1] must be a metric name"),
    ("{gpu_hour_usd: {H100-SXM: -3}}", "gpu_hour_usd.H100-SXM: -3 must be a finite number"),
    ("{gpu_hour_usd: {H1000: 3}}", "objectives.gpu_hour_usd.H1000: not a GPU name"),
    ("{thruput: 1}", "objectives.thruput: unknown key; allowed: objectives.objective"),
    ("{objective: ttft_p999_s}", "objectives.objective: 'ttft_p999_s' is not a metric of "
                                 "the results; did you mean ttft_p99_s"),
    ("{slo: {ttft_p999_s: 1}}", "objectives.slo.ttft_p999_s: 'ttft_p999_s' is not a metric"),
    ("{slo: {min_thruput_rps: 1}}", "objectives.slo.min_thruput_rps: 'thruput_rps' is not"),
])
def test_sweep_checks_objectives_before_running(tmp_path, capsys, objectives, needle):
    """The space file's objectives section (read by best and pareto after the sweep) is
    checked when the space is loaded, so a typo does not wait for the sweep's end."""
    p = tmp_path / "s.yaml"
    with open(TINY) as f:
        text = f.read()
    p.write_text(text[:text.index("objectives:")] + f"objectives: {objectives}\n")
    out = str(tmp_path / "sw")
    assert needle in _error(capsys, "sweep", str(p), "--out", out)
    assert not os.path.exists(out)


def test_chunk_size_is_capped_at_the_space():
    """A chunk larger than the space would only add padding lanes (a --chunk-size of
    10^8 used to allocate them all)."""
    from search import runner, space

    sp = space.load(TINY)
    plan = runner.make_plan(sp, chunk_size=100_000_000)
    assert plan.chunk_size <= sp.size + plan.num_devices and plan.num_chunks == 1


def test_space_objectives_rank_best_and_prices_are_case_insensitive(results, tmp_path, capsys):
    """best ranks by the space file's objectives.objective when --objective is not given;
    GPU names in prices match whatever their case (as everywhere else); a cost_per_mtok
    SLO gets the prices; pareto's CSV holds the objectives it ranked on."""
    import shutil

    from jaxsim import cli
    from search import runner

    d = tmp_path / "sw"
    shutil.copytree(results, d)
    man = json.loads((d / "sweep.json").read_text())
    man["objectives"].update(objective="ttft_p99_s", gpu_hour_usd={"h100-sxm": 3.0})
    (d / "sweep.json").write_text(json.dumps(man))
    assert cli.main(["best", str(d), "--json"]) == 0
    won = json.loads(capsys.readouterr().out)
    df = runner.load_results(str(d))
    ok = (df["status"] == 0) & (df["ttft_p99_s"] <= 5.0)
    assert won["ttft_p99_s"] == df.loc[ok, "ttft_p99_s"].min()
    assert cli.main(["best", str(d)]) == 0
    out = capsys.readouterr().out
    assert "ranked by ttft_p99_s" in out
    head = out.splitlines()[1].split()
    assert head.count("ttft_p99_s") == 1 and "tpot_p99_s" in head
    # a cost bound, with the lower-case price key; --price in any case too
    cost = objectives.derived({c: df[c].to_numpy() for c in df.columns}, "cost_per_mtok",
                              {"gpu_hour_usd": {"H100-SXM": 3.0}})
    bound = float(np.median(cost[ok.to_numpy()]))
    assert cli.main(["best", str(d), "--slo", f"cost_per_mtok<={bound}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config_id"] in set(
        df.loc[ok & (cost <= bound), "config_id"])
    assert cli.main(["best", str(d), "--price", "H100-sxm=6", "--objective",
                     "cost_per_mtok", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cost_per_mtok"] == pytest.approx(
        2 * cost[ok.to_numpy()].min())
    # no configuration meets the SLOs: --json still prints JSON (and exits 1)
    assert cli.main(["best", str(d), "--slo", "ttft_p99_s<=1e-9", "--json"]) == 1
    none = json.loads(capsys.readouterr().out)
    assert none["meets_slo"] == 0 and none["configurations"] == len(df)
    assert none["why"][0].startswith("status: ")
    csv = tmp_path / "front.csv"
    assert cli.main(["pareto", str(d), "--objectives", OBJ, "--csv", str(csv)]) == 0
    capsys.readouterr()
    header = csv.read_text().splitlines()[0].split(",")
    assert "cost_per_mtok" in header and "ttft_p99_s" in header


def test_metric_columns_cover_the_results(results):
    """objectives.METRIC_COLUMNS (what a space file's objective and SLOs are checked
    against) names every numeric column a sweep writes."""
    from search import runner, space

    df = runner.load_results(results)
    axes = [a.key for a in space.load(TINY).axes]
    for c in df.columns:
        if df[c].dtype.kind in "iuf" and c not in ("config_id", "status"):
            objectives.check_name("test", c, axes)


def test_sweep_trace_rate_errors_are_one_line(tmp_path, capsys):
    """A trace rescaled by a workload.rate axis too far (over 1e8 s) is one error line
    naming workload.rate, not a traceback, and nothing is written."""
    f = tmp_path / "t.csv"
    f.write_text("arrival_s,prompt_tokens,output_tokens\n"
                 + "".join(f"{i},100,10\n" for i in range(200)))
    p = tmp_path / "s.yaml"
    p.write_text(f"base: {{model: Llama-3.1-8B, gpu: H100-SXM, workload: {{kind: trace, "
                 f"format: csv, path: {f}}}}}\naxes: {{workload.rate: [1e-6, 10]}}\n")
    out = str(tmp_path / "sw")
    err = _error(capsys, "sweep", str(p), "--out", out)
    assert "workload.rate: 1e-06 req/s spreads t.csv's 200 requests" in err
    assert not os.path.exists(out)


def test_best_lists_what_the_vllm_command_does_not_carry(results, tmp_path, capsys):
    import shutil

    from jaxsim import cli

    d = tmp_path / "sw"
    shutil.copytree(results, d)
    assert cli.main(["best", str(d)]) == 0
    assert "differs from what was simulated" not in capsys.readouterr().out
    man = json.loads((d / "sweep.json").read_text())
    man["space"]["base"]["block_size"] = 24  # as if the sweep had simulated it
    (d / "sweep.json").write_text(json.dumps(man))
    assert cli.main(["best", str(d)]) == 0
    out = capsys.readouterr().out
    assert "where it differs from what was simulated:\n  - block_size 24: vLLM up to 0.11" in out
    assert cli.main(["best", str(d), "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["vllm_caveats"]
    assert len(notes) == 1 and notes[0].startswith("block_size 24")


def test_a_resume_with_the_axes_reordered_is_refused(results, tmp_path, capsys):
    """The axes' order decides which configuration an id is: the same axes in another
    order is another sweep (it was accepted, duplicating some configurations and losing
    others). The manifest keeps the order, so best lists the axes as the file gave them."""
    import shutil

    from search import space as space_mod

    with open(TINY) as f:
        text = f.read()
    a, b = "  max_num_seqs: [2, 4, 8]\n", "  max_num_batched_tokens: [256, 512, 1024]\n"
    swapped = tmp_path / "swapped.yaml"
    swapped.write_text(text.replace(a + b, b + a))
    d = tmp_path / "sw"
    shutil.copytree(results, d)
    err = _error(capsys, "sweep", str(swapped), "--out", str(d), "--chunk-size", "6",
                 "--resume")
    assert "holds a different sweep" in err
    man = json.loads((d / "sweep.json").read_text())
    assert man["space"]["axis_order"] == ["max_num_seqs", "max_num_batched_tokens",
                                          "workload.rate"]
    sp = space_mod.from_dict(man["space"])
    assert sp.digest() == man["digest"] == space_mod.load(TINY).digest()
    assert [x.key for x in sp.axes] == man["space"]["axis_order"]
    # a manifest from before the order was recorded: refused with the reason
    del man["space"]["axis_order"]
    man["digest"] = space_mod.load(TINY).legacy_digest()
    (d / "sweep.json").write_text(json.dumps(man))
    err = _error(capsys, "sweep", TINY, "--out", str(d), "--chunk-size", "6", "--resume")
    assert "does not record the order of the axes" in err


def test_best_ranked_on_an_axis_shows_it_once_and_slots_errors_name_the_flag(results, capsys):
    from jaxsim import cli

    assert cli.main(["best", results, "--objective", "workload.rate"]) == 0
    head = capsys.readouterr().out.splitlines()[1].split()
    assert head.count("workload.rate") == 1
    assert _error(capsys, "sweep", TINY, "--out", results + "_x", "--slots", "0") == \
        "jaxsim: error: --slots: 0 must be >= 1"


def test_pareto_plot_draws_maximised_objectives_as_themselves(results, tmp_path, monkeypatch,
                                                              capsys):
    """The costs negate a maximised objective; the plot showed those negated values under
    the metric's name (a throughput axis from -250 to -825)."""
    from jaxsim import cli
    from search import pareto, runner

    drawn = {}
    monkeypatch.setattr(pareto, "plot_pareto",
                        lambda c, **kw: drawn.update(c=np.asarray(c), **kw))
    assert cli.main(["pareto", results, "--objectives", "ttft_p99_s,throughput_per_gpu",
                     "--plot", str(tmp_path / "f.png")]) == 0
    capsys.readouterr()
    df = runner.load_results(results)
    ok = df["status"].to_numpy() == 0
    want = objectives.derived({c: df[c].to_numpy() for c in df.columns}, "throughput_per_gpu")
    np.testing.assert_allclose(drawn["c"][ok, 1], want[ok], rtol=1e-6)
    assert np.all(drawn["c"][ok, 1] > 0) and drawn["labels"][1] == "throughput_per_gpu"
