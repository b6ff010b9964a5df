"""jax_lm reproduces seed 001, the vanilla RNN tutorial, in float64.

001's model is a one-layer jax_lm model:

    LMConfig(vocab_size=C, cell=RNN(use_bias=False), num_layers=1, hidden_size=H,
             one_hot=True, output_bias=False, init="fan_in", param_dtype="float64")

with w_x = Uᵀ, w_h = Wᵀ, out.w = Vᵀ. Its `bptt(x, y)` with `bptt_truncate = k` is
`jax.grad` of the summed `bptt.window_token_nll(..., k=k)` (and of the summed `token_nll`
when k ≥ T − 1); its `train_with_sgd` is a jitted `make_optimizer("sgd", lr)` step per
sentence with `lr_rules.HALVE_WHEN_LOSS_RISES` applied to the loss evaluated each epoch.
The oracle is `tests/oracles/tutorial_rnn.py`.
"""

import functools

import jax
import numpy as np
import optax
import pytest

from jax_lm import bptt, lr_rules, optim
from jax_lm.cells import RNN
from jax_lm.model import LMConfig, init_carry, init_lm, token_nll
from tests.oracles import tutorial_rnn as oracle

VOCAB, HIDDEN, STEPS = 8, 6, 10  # T = 10 > k + 2 for every k tested, so truncation bites


def tutorial_config(vocab_size: int, hidden_size: int) -> LMConfig:
    """001's model as a jax_lm configuration."""
    return LMConfig(vocab_size=vocab_size, cell=RNN(use_bias=False), num_layers=1,
                    hidden_size=hidden_size, one_hot=True, output_bias=False, init="fan_in",
                    param_dtype="float64")


def assert_close(actual, desired, rtol):
    """Elementwise |a − d| ≤ rtol · max|d|: relative to the array's scale, not each entry's."""
    desired = np.asarray(desired)
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * np.abs(desired).max())


def assert_same_params(lm_grads, oracle_grads, rtol):
    for name, value in oracle.from_jax_lm(lm_grads).items():
        assert_close(value, oracle_grads[name], rtol)


def summed_grad(config: LMConfig, k: int | None):
    """jit(grad) of the summed NLL of a [B, T] batch; full BPTT if k is None, else window k."""

    def total(params, tokens, targets):
        carry = init_carry(config, tokens.shape[0])
        if k is None:
            nll, _ = token_nll(params, tokens, targets, carry, config=config)
        else:
            nll = bptt.window_token_nll(params, tokens, targets, carry, config=config, k=k)
        return nll.sum()

    return jax.jit(jax.grad(total))


@pytest.fixture(scope="module")
def tiny():
    """A C=8, H=6 model and three sentences of T=10 words (x and y = x shifted by one)."""
    config = tutorial_config(VOCAB, HIDDEN)
    params = init_lm(jax.random.key(1), config)
    rng = np.random.default_rng(1)
    stream = rng.integers(0, VOCAB, size=(3, STEPS + 1))
    return config, params, stream[:, :-1], stream[:, 1:]


def test_fan_in_init_is_uniform_within_inverse_sqrt_n(tiny):
    _, params, _, _ = tiny
    bounds = {"U": 1 / np.sqrt(VOCAB), "V": 1 / np.sqrt(HIDDEN), "W": 1 / np.sqrt(HIDDEN)}
    for name, value in oracle.from_jax_lm(params).items():
        assert value.dtype == np.float64
        assert np.abs(value).max() <= bounds[name]
        assert np.abs(value).max() > 0.7 * bounds[name]  # spread over the interval, not tiny


def test_token_nll_matches_tutorial_forward(tiny):
    config, params, xs, ys = tiny
    nll, _ = token_nll(params, xs, ys, init_carry(config, len(xs)), config=config)
    numpy_params = oracle.from_jax_lm(params)
    for b, (x, y) in enumerate(zip(xs, ys)):
        o, _ = oracle.forward(numpy_params, x)
        assert_close(nll[b], -np.log(o[np.arange(STEPS), y]), 1e-12)


@pytest.mark.parametrize("bptt_truncate", [STEPS - 1, 1000])
def test_untruncated_bptt_equals_grad_of_summed_token_nll(tiny, bptt_truncate):
    config, params, xs, ys = tiny
    grads = summed_grad(config, k=None)(params, xs, ys)
    numpy_params = oracle.from_jax_lm(params)
    expected = [oracle.bptt(numpy_params, x, y, bptt_truncate) for x, y in zip(xs, ys)]
    summed = {name: sum(g[name] for g in expected) for name in numpy_params}
    assert_same_params(grads, summed, 1e-10)


@pytest.mark.parametrize("k", [0, 1, 4])
def test_truncated_bptt_equals_grad_of_window_token_nll(tiny, k):
    config, params, xs, ys = tiny
    grads = summed_grad(config, k=k)(params, xs, ys)
    numpy_params = oracle.from_jax_lm(params)
    truncated = [oracle.bptt(numpy_params, x, y, k) for x, y in zip(xs, ys)]
    truncated = {name: sum(g[name] for g in truncated) for name in numpy_params}
    assert_same_params(grads, truncated, 1e-10)

    # The comparison has teeth: truncation changes the recurrent and input gradients.
    full = [oracle.bptt(numpy_params, x, y, 1000) for x, y in zip(xs, ys)]
    for name in ("U", "W"):
        difference = np.abs(sum(g[name] for g in full) - truncated[name]).max()
        assert difference > 1e-4 * np.abs(truncated[name]).max()


@pytest.fixture(scope="module")
def grad_check_case():
    """The document's check: C=100, H=10, sentence [0, 1, 2, 3] -> [1, 2, 3, 4]."""
    config = tutorial_config(100, 10)
    params = init_lm(jax.random.key(10), config)
    x, y = np.array([[0, 1, 2, 3]]), np.array([[1, 2, 3, 4]])
    numpy_params = oracle.from_jax_lm(params)

    def loss_fn(p):
        return oracle.sentence_loss(p, x[0], y[0])

    return config, params, x, y, numpy_params, loss_fn


def test_gradient_check_passes_on_jax_lm_gradient(grad_check_case):
    config, params, x, y, numpy_params, loss_fn = grad_check_case
    grads = oracle.from_jax_lm(summed_grad(config, k=None)(params, x, y))
    assert oracle.gradient_check(loss_fn, numpy_params, grads, h=1e-3, threshold=1e-2) == []


def test_gradient_check_rejects_a_truncated_gradient(grad_check_case):
    config, params, x, y, numpy_params, loss_fn = grad_check_case
    broken = oracle.from_jax_lm(summed_grad(config, k=0)(params, x, y))
    failures = oracle.gradient_check(loss_fn, numpy_params, broken, h=1e-3, threshold=1e-2)
    assert {name for name, _, _ in failures} == {"U", "W"}  # V's gradient is not truncated


def test_initial_loss_is_log_vocabulary_size():
    """001 reports 8.987440 at init for C=8000, H=100 against ln 8000 = 8.987197."""
    config = tutorial_config(8000, 100)
    params = init_lm(jax.random.key(0), config)
    tokens = jax.random.randint(jax.random.key(1), (16, 12), 0, 8000)
    nll, _ = jax.jit(functools.partial(token_nll, config=config))(
        params, tokens[:, :-1], tokens[:, 1:], init_carry(config, 16))
    np.testing.assert_allclose(float(nll.mean()), np.log(8000), atol=2e-3)


def test_train_with_sgd_matches_jitted_sgd_with_halving_rule():
    """Five epochs of per-sentence SGD (k = 4) with the rate halved when the loss rises."""
    config = tutorial_config(VOCAB, HIDDEN)
    params = init_lm(jax.random.key(0), config)
    rng = np.random.default_rng(0)
    stream = rng.integers(0, VOCAB, size=(4, 8))
    xs, ys = stream[:, :-1], stream[:, 1:]
    lr, nepoch, k = 0.5, 5, 4  # a rate large enough that the loss rises within five epochs

    expected_params, expected_losses, expected_rates = oracle.train_with_sgd(
        oracle.from_jax_lm(params), list(xs), list(ys), lr, nepoch, bptt_truncate=k)

    opt = optim.make_optimizer("sgd", lr)
    grad_fn = summed_grad(config, k=k)

    @jax.jit
    def sgd_step(params, opt_state, x, y):
        updates, opt_state = opt.update(grad_fn(params, x, y), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    @jax.jit
    def mean_loss(params):
        nll, _ = token_nll(params, xs, ys, init_carry(config, len(xs)), config=config)
        return nll.mean()

    opt_state, plateau = opt.init(params), lr_rules.HALVE_WHEN_LOSS_RISES.init(lr)
    losses, rates = [], []
    for _ in range(nepoch):
        losses.append(float(mean_loss(params)))
        plateau = lr_rules.HALVE_WHEN_LOSS_RISES.update(plateau, losses[-1])
        opt_state = optim.set_learning_rate(opt_state, plateau.learning_rate)
        rates.append(optim.learning_rate(opt_state))
        for x, y in zip(xs, ys):
            params, opt_state = sgd_step(params, opt_state, x[None], y[None])

    assert rates == expected_rates
    assert min(rates) < lr  # a halving happened inside the window
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-9)
    assert_same_params(params, expected_params, 1e-9)
