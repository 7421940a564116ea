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


def param_count(m: dict) -> int:
    """Parameters of a model preset (attention, MLP x experts, router, norms, embeddings)."""
    h, L = m["hidden_size"], m["num_layers"]
    nh, nkv, hd = m["num_heads"], m["num_kv_heads"], m["head_dim"]
    e, f = m["num_experts"], m["ffn_size"]
    attn = h * (nh + 2 * nkv) * hd + nh * hd * h
    mlp = e * 3 * h * f + (h * e if e > 1 else 0)
    per_layer = attn + mlp + 2 * h
    return L * per_layer + 2 * m["vocab_size"] * h + h


def table() -> str:
    """A printable list of every preset with its key figures."""
    d = _data()
    lines = ["Models (name: layers, hidden, heads/kv heads, head dim, ffn, vocab, params):"]
    for name, m in d["models"].items():
        moe = f", {m['num_experts']} experts top-{m['experts_per_token']}" \
            if m["num_experts"] > 1 else ""
        lines.append(
            f"  {name:<15} L={m['num_layers']} h={m['hidden_size']} "
            f"heads={m['num_heads']}/{m['num_kv_heads']} hd={m['head_dim']} "
            f"ffn={m['ffn_size']} V={m['vocab_size']} "
            f"({param_count(m) / 1e9:.1f}B{moe})"
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
