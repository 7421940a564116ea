"""Per-lane status bits and their host-side decoding.

A lane never raises: problems are recorded as bits in ``SimState.status`` (int32) and
decoded on the host. Search code treats any lane with a nonzero status as unusable
(cost ``+inf``), except ``OK``.
"""

from __future__ import annotations

import numpy as np

OK = 0
TRUNCATED = 1 << 0  #: the iteration budget ran out before every request finished
OVERFLOW_SLOTS = 1 << 1  #: the slot table (SimShape.max_slots) limited admission
INFEASIBLE = 1 << 2  #: the configuration cannot serve this workload (see reasons)
NONFINITE = 1 << 3  #: an iteration time was NaN/inf or negative (bad parameters); halted
OVERFLOW_CACHE = 1 << 4  #: the prefix-cache table (SimShape.cache_entries) ran out of rows

# Reasons for INFEASIBLE (set together with INFEASIBLE).
INF_NO_KV_MEMORY = 1 << 8  #: weights + reserve exceed memory, or no KV blocks
INF_KV_TOO_SMALL = 1 << 9  #: KV cache cannot hold one max_model_len sequence
INF_REQUEST_TOO_LONG = 1 << 10  #: a request has prompt + output > max_model_len
INF_BUDGET_TOO_SMALL = 1 << 11  #: no chunked prefill and budget < max_model_len
INF_BUDGET_LT_SEQS = 1 << 12  #: max_num_batched_tokens < max_num_seqs
INF_TP_SHAPE = 1 << 13  #: tp does not divide the heads / KV heads
# (1 << 14 was "dtype_not_supported_by_gpu": FP8 weights now run weight-only on GPUs
# without FP8 tensor cores, as vLLM's FP8 Marlin kernels do; the bit is not reused)
INF_CONSTRAINT = 1 << 15  #: the point violates a constraint of its design space (search)
INF_MML_OVER_CONTEXT = 1 << 16  #: max_model_len exceeds the model's context (vLLM refuses)

#: Bits after which a lane does no further work.
HALTED_MASK = INFEASIBLE | NONFINITE

_NAMES = {
    TRUNCATED: "truncated",
    OVERFLOW_SLOTS: "overflow_slots",
    INFEASIBLE: "infeasible",
    NONFINITE: "nonfinite",
    OVERFLOW_CACHE: "overflow_cache_table",
    INF_NO_KV_MEMORY: "model_does_not_fit",
    INF_KV_TOO_SMALL: "kv_cache_smaller_than_max_model_len",
    INF_REQUEST_TOO_LONG: "request_longer_than_max_model_len",
    INF_BUDGET_TOO_SMALL: "max_num_batched_tokens_lt_max_model_len_without_chunking",
    INF_BUDGET_LT_SEQS: "max_num_batched_tokens_lt_max_num_seqs",
    INF_TP_SHAPE: "tp_does_not_divide_heads",
    INF_CONSTRAINT: "violates_space_constraint",
    INF_MML_OVER_CONTEXT: "max_model_len_exceeds_model_context",
}


def decode(status: int) -> list[str]:
    """Names of the bits set in one lane's status (empty list means OK)."""
    status = int(status)
    return [name for bit, name in _NAMES.items() if status & bit]


def describe(status: int) -> str:
    """One short human-readable string for a lane's status."""
    names = decode(status)
    return "ok" if not names else ",".join(names)


def is_ok(status: np.ndarray | int) -> np.ndarray:
    """True where a lane finished cleanly (no bit set)."""
    return np.asarray(status) == OK
