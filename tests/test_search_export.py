"""search.export: jaxsim configuration -> vLLM engine arguments and ``vllm serve`` command."""

from __future__ import annotations

import argparse
import shlex

import pytest

from jaxsim import config, presets
from search import export

DEFAULT_ARGV = [
    "vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct",
    "--dtype", "bfloat16",
    "--tensor-parallel-size", "1",
    "--block-size", "16",
    "--gpu-memory-utilization", "0.9",
    "--kv-cache-dtype", "auto",
    "--no-enable-prefix-caching",
    "--max-num-seqs", "256",
    "--max-num-batched-tokens", "2048",
    "--enable-chunked-prefill",
    "--no-async-scheduling",
]

TIER_KEYS = ("tiers", "tier", "enable_prefix_caching")


def parse_like_vllm(argv: list[str], args: dict) -> dict:
    """Parse ``argv`` with an argparse built the way vLLM builds its own: a positional
    model, ``--kebab-case`` options, BooleanOptionalAction for booleans."""
    p = argparse.ArgumentParser(exit_on_error=False)
    p.add_argument("model")
    for name, value in args.items():
        if name == "model":
            continue
        opt = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            p.add_argument(opt, action=argparse.BooleanOptionalAction)
        else:
            p.add_argument(opt, type=type(value))
    assert argv[:2] == ["vllm", "serve"]
    return vars(p.parse_args(argv[2:]))


def test_export__default_config():
    args = export.vllm_engine_args({})
    assert args == {
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "dtype": "bfloat16",
        "tensor_parallel_size": 1,
        "block_size": 16,
        "gpu_memory_utilization": 0.9,
        "kv_cache_dtype": "auto",
        "enable_prefix_caching": False,
        "max_num_seqs": 256,
        "max_num_batched_tokens": 2048,
        "enable_chunked_prefill": True,
        "async_scheduling": False,
    }
    assert list(args) == [
        "model", "dtype", "tensor_parallel_size", "block_size", "gpu_memory_utilization",
        "kv_cache_dtype", "enable_prefix_caching", "max_num_seqs", "max_num_batched_tokens",
        "enable_chunked_prefill", "async_scheduling",
    ]
    cmd = export.vllm_serve_command({})
    assert cmd == " ".join(DEFAULT_ARGV)
    assert shlex.split(cmd) == DEFAULT_ARGV == export.vllm_argv({})
    assert export.vllm_env({}) == {}
    assert export.vllm_engine_args(config.DEFAULTS) == args


def test_export__max_model_len_where_the_context_does_not_fit():
    """vLLM refuses to start when one sequence of max_model_len (default: the model's
    context) does not fit the KV cache: the export then writes the simulator's value."""
    seventy = {"model": "Llama-3.1-70B", "gpu": "B200", "tp": 1,
               "workload": {"prompt_tokens": 3000, "output_tokens": 100}}
    _, info = config.params_from_columns(config.columns_from_configs(
        [config.validate(seventy)]), 3100)
    context = presets.model("Llama-3.1-70B")[1]["max_position_embeddings"]
    assert 3100 <= int(info["num_gpu_blocks"][0]) * 16 < context  # 90k of 131k tokens
    assert export.vllm_engine_args(seventy)["max_model_len"] == 3100
    assert "--max-model-len 3100" in export.vllm_serve_command(seventy)
    # TP 4 holds the whole context: vLLM's default stands
    assert "max_model_len" not in export.vllm_engine_args({**seventy, "tp": 4})
    # a longest request beyond the context: the context (the lane is infeasible anyway)
    long = {**seventy, "workload": {"prompt_tokens": 200_000, "output_tokens": 10}}
    assert export.vllm_engine_args(long)["max_model_len"] == context


@pytest.mark.parametrize(
    ("cfg", "expected", "absent"),
    [
        ({"tp": 4}, {"tensor_parallel_size": 4}, ()),
        ({"block_size": 32}, {"block_size": 32}, ()),
        ({"gpu_memory_utilization": 0.85}, {"gpu_memory_utilization": 0.85}, ()),
        ({"max_num_seqs": 64}, {"max_num_seqs": 64}, ()),
        ({"max_num_batched_tokens": 8192}, {"max_num_batched_tokens": 8192}, ()),
        ({"kv_cache_dtype": "fp8"}, {"kv_cache_dtype": "fp8"}, ()),
        ({"dtype": "fp8"}, {"dtype": "bfloat16", "quantization": "fp8"}, ()),
        ({"dtype": "bf16"}, {"dtype": "bfloat16"}, ("quantization",)),
        ({"num_gpu_blocks": 12345}, {"num_gpu_blocks_override": 12345}, ()),
        ({"num_gpu_blocks": None}, {}, ("num_gpu_blocks_override",)),
        ({"max_model_len": 8192}, {"max_model_len": 8192}, ()),
        ({}, {}, ("max_model_len", "long_prefill_token_threshold", "kv_offloading_size")),
        ({"long_prefill_token_threshold": 512}, {"long_prefill_token_threshold": 512}, ()),
        ({"long_prefill_token_threshold": 0}, {}, ("long_prefill_token_threshold",)),
        # without chunked prefill vLLM needs max_num_batched_tokens >= max_model_len, so the
        # simulator's max_model_len (the workload's 512 + 256) replaces the model's context
        ({"enable_chunked_prefill": False},
         {"enable_chunked_prefill": False, "max_model_len": 768}, ()),
        ({"enable_chunked_prefill": "true"}, {"enable_chunked_prefill": True}, ()),
        # one H100's KV cache holds less than these models' context (the MoE's weights do not
        # even fit): the simulator's max_model_len again
        ({"model": "qwen3-32b"}, {"model": "Qwen/Qwen3-32B", "max_model_len": 768}, ()),
        ({"model": "Mixtral-8x7B"}, {"model": "mistralai/Mixtral-8x7B-Instruct-v0.1",
                                    "max_model_len": 768}, ()),
        # v0 (no asynchronous scheduling in vLLM's V0 engine): no async_scheduling flag
        ({"scheduler": "v0"}, {"enable_chunked_prefill": False, "max_model_len": 768},
         ("async_scheduling",)),
        ({"async_scheduling": True}, {"async_scheduling": True}, ()),
        # keys with no engine argument change nothing
        ({"watermark": 0.05}, {"watermark": 0.05}, ()),
        ({"scheduler": "v0", "watermark": 0.05}, {"enable_chunked_prefill": False,
                                                 "max_model_len": 768},
         ("watermark", "async_scheduling")),
        ({"gpu": "A100-80GB", "seed": 7, "activation_reserve_gb": 2.0,
          "max_slots": 8, "max_iterations": 100, "cost_preset": "uncalibrated",
          "slo": {"ttft_s": 2.0}, "workload": {"rate": 3.0}}, {}, ()),
    ],
)
def test_export__knob_maps_to_engine_arg(cfg, expected, absent):
    args = export.vllm_engine_args(cfg)
    base = export.vllm_engine_args({})
    for k, v in expected.items():
        assert args[k] == v and type(args[k]) is type(v), k
    for k in absent:
        assert k not in args, k
    changed = {k for k in args.keys() | base.keys() if args.get(k) != base.get(k)}
    assert changed <= set(expected) | set(absent), changed
    argv = export.vllm_argv(cfg)
    assert parse_like_vllm(argv, args) == args
    env = [f"{k}={v}" for k, v in export.vllm_env(cfg).items()]
    assert shlex.split(export.vllm_serve_command(cfg)) == [*env, *argv]


def test_export__every_preset_has_a_hugging_face_id():
    assert set(export.HF_MODEL_IDS) == set(presets.model_names())
    for name in presets.model_names():
        hf = export.hf_model_id(name.upper())
        assert hf == export.HF_MODEL_IDS[name]
        assert hf.count("/") == 1 and " " not in hf
        assert export.vllm_engine_args({"model": name})["model"] == hf


@pytest.mark.parametrize(("value", "flag"), [(True, "--enable-chunked-prefill"),
                                             (False, "--no-enable-chunked-prefill")])
def test_export__chunked_prefill_boolean_flag(value, flag):
    argv = export.vllm_argv({"enable_chunked_prefill": value})
    assert flag in argv
    i = argv.index(flag)
    assert i + 1 == len(argv) or argv[i + 1].startswith("--")  # takes no value


@pytest.mark.parametrize(("value", "flag"), [(True, "--enable-prefix-caching"),
                                             (False, "--no-enable-prefix-caching"),
                                             ("true", "--enable-prefix-caching")])
def test_export__prefix_caching_boolean_flag(value, flag):
    args = export.vllm_engine_args({"enable_prefix_caching": value})
    assert args["enable_prefix_caching"] is (value in (True, "true"))
    argv = export.vllm_argv({"enable_prefix_caching": value})
    assert flag in argv
    assert sum(a.endswith("enable-prefix-caching") for a in argv) == 1
    assert parse_like_vllm(argv, args) == args


def test_export__prefix_caching_bad_value_names_field():
    with pytest.raises(config.ConfigError, match="^enable_prefix_caching: "):
        export.vllm_engine_args({"enable_prefix_caching": 3})


def test_export__scheduler_v0_sets_env_and_no_chunking():
    cfg = {"scheduler": "v0", "max_num_batched_tokens": 8192}
    assert export.vllm_env(cfg) == {"VLLM_USE_V1": "0"}
    assert export.vllm_env({"scheduler": "v1"}) == {}
    cmd = export.vllm_serve_command(cfg)
    assert cmd.startswith("VLLM_USE_V1=0 vllm serve ")
    words = shlex.split(cmd)
    assert words[0] == "VLLM_USE_V1=0"
    assert words[1:] == export.vllm_argv(cfg)
    assert "--no-enable-chunked-prefill" in words and "--enable-chunked-prefill" not in words


def test_export__command_round_trips_through_shlex():
    cfg = {"model": "Qwen2.5-72B", "tp": 8, "dtype": "fp8", "kv_cache_dtype": "fp8",
           "max_model_len": 32768, "num_gpu_blocks": 40000, "long_prefill_token_threshold": 1024,
           "gpu_memory_utilization": 0.95, "max_num_seqs": 512, "max_num_batched_tokens": 16384}
    model_id = "/models/it's a \"model\" $HOME; rm -rf x"
    expected = [
        "vllm", "serve", model_id,
        "--dtype", "bfloat16",
        "--quantization", "fp8",
        "--tensor-parallel-size", "8",
        "--max-model-len", "32768",
        "--block-size", "16",
        "--gpu-memory-utilization", "0.95",
        "--num-gpu-blocks-override", "40000",
        "--kv-cache-dtype", "fp8",
        "--no-enable-prefix-caching",
        "--max-num-seqs", "512",
        "--max-num-batched-tokens", "16384",
        "--enable-chunked-prefill",
        "--long-prefill-token-threshold", "1024",
        "--no-async-scheduling",
    ]
    cmd = export.vllm_serve_command(cfg, model_id=model_id)
    assert shlex.split(cmd) == expected == export.vllm_argv(cfg, model_id)
    args = export.vllm_engine_args(cfg)
    assert parse_like_vllm(expected, args) == {**args, "model": model_id}
    # deterministic: key order of the input does not matter, repeated calls agree
    assert export.vllm_serve_command(dict(reversed(cfg.items())), model_id) == cmd
    assert export.vllm_serve_command(cfg, model_id) == cmd
    # the default model id is the preset's
    assert shlex.split(export.vllm_serve_command(cfg))[2] == "Qwen/Qwen2.5-72B-Instruct"


def test_export__does_not_mutate_input():
    cfg = {"tp": 2, "workload": {"rate": 1.0}}
    export.vllm_serve_command(cfg)
    assert cfg == {"tp": 2, "workload": {"rate": 1.0}}


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        ({"tp": 0}, "tp"),
        ({"block_size": "x"}, "block_size"),
        ({"scheduler": "v2"}, "scheduler"),
        ({"dtype": "fp16"}, "dtype"),
        ({"kv_cache_dtype": "int8"}, "kv_cache_dtype"),
        ({"model": "GPT-5"}, "model"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
        ({"max_num_seqs": -1}, "max_num_seqs"),
        ({"num_gpu_blocks": 0}, "num_gpu_blocks"),
        ({"bogus": 1}, "bogus"),
        ({"scheduler": "v0", "enable_chunked_prefill": True}, "enable_chunked_prefill"),
    ],
)
def test_export__bad_config_raises_naming_field(cfg, field):
    for fn in (export.vllm_engine_args, export.vllm_serve_command, export.vllm_env):
        with pytest.raises(config.ConfigError, match=f"^{field}: "):
            fn(cfg)


GIB = 2**30


@pytest.mark.parametrize(
    "cfg",
    [
        {"enable_prefix_caching": True, "tiers": "dram", "tier.dram.capacity_gb": 100},
        {"enable_prefix_caching": True, "tiers": ["dram", "ssd"],
         "tier": {"dram": {"capacity_gb": 100}}},
        {"enable_prefix_caching": True, "tiers": "cxl,grace,ssd",
         "tier": {"grace": {"capacity_gb": 100}}},
    ],
)
def test_export__cpu_tier_becomes_kv_offloading_gib(cfg):
    args = export.vllm_engine_args(cfg)
    assert args["kv_offloading_size"] == round(100e9 / GIB, 3) == 93.132
    assert args["kv_offloading_backend"] == "native"
    argv = export.vllm_argv(cfg)
    i = argv.index("--kv-offloading-size")
    assert argv[i + 1] == "93.132" and argv[i + 2:i + 4] == ["--kv-offloading-backend", "native"]
    assert parse_like_vllm(argv, args) == args
    # a tier's capacity is one GPU's share; vLLM's size is the total over the TP ranks
    assert export.vllm_engine_args({**cfg, "tp": 4})["kv_offloading_size"] == round(
        4 * 100e9 / GIB, 3)
    # the V0 engine has no KV offloading: nothing in the command, a caveat instead
    v0 = export.vllm_engine_args({**cfg, "scheduler": "v0"})
    assert "kv_offloading_size" not in v0 and "kv_offloading_backend" not in v0
    assert any("V0 engine has no KV offloading" in n
               for n in export.vllm_caveats({**cfg, "scheduler": "v0"}))


def test_export__swap_in_v0_is_vllm_swap_space():
    cfg = {"scheduler": "v0", "enable_prefix_caching": True, "tiers": "dram",
           "tier.dram.capacity_gb": 50, "preemption_mode": "swap", "tp": 2}
    args = export.vllm_engine_args(cfg)
    assert args["preemption_mode"] == "swap"
    assert args["swap_space"] == round(50e9 / GIB, 3)  # vLLM v0's figure is per GPU
    assert parse_like_vllm(export.vllm_argv(cfg), args) == args
    assert export.vllm_caveats(cfg)[0].startswith("preemption_mode swap: vLLM v0 swaps to")
    v1 = {**cfg, "scheduler": "v1"}
    assert "preemption_mode" not in export.vllm_engine_args(v1)
    assert export.vllm_caveats(v1)[0].startswith("preemption_mode swap: not in the command")
    # the simulator swaps to the first tier with room: here the SSD, which vLLM v0 cannot
    ssd = {**cfg, "tiers": ["dram", "ssd"], "tier.dram.capacity_gb": 0}
    assert "swap_space" not in export.vllm_engine_args(ssd)
    assert export.vllm_caveats(ssd)[0] == ("preemption_mode swap: not in the command "
                                           "(jaxsim swaps to tier ssd; vLLM v0 swaps to CPU "
                                           "memory only)")


def test_export__a_budget_vllm_refuses_is_refused():
    with pytest.raises(config.ConfigError, match=r"^max_num_batched_tokens: 128 is below "
                       r"max_num_seqs \(256\); vLLM refuses it"):
        export.vllm_serve_command({"max_num_batched_tokens": 128})
    # without chunked prefill one sequence of max_model_len must fit the budget
    for cfg, mml in (({"enable_chunked_prefill": False, "max_num_batched_tokens": 512}, 768),
                     ({"scheduler": "v0", "max_num_batched_tokens": 512,
                       "max_model_len": 4096}, 4096)):
        with pytest.raises(config.ConfigError, match=r"^max_num_batched_tokens: 512 is below "
                           rf"max_model_len \({mml}\) without chunked prefill"):
            export.vllm_serve_command(cfg)


@pytest.mark.parametrize(
    "cfg",
    [
        {"enable_prefix_caching": True, "tiers": "ssd"},
        {"enable_prefix_caching": True, "tiers": "dram", "tier.dram.capacity_gb": 0},
        {"enable_prefix_caching": True},
        {"tiers": []},
    ],
)
def test_export__no_cpu_tier_no_offloading(cfg):
    args = export.vllm_engine_args(cfg)
    assert "kv_offloading_size" not in args and "kv_offloading_backend" not in args


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        ({"enable_prefix_caching": True, "tiers": "dram",
          "tier": {"dram": {"capacity_gb": -1}}}, "tier.dram.capacity_gb"),
        ({"enable_prefix_caching": True, "tiers": "dram",
          "tier.dram.capacity_gb": "lots"}, "tier.dram.capacity_gb"),
        ({"enable_prefix_caching": True, "tiers": "dram",
          "tier.dram.capacity_gb": float("inf")}, "tier.dram.capacity_gb"),
        ({"enable_prefix_caching": True, "tiers": "cpu"}, "tiers"),
        ({"enable_prefix_caching": True, "tiers": "dram",
          "tier.dram.bandwidth": 3}, "tier.dram.bandwidth"),
        ({"tiers": "dram"}, "tiers"),
        ({"enable_prefix_caching": True, "tier.ssd.capacity_gb": 3}, "tier.ssd"),
    ],
)
def test_export__bad_tier_capacity_names_field(cfg, field):
    with pytest.raises(config.ConfigError, match=f"^{field}: "):
        export.vllm_engine_args(cfg)



def test_export__caveats_name_what_the_command_does_not_carry():
    assert export.vllm_caveats({}) == []
    assert export.vllm_caveats({"enable_prefix_caching": True, "tiers": "dram"}) == [
        "--kv-offloading-size needs a vLLM release after 0.11 (native CPU KV offloading came "
        "later)"]
    notes = export.vllm_caveats({
        "block_size": 24, "max_model_len": 1_000_000, "enable_prefix_caching": True,
        "tiers": "dram,ssd", "preemption_mode": "swap",
        "cache": {"frequency_weight": 1.0, "admission_weight": 0.5, "prefetch": True}})
    starts = [n.split(":")[0].split(" exceeds")[0] for n in notes]
    assert starts == ["block_size 24", "max_model_len 1000000", "preemption_mode swap",
                      "tiers ssd", "--kv-offloading-size needs a vLLM release after 0.11 "
                      "(native CPU KV offloading came later)", "cache eviction weights",
                      "cache.admission_weight", "cache.prefetch"]
    assert "131072" in notes[1] and "VLLM_ALLOW_LONG_MAX_MODEL_LEN" in notes[1]


@pytest.mark.parametrize(("cfg", "why"), [
    ({"tp": 3}, "does not divide Llama-3.1-8B's 32 attention heads"),
    ({"tp": 8, "model": "Qwen2.5-7B"}, "does not divide Qwen2.5-7B's 28 attention heads"),
    ({"tp": 7, "model": "Qwen2.5-7B"}, "neither divides nor is a multiple of"),
])
def test_export__a_tp_degree_vllm_refuses_is_refused(cfg, why):
    with pytest.raises(config.ConfigError, match=f"^tp: {cfg['tp']} {why}"):
        export.vllm_serve_command(cfg)


def test_export__reserve_full_isl_off_is_a_flag_with_its_caveat():
    """vLLM's default (since March 2026) needs no flag; off is --no-... and a caveat
    (earlier releases do not know the flag)."""
    from search import export

    assert "reserve-full-isl" not in export.vllm_serve_command({})
    assert export.vllm_caveats({}) == []
    off = {"scheduler_reserve_full_isl": False}
    assert "--no-scheduler-reserve-full-isl" in export.vllm_argv(off)
    (note,) = export.vllm_caveats(off)
    assert note.startswith("scheduler_reserve_full_isl false: --no-scheduler-reserve-full-isl "
                           "needs a vLLM release from March 2026 on")
    assert export.vllm_caveats({"watermark": 0.05})[0].startswith(
        "watermark 0.05: --watermark needs a vLLM release from June 2026 on")
    assert "--watermark" not in export.vllm_argv({})
    assert export.vllm_caveats({"scheduler": "v0", "watermark": 0.01}) == []  # v0's own 1%
    assert export.vllm_caveats({"scheduler": "v0", "watermark": 0.05}) == [
        "watermark 0.05: not in the command (vLLM v0 keeps 1% of the blocks free)"]
    # without chunked prefill the rule changes nothing: no flag; with a long-prefill
    # threshold vLLM v1 splits prompts all the same, so it does
    unchunked = {**off, "enable_chunked_prefill": False, "max_num_batched_tokens": 131072}
    assert "reserve-full-isl" not in export.vllm_serve_command(unchunked)
    assert "--no-scheduler-reserve-full-isl" in export.vllm_argv(
        {**unchunked, "long_prefill_token_threshold": 512})
