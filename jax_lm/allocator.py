"""glibc malloc settings under which XLA:CPU stops page-faulting its buffers in every step.

XLA:CPU allocates one temporary block per run of a compiled step (52 MB for a Zaremba
small training step, 153 MB for medium) and frees it when the run ends. glibc serves a
block that large with `mmap` and gives it back with `munmap`, so every step touches fresh
pages: 13,000 minor page faults per small step, about a fifth of its time on the 2-core
benchmark machine (experiments/results/bench-*-notes.md). These glibc tunables keep freed
memory in the heap for the next step and back large blocks with transparent huge pages:

    glibc.malloc.hugetlb=1               madvise(MADV_HUGEPAGE) on malloc's memory
    glibc.malloc.mmap_threshold=4 GiB    large blocks come from the heap, not from mmap
    glibc.malloc.trim_threshold=4 GiB    freed heap memory is kept, not returned to the OS
    glibc.malloc.top_pad=256 MiB         the heap grows in large steps

glibc reads them once, when the process starts, so the `jax-lm` command and the benchmark
re-execute themselves with them set (`reexec_with_tuned_malloc`). Set
``JAX_LM_TUNE_MALLOC=0`` to run with glibc's defaults, or set your own
``glibc.malloc.*`` tunables, which are then left alone. In a notebook, start Jupyter with
``GLIBC_TUNABLES`` set to `TUNABLES`. Nothing changes on other C libraries (macOS, musl).
The process keeps its peak heap for its lifetime: the point is reusing it.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

TUNABLES = ("glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=4294967296:"
            "glibc.malloc.trim_threshold=4294967296:glibc.malloc.top_pad=268435456")
OPT_OUT = "JAX_LM_TUNE_MALLOC"


def tuned_environ(environ: Mapping[str, str], libc: str) -> dict[str, str] | None:
    """The environment to re-execute with, or None when nothing should change.

    Nothing changes when `libc` is not glibc, when ``JAX_LM_TUNE_MALLOC=0``, or when
    ``GLIBC_TUNABLES`` already sets a ``glibc.malloc.`` tunable (the user's choice, and the
    marker that this process was already re-executed). Other tunables are kept.
    """
    if libc != "glibc" or environ.get(OPT_OUT, "1") == "0":
        return None
    current = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc." in current:
        return None
    return {**environ, "GLIBC_TUNABLES": f"{current}:{TUNABLES}" if current else TUNABLES}


def reexec_with_tuned_malloc() -> None:
    """Replace this process by itself with `TUNABLES` set (see `tuned_environ`); else return.

    Call it first thing in a program's entry point: the same command line (`sys.orig_argv`)
    runs again in the same process id, before anything has been computed.
    """
    environ = tuned_environ(os.environ, platform.libc_ver()[0])
    if environ is None or not getattr(sys, "orig_argv", None):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, environ)


def describe(environ: Mapping[str, str] | None = None) -> str:
    """For the startup line: whether this process runs with `TUNABLES`."""
    environ = os.environ if environ is None else environ
    if TUNABLES in environ.get("GLIBC_TUNABLES", ""):
        return f"tuned ({OPT_OUT}=0 for glibc's defaults)"
    if environ.get(OPT_OUT) == "0":
        return f"glibc defaults ({OPT_OUT}=0)"
    return "defaults"
