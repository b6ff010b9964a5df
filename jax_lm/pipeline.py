"""The data a run reads: its corpus, its training batches by step, and evaluation passes.

Everything here is a function of the config (and, for training batches, of the step), so
a resumed run reads exactly the batches an uninterrupted one would:

    corpus = load_run_corpus(config)                     # tokenized, vocabulary built
    batches = train_batches(config, corpus, start_step)  # batch k depends on k alone
    for batch in prefetch_to_device(batches): ...        # copied to the device 2 ahead
"""

from __future__ import annotations

import collections
import functools
from typing import Iterator

import jax
import numpy as np

from jax_lm import batching, data

PREFETCH = 2  # batches copied to the device ahead of the step that reads them


def tokenizer_for(config) -> data.Tokenizer:
    """The tokenizer that `config.data` describes."""
    d = config.data
    return data.Tokenizer(level=d.level, split=d.word_split, lowercase=d.lowercase,
                          bos=d.bos or None, eos=d.eos or None)


def load_run_corpus(config, vocab: data.Vocab | None = None) -> data.Corpus:
    """The corpus that a config names (with a fixed vocabulary when resuming/evaluating)."""
    d = config.data
    tokenizer = tokenizer_for(config)
    load = functools.partial(data.load_corpus, d.source, tokenizer, max_vocab=d.max_vocab or None,
                             min_count=d.min_count, unk=d.unk or None,
                             cache_dir=d.cache_dir or None, errors=d.errors,
                             train_fraction=d.train_fraction)
    corpus = load(vocab=vocab)
    if vocab is None and d.vocab_from_train_lines and d.max_train_lines:
        # 000 builds its vocabulary from the sentences it trains on: count those lines only,
        # then encode every split again with that vocabulary (tokenization is cached).
        ids = train_ids(config, corpus)
        counts = collections.Counter(corpus.vocab.decode(ids))
        others = set(corpus.vocab.tokens) - set(counts)
        corpus = load(vocab=data.build_vocab(
            counts, reserved=(tokenizer.bos, tokenizer.eos), unk=d.unk or None,
            max_size=d.max_vocab or None, min_count=d.min_count, other_types=others))
    return corpus


def train_sentences(config, corpus) -> list[np.ndarray]:
    """The training lines in use: all, or the first `data.max_train_lines`."""
    sentences = corpus.sentences("train")
    return sentences[: config.data.max_train_lines] if config.data.max_train_lines else sentences


def train_ids(config, corpus) -> np.ndarray:
    """The training stream in use: the ids of `train_sentences`, concatenated."""
    ids, n = corpus.splits["train"], config.data.max_train_lines
    return ids[: corpus.line_offsets["train"][min(n, len(corpus.line_offsets["train"]) - 1)]] \
        if n else ids


def steps_per_epoch(config, corpus) -> int:
    """Training steps in one pass over the training data (≥ 1)."""
    d = config.data
    if d.batcher == "stream":
        return batching.stream_layout(len(train_ids(config, corpus)), d.batch_size,
                                      d.seq_len).num_windows
    if d.batcher == "sentences":
        return -(-len(train_sentences(config, corpus)) // d.batch_size)
    return max(1, len(train_ids(config, corpus)) // (d.batch_size * d.seq_len))


def train_batches(config, corpus, start_step: int) -> Iterator[batching.Batch]:
    """Training batches from `start_step` on, forever (epochs follow each other)."""
    d = config.data
    if d.batcher == "stream":
        return batching.stream_batches(train_ids(config, corpus), d.batch_size, d.seq_len,
                                       start_step=start_step)
    if d.batcher == "sentences":
        return batching.sentence_batches(train_sentences(config, corpus), d.batch_size,
                                         seed=config.seed, shuffle=d.shuffle, bucket=d.bucket,
                                         start_step=start_step, length_multiple=d.pad_multiple)
    return batching.random_window_batches(train_ids(config, corpus), d.batch_size, d.seq_len,
                                          seed=config.seed, start_step=start_step)


def eval_batches(config, corpus, split: str) -> Iterator[batching.Batch]:
    """One pass scoring every target of `split` once (train: the training subset in use)."""
    d = config.data
    batch_size = d.eval_batch_size or d.batch_size
    if d.batcher == "sentences":
        sentences = (train_sentences(config, corpus) if split == "train"
                     else corpus.sentences(split))
        return batching.sentence_batches(sentences, batch_size, shuffle=False, bucket=False,
                                         num_epochs=1, length_multiple=d.pad_multiple)
    ids = train_ids(config, corpus) if split == "train" else corpus.splits[split]
    return batching.stream_batches(ids, batch_size, d.seq_len, num_epochs=1)


def prefetch_to_device(batches: Iterator[batching.Batch], size: int = PREFETCH,
                       put=jax.device_put) -> Iterator[batching.Batch]:
    """`batches`, each copied to the device(s) by `put` (default: `jax.device_put` to the
    default device) `size` batches ahead.

    The copy is asynchronous: batch n + 1 travels to the accelerator while step n runs,
    instead of at the call of step n + 1. On a CPU backend it changes nothing but where
    the batch lives. Yields the same batches in the same order; reads at most `size` past
    the one it yields.
    """
    if size < 1:
        raise ValueError(f"prefetch size must be ≥ 1, got {size}")
    ahead: collections.deque = collections.deque()
    for batch in batches:
        ahead.append(put(batch))
        if len(ahead) > size:
            yield ahead.popleft()
    while ahead:
        yield ahead.popleft()
