"""The recurrent language model: embed → L stacked scanned cells → output projection.

    tokens [B, T] ──embed──▶ x [T, B, D] ─▶ (dropout ─▶ cell layer) × L ─▶ dropout ─▶ h @ W_out + b
                                                                                    ▼
    carry in: one carry per layer ───────────────────────────────────▶ carry out   logits [B, T, V]

One-hot input (000, 001) is the case with no embedding matrix: the first layer's input
weights w_x [V, G·H] are looked up by token id, which equals one_hot(tokens) @ w_x.
Dropout (Zaremba et al. 2014; Chainer's `RNNForLM`) acts on the non-recurrent connections:
the input of every layer and the input of the output projection.

Parameters are a plain dict::

    {"embed": [V, D],                      # absent when one_hot
     "layers": [cell params, ...],         # L entries, see `jax_lm.cells`
     "out": {"w": [H, V], "b": [V]}}       # "w" absent when tie_weights, "b" when not output_bias
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jax_lm import cells

Array = jax.Array
Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Static description of a language model (hashable: usable as a jit static argument)."""

    vocab_size: int
    cell: cells.Cell = cells.LSTM()
    num_layers: int = 2
    hidden_size: int = 200
    embed_size: int | None = None  # None: same as hidden_size
    one_hot: bool = False          # no embedding; layer 0 reads one-hot tokens (000, 001)
    dropout: float = 0.0           # rate on each layer's input and on the output layer's input
    tie_weights: bool = False      # output weights = embedding transposed (Press & Wolf 2017)
    output_bias: bool = True
    init: str = "uniform"          # "uniform" (±init_scale), "fan_in" (±1/√n) or "default"
    init_scale: float = 0.1
    param_dtype: str = "float32"
    unroll: int = 1                # jax.lax.scan unroll factor

    def __post_init__(self):
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be ≥ 1, got {self.num_layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.tie_weights and self.one_hot:
            raise ValueError("tie_weights needs an embedding; it cannot be used with one_hot")
        if self.tie_weights and self.input_size != self.hidden_size:
            raise ValueError(f"tie_weights needs embed_size == hidden_size, got "
                             f"{self.input_size} and {self.hidden_size}")
        cells.make_inits(self.init, self.init_scale)  # validates the scheme name

    @property
    def input_size(self) -> int:
        """Width of the first layer's input: V for one-hot, else the embedding size."""
        if self.one_hot:
            return self.vocab_size
        return self.hidden_size if self.embed_size is None else self.embed_size


def init_lm(key: Array, config: LMConfig) -> Params:
    """Random parameters for `config` (see the module docstring for the layout)."""
    inits = cells.make_inits(config.init, config.init_scale)
    dtype = jnp.dtype(config.param_dtype)
    k_embed, k_out_w, k_out_b, *k_layers = jax.random.split(key, 3 + config.num_layers)
    params: Params = {"layers": []}
    if not config.one_hot:
        params["embed"] = inits.w_x(k_embed, (config.vocab_size, config.input_size), dtype)
    for layer, k in enumerate(k_layers):
        input_size = config.input_size if layer == 0 else config.hidden_size
        params["layers"].append(config.cell.init(k, input_size, config.hidden_size, inits, dtype))
    params["out"] = {}
    if not config.tie_weights:
        params["out"]["w"] = inits.w_x(k_out_w, (config.hidden_size, config.vocab_size), dtype)
    if config.output_bias:
        params["out"]["b"] = inits.b(k_out_b, (config.vocab_size,), dtype)
    return params


def init_carry(config: LMConfig, batch_size: int) -> tuple:
    """Zero state of every layer: a tuple of L carries, each [B, H] (LSTM: LSTMState)."""
    dtype = jnp.dtype(config.param_dtype)
    return tuple(config.cell.initial_carry(batch_size, config.hidden_size, dtype)
                 for _ in range(config.num_layers))


def _dropout(key: Array | None, rate: float, x: Array) -> Array:
    """Inverted dropout; the identity when `key` is None (evaluation) or rate is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _run_layers(params: Params, config: LMConfig, tokens: Array, carry: tuple,
                mask: Array | None, dropout_key: Array | None, return_carries: bool):
    """The stacked layers over time-major tokens [T, B]; returns (h or carries per layer, carry)."""
    keys = ([None] * (config.num_layers + 1) if dropout_key is None
            else list(jax.random.split(dropout_key, config.num_layers + 1)))
    cell = config.cell
    new_carry, per_layer = [], []
    x = None if config.one_hot else jnp.take(params["embed"], tokens, axis=0)  # (T, B, D)
    for layer, (lp, c) in enumerate(zip(params["layers"], carry)):
        if x is None:  # one-hot first layer: gather rows of w_x
            xw = cells.project_ids(lp, tokens)
        else:
            xw = cells.project(lp, _dropout(keys[layer], config.dropout, x))  # (T, B, G·H)
        c, out = cells.unroll_projected(cell, lp, c, xw, mask, unroll=config.unroll,
                                        return_carries=return_carries)
        new_carry.append(c)
        per_layer.append(out)
        x = cell.output(out) if return_carries else out  # (T, B, H)
    return per_layer, tuple(new_carry), _dropout(keys[-1], config.dropout, x)


def hidden_states(params: Params, tokens: Array, carry: tuple, *, config: LMConfig,
                  mask: Array | None = None, dropout_key: Array | None = None):
    """Top-layer features that feed the output projection.

    Args:
      tokens: [B, T] int token ids.
      carry: per-layer carries from `init_carry` or a previous window.
      mask: optional [B, T]; 0 marks padding, where every layer holds its state.
      dropout_key: enables dropout (training); None disables it (evaluation).

    Returns:
      (h [B, T, H] after the output dropout, new carry).
    """
    mask_tm = None if mask is None else mask.T.astype(bool)
    _, carry, h = _run_layers(params, config, tokens.T, carry, mask_tm, dropout_key, False)
    return jnp.swapaxes(h, 0, 1), carry


def output_logits(params: Params, h: Array, *, config: LMConfig) -> Array:
    """Output projection h [..., H] -> logits [..., V] (tied: h @ embedᵀ)."""
    w = params["embed"].T if config.tie_weights else params["out"]["w"]
    logits = h @ w
    return logits + params["out"]["b"] if config.output_bias else logits


def apply_lm(params: Params, tokens: Array, carry: tuple, *, config: LMConfig,
             mask: Array | None = None, dropout_key: Array | None = None):
    """Logits of the next token: tokens [B, T] -> (logits [B, T, V], new carry)."""
    h, carry = hidden_states(params, tokens, carry, config=config, mask=mask,
                             dropout_key=dropout_key)
    return output_logits(params, h, config=config), carry


def token_nll(params: Params, tokens: Array, targets: Array, carry: tuple, *,
              config: LMConfig, mask: Array | None = None, dropout_key: Array | None = None):
    """Negative log-likelihood of each target: (nll [B, T] with 0 on padding, new carry)."""
    logits, carry = apply_lm(params, tokens, carry, config=config, mask=mask,
                             dropout_key=dropout_key)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return (nll if mask is None else jnp.where(mask.astype(bool), nll, 0.0)), carry


def layer_carries(params: Params, tokens: Array, carry: tuple, *, config: LMConfig,
                  mask: Array | None = None) -> tuple:
    """The carry of every layer after every step (no dropout): per layer, leading axis T.

    Returns a tuple of L carries whose leaves are time-major [T, B, H].
    """
    mask_tm = None if mask is None else mask.T.astype(bool)
    per_layer, _, _ = _run_layers(params, config, tokens.T, carry, mask_tm, None, True)
    return tuple(per_layer)


def num_params(params: Params) -> int:
    """Total number of scalar parameters."""
    return sum(x.size for x in jax.tree.leaves(params))
