"""Fit the differentiable cost model to measured timings by gradient (optax).

Three stages, all through ``jaxsim.costmodel`` itself (the function the simulator runs);
the first and last by ``jax.grad`` of a log-error loss -- no finite differences:

1. **Kernel stage** (:func:`fit` on :func:`kernel_param_names`): every kernel row
   (GEMMs, elementwise ops, attention, all-reduce) is predicted by the cost model's
   per-operator time for that shape. The loss is the mean over operators of the mean
   squared log error (or a Huber loss on the log error with ``robust=True``), so every
   operator counts alike whatever its row count.
2. **Table stage** (:func:`fit_tables`): per-kernel-shape correction tables
   (``jaxsim.shapecorr``) on the GEMM and elementwise rows, on top of the kernel stage's
   roofline. The corrected time is linear in the table values, so each shape's table is
   a small penalised least-squares problem, solved exactly.
3. **Iteration stage** (:func:`fit` on ``ITERATION_PARAMS``): whole-iteration rows
   (Splitwise, Sarathi-Serve) are predicted by the simulator's iteration-time function; only the
   parameters the kernel data cannot pin down (CPU overheads, LM head, sampling, and
   attention when no attention rows were given) are fitted, the rest stay fixed.

Parameters are the unconstrained ``CostParams.theta`` (sigmoid / softplus), so an
optimiser can never make an efficiency leave (0, 1) or a time go negative. The smooth-
max exponent ``p`` is discrete: each exponent asked for (``calibrate(smooth_p=...)``, 2
and 4 by default, from 1, 2, 4, 8) is fitted and the one with the lowest training loss is
kept. Training is Adam with a fixed step count and seed-free
initialisation at the defaults, so a fit is deterministic.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from calibration.schema import ELEM_OPS, GEMM_OPS, Measurements
from jaxsim import costmodel, presets, shapecorr
from jaxsim.dd import DD
from jaxsim.params import (
    COST_INDEX,
    COST_PARAM_NAMES,
    CostParams,
    HardwareParams,
    ModelParams,
)

#: Kernel operators the cost model can predict, and what to divide the cost model's
#: per-layer time by to get one kernel invocation (two norms, two residual adds and two
#: all-reduces per layer).
KERNEL_OPS = ("qkv_proj", "o_proj", "mlp_up", "mlp_down", "lm_head", "norm", "residual_add",
              "activation", "rotary", "kv_write", "embedding", "attn_prefill", "attn_decode",
              "all_reduce")
_DIVISOR = {"norm": 2.0, "residual_add": 2.0, "all_reduce": 2.0}
#: Kernel operators predicted together: each group's rows are evaluated on their own,
#: with only the group's operators computed (``_predict_impl``).
_OP_GROUPS = (("qkv_proj", "o_proj", "mlp_up", "mlp_down", "lm_head"),
              ("norm", "residual_add", "activation", "rotary", "kv_write", "embedding"),
              ("attn_prefill",), ("attn_decode",), ("all_reduce",))
assert sorted(sum(_OP_GROUPS, ())) == sorted(KERNEL_OPS)
#: Position of each kernel operator (by ``KERNEL_OPS`` index) in its group.
_POS_IN_GROUP = np.asarray([next(g.index(o) for g in _OP_GROUPS if o in g)
                            for o in KERNEL_OPS])
#: Operator families the error reports pool (besides one line per operator).
REPORT_FAMILIES = {"gemm": GEMM_OPS, "elementwise": ELEM_OPS}
#: Parameters each kernel operator's rows determine.
_OP_PARAMS = {
    **{op: tuple(f"{k}_{op}" for k in ("eta_c", "f0", "eta_m", "b0")) for op in GEMM_OPS},
    **{op: tuple(f"{k}_{op}" for k in ("eta_c", "f0", "eta_m", "b0"))
       for op in ("attn_prefill", "attn_decode")},
    **{op: (f"eta_m_{op}", f"b0_{op}") for op in ("norm", "residual_add", "activation",
                                                  "rotary", "kv_write", "embedding")},
    "all_reduce": ("ar_latency_s", "eta_ar"),
}
#: Parameters copied from a measured operator when an operator has no rows of its own.
COPY_WHEN_MISSING = {"lm_head": "mlp_up", "kv_write": "residual_add"}
#: Parameters the iteration stage fits (beside attention when it had no kernel rows).
ITERATION_PARAMS = ("cpu_iter_s", "cpu_seq_s", "eta_c_lm_head", "eta_m_lm_head",
                    "eta_m_sampling", "b0_sampling")
#: Beside those, an iteration-only fit (no kernel rows) also fits the GEMM
#: efficiencies and the all-reduce.
ITERATION_ONLY_PARAMS = (*(f"{k}_{op}" for op in GEMM_OPS for k in ("eta_c", "eta_m")),
                         "ar_latency_s", "eta_ar", "kernel_overhead_s")
#: Engine terms fitted per tensor-parallel degree (``calibrate(..., iteration_fit=
#: "separate")``, when the iteration rows have several): the engine's overheads per
#: iteration and per request, and the latency and efficiency of its all-reduce. (The
#: all-reduce latency is a per-iteration constant like ``cpu_iter_s`` except that the
#: all-reduce's shape table scales it with the message size.)
ENGINE_TP_PARAMS = ("cpu_iter_s", "cpu_seq_s", "ar_latency_s", "eta_ar")
ATTN_PARAMS = tuple(f"{k}_{op}" for op in ("attn_prefill", "attn_decode")
                    for k in ("eta_c", "f0", "eta_m", "b0"))


def hardware_params(name: str) -> tuple[str, HardwareParams]:
    """(canonical name, HardwareParams) of a GPU preset at its BF16 peak (FP8 rows scale
    the GEMMs' peak themselves: ``_peak_scale``); KeyError lists the names."""
    canon, g = presets.gpu(name)
    return canon, HardwareParams(peak_flops=g["bf16_dense_tflops"] * 1e12,
                                 hbm_bw_bytes_per_s=g["hbm_bw_gbs"] * 1e9,
                                 link_bw_bytes_per_s=g["link_bw_gbs"] * 1e9,
                                 peak_flops_16bit=g["bf16_dense_tflops"] * 1e12)


def _dd_np(x: np.ndarray) -> DD:
    hi = x.astype(np.float32)
    return DD(jnp.asarray(hi), jnp.asarray((x - hi.astype(np.float64)).astype(np.float32)))


@dataclasses.dataclass
class Rows:
    """Device arrays describing measurement rows for the cost model."""

    model: ModelParams
    tp: jax.Array
    feats: costmodel.BatchFeatures
    op_index: np.ndarray   # index into KERNEL_OPS, or -1 for whole iterations
    divisor: jax.Array
    log_t: jax.Array
    #: per-kernel-shape tables: each kernel row's table (index into ``corr_tab``; 0 is
    #: the zero table), and the ``[C, G]`` lane tables of the iteration rows
    corr_id: jax.Array | None = None
    corr_tab: jax.Array | None = None
    corr_iter: jax.Array | None = None
    #: each row's peak FLOP/s over the GPU's BF16 peak (the FP8 peak for fp8 rows, as
    #: the simulator takes it for ``dtype: fp8`` lanes); None: 1 everywhere
    peak_scale: jax.Array | None = None

    @property
    def n(self) -> int:
        return len(self.op_index)


def _peak_scale(m: Measurements) -> np.ndarray:
    """Per row: the peak FLOP/s of its dtype over its GPU's BF16 peak (FP8 rows on a GPU
    with FP8 tensor cores: the FP8 peak; everything else, or a GPU without a preset: 1)."""
    out = np.ones(len(m))
    dt, hwname = m["dtype"].astype(str), m["hardware"].astype(str)
    for name in set(hwname[dt == "fp8"].tolist()):
        try:
            g = presets.gpu(name)[1]
        except KeyError:
            continue
        fp8 = g.get("fp8_dense_tflops")
        if fp8 is not None and np.isfinite(fp8):
            out[(dt == "fp8") & (hwname == name)] = fp8 / g["bf16_dense_tflops"]
    return out


def _bytes_per_weight(m: Measurements) -> np.ndarray:
    dt = m["dtype"].astype(str)
    return np.where(dt == "fp8", 1.0, np.where(dt == "fp32", 4.0, 2.0))


def row_keys(m: Measurements) -> list[dict[str, str]]:
    """``shapecorr.shape_keys`` of every row (the model sizes of its measurement)."""
    f = lambda c: np.asarray(m[c], np.float64)  # noqa: E731
    bpw = _bytes_per_weight(m)
    tp = np.where(m["op"].astype(str) == "all_reduce", f("num_workers"), f("tp"))
    cols = (f("hidden_size"), f("num_heads"), np.maximum(f("num_kv_heads"), 1.0),
            np.where(f("head_dim") > 0, f("head_dim"), 1.0), f("ffn_size"),
            np.maximum(tp, 1.0), bpw)
    cache: dict = {}
    out = []
    for r in zip(*(c.tolist() for c in cols), strict=True):
        if r not in cache:
            cache[r] = shapecorr.shape_keys(*r)
        out.append(cache[r])
    return out


def prepare_rows(m: Measurements, tables: dict[str, np.ndarray] | None = None) -> Rows:
    """Cost-model inputs of every row (kernel rows and ``iteration`` rows), with the
    per-kernel-shape ``tables`` (key -> ``[G]`` row, see ``jaxsim.shapecorr``) applied
    to the rows whose shape has one."""
    f64 = lambda c: np.asarray(m[c], np.float64)  # noqa: E731
    op = m["op"].astype(str)
    n = len(m)
    T = f64("num_tokens")
    h = f64("hidden_size")
    tp = f64("tp")
    b = f64("batch_size")
    q = f64("chunk_len")
    c = f64("context_len")
    d = f64("num_decodes")
    dc = f64("decode_context_len")
    is_ar = op == "all_reduce"
    is_it = op == "iteration"
    is_ap = op == "attn_prefill"
    is_ad = op == "attn_decode"
    # all-reduce rows: one token of hidden size bytes/2 over num_workers GPUs
    h = np.where(is_ar, f64("bytes") / 2.0, h)
    tp = np.where(is_ar, f64("num_workers"), tp)
    T = np.where(is_ar, 1.0, T)
    tokens = np.where(is_it, b * q + d, np.where(is_ap, q, np.where(is_ad, b, T)))
    nseq = np.where(is_it, b + d, np.where(is_ad, b, 1.0))
    nsamp = np.where(is_it, b + d, np.where(op == "lm_head", T, 0.0))
    pre_t = np.where(is_it, b * q, np.where(is_ap, q, np.where(is_ad, 0.0, T)))
    pairs = np.where(is_it | is_ap, np.where(is_it, b, 1.0) * q * (c + (q + 1.0) / 2.0), 0.0)
    pre_kv = np.where(is_it | is_ap, np.where(is_it, b, 1.0) * (c + q), 0.0)
    ndec = np.where(is_it, d, np.where(is_ad, b, 0.0))
    dkv = np.where(is_it, d * (dc + 1.0), np.where(is_ad, b * (c + 1.0), 0.0))
    if np.any(tokens >= 2 ** costmodel.TOKEN_BITS):
        i = int(np.argmax(tokens >= 2 ** costmodel.TOKEN_BITS))
        raise ValueError(f"{m['source'][i]}: {int(tokens[i])} tokens in one batch; the cost "
                         f"model takes fewer than {2 ** costmodel.TOKEN_BITS}")
    hd = np.where(f64("head_dim") > 0, f64("head_dim"), 1.0)
    bpw = _bytes_per_weight(m)
    model = ModelParams(
        num_layers=np.where(is_it, f64("num_layers"), 1.0), hidden_size=h,
        num_heads=np.maximum(f64("num_heads"), 1.0),
        num_kv_heads=np.maximum(f64("num_kv_heads"), 1.0), head_dim=hd,
        ffn_size=np.maximum(f64("ffn_size"), 1.0), vocab_size=np.maximum(f64("vocab_size"), 1.0),
        num_experts=np.ones(n), experts_per_token=np.ones(n),
        bytes_per_weight=bpw,
        bytes_per_kv=np.where(m["dtype"].astype(str) == "fp8", 1.0, 2.0),
        # the LM head stays 16-bit under FP8 (and an FP32 row keeps 4 bytes)
        bytes_per_lm_head_weight=np.maximum(bpw, 2.0),
    )
    i32 = lambda x: jnp.asarray(np.round(x).astype(np.int32))  # noqa: E731
    feats = costmodel.BatchFeatures(
        tokens=i32(tokens), num_seqs=i32(nseq), num_sampled=i32(nsamp),
        prefill_tokens=i32(pre_t), prefill_pairs_x2=_dd_np(2.0 * pairs),
        prefill_kv_tokens=_dd_np(pre_kv), num_decodes=i32(ndec), decode_kv_tokens=_dd_np(dkv))
    op_index = np.array([KERNEL_OPS.index(o) if o in KERNEL_OPS else -1 for o in op])
    div = np.array([_DIVISOR.get(o, 1.0) for o in op])
    rows = Rows(model=model, tp=jnp.asarray(np.round(tp).astype(np.int32)), feats=feats,
                op_index=op_index, divisor=jnp.asarray(div, jnp.float32),
                log_t=jnp.asarray(np.log(f64("time_s")), jnp.float32),
                peak_scale=jnp.asarray(_peak_scale(m), jnp.float32))
    if tables:
        keys = row_keys(m)
        # elementwise shapes without a table of their own: the fallback row
        # (shapecorr.lookup), as the simulator gives them
        measured, tables = tables, dict(tables)
        for i, o in enumerate(op):
            k = keys[i].get(o) if o in shapecorr.FALLBACK_OPS else None
            if k is not None and k not in tables:
                r = shapecorr.lookup(measured, k)
                if r is not None:
                    tables[k] = r
        names = sorted(tables)
        index = {k: j + 1 for j, k in enumerate(names)}
        cid = np.array([index.get(keys[i].get(o), 0) if o in shapecorr.CORR_OPS else 0
                        for i, o in enumerate(op)], np.int32)
        tab = np.zeros((len(names) + 1, shapecorr.GRID), np.float32)
        for k, j in index.items():
            tab[j] = tables[k]
        whole = np.flatnonzero(op_index < 0)
        it = np.zeros((len(whole), len(shapecorr.CORR_OPS), shapecorr.GRID), np.float32)
        for j, i in enumerate(whole):
            lane = shapecorr.lane_table(measured, keys[i])
            if lane is not None:
                it[j] = lane
        rows.corr_id, rows.corr_tab, rows.corr_iter = (jnp.asarray(cid), jnp.asarray(tab),
                                                       jnp.asarray(it))
    return rows


#: XLA options of the predictors and of small fits. These are compile-bound (a few
#: thousand rows, a few hundred steps), and on CPU LLVM's optimisation passes are a third
#: of their compile time: at ``xla_backend_optimization_level`` 0 the shipped H100 data's
#: calibration (150 steps, one exponent) took 66 s instead of 82 s on a 2-core VM, with
#: parameters equal to float32 rounding. XLA's older CPU code generator (fusion emitters
#: off) compiles them faster still: that calibration, with the operator groups of
#: ``_predict_impl``, took 37 s instead of 56 s, predictions within 2.4e-7 relative.
_FIT_OPTS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def roofline_rows(rows: Rows) -> Rows:
    """``rows`` with every correction table zero: the roofline alone
    (``shapecorr.apply`` leaves a time exactly unchanged where the table is 0), in the
    shapes of ``rows``, so that :func:`predict` reuses the program compiled for them."""
    if rows.corr_id is None:
        return rows
    return dataclasses.replace(rows, corr_tab=jnp.zeros_like(rows.corr_tab),
                               corr_iter=jnp.zeros_like(rows.corr_iter))


def _predict_impl(cost: CostParams, hw: HardwareParams, model: ModelParams, tp: jax.Array,
                  feats: costmodel.BatchFeatures, kern: tuple, whole: jax.Array,
                  divisor: jax.Array, corr: tuple | None, peak_scale: jax.Array) -> jax.Array:
    """Seconds of every row: for each ``_OP_GROUPS[g]``, ``kern[g]`` is (its rows, the
    position of each row's operator in the group); those rows take their operator's
    time. ``whole`` rows take the whole iteration time. (Index arrays: their lengths are
    static.) ``corr`` is None or (kernel rows' table ids, tables, iteration rows'
    ``[C, G]`` tables); ``peak_scale`` scales ``hw``'s peak per row.

    Each group's rows are evaluated on their own, so that XLA computes only the group's
    operators for them (the cost model computes every operator of an iteration; the
    others are dead code there)."""
    out = jnp.zeros(divisor.shape, jnp.float32)
    take = lambda idx: (jax.tree.map(lambda x: x[idx], model), tp[idx],  # noqa: E731
                        jax.tree.map(lambda x: x[idx], feats), peak_scale[idx])

    def row_hw(scale):
        return HardwareParams(peak_flops=hw.peak_flops * scale,
                              hbm_bw_bytes_per_s=hw.hbm_bw_bytes_per_s,
                              link_bw_bytes_per_s=hw.link_bw_bytes_per_s,
                              peak_flops_16bit=hw.peak_flops_16bit)

    for group, (idx, pos_in) in zip(_OP_GROUPS, kern, strict=True):
        if not idx.size:
            continue
        # table row (shapecorr.CORR_OPS) of each operator; 0 for those without one:
        # their rows have the zero table, which leaves a time exactly unchanged
        crow = [shapecorr.CORR_OPS.index(o) if o in shapecorr.CORR_OPS else 0 for o in group]
        table = corr is not None and any(o in shapecorr.CORR_OPS for o in group)

        def one(model, tp, f, scale, cid, j, group=group, crow=crow, table=table):
            t = costmodel.op_times_from_consts(costmodel.prepare(model, row_hw(scale), tp,
                                                                 cost), f)
            sel = DD(jnp.stack([t[o].hi for o in group])[j],
                     jnp.stack([t[o].lo for o in group])[j])
            if table:
                # the cost model's own rule (shapecorr.delta / apply) on this row's table
                pos = shapecorr.op_positions(f.tokens, f.tokens, model.hidden_size)
                r = jnp.asarray(crow)[j]
                d = shapecorr.delta(corr[1][cid][None], DD(pos.hi[r][None], pos.lo[r][None]))
                sel = shapecorr.apply(sel, DD(d.hi[0], d.lo[0]))
            return sel.value()

        cid = corr[0][idx] if table else jnp.zeros(idx.shape, jnp.int32)
        out = out.at[idx].set(jax.vmap(one)(*take(idx), cid, pos_in))
    if whole.size:
        def it(model, tp, f, scale, table):
            c = cost if table is None else dataclasses.replace(cost, shape_corr=table)
            return costmodel.iteration_time_dd(model, row_hw(scale), tp, c, f).value()

        tables = corr[2] if corr is not None else None
        out = out.at[whole].set(jax.vmap(it)(*take(whole), tables))
    return out / divisor


def _rows_data(hw: HardwareParams, rows: Rows) -> tuple:
    """The arguments of :func:`_predict_impl` after the cost parameters, all arrays (the
    row index arrays too, so that programs compile for shapes, not values)."""
    kern = []
    for group in _OP_GROUPS:
        idx = np.flatnonzero(np.isin(rows.op_index, [KERNEL_OPS.index(o) for o in group]))
        kern.append((jnp.asarray(idx, jnp.int32),
                     jnp.asarray(_POS_IN_GROUP[rows.op_index[idx]], jnp.int32)))
    whole = np.flatnonzero(rows.op_index < 0)
    corr = None if rows.corr_id is None else (rows.corr_id, rows.corr_tab, rows.corr_iter)
    scale = (rows.peak_scale if rows.peak_scale is not None
             else jnp.ones(rows.divisor.shape, jnp.float32))
    return (hw, rows.model, rows.tp, rows.feats, tuple(kern), jnp.asarray(whole, jnp.int32),
            rows.divisor, corr, scale)


#: :func:`_predict_impl` compiled on its own (options apply to top-level jits only).
_predict = jax.jit(_predict_impl, compiler_options=_FIT_OPTS)


def predict(cost: CostParams, hw: HardwareParams, rows: Rows) -> jax.Array:
    """Predicted seconds of every row (float32), differentiable in ``cost.theta``.

    Kernel rows take the cost model's time of their operator; ``iteration`` rows the
    whole iteration time of their batch (``jaxsim.costmodel.iteration_time``). Compiled
    on its own; inside another jitted function use :func:`predict_traced`.
    """
    return _predict(cost, *_rows_data(hw, rows))


def predict_traced(cost: CostParams, hw: HardwareParams, rows: Rows) -> jax.Array:
    """:func:`predict` traced into the calling jitted function."""
    return _predict_impl(cost, *_rows_data(hw, rows))


@dataclasses.dataclass
class FitResult:
    """A fitted parameter set, its training history and the row split."""

    cost: CostParams
    loss: float
    steps: int
    seconds: float
    fitted: tuple[str, ...]
    copied: dict[str, str]
    train: np.ndarray
    holdout: np.ndarray


def _subsample(op: np.ndarray, train: np.ndarray, cap: int) -> np.ndarray:
    """At most ``cap`` training rows per operator, evenly strided (deterministic)."""
    keep = np.zeros(len(op), bool)
    for g in set(op[train].tolist()):
        idx = np.flatnonzero(train & (op == g))
        if idx.size > cap:
            idx = idx[np.linspace(0, idx.size - 1, cap).round().astype(int)]
        keep[idx] = True
    return keep


def _row_weights(op_index: np.ndarray, train: np.ndarray) -> np.ndarray:
    """One weight per row: 1 / (training rows of its operator), over the operators; 0 off
    the training set."""
    ops = sorted(set(op_index[train].tolist()))
    w = np.zeros(len(op_index))
    for g in ops:
        sel = train & (op_index == g)
        w[sel] = 1.0 / sel.sum() / len(ops)
    return w


def _log_loss(pred: jax.Array, log_t: jax.Array, w: jax.Array, robust: bool) -> jax.Array:
    r = jnp.log(pred) - log_t
    e = optax.losses.huber_loss(r, delta=0.05) / 0.05 if robust else r * r
    e = jnp.where(w > 0, e, 0.0)
    return jnp.sum(w * e)


def _loss_value(cost: CostParams, hw: HardwareParams, rows: Rows, w: jax.Array,
                robust: bool) -> jax.Array:
    return _log_loss(predict_traced(cost, hw, rows), rows.log_t, w, robust)


def _adam(loss, mask: jax.Array, steps: int, lr: float):
    """An Adam run: run(theta, p_log2, *data) -> (theta, final loss, loss history), with
    ``loss(theta, p_log2, *data)``, the gradient masked to ``mask`` (not jitted)."""
    sched = optax.cosine_decay_schedule(lr, steps, alpha=0.05)
    opt = optax.adam(sched)

    def run(theta, p_log2, *data):
        def body(carry, _):
            th, st = carry
            val, g = jax.value_and_grad(loss)(th, p_log2, *data)
            g = jnp.where(jnp.isfinite(g), g, 0.0) * mask
            upd, st = opt.update(g, st, th)
            return (optax.apply_updates(th, upd), st), val
        (th, _), hist = jax.lax.scan(body, (theta, opt.init(theta)), None, length=steps)
        return th, loss(th, p_log2, *data), hist

    return run


def _fit_run_impl(theta: jax.Array, p_log2: jax.Array, mask: jax.Array, data: tuple,
             log_t: jax.Array, w: jax.Array, *, steps: int, lr: float, robust: bool):
    """:func:`fit`'s Adam run on rows given as arguments (``_rows_data``), so that fits
    of the same row shapes share one compile whatever the rows, weights, parameters
    fitted and smooth-max exponent."""
    def loss(th, p, data, log_t, w):
        pred = _predict_impl(CostParams(theta=th, smooth_p_log2=p), *data)
        return _log_loss(pred, log_t, w, robust)

    return _adam(loss, mask, steps, lr)(theta, p_log2, data, log_t, w)


_FIT_STATIC = ("steps", "lr", "robust")
#: the Adam run compiled for large fits with XLA's default optimisation: at 15,000 rows
#: (the full Vidur H100 data) unoptimised code ran the kernel fit in 139 s against 55 s
_fit_run = jax.jit(_fit_run_impl, static_argnames=_FIT_STATIC)
#: and for fits of at most this many rows with ``_FIT_OPTS``, where compiling dominates
_FIT_FAST_COMPILE_ROWS = 4096
_fit_run_small = jax.jit(_fit_run_impl, static_argnames=_FIT_STATIC,
                         compiler_options=_FIT_OPTS)


def _mask(names: Sequence[str]) -> np.ndarray:
    m = np.zeros(len(COST_PARAM_NAMES), bool)
    for n in names:
        m[COST_INDEX[n]] = True
    return m


def fit(m: Measurements, hardware: str, train: np.ndarray, *, names: Sequence[str],
        init: CostParams | None = None, robust: bool = False, steps: int = 400,
        lr: float = 0.05, smooth_p: Sequence[int] = (2, 4),
        max_rows_per_op: int = 1500,
        tables: dict[str, np.ndarray] | None = None) -> FitResult:
    """Fit parameters ``names`` on the rows where ``train`` is true (one GPU's rows),
    with the per-kernel-shape ``tables`` (fixed) applied.

    Each smooth-max exponent in ``smooth_p`` is tried; the lowest training loss wins.
    At most ``max_rows_per_op`` training rows of each operator are used (evenly spaced
    over the table), which bounds the fitting time on large tables.
    """
    t0 = time.perf_counter()
    _, hw = hardware_params(hardware)
    op = m["op"].astype(str)
    # each operator's training rows, padded (its first row again, weight 0) to the most
    # rows the cap lets any split of m use, so that fits of m under different holdouts
    # share one compile (the operators' row counts are static shapes: _predict_impl)
    sub = _subsample(op, train, max_rows_per_op)
    parts, used = [], []
    for o in sorted(set(op.tolist())):
        have = np.flatnonzero(sub & (op == o))
        width = min(int(np.sum(op == o)), max_rows_per_op)
        fill = have[0] if have.size else int(np.flatnonzero(op == o)[0])
        parts.append(np.concatenate([have, np.full(width - have.size, fill, int)]))
        used.append(np.arange(width) < have.size)
    idx = np.concatenate(parts) if parts else np.zeros(0, int)
    used = np.concatenate(used) if used else np.zeros(0, bool)
    rows = prepare_rows(m.select(idx), tables)
    w = jnp.asarray(_row_weights(rows.op_index, used), jnp.float32)
    init = init if init is not None else CostParams.default()
    mask = jnp.asarray(_mask(names), jnp.float32)
    data = _rows_data(hw, rows)
    best = None
    for p in smooth_p:
        k = int(round(math.log2(p)))
        run = _fit_run_small if len(idx) <= _FIT_FAST_COMPILE_ROWS else _fit_run
        theta, val, _ = run(init.theta, jnp.int32(k), mask, data, rows.log_t, w,
                            steps=steps, lr=lr, robust=robust)
        val = float(val)
        if best is None or val < best[0]:
            best = (val, theta, k)
    val, theta, k = best
    if not math.isfinite(val):  # no exponent could be chosen: "lowest" means nothing
        raise ValueError(f"{hardware}: the training loss is {val} for every smooth-max "
                         f"exponent {tuple(smooth_p)}: a training row the cost model "
                         "predicts as 0 s or not finite (check the rows' shapes)")
    return FitResult(cost=CostParams(theta=theta, smooth_p_log2=k), loss=val, steps=steps,
                     seconds=time.perf_counter() - t0, fitted=tuple(names), copied={},
                     train=train, holdout=~train)


def fit_groups(m: Measurements, hardware: str, train: np.ndarray, group: np.ndarray, *,
               names: Sequence[str], init: CostParams, robust: bool = False,
               steps: int = 400, lr: float = 0.05,
               tables: dict[str, np.ndarray] | None = None
               ) -> tuple[dict[int, CostParams], np.ndarray]:
    """Fit parameters ``names`` separately for each value of ``group`` (one integer per
    row), all starting from ``init`` at its smooth-max exponent, in one vmapped Adam run.

    Each group's rows are padded to the largest group by repeating its first row with
    weight 0, so there is one compile whatever the groups. A group without training rows
    keeps ``init``. Returns the parameters of each group and every row's prediction with
    its group's parameters.
    """
    _, hw = hardware_params(hardware)
    group = np.asarray(group)
    keys = sorted(set(group.tolist()))
    idx = [np.flatnonzero(group == g) for g in keys]
    width = max(len(i) for i in idx)
    pad = [np.concatenate([i, np.full(width - len(i), i[0])]) for i in idx]
    per = [prepare_rows(m.select(p), tables) for p in pad]
    ops = per[0].op_index
    weights = np.stack([_row_weights(r.op_index, train[p] & (np.arange(width) < len(i)))
                        for r, p, i in zip(per, pad, idx, strict=True)]).astype(np.float32)
    fields = ("model", "tp", "feats", "divisor", "log_t", "corr_id", "corr_tab", "corr_iter",
              "peak_scale")
    stacked = {f: jax.tree.map(lambda *x: jnp.stack([jnp.asarray(v) for v in x]),
                               *[getattr(r, f) for r in per]) for f in fields}

    def rows_of(arrays) -> Rows:
        return Rows(op_index=ops, **arrays)

    def loss(theta, p_log2, arrays, w):
        return _loss_value(CostParams(theta=theta, smooth_p_log2=p_log2), hw,
                           rows_of(arrays), w, robust)

    run = jax.jit(jax.vmap(_adam(loss, jnp.asarray(_mask(names), jnp.float32), steps, lr),
                           in_axes=(None, None, 0, 0)), compiler_options=_FIT_OPTS)
    theta, _, _ = run(init.theta, init.smooth_p_log2, stacked, jnp.asarray(weights))
    pred_fn = jax.jit(jax.vmap(
        lambda th, arrays: predict_traced(CostParams(theta=th, smooth_p_log2=init.smooth_p_log2),
                                   hw, rows_of(arrays))), compiler_options=_FIT_OPTS)
    pred_all = np.asarray(pred_fn(theta, stacked), np.float64)
    costs, pred = {}, np.zeros(len(m))
    for j, (g, i) in enumerate(zip(keys, idx, strict=True)):
        # all-zero weights give zero gradients, so Adam leaves such a group at init
        th = theta[j] if train[i].any() else init.theta
        costs[int(g)] = CostParams(theta=th, smooth_p_log2=init.smooth_p_log2)
        pred[i] = pred_all[j, :len(i)]
    return costs, pred


def copy_missing(cost: CostParams, present: set[str]) -> tuple[CostParams, dict[str, str]]:
    """Give operators without rows the fitted values of a similar measured operator."""
    theta = np.asarray(cost.theta).copy()
    copied = {}
    for dst, src in COPY_WHEN_MISSING.items():
        if dst in present or src not in present:
            continue
        for a, b in zip(_OP_PARAMS[dst], _OP_PARAMS[src], strict=True):
            theta[COST_INDEX[a]] = theta[COST_INDEX[b]]
            copied[a] = b
    return CostParams(theta=theta, smooth_p_log2=cost.smooth_p_log2), copied


def kernel_param_names(ops: set[str]) -> list[str]:
    """Parameters determined by kernel rows of ``ops`` (plus the launch overhead)."""
    names = ["kernel_overhead_s"]
    for op in sorted(ops):
        names += _OP_PARAMS.get(op, ())
    return names


# --------------------------------------------------------------------------------------
# per-kernel-shape correction tables
# --------------------------------------------------------------------------------------

#: Smoothing of the table stage: weight of the squared first differences of adjacent
#: knot values against the squared relative errors of the rows.
TABLE_SMOOTHING = 0.01


def _table_key_of_rows(m: Measurements) -> list[str]:
    """Each row's table key: the ``shapecorr.shape_keys`` entry of its own operator
    (rows of operators in ``shapecorr.CORR_OPS``)."""
    return [k[o] for k, o in zip(row_keys(m), m["op"].astype(str).tolist(), strict=True)]


def table_keys(m: Measurements, train: np.ndarray) -> list[str]:
    """The shapes :func:`fit_tables` fits a table for: the keys of the training rows
    of the operators with tables (``shapecorr.CORR_OPS``), sorted."""
    sel = train & np.isin(m["op"].astype(str), shapecorr.CORR_OPS)
    return sorted(set(_table_key_of_rows(m.select(sel))))


def fit_tables(m: Measurements, hardware: str, train: np.ndarray, cost: CostParams,
               smoothing: float = TABLE_SMOOTHING, roof: np.ndarray | None = None
               ) -> dict[str, tuple[int, np.ndarray]]:
    """Per-kernel-shape correction tables (``jaxsim.shapecorr``) for the kernel rows of
    ``m`` where ``train`` is true, on top of the roofline ``cost``.

    The corrected time of a row is ``roof * (1 + delta(tokens))`` with ``delta`` linear
    in the knot values, so the least-squares problem

        min  sum_rows (roof (1 + delta(T)) / t - 1)^2 + smoothing * sum_knots (d[j+1] - d[j])^2

    is linear and is solved exactly (numpy ``lstsq``) for each shape, over the knots
    between its smallest and largest training token count; knots without rows
    between measured ones follow their neighbours (interpolation). Returns
    key -> (first knot, values); ``shapecorr.expand`` makes the full row. ``roof``:
    the roofline's predictions of every row of ``m``, when the caller has them.
    """
    op = m["op"].astype(str)
    sel = train & np.isin(op, shapecorr.CORR_OPS)
    if not sel.any():
        return {}
    sub = m.select(sel)
    _, hw = hardware_params(hardware)
    if roof is None:
        # all of m's rows predicted (then the training ones taken): the program compiled
        # for m's shapes serves a roofline report of m too
        roof = np.asarray(predict(cost, hw, prepare_rows(m)), np.float64)
    s = np.asarray(roof, np.float64)[sel] / np.asarray(sub["time_s"], np.float64)
    # axis value: the token count, or for all-reduce the size in AR_UNIT_BYTES
    tok = np.where(sub["op"].astype(str) == "all_reduce",
                   np.asarray(sub["bytes"], np.float64) / shapecorr.AR_UNIT_BYTES,
                   np.asarray(sub["num_tokens"], np.float64))
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(_table_key_of_rows(sub)):
        groups.setdefault(key, []).append(i)
    out = {}
    for key, idx in sorted(groups.items()):
        idx = np.asarray(idx)
        out[key] = _knot_lstsq(tok[idx], s[idx], 1.0 - s[idx], smoothing)
    return out


def _knot_lstsq(x: np.ndarray, scale: np.ndarray, target: np.ndarray,
                smoothing: float) -> tuple[int, np.ndarray]:
    """Knot values ``d`` over the knots spanned by the axis values ``x`` that minimise
    ``sum (scale * delta(x) - target)^2 + smoothing * sum (d[j+1] - d[j])^2`` (``delta``
    piecewise linear between the knots, as ``shapecorr.delta``); (first knot, values)."""
    j, num, den = shapecorr.positions(x)
    w = num / den
    lo, hi = int(j.min()), int(np.max(np.where(w > 0, j + 1, j)))
    g = hi - lo + 1
    a = np.zeros((len(x), g))
    r = np.arange(len(x))
    a[r, j - lo] += 1.0 - w
    np.add.at(a, (r[w > 0], j[w > 0] + 1 - lo), w[w > 0])
    pen = math.sqrt(smoothing) * np.diff(np.eye(g), axis=0)
    lhs = np.vstack([a * scale[:, None], pen])
    rhs = np.concatenate([target, np.zeros(g - 1)])
    d = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    # a correction can never make a time non-positive; 5 decimals (1e-5 relative) are
    # what a preset stores, so the report is of the stored table
    return lo, np.round(np.maximum(d, -0.9), 5).astype(np.float32)


def iteration_all_reduce_sizes(m: Measurements) -> np.ndarray:
    """Axis value of the all-reduce table for each ``iteration`` row: the message size
    ``2 h T`` bytes (T the iteration's tokens) in ``shapecorr.AR_UNIT_BYTES``."""
    f = lambda c: np.asarray(m[c], np.float64)  # noqa: E731
    tokens = f("batch_size") * f("chunk_len") + f("num_decodes")
    return costmodel.ACT_BYTES * f("hidden_size") * tokens / shapecorr.AR_UNIT_BYTES


def _tp_groups(m: Measurements) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(TP degree, its rows, its rows padded to the largest group by repeating its first
    row) for each TP degree of ``m``: padded groups share one compile of ``predict``."""
    tp = np.asarray(m["tp"]).astype(int)
    idx = [(g, np.flatnonzero(tp == g)) for g in sorted(set(tp.tolist()))]
    width = max((len(i) for _, i in idx), default=0)
    return [(g, i, np.concatenate([i, np.full(width - len(i), i[0])])) for g, i in idx]


def fit_engine_ar_tables(m: Measurements, hardware: str, train: np.ndarray,
                         costs: dict[int, CostParams], tables: dict[str, np.ndarray] | None,
                         smoothing: float = TABLE_SMOOTHING
                         ) -> dict[str, tuple[int, np.ndarray]]:
    """The measuring engine's all-reduce correction table of each TP degree, fitted to
    whole-iteration rows (``op == "iteration"``; TP > 1) with that degree's parameters
    ``costs[tp]`` and the kernel ``tables``: key ``all_reduce/tpN`` -> (first knot,
    values), to use in place of the kernel table of that key.

    An iteration's time is linear in its all-reduce table, ``rest + ar (1 + delta(x))``
    with ``x`` the message size (:func:`iteration_all_reduce_sizes`), so with ``rest``
    and ``ar`` from two predictions (``delta`` = 0 and 1) the smoothed least-squares
    problem of :func:`fit_tables` is linear here too and is solved exactly.
    """
    _, hw = hardware_params(hardware)
    x = iteration_all_reduce_sizes(m)
    t_meas = np.asarray(m["time_s"], np.float64)
    out = {}
    for g, idx, padded in _tp_groups(m):
        tr = idx[train[idx]]
        if g < 2 or tr.size == 0:
            continue
        key = shapecorr.all_reduce_key(g)
        sub = m.select(padded)
        pred = np.zeros((2, len(m)))
        for v in (0, 1):
            t = {**(tables or {}), key: np.full(shapecorr.GRID, float(v), np.float32)}
            pred[v, idx] = np.asarray(predict(costs[g], hw, prepare_rows(sub, t)),
                                      np.float64)[:len(idx)]
        ar = pred[1, tr] - pred[0, tr]
        out[key] = _knot_lstsq(x[tr], ar / t_meas[tr], 1.0 - pred[0, tr] / t_meas[tr],
                               smoothing)
    return out


def predict_by_tp(m: Measurements, hardware: str, costs: dict[int, CostParams],
                  tables: dict[str, np.ndarray] | None,
                  engine_tables: dict[str, tuple[int, np.ndarray]]) -> np.ndarray:
    """Predicted seconds of every row with the parameters of its TP degree
    (``costs[tp]``) and the kernel ``tables`` with ``engine_tables`` (key -> (first
    knot, values), from :func:`fit_engine_ar_tables`) in place of those of the same key."""
    _, hw = hardware_params(hardware)
    full = {**(tables or {}), **expand_tables(engine_tables)}
    out = np.zeros(len(m))
    for g, idx, padded in _tp_groups(m):
        out[idx] = np.asarray(predict(costs[g], hw, prepare_rows(m.select(padded),
                                                                  full or None)),
                              np.float64)[:len(idx)]
    return out


def expand_tables(tables: dict[str, tuple[int, np.ndarray]]) -> dict[str, np.ndarray]:
    """key -> full ``[G]`` row (constant beyond the stored knots)."""
    return {k: shapecorr.expand(first, v) for k, (first, v) in tables.items()}


# --------------------------------------------------------------------------------------
# held-out splits and error reports
# --------------------------------------------------------------------------------------

def _size_key(m: Measurements) -> list[tuple]:
    cols = ("num_tokens", "batch_size", "chunk_len", "context_len", "num_decodes",
            "decode_context_len", "bytes", "tp")
    arr = np.stack([np.asarray(m[c], np.float64) for c in cols], 1)
    return [tuple(r) for r in arr]


def _model_key(name: str) -> str:
    """A model name without its organisation, a ``-hf`` suffix or letter case, so that
    ``Llama-2-70B`` names Vidur's ``meta-llama/Llama-2-70b-hf``."""
    base = name.strip().rsplit("/", 1)[-1].lower()
    return base.removesuffix("-hf")


def split(m: Measurements, holdout: str = "shape", every: int = 5) -> np.ndarray:
    """The training mask for a hold-out rule.

    * ``shape``: per operator, the distinct shapes (token count, or chunk x context,
      batch x context, message size, batch composition) are sorted and every
      ``every``-th one is held out, so held-out shapes are never seen in fitting
      (interpolation).
    * ``model:NAME``: every row of model NAME is held out (extrapolation to an unseen
      model on the same GPU); rows without a model are split by shape. NAME matches
      case-insensitively and without the organisation and ``-hf``, so every spelling of
      the model is held out (``Llama-2-70B`` and ``meta-llama/Llama-2-70b-hf``).
    * ``none``: everything trains.
    """
    n = len(m)
    if not isinstance(holdout, str):
        raise ValueError(f"--holdout: {holdout!r}; allowed: shape, model:NAME, none")
    if holdout == "none":
        return np.ones(n, bool)
    train = np.ones(n, bool)
    keys = _size_key(m)
    op = m["op"].astype(str)
    by_shape = np.ones(n, bool)
    for o in set(op.tolist()):
        idx = np.flatnonzero(op == o)
        uniq = sorted({keys[i] for i in idx})
        held = {k for j, k in enumerate(uniq) if j % every == every // 2}
        for i in idx:
            by_shape[i] = keys[i] not in held
    if holdout == "shape":
        return by_shape
    if holdout.startswith("model:"):
        name = holdout[len("model:"):].strip()
        raw = m["model"].astype(str)
        if not _model_key(name):  # "" would match the rows without a model (all-reduce)
            known = sorted({x for x in raw if x})
            raise ValueError(f"--holdout: {holdout!r} names no model; give model:NAME, "
                             f"NAME one of: {', '.join(known) or 'none in the data'}")
        models = np.char.lower(raw)
        # every spelling of the model is held out: "Llama-2-70B" also names Vidur's
        # "meta-llama/Llama-2-70b-hf" (a leak into training otherwise, when data sources
        # spell it differently)
        held = (models == name.lower()) | np.array(
            [_model_key(x) == _model_key(name) for x in raw.tolist()], bool)
        if not held.any():
            known = sorted({x for x in raw if x})
            raise ValueError(f"--holdout: model {name!r} has no rows; models in the "
                             f"data: {', '.join(known)}")
        has_model = models != ""
        train = np.where(has_model, ~held, by_shape)
        return train
    raise ValueError(f"--holdout: {holdout!r}; allowed: shape, model:NAME, none")


def error_table(m: Measurements, pred: np.ndarray, train: np.ndarray) -> dict[str, dict]:
    """Per operator and per family: n_train, n_holdout, MAPE, p90 and max absolute
    percentage error and the mean signed percentage error (``bias``: negative when the
    model is too fast) on the held-out rows (on the training rows when none is held out).
    Whole-iteration rows of more than one phase also get a line per phase:
    ``iteration_prefill`` (no decodes), ``iteration_decode`` (decodes only) and
    ``iteration_mixed``.
    """
    pe = (pred / np.asarray(m["time_s"]) - 1.0) * 100.0
    ape = np.abs(pe)
    op = m["op"].astype(str)
    fams = REPORT_FAMILIES
    out = {}

    def stats(sel: np.ndarray) -> dict:
        tr, ho = sel & train, sel & ~train
        ev = ho if ho.any() else tr
        a = ape[ev]
        return {"n_train": int(tr.sum()), "n_holdout": int(ho.sum()),
                "mape": float(a.mean()) if a.size else math.nan,
                "p90_ape": float(np.percentile(a, 90)) if a.size else math.nan,
                "max_ape": float(a.max()) if a.size else math.nan,
                "bias": float(pe[ev].mean()) if a.size else math.nan,
                "train_mape": float(ape[tr].mean()) if tr.any() else math.nan}

    for o in sorted(set(op.tolist())):
        out[o] = stats(op == o)
    for fam, members in fams.items():
        sel = np.isin(op, list(members))
        if sel.any() and len(set(op[sel].tolist())) > 1:
            out[fam] = stats(sel)
    # whole iterations by phase, when there are several: a pooled figure can hide that
    # prefills and decodes are fitted very differently well
    it = op == "iteration"
    if it.any():
        pre = np.asarray(m["batch_size"]) > 0
        dec = np.asarray(m["num_decodes"]) > 0
        phases = {"iteration_prefill": it & pre & ~dec, "iteration_decode": it & dec & ~pre,
                  "iteration_mixed": it & pre & dec}
        if sum(bool(sel.any()) for sel in phases.values()) > 1:
            out.update({name: stats(sel) for name, sel in phases.items() if sel.any()})
    return out
