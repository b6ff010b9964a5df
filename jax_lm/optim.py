"""Optimizers from optax, built from a name, with the learning rate kept in the state.

The learning rate lives in the optimizer state (`optax.inject_hyperparams`), so the
host-side rules of `jax_lm.lr_rules` can change it between steps without recompiling:

    opt = make_optimizer("sgd", 1.0, clip_norm=5.0)   # Zaremba et al. 2014
    opt_state = opt.init(params)
    opt_state = set_learning_rate(opt_state, 0.5)
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax.numpy as jnp
import optax

OPTIMIZERS = {
    "sgd": optax.sgd,
    "momentum": functools.partial(optax.sgd, momentum=0.9),
    "adagrad": optax.adagrad,
    "rmsprop": optax.rmsprop,
    "adam": optax.adam,
    "adamw": optax.adamw,
}


def make_optimizer(name: str, learning_rate: float, *, clip_norm: float | None = None,
                   **options: Any) -> optax.GradientTransformation:
    """`optax.<name>(learning_rate, **options)`, after global-norm clipping if `clip_norm`.

    Args:
      name: one of `OPTIMIZERS` ("sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw").
      learning_rate: initial rate; read and changed with `learning_rate` /
        `set_learning_rate`.
      clip_norm: rescale gradients whose global L2 norm exceeds this (Pascanu et al. 2013);
        None or 0: no clipping. Held in the state as "clip_norm" (inf when off).
      options: passed to the optax constructor (e.g. b1, b2, eps, weight_decay).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")

    def build(learning_rate, clip_norm):
        return optax.chain(optax.clip_by_global_norm(clip_norm),
                           OPTIMIZERS[name](learning_rate, **options))

    # Always in the state (inf: off), so every run's state has one structure and members
    # of a population may differ in it.
    return optax.inject_hyperparams(build)(learning_rate=learning_rate,
                                           clip_norm=clip_norm or math.inf)


def learning_rate(opt_state) -> float:
    """The learning rate held in a `make_optimizer` state."""
    return float(opt_state.hyperparams["learning_rate"])


def set_learning_rate(opt_state, value):
    """A copy of a `make_optimizer` state with a new learning rate (same dtype, no retrace)."""
    return set_hyperparams(opt_state, learning_rate=value)


def set_hyperparams(opt_state, **values):
    """A copy of a `make_optimizer` state with new hyperparameter values (same dtypes)."""
    hyperparams = dict(opt_state.hyperparams)
    for name, value in values.items():
        hyperparams[name] = jnp.asarray(value, hyperparams[name].dtype)
    return opt_state._replace(hyperparams=hyperparams)
