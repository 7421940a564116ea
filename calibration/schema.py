"""One tidy schema for measured timings, with validation and atomic CSV input/output.

A :class:`Measurements` table holds one row per measured shape. Kernel rows time one
invocation of one operator on one GPU (one tensor-parallel shard); ``iteration`` rows
time a whole engine iteration of a batch. Every loader in :mod:`calibration.loaders`
and the profiler (:mod:`jaxsim.profile`) produce this table, so ``jaxsim calibrate``
takes any of them.

Columns (CSV header names; integers are 0 where they do not apply):

============================  ==============================================================
``hardware``                  GPU preset name the row was measured on (``H100-SXM``, ...)
``op``                        one of :data:`OPS`
``model``                     model name ('' if none)
``dtype``                     ``bf16``, ``fp16``, ``fp32`` or ``fp8``
``num_layers`` ...            ``hidden_size``, ``num_heads``, ``num_kv_heads``, ``head_dim``,
                              ``ffn_size``, ``vocab_size``: full-model dimensions
``gated``                     1 for a gated (SwiGLU) MLP, 0 for a plain one
``tp``                        tensor-parallel degree of the shard measured (>= 1)
``num_tokens``                rows of the activation matrix (kernel rows)
``batch_size``                sequences: prefill sequences of ``iteration`` rows, decode
                              sequences of ``attn_decode`` rows, 1 for ``attn_prefill``
``chunk_len``                 new (query) tokens per prefill sequence
``context_len``               tokens already cached per prefill sequence, or the context
                              of each decode sequence for ``attn_decode``
``num_decodes``               decode sequences of an ``iteration`` row
``decode_context_len``        mean context of those decodes
``bytes``                     message / copy size of collectives and copies
``num_workers``               GPUs taking part in a collective
``time_s``                    the measured time, seconds (the median when repeated); within
                              [1e-15, 86400]
``time_min_s`` ...            ``time_mean_s``, ``time_std_s``: repeat statistics (may be
                              empty)
``repeats``                   number of repeats behind the statistics (0 if unknown)
``source``                    where the row came from (``file:row``)
============================  ==============================================================
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Iterable, Sequence

import numpy as np

from jaxsim.fileio import atomic_open

#: Operators a row may time. Kernel operators use the cost model's names.
GEMM_OPS = ("qkv_proj", "o_proj", "mlp_up", "mlp_down", "lm_head")
ELEM_OPS = ("norm", "residual_add", "activation", "rotary", "kv_write", "embedding")
ATTN_OPS = ("attn_prefill", "attn_decode")
COMM_OPS = ("all_reduce", "send_recv", "h2d_copy", "d2h_copy")
OPS = GEMM_OPS + ELEM_OPS + ATTN_OPS + COMM_OPS + ("iteration",)
#: Op families of the error report.
FAMILY = {**{o: "gemm" for o in GEMM_OPS}, **{o: "elementwise" for o in ELEM_OPS},
          "norm": "norm", "attn_prefill": "attn_prefill", "attn_decode": "attn_decode",
          "all_reduce": "all_reduce", "send_recv": "send_recv", "h2d_copy": "copy",
          "d2h_copy": "copy", "iteration": "iteration"}
DTYPES = ("bf16", "fp16", "fp32", "fp8")

STR_COLS = ("hardware", "op", "model", "dtype", "source")
INT_COLS = ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
            "ffn_size", "vocab_size", "gated", "tp", "num_tokens", "batch_size",
            "chunk_len", "context_len", "num_decodes", "decode_context_len", "num_workers",
            "repeats")
FLOAT_COLS = ("bytes", "time_s", "time_min_s", "time_mean_s", "time_std_s")
COLUMNS = ("hardware", "op", "model", "dtype", "num_layers", "hidden_size", "num_heads",
           "num_kv_heads", "head_dim", "ffn_size", "vocab_size", "gated", "tp",
           "num_tokens", "batch_size", "chunk_len", "context_len", "num_decodes",
           "decode_context_len", "bytes", "num_workers", "time_s", "time_min_s",
           "time_mean_s", "time_std_s", "repeats", "source")
#: Columns that may be left empty (NaN) in a CSV.
OPTIONAL = ("time_min_s", "time_mean_s", "time_std_s")
#: Shape columns each op needs (> 0).
REQUIRED_SHAPE = {
    **{o: ("hidden_size", "num_heads", "head_dim", "tp", "num_tokens") for o in GEMM_OPS},
    **{o: ("hidden_size", "num_heads", "head_dim", "tp", "num_tokens") for o in ELEM_OPS},
    "mlp_up": ("hidden_size", "ffn_size", "tp", "num_tokens"),
    "mlp_down": ("hidden_size", "ffn_size", "tp", "num_tokens"),
    "lm_head": ("hidden_size", "vocab_size", "tp", "num_tokens"),
    "activation": ("ffn_size", "tp", "num_tokens"),
    "attn_prefill": ("num_heads", "num_kv_heads", "head_dim", "tp", "chunk_len"),
    "attn_decode": ("num_heads", "num_kv_heads", "head_dim", "tp", "batch_size",
                    "context_len"),
    "all_reduce": ("bytes", "num_workers"),
    "send_recv": ("bytes",),
    "h2d_copy": ("bytes",),
    "d2h_copy": ("bytes",),
    "iteration": ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
                  "ffn_size", "vocab_size", "tp"),
}


class DataError(ValueError):
    """Bad measurement data; the message names the file, row and column."""


@dataclasses.dataclass
class Measurements:
    """A column table of measurements (numpy arrays of equal length)."""

    cols: dict[str, np.ndarray]

    def __post_init__(self):
        n = {len(v) for v in self.cols.values()}
        if len(n) > 1:
            raise ValueError(f"columns of unequal length: {sorted(n)}")
        missing = [c for c in COLUMNS if c not in self.cols]
        if missing:
            raise ValueError(f"missing columns {missing}")

    def __len__(self) -> int:
        return len(self.cols["op"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.cols[name]

    def select(self, mask) -> Measurements:
        """Rows where ``mask`` is true (or the given indices)."""
        return Measurements({k: v[mask] for k, v in self.cols.items()})

    def where(self, **eq) -> Measurements:
        """Rows whose columns equal the given values (case-insensitive for strings)."""
        mask = np.ones(len(self), bool)
        for k, v in eq.items():
            col = self.cols[k]
            if col.dtype.kind in "UO":
                mask &= np.char.lower(col.astype(str)) == str(v).lower()
            else:
                mask &= col == v
        return self.select(mask)

    @staticmethod
    def concat(parts: Sequence[Measurements]) -> Measurements:
        parts = [p for p in parts if len(p)]
        if not parts:
            return empty()
        return Measurements({c: np.concatenate([p.cols[c] for p in parts]) for c in COLUMNS})

    def ops(self) -> list[str]:
        return sorted(set(self.cols["op"].tolist()))

    def digest(self) -> str:
        """sha256 of the canonical CSV text (rows sorted): identifies a dataset."""
        import hashlib

        lines = sorted(_row_text(self, i, with_source=False) for i in range(len(self)))
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def empty() -> Measurements:
    return from_rows([])


#: Measured times outside these bounds (seconds) are refused: no kernel or iteration
#: takes under a femtosecond or over a day, and float32 holds both ends.
TIME_MIN_S = 1e-15
TIME_MAX_S = 86400.0


def _dtype(c: str):
    return object if c in STR_COLS else (np.int64 if c in INT_COLS else np.float64)


def from_rows(rows: Iterable[dict], *, origin: str = "<rows>") -> Measurements:
    """Build and validate a table from dicts (missing integer fields are 0)."""
    rows = list(rows)
    cols: dict[str, list] = {c: [] for c in COLUMNS}
    for i, r in enumerate(rows):
        for c in COLUMNS:
            v = r.get(c)
            if c in STR_COLS:
                cols[c].append("" if v is None else str(v))
            elif c in INT_COLS:
                cols[c].append(0 if v is None else v)
            else:
                cols[c].append((math.nan if c in OPTIONAL else 0.0) if v is None else v)
        if not r.get("source"):
            cols["source"][-1] = f"{origin}:{i + 1}"
    m = Measurements({c: np.asarray(v, dtype=_dtype(c)) if v else
                      np.zeros(0, dtype=_dtype(c)) for c, v in cols.items()})
    validate(m)
    return m


def validate(m: Measurements) -> None:
    """Raise :class:`DataError` naming the source row and column of the first bad value."""
    n = len(m)
    if n == 0:
        return

    def fail(bad: np.ndarray, msg) -> None:
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{m['source'][i]}: {msg(i)}")

    op = m["op"].astype(str)
    fail(~np.isin(op, OPS), lambda i: f"column 'op': unknown op {str(op[i])!r}; allowed: "
         f"{', '.join(OPS)}")
    dt = m["dtype"].astype(str)
    fail(~np.isin(dt, DTYPES), lambda i: f"column 'dtype': unknown dtype {str(dt[i])!r}; "
         f"allowed: {', '.join(DTYPES)}")
    fail(m["hardware"].astype(str) == "", lambda i: "column 'hardware': empty")
    t = m["time_s"]
    fail(~(np.isfinite(t) & (t > 0)), lambda i: f"column 'time_s': {float(t[i])!r} is not a "
         "positive finite time in seconds")
    # the fit works in float32 logs: 1e-50 s became 0 (log -inf) and skewed every parameter
    fail(~((t >= TIME_MIN_S) & (t <= TIME_MAX_S)), lambda i: f"column 'time_s': "
         f"{float(t[i])!r} s is outside [{TIME_MIN_S:g}, {TIME_MAX_S:g}] s (check the unit)")
    for c in OPTIONAL:
        v = m[c]
        fail(~np.isnan(v) & ~(np.isfinite(v) & (v >= 0)),
             lambda i, c=c, v=v: f"column {c!r}: {float(v[i])!r} must be >= 0 or empty")
    for c in INT_COLS + ("bytes",):
        v = m[c].astype(np.float64)
        fail(~(np.isfinite(v) & (v >= 0)),
             lambda i, c=c, v=v: f"column {c!r}: {float(v[i])!r} must be a finite number "
             ">= 0")
    for o, req in REQUIRED_SHAPE.items():
        rows = op == o
        if not rows.any():
            continue
        for c in req:
            fail(rows & ~(m[c] > 0), lambda i, c=c, o=o: f"column {c!r}: {m[c][i].item()!r} "
                 f"must be > 0 for op {o!r}")
    g = m["gated"]
    fail(~np.isin(g, (0, 1)), lambda i: f"column 'gated': {g[i].item()!r} must be 1 (a "
         "gated, SwiGLU MLP) or 0 (a plain one)")
    qkv = op == "qkv_proj"
    fail(qkv & ~((m["num_kv_heads"] > 0) & (m["num_kv_heads"] <= m["num_heads"])),
         lambda i: f"column 'num_kv_heads': {m['num_kv_heads'][i].item()!r} must be > 0 and "
         f"at most num_heads ({m['num_heads'][i].item()!r}) for op 'qkv_proj'")
    # an iteration runs something: prefill sequences (batch_size x chunk_len) or decodes
    it = op == "iteration"
    if it.any():
        pre = (m["batch_size"] > 0) & (m["chunk_len"] > 0)
        fail(it & ~pre & ~(m["num_decodes"] > 0),
             lambda i: "an 'iteration' row needs prefill sequences (batch_size and chunk_len "
             "> 0) or decodes (num_decodes > 0); this one has neither")


def _fmt(v) -> str:
    if isinstance(v, float | np.floating):
        return "" if np.isnan(v) else repr(float(v))
    return str(v)


def _row_text(m: Measurements, i: int, with_source: bool = True) -> str:
    cols = COLUMNS if with_source else COLUMNS[:-1]
    return ",".join(_fmt(m.cols[c][i]) for c in cols)


def write_csv(m: Measurements, path: str | os.PathLike) -> None:
    """Write the table as CSV atomically (a temporary file renamed into place)."""
    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for i in range(len(m)):
            w.writerow([_fmt(m.cols[c][i]) for c in COLUMNS])


def records(reader, path: str):
    """(row number, record) of a DictReader; a row that is not CSV names its row."""
    i = 1
    while True:
        try:
            r = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # a stray quote, a field over csv's size limit
            raise DataError(f"{path}:{i + 1}: not a CSV row ({e})") from None
        i += 1
        yield i, r


def read_csv(path: str | os.PathLike) -> Measurements:
    """Read a CSV in this schema; errors name the file, row and column."""
    path = os.fspath(path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        twice = sorted({c for c in header if header.count(c) > 1})
        if twice:
            raise DataError(f"{path}:1: column {twice[0]!r} appears more than once in the "
                            "header")
        missing = [c for c in COLUMNS if c not in header and c != "source"]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; the jaxsim measurement "
                            f"schema has: {', '.join(COLUMNS)}")
        rows = []
        for i, r in records(reader, path):
            if None in r:  # DictReader keeps the fields beyond the header under None
                raise DataError(f"{path}:{i}: {len(header) + len(r[None])} fields; the "
                                f"header has {len(header)} columns")
            row = {}
            for c in COLUMNS:
                v = (r.get(c) or "").strip()
                if c in STR_COLS:
                    row[c] = v
                    continue
                if v == "" and c in OPTIONAL:
                    row[c] = math.nan
                    continue
                try:
                    x = float(v)
                except ValueError:
                    raise DataError(f"{path}:{i}: column {c!r}: {v!r} is not a number"
                                    ) from None
                if c in INT_COLS:
                    if not math.isfinite(x) or x != int(x):
                        raise DataError(f"{path}:{i}: column {c!r}: {v!r} is not an integer")
                    if abs(x) > 2**31 - 1:
                        raise DataError(f"{path}:{i}: column {c!r}: {v!r} is out of range "
                                        "(at most 2**31 - 1)")
                    x = int(x)
                row[c] = x
            row["source"] = f"{path}:{i}"
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: a header but no rows")
    return from_rows(rows, origin=path)
