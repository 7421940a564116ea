"""Reference event simulator: a plain sequential oracle for docs/semantics.md.

This module implements the contract in ``docs/semantics.md`` (one engine iteration,
the cost model and the metrics) as a literal, sequential Python loop over Python lists
and float64 scalars. It was written from that document alone, independently of the
``jaxsim`` package, and imports nothing from it: its purpose is to be the oracle the
vectorised JAX simulator is compared against, so that a misunderstanding shared by
both implementations cannot hide.

Section numbers in comments (``§2.2`` and so on) refer to ``docs/semantics.md``.
Where the document leaves a choice open, the comment marked ``AMBIGUITY`` says which
reading is implemented (the most literal one).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# --------------------------------------------------------------------------------------
# Configuration keys (a flat dict; every key required, no other key allowed)
# --------------------------------------------------------------------------------------

SCHEDULER_KEYS: tuple[str, ...] = (
    "mode",
    "enable_chunked_prefill",
    "max_num_seqs",
    "max_num_batched_tokens",
    "long_prefill_token_threshold",
    "block_size",
    "num_gpu_blocks",
    "watermark_blocks",
    "max_model_len",
    "tp",
)
MODEL_KEYS: tuple[str, ...] = (
    "num_layers",
    "hidden_size",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "ffn_size",
    "vocab_size",
    "num_experts",
    "experts_per_token",
    "bytes_per_weight",
    "bytes_per_kv",
)
#: §3 optional model inputs with their defaults (which give the formulas of a plain
#: model): ``num_shared_experts`` (s), ``num_dense_layers`` (Ld) of FFN width
#: ``dense_ffn_size`` (fd, only read when Ld > 0), and multi-head latent attention
#: (``mla`` 0/1, bools accepted) with ``q_lora_rank`` (r_q, 0: no query compression),
#: ``kv_lora_rank`` (r_kv), ``qk_rope_head_dim`` (d_r) and ``v_head_dim`` (dv; a plain
#: model's dv is ``head_dim``). Optional for the lane and for ``spec_draft`` alike.
MODEL_OPTIONAL_DEFAULTS: dict[str, int] = {
    "num_shared_experts": 0,
    "num_dense_layers": 0,
    "dense_ffn_size": 0,
    "mla": 0,
    "q_lora_rank": 0,
    "kv_lora_rank": 0,
    "qk_rope_head_dim": 0,
    "v_head_dim": 0,
}
HARDWARE_KEYS: tuple[str, ...] = ("peak_flops", "hbm_bw", "link_bw")
#: Roofline operators with their own coefficients (docs/semantics.md §3).
ROOF_COST_OPS: tuple[str, ...] = (
    "qkv_proj", "o_proj", "mlp_up", "mlp_down", "lm_head", "attn_prefill", "attn_decode",
)
#: §3: operators at the weight dtype's peak (the projections and MLP); the rest run at
#: the 16-bit peak.
GEMM_PEAK_OPS: frozenset[str] = frozenset(("qkv_proj", "o_proj", "mlp_up", "mlp_down"))
#: Elementwise coefficient groups.
ELEM_COST_GROUPS: tuple[str, ...] = (
    "norm", "residual_add", "activation", "rotary", "kv_write", "embedding", "sampling",
)
COST_KEYS: tuple[str, ...] = (
    *(f"{k}_{op}" for op in ROOF_COST_OPS for k in ("eta_c", "f0", "eta_m", "b0")),
    *(f"{k}_{g}" for g in ELEM_COST_GROUPS for k in ("eta_m", "b0")),
    "ar_latency_s",
    "eta_ar",
    "kernel_overhead_s",
    "cpu_iter_s",
    "cpu_seq_s",
    "smooth_p",
)
SLO_KEYS: tuple[str, ...] = ("ttft_slo_s", "tpot_slo_s")
CONFIG_KEYS: tuple[str, ...] = (
    SCHEDULER_KEYS + MODEL_KEYS + HARDWARE_KEYS + COST_KEYS + SLO_KEYS
)

#: Optional §5 keys (prefix caching and KV memory tiers) with their defaults. A config
#: may omit any of them; with ``enable_prefix_caching`` false the lane is exactly §1-§4.
#: The per-tier lists hold one entry per LOWER tier t = 1 … T-1 (so T = 1 + their
#: length). ``tier_link_bw`` maps a link id to its bandwidth (bytes/s): a mapping
#: ``{link id: bandwidth}`` or a sequence indexed by link id (``[bw of link 0, …]``).
#: (It is not called ``link_bw``: that name is the §3 all-reduce bandwidth.)
#: ``w_adm`` and ``adm_window`` are the §5.8 admission weight and window. The §5.9
#: energy lists ``tier_static_power_w`` (W) and ``tier_energy_pj_per_bit`` (pJ/bit)
#: also hold one entry per lower tier; their default ``None`` means "unknown" (NaN)
#: for every lower tier, and a NaN entry marks one tier's value as unknown.
#: ``swap`` (§5.10 swap preemption) and ``prefetch`` (§5.11) are 0/1 flags (bools
#: accepted); like everything in §5 they only act with ``enable_prefix_caching``.
PREFIX_CONFIG_DEFAULTS: dict[str, Any] = {
    "enable_prefix_caching": False,
    "tier_capacity_blocks": (),
    "tier_read_bw": (),
    "tier_write_bw": (),
    "tier_latency_s": (),
    "tier_link": (),
    "tier_link_bw": {},
    "w_rec": 1.0,
    "w_freq": 0.0,
    "w_depth": 0.0,
    "load_overlap": 0.0,
    "w_adm": 0.0,
    "adm_window": 1,
    "tier_static_power_w": None,
    "tier_energy_pj_per_bit": None,
    "swap": False,
    "prefetch": False,
}
#: §9 speculative decoding: ``spec_tokens`` (K, 0..16, default 0 = off),
#: ``spec_accept_units`` (A[0..K], default all zeros) and ``spec_draft`` (the draft
#: model's MODEL_KEYS, optionally ``bytes_per_lm_head_weight`` and the §3 optional
#: model keys of MODEL_OPTIONAL_DEFAULTS; default None: drafts cost no GPU time).
SPEC_CONFIG_KEYS: tuple[str, ...] = ("spec_tokens", "spec_accept_units", "spec_draft")
OPTIONAL_CONFIG_KEYS: tuple[str, ...] = (*PREFIX_CONFIG_DEFAULTS, "shape_corr",
                                          "reserve_full_isl", "async_scheduling",
                                          "peak_flops_16bit",
                                          "bytes_per_lm_head_weight",
                                          *SPEC_CONFIG_KEYS,
                                          *MODEL_OPTIONAL_DEFAULTS,
                                          "scheduling_policy")
#: §10: the lane's ``scheduling_policy`` ("fcfs", the default: §2 unchanged; or
#: "priority") and the workload's per-request ``priority`` levels 0..7 (default 0).
SCHEDULING_POLICIES: tuple[str, ...] = ("fcfs", "priority")
PRIORITY_LEVELS: int = 8
#: §9: the most draft tokens per decode step, and the accumulator's unit (A[j] is the
#: expected number of accepted drafts out of j, in units of 1/65536).
SPEC_MAX_TOKENS: int = 16
SPEC_UNIT: int = 65536
_TIER_LIST_KEYS: tuple[str, ...] = (
    "tier_capacity_blocks",
    "tier_read_bw",
    "tier_write_bw",
    "tier_latency_s",
    "tier_link",
)
#: §5.9 per-lower-tier energy inputs (NaN = unknown; absent = NaN for every tier).
_TIER_ENERGY_KEYS: tuple[str, ...] = ("tier_static_power_w", "tier_energy_pj_per_bit")

_INT_KEYS: frozenset[str] = frozenset(
    (
        "max_num_seqs",
        "max_num_batched_tokens",
        "long_prefill_token_threshold",
        "block_size",
        "num_gpu_blocks",
        "watermark_blocks",
        "max_model_len",
        "tp",
        "num_layers",
        "hidden_size",
        "num_heads",
        "num_kv_heads",
        "head_dim",
        "ffn_size",
        "vocab_size",
        "num_experts",
        "experts_per_token",
    )
)

# Activation bytes per element (§3: "Activations are ab = 2 bytes").
AB: float = 2.0

_PERCENTILES: tuple[int, ...] = (50, 90, 99)


def ceil_div(a: int, b: int) -> int:
    """Integer ceiling division, ``ceil_div(a, b) = -(-a // b)`` as in the notation."""
    return -(-a // b)


def _as_int(name: str, value: Any) -> int:
    """Converts an integral config value to ``int``, rejecting fractional values."""
    if isinstance(value, bool):
        raise ValueError(f"config[{name!r}] must be an integer, got bool {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    try:
        as_float = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config[{name!r}] must be an integer, got {value!r}") from exc
    if not math.isfinite(as_float) or as_float != int(as_float):
        raise ValueError(f"config[{name!r}] must be an integer, got {value!r}")
    return int(as_float)


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Checks a flat lane configuration and returns a normalised copy.

    Args:
        config: flat mapping with every key of ``CONFIG_KEYS`` and optionally some of
            ``OPTIONAL_CONFIG_KEYS`` (§5; defaults in ``PREFIX_CONFIG_DEFAULTS``).

    Returns:
        A new dict with integer fields as ``int``, other numeric fields as ``float``,
        ``mode`` as ``str`` and ``enable_chunked_prefill`` as ``bool``, plus every
        optional §5 key (defaults filled in): ``enable_prefix_caching`` as ``bool``,
        the per-tier lists as tuples (``int`` capacities and links, ``float`` others;
        the §5.9 energy lists always have one entry per lower tier, NaN = unknown),
        ``tier_link_bw`` as a ``{int link id: float}`` dict, the weights (``w_adm``
        included) as ``float``, ``adm_window`` as ``int`` and the §5.10 / §5.11
        flags ``swap`` and ``prefetch`` as ``bool``; every §3 optional model key
        of ``MODEL_OPTIONAL_DEFAULTS`` as ``int`` (defaults filled in, ``mla`` 0/1);
        and §10's ``scheduling_policy`` as ``str`` ("fcfs" when absent).

    Raises:
        KeyError: a required key is missing.
        ValueError: an unknown key is present, or a value makes the simulation
            undefined (not to be confused with an infeasible lane, which is a flag).
    """
    missing = [key for key in CONFIG_KEYS if key not in config]
    if missing:
        raise KeyError(f"config is missing keys: {missing}")
    unknown = sorted(set(config) - set(CONFIG_KEYS) - set(OPTIONAL_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"config has unknown keys: {unknown}")

    cfg: dict[str, Any] = {}
    for key in CONFIG_KEYS:
        value = config[key]
        if key == "mode":
            if value not in ("v1", "v0"):
                raise ValueError(f"config['mode'] must be 'v1' or 'v0', got {value!r}")
            cfg[key] = str(value)
        elif key == "enable_chunked_prefill":
            cfg[key] = bool(value)
        elif key in _INT_KEYS:
            cfg[key] = _as_int(key, value)
        else:
            cfg[key] = float(value)

    # Values that would make the semantics undefined (division by zero, a lane that
    # can never schedule a token and would loop forever). These are input errors, not
    # the feasibility rules of §0, which are reported as the `infeasible` flag.
    for key in ("block_size", "tp", "max_num_seqs", "max_num_batched_tokens"):
        if cfg[key] < 1:
            raise ValueError(f"config[{key!r}] must be >= 1, got {cfg[key]}")
    for key in ("num_heads", "num_kv_heads", "num_experts", "experts_per_token"):
        if cfg[key] < 1:
            raise ValueError(f"config[{key!r}] must be >= 1, got {cfg[key]}")
    for key in ("long_prefill_token_threshold", "watermark_blocks"):
        if cfg[key] < 0:
            raise ValueError(f"config[{key!r}] must be >= 0, got {cfg[key]}")
    if cfg["smooth_p"] < 1.0:
        raise ValueError(f"config['smooth_p'] must be >= 1, got {cfg['smooth_p']}")
    # §3: the 16-bit peak of attention and the LM head; absent: the weights are 16-bit
    # and it is the one peak
    cfg["peak_flops_16bit"] = float(config.get("peak_flops_16bit", cfg["peak_flops"]))
    # §3: the LM head's bytes per weight; absent: those of the other weights
    cfg["bytes_per_lm_head_weight"] = float(
        config.get("bytes_per_lm_head_weight", cfg["bytes_per_weight"]))
    for key in ("peak_flops", "hbm_bw", "link_bw", "peak_flops_16bit",
                "bytes_per_lm_head_weight"):
        if not cfg[key] > 0.0:
            raise ValueError(f"config[{key!r}] must be > 0, got {cfg[key]}")
    # §3 optional model inputs (shared experts, leading dense layers, MLA)
    cfg.update(_validate_model_optional(config, cfg, "config"))
    cfg.update(_validate_prefix_config(config))
    cfg["shape_corr"] = _validate_shape_corr(config.get("shape_corr"))
    # §2.3 rule 4 (vLLM's scheduler_reserve_full_isl) and §2.10 asynchronous scheduling
    # (mode v1 only): each a bool or 0/1, off when absent
    for key in ("reserve_full_isl", "async_scheduling"):
        flag = config.get(key, False)
        if not (isinstance(flag, (bool, np.bool_)) or (
                isinstance(flag, (int, np.integer)) and flag in (0, 1))):
            raise ValueError(f"config[{key!r}] must be a bool (or 0/1), got {flag!r}")
        cfg[key] = bool(flag)
    cfg.update(_validate_spec_config(config))
    cfg["scheduling_policy"] = _validate_scheduling_policy(config, cfg)
    return cfg


def _validate_scheduling_policy(config: Mapping[str, Any], cfg: Mapping[str, Any]) -> str:
    """§10: the optional ``scheduling_policy`` ("fcfs" when absent, or "priority").

    Args:
        config: the raw lane configuration.
        cfg: the already normalised configuration (``mode``,
            ``enable_prefix_caching`` and ``spec_tokens`` are read).

    Returns:
        The policy as a ``str``.

    Raises:
        ValueError: naming the key, the value and what is allowed: a value other than
            "fcfs" or "priority", and "priority" in mode "v0", with prefix caching on
            or with speculative decoding on (``spec_tokens > 0``), which §10 refuses
            in this version. (External KV, §8, is a workload input: it is refused in
            ``simulate_reference``.)
    """
    policy = config.get("scheduling_policy", "fcfs")
    if not isinstance(policy, str) or policy not in SCHEDULING_POLICIES:
        raise ValueError(
            f"config['scheduling_policy'] must be one of {list(SCHEDULING_POLICIES)}, "
            f"got {policy!r}")
    policy = str(policy)
    if policy == "priority":
        if cfg["mode"] != "v1":
            raise ValueError(
                f"config['scheduling_policy'] = 'priority' applies in mode 'v1' only "
                f"(§10), got mode = {cfg['mode']!r}; use 'fcfs' in v0")
        if cfg["enable_prefix_caching"]:
            raise ValueError(
                "config['scheduling_policy'] = 'priority' cannot be combined with "
                "enable_prefix_caching = True in this version (§10); allowed: "
                "prefix caching off, or scheduling_policy 'fcfs'")
        if cfg["spec_tokens"] > 0:
            raise ValueError(
                f"config['scheduling_policy'] = 'priority' cannot be combined with "
                f"speculative decoding (spec_tokens = {cfg['spec_tokens']}) in this "
                f"version (§10); allowed: spec_tokens = 0, or scheduling_policy 'fcfs'")
    return policy


def _validate_model_optional(
    raw: Mapping[str, Any], model: Mapping[str, Any], where: str
) -> dict[str, int]:
    """Normalises and checks the §3 optional model inputs (defaults for absent ones).

    Args:
        raw: the mapping the keys are read from (the lane's config, or its
            ``spec_draft``).
        model: the already normalised required model keys of the same model
            (``num_layers`` and ``head_dim`` are read).
        where: how error messages name ``raw`` (``"config"`` or
            ``"config['spec_draft']"``).

    Returns:
        Every key of ``MODEL_OPTIONAL_DEFAULTS`` as an ``int`` (``mla`` 0 or 1).

    Raises:
        ValueError: naming the key, the value and what is allowed: a value that is
            not a non-negative integer, ``mla`` not a bool or 0/1,
            ``num_dense_layers > num_layers``, ``dense_ffn_size < 1`` with dense
            layers, and with ``mla = 1``: ``kv_lora_rank < 1``, ``qk_rope_head_dim``
            outside ``1 … head_dim - 1`` (so that ``d_n = hd - d_r >= 1``) or
            ``v_head_dim < 1``.
    """
    out: dict[str, int] = {}
    for key, default in MODEL_OPTIONAL_DEFAULTS.items():
        value = raw.get(key, default)
        if key == "mla":
            if isinstance(value, (bool, np.bool_)) or (
                    isinstance(value, (int, np.integer)) and value in (0, 1)):
                out[key] = int(bool(value))
                continue
            raise ValueError(f"{where}['mla'] must be 0 or 1 (or a bool), got {value!r}")
        try:
            out[key] = _as_int(key, value)
        except ValueError as exc:
            raise ValueError(
                f"{where}[{key!r}] must be a non-negative integer, got {value!r}") from exc
        if out[key] < 0:
            raise ValueError(
                f"{where}[{key!r}] must be a non-negative integer, got {out[key]}")
    if out["num_dense_layers"] > model["num_layers"]:
        raise ValueError(
            f"{where}['num_dense_layers'] must be <= num_layers = {model['num_layers']}, "
            f"got {out['num_dense_layers']}")
    if out["num_dense_layers"] > 0 and out["dense_ffn_size"] < 1:
        raise ValueError(
            f"{where}['dense_ffn_size'] must be >= 1 with num_dense_layers = "
            f"{out['num_dense_layers']} > 0, got {out['dense_ffn_size']}")
    if out["mla"]:
        if out["kv_lora_rank"] < 1:
            raise ValueError(
                f"{where}['kv_lora_rank'] must be >= 1 with mla = 1, "
                f"got {out['kv_lora_rank']}")
        if not 0 < out["qk_rope_head_dim"] < model["head_dim"]:
            raise ValueError(
                f"{where}['qk_rope_head_dim'] must be in 1 … head_dim - 1 = "
                f"{model['head_dim'] - 1} with mla = 1 (d_n = head_dim - d_r >= 1), "
                f"got {out['qk_rope_head_dim']}")
        if out["v_head_dim"] < 1:
            raise ValueError(
                f"{where}['v_head_dim'] must be >= 1 with mla = 1, "
                f"got {out['v_head_dim']}")
    # AMBIGUITY: with mla = 0 the MLA keys (q_lora_rank, kv_lora_rank,
    # qk_rope_head_dim, v_head_dim) are accepted whatever their (non-negative) values
    # and ignored, as is dense_ffn_size with num_dense_layers = 0: §3 only reads them
    # "with MLA" / for the Ld dense layers.
    return out


def spec_accept_units(alpha: float, k: int) -> list[int]:
    """§9: ``A[j] = round(65536 · Σ_{i=1..j} α^i)`` for ``j = 0 … k`` (``A[0] = 0``).

    Computed in Python floats: ``alpha ** i`` summed in order ``i = 1..j``, then
    Python's ``round`` (of ``65536 · sum``).

    Args:
        alpha: per-token acceptance probability, in [0, 1].
        k: the number of draft tokens K, in 0..16.

    Returns:
        The K + 1 integers ``A[0..K]`` (``config['spec_accept_units']``).

    Raises:
        ValueError: ``alpha`` outside [0, 1] or ``k`` outside 0..16.
    """
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"spec_accept_units: alpha must be in [0, 1], got {alpha!r}")
    if isinstance(k, bool) or int(k) != k or not 0 <= int(k) <= SPEC_MAX_TOKENS:
        raise ValueError(
            f"spec_accept_units: k must be an integer in 0..{SPEC_MAX_TOKENS}, got {k!r}")
    out = [0]
    for j in range(1, int(k) + 1):
        total = 0.0
        for i in range(1, j + 1):
            total += alpha ** i
        out.append(round(SPEC_UNIT * total))
    return out


def _validate_spec_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Normalises and checks the optional §9 keys (defaults for absent ones).

    Returns:
        ``spec_tokens`` (int K), ``spec_accept_units`` (tuple of K + 1 ints) and
        ``spec_draft`` (None, or a dict with every MODEL_KEYS key, ints for the
        integral fields and floats for the bytes, plus ``bytes_per_lm_head_weight``
        and every §3 optional model key of ``MODEL_OPTIONAL_DEFAULTS``, defaults
        filled in).

    Raises:
        ValueError: naming the key, the value and what is allowed.
    """
    out: dict[str, Any] = {}
    raw_k = config.get("spec_tokens", 0)
    K = _as_int("spec_tokens", raw_k)
    if not 0 <= K <= SPEC_MAX_TOKENS:
        raise ValueError(
            f"config['spec_tokens'] must be an integer in 0..{SPEC_MAX_TOKENS}, "
            f"got {raw_k!r}")
    out["spec_tokens"] = K

    raw_a = config.get("spec_accept_units")
    if raw_a is None:
        units: tuple[int, ...] = (0,) * (K + 1)
    else:
        vals = _as_list("spec_accept_units", raw_a)
        if len(vals) != K + 1:
            raise ValueError(
                f"config['spec_accept_units'] must have spec_tokens + 1 = {K + 1} "
                f"entries (A[0..K]), got {len(vals)}: {raw_a!r}")
        units = tuple(_as_int(f"spec_accept_units[{j}]", v)
                      for j, v in enumerate(vals))
        if units[0] != 0:
            raise ValueError(
                f"config['spec_accept_units'][0] must be 0, got {units[0]} (in {units})")
        for j in range(1, K + 1):
            if units[j] < units[j - 1]:
                raise ValueError(
                    f"config['spec_accept_units'] must be non-decreasing, got "
                    f"A[{j}] = {units[j]} < A[{j - 1}] = {units[j - 1]} (in {units})")
            if units[j] > SPEC_UNIT * j:
                raise ValueError(
                    f"config['spec_accept_units'][{j}] must be <= {SPEC_UNIT}·{j} = "
                    f"{SPEC_UNIT * j} (at most j accepted drafts out of j), got "
                    f"{units[j]} (in {units})")
    out["spec_accept_units"] = units

    raw_d = config.get("spec_draft")
    if raw_d is None:
        out["spec_draft"] = None
        return out
    if not isinstance(raw_d, Mapping):
        raise ValueError(
            f"config['spec_draft'] must be None or a mapping of the draft model's "
            f"keys {list(MODEL_KEYS)}, got {raw_d!r}")
    missing = [key for key in MODEL_KEYS if key not in raw_d]
    if missing:
        raise ValueError(f"config['spec_draft'] is missing keys: {missing}")
    allowed = (*MODEL_KEYS, "bytes_per_lm_head_weight", *MODEL_OPTIONAL_DEFAULTS)
    unknown = sorted(str(key) for key in raw_d if key not in allowed)
    if unknown:
        raise ValueError(
            f"config['spec_draft'] has unknown keys: {unknown} (allowed: {list(allowed)})")
    draft: dict[str, Any] = {}
    for key in MODEL_KEYS:
        value = raw_d[key]
        name = f"spec_draft.{key}"
        draft[key] = _as_int(name, value) if key in _INT_KEYS else _as_float(name, value)
    # As the lane's own model keys (validate_config).
    for key in ("num_heads", "num_kv_heads", "num_experts", "experts_per_token"):
        if draft[key] < 1:
            raise ValueError(
                f"config['spec_draft'][{key!r}] must be >= 1, got {draft[key]}")
    # §3's optional model inputs of the draft model, defaults filled in: all of them
    # are in the dict, so the lane's own (say its MLA) never leak into the drafter's
    # CostModel, which is built from the lane's config updated with this dict.
    draft.update(_validate_model_optional(raw_d, draft, "config['spec_draft']"))
    draft["bytes_per_lm_head_weight"] = _as_float(
        "spec_draft.bytes_per_lm_head_weight",
        raw_d.get("bytes_per_lm_head_weight", draft["bytes_per_weight"]))
    if not draft["bytes_per_lm_head_weight"] > 0.0:
        raise ValueError(
            f"config['spec_draft']['bytes_per_lm_head_weight'] must be > 0, got "
            f"{draft['bytes_per_lm_head_weight']}")
    out["spec_draft"] = draft
    return out


def _shape_corr_knots() -> list[int]:
    """§3.1: 1, 2, 4, every 8 tokens from 8 to 1024, then 64 knots per octave (steps
    of 16, 32, 64, 128, 256 tokens) to 32768."""
    knots = [1, 2, 4] + list(range(8, 1025, 8))
    for octave in range(5):
        step = 16 * 2**octave
        start = 1024 * 2**octave
        knots += list(range(start + step, 2 * start + 1, step))
    return knots


SHAPE_CORR_KNOTS: tuple[int, ...] = tuple(_shape_corr_knots())
SHAPE_CORR_OPS: tuple[str, ...] = (
    "qkv_proj", "o_proj", "mlp_up", "mlp_down", "norm", "residual_add", "activation",
    "rotary", "embedding", "all_reduce",
)
#: §3.1: the all-reduce table's axis is its message size in units of 2048 bytes.
SHAPE_CORR_AR_UNIT = 2048.0


def _validate_shape_corr(value: Any) -> dict[str, list[float]]:
    """§3.1 tables: ``{op: [delta at each knot]}`` (absent or None: no table)."""
    if value is None:
        return {}
    out = {}
    for op, row in dict(value).items():
        if op not in SHAPE_CORR_OPS:
            raise ValueError(f"config['shape_corr'] has unknown operator {op!r}")
        vals = [float(v) for v in np.asarray(row, dtype=np.float64).reshape(-1)]
        if len(vals) != len(SHAPE_CORR_KNOTS):
            raise ValueError(f"config['shape_corr'][{op!r}] must have "
                             f"{len(SHAPE_CORR_KNOTS)} values, got {len(vals)}")
        out[op] = vals
    return out


def _as_list(name: str, value: Any) -> list[Any]:
    """A per-tier config value as a flat Python list (numpy arrays accepted)."""
    if isinstance(value, (str, bytes, Mapping)):
        raise ValueError(f"config[{name!r}] must be a list, got {value!r}")
    try:
        return list(np.asarray(value, dtype=object).reshape(-1))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config[{name!r}] must be a list, got {value!r}") from exc


def _as_float(name: str, value: Any) -> float:
    """A finite real config value as ``float``."""
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config[{name!r}] must be a number, got {value!r}") from exc
    if not math.isfinite(out):
        raise ValueError(f"config[{name!r}] must be finite, got {value!r}")
    return out


def _validate_prefix_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Normalises and checks the optional §5 keys (defaults for absent ones).

    Raises:
        ValueError: naming the offending key (list lengths differ, a bandwidth is not
            > 0, a capacity or latency or weight is < 0, the overlap is outside
            [0, 1], a tier's link has no bandwidth, ``adm_window`` < 1, an energy
            input is negative or infinite, ``enable_prefix_caching``, ``swap`` or
            ``prefetch`` is not a bool or 0/1).
    """
    raw = {key: config.get(key, default) for key, default in PREFIX_CONFIG_DEFAULTS.items()}
    out: dict[str, Any] = {}
    # enable_prefix_caching, §5.10 swap and §5.11 prefetch: bools, or 0/1.
    for key in ("enable_prefix_caching", "swap", "prefetch"):
        flag = raw[key]
        if isinstance(flag, (bool, np.bool_)) or (
            isinstance(flag, (int, float, np.integer, np.floating)) and flag in (0, 1)
        ):
            out[key] = bool(flag)
        else:
            raise ValueError(f"config[{key!r}] must be a bool (or 0/1), got {flag!r}")

    lists = {key: _as_list(key, raw[key]) for key in _TIER_LIST_KEYS}
    num_lower = len(lists["tier_capacity_blocks"])
    for key in _TIER_LIST_KEYS:
        if len(lists[key]) != num_lower:
            raise ValueError(
                f"config[{key!r}] has {len(lists[key])} entries, but "
                f"'tier_capacity_blocks' has {num_lower} (one per lower tier)"
            )
    caps = tuple(_as_int("tier_capacity_blocks", v) for v in lists["tier_capacity_blocks"])
    if any(v < 0 for v in caps):
        raise ValueError(f"config['tier_capacity_blocks'] must be >= 0, got {caps}")
    out["tier_capacity_blocks"] = caps
    for key in ("tier_read_bw", "tier_write_bw"):
        vals = tuple(_as_float(key, v) for v in lists[key])
        if any(not v > 0.0 for v in vals):
            raise ValueError(f"config[{key!r}] must be > 0, got {vals}")
        out[key] = vals
    lats = tuple(_as_float("tier_latency_s", v) for v in lists["tier_latency_s"])
    if any(v < 0.0 for v in lats):
        raise ValueError(f"config['tier_latency_s'] must be >= 0, got {lats}")
    out["tier_latency_s"] = lats
    out["tier_link"] = tuple(_as_int("tier_link", v) for v in lists["tier_link"])

    link_raw = raw["tier_link_bw"]
    if isinstance(link_raw, Mapping):
        items = [(_as_int("tier_link_bw", k), v) for k, v in link_raw.items()]
    else:
        items = list(enumerate(_as_list("tier_link_bw", link_raw)))
    link_bw: dict[int, float] = {}
    for link_id, bw in items:
        link_bw[link_id] = _as_float("tier_link_bw", bw)
        if not link_bw[link_id] > 0.0:
            raise ValueError(f"config['tier_link_bw'][{link_id}] must be > 0, got {bw!r}")
    for t, link_id in enumerate(out["tier_link"], start=1):
        if link_id not in link_bw:
            raise ValueError(
                f"config['tier_link'] of tier {t} is link {link_id}, "
                f"which has no bandwidth in config['tier_link_bw']"
            )
    out["tier_link_bw"] = link_bw

    for key in ("w_rec", "w_freq", "w_depth"):
        out[key] = _as_float(key, raw[key])
        if out[key] < 0.0:
            raise ValueError(f"config[{key!r}] must be >= 0, got {out[key]}")
    out["load_overlap"] = _as_float("load_overlap", raw["load_overlap"])
    if not 0.0 <= out["load_overlap"] <= 1.0:
        raise ValueError(
            f"config['load_overlap'] must be in [0, 1], got {out['load_overlap']}"
        )

    # §5.8: w_adm >= 0 (a float32 in the key), W = adm_window >= 1 (int).
    out["w_adm"] = _as_float("w_adm", raw["w_adm"])
    with np.errstate(over="ignore"):
        w_adm_f32 = np.float32(out["w_adm"])
    if out["w_adm"] < 0.0 or not np.isfinite(w_adm_f32):
        raise ValueError(
            f"config['w_adm'] must be >= 0 and finite as a float32, got {out['w_adm']}"
        )
    out["adm_window"] = _as_int("adm_window", raw["adm_window"])
    if out["adm_window"] < 1:
        raise ValueError(f"config['adm_window'] must be >= 1, got {out['adm_window']}")

    # §5.9: static power (W) and energy per bit (pJ/bit) per lower tier; NaN means
    # unknown (and is the default). Other values must be finite and >= 0.
    for key in _TIER_ENERGY_KEYS:
        if raw[key] is None:
            out[key] = (math.nan,) * num_lower
            continue
        vals_list = _as_list(key, raw[key])
        if len(vals_list) != num_lower:
            raise ValueError(
                f"config[{key!r}] has {len(vals_list)} entries, but "
                f"'tier_capacity_blocks' has {num_lower} (one per lower tier)"
            )
        vals = []
        for v in vals_list:
            try:
                as_float = float(v)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"config[{key!r}] must hold numbers, got {v!r}") from exc
            if not (math.isnan(as_float) or (math.isfinite(as_float) and as_float >= 0.0)):
                raise ValueError(
                    f"config[{key!r}] must be finite and >= 0 (or NaN), got {v!r}"
                )
            vals.append(as_float)
        out[key] = tuple(vals)
    return out


# --------------------------------------------------------------------------------------
# §3 cost model
# --------------------------------------------------------------------------------------


class CostModel:
    """The §3 iteration-time formula for one lane, with the per-lane constants cached.

    Attributes:
        cfg: the normalised lane configuration.
    """

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        """Precomputes the per-GPU sizes, the layer mix and the attention-kind
        quantities of §3.

        Args:
            cfg: a configuration already normalised by ``validate_config`` (a
                mapping without the §3 optional model keys is read with their
                defaults: a plain model).
        """
        self.cfg = cfg
        tp = cfg["tp"]
        opt = {key: cfg.get(key, default) for key, default in MODEL_OPTIONAL_DEFAULTS.items()}
        self.L = float(cfg["num_layers"])
        self.h = float(cfg["hidden_size"])
        self.hd = float(cfg["head_dim"])
        self.V = float(cfg["vocab_size"])
        self.E = float(cfg["num_experts"])
        self.k = float(cfg["experts_per_token"])
        self.bw_w = cfg["bytes_per_weight"]
        self.tp = tp
        self.mla = bool(opt["mla"])
        # Per-GPU sizes. AMBIGUITY: f/tp and V/tp need not be integers; they are used
        # as real numbers (plain division), exactly as written.
        self.nh_g = cfg["num_heads"] / tp
        # §3: "for an MLA model ... nkv is 1 (every head reads the one latent)".
        # AMBIGUITY: with mla = 1 the configured num_kv_heads is not read: nkv = 1
        # (here nkv_g = max(1/tp, 1) = 1, which no MLA term uses; and in §0's
        # feasibility rule, see is_feasible), rather than num_kv_heads being
        # required to be 1.
        nkv = 1 if self.mla else cfg["num_kv_heads"]
        self.nkv_g = max(nkv / tp, 1.0)
        self.f_g = cfg["ffn_size"] / tp
        self.V_g = cfg["vocab_size"] / tp
        bw_kv = cfg["bytes_per_kv"]
        if self.mla:
            # §3: kvb = (r_kv + d_r)·bw_kv, the latent and the rotary key, the same on
            # every GPU (the latent is not split by tensor parallelism).
            self.kvb = (float(opt["kv_lora_rank"]) + float(opt["qk_rope_head_dim"])) * bw_kv
        else:
            self.kvb = 2.0 * self.nkv_g * self.hd * bw_kv

        # §3 layer mix (MoE): a = (L − Ld)/L, b = ((L − Ld)·s + Ld·fd/f)/L,
        # ke = a·k + b expert-widths of rows per token, We = a·Eact + b experts'
        # weights per layer (gpu_time, as Eact depends on T). A plain model has
        # a = L/L = 1.0 and b = (L·0 + 0·fd/f)/L = 0.0 exactly, so ke = 1.0·k + 0.0
        # = k and We = Eact bit for bit.
        # AMBIGUITY: "Ld·fd/f" is evaluated left to right, (Ld·fd)/f, with the full
        # (not per-GPU) FFN sizes.
        L, Ld = self.L, float(opt["num_dense_layers"])
        s = float(opt["num_shared_experts"])
        fd, f = float(opt["dense_ffn_size"]), float(cfg["ffn_size"])
        self.a = (L - Ld) / L
        self.b = ((L - Ld) * s + Ld * fd / f) / L
        self.ke = self.a * self.k + self.b

        # §3 per-layer attention quantities: Nqkv and Wqkv (qkv_proj's N and
        # weights), dv (o_proj), Nrot (rotary, kept as its two factors so that the
        # plain model's bytes 2·ab·T·(nh_g + nkv_g)·hd are evaluated in the same order
        # as before), wp / wd (prefill / decode per-head widths), Fu (FLOPs of the KV
        # up-projection per token) and kvp (prefill bytes per context token).
        nh_g, hd, h = self.nh_g, self.hd, self.h
        if self.mla:
            r_q = float(opt["q_lora_rank"])
            r_kv = float(opt["kv_lora_rank"])
            d_r = float(opt["qk_rope_head_dim"])
            dv = float(opt["v_head_dim"])
            d_n = hd - d_r
            # Nq: the query projection's weights (down and up with r_q > 0).
            n_q = h * r_q + r_q * nh_g * hd if r_q > 0 else h * nh_g * hd
            # Eqkv (FLOPs per row over 2) and Aqkv (activation elements per row)
            self.qkv_e = n_q + h * (r_kv + d_r)
            self.qkv_a = h + (r_q if r_q > 0 else 0.0) + nh_g * hd + r_kv + d_r
            # Wqkv = Eqkv + the KV up-projection's weights r_kv·nh_g·(d_n + dv)
            self.qkv_w_bytes = self.bw_w * (self.qkv_e + r_kv * nh_g * (d_n + dv))
            self.dv = dv
            self.rot_heads, self.rot_width = nh_g + 1.0, d_r  # Nrot = (nh_g + 1)·d_r
            self.wp = hd + dv
            self.wd = 2.0 * r_kv + d_r
            self.Fu = 2.0 * r_kv * nh_g * (d_n + dv)
            self.kvp = self.kvb + AB * nh_g * (d_n + dv)
        else:
            self.qkv_n = (nh_g + 2.0 * self.nkv_g) * hd
            # Wqkv = h·Nqkv; bw_w·Wqkv evaluated as (bw_w·h)·Nqkv, the order of the
            # formula before §3's MLA extension (same real number).
            self.qkv_w_bytes = self.bw_w * h * self.qkv_n
            self.dv = hd
            self.rot_heads, self.rot_width = nh_g + self.nkv_g, hd
            self.wp = self.wd = 2.0 * hd
            self.Fu = 0.0
            self.kvp = self.kvb
        self.peak = cfg["peak_flops"]
        self.peak16 = cfg["peak_flops_16bit"]
        self.hbm = cfg["hbm_bw"]
        self.link = cfg["link_bw"]
        self.k_o = cfg["kernel_overhead_s"]
        self.p = cfg["smooth_p"]
        self.corr = cfg.get("shape_corr") or {}
        self.fam = {
            op: (
                cfg[f"eta_c_{op}"],
                cfg[f"f0_{op}"],
                cfg[f"eta_m_{op}"],
                cfg[f"b0_{op}"],
            )
            for op in ROOF_COST_OPS
        }
        self._dense_cache: dict[tuple[int, int], tuple] = {}

    def smax(self, a: float, b: float) -> float:
        """Smooth maximum ``(a^p + b^p)^(1/p)``, 0 if ``a = b = 0``.

        AMBIGUITY/numerics: evaluated as ``m * ((a/m)^p + (b/m)^p)^(1/p)`` with
        ``m = max(a, b)``, which is the same number mathematically but does not
        underflow to 0 for large ``p`` and tiny times (seconds ~1e-5 raised to p).
        """
        if a == 0.0 and b == 0.0:
            return 0.0
        p = self.p
        m = a if a >= b else b
        return m * ((a / m) ** p + (b / m) ** p) ** (1.0 / p)

    def roof(self, fam: str, flops: float, nbytes: float) -> float:
        """``roof(op, F, B)`` of §3 (``fam`` is the operator name)."""
        eta_c, f0, eta_m, b0 = self.fam[fam]
        peak = self.peak if fam in GEMM_PEAK_OPS else self.peak16
        t_c = (flops + f0) / (peak * eta_c)
        t_m = (nbytes + b0) / (self.hbm * eta_m)
        return self.smax(t_c, t_m) + self.k_o

    def delta(self, op: str, x: float) -> float:
        """§3.1: the table's relative correction of ``op`` at ``x`` tokens (0 without
        a table): linear between knots, constant beyond the first and last knot."""
        row = self.corr.get(op)
        if row is None:
            return 0.0
        knots = SHAPE_CORR_KNOTS
        x = min(max(x, knots[0]), knots[-1])
        j = min(bisect.bisect_right(knots, x) - 1, len(knots) - 2)
        k0, k1 = knots[j], knots[j + 1]
        return row[j] + (row[j + 1] - row[j]) * (x - k0) / (k1 - k0)

    def mem(self, g: str, nbytes: float, table: str | None = None, x: float = 0.0) -> float:
        """``mem(g, B)`` of §3 (memory-bound elementwise kernel of group ``g``), times
        ``1 + delta`` of the §3.1 table ``table`` at ``x`` tokens."""
        cfg = self.cfg
        t = (nbytes + cfg[f"b0_{g}"]) / (self.hbm * cfg[f"eta_m_{g}"]) + self.k_o
        return t + t * self.delta(table, x) if table else t

    def gemm(self, op: str, M: float, K: float, N: float, W: float) -> float:
        """``gemm(op, M, K, N, W)`` of §3 (times ``1 + delta`` of §3.1); 0 when ``M``
        is 0."""
        if M <= 0:
            return 0.0
        t = self.roof(op, 2.0 * M * K * N, W + AB * (M * K + M * N))
        return t + t * self.delta(op, M)

    def time(
        self,
        T: int,
        n: int,
        ns: int,
        Tp: int,
        Ap: float,
        Kp: int,
        D: int,
        Kd: int,
        overlap: bool = False,
        extra_gpu: float | None = None,
    ) -> float:
        """Iteration time ``dt`` from the batch features of §3 (``overlap``: §2.10's
        ``max(G, C)`` instead of ``G + C``).

        Args:
            T: all scheduled tokens.
            n: scheduled requests.
            ns: scheduled requests that sample a token (§9: a decoding request
                with drafts counts each of its q positions).
            Tp: prefill tokens.
            Ap: causal query-key pairs of the prefills.
            Kp: Σ (c + q) over prefills.
            D: number of decodes.
            Kd: Σ (c + 1) over decodes.
            overlap: §2.10's overlapped iteration.
            extra_gpu: GPU time added to ``G`` before it is combined with the CPU
                time (§9's ``G_draft``); None adds nothing.

        Returns:
            The iteration time in seconds; 0 for an empty batch (§2.5).
        """
        if T == 0:
            # §2.5: no scheduled token, no time ("all terms are 0 when T = 0").
            return 0.0
        gpu = self.gpu_time(T, ns, Tp, Ap, Kp, D, Kd)
        if extra_gpu is not None:
            gpu = gpu + extra_gpu  # §9: the drafter's GPU time is part of G
        cpu = self.cpu_time(n)
        # §2.10: an overlapped iteration's CPU overheads run alongside its GPU work
        return max(gpu, cpu) if overlap else gpu + cpu

    def cpu_time(self, n: int) -> float:
        """§3's CPU terms ``cpu_iter + cpu_seq · n`` (``C`` of §2.10)."""
        cfg = self.cfg
        return cfg["cpu_iter_s"] + cfg["cpu_seq_s"] * n

    def gpu_time(
        self,
        T: int,
        ns: int,
        Tp: int,
        Ap: float,
        Kp: int,
        D: int,
        Kd: int,
    ) -> float:
        """§3's GPU time ``G``: ``L·layer + embed + fnorm + lmhead + sample`` (no CPU
        terms); 0 for an empty batch (``T = 0``). Arguments as in ``time``."""
        if T == 0:
            return 0.0
        nh_g, kvb = self.nh_g, self.kvb
        wp, wd, Fu = self.wp, self.wd, self.Fu
        # the terms that depend on T and ns only, computed once per (T, ns)
        dense = self._dense_cache.get((T, ns))
        if dense is None:
            dense = self._dense_cache[(T, ns)] = self._dense(T, ns)
        s1, elem, ar, tail = dense
        # Attention. Numerics: §3 writes the FLOPs 2·nh_g·Ap·wp and 2·nh_g·Kd·wd; they
        # are evaluated as (2·nh_g·wp)·Ap and (2·nh_g·wd)·Kd, which for a plain model
        # (wp = wd = 2·hd, Fu = 0, kvp = kvb) reproduce bit for bit the previous
        # 4·nh_g·hd·Ap and ab·2·Tp·nh_g·hd + kvb·Kp (factors of 2 are exact).
        attnp = (
            self.roof(
                "attn_prefill",
                2.0 * nh_g * wp * Ap + Fu * Kp,
                AB * Tp * nh_g * wp + self.kvp * Kp,
            )
            if Tp > 0
            else 0.0
        )
        attnd = (
            self.roof(
                "attn_decode",
                2.0 * nh_g * wd * Kd + Fu * D,
                AB * D * nh_g * wd + kvb * Kd,
            )
            if D > 0
            else 0.0
        )
        # summed in the order qkv + o + up + down + attnp + attnd + elem + ar (s1 holds
        # the first four), then L·layer + embed + fnorm + lmhead + sample
        layer = s1 + attnp + attnd + elem + ar
        embed, fnorm, lmhead, sample = tail
        return self.L * layer + embed + fnorm + lmhead + sample

    def _dense(self, T: int, ns: int) -> tuple[float, float, float, tuple]:
        """The terms of ``gpu_time`` other than attention, which depend on ``T`` and
        ``ns`` only: (qkv + o + up + down, elem, ar, (embed, fnorm, lmhead, sample))."""
        cfg = self.cfg
        h, bw_w = self.h, self.bw_w
        nh_g, f_g, V_g, kvb = self.nh_g, self.f_g, self.V_g, self.kvb
        ke, dv = self.ke, self.dv
        Tf = float(T)
        E, k = self.E, self.k
        # routed experts touched (1 for dense); §3's layer mix: We = a·Eact + b
        e_act = E * (1.0 - (1.0 - k / E) ** T)
        we = self.a * e_act + self.b

        if self.mla:  # §3: roof(qkv_proj, 2·T·Eqkv, bw_w·Wqkv + ab·T·Aqkv), a GEMM of T rows
            qkv = self.roof("qkv_proj", 2.0 * Tf * self.qkv_e,
                            self.qkv_w_bytes + AB * Tf * self.qkv_a)
            qkv = qkv + qkv * self.delta("qkv_proj", Tf)
        else:
            qkv = self.gemm("qkv_proj", Tf, h, self.qkv_n, self.qkv_w_bytes)
        o = self.gemm("o_proj", Tf, nh_g * dv, h, bw_w * nh_g * dv * h)
        # §3.1: M = T·ke for mlp_up and mlp_down
        up = self.gemm("mlp_up", Tf * ke, h, 2.0 * f_g, bw_w * we * h * 2.0 * f_g)
        down = self.gemm("mlp_down", Tf * ke, f_g, h, bw_w * we * f_g * h)
        mem = self.mem
        elem = (
            2.0 * mem("norm", 2.0 * AB * Tf * h, "norm", Tf)  # two RMSNorms
            + 2.0 * mem("residual_add", 3.0 * AB * Tf * h, "residual_add", Tf)
            # SwiGLU, its §3.1 table at T·ke
            + mem("activation", 3.0 * AB * Tf * ke * f_g, "activation", Tf * ke)
            # rotary embedding, 2·ab·T·Nrot
            + mem("rotary", 2.0 * AB * Tf * self.rot_heads * self.rot_width, "rotary", Tf)
            + mem("kv_write", 2.0 * kvb * Tf)  # KV-cache write
        )
        tp = self.tp
        if tp > 1:
            one_ar = (
                cfg["ar_latency_s"]
                + (2.0 * (tp - 1) / tp) * AB * Tf * h / (self.link * cfg["eta_ar"])
            )
            # §3.1: each all-reduce moves ab·T·h bytes
            one_ar += one_ar * self.delta("all_reduce", AB * Tf * h / SHAPE_CORR_AR_UNIT)
            ar = 2.0 * one_ar
        else:
            ar = 0.0
        embed = mem("embedding", 2.0 * AB * Tf * h, "embedding", Tf)
        fnorm = mem("norm", 2.0 * AB * Tf * h, "norm", Tf)
        bw_lm = cfg["bytes_per_lm_head_weight"]
        lmhead = self.gemm("lm_head", float(ns), h, V_g, bw_lm * h * V_g)
        sample = mem("sampling", 4.0 * ns * self.V) if ns > 0 else 0.0
        return qkv + o + up + down, elem, ar, (embed, fnorm, lmhead, sample)

    def prefill_time_no_sample(self, x: int) -> float:
        """``C(x)`` of §5.3: one prefill request with ``c = 0``, ``q = x``, ``ns = 0``.

        The §3 features of that batch: ``T = Tp = Kp = x``, ``n = 1``, ``ns = 0``,
        ``Ap = x·(0 + (x + 1)/2)``, no decodes.
        """
        return self.time(x, 1, 0, x, x * (0 + (x + 1) / 2.0), x, 0, 0)

    @staticmethod
    def batch_features(
        batch: Sequence[tuple[int, int, int, int]],
        drafts: Sequence[int] | None = None,
    ) -> tuple[int, int, int, int, float, int, int, int]:
        """The §3 features ``(T, n, ns, Tp, Ap, Kp, D, Kd)`` of a batch of
        ``(q, c, n_known, g)`` tuples.

        Args:
            batch: one ``(q, c, n_known, g)`` per scheduled request (state before
                the iteration).
            drafts: §9, per request the number ``j`` of draft tokens among its
                ``q`` (None: no drafts anywhere). A request with ``j >= 1`` counts
                as a prefill of ``q`` tokens at context ``c`` that samples at each
                of its ``q`` positions; with ``j = 0`` it is classified as in §3.
        """
        T = n = ns = Tp = Kp = D = Kd = 0
        Ap = 0.0
        for idx, (q, c, n_known, g) in enumerate(batch):
            T += q
            n += 1
            if drafts is not None and drafts[idx] >= 1:
                # §9: the target's varlen attention over its q query tokens (Tp, Ap,
                # Kp; not D, Kd), and ns += q instead of 1.
                ns += q
                Tp += q
                Ap += q * (c + (q + 1) / 2.0)
                Kp += c + q
                continue
            if c + q == n_known:
                ns += 1
            # §3: a decode has g >= 1 and exactly one unknown-to-cache token.
            if g >= 1 and n_known - c == 1:
                D += 1
                Kd += c + 1
            else:
                Tp += q
                Ap += q * (c + (q + 1) / 2.0)
                Kp += c + q
        return T, n, ns, Tp, Ap, Kp, D, Kd

    def batch_time(self, batch: Sequence[tuple[int, int, int, int]],
                   overlap: bool = False) -> float:
        """Iteration time of a batch of ``(q, c, n_known, g)`` tuples (see §3; §2.10
        with ``overlap``)."""
        return self.time(*self.batch_features(batch), overlap)


def iteration_time(
    config: Mapping[str, Any], batch: Sequence[tuple[int, int, int, int]]
) -> float:
    """Evaluates the §3 cost model on one scheduled batch.

    Args:
        config: flat lane configuration (same keys as ``simulate_reference``).
        batch: one ``(q, c, n_known, g)`` tuple per scheduled request: tokens
            scheduled this iteration, computed tokens before it, ``P + g``, and
            generated tokens before it.

    Returns:
        ``dt`` in seconds (0.0 for an empty batch).
    """
    return CostModel(validate_config(config)).batch_time(batch)


# --------------------------------------------------------------------------------------
# §5 prefix cache and KV memory tiers
# --------------------------------------------------------------------------------------


class _Entry:
    """One §5.2 cache entry (one block id): ``tier``, ``last``, ``hits``, ``depth``."""

    __slots__ = ("tier", "last", "hits", "depth")

    def __init__(self, tier: int, last: int, hits: int, depth: int) -> None:
        self.tier = tier
        self.last = last
        self.hits = hits
        self.depth = depth


class PrefixCache:
    """The §5 cache state of one lane and its per-iteration update (§5.5-§5.6).

    Attributes:
        U: tokens per cache block (§5.1).
        T: number of tiers (tier 0 = HBM, 1 … T-1 the lower tiers).
        cap: capacity per tier (``cap[0]`` unused: tier 0 is bounded per iteration
            by §5.5 step 4).
        bblk: bytes of one cache block per GPU, ``Bblk`` of §5.1.
        usable: per tier, whether it is usable for hits (§5.3).
        swap_tier: the §5.10 swap tier ``ts``, the smallest ``t >= 1`` with
            ``cap_t > 0`` (None when there is none: swap then behaves as recompute).
        entries: block id -> entry (a block id has at most one entry).
        count: number of entries per tier.
        room: the §5.11 prefetch room of the last ``update``, ``cap_0`` minus the
            unpinned tier-0 entries after §5.5 (0 before the first update).
    """

    def __init__(self, cfg: Mapping[str, Any], cost: CostModel, U: int) -> None:
        """Sets up the tiers and decides which are usable for hits (§5.1, §5.3).

        Args:
            cfg: normalised configuration (``validate_config``).
            cost: the lane's §3 cost model (for ``C(x)``, ``L`` and ``kvb``).
            U: tokens per cache block.
        """
        self.U = U
        self.T = 1 + len(cfg["tier_capacity_blocks"])
        self.cap = [0, *cfg["tier_capacity_blocks"]]
        self.rbw = [math.inf, *cfg["tier_read_bw"]]
        self.wbw = [math.inf, *cfg["tier_write_bw"]]
        self.lat = [0.0, *cfg["tier_latency_s"]]
        self.link = [-1, *cfg["tier_link"]]
        self.lbw = cfg["tier_link_bw"]
        self.w_rec = np.float32(cfg["w_rec"])
        self.w_freq = np.float32(cfg["w_freq"])
        self.w_depth = np.float32(cfg["w_depth"])
        # §5.1: Bblk = U · L · kvb with §3's kvb (2·nkv_g·hd·bw_kv, nkv_g =
        # max(nkv/tp, 1); with MLA (r_kv + d_r)·bw_kv). The §5.10 swap bytes (sbytes)
        # and every load, demotion and prefetch are counted in Bblk.
        self.bblk = U * cost.L * cost.kvb
        # §5.3: tier 0 is always usable; a lower tier iff cap_t > 0 and loading one
        # block alone is not slower than computing it, C(U) - C(1).
        compute_one_block = cost.prefill_time_no_sample(U) - cost.prefill_time_no_sample(1)
        self.usable = [True]
        for t in range(1, self.T):
            load = max(
                self.lat[t] + self.bblk / self.rbw[t],
                self.bblk / self.lbw[self.link[t]],
            )
            self.usable.append(self.cap[t] > 0 and load <= compute_one_block)
        # §5.10: the swap tier is chosen by capacity alone ("Swap ignores §5.3").
        self.swap_tier: int | None = next(
            (t for t in range(1, self.T) if self.cap[t] > 0), None
        )
        self.entries: dict[int, _Entry] = {}
        self.count = [0] * self.T
        self.room = 0

    # ---- §5.4 lookup ------------------------------------------------------------------

    def lookup(self, hashes: Sequence[int], n_known: int) -> list[int]:
        """§5.4: the tiers of the hit blocks of a candidate (its ``c`` is 0).

        ``kmax = min(nh, floor((n_known - 1)/U))``; the hit blocks are the longest
        prefix ``0 … k-1`` (k <= kmax) of blocks with an entry in a usable tier.

        Returns:
            ``[tier of block 0, tier of block 1, …]``, one per hit block
            (so ``hit_blocks = len(result)``, ``h = hit_blocks · U``).
        """
        kmax = min(len(hashes), (n_known - 1) // self.U)
        tiers: list[int] = []
        for j in range(kmax):
            entry = self.entries.get(hashes[j])
            if entry is None or not self.usable[entry.tier]:
                break
            tiers.append(entry.tier)
        return tiers

    # ---- §5.2 eviction order ----------------------------------------------------------

    def eviction_order(self, ids: Sequence[int]) -> list[int]:
        """§5.2: ``ids`` sorted lowest score first; ties larger depth, then smaller id.

        ``score = w_rec·last + w_freq·hits - w_depth·depth`` compared exactly: the
        weights are float32 numbers, so each product is exact in float64, and
        ``math.fsum`` rounds their sum once (equal real scores give equal keys).
        """
        entries = [self.entries[b] for b in ids]
        wr, wf, wd = (float(np.float32(w)) for w in (self.w_rec, self.w_freq, self.w_depth))
        keyed = [
            (math.fsum((wr * e.last, wf * e.hits, -(wd * e.depth))), -e.depth, b)
            for e, b in zip(entries, ids, strict=True)
        ]
        keyed.sort()
        return [b for _, _, b in keyed]

    # ---- §5.5 update ------------------------------------------------------------------

    def _move(self, entry: _Entry, tier: int) -> None:
        self.count[entry.tier] -= 1
        entry.tier = tier
        self.count[tier] += 1

    def _demote(
        self,
        block: int,
        written: list[float],
        evicted: list[tuple[int, int, int | None]],
    ) -> None:
        """§5.5 step 5: an entry evicted from its tier t goes to the next tier t' > t
        with cap_t' > 0 (Bblk bytes written there) or, if there is none, is dropped.

        AMBIGUITY: the target is the next tier with cap > 0 whether or not it is
        usable for hits (§5.3 only restricts hits), so an unusable tier still
        receives (and pays for) demotion writes, as written.
        """
        entry = self.entries[block]
        src = entry.tier
        for dst in range(src + 1, self.T):
            if self.cap[dst] > 0:
                self._move(entry, dst)
                written[dst] += self.bblk
                evicted.append((block, src, dst))
                return
        self.count[src] -= 1
        del self.entries[block]
        evicted.append((block, src, None))

    def update(
        self,
        it: int,
        admitted_hits: Sequence[tuple[Sequence[int], Sequence[int]]],
        run: Sequence[tuple[Sequence[int], int, bool]],
        free_blocks: int,
        block_size: int,
        swap_used: int = 0,
    ) -> tuple[list[float], list[float], list[tuple[int, int, int | None]]]:
        """§5.5: the cache update of iteration ``it`` (after §2.7 retire).

        Args:
            it: the iteration index (iterations with a scheduled token before it).
            admitted_hits: per request admitted this iteration, ``(hashes, tiers)``
                with ``tiers`` the result of its lookup (one tier per hit block).
            run: per request of ``RUN``, ``(hashes, c after retire, finished)``.
            free_blocks: ``num_gpu_blocks - Σ_{RUN \\ FIN} ceil_div(c, block_size)``.
            block_size: tokens per KV block.
            swap_used: §5.10 blocks of the swap tier held by swapped requests after
                this iteration's swaps (0 without swap): step 5 lets the swap tier
                hold at most ``cap_ts - swap_used`` cache entries.

        Returns:
            ``(R, W, evicted)``: bytes read and written per tier in this iteration
            by the cache itself (steps 1 and 5; the caller adds §5.10's swap bytes)
            and the evictions ``(block id, from tier, to tier or None if dropped)``
            in the order they happened. Also sets ``self.room`` (§5.11).
        """
        U = self.U
        read = [0.0] * self.T
        written = [0.0] * self.T
        evicted: list[tuple[int, int, int | None]] = []

        # Step 1, hits: every admitted request, every block j < hit_blocks.
        # AMBIGUITY: two requests admitted in the same iteration that hit the same
        # lower-tier block both load it (2·Bblk read): the entry is still in that
        # tier during step 1, and the text says "for every admitted request".
        for hashes, tiers in admitted_hits:
            for j in range(len(tiers)):
                entry = self.entries[hashes[j]]
                entry.hits += 1
                if entry.tier >= 1:
                    read[entry.tier] += self.bblk

        # Step 2, touch; step 3, pinned = touched by requests in RUN \ FIN.
        created: set[int] = set()
        pinned: set[int] = set()
        for hashes, c, fin in run:
            for j in range(min(len(hashes), c // U)):
                block = hashes[j]
                entry = self.entries.get(block)
                if entry is None:
                    # AMBIGUITY: hits = 1 at creation, as step 2 says, although §5.2
                    # defines hits as "how many admissions used it".
                    entry = _Entry(tier=0, last=it, hits=1, depth=j)
                    self.entries[block] = entry
                    self.count[0] += 1
                    created.add(block)
                elif block in created:
                    # Created by several requests in this iteration: smallest j.
                    entry.depth = min(entry.depth, j)
                if entry.tier != 0:
                    # Recomputed while in a lower tier: moves to HBM without a read.
                    self._move(entry, 0)
                entry.last = it
                if not fin:
                    pinned.add(block)

        # Step 4, HBM limit: at most cap_0 unpinned entries in tier 0. (Every pinned
        # entry is in tier 0, as step 2 just moved it there.)
        cap0 = free_blocks * block_size // U
        excess = self.count[0] - len(pinned) - cap0
        if excess > 0:
            unpinned = [
                b for b, e in self.entries.items() if e.tier == 0 and b not in pinned
            ]
            for block in self.eviction_order(unpinned)[:excess]:
                self._demote(block, written, evicted)
        # §5.11 room: cap_0 minus the unpinned tier-0 entries after §5.5 (step 5
        # never moves an entry into tier 0, so this is also the count after step 5).
        self.room = cap0 - (self.count[0] - len(pinned))

        # Step 5, demotion cascade through the lower tiers, in order.
        # §5.10 tier space: the swap tier holds at most cap_ts - swap_used entries.
        # AMBIGUITY: the demotion TARGET is still "the next tier t' > t with
        # cap_t' > 0" (step 5 as written, §5.10 only bounds what the tier holds), so
        # with cap_ts - swap_used = 0 an entry evicted from HBM is still demoted into
        # ts (Bblk written to ts) and then evicted from it as excess (demoted on, with
        # a second write, or dropped).
        for t in range(1, self.T):
            cap_t = self.cap[t] - swap_used if t == self.swap_tier else self.cap[t]
            excess = self.count[t] - cap_t
            if excess > 0:
                in_tier = [b for b, e in self.entries.items() if e.tier == t]
                for block in self.eviction_order(in_tier)[:excess]:
                    self._demote(block, written, evicted)
        return read, written, evicted

    # ---- §5.11 prefetch ---------------------------------------------------------------

    def prefetch(
        self,
        it: int,
        requests: Sequence[tuple[Sequence[int], int]],
        read: list[float],
        written: Sequence[float],
        window: float,
    ) -> list[tuple[int, int]]:
        """§5.11: prefetch lower-tier prefix blocks of waiting requests into HBM.

        Called after ``update`` (the cache state after §5.5, ``self.room`` set) with
        the iteration's complete ``R_t``/``W_t`` (swap bytes included), so that
        ``x(0)`` is §5.6's ``x``.

        Args:
            it: the iteration index (the new ``last`` of a prefetched entry).
            requests: the prefetch requests in order of ``p``, each
                ``(hashes, n_known)``.
            read: ``R_t`` per tier; the prefetch reads are added to it in place.
            written: ``W_t`` per tier.
            window: ``f · dtc``.

        Returns:
            The prefetched blocks ``(block id, former tier)``, in candidate order
            (``n* = len(result)``).
        """
        U = self.U
        # Candidates: blocks j < pk (the prefix with an entry in ANY tier) whose entry
        # is in a lower tier, in (p, j) order, each block id at its first occurrence.
        candidates: list[tuple[int, int]] = []
        seen: set[int] = set()
        for hashes, n_known in requests:
            kmax = min(len(hashes), (n_known - 1) // U)
            for j in range(kmax):
                entry = self.entries.get(hashes[j])
                if entry is None:
                    break  # pk = j
                if entry.tier >= 1 and hashes[j] not in seen:
                    seen.add(hashes[j])
                    candidates.append((hashes[j], entry.tier))

        def reads_with(n: int) -> list[float]:
            """R_t increased by Bblk per each of the first n candidates in tier t
            (``R_t + count·Bblk``: one product and one sum per tier)."""
            extra = [0] * self.T
            for _, t in candidates[:n]:
                extra[t] += 1
            return [read[t] + extra[t] * self.bblk for t in range(self.T)]

        x0 = self.transfer_time(read, written)
        bound = max(x0, window)
        # n* = the largest n <= room with x(n) <= max(x(0), f·dtc). x(n) does not
        # decrease with n, but the largest such n is searched literally.
        n_star = 0
        for n in range(1, min(self.room, len(candidates)) + 1):
            if self.transfer_time(reads_with(n), written) <= bound:
                n_star = n
        final = reads_with(n_star)
        for t in range(self.T):
            read[t] = final[t]
        moved = candidates[:n_star]
        for block, _t in moved:
            entry = self.entries[block]
            self._move(entry, 0)
            entry.last = it  # hits unchanged
        return moved

    # ---- §5.6 transfer time -----------------------------------------------------------

    def transfer_time(self, read: Sequence[float], written: Sequence[float]) -> float:
        """§5.6: ``x = max(0, max_t dev_t, max_l link_l)`` for one iteration."""
        x = 0.0
        # links are full duplex: reads (to HBM) and writes (from HBM) each have lbw
        link_read: dict[int, float] = {}
        link_write: dict[int, float] = {}
        for t in range(1, self.T):
            moved = read[t] + written[t]
            dev = read[t] / self.rbw[t] + written[t] / self.wbw[t]
            dev += self.lat[t] if moved > 0 else 0.0
            x = max(x, dev)
            link_read[self.link[t]] = link_read.get(self.link[t], 0.0) + read[t]
            link_write[self.link[t]] = link_write.get(self.link[t], 0.0) + written[t]
        for link_id, r in link_read.items():
            x = max(x, max(r, link_write[link_id]) / self.lbw[link_id])
        return x


# --------------------------------------------------------------------------------------
# §0 feasibility
# --------------------------------------------------------------------------------------


def is_feasible(
    cfg: Mapping[str, Any], prompt: Sequence[int], output: Sequence[int]
) -> bool:
    """The feasibility rules of §0 (checked once per lane).

    Args:
        cfg: normalised configuration.
        prompt: prompt lengths P.
        output: output lengths O.

    Returns:
        True when every rule holds.
    """
    chunked = cfg["enable_chunked_prefill"] and cfg["mode"] == "v1"
    mml = cfg["max_model_len"]
    usable = cfg["num_gpu_blocks"] - cfg["watermark_blocks"]
    # v0: one block more, free for a decode to touch (§2.4)
    spare = 1 if cfg["mode"] == "v0" else 0
    if not (usable >= ceil_div(mml, cfg["block_size"]) + spare and cfg["num_gpu_blocks"] > 0):
        return False
    if any(p + o > mml for p, o in zip(prompt, output, strict=True)):
        return False
    if not chunked and cfg["max_num_batched_tokens"] < mml:
        return False
    if cfg["max_num_batched_tokens"] < cfg["max_num_seqs"]:
        return False
    nh, nkv, tp = cfg["num_heads"], cfg["num_kv_heads"], cfg["tp"]
    # AMBIGUITY: §3 says an MLA model's nkv is 1, so with mla = 1 the KV-head rule is
    # checked with nkv = 1 (it then always holds), whatever num_kv_heads says.
    if cfg.get("mla", 0):
        nkv = 1
    return nh % tp == 0 and (nkv % tp == 0 or tp % nkv == 0)


# --------------------------------------------------------------------------------------
# Workload
# --------------------------------------------------------------------------------------


def _check_workload(
    workload: Mapping[str, Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validates and converts the workload arrays (§0 Workload)."""
    for key in ("arrival_s", "prompt_tokens", "output_tokens"):
        if key not in workload:
            raise KeyError(f"workload is missing {key!r}")
    arrival = np.asarray(workload["arrival_s"], dtype=np.float64).reshape(-1)
    prompt_raw = np.asarray(workload["prompt_tokens"]).reshape(-1)
    output_raw = np.asarray(workload["output_tokens"]).reshape(-1)
    if not (arrival.shape == prompt_raw.shape == output_raw.shape):
        raise ValueError("workload arrays must have the same length")
    prompt = prompt_raw.astype(np.int64)
    output = output_raw.astype(np.int64)
    if np.any(prompt != prompt_raw) or np.any(output != output_raw):
        raise ValueError("prompt_tokens and output_tokens must be integers")
    if not np.all(np.isfinite(arrival)) or np.any(arrival < 0):
        raise ValueError("arrival_s must be finite and >= 0")
    if np.any(prompt < 1) or np.any(output < 1):
        raise ValueError("prompt_tokens and output_tokens must be >= 1")
    return arrival, prompt, output


def _check_external(workload: Mapping[str, Any], prompt: np.ndarray) -> np.ndarray:
    """§8: the optional ``external_tokens`` (zeros when absent)."""
    if "external_tokens" not in workload or workload["external_tokens"] is None:
        return np.zeros(prompt.shape, np.int64)
    raw = np.asarray(workload["external_tokens"]).reshape(-1)
    if raw.shape != prompt.shape:
        raise ValueError("external_tokens must have one entry per request")
    ext = raw.astype(np.int64)
    if np.any(ext != raw) or np.any(ext < 0) or np.any(ext >= prompt):
        raise ValueError("external_tokens must be integers in 0..prompt_tokens - 1")
    return ext


def _check_priority(workload: Mapping[str, Any], num_requests: int) -> np.ndarray:
    """§10: the optional workload key ``priority`` (zeros when absent or None).

    Returns:
        One int64 level per request, in the original input order.

    Raises:
        ValueError: naming the key and the value: not one entry per request, or an
            entry that is not an integer in 0..7.
    """
    raw = workload.get("priority")
    if raw is None:
        return np.zeros(num_requests, np.int64)
    try:
        vals = np.asarray(raw).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"workload['priority'] must be integers in 0..{PRIORITY_LEVELS - 1}, one "
            f"per request, got {raw!r}") from exc
    if vals.shape[0] != num_requests:
        raise ValueError(
            f"workload['priority'] has {vals.shape[0]} entries for {num_requests} "
            f"requests (one per request), got {raw!r}")
    if num_requests == 0:
        return np.zeros(0, np.int64)
    if vals.dtype == np.bool_ or not (np.issubdtype(vals.dtype, np.integer)
                                      or np.issubdtype(vals.dtype, np.floating)):
        raise ValueError(
            f"workload['priority'] must be integers in 0..{PRIORITY_LEVELS - 1}, "
            f"got {raw!r}")
    with np.errstate(invalid="ignore"):
        prio = vals.astype(np.int64)
    bad = (~np.isfinite(vals.astype(np.float64))) | (prio != vals) | (prio < 0) | (
        prio >= PRIORITY_LEVELS)
    if np.any(bad):
        first = vals[int(np.argmax(bad))].item()
        raise ValueError(
            f"workload['priority'] must be integers in 0..{PRIORITY_LEVELS - 1}, got "
            f"{first!r} (in {raw!r})")
    return prio


def _check_hashes(
    workload: Mapping[str, Any], num_requests: int
) -> tuple[list[list[int]], int | None]:
    """Validates the optional §5.1 workload keys ``hash_ids`` and ``hash_block_tokens``.

    Returns:
        ``(hashes, U)``: one list of Python ints per request in the original input
        order (all empty when ``hash_ids`` is absent) and the block length ``U``
        (None when ``hash_block_tokens`` is absent).
    """
    raw = workload.get("hash_ids")
    if raw is None:
        hashes: list[list[int]] = [[] for _ in range(num_requests)]
    else:
        if len(raw) != num_requests:
            raise ValueError(
                f"workload['hash_ids'] has {len(raw)} entries for {num_requests} requests"
            )
        hashes = []
        for i, ids in enumerate(raw):
            arr = np.asarray(ids).reshape(-1)
            if arr.size and not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"workload['hash_ids'][{i}] must hold integers")
            hashes.append([int(b) for b in arr])
    U_raw = workload.get("hash_block_tokens")
    if U_raw is None:
        return hashes, None
    if isinstance(U_raw, (bool, np.bool_)) or int(U_raw) != U_raw:
        raise ValueError(f"workload['hash_block_tokens'] must be an integer, got {U_raw!r}")
    U = int(U_raw)
    if U < 1:
        raise ValueError(f"workload['hash_block_tokens'] must be >= 1, got {U}")
    return hashes, U


# --------------------------------------------------------------------------------------
# §4 metrics
# --------------------------------------------------------------------------------------


def _latencies(done, arrival, output, first_token, finish, admitted):
    """§4's per-request TTFT, TPOT (O > 1 only), E2E and queueing of the requests in
    the mask ``done``."""
    ttft = first_token[done] - arrival[done]
    e2e = finish[done] - arrival[done]
    queue = admitted[done] - arrival[done]
    out_done = output[done]
    multi = out_done > 1
    tpot = (e2e[multi] - ttft[multi]) / (out_done[multi] - 1)
    return ttft, tpot, e2e, queue


def _stats(prefix: str, values: np.ndarray) -> dict[str, float]:
    """Mean and p50/p90/p99 (numpy's default linear interpolation); NaN if empty."""
    out: dict[str, float] = {}
    if values.size == 0:
        out[f"{prefix}_mean_s"] = math.nan
        for pct in _PERCENTILES:
            out[f"{prefix}_p{pct}_s"] = math.nan
        return out
    out[f"{prefix}_mean_s"] = float(np.mean(values))
    for pct in _PERCENTILES:
        out[f"{prefix}_p{pct}_s"] = float(np.percentile(values, pct))
    return out


def _ratio(num: float, den: float) -> float:
    """``num / den``, NaN when the duration is undefined or not positive."""
    if not math.isfinite(den) or den <= 0.0:
        return math.nan
    return num / den


def lane_metrics(
    arrival: np.ndarray,
    prompt: np.ndarray,
    output: np.ndarray,
    first_token: np.ndarray,
    finish: np.ndarray,
    admitted: np.ndarray,
    completed: np.ndarray,
    ttft_slo: float,
    tpot_slo: float,
    spec_drafted: int = 0,
    spec_accepted: int = 0,
) -> dict[str, float]:
    """The per-lane metrics of §4 over completed requests.

    Args:
        arrival: arrival times, shape (R,).
        prompt: prompt lengths, shape (R,).
        output: output lengths, shape (R,).
        first_token: first-token times, shape (R,).
        finish: finish times, shape (R,).
        admitted: first-admission times, shape (R,).
        completed: completion mask, shape (R,).
        ttft_slo: TTFT SLO in seconds.
        tpot_slo: TPOT SLO in seconds.
        spec_drafted: §9 Σ j, draft tokens scheduled (0 without speculation).
        spec_accepted: §9 Σ a, accepted drafts.

    Returns:
        A dict of floats (NaN where undefined).
    """
    done = completed
    out_done = output[done]
    multi = out_done > 1
    ttft, tpot, e2e, queue = _latencies(done, arrival, output, first_token, finish,
                                        admitted)

    metrics: dict[str, float] = {}
    metrics.update(_stats("ttft", ttft))
    metrics.update(_stats("tpot", tpot))
    metrics.update(_stats("e2e", e2e))
    metrics.update(_stats("queue", queue))

    itl_den = float(np.sum(out_done[multi] - 1))
    metrics["itl_mean_s"] = (
        float(np.sum(e2e[multi] - ttft[multi])) / itl_den if itl_den > 0 else math.nan
    )

    num_completed = int(np.sum(done))
    # AMBIGUITY: "first arrival" is the earliest arrival of *all* requests of the
    # workload (the start of the benchmark), and "last finish" the latest finish among
    # completed requests. The two readings only differ for truncated lanes.
    if num_completed > 0:
        duration = float(np.max(finish[done])) - float(np.min(arrival))
    else:
        duration = math.nan
    metrics["duration_s"] = duration
    metrics["throughput_rps"] = _ratio(float(num_completed), duration)
    metrics["input_tps"] = _ratio(float(np.sum(prompt[done])), duration)
    metrics["output_tps"] = _ratio(float(np.sum(out_done)), duration)
    tpot_all = np.full(ttft.shape, math.nan)
    tpot_all[multi] = tpot
    good = (ttft <= ttft_slo) & ((out_done == 1) | (tpot_all <= tpot_slo))
    metrics["goodput_rps"] = _ratio(float(np.sum(good)), duration)
    # §9: drafted and accepted tokens and their ratio (NaN when nothing was drafted).
    metrics["spec_drafted_tokens"] = int(spec_drafted)
    metrics["spec_accepted_tokens"] = int(spec_accepted)
    metrics["spec_acceptance_rate"] = (
        spec_accepted / spec_drafted if spec_drafted > 0 else math.nan
    )
    return metrics


def priority_metrics(
    priority: np.ndarray,
    arrival: np.ndarray,
    output: np.ndarray,
    first_token: np.ndarray,
    finish: np.ndarray,
    admitted: np.ndarray,
    completed: np.ndarray,
    preemptions: np.ndarray,
) -> dict[str, float]:
    """§10 per-level metrics: for each priority level ``p`` the workload contains,
    §4's statistics over the completed requests of that level.

    Keys (for each such ``p``): ``ttft_mean_s_prio{p}``, ``ttft_p50_s_prio{p}``,
    ``ttft_p99_s_prio{p}``, ``tpot_p50_s_prio{p}``, ``tpot_p99_s_prio{p}``,
    ``e2e_p50_s_prio{p}``, ``e2e_p99_s_prio{p}``, ``queue_mean_s_prio{p}`` (floats,
    NaN when none of the level completed; the TPOT ones also when none of them has
    O > 1), ``completed_prio{p}`` and ``preemptions_prio{p}`` (ints: the count, and
    Σ per-request preemptions over the level's completed requests).

    Args:
        priority: per-request levels, shape (R,); the other arrays as in
            ``lane_metrics``, plus ``preemptions`` (per-request counts), all in the
            same (original) order.

    Returns:
        A dict with the keys above, for the levels present only (in increasing
        level order).
    """
    # AMBIGUITY: "each priority level p that it contains" counts every request of the
    # workload (completed or not), whatever the policy. §10 reports them only when some
    # request's priority is not 0, so a workload without the key (or all at level 0)
    # reports none.
    metrics: dict[str, float] = {}
    if not np.any(np.asarray(priority) != 0):
        return metrics
    for p in sorted({int(v) for v in priority}):
        done = completed & (priority == p)
        stats: dict[str, float] = {}
        for name, values in zip(("ttft", "tpot", "e2e", "queue"),
                                _latencies(done, arrival, output, first_token, finish,
                                           admitted), strict=True):
            stats.update(_stats(name, values))
        for key in ("ttft_mean_s", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s",
                    "e2e_p50_s", "e2e_p99_s", "queue_mean_s"):
            metrics[f"{key}_prio{p}"] = stats[key]
        metrics[f"completed_prio{p}"] = int(np.sum(done))
        metrics[f"preemptions_prio{p}"] = int(np.sum(preemptions[done]))
    return metrics


# --------------------------------------------------------------------------------------
# §1-§2 the simulator
# --------------------------------------------------------------------------------------


def simulate_reference(
    workload: Mapping[str, Any],
    config: Mapping[str, Any],
    max_iterations: int | None = None,
    *,
    trace: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Simulates one lane sequentially, following docs/semantics.md literally.

    Args:
        workload: ``{"arrival_s", "prompt_tokens", "output_tokens"}`` arrays of equal
            length, in any order; optionally (§5.1) ``hash_ids`` (one list of integer
            block ids per request, in the same original order, possibly empty;
            absent = every list empty) and ``hash_block_tokens`` (the block length
            ``U >= 1``; required when prefix caching is on and some list is
            non-empty); optionally (§8) ``external_tokens`` (per request, in the same
            order, ``0 <= E < prompt_tokens``: the prompt tokens whose KV the request
            brings; not with prefix caching on, nor with §10 priority scheduling);
            optionally (§10) ``priority`` (per request, in the same order, an
            integer level in 0..7, lower served first; absent = all 0; ignored by
            the scheduler under ``scheduling_policy`` "fcfs").
        config: flat lane configuration with every key of ``CONFIG_KEYS`` and
            optionally some of ``OPTIONAL_CONFIG_KEYS`` (§5, §9, §10's
            ``scheduling_policy``).
        max_iterations: iteration budget (iterations that scheduled at least one
            token); when the lane is not done after that many, it stops and is marked
            truncated. None means no budget.
        trace: optional list; if given, one dict per iteration is appended with keys
            ``start_s``, ``dt``, ``end_s``, ``used_blocks``, ``batch`` (a list of
            ``(request, q, c, n_known, g)`` with the request's original index and the
            state before the iteration; with prefix caching ``c`` of an admitted
            request is its hit length ``h``), ``preempted`` (original indices of the
            victims, in preemption order; under §10 a request scheduled and then
            preempted in the same iteration is in it and not in ``batch``, and an
            iteration that only preempted is recorded with an empty ``batch`` and
            ``dt`` 0.0, although ``iterations`` does not count it) and
            ``kind`` (``"mixed"`` in v1,
            ``"prefill"`` or ``"decode"`` in v0). With prefix caching on, also:
            ``dt_compute`` (the §3 time ``dtc``), ``xfer_s`` (``x`` of §5.6),
            ``exposed_s``, ``hidden_s``, ``hit_blocks`` (per request admitted in the
            iteration, ``(request, hit_blocks, tiers)`` with ``tiers`` the tier of
            each hit block at lookup), ``evicted`` (per §5.5 eviction in order,
            ``(block id, from tier, to tier or None when dropped)``),
            ``bytes_read``/``bytes_written`` (per tier, this iteration, the §5.10
            swap bytes and §5.11 prefetch reads included), ``entries`` (entries per
            tier after §5.5 step 5, before any §5.11 prefetch), ``swapped_out`` and
            ``swapped_in`` (original indices, §5.10), ``swap_used`` (after the
            iteration) and ``prefetched`` (``(block id, former tier)`` per §5.11
            prefetched block, in candidate order). ``xfer_s`` is then ``x(n*)``, so
            ``exposed_s + hidden_s = xfer_s``. Always (§9): ``spec`` (per decoding
            request scheduled in the running phase with speculation on,
            ``(request, j drafts, a accepted)``) and ``dt_draft`` (the drafter's
            GPU time ``G_draft``, 0.0 without a draft model). For tests and
            debugging.

    Returns:
        Per-request numpy arrays in the original input order (``first_token_s``,
        ``finish_s``, ``admitted_s``, ``ttft_s``, ``e2e_s``, ``queue_s``, the §5.7
        TTFT split ``load_s`` and ``prefill_s`` (NaN for unfinished requests, like
        the latencies; ``load_s`` is 0 with prefix caching off),
        ``preemptions``, ``tokens_scheduled``, ``generated``, ``completed``), lane
        scalars (``infeasible``, ``truncated``, ``iterations``, ``busy_s``,
        ``total_tokens``, ``total_preemptions``, ``kv_occupancy_mean``,
        ``kv_occupancy_peak``, ``num_completed``), the §5.7 results
        (``hit_tokens_by_tier``: list of T ints; ``admitted_prompt_tokens``: int;
        ``prefix_hit_rate``: float; ``hit_rate_by_tier``: list of T floats (both
        NaN if nothing was admitted); ``bytes_read_by_tier``,
        ``bytes_written_by_tier``: lists of T floats, tier 0 always 0;
        ``xfer_exposed_s``, ``xfer_hidden_s``: floats; ``peak_entries_by_tier``:
        list of T ints) and ``metrics`` (§4, plus ``prefix_hit_rate``, the §5.7
        ``ttft_load_mean_s``, ``ttft_prefill_mean_s``, ``ttft_load_p99_s``, the
        §5.9 ``energy_j_tier{t}`` for t = 1 … T-1 and ``energy_tiers_j``, and the
        §5.10 / §5.11 counts ``swaps`` (swap-outs) and ``prefetched_blocks`` (Σ n*),
        ints, 0 when the features are off), and the §9 ``spec_drafted_tokens``,
        ``spec_accepted_tokens`` (ints, also top-level) and ``spec_acceptance_rate``
        (NaN when nothing was drafted), and the §10 per-level metrics of
        ``priority_metrics`` for every level the workload contains (under either
        policy). With prefix caching off the §5 results
        are zeros (the hit rates 0.0, or NaN if nothing was admitted).

    Raises:
        KeyError: a config or workload key is missing.
        ValueError: an unknown config key or an invalid value.
    """
    cfg = validate_config(config)
    arrival_in, prompt_in, output_in = _check_workload(workload)
    if max_iterations is not None and max_iterations < 0:
        raise ValueError(f"max_iterations must be >= 0, got {max_iterations}")
    R = int(arrival_in.shape[0])
    hashes_in, U_in = _check_hashes(workload, R)
    ext_in = _check_external(workload, prompt_in)
    prio_in = _check_priority(workload, R)  # §10 (original order; zeros when absent)
    # §10: priority scheduling (mode v1; validate_config refuses the other modes and
    # prefix caching or speculative decoding with it). External KV (§8) is refused
    # here, where the workload is known.
    prio_on = cfg["scheduling_policy"] == "priority"
    if prio_on and np.any(ext_in):
        raise ValueError(
            "config['scheduling_policy'] = 'priority' cannot be combined with a "
            "workload with external_tokens (§8, here non-zero: "
            f"{[int(v) for v in ext_in]}) in this version (§10); allowed: "
            "external_tokens absent or all 0, or scheduling_policy 'fcfs'")

    # §0: order requests by (arrival_s, original index) with a stable sort.
    order = np.argsort(arrival_in, kind="stable")
    arr: list[float] = [float(arrival_in[i]) for i in order]
    P: list[int] = [int(prompt_in[i]) for i in order]
    O: list[int] = [int(output_in[i]) for i in order]
    orig: list[int] = [int(i) for i in order]
    H: list[list[int]] = [hashes_in[i] for i in order]  # §5.1 hashes_i
    E: list[int] = [int(ext_in[i]) for i in order]  # §8 tokens whose KV arrives with it
    # §10 key (priority, arrival_s, i), i = the index in request order (§0). Under
    # "fcfs" it is not used: the priorities are ignored.
    prio_key: list[tuple[int, float, int]] = [
        (int(prio_in[i]), arr[r], r) for r, i in enumerate(order)]

    # Per-request state, indexed by position in the sorted order.
    c: list[int] = [0] * R
    g: list[int] = [0] * R
    first_token: list[float] = [math.nan] * R
    finish: list[float] = [math.nan] * R
    admitted: list[float] = [math.nan] * R
    preemptions: list[int] = [0] * R
    tokens: list[int] = [0] * R
    finished: list[bool] = [False] * R
    # §5.7 TTFT split: Σ exposed over the iterations that scheduled the request
    # while it had emitted no token (g = 0 at the start of the iteration).
    load: list[float] = [0.0] * R

    mode = cfg["mode"]
    # §0/§2.4: chunked prefill is forced off in v0.
    chunked = cfg["enable_chunked_prefill"] and mode == "v1"
    # §2.2: the threshold caps a request's tokens in v1 with chunked prefill on or off
    thr = cfg["long_prefill_token_threshold"] if mode == "v1" else 0
    # §2.3 rule 4: admission may need the whole known sequence's blocks free
    # (scheduler_reserve_full_isl), not only those of the tokens scheduled now
    full_isl = cfg["reserve_full_isl"] and mode == "v1"
    # §2.10: asynchronous scheduling (v1 only)
    async_sched = cfg["async_scheduling"] and mode == "v1"
    # §9 speculative decoding: K applies in mode v1 only (in v0 it is 0). A[j] in
    # units of 1/65536 accepted drafts; `acc` per request (0 when it enters the
    # engine, kept across preemptions).
    K = cfg["spec_tokens"] if mode == "v1" else 0
    A_units = cfg["spec_accept_units"]
    acc: list[int] = [0] * R
    spec_drafted = 0
    spec_accepted = 0
    # §9: the drafter's GPU time G_d is §3's GPU time with the draft model's
    # dimensions and the lane's hardware, tp and cost coefficients, without the
    # §3.1 shape tables (they are the target's kernel shapes). With K = 0 (or v0)
    # there are no drafts and so no drafter time: "K = 0 turns it off".
    # AMBIGUITY: "the lane's hardware" is taken as-is, both peaks included: the
    # draft's GEMMs run at the lane's `peak_flops` (the target weight dtype's
    # peak) whatever the draft's bytes_per_weight; only its bytes follow the draft.
    # AMBIGUITY: §0's feasibility rules concern the lane's model only; the draft's
    # heads need not divide tp (its per-GPU sizes are real numbers, as in §3).
    draft_cost: CostModel | None = None
    if K >= 1 and cfg["spec_draft"] is not None:
        draft_cost = CostModel({**cfg, **cfg["spec_draft"], "shape_corr": {}})
    bs = cfg["block_size"]
    num_blocks = cfg["num_gpu_blocks"]
    watermark = cfg["watermark_blocks"]
    max_seqs = cfg["max_num_seqs"]
    max_tokens = cfg["max_num_batched_tokens"]

    infeasible = not is_feasible(cfg, P, O)
    truncated = False
    iterations = 0
    busy = 0.0
    total_tokens = 0
    total_preemptions = 0
    kv_integral = 0.0
    kv_peak = 0
    cost = CostModel(cfg)

    # §5: prefix caching and KV memory tiers (off: everything below is inert).
    prefix_on = cfg["enable_prefix_caching"]
    if prefix_on and any(E):
        raise ValueError("external_tokens (§8) cannot be combined with prefix caching")
    num_tiers = 1 + len(cfg["tier_capacity_blocks"])
    if prefix_on and U_in is None and any(H):
        raise KeyError("workload is missing 'hash_block_tokens' (needed with hash_ids)")
    # AMBIGUITY (input, not in the doc): without any block hash nothing is ever looked
    # up or registered, so U only enters cap_0 and §5.3; block_size stands in for it.
    U = U_in if U_in is not None else bs
    # AMBIGUITY (§9 with §5.3): C(x) of §5.3 ("the §3 iteration time of a batch")
    # is the target model's §3 formula alone, without §9's drafter time G_draft:
    # §9 adds the drafter to an *iteration's* GPU time, and C(x) is a hypothetical
    # batch that decides, once per lane, which tiers are usable.
    cache = PrefixCache(cfg, cost, U) if prefix_on else None
    overlap = cfg["load_overlap"]
    # §5.8 admission order: the weight as a float32, the window W.
    w_adm = np.float32(cfg["w_adm"])
    adm_window = cfg["adm_window"]
    hit_tokens = [0] * num_tiers
    admitted_prompt_tokens = 0
    bytes_read = [0.0] * num_tiers
    bytes_written = [0.0] * num_tiers
    xfer_exposed = 0.0
    xfer_hidden = 0.0
    peak_entries = [0] * num_tiers
    # §5.10 swap preemption: per request `sw` (tokens whose KV is held in the swap
    # tier), per lane `swap_used` (swap-tier blocks of U tokens held by swapped
    # requests) and the swap-out count. Without a tier of capacity > 0 swap behaves
    # as recompute in every iteration, so it is simply off.
    swap_tier = cache.swap_tier if cache is not None else None
    swap_on = cache is not None and cfg["swap"] and swap_tier is not None
    swap_cap = cache.cap[swap_tier] if swap_on else 0  # cap_ts
    sw: list[int] = [0] * R
    swap_used = 0
    num_swaps = 0
    # §5.11 prefetch (off without prefix caching) and Σ n*.
    prefetch_on = cache is not None and cfg["prefetch"]
    num_prefetched = 0

    def nb(n: int) -> int:
        """§5.10 ``nb(n) = ceil_div(n, block_size)``."""
        return ceil_div(n, bs)

    def sbytes(n: int) -> float:
        """§5.10 ``sbytes(n) = nb(n) · block_size · Bblk / U`` (float bytes)."""
        assert cache is not None
        return nb(n) * bs * cache.bblk / U

    def sblk(n: int) -> int:
        """§5.10 ``sblk(n) = ceil_div(nb(n) · block_size, U)`` (swap-tier blocks)."""
        return ceil_div(nb(n) * bs, U)

    # §1: `running` in order of (most recent) admission; `waiting` holds preempted
    # requests at the front (most recently preempted first) followed by arrived,
    # never-admitted requests in request order. Never-admitted requests join `waiting`
    # lazily: `next_new` points at the first one that has not joined yet. Rule 2 of
    # §2.3 ("a never-admitted request with arrival_s > clock stops the walk") is thus
    # implemented by such requests not being in `waiting` yet.
    # §10 ("priority"): `waiting` holds the same requests (preempted ones and arrived
    # never-admitted ones; with async scheduling arrived by `seen`) but in increasing
    # key order: arrivals and victims are inserted at their key's place (`enqueue`).
    running: list[int] = []
    waiting: deque[int] = deque()
    next_new = 0

    def enqueue(r: int) -> None:
        """An arrival joins `waiting`: at the end (§1), or under §10 at its key's
        place (a victim of §10's running phase is inserted the same way)."""
        if not prio_on:
            waiting.append(r)
            return
        keys = [prio_key[w] for w in waiting]
        waiting.insert(bisect.bisect_left(keys, prio_key[r]), r)

    num_finished = 0
    clock = 0.0
    last_start = 0.0  # §2.10: the start of the latest iteration (that scheduled tokens)

    while not infeasible:
        # §2.9: done when every request has finished.
        if num_finished == R:
            break
        # §2.10: with requests running at its start, an iteration under asynchronous
        # scheduling is overlapped: its batch was formed when the previous iteration
        # started, so it sees the arrivals up to that start.
        overlapped = async_sched and bool(running)
        seen = last_start if overlapped else clock
        # §2.1 arrivals: never-admitted requests with arrival_s <= clock (§2.10: seen)
        # join.
        while next_new < R and arr[next_new] <= seen:
            enqueue(next_new)
            next_new += 1
        # §2.9 iteration budget. (Checked before the idle jump; the final clock is
        # not an output, so the order has no observable effect.)
        if max_iterations is not None and iterations >= max_iterations:
            truncated = True
            break
        # §2.1 idle jump: nothing running, nothing preempted, nothing arrived.
        if not running and not waiting:
            # num_finished < R, so some never-admitted request remains.
            clock = arr[next_new]
            while next_new < R and arr[next_new] <= clock:
                enqueue(next_new)
                next_new += 1

        free = num_blocks - sum(ceil_div(c[r], bs) for r in running)
        budget = max_tokens
        # Scheduled this iteration: (request, q, c_before, n_known_before, g_before).
        sched: list[tuple[int, int, int, int, int]] = []
        victims: list[int] = []
        # §5.4: per request admitted this iteration, (request, tiers of its hit blocks).
        admissions: list[tuple[int, list[int]]] = []
        # §5.10: this iteration's swap-outs / swap-ins and their bytes (tier ts).
        swapped_out: list[int] = []
        swapped_in: list[int] = []
        swap_written = 0.0
        swap_read = 0.0
        # §9: per decoding request scheduled in the running phase, its drafts j.
        # A request admitted in §2.3 schedules no drafts; one that is decoding (only
        # a §5.10 swap-in can be: c = sw = n_known - 1) has j = 0 and retires the
        # ordinary way (§2.7), which equals §9's retire with j = 0: A[0] = 0 and
        # acc < 65536 between steps, so a = 0 and acc is unchanged.
        drafts: dict[int, int] = {}

        def running_phase() -> None:
            """§2.2: walk `running` from the front while budget remains (with the
            §5.10 swap-out of the victims when swap is on)."""
            nonlocal free, budget, total_preemptions, swap_used, num_swaps, swap_written
            # §5.10: victim v_k is swapped iff every earlier victim of this iteration
            # was swapped and swap_used(start) + Σ_{i<=k} sblk(c_{v_i}) <= cap_ts;
            # `swap_used` grows with each swap, so the test below is that sum.
            swapping = swap_on
            i = 0
            while i < len(running) and budget > 0:
                r = running[i]
                n_known = P[r] + g[r]
                # §9: a decoding request (g >= 1, c = n_known - 1) wants 1 + d tokens
                # with d = min(K, O - g - 1) drafts (none past its last output).
                decoding = K >= 1 and g[r] >= 1 and c[r] == n_known - 1
                want = 1 + min(K, O[r] - g[r] - 1) if decoding else n_known - c[r]
                if thr > 0:
                    want = min(want, thr)
                q = min(want, budget)
                need = ceil_div(c[r] + q, bs) - ceil_div(c[r], bs)
                # §2.4: v0 schedules a request only with a free block to touch, even
                # when its token fits in the block it holds
                touch = max(need, 1) if mode == "v0" else need
                while touch > free:
                    # Preempt the last running request (recompute).
                    v = running.pop()
                    free += ceil_div(c[v], bs)
                    # §5.10: c[v] is still its c at the start of the iteration (a
                    # victim is popped from the end, never an already-scheduled one).
                    if swapping and swap_used + sblk(c[v]) <= swap_cap:
                        sw[v] = c[v]
                        swap_used += sblk(sw[v])
                        swap_written += sbytes(sw[v])
                        num_swaps += 1
                        swapped_out.append(v)
                    else:
                        swapping = False  # this victim and every later one recompute
                    c[v] = 0
                    # AMBIGUITY: a swap-out is a preemption ("its preemption count
                    # += 1"), so it is also counted in the lane's §2.8 preemptions.
                    preemptions[v] += 1
                    total_preemptions += 1
                    waiting.appendleft(v)
                    victims.append(v)
                    if v == r:
                        return  # the current request is not scheduled; phase ends
                free -= need
                budget -= q
                sched.append((r, q, c[r], n_known, g[r]))
                if decoding:
                    drafts[r] = q - 1  # j = q - 1 drafts after the caps (0 <= j <= d)
                i += 1

        def running_phase_priority() -> None:
            """§10's running phase: walk `running` from the front while budget
            remains, skipping the requests preempted earlier in the walk; while the
            request at hand needs more blocks than are free, preempt the running
            request with the largest key (the one at hand and those already
            scheduled in this iteration included)."""
            nonlocal free, budget, total_preemptions
            # Requests scheduled so far in this iteration: request -> (q, need).
            taken: dict[int, tuple[int, int]] = {}
            for r in list(running):
                if budget <= 0:
                    break
                if r not in running:
                    continue  # preempted earlier in this walk: skipped
                n_known = P[r] + g[r]
                # §2.2 step 1 (§9 drafts cannot occur: speculation is refused).
                want = n_known - c[r]
                if thr > 0:
                    want = min(want, thr)
                q = min(want, budget)
                need = ceil_div(c[r] + q, bs) - ceil_div(c[r], bs)
                # AMBIGUITY: q (and so need) is computed once, before the
                # preemptions, as §10 says ("compute q and need as in §2.2 steps 1-2,
                # then, while need > free"); a budget refund from an already
                # scheduled victim does not enlarge the request's q.
                while need > free:
                    v = max(running, key=lambda x: prio_key[x])  # largest key
                    running.remove(v)
                    free += ceil_div(c[v], bs)  # its blocks at the iteration's start
                    if v in taken:
                        # Already scheduled in this iteration: it also gives back the
                        # `need` blocks it took then and its q; it is not scheduled.
                        q_v, need_v = taken.pop(v)
                        free += need_v
                        budget += q_v
                        sched[:] = [item for item in sched if item[0] != v]
                    c[v] = 0
                    preemptions[v] += 1
                    total_preemptions += 1
                    enqueue(v)  # §10: at its key's place, not at the front
                    victims.append(v)
                    if v == r:
                        return  # the request at hand is not scheduled; phase ends
                free -= need
                budget -= q
                sched.append((r, q, c[r], n_known, g[r]))
                taken[r] = (q, need)

        def lookup(r: int) -> list[int]:
            """§5.4: the tiers of r's hit blocks (cache as at the start of the
            iteration: it only changes in §5.5, after retire); [] when caching is off."""
            return cache.lookup(H[r], P[r] + g[r]) if cache is not None else []

        def admission_order() -> list[tuple[int, list[int] | None]]:
            """§5.8: the ready requests of `waiting` in walk order, increasing
            ``(key, p)``, each with its §5.4 lookup when it was needed for the key
            (None otherwise: the walk looks it up then).

            Every request in `waiting` is ready (preempted, or arrived: never-admitted
            requests join `waiting` lazily), so p runs over all of `waiting`.
            ``key = p - w_adm·hit_blocks`` for p < W, else ``p``, compared exactly
            (w_adm is a float32 number; in float64 the product and the difference of
            these small numbers are exact).
            """
            if cache is None:
                # no prefix caching: every lookup is [], every key is p, the walk
                # order is `waiting`'s (the loop below, without its sort)
                return [(r, [] if p < adm_window else None) for p, r in enumerate(waiting)]
            keyed: list[tuple[float, int, int, list[int] | None]] = []
            for p, r in enumerate(waiting):
                key = float(p)
                tiers: list[int] | None = None
                if p < adm_window:
                    # §5.10: a swapped request does no lookup; hit_blocks = 0.
                    tiers = lookup(r) if sw[r] == 0 else []
                    key = math.fsum((float(p), -float(w_adm) * len(tiers)))
                keyed.append((key, p, r, tiers))
            keyed.sort(key=lambda item: (item[0], item[1]))
            return [(r, tiers) for _, _, r, tiers in keyed]

        def waiting_phase() -> int:
            """§2.3 (with the §5.4 lookup and the §5.8 order): admit from `waiting`;
            returns the admission count."""
            nonlocal free, budget, admitted_prompt_tokens, swap_used, swap_read
            count = 0
            # §5.8: walk the ready requests by increasing (key, p). With w_adm = 0
            # every key is float32(p), so this is the §2.3 walk from the front.
            # (Rule 2 of §2.3 is not needed: only ready requests are walked.)
            admitted_now: set[int] = set()
            for r, looked_up in admission_order():
                # AMBIGUITY: §5.8 applies "§2.3's rules 1 and 3-5" to each walked
                # request; the §2.3 walk condition "while budget > 0" is kept as
                # well (it is not a numbered rule), so an exhausted budget ends the
                # phase instead of admitting requests with q = 0.
                if budget <= 0:
                    break
                if len(running) >= max_seqs:  # rule 1
                    break
                n_known = P[r] + g[r]
                if sw[r] > 0:
                    # §5.10 swap-in: no lookup, h = sw, hit_blocks = 0 (§5.5 step 1,
                    # §5.7 and the §5.8 key).
                    tiers = []
                    h = sw[r]
                else:
                    # §5.4: look up the prefix (c = h, not 0). A request that is not
                    # admitted simply looks up again next time.
                    tiers = looked_up if looked_up is not None else lookup(r)
                    h = len(tiers) * U
                    if math.isnan(admitted[r]):
                        # §8: at its first admission a request starts from the E
                        # tokens whose KV it brought (prefix caching is off here);
                        # after a preemption it recomputes everything
                        h = max(h, E[r])
                want = n_known - h  # rule 3; c[r] == 0 here; §5.4: c = h
                if thr > 0:
                    want = min(want, thr)
                if not chunked and want > budget:
                    break
                q = min(want, budget)
                need = ceil_div(h + q, bs)  # rule 4; §5.4: its hit blocks are held by it
                if free - need < watermark:
                    break
                # rule 4 with scheduler_reserve_full_isl: the blocks of all n_known
                # tokens (its hit blocks included) must fit as well; only the chunk's
                # are allocated
                if full_isl and free - ceil_div(n_known, bs) < watermark:
                    break
                # Rule 5, admit: appended to `running` in walk order; removed from
                # `waiting` below (the others keep their places).
                admitted_now.add(r)
                running.append(r)
                free -= need
                budget -= q
                c[r] = h  # §5.4: it starts the iteration with c = h
                if sw[r] > 0:
                    # §5.10: sbytes(sw) read from tier ts; its swap blocks are freed.
                    swap_read += sbytes(sw[r])
                    swap_used -= sblk(sw[r])
                    sw[r] = 0
                    swapped_in.append(r)
                sched.append((r, q, c[r], n_known, g[r]))
                admissions.append((r, tiers))
                if math.isnan(admitted[r]):
                    admitted[r] = clock  # first admission only
                    # §5.7: at the first admission, count its hit blocks by the tier
                    # they were in at lookup, and its prompt tokens.
                    # AMBIGUITY: with prefix caching off (§5 "off") these counters are
                    # still kept: no hits, so prefix_hit_rate = 0.0 (NaN if nothing
                    # was admitted) rather than NaN throughout.
                    for t in tiers:
                        hit_tokens[t] += U
                    admitted_prompt_tokens += P[r]
                count += 1
            if admitted_now:
                # §5.8: requests that were not admitted keep their positions in
                # `waiting` (a skipped never-admitted request stays never-admitted:
                # its admitted_s is stamped when it is admitted).
                kept = [r for r in waiting if r not in admitted_now]
                waiting.clear()
                waiting.extend(kept)
            return count

        if mode == "v1":
            kind = "mixed"
            # §10 under "priority"; §2.2 otherwise. The waiting phase is §2.3's walk
            # in both: `waiting` is already in key order under §10 and holds only
            # ready requests, so rule 2 never stops it (§10 drops it).
            if prio_on:
                running_phase_priority()
            else:
                running_phase()
            if not victims:  # §2.3 runs only if nothing was preempted in §2.2
                waiting_phase()
        else:
            # §2.4: a prefill batch if anything can be admitted, else a decode batch.
            if waiting_phase() > 0:
                kind = "prefill"
            else:
                kind = "decode"
                running_phase()

        if not sched and not (prio_on and victims):
            # Unreachable for a feasible lane with validated knobs (the first running
            # request, or the first waiting one when nothing runs, always fits).
            raise RuntimeError("reference simulator scheduled an empty iteration")
        # AMBIGUITY (§10 with §2.5): under "priority" an iteration can schedule no
        # token although work is left: the running phase preempts the request at
        # hand when it has the largest key, and stops, before anything was scheduled
        # (or after every request scheduled so far was itself preempted), and the
        # waiting phase is skipped (something was preempted). §2.5's "this only
        # happens when the lane has nothing left to do" does not hold then; the rule
        # itself is applied as written: such an iteration takes no time (dt = 0), its
        # preemptions count (§2.8), it is not counted in `iterations` (§2.8: those
        # with at least one scheduled token; nor for the iteration budget), it does
        # not move §2.10's `seen` (the start of the latest iteration that scheduled
        # tokens: `last_start`), and the trace records it with an empty batch and its
        # victims. vLLM v1 returns an empty schedule in that step as well. Each such
        # iteration removes at least one request from `running`, so they cannot
        # repeat forever: with `running` empty the waiting phase admits a request.

        # §2.5 iteration time (of the computation, `dtc` in §5.6): the §3 features
        # (§9: a decoding request with j >= 1 drafts counts as a prefill of q tokens
        # sampling at each). Requests admitted in §2.3 schedule no drafts.
        # The time itself is evaluated after the retire below, which §9's F_dec needs.
        feats = cost.batch_features(
            [(q, c0, nk, g0) for (_, q, c0, nk, g0) in sched],
            [drafts.get(r, 0) for (r, _q, _c0, _nk, _g0) in sched] if drafts else None,
        )
        # §2.8: used blocks after scheduling, before retirement.
        used = num_blocks - free
        # §5.5: RUN = `running` after scheduling (kept + admitted, no victims).
        # AMBIGUITY: a running request the §2.2 walk did not reach (budget exhausted)
        # is still in `running` after scheduling, so it is in RUN (touched, pinned).
        run_after_sched = list(running)

        # §2.7 retire, state part (c, g, finishing). The timestamps need the clock
        # after the iteration, which with prefix caching depends on the §5.5 update
        # (it runs after retire); they are stamped below once dt is known.
        # AMBIGUITY: §2.7 stamps `clock` but §5.5 runs after §2.7 and determines dt
        # (§5.6), which §2.6 adds to the clock: the stamps use the clock advanced by
        # dt = dtc + exposed, i.e. the iteration's end time (§2.6).
        sampled: list[int] = []
        any_finished = False
        spec_info: list[tuple[int, int, int]] = []  # §9: (request, j, a)
        for r, q, _c0, _nk, _g0 in sched:
            if r in drafts:
                # §9 retire of a decoding request scheduled with q = 1 + j tokens:
                # acc += A[j]; a = acc // 65536 accepted drafts; acc -= 65536·a;
                # c += 1 + a (the rejected drafts' KV is discarded), g += 1 + a.
                # Its scheduled tokens (§4) include the drafts.
                j = drafts[r]
                acc[r] += A_units[j]
                a = acc[r] // SPEC_UNIT
                acc[r] -= SPEC_UNIT * a
                c[r] += 1 + a
                g[r] += 1 + a
                tokens[r] += q
                total_tokens += q
                spec_drafted += j
                spec_accepted += a
                spec_info.append((r, j, a))
                sampled.append(r)  # g >= 2 now: never a first token
                if g[r] == O[r]:
                    finished[r] = True
                    num_finished += 1
                    any_finished = True
                continue
            c[r] += q
            tokens[r] += q
            total_tokens += q
            if c[r] == P[r] + g[r]:
                g[r] += 1
                sampled.append(r)
                if g[r] == O[r]:
                    finished[r] = True
                    num_finished += 1
                    any_finished = True

        # §9: the drafter's GPU time G_draft = G_d(F) + (K - 1)·G_d(F_dec), part of
        # G (before §2.10's max/sum with the CPU time and before §5.6's exposed
        # time). F = the target batch's features; F_dec = a decode-only batch of
        # the n_d requests that sampled a token this iteration and did not finish
        # (D = ns = T = n_d, Kd = Σ (c + 1) with c after retire).
        # AMBIGUITY: F_dec includes such a request even when it will get no draft
        # next iteration (O - g - 1 = 0, its next step is its last token): the
        # definition is "sampled a token and did not finish"; "the ones that will
        # have drafts" is read as an explanation, not a further condition.
        g_draft: float | None = None
        if draft_cost is not None:
            T_f, _n_f, ns_f, Tp_f, Ap_f, Kp_f, D_f, Kd_f = feats
            gd_f = draft_cost.gpu_time(T_f, ns_f, Tp_f, Ap_f, Kp_f, D_f, Kd_f)
            n_d = 0
            kd_dec = 0
            for r in sampled:
                if not finished[r]:
                    n_d += 1
                    kd_dec += c[r] + 1
            gd_dec = draft_cost.gpu_time(n_d, n_d, 0, 0.0, 0, n_d, kd_dec)
            g_draft = gd_f + (K - 1) * gd_dec
        dtc = cost.time(*feats, overlapped, extra_gpu=g_draft)

        # §5.5 cache update and §5.6 transfer time.
        if cache is not None:
            fin_now = {r for r in sampled if finished[r]}
            run_info = [(H[r], c[r], r in fin_now) for r in run_after_sched]
            free_after = num_blocks - sum(
                ceil_div(c[r], bs) for r in run_after_sched if r not in fin_now
            )
            it_read, it_written, it_evicted = cache.update(
                iterations,  # §5.2: it = number of iterations before this one
                [(H[r], tiers) for r, tiers in admissions],
                run_info,
                free_after,
                bs,
                swap_used=swap_used,  # §5.10: after this iteration's swaps
            )
            # §5.7 peak entries per tier, after §5.5 step 5.
            # AMBIGUITY: this is before §5.11 moves prefetched entries to tier 0 (the
            # literal "after step 5"); they count at the next iteration's step 5.
            entries_after_update = list(cache.count)
            # §5.10: the swap bytes are part of the iteration's R_ts / W_ts.
            if swap_tier is not None:
                it_read[swap_tier] += swap_read
                it_written[swap_tier] += swap_written
            x = cache.transfer_time(it_read, it_written)
            exposed = max(0.0, x - overlap * dtc)
            dt = dtc + exposed  # §5.6: replaces §2.5's dt for §2.6-§2.8
            prefetched: list[tuple[int, int]] = []
            if prefetch_on:
                # §5.11, after §5.5 with dtc, x and exposed fixed: the prefetch
                # requests are those of `waiting` as it stands after this iteration
                # (victims at the front) with p < W, sw = 0 and ready (preempted, or
                # arrival_s <= the iteration's END clock). x(0) is §5.6's x, the
                # §5.10 swap bytes included.
                # AMBIGUITY: never-admitted requests that arrived DURING the
                # iteration (start < arrival_s <= end clock) are part of `waiting`
                # after it (§1: `waiting` holds the arrived requests), in request
                # order behind the others; this oracle adds them to `waiting` lazily
                # at the next iteration, so they are appended here for the numbering.
                end_clock = clock + dt
                after = list(waiting)
                k = next_new
                while k < R and arr[k] <= end_clock:
                    after.append(k)
                    k += 1
                pf_requests = [
                    (H[r], P[r] + g[r])
                    for p, r in enumerate(after)
                    if p < adm_window and sw[r] == 0
                ]
                prefetched = cache.prefetch(
                    iterations, pf_requests, it_read, it_written, overlap * dtc
                )
                num_prefetched += len(prefetched)
                # x(n*): exposed (and dt) do not change; hidden = x(n*) - exposed.
                x = cache.transfer_time(it_read, it_written)
            hidden = x - exposed
            for t in range(num_tiers):
                bytes_read[t] += it_read[t]
                bytes_written[t] += it_written[t]
                peak_entries[t] = max(peak_entries[t], entries_after_update[t])
            xfer_exposed += exposed
            xfer_hidden += hidden
        else:
            dt = dtc
            exposed = 0.0

        # §5.7 TTFT split: the iteration's exposed time counts towards load_s of
        # every request scheduled with g = 0 at its start (the iteration that stamps
        # the first token included: g0 is the state before retire). A request
        # preempted before its first token and rescheduled with g = 0 counts again.
        # As written, it is the iteration's whole exposed time, whatever caused it
        # (its own loads, another request's loads, or demotion writes).
        for r, _q, _c0, _nk, g0 in sched:
            if g0 == 0:
                load[r] += exposed

        # §2.6 advance.
        start = clock
        if sched:
            last_start = start
        clock = clock + dt

        # §2.7 retire, timestamps (end of the iteration).
        for r in sampled:
            if g[r] == 1:
                first_token[r] = clock
            if finished[r]:
                finish[r] = clock
        if any_finished:
            running = [r for r in running if not finished[r]]

        # §2.8 accounting.
        if sched:
            iterations += 1
            busy += dt
            kv_integral += used * dt
            kv_peak = max(kv_peak, used)

        if trace is not None:
            record: dict[str, Any] = {
                "start_s": start,
                "dt": dt,
                "end_s": clock,
                "used_blocks": used,
                "batch": [(orig[r], q, c0, nk, g0) for (r, q, c0, nk, g0) in sched],
                "preempted": [orig[v] for v in victims],
                "kind": kind,
                # §9: per decoding request scheduled in the running phase, (request,
                # drafts j, accepted a); and the drafter's GPU time G_draft (0.0
                # without a draft model).
                "spec": [(orig[r], j, a) for r, j, a in spec_info],
                "dt_draft": g_draft if g_draft is not None else 0.0,
            }
            if cache is not None:
                record.update(
                    {
                        "dt_compute": dtc,
                        "xfer_s": x,
                        "exposed_s": exposed,
                        "hidden_s": hidden,
                        "hit_blocks": [
                            (orig[r], len(tiers), list(tiers)) for r, tiers in admissions
                        ],
                        "evicted": it_evicted,
                        "bytes_read": it_read,
                        "bytes_written": it_written,
                        "entries": entries_after_update,
                        "swapped_out": [orig[v] for v in swapped_out],
                        "swapped_in": [orig[r] for r in swapped_in],
                        "swap_used": swap_used,
                        "prefetched": prefetched,
                    }
                )
            trace.append(record)

    # ---- outputs, back in the original input order --------------------------------
    def unsort(values: list[Any], dtype: Any) -> np.ndarray:
        out = np.empty(R, dtype=dtype)
        out[order] = np.asarray(values, dtype=dtype)
        return out

    first_arr = unsort(first_token, np.float64)
    finish_arr = unsort(finish, np.float64)
    admitted_arr = unsort(admitted, np.float64)
    completed_arr = unsort(finished, np.bool_)
    arrival_f = arrival_in.astype(np.float64)
    nan = np.full(R, math.nan)
    ttft_arr = np.where(completed_arr, first_arr - arrival_f, nan)
    e2e_arr = np.where(completed_arr, finish_arr - arrival_f, nan)
    queue_arr = np.where(completed_arr, admitted_arr - arrival_f, nan)
    # §5.7 TTFT split (NaN for unfinished requests, like the other latencies).
    load_arr = np.where(completed_arr, unsort(load, np.float64), nan)
    prefill_arr = ttft_arr - queue_arr - load_arr

    metrics = lane_metrics(
        arrival_f,
        prompt_in,
        output_in,
        first_arr,
        finish_arr,
        admitted_arr,
        completed_arr,
        cfg["ttft_slo_s"],
        cfg["tpot_slo_s"],
        spec_drafted=spec_drafted,
        spec_accepted=spec_accepted,
    )
    # §5.7 hit rates (NaN if nothing was admitted).
    if admitted_prompt_tokens > 0:
        hit_rate_by_tier = [ht / admitted_prompt_tokens for ht in hit_tokens]
        prefix_hit_rate = sum(hit_tokens) / admitted_prompt_tokens
    else:
        hit_rate_by_tier = [math.nan] * num_tiers
        prefix_hit_rate = math.nan
    metrics["prefix_hit_rate"] = prefix_hit_rate
    # §5.10 / §5.11 lane metrics (0 when the features are off).
    metrics["swaps"] = num_swaps
    metrics["prefetched_blocks"] = num_prefetched
    # §5.7 TTFT split lane metrics over completed requests (NaN when none):
    # mean load_s, mean prefill_s, p99 of load_s (numpy's linear interpolation,
    # as for the §4 percentiles).
    load_done = load_arr[completed_arr]
    prefill_done = prefill_arr[completed_arr]
    if load_done.size > 0:
        metrics["ttft_load_mean_s"] = float(np.mean(load_done))
        metrics["ttft_prefill_mean_s"] = float(np.mean(prefill_done))
        metrics["ttft_load_p99_s"] = float(np.percentile(load_done, 99))
    else:
        metrics["ttft_load_mean_s"] = math.nan
        metrics["ttft_prefill_mean_s"] = math.nan
        metrics["ttft_load_p99_s"] = math.nan
    # §5.9 energy of each lower tier t = 1 … T-1:
    # energy_t = pw_t·duration_s + eb_t·1e-12·8·(Σ R_t + Σ W_t) joules, NaN when pw_t
    # or eb_t is unknown (NaN); duration_s is §4's (NaN when nothing completed, and
    # then so is every energy). energy_tiers_j sums the lower tiers (NaN if any is
    # NaN, 0.0 when there is no lower tier).
    # AMBIGUITY: the formula is applied as written whatever the tier's state: with
    # prefix caching off, or for a disabled tier (cap_t = 0), no bytes move but the
    # static power still counts (energy_t = pw_t·duration_s), rather than 0 or NaN.
    duration = metrics["duration_s"]
    energy_total = 0.0
    for t in range(1, num_tiers):
        pw_t = cfg["tier_static_power_w"][t - 1]
        eb_t = cfg["tier_energy_pj_per_bit"][t - 1]
        if math.isnan(pw_t) or math.isnan(eb_t):
            energy_t = math.nan
        else:
            energy_t = pw_t * duration + eb_t * 1e-12 * 8.0 * (
                bytes_read[t] + bytes_written[t]
            )
        metrics[f"energy_j_tier{t}"] = energy_t
        energy_total += energy_t
    metrics["energy_tiers_j"] = energy_total
    # §10 per-level metrics (for the levels the workload contains, whatever the policy).
    metrics.update(priority_metrics(
        prio_in, arrival_f, output_in, first_arr, finish_arr, admitted_arr,
        completed_arr, unsort(preemptions, np.int64)))
    return {
        "first_token_s": first_arr,
        "finish_s": finish_arr,
        "admitted_s": admitted_arr,
        "ttft_s": ttft_arr,
        "e2e_s": e2e_arr,
        "queue_s": queue_arr,
        "load_s": load_arr,
        "prefill_s": prefill_arr,
        "preemptions": unsort(preemptions, np.int64),
        "tokens_scheduled": unsort(tokens, np.int64),
        "generated": unsort(g, np.int64),
        "completed": completed_arr,
        "infeasible": bool(infeasible),
        "truncated": bool(truncated),
        "iterations": int(iterations),
        "busy_s": float(busy),
        "total_tokens": int(total_tokens),
        "total_preemptions": int(total_preemptions),
        "kv_occupancy_mean": (
            kv_integral / busy / num_blocks
            if busy > 0.0 and num_blocks > 0
            else math.nan
        ),
        "kv_occupancy_peak": kv_peak / num_blocks if num_blocks > 0 else math.nan,
        "num_completed": int(num_finished),
        "hit_tokens_by_tier": [int(v) for v in hit_tokens],
        "admitted_prompt_tokens": int(admitted_prompt_tokens),
        "prefix_hit_rate": float(prefix_hit_rate),
        "hit_rate_by_tier": [float(v) for v in hit_rate_by_tier],
        "bytes_read_by_tier": [float(v) for v in bytes_read],
        "bytes_written_by_tier": [float(v) for v in bytes_written],
        "xfer_exposed_s": float(xfer_exposed),
        "xfer_hidden_s": float(xfer_hidden),
        "peak_entries_by_tier": [int(v) for v in peak_entries],
        "spec_drafted_tokens": int(spec_drafted),
        "spec_accepted_tokens": int(spec_accepted),
        "metrics": metrics,
    }
