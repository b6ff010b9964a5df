"""jax_lm's two-layer CIFG LM equals a hand-derived NumPy CIFG with hand-written BPTT (003).

The model is `LMConfig(cell=CIFG(), num_layers=2, one_hot=True, param_dtype="float64")`
(and the same with an embedding, `one_hot=False`); the oracle is
`tests/oracles/cifg_lm.py`, written with column vectors and one matrix per gate, so these
tests also pin down jax_lm's gate block order (i, g, o) and its row-vector layout.
"""

import jax
import numpy as np
import pytest

from jax_lm.cells import CIFG
from jax_lm.model import LMConfig, init_carry, init_lm, token_nll
from tests.oracles import cifg_lm as oracle

VOCAB, HIDDEN, EMBED, STEPS, BATCH = 7, 5, 4, 9, 2


@pytest.fixture(scope="module", params=["one_hot", "embedding"])
def case(request):
    """Config, params, batch [B, T] of tokens and targets, and jit(value_and_grad) of Σ nll."""
    one_hot = request.param == "one_hot"
    # init_scale 0.5 rather than 0.1 keeps the gates away from 0.5 and the cell state busy.
    config = LMConfig(vocab_size=VOCAB, cell=CIFG(), num_layers=2, hidden_size=HIDDEN,
                      embed_size=None if one_hot else EMBED, one_hot=one_hot,
                      init="uniform", init_scale=0.5, param_dtype="float64")
    params = init_lm(jax.random.key(3), config)
    stream = np.random.default_rng(3).integers(0, VOCAB, size=(BATCH, STEPS + 1))

    def total(params, tokens, targets):
        nll, _ = token_nll(params, tokens, targets, init_carry(config, BATCH), config=config)
        return nll.sum(), nll

    value_and_grad = jax.jit(jax.value_and_grad(total, has_aux=True))
    return config, params, stream[:, :-1], stream[:, 1:], value_and_grad


def leaves_with_names(tree):
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in flat]


def test_layout_conversion_round_trips(case):
    _, params, _, _, _ = case
    back = oracle.to_jax_lm(oracle.from_jax_lm(params))
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for (name, a), (_, b) in zip(leaves_with_names(back), leaves_with_names(params)):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_token_nll_matches_hand_written_forward(case):
    _, params, tokens, targets, value_and_grad = case
    (_, nll), _ = value_and_grad(params, tokens, targets)
    numpy_params = oracle.from_jax_lm(params)
    for b in range(BATCH):
        expected = oracle.token_nll(numpy_params, tokens[b], targets[b])
        np.testing.assert_allclose(nll[b], expected, rtol=1e-12)


def test_hand_derived_bptt_equals_grad_of_summed_token_nll(case):
    config, params, tokens, targets, value_and_grad = case
    (loss, _), grads = value_and_grad(params, tokens, targets)
    numpy_params = oracle.from_jax_lm(params)
    per_sequence = [oracle.bptt(numpy_params, x, y) for x, y in zip(tokens, targets)]
    expected_loss = sum(value for value, _ in per_sequence)
    expected = jax.tree.map(lambda *g: sum(g), *(g for _, g in per_sequence))

    np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-12)
    actual = dict(leaves_with_names(oracle.from_jax_lm(grads)))
    names = [name for name, _ in leaves_with_names(expected)]
    assert sorted(actual) == sorted(names)
    if not config.one_hot:
        assert "['embed']" in names
    for name, want in leaves_with_names(expected):  # every gate block of every layer
        scale = np.abs(want).max()
        assert scale > 0, name
        np.testing.assert_allclose(actual[name], want, rtol=1e-9, atol=1e-9 * scale,
                                   err_msg=name)
