"""The base config: every field with a one-line comment lives in `jax_lm.config.get_config`.

`jax-lm train` with no --config uses it: a 1×256 char-level LSTM on the embedded default
corpus (CPython's pydoc topics), a few CPU minutes.
"""

from jax_lm.config import get_config  # noqa: F401  (re-exported: the config of this file)
