"""Shared test setup: CPU, float64 available, and a key fixture."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

# Parity tests compare against float64 NumPy oracles; library code always passes
# explicit dtypes, so enabling x64 does not silently change what it computes.
jax.config.update("jax_enable_x64", True)
# Broadcasting must be explicit (x[:, None]), never an implicit rank promotion.
jax.config.update("jax_numpy_rank_promotion", "raise")
# Many tests train the same small programs: compile each once per session (XLA's persistent
# cache, keyed by the program and the versions, in a folder of this session's own).
_XLA_CACHE = tempfile.mkdtemp(prefix="jax_lm_tests_xla_")
atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


@pytest.fixture
def key():
    """A fixed PRNG key; tests split it rather than seeding anything global."""
    return jax.random.key(0)
