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
from typing import Any, NamedTuple

import jax
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


class AverageState(NamedTuple):
    """State of `iterate_average`."""

    average: Any  # params-shaped: mean of the iterates since averaging began, else the iterate
    count: Any    # int32 scalar: iterates in the mean (0: not averaging)


def iterate_average(averaging) -> optax.GradientTransformation:
    """Last in a chain: the average of the iterates θ_{k+1} = θ_k + u_k, updates unchanged.

    While `averaging` is 0 the "average" is the current iterate; from the first step with
    `averaging` > 0 on it is the mean of the iterates after each step since then,
    ā_n = ā_{n−1} + (θ − ā_{n−1}) / n (ā_1 = θ): Polyak averaging, as in torch's ASGD with
    t0 = 0, λ = 0, which NT-ASGD (Merity et al. 2018) switches to.
    """

    def init(params):
        return AverageState(jax.tree.map(lambda x: jnp.array(x, copy=True), params),
                            jnp.zeros((), jnp.int32))

    def update(updates, state, params):
        new = jax.tree.map(jnp.add, params, updates)  # the step's θ_{k+1}, as the step adds it
        on = jnp.asarray(averaging) > 0
        count = jnp.where(on, state.count + 1, 0)

        def mean(a, x):
            running = a + (x - a) / count.astype(x.dtype)
            return jnp.where(count > 1, running, x)

        return updates, AverageState(jax.tree.map(mean, state.average, new), count)

    return optax.GradientTransformation(init, update)


def make_optimizer(name: str, learning_rate: float, *, clip_norm: float | None = None,
                   average: bool = False, **options: Any) -> optax.GradientTransformation:
    """`optax.<name>(learning_rate, **options)`, after global-norm clipping if `clip_norm`.

    Args:
      name: one of `OPTIMIZERS` ("sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw").
      learning_rate: initial rate; read and changed with `learning_rate` /
        `set_learning_rate`.
      clip_norm: rescale gradients whose global L2 norm exceeds this (Pascanu et al. 2013);
        None or 0: no clipping. Held in the state as "clip_norm" (inf when off).
      average: also keep `iterate_average` of the parameters, switched on by the
        hyperparameter "average" (0 until `set_hyperparams(state, average=1)`); read it
        with `evaluation_params`.
      options: passed to the optax constructor (e.g. b1, b2, eps, weight_decay).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")

    def build(learning_rate, clip_norm, average=None):
        parts = [optax.clip_by_global_norm(clip_norm), OPTIMIZERS[name](learning_rate, **options)]
        return optax.chain(*parts, *([iterate_average(average)] if average is not None else []))

    # Always in the state (inf: off), so every run's state has one structure and members
    # of a population may differ in it.
    hyperparams = dict(learning_rate=learning_rate, clip_norm=clip_norm or math.inf)
    if average:
        hyperparams["average"] = 0.0
    return optax.inject_hyperparams(build)(**hyperparams)


def evaluation_params(opt_state, params):
    """The parameters to evaluate: the iterate average when the optimizer keeps one
    (`make_optimizer(average=True)`; the current iterate until averaging starts), else
    `params`."""
    last = opt_state.inner_state[-1]
    return last.average if isinstance(last, AverageState) else params


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
