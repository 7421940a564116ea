"""Workloads: host-side request traces and the padded device arrays the simulator reads.

A :class:`Trace` is a host (numpy) list of requests: arrival time (float64 seconds),
prompt and output lengths. Synthetic generators build traces from arrival processes
(Poisson, Gamma-bursty, all at once) and length distributions (fixed, uniform,
lognormal, empirical); ``jaxsim.traces`` loads real traces from files.
:func:`to_workload` sorts a trace by arrival (stable, so ties keep file order), pads it to
``max_requests`` rows and splits arrival times into float32 (hi, lo) pairs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from jaxsim.params import as_f32, as_i32
from jaxsim.shapes import MAX_PRIORITY_LEVELS
from jaxsim.timeutil import split_f64
from jaxsim.types import Array, Float, Int

#: Tokens per hashed block when a workload does not say (Mooncake's block length).
DEFAULT_HASH_BLOCK_TOKENS = 512


class Workload(eqx.Module):
    """Padded, arrival-sorted request arrays (device side).

    Attributes:
        arrival_hi, arrival_lo: ``f32[R]`` arrival time as a (hi, lo) pair, seconds;
            padding rows are ``+inf``.
        prompt_tokens: ``i32[R]`` prompt lengths (padding: 1).
        output_tokens: ``i32[R]`` output lengths (padding: 1).
        num_requests: ``i32[]`` number of real rows (rows ``>= num_requests`` are padding).
        hash_ids: ``i32[R, H]`` prefix-cache block ids of each request (dense ids in
            ``[0, num_hash_ids)``; ``-1`` pads; H is 0 for a workload without them).
            Entry ``j`` names the KV of tokens ``[j*U, (j+1)*U)`` (docs/semantics.md §5).
        hash_block_tokens: ``i32[]`` U, tokens per hashed block.
        num_hash_ids: ``i32[]`` distinct block ids (``SimShape.hash_space`` must be >= it).
        external_tokens: ``i32[R]`` prompt tokens whose KV a request brings when it
            arrives (a disaggregated decode instance's, loaded from the prefill instance;
            docs/semantics.md §8): its first admission starts at ``c = E`` (0 pads; read
            only when ``SimShape.external_kv`` compiles it in).
        priority: ``i32[R]`` each request's priority, ``0 .. MAX_PRIORITY_LEVELS - 1``
            (lower is served first under priority scheduling, docs/semantics.md §10; 0
            pads).
        prio_order: ``i32[R]`` request indices sorted by (priority, index): each level's
            requests in arrival order, level after level; padding rows last.
        prio_start: ``i32[MAX_PRIORITY_LEVELS + 1]`` where each level starts in
            ``prio_order`` (level ``p`` is ``prio_order[prio_start[p]:prio_start[p+1]]``).
    """

    arrival_hi: Float[Array, " R"] = eqx.field(converter=as_f32)
    arrival_lo: Float[Array, " R"] = eqx.field(converter=as_f32)
    prompt_tokens: Int[Array, " R"] = eqx.field(converter=as_i32)
    output_tokens: Int[Array, " R"] = eqx.field(converter=as_i32)
    num_requests: Int[Array, ""] = eqx.field(converter=as_i32)
    hash_ids: Int[Array, "R H"] | None = None
    hash_block_tokens: Int[Array, ""] | None = None
    num_hash_ids: Int[Array, ""] | None = None
    external_tokens: Int[Array, " R"] | None = None
    priority: Int[Array, " R"] | None = None
    prio_order: Int[Array, " R"] | None = None
    prio_start: Int[Array, " L1"] | None = None

    def __post_init__(self):
        R = self.arrival_hi.shape[-1]
        if self.priority is None:  # one level: the arrival order, every level after empty
            lead = self.arrival_hi.shape[:-1]
            n = jnp.asarray(self.num_requests, jnp.int32)
            object.__setattr__(self, "priority", jnp.zeros(self.arrival_hi.shape, jnp.int32))
            object.__setattr__(self, "prio_order", jnp.broadcast_to(
                jnp.arange(R, dtype=jnp.int32), self.arrival_hi.shape))
            start = jnp.where(jnp.arange(MAX_PRIORITY_LEVELS + 1) == 0, 0,
                              jnp.asarray(n)[..., None])
            object.__setattr__(self, "prio_start", jnp.broadcast_to(
                start, (*lead, MAX_PRIORITY_LEVELS + 1)).astype(jnp.int32))
        else:
            for f in ("priority", "prio_order", "prio_start"):
                object.__setattr__(self, f, as_i32(getattr(self, f)))
        if self.external_tokens is None:
            object.__setattr__(self, "external_tokens",
                               jnp.zeros(self.arrival_hi.shape, jnp.int32))
        else:
            object.__setattr__(self, "external_tokens", as_i32(self.external_tokens))
        if self.hash_ids is None:
            lead = self.arrival_hi.shape[:-1]
            object.__setattr__(self, "hash_ids", jnp.zeros((*lead, R, 0), jnp.int32))
            object.__setattr__(self, "hash_block_tokens",
                               jnp.full(lead, DEFAULT_HASH_BLOCK_TOKENS, jnp.int32))
            object.__setattr__(self, "num_hash_ids", jnp.zeros(lead, jnp.int32))
        else:
            object.__setattr__(self, "hash_ids", as_i32(self.hash_ids))
            object.__setattr__(self, "hash_block_tokens", as_i32(self.hash_block_tokens))
            object.__setattr__(self, "num_hash_ids", as_i32(self.num_hash_ids))

    @property
    def max_prefix_blocks(self) -> int:
        """H (static): hashed blocks per request row."""
        return int(self.hash_ids.shape[-1])

    @property
    def max_requests(self) -> int:
        """R (static)."""
        return int(self.arrival_hi.shape[-1])


#: Most turns a sessions workload may generate in all, and most block ids its prompts
#: may hold in all (each turn's prompt repeats the session so far: 8 bytes an id).
MAX_SESSION_TURNS = 10_000_000
MAX_SESSION_IDS = 50_000_000

#: Largest span of a trace's arrival times, seconds: the clock is a double-float sum
#: (about 48 bits), so it resolves 1e8 s to about 0.4 microseconds.
MAX_ARRIVAL_SPAN_S = 1e8


def _numbers(name: str, field: str, values) -> np.ndarray:
    """``values`` as a one-dimensional array of real numbers (not booleans, strings or
    None), or a ValueError naming the field and the first bad entry."""
    a = np.asarray(values)
    if a.ndim > 1:
        raise ValueError(f"{name}: {field} must be one-dimensional (one entry per request), "
                         f"got shape {a.shape}")
    a = a.reshape(-1)
    if a.dtype.kind in "iuf":
        return a
    items = a.tolist()
    for i, x in enumerate(items):
        if isinstance(x, bool) or not isinstance(x, int | float):
            raise ValueError(f"{name}: {field}[{i}] = {x!r}; must be a number")
    try:
        return a.astype(np.float64 if any(isinstance(x, float) for x in items) else np.int64)
    except OverflowError:  # Python ints beyond int64
        big = next(i for i, x in enumerate(items) if abs(x) > np.iinfo(np.int64).max)
        raise ValueError(f"{name}: {field}[{big}] = {a[big]!r}; out of range (at most "
                         "2**63-1)") from None


def _whole(name: str, field: str, v: np.ndarray, what: str = "a whole number of tokens"
           ) -> None:
    """Refuse non-finite or fractional entries of a float array."""
    bad = ~np.isfinite(v) | (v != np.round(v))
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}: {field}[{i}] = {v[i].item()!r}; must be {what}")


class ArrivalSpanError(ValueError):
    """Arrivals spread over more than ``MAX_ARRIVAL_SPAN_S``."""


@dataclasses.dataclass
class Trace:
    """Requests on the host.

    Attributes:
        arrival_s: float64 arrival times, seconds (any order; sorted by ``to_workload``).
        prompt_tokens: int prompt lengths (>= 1).
        output_tokens: int output lengths (>= 1).
        name: where it came from (for reports).
        hash_ids: optional prefix-cache block ids, one integer sequence per request (in
            the same order as the other fields): entry ``j`` names the KV of the
            request's tokens ``[j*U, (j+1)*U)`` (prompt, then output). Requests with the
            same id at the same position share that KV. ``None``: no sharing.
        hash_block_tokens: U, tokens per hashed block (Mooncake: 512).
        whole_max_len: for a share of a larger workload (a replica's,
            ``jaxsim.replicas``), the longest request of the whole: every replica is
            configured alike, so :meth:`max_len` (from which ``max_model_len`` and the
            request-length checks derive) is the whole workload's. ``None``: this trace
            is the whole workload.
        external_tokens: optional prompt tokens whose KV each request brings with it
            (``0 <= E < prompt_tokens``; a disaggregated decode instance's requests carry
            ``E = P - 1``, docs/semantics.md §8). ``None``: none.
        priority: optional priority of each request, an integer ``0 .. 7`` (vLLM's
            request ``priority``: lower is served first under ``scheduling_policy:
            priority``, docs/semantics.md §10). ``None``: all 0.
    """

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    name: str = "trace"
    hash_ids: list | None = None
    hash_block_tokens: int = DEFAULT_HASH_BLOCK_TOKENS
    whole_max_len: int | None = None
    external_tokens: np.ndarray | None = None
    priority: np.ndarray | None = None

    def __post_init__(self):
        self.arrival_s = _numbers(self.name, "arrival_s", self.arrival_s).astype(np.float64)
        self.prompt_tokens = _numbers(self.name, "prompt_tokens", self.prompt_tokens)
        self.output_tokens = _numbers(self.name, "output_tokens", self.output_tokens)
        n = len(self.arrival_s)
        if len(self.prompt_tokens) != n or len(self.output_tokens) != n:
            raise ValueError(
                f"{self.name}: arrival_s, prompt_tokens and output_tokens must have the same "
                f"length, got {n}, {len(self.prompt_tokens)}, {len(self.output_tokens)}"
            )
        if n == 0:
            raise ValueError(f"{self.name}: the workload has no requests")
        for field in ("prompt_tokens", "output_tokens"):
            v = getattr(self, field)
            if not np.issubdtype(v.dtype, np.integer):
                _whole(self.name, field, v)
            # the range before any cast: 1e20 as int64 is negative
            if np.any(v < 1):
                bad = int(np.flatnonzero(v < 1)[0])
                raise ValueError(f"{self.name}: {field}[{bad}] = {v[bad].item()!r}; must be >= 1")
            if np.any(v > 2**30):
                bad = int(np.flatnonzero(v > 2**30)[0])
                raise ValueError(f"{self.name}: {field}[{bad}] = {v[bad].item()!r}; "
                                 "must be <= 2**30")
            setattr(self, field, v.astype(np.int64))
        if self.hash_ids is not None:
            if len(self.hash_ids) != n:
                raise ValueError(f"{self.name}: hash_ids has {len(self.hash_ids)} entries "
                                 f"for {n} requests")
            ids = []
            for i, h in enumerate(self.hash_ids):
                a_h = _numbers(self.name, f"hash_ids[{i}]", h)
                if not np.issubdtype(a_h.dtype, np.integer):
                    _whole(self.name, f"hash_ids[{i}]", a_h, "an integer id")
                if a_h.size and (np.any(a_h > np.iinfo(np.int64).max) or np.any(a_h < 0)):
                    bad = int(np.flatnonzero((a_h < 0) | (a_h > np.iinfo(np.int64).max))[0])
                    raise ValueError(f"{self.name}: hash_ids[{i}][{bad}] = {a_h[bad].item()!r}; "
                                     "ids must be integers in 0..2**63-1")
                ids.append(a_h.astype(np.int64))
            self.hash_ids = ids
        u = self.hash_block_tokens
        if isinstance(u, bool) or not isinstance(u, int | np.integer) or not 1 <= u <= 2**20:
            raise ValueError(f"{self.name}: hash_block_tokens={u!r} must be an int in "
                             "1..2**20")
        self.hash_block_tokens = int(u)
        if self.external_tokens is not None:
            e = _numbers(self.name, "external_tokens", self.external_tokens)
            if len(e) != n:
                raise ValueError(f"{self.name}: external_tokens has {len(e)} entries for "
                                 f"{n} requests")
            if not np.issubdtype(e.dtype, np.integer):
                _whole(self.name, "external_tokens", e)
            bad = np.flatnonzero((e < 0) | (e >= self.prompt_tokens))
            if bad.size:
                b = int(bad[0])
                raise ValueError(f"{self.name}: external_tokens[{b}] = {e[b].item()!r}; "
                                 f"must be in 0..prompt_tokens - 1 = "
                                 f"{int(self.prompt_tokens[b]) - 1} (a request computes at "
                                 "least its last prompt token)")
            self.external_tokens = e.astype(np.int64)
        if self.priority is not None:
            pr = _numbers(self.name, "priority", self.priority)
            if len(pr) != n:
                raise ValueError(f"{self.name}: priority has {len(pr)} entries for "
                                 f"{n} requests")
            if not np.issubdtype(pr.dtype, np.integer):
                _whole(self.name, "priority", pr, "an integer priority")
            bad = np.flatnonzero((pr < 0) | (pr >= MAX_PRIORITY_LEVELS))
            if bad.size:
                b = int(bad[0])
                raise ValueError(f"{self.name}: priority[{b}] = {pr[b].item()!r}; must be an "
                                 f"integer in 0..{MAX_PRIORITY_LEVELS - 1} (lower is served "
                                 "first)")
            self.priority = pr.astype(np.int64)
        a = self.arrival_s
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            bad = int(np.flatnonzero(~np.isfinite(a) | (a < 0))[0])
            raise ValueError(f"{self.name}: arrival_s[{bad}] = {a[bad].item()!r}; must be finite "
                             "and >= 0")
        span = float(a.max() - a.min())
        if span > MAX_ARRIVAL_SPAN_S:
            bad = int(np.argmax(a))
            raise ArrivalSpanError(
                f"{self.name}: arrival_s[{bad}] = {float(a[bad])!r} lies {span:.4g} s after the "
                f"first arrival; the arrivals may span at most {MAX_ARRIVAL_SPAN_S:.0e} s "
                "(about 3 years), within which the simulator's clock resolves under "
                "1 microsecond (check the time unit: arrival_s is in seconds)")

    def __len__(self) -> int:
        return len(self.arrival_s)

    def order(self) -> np.ndarray:
        """Stable arrival order (the order the simulator uses)."""
        return np.argsort(self.arrival_s, kind="stable")

    def _take(self, o: np.ndarray, arrival: np.ndarray | None = None) -> Trace:
        return Trace(self.arrival_s[o] if arrival is None else arrival,
                     self.prompt_tokens[o], self.output_tokens[o], self.name,
                     None if self.hash_ids is None else [self.hash_ids[i] for i in o],
                     self.hash_block_tokens, self.whole_max_len,
                     None if self.external_tokens is None else self.external_tokens[o],
                     None if self.priority is None else self.priority[o])

    def head(self, n: int) -> Trace:
        """The first ``n`` requests in arrival order."""
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"{self.name}: head({n!r}): the number of requests must be an "
                             "int >= 1")
        return self._take(self.order()[:n])

    def scaled_to_rate(self, rate: float) -> Trace:
        """The same requests with arrival times rescaled to a mean rate (req/s): ``n``
        requests then span ``(n - 1) / rate`` seconds. A trace whose arrivals span 0 s
        (one request, or all at once) has no gap to rescale and is returned as recorded."""
        if isinstance(rate, bool) or not isinstance(rate, int | float | np.number) or not (
                math.isfinite(rate) and rate > 0):
            raise ValueError(f"workload.rate: {rate!r} must be a finite number of req/s > 0")
        o = self.order()
        a = self.arrival_s[o] - self.arrival_s[o][0]
        span = a[-1]
        if len(a) < 2 or span <= 0:
            return self._take(o, a)
        if (len(a) - 1) / rate > MAX_ARRIVAL_SPAN_S:
            raise ValueError(f"workload.rate: {rate:g} req/s spreads {self.name}'s {len(a)} "
                             f"requests over {(len(a) - 1) / rate:.4g} s; the arrivals may "
                             f"span at most {MAX_ARRIVAL_SPAN_S:.0e} s (a rate of at least "
                             f"{(len(a) - 1) / MAX_ARRIVAL_SPAN_S:.3g} req/s)")
        new = a * ((len(a) - 1) / rate) / span
        return self._take(o, new)

    def time_scaled(self, factor: float) -> Trace:
        """The same requests with every arrival time multiplied by ``factor`` (> 0)."""
        if not factor > 0:
            raise ValueError(f"time_scaled: factor={factor!r} must be > 0")
        o = np.arange(len(self))
        return self._take(o, self.arrival_s * float(factor))

    def num_hash_blocks(self) -> int:
        """Longest hash-id list (0 without hash ids)."""
        if not self.hash_ids:
            return 0
        return max(len(h) for h in self.hash_ids)

    def max_len(self) -> int:
        """Largest prompt + output length (of the whole workload, for a share of one:
        ``whole_max_len``)."""
        own = int(np.max(self.prompt_tokens + self.output_tokens))
        return own if self.whole_max_len is None else max(own, int(self.whole_max_len))


def dense_hash_ids(trace: Trace, width: int | None = None) -> tuple[np.ndarray, int]:
    """The trace's block ids in arrival order as a dense ``int32[n, H]`` table.

    Ids are renumbered ``0 .. U-1`` in increasing order of the original id (so the
    order of ids, which breaks eviction ties, is kept); ``-1`` pads. Returns
    (table, U).
    """
    n = len(trace)
    H = trace.num_hash_blocks() if width is None else int(width)
    out = np.full((n, H), -1, np.int32)
    if not trace.hash_ids or H == 0:
        return out, 0
    o = trace.order()
    lists = [trace.hash_ids[i] for i in o]
    if max(len(h) for h in lists) > H:
        raise ValueError(f"{trace.name}: a request has more than {H} hashed blocks")
    flat = np.concatenate([h for h in lists if len(h)]) if any(len(h) for h in lists) \
        else np.zeros(0, np.int64)
    uniq, inv = np.unique(flat, return_inverse=True)
    if uniq.size >= 2**31 - 1:
        raise ValueError(f"{trace.name}: too many distinct block ids ({uniq.size})")
    k = 0
    for r, h in enumerate(lists):
        out[r, :len(h)] = inv[k:k + len(h)]
        k += len(h)
    return out, int(uniq.size)


def _is_real(v) -> bool:
    """A Python or NumPy int or float (a NumPy scalar from ``np.arange`` counts; a bool
    does not)."""
    return not isinstance(v, bool) and isinstance(v, int | float | np.integer | np.floating)


def shared_hash_block_tokens(traces: Sequence[Trace]) -> int:
    """The one prefix block length (tokens per hash id) a batch of traces compiles with:
    that of the traces carrying block ids (a trace without ids has no block to share, so
    its default length does not count). Traces with ids but different lengths cannot
    share one compiled cache: ValueError naming them."""
    with_ids = [t for t in traces if t.num_hash_blocks() > 0]
    sizes = sorted({int(t.hash_block_tokens) for t in with_ids})
    if len(sizes) > 1:
        raise ValueError(
            f"workloads with prefix block ids must share one hash_block_tokens; these have "
            f"{', '.join(map(str, sizes))} tokens per block id: simulate them in separate "
            "calls (or sweeps)")
    return sizes[0] if sizes else int(traces[0].hash_block_tokens)


def to_workload(trace: Trace, max_requests: int | None = None,
                max_prefix_blocks: int | None = None) -> Workload:
    """Sort by arrival, pad to ``max_requests`` rows and move to the device.

    ``max_prefix_blocks`` pads the hash-id table to H columns (default: the trace's
    longest list; 0 drops the ids).
    """
    n = len(trace)
    R = n if max_requests is None else int(max_requests)
    if n > R:
        raise ValueError(f"max_requests={R} is smaller than the workload ({n} requests)")
    o = trace.order()
    arrival = np.full(R, np.inf)
    # relative to the first arrival, as every metric is: an epoch-based trace keeps the
    # clock's full resolution (a double-float clock at 1.7e9 s resolves 6 microseconds)
    arrival[:n] = trace.arrival_s[o] - trace.arrival_s[o[0]]
    prompt = np.ones(R, np.int32)
    prompt[:n] = trace.prompt_tokens[o]
    output = np.ones(R, np.int32)
    output[:n] = trace.output_tokens[o]
    ext = np.zeros(R, np.int32)
    if trace.external_tokens is not None:
        ext[:n] = trace.external_tokens[o]
    prio = np.zeros(R, np.int32)
    if trace.priority is not None:
        prio[:n] = trace.priority[o]
    # each level's requests in arrival order, level after level, then the padding rows
    prio_order = np.concatenate([np.argsort(prio[:n], kind="stable"),
                                 np.arange(n, R)]).astype(np.int32)
    prio_start = np.searchsorted(prio[:n][prio_order[:n]],
                                 np.arange(MAX_PRIORITY_LEVELS + 1)).astype(np.int32)
    hi, lo = split_f64(arrival)
    H = trace.num_hash_blocks() if max_prefix_blocks is None else int(max_prefix_blocks)
    table, U = dense_hash_ids(trace, H) if H > 0 else (np.zeros((n, 0), np.int32), 0)
    ids = np.full((R, H), -1, np.int32)
    ids[:n] = table
    return Workload(arrival_hi=hi, arrival_lo=lo, prompt_tokens=prompt,
                    output_tokens=output, num_requests=n, hash_ids=ids,
                    hash_block_tokens=trace.hash_block_tokens, num_hash_ids=U,
                    external_tokens=ext, priority=prio, prio_order=prio_order,
                    prio_start=prio_start)


def stack_workloads(workloads: list[Workload]) -> Workload:
    """Per-lane workloads (same R) stacked along a leading lane axis (hash-id tables
    are padded to the widest)."""
    H = max(w.max_prefix_blocks for w in workloads)

    def pad(w):
        x = w.hash_ids
        return jnp.pad(x, ((0, 0), (0, H - x.shape[-1])), constant_values=-1)

    return Workload(
        arrival_hi=jnp.stack([w.arrival_hi for w in workloads]),
        arrival_lo=jnp.stack([w.arrival_lo for w in workloads]),
        prompt_tokens=jnp.stack([w.prompt_tokens for w in workloads]),
        output_tokens=jnp.stack([w.output_tokens for w in workloads]),
        num_requests=jnp.stack([w.num_requests for w in workloads]),
        hash_ids=jnp.stack([pad(w) for w in workloads]),
        hash_block_tokens=jnp.stack([w.hash_block_tokens for w in workloads]),
        num_hash_ids=jnp.stack([w.num_hash_ids for w in workloads]),
        external_tokens=jnp.stack([w.external_tokens for w in workloads]),
        priority=jnp.stack([w.priority for w in workloads]),
        prio_order=jnp.stack([w.prio_order for w in workloads]),
        prio_start=jnp.stack([w.prio_start for w in workloads]),
    )


# --------------------------------------------------------------------------------------
# Synthetic generators
# --------------------------------------------------------------------------------------

LENGTH_KINDS = ("fixed", "uniform", "lognormal", "empirical")


def sample_lengths(spec, n: int, rng: np.random.Generator, field: str) -> np.ndarray:
    """Draw ``n`` token counts from a length spec.

    ``spec`` is an int (fixed), or a mapping with ``dist`` one of
    ``fixed`` (``value``), ``uniform`` (``low``, ``high`` inclusive),
    ``lognormal`` (``median``, ``sigma``; optional ``min``/``max`` clip), ``empirical``
    (``values``: a list to sample with replacement).
    """
    if isinstance(spec, bool):
        raise ValueError(f"{field}: {spec!r} is not a length (expected an int or a mapping)")
    if isinstance(spec, int | np.integer):
        if spec < 1:
            raise ValueError(f"{field}: {spec} must be >= 1")
        return np.full(n, int(spec), np.int64)
    if not isinstance(spec, Mapping):
        raise ValueError(f"{field}: {spec!r} is not a length (expected an int or a mapping "
                         f"with dist in {LENGTH_KINDS})")
    kind = spec.get("dist")
    allowed = {
        "fixed": {"value"},
        "uniform": {"low", "high"},
        "lognormal": {"median", "sigma", "min", "max"},
        "empirical": {"values"},
    }
    if not isinstance(kind, str) or kind not in allowed:
        raise ValueError(f"{field}.dist: {kind!r} is not one of {', '.join(LENGTH_KINDS)}")
    extra = set(spec) - allowed[kind] - {"dist"}
    if extra:
        raise ValueError(f"{field}: unknown key(s) {sorted(extra)} for dist={kind}; "
                         f"allowed: {sorted(allowed[kind])}")

    def need(key, lo=1, default=None, whole=True):
        if key not in spec and default is None:
            raise ValueError(f"{field}.{key}: missing (required for dist={kind})")
        v = spec.get(key, default)
        if not _is_real(v) or not lo <= v <= 2**30:
            raise ValueError(f"{field}.{key}: {v!r} must be a number in [{lo}, 2**30]")
        if whole and v != int(v):  # a token count (the scalar form refuses 2.5 too)
            raise ValueError(f"{field}.{key}: {v!r} is not a whole number of tokens")
        return v

    if kind == "fixed":
        return np.full(n, int(need("value")), np.int64)
    if kind == "uniform":
        lo, hi = int(need("low")), int(need("high"))
        if hi < lo:
            raise ValueError(f"{field}.high: {hi} must be >= low ({lo})")
        return rng.integers(lo, hi + 1, size=n)
    if kind == "lognormal":
        med, sig = float(need("median", whole=False)), float(need("sigma", 0, whole=False))
        lo = int(need("min", default=1))
        hi = int(need("max", default=2**20))
        if lo < 1 or hi < lo:
            raise ValueError(f"{field}: need 1 <= min <= max, got min={lo}, max={hi}")
        x = np.exp(np.log(med) + sig * rng.standard_normal(n))
        return np.clip(np.round(x), lo, hi).astype(np.int64)
    raw = spec.get("values", [])
    if isinstance(raw, list | tuple) and any(isinstance(x, bool | np.bool_) for x in raw):
        raise ValueError(f"{field}.values: true/false is not a length")  # [true, 3] was 1, 3
    values = np.asarray(raw)
    if values.size == 0 or values.ndim != 1:
        raise ValueError(f"{field}.values: must be a non-empty list of lengths")
    if not np.issubdtype(values.dtype, np.number) or not np.all(
            (values >= 1) & (values <= 2**30)):  # (NaN fails both)
        raise ValueError(f"{field}.values: every value must be a number in [1, 2**30]")
    if np.any(values != np.round(values)):
        bad = float(values[values != np.round(values)][0])
        raise ValueError(f"{field}.values: {bad!r} is not a whole number of tokens")
    return rng.choice(values.astype(np.int64), size=n, replace=True)


ARRIVAL_KINDS = ("poisson", "gamma", "all_at_once")


def synthetic(
    kind: str,
    num_requests: int,
    prompt_tokens=512,
    output_tokens=256,
    rate: float | None = None,
    cv: float = 2.0,
    seed: int = 0,
) -> Trace:
    """A synthetic trace.

    Args:
        kind: ``poisson`` (exponential gaps at ``rate``), ``gamma`` (Gamma gaps with mean
            ``1/rate`` and coefficient of variation ``cv``; cv > 1 is bursty) or
            ``all_at_once`` (every request at t = 0).
        num_requests: number of requests.
        prompt_tokens, output_tokens: length specs (see :func:`sample_lengths`).
        rate: mean arrival rate, requests/s (not used by ``all_at_once``).
        cv: Gamma coefficient of variation.
        seed: numpy seed; the same seed gives the same trace.
    """
    if kind not in ARRIVAL_KINDS:
        raise ValueError(f"workload.kind: {kind!r} is not one of {', '.join(ARRIVAL_KINDS)}")
    if isinstance(num_requests, bool) or not isinstance(num_requests, int | np.integer) or \
            num_requests < 1:
        raise ValueError(f"workload.num_requests: {num_requests!r} must be an int >= 1")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed: {seed!r} must be an integer >= 0")
    rng = np.random.default_rng(seed)
    n = int(num_requests)
    if kind == "all_at_once":
        arrival = np.zeros(n)
    else:
        if rate is None or not _is_real(rate) or \
                not (rate > 0 and np.isfinite(rate)):
            raise ValueError(f"workload.rate: {rate!r} must be a number > 0 (requests/s)")
        if kind == "poisson":
            gaps = rng.exponential(1.0 / rate, size=n)
        else:
            if not _is_real(cv) or \
                    not 1e-3 <= cv <= 1e3:
                raise ValueError(f"workload.cv: {cv!r} must be a number in [0.001, 1000]")
            shape = 1.0 / cv**2
            gaps = rng.gamma(shape, 1.0 / (rate * shape), size=n)
        arrival = np.cumsum(gaps) - gaps[0]  # first request at t = 0
    p = sample_lengths(prompt_tokens, n, rng, "workload.prompt_tokens")
    o = sample_lengths(output_tokens, n, rng, "workload.output_tokens")
    if kind == "all_at_once":
        name = "all at once"
    elif kind == "poisson":
        name = f"poisson, {rate:g} req/s"
    else:
        name = f"gamma, {rate:g} req/s, cv {cv:g}"
    return Trace(arrival, p, o, name=name)


def with_shared_prefixes(trace: Trace, num_groups: int, prefix_tokens: int,
                         block_tokens: int = DEFAULT_HASH_BLOCK_TOKENS,
                         seed: int = 0) -> Trace:
    """The trace with block ids for shared-prefix groups (system prompts).

    Each request joins one of ``num_groups`` groups at random; its first
    ``min(prefix_tokens, prompt)`` tokens are its group's shared prefix, the rest of the
    prompt is its own. Ids cover whole blocks of ``block_tokens`` tokens of the prompt.
    """
    for name, v, lo in (("num_groups", num_groups, 1), ("prefix_tokens", prefix_tokens, 0),
                        ("block_tokens", block_tokens, 1)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
            raise ValueError(f"with_shared_prefixes: {name}={v!r} must be an int >= {lo}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"with_shared_prefixes: seed={seed!r} must be an int >= 0")
    rng = np.random.default_rng(seed)
    U = int(block_tokens)
    shared = int(prefix_tokens) // U
    groups = rng.integers(0, num_groups, size=len(trace))
    nxt = num_groups * shared
    ids = []
    for p, g in zip(trace.prompt_tokens, groups, strict=True):
        n = int(p) // U
        k = min(shared, n)
        own = np.arange(nxt, nxt + n - k)
        nxt += n - k
        ids.append(np.concatenate([g * shared + np.arange(k), own]))
    return Trace(trace.arrival_s, trace.prompt_tokens, trace.output_tokens,
                 f"{trace.name}+prefix({num_groups}x{prefix_tokens})", ids, U)


def with_output_ids(trace: Trace) -> Trace:
    """The trace with a new block id for every whole block of a request's computed tokens
    that its ids do not name: its output blocks (and any prompt block without an id).

    vLLM hashes every full block it computes, output blocks included, so a request
    preempted and recomputed hits its own output blocks, and a finished request's blocks
    take their place in the eviction order; here only blocks with ids are cached
    (docs/semantics.md §5.1). A request computes ``P + O - 1`` tokens (the last output
    token is never fed back), so it gets ids up to ``floor((P + O - 1) / U)`` blocks. The
    new ids are shared with no other request (which content repeats is not known);
    existing ids are kept.
    """
    U = int(trace.hash_block_tokens)
    old = trace.hash_ids if trace.hash_ids is not None else [()] * len(trace)
    nxt = 1 + max((int(np.max(x)) for x in old if len(x)), default=-1)
    ids = []
    for x, p, o in zip(old, trace.prompt_tokens, trace.output_tokens, strict=True):
        x = np.asarray(x, np.int64)
        extra = max((int(p) + int(o) - 1) // U - len(x), 0)
        ids.append(np.concatenate([x, np.arange(nxt, nxt + extra, dtype=np.int64)]))
        nxt += extra
    return dataclasses.replace(trace, name=f"{trace.name}+output ids", hash_ids=ids)


def multi_turn_sessions(
    num_sessions: int,
    rate: float,
    turns=4,
    prompt_tokens=1024,
    new_tokens=256,
    output_tokens=256,
    think_time_s: float = 30.0,
    block_tokens: int = DEFAULT_HASH_BLOCK_TOKENS,
    seed: int = 0,
) -> Trace:
    """Multi-turn chat sessions with prefix-cache block ids.

    Sessions start as a Poisson process at ``rate`` sessions/s. A session has ``turns``
    turns. Turn 1's prompt has ``prompt_tokens`` tokens; turn ``k+1``'s prompt is turn
    ``k``'s prompt, then turn ``k``'s output, then ``new_tokens`` new tokens, so it
    extends the previous context. Each turn's block ids cover the whole blocks of
    ``block_tokens`` tokens of its prompt *and* output (docs/semantics.md §5.1), so the
    next turn can hit the KV its predecessor wrote while decoding.

    Turn ``k+1`` arrives a think time (exponential, mean ``think_time_s``) after turn
    ``k`` arrived. Arrivals are open loop, as in a trace replay: a turn whose
    predecessor has not finished still arrives, and reuses only what is cached by then.

    ``turns``, ``prompt_tokens``, ``new_tokens`` and ``output_tokens`` are length specs
    (see :func:`sample_lengths`); ``turns`` is drawn per session, the others per turn.
    """
    for name, v, lo in (("num_sessions", num_sessions, 1), ("block_tokens", block_tokens, 1)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
            raise ValueError(f"workload.{name}: {v!r} must be an int >= {lo}")
    for name, v in (("rate", rate), ("think_time_s", think_time_s)):
        if not _is_real(v) or not (
                np.isfinite(v) and (v > 0 if name == "rate" else v >= 0)):
            raise ValueError(f"workload.{name}: {v!r} must be a finite number "
                             f"{'> 0 (sessions/s)' if name == 'rate' else '>= 0 (s)'}")
    rng = np.random.default_rng(seed)
    n = int(num_sessions)
    U = int(block_tokens)
    starts = np.cumsum(rng.exponential(1.0 / rate, size=n))
    starts -= starts[0]
    n_turns = sample_lengths(turns, n, rng, "workload.turns")
    if int(n_turns.sum()) > MAX_SESSION_TURNS:
        raise ValueError(f"workload.turns: {int(n_turns.sum()):,} turns over {n} sessions; "
                         f"at most {MAX_SESSION_TURNS:,} in all (each turn's prompt holds "
                         "the session so far)")
    arrival, prompt, output, ids = [], [], [], []
    next_id = n_ids = 0
    for s in range(n):
        k = int(n_turns[s])
        firsts = sample_lengths(prompt_tokens, 1, rng, "workload.prompt_tokens")
        news = sample_lengths(new_tokens, k, rng, "workload.new_tokens")
        outs = sample_lengths(output_tokens, k, rng, "workload.output_tokens")
        gaps = rng.exponential(think_time_s, size=k) if think_time_s > 0 else np.zeros(k)
        t, context = float(starts[s]), 0
        for j in range(k):
            if j:
                t += float(gaps[j])
            p = int(firsts[0]) if j == 0 else context + int(news[j])
            o = int(outs[j])
            arrival.append(t)
            prompt.append(p)
            output.append(o)
            # the session's context is one token stream: block b has id next_id + b
            n_ids += (p + o) // U
            if n_ids > MAX_SESSION_IDS:
                raise ValueError(
                    f"workload.turns: the prompts of {n} sessions would hold more than "
                    f"{MAX_SESSION_IDS:,} block ids in all (each turn's prompt holds the "
                    f"session so far; session {s} reached turn {j + 1} of {k}); give "
                    "fewer turns or sessions")
            ids.append(next_id + np.arange((p + o) // U, dtype=np.int64))
            context = p + o
        next_id += context // U + 1
    tr = Trace(np.array(arrival), np.array(prompt), np.array(output),
               f"sessions({n}x{turns if isinstance(turns, int) else 'var'})", ids, U)
    return tr._take(tr.order())  # arrival order, so head(n) is the first n turns
