"""The glibc malloc tunables that `jax-lm` and the benchmark re-execute themselves with."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from jax_lm import allocator

ROOT = Path(__file__).parents[1]
GLIBC = platform.libc_ver()[0] == "glibc"

# Page faults of one run of a compiled function with a 64 MiB temporary buffer, after warm-up.
FAULTS_PER_RUN = """
import resource
from jax_lm import allocator
allocator.reexec_with_tuned_malloc()
import jax, jax.numpy as jnp
f = jax.jit(lambda x, w: jnp.tanh(x @ w).T @ x)          # tanh(x @ w): a 64 MiB temporary
x, w = jnp.ones((16384, 8)), jnp.ones((8, 1024))
for _ in range(3):
    f(x, w).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    f(x, w).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""

PRINT_TUNABLES = """
import os
from jax_lm import allocator
allocator.reexec_with_tuned_malloc()
print(os.environ.get("GLIBC_TUNABLES"))
"""


def _python(code: str, **env) -> str:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("GLIBC_TUNABLES", allocator.OPT_OUT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=ROOT, env={**environ, **env})
    return result.stdout.strip().splitlines()[-1]


def test_tuned_environ_adds_the_malloc_tunables_and_keeps_other_ones():
    assert allocator.tuned_environ({}, "glibc")["GLIBC_TUNABLES"] == allocator.TUNABLES
    tuned = allocator.tuned_environ({"GLIBC_TUNABLES": "glibc.rtld.nns=2", "X": "1"}, "glibc")
    assert tuned == {"GLIBC_TUNABLES": "glibc.rtld.nns=2:" + allocator.TUNABLES, "X": "1"}


def test_tuned_environ_leaves_other_libcs_opt_outs_and_users_malloc_settings_alone():
    assert allocator.tuned_environ({}, "") is None                        # macOS, musl
    assert allocator.tuned_environ({allocator.OPT_OUT: "0"}, "glibc") is None
    assert allocator.tuned_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=1"}, "glibc") is None


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_reexec_runs_the_same_command_again_with_the_tunables_once():
    assert _python(PRINT_TUNABLES) == allocator.TUNABLES
    assert _python(PRINT_TUNABLES, JAX_LM_TUNE_MALLOC="0") == "None"


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_tuned_process_stops_page_faulting_xla_temporary_buffers():
    default = float(_python(FAULTS_PER_RUN, JAX_LM_TUNE_MALLOC="0"))
    if default < 1000:
        pytest.skip(f"glibc's defaults already reuse the buffer here ({default:.0f} faults)")
    tuned = float(_python(FAULTS_PER_RUN))
    assert tuned < default / 10, (tuned, default)
