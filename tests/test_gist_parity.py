"""Parity with seed 000 (the gist's LSTM LM): forward pass, hand BPTT and its errata, perplexity,
and the update rule (per-sentence SGD ascent, α halved when the epoch likelihood drops).

The oracle is `tests/oracles/gist_lstm.py`; the gist's model is the one-layer jax_lm model
`GIST_CONFIG` (tanh gates, peepholes, one-hot words, no output bias), float64 throughout.
Weights are drawn from U(±0.5), wider than the gist's ±0.1, so that every term of the
derivation moves the gradient well above round-off.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jax_lm import lr_rules, optim
from jax_lm.cells import LSTM
from jax_lm.model import LMConfig, init_carry, token_nll
from tests.oracles import gist_lstm

HIDDEN, VOCAB = 5, 9  # N, K (K counts the gist's `<BIAS>` id 0 and `<s>` id 1)
GIST_CONFIG = LMConfig(vocab_size=VOCAB, cell=LSTM(gate_fn="tanh", peepholes=True),
                       num_layers=1, hidden_size=HIDDEN, one_hot=True, output_bias=False,
                       param_dtype="float64")
SENTENCE_LENGTHS = (2, 3, 7, 10)  # len(`<s> … <s>`): 1, 2, 6 and 9 predictions
WEIGHT_SEEDS = (0, 1)
PARITY_RTOL = 1e-9
DIFFERS_RTOL = 1e-6

EVERY_GRADIENT_BLOCK = frozenset(gist_lstm.BLOCKS) - {"W_o"}
# Which blocks go wrong when only `flag` is left uncorrected, by the number of steps
# (predictions) in the sentence; "3" stands for 3 or more. W_o's gradient is exact in the
# gist, and S_0 = 0 silences every S_{t-1}-weighted term at step 1:
# - eps_sign, eps_gate_terms, forget_next act through the next step, so not on 1-step
#   sentences; on 2-step ones only at step 1, where Δφ_1 and the ι, φ peephole terms vanish.
# - iota_uses_g: at step 1 the gist's Δι_1 ∝ S_0 = 0 (the input gate never learns there).
# - phi_peephole_prev: Δφ_1 ∝ S_0 = 0, so no effect on 1-step sentences.
AFFECTED = {
    "eps_sign": {1: set(), 2: {"W_iota_y", "W", "W_eta_y", "W_eta_s"}, 3: EVERY_GRADIENT_BLOCK},
    "eps_gate_terms": {1: set(), 2: {"W_iota_y", "W", "W_eta_y", "W_eta_s"},
                       3: EVERY_GRADIENT_BLOCK},
    "forget_next": {1: set(), 2: {"W_iota_y", "W"}, 3: EVERY_GRADIENT_BLOCK},
    "iota_uses_g": {1: {"W_iota_y"}, 2: {"W_iota_y", "W_iota_s", "W", "W_eta_y", "W_eta_s"},
                    3: EVERY_GRADIENT_BLOCK},
    "phi_peephole_prev": {1: set(), 2: {"W_phi_s"}, 3: {"W_phi_s"}},
    "iota_peephole_prev": {1: {"W_iota_s"}, 2: {"W_iota_s"}, 3: {"W_iota_s"}},
}


def random_sentence(rng: np.random.Generator, num_words: int) -> np.ndarray:
    """`<s> w_1 … w_n <s>` with words from ids 2 … K−1 (never `<BIAS>` or `<s>`)."""
    return np.array([gist_lstm.BOS, *rng.integers(2, VOCAB, num_words), gist_lstm.BOS])


def sentence_nll(params, sent):
    """−ll of one sentence `<s> … <s>` under GIST_CONFIG: inputs sent[:-1], targets sent[1:]."""
    nll, _ = token_nll(params, sent[None, :-1], sent[None, 1:], init_carry(GIST_CONFIG, 1),
                       config=GIST_CONFIG)  # (1, τ−1)
    return nll.sum()


_nll_and_grad = jax.jit(jax.value_and_grad(sentence_nll))


def jax_ll_and_grad(weights, sent):
    """(ll, ∂ll/∂weights) from jax_lm autodiff, in the gist's blocks."""
    nll, grad = _nll_and_grad(gist_lstm.to_jax_lm(weights), jnp.asarray(sent))
    ascent = jax.tree.map(lambda g: -np.asarray(g), grad)
    return -float(nll), gist_lstm.from_jax_lm(ascent)


def relative_errors(approx, exact) -> dict[str, float]:
    """max|approx − exact| / max|exact| per block (the scale floored at 1e-12 for zero blocks)."""
    return {name: float(np.abs(approx[name] - exact[name]).max()
                        / max(np.abs(exact[name]).max(), 1e-12))
            for name in gist_lstm.BLOCKS}


@pytest.fixture(scope="module")
def cases():
    """(weights, sentence, jax ll, jax gradient) for every weight seed × sentence length."""
    out = []
    for seed in WEIGHT_SEEDS:
        rng = np.random.default_rng(seed)
        weights = gist_lstm.init_weights(rng, HIDDEN, VOCAB, scale=0.5)
        for length in SENTENCE_LENGTHS:
            sent = random_sentence(rng, length - 2)
            out.append((weights, sent, *jax_ll_and_grad(weights, sent)))
    return out


def test_jax_lm_mapping_round_trips():
    weights = gist_lstm.init_weights(np.random.default_rng(0), HIDDEN, VOCAB, scale=0.5)
    back = gist_lstm.from_jax_lm(gist_lstm.to_jax_lm(weights))
    for name in gist_lstm.BLOCKS:
        np.testing.assert_array_equal(back[name], weights[name])


def test_forward_log_likelihood_matches_jax_lm(cases):
    for weights, sent, jax_ll, _ in cases:
        ll, _ = gist_lstm.forward(weights, sent)
        np.testing.assert_allclose(ll, jax_ll, rtol=1e-12)


def test_corrected_bptt_matches_autodiff(cases):
    for weights, sent, _, jax_grad in cases:
        errors = relative_errors(gist_lstm.bptt(weights, sent), jax_grad)
        assert max(errors.values()) <= PARITY_RTOL, (len(sent), errors)


def test_as_written_bptt_differs_from_autodiff_except_for_w_o(cases):
    for weights, sent, _, jax_grad in cases:
        if len(sent) - 1 < 3:
            continue  # see AFFECTED: 1- and 2-step sentences hide some errata
        errors = relative_errors(gist_lstm.bptt(weights, sent, fixes=frozenset()), jax_grad)
        wrong = {name for name, e in errors.items() if e > 1e-2}
        assert wrong == EVERY_GRADIENT_BLOCK, (len(sent), errors)
        assert errors["W_o"] <= PARITY_RTOL


@pytest.mark.parametrize("flag", sorted(gist_lstm.ERRATA))
def test_leaving_out_one_fix_breaks_exactly_its_blocks(cases, flag):
    assert set(AFFECTED) == gist_lstm.ALL_FIXES
    for weights, sent, _, jax_grad in cases:
        steps = len(sent) - 1
        expected = AFFECTED[flag][min(steps, 3)]
        errors = relative_errors(
            gist_lstm.bptt(weights, sent, fixes=gist_lstm.ALL_FIXES - {flag}), jax_grad)
        differ = {name for name, e in errors.items() if e > DIFFERS_RTOL}
        assert differ == expected, (flag, steps, errors)
        assert all(errors[name] <= PARITY_RTOL for name in gist_lstm.BLOCKS if name not in differ)


def test_bptt_rejects_unknown_fix():
    weights = gist_lstm.init_weights(np.random.default_rng(0), HIDDEN, VOCAB)
    with pytest.raises(ValueError, match="unknown fix"):
        gist_lstm.bptt(weights, [1, 2, 1], fixes=frozenset({"no_such_fix"}))


def test_gist_perplexity_is_exp_of_ll_times_ln2_squared_over_words():
    ll, words, n_predictions = -123.4, 40, 45  # 5 sentences: 40 words + 5 final `<s>`
    written = gist_lstm.perplexity_as_written(ll, words)
    np.testing.assert_allclose(written, math.exp(-ll * math.log(2) ** 2 / words), rtol=1e-12)
    true = gist_lstm.perplexity(ll, n_predictions)
    np.testing.assert_allclose(true, math.exp(-ll / n_predictions), rtol=1e-12)
    # The gist's number is the true perplexity to the power (ln 2)² · n / words.
    np.testing.assert_allclose(written, true ** (math.log(2) ** 2 * n_predictions / words),
                               rtol=1e-12)
    assert written < 0.7 * true


def test_jax_lm_perplexity_is_exp_of_mean_token_nll():
    rng = np.random.default_rng(3)
    weights = gist_lstm.init_weights(rng, HIDDEN, VOCAB, scale=0.5)
    sents = [random_sentence(rng, n) for n in (0, 4, 2, 7)]
    epoch_ll = sum(gist_lstm.forward(weights, sent)[0] for sent in sents)
    n_predictions = sum(len(sent) - 1 for sent in sents)

    # jax_lm scores the sentences as one padded batch, padding masked out.
    steps = max(len(sent) for sent in sents) - 1
    tokens = np.zeros((len(sents), steps + 1), np.int32)
    mask = np.zeros((len(sents), steps), bool)
    for b, sent in enumerate(sents):
        tokens[b, :len(sent)] = sent
        mask[b, :len(sent) - 1] = True
    nll, _ = token_nll(gist_lstm.to_jax_lm(weights), tokens[:, :-1], tokens[:, 1:],
                       init_carry(GIST_CONFIG, len(sents)), config=GIST_CONFIG, mask=mask)
    jax_ppl = math.exp(float(nll.sum()) / int(mask.sum()))

    np.testing.assert_allclose(jax_ppl, gist_lstm.perplexity(epoch_ll, n_predictions),
                               rtol=1e-12)
    words = n_predictions - len(sents)
    assert abs(gist_lstm.perplexity_as_written(epoch_ll, words) / jax_ppl - 1) > 0.1


def test_sgd_ascent_with_halving_matches_jax_lm_optimizer():
    # α = 1.5 on ±0.5 weights overshoots: epoch 2's likelihood drops, so epoch 3 runs at 0.75.
    alpha, num_epochs = 1.5, 3
    rng = np.random.default_rng(0)
    weights0 = gist_lstm.init_weights(rng, HIDDEN, VOCAB, scale=0.5)
    sents = [random_sentence(rng, n) for n in (3, 5, 3, 5)]

    weights, alphas, lls = gist_lstm.train_with_halving(weights0, sents, alpha, num_epochs)
    assert alphas == [alpha, alpha, alpha / 2]  # the halving happened inside the window

    opt = optim.make_optimizer("sgd", alpha)

    @jax.jit
    def step(params, opt_state, sent):
        loss, grad = jax.value_and_grad(sentence_nll)(params, sent)  # loss = −ll
        updates, opt_state = opt.update(grad, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, -loss

    params = jax.tree.map(jnp.asarray, gist_lstm.to_jax_lm(weights0))
    opt_state = opt.init(params)
    rule = lr_rules.HALVE_WHEN_LIKELIHOOD_DROPS
    rule_state = rule.init(alpha)
    jax_alphas, jax_lls = [], []
    for _ in range(num_epochs):
        jax_alphas.append(optim.learning_rate(opt_state))
        epoch_ll = 0.0
        for sent in sents:
            params, opt_state, sent_ll = step(params, opt_state, jnp.asarray(sent))
            epoch_ll += float(sent_ll)
        jax_lls.append(epoch_ll)
        rule_state = rule.update(rule_state, epoch_ll)
        opt_state = optim.set_learning_rate(opt_state, rule_state.learning_rate)

    assert jax_alphas == alphas
    np.testing.assert_allclose(jax_lls, lls, rtol=1e-9)
    errors = relative_errors(gist_lstm.from_jax_lm(jax.tree.map(np.asarray, params)), weights)
    assert max(errors.values()) <= PARITY_RTOL, errors
