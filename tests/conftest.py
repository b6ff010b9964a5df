"""Shared test setup: CPU, float64 available, and a key fixture."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
