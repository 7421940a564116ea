"""Production-shaped workloads from ServeGen's characterization of Alibaba Bailian.

ServeGen (Xiang et al., arXiv:2505.09999; data Apache-2.0, copied under
``jaxsim/data/traces/servegen/`` with its README) publishes, per anonymous client of a
model pool, the arrival statistics of every 10-minute window and the input and output
length distributions. No per-request trace is published. :func:`generate` draws one:

- **Arrivals.** ``deepseek-r1`` (one day, 73 clients): every client that is active in a
  window is a renewal process there, with inter-arrival times from the family ServeGen
  fitted (Gamma or Weibull, its shape) scaled to the window's mean rate, as ServeGen's
  own generator does; the pool's arrivals are the clients' together. The language pools
  ``m-large``, ``m-mid`` and ``m-small`` (14 days) ship only the pool's total rate per
  window (the per-client files are 275 MB), so their arrivals are a Poisson process whose
  rate is constant within each window and follows the pool's record across windows.
- **Rate.** ``rate`` (req/s) scales the whole record so that its mean over the record is
  ``rate``; a window then runs at ``rate`` times its recorded rate over the record's
  mean (a peak hour runs above ``rate``). ``None`` keeps the recorded rates.
- **Start.** Arrivals begin at ``start_s`` seconds into the record (any offset; the
  record repeats after its end) and are shifted so the first request arrives at 0.
- **Lengths.** Prompt and output lengths are drawn independently from the pool's
  length histogram (the clients' distributions weighted by their request counts): a bin
  by its share, then a length uniformly inside it (1-token bins below 64 tokens,
  64-token bins below 32,768, 1,024-token bins above). An output of 0 tokens (at most
  about 2 requests in 10^6 in the record) is drawn as 1. With ``max_tokens``, a request whose
  prompt plus output would exceed it is drawn again (vLLM rejects such a request), so
  the lengths follow the record's distribution given that limit.

The same arguments and seed give the same trace.
"""

from __future__ import annotations

import csv
import functools
import math
from importlib import resources

import numpy as np

from jaxsim.workload import MAX_ARRIVAL_SPAN_S, ArrivalSpanError, Trace

#: Pool names (``workload.pool``) and their names in ServeGen's data.
POOLS = {
    "m-large": "language/m-large",
    "m-mid": "language/m-mid",
    "m-small": "language/m-small",
    "deepseek-r1": "reason/deepseek-r1",
}
#: Length of one window of ServeGen's arrival statistics, seconds.
WINDOW_S = 600.0
_DIR = "data/traces/servegen"


def _path(name: str) -> str:
    return str(resources.files("jaxsim").joinpath(_DIR, name))


def _check_pool(pool) -> str:
    if pool not in POOLS:
        raise ValueError(f"workload.pool: {pool!r} is not one of {', '.join(POOLS)}")
    return POOLS[pool]


@functools.cache
def window_rates(pool: str) -> tuple[np.ndarray, np.ndarray]:
    """(window start times s, the pool's total rate in each window req/s) as recorded."""
    full = _check_pool(pool)
    starts, rates = [], []
    with open(_path("servegen_aggregate_rate_10min.csv"), newline="") as f:
        for row in csv.DictReader(f):
            if row["category_model"] == full:
                starts.append(float(row["window_start_s"]))
                rates.append(float(row["total_rate_rps"]))
    starts, rates = np.asarray(starts), np.asarray(rates)
    o = np.argsort(starts)
    return starts[o], rates[o]


@functools.cache
def _clients() -> dict[str, np.ndarray]:
    """deepseek-r1's active client-windows: start, rate, family (0 Gamma, 1 Weibull),
    shape, scale."""
    cols: dict[str, list] = {k: [] for k in ("start", "rate", "weibull", "shape", "scale")}
    with open(_path("deepseek_r1_clients.csv"), newline="") as f:
        for row in csv.DictReader(f):
            cols["start"].append(float(row["window_start_s"]))
            cols["rate"].append(float(row["rate"]))
            cols["weibull"].append(row["family"] == "Weibull")
            cols["shape"].append(float(row["shape"]))
            cols["scale"].append(float(row["scale"]))
    return {k: np.asarray(v) for k, v in cols.items()}


@functools.cache
def length_hist(pool: str, field: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bin low ends, bin widths, shares summing to 1) of ``input_tokens`` or
    ``output_tokens`` for a pool."""
    full = _check_pool(pool)
    lo, frac = [], []
    with open(_path("servegen_aggregate_length_hist.csv"), newline="") as f:
        for row in csv.DictReader(f):
            if row["category_model"] == full and row["field"] == field:
                lo.append(int(row["bin_lo"]))
                frac.append(float(row["frac"]))
    lo, frac = np.asarray(lo, np.int64), np.asarray(frac)
    width = np.where(lo < 64, 1, np.where(lo < 32768, 64, 1024))
    return lo, width, frac / frac.sum()


def mean_rate(pool: str) -> float:
    """The pool's mean rate over its whole record, req/s."""
    return float(np.mean(window_rates(pool)[1]))


def _draw_lengths(pool: str, field: str, n: int, rng: np.random.Generator) -> np.ndarray:
    lo, width, p = length_hist(pool, field)
    b = rng.choice(len(lo), size=n, p=p)
    return lo[b] + np.floor(rng.random(n) * width[b]).astype(np.int64)


@functools.cache
def _client_rows() -> dict[float, np.ndarray]:
    """deepseek-r1: the rows of ``_clients()`` active in each window, by window start."""
    start = _clients()["start"]
    return {float(w): np.flatnonzero(start == w) for w in np.unique(start)}


def _gaps(weibull: bool, k: float, sc: float, n: int, rng) -> np.ndarray:
    return sc * rng.weibull(k, size=n) if weibull else rng.gamma(k, sc, size=n)


def _renewal(weibull: bool, k: float, sc: float, r: float, ws: float, rng) -> np.ndarray:
    """One client's arrivals in the window ``[ws, ws + WINDOW_S)``: a renewal process of
    the fitted family's gaps scaled to mean ``1/r``, begun at a uniform fraction of a
    gap."""
    mean = sc * math.gamma(1.0 + 1.0 / k) if weibull else k * sc
    factor = 1.0 / (r * mean)
    expect = r * WINDOW_S
    m = int(expect + 10.0 * math.sqrt(expect + 1.0) + 16)  # gaps to cover the window
    t = ws + rng.random() * _gaps(weibull, k, sc, 1, rng)[0] * factor
    got = []
    while t < ws + WINDOW_S:
        gaps = _gaps(weibull, k, sc, m, rng) * factor
        at = t + np.concatenate(([0.0], np.cumsum(gaps[:-1])))
        got.append(at[at < ws + WINDOW_S])
        t = at[-1] + gaps[-1]
    return np.concatenate(got) if got else np.zeros(0)


def _window(pool: str, i: int, scale: float, rng) -> np.ndarray:
    """Sorted arrivals (record time) in window ``i`` of the pool's record."""
    starts, rates = window_rates(pool)
    ws = float(starts[i])
    if pool != "deepseek-r1":
        count = rng.poisson(rates[i] * scale * WINDOW_S)
        return np.sort(ws + rng.random(count) * WINDOW_S)
    c = _clients()
    rows = _client_rows().get(ws, np.zeros(0, np.int64))
    at = [_renewal(bool(c["weibull"][j]), c["shape"][j], c["scale"][j],
                   c["rate"][j] * scale, ws, rng) for j in rows]
    return np.sort(np.concatenate(at)) if at else np.zeros(0)


def generate(pool: str, num_requests: int, rate: float | None = None,
             start_s: float = 0.0, max_tokens: int | None = None, seed: int = 0) -> Trace:
    """A trace of ``num_requests`` requests shaped like ServeGen's ``pool`` (see the
    module docstring for the model).

    Args:
        pool: ``m-large``, ``m-mid``, ``m-small`` or ``deepseek-r1``.
        num_requests: number of requests.
        rate: the mean rate over the whole record, req/s (``None``: as recorded).
        start_s: where in the record the arrivals begin, seconds (>= 0; wraps around).
        max_tokens: longest request (prompt + output) drawn; ``None``: no limit.
        seed: numpy seed.
    """
    _check_pool(pool)
    if isinstance(num_requests, bool) or not isinstance(num_requests, int | np.integer) \
            or num_requests < 1:
        raise ValueError(f"workload.num_requests: {num_requests!r} must be an int >= 1")
    if rate is not None and not (isinstance(rate, int | float) and not isinstance(rate, bool)
                                 and 0 < rate < math.inf):
        raise ValueError(f"workload.rate: {rate!r} must be a number > 0 (requests/s) or null")
    if isinstance(start_s, bool) or not isinstance(start_s, int | float) or \
            not 0 <= start_s < math.inf:
        raise ValueError(f"workload.start_s: {start_s!r} must be a number >= 0 (seconds)")
    if max_tokens is not None and (isinstance(max_tokens, bool)
                                   or not isinstance(max_tokens, int | np.integer)
                                   or max_tokens < 2):
        raise ValueError(f"workload.max_tokens: {max_tokens!r} must be an int >= 2 (a "
                         "prompt and an output of at least one token each) or null")
    n = int(num_requests)
    rng = np.random.default_rng(seed)
    starts, rates = window_rates(pool)
    nwin = len(starts)
    record = nwin * WINDOW_S
    scale = 1.0 if rate is None else rate / mean_rate(pool)
    per_record = float(np.sum(rates)) * scale * WINDOW_S
    if n / per_record * record > MAX_ARRIVAL_SPAN_S:
        raise ArrivalSpanError(
            f"workload.rate: {n} requests at a mean of {per_record / record:.3g} req/s "
            f"would span about {n / per_record * record:.3g} s; the arrivals may span at "
            f"most {MAX_ARRIVAL_SPAN_S:.0e} s")
    t0 = start_s % record
    w0 = int(t0 // WINDOW_S)
    got, have, k = [], 0, 0
    while have < n:  # window by window from the one holding start_s, wrapping around
        at = _window(pool, (w0 + k) % nwin, scale, rng) + ((w0 + k) // nwin) * record
        if k == 0:
            at = at[at >= t0]
        got.append(at)
        have += len(at)
        k += 1
    arrival = np.concatenate(got)[:n]
    arrival = arrival - arrival[0]
    prompt = _draw_lengths(pool, "input_tokens", n, rng)
    output = np.maximum(_draw_lengths(pool, "output_tokens", n, rng), 1)
    if max_tokens is not None:
        for _ in range(1000):
            bad = prompt + output > max_tokens
            if not bad.any():
                break
            k = int(bad.sum())
            prompt[bad] = _draw_lengths(pool, "input_tokens", k, rng)
            output[bad] = np.maximum(_draw_lengths(pool, "output_tokens", k, rng), 1)
        else:
            raise ValueError(f"workload.max_tokens: {max_tokens} is shorter than almost "
                             f"every request of pool {pool}; raise it")
    shape = "recorded rates" if rate is None else \
        f"mean {rate:g} req/s (x{scale:.3g} of recorded)"
    return Trace(arrival, prompt, output,
                 name=f"servegen {pool} from {t0 / 3600:.4g} h into its record, {shape}")
