"""Reference event simulator: a plain sequential oracle for docs/semantics.md.

This module implements the contract in ``docs/semantics.md`` (one engine iteration,
the cost model and the metrics) as a literal, sequential Python loop over Python lists
and float64 scalars. It was written from that document alone, independently of the
``jaxsim`` package, and imports nothing from it: its purpose is to be the oracle the
vectorised JAX simulator is compared against, so that a misunderstanding shared by
both implementations cannot hide.

Section numbers in comments (``§2.2`` and so on) refer to ``docs/semantics.md``.
Where the document leaves a choice open, the comment marked ``AMBIGUITY`` says which
reading is implemented (the most literal one).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# --------------------------------------------------------------------------------------
# Configuration keys (a flat dict; every key required, no other key allowed)
# --------------------------------------------------------------------------------------

SCHEDULER_KEYS: tuple[str, ...] = (
    "mode",
    "enable_chunked_prefill",
    "max_num_seqs",
    "max_num_batched_tokens",
    "long_prefill_token_threshold",
    "block_size",
    "num_gpu_blocks",
    "watermark_blocks",
    "max_model_len",
    "tp",
)
MODEL_KEYS: tuple[str, ...] = (
    "num_layers",
    "hidden_size",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "ffn_size",
    "vocab_size",
    "num_experts",
    "experts_per_token",
    "bytes_per_weight",
    "bytes_per_kv",
)
HARDWARE_KEYS: tuple[str, ...] = ("peak_flops", "hbm_bw", "link_bw")
#: Roofline operators with their own coefficients (docs/semantics.md §3).
ROOF_COST_OPS: tuple[str, ...] = (
    "qkv_proj", "o_proj", "mlp_up", "mlp_down", "lm_head", "attn_prefill", "attn_decode",
)
#: Elementwise coefficient groups.
ELEM_COST_GROUPS: tuple[str, ...] = (
    "norm", "residual_add", "activation", "rotary", "kv_write", "embedding", "sampling",
)
COST_KEYS: tuple[str, ...] = (
    *(f"{k}_{op}" for op in ROOF_COST_OPS for k in ("eta_c", "f0", "eta_m", "b0")),
    *(f"{k}_{g}" for g in ELEM_COST_GROUPS for k in ("eta_m", "b0")),
    "ar_latency_s",
    "eta_ar",
    "kernel_overhead_s",
    "cpu_iter_s",
    "cpu_seq_s",
    "smooth_p",
)
SLO_KEYS: tuple[str, ...] = ("ttft_slo_s", "tpot_slo_s")
CONFIG_KEYS: tuple[str, ...] = (
    SCHEDULER_KEYS + MODEL_KEYS + HARDWARE_KEYS + COST_KEYS + SLO_KEYS
)

_INT_KEYS: frozenset[str] = frozenset(
    (
        "max_num_seqs",
        "max_num_batched_tokens",
        "long_prefill_token_threshold",
        "block_size",
        "num_gpu_blocks",
        "watermark_blocks",
        "max_model_len",
        "tp",
        "num_layers",
        "hidden_size",
        "num_heads",
        "num_kv_heads",
        "head_dim",
        "ffn_size",
        "vocab_size",
        "num_experts",
        "experts_per_token",
    )
)

# Activation bytes per element (§3: "Activations are ab = 2 bytes").
AB: float = 2.0

_PERCENTILES: tuple[int, ...] = (50, 90, 99)


def ceil_div(a: int, b: int) -> int:
    """Integer ceiling division, ``ceil_div(a, b) = -(-a // b)`` as in the notation."""
    return -(-a // b)


def _as_int(name: str, value: Any) -> int:
    """Converts an integral config value to ``int``, rejecting fractional values."""
    if isinstance(value, bool):
        raise ValueError(f"config[{name!r}] must be an integer, got bool {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    as_float = float(value)
    if not math.isfinite(as_float) or as_float != int(as_float):
        raise ValueError(f"config[{name!r}] must be an integer, got {value!r}")
    return int(as_float)


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Checks a flat lane configuration and returns a normalised copy.

    Args:
        config: flat mapping with exactly the keys of ``CONFIG_KEYS``.

    Returns:
        A new dict with integer fields as ``int``, other numeric fields as ``float``,
        ``mode`` as ``str`` and ``enable_chunked_prefill`` as ``bool``.

    Raises:
        KeyError: a required key is missing.
        ValueError: an unknown key is present, or a value makes the simulation
            undefined (not to be confused with an infeasible lane, which is a flag).
    """
    missing = [key for key in CONFIG_KEYS if key not in config]
    if missing:
        raise KeyError(f"config is missing keys: {missing}")
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"config has unknown keys: {unknown}")

    cfg: dict[str, Any] = {}
    for key in CONFIG_KEYS:
        value = config[key]
        if key == "mode":
            if value not in ("v1", "v0"):
                raise ValueError(f"config['mode'] must be 'v1' or 'v0', got {value!r}")
            cfg[key] = str(value)
        elif key == "enable_chunked_prefill":
            cfg[key] = bool(value)
        elif key in _INT_KEYS:
            cfg[key] = _as_int(key, value)
        else:
            cfg[key] = float(value)

    # Values that would make the semantics undefined (division by zero, a lane that
    # can never schedule a token and would loop forever). These are input errors, not
    # the feasibility rules of §0, which are reported as the `infeasible` flag.
    for key in ("block_size", "tp", "max_num_seqs", "max_num_batched_tokens"):
        if cfg[key] < 1:
            raise ValueError(f"config[{key!r}] must be >= 1, got {cfg[key]}")
    for key in ("num_heads", "num_kv_heads", "num_experts", "experts_per_token"):
        if cfg[key] < 1:
            raise ValueError(f"config[{key!r}] must be >= 1, got {cfg[key]}")
    for key in ("long_prefill_token_threshold", "watermark_blocks"):
        if cfg[key] < 0:
            raise ValueError(f"config[{key!r}] must be >= 0, got {cfg[key]}")
    if cfg["smooth_p"] < 1.0:
        raise ValueError(f"config['smooth_p'] must be >= 1, got {cfg['smooth_p']}")
    for key in ("peak_flops", "hbm_bw", "link_bw"):
        if not cfg[key] > 0.0:
            raise ValueError(f"config[{key!r}] must be > 0, got {cfg[key]}")
    return cfg


# --------------------------------------------------------------------------------------
# §3 cost model
# --------------------------------------------------------------------------------------


class CostModel:
    """The §3 iteration-time formula for one lane, with the per-lane constants cached.

    Attributes:
        cfg: the normalised lane configuration.
    """

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        """Precomputes the per-GPU sizes of §3.

        Args:
            cfg: a configuration already normalised by ``validate_config``.
        """
        self.cfg = cfg
        tp = cfg["tp"]
        self.L = float(cfg["num_layers"])
        self.h = float(cfg["hidden_size"])
        self.hd = float(cfg["head_dim"])
        self.V = float(cfg["vocab_size"])
        self.E = float(cfg["num_experts"])
        self.k = float(cfg["experts_per_token"])
        self.bw_w = cfg["bytes_per_weight"]
        self.tp = tp
        # Per-GPU sizes. AMBIGUITY: f/tp and V/tp need not be integers; they are used
        # as real numbers (plain division), exactly as written.
        self.nh_g = cfg["num_heads"] / tp
        self.nkv_g = max(cfg["num_kv_heads"] / tp, 1.0)
        self.f_g = cfg["ffn_size"] / tp
        self.V_g = cfg["vocab_size"] / tp
        self.kvb = 2.0 * self.nkv_g * self.hd * cfg["bytes_per_kv"]
        self.peak = cfg["peak_flops"]
        self.hbm = cfg["hbm_bw"]
        self.link = cfg["link_bw"]
        self.k_o = cfg["kernel_overhead_s"]
        self.p = cfg["smooth_p"]
        self.fam = {
            op: (
                cfg[f"eta_c_{op}"],
                cfg[f"f0_{op}"],
                cfg[f"eta_m_{op}"],
                cfg[f"b0_{op}"],
            )
            for op in ROOF_COST_OPS
        }

    def smax(self, a: float, b: float) -> float:
        """Smooth maximum ``(a^p + b^p)^(1/p)``, 0 if ``a = b = 0``.

        AMBIGUITY/numerics: evaluated as ``m * ((a/m)^p + (b/m)^p)^(1/p)`` with
        ``m = max(a, b)``, which is the same number mathematically but does not
        underflow to 0 for large ``p`` and tiny times (seconds ~1e-5 raised to p).
        """
        if a == 0.0 and b == 0.0:
            return 0.0
        p = self.p
        m = a if a >= b else b
        return m * ((a / m) ** p + (b / m) ** p) ** (1.0 / p)

    def roof(self, fam: str, flops: float, nbytes: float) -> float:
        """``roof(op, F, B)`` of §3 (``fam`` is the operator name)."""
        eta_c, f0, eta_m, b0 = self.fam[fam]
        t_c = (flops + f0) / (self.peak * eta_c)
        t_m = (nbytes + b0) / (self.hbm * eta_m)
        return self.smax(t_c, t_m) + self.k_o

    def mem(self, g: str, nbytes: float) -> float:
        """``mem(g, B)`` of §3 (memory-bound elementwise kernel of group ``g``)."""
        cfg = self.cfg
        return (nbytes + cfg[f"b0_{g}"]) / (self.hbm * cfg[f"eta_m_{g}"]) + self.k_o

    def gemm(self, op: str, M: float, K: float, N: float, W: float) -> float:
        """``gemm(op, M, K, N, W)`` of §3; 0 when ``M`` is 0."""
        if M <= 0:
            return 0.0
        return self.roof(op, 2.0 * M * K * N, W + AB * (M * K + M * N))

    def time(
        self,
        T: int,
        n: int,
        ns: int,
        Tp: int,
        Ap: float,
        Kp: int,
        D: int,
        Kd: int,
    ) -> float:
        """Iteration time ``dt`` from the batch features of §3.

        Args:
            T: all scheduled tokens.
            n: scheduled requests.
            ns: scheduled requests that sample a token.
            Tp: prefill tokens.
            Ap: causal query-key pairs of the prefills.
            Kp: Σ (c + q) over prefills.
            D: number of decodes.
            Kd: Σ (c + 1) over decodes.

        Returns:
            The iteration time in seconds; 0 for an empty batch (§2.5).
        """
        if T == 0:
            # §2.5: no scheduled token, no time ("all terms are 0 when T = 0").
            return 0.0
        cfg = self.cfg
        h, hd, k, bw_w = self.h, self.hd, self.k, self.bw_w
        nh_g, nkv_g, f_g, V_g, kvb = self.nh_g, self.nkv_g, self.f_g, self.V_g, self.kvb
        Tf = float(T)
        E = self.E
        e_act = E * (1.0 - (1.0 - k / E) ** T)

        qkv_n = (nh_g + 2.0 * nkv_g) * hd
        qkv = self.gemm("qkv_proj", Tf, h, qkv_n, bw_w * h * qkv_n)
        o = self.gemm("o_proj", Tf, nh_g * hd, h, bw_w * nh_g * hd * h)
        up = self.gemm("mlp_up", Tf * k, h, 2.0 * f_g, bw_w * e_act * h * 2.0 * f_g)
        down = self.gemm("mlp_down", Tf * k, f_g, h, bw_w * e_act * f_g * h)
        attnp = (
            self.roof(
                "attn_prefill",
                4.0 * nh_g * hd * Ap,
                AB * 2.0 * Tp * nh_g * hd + kvb * Kp,
            )
            if Tp > 0
            else 0.0
        )
        attnd = (
            self.roof(
                "attn_decode",
                4.0 * nh_g * hd * Kd,
                AB * 2.0 * D * nh_g * hd + kvb * Kd,
            )
            if D > 0
            else 0.0
        )
        mem = self.mem
        elem = (
            2.0 * mem("norm", 2.0 * AB * Tf * h)  # two RMSNorms
            + 2.0 * mem("residual_add", 3.0 * AB * Tf * h)  # two residual adds
            + mem("activation", 3.0 * AB * Tf * k * f_g)  # SwiGLU activation
            + mem("rotary", 2.0 * AB * Tf * (nh_g + nkv_g) * hd)  # rotary embedding
            + mem("kv_write", 2.0 * kvb * Tf)  # KV-cache write
        )
        tp = self.tp
        if tp > 1:
            ar = 2.0 * (
                cfg["ar_latency_s"]
                + (2.0 * (tp - 1) / tp) * AB * Tf * h / (self.link * cfg["eta_ar"])
            )
        else:
            ar = 0.0
        layer = qkv + o + up + down + attnp + attnd + elem + ar

        embed = mem("embedding", 2.0 * AB * Tf * h)
        fnorm = mem("norm", 2.0 * AB * Tf * h)
        lmhead = self.gemm("lm_head", float(ns), h, V_g, bw_w * h * V_g)
        sample = mem("sampling", 4.0 * ns * self.V) if ns > 0 else 0.0
        return (
            self.L * layer
            + embed
            + fnorm
            + lmhead
            + sample
            + cfg["cpu_iter_s"]
            + cfg["cpu_seq_s"] * n
        )

    def batch_time(self, batch: Sequence[tuple[int, int, int, int]]) -> float:
        """Iteration time of a batch of ``(q, c, n_known, g)`` tuples (see §3)."""
        T = n = ns = Tp = Kp = D = Kd = 0
        Ap = 0.0
        for q, c, n_known, g in batch:
            T += q
            n += 1
            if c + q == n_known:
                ns += 1
            # §3: a decode has g >= 1 and exactly one unknown-to-cache token.
            if g >= 1 and n_known - c == 1:
                D += 1
                Kd += c + 1
            else:
                Tp += q
                Ap += q * (c + (q + 1) / 2.0)
                Kp += c + q
        return self.time(T, n, ns, Tp, Ap, Kp, D, Kd)


def iteration_time(
    config: Mapping[str, Any], batch: Sequence[tuple[int, int, int, int]]
) -> float:
    """Evaluates the §3 cost model on one scheduled batch.

    Args:
        config: flat lane configuration (same keys as ``simulate_reference``).
        batch: one ``(q, c, n_known, g)`` tuple per scheduled request: tokens
            scheduled this iteration, computed tokens before it, ``P + g``, and
            generated tokens before it.

    Returns:
        ``dt`` in seconds (0.0 for an empty batch).
    """
    return CostModel(validate_config(config)).batch_time(batch)


# --------------------------------------------------------------------------------------
# §0 feasibility
# --------------------------------------------------------------------------------------


def is_feasible(
    cfg: Mapping[str, Any], prompt: Sequence[int], output: Sequence[int]
) -> bool:
    """The feasibility rules of §0 (checked once per lane).

    Args:
        cfg: normalised configuration.
        prompt: prompt lengths P.
        output: output lengths O.

    Returns:
        True when every rule holds.
    """
    chunked = cfg["enable_chunked_prefill"] and cfg["mode"] == "v1"
    mml = cfg["max_model_len"]
    usable = cfg["num_gpu_blocks"] - cfg["watermark_blocks"]
    if not (usable >= ceil_div(mml, cfg["block_size"]) and cfg["num_gpu_blocks"] > 0):
        return False
    if any(p + o > mml for p, o in zip(prompt, output, strict=True)):
        return False
    if not chunked and cfg["max_num_batched_tokens"] < mml:
        return False
    if cfg["max_num_batched_tokens"] < cfg["max_num_seqs"]:
        return False
    nh, nkv, tp = cfg["num_heads"], cfg["num_kv_heads"], cfg["tp"]
    return nh % tp == 0 and (nkv % tp == 0 or tp % nkv == 0)


# --------------------------------------------------------------------------------------
# Workload
# --------------------------------------------------------------------------------------


def _check_workload(
    workload: Mapping[str, Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validates and converts the workload arrays (§0 Workload)."""
    for key in ("arrival_s", "prompt_tokens", "output_tokens"):
        if key not in workload:
            raise KeyError(f"workload is missing {key!r}")
    arrival = np.asarray(workload["arrival_s"], dtype=np.float64).reshape(-1)
    prompt_raw = np.asarray(workload["prompt_tokens"]).reshape(-1)
    output_raw = np.asarray(workload["output_tokens"]).reshape(-1)
    if not (arrival.shape == prompt_raw.shape == output_raw.shape):
        raise ValueError("workload arrays must have the same length")
    prompt = prompt_raw.astype(np.int64)
    output = output_raw.astype(np.int64)
    if np.any(prompt != prompt_raw) or np.any(output != output_raw):
        raise ValueError("prompt_tokens and output_tokens must be integers")
    if not np.all(np.isfinite(arrival)) or np.any(arrival < 0):
        raise ValueError("arrival_s must be finite and >= 0")
    if np.any(prompt < 1) or np.any(output < 1):
        raise ValueError("prompt_tokens and output_tokens must be >= 1")
    return arrival, prompt, output


# --------------------------------------------------------------------------------------
# §4 metrics
# --------------------------------------------------------------------------------------


def _stats(prefix: str, values: np.ndarray) -> dict[str, float]:
    """Mean and p50/p90/p99 (numpy's default linear interpolation); NaN if empty."""
    out: dict[str, float] = {}
    if values.size == 0:
        out[f"{prefix}_mean_s"] = math.nan
        for pct in _PERCENTILES:
            out[f"{prefix}_p{pct}_s"] = math.nan
        return out
    out[f"{prefix}_mean_s"] = float(np.mean(values))
    for pct in _PERCENTILES:
        out[f"{prefix}_p{pct}_s"] = float(np.percentile(values, pct))
    return out


def _ratio(num: float, den: float) -> float:
    """``num / den``, NaN when the duration is undefined or not positive."""
    if not math.isfinite(den) or den <= 0.0:
        return math.nan
    return num / den


def lane_metrics(
    arrival: np.ndarray,
    prompt: np.ndarray,
    output: np.ndarray,
    first_token: np.ndarray,
    finish: np.ndarray,
    admitted: np.ndarray,
    completed: np.ndarray,
    ttft_slo: float,
    tpot_slo: float,
) -> dict[str, float]:
    """The per-lane metrics of §4 over completed requests.

    Args:
        arrival: arrival times, shape (R,).
        prompt: prompt lengths, shape (R,).
        output: output lengths, shape (R,).
        first_token: first-token times, shape (R,).
        finish: finish times, shape (R,).
        admitted: first-admission times, shape (R,).
        completed: completion mask, shape (R,).
        ttft_slo: TTFT SLO in seconds.
        tpot_slo: TPOT SLO in seconds.

    Returns:
        A dict of floats (NaN where undefined).
    """
    done = completed
    ttft = first_token[done] - arrival[done]
    e2e = finish[done] - arrival[done]
    queue = admitted[done] - arrival[done]
    out_done = output[done]
    multi = out_done > 1
    tpot = (e2e[multi] - ttft[multi]) / (out_done[multi] - 1)

    metrics: dict[str, float] = {}
    metrics.update(_stats("ttft", ttft))
    metrics.update(_stats("tpot", tpot))
    metrics.update(_stats("e2e", e2e))
    metrics.update(_stats("queue", queue))

    itl_den = float(np.sum(out_done[multi] - 1))
    metrics["itl_mean_s"] = (
        float(np.sum(e2e[multi] - ttft[multi])) / itl_den if itl_den > 0 else math.nan
    )

    num_completed = int(np.sum(done))
    # AMBIGUITY: "first arrival" is the earliest arrival of *all* requests of the
    # workload (the start of the benchmark), and "last finish" the latest finish among
    # completed requests. The two readings only differ for truncated lanes.
    if num_completed > 0:
        duration = float(np.max(finish[done])) - float(np.min(arrival))
    else:
        duration = math.nan
    metrics["duration_s"] = duration
    metrics["throughput_rps"] = _ratio(float(num_completed), duration)
    metrics["input_tps"] = _ratio(float(np.sum(prompt[done])), duration)
    metrics["output_tps"] = _ratio(float(np.sum(out_done)), duration)
    tpot_all = np.full(ttft.shape, math.nan)
    tpot_all[multi] = tpot
    good = (ttft <= ttft_slo) & ((out_done == 1) | (tpot_all <= tpot_slo))
    metrics["goodput_rps"] = _ratio(float(np.sum(good)), duration)
    return metrics


# --------------------------------------------------------------------------------------
# §1-§2 the simulator
# --------------------------------------------------------------------------------------


def simulate_reference(
    workload: Mapping[str, Any],
    config: Mapping[str, Any],
    max_iterations: int | None = None,
    *,
    trace: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Simulates one lane sequentially, following docs/semantics.md literally.

    Args:
        workload: ``{"arrival_s", "prompt_tokens", "output_tokens"}`` arrays of equal
            length, in any order.
        config: flat lane configuration with exactly the keys of ``CONFIG_KEYS``.
        max_iterations: iteration budget (iterations that scheduled at least one
            token); when the lane is not done after that many, it stops and is marked
            truncated. None means no budget.
        trace: optional list; if given, one dict per iteration is appended with keys
            ``start_s``, ``dt``, ``end_s``, ``used_blocks``, ``batch`` (a list of
            ``(request, q, c, n_known, g)`` with the request's original index and the
            state before the iteration), ``preempted`` (original indices of the
            victims, in preemption order) and ``kind`` (``"mixed"`` in v1,
            ``"prefill"`` or ``"decode"`` in v0). For tests and debugging.

    Returns:
        Per-request numpy arrays in the original input order (``first_token_s``,
        ``finish_s``, ``admitted_s``, ``ttft_s``, ``e2e_s``, ``queue_s``,
        ``preemptions``, ``tokens_scheduled``, ``generated``, ``completed``), lane
        scalars (``infeasible``, ``truncated``, ``iterations``, ``busy_s``,
        ``total_tokens``, ``total_preemptions``, ``kv_occupancy_mean``,
        ``kv_occupancy_peak``, ``num_completed``) and ``metrics`` (§4).

    Raises:
        KeyError: a config or workload key is missing.
        ValueError: an unknown config key or an invalid value.
    """
    cfg = validate_config(config)
    arrival_in, prompt_in, output_in = _check_workload(workload)
    if max_iterations is not None and max_iterations < 0:
        raise ValueError(f"max_iterations must be >= 0, got {max_iterations}")
    R = int(arrival_in.shape[0])

    # §0: order requests by (arrival_s, original index) with a stable sort.
    order = np.argsort(arrival_in, kind="stable")
    arr: list[float] = [float(arrival_in[i]) for i in order]
    P: list[int] = [int(prompt_in[i]) for i in order]
    O: list[int] = [int(output_in[i]) for i in order]
    orig: list[int] = [int(i) for i in order]

    # Per-request state, indexed by position in the sorted order.
    c: list[int] = [0] * R
    g: list[int] = [0] * R
    first_token: list[float] = [math.nan] * R
    finish: list[float] = [math.nan] * R
    admitted: list[float] = [math.nan] * R
    preemptions: list[int] = [0] * R
    tokens: list[int] = [0] * R
    finished: list[bool] = [False] * R

    mode = cfg["mode"]
    # §0/§2.4: chunked prefill is forced off in v0.
    chunked = cfg["enable_chunked_prefill"] and mode == "v1"
    thr = cfg["long_prefill_token_threshold"] if chunked else 0
    bs = cfg["block_size"]
    num_blocks = cfg["num_gpu_blocks"]
    watermark = cfg["watermark_blocks"]
    max_seqs = cfg["max_num_seqs"]
    max_tokens = cfg["max_num_batched_tokens"]

    infeasible = not is_feasible(cfg, P, O)
    truncated = False
    iterations = 0
    busy = 0.0
    total_tokens = 0
    total_preemptions = 0
    kv_integral = 0.0
    kv_peak = 0
    cost = CostModel(cfg)

    # §1: `running` in order of (most recent) admission; `waiting` holds preempted
    # requests at the front (most recently preempted first) followed by arrived,
    # never-admitted requests in request order. Never-admitted requests join `waiting`
    # lazily: `next_new` points at the first one that has not joined yet. Rule 2 of
    # §2.3 ("a never-admitted request with arrival_s > clock stops the walk") is thus
    # implemented by such requests not being in `waiting` yet.
    running: list[int] = []
    waiting: deque[int] = deque()
    next_new = 0
    num_finished = 0
    clock = 0.0

    while not infeasible:
        # §2.9: done when every request has finished.
        if num_finished == R:
            break
        # §2.1 arrivals: never-admitted requests with arrival_s <= clock join.
        while next_new < R and arr[next_new] <= clock:
            waiting.append(next_new)
            next_new += 1
        # §2.9 iteration budget. (Checked before the idle jump; the final clock is
        # not an output, so the order has no observable effect.)
        if max_iterations is not None and iterations >= max_iterations:
            truncated = True
            break
        # §2.1 idle jump: nothing running, nothing preempted, nothing arrived.
        if not running and not waiting:
            # num_finished < R, so some never-admitted request remains.
            clock = arr[next_new]
            while next_new < R and arr[next_new] <= clock:
                waiting.append(next_new)
                next_new += 1

        free = num_blocks - sum(ceil_div(c[r], bs) for r in running)
        budget = max_tokens
        # Scheduled this iteration: (request, q, c_before, n_known_before, g_before).
        sched: list[tuple[int, int, int, int, int]] = []
        victims: list[int] = []

        def running_phase() -> None:
            """§2.2: walk `running` from the front while budget remains."""
            nonlocal free, budget, total_preemptions
            i = 0
            while i < len(running) and budget > 0:
                r = running[i]
                n_known = P[r] + g[r]
                want = n_known - c[r]
                if thr > 0:
                    want = min(want, thr)
                q = min(want, budget)
                need = ceil_div(c[r] + q, bs) - ceil_div(c[r], bs)
                while need > free:
                    # Preempt the last running request (recompute).
                    v = running.pop()
                    free += ceil_div(c[v], bs)
                    c[v] = 0
                    preemptions[v] += 1
                    total_preemptions += 1
                    waiting.appendleft(v)
                    victims.append(v)
                    if v == r:
                        return  # the current request is not scheduled; phase ends
                free -= need
                budget -= q
                sched.append((r, q, c[r], n_known, g[r]))
                i += 1

        def waiting_phase() -> int:
            """§2.3: admit from the front of `waiting`; returns the admission count."""
            nonlocal free, budget
            count = 0
            while waiting and budget > 0:
                if len(running) >= max_seqs:
                    break
                r = waiting[0]
                if arr[r] > clock:  # cannot happen (lazy arrivals); kept for fidelity
                    break
                n_known = P[r] + g[r]
                want = n_known - c[r]  # c[r] == 0 here
                if thr > 0:
                    want = min(want, thr)
                if not chunked and want > budget:
                    break
                q = min(want, budget)
                need = ceil_div(q, bs)
                if free - need < watermark:
                    break
                waiting.popleft()
                running.append(r)
                free -= need
                budget -= q
                sched.append((r, q, c[r], n_known, g[r]))
                if math.isnan(admitted[r]):
                    admitted[r] = clock  # first admission only
                count += 1
            return count

        if mode == "v1":
            kind = "mixed"
            running_phase()
            if not victims:  # §2.3 runs only if nothing was preempted in §2.2
                waiting_phase()
        else:
            # §2.4: a prefill batch if anything can be admitted, else a decode batch.
            if waiting_phase() > 0:
                kind = "prefill"
            else:
                kind = "decode"
                running_phase()

        if not sched:
            # Unreachable for a feasible lane with validated knobs (the first running
            # request, or the first waiting one when nothing runs, always fits).
            raise RuntimeError("reference simulator scheduled an empty iteration")

        # §2.5 iteration time and §2.6 advance.
        dt = cost.batch_time([(q, c0, nk, g0) for (_, q, c0, nk, g0) in sched])
        start = clock
        clock = clock + dt

        # §2.8 accounting (used blocks after scheduling, before retirement).
        used = num_blocks - free
        iterations += 1
        busy += dt
        kv_integral += used * dt
        kv_peak = max(kv_peak, used)

        # §2.7 retire.
        any_finished = False
        for r, q, _c0, _nk, _g0 in sched:
            c[r] += q
            tokens[r] += q
            total_tokens += q
            if c[r] == P[r] + g[r]:
                g[r] += 1
                if g[r] == 1:
                    first_token[r] = clock
                if g[r] == O[r]:
                    finish[r] = clock
                    finished[r] = True
                    num_finished += 1
                    any_finished = True
        if any_finished:
            running = [r for r in running if not finished[r]]

        if trace is not None:
            trace.append(
                {
                    "start_s": start,
                    "dt": dt,
                    "end_s": clock,
                    "used_blocks": used,
                    "batch": [(orig[r], q, c0, nk, g0) for (r, q, c0, nk, g0) in sched],
                    "preempted": [orig[v] for v in victims],
                    "kind": kind,
                }
            )

    # ---- outputs, back in the original input order --------------------------------
    def unsort(values: list[Any], dtype: Any) -> np.ndarray:
        out = np.empty(R, dtype=dtype)
        out[order] = np.asarray(values, dtype=dtype)
        return out

    first_arr = unsort(first_token, np.float64)
    finish_arr = unsort(finish, np.float64)
    admitted_arr = unsort(admitted, np.float64)
    completed_arr = unsort(finished, np.bool_)
    arrival_f = arrival_in.astype(np.float64)
    nan = np.full(R, math.nan)
    ttft_arr = np.where(completed_arr, first_arr - arrival_f, nan)
    e2e_arr = np.where(completed_arr, finish_arr - arrival_f, nan)
    queue_arr = np.where(completed_arr, admitted_arr - arrival_f, nan)

    metrics = lane_metrics(
        arrival_f,
        prompt_in,
        output_in,
        first_arr,
        finish_arr,
        admitted_arr,
        completed_arr,
        cfg["ttft_slo_s"],
        cfg["tpot_slo_s"],
    )
    return {
        "first_token_s": first_arr,
        "finish_s": finish_arr,
        "admitted_s": admitted_arr,
        "ttft_s": ttft_arr,
        "e2e_s": e2e_arr,
        "queue_s": queue_arr,
        "preemptions": unsort(preemptions, np.int64),
        "tokens_scheduled": unsort(tokens, np.int64),
        "generated": unsort(g, np.int64),
        "completed": completed_arr,
        "infeasible": bool(infeasible),
        "truncated": bool(truncated),
        "iterations": int(iterations),
        "busy_s": float(busy),
        "total_tokens": int(total_tokens),
        "total_preemptions": int(total_preemptions),
        "kv_occupancy_mean": (
            kv_integral / busy / num_blocks
            if busy > 0.0 and num_blocks > 0
            else math.nan
        ),
        "kv_occupancy_peak": kv_peak / num_blocks if num_blocks > 0 else math.nan,
        "num_completed": int(num_finished),
        "metrics": metrics,
    }
