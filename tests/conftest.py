"""Test configuration: CPU only, strict promotion, shared fixtures."""

import functools
import gc
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# A persistent compilation cache shared by the test processes (both pytest-xdist
# workers, the subprocesses some tests start, the notebook kernels and CI's later
# steps), so an executable one of them compiled is loaded, not compiled again. It starts
# empty on a fresh checkout; entries are keyed by the HLO, the compile options and the
# JAX version, so a code change never loads a stale executable. JAX_COMPILATION_CACHE_DIR
# set to an empty string turns it off.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache"))
try:  # JAX evicts from the cache only with filelock (a dependency; checked, not assumed)
    import filelock  # noqa: F401

    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 * 1024**3))
    if os.environ["JAX_COMPILATION_CACHE_DIR"]:  # entries some run left without a size limit
        from jaxsim.cli import heal_compile_cache

        heal_compile_cache(os.environ["JAX_COMPILATION_CACHE_DIR"])
except ImportError:
    pass

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

#: XLA flags the default suite compiles with: LLVM's backend optimisation off, and XLA's
#: older CPU code generator in place of its fusion emitters. Compiling dominates the
#: default suite (its lanes are small): on 2 cores, from an empty cache, the suite took
#: 10:25 with XLA's defaults, 9:19 with the optimisation off, and 5:29 with both flags and
#: the ``xla_defaults`` fixture below on two tests (JAX 0.10.2; the older emitters
#: compile a small simulator chunk function in about 4 s instead of 6.5). Neither flag
#: turns on fast math (XLA's CPU backend does not use it), so results differ from the
#: default build's at most in rounding (one test asserts bit-identical lanes: it takes the
#: ``xla_defaults`` fixture below).
#: The slow, notebook and Ray steps compile with XLA's defaults, as users do, so the
#: optimised code is tested too.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"

#: XLA's defaults for what FAST_COMPILE_FLAGS changes. A jit's compiler options take
#: precedence over XLA_FLAGS.
XLA_DEFAULTS = {"xla_backend_optimization_level": 3, "xla_cpu_use_fusion_emitters": True}


def pytest_configure(config):
    # Runs before any test touches a device, so the CPU client reads the flags when it
    # starts (they are part of the compilation cache's key). An XLA_FLAGS the caller set
    # is kept, and the flags are not added to it.
    expr = config.getoption("markexpr") or ""
    if "not slow" in expr and "not notebook" in expr and "XLA_FLAGS" not in os.environ:
        os.environ["XLA_FLAGS"] = FAST_COMPILE_FLAGS


@pytest.fixture(scope="module", autouse=True)
def _fresh_compilations_per_module_in_slow_runs(request):
    """In the slow step (``-m slow``, and ``-m extended``), drop JAX's compiled
    executables after each test module. That step compiles many executables per process,
    and late in it, run in one process, XLA's CPU compiler has crashed (a segmentation
    fault in ``backend_compile_and_load``, in a test that passes on its own); keeping
    fewer executables alive is the mitigation. The default suite is left as it is."""
    yield
    expr = request.config.getoption("markexpr") or ""
    if any(m in expr and f"not {m}" not in expr for m in ("slow", "extended")):
        jax.clear_caches()
        gc.collect()


@functools.cache
def _chunk_function_with_xla_defaults():
    from jaxsim import sim

    return jax.jit(sim._run_chunk_batch.__wrapped__, static_argnames=("shape", "wl_batched"),
                   donate_argnums=(3,), compiler_options={**sim.XLA_OPTIONS, **XLA_DEFAULTS})


@pytest.fixture
def xla_defaults(monkeypatch):
    """The simulator's chunk function compiled with XLA's defaults, as users run it, when
    the default suite's FAST_COMPILE_FLAGS are on (else nothing changes). For tests whose
    lanes run long enough that optimised code pays for its slower compile (the prefix-cache
    oracle: 105 s in the suite with the flags, 50 s with this), and for those that assert
    bit-identical results from differently shaped compilations, which is what users' code
    promises: with the older emitters one lane's clock differed in its last bit between a
    batch of six and a batch of one."""
    if os.environ.get("XLA_FLAGS") == FAST_COMPILE_FLAGS:
        from jaxsim import sim

        monkeypatch.setattr(sim, "_run_chunk_batch", _chunk_function_with_xla_defaults())
        monkeypatch.setattr(sim, "QUICK_COMPILE_MAX_WORK", 0)
