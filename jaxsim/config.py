"""Host-side configuration: defaults, validation with clear errors, and ``SimParams``.

A configuration is a nested dict (the YAML schema; see README "Configuration"). Every
key is validated: unknown keys and bad values raise :class:`ConfigError` with a one-line
message naming the field, the value and what is allowed. :func:`params_from_columns`
turns one or many configurations (as columns: one value per lane) into a batched
``SimParams``, deriving the KV capacity from memory and marking infeasible lanes with
status bits instead of raising.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import yaml

from jaxsim import costpresets, presets, servegen
from jaxsim import status as st_bits
from jaxsim.params import (
    COST_ALIASES,
    COST_PARAM_NAMES,
    COST_SPEC,
    MAX_SPEC_TOKENS,
    MODEL_EXTRA_FIELDS,
    SMOOTH_P_CHOICES,
    CacheParams,
    CostParams,
    HardwareParams,
    ModelParams,
    SchedulerParams,
    SimParams,
    SpecParams,
    expand_cost_aliases,
    spec_accept_units,
)
from jaxsim.replicas import ROUTERS
from jaxsim.workload import (
    ARRIVAL_KINDS,
    ArrivalSpanError,
    Trace,
    multi_turn_sessions,
    sample_lengths,
    synthetic,
)


class ConfigWarning(UserWarning):
    """A configuration key that is valid but has no effect (e.g. ``workload.cv`` with
    ``workload.kind: poisson``)."""


class ConfigError(ValueError):
    """A bad configuration value; the message names the field, the value, what is allowed."""


def tp_fits_heads(tp: int, num_heads: int, num_kv_heads: int) -> bool:
    """Whether ``tp`` GPUs can split the attention heads (vLLM's rule): it divides the
    heads, and divides the KV heads or is a multiple of them (they are replicated)."""
    return num_heads % tp == 0 and (num_kv_heads % tp == 0 or tp % num_kv_heads == 0)


DEFAULTS: dict[str, Any] = {
    "model": "Llama-3.1-8B",
    "gpu": "H100-SXM",
    "tp": 1,
    "num_replicas": 1,
    "router": "round_robin",
    "dtype": "bf16",
    "kv_cache_dtype": "auto",
    "scheduler": "v1",
    "enable_chunked_prefill": True,
    "max_num_seqs": 256,
    "max_num_batched_tokens": 2048,
    "long_prefill_token_threshold": 0,
    "scheduler_reserve_full_isl": True,
    "async_scheduling": False,
    "scheduling_policy": "fcfs",
    "block_size": 16,
    "gpu_memory_utilization": 0.9,
    "num_gpu_blocks": None,
    "watermark": None,
    "max_model_len": None,
    "activation_reserve_gb": None,
    "seed": 0,
    "max_slots": None,
    "max_iterations": None,
    "slo": {"ttft_s": 1.0, "tpot_s": 0.05},
    "cost_preset": "auto",
    "cost_shape_tables": True,
    "cost_engine_fit": False,
    "cost": {},
    "enable_prefix_caching": False,
    "preemption_mode": "recompute",
    "tiers": [],
    "tier": {},
    "cache": {"recency_weight": 1.0, "frequency_weight": 0.0, "depth_weight": 0.0,
              "load_overlap": 0.0, "admission_weight": 0.0, "admission_window": 32,
              "prefetch": False},
    "disaggregation": {"enabled": False, "prefill_replicas": 1, "decode_replicas": 1,
                       "kv_link_gbs": 23.75, "kv_link_latency_us": 2.26},
    "speculative": {"num_tokens": 0, "acceptance": 0.7, "method": "ngram",
                    "draft_model": None},
    "workload": {
        "kind": "poisson",
        "rate": 10.0,
        "num_requests": 1000,
        "prompt_tokens": 512,
        "output_tokens": 256,
        "cv": 2.0,
        "path": None,
        "format": None,
        "sessions": None,
        "turns": 4,
        "new_tokens": 256,
        "think_time_s": 30.0,
        "hash_block_tokens": 512,
        "pool": None,
        "start_s": 0.0,
        "max_tokens": None,
        "priority_mix": None,
    },
}

TRACE_FORMATS = ("azure", "mooncake", "csv")

#: The workload keys each kind reads (``path`` and ``format`` elsewhere are refused).
WORKLOAD_READS = {
    "poisson": ("rate", "num_requests", "prompt_tokens", "output_tokens"),
    "gamma": ("rate", "num_requests", "prompt_tokens", "output_tokens", "cv"),
    "all_at_once": ("num_requests", "prompt_tokens", "output_tokens"),
    "trace": ("path", "format", "rate", "num_requests"),
    "sessions": ("rate", "num_requests", "sessions", "turns", "prompt_tokens", "new_tokens",
                 "output_tokens", "think_time_s", "hash_block_tokens"),
    "servegen": ("pool", "rate", "num_requests", "start_s", "max_tokens"),
}
#: ``workload`` keys every kind reads.
WORKLOAD_READS = {k: (*v, "priority_mix") for k, v in WORKLOAD_READS.items()}


# --------------------------------------------------------------------------------------
# Scalar validators
# --------------------------------------------------------------------------------------


def _int(key, v, lo=None, hi=None, allow_none=False):
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, int | np.integer):
        if isinstance(v, float | np.floating) and float(v).is_integer():
            v = int(v)  # 2.0, and numpy's float32(2.0) as float64(2.0) (a float subclass)
        else:
            raise ConfigError(f"{key}: {v!r} is not an integer")
    v = int(v)
    if lo is not None and v < lo:
        raise ConfigError(f"{key}: {v} must be >= {lo}")
    if hi is not None and v > hi:
        raise ConfigError(f"{key}: {v} must be <= {hi}")
    return v


def _float(key, v, lo=None, hi=None, lo_open=False, hi_open=False, allow_none=False):
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float | np.number):
        raise ConfigError(f"{key}: {v!r} is not a number")
    v = float(v)
    if not math.isfinite(v):
        raise ConfigError(f"{key}: {v!r} must be a finite number")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ConfigError(f"{key}: {v} must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and (v >= hi if hi_open else v > hi):
        raise ConfigError(f"{key}: {v} must be {'<' if hi_open else '<='} {hi}")
    return v


def _bool(key, v):
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise ConfigError(f"{key}: {v!r} must be true or false")


def _choice(key, v, allowed):
    if not isinstance(v, str) or v not in allowed:
        raise ConfigError(f"{key}: {v!r} is not one of {', '.join(allowed)}")
    return v


def _model(key, v):
    try:
        return presets.model(v)[0]
    except KeyError as e:
        raise ConfigError(f"{key}: {e.args[0]}") from None


def _gpu(key, v):
    try:
        return presets.gpu(v)[0]
    except KeyError as e:
        raise ConfigError(f"{key}: {e.args[0]}") from None


#: The largest tensor-parallel degree: one node of eight GPUs. The all-reduce model uses
#: the GPU's intra-node link (presets.json ``link_bw_gbs``, an 8-GPU NVSwitch figure);
#: tensor parallelism across nodes is not modelled.
MAX_TP = 8
#: Data-parallel replicas of one configuration (each a lane of its own, §7); routers in
#: ``jaxsim.replicas.ROUTERS``.
MAX_REPLICAS = 1024


def _tp(key, v):
    v = _int(key, v, 1)
    if v > MAX_TP:
        raise ConfigError(
            f"{key}: {v} must be <= {MAX_TP} (tensor parallelism within one node of "
            f"{MAX_TP} GPUs; the all-reduce model uses the GPU's intra-node link, and "
            "multi-node tensor parallelism is not modelled)")
    return v


_TOP = {
    "model": _model,
    "gpu": _gpu,
    "tp": _tp,
    "num_replicas": lambda k, v: _int(k, v, 1, MAX_REPLICAS),
    "router": lambda k, v: _choice(k, v, ROUTERS),
    "dtype": lambda k, v: _choice(k, v, ("bf16", "fp8")),
    "kv_cache_dtype": lambda k, v: _choice(k, v, ("auto", "fp8")),
    "scheduler": lambda k, v: _choice(k, v, ("v1", "v0")),
    "enable_chunked_prefill": lambda k, v: None if v is None else _bool(k, v),
    "max_num_seqs": lambda k, v: _int(k, v, 1, 1 << 14),
    "max_num_batched_tokens": lambda k, v: _int(k, v, 1, 1 << 18),
    "long_prefill_token_threshold": lambda k, v: _int(k, v, 0, 1 << 24),
    "scheduler_reserve_full_isl": _bool,
    "async_scheduling": _bool,
    "scheduling_policy": lambda k, v: _choice(k, v, ("fcfs", "priority")),
    "block_size": lambda k, v: _int(k, v, 1, 1 << 12),
    "gpu_memory_utilization": lambda k, v: _float(k, v, 0.0, 1.0, lo_open=True),
    "num_gpu_blocks": lambda k, v: _int(k, v, 1, 1 << 30, allow_none=True),
    "watermark": lambda k, v: _float(k, v, 0.0, 1.0, hi_open=True, allow_none=True),
    "max_model_len": lambda k, v: _int(k, v, 2, 1 << 24, allow_none=True),
    "activation_reserve_gb": lambda k, v: _float(k, v, 0.0, 1e9, allow_none=True),
    "seed": lambda k, v: _int(k, v, 0, 2**32 - 1),
    "max_slots": lambda k, v: _int(k, v, 1, 1 << 16, allow_none=True),
    "max_iterations": lambda k, v: _int(k, v, 1, 2**31 - 1, allow_none=True),
    "cost_preset": lambda k, v: _cost_preset(k, v),
    "cost_shape_tables": _bool,
    "cost_engine_fit": _bool,
    "enable_prefix_caching": _bool,
    "preemption_mode": lambda k, v: _preemption_mode(k, v),
    "tiers": lambda k, v: _tier_list(k, v),
}

TIER_FIELDS = ("capacity_gb", "read_gbps", "write_gbps", "latency_us", "static_power_w",
               "energy_pj_per_bit")
_CACHE = {
    # bounded so that a weight stays finite in float32 (1e300 was inf: another policy)
    "recency_weight": lambda k, v: _float(k, v, 0.0, 1e30),
    "frequency_weight": lambda k, v: _float(k, v, 0.0, 1e30),
    "depth_weight": lambda k, v: _float(k, v, 0.0, 1e30),
    "load_overlap": lambda k, v: _float(k, v, 0.0, 1.0),
    "admission_weight": lambda k, v: _float(k, v, 0.0, 1e30),
    "admission_window": lambda k, v: _int(k, v, 1, 4096),
    "prefetch": _bool,
}


#: Disaggregated prefill and decode (docs/semantics.md §8). The KV link's defaults are one
#: 400 Gb/s NIC per GPU at Mooncake's measured transfer-engine rate (190 GB/s over eight
#: 400 Gb/s RoCE NICs, FAST'25) and the measured InfiniBand latency of a 4 KB message
#: (presets.json links.mooncake_transfer_engine and links.rdma_latency).
_DISAGG = {
    "enabled": _bool,
    "prefill_replicas": lambda k, v: _int(k, v, 1, MAX_REPLICAS),
    "decode_replicas": lambda k, v: _int(k, v, 1, MAX_REPLICAS),
    "kv_link_gbs": lambda k, v: _float(k, v, 0.0, 1e6, lo_open=True),
    "kv_link_latency_us": lambda k, v: _float(k, v, 0.0, 1e9),
}
#: Speculative decoding (docs/semantics.md §9): vLLM's --speculative-config.
SPEC_METHODS = ("ngram", "eagle", "draft_model")


def _draft_model(key, v):
    if v is None:
        return None
    try:
        return presets.model(v)[0]
    except KeyError:
        raise ConfigError(f"{key}: {v!r} is not a model preset; allowed: "
                          f"{', '.join(presets.model_names())}") from None


_SPEC = {
    "num_tokens": lambda k, v: _int(k, v, 0, MAX_SPEC_TOKENS),
    "acceptance": lambda k, v: _float(k, v, 0.0, 1.0),
    "method": lambda k, v: _choice(k, v, SPEC_METHODS),
    "draft_model": _draft_model,
}
SECTIONS = ("slo", "workload", "cost", "cache", "disaggregation", "speculative")


def _preemption_mode(key, v):
    return _choice(key, v, ("recompute", "swap"))


def _tier_list(key, v):
    from jaxsim import tiers as tiers_mod

    if v is None or v == "":
        return []
    names = [x.strip() for x in v.split(",")] if isinstance(v, str) else v
    if not isinstance(names, list | tuple) or not all(isinstance(x, str) for x in names):
        raise ConfigError(f"{key}: {v!r} must be a comma-separated list of tier presets "
                          f"({', '.join(tiers_mod.TIER_PRESETS)})")
    if len(names) > 5:
        raise ConfigError(f"{key}: {len(names)} tiers; at most 5 below HBM")
    for n in names:
        if n not in tiers_mod.TIER_PRESETS:
            raise ConfigError(f"{key}: {n!r} is not a tier preset; allowed: "
                              f"{', '.join(tiers_mod.TIER_PRESETS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{key}: {v!r} lists a tier twice")
    return list(names)


def _tier_overrides(key, v) -> dict:
    from jaxsim import tiers as tiers_mod

    if not isinstance(v, Mapping):
        raise ConfigError(f"{key}: {v!r} must be a mapping tier name -> fields")
    out: dict = {}
    for name, fields in v.items():
        if name not in tiers_mod.TIER_PRESETS:
            raise ConfigError(f"{key}.{name}: unknown tier preset; allowed: "
                              f"{', '.join(tiers_mod.TIER_PRESETS)}")
        if not isinstance(fields, Mapping):
            raise ConfigError(f"{key}.{name}: {fields!r} must be a mapping of "
                              f"{', '.join(TIER_FIELDS)}")
        for f, x in fields.items():
            k = f"{key}.{name}.{f}"
            if f not in TIER_FIELDS:
                raise ConfigError(f"{k}: unknown field; allowed: "
                                  f"{', '.join(f'{key}.{name}.{g}' for g in TIER_FIELDS)}")
            bw = f in ("read_gbps", "write_gbps")
            # bounded so that a capacity in blocks, a time or an energy stays representable
            out.setdefault(name, {})[f] = _float(k, x, TIER_BW_MIN_GBPS if bw else 0.0, 1e9)
    return out


def _cost_preset(key, v):
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{key}: {v!r} must be 'auto', 'uncalibrated', a shipped preset "
                          "name or a path to a preset JSON")
    return v
_SLO = {
    "ttft_s": lambda k, v: _float(k, v, 0.0, 1e30, lo_open=True),
    "tpot_s": lambda k, v: _float(k, v, 0.0, 1e30, lo_open=True),
}


_NO_DRAW = np.random.default_rng(0)


def _length_spec(key, v):
    if isinstance(v, Mapping):  # checked now, even where the workload kind ignores it
        try:
            sample_lengths(v, 0, _NO_DRAW, key)  # draws nothing
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return dict(v)
    return _int(key, v, 1, 1 << 30)  # the limit of a distribution's values and a trace's


_WORKLOAD = {
    "kind": lambda k, v: _choice(k, v, (*ARRIVAL_KINDS, "trace", "sessions", "servegen")),
    "rate": lambda k, v: _float(k, v, 0.0, lo_open=True, allow_none=True),
    "num_requests": lambda k, v: _int(k, v, 1, 1 << 24, allow_none=True),
    "prompt_tokens": _length_spec,
    "output_tokens": _length_spec,
    "cv": lambda k, v: _float(k, v, 1e-3, 1e3),
    "path": lambda k, v: None if v is None else str(v),
    "format": lambda k, v: None if v is None else _choice(k, v, TRACE_FORMATS),
    "sessions": lambda k, v: _int(k, v, 1, 1 << 22, allow_none=True),
    "turns": _length_spec,
    "new_tokens": _length_spec,
    "think_time_s": lambda k, v: _float(k, v, 0.0, 1e8),  # the arrival span limit
    "hash_block_tokens": lambda k, v: _int(k, v, 1, 1 << 20),
    "pool": lambda k, v: None if v is None else _choice(k, v, tuple(servegen.POOLS)),
    "start_s": lambda k, v: _float(k, v, 0.0, 1e8),
    "max_tokens": lambda k, v: _int(k, v, 2, 1 << 30, allow_none=True),
    "priority_mix": lambda k, v: _priority_mix(k, v),
}


def _priority_mix(key, v):
    """``workload.priority_mix``: the share of requests at each priority level 0, 1, ...
    (docs/semantics.md §10), or None (every request at level 0)."""
    if v is None:
        return None
    if isinstance(v, str | bytes) or not isinstance(v, Sequence) or not 1 <= len(v) <= 8:
        raise ConfigError(f"{key}: {v!r} must be a list of 1 to 8 shares, one per priority "
                          "level 0, 1, ... (e.g. [0.2, 0.8]: a fifth of the requests at "
                          "level 0, served first under scheduling_policy: priority)")
    shares = [_float(f"{key}[{i}]", x, 0.0) for i, x in enumerate(v)]
    if not sum(shares) > 0:
        raise ConfigError(f"{key}: {v!r}: the shares must not all be 0")
    return shares


#: Smallest cost coefficient accepted (smaller ones are 0 in the simulator's float32).
COST_MIN = costpresets.COST_MIN
#: Smallest tier bandwidth accepted, GB/s (1 kB/s; smaller ones are 0 in float32 bytes/s).
TIER_BW_MIN_GBPS = 1e-6


def _cost(key, v):
    # bounded so that the unconstrained value stays a finite float32, and its transform
    # back (exp, sigmoid) does not underflow to 0 (a halted, nonfinite lane)
    return _float(key, v, COST_MIN, costpresets.COST_MAX)


def validate(cfg: Mapping) -> dict:
    """Return a complete, normalised copy of ``cfg`` (defaults filled in) or raise."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"configuration must be a mapping of keys, got {type(cfg).__name__}")
    out = copy.deepcopy(DEFAULTS)
    for key, value in cfg.items():
        if not isinstance(key, str):
            raise ConfigError(f"{key!r}: keys must be strings (a key such as yes, no, on "
                              "or a number needs quotes in YAML)")
        if key in _TOP:
            out[key] = _TOP[key](key, value)
        elif key == "tier":
            for name, fields in _tier_overrides(key, value).items():
                out["tier"].setdefault(name, {}).update(fields)
        elif key.startswith("tier.") and key.count(".") == 2:
            _, name, f = key.split(".")
            for n2, fields in _tier_overrides("tier", {name: {f: value}}).items():
                out["tier"].setdefault(n2, {}).update(fields)
        elif key in SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key}: {value!r} must be a mapping")
            table = {"slo": _SLO, "workload": _WORKLOAD, "cache": _CACHE,
                     "disaggregation": _DISAGG, "speculative": _SPEC}.get(key)
            for sub, v in value.items():
                name = f"{key}.{sub}"
                if key == "cost":
                    if sub == "smooth_p":
                        if isinstance(v, bool) or v not in SMOOTH_P_CHOICES:
                            raise ConfigError(f"{name}: {v!r} is not one of "
                                              f"{', '.join(map(str, SMOOTH_P_CHOICES))}")
                        out["cost"][sub] = int(v)
                        continue
                    if sub not in COST_PARAM_NAMES and sub not in COST_ALIASES:
                        raise ConfigError(f"{name}: unknown cost parameter; allowed: "
                                          f"{', '.join(COST_PARAM_NAMES)}, smooth_p, "
                                          f"{', '.join(COST_ALIASES)}")
                    out["cost"][sub] = _cost(name, v)
                else:
                    if sub not in table:
                        raise ConfigError(f"{name}: unknown key; allowed: "
                                          f"{', '.join(f'{key}.{s}' for s in table)}")
                    out[key][sub] = table[sub](name, v)
        else:
            allowed = [*_TOP, *(f"slo.{s}" for s in _SLO), *(f"workload.{s}" for s in _WORKLOAD),
                       *(f"cache.{s}" for s in _CACHE),
                       *(f"disaggregation.{s}" for s in _DISAGG),
                       *(f"speculative.{s}" for s in _SPEC), "cost.<name>",
                       *(f"tier.<name>.{f}" for f in TIER_FIELDS)]
            raise ConfigError(f"{key}: unknown key; allowed: {', '.join(allowed)}")
    try:
        costpresets.resolve(out["cost_preset"], out["gpu"])
    except costpresets.PresetError as e:
        raise ConfigError(str(e)) from None
    sigmoid = {n for n, kind, *_ in COST_SPEC if kind == "sigmoid"}
    sigmoid |= {a for a, names in COST_ALIASES.items() if names[0] in sigmoid}
    for name in sigmoid:
        if name in out["cost"] and not out["cost"][name] < 1.0:
            raise ConfigError(f"cost.{name}: {out['cost'][name]} must be < 1 (an efficiency)")
    if out["enable_chunked_prefill"] is None or (
            out["scheduler"] == "v0" and "enable_chunked_prefill" not in cfg):
        out["enable_chunked_prefill"] = out["scheduler"] == "v1"  # the scheduler's default
    if out["scheduler"] == "v0" and out["enable_chunked_prefill"]:
        raise ConfigError("enable_chunked_prefill: true is not allowed with scheduler=v0 "
                          "(v0 is prefill-first without chunking); use scheduler=v1")
    if out["scheduler"] == "v0" and out["async_scheduling"]:
        raise ConfigError("async_scheduling: true is not allowed with scheduler=v0 "
                          "(asynchronous scheduling is vLLM v1's); use scheduler=v1")
    spec = out["speculative"]
    if spec["num_tokens"] > 0 and out["scheduler"] == "v0":
        raise ConfigError(f"speculative.num_tokens: {spec['num_tokens']} is not allowed with "
                          "scheduler=v0 (jaxsim models vLLM v1's speculative decoding); use "
                          "scheduler=v1 or speculative.num_tokens: 0")
    if spec["method"] == "draft_model" and spec["draft_model"] is None:
        raise ConfigError("speculative.draft_model: required with speculative.method: "
                          f"draft_model (a model preset: {', '.join(presets.model_names())})")
    if spec["method"] != "draft_model" and spec["draft_model"] is not None:
        raise ConfigError(f"speculative.draft_model: {spec['draft_model']!r} is read only "
                          f"with speculative.method: draft_model, not {spec['method']}")
    if spec["draft_model"] is not None:
        vt = presets.model(out["model"])[1]["vocab_size"]
        dm = presets.model(spec["draft_model"])[1]
        vd = dm["vocab_size"]
        if not tp_fits_heads(int(out["tp"]), int(dm["num_heads"]), int(dm["num_kv_heads"])):
            raise ConfigError(
                f"speculative.draft_model: {spec['draft_model']!r} has {dm['num_heads']} "
                f"attention heads and {dm['num_kv_heads']} KV heads, which tp "
                f"{out['tp']} cannot split (the draft model runs at the target's tp)")
        if vt != vd:
            raise ConfigError(
                f"speculative.draft_model: {spec['draft_model']!r} has a vocabulary of "
                f"{vd} tokens and {out['model']} one of {vt}; a draft model must share "
                "the target's tokenizer (same vocabulary size)")
    if out["scheduling_policy"] == "priority":  # docs/semantics.md §10
        if out["scheduler"] == "v0":
            raise ConfigError("scheduling_policy: priority is not allowed with scheduler=v0 "
                              "(jaxsim models vLLM v1's priority scheduling); use "
                              "scheduler=v1")
        for bad, why in ((out["enable_prefix_caching"], "enable_prefix_caching: true"),
                         (spec["num_tokens"] > 0,
                          f"speculative.num_tokens: {spec['num_tokens']}"),
                         (out["disaggregation"]["enabled"], "disaggregation.enabled: true")):
            if bad:
                raise ConfigError(f"scheduling_policy: priority cannot be combined with {why} "
                                  "in this version (docs/semantics.md §10); use "
                                  "scheduling_policy: fcfs")
    dg = out["disaggregation"]
    if dg["enabled"] and out["scheduler"] == "v0":
        raise ConfigError("disaggregation.enabled: true is not allowed with scheduler=v0 "
                          "(vLLM's KV connectors are v1's); use scheduler=v1")
    if dg["enabled"] and out["num_replicas"] > 1:
        raise ConfigError(f"num_replicas: {out['num_replicas']} with disaggregation.enabled: "
                          "true; size the two pools with disaggregation.prefill_replicas "
                          "and disaggregation.decode_replicas instead")
    w = out["workload"]
    if w["kind"] == "trace":
        if not w["path"]:
            raise ConfigError("workload.path: required when workload.kind=trace")
        if str(w["path"]).startswith("bundled:"):  # a bundled trace's format is known
            from jaxsim import traces

            name = str(w["path"]).removeprefix("bundled:")
            if w["format"] is None:
                w["format"] = traces.BUNDLED.get(name, (None, None))[1]
            elif traces.wrong_bundled_format(name, w["format"]):
                raise ConfigError(traces.wrong_bundled_format(name, w["format"]))
        if w["format"] is None:
            raise ConfigError(f"workload.format: required when workload.kind=trace; "
                              f"allowed: {', '.join(TRACE_FORMATS)}")
    elif w["path"] or w["format"]:
        given = "workload.path" if w["path"] else "workload.format"
        raise ConfigError(f"{given}: {w['path'] or w['format']!r} is read only with "
                          f"workload.kind=trace, not {w['kind']}; set workload.kind: trace "
                          "to replay a file")
    elif w["kind"] in ("poisson", "gamma", "sessions") and w["rate"] is None:
        raise ConfigError(f"workload.rate: required for workload.kind={w['kind']}")
    if w["kind"] == "servegen" and w["pool"] is None:
        raise ConfigError(f"workload.pool: required for workload.kind=servegen; allowed: "
                          f"{', '.join(servegen.POOLS)}")
    if w["kind"] == "sessions" and w["sessions"] is None:
        raise ConfigError("workload.sessions: required for workload.kind=sessions (the "
                          "number of chat sessions)")
    for name in out["tier"]:
        if name not in out["tiers"]:
            raise ConfigError(f"tier.{name}: overrides a tier that is not in tiers "
                              f"({','.join(out['tiers']) or 'none'})")
    if out["tiers"] and not out["enable_prefix_caching"]:
        raise ConfigError(f"tiers: {','.join(out['tiers'])} needs enable_prefix_caching: "
                          "true (lower tiers hold evicted prefix-cache blocks)")
    if out["preemption_mode"] == "swap" and not out["tiers"]:
        raise ConfigError("preemption_mode: 'swap' needs a tier below HBM to swap to; list "
                          "one in tiers (e.g. tiers: dram, with enable_prefix_caching: true)")
    if out["cache"]["prefetch"] and not out["enable_prefix_caching"]:
        raise ConfigError("cache.prefetch: true needs enable_prefix_caching: true (it "
                          "prefetches cached prefixes of queued requests)")
    if out["cache"]["prefetch"] and not out["tiers"]:
        raise ConfigError("cache.prefetch: true needs a tier below HBM to prefetch from; "
                          "list one in tiers (e.g. tiers: dram): without one every cached "
                          "block is in HBM already")
    if w["kind"] not in ("trace", "sessions") and w["num_requests"] is None:
        raise ConfigError(f"workload.num_requests: required for workload.kind={w['kind']}")
    unread = [k for k, v in w.items() if k not in WORKLOAD_READS[w["kind"]]
              and k != "kind" and v != DEFAULTS["workload"][k]]
    if unread:  # a warning, not an error: a sweep over workload.kind shares the other keys
        warnings.warn(f"{', '.join(f'workload.{k}' for k in unread)}: not read with "
                      f"workload.kind={w['kind']} (it reads "
                      f"{', '.join(f'workload.{k}' for k in WORKLOAD_READS[w['kind']])}); "
                      "ignored", ConfigWarning, stacklevel=1)  # here, so shown once
    return out


#: ``--set`` keys whose value is a file name or preset name: taken as text (YAML would read
#: ``0123`` as 83 and ``1e3`` as 1000.0), unless quoted or a list/mapping.
_TEXT_KEYS = ("workload.path", "cost_preset")


def parse_set(assignment: str) -> tuple[list[str], Any]:
    """Parse ``key.sub=value`` (value in YAML syntax) into (path, value)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {assignment!r}: empty key")
    if key in _TEXT_KEYS and raw.strip() and raw.strip()[0] not in "'\"[{" \
            and raw.strip() not in ("null", "Null", "NULL", "~"):
        return key.split("."), raw.strip()  # a file named 0123 or 1e3 is that name
    try:
        value = yaml.load(raw, Loader=_StrictLoader) if raw.strip() else None  # noqa: S506
    except (_DuplicateKey, _BadKey) as e:
        raise ConfigError(f"--set {assignment!r}: {e}") from None
    except (yaml.YAMLError, RecursionError):  # not YAML: the text itself (then refused
        value = raw                             # by the key's own check if not a name)
    return key.split("."), value


def apply_sets(cfg: dict, assignments: Sequence[str]) -> dict:
    """Apply ``--set`` assignments to a raw (not yet validated) configuration dict."""
    cfg = copy.deepcopy(cfg)
    for a in assignments:
        path, value = parse_set(a)
        if len(path) == 3 and path[0] == "tier":
            node = cfg.setdefault("tier", {})
            if not isinstance(node, dict):
                raise ConfigError("tier: must be a mapping")
            sub = node.setdefault(path[1], {})
            if not isinstance(sub, dict):
                raise ConfigError(f"tier.{path[1]}: {sub!r} must be a mapping of fields "
                                  f"(given with --set {'.'.join(path)})")
            sub[path[2]] = value
            continue
        if len(path) > 2:
            raise ConfigError(f"{'.'.join(path)}: unknown key (at most one dot: "
                              f"section.key, or tier.<name>.<field>)")
        if len(path) == 2:
            section, sub = path
            if section not in SECTIONS:
                raise ConfigError(f"{'.'.join(path)}: unknown key; sections are slo., "
                                  f"workload., cost., cache., disaggregation., "
                                  f"speculative., tier.")
            node = cfg.setdefault(section, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{section}: must be a mapping")
            node[sub] = value
        else:
            cfg[path[0]] = value
    return cfg


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key, mark):
        super().__init__(f"key {key!r} given twice")
        self.key, self.problem_mark = key, mark


class _BadKey(yaml.YAMLError):
    def __init__(self, key, mark):
        super().__init__(f"key {key!r} is not a name")
        self.key, self.problem_mark = key, mark


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML
    keeps the last silently) and reads numbers as YAML 1.2 does: ``1e3`` and ``5E-6``
    are numbers (PyYAML's YAML 1.1 reads an exponent without a decimal point as a
    string), ``010`` is ten (YAML 1.1: eight) and ``1:30`` is text (YAML 1.1: ninety,
    in base 60). Hexadecimal ``0x1F`` and octal ``0o17`` keep their YAML 1.2 meaning;
    ``_`` between digits is allowed, as in Python."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: merged by super()
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:  # a list or mapping as a key
                raise _BadKey(key, key_node.start_mark) from None
            if key in seen:
                raise _DuplicateKey(key, key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):
        text = self.construct_scalar(node).replace("_", "")
        sign = -1 if text[:1] == "-" else 1
        digits = text.lstrip("+-")
        try:
            if digits[:2] in ("0x", "0o"):
                return sign * int(digits[2:], 16 if digits[1] == "x" else 8)
            return sign * int(digits, 10)
        except ValueError:  # an explicit `!!int` on text that is not one
            raise yaml.constructor.ConstructorError(
                None, None, f"!!int {text!r} is not an integer", node.start_mark) from None


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_StrictLoader.add_implicit_resolver(
    _INT, re.compile(r"^(?:[-+]?[0-9][0-9_]*|0x[0-9a-fA-F][0-9a-fA-F_]*|0o[0-7][0-7_]*)$"),
    list("-+0123456789"))
_StrictLoader.add_implicit_resolver(
    _FLOAT, re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?
                       |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                       |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))
_StrictLoader.add_constructor(_INT, _StrictLoader.construct_yaml_int)


def read_yaml(path: str, error: type[Exception] = ConfigError) -> Any:
    """Parse a YAML file; a missing file, bad YAML or a key given twice in one mapping
    raises ``error`` naming the path (and the line)."""
    try:
        with open(path) as f:
            return yaml.load(f, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, expected a YAML file") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") \
            from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        if isinstance(e, _DuplicateKey):
            raise error(f"{path}{where}: key {e.key!r} given twice") from None
        if isinstance(e, _BadKey):
            raise error(f"{path}{where}: key {e.key!r} is a {type(e.key).__name__}; keys "
                        "must be names") from None
        raise error(f"{path}: not valid YAML{where}") from None
    except RecursionError:
        raise error(f"{path}: nested too deeply to be a configuration") from None


def load(path: str | None = None, sets: Sequence[str] = ()) -> dict:
    """Read a YAML file (optional), apply ``--set``s, validate."""
    raw: dict = {}
    if path is not None:
        raw = read_yaml(path)
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return validate(apply_sets(raw, sets))


# --------------------------------------------------------------------------------------
# Workload from a configuration
# --------------------------------------------------------------------------------------


def build_trace(cfg: Mapping) -> Trace:
    """The workload a validated configuration describes (with ``workload.priority_mix``,
    each request's priority level drawn from those shares, docs/semantics.md §10)."""
    tr = _base_trace(cfg)
    mix = cfg["workload"]["priority_mix"]
    if mix is None:
        return tr
    if tr.priority is not None:
        raise ConfigError(f"workload.priority_mix: {mix!r}, but the trace gives each "
                          "request's priority itself (its priority column); drop one")
    # a generator of its own, so the workload's other draws stay those of its seed
    rng = np.random.default_rng([int(cfg["seed"]), 10])
    p = np.asarray(mix, np.float64)
    level = rng.choice(len(p), size=len(tr), p=p / p.sum())
    return dataclasses.replace(tr, priority=level)


def _base_trace(cfg: Mapping) -> Trace:
    from jaxsim import traces

    w = cfg["workload"]
    try:
        if w["kind"] == "trace":
            tr = traces.load(w["path"], w["format"])
            if w["num_requests"] is not None:
                tr = tr.head(w["num_requests"])
            if w["rate"] is not None:
                a = np.sort(tr.arrival_s)
                if len(a) > 1 and a[-1] > a[0]:
                    own = (len(a) - 1) / (a[-1] - a[0])
                    name = (f"{tr.name}, rescaled from {own:.3g} to {w['rate']:g} req/s; "
                            "workload.rate=null replays it as recorded")
                else:  # one request, or all at once: no gap to rescale
                    name = f"{tr.name}, all arrivals at once (workload.rate has no gap to scale)"
                tr = dataclasses.replace(tr.scaled_to_rate(w["rate"]), name=name)
            return tr
        if w["kind"] == "sessions":
            tr = multi_turn_sessions(
                w["sessions"], w["rate"], w["turns"], w["prompt_tokens"], w["new_tokens"],
                w["output_tokens"], w["think_time_s"], w["hash_block_tokens"], cfg["seed"])
            return tr if w["num_requests"] is None else tr.head(w["num_requests"])
        if w["kind"] == "servegen":
            return servegen.generate(w["pool"], w["num_requests"], w["rate"], w["start_s"],
                                     w["max_tokens"], cfg["seed"])
        return synthetic(
            w["kind"], w["num_requests"], w["prompt_tokens"], w["output_tokens"],
            rate=w["rate"], cv=w["cv"], seed=cfg["seed"],
        )
    except ConfigError:
        raise
    except traces.TraceError as e:
        raise ConfigError(f"workload.path: {e}") from None
    except ValueError as e:
        msg = str(e)
        if isinstance(e, ArrivalSpanError) and w["kind"] != "trace":  # name the field
            # (a trace's rescale names workload.rate itself)
            if w["kind"] == "sessions":
                msg = (f"workload.rate, workload.think_time_s: {w['rate']:g} sessions/s and "
                       f"{w['think_time_s']:g} s spread the arrivals too far: {msg}")
            else:
                msg = f"workload.rate: {w['rate']:g} req/s spreads the arrivals too far: {msg}"
        raise ConfigError(msg) from None


# --------------------------------------------------------------------------------------
# Configurations -> SimParams (columnar, vectorised)
# --------------------------------------------------------------------------------------

COLUMN_KEYS = (
    "model", "gpu", "cost_preset", "cost_shape_tables", "cost_engine_fit", "tp", "dtype",
    "kv_cache_dtype", "scheduler",
    "enable_chunked_prefill",
    "max_num_seqs", "max_num_batched_tokens", "long_prefill_token_threshold",
    "scheduler_reserve_full_isl", "async_scheduling", "scheduling_policy", "block_size",
    "gpu_memory_utilization", "num_gpu_blocks", "watermark", "max_model_len",
    "activation_reserve_gb", "slo.ttft_s", "slo.tpot_s",
    "enable_prefix_caching", "tiers", "tier", "cache.recency_weight",
    "cache.frequency_weight", "cache.depth_weight", "cache.load_overlap",
    "cache.admission_weight", "cache.admission_window", "cache.prefetch", "preemption_mode",
    "speculative.num_tokens", "speculative.acceptance", "speculative.method",
    "speculative.draft_model",
)


def columns_from_configs(cfgs: Sequence[Mapping]) -> dict[str, list]:
    """Validated configuration dicts -> columns (one list entry per lane)."""
    cols: dict[str, list] = {k: [] for k in COLUMN_KEYS}
    cost_names = sorted({n for c in cfgs for n in c["cost"]})
    for n in cost_names:
        cols[f"cost.{n}"] = []
    for c in cfgs:
        for k in COLUMN_KEYS:
            if k.startswith(("slo.", "cache.", "speculative.")):
                sec, sub = k.split(".", 1)
                cols[k].append(c[sec][sub])
            else:
                cols[k].append(c[k])
        for n in cost_names:
            cols[f"cost.{n}"].append(c["cost"].get(n, math.nan))
    return cols


def activation_reserve_bytes(m: dict, tp: np.ndarray, max_tokens: np.ndarray,
                             max_seqs: np.ndarray) -> np.ndarray:
    """Memory vLLM keeps out of the KV cache besides weights (estimate).

    1 GiB for the CUDA context, CUDA graphs and communication buffers, plus the peak
    activations of a ``max_num_batched_tokens`` forward pass (hidden states, QKV, the
    MLP intermediate; BF16) and FP32 logits of ``max_num_seqs`` sampled rows.
    """
    x = presets.extras(m)
    h, v = m["hidden_size"], m["vocab_size"]
    f = max(m["ffn_size"] * (m["experts_per_token"] + x["num_shared_experts"]),
            x["dense_ffn_size"] if x["num_dense_layers"] else 0)
    nh, hd = m["num_heads"], m["head_dim"]
    if x["mla"]:  # the query, the latent and (in prefill) the decompressed keys and values
        qkv = nh * hd + x["kv_lora_rank"] + x["qk_rope_head_dim"] + nh * (
            hd - x["qk_rope_head_dim"] + x["v_head_dim"])
    else:
        qkv = (nh + 2 * m["num_kv_heads"]) * hd
    per_token = 2.0 * (4 * h + (qkv + 3 * f) / tp)
    return 2**30 + max_tokens * per_token + 4.0 * max_seqs * v / tp


def params_from_columns(
    cols: Mapping[str, Sequence], workload_max_len: int,
    hash_block_tokens: int = 512, num_tiers: int | None = None,
) -> tuple[SimParams, dict[str, np.ndarray]]:
    """Build a batched ``SimParams`` from columns of validated values.

    Args:
        cols: ``COLUMN_KEYS`` (and optional ``cost.<name>``) -> one value per lane.
            ``None`` / NaN mean "derive" for ``num_gpu_blocks``, ``watermark``,
            ``max_model_len``, ``activation_reserve_gb``.
        workload_max_len: longest prompt + output in the workload (the default
            ``max_model_len``, capped by the model's context length).
        hash_block_tokens: the workload's prefix block length U (tier capacities in GB
            become blocks of U tokens).
        num_tiers: T of the cache arrays (default: 1 + the longest ``tiers`` list);
            shorter lists are padded with disabled tiers.

    Returns:
        (params with leading axis B, derived host-side figures per lane: ``weights_gb``,
        ``kv_gb``, ``num_gpu_blocks``, ``max_model_len``, ``watermark_blocks``).
    """
    B = len(cols["model"])
    if B == 0:
        raise ConfigError("no configurations to simulate")

    def col(k, dtype=None):
        a = np.asarray(cols[k], dtype=dtype if dtype is not None else object)
        if a.shape != (B,):
            raise ConfigError(f"{k}: expected {B} values, got shape {a.shape}")
        return a

    def num(k):
        return np.array([math.nan if x is None else float(x) for x in col(k)], np.float64)

    model_names = col("model")
    gpu_names = col("gpu")
    uniq_m = {n: presets.model(n)[1] for n in set(model_names)}
    uniq_g = {n: presets.gpu(n)[1] for n in set(gpu_names)}

    def mfield(name):
        return np.array([uniq_m[n].get(name, presets.EXTRA_DEFAULTS.get(name))
                         for n in model_names], np.float64)

    def gfield(name):
        return np.array([
            math.nan if uniq_g[n][name] is None else uniq_g[n][name] for n in gpu_names
        ], np.float64)

    tp = num("tp")
    fp8 = np.array([d == "fp8" for d in col("dtype")])
    kv_fp8 = np.array([d == "fp8" for d in col("kv_cache_dtype")])
    sched_v0 = np.array([s == "v0" for s in col("scheduler")])
    chunked = np.array([bool(x) for x in col("enable_chunked_prefill")]) & ~sched_v0
    max_seqs = num("max_num_seqs")
    budget = num("max_num_batched_tokens")
    bs = num("block_size")
    util = num("gpu_memory_utilization")

    L, h = mfield("num_layers"), mfield("hidden_size")
    nh, nkv, hd = mfield("num_heads"), mfield("num_kv_heads"), mfield("head_dim")
    bytes_w = np.where(fp8, 1.0, 2.0)
    bytes_kv = np.where(kv_fp8, 1.0, 2.0)
    peak_bf16 = gfield("bf16_dense_tflops")
    peak_fp8 = gfield("fp8_dense_tflops")
    # FP8 weights on a GPU without FP8 tensor cores (Ampere) run weight-only, as vLLM's
    # FP8 Marlin kernels do (W8A16): 1-byte weights, GEMMs at the BF16 peak
    peak = np.where(fp8 & np.isfinite(peak_fp8), peak_fp8, peak_bf16) * 1e12
    # what the CUDA (HIP) runtime reports as the device's total, which vLLM multiplies by
    # gpu_memory_utilization: below the marketed capacity by the driver's reserve, and
    # above it for NVIDIA's "80 GB" parts (80 GiB less the reserve)
    cap = gfield("device_memory_bytes")
    n_params = np.array([presets.param_count(uniq_m[n]) for n in model_names], np.float64)
    # FP8 quantises linear layers and experts; the embedding and LM head stay BF16
    n_embed = 2.0 * mfield("vocab_size") * h
    # (MLA's down-projections are whole on every GPU)
    n_rep = np.array([presets.replicated_params(uniq_m[n]) for n in model_names], np.float64)
    weights = ((n_params - n_embed - n_rep) * bytes_w + n_embed * 2.0) / tp + n_rep * bytes_w
    spec, draft_weights = _spec_params(cols, B, model_names, uniq_m, tp, bytes_w, bytes_kv,
                                       n_params - n_embed)
    weights = weights + draft_weights
    reserve_gb = num("activation_reserve_gb")
    reserve_est = np.zeros(B)
    for name in uniq_m:
        sel = model_names == name
        reserve_est[sel] = activation_reserve_bytes(uniq_m[name], tp[sel], budget[sel],
                                                    max_seqs[sel])
    reserve = np.where(np.isfinite(reserve_gb), reserve_gb * 1e9, reserve_est)
    kv_per_token = np.array([presets.kv_bytes_per_token(uniq_m[n], b, t) for n, b, t in
                             zip(model_names, bytes_kv, tp, strict=True)], np.float64)
    avail = cap * util - weights - reserve
    derived_blocks = np.floor(np.maximum(avail, 0.0) / (bs * kv_per_token))
    given_blocks = num("num_gpu_blocks")
    blocks = np.where(np.isfinite(given_blocks), given_blocks, derived_blocks)
    blocks = np.minimum(blocks, 2**30)
    wm = num("watermark")
    wm = np.where(np.isfinite(wm), wm, np.where(sched_v0, 0.01, 0.0))
    wm_blocks = np.floor(wm * blocks)
    model_max = mfield("max_position_embeddings")
    mml = num("max_model_len")
    mml = np.where(np.isfinite(mml), mml, np.minimum(model_max, float(workload_max_len)))

    status = np.zeros(B, np.int64)

    def flag(mask, bit):
        nonlocal status
        status = np.where(mask, status | st_bits.INFEASIBLE | bit, status)

    flag((weights > cap * util) | (blocks < 1) | (~np.isfinite(given_blocks) & (avail <= 0)),
         st_bits.INF_NO_KV_MEMORY)
    # (v0: and one block more, which a decode needs free to touch, §2.4; without it a lone
    # request that fills the cache would preempt itself: an iteration with nothing in it)
    flag(blocks - wm_blocks < np.ceil(mml / bs) + sched_v0, st_bits.INF_KV_TOO_SMALL)
    flag(workload_max_len > mml, st_bits.INF_REQUEST_TOO_LONG)
    flag(mml > model_max, st_bits.INF_MML_OVER_CONTEXT)
    flag(~chunked & (budget < mml), st_bits.INF_BUDGET_TOO_SMALL)
    flag(budget < max_seqs, st_bits.INF_BUDGET_LT_SEQS)
    tp_i, nh_i, nkv_i = tp.astype(np.int64), nh.astype(np.int64), nkv.astype(np.int64)
    flag((nh_i % tp_i != 0) | ((nkv_i % tp_i != 0) & (tp_i % nkv_i != 0)), st_bits.INF_TP_SHAPE)

    cost_vals = {}
    for n in (*COST_PARAM_NAMES, *COST_ALIASES, "smooth_p"):
        k = f"cost.{n}"
        if k in cols:
            cost_vals[n] = num(k)
    base = CostParams.default()
    theta = np.broadcast_to(np.asarray(base.theta), (B, len(COST_PARAM_NAMES))).copy()
    p_log2 = np.full(B, int(base.smooth_p_log2), np.int32)
    preset_col = cols.get("cost_preset", [costpresets.AUTO] * B)
    engine_col = [bool(x) for x in cols.get("cost_engine_fit", [False] * B)]
    # lanes with cost_engine_fit also key on their TP degree (engine_fit.by_tp)
    lane_keys = [(str(preset_col[i]), str(gpu_names[i]),
                  int(tp[i]) if engine_col[i] else 0) for i in range(B)]
    try:
        preset_vals = {k: {**costpresets.values(*k[:2]),
                           **(costpresets.engine_values(*k) if k[2] else {})}
                       for k in set(lane_keys)}
    except costpresets.PresetError as e:
        raise ConfigError(str(e)) from None
    if cost_vals or any(preset_vals.values()):
        cache: dict = {}
        for i in range(B):
            key = lane_keys[i]
            given = {n: float(v[i]) for n, v in cost_vals.items() if math.isfinite(v[i])}
            if not given and key in cache:
                theta[i], p_log2[i] = cache[key]
                continue
            # the lane's own values over the preset's, a family shorthand of its own
            # (cost.eta_c_gemm) included
            given = {**preset_vals[key], **expand_cost_aliases(given)}
            if "smooth_p" in given:
                given["smooth_p"] = int(given["smooth_p"])
            if given:
                cp = CostParams.from_values(given)
                theta[i] = np.asarray(cp.theta)
                p_log2[i] = int(cp.smooth_p_log2)
            if not any(math.isfinite(v[i]) for v in cost_vals.values()):
                cache[key] = (theta[i].copy(), p_log2[i])

    use_tables = [bool(x) for x in cols.get("cost_shape_tables", [True] * B)]
    shape_corr = _shape_tables(preset_col, gpu_names, use_tables, engine_col, B, h=h, nh=nh,
                               nkv=nkv, hd=hd,
                               f=mfield("ffn_size"), tp=tp, bpw=bytes_w,
                               experts=mfield("num_experts"), mla=mfield("mla"),
                               dv=mfield("v_head_dim"), d_r=mfield("qk_rope_head_dim"))
    params = SimParams(
        model=ModelParams(
            num_layers=L, hidden_size=h, num_heads=nh, num_kv_heads=nkv, head_dim=hd,
            ffn_size=mfield("ffn_size"), vocab_size=mfield("vocab_size"),
            num_experts=mfield("num_experts"), experts_per_token=mfield("experts_per_token"),
            bytes_per_weight=bytes_w, bytes_per_kv=bytes_kv,
            bytes_per_lm_head_weight=np.full(B, 2.0),
            **_extras({name: mfield(name) for name in MODEL_EXTRA_FIELDS}),
        ),
        hardware=HardwareParams(
            peak_flops=peak,
            hbm_bw_bytes_per_s=gfield("hbm_bw_gbs") * 1e9,
            link_bw_bytes_per_s=gfield("link_bw_gbs") * 1e9,
            peak_flops_16bit=peak_bf16 * 1e12,
        ),
        scheduler=SchedulerParams(
            mode=sched_v0.astype(np.int32),
            enable_chunked_prefill=chunked.astype(np.int32),
            max_num_seqs=max_seqs.astype(np.int64),
            max_num_batched_tokens=budget.astype(np.int64),
            long_prefill_token_threshold=num("long_prefill_token_threshold").astype(np.int64),
            reserve_full_isl=np.array([bool(x) for x in col("scheduler_reserve_full_isl")],
                                      np.int32),
            block_size=bs.astype(np.int64),
            num_gpu_blocks=blocks.astype(np.int64),
            watermark_blocks=wm_blocks.astype(np.int64),
            max_model_len=mml.astype(np.int64),
            tp=tp.astype(np.int64),
            async_scheduling=np.array([bool(x) for x in col("async_scheduling")], np.int32),
            scheduling_policy=np.array([x == "priority" for x in col("scheduling_policy")],
                                       np.int32),
        ),
        cost=CostParams(theta=theta, smooth_p_log2=p_log2, shape_corr=shape_corr),
        ttft_slo_s=num("slo.ttft_s"),
        tpot_slo_s=num("slo.tpot_s"),
        status0=status.astype(np.int32),
        cache=_cache_params(cols, B, kv_per_token, hash_block_tokens, num_tiers),
        spec=spec,
    )
    info = {
        "weights_gb": weights / 1e9,
        "kv_gb": blocks * bs * kv_per_token / 1e9,
        "kv_bytes_per_token": np.broadcast_to(np.asarray(kv_per_token, np.float64), (B,)),
        "num_gpu_blocks": blocks.astype(np.int64),
        "max_model_len": mml.astype(np.int64),
        "watermark_blocks": wm_blocks.astype(np.int64),
        "reserve_gb": reserve / 1e9,
        "usable_gb": cap * util / 1e9,
    }
    return params, info


def _extras(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The optional model fields for ``ModelParams``: none (None, so the cost model
    compiles without them) when every lane's are 0."""
    return cols if any(np.any(v != 0) for v in cols.values()) else {}


_DRAFT_DIMS = ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
               "ffn_size", "vocab_size", "num_experts", "experts_per_token",
               *MODEL_EXTRA_FIELDS)


def _spec_params(cols, B, model_names, uniq_m, tp, bytes_w, bytes_kv, n_layer_params):
    """§9 speculative decoding: ``SpecParams`` (``None`` when no lane has it) and the
    drafter's weights per GPU (bytes; 0 without a draft model). ``eagle`` drafts with
    one decoder layer of the target's shape (it shares the embedding and LM head);
    ``draft_model`` with a model preset at the target's dtype and ``tp``."""
    k = np.array([int(x) for x in cols.get("speculative.num_tokens", [0] * B)])
    if not np.any(k > 0):
        return None, np.zeros(B)
    method = list(cols.get("speculative.method", ["ngram"] * B))
    draft = list(cols.get("speculative.draft_model", [None] * B))
    alpha = list(cols.get("speculative.acceptance", [0.7] * B))
    dims = {f: np.zeros(B) for f in _DRAFT_DIMS}
    d_weights = np.zeros(B)
    for i in range(B):
        m = uniq_m[model_names[i]]
        if k[i] > 0 and method[i] == "draft_model":
            d = presets.model(draft[i])[1]
            n_d = float(presets.param_count(d))
            n_emb = 2.0 * d["vocab_size"] * d["hidden_size"]
            d_weights[i] = ((n_d - n_emb) * bytes_w[i] + n_emb * 2.0) / tp[i]
        else:
            d = dict(m)
            if k[i] > 0 and method[i] == "eagle":
                # (a mixture-of-experts model's drafter layer is one of its MoE layers,
                # as DeepSeek-V3's multi-token-prediction layer is)
                d["num_layers"], d["num_dense_layers"] = 1, 0
                d_weights[i] = n_layer_params[i] / m["num_layers"] * bytes_w[i] / tp[i]
        d = {**presets.extras(d), **d}
        for f in _DRAFT_DIMS:
            dims[f][i] = d[f]
    units = np.stack([spec_accept_units(alpha[i], k[i]) for i in range(B)])
    spec = SpecParams(
        num_tokens=k.astype(np.int32), accept_units=units,
        draft=ModelParams(**{f: dims[f] for f in _DRAFT_DIMS if f not in MODEL_EXTRA_FIELDS},
                          **_extras({f: dims[f] for f in MODEL_EXTRA_FIELDS}),
                          bytes_per_weight=bytes_w, bytes_per_kv=bytes_kv,
                          bytes_per_lm_head_weight=np.full(B, 2.0)),
        has_draft=np.array([k[i] > 0 and method[i] != "ngram" for i in range(B)], np.int32))
    return spec, d_weights


def _either(fixes: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return fixes[0] if len(fixes) == 1 else ", ".join(fixes[:-1]) + " or " + fixes[-1]


def status_reasons(cfg: Mapping, status: int, info: Mapping, workload_max_len: int,
                   metrics: Mapping) -> list[str]:
    """One sentence per problem in a lane's ``status``, with the configuration's values
    and what would lift it (host side; for ``jaxsim simulate``). ``info`` holds the
    lane's entries of ``params_from_columns``'s info (scalars); ``metrics`` its metrics
    (``iterations``, ``completed``)."""
    status = int(status)
    out = []
    model, gpu, tp = cfg["model"], cfg["gpu"], int(cfg["tp"])
    m = presets.model(model)[1]
    mml = int(info["max_model_len"])
    budget, seqs = int(cfg["max_num_batched_tokens"]), int(cfg["max_num_seqs"])
    if status & st_bits.INF_TP_SHAPE:
        nh, nkv = int(m["num_heads"]), int(m["num_kv_heads"])
        ok = [t for t in range(1, MAX_TP + 1) if tp_fits_heads(t, nh, nkv)]
        out.append(f"tp {tp} does not divide {model}'s {nh} attention heads and "
                   f"{nkv} KV heads (tp values that do: {', '.join(map(str, ok))})")
    # what could make room on this GPU: only the settings that are not at their limit
    wider = [t for t in range(tp + 1, MAX_TP + 1)
             if tp_fits_heads(t, int(m["num_heads"]), int(m["num_kv_heads"]))]
    room = ([f"raise tp (to {', '.join(map(str, wider))})"] if wider else []) + (
        [f"raise gpu_memory_utilization (now {cfg['gpu_memory_utilization']})"]
        if float(cfg["gpu_memory_utilization"]) < 1.0 else [])
    if status & st_bits.INF_NO_KV_MEMORY:
        fixes = room + (["use dtype fp8"] if cfg["dtype"] != "fp8" else [])
        spec = cfg.get("speculative", {})
        drafter = spec.get("num_tokens", 0) > 0 and spec.get("method") == "draft_model"
        if drafter:
            fixes.append(f"use a smaller speculative.draft_model than {spec['draft_model']} "
                         "or speculative.method eagle")
        out.append("no room for the KV cache: weights "
                   + ("(the draft model's included) " if drafter else "")
                   + f"{float(info['weights_gb']):.1f} GB "
                   f"and activation reserve {float(info['reserve_gb']):.1f} GB per GPU "
                   f"against {float(info['usable_gb']):.1f} GB usable "
                   f"(gpu_memory_utilization {cfg['gpu_memory_utilization']}); "
                   + (_either(fixes) if fixes else
                      f"{model} does not fit on {gpu}s at any tp up to {MAX_TP} (one node)"))
    elif status & st_bits.INF_KV_TOO_SMALL:
        blocks, wm = int(info["num_gpu_blocks"]), int(info["watermark_blocks"])
        bs = int(cfg["block_size"])
        own_mml = cfg.get("max_model_len") is not None
        fixes = ((["lower max_model_len"] if own_mml else [])
                 + (["raise num_gpu_blocks"] if cfg.get("num_gpu_blocks") is not None
                    else room + (["use kv_cache_dtype fp8"]
                                 if cfg["kv_cache_dtype"] != "fp8" else []))
                 + (["lower watermark"] if wm else []))
        v0 = cfg["scheduler"] == "v0"
        out.append(f"the KV cache ({blocks} blocks of {bs} tokens"
                   + (f", less a watermark of {wm}" if wm else "")
                   + f") cannot hold one sequence of max_model_len {mml} tokens"
                   + ("" if own_mml else " (by default the workload's longest request)")
                   + (" and the free block a v0 decode touches" if v0 else "")
                   + "; " + (_either(fixes) if fixes else
                             "no setting of this configuration makes it hold one"))
    if status & st_bits.INF_REQUEST_TOO_LONG:
        out.append(f"the workload has a request of {workload_max_len} tokens (prompt + "
                   f"output), more than max_model_len {mml}")
    if status & st_bits.INF_MML_OVER_CONTEXT:
        out.append(f"max_model_len {mml} exceeds {model}'s context of "
                   f"{int(m['max_position_embeddings'])} tokens")
    if status & st_bits.INF_BUDGET_TOO_SMALL:
        why = ("the v0 scheduler does not chunk prefills" if cfg["scheduler"] == "v0"
               else "enable_chunked_prefill is false")
        out.append(f"{why}, so max_num_batched_tokens {budget} must be >= max_model_len "
                   f"{mml}")
    if status & st_bits.INF_BUDGET_LT_SEQS:
        out.append(f"max_num_batched_tokens {budget} is smaller than max_num_seqs {seqs}; "
                   "vLLM requires max_num_batched_tokens >= max_num_seqs")
    if status & st_bits.TRUNCATED:
        limit = cfg.get("max_iterations")
        out.append(f"the iteration budget ran out after {int(metrics['iterations'])} "
                   + (f"iterations (max_iterations {limit})" if limit else "iterations")
                   + f" with {int(metrics['completed'])} requests completed; raise "
                   "max_iterations")
    if status & st_bits.NONFINITE:
        tiers = cfg.get("tiers") or []
        out.append("an iteration time was not finite (NaN or inf) or negative: check the cost "
                   "parameters (cost.* or cost_preset)"
                   + (f" and the tiers' bandwidths and latencies (tier.<name>.*: "
                      f"{', '.join(tiers)})" if tiers else "")
                   + "; the lane stopped there")
    if status & st_bits.OVERFLOW_SLOTS:
        out.append("the slot table limited admission: raise max_slots")
    if status & st_bits.OVERFLOW_CACHE:
        out.append("the prefix-cache table (SimShape.cache_entries) ran out of rows: "
                   "give a larger cache_entries (jaxsim.api.run / prepare), or leave it to "
                   "prefix.table_size")
    return out


def _shape_tables(preset_col, gpu_names, use, engine, B, **dims) -> np.ndarray:
    """``CostParams.shape_corr`` of every lane: the per-kernel-shape tables of its cost
    preset for its model, TP degree and dtype (``[B, C, 0]`` when no lane has one), or
    none where ``cost_shape_tables`` is false; with ``cost_engine_fit`` the preset's
    engine all-reduce tables (``engine_fit.tables``) replace the kernel ones."""
    from jaxsim import shapecorr

    names = np.array([f"{p}\0{g}\0{int(e)}" if u else "" for p, g, u, e in
                      zip(preset_col, gpu_names, use, engine, strict=True)])
    uniq_names, name_id = np.unique(names, return_inverse=True)
    dim = np.stack([np.broadcast_to(np.asarray(v, np.float64), (B,)) for v in dims.values()],
                   axis=1)
    key_arr = np.concatenate([name_id.reshape(B, 1).astype(np.float64), dim], axis=1)
    uniq, inv = np.unique(key_arr, axis=0, return_inverse=True)
    rows = []
    for u in uniq:
        name = uniq_names[int(u[0])]
        tables = {}
        if name:
            preset, gpu, eng = name.split("\0")
            tables = costpresets.tables(preset, gpu)
            if eng == "1":
                tables = {**tables, **costpresets.engine_tables(preset, gpu)}
        rows.append(shapecorr.lane_table(tables, shapecorr.shape_keys(*u[1:].tolist()))
                    if tables else None)
    if all(r is None for r in rows):
        return shapecorr.empty(B)
    table = np.stack([np.zeros((len(shapecorr.CORR_OPS), shapecorr.GRID), np.float32)
                      if r is None else r for r in rows])
    return table[inv.reshape(-1)]


def _cache_params(cols, B, kv_per_token, U, num_tiers):
    """CacheParams for every lane, or None when no lane enables prefix caching."""
    from jaxsim import tiers as tiers_mod

    enable = [bool(x) for x in cols.get("enable_prefix_caching", [False] * B)]
    if not any(enable) and not num_tiers:
        return None
    names = [list(x) for x in cols.get("tiers", [[]] * B)]
    T = 1 + max(len(n) for n in names) if num_tiers is None else int(num_tiers)
    if any(1 + len(n) > T for n in names):
        raise ConfigError(f"tiers: a lane lists more than num_tiers - 1 = {T - 1} tiers")
    cap = np.zeros((B, T), np.int64)
    rd, wr = np.full((B, T), 1e9), np.full((B, T), 1e9)
    lat = np.zeros((B, T))
    link = np.zeros((B, T), np.int32)
    lbw = np.full((B, T), np.inf)
    pw, eb = np.zeros((B, T)), np.zeros((B, T))
    bblk = U * kv_per_token  # bytes of one cache block per GPU
    overrides = cols.get("tier", [{}] * B)
    for i in range(B):
        if not names[i]:
            continue
        try:
            a = tiers_mod.to_arrays(names[i], overrides[i] or None)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        n = len(names[i])
        cap[i, 1:1 + n] = np.floor(a["capacity_bytes"] / bblk[i])
        rd[i, 1:1 + n] = a["read_bps"]
        wr[i, 1:1 + n] = a["write_bps"]
        lat[i, 1:1 + n] = a["latency_s"]
        link[i, 1:1 + n] = a["link_id"]
        lbw[i, :n] = a["link_bps"][:n]
        pw[i, 1:1 + n] = a["static_power_w"]
        eb[i, 1:1 + n] = a["energy_pj_per_bit"]
    col = lambda k, d: np.array([d if x is None else float(x)  # noqa: E731
                                 for x in cols.get(k, [d] * B)])
    return CacheParams(
        enable=np.array(enable, np.int32),
        capacity_blocks=np.minimum(cap, 2**30).astype(np.int32),
        read_bps=rd, write_bps=wr, latency_s=lat, link_id=link,
        link_bps=np.minimum(lbw, 3e38),
        w_recency=col("cache.recency_weight", 1.0),
        w_frequency=col("cache.frequency_weight", 0.0),
        w_depth=col("cache.depth_weight", 0.0),
        load_overlap=col("cache.load_overlap", 0.0),
        w_admission=col("cache.admission_weight", 0.0),
        admission_window=col("cache.admission_window", 32).astype(np.int32),
        static_power_w=pw, energy_pj_per_bit=eb,
        swap=np.array([m == "swap" for m in cols.get("preemption_mode", ["recompute"] * B)],
                      np.int32),
        prefetch=np.array([bool(x) for x in cols.get("cache.prefetch", [False] * B)],
                          np.int32),
    )
