"""Model and GPU presets shipped with the package (``jaxsim/data/presets.json``).

Names are matched case-insensitively (``llama-3.1-8b`` finds ``Llama-3.1-8B``). Every
figure carries the URL it came from; ``jaxsim presets`` prints them.
"""

from __future__ import annotations

import functools
import json
from importlib import resources


@functools.cache
def _data() -> dict:
    with resources.files("jaxsim").joinpath("data/presets.json").open() as f:
        return json.load(f)


def model_names() -> list[str]:
    """All model preset names."""
    return list(_data()["models"])


def gpu_names() -> list[str]:
    """All GPU preset names."""
    return list(_data()["gpus"])


def _lookup(kind: str, name: str) -> tuple[str, dict]:
    table = _data()[kind]
    if not isinstance(name, str):
        raise KeyError(f"{name!r} is not a {kind[:-1]} name; allowed: {', '.join(table)}")
    for key, value in table.items():
        if key.lower() == name.lower():
            return key, value
    raise KeyError(f"unknown {kind[:-1]} {name!r}; allowed: {', '.join(table)}")


def model(name: str) -> tuple[str, dict]:
    """(canonical name, figures) of a model preset; KeyError lists the allowed names."""
    return _lookup("models", name)


def gpu(name: str) -> tuple[str, dict]:
    """(canonical name, figures) of a GPU preset; KeyError lists the allowed names."""
    return _lookup("gpus", name)


#: Optional model fields and their value for a plain model (``jaxsim.params.ModelParams``;
#: docs/semantics.md §3): shared experts, leading dense layers, multi-head latent attention.
EXTRA_DEFAULTS = {"num_shared_experts": 0, "num_dense_layers": 0, "dense_ffn_size": 0,
                  "mla": 0, "q_lora_rank": 0, "kv_lora_rank": 0, "qk_rope_head_dim": 0,
                  "v_head_dim": 0}


def extras(m: dict) -> dict:
    """The optional fields of a model preset, 0 where it does not give them."""
    return {k: m.get(k, v) for k, v in EXTRA_DEFAULTS.items()}


def _attention_params(m: dict) -> tuple[int, int]:
    """(parameters, of which replicated on every GPU under tensor parallelism) of one
    layer's attention: grouped-query, or MLA with vLLM's replicated down-projections."""
    h, nh, nkv, hd = m["hidden_size"], m["num_heads"], m["num_kv_heads"], m["head_dim"]
    x = extras(m)
    if not x["mla"]:
        return h * (nh + 2 * nkv) * hd + nh * hd * h, 0
    r_q, r_kv, d_r, d_v = x["q_lora_rank"], x["kv_lora_rank"], x["qk_rope_head_dim"], \
        x["v_head_dim"]
    q_rep = h * r_q + r_q if r_q else 0  # down-projection and its norm
    q_split = (r_q if r_q else h) * nh * hd
    kv_rep = h * (r_kv + d_r) + r_kv
    kv_split = r_kv * nh * (hd - d_r + d_v)
    rep = q_rep + kv_rep
    return rep + q_split + kv_split + nh * d_v * h, rep


def _mlp_params(m: dict, dense: bool) -> int:
    h, e, f = m["hidden_size"], m["num_experts"], m["ffn_size"]
    if dense:
        return 3 * h * extras(m)["dense_ffn_size"]
    return (e + extras(m)["num_shared_experts"]) * 3 * h * f + (h * e if e > 1 else 0)


def param_count(m: dict) -> int:
    """Parameters of a model preset (attention, MLP x experts, router, norms, embeddings)."""
    h, L = m["hidden_size"], m["num_layers"]
    Ld = extras(m)["num_dense_layers"]
    attn = _attention_params(m)[0] + 2 * h
    layers = (L - Ld) * (attn + _mlp_params(m, False)) + Ld * (attn + _mlp_params(m, True))
    return layers + 2 * m["vocab_size"] * h + h


def replicated_params(m: dict) -> int:
    """Parameters every GPU holds whole under tensor parallelism (MLA's query and KV
    down-projections, as vLLM replicates them; 0 for other models)."""
    return m["num_layers"] * _attention_params(m)[1]


def active_params(m: dict) -> int:
    """Parameters one token uses: ``param_count`` with only its routed and shared
    experts' MLP weights (the router included); equal to it for a dense model."""
    h, L, k = m["hidden_size"], m["num_layers"], m["experts_per_token"]
    x = extras(m)
    Ld = x["num_dense_layers"]
    attn = _attention_params(m)[0] + 2 * h
    e = m["num_experts"]
    moe = (k + x["num_shared_experts"]) * 3 * h * m["ffn_size"] + (h * e if e > 1 else 0)
    return ((L - Ld) * (attn + moe) + Ld * (attn + _mlp_params(m, True))
            + 2 * m["vocab_size"] * h + h)


def kv_bytes_per_token(m: dict, bytes_per_kv: float = 2, tp: float = 1) -> float:
    """KV-cache bytes of one token over all layers on one GPU of ``tp`` (docs/semantics.md
    §3's ``L kvb``): keys and values of its share of the KV heads (at least one), or
    MLA's latent and rotary key (whole on every GPU)."""
    x = extras(m)
    if x["mla"]:
        return m["num_layers"] * (x["kv_lora_rank"] + x["qk_rope_head_dim"]) * bytes_per_kv
    return (2 * m["num_layers"] * max(m["num_kv_heads"] / tp, 1.0) * m["head_dim"]
            * bytes_per_kv)


def table() -> str:
    """A printable list of every preset with its key figures."""
    d = _data()
    lines = ["Models (name: layers, hidden, heads/kv heads, head dim, ffn, vocab, params; KV "
             "cache bytes per token in BF16 over all GPUs, or on each GPU for MLA):"]
    for name, m in d["models"].items():
        x = extras(m)
        moe = (f", {m['num_experts']} experts top-{m['experts_per_token']}"
               + (f" + {x['num_shared_experts']} shared" if x["num_shared_experts"] else "")
               + (f", {x['num_dense_layers']} dense layers ffn={x['dense_ffn_size']}"
                  if x["num_dense_layers"] else "")
               + f", {active_params(m) / 1e9:.1f}B active") if m["num_experts"] > 1 else ""
        if x["mla"]:
            moe += (f", MLA kv_lora={x['kv_lora_rank']} rope={x['qk_rope_head_dim']} "
                    f"q_lora={x['q_lora_rank']} v={x['v_head_dim']}")
        lines.append(
            f"  {name:<15} L={m['num_layers']} h={m['hidden_size']} "
            f"heads={m['num_heads']}/{m['num_kv_heads']} hd={m['head_dim']} "
            f"ffn={m['ffn_size']} V={m['vocab_size']} "
            f"({param_count(m) / 1e9:.1f}B{moe}; KV {kv_bytes_per_token(m):,.0f} B/token"
            + (" on every GPU)" if x["mla"] else ")")
        )
        lines.append(f"      source: {m['source']}")
    lines.append("GPUs (name: BF16 / FP8 dense TFLOP/s, HBM GB (as the device reports it: GiB),"
                 " HBM GB/s, link GB/s per dir):")
    for name, g in d["gpus"].items():
        fp8 = g["fp8_dense_tflops"] if g["fp8_dense_tflops"] is not None else "-"
        lines.append(
            f"  {name:<10} {g['bf16_dense_tflops']} / {fp8} TFLOP/s, "
            f"{g['hbm_capacity_gb']} GB ({g['device_memory_bytes'] / 2**30:.2f} GiB), "
            f"{g['hbm_bw_gbs']} GB/s, link {g['link_bw_gbs']} GB/s"
        )
        for k, src in g["sources"].items():
            lines.append(f"      {k}: {src}")
    return "\n".join(lines)
