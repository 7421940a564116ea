"""Loaders for real request traces; bad rows raise ``TraceError`` naming file, row, column.

Formats:

- ``azure``: Azure LLM inference trace 2023 CSV (``TIMESTAMP,ContextTokens,
  GeneratedTokens``; timestamps ``YYYY-MM-DD HH:MM:SS.fffffff``). Arrivals are made
  relative to the first row.
- ``mooncake``: Mooncake FAST'25 JSONL (``timestamp`` in ms, ``input_length``,
  ``output_length``, ``hash_ids``).
- ``csv``: plain CSV with header ``arrival_s,prompt_tokens,output_tokens``.

Bundled subsets (see ``jaxsim/data/traces/README.md`` for sources and licenses) are
available by name through :func:`bundled`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
from importlib import resources

import numpy as np

from jaxsim.shapes import MAX_PRIORITY_LEVELS
from jaxsim.workload import MAX_ARRIVAL_SPAN_S, Trace


class TraceError(ValueError):
    """A trace file that cannot be used; the message names file, row and column."""


def _number(path, row, col, raw) -> float:
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise TraceError(f"{path}: row {row}, column {col}: {raw!r} is not a number") from None
    except OverflowError:  # a JSON integer past float's range (float("1e999") is inf)
        raise TraceError(f"{path}: row {row}, column {col}: {str(raw)[:20]}... "
                         f"({len(str(raw))} digits) is too large") from None


def _int_cell(path, row, col, raw):
    if isinstance(raw, bool):
        raise TraceError(f"{path}: row {row}, column {col}: {raw!r} is not a number")
    v = _number(path, row, col, raw)
    if not math.isfinite(v) or v != int(v):
        raise TraceError(f"{path}: row {row}, column {col}: {raw!r} is not a whole number")
    if v < 1:
        raise TraceError(f"{path}: row {row}, column {col}: {raw!r} must be >= 1 token")
    if v > 2**30:
        raise TraceError(f"{path}: row {row}, column {col}: {raw!r} must be <= 2**30 "
                         "tokens")
    return int(v)


def _float_cell(path, row, col, raw):
    if isinstance(raw, bool):
        raise TraceError(f"{path}: row {row}, column {col}: {raw!r} is not a number")
    v = _number(path, row, col, raw)
    if not math.isfinite(v) or v < 0:
        raise TraceError(f"{path}: row {row}, column {col}: {raw!r} must be a finite "
                         "number >= 0")
    return v


def _open(path):
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise TraceError(f"{path}: no such file")
    if os.path.isdir(path):
        raise TraceError(f"{path}: is a directory, expected a trace file")
    with open(path, "rb") as f:
        if f.read(2) == b"\x1f\x8b":
            raise TraceError(f"{path}: a gzip-compressed file; decompress it first "
                             "(gunzip), trace files are read as text")
    # utf-8-sig: a byte-order mark (a CSV saved by a spreadsheet) is not part of the header
    return open(path, newline="", encoding="utf-8-sig")


class _Lines:
    """A file's lines, counted as they are read (``csv.reader.line_num`` is not advanced
    by a row that fails to parse, so an error would name the row before)."""

    def __init__(self, f):
        self._f, self.n = f, 0

    def __iter__(self):
        return self

    def __next__(self):
        line = next(self._f)
        self.n += 1
        return line


def _check_span(path, times, lines, col, raw):
    """Refuse arrivals the simulator's clock cannot hold (``MAX_ARRIVAL_SPAN_S``), naming
    the row of the latest one; ``raw(i)`` is row i's value as written in the file."""
    if len(times) and float(times.max() - times.min()) > MAX_ARRIVAL_SPAN_S:
        i = int(np.argmax(times))
        raise TraceError(f"{path}: row {lines[i]}, column {col}: {raw(i)} lies "
                         f"{float(times.max() - times.min()):.4g} s after the first "
                         f"arrival; the arrivals may span at most {MAX_ARRIVAL_SPAN_S:.0e} s "
                         "(about 3 years; check the time unit)")


def _read_csv(path, columns):
    try:
        with _open(path) as f:
            lines = _Lines(f)
            reader = csv.DictReader(lines)
            header = reader.fieldnames or []
            missing = [c for c in columns if c not in header]
            if missing:
                raise TraceError(f"{path}: missing column(s) {', '.join(missing)} "
                                 f"(header is {','.join(header) or 'empty'}; expected "
                                 f"{','.join(columns)})")
            twice = [c for c in columns if header.count(c) > 1]
            if twice:  # csv.DictReader would keep the last one's values, silently
                raise TraceError(f"{path}: column(s) {', '.join(twice)} appear more than "
                                 f"once in the header ({','.join(header)})")
            # each row with its line in the file (blank lines are skipped but counted)
            rows = [(reader.line_num, r) for r in reader]
    except UnicodeDecodeError as e:
        raise TraceError(f"{path}: not a UTF-8 text file ({e.reason} at byte "
                         f"{e.start})") from None
    except csv.Error as e:  # a field over the csv module's limit (128 KiB), a NUL, ...
        raise TraceError(f"{path}: row {lines.n}: not a CSV row ({e})") from None
    for line, r in rows:
        if None in r:  # csv.DictReader's key for fields beyond the header's
            raise TraceError(f"{path}: row {line} has {len(header) + len(r[None])} "
                             f"fields; the header has {len(header)}")
        short = [c for c in columns if r.get(c) is None]
        if short:
            raise TraceError(f"{path}: row {line} has {len(header) - len(short)} fields; "
                             f"the header has {len(header)} (no {', '.join(short)})")
    if not rows:
        raise TraceError(f"{path}: no data rows")
    return rows


#: An Azure trace timestamp: date and time, no time zone (the trace's own format).
_AZURE_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}"
                         r"(:[0-9]{2}(\.[0-9]+)?)?")


def load_azure(path: str) -> Trace:
    """Azure LLM inference trace 2023 CSV."""
    cols = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
    rows = _read_csv(path, cols)
    times = np.empty(len(rows), np.float64)
    prompt = np.empty(len(rows), np.int64)
    output = np.empty(len(rows), np.int64)
    base = None
    for i, (line, r) in enumerate(rows):
        raw = (r["TIMESTAMP"] or "").strip()
        if not _AZURE_TIME.fullmatch(raw):  # a bare number would parse as a year
            raise TraceError(f"{path}: row {line}, column TIMESTAMP: {raw!r} is not a "
                             "timestamp (YYYY-MM-DD HH:MM:SS.fffffff, no time zone)")
        if not 1678 <= int(raw[:4]) <= 2261:  # nanosecond datetimes cover 1677-09 to 2262-04
            raise TraceError(f"{path}: row {line}, column TIMESTAMP: {raw!r}: the year must "
                             "be within 1678-2261")
        try:
            t = np.datetime64(raw.replace(" ", "T"), "ns")
        except ValueError:
            raise TraceError(f"{path}: row {line}, column TIMESTAMP: {raw!r} is not a "
                             "timestamp (YYYY-MM-DD HH:MM:SS.fffffff)") from None
        if np.isnat(t):
            raise TraceError(f"{path}: row {line}, column TIMESTAMP: {raw!r} is not a "
                             "timestamp")
        if base is None:
            base = t
        times[i] = (t - base) / np.timedelta64(1, "ns") * 1e-9
        prompt[i] = _int_cell(path, line, "ContextTokens", r["ContextTokens"])
        output[i] = _int_cell(path, line, "GeneratedTokens", r["GeneratedTokens"])
    times -= times.min()
    _check_span(path, times, [line for line, _ in rows], "TIMESTAMP",
                lambda i: repr(rows[i][1]["TIMESTAMP"].strip()))
    return Trace(times, prompt, output, name=os.path.basename(path))


def _priority_cell(path, row, raw):
    v = _number(path, row, "priority", raw)
    if not math.isfinite(v) or v != int(v) or not 0 <= v < MAX_PRIORITY_LEVELS:
        raise TraceError(f"{path}: row {row}, column priority: {raw!r} must be an integer "
                         f"in 0..{MAX_PRIORITY_LEVELS - 1} (lower is served first)")
    return int(v)


def load_csv(path: str) -> Trace:
    """Plain CSV: ``arrival_s,prompt_tokens,output_tokens``, and optionally ``priority``
    (an integer 0..7 per request; docs/semantics.md §10)."""
    cols = ("arrival_s", "prompt_tokens", "output_tokens")
    rows = _read_csv(path, cols)
    n = len(rows)
    a = np.empty(n)
    p = np.empty(n, np.int64)
    o = np.empty(n, np.int64)
    has_pri = "priority" in rows[0][1]
    if has_pri:
        rows = _read_csv(path, (*cols, "priority"))  # (checks it once in the header)
    pri = np.zeros(n, np.int64)
    for i, (line, r) in enumerate(rows):
        a[i] = _float_cell(path, line, "arrival_s", r["arrival_s"])
        p[i] = _int_cell(path, line, "prompt_tokens", r["prompt_tokens"])
        o[i] = _int_cell(path, line, "output_tokens", r["output_tokens"])
        if has_pri:
            pri[i] = _priority_cell(path, line, r["priority"])
    _check_span(path, a, [line for line, _ in rows], "arrival_s",
                lambda i: repr(rows[i][1]["arrival_s"]))
    return Trace(a, p, o, name=os.path.basename(path), priority=pri if has_pri else None)


#: Tokens per Mooncake hash block.
MOONCAKE_BLOCK_TOKENS = 512


def load_mooncake(path: str, with_hashes: bool = False):
    """Mooncake JSONL. The trace carries the ids of each request's whole prompt blocks
    (``Trace.hash_ids``, 512 tokens each) for prefix caching. With ``with_hashes`` also
    returns the raw per-request ``hash_ids`` lists."""
    a, p, o, hashes, rows = [], [], [], [], []
    try:
        with _open(path) as f:
            lines = list(f)
    except UnicodeDecodeError as e:
        raise TraceError(f"{path}: not a UTF-8 text file ({e.reason} at byte "
                         f"{e.start})") from None
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise TraceError(f"{path}: row {i}: not valid JSON") from None
        except RecursionError:
            raise TraceError(f"{path}: row {i}: JSON nested too deeply") from None
        except ValueError:  # an integer longer than Python reads (4,300 digits)
            raise TraceError(f"{path}: row {i}: a number of more than "
                             f"{sys.get_int_max_str_digits()} digits") from None
        if not isinstance(rec, dict):
            raise TraceError(f"{path}: row {i}: expected a JSON object")
        for key in ("timestamp", "input_length", "output_length"):
            if key not in rec:
                raise TraceError(f"{path}: row {i}, column {key}: missing")
        a.append(_float_cell(path, i, "timestamp", rec["timestamp"]) / 1000.0)
        p.append(_int_cell(path, i, "input_length", rec["input_length"]))
        o.append(_int_cell(path, i, "output_length", rec["output_length"]))
        h = rec.get("hash_ids", [])
        if not isinstance(h, list) or not all(
                isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**63
                for x in h):
            raise TraceError(f"{path}: row {i}, column hash_ids: must be a list of "
                             "integers in 0..2**63-1")
        hashes.append(h)
        rows.append((i, rec["timestamp"]))
    if not a:
        raise TraceError(f"{path}: no data rows")
    _check_span(path, np.asarray(a), [i for i, _ in rows], "timestamp",
                lambda i: f"{rows[i][1]!r} ms")
    # Mooncake ids cover ceil(input/512) blocks, the last one partial. Only whole prompt
    # blocks are kept: a partial block's id says nothing about the tokens after it.
    full = [[int(x) for x in h[: p_i // MOONCAKE_BLOCK_TOKENS]]
            for h, p_i in zip(hashes, p, strict=True)]
    tr = Trace(np.asarray(a), np.asarray(p), np.asarray(o), name=os.path.basename(path),
               hash_ids=full, hash_block_tokens=MOONCAKE_BLOCK_TOKENS)
    return (tr, hashes) if with_hashes else tr


LOADERS = {"azure": load_azure, "mooncake": load_mooncake, "csv": load_csv}


def load(path: str, fmt: str) -> Trace:
    """Load a trace file in format ``fmt`` (``azure``, ``mooncake``, ``csv``)."""
    if fmt not in LOADERS:
        raise TraceError(f"workload.format: {fmt!r} is not one of {', '.join(LOADERS)}")
    if isinstance(path, str) and path.startswith("bundled:"):
        name = path.split(":", 1)[1]
        path = bundled_path(name)
        wrong = wrong_bundled_format(name, fmt)
        if wrong:
            raise TraceError(wrong)
    return LOADERS[fmt](path)


def wrong_bundled_format(name: str, fmt: str) -> str | None:
    """Why ``fmt`` cannot read the bundled trace ``name``, or None (also for an unknown
    name, which :func:`bundled_path` reports)."""
    own = BUNDLED.get(name, (None, fmt))[1]
    if own == fmt:
        return None
    return (f"workload.format: {fmt!r} does not read bundled:{name}, a trace in {own} "
            f"format (set workload.format: {own}, or leave it out)")


BUNDLED = {
    "azure_conv": ("azure_llm_2023/AzureLLMInferenceTrace_conv.csv", "azure"),
    "azure_code": ("azure_llm_2023/AzureLLMInferenceTrace_code.csv", "azure"),
    "mooncake_conversation_2k": ("mooncake_fast25/conversation_trace_head2000.jsonl",
                                 "mooncake"),
}


def bundled_path(name: str) -> str:
    """Filesystem path of a bundled trace (``workload.path: bundled:<name>``)."""
    if name not in BUNDLED:
        raise TraceError(f"bundled:{name}: unknown bundled trace; allowed: "
                         f"{', '.join('bundled:' + k for k in BUNDLED)}")
    return str(resources.files("jaxsim").joinpath("data/traces", BUNDLED[name][0]))


def bundled(name: str) -> Trace:
    """Load a bundled trace by name (see ``BUNDLED``)."""
    path = bundled_path(name)  # raises with the allowed names
    return LOADERS[BUNDLED[name][1]](path)
