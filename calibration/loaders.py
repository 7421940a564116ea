"""Loaders from public measurement files into the tidy schema of :mod:`calibration.schema`.

* Vidur profiling (``vidur_profiling/``): per-operator ``mlp.csv`` (token-level ops), the
  legacy A100 ``attention.csv``, and ``all_reduce.csv`` / ``send_recv.csv``. Times are
  milliseconds of GPU kernel time per layer per GPU shard; the medians become
  ``time_s``.
* Splitwise ``perf_model.csv``: whole prefill iterations (``prompt_time``) and mean decode
  iterations (``token_time``) of Llama-2-70B / BLOOM-176B; the 5 repeats of each
  configuration become one row (median and statistics).
* Sarathi-Serve OSDI'24 per-iteration times (prefill-only batches of Yi-34B TP2).
* jaxsim's own CSV (written by ``jaxsim profile`` or :func:`calibration.schema.write_csv`).

:func:`load` takes files or folders (a folder is walked for the file names above).
Every problem raises :class:`calibration.schema.DataError` naming the file, the row
(1-based line number, the header is line 1) and the column.
"""

from __future__ import annotations

import csv
import math
import os
from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from calibration.schema import (
    COLUMNS,
    DataError,
    Measurements,
    from_rows,
    read_csv,
    records,
)

#: Vidur GPU folder -> jaxsim GPU preset.
VIDUR_GPU = {"h100": "H100-SXM", "a100": "A100-80GB", "a40": "A40"}
def _vidur_gpu(path: str, parts: list[str]) -> str:
    """The GPU of a Vidur file, from the nearest folder named h100, a100 or a40 (any
    case) above it."""
    gpu = next((p.lower() for p in reversed(parts[:-1]) if p.lower() in VIDUR_GPU), None)
    if gpu is None:
        raise DataError(f"{path}: cannot tell the GPU from the path: expected a folder named "
                        f"one of {', '.join(VIDUR_GPU)} above it, as in Vidur's "
                        "compute/<gpu>/<org>/<model>/ (loaders.load(..., hardware=NAME) "
                        "labels the rows in Python)")
    return VIDUR_GPU[gpu]


#: Vidur network node -> hardware label (DGX nodes are the SXM presets).
VIDUR_NODE = {"h100_dgx": "H100-SXM", "a100_dgx": "A100-80GB",
              "h100_pairwise_nvlink": "H100-NVL-pairwise",
              "a100_pairwise_nvlink": "A100-PCIe-pairwise",
              "a40_pairwise_nvlink": "A40-pairwise"}
#: Vidur mlp.csv operator -> cost-model operator.
VIDUR_OPS = {"attn_pre_proj": "qkv_proj", "attn_post_proj": "o_proj",
             "mlp_up_proj": "mlp_up", "mlp_down_proj": "mlp_down",
             "input_layernorm": "norm", "post_attention_layernorm": "norm",
             "add": "residual_add", "mlp_act": "activation", "attn_rope": "rotary",
             "emb": "embedding"}
VIDUR_REPEATS = 20
SPLITWISE_GPU = {"a100-80gb": "A100-80GB", "h100-80gb": "H100-SXM",
                 "h100-80gb-pcap": "H100-SXM-powercapped"}
#: Full-model dimensions of the models in Splitwise and Sarathi-Serve data (from each
#: model's Hugging Face config.json).
MODEL_DIMS = {
    "llama2-70b": dict(model="Llama-2-70B", num_layers=80, hidden_size=8192, num_heads=64,
                       num_kv_heads=8, head_dim=128, ffn_size=28672, vocab_size=32000,
                       gated=1),
    "bloom-176b": dict(model="BLOOM-176B", num_layers=70, hidden_size=14336, num_heads=112,
                       num_kv_heads=112, head_dim=128, ffn_size=57344, vocab_size=250880,
                       gated=0),
    "yi-34b": dict(model="Yi-34B-200K", num_layers=60, hidden_size=7168, num_heads=56,
                   num_kv_heads=8, head_dim=128, ffn_size=20480, vocab_size=64000, gated=1),
}


class _Reader:
    """CSV rows with error messages that name the file, line and column."""

    def __init__(self, path: str, required: Iterable[str]):
        self.path = path
        self._f = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 - closed in rows()
        self._r = csv.DictReader(self._f)
        header = self._r.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            self._f.close()
            raise DataError(f"{path}: missing column(s) {missing}")

    def rows(self):
        """(row number, fields) per data row; a short row's missing fields are empty, a
        long row or a row that is not CSV is an error naming the row."""
        width = len(self._r.fieldnames or [])
        try:
            for line, r in records(self._r, self.path):
                if None in r:  # DictReader keeps the fields beyond the header under None
                    raise DataError(f"{self.path}:{line}: {width + len(r[None])} fields; "
                                    f"the header has {width} columns")
                yield line, {k: ("" if v is None else v) for k, v in r.items()}
        finally:
            self._f.close()

    def num(self, line: int, r: dict, col: str, *, positive: bool = False,
            integer: bool = False, unit: str = "") -> float:
        v = (r.get(col) or "").strip()
        try:
            x = float(v)
        except ValueError:
            raise DataError(f"{self.path}:{line}: column {col!r}: {v!r} is not a number"
                            ) from None
        if not math.isfinite(x):
            raise DataError(f"{self.path}:{line}: column {col!r}: {v!r} is not finite")
        if positive and x <= 0:
            raise DataError(f"{self.path}:{line}: column {col!r}: {v!r} must be > 0{unit}")
        if integer and x != int(x):
            raise DataError(f"{self.path}:{line}: column {col!r}: {v!r} is not an integer")
        return x

    def boolean(self, line: int, r: dict, col: str) -> bool:
        v = (r.get(col) or "").strip()
        if v not in ("True", "False", "true", "false", "1", "0"):
            raise DataError(f"{self.path}:{line}: column {col!r}: {v!r} is not a boolean")
        return v in ("True", "true", "1")


def _stats(rd: _Reader, line: int, r: dict, prefix: str, scale: float) -> dict:
    med = rd.num(line, r, f"{prefix}.median", positive=True, unit=" ms")
    out = {"time_s": med * scale}
    for stat, col in (("min", "time_min_s"), ("mean", "time_mean_s"), ("std", "time_std_s")):
        name = f"{prefix}.{stat}"
        out[col] = rd.num(line, r, name) * scale if (r.get(name) or "").strip() else math.nan
        if out[col] < 0:
            raise DataError(f"{rd.path}:{line}: column {name!r}: must be >= 0")
    return out


def _parts(path: str) -> list[str]:
    return os.path.normpath(os.path.abspath(path)).split(os.sep)


def load_vidur_mlp(path: str, hardware: str | None = None) -> Measurements:
    """A Vidur ``compute/<gpu>/<org>/<model>/mlp.csv`` (one row per op per token count)."""
    parts = _parts(path)
    if hardware is None:
        hardware = _vidur_gpu(path, parts)
    model = "/".join(parts[-3:-1])
    shape_cols = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size",
                  "use_gated_mlp", "num_tokens", "num_tensor_parallel_workers")
    rd = _Reader(path, shape_cols)
    header = set(rd._r.fieldnames or [])
    ops = [o for o in VIDUR_OPS if f"time_stats.{o}.median" in header]
    # an op may be absent (some models' files have no post-attention norm), but not half
    part = sorted(c for c in header if c.startswith("time_stats.")
                  and c.split(".")[1] in VIDUR_OPS and c.split(".")[1] not in ops)
    if part:
        rd._f.close()
        raise DataError(f"{path}: column {part[0]!r} but no "
                        f"'time_stats.{part[0].split('.')[1]}.median'")
    if not ops:
        rd._f.close()
        raise DataError(f"{path}: no 'time_stats.<op>.median' column of a known op "
                        f"({', '.join(VIDUR_OPS)})")
    rows = []
    for line, r in rd.rows():
        nh = int(rd.num(line, r, "n_head", positive=True, integer=True))
        h = int(rd.num(line, r, "n_embd", positive=True, integer=True))
        if h % nh:
            raise DataError(f"{path}:{line}: column 'n_embd': {h} is not a multiple of "
                            f"n_head {nh}")
        base = dict(
            hardware=hardware, model=model, dtype="fp16", hidden_size=h, num_heads=nh,
            num_kv_heads=int(rd.num(line, r, "n_kv_head", positive=True, integer=True)),
            head_dim=h // nh,
            ffn_size=int(rd.num(line, r, "n_expanded_embd", positive=True, integer=True)),
            vocab_size=int(rd.num(line, r, "vocab_size", positive=True, integer=True)),
            gated=int(rd.boolean(line, r, "use_gated_mlp")),
            tp=int(rd.num(line, r, "num_tensor_parallel_workers", positive=True,
                          integer=True)),
            num_tokens=int(rd.num(line, r, "num_tokens", positive=True, integer=True)),
            repeats=VIDUR_REPEATS,
        )
        for o in ops:
            rows.append({**base, **_stats(rd, line, r, f"time_stats.{o}", 1e-3), "op": VIDUR_OPS[o],
                         "source": f"{path}:{line}:{o}"})
    return from_rows(rows, origin=path)


def load_vidur_attention(path: str, hardware: str | None = None) -> Measurements:
    """Vidur's ``attention.csv`` (prefill rows -> ``attn_prefill``, decode -> ``attn_decode``)."""
    if hardware is None:
        hardware = _vidur_gpu(path, _parts(path))
    cols = ("n_embd", "n_q_head", "n_kv_head", "num_tensor_parallel_workers", "batch_size",
            "prefill_chunk_size", "kv_cache_size", "is_prefill")
    rd = _Reader(path, cols + ("time_stats.attn_prefill.median",
                               "time_stats.attn_decode.median"))
    rows = []
    for line, r in rd.rows():
        nh = int(rd.num(line, r, "n_q_head", positive=True, integer=True))
        h = int(rd.num(line, r, "n_embd", positive=True, integer=True))
        pre = rd.boolean(line, r, "is_prefill")
        base = dict(hardware=hardware, dtype="fp16", hidden_size=h, num_heads=nh,
                    num_kv_heads=int(rd.num(line, r, "n_kv_head", positive=True, integer=True)),
                    head_dim=h // nh,
                    tp=int(rd.num(line, r, "num_tensor_parallel_workers", positive=True,
                                  integer=True)),
                    batch_size=int(rd.num(line, r, "batch_size", positive=True, integer=True)),
                    context_len=int(rd.num(line, r, "kv_cache_size", integer=True)),
                    repeats=5)
        if base["context_len"] < 0:
            raise DataError(f"{path}:{line}: column 'kv_cache_size': must be >= 0")
        if pre:
            q = int(rd.num(line, r, "prefill_chunk_size", positive=True, integer=True))
            rows.append({**base, **_stats(rd, line, r, "time_stats.attn_prefill", 1e-3),
                         "op": "attn_prefill", "chunk_len": q, "num_tokens": q,
                         "source": f"{path}:{line}"})
        else:
            rows.append({**base, **_stats(rd, line, r, "time_stats.attn_decode", 1e-3),
                         "op": "attn_decode", "num_tokens": base["batch_size"],
                         "source": f"{path}:{line}"})
    return from_rows(rows, origin=path)


def load_vidur_network(path: str, hardware: str | None = None) -> Measurements:
    """Vidur ``network/<node>/all_reduce.csv`` or ``send_recv.csv`` (single-node rows)."""
    kind = "send_recv" if os.path.basename(path).startswith("send_recv") else "all_reduce"
    if hardware is None:
        node = _parts(path)[-2]
        hardware = VIDUR_NODE.get(node, node)
    rd = _Reader(path, (f"time_stats.{kind}.median", "num_workers", "size",
                        "devices_per_node"))
    rows = []
    for line, r in rd.rows():
        n = int(rd.num(line, r, "num_workers", positive=True, integer=True))
        per_node = int(rd.num(line, r, "devices_per_node", positive=True, integer=True))
        size = rd.num(line, r, "size", positive=True, integer=True)
        stats = _stats(rd, line, r, f"time_stats.{kind}", 1e-3)
        if kind == "all_reduce" and per_node != n:
            continue  # multi-node all-reduce: not the tensor-parallel case
        rows.append({"hardware": hardware, "dtype": "fp16", "op": kind, "bytes": size,
                     "num_workers": n, "repeats": 3, **stats, "source": f"{path}:{line}"})
    return from_rows(rows, origin=path)


def _aggregate(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """Merge repeats (rows equal on ``keys``) into one row: median, min, mean, std."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(r.get(k, 0) for k in keys)].append(r)
    out = []
    for rs in groups.values():
        t = np.array([r["time_s"] for r in rs])
        out.append({**rs[0], "time_s": float(np.median(t)), "time_min_s": float(t.min()),
                    "time_mean_s": float(t.mean()),
                    "time_std_s": float(t.std(ddof=1)) if len(t) > 1 else math.nan,
                    "repeats": len(t),
                    "source": rs[0]["source"] + (f" (+{len(rs) - 1} repeats)" if len(rs) > 1
                                                 else "")})
    return out


def load_splitwise(path: str) -> Measurements:
    """Splitwise ``perf_model.csv``: one prefill and one mean-decode iteration per config.

    A ``prompt_time`` row is one prefill iteration of ``batch_size`` prompts of
    ``prompt_size`` tokens. A ``token_time`` row is the mean decode iteration of
    ``batch_size`` sequences generating ``token_size`` tokens after the prompt, so the
    mean context is ``prompt_size + token_size / 2``.
    """
    cols = ("model", "hardware", "prompt_size", "batch_size", "token_size", "prompt_time",
            "token_time", "tensor_parallel")
    rd = _Reader(path, cols)
    rows = []
    for line, r in rd.rows():
        m = r["model"].strip().lower()
        if m not in MODEL_DIMS:
            raise DataError(f"{path}:{line}: column 'model': unknown model {r['model']!r}; "
                            f"known: {', '.join(MODEL_DIMS)}")
        hw = r["hardware"].strip().lower()
        if hw not in SPLITWISE_GPU:
            raise DataError(f"{path}:{line}: column 'hardware': unknown {r['hardware']!r}; "
                            f"known: {', '.join(SPLITWISE_GPU)}")
        p = int(rd.num(line, r, "prompt_size", positive=True, integer=True))
        b = int(rd.num(line, r, "batch_size", positive=True, integer=True))
        g = int(rd.num(line, r, "token_size", positive=True, integer=True))
        tp = int(rd.num(line, r, "tensor_parallel", positive=True, integer=True))
        base = dict(hardware=SPLITWISE_GPU[hw], dtype="fp16", tp=tp, **MODEL_DIMS[m],
                    op="iteration", source=f"{path}:{line}")
        pt = rd.num(line, r, "prompt_time", positive=True, unit=" ms")
        tt = rd.num(line, r, "token_time", positive=True, unit=" ms")
        rows.append({**base, "batch_size": b, "chunk_len": p, "num_tokens": b * p,
                     "time_s": pt * 1e-3, "_kind": "prefill", "_g": g})
        rows.append({**base, "num_decodes": b, "decode_context_len": p + g // 2,
                     "num_tokens": b, "time_s": tt * 1e-3, "_kind": "decode", "_g": g})
    # a prefill does not depend on token_size: all its measurements are repeats
    keys = ("model", "hardware", "tp", "batch_size", "chunk_len", "num_decodes",
            "decode_context_len")
    rows = (_aggregate([r for r in rows if r["_kind"] == "prefill"], keys)
            + _aggregate([r for r in rows if r["_kind"] == "decode"], keys + ("_g",)))
    return from_rows(rows, origin=path)


def load_sarathi(folder: str) -> Measurements:
    """Sarathi-Serve OSDI'24: prefill-only iterations of Yi-34B TP2 on A100-80GB PCIe.

    Loads ``figure-2_prefill.csv`` (seconds) and the prefill-only row of
    ``table-2_results.csv`` (ms). Decode rows are not loaded: their context lengths
    were not recorded.
    """
    rows = []
    base = dict(hardware="A100-80GB-PCIe", dtype="fp16", tp=2, op="iteration",
                **MODEL_DIMS["yi-34b"])
    path = os.path.join(folder, "figure-2_prefill.csv")
    rd = _Reader(path, ("batch_num_prefill_tokens", "batch_num_decode_tokens",
                        "batch_size", "batch_execution_time"))
    for line, r in rd.rows():
        q = int(rd.num(line, r, "batch_num_prefill_tokens", positive=True, integer=True))
        t = rd.num(line, r, "batch_execution_time", positive=True, unit=" s")
        rows.append({**base, "batch_size": 1, "chunk_len": q, "num_tokens": q, "time_s": t,
                     "source": f"{path}:{line}"})
    path = os.path.join(folder, "table-2_results.csv")
    if os.path.exists(path):
        rd = _Reader(path, ("batch_num_prefill_tokens", "batch_num_decode_tokens",
                            "batch_execution_time"))
        for line, r in rd.rows():
            q = int(rd.num(line, r, "batch_num_prefill_tokens", integer=True))
            d = int(rd.num(line, r, "batch_num_decode_tokens", integer=True))
            if q > 0 and d == 0:
                t = rd.num(line, r, "batch_execution_time", positive=True, unit=" ms")
                rows.append({**base, "batch_size": 1, "chunk_len": q, "num_tokens": q,
                             "time_s": t * 1e-3, "source": f"{path}:{line}"})
    return from_rows(rows, origin=folder)


def _kind(path: str, direct: bool = False) -> str | None:
    """The loader of ``path`` (None: not a measurement file). A jaxsim CSV is told by its
    header: any file given directly (``prof.CSV``, ``timings.txt``), and in folders any
    ``.csv`` in any case."""
    base = os.path.basename(path)
    # the schema's own header first: a jaxsim CSV saved as mlp.csv is still one
    if (direct or base.lower().endswith(".csv")) and _is_jaxsim_csv(path):
        return "jaxsim"
    if base == "mlp.csv":
        return "vidur_mlp"
    if base == "attention.csv":
        return "vidur_attention"
    if base in ("all_reduce.csv", "send_recv.csv"):
        return "vidur_network"
    if base == "perf_model.csv":
        return "splitwise"
    if base == "figure-2_prefill.csv":
        return "sarathi"
    return None


def _is_jaxsim_csv(path: str) -> bool:
    with open(path, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])
    return "time_s" in header and "op" in header


def _explain_unknown(path: str) -> None:
    """Raise a precise :class:`DataError` for a file given directly that is empty or
    is a jaxsim CSV with columns missing; return for anything else."""
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: empty file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])
    if {"hardware", "op"} <= set(header):
        missing = [c for c in COLUMNS if c not in header and c != "source"]
        raise DataError(f"{path}: missing column(s) {missing}; the jaxsim measurement "
                        f"schema has: {', '.join(COLUMNS)}")


def load(paths: Iterable[str] | str, hardware: str | None = None) -> Measurements:
    """Load files and folders (walked recursively) into one table.

    Args:
        paths: files or folders laid out like ``vidur_profiling/`` or the measurement
            folders (one path alone is a list of one); unrecognised CSV files inside
            folders are skipped, an unrecognised file given directly is an error, and so
            is a measurement file without data rows.
        hardware: override the hardware label of Vidur files.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    if paths is None or not all(isinstance(p, str | os.PathLike) for p in paths):
        raise DataError(f"paths: {paths!r}: expected file or folder names")
    parts = []
    for p in map(os.fspath, paths):
        if not os.path.exists(p):
            raise DataError(f"{p}: no such file or folder")
        files = []
        if os.path.isdir(p):
            for root, dirs, names in os.walk(p):
                dirs.sort()
                files += [os.path.join(root, n) for n in sorted(names)]
        else:
            files = [p]
        found = 0
        for f in files:
            before = len(parts)
            try:
                found += _load_file(f, p, hardware, parts)
            except UnicodeDecodeError as e:
                raise DataError(f"{f}: not a UTF-8 text file ({e.reason} at byte "
                                f"{e.start})") from None
            except csv.Error as e:
                raise DataError(f"{f}: not a CSV file ({e})") from None
            if len(parts) > before and len(parts[-1]) == 0:
                raise DataError(f"{f}: a header but no data rows")
        if not found:
            raise DataError(f"{p}: no measurement files found")
    return Measurements.concat(parts)


def _load_file(f: str, p: str, hardware: str | None, parts: list) -> int:
    """Append the measurements of file ``f`` (found under the argument ``p``) to
    ``parts``; returns 1 if it is a measurement file, 0 if it is skipped."""
    k = _kind(f, direct=f == p)
    if k is None:
        if f == p:
            _explain_unknown(f)
            raise DataError(f"{f}: not a known measurement file (Vidur mlp.csv, "
                            "attention.csv, all_reduce.csv, send_recv.csv; Splitwise "
                            "perf_model.csv; Sarathi figure-2_prefill.csv; or a "
                            f"jaxsim CSV with columns {', '.join(COLUMNS)})")
        return 0
    if k == "vidur_mlp":
        parts.append(load_vidur_mlp(f, hardware))
    elif k == "vidur_attention":
        parts.append(load_vidur_attention(f, hardware))
    elif k == "vidur_network":
        parts.append(load_vidur_network(f, hardware))
    elif k == "splitwise":
        parts.append(load_splitwise(f))
    elif k == "sarathi":
        parts.append(load_sarathi(os.path.dirname(f)))
    else:
        parts.append(read_csv(f))
    return 1
