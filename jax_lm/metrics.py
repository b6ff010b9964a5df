"""Host-side metrics: perplexity and bits, and the quality of generated text (plain NumPy).

003 asks how to measure the quality of generated text. Likelihood metrics (perplexity, bits)
say how well the model predicts held-out text, not what its samples look like, so the report
here adds three views of N samples:

- diversity: distinct-n, the share of the samples' n-grams that are unique;
- plausibility: the share of the samples' n-grams that occur in held-out text;
- memorisation: the longest span of each sample copied verbatim from the training text.

Samples and texts are sequences of tokens: a `str` (its characters are the tokens), a list or
array of integer ids, or a list of words. Compare like with like: samples and the text they
are compared with must be the same kind. Internally every sequence becomes a `str` with one
character per token (ids i -> chr(i); words through a table shared by the call), so that
n-grams are substrings and C-speed string operations do the work.
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Iterable, Sequence

import numpy as np

Tokens = Any  # str | Sequence[int] | np.ndarray | Sequence[str]


def perplexity(total_nll: float, count: int) -> float:
    """exp(total_nll / count): perplexity from a summed negative log-likelihood (nats).

    Args:
      total_nll: Σ_t −ln p(w_t | w_<t) over the evaluated tokens.
      count: the number of evaluated tokens (> 0).
    """
    if count <= 0:
        raise ValueError(f"count must be > 0, got {count}")
    return math.exp(total_nll / count)


def bits_per_token(total_nll: float, count: int) -> float:
    """total_nll / count / ln 2: cross-entropy in bits (bits per character for char models).

    Equals log2(perplexity).
    """
    if count <= 0:
        raise ValueError(f"count must be > 0, got {count}")
    return total_nll / count / math.log(2.0)


def mean_max_posterior(logits, mask=None) -> float:
    """003's "mean max posterior": the mean over steps of max_v p(v | history).

        p = softmax(logits),   MMP = (1 / |steps|) Σ_steps max_v p_v

    1/V for a uniform model, → 1 for a model sure of every next token. 003 starts sampling
    once it exceeds 0.35.

    Args:
      logits: [..., V] next-token logits at each step.
      mask: optional [...]; steps where it is 0 are left out.
    """
    z = np.asarray(logits, np.float64)
    # max_v softmax(z)_v = 1 / Σ_v exp(z_v − max z)
    max_p = 1.0 / np.exp(z - z.max(axis=-1, keepdims=True)).sum(axis=-1)
    if mask is None:
        return float(max_p.mean())
    mask = np.asarray(mask, bool)
    return float(max_p[mask].mean())


def _as_strings(sequences: Iterable[Tokens]) -> list[str]:
    """Each token sequence as a str with one character per token (see the module doc)."""
    table: dict[Any, int] = {}
    strings = []
    for seq in sequences:
        if isinstance(seq, str):
            strings.append(seq)
            continue
        items = np.asarray(seq)
        if items.size == 0:
            strings.append("")
        elif np.issubdtype(items.dtype, np.integer):
            strings.append("".join(map(chr, items.tolist())))
        else:
            strings.append("".join(chr(table.setdefault(t, len(table))) for t in items.tolist()))
    return strings


def _check_samples(samples: Sequence[Tokens]) -> list:
    if isinstance(samples, str):
        raise TypeError("samples must be a sequence of samples, e.g. a list of strings")
    return list(samples)


def _ngrams(text: str, n: int) -> list[str]:
    """The len(text) − n + 1 contiguous n-grams of `text`, as substrings."""
    return [text[i:i + n] for i in range(len(text) - n + 1)]


def distinct_n(samples: Sequence[Tokens], n: int) -> float:
    """distinct-n (Li et al. 2016): unique n-grams / total n-grams, over all samples.

        distinct-n = |{g : g an n-gram of some sample}| / Σ_s (|s| − n + 1)₊

    n-grams do not cross sample boundaries. (Li et al. normalise by the number of generated
    tokens; the count of n-grams is the common variant and makes distinct-n = 1 for samples
    without a repeated n-gram.) NaN when the samples have no n-gram.
    """
    grams = [g for s in _as_strings(_check_samples(samples)) for g in _ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else math.nan


def ngram_overlap(samples: Sequence[Tokens], reference_tokens: Tokens, n: int) -> float:
    """Share of the samples' n-grams (counted with repeats) that occur in `reference_tokens`.

        overlap-n = Σ_s Σ_{g ∈ n-grams(s)} [g ∈ n-grams(reference)] / Σ_s (|s| − n + 1)₊

    With held-out text as the reference this is a plausibility score: the rate of n-grams that
    real text also uses. NaN when the samples have no n-gram.
    """
    samples = _check_samples(samples)
    *texts, reference = _as_strings(samples + [reference_tokens])
    known = set(_ngrams(reference, n))
    grams = [g for s in texts for g in _ngrams(s, n)]
    return sum(g in known for g in grams) / len(grams) if grams else math.nan


def _suffix_array(text: str) -> np.ndarray:
    """Start positions of the suffixes of `text` in lexicographic order (prefix doubling).

    Manber & Myers (1993): rank every position by its first h tokens; the pair (rank at i,
    rank at i + h) ranks it by its first 2h tokens; stop once all ranks differ. Each round is
    one O(N log N) NumPy sort; there are ⌈log2 R⌉ + 1 rounds for R the length of the longest
    repeated substring (7 rounds, about 1 s, for Tiny Shakespeare's 1.1M characters).
    """
    n = len(text)
    if n == 0:
        return np.zeros((0,), np.int64)
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
    rank = np.unique(codes, return_inverse=True)[1].astype(np.int64).reshape(n)
    h = 1
    while True:
        rank_ahead = np.full(n, -1, np.int64)   # −1: the suffix ends, it sorts first
        rank_ahead[:n - h] = rank[h:]
        pair = rank * (n + 1) + rank_ahead + 1
        order = np.argsort(pair, kind="stable")
        sorted_pair = pair[order]
        rank = np.empty(n, np.int64)
        rank[order] = np.concatenate([[0], np.cumsum(sorted_pair[1:] != sorted_pair[:-1])])
        if rank[order[-1]] == n - 1:
            return order
        h *= 2


def _common_prefix_length(a: str, b: str) -> int:
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


def _longest_match(sample: str, train: str, suffixes: list[int]) -> int:
    """max_i (longest prefix of sample[i:] that occurs in train), given train's suffix array.

    The train suffix sharing the longest prefix with a string is next to the place the string
    would be inserted in suffix order, so each start i costs one binary search of log2 N
    comparisons plus two prefix comparisons.
    """
    best = 0
    for i in range(len(sample)):
        query = sample[i:]
        if len(query) <= best:
            break  # no later start can beat best
        m = len(query)
        # Truncating suffixes to m tokens keeps them sorted, so bisect is valid on them.
        pos = bisect.bisect_left(suffixes, query, key=lambda p: train[p:p + m])
        for j in (pos - 1, pos):
            if 0 <= j < len(suffixes):
                start = suffixes[j]
                best = max(best, _common_prefix_length(query, train[start:start + m]))
    return best


def copied_spans(samples: Sequence[Tokens], train_tokens: Tokens) -> list[int]:
    """`longest_copied_span` of every sample, building the training text's index once."""
    samples = _check_samples(samples)
    *texts, train = _as_strings(samples + [train_tokens])
    suffixes = _suffix_array(train).tolist()
    return [_longest_match(text, train, suffixes) for text in texts]


def longest_copied_span(sample: Tokens, train_tokens: Tokens) -> int:
    """Length of the longest contiguous span of `sample` that occurs verbatim in the training text.

        span(s) = max { j − i : s[i:j] is a substring of train }    (0 if no token is shared)

    A memorisation check: a good sample of a character model copies short spans (words,
    common phrases); a span as long as the sample means it was recited from the training set.

    Complexity: a suffix array of the N training tokens by prefix doubling, O(N log N · log R)
    (R the longest repeat; about 1 s for 1.1M characters), then for each of the |s| start
    positions a binary search over the suffixes, O(|s| · log N · |s|) string work at worst.
    Use `copied_spans` for many samples, which builds the suffix array once.
    """
    return copied_spans([sample], train_tokens)[0]


def quality_report(samples: Sequence[Tokens], train_tokens: Tokens, heldout_tokens: Tokens,
                   ns: Sequence[int] = (1, 2, 3, 4)) -> dict[str, float]:
    """Summary of N generated samples against the training and held-out text.

    Returns a dict with
      ``num_samples``, ``mean_length`` (tokens per sample),
      ``distinct_{n}`` for n in ns (diversity, `distinct_n`),
      ``heldout_overlap_{n}`` for n in ns (plausibility, `ngram_overlap` with held-out text),
      ``copied_span_mean``, ``copied_span_max`` (memorisation, `longest_copied_span` per
      sample against the training text).
    """
    samples = _check_samples(samples)
    report: dict[str, float] = {
        "num_samples": len(samples),
        "mean_length": float(np.mean([len(s) for s in samples])) if samples else math.nan,
    }
    for n in ns:
        report[f"distinct_{n}"] = distinct_n(samples, n)
    for n in ns:
        report[f"heldout_overlap_{n}"] = ngram_overlap(samples, heldout_tokens, n)
    spans = copied_spans(samples, train_tokens)
    report["copied_span_mean"] = float(np.mean(spans)) if spans else math.nan
    report["copied_span_max"] = max(spans, default=0)
    return report
