"""``jaxsim profile``: kernel rows in the measurement schema, CSV round trip, CLI, bad input.

Everything runs on the CPU with tiny shapes; the multi-device all-reduce path runs in a
subprocess with two forced host devices.
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from calibration import schema
from jaxsim import presets
from jaxsim import profile as prof

MODEL = "Llama-3.1-8B"
TP = 8  # keeps the 8B shard's GEMM weights small on a CPU
TOKENS = (1, 8)
REPEATS = 3


@pytest.fixture(scope="module")
def quick_rows() -> schema.Measurements:
    return prof.profile("llama-3.1-8b", tp=TP, token_counts=TOKENS, quick=True,
                        repeats=REPEATS)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxsim profile")
    prof.add_arguments(p)
    return p


def _run_cmd(argv: list[str], capsys) -> tuple[int, str, str]:
    code = prof.cmd(_parser().parse_args(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# --------------------------------------------------------------------------- rows


def test_profile__quick_run_has_every_op_with_positive_times(quick_rows):
    m = quick_rows
    expected = [op for op in prof.SUPPORTED_OPS if op != "all_reduce"]  # one CPU device
    assert m.ops() == sorted(expected)
    assert "all_reduce" not in m.ops()
    for c in ("time_s", "time_min_s", "time_mean_s", "time_std_s"):
        assert np.all(np.isfinite(m[c])), c
    assert np.all(m["time_s"] > 0) and np.all(m["time_min_s"] > 0)
    assert np.all(m["time_min_s"] <= m["time_s"]) and np.all(m["time_std_s"] >= 0)
    assert np.all(m["repeats"] == REPEATS)
    assert set(m["hardware"].tolist()) == {"cpu"}
    assert set(m["dtype"].tolist()) == {"bf16"}
    for op in prof.SUPPORTED_OPS:
        src = m.where(op=op)["source"].tolist()
        assert src == [f"jaxsim-profile:{op}:{i + 1}" for i in range(len(src))]


def test_profile__shape_fields_follow_the_request(quick_rows):
    m = quick_rows
    _, dims = presets.model(MODEL)
    for op in prof.GEMM_OPS + prof.ELEM_OPS:
        r = m.where(op=op)
        assert r["num_tokens"].tolist() == list(TOKENS), op
        assert set(r["model"].tolist()) == {MODEL}
        for c in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
                  "ffn_size", "vocab_size"):
            assert np.all(r[c] == dims[c]), (op, c)
        assert np.all(r["tp"] == TP) and np.all(r["gated"] == 1)
        assert np.all(r["bytes"] == 0)
    pre = m.where(op="attn_prefill")
    shapes = prof.QUICK["prefill_shapes"]
    assert list(zip(pre["chunk_len"].tolist(), pre["context_len"].tolist(),
                    strict=True)) == list(shapes)
    assert np.all(pre["batch_size"] == 1) and np.all(pre["num_tokens"] == pre["chunk_len"])
    dec = m.where(op="attn_decode")
    assert list(zip(dec["batch_size"].tolist(), dec["context_len"].tolist(),
                    strict=True)) == list(prof.QUICK["decode_shapes"])
    assert np.all(dec["num_tokens"] == dec["batch_size"]) and np.all(dec["chunk_len"] == 0)
    for op in prof.COPY_OPS:
        r = m.where(op=op)
        assert r["bytes"].tolist() == [float(b) for b in prof.QUICK["copy_bytes"]]
        assert set(r["model"].tolist()) == {""} and np.all(r["tp"] == 0)


def test_profile__csv_round_trips(quick_rows, tmp_path):
    path = tmp_path / "prof.csv"
    schema.write_csv(quick_rows, path)
    back = schema.read_csv(path)
    assert len(back) == len(quick_rows)
    for c in schema.COLUMNS:
        if c == "source":  # read_csv names rows by file and line
            continue
        a, b = quick_rows[c], back[c]
        if c in schema.FLOAT_COLS:
            np.testing.assert_array_equal(a, b, err_msg=c)
        else:
            assert a.tolist() == b.tolist(), c
    assert back.digest() == quick_rows.digest()


def test_profile__fp32_ops_subset_and_hardware_name():
    m = prof.profile("Qwen3-30B-A3B", ops=["norm", "rotary"], token_counts=(2,),
                     dtype="fp32", hardware="h100-sxm", repeats=1)
    assert m.ops() == ["norm", "rotary"]
    assert set(m["dtype"].tolist()) == {"fp32"}
    assert set(m["hardware"].tolist()) == {"H100-SXM"}  # preset spelling
    assert np.all(m["repeats"] == 1) and np.all(m["time_std_s"] == 0)


def test_profile__out_of_memory_shape_is_skipped(monkeypatch):
    real = prof._time_kernel

    def fake(fn, args, repeats, timing):
        if args[0].shape[0] == 4:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1 bytes")
        return real(fn, args, repeats, timing)

    monkeypatch.setattr(prof, "_time_kernel", fake)
    said: list[str] = []
    m = prof.profile("Qwen3-30B-A3B", ops=["residual_add"], token_counts=(2, 4),
                     repeats=1, progress=said.append)
    assert m["num_tokens"].tolist() == [2]
    assert any("skipped num_tokens=4" in s for s in said), said

    # a host buffer too large for host memory (a copy size) is skipped the same way
    real_host = prof._host_bytes

    def host(nbytes):
        if nbytes > 4096:
            raise MemoryError(f"Unable to allocate {nbytes} bytes")
        return real_host(nbytes)

    monkeypatch.setattr(prof, "_host_bytes", host)
    said.clear()
    m = prof.profile("Qwen3-30B-A3B", ops=["h2d_copy"], copy_bytes=(1024, 10**12),
                     repeats=1, progress=said.append)
    assert m["bytes"].tolist() == [1024.0]
    assert any("out of host memory" in s for s in said), said

    def broken(fn, args, repeats, timing):
        raise RuntimeError("some other failure")

    monkeypatch.setattr(prof, "_time_kernel", broken)
    with pytest.raises(RuntimeError, match="some other failure"):
        prof.profile("Qwen3-30B-A3B", ops=["residual_add"], token_counts=(2,), repeats=1)


# --------------------------------------------------------------------------- kernels


def test_profile__calls_per_sample_fill_the_target_within_bounds():
    target, most = prof.BACK_TO_BACK_TARGET_S, prof.BACK_TO_BACK_MAX_CALLS
    assert prof.calls_per_sample(target * 10) == 1
    assert prof.calls_per_sample(target) == 1
    assert prof.calls_per_sample(target / 4) == 4
    assert prof.calls_per_sample(target / 4.5) == 5  # rounded up: a sample lasts >= target
    assert prof.calls_per_sample(1e-9) == most
    assert prof.calls_per_sample(0.0) == most


def test_profile__back_to_back_timing_issues_k_calls_per_sample(monkeypatch):
    """A back-to-back sample issues k calls and waits once; sync waits on every call.
    Counted through a stand-in for the compiled kernel."""
    import jax

    log: list[str] = []

    class Compiled:
        def __call__(self, *args):
            log.append("call")
            return np.zeros(1)

    class Jitted:
        def lower(self, *args):
            return self

        def compile(self):
            return Compiled()

    monkeypatch.setattr(jax, "jit", lambda fn: Jitted())
    monkeypatch.setattr(jax, "block_until_ready", lambda x: log.append("wait") or x)
    monkeypatch.setattr(prof, "calls_per_sample", lambda t: 7)
    row = prof._time_kernel(None, (), 3, "back-to-back")
    assert row["repeats"] == 3 and row["time_s"] > 0
    blocking = ["call", "wait"] * (prof.WARMUP + 3)  # warm-up, then 3 to choose k
    sample = ["call"] * 7 + ["wait"]
    assert log == blocking + sample * (prof.WARMUP + 3)
    log.clear()
    prof._time_kernel(None, (), 3, "sync")
    assert log == ["call", "wait"] * (prof.WARMUP + 3)


def test_profile__timing_auto_is_sync_on_cpu_and_back_to_back_runs():
    m = prof.profile("Qwen3-30B-A3B", ops=["residual_add"], token_counts=(2,), repeats=2,
                     timing="back-to-back")
    assert len(m) == 1 and m["repeats"][0] == 2 and m["time_s"][0] > 0
    env = prof._Env(prof._resolve("Qwen3-30B-A3B", tp=1, hardware=None, repeats=1,
                                  dtype="bf16", ops=None, sizes=prof.QUICK))
    assert env.timing == "sync"


# --------------------------------------------------------------------------- device timing


def _meta(pid: int, name: str) -> dict:
    return {"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}}


def _x(pid: int, ts: float, dur: float, module: str, **args) -> dict:
    return {"ph": "X", "pid": pid, "tid": 1, "name": "k", "ts": ts, "dur": dur,
            "args": {"hlo_module": module, **args}}


def test_profile__device_times_from_a_gpu_like_trace():
    """Two kernels per call on a device process, no run ids: the calls are split in time
    order, each call's time is its kernels' span (gap included), and the host's launch
    events of the same module and other modules' kernels are ignored."""
    mod = "jit__matmul"
    events = [_meta(1, "/host:CPU"), _meta(7, "/device:GPU:0 NVIDIA H200")]
    for i in range(3):
        t = 1000.0 * i
        events += [_x(1, t, 200.0, mod),  # host-side launch: not kernel time
                   _x(7, t + 50, 10.0 + i, mod), _x(7, t + 62 + i, 5.0, mod),
                   _x(7, t + 300, 99.0, "jit_other")]
    got = prof.call_times_from_trace(events, mod, 3)
    assert got == pytest.approx([17e-6, 18e-6, 19e-6])
    assert prof.call_times_from_trace(events, mod, 3, device_only=True) == got
    # on an accelerator, host launch events alone are not kernel times
    host_only = [e for e in events if e.get("pid") != 7]
    with pytest.raises(prof.DeviceTimingError, match="host events of 'jit__matmul' but no "
                                                     "device kernel events"):
        prof.call_times_from_trace(host_only, mod, 3, device_only=True)


def test_profile__device_times_group_host_operations_by_run_id():
    """On a CPU backend the operations run on host threads, possibly at the same time:
    grouped by run id, a call's time is its span, not the sum of its operations."""
    mod = "jit_k"
    events = [_meta(1, "/host:CPU"),
              _x(1, 0.0, 30.0, mod, run_id="5"), _x(1, 10.0, 30.0, mod, run_id="5"),
              _x(1, 100.0, 4.0, mod, run_id="6"),
              _x(1, 500.0, 8.0, "jit_k.1", run_id="7")]  # a module suffix XLA may add
    got = prof.call_times_from_trace(events, mod, 3)
    assert got == pytest.approx([40e-6, 4e-6, 8e-6])


def test_profile__device_times_errors_name_the_module():
    with pytest.raises(prof.DeviceTimingError, match="no kernel events of 'jit_a'.*back-to-back"):
        prof.call_times_from_trace([_x(1, 0.0, 1.0, "jit_b")], "jit_a", 1)
    events = [_x(1, float(t), 1.0, "jit_a") for t in range(5)]
    with pytest.raises(prof.DeviceTimingError, match="5 kernel events of 'jit_a' for 2 calls"):
        prof.call_times_from_trace(events, "jit_a", 2)
    assert prof.module_name("HloModule jit_f, is_scheduled=true\nENTRY ...") == "jit_f"
    assert prof.module_name("garbage") == ""


def _cpu_trace_names_modules() -> bool:
    """Whether this JAX's CPU runtime records its operations, with their module, in a
    profiler trace (JAX 0.10 does; 0.7 records none)."""
    import jax
    import jax.numpy as jnp

    f = jax.jit(lambda x: jnp.tanh(x) * 2)
    x = jnp.ones((64, 64))
    jax.block_until_ready(f(x))
    events = prof.trace_events(lambda: jax.block_until_ready(f(x)))
    return any("hlo_module" in e.get("args", {}) for e in events if e.get("ph") == "X")


def test_profile__device_timing_on_cpu_leaves_out_the_dispatch():
    """A one-token norm takes microseconds; a synchronised call also pays the dispatch
    and the wait. The traced time is each call's operations only, so it is smaller. A
    JAX whose CPU runtime records no operations gets the clear error instead."""
    kw = dict(ops=["norm"], token_counts=(1,), repeats=8)
    if not _cpu_trace_names_modules():
        with pytest.raises(prof.DeviceTimingError, match="no kernel events of 'jit__rmsnorm'"):
            prof.profile(MODEL, timing="device", **kw)
        return
    dev = prof.profile(MODEL, timing="device", **kw)
    sync = prof.profile(MODEL, timing="sync", **kw)
    assert dev["repeats"][0] == 8 and dev["time_s"][0] > 0
    assert dev["time_s"][0] < sync["time_s"][0], (dev["time_s"], sync["time_s"])


def test_profile__cli_device_timing_failure_is_one_line(monkeypatch, tmp_path, capsys):
    def no_events(compiled, args, calls):
        return prof.call_times_from_trace([], "jit_norm", calls)

    monkeypatch.setattr(prof, "_traced_call_times", no_events)
    out = tmp_path / "m.csv"
    code, _, err = _run_cmd(["--model", MODEL, "--quick", "--ops", "norm", "--timing",
                             "device", "--out", str(out)], capsys)
    assert code == 2 and not out.exists()
    last = err.strip().splitlines()[-1]
    assert last.startswith("jaxsim: error: --timing: timing 'device': the profiler trace "
                           "has no kernel events of 'jit_norm'"), err


def test_profile__prefill_mask_sees_context_plus_causal_chunk():
    import jax

    ctx, chunk, nh, nkv, hd = 5, 3, 4, 2, 8
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, ctx + chunk, nh, hd), np.float32)
    k = rng.standard_normal((1, ctx + chunk, nkv, hd), np.float32)
    v = rng.standard_normal((1, ctx + chunk, nkv, hd), np.float32)
    full = jax.jit(jax.nn.dot_product_attention, static_argnames="is_causal")(
        q, k, v, is_causal=True)
    part = jax.jit(prof.attn_prefill_kernel)(q[:, ctx:], k, v)
    np.testing.assert_allclose(part, full[:, ctx:], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jit(prof.attn_prefill_kernel)(q, k, v), full, rtol=1e-6)
    last = jax.jit(prof.attn_decode_kernel)(q[:, -1:], k, v)
    np.testing.assert_allclose(last, full[:, -1:], rtol=1e-5, atol=1e-5)


def test_profile__hardware_name_maps_device_kinds_to_presets():
    cases = {"NVIDIA H100 80GB HBM3": "H100-SXM", "NVIDIA H100 PCIe": "H100-PCIe",
             "NVIDIA H200": "H200", "NVIDIA GH200 480GB": "GH200",
             "NVIDIA A100-SXM4-80GB": "A100-80GB", "NVIDIA L40S": "L40S",
             "NVIDIA A40": "A40", "NVIDIA H100 SXM5 80GB": "H100-SXM",
             "NVIDIA GeForce RTX 4090": "NVIDIA GeForce RTX 4090",
             # whole words: an RTX A4000 is not an A40, nor a GB200 a B200; cards without
             # a preset keep their kind (the A100 80GB PCIe is not the SXM preset)
             "NVIDIA RTX A4000": "NVIDIA RTX A4000", "NVIDIA GB200": "NVIDIA GB200",
             "NVIDIA A100 80GB PCIe": "NVIDIA A100 80GB PCIe",
             "NVIDIA H100 NVL": "NVIDIA H100 NVL", "NVIDIA L40": "NVIDIA L40"}
    for kind, name in cases.items():
        assert prof.hardware_name(kind) == name, kind
    assert prof.hardware_name("cpu", "cpu") == "cpu"
    assert {row[-1] for row in prof._GPU_KINDS} <= set(presets.gpu_names())


def test_profile__module_imports_no_jax_at_top_level():
    tree = ast.parse(Path(prof.__file__).read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module.split(".")[0])
    assert not top & {"jax", "jaxlib", "numpy", "calibration"}, top


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, field, value", [
    ({"model": "no-such-model"}, "model", "Llama-3.1-8B"),  # lists the allowed names
    ({"tp": 3}, "tp", "num_heads=32"),
    ({"tp": 0}, "tp", "0"),
    ({"ops": ["no_such_op"]}, "ops", "no_such_op"),
    ({"ops": ["lm_head"]}, "ops", "lm_head"),
    ({"ops": []}, "ops", "empty"),
    ({"token_counts": (1, 0)}, "token_counts", "0"),
    ({"token_counts": (-4,)}, "token_counts", "-4"),
    ({"prefill_shapes": ((0, 4),)}, "prefill_shapes: chunk_len", "0"),
    ({"prefill_shapes": ((4, -1),)}, "prefill_shapes: context_len", "-1"),
    ({"decode_shapes": ((2, 0),)}, "decode_shapes: context_len", "0"),
    ({"copy_bytes": (0,)}, "copy_bytes", "0"),
    ({"allreduce_bytes": (-1,)}, "allreduce_bytes", "-1"),
    ({"repeats": 0}, "repeats", "0"),
    ({"dtype": "fp16"}, "dtype", "fp16"),
    ({"hardware": " "}, "hardware", "' '"),
    ({"timing": "fast"}, "timing", "'fast'"),
    ({"tp": 16}, "tp", "16 must be <= 8"),
    ({"token_counts": (1, 262144)}, "token_counts", "262144 tokens in one batch"),
    ({"decode_shapes": ((262144, 8),)}, "decode_shapes", "262144 tokens in one batch"),
])
def test_profile__bad_input_raises_value_error_naming_the_field(kwargs, field, value):
    kw = {"model": MODEL, "quick": True, **kwargs}
    with pytest.raises(ValueError) as e:
        prof.profile(kw.pop("model"), **kw)
    msg = str(e.value)
    assert msg.startswith(f"{field}:"), msg
    assert value in msg, msg


# --------------------------------------------------------------------------- command line


def test_profile__cli_writes_csv(tmp_path, capsys):
    out = tmp_path / "m.csv"
    code, stdout, err = _run_cmd(
        ["--model", "qwen3-30b-a3b", "--quick", "--tokens", "1,4", "--ops",
         "norm,qkv_proj,attn_decode,h2d_copy", "--repeats", "2", "--hardware", "h200",
         "--out", str(out)], capsys)
    assert code == 0, err
    m = schema.read_csv(out)
    assert m.ops() == ["attn_decode", "h2d_copy", "norm", "qkv_proj"]
    assert m.where(op="norm")["num_tokens"].tolist() == [1, 4]
    assert set(m["hardware"].tolist()) == {"H200"}
    assert set(m["model"].tolist()) == {"Qwen3-30B-A3B", ""}
    assert np.all(m["repeats"] == 2)
    assert "6 rows" in stdout and str(out) in stdout and "qkv_proj" in stdout
    assert not list(tmp_path.glob(".tmp-*")), "temporary file left behind"


def test_profile__cli_through_jaxsim_main(tmp_path, capsys):
    pytest.importorskip("calibration.cli")
    from jaxsim import cli

    out = tmp_path / "m.csv"
    code = cli.main(["profile", "--model", "Qwen3-30B-A3B", "--quick", "--tokens", "2",
                     "--ops", "residual_add", "--repeats", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert schema.read_csv(out)["num_tokens"].tolist() == [2]


@pytest.mark.parametrize("argv, needle", [
    (["--model", "gpt-17"], "--model: unknown model"),
    (["--model", MODEL, "--tp", "3"], "--tp: 3 does not divide num_heads"),
    (["--model", MODEL, "--ops", "norm,bogus"], "--ops: unknown op 'bogus'"),
    (["--model", MODEL, "--tokens", "1,x"], "--tokens: '1,x'"),
    (["--model", MODEL, "--tokens", "0"], "--tokens: 0"),
    (["--model", MODEL, "--tokens", "+-5"], "--tokens: '+-5' is not a comma list"),
    (["--model", MODEL, "--tokens", "\u00b2"], "is not a comma list of integers"),
    (["--model", MODEL, "--tokens", "262144"], "--tokens: 262144 tokens in one batch"),
    (["--model", MODEL, "--repeats", "0"], "--repeats: 0"),
    (["--model", MODEL, "--timing", "fast"], "--timing: 'fast' is not a timing method"),
])
def test_profile__cli_bad_input_is_one_line_and_exit_2(argv, needle, tmp_path, capsys):
    out = tmp_path / "m.csv"
    code, stdout, err = _run_cmd([*argv, "--out", str(out)], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxsim: error: "), err
    assert needle in lines[0], lines[0]
    assert not out.exists()


def test_profile__cli_missing_output_folder(tmp_path, capsys):
    out = tmp_path / "missing" / "m.csv"
    code, _, err = _run_cmd(["--model", MODEL, "--quick", "--out", str(out)], capsys)
    assert code == 2 and err.startswith("jaxsim: error: --out:"), err


# --------------------------------------------------------------------------- devices


def test_profile__all_reduce_on_two_host_devices(tmp_path):
    out = tmp_path / "ar.csv"
    script = textwrap.dedent(f"""
        import jax
        assert len(jax.local_devices()) == 2, jax.local_devices()
        from calibration import schema
        from jaxsim import profile
        m = profile.profile("Qwen3-30B-A3B", ops=["all_reduce"], quick=True, repeats=2,
                            allreduce_bytes=(4096, 65536))
        schema.write_csv(m, {str(out)!r})
    """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_NUMPY_RANK_PROMOTION": "raise"}
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-W", "error", "-c", script], env=env, cwd=root,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    m = schema.read_csv(out)
    assert m.ops() == ["all_reduce"]
    assert m["bytes"].tolist() == [4096.0, 65536.0]
    assert np.all(m["num_workers"] == 2)
    assert all(math.isfinite(t) and t > 0 for t in m["time_s"].tolist())


H200_DIR = Path(__file__).resolve().parent.parent / "calibration" / "data" / "h200"


@pytest.mark.parametrize("csv_name,preset_name", [
    ("llama-3.1-8b_profile.csv", "H200-jaxsim-profile.json"),  # --timing sync
    ("llama-3.1-8b_profile_back-to-back.csv", "H200-jaxsim-profile-back-to-back.json"),
])
def test_h200_profile__shipped_preset_is_fitted_to_the_shipped_measurements(
        csv_name, preset_name):
    """The H200 profiles measured with ``jaxsim profile`` on one H200 and the presets
    calibrated from them: each preset's data hash is its CSV's, it reads as a preset, and
    every operator of the profile is in its error report."""
    from calibration import loaders
    from calibration.calibrate import representable
    from jaxsim import costpresets

    m = loaders.load([str(H200_DIR / csv_name)])
    m = m.select(representable(m)[0])  # the rows calibrate fits (copies are not)
    preset = costpresets.read(str(H200_DIR / preset_name))
    assert preset["hardware"] == "H200" and set(m["hardware"]) == {"H200"}
    assert preset["data_sha256"] == m.digest()
    ops = set(m["op"]) - {"h2d_copy", "d2h_copy"}
    assert ops <= set(preset["report"])
    assert all(np.isfinite(v) and v > 0 for v in preset["values"].values())
