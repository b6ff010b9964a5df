"""The language model: layout, one-hot input, carried state, masks, dropout, tying, regimes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_lm import bptt, cells, model

V, B, T, H = 13, 2, 7, 6


def _config(cell_name="lstm", **overrides):
    base = dict(vocab_size=V, cell=cells.make_cell(cell_name), num_layers=2, hidden_size=H,
                init_scale=0.3, param_dtype="float64")
    return model.LMConfig(**{**base, **overrides})


def _tokens(key, shape=(B, T)):
    k1, k2 = jax.random.split(key)
    return jax.random.randint(k1, shape, 0, V), jax.random.randint(k2, shape, 0, V)


def _allclose_trees(a, b, **tol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tol), a, b)


@pytest.mark.parametrize("cell_name", sorted(cells.CELLS))
def test_apply_lm_maps_tokens_to_logits_and_carries_state(cell_name, key):
    config = _config(cell_name)
    params = model.init_lm(key, config)
    tokens, _ = _tokens(key)
    carry0 = model.init_carry(config, B)
    logits, carry = model.apply_lm(params, tokens, carry0, config=config)
    assert logits.shape == (B, T, V)
    assert len(carry) == config.num_layers
    assert jax.tree.map(jnp.shape, carry) == jax.tree.map(jnp.shape, carry0)


@pytest.mark.parametrize("cell_name", sorted(cells.CELLS))
def test_two_windows_with_carried_state_equal_one_long_window(cell_name, key):
    config = _config(cell_name)
    params = model.init_lm(key, config)
    tokens, _ = _tokens(key, (B, 2 * T))
    apply = functools.partial(model.apply_lm, params, config=config)
    long_logits, long_carry = apply(tokens, model.init_carry(config, B))
    first, carry = apply(tokens[:, :T], model.init_carry(config, B))
    second, carry = apply(tokens[:, T:], carry)
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), long_logits, rtol=1e-12)
    _allclose_trees(carry, long_carry, rtol=1e-12)


def test_one_hot_input_equals_multiplying_one_hot_vectors_by_the_input_weights(key):
    config = _config("rnn", one_hot=True, num_layers=1)
    params = model.init_lm(key, config)
    assert "embed" not in params and params["layers"][0]["w_x"].shape == (V, H)
    tokens, _ = _tokens(key)
    logits, _ = model.apply_lm(params, tokens, model.init_carry(config, B), config=config)
    layer = params["layers"][0]
    xs = jax.nn.one_hot(tokens.T, V, dtype=jnp.float64)  # (T, B, V)
    _, hs = cells.unroll(config.cell, layer, config.cell.initial_carry(B, H, jnp.float64), xs)
    expected = hs.swapaxes(0, 1) @ params["out"]["w"] + params["out"]["b"][None, None]
    np.testing.assert_allclose(logits, expected, rtol=1e-12)


def test_mask_drops_loss_and_holds_state_on_padding(key):
    config = _config("lstm")
    params = model.init_lm(key, config)
    tokens, targets = _tokens(key)
    mask = jnp.ones((B, T)).at[0, 4:].set(0)
    carry0 = model.init_carry(config, B)
    nll, carry = model.token_nll(params, tokens, targets, carry0, config=config, mask=mask)
    assert np.all(nll[0, 4:] == 0) and np.all(nll[0, :4] > 0)
    short_nll, short_carry = model.token_nll(params, tokens[:1, :4], targets[:1, :4],
                                             model.init_carry(config, 1), config=config)
    np.testing.assert_allclose(nll[0, :4], short_nll[0], rtol=1e-12)
    _allclose_trees(jax.tree.map(lambda x: x[:1], carry), short_carry, rtol=1e-12)


def test_dropout_is_off_without_key_and_reproducible_with_one(key):
    config = _config("lstm", dropout=0.5)
    params = model.init_lm(key, config)
    tokens, _ = _tokens(key)
    carry0 = model.init_carry(config, B)
    apply = functools.partial(model.apply_lm, params, tokens, carry0, config=config)
    plain, _ = apply()
    no_dropout, _ = model.apply_lm(params, tokens, carry0, config=_config("lstm"))
    np.testing.assert_array_equal(plain, no_dropout)
    k1, k2 = jax.random.split(key)
    a, _ = apply(dropout_key=k1)
    np.testing.assert_array_equal(a, apply(dropout_key=k1)[0])
    assert not np.allclose(a, plain) and not np.allclose(a, apply(dropout_key=k2)[0])


def test_tied_weights_project_with_the_transposed_embedding(key):
    config = _config("gru", tie_weights=True)
    params = model.init_lm(key, config)
    assert "w" not in params["out"]
    h = jnp.ones((2, H))
    np.testing.assert_allclose(model.output_logits(params, h, config=config),
                               h @ params["embed"].T + params["out"]["b"][None], rtol=1e-12)
    grads = jax.grad(lambda p: model.output_logits(p, h, config=config).sum())(params)
    assert np.any(grads["embed"] != 0)


@pytest.mark.parametrize("bad,message", [
    (dict(tie_weights=True, one_hot=True), "needs an embedding"),
    (dict(tie_weights=True, embed_size=3), "embedding as wide as the last layer"),
    (dict(dropout=1.0), "dropout must be in"),
    (dict(num_layers=0), "num_layers"),
    (dict(init="xavier"), "unknown init scheme"),
])
def test_inconsistent_configs_are_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        _config(**bad)


def test_uniform_init_covers_every_parameter_including_biases(key):
    """Chainer's RNNForLM (002): all parameters from U(−0.1, 0.1)."""
    config = _config("lstm", init="uniform", init_scale=0.1)
    for path, leaf in jax.tree_util.tree_leaves_with_path(model.init_lm(key, config)):
        assert np.abs(leaf).max() <= 0.1 and np.abs(leaf).max() > 0.05, path


def test_layer_carries_are_the_states_after_every_step(key):
    config = _config("lstm")
    params = model.init_lm(key, config)
    tokens, _ = _tokens(key)
    carry0 = model.init_carry(config, B)
    history = model.layer_carries(params, tokens, carry0, config=config)
    _, final = model.apply_lm(params, tokens, carry0, config=config)
    _allclose_trees(jax.tree.map(lambda x: x[-1], history), final, rtol=1e-12)
    _, after3 = model.apply_lm(params, tokens[:, :3], carry0, config=config)
    _allclose_trees(jax.tree.map(lambda x: x[2], history), after3, rtol=1e-12)


class TestPerOutputWindow:
    """`bptt.window_token_nll` on a two-layer LSTM (001's RNN is covered by its parity test)."""

    def _losses(self, key, k, mask=None):
        config = _config("lstm")
        params = model.init_lm(key, config)
        tokens, targets = _tokens(key)
        carry0 = model.init_carry(config, B)
        full = lambda p: model.token_nll(p, tokens, targets, carry0, config=config,  # noqa: E731
                                         mask=mask)[0]
        window = lambda p: bptt.window_token_nll(p, tokens, targets, carry0,  # noqa: E731
                                                 config=config, k=k, mask=mask)
        return params, full, window

    def test_value_equals_the_plain_loss(self, key):
        params, full, window = self._losses(key, k=2)
        np.testing.assert_allclose(window(params), full(params), rtol=1e-12)

    def test_window_covering_the_sequence_gives_the_full_gradient(self, key):
        params, full, window = self._losses(key, k=T - 1)
        _allclose_trees(jax.grad(lambda p: window(p).sum())(params),
                        jax.grad(lambda p: full(p).sum())(params), rtol=1e-10, atol=1e-13)

    def test_short_window_truncates_the_gradient(self, key):
        params, full, window = self._losses(key, k=1)
        g_win = jax.grad(lambda p: window(p).sum())(params)
        g_full = jax.grad(lambda p: full(p).sum())(params)
        assert not np.allclose(g_win["layers"][0]["w_h"], g_full["layers"][0]["w_h"])
        # The output layer sees no recurrence: its gradient is the same in every regime.
        np.testing.assert_allclose(g_win["out"]["w"], g_full["out"]["w"], rtol=1e-10)

    def test_loss_at_step_t_reaches_back_exactly_k_plus_one_inputs(self, key):
        """∂nll_t/∂embed[token_s] ≠ 0 exactly for s in t−k … t (inputs are distinct ids)."""
        config = _config("lstm", num_layers=1)
        params = model.init_lm(key, config)
        tokens = jnp.arange(T)[None]  # distinct ids: the embedding row identifies the step
        targets = jnp.zeros((1, T), int)
        k, t = 2, 5
        g = jax.grad(lambda p: bptt.window_token_nll(
            p, tokens, targets, model.init_carry(config, 1), config=config, k=k)[0, t])(params)
        reached = np.flatnonzero(np.abs(g["embed"]).sum(1))
        np.testing.assert_array_equal(reached, np.arange(t - k, t + 1))

    def test_masked_targets_contribute_nothing(self, key):
        mask = jnp.ones((B, T)).at[1, 3:].set(0)
        params, full, window = self._losses(key, k=2, mask=mask)
        np.testing.assert_allclose(window(params), full(params), rtol=1e-12)
        assert np.all(window(params)[1, 3:] == 0)

    def test_dropout_is_rejected(self, key):
        config = _config("lstm", dropout=0.5)
        tokens, targets = _tokens(key)
        with pytest.raises(ValueError, match="does not support dropout"):
            bptt.window_token_nll(model.init_lm(key, config), tokens, targets,
                                  model.init_carry(config, B), config=config, k=2)


@pytest.mark.parametrize("cell_name", sorted(cells.CELLS))
def test_jitted_sgd_step_compiles_once_and_lowers_the_loss(cell_name, key):
    """A jitted value-and-grad + optax step: one trace for many calls, loss goes down."""
    from jax_lm import optim

    config = _config(cell_name, param_dtype="float32")
    params = model.init_lm(key, config)
    opt = optim.make_optimizer("adam", 0.05, clip_norm=5.0)
    tokens = jnp.tile(jnp.arange(T) % 4, (B, 1))  # a periodic toy sequence
    targets = jnp.roll(tokens, -1, axis=1)
    traces = []

    @jax.jit
    def step(params, opt_state, tokens, targets):
        traces.append(1)
        loss = lambda p: model.token_nll(p, tokens, targets, model.init_carry(config, B),  # noqa: E731
                                         config=config)[0].mean()
        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return jax.tree.map(jnp.add, params, updates), opt_state, value

    opt_state = opt.init(params)
    losses = []
    for _ in range(60):
        params, opt_state, value = step(params, opt_state, tokens, targets)
        losses.append(float(value))
    opt_state = optim.set_learning_rate(opt_state, 0.01)  # a host-side lr change: no retrace
    step(params, opt_state, tokens, targets)
    assert len(traces) == 1
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0]
