"""Transform invariance: jit == eager, vmap lane == single run, permutation, padding,
lane isolation, no recompilation for new values, finite gradients, dtypes under x64."""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import sys
import textwrap

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsim import params as P
from jaxsim import sim
from jaxsim.shapes import SimShape
from jaxsim.state import init_state
from jaxsim.step import step
from jaxsim.workload import Trace, synthetic, to_workload
from tests.helpers import lane_params

TRACE = synthetic("poisson", 24, {"dist": "uniform", "low": 4, "high": 120},
                  {"dist": "uniform", "low": 1, "high": 30}, rate=40.0, seed=3)


def lanes(n=6, trace=TRACE):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        cfg = {
            "max_num_seqs": int(rng.choice([2, 4, 8])),
            "max_num_batched_tokens": int(rng.choice([16, 64, 256])),
            "block_size": int(rng.choice([4, 16])),
            "num_gpu_blocks": int(rng.choice([60, 200, 5000])),
            "scheduler": str(rng.choice(["v1", "v0"])),
            "gpu": str(rng.choice(["H100-SXM", "A100-80GB"])),
        }
        if cfg["scheduler"] == "v0":
            cfg["max_num_batched_tokens"] = 256
        out.append(lane_params(cfg, trace))
    return out


def shape_for(trace=TRACE, R=None, S=8):
    return SimShape(max_requests=R or len(trace), max_slots=S, chunk_iterations=128)


def assert_metrics_equal(a: dict, b: dict, rtol=0.0):
    for k in a:
        if rtol == 0.0:
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
        else:
            np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=rtol,
                                       err_msg=k)


def test_transforms__jit_step_equals_eager():
    p = lanes(1)[0]
    shape = shape_for()
    wl = to_workload(TRACE)
    s_eager = s_jit = init_state(shape, p, wl, jnp.int32(10**6))
    jstep = jax.jit(functools.partial(step, shape))
    for _ in range(12):
        s_eager = step(shape, p, wl, s_eager)
        s_jit = jstep(p, wl, s_jit)
    for name, a in vars(s_eager).items():
        b = getattr(s_jit, name)
        if name.endswith("_lo"):  # compare the (hi + lo) value instead
            hi = name[:-3] + "_hi"
            a = np.float64(getattr(s_eager, hi)) + np.asarray(a, np.float64)
            b = np.float64(getattr(s_jit, hi)) + np.asarray(b, np.float64)
        # Per-request times are float32 differences of the double-float clock: allow 1 ns
        # absolute (XLA may fuse and reassociate what eager mode runs op by op).
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                   rtol=1e-6, atol=1e-9, err_msg=name)
    for name in ("n_run", "n_act", "ptr", "iterations", "slot_computed", "slot_generated"):
        np.testing.assert_array_equal(getattr(s_eager, name), getattr(s_jit, name))


# The batch tests below share one compiled chunk function (six lanes of shape_for()),
# so the file compiles few executables.


def test_transforms__vmap_lane_equals_single_run(xla_defaults):
    ls = lanes(6)
    shape = shape_for()
    wl = to_workload(TRACE)
    batch = sim.simulate_batch(shape, P.stack(ls), wl)
    for i, p in enumerate(ls):
        one = sim.simulate(shape, p, wl)
        # The simulation itself is bit-identical lane by lane ...
        for name, v in vars(one.state).items():
            np.testing.assert_array_equal(np.asarray(v)[0], np.asarray(getattr(batch.state,
                                          name))[i], err_msg=f"lane {i} {name}")
        # ... and the end-of-run reductions over requests agree to float32 rounding (XLA
        # may order a sum over R differently for a batch of 1).
        for k, v in one.metrics.items():
            np.testing.assert_allclose(v[0], batch.metrics[k][i], rtol=1e-6,
                                       err_msg=f"lane {i} {k}")


def test_transforms__small_batches_run_the_quick_compiled_variant(monkeypatch):
    """sim.use_quick_compile(): a batch within both limits, on a CPU and without a
    prefix cache, runs the chunk function compiled for compile time. Off by default."""
    assert sim.QUICK_COMPILE_MAX_LANES == 0
    with pytest.raises(ValueError, match="max_lanes=-1 must be an int >= 0"):
        sim.use_quick_compile(-1)
    monkeypatch.setattr(sim, "QUICK_COMPILE_MAX_LANES", 0)  # restored after the test
    monkeypatch.setattr(sim, "QUICK_COMPILE_MAX_WORK", sim.QUICK_COMPILE_MAX_WORK)
    sim.use_quick_compile()
    calls = []
    for name in ("_run_chunk_batch", "_run_chunk_batch_quick"):
        fn = getattr(sim, name)
        monkeypatch.setattr(sim, name, lambda *a, _fn=fn, _name=name: (
            calls.append(_name), _fn(*a))[1])
    ls, shape, wl = lanes(6), shape_for(), to_workload(TRACE)
    quick = sim.simulate_batch(shape, P.stack(ls), wl)
    assert set(calls) == {"_run_chunk_batch_quick"}
    calls.clear()
    monkeypatch.setattr(sim, "QUICK_COMPILE_MAX_LANES", 5)  # 6 lanes: over the limit
    optimised = sim.simulate_batch(shape, P.stack(ls), wl)
    assert set(calls) == {"_run_chunk_batch"}
    # under the default suite's XLA_FLAGS both variants compile alike; users' agree to
    # float32 precision (README: Performance)
    for k, v in optimised.metrics.items():
        np.testing.assert_allclose(quick.metrics[k], v, rtol=1e-6, err_msg=k)
    sim.use_quick_compile(16)
    assert sim._quick(shape, 16) and not sim._quick(shape, 17)
    assert not sim._quick(dataclasses.replace(shape, cache_entries=8, hash_space=8), 1)
    big = dataclasses.replace(shape, max_requests=sim.QUICK_COMPILE_MAX_WORK // 4 + 1)
    assert sim._quick(big, 3) and not sim._quick(big, 4)  # lanes x requests over the limit


def test_transforms__batch_permutation_permutes_outputs():
    ls = lanes(6)
    shape = shape_for()
    wl = to_workload(TRACE)
    perm = np.array([3, 0, 5, 1, 4, 2])
    a = sim.simulate_batch(shape, P.stack(ls), wl)
    b = sim.simulate_batch(shape, P.stack([ls[i] for i in perm]), wl)
    for k in a.metrics:
        np.testing.assert_array_equal(a.metrics[k][perm], b.metrics[k], err_msg=k)


def test_transforms__padding_invariance():
    ls = lanes(6)
    base = sim.simulate_batch(shape_for(), P.stack(ls), to_workload(TRACE))
    bigger_r = sim.simulate_batch(shape_for(R=40), P.stack(ls), to_workload(TRACE, 40))
    bigger_s = sim.simulate_batch(shape_for(S=32), P.stack(ls), to_workload(TRACE))
    for other in (bigger_r, bigger_s):
        for k in ("completed", "preemptions", "iterations", "tokens_scheduled", "status"):
            np.testing.assert_array_equal(base.metrics[k], other.metrics[k], err_msg=k)
        for k in ("ttft_mean_s", "ttft_p99_s", "tpot_p50_s", "e2e_p99_s", "queue_p90_s",
                  "throughput_rps", "kv_occupancy_mean"):
            np.testing.assert_allclose(base.metrics[k], other.metrics[k], rtol=1e-6,
                                       err_msg=k)


def test_transforms__nan_lane_leaves_others_bit_identical():
    ls = lanes(6)
    shape = shape_for()
    wl = to_workload(TRACE)
    clean = sim.simulate_batch(shape, P.stack(ls), wl)
    poisoned0 = eqx.tree_at(lambda q: q.cost.theta, ls[0], jnp.full_like(ls[0].cost.theta,
                                                                          jnp.nan))
    dirty = sim.simulate_batch(shape, P.stack([poisoned0, *ls[1:]]), wl)
    for k in clean.metrics:
        np.testing.assert_array_equal(clean.metrics[k][1:], dirty.metrics[k][1:], err_msg=k)
    assert dirty.status[0] != 0


def test_transforms__no_recompile_for_new_values():
    shape = shape_for()
    wl = to_workload(TRACE)
    sizes = []
    for seed in range(4):
        ls = lanes(6)
        rng = np.random.default_rng(seed)
        ls = [eqx.tree_at(lambda q: q.scheduler.max_num_seqs, p, jnp.int32(rng.integers(1, 8)))
              for p in ls]
        ls = [eqx.tree_at(lambda q: q.hardware.hbm_bw_bytes_per_s, p,
                          p.hardware.hbm_bw_bytes_per_s * float(rng.uniform(0.5, 2)))
              for p in ls]
        sim.simulate_batch(shape, P.stack(ls), wl)
        sizes.append(sim._run_chunk_batch._cache_size())
    assert sizes[1:] == sizes[:1] * 3  # compiled at most once, by the first call


@pytest.mark.slow  # three slot-table sizes compile (about 40 s on 2 cores): CI's slow step
def test_transforms__overflow_reruns_compile_per_size_bucket():
    """Lanes re-run with a larger slot table are padded to a power of two: 3 and then 4
    overflowing lanes share the re-run's compiled function (each count compiled anew)."""
    tr = Trace(np.zeros(12), [8] * 12, [3] * 12)
    wl = to_workload(tr)
    shape = SimShape(max_requests=12, max_slots=2, chunk_iterations=32)

    def batch(n_over):
        return P.stack([lane_params({"max_num_seqs": 8 if i < n_over else 1,
                                     "max_num_batched_tokens": 256}, tr) for i in range(5)])

    a = sim.simulate_batch(shape, batch(3), wl)
    before = sim._run_chunk_batch._cache_size()
    b = sim.simulate_batch(shape, batch(4), wl)
    assert sim._run_chunk_batch._cache_size() == before
    assert a.status.tolist() == b.status.tolist() == [0] * 5
    ref = sim.simulate_batch(dataclasses.replace(shape, max_slots=16), batch(4), wl)
    assert_metrics_equal(b.metrics, ref.metrics)


def test_transforms__a_chunk_ends_once_every_lane_is_done():
    # Within a chunk the batch checks every sim.CHECK_STEPS steps whether all its lanes
    # are done, and stops there; the results are those of short chunks.
    wl = to_workload(TRACE)
    ps = P.stack(lanes(6))
    long = sim.simulate_batch(SimShape(max_requests=len(TRACE), max_slots=8,
                                       chunk_iterations=512), ps, wl)
    short = sim.simulate_batch(shape_for(), ps, wl)  # chunks of 128 steps
    steps = int(long.metrics["steps"].max())
    assert steps < 512 - sim.CHECK_STEPS  # so the long run ended inside its chunk
    assert steps > shape_for().chunk_iterations  # and the short one took several chunks
    assert long.iterations_run == -(-steps // sim.CHECK_STEPS) * sim.CHECK_STEPS
    assert short.iterations_run == long.iterations_run
    assert_metrics_equal(long.metrics, short.metrics)


def test_transforms__python_scalars_do_not_retrace():
    p = lanes(1)[0]
    # The converters turn Python floats into float32 arrays without weak types.
    q = P.SimParams(model=p.model, hardware=p.hardware, scheduler=p.scheduler, cost=p.cost,
                    ttft_slo_s=2.5, tpot_slo_s=0.1, status0=0)
    assert q.ttft_slo_s.dtype == jnp.float32 and not q.ttft_slo_s.weak_type

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(params):
        return params.ttft_slo_s * 2

    f(q)
    f(P.SimParams(model=p.model, hardware=p.hardware, scheduler=p.scheduler, cost=p.cost,
                  ttft_slo_s=7.0, tpot_slo_s=0.2, status0=0))


def test_transforms__grad_of_latency_wrt_cost_is_finite_and_nonzero():
    p = lanes(1)[0]
    shape = shape_for(S=8)
    wl = to_workload(TRACE)

    def loss(theta, hbm):
        q = eqx.tree_at(lambda x: (x.cost.theta, x.hardware.hbm_bw_bytes_per_s), p,
                        (theta, hbm))
        _, m = sim.run_fixed(shape, q, wl, 400)
        return m["ttft_mean_s"] + m["e2e_p90_s"] + m["tpot_mean_s"]

    g_theta, g_hbm = jax.jit(jax.grad(loss, argnums=(0, 1)))(
        p.cost.theta, p.hardware.hbm_bw_bytes_per_s)
    assert np.all(np.isfinite(g_theta)) and np.isfinite(g_hbm)
    assert np.count_nonzero(np.asarray(g_theta)) >= 10
    assert float(g_hbm) < 0  # more bandwidth, lower latency
    _, m = jax.jit(lambda: sim.run_fixed(shape, p, wl, 400))()
    assert int(m["completed"]) == len(TRACE)  # the 400 iterations finished the trace


def test_transforms__mismatched_shape_params_and_workload_are_refused():
    """run_fixed checks what simulate_batch checks (it failed deep inside JAX), and a
    prefix cache in the params but not the shape (or the reverse) is refused (it ran
    without the cache, or raised an AttributeError)."""
    from jaxsim import api
    from jaxsim.workload import with_shared_prefixes

    p = lanes(1)[0]
    shape, wl = shape_for(S=8), to_workload(TRACE)
    with pytest.raises(ValueError, match="run_fixed runs one lane"):
        sim.run_fixed(shape, P.stack([p, p]), wl, 5)
    with pytest.raises(ValueError, match="SimShape.max_requests"):
        sim.run_fixed(dataclasses.replace(shape, max_requests=shape.max_requests + 1),
                      p, wl, 5)
    with pytest.raises(ValueError, match="num_iterations: -1 must be"):
        sim.run_fixed(shape, p, wl, -1)
    tr = synthetic("poisson", 6, 64, 4, rate=10.0, seed=0)
    pc = api.prepare({"enable_prefix_caching": True}, with_shared_prefixes(tr, 2, 32))
    pn = api.prepare({}, tr)
    for sh, pa, w in ((pn.shape, pc.params, pc.workload), (pc.shape, pn.params, pn.workload)):
        with pytest.raises(ValueError, match="disagree on the prefix cache"):
            sim.simulate_batch(sh, pa, w)
        with pytest.raises(ValueError, match="disagree on the prefix cache"):
            sim.run_fixed(sh, P.index(pa, 0), w, 5)


@pytest.mark.slow  # a fresh x64 process compiles everything again (about 30 s): CI's slow step
def test_transforms__dtypes_hold_under_x64():
    code = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np
        from jaxsim import api, simulate_batch
        from jaxsim.workload import synthetic
        tr = synthetic("poisson", 10, 32, 8, rate=20.0, seed=1)
        p = api.prepare({"num_gpu_blocks": 300, "max_num_seqs": 4}, tr, chunk_iterations=64)
        r = simulate_batch(p.shape, p.params, p.workload)
        bad = [(k, str(v.dtype)) for k, v in vars(r.state).items()
               if hasattr(v, "dtype") and v.dtype not in (jnp.float32, jnp.int32, jnp.bool_)]
        assert not bad, bad
        assert int(r.status[0]) == 0 and int(r.metrics["completed"][0]) == 10
        print("ok")
        """
    )
    env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ok" in out.stdout


def test_transforms__single_trace_padding_rows_never_arrive():
    tr = Trace([0.0, 0.0], [4, 4], [2, 2])
    wl = to_workload(tr, 10)
    assert np.isinf(np.asarray(wl.arrival_hi)[2:]).all()
    assert int(wl.num_requests) == 2


def test_transforms__when_needed_computes_only_for_lanes_that_need_it():
    """guard.when_needed (the priority and prefix-cache orders): under vmap the lanes
    that need ``fn`` get its result and the others ``otherwise``; a batch where no lane
    needs it returns ``otherwise`` everywhere; jit and a gradient through an integer
    result (an order, as the simulator uses it) work."""
    from jaxsim.guard import when_needed

    def order(x):
        return jnp.argsort(x).astype(jnp.int32)

    x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 7)), jnp.float32)
    ident = jnp.arange(7, dtype=jnp.int32)
    f = jax.jit(jax.vmap(lambda xi, n: when_needed(n, order, (xi,), ident)))
    need = jnp.asarray([True, False, True, False, False])
    got = np.asarray(f(x, need))
    want = np.asarray(jnp.argsort(x, axis=1))
    np.testing.assert_array_equal(got[[0, 2]], want[[0, 2]])
    np.testing.assert_array_equal(got[[1, 3, 4]], np.broadcast_to(ident, (3, 7)))
    np.testing.assert_array_equal(f(x, jnp.zeros(5, bool)), np.broadcast_to(ident, (5, 7)))

    def loss(xi):  # the order is piecewise constant: the gradient flows through xi only
        return jnp.sum(xi[when_needed(True, order, (xi,), ident)] * jnp.arange(7.0))

    g = jax.jit(jax.grad(loss))(x[0])
    np.testing.assert_allclose(np.asarray(g)[want[0]], np.arange(7.0))
