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
from collections.abc import Mapping

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from jaxsim.params import as_f32, as_i32
from jaxsim.timeutil import split_f64
from jaxsim.types import Array, Float, Int


class Workload(eqx.Module):
    """Padded, arrival-sorted request arrays (device side).

    Attributes:
        arrival_hi, arrival_lo: ``f32[R]`` arrival time as a (hi, lo) pair, seconds;
            padding rows are ``+inf``.
        prompt_tokens: ``i32[R]`` prompt lengths (padding: 1).
        output_tokens: ``i32[R]`` output lengths (padding: 1).
        num_requests: ``i32[]`` number of real rows (rows ``>= num_requests`` are padding).
    """

    arrival_hi: Float[Array, " R"] = eqx.field(converter=as_f32)
    arrival_lo: Float[Array, " R"] = eqx.field(converter=as_f32)
    prompt_tokens: Int[Array, " R"] = eqx.field(converter=as_i32)
    output_tokens: Int[Array, " R"] = eqx.field(converter=as_i32)
    num_requests: Int[Array, ""] = eqx.field(converter=as_i32)

    @property
    def max_requests(self) -> int:
        """R (static)."""
        return int(self.arrival_hi.shape[-1])


@dataclasses.dataclass
class Trace:
    """Requests on the host.

    Attributes:
        arrival_s: float64 arrival times, seconds (any order; sorted by ``to_workload``).
        prompt_tokens: int prompt lengths (>= 1).
        output_tokens: int output lengths (>= 1).
        name: where it came from (for reports).
    """

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    name: str = "trace"

    def __post_init__(self):
        self.arrival_s = np.asarray(self.arrival_s, np.float64).reshape(-1)
        self.prompt_tokens = np.asarray(self.prompt_tokens).reshape(-1)
        self.output_tokens = np.asarray(self.output_tokens).reshape(-1)
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
                if not np.all(np.isfinite(v)) or np.any(v != np.round(v)):
                    bad = int(np.flatnonzero(~np.isfinite(v) | (v != np.round(v)))[0])
                    raise ValueError(f"{self.name}: {field}[{bad}] = {v[bad]!r}; "
                                     "must be a whole number of tokens")
                v = v.astype(np.int64)
                setattr(self, field, v)
            if np.any(v < 1):
                bad = int(np.flatnonzero(v < 1)[0])
                raise ValueError(f"{self.name}: {field}[{bad}] = {int(v[bad])}; must be >= 1")
            if np.any(v > 2**30):
                bad = int(np.flatnonzero(v > 2**30)[0])
                raise ValueError(f"{self.name}: {field}[{bad}] = {int(v[bad])}; "
                                 "must be <= 2**30")
        a = self.arrival_s
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            bad = int(np.flatnonzero(~np.isfinite(a) | (a < 0))[0])
            raise ValueError(f"{self.name}: arrival_s[{bad}] = {a[bad]!r}; must be finite "
                             "and >= 0")

    def __len__(self) -> int:
        return len(self.arrival_s)

    def order(self) -> np.ndarray:
        """Stable arrival order (the order the simulator uses)."""
        return np.argsort(self.arrival_s, kind="stable")

    def head(self, n: int) -> Trace:
        """The first ``n`` requests in arrival order."""
        o = self.order()[:n]
        return Trace(self.arrival_s[o], self.prompt_tokens[o], self.output_tokens[o],
                     self.name)

    def scaled_to_rate(self, rate: float) -> Trace:
        """The same requests with arrival times rescaled to a mean rate (req/s)."""
        o = self.order()
        a = self.arrival_s[o] - self.arrival_s[o][0]
        span = a[-1]
        if len(a) < 2 or span <= 0:
            raise ValueError(f"{self.name}: cannot rescale a trace whose arrivals span 0 s")
        new = a * ((len(a) - 1) / rate) / span
        return Trace(new, self.prompt_tokens[o], self.output_tokens[o], self.name)

    def max_len(self) -> int:
        """Largest prompt + output length."""
        return int(np.max(self.prompt_tokens + self.output_tokens))


def to_workload(trace: Trace, max_requests: int | None = None) -> Workload:
    """Sort by arrival, pad to ``max_requests`` rows and move to the device."""
    n = len(trace)
    R = n if max_requests is None else int(max_requests)
    if n > R:
        raise ValueError(f"max_requests={R} is smaller than the workload ({n} requests)")
    o = trace.order()
    arrival = np.full(R, np.inf)
    arrival[:n] = trace.arrival_s[o]
    prompt = np.ones(R, np.int32)
    prompt[:n] = trace.prompt_tokens[o]
    output = np.ones(R, np.int32)
    output[:n] = trace.output_tokens[o]
    hi, lo = split_f64(arrival)
    return Workload(arrival_hi=hi, arrival_lo=lo, prompt_tokens=prompt,
                    output_tokens=output, num_requests=n)


def stack_workloads(workloads: list[Workload]) -> Workload:
    """Per-lane workloads (same R) stacked along a leading lane axis."""
    return Workload(
        arrival_hi=jnp.stack([w.arrival_hi for w in workloads]),
        arrival_lo=jnp.stack([w.arrival_lo for w in workloads]),
        prompt_tokens=jnp.stack([w.prompt_tokens for w in workloads]),
        output_tokens=jnp.stack([w.output_tokens for w in workloads]),
        num_requests=jnp.stack([w.num_requests for w in workloads]),
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
    if kind not in allowed:
        raise ValueError(f"{field}.dist: {kind!r} is not one of {', '.join(LENGTH_KINDS)}")
    extra = set(spec) - allowed[kind] - {"dist"}
    if extra:
        raise ValueError(f"{field}: unknown key(s) {sorted(extra)} for dist={kind}; "
                         f"allowed: {sorted(allowed[kind])}")

    def need(key, lo=1):
        if key not in spec:
            raise ValueError(f"{field}.{key}: missing (required for dist={kind})")
        v = spec[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not v >= lo:
            raise ValueError(f"{field}.{key}: {v!r} must be a number >= {lo}")
        return v

    if kind == "fixed":
        return np.full(n, int(need("value")), np.int64)
    if kind == "uniform":
        lo, hi = int(need("low")), int(need("high"))
        if hi < lo:
            raise ValueError(f"{field}.high: {hi} must be >= low ({lo})")
        return rng.integers(lo, hi + 1, size=n)
    if kind == "lognormal":
        med, sig = float(need("median")), float(need("sigma", 0))
        lo = int(spec.get("min", 1))
        hi = int(spec.get("max", 2**20))
        if lo < 1 or hi < lo:
            raise ValueError(f"{field}: need 1 <= min <= max, got min={lo}, max={hi}")
        x = np.exp(np.log(med) + sig * rng.standard_normal(n))
        return np.clip(np.round(x), lo, hi).astype(np.int64)
    values = np.asarray(spec.get("values", []))
    if values.size == 0 or values.ndim != 1:
        raise ValueError(f"{field}.values: must be a non-empty list of lengths")
    if not np.issubdtype(values.dtype, np.number) or np.any(values < 1):
        raise ValueError(f"{field}.values: every value must be a number >= 1")
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
    rng = np.random.default_rng(seed)
    n = int(num_requests)
    if kind == "all_at_once":
        arrival = np.zeros(n)
    else:
        if rate is None or isinstance(rate, bool) or not isinstance(rate, int | float) or \
                not (rate > 0 and np.isfinite(rate)):
            raise ValueError(f"workload.rate: {rate!r} must be a number > 0 (requests/s)")
        if kind == "poisson":
            gaps = rng.exponential(1.0 / rate, size=n)
        else:
            if isinstance(cv, bool) or not isinstance(cv, int | float) or not cv > 0:
                raise ValueError(f"workload.cv: {cv!r} must be a number > 0")
            shape = 1.0 / cv**2
            gaps = rng.gamma(shape, 1.0 / (rate * shape), size=n)
        arrival = np.cumsum(gaps) - gaps[0]  # first request at t = 0
    p = sample_lengths(prompt_tokens, n, rng, "workload.prompt_tokens")
    o = sample_lengths(output_tokens, n, rng, "workload.output_tokens")
    return Trace(arrival, p, o, name=f"{kind}({n})")
