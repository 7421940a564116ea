"""Workload generators, trace loaders and their error messages."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from jaxsim import config, traces
from jaxsim.timeutil import join_f64, split_f64
from jaxsim.workload import Trace, sample_lengths, synthetic, to_workload


def test_synthetic__poisson_rate_and_seed():
    a = synthetic("poisson", 20000, 100, 10, rate=8.0, seed=1)
    gaps = np.diff(np.sort(a.arrival_s))
    assert np.mean(gaps) == pytest.approx(1 / 8.0, rel=0.03)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, rel=0.05)
    b = synthetic("poisson", 20000, 100, 10, rate=8.0, seed=1)
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    assert a.arrival_s[0] == 0.0


def test_synthetic__gamma_is_bursty():
    a = synthetic("gamma", 20000, 100, 10, rate=5.0, cv=3.0, seed=2)
    gaps = np.diff(a.arrival_s)
    assert np.mean(gaps) == pytest.approx(0.2, rel=0.08)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(3.0, rel=0.1)


def test_synthetic__all_at_once():
    a = synthetic("all_at_once", 7, 10, 3)
    assert np.all(a.arrival_s == 0) and len(a) == 7


def test_synthetic__name_says_the_arrival_process_and_rate():
    assert synthetic("all_at_once", 3).name == "all at once"
    assert synthetic("poisson", 3, rate=2.5).name == "poisson, 2.5 req/s"
    assert synthetic("gamma", 3, rate=10, cv=3).name == "gamma, 10 req/s, cv 3"


def test_lengths__distributions():
    rng = np.random.default_rng(0)
    assert np.all(sample_lengths(12, 5, rng, "x") == 12)
    u = sample_lengths({"dist": "uniform", "low": 3, "high": 5}, 1000, rng, "x")
    assert set(np.unique(u)) == {3, 4, 5}
    ln = sample_lengths({"dist": "lognormal", "median": 200, "sigma": 0.5}, 5000, rng, "x")
    assert np.median(ln) == pytest.approx(200, rel=0.05)
    e = sample_lengths({"dist": "empirical", "values": [7, 9]}, 100, rng, "x")
    assert set(np.unique(e)) <= {7, 9}


@pytest.mark.parametrize("spec, msg", [
    (0, "must be >= 1"),
    ({"dist": "zipf"}, "dist: 'zipf' is not one of"),
    ({"dist": ["fixed"]}, "dist: \\['fixed'\\] is not one of"),
    ({"dist": "uniform", "low": 5}, "high: missing"),
    ({"dist": "uniform", "low": 5, "high": 2}, "must be >= low"),
    ({"dist": "fixed", "value": 3, "extra": 1}, "unknown key"),
    ({"dist": "empirical", "values": []}, "non-empty"),
    ("abc", "is not a length"),
    ({"dist": "fixed", "value": 2.5}, "value: 2.5 is not a whole number of tokens"),
    ({"dist": "uniform", "low": 1.5, "high": 3}, "low: 1.5 is not a whole number"),
    ({"dist": "lognormal", "median": 100, "sigma": 1, "max": 20.9}, "max: 20.9 is not a"),
    ({"dist": "empirical", "values": [2.7, 5]}, "values: 2.7 is not a whole number"),
    ({"dist": "empirical", "values": [float("nan"), 5]}, "every value must be a number"),
])
def test_lengths__bad_specs(spec, msg):
    with pytest.raises(ValueError, match=msg):
        sample_lengths(spec, 3, np.random.default_rng(0), "workload.prompt_tokens")


def test_trace__validation():
    with pytest.raises(ValueError, match="prompt_tokens\\[1\\] = 0"):
        Trace([0, 1], [5, 0], [1, 1])
    with pytest.raises(ValueError, match="arrival_s\\[0\\]"):
        Trace([np.nan], [5], [1])
    with pytest.raises(ValueError, match="same length"):
        Trace([0, 1], [5], [1, 1])
    # each bad entry is named, in the field's own terms (not numpy's)
    for kw, msg in [
        ({"prompt_tokens": [1e20]}, "prompt_tokens[0] = 1e+20; must be <= 2**30"),
        ({"prompt_tokens": ["4"]}, "prompt_tokens[0] = '4'; must be a number"),
        ({"prompt_tokens": [None]}, "prompt_tokens[0] = None; must be a number"),
        ({"output_tokens": [True]}, "output_tokens[0] = True; must be a number"),
        ({"arrival_s": [None]}, "arrival_s[0] = None; must be a number"),
        ({"prompt_tokens": [2**70]}, "prompt_tokens[0] = 1180591620717411303424; out of range"),
        ({"prompt_tokens": [[1]]}, "prompt_tokens must be one-dimensional"),
        ({"hash_ids": [[1.7]]}, "hash_ids[0][0] = 1.7; must be an integer id"),
        ({"hash_ids": [[float("nan")]]}, "hash_ids[0][0] = nan; must be an integer id"),
        ({"hash_ids": [["a"]]}, "hash_ids[0][0] = 'a'; must be a number"),
    ]:
        with pytest.raises(ValueError, match=re.escape(msg)):
            Trace(**{"arrival_s": [0.0], "prompt_tokens": [4], "output_tokens": [1], **kw})
    ok = Trace([0, 1.5], [4.0, 5], np.array([1, 2], np.int32), hash_ids=[[1.0, 2], [3]])
    assert ok.prompt_tokens.tolist() == [4, 5] and ok.prompt_tokens.dtype == np.int64
    assert [h.tolist() for h in ok.hash_ids] == [[1, 2], [3]]
    with pytest.raises(ValueError, match="seed: -1 must be an integer >= 0"):
        synthetic("poisson", 3, 4, 4, rate=1.0, seed=-1)


def test_to_workload__sorts_stably_and_pads():
    tr = Trace([2.0, 1.0, 1.0], [10, 20, 30], [1, 2, 3])
    wl = to_workload(tr, 5)
    assert np.asarray(wl.prompt_tokens).tolist() == [20, 30, 10, 1, 1]
    assert int(wl.num_requests) == 3
    with pytest.raises(ValueError, match="smaller than the workload"):
        to_workload(tr, 2)


def test_time_split__is_exact_to_1e_13():
    x = np.array([0.0, 1e-9, 3600.123456789012, 86400.5 + 1e-7])
    hi, lo = split_f64(x)
    np.testing.assert_allclose(join_f64(hi, lo), x, rtol=0, atol=1e-11)


def test_traces__bundled_azure_and_mooncake():
    az = traces.bundled("azure_conv")
    assert len(az) == 19366 and az.arrival_s.min() == 0.0
    assert az.arrival_s.max() == pytest.approx(3501.7, abs=1.0)
    assert az.prompt_tokens.max() == 14050
    mc, hashes = traces.load_mooncake(traces.bundled_path("mooncake_conversation_2k"),
                                      with_hashes=True)
    assert len(mc) == 2000
    assert all(len(h) == -(-p // 512) for h, p in zip(hashes, mc.prompt_tokens, strict=True))
    code = traces.bundled("azure_code")
    assert len(code) == 8819


def test_traces__plain_csv(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("arrival_s,prompt_tokens,output_tokens\n0.5,10,2\n0.1,20,3\n")
    tr = traces.load(str(f), "csv")
    assert tr.order().tolist() == [1, 0]


@pytest.mark.parametrize("content, fmt, msg", [
    ("arrival_s,prompt_tokens\n0,1\n", "csv", "missing column\\(s\\) output_tokens"),
    ("arrival_s,prompt_tokens,output_tokens\n0,10,0\n", "csv",
     "row 2, column output_tokens: '0' must be >= 1"),
    ("arrival_s,prompt_tokens,output_tokens\n0,10,2\n-1,10,2\n", "csv",
     "row 3, column arrival_s"),
    ("arrival_s,prompt_tokens,output_tokens\nnan,10,2\n", "csv", "row 2, column arrival_s"),
    ("arrival_s,prompt_tokens,output_tokens\n0,abc,2\n", "csv",
     "row 2, column prompt_tokens: 'abc' is not a number"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,10,2\n", "azure",
     "row 2, column TIMESTAMP"),
    ('{"timestamp": 0, "input_length": 5}\n', "mooncake", "row 1, column output_length"),
    ('{"timestamp": 0, "input_length": 5, "output_length": 2}\nnot json\n', "mooncake",
     "row 2: not valid JSON"),
    ("arrival_s,prompt_tokens,output_tokens\n", "csv", "no data rows"),
    ("arrival_s,prompt_tokens,output_tokens\n0,1,\"" + "x" * 200_000 + "\"\n", "csv",
     "not a CSV row \\(field larger than field limit"),
    ('{"timestamp": ' + "[" * 100_000 + "]" * 100_000 + "}\n", "mooncake",
     "row 1: JSON nested too deeply"),
    ('{"timestamp": 1' + "0" * 5000 + ', "input_length": 5, "output_length": 2}\n', "mooncake",
     "row 1: a number of more than 4300 digits"),
    # rows are named by their line in the file, blank lines counted
    ("arrival_s,prompt_tokens,output_tokens\n\n\n0,100,10\n\n1,-5,10\n", "csv",
     "row 6, column prompt_tokens: '-5'"),
    ("arrival_s,prompt_tokens,output_tokens\n0,100\n", "csv",
     "row 2 has 2 fields; the header has 3 \\(no output_tokens\\)"),
    # a bare number in TIMESTAMP (numpy reads 1700000000 as a year), a time zone
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,374,44\n"
     "2500-11-16 18:15:46,374,44\n", "azure",
     "row 3, column TIMESTAMP: '2500-11-16 18:15:46': the year must be within 1678-2261"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n1700000000,374,44\n", "azure",
     "row 2, column TIMESTAMP: '1700000000' is not a timestamp"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.5+01:00,374,44\n",
     "azure", "no time zone"),
    # an integer past float's range (valid JSON, any length under Python's limit)
    ('{"timestamp": 1' + "0" * 400 + ', "input_length": 5, "output_length": 2}\n',
     "mooncake", r"row 1, column timestamp: 1000.*\(401 digits\) is too large"),
    ('{"timestamp": 0, "input_length": 5, "output_length": 2}\n'
     '{"timestamp": 0, "input_length": 5' + "0" * 400 + ', "output_length": 2}\n',
     "mooncake", r"row 2, column input_length: .*\(401 digits\) is too large"),
    # the row csv cannot parse, not the one before it
    ("arrival_s,prompt_tokens,output_tokens\n0,1,1\n1,1,1\n2,1,1\n3,1,\""
     + "x" * 200_000 + "\"\n", "csv", "row 5: not a CSV row"),
    # a column named twice: csv.DictReader would keep the last one's values
    ("arrival_s,prompt_tokens,output_tokens,prompt_tokens\n0,10,2,9999\n", "csv",
     "column\\(s\\) prompt_tokens appear more than once"),
    # arrivals the clock cannot hold name the row of the latest one, in the file's unit
    ("arrival_s,prompt_tokens,output_tokens\n0,10,2\n1.5e9,10,2\n", "csv",
     "row 3, column arrival_s: '1.5e9' lies 1.5e\\+09 s after the first arrival"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2020-01-01 00:00:00,10,2\n"
     "2024-01-01 00:00:00,10,2\n", "azure",
     "row 3, column TIMESTAMP: '2024-01-01 00:00:00' lies 1.262e\\+08 s"),
    ('{"timestamp": 0, "input_length": 5, "output_length": 2}\n'
     '{"timestamp": 2e11, "input_length": 5, "output_length": 2}\n', "mooncake",
     "row 2, column timestamp: 200000000000.0 ms lies 2e\\+08 s"),
])
def test_traces__bad_files_name_file_row_column(tmp_path, content, fmt, msg):
    f = tmp_path / "bad.txt"
    f.write_text(content)
    with pytest.raises(traces.TraceError, match=msg) as e:
        traces.load(str(f), fmt)
    assert str(f) in str(e.value)


def test_traces__gzip_home_directory_and_bundled_formats(tmp_path, monkeypatch):
    import gzip

    f = tmp_path / "t.csv.gz"
    f.write_bytes(gzip.compress(b"arrival_s,prompt_tokens,output_tokens\n0,1,1\n"))
    with pytest.raises(traces.TraceError, match="gzip-compressed file; decompress it"):
        traces.load(str(f), "csv")
    (tmp_path / "t.csv").write_text("arrival_s,prompt_tokens,output_tokens\n0,7,1\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert traces.load("~/t.csv", "csv").prompt_tokens.tolist() == [7]
    with pytest.raises(traces.TraceError, match="'mooncake' does not read "
                                                "bundled:azure_conv, a trace in azure format"):
        traces.load("bundled:azure_conv", "mooncake")
    # the configuration takes a bundled trace's own format when none is given
    cfg = config.load(None, ["workload.kind=trace", "workload.path=bundled:azure_code",
                             "workload.num_requests=5"])
    assert cfg["workload"]["format"] == "azure"
    assert len(config.build_trace(cfg)) == 5
    with pytest.raises(config.ConfigError, match="workload.format: 'csv' does not read "
                                                 "bundled:azure_code, a trace in azure format"):
        config.load(None, ["workload.kind=trace", "workload.path=bundled:azure_code",
                           "workload.format=csv"])


def test_traces__unknown_format_and_missing_file(tmp_path):
    with pytest.raises(traces.TraceError, match="not one of"):
        traces.load("x", "parquet")
    with pytest.raises(traces.TraceError, match="no such file"):
        traces.load(str(tmp_path / "none.csv"), "csv")
    with pytest.raises(traces.TraceError, match="unknown bundled trace"):
        traces.bundled("nope")
    json.dumps(traces.BUNDLED)


def test_trace__rescaling_a_trace_with_no_gap_and_too_far():
    """A trace whose arrivals span 0 s (one request, all at once) has no gap to rescale
    and is kept as recorded; a rate that spreads the trace over more than 1e8 s is
    refused naming workload.rate and the smallest rate allowed."""
    one = Trace([5.0], [10], [2], name="one")
    assert one.scaled_to_rate(10.0).arrival_s.tolist() == [0.0]
    same = Trace([3.0, 3.0, 3.0], [10, 11, 12], [2, 2, 2], name="same")
    assert same.scaled_to_rate(1.0).arrival_s.tolist() == [0.0, 0.0, 0.0]
    tr = Trace(np.arange(200.0), np.full(200, 10), np.full(200, 2), name="t")
    np.testing.assert_allclose(np.diff(tr.scaled_to_rate(4.0).arrival_s), 0.25)
    with pytest.raises(ValueError, match=r"workload.rate: 1e-06 req/s spreads t's 200 "
                                         r"requests over 1.99e\+08 s"):
        tr.scaled_to_rate(1e-6)
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="workload.rate: .* must be a finite number"):
            tr.scaled_to_rate(bad)


def test_trace__one_request_file_runs_at_the_default_rate(tmp_path, capsys):
    """The default workload.rate (10 req/s) on a one-request trace: simulate and sweep
    run it as recorded (both refused it, the sweep with a traceback)."""
    from jaxsim import cli

    f = tmp_path / "one.csv"
    f.write_text("arrival_s,prompt_tokens,output_tokens\n0,100,10\n")
    argv = ["simulate", "--set", "workload.kind=trace", "--set", "workload.format=csv",
            "--set", f"workload.path={f}", "--json"]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["completed"] == 1 and out["status"] == "ok"


@pytest.mark.slow  # its own prefix-cache shape compiles (25 s cold on 2 cores): CI's slow step
def test_output_ids_name_every_computed_block_and_resumes_hit_them():
    """vLLM hashes output blocks too: with them named, a preempted request's recompute
    hits its own output block (here 16 fewer tokens), as in vLLM."""
    from jaxsim import api
    from jaxsim.workload import with_output_ids

    tr = Trace([0.0, 0.0], [32, 32], [33, 40], "t", [[1, 2], [3, 4]], 16)
    named = with_output_ids(tr)
    # P + O - 1 computed tokens: 64 -> 4 blocks, 71 -> 4 blocks; new ids from 5 on
    assert [list(x) for x in named.hash_ids] == [[1, 2, 5, 6], [3, 4, 7, 8]]
    assert named.name == "t+output ids"
    assert [list(x) for x in with_output_ids(Trace([0.0], [40], [9], "u", None, 16))
            .hash_ids] == [[0, 1, 2]]
    cfg = {"enable_prefix_caching": True, "block_size": 16, "num_gpu_blocks": 7,
           "max_num_batched_tokens": 512, "max_model_len": 80}
    res = api.run([cfg, cfg], [tr, named])  # one batch, one compile
    r, rn = res.lane(0), res.lane(1)
    assert r["preemptions"] == rn["preemptions"] == 1
    assert (r["tokens_scheduled"], rn["tokens_scheduled"]) == (151, 135)
