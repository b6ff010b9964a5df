"""Flax interop: jax_lm cells as flax RNN cells, and flax cell parameters as jax_lm ones.

Two directions:

- **jax_lm cell → flax.** `FlaxCell` (linen) and `NnxCell` (nnx) wrap any `jax_lm.cells`
  cell as an `RNNCellBase`, so it runs inside `flax.linen.RNN` / `flax.nnx.RNN` (and
  `Bidirectional`, `seq_lengths`, ...). The wrapper adds no computation: its `__call__` is
  the cell's `step`, and its parameters are stored as ONE entry, "cell", holding the jax_lm
  params dict, so what flax stores *is* a jax_lm params pytree. `nn.RNN` files its cell's
  variables under the submodule name "cell", hence the double key::

      rnn = nn.RNN(FlaxCell(cells.LSTM(), hidden_size=64))
      variables = rnn.init(key, x)                        # x [B, T, I]
      params = variables["params"]["cell"]["cell"]   # {"w_x": [I, 4H], "w_h": [H, 4H], "b": [4H]}
      cells.unroll(cells.LSTM(), params, carry, x.swapaxes(0, 1))   # same outputs, time-major

  The carry is the jax_lm carry (`LSTMState(hidden, cell)` for the LSTM family, a bare
  h [..., H] otherwise), not flax's `(c, h)` tuple.

- **flax params → jax_lm.** `from_flax_lstm`, `from_flax_gru`, `from_flax_simple` turn the
  parameters of linen's `LSTMCell` / `OptimizedLSTMCell`, `GRUCell` and `SimpleCell` into the
  params of `cells.LSTM()`, `cells.GRU()` and `cells.RNN()`. They only concatenate kernels
  along the gate axis, so they are linear and also map flax *gradients* to jax_lm gradients.
  (The nnx cells store their weights under other names, and nnx's GRUCell has no `hn` bias:
  these converters take the linen layout only.)
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from jax_lm import cells

Array = jax.Array
Params = dict[str, Any]


class FlaxCell(nn.RNNCellBase):
    """A jax_lm cell as a linen `RNNCellBase`, ready for `nn.RNN` / `nn.Bidirectional`.

    `__call__(carry, x)` with x [*batch, I] returns `cell.step(params, carry, x)`, i.e.
    (carry, h [*batch, H]). The parameters are created on the first call as one entry,
    `"cell"`, holding `cell.init(key, I, hidden_size, make_inits(init_scheme, init_scale),
    param_dtype)`. So `variables["params"]["cell"]` of a bare `FlaxCell`, and
    `variables["params"]["cell"]["cell"]` of an `nn.RNN(FlaxCell(...))`, is a jax_lm params
    pytree (`w_x [I, G·H]`, `w_h [H, G·H]`, `b [G·H]`, peepholes, `b_hn`), usable as-is
    with `cells.unroll` and the rest of jax_lm.

    The computation dtype is that of the inputs and params (jax_lm promotes; there is no
    separate `dtype` attribute). The carry is `param_dtype`, as in flax's own cells.

    Attributes:
      cell: a `jax_lm.cells` cell (RNN, LSTM, CIFG, GRU), e.g. `cells.make_cell("gru")`.
      hidden_size: H, the number of hidden units.
      init_scheme, init_scale: passed to `cells.make_inits` ("default" is flax's own:
        LeCun-normal input weights, orthogonal recurrent weights, zero biases).
      param_dtype: dtype of the parameters and of the initial carry.

    >>> rnn = nn.RNN(FlaxCell(cells.GRU(), hidden_size=4))
    >>> x = jnp.ones((2, 5, 3))                                    # (B, T, I)
    >>> variables = rnn.init(jax.random.key(0), x)
    >>> sorted(variables["params"]["cell"]["cell"])
    ['b', 'b_hn', 'w_h', 'w_x']
    >>> rnn.apply(variables, x).shape                              # (B, T, H)
    (2, 5, 4)
    """

    cell: cells.Cell
    hidden_size: int
    init_scheme: str = "default"
    init_scale: float = 0.1
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, carry, x: Array):
        params = self.param(
            "cell",
            lambda key: self.cell.init(key, x.shape[-1], self.hidden_size,
                                       cells.make_inits(self.init_scheme, self.init_scale),
                                       self.param_dtype),
        )
        return self.cell.step(params, carry, x)

    @nn.nowrap
    def initialize_carry(self, rng, input_shape: tuple[int, ...]):
        """Zero carry for one step's input shape (*batch, I); `rng` is unused (zeros)."""
        del rng
        return self.cell.initial_carry(input_shape[:-1], self.hidden_size, self.param_dtype)

    @property
    def num_feature_axes(self) -> int:
        return 1


class NnxCell(nnx.RNNCellBase):
    """A jax_lm cell as an nnx `RNNCellBase`, ready for `nnx.RNN`.

    Like `FlaxCell`, but nnx creates parameters eagerly, so the input size is an argument.
    `self.params` is one `nnx.Param` whose value is the jax_lm params pytree
    (`self.params.get_value()`); `self.cell` is the static jax_lm cell.

    >>> rnn = nnx.RNN(NnxCell(cells.LSTM(), 3, 4, rngs=nnx.Rngs(0)))
    >>> rnn(jnp.ones((2, 5, 3))).shape                             # (B, T, H)
    (2, 5, 4)
    """

    def __init__(self, cell: cells.Cell, in_features: int, hidden_size: int, *,
                 init_scheme: str = "default", init_scale: float = 0.1,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.cell = cell
        self.hidden_size = hidden_size
        self.param_dtype = param_dtype
        self.params = nnx.Param(cell.init(rngs.params(), in_features, hidden_size,
                                          cells.make_inits(init_scheme, init_scale),
                                          param_dtype))

    def __call__(self, carry, x: Array):
        return self.cell.step(self.params.get_value(), carry, x)

    def initialize_carry(self, input_shape: tuple[int, ...], rngs=None, carry_init=None):
        """Zero carry for one step's input shape (*batch, I); `rngs` is unused (zeros)."""
        if carry_init is not None:
            raise ValueError("NnxCell's carry is always the jax_lm zero carry")
        return self.cell.initial_carry(input_shape[:-1], self.hidden_size, self.param_dtype)

    @property
    def num_feature_axes(self) -> int:
        return 1


# -- flax (linen) cell params → jax_lm params ---------------------------------------------
#
# Linen's cells keep one Dense per gate and side: "i<gate>" reads x, "h<gate>" reads h.
# jax_lm keeps the gates side by side in one matrix per side, in the same gate order, so
# each conversion is a concatenation along the last (gate) axis.


def _cat(flax_params: Mapping, names: str | list[str], leaf: str) -> Array:
    return jnp.concatenate([flax_params[n][leaf] for n in names], axis=-1)


def from_flax_lstm(flax_params: Mapping) -> Params:
    """Params of linen `LSTMCell` or `OptimizedLSTMCell` → params of `cells.LSTM()`.

    Flax computes gate k ∈ (i, f, g, o) as x W_ik + h W_hk + b_hk (bias on the h-side
    Dense); jax_lm as the k-th block of x w_x + b + h w_h. The sums are the same, so

        w_x = [W_ii | W_if | W_ig | W_io]   [I, 4H]
        w_h = [W_hi | W_hf | W_hg | W_ho]   [H, 4H]
        b   = [b_hi | b_hf | b_hg | b_ho]   [4H]

    Carries differ in order only: flax's (c, h) is `cells.LSTMState(hidden=h, cell=c)`.

    Args:
      flax_params: the cell's params, `{"ii": {"kernel"}, ..., "hi": {"kernel", "bias"}, ...}`
        (`variables["params"]` of the cell, or `variables["params"]["cell"]` of an `nn.RNN`).
    """
    gates = "ifgo"
    return {
        "w_x": _cat(flax_params, [f"i{g}" for g in gates], "kernel"),
        "w_h": _cat(flax_params, [f"h{g}" for g in gates], "kernel"),
        "b": _cat(flax_params, [f"h{g}" for g in gates], "bias"),
    }


def from_flax_gru(flax_params: Mapping) -> Params:
    """Params of linen `GRUCell` → params of `cells.GRU()`.

    Flax: r = σ(x W_ir + b_ir + h W_hr), z = σ(x W_iz + b_iz + h W_hz),
    n = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn)). Same gate order (r, z, n) in jax_lm:

        w_x = [W_ir | W_iz | W_in]   [I, 3H]     b    = [b_ir | b_iz | b_in]   [3H]
        w_h = [W_hr | W_hz | W_hn]   [H, 3H]     b_hn = b_hn                   [H]
    """
    gates = "rzn"
    return {
        "w_x": _cat(flax_params, [f"i{g}" for g in gates], "kernel"),
        "w_h": _cat(flax_params, [f"h{g}" for g in gates], "kernel"),
        "b": _cat(flax_params, [f"i{g}" for g in gates], "bias"),
        "b_hn": flax_params["hn"]["bias"],
    }


def from_flax_simple(flax_params: Mapping) -> Params:
    """Params of linen `SimpleCell` (non-residual) → params of `cells.RNN()`.

    Flax: h' = tanh(x W_i + b_i + h W_h); jax_lm: w_x = W_i [I, H], b = b_i [H], w_h = W_h [H, H].
    """
    return {
        "w_x": flax_params["i"]["kernel"],
        "w_h": flax_params["h"]["kernel"],
        "b": flax_params["i"]["bias"],
    }
