"""Traced simulation parameters: every knob a sweep varies is a JAX array here.

``SimParams`` groups the model, the hardware, the parallelism, the scheduler, the
cost-model coefficients and the SLOs of one configuration. Every leaf is a JAX array
(converters pin ``float32``/``int32``), so new values never recompile; a batch of
configurations is the same structure with a leading axis ``B`` on every leaf.

Host-side helpers build batches (:func:`stack`, :func:`broadcast`), take lanes
(:func:`index`) and report sizes (:func:`num_lanes`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxsim import presets, shapecorr
from jaxsim.types import Array, Float, Int


def _opt_f32(x) -> Array | None:
    return None if x is None else as_f32(x)


def as_f32(x) -> Array:
    """Convert to a float32 array (no weak types, no float64 under x64)."""
    return jnp.asarray(x, dtype=jnp.float32)


def as_i32(x) -> Array:
    """Convert to an int32 array."""
    return jnp.asarray(x, dtype=jnp.int32)


# --------------------------------------------------------------------------------------
# Cost-model parameters (unconstrained storage)
# --------------------------------------------------------------------------------------

#: Operators with their own roofline coefficients (the five GEMMs) and the
#: elementwise coefficient groups (``final_norm`` uses the ``norm`` coefficients).
GEMM_COST_OPS = ("qkv_proj", "o_proj", "mlp_up", "mlp_down", "lm_head")
ELEM_COST_GROUPS = ("norm", "residual_add", "activation", "rotary", "kv_write", "embedding",
                    "sampling")


def _gemm_spec(op: str) -> tuple:
    return (
        (f"eta_c_{op}", "sigmoid", 1.0, 0.80, f"{op} GEMM peak compute efficiency"),
        (f"f0_{op}", "softplus", 1e12, 2e9, f"{op} GEMM compute offset, FLOPs"),
        (f"eta_m_{op}", "sigmoid", 1.0, 0.90, f"{op} GEMM peak memory efficiency"),
        (f"b0_{op}", "softplus", 1e9, 1e6, f"{op} GEMM memory offset, bytes"),
    )


def _elem_spec(op: str) -> tuple:
    return (
        (f"eta_m_{op}", "sigmoid", 1.0, 0.80, f"{op} memory efficiency"),
        (f"b0_{op}", "softplus", 1e9, 1e6, f"{op} memory offset, bytes"),
    )


#: (name, transform, scale, default value, meaning). ``sigmoid`` parameters are
#: efficiencies in (0, 1); ``softplus`` parameters are ``scale * softplus(u)`` > 0. The
#: scales sit above any plausible value, so softplus works in its exponential range and
#: an optimiser step changes a value by a factor, whatever its magnitude.
#: The defaults are uncalibrated engineering estimates; calibrated presets
#: (``jaxsim/data/cost_presets/``) replace them per GPU.
COST_SPEC: tuple[tuple[str, str, float, float, str], ...] = (
    *[s for op in GEMM_COST_OPS for s in _gemm_spec(op)],
    ("eta_c_attn_prefill", "sigmoid", 1.0, 0.60, "prefill attention compute efficiency"),
    ("f0_attn_prefill", "softplus", 1e12, 1e9, "prefill attention compute offset, FLOPs"),
    ("eta_m_attn_prefill", "sigmoid", 1.0, 0.80, "prefill attention memory efficiency"),
    ("b0_attn_prefill", "softplus", 1e9, 1e6, "prefill attention memory offset, bytes"),
    ("eta_c_attn_decode", "sigmoid", 1.0, 0.40, "decode attention compute efficiency"),
    ("f0_attn_decode", "softplus", 1e12, 1e8, "decode attention compute offset, FLOPs"),
    ("eta_m_attn_decode", "sigmoid", 1.0, 0.75, "decode attention memory efficiency"),
    ("b0_attn_decode", "softplus", 1e9, 4e6, "decode attention memory offset, bytes"),
    *[s for op in ELEM_COST_GROUPS for s in _elem_spec(op)],
    ("ar_latency_s", "softplus", 1e-3, 8e-6, "all-reduce latency per call, s"),
    ("eta_ar", "sigmoid", 1.0, 0.80, "all-reduce bus-bandwidth efficiency"),
    ("kernel_overhead_s", "softplus", 1e-4, 1e-6, "per-kernel launch overhead, s"),
    ("cpu_iter_s", "softplus", 1e-1, 3e-4, "CPU/scheduling overhead per iteration, s"),
    ("cpu_seq_s", "softplus", 1e-3, 2e-6, "CPU overhead per scheduled request, s"),
)
#: Family names accepted by :meth:`CostParams.from_values` as shorthands: ``eta_c_gemm``
#: sets ``eta_c_<op>`` of all five GEMMs, ``eta_m_elem`` / ``b0_elem`` every elementwise
#: group.
COST_ALIASES: dict[str, tuple[str, ...]] = {
    **{f"{k}_gemm": tuple(f"{k}_{op}" for op in GEMM_COST_OPS)
       for k in ("eta_c", "f0", "eta_m", "b0")},
    **{f"{k}_elem": tuple(f"{k}_{op}" for op in ELEM_COST_GROUPS) for k in ("eta_m", "b0")},
}


def expand_cost_aliases(values: dict) -> dict:
    """``values`` with each family shorthand of ``COST_ALIASES`` replaced by its
    per-operator names; a per-operator name given in ``values`` too wins over the
    shorthand. Expand one source of values (a user's, a preset's) before layering it
    over another, so that a user's shorthand overrides a preset's per-operator values.
    """
    out = {k: v for k, v in values.items() if k not in COST_ALIASES}
    for alias, names in COST_ALIASES.items():
        if alias in values:
            for n in names:
                out.setdefault(n, values[alias])
    return out


#: Allowed smooth-max exponents p = 2**k (an integer, not part of ``theta``).
SMOOTH_P_CHOICES = (1, 2, 4, 8)
DEFAULT_SMOOTH_P = 4
COST_PARAM_NAMES: tuple[str, ...] = tuple(s[0] for s in COST_SPEC)
COST_INDEX: dict[str, int] = {n: i for i, n in enumerate(COST_PARAM_NAMES)}
NUM_COST_PARAMS = len(COST_SPEC)


def _softplus_inv(y: float) -> float:
    # log(expm1(y)), stable for large y.
    return y + math.log(-math.expm1(-y)) if y > 20 else math.log(math.expm1(y))


def _to_unconstrained(kind: str, scale: float, value: float) -> float:
    if kind == "sigmoid":
        if not 0.0 < value < 1.0:
            raise ValueError(f"efficiency must be in (0, 1), got {value}")
        return math.log(value / (1.0 - value))
    if kind == "softplus":
        if not value > 0.0:
            raise ValueError(f"value must be > 0, got {value}")
        return _softplus_inv(value / scale)
    raise AssertionError(kind)


class CostParams(eqx.Module):
    """Cost-model coefficients, stored unconstrained.

    Attributes:
        theta: ``f32[K]`` unconstrained values in the order of ``COST_PARAM_NAMES``;
            :meth:`values` maps them through sigmoid / softplus so every physical
            coefficient stays in range whatever an optimiser does to ``theta``.
        smooth_p_log2: ``i32[]`` k of the smooth-max exponent p = 2**k (0..3): p = 1 adds
            the compute and memory times, large p approaches the hard roofline. It is
            an integer so that the double-float cost model can evaluate it exactly.
        shape_corr: ``f32[C, G]`` per-kernel-shape correction tables of a calibrated
            preset (``jaxsim.shapecorr``; rows ``shapecorr.CORR_OPS``, G = 451), or
            ``[C, 0]`` (the default) for none. Not fitted by gradient: the table
            stage of calibration solves for them in closed form.
    """

    theta: Float[Array, " K"] = eqx.field(converter=as_f32)
    smooth_p_log2: Int[Array, ""] = eqx.field(converter=as_i32, default=2)
    shape_corr: Float[Array, "C G"] = eqx.field(converter=as_f32,
                                                default_factory=shapecorr.empty)

    @classmethod
    def default(cls) -> CostParams:
        """The uncalibrated defaults of ``COST_SPEC`` (and p = 4)."""
        return cls.from_values({})

    @classmethod
    def from_values(cls, values: dict[str, float]) -> CostParams:
        """Build from physical values; names not given take their defaults.

        ``smooth_p`` (one of ``SMOOTH_P_CHOICES``) may be given too, and the family
        shorthands of ``COST_ALIASES`` (a per-operator name given too wins).
        """
        values = expand_cost_aliases(values)
        p = values.pop("smooth_p", DEFAULT_SMOOTH_P)
        if p not in SMOOTH_P_CHOICES:
            raise ValueError(f"smooth_p must be one of {SMOOTH_P_CHOICES}, got {p!r}")
        unknown = set(values) - set(COST_PARAM_NAMES)
        if unknown:
            raise KeyError(f"unknown cost parameter(s) {sorted(unknown)}; "
                           f"allowed: {', '.join(COST_PARAM_NAMES)}, smooth_p, "
                           f"{', '.join(COST_ALIASES)}")
        theta = []
        for name, kind, scale, default, _ in COST_SPEC:
            try:
                theta.append(_to_unconstrained(kind, scale, float(values.get(name, default))))
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from None
        return cls(theta=np.asarray(theta, np.float32),
                   smooth_p_log2=int(round(math.log2(p))))

    def values(self) -> dict[str, Array]:
        """Physical coefficient values (differentiable in ``theta``)."""
        out = {}
        for i, (name, kind, scale, _, _) in enumerate(COST_SPEC):
            u = self.theta[..., i]
            if kind == "sigmoid":
                out[name] = jax.nn.sigmoid(u)
            else:
                out[name] = scale * jax.nn.softplus(u)
        return out


# --------------------------------------------------------------------------------------
# Model, hardware, parallelism, scheduler
# --------------------------------------------------------------------------------------


class ModelParams(eqx.Module):
    """Transformer dimensions (float32 so the cost model can use them directly).

    Attributes:
        num_layers, hidden_size, num_heads, num_kv_heads, head_dim, ffn_size,
        vocab_size: architecture (``ffn_size`` is the per-expert FFN width for MoE).
        num_experts: routed experts per MLP (1 for a dense model).
        experts_per_token: experts each token is routed to (1 for dense).
        bytes_per_weight: 2 for BF16 weights, 1 for FP8.
        bytes_per_kv: bytes per KV-cache element (2 for BF16, 1 for FP8).
        bytes_per_lm_head_weight: bytes per LM-head weight: 2, as FP8 (vLLM's
            ``--quantization fp8``) leaves the LM head in BF16.
        num_shared_experts: experts every token runs besides its routed ones (0).
        num_dense_layers, dense_ffn_size: leading layers with a dense MLP of that width
            instead of experts (0; DeepSeek-V3: 3 layers of 18432).
        mla: 1 for multi-head latent attention (DeepSeek-V2/V3), else 0; then
            ``head_dim`` is the query/key head width and ``num_kv_heads`` is 1.
        q_lora_rank, kv_lora_rank, qk_rope_head_dim, v_head_dim: MLA's query rank (0: no
            query compression), KV latent rank, rotary width and value head width.
    The last eight are all None for a plain model (docs/semantics.md §3 with their
    defaults, 0; the cost model then compiles without them) or all arrays.
    """

    num_layers: Float[Array, ""] = eqx.field(converter=as_f32)
    hidden_size: Float[Array, ""] = eqx.field(converter=as_f32)
    num_heads: Float[Array, ""] = eqx.field(converter=as_f32)
    num_kv_heads: Float[Array, ""] = eqx.field(converter=as_f32)
    head_dim: Float[Array, ""] = eqx.field(converter=as_f32)
    ffn_size: Float[Array, ""] = eqx.field(converter=as_f32)
    vocab_size: Float[Array, ""] = eqx.field(converter=as_f32)
    num_experts: Float[Array, ""] = eqx.field(converter=as_f32)
    experts_per_token: Float[Array, ""] = eqx.field(converter=as_f32)
    bytes_per_weight: Float[Array, ""] = eqx.field(converter=as_f32)
    bytes_per_kv: Float[Array, ""] = eqx.field(converter=as_f32)
    bytes_per_lm_head_weight: Float[Array, ""] = eqx.field(converter=as_f32)
    num_shared_experts: Float[Array, ""] | None = eqx.field(converter=_opt_f32, default=None)
    num_dense_layers: Float[Array, ""] | None = eqx.field(converter=_opt_f32, default=None)
    dense_ffn_size: Float[Array, ""] | None = eqx.field(converter=_opt_f32, default=None)
    mla: Float[Array, ""] | None = eqx.field(converter=_opt_f32, default=None)
    q_lora_rank: Float[Array, ""] | None = eqx.field(converter=_opt_f32, default=None)
    kv_lora_rank: Float[Array, ""] | None = eqx.field(converter=_opt_f32, default=None)
    qk_rope_head_dim: Float[Array, ""] | None = eqx.field(converter=_opt_f32, default=None)
    v_head_dim: Float[Array, ""] | None = eqx.field(converter=_opt_f32, default=None)


#: The optional fields of :class:`ModelParams` (0 for a plain model), as the model
#: presets name them.
MODEL_EXTRA_FIELDS = tuple(presets.EXTRA_DEFAULTS)


class HardwareParams(eqx.Module):
    """One GPU of the serving instance.

    Attributes:
        peak_flops: dense tensor-core peak of the projection and MLP GEMMs, FLOP/s: the
            FP8 peak for FP8 weights on a GPU that has one, else the BF16 peak.
        peak_flops_16bit: dense 16-bit (BF16) tensor-core peak, FLOP/s: attention and the
            LM head, which FP8 weights leave in 16 bits (vLLM quantises linear layers
            and experts only). Equal to ``peak_flops`` for BF16 weights.
        hbm_bw_bytes_per_s: HBM bandwidth, bytes/s.
        link_bw_bytes_per_s: per-direction GPU-GPU bandwidth used by all-reduce, bytes/s.
    """

    peak_flops: Float[Array, ""] = eqx.field(converter=as_f32)
    hbm_bw_bytes_per_s: Float[Array, ""] = eqx.field(converter=as_f32)
    link_bw_bytes_per_s: Float[Array, ""] = eqx.field(converter=as_f32)
    peak_flops_16bit: Float[Array, ""] = eqx.field(converter=as_f32)


class SchedulerParams(eqx.Module):
    """Engine knobs (vLLM names). All int32; booleans are 0/1.

    Attributes:
        mode: 0 = vLLM v1 (running first, mixed batches), 1 = v0 (prefill-first).
        enable_chunked_prefill: 1 to split prompts across iterations (forced 0 in v0).
        max_num_seqs: running-request limit (must be <= SimShape.max_slots to be exact).
        max_num_batched_tokens: token budget per iteration.
        long_prefill_token_threshold: per-request cap on the tokens of one iteration
            (0 = off; v1, with chunked prefill on or off, as vLLM v1 applies it).
        reserve_full_isl: 1 = a waiting request (v1) is admitted only if its whole known
            sequence (prompt, plus output so far if it was preempted) fits in the free
            blocks, not only the tokens scheduled now (vLLM's
            ``scheduler_reserve_full_isl``; matters when a prompt is split: chunked
            prefill or the threshold).
        block_size: tokens per KV block.
        num_gpu_blocks: KV capacity in blocks (derived on the host from memory).
        watermark_blocks: free blocks an admission must leave.
        max_model_len: longest prompt + output allowed.
        tp: tensor-parallel degree.
        async_scheduling: 1 = the next batch is formed while the current one runs (vLLM
            v1's ``--async-scheduling``, on by default from vLLM 0.14): a request that
            arrives during an iteration joins the batch after next, and an iteration's
            CPU overheads overlap its GPU time (docs/semantics.md §2.10). v1 only.
        scheduling_policy: 0 = first come, first served; 1 = by priority (vLLM's
            ``--scheduling-policy priority``: the waiting queue in order of the requests'
            ``Workload.priority``, the lowest-priority running request preempted first;
            docs/semantics.md §10). v1 only; needs ``SimShape.priority_levels``.
    """

    mode: Int[Array, ""] = eqx.field(converter=as_i32)
    enable_chunked_prefill: Int[Array, ""] = eqx.field(converter=as_i32)
    max_num_seqs: Int[Array, ""] = eqx.field(converter=as_i32)
    max_num_batched_tokens: Int[Array, ""] = eqx.field(converter=as_i32)
    long_prefill_token_threshold: Int[Array, ""] = eqx.field(converter=as_i32)
    reserve_full_isl: Int[Array, ""] = eqx.field(converter=as_i32)
    block_size: Int[Array, ""] = eqx.field(converter=as_i32)
    num_gpu_blocks: Int[Array, ""] = eqx.field(converter=as_i32)
    watermark_blocks: Int[Array, ""] = eqx.field(converter=as_i32)
    max_model_len: Int[Array, ""] = eqx.field(converter=as_i32)
    tp: Int[Array, ""] = eqx.field(converter=as_i32)
    async_scheduling: Int[Array, ""] = eqx.field(converter=as_i32)
    scheduling_policy: Int[Array, ""] = eqx.field(converter=as_i32)


class CacheParams(eqx.Module):
    """Prefix caching and KV memory tiers (docs/semantics.md §5). Arrays of length T
    (``SimShape.num_tiers``); index 0 is HBM and its entries are not used.

    Attributes:
        enable: 1 = prefix caching on (int32).
        capacity_blocks: ``i32[T]`` capacity of each lower tier in cache blocks of
            ``Workload.hash_block_tokens`` tokens (0 disables the tier).
        read_bps, write_bps: ``f32[T]`` device read / write bandwidth, bytes/s.
        latency_s: ``f32[T]`` access latency, seconds.
        link_id: ``i32[T]`` the link each tier sits behind (tiers sharing an id share it).
        link_bps: ``f32[T]`` bandwidth of link id ``l`` (indexed by link id), bytes/s.
        w_recency, w_frequency, w_depth: eviction score weights
            (``score = w_recency*last_use + w_frequency*hits - w_depth*depth``; the lowest
            score is evicted first).
        load_overlap: fraction of the iteration's compute time that transfers can hide
            behind, in [0, 1].
        w_admission: admission weight (docs/semantics.md §5.8): waiting requests in the
            first ``admission_window`` queue positions are walked by
            ``position - w_admission * hit_blocks``; 0 is FCFS.
        admission_window: ``i32[]`` queue positions the admission weight reorders.
        static_power_w, energy_pj_per_bit: ``f32[T]`` per-tier static power (W) and
            device energy per bit moved (pJ/bit); NaN where unknown (§5.9).
        swap: 1 = swap preemption (§5.10): victims' KV goes to the first lower tier with
            capacity and back on re-admission, while it fits; 0 = recompute.
        prefetch: 1 = prefetch the cached prefixes of the first ``admission_window``
            waiting requests into HBM within each iteration's overlap window (§5.11).
    """

    enable: Int[Array, ""] = eqx.field(converter=as_i32)
    capacity_blocks: Int[Array, " T"] = eqx.field(converter=as_i32)
    read_bps: Float[Array, " T"] = eqx.field(converter=as_f32)
    write_bps: Float[Array, " T"] = eqx.field(converter=as_f32)
    latency_s: Float[Array, " T"] = eqx.field(converter=as_f32)
    link_id: Int[Array, " T"] = eqx.field(converter=as_i32)
    link_bps: Float[Array, " T"] = eqx.field(converter=as_f32)
    w_recency: Float[Array, ""] = eqx.field(converter=as_f32)
    w_frequency: Float[Array, ""] = eqx.field(converter=as_f32)
    w_depth: Float[Array, ""] = eqx.field(converter=as_f32)
    load_overlap: Float[Array, ""] = eqx.field(converter=as_f32)
    w_admission: Float[Array, ""] = eqx.field(converter=as_f32)
    admission_window: Int[Array, ""] = eqx.field(converter=as_i32)
    static_power_w: Float[Array, " T"] = eqx.field(converter=as_f32)
    energy_pj_per_bit: Float[Array, " T"] = eqx.field(converter=as_f32)
    swap: Int[Array, ""] = eqx.field(converter=as_i32)
    prefetch: Int[Array, ""] = eqx.field(converter=as_i32)

    @classmethod
    def hbm_only(cls, enable: bool = True, num_tiers: int = 1) -> CacheParams:
        """Prefix caching in HBM with LRU eviction; ``num_tiers - 1`` disabled tiers."""
        T = int(num_tiers)
        return cls(
            enable=int(enable), capacity_blocks=[0] * T, read_bps=[1e9] * T,
            write_bps=[1e9] * T, latency_s=[0.0] * T, link_id=[0] * T,
            link_bps=[1e9] * T, w_recency=1.0, w_frequency=0.0, w_depth=0.0,
            load_overlap=0.0, w_admission=0.0, admission_window=32,
            static_power_w=[0.0] * T, energy_pj_per_bit=[0.0] * T, swap=0, prefetch=0,
        )


#: Largest number of draft tokens per decode step (``SpecParams.num_tokens``).
MAX_SPEC_TOKENS = 16
#: Fixed-point unit of the acceptance accumulator (docs/semantics.md §9).
SPEC_UNIT = 65536


def spec_accept_units(alpha: float, k: int) -> np.ndarray:
    """``A[0..MAX_SPEC_TOKENS]`` of docs/semantics.md §9 for acceptance rate ``alpha``
    and ``k`` draft tokens: ``A[j] = round(65536 * sum(alpha ** i for i in 1..j))`` for
    ``j <= k`` (Python floats, summed in order), and ``A[k]`` repeated past ``k`` (never
    read: at most ``k`` drafts are scheduled)."""
    alpha, k = float(alpha), int(k)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"speculative acceptance={alpha!r}: must be in [0, 1]")
    if not 0 <= k <= MAX_SPEC_TOKENS:
        raise ValueError(f"speculative num_tokens={k!r}: must be an int in "
                         f"0..{MAX_SPEC_TOKENS}")
    out = np.zeros(MAX_SPEC_TOKENS + 1, np.int64)
    total = 0.0
    for j in range(1, k + 1):
        total += alpha ** j
        out[j] = round(SPEC_UNIT * total)
    out[k + 1:] = out[k]
    return out.astype(np.int32)


class SpecParams(eqx.Module):
    """Speculative decoding (docs/semantics.md §9).

    Attributes:
        num_tokens: K, draft tokens per decode step (0 = off; mode v1 only).
        accept_units: ``i32[MAX_SPEC_TOKENS + 1]``, ``A[j]``: expected accepted drafts
            out of ``j``, in units of ``1 / SPEC_UNIT`` (:func:`spec_accept_units`).
        draft: the draft model's dimensions (its GPU time is added to each iteration's).
        has_draft: 1 = the drafter is that model; 0 = drafts cost no GPU time (n-gram).
    """

    num_tokens: Int[Array, ""] = eqx.field(converter=as_i32)
    accept_units: Int[Array, " A"] = eqx.field(converter=as_i32)
    draft: ModelParams
    has_draft: Int[Array, ""] = eqx.field(converter=as_i32)


def spec_off(model: ModelParams) -> SpecParams:
    """Speculative decoding off, for a lane (or a batch: ``model``'s leading axes)
    batched with lanes that have it."""
    lead = jnp.shape(model.num_layers)
    return SpecParams(num_tokens=jnp.zeros(lead, jnp.int32),
                      accept_units=jnp.zeros((*lead, MAX_SPEC_TOKENS + 1), jnp.int32),
                      draft=model, has_draft=jnp.zeros(lead, jnp.int32))


class SimParams(eqx.Module):
    """Everything traced about one configuration (or a batch: leading axis B).

    Attributes:
        model, hardware, scheduler, cost: see the classes above.
        ttft_slo_s, tpot_slo_s: SLOs for goodput, seconds.
        status0: int32 status bits found on the host before simulating (e.g.
            ``INFEASIBLE`` with its reason); a lane with ``INFEASIBLE`` does nothing.
        cache: prefix caching and memory tiers (``None``: no prefix caching; required
            when ``SimShape.cache_entries > 0``).
        spec: speculative decoding (``None``: off; required when
            ``SimShape.speculative``).
    """

    model: ModelParams
    hardware: HardwareParams
    scheduler: SchedulerParams
    cost: CostParams
    ttft_slo_s: Float[Array, ""] = eqx.field(converter=as_f32)
    tpot_slo_s: Float[Array, ""] = eqx.field(converter=as_f32)
    status0: Int[Array, ""] = eqx.field(converter=as_i32)
    cache: CacheParams | None = None
    spec: SpecParams | None = None


# --------------------------------------------------------------------------------------
# Batch helpers (host side)
# --------------------------------------------------------------------------------------


def with_model_extras(m: ModelParams) -> ModelParams:
    """``m`` with its optional fields (shared experts, dense layers, MLA) as zero arrays
    where they are None (the same model), so it stacks with models that have them."""
    if m.mla is not None:
        return m
    z = jnp.zeros_like(m.num_layers)
    return eqx.tree_at(lambda x: [getattr(x, f) for f in MODEL_EXTRA_FIELDS], m,
                       [z] * len(MODEL_EXTRA_FIELDS), is_leaf=lambda x: x is None)


def _same_table_width(batches: Sequence[SimParams]) -> list[SimParams]:
    """Give params without shape-correction tables zero tables (delta = 0: the same
    times) when another one has them, and models without the optional fields zero ones
    when another has them, so they stack."""
    if any(b.spec is not None for b in batches):  # give lanes without it spec_off
        batches = [b if b.spec is not None else eqx.tree_at(
            lambda p: p.spec, b, spec_off(b.model), is_leaf=lambda x: x is None)
            for b in batches]
    if any(b.model.mla is not None or (b.spec is not None and b.spec.draft.mla is not None)
           for b in batches):
        batches = [eqx.tree_at(lambda p: p.model, b, with_model_extras(b.model))
                   for b in batches]
        batches = [b if b.spec is None else eqx.tree_at(
            lambda p: p.spec.draft, b, with_model_extras(b.spec.draft)) for b in batches]
    width = max(b.cost.shape_corr.shape[-1] for b in batches)

    def widen(b: SimParams) -> SimParams:
        sc = b.cost.shape_corr
        if sc.shape[-1] == width:
            return b
        return eqx.tree_at(lambda p: p.cost.shape_corr, b,
                           jnp.zeros((*sc.shape[:-1], width), jnp.float32))

    return [widen(b) for b in batches]


def stack(params: Sequence[SimParams]) -> SimParams:
    """Stack single-configuration params into a batch with leading axis B."""
    if not params:
        raise ValueError("stack() needs at least one SimParams")
    return jax.tree.map(lambda *xs: jnp.stack(xs), *_same_table_width(params))


def broadcast(params: SimParams, num: int) -> SimParams:
    """Repeat one configuration ``num`` times along a new leading axis."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (num, *x.shape)), params)


def index(params: SimParams, i) -> SimParams:
    """Lane ``i`` (an int, slice or index array) of a batch."""
    return jax.tree.map(lambda x: x[i], params)


def concatenate(batches: Sequence[SimParams]) -> SimParams:
    """Concatenate batches along the lane axis (lanes without shape-correction tables
    get zero tables when another batch has them)."""
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *_same_table_width(batches))


def num_lanes(params: SimParams) -> int:
    """B for a batch (0-d leaves give 1: a single configuration)."""
    leaf = params.scheduler.mode
    return 1 if leaf.ndim == 0 else int(leaf.shape[0])
