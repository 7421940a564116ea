"""Bad input found by trying the command line and the API as a user would: each case
gets one clear error naming the field, the file or the flag, or (where the input is
valid) the result it should have. None of these compiles a simulation."""

from __future__ import annotations

import numpy as np
import pytest

from jaxsim import api, cli, config, traces
from jaxsim.workload import MAX_ARRIVAL_SPAN_S, Trace, synthetic, to_workload


def _cli_error(capsys, *argv) -> str:
    assert cli.main(list(argv)) == 2
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert cap.out == "" and err.startswith("jaxsim: error: ") and "\n" not in err, cap
    return err


def _theta(cfg: dict) -> np.ndarray:
    cols = config.columns_from_configs([config.validate(cfg)])
    params, _ = config.params_from_columns(cols, 1024)
    return np.asarray(params.cost.theta)[0]


def test_cost_family_shorthand_overrides_a_calibrated_preset():
    """cost.eta_c_gemm used to be dropped under a calibrated preset (the default on
    H100-SXM): the preset's per-operator values won over the user's shorthand."""
    from jaxsim.params import COST_INDEX, GEMM_COST_OPS

    base = {"gpu": "H100-SXM"}  # cost_preset auto: the shipped calibrated preset
    t0, t1 = _theta(base), _theta({**base, "cost": {"eta_c_gemm": 0.01}})
    for op in GEMM_COST_OPS:
        i = COST_INDEX[f"eta_c_{op}"]
        assert 1 / (1 + np.exp(-t1[i])) == pytest.approx(0.01, rel=1e-5)
        assert t0[i] != t1[i]
    # a per-operator value given alongside still wins over the shorthand
    t2 = _theta({**base, "cost": {"eta_c_gemm": 0.01, "eta_c_mlp_up": 0.5}})
    assert 1 / (1 + np.exp(-t2[COST_INDEX["eta_c_mlp_up"]])) == pytest.approx(0.5, rel=1e-5)
    assert t2[COST_INDEX["eta_c_qkv_proj"]] == t1[COST_INDEX["eta_c_qkv_proj"]]


def test_arrivals_are_relative_to_the_first_and_their_span_is_bounded():
    """An epoch-based trace simulates as the same trace from t = 0 (metrics are relative to
    the first arrival; absolute epoch times left the clock a resolution of tens of
    milliseconds and zero latencies with status ok), and a span the clock cannot resolve
    is refused."""
    a = np.array([0.0, 0.1, 0.25, 0.3])
    p, o = np.array([512, 64, 8, 100]), np.array([64, 8, 3, 1])
    w0 = to_workload(Trace(a, p, o))
    w1 = to_workload(Trace(a + 1.7e15, p, o))  # epoch microseconds taken as seconds
    w2 = to_workload(Trace(a + 1.7e9, p, o))
    for w in (w1, w2):
        got = np.asarray(w.arrival_hi, np.float64) + np.asarray(w.arrival_lo, np.float64)
        assert got[0] == 0.0
    np.testing.assert_allclose(np.asarray(w2.arrival_hi, np.float64)
                               + np.asarray(w2.arrival_lo, np.float64), a, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(w1.prompt_tokens), np.asarray(w0.prompt_tokens))
    with pytest.raises(ValueError, match=r"arrival_s\[1\] = 1e\+300 lies 1e\+300 s after "
                                         r"the first arrival; the arrivals may span at most"):
        Trace([0.0, 1e300], [1, 1], [1, 1])
    Trace([0.0, MAX_ARRIVAL_SPAN_S], [1, 1], [1, 1])
    with pytest.raises(config.ConfigError, match="arrivals may span at most"):
        config.build_trace(config.validate({"workload": {"rate": 1e-15, "num_requests": 5}}))


def test_trace_files(tmp_path):
    f = tmp_path / "t.csv"
    # a byte-order mark (a CSV saved by a spreadsheet) is not part of the first column
    f.write_bytes("\ufeffarrival_s,prompt_tokens,output_tokens\n0,10,2\n".encode())
    assert len(traces.load(str(f), "csv")) == 1
    for body, needle in [
        (b"arrival_s,prompt_tokens,output_tokens\n0,10,2,7\n",
         "row 2 has 4 fields; the header has 3"),
        (b"arrival_s,prompt_tokens,output_tokens\n0,1e30,2\n",
         "row 2, column prompt_tokens: '1e30' must be <= 2\\*\\*30 tokens"),
        (b"\x99\x01\x02binary", "not a UTF-8 text file"),
    ]:
        f.write_bytes(body)
        with pytest.raises(traces.TraceError, match=needle) as e:
            traces.load(str(f), "csv")
        assert str(f) in str(e.value)
    j = tmp_path / "m.jsonl"
    for rec, needle in [
        ('{"timestamp": 0, "input_length": true, "output_length": 2}',
         "row 1, column input_length: True is not a number"),
        ('{"timestamp": 0, "input_length": 600, "output_length": 2, '
         '"hash_ids": [99999999999999999999]}', "integers in 0..2\\*\\*63-1"),
    ]:
        j.write_text(rec + "\n")
        with pytest.raises(traces.TraceError, match=needle):
            traces.load(str(j), "mooncake")


@pytest.mark.parametrize("text, sets, needle", [
    (b"\x9c\x00\xff\xfe", [], "not a UTF-8 text file"),
    (b"1: 2\n", [], "1: keys must be strings"),
    (b"tier: {dram: 5}\n", ["tier.dram.capacity_gb=1"], "tier.dram: 5 must be a mapping"),
    (b"workload:\n  ? [a]\n  : 1\n", [], "(line 2): key ['a'] is a list; keys must be names"),
    (b"x: " + b"[" * 2000 + b"]" * 2000 + b"\n", [], "nested too deeply"),
    (b"tp: 1\n", ["tp={[a]: 1}"], "--set 'tp={[a]: 1}': key ['a'] is not a name"),
])
def test_config_files(tmp_path, capsys, text, sets, needle):
    f = tmp_path / "c.yaml"
    f.write_bytes(text)
    args = [a for s in sets for a in ("--set", s)]
    assert needle in _cli_error(capsys, "simulate", str(f), *args)


def test_config_path_is_a_folder(tmp_path, capsys):
    assert "is a directory, expected a YAML file" in _cli_error(capsys, "simulate",
                                                                str(tmp_path))


@pytest.mark.parametrize("assignment, needle", [
    ("workload.cv=1e-300", "workload.cv: 1e-300 must be >= 0.001"),
    ("workload.cv=1e300", "workload.cv: 1e+300 must be <= 1000"),
    ("tier.dram.capacity_gb=1e300", "tier.dram.capacity_gb: 1e+300 must be <= 1000000000"),
    ("cost.cpu_iter_s=1e300", "cost.cpu_iter_s: 1e+300 must be <= 1e+30"),
    # values that are 0 in float32: a lane that halts as nonfinite, not a config error
    ("cost.eta_c_gemm=1e-300", "cost.eta_c_gemm: 1e-300 must be >= 1e-30"),
    # inf in float32: a weight of 1e300 became another eviction policy
    ("cache.recency_weight=1e300", "cache.recency_weight: 1e+300 must be <= 1e+30"),
    ("cache.admission_weight=1e38", "cache.admission_weight: 1e+38 must be <= 1e+30"),
    ("slo.ttft_s=1e300", "slo.ttft_s: 1e+300 must be <= 1e+30"),
    ("workload.think_time_s=1e30", "workload.think_time_s: 1e+30 must be <= 100000000"),
    ("workload.prompt_tokens={dist: empirical, values: [true, 3]}",
     "values: true/false is not a length"),
    ("cost.eta_m_elem=1e-45", "cost.eta_m_elem: 1e-45 must be >= 1e-30"),
    ("tier.dram.read_gbps=1e-300", "tier.dram.read_gbps: 1e-300 must be >= 1e-06"),
    ("tier.dram.write_gbps=0", "tier.dram.write_gbps: 0.0 must be >= 1e-06"),
])
def test_values_beyond_what_the_simulator_represents(capsys, assignment, needle):
    extra = (["--set", "enable_prefix_caching=true", "--set", "tiers=dram"]
             if assignment.startswith("tier.") else [])
    assert needle in _cli_error(capsys, "simulate", "--set", assignment, *extra)


def test_gamma_workload_cv_bounds():
    with pytest.raises(ValueError, match=r"workload.cv: 0.0 must be a number in"):
        synthetic("gamma", 5, 8, 8, rate=1.0, cv=0.0)
    assert len(synthetic("gamma", 5, 8, 8, rate=1.0, cv=1e-3)) == 5


def test_demo_and_bench_flags(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    # refused before the simulation, not after it
    assert _cli_error(capsys, "demo", "--out", str(f)) == \
        f"jaxsim: error: --out: {f} exists and is not a folder"
    for n in ("0", "-5"):
        assert _cli_error(capsys, "demo", "--num-requests", n) == \
            f"jaxsim: error: --num-requests: {n} must be >= 1"
    assert _cli_error(capsys, "bench", "--quick", "--slots", "0") == \
        "jaxsim: error: --slots: 0 must be >= 1"
    with pytest.raises(ValueError, match=r"head\(-5\)"):
        Trace([0.0, 1.0], [1, 1], [1, 1]).head(-5)


def test_api_arguments_of_the_wrong_kind():
    tr = synthetic("poisson", 4, 8, 8, rate=1.0)
    with pytest.raises(TypeError, match="trace: str 'bundled:azure_conv' is not a Trace"):
        api.prepare({}, "bundled:azure_conv")
    with pytest.raises(TypeError, match="is not a Trace or a non-empty list of Traces"):
        api.prepare({}, [1, 2, 3])
    for bad in (None, "gpu", []):
        with pytest.raises(config.ConfigError, match="^configs: "):
            api.run(bad, tr)
    with pytest.raises(config.ConfigError, match="1: keys must be strings"):
        api.prepare({1: 2}, tr)
    # sizes are integers >= 1 (-5 cache rows became 1, 2.5 requests became 2)
    for kw, msg in [({"cache_entries": -5}, "cache_entries: -5 must be an integer >= 1"),
                    ({"cache_entries": 2.7}, "cache_entries: 2.7 must be"),
                    ({"max_requests": 2.5}, "max_requests: 2.5 must be"),
                    ({"max_slots": 0}, "max_slots: 0 must be"),
                    ({"chunk_iterations": None}, "chunk_iterations: None must be")]:
        with pytest.raises(ValueError, match=msg):
            api.prepare({}, tr, **kw)
    with pytest.raises(ValueError, match="auto_slots: 'no' must be True or False"):
        api.run({}, tr, auto_slots="no")
    # simulate_batch's own (a float or text device count raised TypeError in slicing)
    from jaxsim.sim import simulate_batch

    p = api.prepare({}, tr)
    for kw, msg in [({"devices": 1.5}, r"devices=1.5 must be an integer >= 1"),
                    ({"devices": "2"}, r"devices='2' must be an integer >= 1"),
                    ({"devices": 0}, r"devices=0 must be"),
                    ({"compact_lanes": "no"}, r"compact_lanes='no' must be True or False")]:
        with pytest.raises(ValueError, match=msg):
            simulate_batch(p.shape, p.params, p.workload, **kw)


def test_trace_keys_without_a_trace_workload(capsys):
    """workload.path and .format used to be ignored (a missing file included) unless
    workload.kind was trace."""
    err = _cli_error(capsys, "simulate", "--set", "workload.path=foo.csv")
    assert err == ("jaxsim: error: workload.path: 'foo.csv' is read only with "
                   "workload.kind=trace, not poisson; set workload.kind: trace to replay "
                   "a file")
    assert "workload.format: 'csv' is read only with workload.kind=trace, not gamma" in \
        _cli_error(capsys, "simulate", "--set", "workload.kind=gamma",
                   "--set", "workload.format=csv")


@pytest.mark.slow
def test_prefetch_on_a_workload_without_block_ids_runs():
    """Prefetch with nothing to prefetch (a synthetic workload has no block ids) used to
    stop with argmax of an empty sequence; it runs as prefix caching without prefetch."""
    cfg = {"enable_prefix_caching": True, "tiers": "dram", "cost_preset": "uncalibrated",
           "workload": {"num_requests": 12, "prompt_tokens": 64, "output_tokens": 4}}
    on = api.run({**cfg, "cache": {"prefetch": True}})
    off = api.run(cfg)
    assert on.lane(0)["status"] == "ok" and on.lane(0)["completed"] == 12
    assert on.lane(0)["prefetched_blocks"] == 0
    for k in ("ttft_p50_s", "e2e_p99_s", "iterations"):
        assert on.lane(0)[k] == pytest.approx(off.lane(0)[k], rel=1e-6), k


def test_profile_refuses_a_folder_and_writes_nothing_when_nothing_was_measured(
        tmp_path, capsys, monkeypatch):
    from jaxsim import profile as prof

    assert "is a folder; give a file name" in _cli_error(
        capsys, "profile", "--model", "Llama-3.1-8B", "--quick", "--out", str(tmp_path) + "/")
    out = tmp_path / "huge.csv"
    # a batch the cost model cannot take is refused before anything runs
    assert cli.main(["profile", "--model", "Llama-3.1-8B", "--repeats", "1", "--ops", "norm",
                     "--tokens", "1000000000", "--out", str(out)]) == 2
    assert "--tokens: 1000000000 tokens in one batch" in capsys.readouterr().err
    assert not out.exists()

    def oom(fn, args, repeats, timing):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory")

    monkeypatch.setattr(prof, "_time_kernel", oom)  # every shape runs out of memory
    assert cli.main(["profile", "--model", "Llama-3.1-8B", "--repeats", "1", "--ops", "norm",
                     "--tokens", "4096", "--out", str(out)]) == 2
    assert "no shape could be measured" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("spec, needle", [
    ("{dist: uniform, low: 1, high: 1e30}", "workload.prompt_tokens.high: 1e+30 must be a "
                                           "number in [1, 2**30]"),
    ("{dist: empirical, values: [1, 1e30]}", "every value must be a number in [1, 2**30]"),
])
def test_length_distributions_are_bounded(capsys, spec, needle):
    assert needle in _cli_error(capsys, "simulate", "--set", f"workload.prompt_tokens={spec}")


def test_an_empty_gpu_lists_the_allowed_names(capsys):
    assert "gpu: None is not a gpu name; allowed: " in _cli_error(capsys, "simulate",
                                                                  "--set", "gpu=")


def test_calibration_files_binary_and_out_of_range(tmp_path):
    import os

    from calibration import loaders
    from calibration.schema import DataError, write_csv

    b = tmp_path / "bin.csv"
    b.write_bytes(b"\x99\x01\x02binary")
    with pytest.raises(DataError, match=r"bin.csv: not a UTF-8 text file"):
        loaders.load([str(b)])
    here = os.path.dirname(__file__)
    m = loaders.load([os.path.join(here, "..", "calibration", "data", "splitwise")])
    p = tmp_path / "m.csv"
    write_csv(m, p)
    lines = p.read_text().splitlines()
    col = lines[0].split(",").index("num_workers")
    cells = lines[1].split(",")
    cells[col] = "1e30"
    lines[1] = ",".join(cells)
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"m.csv:2: column 'num_workers': '1e30' is out of "
                                        r"range"):
        loaders.load([str(p)])


def test_sessions_that_would_not_fit_in_memory_are_refused(capsys):
    """A million turns per session used to be generated until the process was killed for
    memory, with no message."""
    err = _cli_error(capsys, "simulate", "--set", "workload.kind=sessions",
                     "--set", "workload.sessions=3",
                     "--set", "workload.turns={dist: uniform, low: 1, high: 1000000}")
    assert "workload.turns: the prompts of 3 sessions would hold more than 50,000,000 " \
           "block ids in all" in err


def test_per_lane_traces_share_the_block_length_of_those_with_block_ids():
    """A plain trace has no block ids; its default block length (512) must not stop it
    from sharing a batch with a sessions trace of 256-token blocks. Two traces whose ids
    mean different block lengths cannot share one compiled cache: one clear error."""
    from jaxsim.workload import multi_turn_sessions

    sess = multi_turn_sessions(4, 2.0, 3, 256, 64, 32, 1.0, 256, 0)
    plain = synthetic("poisson", 12, 128, 16, rate=5.0)
    assert plain.num_hash_blocks() == 0 and plain.hash_block_tokens == 512
    for lanes in ([sess, plain], [plain, sess]):
        cfgs = [{"enable_prefix_caching": True}, {}]
        p = api.prepare(cfgs, lanes)
        assert p.shape.hash_space > 0  # the sessions lane's ids are compiled in
    other = multi_turn_sessions(4, 2.0, 3, 256, 64, 32, 1.0, 128, 0)
    with pytest.raises(ValueError, match="share one hash_block_tokens; these have 128, 256"):
        api.prepare([{"enable_prefix_caching": True}, {}], [sess, other])


def test_workload_builders_take_numpy_scalars():
    """Rates from ``np.arange`` and friends are numbers, as the configuration path
    already takes them; a bool is still not one."""
    from jaxsim.workload import multi_turn_sessions

    for r in np.arange(4, 20, 8):
        a = synthetic("poisson", 10, 64, 8, rate=r)
        np.testing.assert_array_equal(a.arrival_s, synthetic("poisson", 10, 64, 8,
                                                             rate=int(r)).arrival_s)
    assert len(synthetic("gamma", 10, 64, 8, rate=np.float32(5), cv=np.float32(2))) == 10
    spec = {"dist": "uniform", "low": np.int64(4), "high": np.int64(9)}
    assert len(synthetic("poisson", 10, spec, 8, rate=5.0)) == 10
    assert len(multi_turn_sessions(3, np.int64(1))) == 12
    with pytest.raises(ValueError, match=r"workload.rate: (np\.)?True_? must be a number > 0"):
        synthetic("poisson", 10, 64, 8, rate=np.True_)


def test_a_cost_preset_that_is_a_folder_or_not_text(tmp_path, capsys):
    assert "is a folder, expected a preset JSON" in _cli_error(
        capsys, "simulate", "--set", f"cost_preset={tmp_path}")
    f = tmp_path / "p.json"
    f.write_bytes(b"\xff\xfe\x00")
    assert "not JSON" in _cli_error(capsys, "simulate", "--set", f"cost_preset={f}")


def test_preset_values_are_bounded_like_cost_overrides(tmp_path, capsys):
    import json
    import os

    from jaxsim import costpresets

    path = os.path.join(os.path.dirname(costpresets.__file__), "data", "cost_presets",
                        "H100-SXM.json")
    with open(path) as fh:
        d = json.load(fh)
    d["values"]["cpu_iter_s"] = 1e300
    f = tmp_path / "p.json"
    f.write_text(json.dumps(d))
    assert "parameter 'cpu_iter_s' is 1e+300; allowed: a number > 0 and <= 1e+30" in _cli_error(
        capsys, "simulate", "--set", f"cost_preset={f}")


def test_yaml_merge_keys_and_file_names_that_look_like_numbers(tmp_path, capsys,
                                                                 monkeypatch):
    from jaxsim import config as cfg_mod

    f = tmp_path / "m.yaml"
    f.write_text("base: &b {rate: 5}\nworkload:\n  <<: *b\n  num_requests: 7\n")
    raw = cfg_mod.read_yaml(str(f))
    assert raw["workload"] == {"rate": 5, "num_requests": 7}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "0123").write_text("arrival_s,prompt_tokens,output_tokens\n0,4,2\n")
    c = cfg_mod.apply_sets({}, ["workload.kind=trace", "workload.format=csv",
                                "workload.path=0123", "cost_preset=null"])
    assert c["workload"]["path"] == "0123" and c["cost_preset"] is None
    assert len(cfg_mod.build_trace(cfg_mod.validate({**c, "cost_preset": "auto"}))) == 1


def test_yaml_numbers_follow_yaml_1_2(tmp_path, capsys):
    """`tp: 010` is ten (YAML 1.1 read eight) and `max_num_seqs: 1:30` is text that the
    key's check refuses (YAML 1.1 read ninety, in base 60), in files and in --set."""
    from jaxsim import config as cfg_mod

    f = tmp_path / "n.yaml"
    f.write_text("a: 010\nb: 1_000\nc: 0x1F\nd: 0o17\ne: 1e3\nf: -.5e2\ng: 1:30\nh: .inf\n")
    raw = cfg_mod.read_yaml(str(f))
    assert raw == {"a": 10, "b": 1000, "c": 31, "d": 15, "e": 1000.0, "f": -50.0,
                   "g": "1:30", "h": float("inf")}
    assert type(raw["a"]) is int and type(raw["e"]) is float
    assert cfg_mod.validate(cfg_mod.apply_sets({}, ["max_num_seqs=010"]))["max_num_seqs"] == 10
    f.write_text("max_num_seqs: 1:30\n")
    assert "max_num_seqs" in _cli_error(capsys, "simulate", str(f))


def test_length_mappings_are_checked_where_the_workload_kind_ignores_them():
    from jaxsim import config as cfg_mod

    base = ["workload.kind=trace", "workload.path=x.csv", "workload.format=csv"]
    with pytest.raises(cfg_mod.ConfigError, match=r"workload.prompt_tokens.dist: 'bogus'"):
        cfg_mod.validate(cfg_mod.apply_sets({}, [*base, "workload.prompt_tokens={dist: bogus}"]))
    with pytest.raises(cfg_mod.ConfigError, match=r"workload.turns.high: 1 must be >= low"):
        cfg_mod.validate(cfg_mod.apply_sets(
            {}, [*base, "workload.turns={dist: uniform, low: 3, high: 1}"]))
    with pytest.warns(cfg_mod.ConfigWarning, match=r"workload.output_tokens: not read"):
        ok = cfg_mod.validate(cfg_mod.apply_sets(
            {}, [*base, "workload.output_tokens={dist: lognormal, median: 100, sigma: 1}"]))
    assert ok["workload"]["output_tokens"]["dist"] == "lognormal"


def test_workload_keys_the_kind_does_not_read_are_named_in_a_warning():
    """workload.cv with kind poisson, or output_tokens with a trace, did nothing silently."""
    import warnings

    from jaxsim import config as cfg_mod

    with pytest.warns(cfg_mod.ConfigWarning) as rec:
        out = cfg_mod.validate({"workload": {"kind": "poisson", "cv": 4.0, "turns": 2}})
    assert out["workload"]["cv"] == 4.0  # kept: a sweep over the kind may read it
    (msg,) = [str(r.message) for r in rec]
    assert msg.startswith("workload.cv, workload.turns: not read with workload.kind=poisson")
    assert "workload.rate, workload.num_requests" in msg
    with pytest.warns(cfg_mod.ConfigWarning, match=r"^workload.rate: not read with "
                      r"workload.kind=all_at_once"):
        cfg_mod.validate({"workload": {"kind": "all_at_once", "rate": 3.0}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # keys the kind reads, and others left at their defaults, pass quietly; so does
        # a validated configuration validated again
        again = cfg_mod.validate({"workload": {"kind": "gamma", "cv": 4.0, "rate": 2.0}})
        cfg_mod.validate(again)
        cfg_mod.validate({"workload": {"kind": "sessions", "sessions": 3, "turns": 2,
                                       "think_time_s": 5.0, "hash_block_tokens": 64}})


def test_prefetch_without_a_lower_tier_is_refused():
    """Prefetch moves blocks from tiers below HBM: with none it did nothing, silently."""
    from jaxsim import config as cfg_mod

    with pytest.raises(cfg_mod.ConfigError, match=r"cache.prefetch: true needs a tier below"):
        cfg_mod.validate({"enable_prefix_caching": True, "cache": {"prefetch": True}})
    ok = cfg_mod.validate({"enable_prefix_caching": True, "tiers": "dram",
                           "cache": {"prefetch": True}})
    assert ok["cache"]["prefetch"] and ok["tiers"] == ["dram"]


def test_integer_keys_take_whole_numpy_floats_of_any_width():
    import numpy as np

    from jaxsim import config as cfg_mod

    for v in (np.float32(8.0), np.float16(8), np.float64(8.0), 8.0):
        assert cfg_mod.validate({"max_num_seqs": v})["max_num_seqs"] == 8
    for v in (np.float32(2.5), np.float32("nan"), np.float32("inf")):
        with pytest.raises(cfg_mod.ConfigError, match="max_num_seqs: .* is not an integer"):
            cfg_mod.validate({"max_num_seqs": v})


def test_a_rate_too_low_for_the_arrival_span_names_the_field(capsys):
    err = _cli_error(capsys, "simulate", "--set", "workload.rate=1e-9",
                     "--set", "workload.num_requests=10")
    assert err.startswith("jaxsim: error: workload.rate: 1e-09 req/s spreads the arrivals")


def test_a_key_given_twice_inside_a_set_value_is_named(capsys):
    err = _cli_error(capsys, "simulate", "--set",
                     "workload.prompt_tokens={dist: fixed, value: 3, value: 4}")
    assert err.endswith("key 'value' given twice"), err


def test_an_explicit_int_tag_on_text_is_one_line(tmp_path, capsys):
    for argv in (["--set", "max_num_seqs=!!int 0b1"], ["--set", "max_num_seqs=!!int"]):
        assert "max_num_seqs" in _cli_error(capsys, "simulate", *argv)
    f = tmp_path / "i.yaml"
    f.write_text("max_num_seqs: !!int 1:30\n")
    assert "not valid YAML (line 1)" in _cli_error(capsys, "simulate", str(f))
