"""How much each erratum of seed 000 (the gist's LSTM LM) changes its gradient and its perplexity.

For a fixed seed and a small random model (N = 10 cells, K = 30 ids, 8 random sentences),
at the gist's init scale ±0.1 and at ±0.5, it prints, for each erratum of
`tests/oracles/gist_lstm.ERRATA` left uncorrected alone: the weight blocks whose gradient
it changes and ‖g_this_bug − g_true‖ / ‖g_true‖ per block, with g_true from `jax.grad`
through jax_lm and g the gradient of the whole set of sentences (a sum over sentences);
then the same for the gist as written (all errata), the cosine between its gradient and
the true one, a short training run with each gradient, and the perplexity formula's error.

    python -m experiments.gist_errata          # from the repository root; a few seconds
"""

from __future__ import annotations

import math
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jax_lm.cells import LSTM  # noqa: E402
from jax_lm.model import LMConfig, init_carry, token_nll  # noqa: E402
from tests.oracles import gist_lstm  # noqa: E402

jax.config.update("jax_enable_x64", True)

SEED = 0
HIDDEN, VOCAB = 10, 30         # N, K as in the gist (K counts `<BIAS>` and `<s>`)
NUM_SENTENCES = 8
WORDS_PER_SENTENCE = (2, 12)   # uniform range of sentence lengths, `<s>` excluded
SCALES = (0.1, 0.5)            # the gist's init, and a wider one where every term matters
TRAIN_EPOCHS, TRAIN_ALPHA = 30, 1.0  # the gist's ALPHA
CHANGED = 1e-9                 # a block "changes" above this relative error

CONFIG = LMConfig(vocab_size=VOCAB, cell=LSTM(gate_fn="tanh", peepholes=True), num_layers=1,
                  hidden_size=HIDDEN, one_hot=True, output_bias=False, param_dtype="float64")


@jax.jit
def _sentence_nll_grad(params, sent):
    def nll(params):
        out, _ = token_nll(params, sent[None, :-1], sent[None, 1:], init_carry(CONFIG, 1),
                           config=CONFIG)
        return out.sum()
    return jax.grad(nll)(params)


def true_gradient(weights, sents):
    """Σ_sentences ∂ll/∂weights by autodiff through jax_lm, in the gist's blocks."""
    params = gist_lstm.to_jax_lm(weights)
    total = {name: np.zeros_like(value) for name, value in weights.items()}
    for sent in sents:
        grad = gist_lstm.from_jax_lm(
            jax.tree.map(lambda g: -np.asarray(g), _sentence_nll_grad(params, jnp.asarray(sent))))
        for name in total:
            total[name] += grad[name]
    return total


def hand_gradient(weights, sents, fixes):
    total = {name: np.zeros_like(value) for name, value in weights.items()}
    for sent in sents:
        grad = gist_lstm.bptt(weights, sent, fixes)
        for name in total:
            total[name] += grad[name]
    return total


def block_errors(approx, exact):
    """‖approx − exact‖ / ‖exact‖ (Frobenius) per block."""
    return {name: float(np.linalg.norm(approx[name] - exact[name]) / np.linalg.norm(exact[name]))
            for name in gist_lstm.BLOCKS}


def flat(grad):
    return np.concatenate([grad[name].ravel() for name in gist_lstm.BLOCKS])


def gradient_report(weights, sents):
    g_true = true_gradient(weights, sents)
    corrected = block_errors(hand_gradient(weights, sents, gist_lstm.ALL_FIXES), g_true)
    print(f"  corrected hand BPTT vs jax.grad: max block error {max(corrected.values()):.1e}")
    print("  one erratum left in (all others corrected):")
    for flag in gist_lstm.ERRATA:
        errors = block_errors(hand_gradient(weights, sents, gist_lstm.ALL_FIXES - {flag}), g_true)
        changed = {name: e for name, e in errors.items() if e > CHANGED}
        cells = ", ".join(f"{name} {e:.2g}" for name, e in changed.items())
        print(f"    {flag:<19} {len(changed)} block(s): {cells}")
    g_gist = hand_gradient(weights, sents, frozenset())
    errors = block_errors(g_gist, g_true)
    total = np.linalg.norm(flat(g_gist) - flat(g_true)) / np.linalg.norm(flat(g_true))
    cosine = flat(g_gist) @ flat(g_true) / (np.linalg.norm(flat(g_gist))
                                            * np.linalg.norm(flat(g_true)))
    print("  as written (all six errata):")
    print("    " + ", ".join(f"{name} {e:.2g}" for name, e in errors.items()))
    print(f"    total relative error {total:.3f}, cosine with the true gradient {cosine:.3f}")


def training_report(weights, sents, n_predictions):
    """The gist's loop (per-sentence SGD ascent, α halved when the epoch ll drops)."""
    for label, fixes in (("true gradient", gist_lstm.ALL_FIXES), ("as written", frozenset())):
        _, alphas, lls = gist_lstm.train_with_halving(weights, sents, TRAIN_ALPHA, TRAIN_EPOCHS,
                                                      fixes)
        ppls = [gist_lstm.perplexity(ll, n_predictions) for ll in lls]
        halvings = sum(b < a for a, b in zip(alphas, alphas[1:]))
        print(f"    {label:<14} train PPL epoch 1 {ppls[0]:.2f} → epoch {TRAIN_EPOCHS} "
              f"{ppls[-1]:.2f} (best {min(ppls):.2f}), {halvings} halving(s), last α {alphas[-1]}")


def perplexity_report(weights, sents):
    ll = sum(gist_lstm.forward(weights, sent)[0] for sent in sents)
    n_predictions = sum(len(sent) - 1 for sent in sents)
    words = n_predictions - len(sents)
    print(f"  perplexity of these sentences: exp(−ll/n) = "
          f"{gist_lstm.perplexity(ll, n_predictions):.3f} (n = {n_predictions} predictions), "
          f"the gist prints {gist_lstm.perplexity_as_written(ll, words):.3f} "
          f"(words = {words})")


def main():
    rng = np.random.default_rng(SEED)
    sents = [np.array([gist_lstm.BOS, *rng.integers(2, VOCAB, rng.integers(*WORDS_PER_SENTENCE)),
                       gist_lstm.BOS]) for _ in range(NUM_SENTENCES)]
    n_predictions = sum(len(sent) - 1 for sent in sents)
    print(f"seed {SEED}, N = {HIDDEN}, K = {VOCAB}, {NUM_SENTENCES} sentences of "
          f"{', '.join(str(len(s) - 2) for s in sents)} words")
    for scale in SCALES:
        weights = gist_lstm.init_weights(np.random.default_rng(SEED + 1), HIDDEN, VOCAB, scale)
        print(f"\nweights U(±{scale}):")
        gradient_report(weights, sents)
        perplexity_report(weights, sents)
        print(f"  {TRAIN_EPOCHS} epochs of the gist's training, α = {TRAIN_ALPHA}:")
        training_report(weights, sents, n_predictions)

    print("\nperplexity formula: the gist prints 2^(ll·(−ln 2)/words) = exp(−ll·(ln 2)²/words)"
          " = PPL^((ln 2)²·n/words)")
    for words_per_sentence in (5, 20):
        exponent = math.log(2) ** 2 * (words_per_sentence + 1) / words_per_sentence
        shown = ", ".join(f"{ppl} → {ppl ** exponent:.2f}" for ppl in (30, 100, 300))
        print(f"  {words_per_sentence} words per sentence (exponent {exponent:.3f}): true PPL "
              f"{shown}")


if __name__ == "__main__":
    main()
