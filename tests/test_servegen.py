"""ServeGen-shaped workloads (jaxsim.servegen, ``workload.kind: servegen``)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from jaxsim import cli, config, servegen
from jaxsim.servegen import WINDOW_S


def _hist_mean(pool, field):
    lo, width, p = servegen.length_hist(pool, field)
    return float(np.sum((lo + (width - 1) / 2) * p))


def test_data__pools_cover_their_records_and_deepseek_clients_sum_to_the_pool():
    for pool, days in (("m-large", 14), ("m-mid", 14), ("m-small", 14), ("deepseek-r1", 1)):
        starts, rates = servegen.window_rates(pool)
        np.testing.assert_array_equal(starts, np.arange(days * 144) * WINDOW_S)
        assert np.all(rates >= 0) and rates.mean() > 0
        for field in ("input_tokens", "output_tokens"):
            lo, width, p = servegen.length_hist(pool, field)
            assert p.sum() == pytest.approx(1.0) and np.all(np.diff(lo) >= width[:-1])
    # the bundled per-client rows add up to the pool's recorded total in every window
    c = servegen._clients()
    starts, rates = servegen.window_rates("deepseek-r1")
    total = np.zeros(len(starts))
    np.add.at(total, (c["start"] / WINDOW_S).astype(int), c["rate"])
    np.testing.assert_allclose(total, rates, atol=1e-5)
    # the record's own means (traces README): deepseek-r1 16.0 req/s, 1249 in / 1496 out
    assert servegen.mean_rate("deepseek-r1") == pytest.approx(16.0, abs=0.05)
    assert _hist_mean("deepseek-r1", "input_tokens") == pytest.approx(1249, rel=0.03)
    assert _hist_mean("deepseek-r1", "output_tokens") == pytest.approx(1496, rel=0.03)


def test_generate__seeded_sorted_starts_at_zero_and_named():
    a = servegen.generate("m-large", 3000, rate=5.0, start_s=1234.5, seed=3)
    b = servegen.generate("m-large", 3000, rate=5.0, start_s=1234.5, seed=3)
    c = servegen.generate("m-large", 3000, rate=5.0, start_s=1234.5, seed=4)
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    np.testing.assert_array_equal(a.prompt_tokens, b.prompt_tokens)
    assert not np.array_equal(a.arrival_s, c.arrival_s)
    assert len(a) == 3000 and a.arrival_s[0] == 0.0 and np.all(np.diff(a.arrival_s) >= 0)
    assert a.name == ("servegen m-large from 0.3429 h into its record, mean 5 req/s "
                      "(x0.0255 of recorded)")


@pytest.mark.parametrize("pool", ["m-mid", "deepseek-r1"])
def test_generate__arrivals_follow_the_scaled_window_rates(pool):
    # two hours from 3 h into the record: each 10-minute window's count is the recorded
    # rate times the scale times 600 s, within the counting noise (the windows' counts
    # move by up to 1.9x across these two hours)
    starts, rates = servegen.window_rates(pool)
    scale = 4.0 / servegen.mean_rate(pool)
    rng = np.random.default_rng(5)
    expect = rates[18:30] * scale * WINDOW_S
    got = []
    for i in range(18, 30):
        at = servegen._window(pool, i, scale, rng)
        assert np.all((at >= starts[i]) & (at < starts[i] + WINDOW_S))
        got.append(len(at))
    z = (np.asarray(got) - expect) / np.sqrt(expect)
    assert np.all(np.abs(z) < 4.5) and abs(z.sum() / math.sqrt(len(z))) < 4.5
    # and generate's trace runs at the scaled rates of the windows it covers
    tr = servegen.generate(pool, 20000, rate=4.0, start_s=18 * WINDOW_S, seed=6)
    w = int(tr.arrival_s[-1] // WINDOW_S) + 1
    assert (len(tr) - 1) / tr.arrival_s[-1] == pytest.approx(
        rates[18:18 + w].mean() * scale, rel=0.05)


def test_generate__rate_null_keeps_the_record_and_start_picks_the_window():
    starts, rates = servegen.window_rates("m-small")
    hi, lo = int(np.argmax(rates[:144])), int(np.argmin(rates[:144]))
    n = 20000
    peak = servegen.generate("m-small", n, rate=None, start_s=hi * WINDOW_S, seed=1)
    low = servegen.generate("m-small", n, rate=None, start_s=lo * WINDOW_S, seed=1)
    assert peak.name.endswith("recorded rates")
    assert (n - 1) / peak.arrival_s[-1] == pytest.approx(rates[hi], rel=0.05)
    assert (n - 1) / low.arrival_s[-1] == pytest.approx(rates[lo], rel=0.05)


def test_generate__wraps_around_the_end_of_the_record():
    record = 144 * WINDOW_S
    tr = servegen.generate("deepseek-r1", 4000, rate=2.0, start_s=record - 600, seed=2)
    # 10 minutes of the last window, then the record again from its start: no long gap
    assert len(tr) == 4000 and tr.arrival_s[-1] > 900
    assert np.max(np.diff(tr.arrival_s)) < 120
    same = servegen.generate("deepseek-r1", 4000, rate=2.0, start_s=2 * record - 600, seed=2)
    np.testing.assert_array_equal(tr.arrival_s, same.arrival_s)


@pytest.mark.parametrize("weibull, k, cv", [
    (False, 0.25, 2.0),
    (True, 0.7, math.sqrt(math.gamma(1 + 2 / 0.7) / math.gamma(1 + 1 / 0.7) ** 2 - 1)),
])
def test_renewal__a_client_keeps_its_family_shape_at_the_window_rate(weibull, k, cv):
    rng = np.random.default_rng(0)
    at = np.concatenate([servegen._renewal(weibull, k, 8.0, 0.5, w * WINDOW_S, rng)
                         for w in range(400)])
    gaps = np.diff(at)
    inside = gaps[(at[1:] // WINDOW_S) == (at[:-1] // WINDOW_S)]  # gaps within a window
    assert len(at) / (400 * WINDOW_S) == pytest.approx(0.5, rel=0.05)
    assert np.std(inside) / np.mean(inside) == pytest.approx(cv, rel=0.1)


def test_lengths__follow_the_pool_histogram():
    tr = servegen.generate("m-large", 100000, rate=100.0, seed=7)
    lo, width, p = servegen.length_hist("m-large", "input_tokens")
    b = np.searchsorted(lo, tr.prompt_tokens, side="right") - 1
    assert np.all(tr.prompt_tokens - lo[b] < width[b])  # every length lies in a bin
    assert tr.prompt_tokens.mean() == pytest.approx(_hist_mean("m-large", "input_tokens"),
                                                    rel=0.03)
    assert tr.output_tokens.mean() == pytest.approx(_hist_mean("m-large", "output_tokens"),
                                                    rel=0.03)
    assert tr.output_tokens.min() >= 1 and tr.prompt_tokens.min() >= 1
    # a share of the histogram's mass lands in each of its largest bins
    top = np.argsort(p)[-3:]
    for j in top:
        assert np.mean(b == j) == pytest.approx(p[j], abs=4 * math.sqrt(p[j] / 1e5))


def test_max_tokens__draws_only_requests_within_the_limit():
    free = servegen.generate("deepseek-r1", 5000, rate=3.0, seed=8)
    assert (free.prompt_tokens + free.output_tokens).max() > 8192
    cut = servegen.generate("deepseek-r1", 5000, rate=3.0, max_tokens=8192, seed=8)
    assert (cut.prompt_tokens + cut.output_tokens).max() <= 8192
    np.testing.assert_array_equal(free.arrival_s, cut.arrival_s)  # arrivals untouched
    ok = free.prompt_tokens + free.output_tokens <= 8192  # requests that fit: kept as drawn
    np.testing.assert_array_equal(cut.prompt_tokens[ok], free.prompt_tokens[ok])
    # a limit above every request changes nothing
    big = servegen.generate("deepseek-r1", 5000, rate=3.0, max_tokens=1 << 20, seed=8)
    np.testing.assert_array_equal(big.prompt_tokens, free.prompt_tokens)


@pytest.mark.parametrize("kw, msg", [
    (dict(pool="m-huge"), "workload.pool: 'm-huge' is not one of m-large, m-mid, m-small, "
                          "deepseek-r1"),
    (dict(num_requests=0), "workload.num_requests: 0 must be an int >= 1"),
    (dict(rate=0.0), "workload.rate: 0.0 must be a number > 0"),
    (dict(start_s=-1.0), "workload.start_s: -1.0 must be a number >= 0"),
    (dict(max_tokens=1), "workload.max_tokens: 1 must be an int >= 2"),
    (dict(max_tokens=2), "workload.max_tokens: 2 is shorter than almost every request"),
    (dict(rate=1e-9), "workload.rate: 10 requests at a mean of 1e-09 req/s would span"),
])
def test_generate__bad_arguments_name_the_field(kw, msg):
    args = dict(pool="m-small", num_requests=10, rate=1.0, start_s=0.0, max_tokens=None)
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(".", r"\.")):
        servegen.generate(**{**args, **kw})


@pytest.mark.parametrize("sets, msg", [
    ({}, "workload.pool: required for workload.kind=servegen; allowed: m-large, m-mid, "
         "m-small, deepseek-r1"),
    ({"pool": "m"}, "workload.pool: 'm' is not one of"),
    ({"pool": "m-mid", "start_s": -5}, "workload.start_s: -5.0 must be >= 0.0"),
    ({"pool": "m-mid", "max_tokens": 1}, "workload.max_tokens: 1 must be >= 2"),
])
def test_config__servegen_keys_are_checked(sets, msg):
    with pytest.raises(config.ConfigError, match=msg.replace("(", r"\(").replace(".", r"\.")):
        config.validate({"workload": {"kind": "servegen", **sets}})


def test_config__builds_the_trace_and_warns_of_keys_it_does_not_read():
    cfg = config.validate({"seed": 4, "workload": {"kind": "servegen", "pool": "m-mid",
                                                    "rate": None, "num_requests": 50,
                                                    "start_s": 7200, "max_tokens": 4096}})
    tr = config.build_trace(cfg)
    ref = servegen.generate("m-mid", 50, None, 7200.0, 4096, 4)
    np.testing.assert_array_equal(tr.arrival_s, ref.arrival_s)
    np.testing.assert_array_equal(tr.output_tokens, ref.output_tokens)
    with pytest.warns(config.ConfigWarning, match=r"workload.cv: not read with "
                                                  r"workload.kind=servegen"):
        config.validate({"workload": {"kind": "servegen", "pool": "m-mid", "cv": 3.0}})
    with pytest.warns(config.ConfigWarning, match=r"workload.pool, workload.start_s: not "
                                                  r"read with workload.kind=poisson"):
        config.validate({"workload": {"pool": "m-mid", "start_s": 60}})


def test_cli__simulate_a_servegen_workload(capsys):
    args = ["simulate", "--json", "--set", "workload.kind=servegen", "--set",
            "workload.pool=m-small", "--set", "workload.num_requests=60", "--set",
            "workload.rate=3", "--set", "max_num_seqs=16"]
    assert cli.main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["status"] == "ok" and res["completed"] == 60
    assert res["workload"].startswith("servegen m-small from 0 h into its record")
