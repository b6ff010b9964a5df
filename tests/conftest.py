"""Shared test setup: CPU, float64 available, and a key fixture."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests train the same small programs: compile each once per session (XLA's persistent
# cache, keyed by the program and the versions). The folder is this session's own; jax reads
# it from the environment, and so do pytest-xdist workers, subprocesses and notebook kernels.
_XLA_CACHE = os.environ.get("JAX_LM_TESTS_XLA_CACHE")
if _XLA_CACHE is None:  # the session's first process creates the folder and removes it
    _XLA_CACHE = os.environ["JAX_LM_TESTS_XLA_CACHE"] = tempfile.mkdtemp(
        prefix="jax_lm_tests_xla_")
    atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import jax  # noqa: E402
import pytest  # noqa: E402

# Parity tests compare against float64 NumPy oracles; library code always passes
# explicit dtypes, so enabling x64 does not silently change what it computes.
jax.config.update("jax_enable_x64", True)
# Broadcasting must be explicit (x[:, None]), never an implicit rank promotion.
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    """A fixed PRNG key; tests split it rather than seeding anything global."""
    return jax.random.key(0)
