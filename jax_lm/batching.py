"""Token ids to batches: a stateful stream, padded sentences, and random windows.

Every batcher is deterministic given its arguments and a seed, and resumable: step k of a run
is a pure function of (data, settings, seed, k), so ``start_step=k`` yields exactly batches
k, k+1, … of an uninterrupted run. Epoch e's shuffle comes from ``(seed, e)`` alone.

Batches are host-side NumPy arrays in a `Batch`:

    inputs   int32[B, T]    token ids read by the model
    targets  int32[B, T]    the token that follows each input
    mask     float32[B, T]  1 where the target is real, 0 on padding (padded ids are 0)
    reset    bool[B]        True where a row starts a new sequence, so its carry must start
                            from the initial state; False where it continues the previous
                            batch's row (the stream batcher carries state across windows)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from jax_lm.data import DataError


class Batch(NamedTuple):
    """One batch; shapes in the module docstring."""

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    reset: np.ndarray


def _rng(seed: int, *stream: int) -> np.random.Generator:
    if seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed}")
    return np.random.default_rng((seed, *stream))


def _steps(start_step: int, stop: int | None) -> Iterator[int]:
    if start_step < 0:
        raise DataError(f"start_step must be >= 0, got {start_step}")
    return iter(range(start_step, stop)) if stop is not None else itertools.count(start_step)


# ----------------------------------------------------------------------------- stream


class StreamLayout(NamedTuple):
    """Where each of the B rows sits in the stream.

    Attributes:
        starts: int64[B], the stream position of each row's first input.
        lengths: int64[B], the number of targets in each row (all >= 1).
        num_windows: windows of T steps per epoch.
    """

    starts: np.ndarray
    lengths: np.ndarray
    num_windows: int


def stream_layout(num_tokens: int, batch_size: int, seq_len: int) -> StreamLayout:
    """Lays a stream of `num_tokens` ids out as `batch_size` parallel rows.

    The stream is cut into B contiguous rows that are read in parallel, T steps (one window)
    at a time, the hidden state carried from each window to the next: the layout of Zaremba
    et al. (2014) and PyTorch's word_language_model. Two differences make every token but the
    first a target exactly once: row r+1 starts where row r ends (the boundary token is row
    r's last target and row r+1's first input), and the remainder is spread over the first
    rows (row lengths differ by at most one) instead of dropped. The last window is padded
    to T and masked. 13 tokens t0..t12, B = 3, T = 3::

        stream   t0 t1 t2 t3 t4 t5 t6 t7 t8 t9 t10 t11 t12      12 targets, 4 per row

                     window 0       window 1               window 0       window 1
        inputs   r0  t0 t1  t2  |  t3  ·  ·     targets  r0  t1  t2  t3  |  t4  ·  ·
                 r1  t4 t5  t6  |  t7  ·  ·              r1  t5  t6  t7  |  t8  ·  ·
                 r2  t8 t9  t10 |  t11 ·  ·              r2  t9  t10 t11 |  t12 ·  ·
        mask         1  1   1   |  1   0  0              (· = padding, id 0)
        reset        True       |  False

    Raises:
        DataError: when some row would get no target (fewer than B + 1 tokens).
    """
    if batch_size < 1 or seq_len < 1:
        raise DataError(
            f"batch size and sequence length must be >= 1, got {batch_size} and {seq_len}"
        )
    targets = num_tokens - 1
    if targets < batch_size:
        raise DataError(
            f"a stream of {num_tokens} tokens is too small for one batch of {batch_size} rows "
            f"(need at least {batch_size + 1} tokens)"
        )
    base, extra = divmod(targets, batch_size)
    rows = np.arange(batch_size)
    lengths = base + (rows < extra)
    starts = rows * base + np.minimum(rows, extra)
    return StreamLayout(starts, lengths, -(-int(lengths.max()) // seq_len))


def stream_batch(ids: np.ndarray, layout: StreamLayout, seq_len: int, window: int) -> Batch:
    """Window `window` (0 <= window < layout.num_windows) of a stream laid out by `layout`.

    Args:
        ids: int[N] the whole split.
    Returns:
        A `Batch` of shape [B, T]; `reset` is True only in window 0.
    """
    steps = window * seq_len + np.arange(seq_len)  # (T,)
    mask = steps[None, :] < layout.lengths[:, None]  # (B, T)
    positions = np.where(mask, layout.starts[:, None] + steps[None, :], 0)  # (B, T)
    ids = np.asarray(ids)
    inputs = np.where(mask, ids[positions], 0).astype(np.int32)
    targets = np.where(mask, ids[positions + 1], 0).astype(np.int32)
    reset = np.full(len(layout.starts), window == 0)
    return Batch(inputs, targets, mask.astype(np.float32), reset)


def stream_batches(
    ids: np.ndarray,
    batch_size: int,
    seq_len: int,
    *,
    start_step: int = 0,
    num_epochs: int | None = None,
) -> Iterator[Batch]:
    """Stream batches, epoch after epoch (every epoch reads the same windows in order).

    Step k is window ``k % num_windows`` of epoch ``k // num_windows``. One epoch
    (``num_epochs=1``) is an evaluation pass that scores every token but the first once.

    Args:
        ids: int[N] token ids of one split.
        batch_size: B parallel rows.
        seq_len: T steps per window (the truncated-BPTT length).
        start_step: the first step to yield.
        num_epochs: stop after this many epochs; None runs forever.
    """
    layout = stream_layout(len(ids), batch_size, seq_len)
    stop = None if num_epochs is None else num_epochs * layout.num_windows
    for step in _steps(start_step, stop):
        yield stream_batch(ids, layout, seq_len, step % layout.num_windows)


# ----------------------------------------------------------------------------- sentences


def sentence_epoch_plan(
    lengths: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    bucket: bool = True,
    pool_batches: int = 100,
) -> list[np.ndarray]:
    """Which sentences go into which batch during one epoch.

    Without bucketing: corpus order (or a permutation drawn from ``(seed, epoch)``) cut into
    consecutive batches. With bucketing (B > 1 only): that order is cut into pools of
    ``pool_batches * B`` sentences, each pool is sorted by length (stably) and cut into
    batches, so a batch holds sentences of similar length and needs little padding; the
    batches are then shuffled when `shuffle` is set.

    Args:
        lengths: int[S] length of each sentence.
    Returns:
        int64 index arrays, one per batch, ``ceil(S / B)`` of them; only the last may be short.
    """
    rng = _rng(seed, epoch)
    order = rng.permutation(len(lengths)) if shuffle else np.arange(len(lengths))
    if not (bucket and batch_size > 1):
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    pool = pool_batches * batch_size
    batches = []
    for i in range(0, len(order), pool):
        chunk = order[i : i + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    if shuffle:
        # keep the one short batch last, so that all other batches are full
        full = [b for b in batches if len(b) == batch_size]
        short = [b for b in batches if len(b) < batch_size]
        batches = [full[i] for i in rng.permutation(len(full))] + short
    return batches


def sentence_batch(
    sentences: Sequence[np.ndarray],
    indices: np.ndarray,
    batch_size: int,
    *,
    length_multiple: int = 1,
) -> Batch:
    """Pads the chosen sentences into one batch.

    Sentence s gives inputs ``s[:-1]`` and targets ``s[1:]``. T is the longest of them,
    rounded up to `length_multiple` (to bound the number of distinct shapes a jitted step
    sees). Rows beyond ``len(indices)`` (a short last batch) are all padding.

    Returns:
        A `Batch` of shape [batch_size, T]; `reset` is all True.
    """
    longest = max(len(sentences[i]) - 1 for i in indices)
    width = -(-longest // length_multiple) * length_multiple
    inputs = np.zeros((batch_size, width), np.int32)
    targets = np.zeros((batch_size, width), np.int32)
    mask = np.zeros((batch_size, width), np.float32)
    for row, i in enumerate(indices):
        s = sentences[i]
        inputs[row, : len(s) - 1] = s[:-1]
        targets[row, : len(s) - 1] = s[1:]
        mask[row, : len(s) - 1] = 1.0
    return Batch(inputs, targets, mask, np.ones(batch_size, bool))


def sentence_batches(
    sentences: Sequence[np.ndarray],
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    bucket: bool = True,
    start_step: int = 0,
    num_epochs: int | None = None,
    length_multiple: int = 1,
    pool_batches: int = 100,
) -> Iterator[Batch]:
    """One sentence per row, padded and masked, each row starting from the initial state.

    Sentences shorter than 2 tokens (nothing to predict) are left out. With
    ``batch_size=1, bucket=False`` (bucketing is off at B = 1 anyway) this is the
    per-sentence regime of seeds 000 and 001: each batch is one whole sentence, inputs
    ``ids[:-1]``, targets ``ids[1:]``, in corpus order or in a fresh seeded shuffle per epoch.

    Args:
        sentences: int arrays, one per sentence, framed by the tokenizer's bos/eos tokens.
        batch_size: B sentences per batch.
        seed, shuffle, bucket, pool_batches: see `sentence_epoch_plan`.
        start_step: the first step to yield (step k is batch ``k % per_epoch`` of epoch
            ``k // per_epoch``, with ``per_epoch = ceil(S / B)``).
        num_epochs: stop after this many epochs; None runs forever.
        length_multiple: see `sentence_batch`.
    """
    kept = [np.asarray(s) for s in sentences if len(s) >= 2]
    if len(kept) < batch_size:
        raise DataError(
            f"{len(kept)} sentences of 2 or more tokens are too few for one batch of {batch_size}"
        )
    lengths = np.array([len(s) for s in kept])
    per_epoch = -(-len(kept) // batch_size)
    stop = None if num_epochs is None else num_epochs * per_epoch
    plan_epoch, plan = None, None
    for step in _steps(start_step, stop):
        epoch, index = divmod(step, per_epoch)
        if epoch != plan_epoch:
            plan_epoch = epoch
            plan = sentence_epoch_plan(
                lengths,
                batch_size,
                seed=seed,
                epoch=epoch,
                shuffle=shuffle,
                bucket=bucket,
                pool_batches=pool_batches,
            )
        yield sentence_batch(kept, plan[index], batch_size, length_multiple=length_multiple)


# ----------------------------------------------------------------------------- random windows


def random_window_batch(
    ids: np.ndarray, batch_size: int, seq_len: int, *, seed: int, step: int
) -> Batch:
    """B windows of T tokens at offsets drawn from ``(seed, step)`` (nanoGPT's ``get_batch``).

    Returns:
        A `Batch` of shape [B, T], no padding, `reset` all True.
    """
    ids = np.asarray(ids)
    if len(ids) < seq_len + 1:
        raise DataError(
            f"a stream of {len(ids)} tokens is too small for one window of {seq_len} steps "
            f"(need at least {seq_len + 1} tokens)"
        )
    offsets = _rng(seed, step).integers(0, len(ids) - seq_len, size=batch_size)  # (B,)
    positions = offsets[:, None] + np.arange(seq_len)[None, :]  # (B, T)
    return Batch(
        ids[positions].astype(np.int32),
        ids[positions + 1].astype(np.int32),
        np.ones((batch_size, seq_len), np.float32),
        np.ones(batch_size, bool),
    )


def random_window_batches(
    ids: np.ndarray,
    batch_size: int,
    seq_len: int,
    *,
    seed: int = 0,
    start_step: int = 0,
    num_steps: int | None = None,
) -> Iterator[Batch]:
    """`random_window_batch` for steps start_step, start_step + 1, … (up to `num_steps` in all)."""
    for step in _steps(start_step, num_steps):
        yield random_window_batch(ids, batch_size, seq_len, seed=seed, step=step)
