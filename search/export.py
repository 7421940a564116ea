"""Export a jaxsim configuration as vLLM engine arguments and a ``vllm serve`` command.

:func:`vllm_engine_args` validates a (partial or full) configuration with
:func:`jaxsim.config.validate` and returns the matching keyword arguments of vLLM's
``EngineArgs`` (Python spelling); :func:`vllm_serve_command` renders them as a shell
command line, one ``--flag value`` per argument in a fixed order; :func:`vllm_env` gives
the environment variables it needs.

What maps to what (jaxsim key -> ``EngineArgs`` field):

* ``model`` -> ``model``: the Hugging Face repo id from :data:`HF_MODEL_IDS` (the
  instruction-tuned checkpoint of each preset, which is what one serves; its architecture
  figures equal the base checkpoint's), or the ``model_id`` passed in.
* ``dtype`` bf16 -> ``dtype="bfloat16"``; fp8 -> ``dtype="bfloat16"`` and
  ``quantization="fp8"`` (vLLM's dynamic FP8 weight quantization of the BF16 checkpoint).
* ``tp`` -> ``tensor_parallel_size``; ``max_model_len`` -> ``max_model_len`` (only when
  set); ``block_size``, ``gpu_memory_utilization``, ``kv_cache_dtype`` (auto | fp8),
  ``max_num_seqs``, ``max_num_batched_tokens``, ``enable_chunked_prefill`` -> the fields of
  the same name; ``num_gpu_blocks`` -> ``num_gpu_blocks_override`` (only when set);
  ``long_prefill_token_threshold`` -> the same field (only when > 0).
* ``enable_prefix_caching`` (optional key) -> the same field. Without the key the export
  sets it to False: the simulator models no prefix reuse, while vLLM v1 turns automatic
  prefix caching on by default.
* Host-memory KV tiers (``tiers`` naming ``dram``, ``dram_pcie4`` or ``grace``; their
  ``tier.<name>.capacity_gb`` or the preset's capacity, one GPU's share as every tier
  figure; GB = 1e9 bytes as everywhere) -> ``kv_offloading_size`` in GiB, times ``tp``
  (vLLM's figure is the total over the TP ranks, i.e. per instance), and
  ``kv_offloading_backend="native"`` (scheduler v1 only: the V0 engine has no KV
  offloading).
* ``watermark`` in scheduler v1 -> ``watermark`` (only when > 0; vLLM releases from June
  2026 have it, default 0).
* ``async_scheduling`` in scheduler v1 -> ``async_scheduling``, always written (the
  default flipped to on in vLLM 0.14; jaxsim's is off).
* ``scheduling_policy`` priority -> ``scheduling_policy="priority"`` (fcfs, vLLM's
  default, is not written). The requests' priorities are the client's business (the
  ``priority`` field of each request).
* ``speculative`` with ``num_tokens`` > 0 -> ``speculative_config`` (a JSON object on the
  command line): ``num_speculative_tokens`` and ``method`` ``ngram`` (with
  ``prompt_lookup_max`` 4, as in vLLM's documented example) or ``eagle`` (its ``model``
  is the EAGLE head's repo id, which the presets do not name: :func:`vllm_caveats` says
  so), or the draft model's repo id for ``draft_model``. The acceptance rate is the
  simulator's input, not a flag.
* ``scheduler`` v1 -> nothing (vLLM's default engine); v0 -> the environment variable
  ``VLLM_USE_V1=0``, which only vLLM releases before 0.11 honour (the V0 engine has since
  been removed), with chunked prefill off; ``preemption_mode`` swap in v0 ->
  ``preemption_mode="swap"`` and ``swap_space`` (GiB per GPU) from the first tier's
  capacity.

Not representable, so omitted: ``gpu`` (the hardware the command runs on),
``num_replicas`` and ``router`` (the command is one replica's; :func:`vllm_caveats` says
how many to run behind which load balancer), ``slo.*``,
``workload.*`` and ``seed`` (the benchmark client's business, not the server's),
``cost_preset`` / ``cost_shape_tables`` / ``cost.*`` (the simulator's cost model), ``max_slots`` /
``max_iterations`` (simulator internals), ``watermark`` in v0 (V0 hard-codes 1 %),
``activation_reserve_gb`` (vLLM measures it by profiling). Simulated behaviour that the
command cannot carry (swap preemption in v1, KV tiers other than CPU memory or any tier
in v0, an eviction order other than LRU, cache-aware admission, prefetch) and values
vLLM may refuse are listed by :func:`vllm_caveats`; ``jaxsim best`` prints them under the
command. A tensor-parallel degree that does not divide the model's attention heads (and
its KV heads, or the other way round), or a ``max_num_batched_tokens`` below
``max_num_seqs`` (or, without chunked prefill, below ``max_model_len``), is refused:
vLLM does not start with it, and the simulator marks such a lane infeasible.

When ``max_model_len`` is unset the simulator derives it from the workload (its longest
request, capped by the model's context length), while vLLM takes the model's context
length, and refuses to start when one sequence of that length does not fit the KV cache
or, without chunked prefill, ``max_num_batched_tokens``. So the export leaves it out
(vLLM then takes the whole context) unless the model's context would fail one of those
checks by the simulator's own figures (its KV blocks, less the watermark); then it writes
the value the simulator used.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping
from typing import Any

from jaxsim import config as jconfig
from jaxsim import presets

__all__ = [
    "HF_MODEL_IDS", "hf_model_id", "vllm_argv", "vllm_caveats", "vllm_engine_args",
    "vllm_env", "vllm_serve_command",
]

#: Preset name -> official Hugging Face repo id (the instruction-tuned checkpoint; Qwen3's
#: unsuffixed repos are the post-trained models, ``-Base`` are the pre-trained ones).
HF_MODEL_IDS: dict[str, str] = {
    "Llama-2-7B": "meta-llama/Llama-2-7b-chat-hf",
    "Llama-2-13B": "meta-llama/Llama-2-13b-chat-hf",
    "Llama-2-70B": "meta-llama/Llama-2-70b-chat-hf",
    "Llama-3.1-8B": "meta-llama/Llama-3.1-8B-Instruct",
    "Llama-3.1-70B": "meta-llama/Llama-3.1-70B-Instruct",
    "Llama-3.1-405B": "meta-llama/Llama-3.1-405B-Instruct",
    "Qwen2.5-7B": "Qwen/Qwen2.5-7B-Instruct",
    "Qwen2.5-72B": "Qwen/Qwen2.5-72B-Instruct",
    "Qwen3-8B": "Qwen/Qwen3-8B",
    "Qwen3-32B": "Qwen/Qwen3-32B",
    "Mistral-7B": "mistralai/Mistral-7B-Instruct-v0.1",
    "Mixtral-8x7B": "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "Qwen3-30B-A3B": "Qwen/Qwen3-30B-A3B",
    "Qwen3-235B-A22B": "Qwen/Qwen3-235B-A22B",
    "DeepSeek-V3": "deepseek-ai/DeepSeek-V3",
    "DeepSeek-R1": "deepseek-ai/DeepSeek-R1",
}

#: Tier names taken as CPU memory (vLLM's native KV offloading target).
#: Tier presets that are host memory (vLLM's native CPU offloading backend).
CPU_TIER_NAMES = ("dram", "dram_pcie4", "grace")

_DTYPES = {"bf16": "bfloat16", "fp8": "bfloat16"}


def hf_model_id(name: str) -> str:
    """Hugging Face repo id of a model preset (name matched case-insensitively)."""
    try:
        canonical = presets.model(name)[0]
    except KeyError as e:
        raise jconfig.ConfigError(f"model: {e.args[0]}") from None
    if canonical not in HF_MODEL_IDS:
        raise jconfig.ConfigError(f"model: no Hugging Face repo id known for {canonical!r}; "
                                  "pass model_id")
    return HF_MODEL_IDS[canonical]


def _as_bool(field: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise jconfig.ConfigError(f"{field}: {v!r} must be true or false")


def _capacity_gb(field: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise jconfig.ConfigError(f"{field}: {v!r} must be a finite number >= 0")
    return float(v)


def _tier_gb(cfg: Mapping, name: str) -> float:
    """One GPU's capacity (GB) of tier ``name`` of a validated configuration."""
    from jaxsim import tiers as tiers_mod

    cap = cfg.get("tier", {}).get(name, {}).get("capacity_gb")
    return tiers_mod.tier(name).capacity_gb if cap is None else float(cap)


def _cpu_offload_gb(cfg: Mapping) -> float | None:
    """Capacity (GB) of the host-memory KV tiers of a validated configuration, over the
    instance's ``tp`` GPUs (tier capacities are one GPU's share)."""
    names = [n for n in cfg.get("tiers") or [] if n in CPU_TIER_NAMES]
    total = sum(_tier_gb(cfg, n) for n in names) * int(cfg["tp"])
    return total if names and total > 0 else None


def _gib(gb: float) -> float:
    return round(gb * 1e9 / 2**30, 3)


def _needed_max_model_len(cfg: Mapping) -> int | None:
    """The simulator's derived ``max_model_len`` of a validated configuration whose own
    ``max_model_len`` is unset, where vLLM's default (the model's context length) would
    not start: one sequence of it does not fit the KV cache or, without chunked prefill,
    ``max_num_batched_tokens``. None where the default starts."""
    context = int(presets.model(cfg["model"])[1]["max_position_embeddings"])
    _, info = jconfig.params_from_columns(jconfig.columns_from_configs([cfg]), context)
    kv_tokens = (int(info["num_gpu_blocks"][0]) - int(info["watermark_blocks"][0])) * int(
        cfg["block_size"])
    chunked = cfg["enable_chunked_prefill"] and cfg["scheduler"] != "v0"
    if kv_tokens >= context and (chunked or cfg["max_num_batched_tokens"] >= context):
        return None
    return min(context, jconfig.build_trace(cfg).max_len())


#: Block sizes vLLM's ``CacheConfig`` accepted through its 0.11 releases (the ``BlockSize``
#: literal of ``vllm/config/cache.py``); later releases take any size their attention
#: backend supports (the Triton backend: a multiple of 16).
VLLM_BLOCK_SIZES = (1, 8, 16, 32, 64, 128, 256)


def _check_tp(c: Mapping) -> None:
    m = presets.model(c["model"])[1]
    nh, nkv, tp = int(m["num_heads"]), int(m["num_kv_heads"]), int(c["tp"])
    if jconfig.tp_fits_heads(tp, nh, nkv):
        return
    if nh % tp:
        why = f"does not divide {c['model']}'s {nh} attention heads"
    else:
        why = f"neither divides nor is a multiple of {c['model']}'s {nkv} KV heads"
    raise jconfig.ConfigError(f"tp: {tp} {why}; vLLM refuses it (and the simulator marks "
                              "the lane infeasible)")


def vllm_caveats(cfg: Mapping) -> list[str]:
    """Where the ``vllm serve`` command of :func:`vllm_serve_command` differs from what
    the simulator ran: simulated behaviour no vLLM flag carries, and values vLLM may
    refuse. One sentence each; empty when the command is faithful."""
    c = jconfig.validate(cfg)
    notes = []
    if c["num_replicas"] > 1:
        lb = {"round_robin": "round-robin", "random": "random",
              "prefix_hash": "consistent-hash (keyed by the prompt's first block)"}[
            c["router"]]
        notes.append(f"num_replicas {c['num_replicas']}: the command starts one replica; run "
                     f"{c['num_replicas']} of them ({c['tp']} GPU(s) each) behind a {lb} "
                     "load balancer (the vLLM production stack's router, vllm-router); "
                     "vLLM's own --data-parallel-size balances by load, which jaxsim does "
                     "not model")
    dg = c["disaggregation"]
    if dg["enabled"]:
        notes.append(
            f"disaggregation: the command starts one instance; run {dg['prefill_replicas']} "
            f"prefill instance(s) with --kv-transfer-config '{{\"kv_connector\":"
            f"\"NixlConnector\",\"kv_role\":\"kv_both\"}}' and {dg['decode_replicas']} "
            f"decode instance(s) with the same flag ({c['tp']} GPU(s) each) behind a "
            "disaggregated-prefill proxy that sends each request to a prefill instance "
            "with max_tokens 1 and then to a decode instance; the simulated KV link is "
            f"{dg['kv_link_gbs']:g} GB/s per GPU")
    if c["block_size"] not in VLLM_BLOCK_SIZES:
        notes.append(f"block_size {c['block_size']}: vLLM up to 0.11 accepts only "
                     f"{', '.join(map(str, VLLM_BLOCK_SIZES))}, and later releases need a "
                     "size the attention backend supports (Triton: a multiple of 16)")
    context = int(presets.model(c["model"])[1]["max_position_embeddings"])
    if c["max_model_len"] is not None and c["max_model_len"] > context:
        notes.append(f"max_model_len {c['max_model_len']} exceeds {c['model']}'s context "
                     f"({context}): vLLM refuses it unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1")
    v1 = c["scheduler"] == "v1"
    if _splits_prompts(c) and not c["scheduler_reserve_full_isl"]:
        notes.append("scheduler_reserve_full_isl false: --no-scheduler-reserve-full-isl needs "
                     "a vLLM release from March 2026 on; earlier ones do not know the flag "
                     "(drop it there: they admit by the first chunk anyway)")
    if v1 and c["watermark"]:
        notes.append(f"watermark {c['watermark']}: --watermark needs a vLLM release from "
                     "June 2026 on, which exempts an admission when nothing is running "
                     "(jaxsim does not; the same unless one request needs more than "
                     f"{1 - c['watermark']:g} of the KV cache, which jaxsim marks infeasible)")
    elif not v1 and c["watermark"] not in (None, 0.01):
        notes.append(f"watermark {c['watermark']}: not in the command (vLLM v0 keeps 1% "
                     "of the blocks free)")
    if c["preemption_mode"] == "swap" and v1:
        notes.append("preemption_mode swap: not in the command (vLLM's V1 engine preempts "
                     "by recomputation only)")
    elif c["preemption_mode"] == "swap" and _swap_tier(c) in CPU_TIER_NAMES:
        notes.append(f"preemption_mode swap: vLLM v0 swaps to a CPU space of its own "
                     f"(--swap-space); jaxsim swaps to tier {_swap_tier(c)}, which also "
                     "holds its evicted prefix-cache blocks")
    elif c["preemption_mode"] == "swap":
        notes.append(f"preemption_mode swap: not in the command (jaxsim swaps to tier "
                     f"{_swap_tier(c)}; vLLM v0 swaps to CPU memory only)")
    other = [t for t in c["tiers"] if t not in CPU_TIER_NAMES or not v1]
    if other and v1:
        notes.append(f"tiers {', '.join(other)}: not in the command (vLLM's native KV "
                     "offloading uses CPU memory only)")
    elif other:
        notes.append(f"tiers {', '.join(other)}: not in the command (vLLM's V0 engine has "
                     "no KV offloading)")
    if v1 and _cpu_offload_gb(c):
        notes.append("--kv-offloading-size needs a vLLM release after 0.11 (native CPU KV "
                     "offloading came later)")
    spec = c["speculative"]
    if spec["num_tokens"] > 0:
        notes.append(f"speculative.acceptance {spec['acceptance']:g}: an input of the "
                     "simulation; compare it with what vLLM measures on your prompts "
                     "(vllm:spec_decode_num_accepted_tokens over "
                     "vllm:spec_decode_num_draft_tokens, per position)")
        if spec["method"] == "eagle":
            notes.append(f"speculative.method eagle: put the repo id of an EAGLE draft head "
                         f"trained for {c['model']} in --speculative-config's \"model\" "
                         "(the command has a placeholder)")
    if c["enable_prefix_caching"]:
        cache = c["cache"]
        if cache["frequency_weight"] > 0 or cache["depth_weight"] > 0 or \
                cache["recency_weight"] == 0:
            notes.append("cache eviction weights: not in the command (vLLM evicts least "
                         "recently used blocks first)")
        if cache["admission_weight"] > 0:
            notes.append("cache.admission_weight: not in the command (vLLM admits in "
                         "arrival order)")
        if cache["prefetch"]:
            notes.append("cache.prefetch: not in the command (vLLM has no prefetch of "
                         "queued requests' prefixes)")
    return notes


def _splits_prompts(c: Mapping) -> bool:
    """Whether vLLM v1 may schedule part of a prompt (so admission's whole-sequence rule
    matters): chunked prefill, or a long-prefill threshold (applied either way)."""
    return c["scheduler"] == "v1" and (
        c["enable_chunked_prefill"] or c["long_prefill_token_threshold"] > 0)


def _check_budget(c: Mapping, mml: int | None) -> None:
    """``mml``: the ``max_model_len`` the command carries (None: the model's context)."""
    budget = c["max_num_batched_tokens"]
    if budget < c["max_num_seqs"]:
        raise jconfig.ConfigError(
            f"max_num_batched_tokens: {budget} is below max_num_seqs "
            f"({c['max_num_seqs']}); vLLM refuses it (and the simulator marks the lane "
            "infeasible)")
    chunked = c["enable_chunked_prefill"] and c["scheduler"] == "v1"
    if mml is None:
        mml = int(presets.model(c["model"])[1]["max_position_embeddings"])
    if not chunked and budget < mml:
        raise jconfig.ConfigError(
            f"max_num_batched_tokens: {budget} is below max_model_len ({mml}) without "
            "chunked prefill; vLLM refuses it (and the simulator marks the lane infeasible)")


def _swap_tier(c: Mapping) -> str:
    """The tier swap preemption uses: the first one with room (docs/semantics.md §5.10)."""
    return next((t for t in c["tiers"] if _tier_gb(c, t) > 0), c["tiers"][0])


def vllm_engine_args(cfg: Mapping) -> dict[str, object]:
    """vLLM ``EngineArgs`` keyword arguments for a jaxsim configuration.

    ``cfg`` is validated first (defaults filled in); a bad value raises
    :class:`jaxsim.config.ConfigError` naming the field. The keys come in a fixed order,
    the order :func:`vllm_serve_command` prints them in.
    """
    c = jconfig.validate(cfg)
    _check_tp(c)
    args: dict[str, object] = {
        "model": hf_model_id(c["model"]),
        "dtype": _DTYPES[c["dtype"]],
    }
    if c["dtype"] == "fp8":
        args["quantization"] = "fp8"
    args["tensor_parallel_size"] = c["tp"]
    mml = c["max_model_len"] if c["max_model_len"] is not None else _needed_max_model_len(c)
    _check_budget(c, mml)
    if mml is not None:
        args["max_model_len"] = mml
    args["block_size"] = c["block_size"]
    args["gpu_memory_utilization"] = c["gpu_memory_utilization"]
    if c["num_gpu_blocks"] is not None:
        args["num_gpu_blocks_override"] = c["num_gpu_blocks"]
    args["kv_cache_dtype"] = c["kv_cache_dtype"]
    args["enable_prefix_caching"] = _as_bool("enable_prefix_caching",
                                             c.get("enable_prefix_caching", False))
    offload_gb = _cpu_offload_gb(c)
    if offload_gb and c["scheduler"] == "v1":
        args["kv_offloading_size"] = _gib(offload_gb)
        args["kv_offloading_backend"] = "native"
    if c["preemption_mode"] == "swap" and c["scheduler"] == "v0" and \
            _swap_tier(c) in CPU_TIER_NAMES:
        args["preemption_mode"] = "swap"
        args["swap_space"] = _gib(_tier_gb(c, _swap_tier(c)))
    args["max_num_seqs"] = c["max_num_seqs"]
    args["max_num_batched_tokens"] = c["max_num_batched_tokens"]
    args["enable_chunked_prefill"] = c["enable_chunked_prefill"]
    if c["long_prefill_token_threshold"] > 0:
        args["long_prefill_token_threshold"] = c["long_prefill_token_threshold"]
    if _splits_prompts(c) and not c["scheduler_reserve_full_isl"]:
        args["scheduler_reserve_full_isl"] = False  # on in vLLM since March 2026
    if c["scheduler"] == "v1" and c["watermark"]:
        args["watermark"] = c["watermark"]  # in vLLM since June 2026, default 0
    if c["scheduler"] == "v1":
        # always explicit: on by default from vLLM 0.14, off before
        args["async_scheduling"] = bool(c["async_scheduling"])
    if c["scheduling_policy"] == "priority":  # docs/semantics.md §10
        args["scheduling_policy"] = "priority"
    spec = c["speculative"]
    if spec["num_tokens"] > 0:
        sc: dict[str, object] = {}
        if spec["method"] == "draft_model":
            sc["model"] = hf_model_id(spec["draft_model"])
        else:
            sc["method"] = spec["method"]
            if spec["method"] == "eagle":
                sc["model"] = f"<EAGLE head for {hf_model_id(c['model'])}>"
        sc["num_speculative_tokens"] = spec["num_tokens"]
        if spec["method"] == "ngram":
            sc["prompt_lookup_max"] = 4  # the n-gram window of vLLM's documented example
        args["speculative_config"] = sc
    return args


def vllm_env(cfg: Mapping) -> dict[str, str]:
    """Environment variables the engine needs: ``VLLM_USE_V1=0`` for scheduler v0."""
    return {"VLLM_USE_V1": "0"} if jconfig.validate(cfg)["scheduler"] == "v0" else {}


def _flag(name: str, value: object) -> list[str]:
    opt = name.replace("_", "-")
    if isinstance(value, bool):  # vLLM's argparse takes --x / --no-x for every bool field
        return [f"--{opt}" if value else f"--no-{opt}"]
    if isinstance(value, dict):  # a config object: vLLM parses its JSON
        return [f"--{opt}", json.dumps(value, separators=(",", ":"))]
    return [f"--{opt}", str(value)]


def vllm_argv(cfg: Mapping, model_id: str | None = None) -> list[str]:
    """The ``vllm serve`` argument vector (without environment variables)."""
    args = vllm_engine_args(cfg)
    model = args.pop("model")
    argv = ["vllm", "serve", str(model if model_id is None else model_id)]
    for name, value in args.items():
        argv += _flag(name, value)
    return argv


def vllm_serve_command(cfg: Mapping, model_id: str | None = None) -> str:
    """The ``[ENV=..] vllm serve MODEL --flag value ...`` command line, shell-quoted.

    ``model_id`` replaces the preset's Hugging Face repo id (a local path, a fine-tune).
    """
    env = [f"{k}={shlex.quote(v)}" for k, v in vllm_env(cfg).items()]
    return " ".join([*env, *(shlex.quote(a) for a in vllm_argv(cfg, model_id))])
