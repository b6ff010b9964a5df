"""Decoding rules, compiled generation, and 001's sentence mode.

Distribution tests draw N = 20,000 tokens from fixed logits (one row per draw, one key) and
compare frequencies with the exact distribution of the rule within 5 standard errors; each
also checks that the plain distribution would fail that bound, so the test has power.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_lm import cells, model, sample
from jax_lm.sample import SamplingRule

N_DRAWS = 20_000
TOL = 5 * math.sqrt(0.25 / N_DRAWS)  # 5 standard errors of a frequency, at worst (p = 1/2)

V, B, H, PRIME = 12, 4, 8, 3
START, END, UNK = 0, 1, 2

next_token = jax.jit(sample.next_token, static_argnames="rule")


def _frequencies(probs, rule, banned=None, seed=0):
    """Empirical frequencies of N_DRAWS draws of next_token from logits ln(probs)."""
    logits = jnp.tile(jnp.log(jnp.asarray(probs, jnp.float64)), (N_DRAWS, 1))
    mask = None if banned is None else sample.banned_mask(banned, len(probs))
    ids = next_token(jax.random.key(seed), logits, rule, mask)
    return np.bincount(np.asarray(ids), minlength=len(probs)) / N_DRAWS


def _assert_frequencies(freq, expected, *, unlike):
    np.testing.assert_allclose(freq, expected, atol=TOL)
    assert np.max(np.abs(np.asarray(unlike) - expected)) > 3 * TOL, "test would not fail"


PROBS = np.array([0.05, 0.4, 0.04, 0.25, 0.16, 0.1])  # argmax 1


def test_plain_sampling_follows_the_softmax():
    _assert_frequencies(_frequencies(PROBS, SamplingRule()), PROBS, unlike=np.full(6, 1 / 6))


def test_top_k_draws_only_the_k_most_probable_tokens():
    freq = _frequencies(PROBS, SamplingRule(top_k=3))
    assert set(np.flatnonzero(freq)) == {1, 3, 4}
    kept = np.where(np.isin(np.arange(6), [1, 3, 4]), PROBS, 0.0)
    _assert_frequencies(freq, kept / kept.sum(), unlike=PROBS)


@pytest.mark.parametrize("top_p, nucleus", [
    (0.6, {1, 3}),        # mass before each: 1 -> 0, 3 -> 0.4, 4 -> 0.65
    (0.7, {1, 3, 4}),     # 0.65 < 0.7: token 4 is needed to reach 0.7
    (0.3, {1}),           # the top token alone already has mass ≥ p
    (0.01, {1}),          # ... and is always kept
])
def test_top_p_draws_only_the_nucleus_renormalised(top_p, nucleus):
    freq = _frequencies(PROBS, SamplingRule(top_p=top_p))
    assert set(np.flatnonzero(freq)) == nucleus
    kept = np.where(np.isin(np.arange(6), list(nucleus)), PROBS, 0.0)
    np.testing.assert_allclose(freq, kept / kept.sum(), atol=TOL)


def test_temperature_divides_the_logits():
    freq = _frequencies(PROBS, SamplingRule(temperature=2.0))
    tempered = PROBS ** 0.5 / np.sum(PROBS ** 0.5)
    _assert_frequencies(freq, tempered, unlike=PROBS)


def test_near_zero_temperature_and_greedy_pick_the_argmax(key):
    logits = jax.random.normal(key, (64, 9), jnp.float64)
    argmax = np.argmax(logits, axis=-1)
    for rule in (SamplingRule(greedy=True), SamplingRule(temperature=0.0),
                 SamplingRule(temperature=1e-3), SamplingRule(greedy=True, resample_once=True)):
        np.testing.assert_array_equal(next_token(key, logits, rule), argmax, err_msg=str(rule))


def test_greedy_skips_banned_tokens():
    logits = jnp.log(jnp.asarray([PROBS], jnp.float64))
    mask = sample.banned_mask((1,), 6)
    assert int(next_token(jax.random.key(0), logits, SamplingRule(greedy=True), mask)[0]) == 3


def test_banned_tokens_never_appear_and_the_rest_are_renormalised():
    # 001 re-draws while the draw is the unknown token: the same as sampling p(· | v ≠ unk).
    freq = _frequencies(PROBS, SamplingRule(), banned=(1, 4))
    assert freq[1] == 0 and freq[4] == 0
    kept = PROBS * ~np.isin(np.arange(6), [1, 4])
    _assert_frequencies(freq, kept / kept.sum(), unlike=PROBS)


def test_resample_once_matches_its_exact_distribution():
    # Draw v; if v is not the argmax a, keep a second draw instead:
    #   P(a) = p_a + (1 − p_a) p_a,   P(v) = (1 − p_a) p_v  (v ≠ a).
    a = int(np.argmax(PROBS))
    exact = (1 - PROBS[a]) * PROBS
    exact[a] = PROBS[a] + (1 - PROBS[a]) * PROBS[a]
    assert exact.sum() == pytest.approx(1.0)
    freq = _frequencies(PROBS, SamplingRule(resample_once=True))
    _assert_frequencies(freq, exact, unlike=PROBS)


def test_resample_once_applies_to_the_filtered_distribution():
    freq = _frequencies(PROBS, SamplingRule(top_k=2, resample_once=True))
    p = np.array([0, 0.4, 0, 0.25, 0, 0]) / 0.65
    exact = (1 - p[1]) * p
    exact[1] = p[1] + (1 - p[1]) * p[1]
    _assert_frequencies(freq, exact, unlike=p)


def test_sampling_rule_rejects_invalid_settings():
    for bad in (dict(temperature=-1.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5)):
        with pytest.raises(ValueError):
            SamplingRule(**bad)
    with pytest.raises(ValueError):
        sample.banned_mask((0, 1), 2)  # nothing left to sample


# --- generation with a model ----------------------------------------------------------------

CONFIG = model.LMConfig(vocab_size=V, cell=cells.make_cell("lstm"), num_layers=2, hidden_size=H,
                        init_scale=0.5, param_dtype="float64")


@pytest.fixture(scope="module")
def params():
    return model.init_lm(jax.random.key(1), CONFIG)


def _iid_params(params, probs):
    """The same model with logits that ignore the state: tokens i.i.d. from `probs`."""
    out = {"w": jnp.zeros_like(params["out"]["w"]), "b": jnp.log(jnp.asarray(probs))}
    return {**params, "out": out}


def _probs(**fixed):
    """Probabilities over V tokens: start/end/unk get the given mass, the rest share the rest."""
    probs = np.zeros(V)
    for token, mass in fixed.items():
        probs[{"start": START, "end": END, "unk": UNK}[token]] = mass
    free = [v for v in range(V) if v not in (START, END, UNK)]
    probs[free] = (1.0 - probs.sum()) / len(free)
    return np.maximum(probs, 1e-30)


@pytest.fixture(scope="module")
def prime():
    return jax.random.randint(jax.random.key(2), (B, PRIME), 3, V)


def test_generate_returns_tokens_of_the_vocabulary_and_full_lengths(params, prime):
    tokens, lengths = sample.generate(params, prime, 10, jax.random.key(0), config=CONFIG)
    assert tokens.shape == (B, 10) and lengths.shape == (B,)
    assert np.all((0 <= tokens) & (tokens < V))
    np.testing.assert_array_equal(lengths, 10)


def test_greedy_generation_matches_the_models_own_argmax_on_the_whole_sequence(params, prime):
    tokens, _ = sample.generate(params, prime, 10, jax.random.key(0), config=CONFIG,
                                rule=SamplingRule(greedy=True))
    # Teacher-force the prime and the generated tokens: token t must be the argmax of the
    # logits after everything before it, so the carry was threaded through correctly.
    sequence = jnp.concatenate([prime, tokens], axis=1)
    logits, _ = model.apply_lm(params, sequence, model.init_carry(CONFIG, B), config=CONFIG)
    np.testing.assert_array_equal(tokens, jnp.argmax(logits[:, PRIME - 1:-1], axis=-1))


LOOP_RULE = SamplingRule(temperature=0.9, top_k=8, resample_once=True)


def test_scan_generation_equals_the_python_loop_token_for_token(params, prime):
    iid = _iid_params(params, _probs(end=0.1, unk=0.2))
    # Mix the model's state-dependent logits with the i.i.d. ones so that rows end at
    # different steps and the state still matters.
    mixed = {**params, "out": {"w": params["out"]["w"], "b": iid["out"]["b"]}}
    kwargs = dict(config=CONFIG, rule=LOOP_RULE, banned=(UNK,), end_id=END)
    key = jax.random.key(3)
    tokens, lengths = sample.generate(mixed, prime, 12, key, **kwargs)
    loop_tokens, loop_lengths = sample.generate_python_loop(mixed, prime, 12, key, **kwargs)
    np.testing.assert_array_equal(tokens, loop_tokens)
    np.testing.assert_array_equal(lengths, loop_lengths)
    assert len(set(np.asarray(lengths).tolist())) > 1, "rows should end at different steps"


def test_generate_compiles_once_for_new_keys_primes_and_parameters(params, prime):
    run = functools.partial(sample.generate, num_tokens=7, config=CONFIG, rule=LOOP_RULE)
    first, _ = run(params, prime, key=jax.random.key(0))
    compiled = sample.generate._cache_size()
    second, _ = run(params, prime, key=jax.random.key(1))
    run(jax.tree.map(lambda x: 2 * x, params), prime[::-1], key=jax.random.key(2))
    assert sample.generate._cache_size() == compiled
    assert not np.array_equal(first, second)
    # The whole generation is one scan over the tokens, not a Python loop.
    traced = functools.partial(sample.generate.__wrapped__, num_tokens=7, config=CONFIG,
                               rule=LOOP_RULE)
    jaxpr = jax.make_jaxpr(traced)(params, prime, key=jax.random.key(0))
    scan_lengths = [e.params["length"] for e in jaxpr.eqns if e.primitive.name == "scan"]
    assert scan_lengths.count(7) == 1   # (the other scans run the prime through each layer)


def test_python_loop_compiles_its_step_once(params, prime):
    kwargs = dict(config=CONFIG, rule=LOOP_RULE, banned=(UNK,), end_id=END)
    sample.generate_python_loop(params, prime, 3, jax.random.key(0), **kwargs)
    compiled = sample._jit_step._cache_size()
    sample.generate_python_loop(params, prime, 9, jax.random.key(1), **kwargs)
    assert sample._jit_step._cache_size() == compiled


def test_same_key_gives_same_tokens_and_another_key_other_tokens(params, prime):
    run = functools.partial(sample.generate, params, prime, 10, config=CONFIG)
    a, _ = run(jax.random.key(5))
    np.testing.assert_array_equal(a, run(jax.random.key(5))[0])
    assert not np.array_equal(a, run(jax.random.key(6))[0])


def test_rows_stop_at_end_id_and_repeat_it(params, prime):
    iid = _iid_params(params, _probs(end=0.25, unk=0.3))
    tokens, lengths = sample.generate(iid, prime, 12, jax.random.key(0), config=CONFIG,
                                      rule=LOOP_RULE, banned=(UNK,), end_id=END)
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    assert not np.any(tokens == UNK)
    for row, length in zip(tokens, lengths):
        ends = np.flatnonzero(row == END)
        if ends.size:   # length counts up to and including the first end_id
            assert length == ends[0] + 1
            assert np.all(row[length:] == END)
        else:
            assert length == 12
    assert np.any(lengths < 12), "some row should have ended"


def test_generate_rejects_a_banned_end_id(params, prime):
    with pytest.raises(ValueError, match="banned"):
        sample.generate(params, prime, 3, jax.random.key(0), config=CONFIG, banned=(END,),
                        end_id=END)


# --- 001's sentence mode ---------------------------------------------------------------------

SENTENCES = functools.partial(sample.sample_sentences, config=CONFIG, start_id=START,
                              end_id=END, unk_id=UNK, max_length=15, batch_size=16)


def test_sentences_have_no_unk_start_or_end_and_respect_min_length(params):
    # i.i.d. tokens; without unk p(end) = 0.25 / 0.7, so a sentence reaches 4 tokens with
    # probability (1 − 0.357)^4 ≈ 0.17: most candidates are rejected and generated again.
    iid = _iid_params(params, _probs(end=0.25, unk=0.3, start=1e-30))
    sentences = SENTENCES(iid, jax.random.key(0), num_sentences=20, min_length=4)
    assert len(sentences) == 20
    for sentence in sentences:
        assert 4 <= len(sentence) <= 15
        assert UNK not in sentence and END not in sentence and START not in sentence
        assert all(0 <= t < V for t in sentence)
    # One round of 16 candidates cannot give 20 valid sentences: the rejection loop ran.
    with pytest.raises(RuntimeError, match="max_rounds=1"):
        SENTENCES(iid, jax.random.key(0), num_sentences=20, min_length=4, max_rounds=1)


def test_sentences_ending_at_once_are_rejected_until_max_rounds(params):
    ends_at_once = _iid_params(params, _probs(end=1 - 1e-9))
    assert SENTENCES(ends_at_once, jax.random.key(0), num_sentences=3) == [[], [], []]
    with pytest.raises(RuntimeError, match="only 0 of 3 sentences"):
        SENTENCES(ends_at_once, jax.random.key(0), num_sentences=3, min_length=1, max_rounds=5)


def test_sentences_that_reach_max_length_without_end_are_rejected(params):
    never_ends = _iid_params(params, _probs(end=1e-30))
    with pytest.raises(RuntimeError, match="max_rounds=2"):
        SENTENCES(never_ends, jax.random.key(0), num_sentences=1, max_rounds=2)


def test_sentences_from_a_random_model(params):
    sentences = SENTENCES(params, jax.random.key(0), num_sentences=5, min_length=2)
    assert len(sentences) == 5
    assert all(UNK not in s and END not in s and 2 <= len(s) <= 15 for s in sentences)
