"""jax_lm's optimizers and learning-rate rules equal the seed documents' update rules.

`optim.make_optimizer` wraps optax; these tests pin down that, in float64, its SGD (001),
Adagrad and Adam (003) follow the documents' equations step for step (oracle:
`tests/oracles/optimizers.py`), and that `lr_rules` reproduces the rate schedules of 000,
001, PyTorch's word_language_model and Zaremba et al. 2014.

Adagrad: optax's defaults are not min-char-rnn's rule. `optax.adagrad` starts its
accumulator at `initial_accumulator_value=0.1` and uses `eps=1e-7` (inside the root, as
rsqrt(G + eps)); the document-style rule G₀ = 0, g / √(G + 1e-8) needs **both**
`initial_accumulator_value=0.0` and `eps=1e-8`:

    make_optimizer("adagrad", lr, initial_accumulator_value=0.0, eps=1e-8)

Adam: optax's defaults (b1=0.9, b2=0.999, eps=1e-8 outside the root, eps_root=0) are
Kingma & Ba's Algorithm 1 with bias correction as they stand.
"""

import jax
import numpy as np
import optax
import pytest

from jax_lm import lr_rules, optim
from jax_lm.model import LMConfig, init_carry, init_lm, token_nll
from tests.oracles import optimizers as oracle

STEPS = 5
ADAGRAD_AS_DOCUMENT = {"initial_accumulator_value": 0.0, "eps": 1e-8}


@pytest.fixture(scope="module")
def lm():
    """A small float64 LSTM LM (V=6, H=4) and jit(grad) of its summed NLL on a fixed batch."""
    config = LMConfig(vocab_size=6, num_layers=1, hidden_size=4, param_dtype="float64")
    params = init_lm(jax.random.key(5), config)
    stream = np.random.default_rng(5).integers(0, 6, size=(2, 8))

    def total(params):
        nll, _ = token_nll(params, stream[:, :-1], stream[:, 1:], init_carry(config, 2),
                           config=config)
        return nll.sum()

    return params, jax.jit(jax.grad(total))


def jax_lm_trajectory(opt, params, grad_fn, steps=STEPS):
    """Params after each of `steps` jitted optimizer steps on the LM's own gradients."""

    @jax.jit
    def step(params, opt_state):
        updates, opt_state = opt.update(grad_fn(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state, trajectory = opt.init(params), []
    for _ in range(steps):
        params, opt_state = step(params, opt_state)
        trajectory.append(params)
    return trajectory


def oracle_trajectory(name, params, grad_fn, lr, steps=STEPS, **options):
    """The same run with the NumPy rules; gradients from the same function, at its own params."""
    leaves, treedef = jax.tree.flatten(jax.tree.map(np.asarray, params))
    memory = m = v = [np.zeros_like(p) for p in leaves]
    trajectory = []
    for t in range(1, steps + 1):
        grads = [np.asarray(g) for g in jax.tree.leaves(grad_fn(treedef.unflatten(leaves)))]
        if name == "sgd":
            leaves = [oracle.sgd_update(p, g, lr) for p, g in zip(leaves, grads)]
        elif name == "adagrad":
            out = [oracle.adagrad_update(p, g, G, lr, **options)
                   for p, g, G in zip(leaves, grads, memory)]
            leaves, memory = [list(x) for x in zip(*out)]
        elif name == "adam":
            out = [oracle.adam_update(p, g, m_, v_, t, lr, **options)
                   for p, g, m_, v_ in zip(leaves, grads, m, v)]
            leaves, m, v = [list(x) for x in zip(*out)]
        trajectory.append(treedef.unflatten(leaves))
    return trajectory


def max_relative_difference(actual, desired):
    """max over leaves of max|a − d| / max|d|."""
    diffs = jax.tree.map(lambda a, d: np.abs(np.asarray(a) - d).max() / np.abs(d).max(),
                         actual, desired)
    return max(jax.tree.leaves(diffs))


@pytest.mark.parametrize("name, lr, optax_options, oracle_options", [
    ("sgd", 0.5, {}, {}),
    ("adagrad", 0.3, ADAGRAD_AS_DOCUMENT, {"eps": 1e-8}),
    ("adam", 0.05, {}, {}),
    ("adam", 0.05, {"b1": 0.5, "b2": 0.9, "eps": 1e-6}, {"b1": 0.5, "b2": 0.9, "eps": 1e-6}),
], ids=["sgd", "adagrad_document_options", "adam_defaults", "adam_custom"])
def test_make_optimizer_follows_the_documents_update_rule(lm, name, lr, optax_options,
                                                         oracle_options):
    params, grad_fn = lm
    actual = jax_lm_trajectory(optim.make_optimizer(name, lr, **optax_options), params, grad_fn)
    expected = oracle_trajectory(name, params, grad_fn, lr, **oracle_options)
    for step, (a, e) in enumerate(zip(actual, expected), start=1):
        assert max_relative_difference(a, e) <= 1e-10, f"step {step}"
    assert max_relative_difference(actual[-1], jax.tree.map(np.asarray, params)) > 1e-3  # moved


@pytest.mark.parametrize("options", [
    {},
    {"initial_accumulator_value": 0.0},
    {"eps": 1e-8},
], ids=["optax_defaults", "zero_accumulator_only", "document_eps_only"])
def test_adagrad_matches_document_only_with_both_options(lm, options):
    params, grad_fn = lm
    actual = jax_lm_trajectory(optim.make_optimizer("adagrad", 0.3, **options), params, grad_fn)
    expected = oracle_trajectory("adagrad", params, grad_fn, 0.3)
    assert max_relative_difference(actual[-1], expected[-1]) > 1e-6


@pytest.mark.parametrize("max_norm", [0.5, 100.0], ids=["clipped", "unclipped"])
def test_clip_norm_rescales_by_the_global_norm(lm, max_norm):
    params, grad_fn = lm
    grads = grad_fn(params)
    leaves = [np.asarray(g) for g in jax.tree.leaves(grads)]
    norm = np.sqrt(sum(np.sum(g * g) for g in leaves))
    assert (norm > max_norm) == (max_norm == 0.5)  # each case is what its id says

    opt = optim.make_optimizer("sgd", 2.0, clip_norm=max_norm)
    updates, _ = opt.update(grads, opt.init(params), params)
    expected = [-2.0 * g for g in oracle.clip_by_global_norm(leaves, max_norm)]
    for u, e in zip(jax.tree.leaves(updates), expected):
        np.testing.assert_allclose(u, e, rtol=1e-12, atol=1e-15)


def test_setting_learning_rate_between_jitted_steps_does_not_retrace(lm):
    params, grad_fn = lm
    opt = optim.make_optimizer("sgd", 0.5, clip_norm=5.0)
    traces = []

    @jax.jit
    def step(params, opt_state):
        traces.append(1)  # runs only while tracing
        updates, opt_state = opt.update(grad_fn(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state, updates

    opt_state = opt.init(params)
    _, opt_state, first = step(params, opt_state)
    opt_state = optim.set_learning_rate(opt_state, 0.125)
    _, opt_state, second = step(params, opt_state)  # same params: only the rate differs

    assert len(traces) == 1 and step._cache_size() == 1
    assert optim.learning_rate(opt_state) == 0.125
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
        np.testing.assert_allclose(b, a / 4, rtol=1e-12, atol=1e-300)


# Learning-rate rules ---------------------------------------------------------------------

def plateau_rates(rule, lr, metrics):
    """The rate after each `rule.update`, as the training loops apply it."""
    state, rates = rule.init(lr), []
    for metric in metrics:
        state = rule.update(state, metric)
        rates.append(state.learning_rate)
    return rates


def metric_sequences():
    """Hand-written sequences with ties, plus random ones drawn from few values (many ties)."""
    fixed = [
        [5.0, 4.0, 4.0, 4.5, 4.2, 4.3, 4.3, 4.0, 3.9, 3.9],
        [1.0, 1.0, 1.0],
        [3.0, 2.0, 1.0],
        [1.0, 2.0, 3.0],
    ]
    rng = np.random.default_rng(7)
    drawn = [list(rng.choice([1.0, 1.5, 2.0, 2.5], size=8)) for _ in range(30)]
    return fixed + drawn


def test_halve_when_likelihood_drops_is_000s_rule():
    for losses in metric_sequences():
        likelihoods = [-x for x in losses]
        assert (plateau_rates(lr_rules.HALVE_WHEN_LIKELIHOOD_DROPS, 1.0, likelihoods)
                == oracle.halve_when_likelihood_drops(1.0, likelihoods)), likelihoods
    # ties do not halve; a drop does
    assert plateau_rates(lr_rules.HALVE_WHEN_LIKELIHOOD_DROPS, 1.0, [-3.0, -3.0, -4.0]) == [
        1.0, 1.0, 0.5]


def test_halve_when_loss_rises_is_001s_rule():
    for losses in metric_sequences():
        assert (plateau_rates(lr_rules.HALVE_WHEN_LOSS_RISES, 0.005, losses)
                == oracle.halve_when_loss_rises(0.005, losses)), losses
    assert plateau_rates(lr_rules.HALVE_WHEN_LOSS_RISES, 1.0, [3.0, 3.0, 3.5]) == [1.0, 1.0, 0.5]


def test_quarter_when_not_best_is_word_language_models_rule():
    for losses in metric_sequences():
        assert (plateau_rates(lr_rules.QUARTER_WHEN_NOT_BEST, 20.0, losses)
                == oracle.quarter_when_not_best(20.0, losses)), losses
    # a tie with the best is not an improvement; a value worse than the best but better than
    # the previous one still divides the rate
    assert plateau_rates(lr_rules.QUARTER_WHEN_NOT_BEST, 20.0, [5.0, 5.0, 6.0, 5.5]) == [
        20.0, 5.0, 1.25, 0.3125]


@pytest.mark.parametrize("start, divisor, num_epochs", [(4, 2.0, 13), (6, 1.2, 39)],
                         ids=["small", "medium"])
def test_zaremba_decay_follows_the_papers_schedule(start, divisor, num_epochs):
    rates = [lr_rules.zaremba_decay(1.0, epoch, start=start, decay=1 / divisor)
             for epoch in range(1, num_epochs + 1)]
    np.testing.assert_allclose(rates, oracle.zaremba_rates(1.0, num_epochs, start, divisor),
                               rtol=1e-12)
    assert rates[:start] == [1.0] * start
    np.testing.assert_allclose(rates[start], 1 / divisor, rtol=1e-15)


def test_zaremba_small_schedule_halves_from_epoch_5():
    rates = [lr_rules.zaremba_decay(1.0, e, start=4, decay=0.5) for e in range(1, 8)]
    assert rates == [1.0, 1.0, 1.0, 1.0, 0.5, 0.25, 0.125]
