"""Likelihood metrics and generated-text quality metrics on hand-computed examples."""

import math
import time

import numpy as np
import pytest

from jax_lm import metrics


def test_perplexity_and_bits_of_known_losses():
    # Four tokens each predicted with p = 1/10: total nll = 4 ln 10.
    assert metrics.perplexity(4 * math.log(10.0), 4) == pytest.approx(10.0, rel=1e-12)
    assert metrics.bits_per_token(4 * math.log(10.0), 4) == pytest.approx(math.log2(10.0))
    # One bit per token: p = 1/2 for each of 3 tokens.
    assert metrics.bits_per_token(3 * math.log(2.0), 3) == pytest.approx(1.0, rel=1e-12)
    assert metrics.perplexity(3 * math.log(2.0), 3) == pytest.approx(2.0, rel=1e-12)
    assert metrics.perplexity(0.0, 5) == 1.0


def test_perplexity_needs_a_positive_count():
    with pytest.raises(ValueError):
        metrics.perplexity(1.0, 0)
    with pytest.raises(ValueError):
        metrics.bits_per_token(1.0, 0)


def test_mean_max_posterior_of_known_distributions():
    # Row 1: p = (1/4, 3/4) -> max 3/4. Row 2: uniform over 2 -> 1/2. Mean 5/8.
    logits = np.array([[[0.0, math.log(3.0)], [1.0, 1.0]]])        # (B=1, T=2, V=2)
    assert metrics.mean_max_posterior(logits) == pytest.approx(0.625, rel=1e-12)
    assert metrics.mean_max_posterior(logits, mask=[[1, 0]]) == pytest.approx(0.75, rel=1e-12)
    assert metrics.mean_max_posterior(np.zeros((3, 7))) == pytest.approx(1 / 7, rel=1e-12)
    assert metrics.mean_max_posterior(np.array([[0.0, 1e3]])) == pytest.approx(1.0)


def test_distinct_n_counts_unique_over_total_ngrams_across_samples():
    samples = ["abab", "abc"]
    # unigrams a b a b | a b c: 3 unique of 7.   bigrams ab ba ab | ab bc: 3 unique of 5.
    assert metrics.distinct_n(samples, 1) == pytest.approx(3 / 7)
    assert metrics.distinct_n(samples, 2) == pytest.approx(3 / 5)
    # trigrams aba bab | abc: all distinct, and none crosses the sample boundary.
    assert metrics.distinct_n(samples, 3) == pytest.approx(1.0)
    assert math.isnan(metrics.distinct_n(samples, 5))


def test_distinct_n_on_words_and_on_integer_ids():
    words = [["the", "cat", "sat"], ["the", "dog", "sat"]]
    assert metrics.distinct_n(words, 1) == pytest.approx(4 / 6)
    assert metrics.distinct_n(words, 2) == pytest.approx(4 / 4)
    ids = [np.array([1, 2, 1, 2]), [7, 7]]
    # bigrams (1 2) (2 1) (1 2) | (7 7): 3 unique of 4.
    assert metrics.distinct_n(ids, 2) == pytest.approx(3 / 4)


def test_ngram_overlap_is_the_share_of_sample_ngrams_found_in_the_reference():
    # bigrams of "abcd": ab bc cd; the reference has ab and bc.
    assert metrics.ngram_overlap(["abcd"], "xabcy", 2) == pytest.approx(2 / 3)
    # trigrams abc bcd: only abc.
    assert metrics.ngram_overlap(["abcd"], "xabcy", 3) == pytest.approx(1 / 2)
    # counted with repeats: "aaz" -> aa (known) az (unknown); "aaaa" -> aa aa aa (known).
    assert metrics.ngram_overlap(["aaz", "aaaa"], "baab", 2) == pytest.approx(4 / 5)
    assert metrics.ngram_overlap(["qq"], "abc", 1) == 0.0
    words = [["to", "be", "or"], ["be", "it"]]
    assert metrics.ngram_overlap(words, ["not", "to", "be", "or"], 2) == pytest.approx(2 / 3)


@pytest.mark.parametrize("sample, train, expected", [
    ("xyz", "abcabc", 0),                  # nothing shared
    ("hello", "say hello world", 5),       # the whole sample copied
    ("abcxabcdz", "zabcdq", 4),            # the longest copy starts late in the sample
    ("aaaa", "baab", 2),
    ("", "abc", 0),
    ("abc", "", 0),
])
def test_longest_copied_span_on_hand_computed_strings(sample, train, expected):
    assert metrics.longest_copied_span(sample, train) == expected


def test_longest_copied_span_on_words_and_ids():
    train = ["not", "to", "be", "or", "to"]
    assert metrics.longest_copied_span(["to", "be", "or", "not"], train) == 3
    assert metrics.longest_copied_span(np.array([5, 1, 2, 9]), np.array([0, 1, 2, 3, 5])) == 2


def _brute_force_span(sample: str, train: str) -> int:
    return max((j - i for i in range(len(sample)) for j in range(i + 1, len(sample) + 1)
                if sample[i:j] in train), default=0)


def test_longest_copied_span_equals_brute_force_on_random_strings():
    rng = np.random.default_rng(0)
    for _ in range(60):
        alphabet = "ab" if rng.random() < 0.5 else "abcd"  # small alphabets: many repeats
        train = "".join(rng.choice(list(alphabet), rng.integers(0, 120)))
        sample = "".join(rng.choice(list(alphabet), rng.integers(0, 25)))
        assert metrics.longest_copied_span(sample, train) == _brute_force_span(sample, train)


def test_copied_spans_of_a_million_token_text_take_seconds():
    rng = np.random.default_rng(1)
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz .,\n"))
    train = "".join(rng.choice(alphabet, 1_000_000))
    copied = train[400_000:400_300]
    samples = ["#" + copied + "#", "".join(rng.choice(alphabet, 500))]
    start = time.perf_counter()
    spans = metrics.copied_spans(samples, train)
    elapsed = time.perf_counter() - start
    assert spans[0] == 300
    assert 3 <= spans[1] < 20   # random text shares only short spans
    assert elapsed < 10.0, f"{elapsed:.1f} s"


def test_quality_report_combines_the_metrics():
    samples = ["abab", "abc"]
    train, heldout = "zzabcab", "abq"
    report = metrics.quality_report(samples, train, heldout, ns=(1, 2))
    assert report == {
        "num_samples": 2,
        "mean_length": 3.5,
        "distinct_1": pytest.approx(3 / 7),
        "distinct_2": pytest.approx(3 / 5),
        # unigrams: a, b known, c not -> 6 of 7; bigrams: only ab known -> 3 of 5.
        "heldout_overlap_1": pytest.approx(6 / 7),
        "heldout_overlap_2": pytest.approx(3 / 5),
        # "abab" copies "ab" ("aba", "bab" are not in train); "abc" is copied whole.
        "copied_span_mean": pytest.approx((2 + 3) / 2),
        "copied_span_max": 3,
    }


def test_samples_must_be_a_sequence_of_samples():
    with pytest.raises(TypeError):
        metrics.distinct_n("abc", 1)
