"""Design spaces: parsing, errors before anything runs, decoding, samplers."""

from __future__ import annotations

import os

import numpy as np
import pytest
import yaml

from search import samplers, space
from search.space import SpaceError

HERE = os.path.dirname(__file__)
TINY = os.path.join(HERE, "data", "tiny_space.yaml")


def _raw():
    with open(TINY) as f:
        return yaml.safe_load(f)


def test_tiny_space_grid():
    sp = space.load(TINY)
    assert sp.size == 3 * 3 * 2
    assert sp.levels == (3, 3, 0)
    u = sp.sample(np.arange(sp.size))
    cols = sp.decode_columns(u)
    # lexicographic, last axis fastest
    assert list(cols["max_num_seqs"][:6]) == [2] * 6
    assert list(cols["max_num_batched_tokens"][:6]) == [256, 256, 512, 512, 1024, 1024]
    np.testing.assert_allclose(cols["workload.rate"][:2], [10.0, 40.0])
    # every grid point once
    keys = {tuple(str(cols[k][i]) for k in cols) for i in range(sp.size)}
    assert len(keys) == sp.size


def test_encode_decode_roundtrip():
    sp = space.load(TINY)
    vals = {"max_num_seqs": 4, "max_num_batched_tokens": 1024, "workload.rate": 17.5}
    cols = sp.decode_columns(sp.point(vals)[None])
    assert cols["max_num_seqs"][0] == 4 and cols["max_num_batched_tokens"][0] == 1024
    assert cols["workload.rate"][0] == pytest.approx(17.5)


def test_constraint_mask():
    sp = space.load(TINY)
    cfgs = sp.configs(sp.sample(np.arange(sp.size)))
    ok = sp.constraint_mask(cfgs)
    expect = [c["max_num_batched_tokens"] >= 64 * c["max_num_seqs"] for c in cfgs]
    assert list(ok) == expect
    assert 0 < ok.sum() < len(ok)


def test_int_axis_levels_and_units():
    ax = space.axis_from_spec("max_num_seqs", {"kind": "int", "low": 8, "high": 256, "log": True})
    assert ax.values == (8, 16, 32, 64, 128, 256)
    ax = space.axis_from_spec("max_num_seqs", {"kind": "int", "low": 16, "high": 64, "step": 16})
    assert ax.values == (16, 32, 48, 64)
    ax = space.axis_from_spec("slo.ttft_s", {"kind": "float", "low": 200, "high": 800,
                                             "unit": "ms"})
    assert (ax.low, ax.high) == pytest.approx((0.2, 0.8))
    ax = space.axis_from_spec("workload.rate", {"values": [60, 120], "unit": "req/min"})
    assert ax.values == pytest.approx((1.0, 2.0))
    ax = space.axis_from_spec("workload.rate", {"kind": "float", "low": 1, "high": 16,
                                                "log": True, "num": 5, "discrete": True})
    assert ax.kind == "choice" and ax.values == pytest.approx((1.0, 2.0, 4.0, 8.0, 16.0))


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d["axes"].update({"max_num_seq": [1, 2]}), "max_num_seq: unknown key"),
    (lambda d: d["axes"].update({"max_num_seqs": []}), "axes.max_num_seqs.values"),
    (lambda d: d["axes"].update({"tp": [1, 8, 16]}), "axes.tp: tp: 16 must be <= 8"),
    (lambda d: d["axes"].update({"block_size": {"kind": "int", "low": 32, "high": 16}}),
     "low=32 > high=16"),
    (lambda d: d.update({"constraints": ["max_num_seqs > 1000"]}), "constraints[0]"),
    (lambda d: d.update({"constraints": ["max_num_seq > 1"]}), "not a configuration key"),
    (lambda d: d.update({"constraints": ["max_num_seqs +"]}), "not a valid expression"),
    (lambda d: d.update({"constraints": ["__import__('os')"]}), "uses Call"),
    (lambda d: d["axes"].update({"slo.ttft_s": {"kind": "float", "low": 1, "high": 2,
                                                "num": 2, "unit": "sec"}}),
     "slo.ttft_s.unit: 'sec' is not one of s, ms, us"),
    (lambda d: d["axes"].update({"max_num_seqs": {"values": [2, 4], "unit": "ms"}}),
     "has no unit"),
    (lambda d: d["axes"].update({"workload.rate": {"kind": "float", "low": 1, "high": 2}}),
     "num: required by the grid sampler"),
    (lambda d: d.update({"sampler": "sobol"}), "sampler: 'sobol' is not one of"),
    (lambda d: d.update({"sampler": "random"}), "num_samples"),
    (lambda d: d.update({"axex": {}}), "axex: unknown key"),
    (lambda d: d["axes"].update({"gpu": ["H100-SXM", "H999"]}), "axes.gpu: gpu"),
    (lambda d: d["axes"].update({"tp": {"kind": "int", "low": 1, "high": 4, "setp": 1}}),
     "axes.tp.setp: unknown axis field"),
    (lambda d: d["base"].update({"max_num_seqs": -1}), "base.max_num_seqs"),
    (lambda d: d.update({"axes": {}}), "axes:"),
    (lambda d: d.update({"num_samples": 5}), "num_samples: 5 is for the random and halton"),
    (lambda d: d["axes"].update({"max_num_seqs": {"kind": "int", "low": 1, "high": 10**10}}),
     "axes.max_num_seqs: more than 100,000 levels from low=1 to high=10000000000; use a "
     "larger step"),
    (lambda d: d["axes"].update({"max_num_seqs": {"kind": "int", "low": 1, "high": 10**6,
                                                  "log": True, "num": 10**6}}),
     "more than 100,000 levels"),
    # mistakes that were taken silently: a level twice, fields the axis does not read,
    # and log-spaced integers that round to fewer levels than asked for
    (lambda d: d["axes"].update({"max_num_seqs": {"kind": "int", "values": [1, 2, 2]}}),
     "axes.max_num_seqs.values: [1, 2, 2] has duplicates"),
    (lambda d: d["axes"].update({"max_num_seqs": {"kind": "int", "values": [1, 2],
                                                  "low": 100}}),
     "axes.max_num_seqs.low: not used with values"),
    (lambda d: d["axes"].update({"workload.rate": {"kind": "float", "low": 1, "high": 2,
                                                   "num": 2, "values": [1.5]}}),
     "axes.workload.rate.values: not used by a float axis"),
    (lambda d: d["axes"].update({"max_num_seqs": {"kind": "int", "low": 1, "high": 8,
                                                  "discrete": True}}),
     "axes.max_num_seqs.discrete: only for float axes"),
    (lambda d: d["axes"].update({"max_num_seqs": {"kind": "int", "low": 1, "high": 8,
                                                  "log": True, "num": 8}}),
     "axes.max_num_seqs.num: 8 log-spaced integers from 1 to 8 round to only 6 distinct "
     "levels (1, 2, 3, 4, 6, 8); use num: 6"),
])
def test_space_errors_name_the_field(mutate, needle):
    d = _raw()
    mutate(d)
    with pytest.raises(SpaceError) as e:
        space.from_dict(d)
    assert needle in str(e.value), str(e.value)


def test_float_axes_decode_within_their_bounds():
    """exp(log(0.1)) is 0.10000000000000002: the grid's top level of a log axis failed a
    constraint at the declared bound (workload.rate <= 0.1)."""
    for lo, hi, log in ((0.01, 0.1, True), (0.1, 0.3, False), (3.0, 7.0, True),
                        (1e-3, 0.7, True)):
        ax = space.axis_from_spec("workload.rate", {"kind": "float", "low": lo, "high": hi,
                                                    "log": log, "num": 2})
        x = ax.decode(np.linspace(0.0, 1.0, 1001))
        assert x.min() >= lo and x.max() <= hi and x[-1] == hi and x[0] == lo
    d = _raw()
    d["axes"] = {"workload.rate": {"kind": "float", "low": 0.01, "high": 0.1, "log": True,
                                   "num": 2}}
    d["constraints"] = ["workload.rate <= 0.1"]
    sp = space.from_dict(d)
    assert sp.constraint_mask(sp.configs(sp.sample(np.arange(sp.size)))).tolist() == [
        True, True]


def test_space_file_errors(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("axes: [1, 2\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        space.load(str(p))
    with pytest.raises(SpaceError, match="no such file"):
        space.load(str(tmp_path / "missing.yaml"))


def test_samplers_depend_only_on_id():
    ids = np.arange(1000)
    for fn in (samplers.random, samplers.halton):
        a = fn(ids, 5, seed=3)
        b = np.concatenate([fn(ids[:137], 5, seed=3), fn(ids[137:], 5, seed=3)])
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(fn(ids[::-1], 5, seed=3), a[::-1])
        assert a.min() >= 0.0 and a.max() < 1.0
        assert not np.array_equal(fn(ids, 5, seed=4), a)


def test_halton_is_more_uniform_than_random():
    """Star-discrepancy proxy: worst error of box counts [0, x) x [0, y) on a grid."""
    n = 1024
    def disc(p):
        xs = np.linspace(0.05, 1.0, 20)
        err = 0.0
        for x in xs:
            for y in xs:
                frac = np.mean((p[:, 0] < x) & (p[:, 1] < y))
                err = max(err, abs(frac - x * y))
        return err
    h = samplers.halton(np.arange(n), 2, seed=0)
    r = samplers.random(np.arange(n), 2, seed=0)
    assert disc(h) < 0.5 * disc(r)
    assert abs(h.mean() - 0.5) < 0.01


def test_random_space_size_and_digest():
    d = _raw()
    d.update({"sampler": "halton", "num_samples": 100})
    d["axes"]["workload.rate"].pop("num")
    sp = space.from_dict(d)
    assert sp.size == 100
    u = sp.sample(np.arange(100))
    assert u.shape == (100, 3)
    d2 = dict(d, seed=1)
    assert space.from_dict(d2).digest() != sp.digest()
    with pytest.raises(SpaceError, match="ids must lie"):
        sp.sample(np.array([100]))


def _cross(**axes):
    """A space whose tiers axis depends on its enable_prefix_caching axis."""
    return {"base": {"model": "Llama-3.1-8B", "gpu": "H100-SXM", "cost_preset": "uncalibrated",
                     "workload": {"kind": "poisson", "rate": 20, "num_requests": 8,
                                  "prompt_tokens": 64, "output_tokens": 8}},
            "axes": axes or {"enable_prefix_caching": [False, True], "tiers": ["", "dram"]}}


def test_cross_axis_levels_kept_invalid_points_have_a_reason():
    """tiers: dram is invalid on the base alone (no prefix caching) but valid with
    enable_prefix_caching: true: the space loads; only the invalid combination carries
    the validation message, and its configuration shows the point's own levels."""
    sp = space.from_dict(_cross())
    cfgs, reasons = sp.expand(sp.sample(np.arange(sp.size)))
    shown = [(c["enable_prefix_caching"], c["tiers"]) for c in cfgs]
    assert shown == [(False, []), (False, ["dram"]), (True, []), (True, ["dram"])]
    assert [r is None for r in reasons] == [True, False, True, True]
    assert reasons[1] == ("tiers: dram needs enable_prefix_caching: true (lower tiers hold "
                          "evicted prefix-cache blocks)")
    with pytest.raises(SpaceError, match="point 1: tiers: dram needs"):
        sp.configs(sp.sample(np.arange(sp.size)))
    assert sp.stand_in in sp.probe_configs
    # the other order of axes, and a third axis, change nothing
    d = _cross(tiers=["", "dram"], max_num_seqs=[2, 4], enable_prefix_caching=[False, True])
    sp = space.from_dict(d)
    cfgs, reasons = sp.expand(sp.sample(np.arange(sp.size)))
    bad = [(c["tiers"], c["enable_prefix_caching"]) for c, r in zip(cfgs, reasons, strict=True)
           if r]
    assert bad == [(["dram"], False)] * 2


def test_point_accepts_the_normalised_values_the_results_hold():
    """Results store a level as validated (tiers "dram" -> ["dram"]); ``point`` maps it
    back to the level, so ``jaxsim best --why`` can find the winner's coordinates."""
    sp = space.from_dict(_cross())
    u = sp.sample(np.arange(sp.size))
    cfgs, _ = sp.expand(u)
    for i, c in enumerate(cfgs):
        got = sp.point({a.key: c[a.key] for a in sp.axes})
        assert np.allclose(got, u[i]), (i, c["tiers"])
    assert np.allclose(sp.point({"enable_prefix_caching": True, "tiers": "dram"}), u[3])
    with pytest.raises(SpaceError, match="axes.tiers: 'ssd' is not one of its values"):
        sp.point({"enable_prefix_caching": True, "tiers": "ssd"})


def test_cross_axis_batch_marks_invalid_lanes_infeasible():
    """An invalid combination becomes an infeasible lane (INF_CONSTRAINT, the path of
    constraint violators): a valid stand-in fills its parameters, its memory figures are
    NaN; the batch keeps the point's own configuration and reason."""
    from jaxsim import status as st_bits
    from search import runner

    sp = space.from_dict(_cross())
    plan = runner.make_plan(sp, chunk_size=4)
    b = runner.build_batch(sp, plan, np.arange(4))
    status0 = np.asarray(b.params.status0)
    assert status0[1] == st_bits.INFEASIBLE | st_bits.INF_CONSTRAINT
    assert not np.any(status0[[0, 2, 3]] & st_bits.INF_CONSTRAINT)
    assert list(b.constraint_ok) == [True, False, True, True]
    assert np.isnan(b.info["kv_gb"][1]) and np.all(np.isfinite(b.info["kv_gb"][[0, 2, 3]]))
    assert b.cfgs[1]["tiers"] == ["dram"] and not b.cfgs[1]["enable_prefix_caching"]
    assert b.reasons[1].startswith("tiers: dram needs") and b.reasons[0] is None


@pytest.mark.parametrize("axes, needle", [
    # invalid whatever the other axes are: still refused up front, with the same message
    ({"enable_prefix_caching": [False, True], "tiers": ["", "drma"]},
     "axes.tiers: tiers: 'drma' is not a tier preset; allowed: dram"),
    ({"enable_prefix_caching": [False, True], "tiers": ["", "dram"], "max_num_seqs": [4, -1]},
     "axes.max_num_seqs: max_num_seqs: -1 must be >= 1"),
    ({"enable_prefix_caching": [False, True], "tiers": ["", "dram"],
      "max_num_seqs": [4, "eight"]}, "axes.max_num_seqs: max_num_seqs: 'eight'"),
    # a level valid with no level of the other axes
    ({"enable_prefix_caching": [False], "tiers": ["", "dram"]},
     "axes.tiers: tiers: dram needs enable_prefix_caching: true"),
])
def test_level_invalid_whatever_the_other_axes_refused(axes, needle):
    with pytest.raises(SpaceError) as e:
        space.from_dict(_cross(**axes))
    assert str(e.value).startswith(needle) and "\n" not in str(e.value), str(e.value)


def test_space_with_no_valid_point_refused():
    """Each level is valid on the base, but no combination is."""
    d = _cross(enable_prefix_caching=[False], tiers=["dram", "ssd"])
    d["base"]["enable_prefix_caching"] = True
    with pytest.raises(SpaceError) as e:
        space.from_dict(d)
    msg = str(e.value)
    assert msg.startswith("axes: no combination of levels is a valid configuration at any "
                          "of ") and "needs enable_prefix_caching: true" in msg, msg


def test_three_part_tier_keys_are_axes():
    """``tier.dram.capacity_gb`` and other keys three deep are ordinary axes: each point
    sets the nested field (the key is not cut to ``tier.dram``), the batch carries each
    lane's capacity, and the results table shows the axis value."""
    from search import runner

    d = _cross(**{"tier.dram.capacity_gb": {"kind": "float", "low": 0, "high": 8, "num": 2},
                  "tier.dram.read_gbps": [10, 20]})
    d["base"].update(enable_prefix_caching=True, tiers="dram")
    sp = space.from_dict(d)
    cfgs = sp.configs(sp.sample(np.arange(sp.size)))
    got = [(c["tier"]["dram"]["capacity_gb"], c["tier"]["dram"]["read_gbps"]) for c in cfgs]
    assert got == [(0.0, 10), (0.0, 20), (8.0, 10), (8.0, 20)]
    b = runner.build_batch(sp, runner.make_plan(sp, chunk_size=4), np.arange(4))
    cap = np.asarray(b.params.cache.capacity_blocks)[:, 1]  # [:, 0] is HBM
    assert cap[0] == cap[1] == 0 and cap[2] == cap[3] > 0
    rows = runner.rows_from_chunk(sp, b, {"status": np.zeros(4, np.int32)})
    assert rows["tier.dram.capacity_gb"] == [0.0, 0.0, 8.0, 8.0]
    # a key whose middle is not a mapping in the base is refused, naming it
    d["base"]["tier"] = {"dram": 5}
    with pytest.raises(SpaceError, match=r"base\.tier\.dram: 5 must be a mapping"):
        space.from_dict(d)


def test_a_choice_axis_refuses_grid_fields():
    with pytest.raises(space.SpaceError, match=r"^axes.max_num_seqs.num: not used by a "
                                               r"choice axis"):
        space.axis_from_spec("max_num_seqs", {"values": [1, 2], "num": 3})
