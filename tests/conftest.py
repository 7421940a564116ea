"""Test configuration: CPU only, strict promotion, shared fixtures."""

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

#: XLA flag the default suite compiles with: LLVM's backend optimisation off. Compiling
#: dominates the default suite (its lanes are small), and this cuts its time on 2 cores by
#: about a sixth (test_against_reference.py + test_step.py from a cold cache: 110 s with
#: XLA's defaults, 92 s with it). It changes no semantics: XLA's CPU backend does not
#: use fast math, and every JAX result a test compares is compiled the same way. The
#: slow, notebook and Ray steps compile with XLA's defaults, as users do, so the optimised
#: code is tested too.
FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"


def pytest_configure(config):
    # Runs before any test touches a device, so the CPU client reads the flag when it
    # starts (the flag is part of the compilation cache's key). An XLA_FLAGS the caller
    # set is kept, and the flag is not added to it.
    expr = config.getoption("markexpr") or ""
    if "not slow" in expr and "not notebook" in expr and "XLA_FLAGS" not in os.environ:
        os.environ["XLA_FLAGS"] = FAST_COMPILE_FLAG


@pytest.fixture(scope="module", autouse=True)
def _fresh_compilations_per_module_in_slow_runs(request):
    """In the slow step (``-m slow``, one process), drop JAX's compiled executables after
    each test module. That step compiles many executables in one process, and
    late in it XLA's CPU compiler has crashed (a segmentation fault in
    ``backend_compile_and_load``, in a test that passes on its own); keeping fewer
    executables alive is the mitigation. The default suite is left as it is."""
    yield
    expr = request.config.getoption("markexpr") or ""
    if "slow" in expr and "not slow" not in expr:
        jax.clear_caches()
        gc.collect()
