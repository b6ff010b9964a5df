"""Flax interop: jax_lm cells inside `nn.RNN` / `nnx.RNN`, and parity with flax's own cells.

Parity runs in float64: flax's cells and jax_lm's must agree to rounding (≤ 1e-12 on values,
≤ 1e-10 on gradients) once flax's parameters are converted with `jax_lm.flax_cells`.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jax_lm import cells
from jax_lm.flax_cells import (FlaxCell, NnxCell, from_flax_gru, from_flax_lstm,
                               from_flax_simple)

B, T, I, H = 3, 6, 4, 5
F64 = jnp.float64
VALUE_TOL = 1e-12
GRAD_TOL = 1e-10

# Uniform ±0.5 makes biases and peepholes non-zero, so every term is exercised.
INIT_SCHEME, INIT_SCALE = "uniform", 0.5

WRAPPED = {
    "rnn": cells.RNN(),
    "lstm": cells.LSTM(),
    "lstm_peepholes": cells.LSTM(peepholes=True),
    "cifg": cells.CIFG(),
    "gru": cells.GRU(),
}


def _wrap(cell):
    """The float64 linen wrapper of `cell` used throughout."""
    return FlaxCell(cell, H, init_scheme=INIT_SCHEME, init_scale=INIT_SCALE, param_dtype=F64)


def _inputs(key, shape=(B, T, I)):
    return jax.random.normal(key, shape, F64)


def _unroll_batch_major(cell, params, x, mask=None):
    """`cells.unroll` on a batch-major x [B, T, I]: (carry, hs [B, T, H])."""
    carry0 = cell.initial_carry(x.shape[0], H, F64)
    carry, hs = cells.unroll(cell, params, carry0, x.swapaxes(0, 1), mask)  # (T, B, H)
    return carry, hs.swapaxes(0, 1)


def _assert_trees_close(actual, expected, tol):
    chex.assert_trees_all_equal_structs(actual, expected)
    chex.assert_trees_all_close(actual, expected, rtol=0, atol=tol)


# -- jax_lm cells wrapped for flax ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(WRAPPED))
def test_wrapped_cell_in_flax_rnn_has_jax_lm_params_and_matches_unroll(name, key):
    cell = WRAPPED[name]
    k_init, k_x = jax.random.split(key)
    x = _inputs(k_x)
    rnn = nn.RNN(_wrap(cell), return_carry=True)

    variables = rnn.init(k_init, x)
    params = variables["params"]["cell"]["cell"]
    inits = cells.make_inits(INIT_SCHEME, INIT_SCALE)
    chex.assert_trees_all_equal_shapes_and_dtypes(params, cell.init(k_init, I, H, inits, F64))

    carry, ys = rnn.apply(variables, x)
    ref_carry, ref_ys = _unroll_batch_major(cell, params, x)
    np.testing.assert_allclose(ys, ref_ys, rtol=0, atol=VALUE_TOL)
    _assert_trees_close(carry, ref_carry, VALUE_TOL)  # LSTMState(hidden, cell) for the LSTMs


def test_wrapped_cell_params_follow_the_requested_init_scheme(key):
    x = jnp.zeros((B, T, I), F64)
    uniform = nn.RNN(FlaxCell(cells.GRU(), H, init_scheme="uniform", init_scale=0.05,
                              param_dtype=F64)).init(key, x)
    default = nn.RNN(FlaxCell(cells.GRU(), H, param_dtype=F64)).init(key, x)
    for leaf in jax.tree.leaves(uniform):
        assert leaf.dtype == F64
        assert 0 < np.abs(leaf).max() <= 0.05
    np.testing.assert_array_equal(default["params"]["cell"]["cell"]["b"], 0.0)


def test_wrapped_cell_carry_spans_every_batch_axis(key):
    cell = cells.LSTM()
    flax_cell = _wrap(cell)
    carry = flax_cell.initialize_carry(key, (2, B, I))
    assert isinstance(carry, cells.LSTMState)
    chex.assert_trees_all_equal_shapes_and_dtypes(
        carry, cells.LSTMState(jnp.zeros((2, B, H), F64), jnp.zeros((2, B, H), F64)))

    x = _inputs(key, (2, B, T, I))
    rnn = nn.RNN(flax_cell)
    variables = rnn.init(key, x)
    ys = rnn.apply(variables, x)  # (2, B, T, H)
    flat_ys = rnn.apply(variables, x.reshape(2 * B, T, I))
    np.testing.assert_allclose(ys.reshape(2 * B, T, H), flat_ys, rtol=0, atol=VALUE_TOL)


def test_flax_rnn_seq_lengths_give_the_carry_of_unroll_with_mask(key):
    cell = cells.LSTM(peepholes=True)
    x = _inputs(key)
    lengths = jnp.array([T, 3, 1])
    mask = jnp.arange(T)[:, None] < lengths[None, :]  # (T, B)
    rnn = nn.RNN(_wrap(cell), return_carry=True)
    variables = rnn.init(key, x)

    carry, ys = rnn.apply(variables, x, seq_lengths=lengths)
    ref_carry, ref_ys = _unroll_batch_major(cell, variables["params"]["cell"]["cell"], x, mask)
    _assert_trees_close(carry, ref_carry, VALUE_TOL)
    valid = mask.T  # (B, T): flax leaves the outputs past each length unspecified
    np.testing.assert_allclose(ys[valid], ref_ys[valid], rtol=0, atol=VALUE_TOL)


@pytest.mark.parametrize("name", ["lstm_peepholes", "gru"])
def test_wrapped_cell_in_nnx_rnn_matches_unroll(name, key):
    cell = WRAPPED[name]
    x = _inputs(key)
    nnx_cell = NnxCell(cell, I, H, init_scheme=INIT_SCHEME, init_scale=INIT_SCALE,
                       param_dtype=F64, rngs=nnx.Rngs(0))
    carry, ys = nnx.RNN(nnx_cell, return_carry=True)(x)

    ref_carry, ref_ys = _unroll_batch_major(cell, nnx_cell.params.get_value(), x)
    np.testing.assert_allclose(ys, ref_ys, rtol=0, atol=VALUE_TOL)
    _assert_trees_close(carry, ref_carry, VALUE_TOL)


def test_wrapped_cell_trains_on_a_delayed_copy_task(key):
    """A few Adam steps of nn.RNN(FlaxCell) + Dense learn y_t = x_{t-1} (needs memory)."""

    class Regressor(nn.Module):
        @nn.compact
        def __call__(self, x):  # (B, T, 1) -> (B, T, 1)
            return nn.Dense(1)(nn.RNN(FlaxCell(cells.GRU(), 8))(x))

    k_x, k_init = jax.random.split(key)
    x = jax.random.normal(k_x, (16, 10, 1), jnp.float32)
    y = jnp.pad(x[:, :-1], ((0, 0), (1, 0), (0, 0)))  # (B, T, 1), y_t = x_{t-1}
    model = Regressor()
    params = model.init(k_init, x)
    optimizer = optax.adam(0.05)

    def loss_fn(params):
        return jnp.mean((model.apply(params, x) - y) ** 2)

    @jax.jit
    def train_step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = optimizer.init(params)
    losses = []
    for _ in range(40):
        params, opt_state, loss = train_step(params, opt_state)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses


# -- parity with flax's own cells ----------------------------------------------------------


def _lstm_carry_from_flax(carry):
    c, h = carry
    return cells.LSTMState(hidden=h, cell=c)


# flax cell class, converter, the equivalent jax_lm cell, flax carry -> jax_lm carry
FLAX_CELLS = {
    "LSTMCell": (nn.LSTMCell, from_flax_lstm, cells.LSTM(), _lstm_carry_from_flax),
    "OptimizedLSTMCell": (nn.OptimizedLSTMCell, from_flax_lstm, cells.LSTM(),
                          _lstm_carry_from_flax),
    "GRUCell": (nn.GRUCell, from_flax_gru, cells.GRU(), lambda carry: carry),
    "SimpleCell": (nn.SimpleCell, from_flax_simple, cells.RNN(), lambda carry: carry),
}


def _loss(carry, ys, weights):
    """A scalar touching every output and every carry leaf (order-free over leaves)."""
    return jnp.sum(ys * weights) + sum(jnp.sum(leaf ** 2) for leaf in jax.tree.leaves(carry))


@pytest.fixture(scope="module", params=sorted(FLAX_CELLS))
def parity(request):
    """Both sides' (carry, ys) and gradients w.r.t. (params, x), from the same weights."""
    flax_cls, convert, cell, carry_from_flax = FLAX_CELLS[request.param]
    k_init, k_x, k_w = jax.random.split(jax.random.key(0), 3)
    x = _inputs(k_x)
    weights = jax.random.normal(k_w, (B, T, H), F64)
    # Non-zero biases, so that flax's h-side bias vs jax_lm's x-side bias is tested.
    flax_rnn = nn.RNN(flax_cls(features=H, param_dtype=F64, dtype=F64,
                               bias_init=nn.initializers.normal(0.5)), return_carry=True)
    flax_params = flax_rnn.init(k_init, x)["params"]["cell"]
    params = convert(flax_params)

    def run_flax(flax_params, x):
        carry, ys = flax_rnn.apply({"params": {"cell": flax_params}}, x)
        return carry_from_flax(carry), ys

    def run_jax_lm(params, x):
        return _unroll_batch_major(cell, params, x)

    grad = jax.grad(lambda p, x, run: _loss(*run(p, x), weights), argnums=(0, 1))
    flax_grad_params, flax_grad_x = grad(flax_params, x, run_flax)
    grad_params, grad_x = grad(params, x, run_jax_lm)
    return {
        "flax": run_flax(flax_params, x), "jax_lm": run_jax_lm(params, x),
        "flax_grad_params": convert(flax_grad_params), "grad_params": grad_params,
        "flax_grad_x": flax_grad_x, "grad_x": grad_x,
    }


def test_flax_cell_and_converted_jax_lm_cell_give_same_outputs_and_carry(parity):
    (flax_carry, flax_ys), (carry, ys) = parity["flax"], parity["jax_lm"]
    np.testing.assert_allclose(ys, flax_ys, rtol=0, atol=VALUE_TOL)
    _assert_trees_close(carry, flax_carry, VALUE_TOL)


def test_converted_flax_param_gradient_equals_jax_lm_param_gradient(parity):
    _assert_trees_close(parity["grad_params"], parity["flax_grad_params"], GRAD_TOL)


def test_flax_cell_and_jax_lm_cell_give_same_input_gradient(parity):
    np.testing.assert_allclose(parity["grad_x"], parity["flax_grad_x"], rtol=0, atol=GRAD_TOL)
