"""The default: a 1×256 char-level LSTM on the embedded corpus (offline, a few CPU minutes).

`jax-lm train` with no --config uses it; every field, with a one-line comment, lives in
`jax_lm.config.get_config`. The embedded corpus is CPython's pydoc topics.
"""

from jax_lm.config import get_config  # noqa: F401  (re-exported: the config of this file)
