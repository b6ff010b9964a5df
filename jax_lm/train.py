"""Training steps: the TrainState pytree and the jitted, pure train/eval steps.

    batch (device) ──▶ train_step(state, batch[, controls]) ──▶ (state, StepMetrics)  state donated
                       eval_step(params, batch, carry) ──▶ (Σ nll, Σ tokens, carry)

Nothing here does I/O: the schedule around the steps (epochs, validation, learning-rate
rules, checkpoints) is `jax_lm.loop`. A step is a function of its state and batch alone;
the dropout key of step k is `fold_in(rng, k)`, so a resumed run repeats it bit for bit.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_lm import batching, bptt, model, optim
from jax_lm.model import LMConfig, Params
from jax_lm.pipeline import prefetch_to_device

Array = jax.Array
REGIMES = ("full", "truncated", "window")
REDUCTIONS = ("token_mean", "batch_mean", "sum")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step."""


class TrainState(NamedTuple):
    """Everything on the device that a training step reads and writes."""

    step: Array       # int32 scalar: steps taken
    params: Params
    opt_state: Any
    rng: Array        # PRNG key; step s uses fold_in(rng, s) for dropout
    carry: tuple      # recurrent state carried into the next window (per layer)


class StepMetrics(NamedTuple):
    """Sums over the steps since the last host sync (all device scalars)."""

    nll: Array             # Σ target NLL (nats)
    tokens: Array          # Σ scored targets
    nonfinite: Array       # steps whose loss or gradient was NaN/inf (their update was skipped)
    first_nonfinite: Array  # first such step, or -1

    def __add__(self, other: StepMetrics) -> StepMetrics:  # noqa: D105
        first = jnp.where(self.first_nonfinite >= 0, self.first_nonfinite, other.first_nonfinite)
        return StepMetrics(self.nll + other.nll, self.tokens + other.tokens,
                           self.nonfinite + other.nonfinite, first)


class Controls(NamedTuple):
    """Per-member inputs of a population's step (scalars; [S] arrays under `jax.vmap`)."""

    live: Array                  # bool: False freezes the member (no update), e.g. diverged
    dropout: Array | None = None  # the member's dropout rate (None: the LMConfig's)


def init_train_state(key: Array, config: LMConfig, optimizer, batch_size: int) -> TrainState:
    k_init, k_rng = jax.random.split(key)
    params = model.init_lm(k_init, config)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params), rng=k_rng,
                      carry=model.init_carry(config, batch_size))


def _reset_rows(carry: tuple, reset: Array, fresh: tuple) -> tuple:
    """Rows where `reset` [B] is true start again from the initial state."""
    return jax.tree.map(lambda c, z: jnp.where(reset[:, None], z, c), carry, fresh)


def make_train_step(config: LMConfig, optimizer, *, regime: str = "truncated", window_k: int = 4,
                    reduction: str = "token_mean", jit: bool = True) -> Callable:
    """A jitted `train_step(state, batch) -> (state, StepMetrics)`; `state` is donated.

    (`jit=False`: the plain function, e.g. to vmap it over a population in `jax_lm.loop`.)

    Regimes: "full" starts every batch from the zero state (whole sequences, 000/001);
    "truncated" carries each row's state into the next window (the stream layout), and
    since the carry enters as an input array no gradient crosses the window boundary
    (JAX's `repackage_hidden`); "window" is 001's per-output truncation
    (`bptt.window_token_nll`, k = `window_k`) from the zero state.
    Loss: Σ nll / Σ mask ("token_mean"), Σ nll / B ("batch_mean": sum over time, mean over
    the batch, as Zaremba's code) or Σ nll ("sum", the per-sentence loss of 000 and 001),
    plus the model's `activation_penalty` (AR/TAR) when it has one; metrics count the NLL.
    A step whose loss or gradient is not finite (a NaN/inf entry, or a gradient norm beyond
    the float range) leaves params and optimizer state unchanged and is counted in the
    metrics. `controls` (optional, `Controls`) freezes a member or sets its dropout rate.
    """
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; choose one of {REGIMES}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown loss_reduction {reduction!r}; choose one of {REDUCTIONS}")

    def loss_fn(params, batch, carry, dropout_key, dropout_rate):
        mask = batch.mask
        if regime == "window":
            nll = bptt.window_token_nll(params, batch.inputs, batch.targets, carry,
                                        config=config, k=window_k, mask=mask)
            penalty = 0.0
        else:
            nll, penalty, carry = model.nll_and_penalty(
                params, batch.inputs, batch.targets, carry, config=config, mask=mask,
                dropout_key=dropout_key, dropout_rate=dropout_rate)
        total, count = nll.sum(), mask.sum()
        loss = {"token_mean": total / jnp.maximum(count, 1.0), "batch_mean":
                total / batch.inputs.shape[0], "sum": total}[reduction]
        return loss + penalty, (total, count, carry)

    def train_step(state: TrainState, batch: batching.Batch, controls: Controls | None = None):
        batch_size = batch.inputs.shape[0]
        fresh = model.init_carry(config, batch_size)
        carry = fresh if regime in ("full", "window") else _reset_rows(state.carry, batch.reset,
                                                                       fresh)
        dropout_key = jax.random.fold_in(state.rng, state.step) if config.stochastic else None
        live, rate = (True, None) if controls is None else controls
        grads, (total, count, carry) = jax.grad(loss_fn, has_aux=True)(
            state.params, batch, carry, dropout_key, rate)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = jax.tree.map(jnp.add, state.params, updates)

        # One reduction per leaf, shared with the clipping's norm (XLA merges the two):
        # any NaN/inf entry makes the norm NaN/inf (so does a norm beyond float range).
        # (The update is not checked here: another pass over the parameters costs 9% of a
        # Zaremba-small step. An overflowing update shows as a NaN loss at the next step,
        # and the loop never saves non-finite parameters.)
        finite = jnp.isfinite(total) & jnp.isfinite(optax.tree.norm(grads))
        ok, bad = finite & live, ~finite & live
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
        wide = jnp.promote_types(total.dtype, jnp.float32)  # float64 runs sum in float64
        metrics = StepMetrics(
            nll=jnp.where(ok, total, 0.0).astype(wide),
            tokens=jnp.where(ok, count, 0.0).astype(wide),
            nonfinite=bad.astype(jnp.int32),
            first_nonfinite=jnp.where(bad, state.step, -1).astype(jnp.int32))
        return TrainState(step=state.step + 1, params=keep(params, state.params),
                          opt_state=keep(opt_state, state.opt_state), rng=state.rng,
                          carry=keep(carry, fresh)), metrics

    return jax.jit(train_step, donate_argnums=0) if jit else train_step


def make_eval_step(config: LMConfig, *, jit: bool = True) -> Callable:
    """A jitted `eval_step(params, batch, carry) -> (Σ nll, Σ tokens, carry)`, no dropout."""

    def eval_step(params, batch: batching.Batch, carry):
        carry = _reset_rows(carry, batch.reset, model.init_carry(config, batch.inputs.shape[0]))
        nll, carry = model.token_nll(params, batch.inputs, batch.targets, carry,
                                     config=config, mask=batch.mask)
        return nll.sum(), batch.mask.sum(), carry

    return jax.jit(eval_step) if jit else eval_step


def evaluate(params: Params, config: LMConfig, batches: Iterator[batching.Batch],
             eval_step: Callable | None = None) -> dict[str, float]:
    """Mean NLL (nats), perplexity and bits per token over every target of `batches`."""
    eval_step = eval_step or make_eval_step(config)
    total, count, carry = 0.0, 0.0, None
    for batch in prefetch_to_device(batches):
        if carry is None or jax.tree.leaves(carry)[0].shape[0] != batch.inputs.shape[0]:
            carry = model.init_carry(config, batch.inputs.shape[0])
        nll, n, carry = eval_step(params, batch, carry)
        total, count = total + nll, count + n  # stays on the device until the end
    return scores(float(total), float(count))


def scores(total: float, count: float) -> dict[str, float]:
    """Mean NLL (nats), perplexity and bits per token from Σ NLL over `count` targets."""
    if count == 0:
        raise TrainingError("evaluation saw no tokens")
    mean = total / count
    return {"nll": mean, "ppl": perplexity(mean), "bits": mean / math.log(2),
            "tokens": int(count)}


def perplexity(mean_nll: float) -> float:
    """exp(mean NLL); inf where that overflows a float (a diverged model), nan for nan."""
    return math.exp(mean_nll) if mean_nll < 709.0 or mean_nll != mean_nll else math.inf


def build_optimizer(config) -> optax.GradientTransformation:
    """The optimizer that `config.train` names (optax, learning rate in its state)."""
    t = config.train
    return optim.make_optimizer(t.optimizer, t.learning_rate, clip_norm=t.clip_norm or None,
                                average=t.ntasgd_patience > 0, **dict(t.optimizer_options))
