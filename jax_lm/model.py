"""The recurrent language model: embed → L stacked scanned cells → output projection.

    tokens [B, T] ──embed──▶ x [T, B, D] ─▶ (dropout ─▶ cell layer) × L ─▶ dropout ─▶ h @ W_out + b
                                                                                    ▼
    carry in: one carry per layer ───────────────────────────────────▶ carry out   logits [B, T, V]

One-hot input (000, 001) is the case with no embedding matrix: the first layer's input
weights w_x [V, G·H] are looked up by token id, which equals one_hot(tokens) @ w_x.
Layers may differ in width (`layer_sizes`, e.g. AWD-LSTM's 1150, 1150, 400).

Regularization, all off by default. `draw_masks(key, config, T, B)` draws every mask of
a training pass as one `Masks` pytree, a pure function of the step's dropout key; nothing
is drawn at evaluation, where `dropout_key` is None:

- dropout (Zaremba et al. 2014; Chainer's `RNNForLM`) on the non-recurrent connections:
  the first layer's input, between layers, and the output projection's input, each at its
  own rate (`dropout_input`, `dropout_hidden`, `dropout_output`; None: `dropout`). With
  `locked_dropout` each sequence of the batch draws one mask [B, D] for all its steps
  (variational dropout, Gal & Ghahramani 2016); otherwise every position draws its own.
- `state_dropout`: h_{t-1} ⊙ m / (1 − p) in the recurrent matmul, one mask [B, H] per
  sequence and layer (Gal & Ghahramani's recurrent dropout); the state itself is not dropped.
- `embed_dropout`: whole word types dropped for the batch, e ← e · m_w / (1 − p) with one
  m_w ~ Bernoulli(1 − p) per vocabulary row (Gal & Ghahramani; AWD-LSTM's dropoute). The
  output projection of a tied model reads the undropped matrix.
- `weight_drop`: DropConnect on every recurrent matrix, W_h ⊙ M / (1 − p), one mask [H, G·H]
  per layer and step, shared by the batch and all time steps (Merity et al. 2018).
- `ar`, `tar`: activation regularization α·mean(h̃²) of the last layer's dropped outputs
  and temporal activation regularization β·mean((h_t − h_{t−1})²) of its outputs before
  dropout (Merity et al. 2017), `activation_penalty`; means over valid positions and units.

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
from typing import Any, NamedTuple

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
    embed_size: int | None = None  # None: same as the first layer's size
    layer_sizes: tuple[int, ...] | None = None  # per-layer widths; None: hidden_size each
    one_hot: bool = False          # no embedding; layer 0 reads one-hot tokens (000, 001)
    dropout: float = 0.0           # rate on each layer's input and on the output layer's input
    dropout_input: float | None = None   # first layer's input (None: dropout)
    dropout_hidden: float | None = None  # between layers (None: dropout)
    dropout_output: float | None = None  # the output projection's input (None: dropout)
    locked_dropout: bool = False   # one mask per sequence, shared by its steps (variational)
    state_dropout: float = 0.0     # on h_{t-1} in the recurrent matmul, one mask per sequence
    embed_dropout: float = 0.0     # whole word types of the embedding, per batch
    weight_drop: float = 0.0       # DropConnect on W_h, one mask per layer and step
    ar: float = 0.0                # α of activation regularization (`activation_penalty`)
    tar: float = 0.0               # β of temporal activation regularization
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
        if self.layer_sizes is not None and (len(self.layer_sizes) != self.num_layers or
                                             min(self.layer_sizes) < 1):
            raise ValueError(f"layer_sizes must be {self.num_layers} positive widths (one per "
                             f"layer), got {self.layer_sizes}")
        for name in ("dropout", "dropout_input", "dropout_hidden", "dropout_output",
                     "state_dropout", "embed_dropout", "weight_drop"):
            rate = getattr(self, name)
            if rate is not None and not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {rate}")
        if self.ar < 0 or self.tar < 0:
            raise ValueError(f"ar and tar must be ≥ 0, got {self.ar} and {self.tar}")
        if self.one_hot and self.embed_dropout:
            raise ValueError("embed_dropout needs an embedding; it cannot be used with one_hot")
        if self.tie_weights and self.one_hot:
            raise ValueError("tie_weights needs an embedding; it cannot be used with one_hot")
        if self.tie_weights and self.input_size != self.output_size:
            raise ValueError(f"tie_weights needs the embedding as wide as the last layer, got "
                             f"{self.input_size} and {self.output_size}")
        cells.make_inits(self.init, self.init_scale)  # validates the scheme name
        if self.remat_segment < 0 or self.logits_chunk < 0:
            raise ValueError("remat_segment and logits_chunk must be ≥ 0 (0 = off)")
        if self.compute_dtype is not None:
            jnp.dtype(self.compute_dtype)  # validates the name

    @property
    def sizes(self) -> tuple[int, ...]:
        """The width H_l of every layer."""
        return self.layer_sizes or (self.hidden_size,) * self.num_layers

    @property
    def layers_text(self) -> str:
        """"2×200", or the widths "1150-1150-400" when the layers differ."""
        sizes = self.sizes
        if len(set(sizes)) == 1:
            return f"{self.num_layers}×{sizes[0]}"
        return "-".join(map(str, sizes))

    @property
    def output_size(self) -> int:
        """Width of the features that feed the output projection: the last layer's."""
        return self.sizes[-1]

    @property
    def input_size(self) -> int:
        """Width of the first layer's input: V for one-hot, else the embedding size."""
        if self.one_hot:
            return self.vocab_size
        return self.sizes[0] if self.embed_size is None else self.embed_size

    def rate(self, where: str, dropout: float | Array | None = None) -> float | Array:
        """Dropout rate at "input", "hidden" or "output"; `dropout` overrides `self.dropout`
        where no rate of its own is set (it may be traced: a population member's)."""
        own = getattr(self, f"dropout_{where}")
        return own if own is not None else (self.dropout if dropout is None else dropout)

    @property
    def stochastic(self) -> bool:
        """True when training draws any mask (the step then needs a dropout key)."""
        rates = (self.dropout, self.dropout_input, self.dropout_hidden, self.dropout_output,
                 self.state_dropout, self.embed_dropout, self.weight_drop)
        return any(rates)


def init_lm(key: Array, config: LMConfig) -> Params:
    """Random parameters for `config` (see the module docstring for the layout)."""
    inits = cells.make_inits(config.init, config.init_scale)
    dtype = jnp.dtype(config.param_dtype)
    k_embed, k_out_w, k_out_b, *k_layers = jax.random.split(key, 3 + config.num_layers)
    params: Params = {"layers": []}
    if not config.one_hot:
        params["embed"] = inits.w_x(k_embed, (config.vocab_size, config.input_size), dtype)
    input_size = config.input_size
    for size, k in zip(config.sizes, k_layers):
        params["layers"].append(config.cell.init(k, input_size, size, inits, dtype))
        input_size = size
    params["out"] = {}
    if not config.tie_weights:
        params["out"]["w"] = inits.w_x(k_out_w, (config.output_size, config.vocab_size), dtype)
    if config.output_bias:
        params["out"]["b"] = inits.b(k_out_b, (config.vocab_size,), dtype)
    return params


def init_carry(config: LMConfig, batch_size: int) -> tuple:
    """Zero state of every layer: a tuple of L carries, each [B, H_l] (LSTM: LSTMState)."""
    dtype = jnp.dtype(config.param_dtype)
    return tuple(config.cell.initial_carry(batch_size, size, dtype) for size in config.sizes)


def _is_zero(rate) -> bool:
    return isinstance(rate, (int, float)) and rate == 0.0


def keep_mask(key: Array, rate: float | Array, shape, dtype) -> Array:
    """m / (1 − p) with m ~ Bernoulli(1 − p) of `shape`: entries 0 or 1/(1 − p), mean 1.

    `rate` may be traced (a population's members differ in it).
    """
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return jnp.where(keep, 1.0 / (1.0 - jnp.asarray(rate, dtype)), 0.0).astype(dtype)


class Masks(NamedTuple):
    """Every mask of one training pass (entries 0 or 1/(1 − p)); None where nothing drops.

    inputs:  L + 1 masks, each layer's input then the output projection's input:
             [1, B, D] locked (one per sequence) or [T, B, D] (one per position)
    embed:   [V], one factor per word type (embedding dropout)
    states:  L masks [B, H_l] on h_{t-1} in the recurrent matmul (recurrent dropout)
    weights: L masks [H_l, G·H_l] on W_h (weight drop), shared by the batch and the steps
    """

    inputs: tuple
    embed: Array | None
    states: tuple
    weights: tuple


def draw_masks(key: Array, config: LMConfig, steps: int, batch: int,
               dropout_rate: float | Array | None = None) -> Masks:
    """The masks of a training pass over [B, T] tokens, a pure function of `key`.

    `dropout_rate` overrides `config.dropout` (see `LMConfig.rate`). The input masks are
    drawn from `split(key, L + 1)`, the others from `fold_in(key, 1)`.
    """
    dtype = jnp.dtype(config.compute_dtype or config.param_dtype)
    layers, sizes = config.num_layers, config.sizes
    widths = (config.input_size, *sizes)  # each layer's input, then the projection's
    input_keys = jax.random.split(key, layers + 1)
    k_embed, *rest = jax.random.split(jax.random.fold_in(key, 1), 1 + 2 * layers)

    def draw(k, rate, shape):
        return None if _is_zero(rate) else keep_mask(k, rate, shape, dtype)

    inputs = []
    for layer in range(layers + 1):
        where = "input" if layer == 0 else "output" if layer == layers else "hidden"
        rate = 0.0 if (layer == 0 and config.one_hot) else config.rate(where, dropout_rate)
        inputs.append(draw(input_keys[layer], rate, (1 if config.locked_dropout else steps,
                                                     batch, widths[layer])))
    gates = len(config.cell.GATES)
    return Masks(
        inputs=tuple(inputs),
        embed=None if config.one_hot else draw(k_embed, config.embed_dropout,
                                               (config.vocab_size,)),
        states=tuple(draw(k, config.state_dropout, (batch, h))
                     for k, h in zip(rest[:layers], sizes)),
        weights=tuple(draw(k, config.weight_drop, (h, gates * h))
                      for k, h in zip(rest[layers:], sizes)))


def activation_penalty(h_dropped: Array, h: Array, mask: Array | None, *, ar: float,
                       tar: float) -> Array:
    """AR + TAR (Merity et al. 2017) of the last layer's features, time-major [T, B, H].

        AR  = α · mean over valid (t, b) and units of h̃_t²        (h̃: after dropout)
        TAR = β · mean over valid pairs (t−1, t) and units of (h_t − h_{t−1})²

    `mask` [T, B] marks valid positions (None: all); a pair is valid when both are.
    Without padding these are AWD-LSTM's `pow(2).mean()` terms.
    """
    total = jnp.zeros((), h.dtype)
    valid = jnp.ones(h.shape[:2], h.dtype) if mask is None else mask.astype(h.dtype)
    units = h.shape[-1]
    if ar:
        sq = (h_dropped.astype(h.dtype) ** 2).sum(-1) * valid
        total += ar * sq.sum() / (jnp.maximum(valid.sum(), 1.0) * units)
    if tar:
        pairs = valid[1:] * valid[:-1]
        sq = ((h[1:] - h[:-1]) ** 2).sum(-1) * pairs
        total += tar * sq.sum() / (jnp.maximum(pairs.sum(), 1.0) * units)
    return total


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
                return_carries: bool, state_mask: Array | None = None):
    """One layer's recurrence over xw [T, B, G·H], with the backward pass `config` asks for.

    Recurrent dropout (`state_mask`) always takes the plain scan (`jax.grad` of it).
    """
    cell = config.cell
    if return_carries or state_mask is not None or not (config.fast_backward or
                                                         config.remat_segment):
        return cells.unroll_projected(cell, params, carry, xw, mask, unroll=config.unroll,
                                      return_carries=return_carries, state_mask=state_mask)
    unroll = fast_scan.unroll_projected if config.fast_backward else cells.unroll_projected

    def scan_fn(c, xw, mask):
        return unroll(cell, params, c, xw, mask, unroll=config.unroll)

    if config.remat_segment:
        return _in_segments(scan_fn, carry, xw, mask, config.remat_segment)
    return scan_fn(carry, xw, mask)


def _run_layers(params: Params, config: LMConfig, tokens: Array, carry: tuple,
                mask: Array | None, masks: Masks | None, return_carries: bool):
    """The stacked layers over time-major tokens [T, B], with `masks` (None: no dropout).

    Returns (per layer: h [T, B, H_l] or the carries, new carry, top features after the
    output dropout). With `config.compute_dtype` the params and carries are cast to it on
    the way in, and the returned carries (not the features) back to `param_dtype`.
    """
    layers = config.num_layers
    if masks is None:
        masks = Masks((None,) * (layers + 1), None, (None,) * layers, (None,) * layers)

    def drop(x, m):
        return x if m is None else x * m

    cell = config.cell
    params, carry = _cast((params, carry), config.compute_dtype)
    project = fast_scan.project if config.fast_backward else cells.project
    new_carry, per_layer = [], []
    x = None
    if not config.one_hot:  # embedding dropout: embed[w] · m_w, as a lookup of both
        x = jnp.take(params["embed"], tokens, axis=0)                     # (T, B, D)
        if masks.embed is not None:
            x = x * jnp.take(masks.embed, tokens)[..., None]
    for layer, (lp, c) in enumerate(zip(params["layers"], carry)):
        if x is None:  # one-hot first layer: gather rows of w_x
            xw = cells.project_ids(lp, tokens)
        else:
            xw = project(lp, drop(x, masks.inputs[layer]))                 # (T, B, G·H)
        if masks.weights[layer] is not None:  # DropConnect on W_h
            lp = {**lp, "w_h": lp["w_h"] * masks.weights[layer]}
        c, out = _scan_layer(config, lp, c, xw, mask, return_carries, masks.states[layer])
        new_carry.append(c)
        per_layer.append(out)
        x = cell.output(out) if return_carries else out                    # (T, B, H)
    if config.compute_dtype is not None:
        dtype = jnp.dtype(config.param_dtype)
        new_carry = _cast(new_carry, dtype)
        per_layer = _cast(per_layer, dtype) if return_carries else per_layer
    return per_layer, tuple(new_carry), drop(x, masks.inputs[-1])


def _masks(config: LMConfig, tokens: Array, dropout_key, dropout_rate) -> Masks | None:
    if dropout_key is None:
        return None
    steps, batch = tokens.shape[1], tokens.shape[0]
    return draw_masks(dropout_key, config, steps, batch, dropout_rate)


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
    _, carry, h = _run_layers(params, config, tokens.T, carry, mask_tm,
                              _masks(config, tokens, dropout_key, dropout_rate), False)
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
    nll, _, carry = nll_and_penalty(params, tokens, targets, carry, config=config, mask=mask,
                                    dropout_key=dropout_key, dropout_rate=dropout_rate)
    return nll, carry


def nll_and_penalty(params: Params, tokens: Array, targets: Array, carry: tuple, *,
                    config: LMConfig, mask: Array | None = None,
                    dropout_key: Array | None = None,
                    dropout_rate: float | Array | None = None):
    """`token_nll` and the `activation_penalty` of the same pass (0 unless config.ar/tar).

    Returns (nll [B, T] with 0 on padding, penalty scalar, new carry).
    """
    mask_tm = None if mask is None else mask.T.astype(bool)
    per_layer, carry, h_tm = _run_layers(params, config, tokens.T, carry, mask_tm,
                                         _masks(config, tokens, dropout_key, dropout_rate), False)
    penalty = jnp.zeros((), jnp.dtype(config.param_dtype))
    if config.ar or config.tar:
        penalty = activation_penalty(h_tm, per_layer[-1], mask_tm, ar=config.ar,
                                     tar=config.tar).astype(penalty.dtype)
    nll = _softmax_nll(params, jnp.swapaxes(h_tm, 0, 1), targets, config=config)
    return (nll if mask is None else jnp.where(mask.astype(bool), nll, 0.0)), penalty, carry


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
