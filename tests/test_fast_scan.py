"""Speed options change nothing but speed: fast_scan's backward pass, remat, chunked loss, bf16.

Every gradient is compared in float64 with `jax.grad` of the plain scan
(`LMConfig(fast_backward=False)`), which the parity tests tie to the seed documents.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_lm import bptt, cells, fast_scan, model
from tests.test_cells import CELL_VARIANTS

B, T, I, H, V = 3, 7, 5, 4, 11

def _assert_trees_close(actual, expected, rtol=1e-12, atol=1e-12):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=rtol, atol=atol),
                 actual, expected)


@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "mask"])
@pytest.mark.parametrize("name", sorted(CELL_VARIANTS))
def test_fast_unroll_has_the_values_and_gradients_of_the_plain_unroll(name, masked, key):
    cell = CELL_VARIANTS[name]
    k_p, k_x, k_m, k_w = jax.random.split(key, 4)
    params = cell.init(k_p, I, H, cells.make_inits("uniform", 0.5), jnp.float64)
    xs = jax.random.normal(k_x, (T, B, I), jnp.float64)
    carry0 = jax.tree.map(lambda c: c + 0.3, cell.initial_carry(B, H, jnp.float64))
    mask = jax.random.bernoulli(k_m, 0.7, (T, B)) if masked else None
    weights = jax.random.normal(k_w, (T, B, H), jnp.float64)

    def loss(unroll, params, carry0, xs):
        # Cotangents reach both outputs: every h_t and the final carry.
        carry, hs = unroll(cell, params, carry0, xs, mask)
        return jnp.sum(hs * weights) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(carry))

    plain_out = cells.unroll(cell, params, carry0, xs, mask)
    fast_out = fast_scan.unroll(cell, params, carry0, xs, mask)
    _assert_trees_close(fast_out, plain_out)
    grad = jax.jit(jax.grad(loss, argnums=(1, 2, 3)), static_argnums=0)
    _assert_trees_close(grad(fast_scan.unroll, params, carry0, xs),
                        grad(cells.unroll, params, carry0, xs))


@pytest.mark.parametrize("name", sorted(CELL_VARIANTS))
def test_sums_inputs_is_set_exactly_for_cells_whose_update_reads_only_xw_plus_hw(name, key):
    cell = CELL_VARIANTS[name]
    k_p, k_x, k_h = jax.random.split(key, 3)
    params = cell.init(k_p, I, H, cells.make_inits("uniform", 0.5), jnp.float64)
    carry = jax.tree.map(lambda c: c + 0.3, cell.initial_carry(B, H, jnp.float64))
    xw, hw = (jax.random.normal(k, (B, len(cell.GATES) * H), jnp.float64) for k in (k_x, k_h))
    summed = cell.update(params, carry, xw + hw, jnp.zeros_like(hw))
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(cell.update(
        params, carry, xw, hw)), jax.tree.leaves(summed)))
    assert same == cell.SUMS_INPUTS


def test_dense_has_the_value_and_gradients_of_matmul(key):
    k_x, k_w = jax.random.split(key)
    x = jax.random.normal(k_x, (T, B, I), jnp.float64)   # leading axes are summed over in dW
    w = jax.random.normal(k_w, (I, H), jnp.float64)
    loss = lambda matmul, x, w: jnp.sum(jnp.sin(matmul(x, w)))  # noqa: E731
    np.testing.assert_allclose(fast_scan.dense(x, w), x @ w, rtol=1e-14)
    _assert_trees_close(jax.grad(loss, argnums=(1, 2))(fast_scan.dense, x, w),
                        jax.grad(loss, argnums=(1, 2))(jnp.matmul, x, w))


def test_dense_bias_has_the_value_and_gradients_of_matmul_plus_bias(key):
    k_x, k_w, k_b = jax.random.split(key, 3)
    x = jax.random.normal(k_x, (T, B, I), jnp.float64)
    w = jax.random.normal(k_w, (I, H), jnp.float64)
    b = jax.random.normal(k_b, (H,), jnp.float64)
    loss = lambda affine, x, w, b: jnp.sum(jnp.sin(affine(x, w, b)))  # noqa: E731
    reference = lambda x, w, b: x @ w + b[None, None]  # noqa: E731
    np.testing.assert_allclose(fast_scan.dense_bias(x, w, b), reference(x, w, b), rtol=1e-14)
    _assert_trees_close(jax.grad(loss, argnums=(1, 2, 3))(fast_scan.dense_bias, x, w, b),
                        jax.grad(loss, argnums=(1, 2, 3))(reference, x, w, b))


SPEED_OPTIONS = {
    "fast_backward": dict(fast_backward=True),
    "remat_segment": dict(remat_segment=3),                      # 7 steps: padded to 9
    "logits_chunk": dict(logits_chunk=4),                        # 14 positions: padded to 16
    "everything": dict(fast_backward=True, remat_segment=3, logits_chunk=5),
}


def _lm(cell_name="lstm", **overrides):
    base = dict(vocab_size=V, cell=cells.make_cell(cell_name), num_layers=2, hidden_size=H,
                init_scale=0.3, param_dtype="float64", fast_backward=False)
    return model.LMConfig(**{**base, **overrides})


@functools.partial(jax.jit, static_argnums=0)
def _lm_loss_and_grad(config, params, tokens, targets, mask, dropout_key):
    def loss(params):
        nll, carry = model.token_nll(params, tokens, targets, model.init_carry(config, 2),
                                     config=config, mask=mask, dropout_key=dropout_key)
        return nll.sum() + sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(carry))

    return jax.value_and_grad(loss)(params)


@pytest.mark.parametrize("option", sorted(SPEED_OPTIONS))
@pytest.mark.parametrize("cell_name", sorted(cells.CELLS))
def test_speed_options_give_the_reference_loss_and_gradient(cell_name, option, key):
    k_p, k_t, k_y, k_d = jax.random.split(key, 4)
    reference = _lm(cell_name, dropout=0.3)
    params = model.init_lm(k_p, reference)
    tokens = jax.random.randint(k_t, (2, T), 0, V)
    targets = jax.random.randint(k_y, (2, T), 0, V)
    mask = jnp.array([[1] * T, [1] * 4 + [0] * (T - 4)], jnp.float64)  # a padded row
    expected = _lm_loss_and_grad(reference, params, tokens, targets, mask, k_d)
    fast = dataclasses.replace(reference, **SPEED_OPTIONS[option])
    _assert_trees_close(_lm_loss_and_grad(fast, params, tokens, targets, mask, k_d), expected,
                        rtol=1e-11)


@pytest.mark.parametrize("overrides", [dict(cell=cells.RNN(use_bias=False), num_layers=1,
                                            one_hot=True, output_bias=False),
                                       dict(tie_weights=True)], ids=["one_hot_001", "tied"])
def test_one_hot_and_tied_models_take_the_fast_path_exactly(overrides, key):
    k_p, k_t = jax.random.split(key)
    reference = _lm(**overrides)
    params = model.init_lm(k_p, reference)
    tokens = jax.random.randint(k_t, (2, T), 0, V)
    fast = dataclasses.replace(reference, fast_backward=True)
    _assert_trees_close(_lm_loss_and_grad(fast, params, tokens, tokens, None, None),
                        _lm_loss_and_grad(reference, params, tokens, tokens, None, None))


def test_per_output_window_gradient_is_unchanged_by_fast_backward(key):
    k_p, k_t = jax.random.split(key)
    reference = _lm("rnn", num_layers=1)
    params = model.init_lm(k_p, reference)
    tokens = jax.random.randint(k_t, (2, T), 0, V)

    @functools.partial(jax.jit, static_argnums=0)
    def grad(config):
        return jax.grad(lambda p: bptt.window_token_nll(
            p, tokens, tokens, model.init_carry(config, 2), config=config, k=2).sum())(params)

    _assert_trees_close(grad(dataclasses.replace(reference, fast_backward=True)),
                        grad(reference))


def test_bfloat16_compute_keeps_float32_params_carries_and_loss_close_to_float32(key):
    k_p, k_t = jax.random.split(key)
    f32 = model.LMConfig(vocab_size=V, hidden_size=8, num_layers=2)
    bf16 = dataclasses.replace(f32, compute_dtype="bfloat16")
    params = model.init_lm(k_p, f32)
    tokens = jax.random.randint(k_t, (2, T), 0, V)

    @functools.partial(jax.jit, static_argnums=0)
    def loss_and_grad(config):
        def loss(params):
            nll, carry = model.token_nll(params, tokens, tokens, model.init_carry(config, 2),
                                         config=config)
            return nll.mean(), (nll, carry)

        return jax.value_and_grad(loss, has_aux=True)(params)

    (loss16, (nll16, carry16)), grads16 = loss_and_grad(bf16)
    (loss32, _), grads32 = loss_and_grad(f32)
    assert nll16.dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves((carry16, grads16))} == {jnp.dtype(jnp.float32)}
    np.testing.assert_allclose(loss16, loss32, rtol=1e-2)
    for g16, g32 in zip(jax.tree.leaves(grads16), jax.tree.leaves(grads32)):
        assert jnp.linalg.norm(g16 - g32) <= 0.05 * jnp.linalg.norm(g32) + 1e-6


@pytest.mark.parametrize("bad", [dict(remat_segment=-1), dict(logits_chunk=-2),
                                 dict(compute_dtype="float7")])
def test_invalid_speed_options_are_rejected(bad):
    with pytest.raises((ValueError, TypeError)):
        model.LMConfig(vocab_size=V, **bad)
