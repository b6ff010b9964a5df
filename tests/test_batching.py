"""Tests for jax_lm.batching: stream, sentence and random-window batchers."""

import itertools

import numpy as np
import pytest

from jax_lm.batching import (
    Batch,
    random_window_batches,
    sentence_batches,
    sentence_epoch_plan,
    stream_batches,
    stream_layout,
)
from jax_lm.data import DataError


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for field in Batch._fields:
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field))


def make_sentences(count, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 50, size=rng.integers(1, 12)).astype(np.int32) for _ in range(count)]


# ----------------------------------------------------------------------------- stream


def test_stream_matches_the_docstring_diagram():
    first, second = stream_batches(np.arange(13), batch_size=3, seq_len=3, num_epochs=1)
    np.testing.assert_array_equal(first.inputs, [[0, 1, 2], [4, 5, 6], [8, 9, 10]])
    np.testing.assert_array_equal(first.targets, [[1, 2, 3], [5, 6, 7], [9, 10, 11]])
    np.testing.assert_array_equal(second.inputs, [[3, 0, 0], [7, 0, 0], [11, 0, 0]])
    np.testing.assert_array_equal(second.targets, [[4, 0, 0], [8, 0, 0], [12, 0, 0]])
    np.testing.assert_array_equal(second.mask, [[1, 0, 0]] * 3)
    assert first.reset.all() and not second.reset.any()


@pytest.mark.parametrize(
    "n, batch_size, seq_len", [(13, 3, 3), (100, 7, 5), (101, 4, 10), (9, 8, 1), (50, 1, 64)]
)
def test_stream_evaluation_pass_scores_every_target_token_exactly_once(n, batch_size, seq_len):
    ids = np.arange(n)  # each token is its own position, so targets name the positions scored
    batches = list(stream_batches(ids, batch_size, seq_len, num_epochs=1))
    scored = np.concatenate([b.targets[b.mask == 1] for b in batches])
    np.testing.assert_array_equal(np.sort(scored), np.arange(1, n))
    for b in batches:
        assert b.inputs.shape == b.targets.shape == b.mask.shape == (batch_size, seq_len)
        assert b.inputs.dtype == b.targets.dtype == np.int32 and b.mask.dtype == np.float32
        np.testing.assert_array_equal((b.targets - b.inputs)[b.mask == 1], 1)  # next-token pairs


def test_stream_rows_continue_across_windows_so_state_can_be_carried():
    batches = list(stream_batches(np.arange(200), batch_size=4, seq_len=7, num_epochs=1))
    for before, after in zip(batches[:-1], batches[1:], strict=True):
        live = after.mask[:, 0] == 1
        np.testing.assert_array_equal(after.inputs[live, 0], before.targets[live, -1])
        assert not after.reset.any()


def test_stream_too_small_for_one_batch_is_a_data_error():
    with pytest.raises(DataError, match="too small for one batch of 8 rows"):
        stream_layout(8, batch_size=8, seq_len=4)


@pytest.mark.parametrize("start_step", [0, 1, 5, 6, 13])
def test_stream_resumes_at_step_k_with_batches_k_onwards(start_step):
    ids = np.random.default_rng(0).integers(0, 20, size=90)
    assert stream_layout(90, 4, 4).num_windows == 6
    full = take(stream_batches(ids, 4, 4), 20)
    resumed = take(stream_batches(ids, 4, 4, start_step=start_step), 20 - start_step)
    assert_same_batches(full[start_step:], resumed)


# ----------------------------------------------------------------------------- sentences


@pytest.mark.parametrize("batch_size, length_multiple", [(1, 1), (4, 1), (5, 8)])
def test_sentence_batches_mask_exactly_the_padding(batch_size, length_multiple):
    sentences = make_sentences(23)
    kept = [s for s in sentences if len(s) >= 2]
    batches = list(
        sentence_batches(
            sentences, batch_size, seed=3, num_epochs=1, length_multiple=length_multiple
        )
    )
    assert len(batches) == -(-len(kept) // batch_size)
    rows = []
    for b in batches:
        assert b.inputs.shape[0] == batch_size and b.inputs.shape[1] % length_multiple == 0
        assert b.reset.all()
        assert (b.inputs[b.mask == 0] == 0).all() and (b.targets[b.mask == 0] == 0).all()
        for inputs, targets, mask in zip(b.inputs, b.targets, b.mask, strict=True):
            length = int(mask.sum())
            assert (mask[:length] == 1).all() and (mask[length:] == 0).all()
            if length:
                rows.append(tuple(inputs[:length]) + (targets[length - 1],))
    # every sentence appears exactly once per epoch, whole
    assert sorted(rows) == sorted(tuple(s) for s in kept)


def test_batch_size_one_in_corpus_order_is_the_per_sentence_regime():
    sentences = make_sentences(10)
    kept = [s for s in sentences if len(s) >= 2]
    batches = list(sentence_batches(sentences, 1, shuffle=False, num_epochs=2))
    assert len(batches) == 2 * len(kept)
    for b, s in zip(batches, kept + kept, strict=True):
        assert b.inputs.shape == (1, len(s) - 1)
        np.testing.assert_array_equal(b.inputs[0], s[:-1])
        np.testing.assert_array_equal(b.targets[0], s[1:])
        assert b.mask.all()


def test_batch_size_one_shuffled_draws_a_new_permutation_each_epoch():
    lengths = np.arange(2, 40)
    epochs = [np.concatenate(sentence_epoch_plan(lengths, 1, seed=7, epoch=e)) for e in range(3)]
    for order in epochs:
        np.testing.assert_array_equal(np.sort(order), np.arange(len(lengths)))
    assert not np.array_equal(epochs[0], epochs[1])
    np.testing.assert_array_equal(
        epochs[0], np.concatenate(sentence_epoch_plan(lengths, 1, seed=7, epoch=0))
    )


def test_bucketing_puts_similar_lengths_together():
    sentences = make_sentences(400, seed=1)

    def padding(bucket):
        batches = sentence_batches(sentences, 8, seed=0, bucket=bucket, num_epochs=1)
        return sum(float((b.mask == 0).sum()) for b in batches)

    assert padding(bucket=True) < 0.5 * padding(bucket=False)


@pytest.mark.parametrize("start_step", [0, 3, 6, 7, 15])
def test_sentence_batches_resume_at_step_k_with_batches_k_onwards(start_step):
    sentences = make_sentences(30)  # 6 or 7 batches of 4 per epoch
    full = take(sentence_batches(sentences, 4, seed=5), 20)
    resumed = take(sentence_batches(sentences, 4, seed=5, start_step=start_step), 20 - start_step)
    assert_same_batches(full[start_step:], resumed)


def test_too_few_sentences_for_one_batch_is_a_data_error():
    with pytest.raises(DataError, match="too few for one batch of 4"):
        next(sentence_batches([np.array([1, 2]), np.array([3])], 4))


# ----------------------------------------------------------------------------- random windows


def test_random_windows_are_next_token_pairs_drawn_from_the_seed():
    ids = np.arange(1000)
    a = take(random_window_batches(ids, 6, 16, seed=1), 3)
    b = take(random_window_batches(ids, 6, 16, seed=1), 3)
    c = take(random_window_batches(ids, 6, 16, seed=2), 3)
    assert_same_batches(a, b)
    assert not np.array_equal(a[0].inputs, c[0].inputs)
    for batch in a:
        np.testing.assert_array_equal(batch.targets - batch.inputs, 1)
        np.testing.assert_array_equal(np.diff(batch.inputs, axis=1), 1)
        assert batch.mask.all() and batch.reset.all()


def test_random_windows_resume_at_step_k_with_batches_k_onwards():
    ids = np.arange(300)
    full = take(random_window_batches(ids, 3, 8, seed=4), 10)
    resumed = list(random_window_batches(ids, 3, 8, seed=4, start_step=6, num_steps=10))
    assert_same_batches(full[6:], resumed)


def test_random_windows_need_one_more_token_than_the_window():
    with pytest.raises(DataError, match="too small for one window of 8 steps"):
        next(random_window_batches(np.arange(8), 2, 8))
