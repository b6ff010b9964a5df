"""Recurrent cells as pure functions over explicit parameter pytrees.

A cell is a frozen dataclass of *static* options (hashable, so it can be closed over
or passed as a static argument to `jax.jit`) whose methods are pure functions:

    init(key, input_size, hidden_size, inits) -> params      # dict of arrays
    initial_carry(batch_size, hidden_size, dtype) -> carry   # zeros: h, or LSTMState(h, c)
    update(params, carry, xw_t, hw_t) -> (carry, h_t)        # the elementwise part of a step
    recur(params, carry, xw_t) -> (carry, h_t)               # one step, xw_t [B, G·H]
    step(params, carry, x_t) -> (carry, h_t)                 # scan's signature, x_t [B, I]

Every cell keeps its input weights in `w_x [I, G·H]` and optional bias `b [G·H]`, with the
G gate blocks side by side, so the input projection `project(params, x) = x @ w_x + b` is
shared by all cells. `unroll` applies it to a whole sequence as one big matmul before
`jax.lax.scan`; only `h @ w_h` stays inside the scan (the per-step
matmuls have B rows and run at half the GEMM rate).

A step is split in two: the recurrent matmul hw_t = h_{t-1} @ w_h [B, G·H], and
`update`, which combines xw_t and hw_t elementwise (gates, nonlinearities, cell state) and
reads no weight matrix. `recur` is the two together. The split lets `jax_lm.fast_scan`
take the gradient of w_h as one matmul after the scan instead of one per step.

Conventions: row vectors (`x @ W`), gate blocks in the order of the `GATES` of each cell,
time-major sequences `[T, B, ·]` inside `unroll`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
Params = dict[str, Any]
Initializer = Callable[..., Array]  # jax.nn.initializers signature: (key, shape, dtype)

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "relu": jax.nn.relu,
}


def _activation(name: str) -> Callable[[Array], Array]:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


class Inits(NamedTuple):
    """Initializers for input weights, recurrent weights and biases."""

    w_x: Initializer
    w_h: Initializer
    b: Initializer


def make_inits(scheme: str = "default", scale: float = 0.1) -> Inits:
    """The initialization schemes of the seed documents and of the peer libraries.

    - ``"uniform"``: every parameter, biases included, from U(−scale, +scale)
      (Chainer's PTB example and Zaremba et al. 2014 use 0.1; 000 uses 0.1).
    - ``"fan_in"``: weights from U(−1/√n, +1/√n), n the fan-in of the matrix; zero biases
      (001, after Glorot & Bengio 2010).
    - ``"default"``: LeCun-normal input weights, orthogonal recurrent weights, zero biases
      (flax's cell defaults).
    """
    if scheme == "uniform":
        u = jax.nn.initializers.uniform(2 * scale)  # U[0, 2s), shifted below

        def sym(key, shape, dtype=jnp.float32):
            return u(key, shape, dtype) - jnp.asarray(scale, dtype)

        return Inits(sym, sym, sym)
    if scheme == "fan_in":
        fan_in = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
        return Inits(fan_in, fan_in, jax.nn.initializers.zeros)
    if scheme == "default":
        return Inits(
            jax.nn.initializers.lecun_normal(),
            jax.nn.initializers.orthogonal(),
            jax.nn.initializers.zeros,
        )
    raise ValueError(f"unknown init scheme {scheme!r}; choose 'uniform', 'fan_in' or 'default'")


class LSTMState(NamedTuple):
    """Carry of the LSTM family: hidden state h and cell state c, each [B, H]."""

    hidden: Array
    cell: Array


def lead(v: Array, ndim: int) -> Array:
    """`v` with leading size-1 axes up to `ndim` axes (a bias [F] -> [1, …, 1, F]).

    NumPy's implicit rank promotion made explicit, so that code runs under
    ``jax_numpy_rank_promotion="raise"``; it is the reshape jnp would insert, so nothing
    computed changes.
    """
    return jnp.expand_dims(v, tuple(range(ndim - jnp.ndim(v))))


def project(params: Params, x: Array) -> Array:
    """Input projection x @ w_x + b: [..., I] -> [..., G·H]; hoisted out of the scan."""
    xw = x @ params["w_x"]
    return xw + lead(params["b"], xw.ndim) if "b" in params else xw


def project_ids(params: Params, ids: Array) -> Array:
    """`project` of one-hot inputs given as integer ids [...]: a row gather of w_x."""
    xw = jnp.take(params["w_x"], ids, axis=0)
    return xw + lead(params["b"], xw.ndim) if "b" in params else xw


def _batch_shape(batch_size: int | tuple[int, ...]) -> tuple[int, ...]:
    return (batch_size,) if isinstance(batch_size, int) else tuple(batch_size)


def _dense_params(cell, key, input_size, hidden_size, inits, dtype) -> Params:
    """w_x [I, G·H], w_h [H, G·H] and (if the cell has one) b [G·H]."""
    width = len(cell.GATES) * hidden_size
    k_x, k_h, k_b = jax.random.split(key, 3)
    params = {
        "w_x": inits.w_x(k_x, (input_size, width), dtype),
        "w_h": inits.w_h(k_h, (hidden_size, width), dtype),
    }
    if cell.use_bias:
        params["b"] = inits.b(k_b, (width,), dtype)
    return params


class _Cell:
    """Methods shared by every cell; subclasses define GATES, init, initial_carry, update."""

    GATES: tuple[str, ...] = ()
    use_bias: bool = True
    # True when `update` reads its inputs only as the sum z_t = xw_t + hw_t (RNN, LSTM);
    # `jax_lm.fast_scan` then keeps z_t alone for the backward pass.
    SUMS_INPUTS: bool = False

    def recur(self, params: Params, carry, xw_t: Array):
        """One step from the projected input xw_t [B, G·H]: `update` with hw_t = h_{t-1} W_h."""
        return self.update(params, carry, xw_t, self.output(carry) @ params["w_h"])

    def step(self, params: Params, carry, x_t: Array):
        """One time step in scan's signature: x_t [B, I] -> (carry, h_t [B, H])."""
        return self.recur(params, carry, project(params, x_t))

    def output(self, carry) -> Array:
        """The hidden state h [B, H] that a carry holds."""
        return carry


@dataclasses.dataclass(frozen=True)
class RNN(_Cell):
    """Vanilla (Elman) RNN: h_t = act(x_t W_x + h_{t-1} W_h + b).

    001's RNN is `RNN(use_bias=False)` with one-hot input: s_t = tanh(U x_t + W s_{t-1}).

    >>> cell = RNN()
    >>> params = cell.init(jax.random.key(0), 3, 4)
    >>> carry, h = cell.step(params, cell.initial_carry(2, 4), jnp.ones((2, 3)))
    >>> h.shape
    (2, 4)
    """

    activation: str = "tanh"  # "tanh" or "relu"
    use_bias: bool = True

    GATES = ("h",)
    SUMS_INPUTS = True

    def __post_init__(self):
        _activation(self.activation)

    def init(self, key, input_size: int, hidden_size: int, inits: Inits | None = None,
             dtype=jnp.float32) -> Params:
        return _dense_params(self, key, input_size, hidden_size, inits or make_inits(), dtype)

    def initial_carry(self, batch_size: int | tuple[int, ...], hidden_size: int,
                      dtype=jnp.float32) -> Array:
        return jnp.zeros((*_batch_shape(batch_size), hidden_size), dtype)

    def update(self, params: Params, h: Array, xw_t: Array, hw_t: Array):
        """h_t = act(xw_t + hw_t); xw_t, hw_t [B, H]."""
        h = _activation(self.activation)(xw_t + hw_t)  # (B, H)
        return h, h


@dataclasses.dataclass(frozen=True)
class LSTM(_Cell):
    """Long short-term memory (Hochreiter & Schmidhuber 1997; Gers et al. 2000, 2002).

        i = σ(z_i + p_i ⊙ c_{t-1})             z = x_t W_x + h_{t-1} W_h + b
        f = σ(z_f + p_f ⊙ c_{t-1} + forget_bias)     (CIFG: f = 1 − i)
        g = φ(z_g)
        c_t = f ⊙ c_{t-1} + i ⊙ g
        o = σ(z_o + p_o ⊙ c_t)
        h_t = o ⊙ φ(c_t)

    σ is `gate_fn`, φ is `activation`; the diagonal peepholes p_· exist when
    `peepholes=True` (Gers & Schmidhuber 2000; input and forget gates look at c_{t-1},
    the output gate at c_t). `forget_bias` is a constant added to the forget-gate
    pre-activation (1.0 is the usual choice, Gers et al. 2000; Jozefowicz et al. 2015).

    000's variant is `LSTM(gate_fn="tanh", peepholes=True)` with one-hot input, its
    always-on bias unit being the bias b. 003's CIFG is `CIFG()`.
    """

    gate_fn: str = "sigmoid"
    activation: str = "tanh"
    peepholes: bool = False
    coupled: bool = False  # CIFG: f = 1 − i, no forget-gate weights
    forget_bias: float = 0.0
    use_bias: bool = True

    SUMS_INPUTS = True

    def __post_init__(self):
        _activation(self.gate_fn)
        _activation(self.activation)
        if self.coupled and self.forget_bias:
            raise ValueError("a coupled (CIFG) cell has no forget gate to bias")

    @property
    def GATES(self) -> tuple[str, ...]:  # noqa: N802 (a per-instance constant)
        return ("i", "g", "o") if self.coupled else ("i", "f", "g", "o")

    @property
    def peephole_gates(self) -> tuple[str, ...]:
        return tuple(g for g in self.GATES if g != "g")

    def init(self, key, input_size: int, hidden_size: int, inits: Inits | None = None,
             dtype=jnp.float32) -> Params:
        inits = inits or make_inits()
        key, k_p = jax.random.split(key)
        params = _dense_params(self, key, input_size, hidden_size, inits, dtype)
        if self.peepholes:
            # Peepholes are diagonal: one weight per unit, initialized like a bias.
            keys = jax.random.split(k_p, len(self.peephole_gates))
            params["peep"] = {g: inits.b(k, (hidden_size,), dtype)
                              for g, k in zip(self.peephole_gates, keys)}
        return params

    def initial_carry(self, batch_size: int | tuple[int, ...], hidden_size: int,
                      dtype=jnp.float32) -> LSTMState:
        shape = (*_batch_shape(batch_size), hidden_size)
        # Two distinct buffers, so that a donated carry never donates one buffer twice.
        return LSTMState(hidden=jnp.zeros(shape, dtype), cell=jnp.zeros(shape, dtype))

    def output(self, carry: LSTMState) -> Array:
        return carry.hidden

    def update(self, params: Params, carry: LSTMState, xw_t: Array, hw_t: Array):
        """The gates from z = xw_t + hw_t [B, G·H] (class docstring); reads only peepholes."""
        c = carry.cell  # (B, H)
        z = dict(zip(self.GATES, jnp.split(xw_t + hw_t, len(self.GATES), axis=-1)))
        peep = {gate: lead(w, c.ndim) for gate, w in params.get("peep", {}).items()}
        sigma, phi = _activation(self.gate_fn), _activation(self.activation)

        i = sigma(z["i"] + peep["i"] * c if self.peepholes else z["i"])
        if self.coupled:
            f = 1.0 - i
        else:
            z_f = z["f"] + peep["f"] * c if self.peepholes else z["f"]
            f = sigma(z_f + self.forget_bias if self.forget_bias else z_f)
        c = f * c + i * phi(z["g"])
        o = sigma(z["o"] + peep["o"] * c if self.peepholes else z["o"])
        h = o * phi(c)
        return LSTMState(hidden=h, cell=c), h


@dataclasses.dataclass(frozen=True)
class CIFG(LSTM):
    """Coupled input-forget gate LSTM: f = 1 − i, no forget-gate weights (Greff et al. 2017).

    The cell of 003; all other equations are `LSTM`'s.
    """

    coupled: bool = True


@dataclasses.dataclass(frozen=True)
class GRU(_Cell):
    """Gated recurrent unit (Cho et al. 2014), in the form of flax's GRUCell and cuDNN:

        r = σ(x W_xr + b_r + h_{t-1} W_hr)
        z = σ(x W_xz + b_z + h_{t-1} W_hz)
        n = tanh(x W_xn + b_n + r ⊙ (h_{t-1} W_hn + b_hn))
        h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}

    Gate blocks in order (r, z, n), as in flax and PyTorch; z is the update gate.
    """

    use_bias: bool = True

    GATES = ("r", "z", "n")

    def init(self, key, input_size: int, hidden_size: int, inits: Inits | None = None,
             dtype=jnp.float32) -> Params:
        inits = inits or make_inits()
        key, k_b = jax.random.split(key)
        params = _dense_params(self, key, input_size, hidden_size, inits, dtype)
        if self.use_bias:
            params["b_hn"] = inits.b(k_b, (hidden_size,), dtype)
        return params

    def initial_carry(self, batch_size: int | tuple[int, ...], hidden_size: int,
                      dtype=jnp.float32) -> Array:
        return jnp.zeros((*_batch_shape(batch_size), hidden_size), dtype)

    def update(self, params: Params, h: Array, xw_t: Array, hw_t: Array):
        """The gates from xw_t and hw_t [B, 3H] (class docstring); reads only b_hn."""
        x_r, x_z, x_n = jnp.split(xw_t, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(hw_t, 3, axis=-1)
        if "b_hn" in params:
            h_n = h_n + lead(params["b_hn"], h_n.ndim)
        r = jax.nn.sigmoid(x_r + h_r)
        z = jax.nn.sigmoid(x_z + h_z)
        n = jnp.tanh(x_n + r * h_n)
        h = (1.0 - z) * n + z * h
        return h, h


Cell = RNN | LSTM | GRU

CELLS: dict[str, type] = {"rnn": RNN, "lstm": LSTM, "cifg": CIFG, "gru": GRU}


def make_cell(name: str, **options) -> Cell:
    """The cell registered under `name` ("rnn", "lstm", "cifg", "gru") with its options."""
    if name not in CELLS:
        raise ValueError(f"unknown cell {name!r}; choose one of {sorted(CELLS)}")
    fields = {f.name for f in dataclasses.fields(CELLS[name])}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for cell {name!r}; valid: {sorted(fields)}")
    return CELLS[name](**options)


def _hold(mask_t: Array, new, old):
    """Where mask_t [B] is 0, keep the old carry (padding does not advance the state)."""
    return jax.tree.map(lambda n, o: jnp.where(mask_t[:, None], n, o), new, old)


def unroll_projected(cell: Cell, params: Params, carry, xw: Array, mask: Array | None = None,
                     *, unroll: int = 1, return_carries: bool = False,
                     state_mask: Array | None = None):
    """Scan `cell.recur` over already projected inputs.

    Args:
      xw: [T, B, G·H] input projections (see `project`, `project_ids`).
      mask: optional [T, B]; where 0 the carry is held and the held h is emitted.
      unroll: `jax.lax.scan` unroll factor.
      return_carries: emit the carry after every step instead of h_t.
      state_mask: optional [B, H] multiplying h_{t-1} in the recurrent matmul at every
        step, hw_t = (h_{t-1} ⊙ state_mask) W_h (recurrent dropout); the carry is unchanged.

    Returns:
      (final carry, hs [T, B, H]) or (final carry, carries with leading axis T).
    """

    def body(carry, inputs):
        xw_t, m_t = inputs
        if state_mask is None:
            new_carry, h_t = cell.recur(params, carry, xw_t)
        else:
            hw_t = (cell.output(carry) * state_mask) @ params["w_h"]
            new_carry, h_t = cell.update(params, carry, xw_t, hw_t)
        if m_t is not None:
            new_carry = _hold(m_t, new_carry, carry)
            h_t = cell.output(new_carry)
        return new_carry, (new_carry if return_carries else h_t)

    return jax.lax.scan(body, carry, (xw, mask), unroll=unroll)


def unroll(cell: Cell, params: Params, carry, xs: Array, mask: Array | None = None,
           *, unroll: int = 1, return_carries: bool = False):
    """Run a cell over a time-major sequence xs [T, B, I] -> (carry, hs [T, B, H]).

    The input projection of all T steps is one [T·B, I] @ [I, G·H] matmul before the scan.
    """
    return unroll_projected(cell, params, carry, project(params, xs), mask,
                            unroll=unroll, return_carries=return_carries)
