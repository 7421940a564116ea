"""The persistent compilation cache of the ``jaxsim`` command line.

    python benchmarks/bench_compile_cache.py [--repeats 2] [--demo]

Times ``jaxsim simulate --json`` (the default configuration) end to end, each run its
own process: once with an empty cache folder (``XDG_CACHE_HOME`` pointed at a fresh
temporary folder, so the run compiles and fills it), then ``--repeats`` times with that
cache filled and, alternating with them, with the cache off
(``JAX_COMPILATION_CACHE_DIR=``). Checks that every run prints the same metrics (all
keys but ``wall_s``). It also times tracing, lowering and compiling the core scenario's
chunk function (1,024 lanes) in a fresh process, with an empty cache and then loaded
from it. With ``--demo`` it times ``jaxsim demo`` the same way (empty cache,
then filled). Writes ``results/compile_cache_cpu.json`` with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from jaxsim import bench  # noqa: E402


def _run(args: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "jaxsim", *args], env=env,
                         capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"jaxsim {' '.join(args)} failed:\n{out.stderr}")
    return wall, out.stdout


_CHUNK = (
    "import time, jax.numpy as jnp\n"
    "from jaxsim import bench, sim\n"
    "prep, params = bench._prepare(1000, 1024)\n"
    "st = sim._init_batch(prep.shape, params, prep.workload, jnp.int32(10**6), False)\n"
    "t0 = time.perf_counter()\n"
    "sim._run_chunk_batch.lower(prep.shape, params, prep.workload, st, False).compile()\n"
    "print(time.perf_counter() - t0)\n"
)


def _chunk_compile_s(env: dict) -> float:
    """Seconds to trace, lower and compile (or load) the core scenario's chunk function
    for 1,024 lanes on one device, in a fresh process."""
    out = subprocess.run([sys.executable, "-c", _CHUNK], env=env, capture_output=True,
                         text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return float(out.stdout.split()[-1])


def _metrics(stdout: str) -> dict:
    m = json.loads(stdout)
    m.pop("wall_s", None)
    return m


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--demo", action="store_true", help="also time `jaxsim demo`")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"),
                    help="folder of the record compile_cache_cpu.json (default "
                         "benchmarks/results)")
    args = ap.parse_args()

    base = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    off = dict(base, JAX_COMPILATION_CACHE_DIR="")
    rec: dict = {"command": "python benchmarks/bench_compile_cache.py"
                 + (" --demo" if args.demo else "")}
    with tempfile.TemporaryDirectory() as tmp:
        on = dict(base, XDG_CACHE_HOME=tmp)
        sim = ["simulate", "--json"]
        first, out0 = _run(sim, on)
        want = _metrics(out0)
        warm, cold = [], []
        for _ in range(args.repeats):
            w, o = _run(sim, on)
            warm.append(w)
            assert _metrics(o) == want, "metrics differ with the cache filled"
            w, o = _run(sim, off)
            cold.append(w)
            assert _metrics(o) == want, "metrics differ with the cache off"
        rec.update({
            "simulate_first_s": first, "simulate_cached_s": warm, "simulate_off_s": cold,
            "simulate_ratio_off_over_cached": min(cold) / min(warm),
            "cache_bytes": sum(os.path.getsize(os.path.join(d, f))
                               for d, _, fs in os.walk(tmp) for f in fs),
        })
        print(f"jaxsim simulate: first run {first:.1f} s (empty cache); cached "
              f"{', '.join(f'{w:.1f}' for w in warm)} s; cache off "
              f"{', '.join(f'{w:.1f}' for w in cold)} s; off / cached "
              f"{rec['simulate_ratio_off_over_cached']:.2f}x; same metrics")
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(base, JAX_COMPILATION_CACHE_DIR=tmp)
        first = _chunk_compile_s(env)
        loaded = [_chunk_compile_s(env) for _ in range(args.repeats)]
    rec.update({"chunk_compile_s": first, "chunk_loaded_s": loaded,
                "chunk_ratio_compile_over_loaded": first / min(loaded)})
    print(f"core chunk function (B = 1024): compiled in {first:.1f} s; from the cache "
          f"{', '.join(f'{w:.1f}' for w in loaded)} s; {first / min(loaded):.1f}x")
    if args.demo:
        with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as outdir:
            on = dict(base, XDG_CACHE_HOME=tmp)
            demo = ["demo", "--out", outdir]
            d_first, _ = _run(demo, on)
            d_warm, _ = _run(demo, on)
        rec.update({"demo_first_s": d_first, "demo_cached_s": d_warm,
                    "demo_ratio_first_over_cached": d_first / d_warm})
        print(f"jaxsim demo: first run {d_first:.1f} s (empty cache); cached "
              f"{d_warm:.1f} s; {d_first / d_warm:.2f}x")
    rec["machine"] = bench.machine()  # includes the JAX version
    rec["date"] = time.strftime("%Y-%m-%d")
    os.makedirs(args.out, exist_ok=True)
    bench.write_record(os.path.join(args.out, "compile_cache_cpu.json"), rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
