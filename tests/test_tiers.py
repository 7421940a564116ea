"""Memory-tier and link presets: completeness, sources, lookup errors, and to_arrays."""

from __future__ import annotations

import json
import math
import pathlib
import re

import numpy as np
import pytest

from jaxsim import tiers

NUMERIC = ("capacity_gb", "read_gbps", "write_gbps", "latency_us", "static_power_w",
           "energy_pj_per_bit")
TIER_NAMES = ("dram", "dram_pcie4", "grace", "cxl", "nvm", "ssd", "ssd_gen4", "remote")
LINK_NAMES = ("pcie4", "pcie5", "nvlink_c2c", "nic_200g", "nic_400g")


def test_tiers__the_requested_presets_exist():
    assert set(TIER_NAMES) <= set(tiers.TIER_PRESETS)
    assert set(LINK_NAMES) <= set(tiers.LINK_PRESETS)
    for name, p in tiers.TIER_PRESETS.items():
        assert p.name == name
    for name, p in tiers.LINK_PRESETS.items():
        assert p.name == name


@pytest.mark.parametrize("name", sorted(tiers.TIER_PRESETS))
def test_tiers__preset_is_finite_positive_and_sourced(name):
    p = tiers.tier(name)
    assert p.description
    for f in ("read_gbps", "write_gbps", "latency_us", "capacity_gb"):
        v = getattr(p, f)
        assert isinstance(v, float) and math.isfinite(v) and v > 0, (f, v)
    assert p.link in tiers.LINK_PRESETS
    for f in NUMERIC:
        src = p.sources.get(f)
        assert isinstance(src, str) and len(src) > 10, (f, src)
    for f in ("static_power_w", "energy_pj_per_bit"):
        v = getattr(p, f)
        if math.isnan(v):
            assert "no source" in p.sources[f], (f, p.sources[f])
        else:
            assert math.isfinite(v) and v > 0 and "presets.json:" in p.sources[f]
    assert "default, not a measurement" in p.sources["capacity_gb"] or \
        "presets.json:" in p.sources["capacity_gb"]
    for f in ("read_gbps", "write_gbps", "latency_us"):
        assert "presets.json:" in p.sources[f], (f, p.sources[f])


@pytest.mark.parametrize("name", sorted(tiers.LINK_PRESETS))
def test_tiers__link_is_finite_positive_and_sourced(name):
    p = tiers.link(name)
    assert p.description
    assert math.isfinite(p.gbps) and p.gbps > 0
    assert "presets.json:" in p.sources["gbps"]


def test_tiers__derived_numbers_match_their_derivations():
    assert tiers.tier("dram").read_gbps == pytest.approx(614.4 * 0.75 / 8)  # 57.6
    assert tiers.tier("nvm").read_gbps == pytest.approx(9.85)
    assert tiers.tier("nvm").write_gbps == pytest.approx(3.475)
    assert tiers.tier("nvm").latency_us == pytest.approx(0.3255)
    assert tiers.tier("remote").read_gbps == pytest.approx(23.75)
    assert tiers.tier("remote").latency_us == pytest.approx(1.66)
    assert tiers.link("nic_200g").gbps == pytest.approx(24.25)
    assert tiers.link("nic_400g").gbps == pytest.approx(46.60, abs=0.01)
    # the device figures the brief fixes
    assert tiers.tier("cxl").read_gbps == 36.0
    assert tiers.tier("cxl").link == "pcie5"
    assert tiers.tier("ssd").read_gbps == 13.0 and tiers.tier("ssd").write_gbps == 6.6


def test_tiers__unknown_names_list_the_allowed_ones():
    with pytest.raises(ValueError, match="nope") as e:
        tiers.tier("nope")
    for n in tiers.TIER_PRESETS:
        assert n in str(e.value)
    with pytest.raises(ValueError, match="nope") as e:
        tiers.link("nope")
    for n in tiers.LINK_PRESETS:
        assert n in str(e.value)
    with pytest.raises(ValueError, match="allowed"):
        tiers.tier(None)
    with pytest.raises(ValueError, match="allowed"):
        tiers.tier("DRAM")


def test_tiers__presets_are_frozen_and_hashable():
    p = tiers.tier("dram")
    with pytest.raises(AttributeError):
        p.read_gbps = 1.0
    assert hash(p) == hash(tiers.tier("dram"))


# --------------------------------------------------------------------------------------
# to_arrays
# --------------------------------------------------------------------------------------


def test_to_arrays__tiers_behind_one_link_share_its_id():
    a = tiers.to_arrays(["dram", "cxl", "ssd", "remote"])
    assert a["names"] == ["dram", "cxl", "ssd", "remote"]
    np.testing.assert_array_equal(a["link_id"], [0, 0, 0, 1])
    assert a["link_id"].dtype == np.int32
    assert a["link_names"] == ["pcie5", "nic_400g"]
    assert a["link_bps"].dtype == np.float64 and a["link_bps"].shape == (4,)
    np.testing.assert_allclose(a["link_bps"][:2], [35.2e9, 43.4 * 2**30])
    assert np.all(np.isposinf(a["link_bps"][2:]))
    for k in ("capacity_bytes", "read_bps", "write_bps", "latency_s"):
        assert a[k].dtype == np.float64 and a[k].shape == (4,), k
    np.testing.assert_allclose(a["capacity_bytes"], [256e9, 256e9, 3840e9, 1024e9])
    np.testing.assert_allclose(a["read_bps"], [57.6e9, 36e9, 13e9, 23.75e9])
    np.testing.assert_allclose(a["write_bps"], [57.6e9, 36e9, 6.6e9, 23.75e9])
    np.testing.assert_allclose(a["latency_s"], [0.1e-6, 0.25e-6, 121e-6, 1.66e-6])


def test_to_arrays__ids_follow_first_appearance():
    a = tiers.to_arrays(["grace", "dram_pcie4", "ssd_gen4"])
    np.testing.assert_array_equal(a["link_id"], [0, 1, 1])
    assert a["link_names"] == ["nvlink_c2c", "pcie4"]
    np.testing.assert_allclose(a["link_bps"][:2], [375e9, 25.13e9])
    assert np.isposinf(a["link_bps"][2])
    a = tiers.to_arrays(["remote", "ssd", "dram"])
    np.testing.assert_array_equal(a["link_id"], [0, 1, 1])


def test_to_arrays__empty_and_single():
    a = tiers.to_arrays([])
    assert a["names"] == [] and a["link_bps"].shape == (0,) and a["link_id"].shape == (0,)
    a = tiers.to_arrays(("ssd",))
    np.testing.assert_array_equal(a["link_id"], [0])
    np.testing.assert_allclose(a["link_bps"], [35.2e9])


def test_to_arrays__overrides_apply_to_their_tier_only():
    before = tiers.tier("dram")
    a = tiers.to_arrays(["dram", "ssd"], {
        "dram": {"capacity_gb": 512, "read_gbps": 30.0, "latency_us": 0.0},
        "ssd": {"write_gbps": np.float32(3.5), "capacity_gb": 0.0},
    })
    np.testing.assert_allclose(a["capacity_bytes"], [512e9, 0.0])
    np.testing.assert_allclose(a["read_bps"], [30e9, 13e9])
    np.testing.assert_allclose(a["write_bps"], [57.6e9, 3.5e9])
    np.testing.assert_allclose(a["latency_s"], [0.0, 121e-6])
    assert tiers.tier("dram") == before and tiers.tier("dram").read_gbps == pytest.approx(57.6)
    # empty overrides and None give the presets
    b = tiers.to_arrays(["dram", "ssd"], {})
    c = tiers.to_arrays(["dram", "ssd"])
    for k in ("capacity_bytes", "read_bps", "write_bps", "latency_s", "link_bps"):
        np.testing.assert_array_equal(b[k], c[k])


@pytest.mark.parametrize("overrides, match", [
    ({"nope": {"read_gbps": 1.0}}, r"tier\.nope.*unknown tier.*allowed: dram, ssd"),
    ({"cxl": {"read_gbps": 1.0}}, r"tier\.cxl.*not among the tiers used.*dram, ssd"),
    ({"dram": {"bandwidth": 1.0}},
     r"tier\.dram\.bandwidth.*unknown field.*capacity_gb, read_gbps, write_gbps, latency_us"),
    ({"dram": {"link": "pcie4"}}, r"tier\.dram\.link.*unknown field"),
    ({"dram": {"read_gbps": 0.0}}, r"tier\.dram\.read_gbps = 0\.0.*> 0"),
    ({"ssd": {"write_gbps": 0}}, r"tier\.ssd\.write_gbps = 0.*> 0"),
    ({"dram": {"read_gbps": -5.0}}, r"tier\.dram\.read_gbps = -5\.0.*> 0"),
    ({"dram": {"read_gbps": float("inf")}}, r"tier\.dram\.read_gbps = inf.*finite"),
    ({"dram": {"capacity_gb": -1.0}}, r"tier\.dram\.capacity_gb = -1\.0.*>= 0"),
    ({"dram": {"capacity_gb": float("nan")}}, r"tier\.dram\.capacity_gb = nan.*finite"),
    ({"ssd": {"latency_us": -0.5}}, r"tier\.ssd\.latency_us = -0\.5.*>= 0"),
    ({"ssd": {"latency_us": float("inf")}}, r"tier\.ssd\.latency_us = inf.*finite"),
    ({"dram": {"read_gbps": "fast"}}, r"tier\.dram\.read_gbps = 'fast'.*number"),
    ({"dram": {"read_gbps": True}}, r"tier\.dram\.read_gbps = True.*number"),
    ({"dram": 5.0}, r"tier\.dram.*mapping of field"),
    ([("dram", {})], r"overrides must be a mapping"),
])
def test_to_arrays__bad_overrides_name_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiers.to_arrays(["dram", "ssd"], overrides)


def test_to_arrays__bad_names():
    with pytest.raises(ValueError, match=r"more than once.*dram"):
        tiers.to_arrays(["dram", "ssd", "dram"])
    with pytest.raises(ValueError, match=r"'nope'.*allowed: dram"):
        tiers.to_arrays(["dram", "nope"])
    with pytest.raises(ValueError, match="list of names"):
        tiers.to_arrays("dram")


# --------------------------------------------------------------------------------------
# Provenance: every presets.json key path cited exists, and cited values match it
# --------------------------------------------------------------------------------------

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_DATA = next((p for p in (_ROOT / "shared/data/presets.json",
                          _ROOT.parent / "shared/data/presets.json") if p.is_file()), None)
_REF = re.compile(r"presets\.json:([A-Za-z0-9_.]*[A-Za-z0-9_])"
                  r"(?: = ([0-9.]+)(?:-([0-9.]+))?)?")


def _all_sources():
    for p in tiers.TIER_PRESETS.values():
        for f, s in p.sources.items():
            yield f"tier.{p.name}.{f}", s
    for p in tiers.LINK_PRESETS.values():
        for f, s in p.sources.items():
            yield f"link.{p.name}.{f}", s


@pytest.mark.skipif(_DATA is None, reason="shared/data/presets.json is not available")
def test_tiers__cited_presets_json_paths_exist_and_agree():
    data = json.loads(_DATA.read_text())
    for where, text in _all_sources():
        refs = _REF.findall(text)
        urls_cited = 0
        for path, lo, hi in refs:
            node = data
            for part in path.split("."):
                assert isinstance(node, dict) and part in node, (where, path)
                node = node[part]
            assert isinstance(node, dict) and "value" in node, (where, path)
            url = node["source"].split()[0]
            urls_cited += url in text
            if lo:
                value = node["value"]
                want = [float(lo), float(hi)] if hi else float(lo)
                got = [float(v) for v in value] if isinstance(value, list) else value
                if got is None:
                    raise AssertionError(f"{where}: {path} is null in presets.json")
                assert got == pytest.approx(want), (where, path, got, want)
        if refs:
            assert urls_cited, (where, "no cited path's URL appears in the text")


def test_eviction_order_compares_scores_exactly():
    """§5.2: scores are compared as real numbers (float32 weights, integer counters),
    then larger depth, then smaller id. With w_rec = w_depth = 0.3 the score is
    0.3·(last − depth): entries with the same difference tie, whatever float32 rounding
    (or a fused multiply-add) makes of the products. Checked against exact fractions."""
    from fractions import Fraction

    import jax

    from jaxsim.prefix import _eviction_order

    rng = np.random.default_rng(5)
    K = 400
    last = rng.integers(0, 5000, K).astype(np.int32)
    hits = rng.integers(1, 40, K).astype(np.int32)
    depth = rng.integers(0, 60, K).astype(np.int32)
    ids = rng.permutation(10 * K)[:K].astype(np.int32)
    order = jax.jit(_eviction_order)
    for w in ((0.3, 0.0, 0.3), (1 / 3, 0.7, 0.1), (0.1, 0.2, 0.3), (1.0, 0.0, 1.0),
              (0.01, 0.0, 0.01), (0.0, 0.0, 0.0), (2.5e-3, 7.0, 0.3)):
        fw = [Fraction(float(np.float32(x))) for x in w]
        exact = sorted(range(K), key=lambda i: (
            fw[0] * int(last[i]) + fw[1] * int(hits[i]) - fw[2] * int(depth[i]),
            -int(depth[i]), int(ids[i])))
        got = np.asarray(order(ids, last, hits, depth, *map(np.float32, w)))
        assert got.tolist() == exact, w
