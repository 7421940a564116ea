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
embedding), so every model with the same shape uses the same table. Operators without
a table (attention, the LM head, KV write, sampling, all-reduce) and shapes not
measured keep the plain roofline (delta = 0).

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
            "activation", "rotary", "embedding")
GEMM_CORR_OPS = CORR_OPS[:4]
_DTYPES = {1.0: "fp8", 2.0: "bf16", 4.0: "fp32"}


def empty(num: int | None = None) -> np.ndarray:
    """The no-table value: ``[C, 0]`` (or ``[num, C, 0]``)."""
    shape = (len(CORR_OPS), 0) if num is None else (num, len(CORR_OPS), 0)
    return np.zeros(shape, np.float32)


def shape_keys(h: float, nh: float, nkv: float, hd: float, f: float, tp: float,
               bytes_per_weight: float, num_experts: float = 1.0) -> dict[str, str]:
    """Table key of each operator of :data:`CORR_OPS` for one model, TP degree and dtype.

    The per-GPU sizes are those of the cost model (docs/semantics.md §3): the QKV GEMM
    is ``h x (nh/tp + 2 max(nkv/tp, 1)) hd``, the gated MLP up-projection
    ``h x 2 f/tp``, and so on. The MLP of a mixture-of-experts model is a grouped GEMM,
    not the dense kernel the tables measure: its keys carry ``/moe`` (no table).
    """
    dt = _DTYPES.get(float(bytes_per_weight), f"{float(bytes_per_weight):g}B")
    nh_g, nkv_g, f_g = nh / tp, max(nkv / tp, 1.0), f / tp
    r = lambda x: int(round(x))  # noqa: E731
    gemm = {"qkv_proj": (h, (nh_g + 2.0 * nkv_g) * hd), "o_proj": (nh_g * hd, h),
            "mlp_up": (h, 2.0 * f_g), "mlp_down": (f_g, h)}
    elem = {"norm": h, "residual_add": h, "activation": f_g, "rotary": (nh_g + nkv_g) * hd,
            "embedding": h}
    out = {op: f"{op}/{r(k)}x{r(n)}/{dt}" for op, (k, n) in gemm.items()}
    out.update({op: f"{op}/{r(s)}/{dt}" for op, s in elem.items()})
    if num_experts > 1:
        for op in ("mlp_up", "mlp_down", "activation"):
            out[op] += "/moe"
    return out


def positions(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Knot index ``i`` and the fraction ``num / den`` of the way to knot ``i + 1`` for
    each token count (numpy; the same rule as :func:`delta`)."""
    x = np.clip(np.asarray(tokens, np.int64), 1, KNOTS[-1])
    i = np.clip(np.searchsorted(KNOTS, x, side="right") - 1, 0, GRID - 2)
    return i, x - KNOTS[i], KNOTS[i + 1] - KNOTS[i]


def delta_np(table: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """``delta`` of one table row (``[G]``) at each token count, in float64."""
    t = np.asarray(table, np.float64)
    i, num, den = positions(tokens)
    return t[i] + (t[i + 1] - t[i]) * num / den


def delta(table: Array, tokens: Array) -> DD:
    """``delta`` of each row of ``table`` (``[C, G]``, G = :data:`GRID`) at the token
    count ``tokens[c]`` of its operator (int32 ``[C]``), as DD: the knot values are
    exact float32 numbers and the interpolation is exact to double-float precision,
    so it agrees with :func:`delta_np` to about 1e-14."""
    f32 = jnp.float32
    kn = jnp.asarray(KNOTS, f32)
    x = jnp.clip(tokens, 1, int(KNOTS[-1])).astype(f32)
    i = jnp.clip(jnp.sum(kn[None, :] <= x[:, None], axis=1) - 1, 0, GRID - 2)
    k0, k1 = kn[i], kn[i + 1]
    d0 = jnp.take_along_axis(table, i[:, None], axis=1)[:, 0]
    d1 = jnp.take_along_axis(table, i[:, None] + 1, axis=1)[:, 0]
    frac = dd.div(dd.dd(x - k0), dd.dd(k1 - k0))  # integers below 2**24: exact
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


def lane_table(tables: dict[str, np.ndarray], keys: dict[str, str]) -> np.ndarray | None:
    """``[C, G]`` rows for one lane from a GPU's tables (None when no key has one)."""
    if not any(keys[op] in tables for op in CORR_OPS):
        return None
    out = np.zeros((len(CORR_OPS), GRID), np.float32)
    for c, op in enumerate(CORR_OPS):
        if keys[op] in tables:
            out[c] = tables[keys[op]]
    return out
