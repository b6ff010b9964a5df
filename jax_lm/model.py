"""The recurrent language model: embed → L stacked scanned cells → output projection.

    tokens [B, T] ──embed──▶ x [T, B, D] ─▶ (dropout ─▶ cell layer) × L ─▶ dropout ─▶ h @ W_out + b
                                                                                    ▼
    carry in: one carry per layer ───────────────────────────────────▶ carry out   logits [B, T, V]

One-hot input (000, 001) is the case with no embedding matrix: the first layer's input
weights w_x [V, G·H] are looked up by token id, which equals one_hot(tokens) @ w_x.
Dropout (Zaremba et al. 2014; Chainer's `RNNForLM`) acts on the non-recurrent connections:
the input of every layer and the input of the output projection.

Speed and memory options of `LMConfig` never change what is computed (up to rounding;
`tests/test_fast_scan.py`): `fast_backward` (default on) differentiates each layer with
`jax_lm.fast_scan`, whose weight gradients are big matmuls after the scan; `remat_segment`
recomputes the states in segments in the backward pass (long sequences); `logits_chunk`
scores the targets a chunk of positions at a time (large vocabularies); `compute_dtype`
runs the layers and the output projection in e.g. bfloat16 while params, carries and the
loss stay in `param_dtype` (accelerators; it does change the numbers, by rounding).

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

from jax_lm import cells, fast_scan

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
    # Speed and memory; the first three change nothing that is computed (up to rounding):
    fast_backward: bool = True     # jax_lm.fast_scan's backward pass: weight gradients as big
                                   # matmuls after the scan; False: jax.grad of the plain scan
    remat_segment: int = 0         # > 0: backward recomputes each layer's states segment by
                                   # segment (memory O(T/S + S) steps instead of O(T))
    logits_chunk: int = 0          # > 0: `token_nll` scores this many positions at a time and
                                   # recomputes their logits in the backward pass (memory
                                   # O(chunk·V) instead of O(B·T·V))
    compute_dtype: str | None = None  # e.g. "bfloat16": layers and output projection compute
                                      # in it; params, carries and the loss stay param_dtype

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
        if self.remat_segment < 0 or self.logits_chunk < 0:
            raise ValueError("remat_segment and logits_chunk must be ≥ 0 (0 = off)")
        if self.compute_dtype is not None:
            jnp.dtype(self.compute_dtype)  # validates the name

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


def _dropout(key: Array | None, rate: float | Array, x: Array) -> Array:
    """Inverted dropout; the identity when `key` is None (evaluation) or rate is 0.

    `rate` may be a traced scalar (a population's members differ in it).
    """
    if key is None or (isinstance(rate, float) and rate == 0.0):
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _cast(tree, dtype):
    """Floating leaves of `tree` cast to `dtype` (None: unchanged)."""
    if dtype is None:
        return tree
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                        else x, tree)


def _in_segments(scan_fn, carry, xw: Array, mask: Array | None, size: int):
    """`scan_fn(carry, xw, mask)` run over consecutive segments of `size` steps, each under
    `jax.checkpoint`: the backward pass keeps the carries at segment boundaries and
    recomputes one segment's states at a time (Chen et al. 2016, "sublinear memory").

    T is padded to a multiple of `size` with masked steps, which hold the carry.
    """
    steps, batch = xw.shape[:2]
    pad = -steps % size
    if pad:
        xw = jnp.pad(xw, [(0, pad)] + [(0, 0)] * (xw.ndim - 1))
        mask = jnp.ones((steps, batch), bool) if mask is None else mask
        mask = jnp.pad(mask, [(0, pad), (0, 0)])                 # padding holds the carry

    def segments(x):  # (T, ...) -> (T / size, size, ...)
        return None if x is None else x.reshape((-1, size) + x.shape[1:])

    segment = jax.checkpoint(lambda c, inputs: scan_fn(c, *inputs))
    carry, hs = jax.lax.scan(segment, carry, (segments(xw), segments(mask)))
    return carry, hs.reshape((-1,) + hs.shape[2:])[:steps]


def _scan_layer(config: LMConfig, params: Params, carry, xw: Array, mask: Array | None,
                return_carries: bool):
    """One layer's recurrence over xw [T, B, G·H], with the backward pass `config` asks for."""
    cell = config.cell
    if return_carries or not (config.fast_backward or config.remat_segment):
        return cells.unroll_projected(cell, params, carry, xw, mask, unroll=config.unroll,
                                      return_carries=return_carries)
    unroll = fast_scan.unroll_projected if config.fast_backward else cells.unroll_projected

    def scan_fn(c, xw, mask):
        return unroll(cell, params, c, xw, mask, unroll=config.unroll)

    if config.remat_segment:
        return _in_segments(scan_fn, carry, xw, mask, config.remat_segment)
    return scan_fn(carry, xw, mask)


def _run_layers(params: Params, config: LMConfig, tokens: Array, carry: tuple,
                mask: Array | None, dropout_key: Array | None, return_carries: bool,
                dropout_rate: float | Array | None = None):
    """The stacked layers over time-major tokens [T, B]; returns (h or carries per layer, carry).

    With `config.compute_dtype` the params and carries are cast to it on the way in, and the
    returned carries (not the features) back to `param_dtype` on the way out.
    """
    rate = config.dropout if dropout_rate is None else dropout_rate
    keys = ([None] * (config.num_layers + 1) if dropout_key is None
            else list(jax.random.split(dropout_key, config.num_layers + 1)))
    cell = config.cell
    params, carry = _cast((params, carry), config.compute_dtype)
    project = fast_scan.project if config.fast_backward else cells.project
    new_carry, per_layer = [], []
    x = None if config.one_hot else jnp.take(params["embed"], tokens, axis=0)  # (T, B, D)
    for layer, (lp, c) in enumerate(zip(params["layers"], carry)):
        if x is None:  # one-hot first layer: gather rows of w_x
            xw = cells.project_ids(lp, tokens)
        else:
            xw = project(lp, _dropout(keys[layer], rate, x))  # (T, B, G·H)
        c, out = _scan_layer(config, lp, c, xw, mask, return_carries)
        new_carry.append(c)
        per_layer.append(out)
        x = cell.output(out) if return_carries else out  # (T, B, H)
    if config.compute_dtype is not None:
        dtype = jnp.dtype(config.param_dtype)
        new_carry = _cast(new_carry, dtype)
        per_layer = _cast(per_layer, dtype) if return_carries else per_layer
    return per_layer, tuple(new_carry), _dropout(keys[-1], rate, x)


def hidden_states(params: Params, tokens: Array, carry: tuple, *, config: LMConfig,
                  mask: Array | None = None, dropout_key: Array | None = None,
                  dropout_rate: float | Array | None = None):
    """Top-layer features that feed the output projection.

    Args:
      tokens: [B, T] int token ids.
      carry: per-layer carries from `init_carry` or a previous window.
      mask: optional [B, T]; 0 marks padding, where every layer holds its state.
      dropout_key: enables dropout (training); None disables it (evaluation).
      dropout_rate: overrides `config.dropout` (may be traced, e.g. per population member).

    Returns:
      (h [B, T, H] after the output dropout, new carry).
    """
    mask_tm = None if mask is None else mask.T.astype(bool)
    _, carry, h = _run_layers(params, config, tokens.T, carry, mask_tm, dropout_key, False,
                              dropout_rate)
    return jnp.swapaxes(h, 0, 1), carry


def output_logits(params: Params, h: Array, *, config: LMConfig) -> Array:
    """Output projection h [..., H] -> logits [..., V] (tied: h @ embedᵀ), in param_dtype."""
    params = _cast(params, config.compute_dtype)
    w = params["embed"].T if config.tie_weights else params["out"]["w"]
    h = h if config.compute_dtype is None else h.astype(config.compute_dtype)
    if config.fast_backward and config.output_bias:
        logits = fast_scan.dense_bias(h, w, params["out"]["b"])
    elif config.fast_backward:
        logits = fast_scan.dense(h, w)
    else:
        logits = h @ w
        if config.output_bias:
            logits = logits + cells.lead(params["out"]["b"], logits.ndim)
    return logits.astype(config.param_dtype)


def _softmax_nll(params: Params, h: Array, targets: Array, *, config: LMConfig) -> Array:
    """−log softmax(h W + b)[target]: h [..., H], targets [...] -> nll [...].

    With `config.logits_chunk` = C the positions are scored C at a time under
    `jax.checkpoint`, so at most [C, V] logits exist at once, in the forward pass and again
    in the backward pass (which recomputes them: one more output matmul).
    """
    chunk = config.logits_chunk
    if not chunk:
        logits = output_logits(params, h, config=config)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    shape = targets.shape
    h, targets = h.reshape(-1, h.shape[-1]), targets.reshape(-1)   # (N, H), (N,)
    pad = -targets.shape[0] % chunk
    h, targets = jnp.pad(h, [(0, pad), (0, 0)]), jnp.pad(targets, [(0, pad)])

    @jax.checkpoint
    def chunk_nll(inputs):
        h_c, t_c = inputs                                              # (C, H), (C,)
        logits = output_logits(params, h_c, config=config)             # (C, V)
        return optax.softmax_cross_entropy_with_integer_labels(logits, t_c)

    nll = jax.lax.map(chunk_nll, (h.reshape(-1, chunk, h.shape[-1]), targets.reshape(-1, chunk)))
    return nll.reshape(-1)[: targets.shape[0] - pad].reshape(shape)


def apply_lm(params: Params, tokens: Array, carry: tuple, *, config: LMConfig,
             mask: Array | None = None, dropout_key: Array | None = None):
    """Logits of the next token: tokens [B, T] -> (logits [B, T, V], new carry)."""
    h, carry = hidden_states(params, tokens, carry, config=config, mask=mask,
                             dropout_key=dropout_key)
    return output_logits(params, h, config=config), carry


def token_nll(params: Params, tokens: Array, targets: Array, carry: tuple, *,
              config: LMConfig, mask: Array | None = None, dropout_key: Array | None = None,
              dropout_rate: float | Array | None = None):
    """Negative log-likelihood of each target: (nll [B, T] with 0 on padding, new carry)."""
    h, carry = hidden_states(params, tokens, carry, config=config, mask=mask,
                             dropout_key=dropout_key, dropout_rate=dropout_rate)
    nll = _softmax_nll(params, h, targets, config=config)
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
