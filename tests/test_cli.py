"""The command line: --json keys, every kind of bad input -> one line, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxsim import cli, config

SMALL = ["--set", "workload.num_requests=40"]


def run_cli(args, capsys):
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli__simulate_json_has_required_keys(capsys):
    code, out, err = run_cli(["simulate", "--json", *SMALL], capsys)
    assert code == 0, err
    obj = json.loads(out)
    for k in cli.JSON_KEYS:
        assert k in obj, k
    assert obj["status"] == "ok" and obj["completed"] == 40


def test_cli__every_documented_set_key(capsys):
    sets = [
        "model=llama-3.1-8b", "gpu=h100-sxm", "tp=2", "scheduler=v0",
        "enable_chunked_prefill=false", "max_num_seqs=32", "max_num_batched_tokens=4096",
        "block_size=32", "gpu_memory_utilization=0.85", "num_gpu_blocks=4000",
        "workload.kind=gamma", "workload.rate=4", "workload.num_requests=30",
        "workload.prompt_tokens=300", "workload.output_tokens=20", "seed=3",
    ]
    args = ["simulate", "--json"]
    for s in sets:
        args += ["--set", s]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    obj = json.loads(out)
    assert obj["num_gpu_blocks"] == 4000 and obj["tp"] == 2 and obj["scheduler"] == "v0"


@pytest.mark.slow  # long (28-32 s on 2 cores): runs in CI's slow step
def test_cli__trace_workload(capsys, tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("arrival_s,prompt_tokens,output_tokens\n0,100,5\n0.2,50,3\n")
    code, out, err = run_cli(["simulate", "--json", "--set", "workload.kind=trace",
                              "--set", f"workload.path={f}", "--set", "workload.format=csv"],
                             capsys)
    assert code == 0, err
    assert json.loads(out)["completed"] == 2
    code, out, err = run_cli(["simulate", "--json", "--set", "workload.kind=trace",
                              "--set", "workload.path=bundled:azure_code",
                              "--set", "workload.format=azure",
                              "--set", "workload.num_requests=20"], capsys)
    assert code == 0, err
    assert json.loads(out)["completed"] == 20


def test_cli__requests_csv_rows_add_up_to_the_metrics(capsys, tmp_path):
    import csv

    def read(path):
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))

    f = tmp_path / "req.csv"
    code, out, err = run_cli(["simulate", "--json", *SMALL, "--set", "workload.output_tokens="
                              "{dist: uniform, low: 1, high: 4}", "--requests", str(f)],
                             capsys)
    assert code == 0, err
    obj = json.loads(out)
    rows = read(f)
    assert list(rows[0]) == list(cli.REQUEST_COLUMNS) and len(rows) == 40
    assert [int(r["request"]) for r in rows] == list(range(40))
    arrival = [float(r["arrival_s"]) for r in rows]
    assert arrival[0] == 0.0 and arrival == sorted(arrival)
    assert all(r["completed"] == "1" for r in rows)
    for col, key in (("ttft_s", "ttft_mean_s"), ("e2e_s", "e2e_mean_s"),
                     ("queue_s", "queue_mean_s"), ("tpot_s", "tpot_mean_s")):
        vals = [float(r[col]) for r in rows if r[col] != ""]
        assert np.mean(vals) == pytest.approx(obj[key], rel=1e-5), col
    one = [r for r in rows if r["output_tokens"] == "1"]
    assert one and all(r["tpot_s"] == "" for r in one)  # no TPOT of a one-token output
    assert sum(int(r["preemptions"]) for r in rows) == obj["preemptions"]
    assert sum(int(r["tokens_scheduled"]) for r in rows) == obj["tokens_scheduled"]
    # a run cut short: the requests it did not finish have no times
    code, out, err = run_cli(["simulate", "--json", *SMALL, "--set", "max_iterations=60",
                              "--requests", str(f)], capsys)
    assert code == 0, err
    rows = read(f)
    done = [r for r in rows if r["completed"] == "1"]
    assert len(done) == json.loads(out)["completed"] < 40
    assert all(r["ttft_s"] == r["e2e_s"] == "" for r in rows if r["completed"] == "0")


def test_cli__requests_csv_has_a_priority_column_when_requests_have_priorities(capsys, tmp_path):
    import csv

    f = tmp_path / "req.csv"
    code, out, err = run_cli(["simulate", "--json", *SMALL, "--set", "workload.rate=40",
                              "--set", "workload.priority_mix=[0.25, 0.75]",
                              "--set", "scheduling_policy=priority", "--requests", str(f)],
                             capsys)
    assert code == 0, err
    with open(f, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [*cli.REQUEST_COLUMNS, "priority"] and len(rows) == 40
    levels = [int(r["priority"]) for r in rows]
    assert set(levels) == {0, 1}
    # the levels are the trace's, in arrival order, as the simulation used them
    from jaxsim import config

    tr = config.build_trace(config.load(None, ["workload.num_requests=40", "workload.rate=40",
                                               "workload.priority_mix=[0.25, 0.75]"]))
    assert levels == tr.priority[tr.order()].tolist()
    obj = json.loads(out)
    for lv in (0, 1):  # each level's mean queueing delay, as the per-level metrics give it
        q = [float(r["queue_s"]) for r in rows if int(r["priority"]) == lv]
        assert np.mean(q) == pytest.approx(obj[f"queue_mean_s_prio{lv}"], rel=1e-5)
        assert len(q) == obj[f"completed_prio{lv}"]
    # without priorities there is no such column (test_cli__requests_csv_rows_add_up_to_the_metrics)


def test_cli__requests_to_a_folder_that_refuses_files_is_one_line_exit_2(capsys, tmp_path):
    bad = tmp_path / "missing" / "req.csv"
    code, out, err = run_cli(["simulate", *SMALL, "--requests", str(bad)], capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"jaxsim: error: --requests: {bad}: cannot write in ")


def test_cli__text_output(capsys):
    code, out, err = run_cli(["simulate", *SMALL], capsys)
    assert code == 0 and "TTFT" in out and "throughput" in out


def test_cli__example_yaml_is_complete_and_valid(capsys):
    cfg = config.load("examples/config.yaml")
    assert cfg == config.validate({})  # the example spells out every default
    # ... every key of it: it is the README's configuration block (tests/test_readme.py
    # checks that block against the defaults), after its comment lines
    from tests.test_readme import _blocks

    with open("examples/config.yaml") as f:
        body = "".join(ln for ln in f if not ln.startswith("#"))
    assert body in _blocks("yaml")
    code, out, err = run_cli(["simulate", "examples/config.yaml", "--json", *SMALL], capsys)
    assert code == 0, err
    # its enable_chunked_prefill: null follows the scheduler (true was refused with v0)
    assert config.validate({**cfg, "scheduler": "v0",
                            "enable_chunked_prefill": None})["enable_chunked_prefill"] is False
    code, out, err = run_cli(["simulate", "examples/config.yaml", "--set", "scheduler=v0",
                              "--json", *SMALL], capsys)
    assert code == 0, err


@pytest.mark.parametrize("sets, msg", [
    (["max_num_seqs=0"], "max_num_seqs: 0 must be >= 1"),
    (["max_num_seqs=abc"], "max_num_seqs: 'abc' is not an integer"),
    (["gpu_memory_utilization=1.5"], "gpu_memory_utilization: 1.5 must be <= 1.0"),
    (["model=gpt-5"], "model: unknown model 'gpt-5'; allowed: Llama-2-7B"),
    (["gpu=tpu"], "gpu: unknown gpu 'tpu'; allowed:"),
    (["scheduler=v2"], "scheduler: 'v2' is not one of v1, v0"),
    (["bogus=1"], "bogus: unknown key; allowed:"),
    (["workload.bogus=1"], "workload.bogus: unknown key"),
    (["cost.bogus=1"], "cost.bogus: unknown cost parameter"),
    (["cost.eta_ar=2"], "cost.eta_ar: 2.0 must be < 1"),
    (["workload.kind=zipf"], "workload.kind: 'zipf' is not one of"),
    (["workload.rate=-2"], "workload.rate: -2.0 must be > 0"),
    (["workload.kind=trace"], "workload.path: required"),
    (["workload.kind=trace", "workload.path=/no/such.csv", "workload.format=csv"],
     "workload.path: /no/such.csv: no such file"),
    (["workload.kind=trace", "workload.path=x.csv", "workload.format=xls"],
     "workload.format: 'xls' is not one of"),
    (["enable_chunked_prefill=maybe"], "enable_chunked_prefill: 'maybe' must be true or false"),
    (["scheduler=v0", "enable_chunked_prefill=true"], "not allowed with scheduler=v0"),
    (["tp"], "expected key=value"),
    (["tp=16"], "tp: 16 must be <= 8 (tensor parallelism within one node of 8 GPUs"),
    (["tp=0"], "tp: 0 must be >= 1"),
    (["a.b.c=1"], "unknown key"),
    (["workload.prompt_tokens={dist: uniform, low: 5}"], "workload.prompt_tokens.high: missing"),
])
def test_cli__bad_set_is_one_line_exit_2(capsys, sets, msg):
    args = ["simulate"]
    for s in sets:
        args += ["--set", s]
    code, out, err = run_cli(args, capsys)
    assert code == 2
    assert err.startswith("jaxsim: error: ") and msg in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("content, msg", [
    ("max_num_seqs: [1, 2]\n", "max_num_seqs: [1, 2] is not an integer"),
    ("nonsense_key: 1\n", "nonsense_key: unknown key"),
    ("workload: 5\n", "workload: 5 must be a mapping"),
    ("- a\n- b\n", "the top level must be a mapping"),
    ("a: [1, 2\n", "not valid YAML"),
    ("tp: 1\nworkload:\n  rate: 2\n  rate: 3\n", "cfg.yaml (line 4): key 'rate' given twice"),
    ("workload:\n  kind: trace\n  path: bad.csv\n  format: csv\n", "bad.csv"),
])
def test_cli__bad_yaml_is_one_line_exit_2(capsys, tmp_path, content, msg):
    f = tmp_path / "cfg.yaml"
    f.write_text(content)
    (tmp_path / "bad.csv").write_text("arrival_s,prompt_tokens,output_tokens\n0,-5,1\n")
    code, out, err = run_cli(["simulate", str(f)], capsys)
    assert code == 2 and msg in err and err.count("\n") == 1, err


def test_config__exponent_numbers_read_as_numbers_in_files_and_sets(tmp_path):
    """YAML 1.2 numbers: ``1e3`` and ``3E-4`` are numbers (PyYAML's YAML 1.1 reads them as
    strings, which the validators then refused as "not an integer")."""
    from jaxsim import config

    assert config.parse_set("max_num_seqs=1e3") == (["max_num_seqs"], 1000.0)
    assert config.parse_set("cost.cpu_iter_s=3E-4") == (["cost", "cpu_iter_s"], 3e-4)
    assert config.parse_set("x=-2e+2")[1] == -200.0
    assert config.parse_set("x=1e")[1] == "1e" and config.parse_set("x=12")[1] == 12
    f = tmp_path / "cfg.yaml"
    f.write_text("max_num_seqs: 1e3\nworkload: {rate: 2.5e1}\n")
    cfg = config.load(str(f))
    assert cfg["max_num_seqs"] == 1000 and cfg["workload"]["rate"] == 25.0
    f.write_text("max_num_seqs: 1.55e1\n")
    with pytest.raises(config.ConfigError, match="max_num_seqs: 15.5 is not an integer"):
        config.load(str(f))


def test_cli__max_model_len_beyond_the_models_context_is_infeasible(capsys):
    code, out, err = run_cli(["simulate", "--json", "--set", "max_model_len=200000",
                              *SMALL], capsys)
    assert code == 0, err
    assert "max_model_len_exceeds_model_context" in json.loads(out)["status"]
    code, out, err = run_cli(["simulate", "--json", "--set", "max_model_len=131072",
                              *SMALL], capsys)
    assert "max_model_len_exceeds_model_context" not in json.loads(out)["status"]


def test_cli__infeasible_config_reports_status(capsys):
    code, out, err = run_cli(["simulate", "--json", "--set", "model=Llama-3.1-70B", *SMALL],
                             capsys)
    obj = json.loads(out)
    assert "model_does_not_fit" in obj["status"]
    assert obj["status_reasons"][0].startswith("no room for the KV cache: weights 141.1 GB")
    # the text output says why, and shows no table of NaN latencies
    code, out, err = run_cli(["simulate", "--set", "tp=3", *SMALL], capsys)
    assert code == 0, err
    assert ("why: tp 3 does not divide Llama-3.1-8B's 32 attention heads and 8 KV heads "
            "(tp values that do: 1, 2, 4, 8)") in out
    assert "TTFT" not in out and "nan" not in out


def test_config__status_reasons_name_the_values_and_the_remedy():
    from jaxsim import status as st

    cfg = config.validate({"model": "Llama-3.1-70B", "gpu": "L40S", "tp": 3,
                           "scheduler": "v0", "max_num_batched_tokens": 100,
                           "max_num_seqs": 128, "max_iterations": 50})
    info = {"max_model_len": 4096, "weights_gb": 47.0, "reserve_gb": 1.5,
            "usable_gb": 43.2, "num_gpu_blocks": 10, "watermark_blocks": 1}
    everything = sum(st._NAMES)
    got = config.status_reasons(cfg, everything, info, 5000,
                                {"iterations": 50, "completed": 3})
    text = "\n".join(got)
    for want in ("tp 3 does not divide Llama-3.1-70B's 64 attention heads and 8 KV heads",
                 "weights 47.0 GB and activation reserve 1.5 GB per GPU against 43.2 GB",
                 "a request of 5000 tokens (prompt + output), more than max_model_len 4096",
                 "max_model_len 4096 exceeds Llama-3.1-70B's context of 131072 tokens",
                 "the v0 scheduler does not chunk prefills, so max_num_batched_tokens 100",
                 "max_num_batched_tokens 100 is smaller than max_num_seqs 128",
                 "ran out after 50 iterations (max_iterations 50) with 3 requests completed",
                 "not finite", "raise max_slots", "cache_entries"):
        assert want in text, want
    # the KV-too-small reason, when the weights fit; given blocks suggest num_gpu_blocks
    cfg["num_gpu_blocks"] = 10
    (only,) = config.status_reasons(cfg, st.INFEASIBLE | st.INF_KV_TOO_SMALL, info, 5000, {})
    assert only == ("the KV cache (10 blocks of 16 tokens, less a watermark of 1) cannot "
                    "hold one sequence of max_model_len 4096 tokens (by default the "
                    "workload's longest request) and the free block a v0 decode touches; "
                    "raise num_gpu_blocks or lower watermark")
    cfg["max_model_len"] = 4096  # given: lowering it is a remedy
    (only,) = config.status_reasons(cfg, st.INFEASIBLE | st.INF_KV_TOO_SMALL, info, 5000, {})
    assert only.endswith("max_model_len 4096 tokens and the free block a v0 decode "
                         "touches; lower max_model_len, raise num_gpu_blocks or lower "
                         "watermark")
    assert config.status_reasons(cfg, st.OK, info, 5000, {}) == []
    # a non-finite time with tiers also points at the tiers' figures
    tiered = config.validate({"enable_prefix_caching": True, "tiers": "dram,ssd"})
    (only,) = config.status_reasons(tiered, st.NONFINITE, info, 5000, {})
    assert "and the tiers' bandwidths and latencies (tier.<name>.*: dram, ssd)" in only


@pytest.mark.slow  # compiles lanes of its own (19 s cold on 2 cores): CI's slow step
def test_config__status_reasons_suggest_only_what_can_be_changed():
    """The advice named settings at their limit (raise tp at tp 8), fp8 for a lane
    already in fp8, and the configuration's max_iterations where ``api.run`` applied its
    own. FP8 is advised on GPUs without FP8 tensor cores too (weight-only there, as
    vLLM's FP8 Marlin)."""
    from jaxsim import api
    from jaxsim import status as st
    from jaxsim.workload import synthetic

    info = {"max_model_len": 4096, "weights_gb": 101.0, "reserve_gb": 1.5,
            "usable_gb": 72.0, "num_gpu_blocks": 0, "watermark_blocks": 0}
    nokv = st.INFEASIBLE | st.INF_NO_KV_MEMORY

    def reason(**cfg):
        (only,) = config.status_reasons(config.validate(cfg), nokv, info, 10, {})
        return only.split("; ", 1)[1]

    assert reason(model="Llama-3.1-405B", gpu="A100-80GB", tp=8) == (
        "raise gpu_memory_utilization (now 0.9) or use dtype fp8")
    assert reason(model="Llama-3.1-405B", gpu="A100-80GB", tp=8,
                  gpu_memory_utilization=1.0) == "use dtype fp8"
    assert reason(model="Llama-3.1-405B", gpu="A100-80GB", tp=8, dtype="fp8",
                  gpu_memory_utilization=1.0) == (
        "Llama-3.1-405B does not fit on A100-80GBs at any tp up to 8 (one node)")
    assert reason(model="Llama-3.1-70B", gpu="A40", tp=2) == (
        "raise tp (to 4, 8), raise gpu_memory_utilization (now 0.9) or use dtype fp8")
    assert reason(model="Llama-3.1-70B", gpu="H100-SXM", tp=1, dtype="fp8") == (
        "raise tp (to 2, 4, 8) or raise gpu_memory_utilization (now 0.9)")
    assert reason(model="Llama-3.1-70B", gpu="H100-SXM", tp=1).endswith(
        "raise gpu_memory_utilization (now 0.9) or use dtype fp8")
    # the limit api.run applied, not the configuration's own
    tr = synthetic("poisson", 50, 64, 64, rate=100.0, seed=0)
    res = api.run([{"max_iterations": 100000}, {}], tr, max_iterations=30)
    assert res.status.tolist() == [st.TRUNCATED] * 2
    for i in range(2):
        (only,) = res.reasons(i)
        assert "ran out after 30 iterations (max_iterations 30)" in only, only


def test_cli__missing_config_file(capsys):
    code, out, err = run_cli(["simulate", "/no/such.yaml"], capsys)
    assert code == 2 and "no such file" in err


def test_cli__presets_lists_required_names(capsys):
    code, out, err = run_cli(["presets"], capsys)
    assert code == 0
    for name in ["Llama-2-7B", "Llama-2-13B", "Llama-2-70B", "Llama-3.1-8B", "Llama-3.1-70B",
                 "Qwen2.5-7B", "Qwen2.5-72B", "Mistral-7B", "A100-80GB", "H100-SXM", "H200",
                 "B200", "L40S"]:
        assert name in out
    assert "source:" in out


def test_kv_capacity_uses_the_memory_the_cuda_runtime_reports():
    # vLLM: KV = total (torch.cuda.mem_get_info()[1]) x utilisation - weights - reserve.
    # Llama-2-7B on one A100-SXM4-80GB (CUDA total 85,100,068,864 bytes, deviceQuery),
    # worked by hand: 6,738,415,616 parameters x 2 bytes = 13,476,831,232 bytes of weights;
    # reserve 2^30 + 2048 x 2 x (4 x 4096 + (3 x 4096 + 3 x 11008) / 1) + 4 x 256 x 32000
    # = 1,359,216,640; KV 2 x 32 layers x 32 heads x 128 x 2 bytes = 524,288 bytes per token.
    from jaxsim import presets

    assert presets.gpu("A100-80GB")[1]["device_memory_bytes"] == 85_100_068_864
    for name in presets.gpu_names():  # every GPU has the figure and its source
        g = presets.gpu(name)[1]
        assert 0.9 < g["device_memory_bytes"] / (g["hbm_capacity_gb"] * 1e9) < 1.1
        assert g["sources"]["device_memory_bytes"]
    cfg = config.validate({"model": "Llama-2-7B", "gpu": "A100-80GB"})
    _, info = config.params_from_columns(config.columns_from_configs([cfg]), 4096)
    expect = (85_100_068_864 * 0.9 - 13_476_831_232 - 1_359_216_640) // (16 * 524_288)
    assert expect == 7361 and int(info["num_gpu_blocks"][0]) == expect
    # 70B in BF16 at TP 2 fits 80 GB H100s at 0.9, as it does in vLLM
    cfg = config.validate({"model": "Llama-3.1-70B", "gpu": "H100-SXM", "tp": 2})
    _, info = config.params_from_columns(config.columns_from_configs([cfg]), 4096)
    assert int(info["num_gpu_blocks"][0]) > 1000


def test_cli__unknown_command_exit_2():
    out = subprocess.run([sys.executable, "-m", "jaxsim", "frobnicate"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr


@pytest.mark.slow  # a subprocess compiles its own (23 s cold on 2 cores): CI's slow step
def test_cli__module_entry_point_json_and_the_compile_cache(tmp_path):
    # The command line keeps compiled executables in $XDG_CACHE_HOME/jaxsim/xla; a second
    # run loads them and prints the same metrics.
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    # An entry written without a size limit (no last-use file): JAX's size-limited cache
    # would fail every write after it, with a warning, unless the command line heals it.
    xla = tmp_path / "jaxsim" / "xla"
    xla.mkdir(parents=True)
    (xla / "jit_foreign-0123abcd-cache").write_bytes(b"\0" * 64)
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-m", "jaxsim", "simulate", "--json", *SMALL],
                             capture_output=True, text=True, timeout=300, env=env)
        assert out.returncode == 0, out.stderr
        assert "compilation cache" not in out.stderr, out.stderr
        runs.append(json.loads(out.stdout))
    assert runs[0]["completed"] == 40
    entries = {p.name[:-6] for p in xla.glob("*-cache")}
    assert len(entries) > 1 and entries == {p.name[:-6] for p in xla.glob("*-atime")}
    for r in runs:
        r.pop("wall_s")
    assert runs[0] == runs[1]


def test_cli__compile_cache_folder_and_the_environment_wins(tmp_path, monkeypatch):
    import jax

    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_compilation_cache_max_size)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")
    assert cli.use_compile_cache() is None
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    try:
        path = cli.use_compile_cache()
        assert path == str(tmp_path / "jaxsim" / "xla") and (tmp_path / "jaxsim" / "xla").is_dir()
        assert jax.config.jax_compilation_cache_dir == path
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_compilation_cache_max_size", before[1])


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    """Ctrl-C during any command ends with one line on stderr, not a traceback."""
    from jaxsim import cli as jcli

    def interrupted(args):
        raise KeyboardInterrupt

    parser = jcli.build_parser()
    monkeypatch.setattr(jcli, "build_parser", lambda: parser)
    for action in parser._subparsers._group_actions:
        for name, sub in action.choices.items():
            if name == "calibrate":
                sub.set_defaults(func=interrupted)
    assert jcli.main(["calibrate", "x.csv", "--hardware", "H100-SXM", "--out", "p.json"]) == 130
    assert capsys.readouterr().err.strip() == "jaxsim calibrate: interrupted"


def test_cli__no_command_lists_the_commands_and_version_prints(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxsim: error: the following arguments are required: {simulate,")
    assert "\n" not in err and "calibrate" in err
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    from jaxsim import __version__
    assert capsys.readouterr().out.strip() == f"jaxsim {__version__}"


def test_api_results_give_the_status_sentences_simulate_prints():
    import jaxsim
    from jaxsim import api, sim

    tr = jaxsim.synthetic("poisson", 8, 64, 4, rate=10.0, seed=0)
    res = api.run([{}, {"tp": 3}], tr)
    assert res.reasons(0) == []
    assert res.reasons(1) == ["tp 3 does not divide Llama-3.1-8B's 32 attention heads and "
                              "8 KV heads (tp values that do: 1, 2, 4, 8)"]
    bare = sim.SimResult(metrics={}, state=None, status=np.zeros(1), iterations_run=0,
                         wall_s=0.0)
    with pytest.raises(ValueError, match="reasons\\(\\) needs the configurations"):
        bare.reasons(0)


def test_cli__a_newline_in_a_key_keeps_the_error_on_one_line(capsys):
    assert cli.main(["simulate", "--set", "t\np=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxsim: error: t\\np: unknown key") and err.count("\n") == 1


def test_cli_prints_its_own_warnings_as_one_line_once():
    """A ConfigWarning printed the source line under it, and twice (the configuration is
    validated when read and again when run)."""
    import io
    import warnings

    from jaxsim import cli
    from jaxsim import config as cfg_mod

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("default")
        for _ in range(2):  # two callers, one place that warns: shown once
            cfg_mod.validate({"workload": {"cv": 3.0}})
            cfg_mod.load(None, ["workload.cv=3"])
    assert [type(r.message) for r in rec] == [cfg_mod.ConfigWarning]
    buf = io.StringIO()
    cli._show_warning(rec[0].message, cfg_mod.ConfigWarning, "config.py", 1, file=buf)
    assert buf.getvalue() == ("jaxsim: warning: workload.cv: not read with "
                              "workload.kind=poisson (it reads workload.rate, "
                              "workload.num_requests, workload.prompt_tokens, "
                              "workload.output_tokens, workload.priority_mix); "
                              "ignored\n")
