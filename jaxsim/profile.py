"""Kernel-timing profiler: ``jaxsim profile`` measures one transformer layer's kernels.

The profiler times, on the local accelerator and with JAX, the operators the cost model
prices, for one model preset sharded ``tp`` ways (each row times one GPU's shard), and
returns the rows as a :class:`calibration.schema.Measurements` table (or, from the command
line, writes them as a CSV in that schema) ready for ``jaxsim calibrate``.

Operators (``dtype`` bf16 unless ``--dtype fp32``; per-GPU sizes ``nh_g = num_heads / tp``,
``nkv_g = max(num_kv_heads / tp, 1)``, ``f_g = ffn_size / tp``):

* GEMMs over token counts ``M``: ``qkv_proj`` [M, h] x [h, (nh_g + 2 nkv_g) hd],
  ``o_proj`` [M, nh_g hd] x [nh_g hd, h], ``mlp_up`` [M, h] x [h, 2 f_g] (gated SwiGLU),
  ``mlp_down`` [M, f_g] x [f_g, h]. For mixture-of-experts presets ``ffn_size`` is one
  expert's, so the MLP rows time one expert.
* Elementwise over the same ``M``: ``norm`` (RMSNorm of [M, h], computed in fp32),
  ``residual_add`` ([M, h] + [M, h]), ``activation`` (SiLU(gate) * up, [M, 2 f_g] ->
  [M, f_g]), ``rotary`` (neox-style rotary embedding of q and k, [M, nh_g + nkv_g, hd],
  with the cos/sin rows gathered by position as serving engines do).
* Attention with :func:`jax.nn.dot_product_attention` (default implementation, layout
  B, T, N, H, grouped-query heads): ``attn_prefill`` is one sequence whose ``chunk_len``
  new tokens attend causally to ``context_len`` cached tokens plus themselves (query ``i``
  sees keys ``<= context_len + i``); ``attn_decode`` is ``batch_size`` sequences of one
  query token each, attending to ``context_len`` keys.
* Copies: ``h2d_copy`` (:func:`jax.device_put` of a host array of ``bytes`` bytes) and
  ``d2h_copy`` (:func:`numpy.asarray` of a fresh device array).
* ``all_reduce`` of a ``bytes``-byte array per device with :func:`jax.shard_map` and
  :func:`jax.lax.psum` over all local devices, only when there are several devices.

Timing method: every kernel is jitted and compiled before timing and called twice to warm
up; then ``repeats`` samples are taken with :func:`time.perf_counter`. ``timing="sync"``
times each call on its own, around the call and ``block_until_ready``. ``"back-to-back"``
issues ``k`` calls without waiting and blocks on the last (one stream runs them in order),
and divides by ``k``; ``k`` is chosen from a blocking call so that a sample lasts about
:data:`BACK_TO_BACK_TARGET_S` (at most :data:`BACK_TO_BACK_MAX_CALLS` calls), so the
synchronisation is paid once per sample and the host's dispatch of the next call overlaps
the running kernel. ``"device"`` runs the ``repeats`` calls one at a time inside a
:func:`jax.profiler.trace` and takes each call's time from the trace: the span of the
kernels (operations, on a CPU backend) of that execution, so the host's dispatch and
synchronisation are left out (:func:`call_times_from_trace`). ``"auto"`` (the default) is
back-to-back on a GPU and sync elsewhere (a CPU backend may run independent calls at the
same time). A row records the median
(``time_s``), minimum, mean, standard deviation and the number of samples. Inputs are random
(fixed seed) and created on the device before timing. Shapes that run out of device memory
are skipped (reported through ``progress``). Copies are always timed one at a time.

Known limitation: a kernel shorter than the host's dispatch of one call is timed as that
dispatch (back-to-back) or as dispatch plus synchronisation (sync), which then becomes the
kernel's floor in the calibrated cost model. With sync timing on one H200 in a gVisor VM,
the smallest kernels all took 50-60 us (``calibration/data/h200``). ``timing="device"``
removes that floor; it needs the accelerator's profiler (CUPTI on NVIDIA GPUs, which
JAX's CUDA wheels ship) and has been checked on the CPU backend only. Copies of small host
arrays on a CPU backend may be zero-copy.

Importing this module is cheap (JAX is imported only when profiling runs), because the
command-line parser imports it.
"""

from __future__ import annotations

import argparse
import functools
import math
import numbers
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from calibration.schema import Measurements

EXIT_USAGE = 2

#: Operators the profiler measures, in the order it runs them (names of
#: :data:`calibration.schema.OPS`).
GEMM_OPS = ("qkv_proj", "o_proj", "mlp_up", "mlp_down")
ELEM_OPS = ("norm", "residual_add", "activation", "rotary")
ATTN_OPS = ("attn_prefill", "attn_decode")
COPY_OPS = ("h2d_copy", "d2h_copy")
SUPPORTED_OPS = GEMM_OPS + ELEM_OPS + ATTN_OPS + COPY_OPS + ("all_reduce",)
#: ``--dtype`` choices and their JAX dtypes.
DTYPES = {"bf16": "bfloat16", "fp32": "float32"}

#: Default token counts of GEMM and elementwise rows (a GPU sweep, 1 .. 8192).
DEFAULT_TOKENS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024,
                  1536, 2048, 3072, 4096, 6144, 8192)
#: Default (chunk_len, context_len) of ``attn_prefill`` rows.
DEFAULT_PREFILL = tuple((c, x) for c in (128, 256, 512, 1024, 2048, 4096)
                        for x in (0, 512, 2048, 8192))
#: Default (batch_size, context_len) of ``attn_decode`` rows.
DEFAULT_DECODE = tuple((b, x) for b in (1, 4, 16, 64, 256) for x in (128, 512, 2048, 8192))
#: Default host<->device copy sizes, bytes (1 MiB .. 256 MiB).
DEFAULT_COPY_BYTES = tuple(1 << k for k in (20, 22, 24, 26, 28))
#: Default all-reduce message sizes per device, bytes (64 KiB .. 256 MiB).
DEFAULT_ALLREDUCE_BYTES = tuple(1 << k for k in (16, 18, 20, 22, 24, 26, 28))
#: Tiny shapes for a CPU smoke run (``quick=True``, ``--quick``).
QUICK = {
    "token_counts": (1, 8, 32),
    "prefill_shapes": ((16, 0), (16, 16)),
    "decode_shapes": ((2, 32),),
    "copy_bytes": (64 << 10,),
    "allreduce_bytes": (64 << 10,),
}
DEFAULTS = {
    "token_counts": DEFAULT_TOKENS,
    "prefill_shapes": DEFAULT_PREFILL,
    "decode_shapes": DEFAULT_DECODE,
    "copy_bytes": DEFAULT_COPY_BYTES,
    "allreduce_bytes": DEFAULT_ALLREDUCE_BYTES,
}
WARMUP = 2
SEED = 0
#: Timing methods of :func:`profile` (see the module docstring).
TIMINGS = ("auto", "sync", "back-to-back", "device")
#: A back-to-back sample issues enough calls to last about this long ...
BACK_TO_BACK_TARGET_S = 2e-3
#: ... but at most this many.
BACK_TO_BACK_MAX_CALLS = 100
#: Inputs of at most this many elements are drawn on the host, larger ones on the device.
HOST_RANDOM_MAX = 1 << 22

#: Substrings of JAX error messages that mean "out of device memory".
_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory")
#: (words of a device kind, all required, as regular expressions; words that must be
#: absent; GPU preset) in matching order. Words are the kind's parts between spaces and
#: dashes, so "A40" does not match an RTX A4000 nor "H200" a GH200.
_GPU_KINDS = (
    (("GH200",), (), "GH200"),
    (("H200",), (), "H200"),
    (("H100", "PCIE"), (), "H100-PCIe"),
    (("H100", r"SXM[0-9]*"), (), "H100-SXM"),
    (("H100", "HBM3"), ("PCIE", "NVL"), "H100-SXM"),
    (("A100", "80GB"), ("PCIE",), "A100-80GB"),  # the PCIe card has no preset
    (("B200",), (), "B200"),
    (("L40S",), (), "L40S"),
    (("A40",), (), "A40"),
    (("MI300X",), (), "MI300X"),
)


class _Spec:
    """Validated profiling request (built by :func:`_resolve`)."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


def hardware_name(device_kind: str, platform: str = "gpu") -> str:
    """The hardware name recorded for a device.

    Args:
        device_kind: ``jax.Device.device_kind`` (``"NVIDIA H100 80GB HBM3"``, ...).
        platform: ``jax.Device.platform``.

    Returns:
        ``"cpu"`` for the CPU platform, the matching GPU preset name of
        :func:`jaxsim.presets.gpu_names` when the kind is recognised (``"H100-SXM"``), else
        the device kind itself.
    """
    from jaxsim import presets

    if platform == "cpu":
        return "cpu"
    words = [w for w in re.split(r"[\s\-_]+", device_kind.upper()) if w]
    known = set(presets.gpu_names())
    for parts, absent, name in _GPU_KINDS:
        if all(any(re.fullmatch(p, w) for w in words) for p in parts) and not any(
                w in absent for w in words) and name in known:
            return name
    return device_kind.strip() or platform


def _label(labels: dict[str, str], field: str) -> str:
    return labels.get(field, field)


def _positive_int(v: Any, what: str, *, allow_zero: bool = False) -> int:
    ok = isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if not ok or (v < 0 if allow_zero else v <= 0):
        need = "an integer >= 0" if allow_zero else "a positive integer"
        raise ValueError(f"{what}: {v!r} must be {need}")
    return int(v)


def _sizes(values: Iterable[Any] | None, field: str, labels: dict[str, str]) -> tuple[int, ...]:
    what = _label(labels, field)
    if values is None:
        raise ValueError(f"{what}: missing")
    out = tuple(_positive_int(v, what) for v in values)
    if not out:
        raise ValueError(f"{what}: empty; give at least one size")
    return out


def _pairs(values: Iterable[Any] | None, field: str, names: tuple[str, str],
           zero_second: bool, labels: dict[str, str]) -> tuple[tuple[int, int], ...]:
    what = _label(labels, field)
    if values is None:
        raise ValueError(f"{what}: missing")
    out = []
    for pair in values:
        try:
            a, b = pair
        except (TypeError, ValueError):
            raise ValueError(f"{what}: {pair!r} is not a ({names[0]}, {names[1]}) pair"
                             ) from None
        out.append((_positive_int(a, f"{what}: {names[0]}"),
                    _positive_int(b, f"{what}: {names[1]}", allow_zero=zero_second)))
    if not out:
        raise ValueError(f"{what}: empty; give at least one shape")
    return tuple(out)


def _resolve(model: str, *, tp: int, hardware: str | None, repeats: int, dtype: str,
             ops: Sequence[str] | str | None, sizes: dict[str, Any],
             labels: dict[str, str] | None = None, timing: str = "auto") -> _Spec:
    """Validate a request; every error is a ValueError naming the field and value."""
    from calibration import schema
    from jaxsim import presets

    labels = labels or {}
    try:
        name, dims = presets.model(model)
    except KeyError as e:
        raise ValueError(f"{_label(labels, 'model')}: {e.args[0]}") from None
    tp = _positive_int(tp, _label(labels, "tp"))
    from jaxsim.config import MAX_TP

    if tp > MAX_TP:
        raise ValueError(f"{_label(labels, 'tp')}: {tp} must be <= {MAX_TP} (the simulator's "
                         "tensor parallelism is within one node)")
    if presets.extras(dims)["mla"]:
        raise ValueError(f"{_label(labels, 'model')}: {name} uses multi-head latent "
                         "attention, which the profiler does not measure (it times "
                         "grouped-query attention and its GEMMs); profile a model without "
                         "MLA, e.g. Llama-3.1-8B")
    nh, nkv, ffn = dims["num_heads"], dims["num_kv_heads"], dims["ffn_size"]
    tpl = _label(labels, "tp")
    if nh % tp:
        raise ValueError(f"{tpl}: {tp} does not divide num_heads={nh} of {name}")
    if (nkv >= tp and nkv % tp) or (nkv < tp and tp % nkv):
        raise ValueError(f"{tpl}: {tp} does not divide (or is not a multiple of) "
                         f"num_kv_heads={nkv} of {name}")
    if ffn % tp:
        raise ValueError(f"{tpl}: {tp} does not divide ffn_size={ffn} of {name}")
    repeats = _positive_int(repeats, _label(labels, "repeats"))
    if dtype not in DTYPES:
        raise ValueError(f"{_label(labels, 'dtype')}: {dtype!r} is not supported; allowed: "
                         f"{', '.join(DTYPES)}")
    if timing not in TIMINGS:
        raise ValueError(f"{_label(labels, 'timing')}: {timing!r} is not a timing method; "
                         f"allowed: {', '.join(TIMINGS)}")
    if hardware is not None and (not isinstance(hardware, str) or not hardware.strip()):
        raise ValueError(f"{_label(labels, 'hardware')}: {hardware!r} must be a non-empty "
                         "name")
    if hardware is not None:
        hardware = hardware.strip()
        for g in presets.gpu_names():
            if g.lower() == hardware.lower():
                hardware = g
    if ops is None:
        ops = SUPPORTED_OPS
    elif isinstance(ops, str):
        ops = (ops,)
    chosen = []
    for op in ops:
        if op not in schema.OPS:
            raise ValueError(f"{_label(labels, 'ops')}: unknown op {op!r}; allowed: "
                             f"{', '.join(SUPPORTED_OPS)}")
        if op not in SUPPORTED_OPS:
            raise ValueError(f"{_label(labels, 'ops')}: {op!r} is not measured by the "
                             f"profiler; allowed: {', '.join(SUPPORTED_OPS)}")
        chosen.append(op)
    if not chosen:
        raise ValueError(f"{_label(labels, 'ops')}: empty; allowed: "
                         f"{', '.join(SUPPORTED_OPS)}")
    chosen = [op for op in SUPPORTED_OPS if op in chosen]
    spec = _Spec(
        model=name, dims=dims, tp=tp, hardware=hardware, repeats=repeats, dtype=dtype,
        ops=tuple(chosen), timing=timing,
        token_counts=_sizes(sizes["token_counts"], "token_counts", labels),
        prefill_shapes=_pairs(sizes["prefill_shapes"], "prefill_shapes",
                              ("chunk_len", "context_len"), True, labels),
        decode_shapes=_pairs(sizes["decode_shapes"], "decode_shapes",
                             ("batch_size", "context_len"), False, labels),
        copy_bytes=_sizes(sizes["copy_bytes"], "copy_bytes", labels),
        allreduce_bytes=_sizes(sizes["allreduce_bytes"], "allreduce_bytes", labels),
    )
    from jaxsim.costmodel import TOKEN_BITS

    # tokens in one measured batch: what calibrate (and the cost model) take
    for field, vals in (("token_counts", spec.token_counts),
                        ("prefill_shapes", [q for q, _ in spec.prefill_shapes]),
                        ("decode_shapes", [b for b, _ in spec.decode_shapes])):
        big = [v for v in vals if v >= 2 ** TOKEN_BITS]
        if big:
            raise ValueError(f"{_label(labels, field)}: {big[0]} tokens in one batch; the cost "
                             f"model (and so calibrate) takes fewer than {2 ** TOKEN_BITS}")
    return spec


def profile(model: str, *, tp: int = 1, hardware: str | None = None,
            token_counts: Sequence[int] | None = None,
            prefill_shapes: Sequence[tuple[int, int]] | None = None,
            decode_shapes: Sequence[tuple[int, int]] | None = None,
            copy_bytes: Sequence[int] | None = None,
            allreduce_bytes: Sequence[int] | None = None, repeats: int = 10,
            dtype: str = "bf16", ops: Sequence[str] | None = None, quick: bool = False,
            progress: Callable[[str], None] | None = None,
            timing: str = "auto") -> Measurements:
    """Measure kernel timings of one model shard on the local accelerator.

    Args:
        model: model preset name (:func:`jaxsim.presets.model_names`, case-insensitive).
        tp: tensor-parallel degree; the shard of one GPU is timed. Must divide the model's
            ``num_heads`` and ``ffn_size``.
        hardware: name recorded in the ``hardware`` column; default derived from the
            device (:func:`hardware_name`: a GPU preset name, the device kind or ``"cpu"``).
        token_counts: ``num_tokens`` of GEMM and elementwise rows; default
            :data:`DEFAULT_TOKENS` (or ``QUICK["token_counts"]`` when ``quick``).
        prefill_shapes: ``(chunk_len, context_len)`` pairs of ``attn_prefill`` rows;
            default :data:`DEFAULT_PREFILL`.
        decode_shapes: ``(batch_size, context_len)`` pairs of ``attn_decode`` rows;
            default :data:`DEFAULT_DECODE`.
        copy_bytes: sizes of ``h2d_copy`` and ``d2h_copy`` rows; default
            :data:`DEFAULT_COPY_BYTES`.
        allreduce_bytes: per-device sizes of ``all_reduce`` rows (run only with several
            local devices); default :data:`DEFAULT_ALLREDUCE_BYTES`.
        repeats: timed calls per shape (>= 1) after two warm-up calls.
        dtype: ``"bf16"`` or ``"fp32"``.
        ops: operators to measure (names of :data:`SUPPORTED_OPS`); default all.
        quick: use the tiny :data:`QUICK` shapes for the sizes not given (CPU smoke runs).
        progress: called with a short message as each operator starts and for each
            skipped shape.
        timing: ``"sync"``, ``"back-to-back"``, ``"device"`` or ``"auto"`` (back-to-back on
            a GPU, sync elsewhere); see the module docstring.

    Returns:
        The measured rows (validated), ``source`` ``jaxsim-profile:<op>:<i>``.

    Raises:
        ValueError: a bad argument; the message names the field and the value.
    """
    given = {"token_counts": token_counts, "prefill_shapes": prefill_shapes,
             "decode_shapes": decode_shapes, "copy_bytes": copy_bytes,
             "allreduce_bytes": allreduce_bytes}
    base = QUICK if quick else DEFAULTS
    sizes = {k: base[k] if v is None else v for k, v in given.items()}
    spec = _resolve(model, tp=tp, hardware=hardware, repeats=repeats, dtype=dtype, ops=ops,
                    sizes=sizes, timing=timing)
    return _run(spec, progress)


# --------------------------------------------------------------------------- running


def _stats(times: list[float]) -> dict[str, float | int]:
    import numpy as np

    t = np.asarray(times, dtype=np.float64)
    floor = 1e-9  # a timer tick: time_s must be > 0
    return {"time_s": max(float(np.median(t)), floor), "time_min_s": float(t.min()),
            "time_mean_s": float(t.mean()), "time_std_s": float(t.std()),
            "repeats": len(times)}


def _repeat(once: Callable[[], float], repeats: int) -> dict[str, float | int]:
    """Run ``once`` (which returns its own elapsed seconds) warm-up + ``repeats`` times."""
    for _ in range(WARMUP):
        once()
    return _stats([once() for _ in range(repeats)])


def calls_per_sample(one_call_s: float) -> int:
    """Back-to-back calls in one sample, for a kernel whose blocking call takes
    ``one_call_s``: enough to last :data:`BACK_TO_BACK_TARGET_S`, 1 to
    :data:`BACK_TO_BACK_MAX_CALLS`."""
    if not one_call_s > 0:
        return BACK_TO_BACK_MAX_CALLS
    return int(min(max(math.ceil(BACK_TO_BACK_TARGET_S / one_call_s), 1),
                   BACK_TO_BACK_MAX_CALLS))


def _time_kernel(fn: Callable, args: tuple, repeats: int,
                 timing: str = "sync") -> dict[str, float | int]:
    """Compile ``fn`` for ``args`` (untimed), then take ``repeats`` samples: one blocking
    call each (``"sync"``) or ``k`` calls issued back to back, divided by ``k``."""
    import jax

    compiled = jax.jit(fn).lower(*args).compile()

    def once() -> float:
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        return time.perf_counter() - t0

    if timing == "sync":
        return _repeat(once, repeats)
    for _ in range(WARMUP):
        once()
    if timing == "device":
        return _stats(_traced_call_times(compiled, args, repeats))
    k = calls_per_sample(min(once() for _ in range(3)))

    def batch() -> float:
        t0 = time.perf_counter()
        out = None
        for _ in range(k):
            out = compiled(*args)
        jax.block_until_ready(out)
        return (time.perf_counter() - t0) / k

    return _repeat(batch, repeats)


class DeviceTimingError(RuntimeError):
    """``timing="device"`` found no usable kernel events in the profiler's trace."""


def module_name(hlo_text: str) -> str:
    """The module name in the first line of a compiled executable's HLO text."""
    head = hlo_text.split("\n", 1)[0].split()
    return head[1].rstrip(",") if len(head) > 1 and head[0] == "HloModule" else ""


def _of_module(event: dict, module: str) -> bool:
    m = str(event.get("args", {}).get("hlo_module", ""))
    return m == module or m.startswith((module + "(", module + "."))


def call_times_from_trace(events: list[dict], module: str, calls: int,
                          device_only: bool = False) -> list[float]:
    """Seconds the device spent on each of ``calls`` executions of ``module``, from the
    events of a :func:`jax.profiler.trace` (its ``*.trace.json.gz`` ``traceEvents``).

    The events are the complete (``"ph": "X"``) ones whose ``hlo_module`` argument names
    the module. Those of device processes (named ``/device:...``, the kernels a GPU ran)
    are used when there are any; otherwise the host's (a CPU backend runs its operations
    on host threads), unless ``device_only`` (an accelerator backend, whose host events
    time the launches, not the kernels). Events are grouped into executions by their
    ``run_id`` argument when it tells ``calls`` executions apart, else in time order into
    ``calls`` equal groups. An execution's time is the span from its first event's start
    to its last event's end: the kernels and the gaps between them, without the host's
    dispatch and synchronisation.

    Raises:
        DeviceTimingError: no event names the module, or the events cannot be split into
            ``calls`` executions.
    """
    procs = {e.get("pid"): str(e.get("args", {}).get("name", "")) for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    mine = [e for e in events if e.get("ph") == "X" and "dur" in e and _of_module(e, module)]
    device = [e for e in mine if procs.get(e.get("pid"), "").startswith("/device:")]
    use = device if device_only else device or mine
    if not use:
        found = (f"host events of {module!r} but no device kernel events" if mine
                 else f"no kernel events of {module!r}")
        raise DeviceTimingError(
            f"timing 'device': the profiler trace has {found} (is the accelerator's "
            "profiler, e.g. CUPTI, available?); use --timing back-to-back or sync")
    runs: dict[Any, list[dict]] = {}
    for e in use:
        runs.setdefault(e.get("args", {}).get("run_id"), []).append(e)
    if None in runs or len(runs) != calls:
        if len(use) % calls:
            raise DeviceTimingError(
                f"timing 'device': {len(use)} kernel events of {module!r} for {calls} "
                "calls; cannot tell the calls apart")
        per = len(use) // calls
        ordered = sorted(use, key=lambda e: float(e["ts"]))
        runs = {i: ordered[i * per:(i + 1) * per] for i in range(calls)}
    spans = sorted((min(float(e["ts"]) for e in g),
                    max(float(e["ts"]) + float(e["dur"]) for e in g)) for g in runs.values())
    return [(end - start) * 1e-6 for start, end in spans]  # trace times are microseconds


def trace_events(run: Callable[[], Any]) -> list[dict]:
    """The ``traceEvents`` of a :func:`jax.profiler.trace` around ``run()``."""
    import glob
    import gzip
    import json
    import tempfile

    import jax

    with tempfile.TemporaryDirectory(prefix="jaxsim-profile-") as d:
        with jax.profiler.trace(d):
            run()
        events: list[dict] = []
        for path in glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True):
            with gzip.open(path) as f:
                events += json.load(f).get("traceEvents", [])
    return events


def _traced_call_times(compiled: Any, args: tuple, calls: int) -> list[float]:
    """Run ``compiled`` ``calls`` times, one at a time, inside a profiler trace, and
    return each execution's device time (:func:`call_times_from_trace`)."""
    import jax

    def run() -> None:
        for _ in range(calls):
            jax.block_until_ready(compiled(*args))

    device_only = jax.devices()[0].platform != "cpu"
    return call_times_from_trace(trace_events(run), module_name(compiled.as_text()), calls,
                                 device_only)


def _is_oom(e: BaseException) -> bool:
    """Out of device memory (XLA's messages), or of host memory (a copy's buffer)."""
    return isinstance(e, MemoryError) or any(m in str(e) for m in _OOM_MARKERS)


# kernels (pure functions of device arrays; shapes follow from the arguments)


def _matmul(x, w):
    return x @ w


def _rmsnorm(x, w):
    import jax
    import jax.numpy as jnp

    x32 = x.astype(jnp.float32)
    inv = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + 1e-6)
    return (x32 * inv * w.astype(jnp.float32)[None, :]).astype(x.dtype)


def _residual_add(x, y):
    return x + y


def _silu_mul(gu):
    import jax

    f = gu.shape[-1] // 2
    gate, up = gu[:, :f], gu[:, f:]
    return jax.nn.silu(gate) * up


def _rotary(x, positions, cos_sin):
    """Neox-style rotary embedding of ``x`` [M, heads, hd] at ``positions`` [M]."""
    import jax.numpy as jnp

    half = x.shape[-1] // 2
    cs = cos_sin[positions].astype(x.dtype)  # [M, hd]: cos | sin
    cos, sin = cs[:, None, :half], cs[:, None, half:]
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def attn_prefill_kernel(q, k, v):
    """Attention of a prefill chunk: query ``i`` sees keys ``<= context_len + i``.

    Args:
        q: [B, T, N, H] queries of the ``T = chunk_len`` new tokens.
        k: [B, S, K, H] keys of the ``S = context_len + chunk_len`` tokens.
        v: values, shaped like ``k``.

    Returns:
        [B, T, N, H] attention output.
    """
    import jax
    import jax.numpy as jnp

    t, s = q.shape[1], k.shape[1]
    if s == t:
        return jax.nn.dot_product_attention(q, k, v, is_causal=True)
    qi = jax.lax.broadcasted_iota(jnp.int32, (t, s), 0)
    kj = jax.lax.broadcasted_iota(jnp.int32, (t, s), 1)
    mask = (kj <= qi + (s - t))[None, None]
    return jax.nn.dot_product_attention(q, k, v, mask=mask)


def attn_decode_kernel(q, k, v):
    """Attention of decode tokens: q [B, 1, N, H] over k, v [B, S, K, H]."""
    import jax

    return jax.nn.dot_product_attention(q, k, v)


def _shard_dims(dims: dict, tp: int) -> tuple[int, int, int, int, int]:
    h, hd = dims["hidden_size"], dims["head_dim"]
    return (h, hd, dims["num_heads"] // tp, max(dims["num_kv_heads"] // tp, 1),
            dims["ffn_size"] // tp)


class _Env:
    """What the per-operator case builders share during one run."""

    def __init__(self, spec: _Spec) -> None:
        import jax
        import jax.numpy as jnp

        self.spec = spec
        self.dt = jnp.dtype(DTYPES[spec.dtype])
        self.dev = jax.devices()[0]
        self.timing = spec.timing if spec.timing != "auto" else (
            "back-to-back" if self.dev.platform == "gpu" else "sync")
        self.h, self.hd, self.nh_g, self.nkv_g, self.f_g = _shard_dims(spec.dims, spec.tp)
        self.root = jax.random.key(SEED)
        self.count = 0

    def key(self):
        """A fresh random key (fixed seed, one per array)."""
        import jax

        self.count += 1
        return jax.random.fold_in(self.root, self.count)

    def rand(self, shape: tuple[int, ...], dtype=None):
        """A standard-normal device array of ``shape`` (default: the profiled dtype).

        Small arrays are drawn on the host and copied (no compilation per shape); large
        ones are drawn on the device (fast, and compiling once is then cheap).
        """
        import jax
        import numpy as np

        dtype = self.dt if dtype is None else dtype
        if math.prod(shape) > HOST_RANDOM_MAX:
            return jax.random.normal(self.key(), shape, dtype)
        self.count += 1
        host = np.random.default_rng((SEED, self.count)).standard_normal(shape, np.float32)
        return jax.device_put(host.astype(dtype), self.dev)


#: A case: (row fields, description, thunk returning the timing statistics).
_Case = tuple[dict, str, Callable[[], dict]]


def _gemm_cases(op: str, env: _Env) -> Iterator[_Case]:
    h, hd, nh_g, nkv_g, f_g = env.h, env.hd, env.nh_g, env.nkv_g, env.f_g
    kk, nn = {"qkv_proj": (h, (nh_g + 2 * nkv_g) * hd), "o_proj": (nh_g * hd, h),
              "mlp_up": (h, 2 * f_g), "mlp_down": (f_g, h)}[op]
    w = env.rand((kk, nn))  # one weight per operator, shared by every token count
    for m in env.spec.token_counts:
        yield ({"num_tokens": m}, f"num_tokens={m}",
               functools.partial(_time_gemm, env, m, kk, w))


def _time_gemm(env: _Env, m: int, kk: int, w) -> dict:
    return _time_kernel(_matmul, (env.rand((m, kk)), w), env.spec.repeats, env.timing)


def _elem_cases(op: str, env: _Env) -> Iterator[_Case]:
    for m in env.spec.token_counts:
        yield ({"num_tokens": m}, f"num_tokens={m}",
               functools.partial(_time_elementwise, env, op, m))


def _time_elementwise(env: _Env, op: str, m: int) -> dict:
    import jax
    import numpy as np

    h, hd = env.h, env.hd
    if op == "norm":
        fn, args = _rmsnorm, (env.rand((m, h)), env.rand((h,)))
    elif op == "residual_add":
        fn, args = _residual_add, (env.rand((m, h)), env.rand((m, h)))
    elif op == "activation":
        fn, args = _silu_mul, (env.rand((m, 2 * env.f_g)),)
    else:
        x = env.rand((m, env.nh_g + env.nkv_g, hd))
        positions = jax.device_put(np.arange(m, dtype=np.int32), env.dev)
        fn, args = _rotary, (x, positions, env.rand((m, hd), np.float32))
    return _time_kernel(fn, args, env.spec.repeats, env.timing)


def _attn_cases(op: str, env: _Env) -> Iterator[_Case]:
    if op == "attn_prefill":
        for chunk, ctx in env.spec.prefill_shapes:
            yield ({"num_tokens": chunk, "batch_size": 1, "chunk_len": chunk,
                    "context_len": ctx}, f"chunk_len={chunk} context_len={ctx}",
                   functools.partial(_time_attention, env, attn_prefill_kernel, 1, chunk,
                                     ctx + chunk))
    else:
        for batch, ctx in env.spec.decode_shapes:
            yield ({"num_tokens": batch, "batch_size": batch, "context_len": ctx},
                   f"batch_size={batch} context_len={ctx}",
                   functools.partial(_time_attention, env, attn_decode_kernel, batch, 1, ctx))


def _time_attention(env: _Env, fn: Callable, batch: int, q_len: int, kv_len: int) -> dict:
    q = env.rand((batch, q_len, env.nh_g, env.hd))
    k = env.rand((batch, kv_len, env.nkv_g, env.hd))
    v = env.rand((batch, kv_len, env.nkv_g, env.hd))
    return _time_kernel(fn, (q, k, v), env.spec.repeats, env.timing)


def _copy_cases(op: str, env: _Env) -> Iterator[_Case]:
    timer = _time_h2d if op == "h2d_copy" else _time_d2h
    for nbytes in env.spec.copy_bytes:
        yield ({"bytes": float(nbytes)}, f"bytes={nbytes}",
               functools.partial(timer, env, nbytes))


def _all_reduce_cases(op: str, env: _Env) -> Iterator[_Case]:
    import jax

    devices = jax.local_devices()
    for nbytes in env.spec.allreduce_bytes:
        elems = max(nbytes // env.dt.itemsize, 1)
        yield ({"bytes": float(elems * env.dt.itemsize), "num_workers": len(devices)},
               f"bytes={nbytes}", functools.partial(_time_all_reduce, env, devices, elems))


def _cases(op: str, env: _Env) -> Iterator[_Case]:
    if op in GEMM_OPS:
        return _gemm_cases(op, env)
    if op in ELEM_OPS:
        return _elem_cases(op, env)
    if op in ATTN_OPS:
        return _attn_cases(op, env)
    if op in COPY_OPS:
        return _copy_cases(op, env)
    return _all_reduce_cases(op, env)


def _run(spec: _Spec, progress: Callable[[str], None] | None) -> Measurements:
    """Time every case of a validated request; rows in :data:`SUPPORTED_OPS` order."""
    import jax

    from calibration import schema

    say = progress or (lambda msg: None)
    env = _Env(spec)
    hardware = spec.hardware or hardware_name(env.dev.device_kind, env.dev.platform)
    d = spec.dims
    model_fields = {
        "model": spec.model, "num_layers": d["num_layers"], "hidden_size": d["hidden_size"],
        "num_heads": d["num_heads"], "num_kv_heads": d["num_kv_heads"],
        "head_dim": d["head_dim"], "ffn_size": d["ffn_size"], "vocab_size": d["vocab_size"],
        "gated": 1, "tp": spec.tp,
    }
    rows: list[dict] = []
    for op in spec.ops:
        if op == "all_reduce" and len(jax.local_devices()) < 2:
            say("all_reduce: skipped (one local device)")
            continue
        say(f"profiling {op}")
        # copies and collectives depend on their size only: no model fields
        base = {} if op in COPY_OPS + ("all_reduce",) else model_fields
        n = 0
        for fields, what, thunk in _cases(op, env):
            try:
                stats = thunk()
            except Exception as e:  # only out-of-memory is skipped
                if not _is_oom(e):
                    raise
                where = "host" if isinstance(e, MemoryError) else "device"
                say(f"{op}: skipped {what}: out of {where} memory")
                continue
            n += 1
            rows.append({"hardware": hardware, "op": op, "dtype": spec.dtype, "bytes": 0.0,
                         **base, **fields, **stats, "source": f"jaxsim-profile:{op}:{n}"})
    return schema.from_rows(rows, origin="jaxsim-profile")


def _host_bytes(nbytes: int):
    import numpy as np

    return np.random.default_rng(SEED).integers(0, 256, size=nbytes, dtype=np.uint8)


def _time_h2d(env: _Env, nbytes: int) -> dict:
    import jax

    host = _host_bytes(nbytes)

    def once() -> float:
        t0 = time.perf_counter()
        jax.device_put(host, env.dev).block_until_ready()
        return time.perf_counter() - t0

    return _repeat(once, env.spec.repeats)


def _time_d2h(env: _Env, nbytes: int) -> dict:
    import jax
    import numpy as np

    x = jax.device_put(_host_bytes(nbytes), env.dev)
    # a fresh device array per call: JAX caches an array's host copy after the first read
    bump = jax.jit(lambda a: a + 1).lower(x).compile()

    def once() -> float:
        y = bump(x).block_until_ready()
        t0 = time.perf_counter()
        np.asarray(y)
        return time.perf_counter() - t0

    return _repeat(once, env.spec.repeats)


def _time_all_reduce(env: _Env, devices: list, elems: int) -> dict:
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    n = len(devices)
    mesh = Mesh(np.asarray(devices), ("x",))
    x = jax.jit(lambda k: jax.random.normal(k, (n * elems,), env.dt),
                out_shardings=NamedSharding(mesh, P("x")))(env.key())
    fn = jax.shard_map(lambda a: jax.lax.psum(a, "x"), mesh=mesh, in_specs=P("x"),
                       out_specs=P())
    return _time_kernel(fn, (x,), env.spec.repeats, env.timing)


# --------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``jaxsim profile`` options to a parser.

    Args:
        p: the (sub)command parser.
    """
    p.add_argument("--model", required=True,
                   help="model preset name (see `jaxsim presets`)")
    p.add_argument("--tp", type=int, default=1,
                   help="tensor-parallel degree: time one GPU's shard (default 1)")
    p.add_argument("--hardware", default=None,
                   help="name recorded in the hardware column (default: the GPU preset "
                        "matching the device, its device kind, or 'cpu')")
    p.add_argument("--tokens", default=None, metavar="M1,M2,...",
                   help="token counts of GEMM and elementwise rows (comma list)")
    p.add_argument("--ops", default=None, metavar="OP1,OP2,...",
                   help=f"operators to time (default all): {', '.join(SUPPORTED_OPS)}")
    p.add_argument("--repeats", type=int, default=10,
                   help="timed calls per shape after 2 warm-up calls (default 10)")
    p.add_argument("--timing", default="auto", metavar="|".join(TIMINGS),
                   help="sync: time each call on its own; back-to-back: time k calls issued "
                        "without waiting, divided by k; device: each call's kernel time from a "
                        "profiler trace (jax.profiler), without dispatch; auto (default): "
                        "back-to-back on a GPU, sync elsewhere")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bf16",
                   help="activation/weight dtype (default bf16)")
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes (a CPU smoke run)")
    p.add_argument("--out", required=True, metavar="FILE.csv",
                   help="CSV file to write (measurement schema; written atomically)")


_CLI_LABELS = {"model": "--model", "tp": "--tp", "hardware": "--hardware",
               "token_counts": "--tokens", "ops": "--ops", "repeats": "--repeats",
               "dtype": "--dtype", "timing": "--timing"}


def _fail(msg: str) -> int:
    print(f"jaxsim: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [t.strip() for t in text.split(",") if t.strip()]


def cmd(args: argparse.Namespace) -> int:
    """Run ``jaxsim profile``: measure, write the CSV, print a summary.

    Args:
        args: parsed options of :func:`add_arguments`.

    Returns:
        0 on success; 2 after printing one ``jaxsim: error: ...`` line on bad input.
    """
    try:
        tokens = _split(args.tokens)
        if tokens is not None:
            bad = [t for t in tokens if not re.fullmatch(r"[+-]?[0-9]+", t.strip())]
            if bad or not tokens:
                return _fail(f"--tokens: {args.tokens!r} is not a comma list of integers")
            tokens = [int(t) for t in tokens]
        base = QUICK if args.quick else DEFAULTS
        sizes = dict(base)
        if tokens is not None:
            sizes["token_counts"] = tokens
        spec = _resolve(args.model, tp=args.tp, hardware=args.hardware, repeats=args.repeats,
                        dtype=args.dtype, ops=_split(args.ops), sizes=sizes,
                        labels=_CLI_LABELS, timing=args.timing)
    except ValueError as e:
        return _fail(str(e))
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        return _fail(f"--out: {args.out}: folder {out_dir} does not exist")
    if os.path.isdir(args.out) or args.out.endswith(os.sep):
        return _fail(f"--out: {args.out!r} is a folder; give a file name")
    from calibration import schema

    t0 = time.perf_counter()
    try:
        m = _run(spec, lambda msg: print(f"jaxsim profile: {msg}", file=sys.stderr))
    except DeviceTimingError as e:
        return _fail(f"--timing: {e}")
    wall = time.perf_counter() - t0
    if not len(m):
        return _fail(f"no shape could be measured ({', '.join(spec.ops)} at the token counts "
                     "asked for; see the messages above); nothing written")
    try:
        schema.write_csv(m, args.out)
    except OSError as e:
        return _fail(f"--out: {args.out}: {e.strerror or e}")
    hw = m["hardware"][0] if len(m) else (spec.hardware or "?")
    print(f"jaxsim profile: {spec.model} tp={spec.tp} {spec.dtype} on {hw}: {len(m)} rows "
          f"in {wall:.1f} s -> {args.out}")
    for op in [o for o in SUPPORTED_OPS if o in set(m["op"].tolist())]:
        t = m.where(op=op)["time_s"]
        print(f"  {op:<13}{len(t):>4} rows   time_s {_fmt_s(float(t.min()))} .. "
              f"{_fmt_s(float(t.max()))}")
    return 0


def _fmt_s(t: float) -> str:
    if not math.isfinite(t):
        return str(t)
    if t < 1e-3:
        return f"{t * 1e6:.1f} us"
    if t < 1:
        return f"{t * 1e3:.2f} ms"
    return f"{t:.2f} s"
