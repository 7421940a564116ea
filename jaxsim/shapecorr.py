"""Per-kernel-shape correction tables of the cost model (measured kernel-time residuals).

A smooth roofline cannot follow what a measured GEMM or elementwise kernel does as the
token count grows: cuBLAS switches tile shapes and split-K schedules at particular
sizes, so the time of, say, a 4096 x 22016 GEMM jumps by 1.8x between 128 and 136
tokens and falls back at 144. A calibrated preset can carry, for each measured kernel
shape, a table of relative corrections over the token count; the cost model multiplies
the operator's roofline time by ``1 + delta(tokens)``, where ``delta`` is piecewise
linear between the knots of one fixed grid (:data:`KNOTS`, 451 token counts: 1, 2, 4,
then every 8 tokens to 1024, then 64 knots per octave to 32768) and constant beyond its
ends (docs/semantics.md §3.1).

Tables are keyed by the kernel's shape on one GPU: ``op/KxN/dtype`` for the four
projection and MLP GEMMs (K and N per GPU, after tensor parallelism) and
``op/size/dtype`` for the elementwise kernels (norm, residual add, activation, rotary,
embedding), so every model with the same shape uses the same table, and
``all_reduce/tpN`` for the all-reduce over N GPUs, whose axis is the message size
(2 h T bytes, in units of 2 KiB: 2 KiB to 64 MiB). Operators without a table
(attention, the LM head, KV write, sampling) and GEMM shapes not measured keep the
plain roofline (delta = 0); an elementwise shape not measured gets the median of that
operator's measured tables (:func:`lookup`).

Per lane the tables are a ``[C, G]`` float32 array (``CostParams.shape_corr``; rows in
the order of :data:`CORR_OPS`, G = 451), or ``[C, 0]`` when no lane of a batch has one:
then the cost model does no extra work at all.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxsim import dd
from jaxsim.dd import DD
from jaxsim.types import Array


def _knots() -> np.ndarray:
    k = [1, 2, 4, *range(8, 1025, 8)]
    base = 1024
    for _ in range(5):
        step = base // 64
        k += list(range(base + step, 2 * base + 1, step))
        base *= 2
    return np.asarray(k, np.int64)


#: Token counts of the table knots (int64, strictly increasing, 1 .. 32768).
KNOTS = _knots()
#: Knots in a table.
GRID = len(KNOTS)
#: Operators with a table row, in row order (``final_norm`` uses the ``norm`` row).
CORR_OPS = ("qkv_proj", "o_proj", "mlp_up", "mlp_down", "norm", "residual_add",
            "activation", "rotary", "embedding", "all_reduce")
GEMM_CORR_OPS = CORR_OPS[:4]
#: Elementwise operators: a shape a preset did not measure gets the knot-wise median of
#: that operator's measured tables (same dtype), see :func:`lookup`.
FALLBACK_OPS = ("norm", "residual_add", "activation", "rotary", "embedding")
#: The all-reduce table's axis is the message size in units of this many bytes (knot 1
#: is 2 KiB, the last 64 MiB); every other table's axis is the token count.
AR_UNIT_BYTES = 2048.0
_DTYPES = {1.0: "fp8", 2.0: "bf16", 4.0: "fp32"}


def empty(num: int | None = None) -> np.ndarray:
    """The no-table value: ``[C, 0]`` (or ``[num, C, 0]``)."""
    shape = (len(CORR_OPS), 0) if num is None else (num, len(CORR_OPS), 0)
    return np.zeros(shape, np.float32)


def shape_keys(h: float, nh: float, nkv: float, hd: float, f: float, tp: float,
               bytes_per_weight: float, num_experts: float = 1.0, mla: float = 0.0,
               dv: float = 0.0, d_r: float = 0.0) -> dict[str, str]:
    """Table key of each operator of :data:`CORR_OPS` for one model, TP degree and dtype.

    The per-GPU sizes are those of the cost model (docs/semantics.md §3): the QKV GEMM
    is ``h x (nh/tp + 2 max(nkv/tp, 1)) hd``, the gated MLP up-projection
    ``h x 2 f/tp``, and so on. The MLP of a mixture-of-experts model is a grouped GEMM,
    not the dense kernel the tables measure: its keys carry ``/moe`` (no table). With
    multi-head latent attention (``mla``; value width ``dv``, rotary width ``d_r``) the
    QKV operator is a chain of GEMMs: its key carries ``/mla`` (no table); the O
    projection is ``nh/tp dv x h`` and the rotary embedding ``(nh/tp + 1) d_r`` wide.
    """
    dt = _DTYPES.get(float(bytes_per_weight), f"{float(bytes_per_weight):g}B")
    nh_g, nkv_g, f_g = nh / tp, max(nkv / tp, 1.0), f / tp
    r = lambda x: int(round(x))  # noqa: E731
    gemm = {"qkv_proj": (h, (nh_g + 2.0 * nkv_g) * hd), "o_proj": (nh_g * hd, h),
            "mlp_up": (h, 2.0 * f_g), "mlp_down": (f_g, h)}
    elem = {"norm": h, "residual_add": h, "activation": f_g, "rotary": (nh_g + nkv_g) * hd,
            "embedding": h}
    if mla:
        gemm["o_proj"] = (nh_g * dv, h)
        elem["rotary"] = (nh_g + 1.0) * d_r
    out = {op: f"{op}/{r(k)}x{r(n)}/{dt}" for op, (k, n) in gemm.items()}
    out.update({op: f"{op}/{r(s)}/{dt}" for op, s in elem.items()})
    if mla:
        out["qkv_proj"] += "/mla"
    out["all_reduce"] = all_reduce_key(tp)
    if num_experts > 1:
        for op in ("mlp_up", "mlp_down", "activation"):
            out[op] += "/moe"
    return out


def all_reduce_key(tp: float) -> str:
    """Table key of the all-reduce over ``tp`` GPUs (one node)."""
    return f"all_reduce/tp{int(round(tp))}"


def positions(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Knot index ``i`` and the fraction ``num / den`` of the way to knot ``i + 1`` for
    each axis value (token count, or all-reduce size in :data:`AR_UNIT_BYTES`; numpy,
    the same rule as :func:`delta`)."""
    x = np.clip(np.asarray(x, np.float64), 1, KNOTS[-1])
    i = np.clip(np.searchsorted(KNOTS, x, side="right") - 1, 0, GRID - 2)
    return i, x - KNOTS[i], (KNOTS[i + 1] - KNOTS[i]).astype(np.float64)


def delta_np(table: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``delta`` of one table row (``[G]``) at each axis value, in float64."""
    t = np.asarray(table, np.float64)
    i, num, den = positions(x)
    return t[i] + (t[i + 1] - t[i]) * num / den


def op_positions(tokens: Array, expert_tokens: Array, hidden: Array) -> DD:
    """Axis value of each row of :data:`CORR_OPS` for a batch of ``tokens`` (``T``;
    ``expert_tokens`` = T k for the MLP) and hidden size ``hidden``: the token count of
    the operator, and for the all-reduce its size ``2 h T`` bytes in
    :data:`AR_UNIT_BYTES` (exact as DD)."""
    f32 = jnp.float32
    t, tk = tokens.astype(f32), expert_tokens.astype(f32)
    ar = dd.mul_f(dd.two_prod(jnp.asarray(hidden, f32), t), f32(2.0 / AR_UNIT_BYTES))
    hi = jnp.stack([t, t, tk, tk, t, t, tk, t, t, ar.hi])
    lo = jnp.zeros_like(hi).at[-1].set(ar.lo)
    return DD(hi, lo)


def knot_index(x: Array) -> Array:
    """The last knot at or below ``x`` (float32, 1 <= x <= 32768), at most GRID - 2, in
    closed form (exact: only divisions by powers of two and floors)."""
    f32 = jnp.float32
    e = jnp.frexp(x)[1] - 1  # floor(log2 x)
    small = e  # 1, 2, 4
    mid = 3 + jnp.floor((x - 8.0) / 8.0).astype(jnp.int32)  # every 8 tokens to 1024
    p2 = jnp.ldexp(jnp.ones_like(x, f32), e)  # 2**e
    big = 130 + 64 * (e - 10) + jnp.floor((x - p2) / jnp.ldexp(jnp.ones_like(x, f32), e - 6)
                                          ).astype(jnp.int32)  # 64 per octave from 1024
    i = jnp.where(x < 8.0, small, jnp.where(x < 1024.0, mid, big))
    return jnp.clip(i, 0, GRID - 2)


def delta(table: Array, x: DD) -> DD:
    """``delta`` of each row of ``table`` (``[C, G]``, G = :data:`GRID`) at the axis
    value ``x[c]`` of its operator (DD ``[C]``), as DD: the knot values are exact
    float32 numbers and the interpolation is exact to double-float precision, so it
    agrees with :func:`delta_np` to about 1e-14."""
    f32 = jnp.float32
    kn = jnp.asarray(KNOTS, f32)
    lo_end, hi_end = f32(KNOTS[0]), f32(KNOTS[-1])
    inside = (x.hi > lo_end) & (x.hi < hi_end)
    xc = DD(jnp.clip(x.hi, lo_end, hi_end), jnp.where(inside, x.lo, 0.0))
    i = knot_index(xc.hi)
    k0, k1 = kn[i], kn[i + 1]
    d0 = jnp.take_along_axis(table, i[:, None], axis=1)[:, 0]
    d1 = jnp.take_along_axis(table, i[:, None] + 1, axis=1)[:, 0]
    frac = dd.div(dd.add_f(xc, -k0), dd.dd(k1 - k0))
    return dd.add_f(dd.mul(dd.two_sum(d1, -d0), frac), d0)


def apply(t: DD, d: DD) -> DD:
    """``t * (1 + d)``, as ``t + t d`` (exactly ``t`` where ``d`` is 0)."""
    return dd.add(t, dd.mul(t, d))


# --------------------------------------------------------------------------------------
# Tables as stored in a preset (``shape_tables``) and as lane rows
# --------------------------------------------------------------------------------------

def expand(first: int, values: list[float]) -> np.ndarray:
    """A full ``[G]`` row from the stored knots ``first .. first + len(values) - 1``,
    constant beyond them."""
    v = np.asarray(values, np.float32)
    out = np.empty(GRID, np.float32)
    out[first:first + len(v)] = v
    out[:first] = v[0]
    out[first + len(v):] = v[-1]
    return out


def lookup(tables: dict[str, np.ndarray], key: str) -> np.ndarray | None:
    """The ``[G]`` row for ``key``: its own table, or, for an elementwise operator
    (:data:`FALLBACK_OPS`) whose shape has none, the knot-wise median of that operator's
    tables of the same dtype (None when there are none, and for GEMMs and all-reduce).

    Elementwise kernels of different sizes share much of their departure from the
    roofline (launch floors and the same bandwidth curve); for a model left out of the
    fit the median brings the elementwise error down on each model tried, while the
    GEMMs', whose tile choices depend on the shape, came out better for two models and
    worse for the third (README, Calibration).
    """
    if key in tables:
        return tables[key]
    parts = key.split("/")
    if parts[0] not in FALLBACK_OPS or len(parts) != 3:
        return None
    same = [v for k, v in tables.items()
            if k.startswith(parts[0] + "/") and k.endswith("/" + parts[2])
            and k.count("/") == 2]
    if not same:
        return None
    return np.median(np.stack(same), axis=0).astype(np.float32)


def lane_table(tables: dict[str, np.ndarray], keys: dict[str, str]) -> np.ndarray | None:
    """``[C, G]`` rows for one lane from a GPU's tables (:func:`lookup`; None when no
    operator has one)."""
    rows = [lookup(tables, keys[op]) for op in CORR_OPS]
    if all(r is None for r in rows):
        return None
    out = np.zeros((len(CORR_OPS), GRID), np.float32)
    for c, r in enumerate(rows):
        if r is not None:
            out[c] = r
    return out
