"""jax_lm: recurrent language models (vanilla RNN, LSTM, CIFG, GRU) in JAX.

The Python API (`jax_lm.api`), loaded on first use so that `import jax_lm` stays light:

    get_config(name_or_path, **overrides) -> RunConfig     fit(config, workdir) -> Run
    load_run(path) -> Run                                   sweep(name_or_path) -> Sweep
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_API = {"get_config": "jax_lm.api", "fit": "jax_lm.api", "load_run": "jax_lm.api",
        "sweep": "jax_lm.api", "Sweep": "jax_lm.api", "Run": "jax_lm.runs",
        "History": "jax_lm.runs", "RunConfig": "jax_lm.config", "ConfigError": "jax_lm.config",
        "Interrupted": "jax_lm.loop"}
__all__ = sorted(_API)

if TYPE_CHECKING:
    from jax_lm.api import Sweep, fit, get_config, load_run, sweep
    from jax_lm.config import ConfigError, RunConfig
    from jax_lm.loop import Interrupted
    from jax_lm.runs import History, Run


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'jax_lm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
