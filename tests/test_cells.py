"""Cells: shapes, scan == Python loop, masking, options, gradients, no recompilation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_lm import cells

B, T, I, H = 3, 6, 5, 4

CELL_VARIANTS = {
    "rnn": cells.RNN(),
    "rnn_relu_nobias": cells.RNN(activation="relu", use_bias=False),
    "lstm": cells.LSTM(),
    "lstm_peep_tanh": cells.LSTM(gate_fn="tanh", peepholes=True),
    "lstm_forget_bias": cells.LSTM(forget_bias=1.0),
    "cifg": cells.CIFG(),
    "cifg_peep": cells.CIFG(peepholes=True),
    "gru": cells.GRU(),
}


@pytest.fixture(params=sorted(CELL_VARIANTS), ids=sorted(CELL_VARIANTS))
def cell(request):
    return CELL_VARIANTS[request.param]


def _setup(cell, key, dtype=jnp.float64):
    k_p, k_x = jax.random.split(key)
    params = cell.init(k_p, I, H, cells.make_inits("uniform", 0.5), dtype)
    xs = jax.random.normal(k_x, (T, B, I), dtype)
    return params, cell.initial_carry(B, H, dtype), xs


def test_step_returns_carry_and_output_of_expected_shapes(cell, key):
    params, carry, xs = _setup(cell, key)
    new_carry, h = cell.step(params, carry, xs[0])
    assert h.shape == (B, H)
    assert jax.tree.map(jnp.shape, new_carry) == jax.tree.map(jnp.shape, carry)
    np.testing.assert_array_equal(cell.output(new_carry), h)


def test_unroll_matches_python_loop_of_steps(cell, key):
    params, carry0, xs = _setup(cell, key)
    carry, hs = cells.unroll(cell, params, carry0, xs)
    loop_carry, loop_hs = carry0, []
    for x_t in xs:
        loop_carry, h_t = cell.step(params, loop_carry, x_t)
        loop_hs.append(h_t)
    np.testing.assert_allclose(hs, jnp.stack(loop_hs), rtol=1e-12, atol=1e-12)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12),
                 carry, loop_carry)


@pytest.mark.parametrize("unroll", [2, T])
def test_scan_unroll_factor_does_not_change_results(cell, key, unroll):
    params, carry0, xs = _setup(cell, key)
    _, hs = cells.unroll(cell, params, carry0, xs)
    _, hs_unrolled = cells.unroll(cell, params, carry0, xs, unroll=unroll)
    np.testing.assert_allclose(hs_unrolled, hs, rtol=1e-12, atol=1e-12)


def test_mask_holds_state_on_padding(cell, key):
    params, carry0, xs = _setup(cell, key)
    mask = jnp.ones((T, B), bool).at[3:, 0].set(False)  # sequence 0 ends after 3 steps
    carry, hs = cells.unroll(cell, params, carry0, xs, mask)
    short_carry, short_hs = cells.unroll(cell, params, carry0, xs[:3])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b[0], rtol=1e-12),
                 carry, short_carry)
    np.testing.assert_allclose(hs[3:, 0], jnp.broadcast_to(short_hs[-1, 0], (T - 3, H)))
    # Unmasked sequences are unaffected.
    _, full_hs = cells.unroll(cell, params, carry0, xs)
    np.testing.assert_allclose(hs[:, 1:], full_hs[:, 1:], rtol=1e-12)


def test_return_carries_gives_the_carry_after_every_step(cell, key):
    params, carry0, xs = _setup(cell, key)
    final, carries = cells.unroll(cell, params, carry0, xs, return_carries=True)
    _, hs = cells.unroll(cell, params, carry0, xs)
    np.testing.assert_allclose(cell.output(carries), hs, rtol=1e-12)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[-1], b), carries, final)


def test_gradients_are_finite_and_nonzero(cell, key):
    params, carry0, xs = _setup(cell, key)

    def loss(params):
        _, hs = cells.unroll(cell, params, carry0, xs)
        return jnp.sum(hs**2)

    grads = jax.grad(loss)(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(g)), path
        assert np.any(g != 0), f"no gradient reaches {jax.tree_util.keystr(path)}"


def test_jitted_unroll_does_not_recompile_on_second_call(cell, key):
    params, carry0, xs = _setup(cell, key, jnp.float32)
    traces = []

    @jax.jit
    def run(params, carry, xs):
        traces.append(1)  # Python side effect: runs once per trace
        return cells.unroll(cell, params, carry, xs)

    run(params, carry0, xs)
    run(params, carry0, xs + 1.0)
    assert len(traces) == 1


def test_cells_are_hashable_values_usable_as_static_arguments():
    assert cells.LSTM(peepholes=True) == cells.LSTM(peepholes=True)
    assert hash(cells.CIFG()) == hash(cells.CIFG())
    assert cells.CIFG() != cells.LSTM()


def test_cifg_has_three_gate_blocks_and_no_forget_weights(key):
    params = cells.CIFG(peepholes=True).init(key, I, H)
    assert params["w_x"].shape == (I, 3 * H)
    assert set(params["peep"]) == {"i", "o"}


def test_cifg_forget_gate_is_one_minus_input_gate(key):
    """A CIFG step equals an LSTM step whose forget pre-activation gives f = 1 − i."""
    cifg, lstm = cells.CIFG(), cells.LSTM()
    p = cifg.init(key, I, H, dtype=jnp.float64)
    # Build LSTM weights with z_f = −z_i, so σ(z_f) = 1 − σ(z_i).
    split = lambda w: jnp.split(w, 3, axis=-1)  # noqa: E731  (i, g, o)
    lstm_p = {k: jnp.concatenate([split(p[k])[0], -split(p[k])[0], *split(p[k])[1:]], -1)
              for k in ("w_x", "w_h", "b")}
    carry = cifg.initial_carry(B, H, jnp.float64)
    carry = carry._replace(hidden=carry.hidden + 0.3, cell=carry.cell - 0.2)
    x = jnp.linspace(-1, 1, B * I).reshape(B, I)
    np.testing.assert_allclose(cifg.step(p, carry, x)[1], lstm.step(lstm_p, carry, x)[1],
                               rtol=1e-12)


def test_rnn_relu_option_matches_numpy(key):
    cell = cells.RNN(activation="relu", use_bias=False)
    p = cell.init(key, I, H, dtype=jnp.float64)
    h0 = jnp.full((B, H), 0.1)
    x = jnp.linspace(-1, 1, B * I).reshape(B, I)
    expected = np.maximum(0, np.asarray(x) @ p["w_x"] + np.asarray(h0) @ p["w_h"])
    np.testing.assert_allclose(cell.step(p, h0, x)[1], expected, rtol=1e-12)
    assert "b" not in p


def test_make_cell_builds_registered_cells_and_rejects_unknown_names_and_options():
    assert cells.make_cell("cifg", peepholes=True) == cells.CIFG(peepholes=True)
    assert set(cells.CELLS) == {"rnn", "lstm", "cifg", "gru"}
    with pytest.raises(ValueError, match="unknown cell 'transformer'"):
        cells.make_cell("transformer")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['peepholes'\] for cell 'gru'"):
        cells.make_cell("gru", peepholes=True)
    with pytest.raises(ValueError, match="unknown activation"):
        cells.RNN(activation="swish")
    with pytest.raises(ValueError, match="no forget gate"):
        cells.CIFG(forget_bias=1.0)


@pytest.mark.parametrize("scheme,bound", [("uniform", 0.1), ("fan_in", 1 / np.sqrt(I))])
def test_uniform_initializers_respect_their_bounds(key, scheme, bound):
    params = cells.LSTM().init(key, I, H, cells.make_inits(scheme, 0.1))
    w = np.asarray(params["w_x"])
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.8 * bound  # spread over the interval, not collapsed
    assert w.min() < 0 < w.max()
