"""Sampling text from a language model: decoding rules and compiled generation.

    prime [B, P] ──apply_lm──▶ carry, logits of the last prime position [B, V]
                                  │
        ┌──────────────── jax.lax.scan over num_tokens steps ─────────────────┐
        │  tok_t         = next_token(key_t, logits, rule, banned)  # [B]     │
        │  logits, carry = apply_lm(params, tok_t[:, None], carry)  # 1 step  │
        └──────────────────────────────────────────────────────────────────────┘
                                  ▼
                      tokens [B, num_tokens], lengths [B]

The whole generation is one compiled call (`generate`); `generate_python_loop` takes the same
steps with the same keys from Python, one jitted step per token, as a reference and a benchmark.

Decoding rules (`SamplingRule`) act on the logits z [B, V] in this order:

1. banned tokens: z_v = −∞. Sampling then draws from p renormalised over the other tokens,
   which is what 001's `generate_sentence` does by re-drawing while the draw is unknown.
2. temperature τ: z / τ (τ = 0 means greedy).
3. top-k: keep the k largest logits (ties with the k-th are kept too).
4. top-p, nucleus sampling (Holtzman et al. 2020): keep the smallest set of most probable
   tokens whose probability mass is ≥ p; the top token is always kept.
5. draw v ~ softmax(z), or v = argmax z when greedy.
6. resample once (003): if the draw is not the argmax a, draw once more and keep the second
   draw. With p the distribution after steps 1–4 this samples
       P(a) = p_a + (1 − p_a)·p_a,      P(v) = (1 − p_a)·p_v   for v ≠ a.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jax_lm import model

Array = jax.Array
Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class SamplingRule:
    """How the next token is picked from the logits (hashable: a jit static argument).

    Attributes:
      temperature: τ, divides the logits; τ < 1 sharpens, τ > 1 flattens, τ = 0 is greedy.
      top_k: keep only the k most probable tokens; 0 turns it off.
      top_p: keep the smallest set of most probable tokens with mass ≥ top_p; 1 turns it off.
      greedy: always take the most probable (non-banned) token.
      resample_once: 003's rule, draw again once when the first draw is not the argmax.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    resample_once: bool = False

    def __post_init__(self):
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature must be ≥ 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be ≥ 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0.0


def banned_mask(banned: tuple[int, ...], vocab_size: int) -> Array:
    """Boolean [V] mask that is True at the `banned` token ids."""
    for token in banned:
        if not 0 <= token < vocab_size:
            raise ValueError(f"banned token {token} is outside the vocabulary [0, {vocab_size})")
    if len(set(banned)) >= vocab_size:
        raise ValueError("every token of the vocabulary is banned; nothing can be sampled")
    return jnp.zeros((vocab_size,), bool).at[jnp.asarray(banned, jnp.int32)].set(True)


def filter_logits(logits: Array, rule: SamplingRule, banned: Array | None = None) -> Array:
    """The logits of the distribution that `rule` draws from (steps 1–4 of the module doc).

    Args:
      logits: [B, V] next-token logits.
      rule: the decoding rule.
      banned: optional bool mask [V] or [B, V]; True marks tokens that must never be drawn.

    Returns:
      [B, V] logits, −∞ at every excluded token; softmax of them is the sampled distribution.
    """
    neg_inf = jnp.asarray(-jnp.inf, logits.dtype)
    if banned is not None:
        logits = jnp.where(banned, neg_inf, logits)
    if not rule.is_greedy and rule.temperature != 1.0:
        logits = logits / jnp.asarray(rule.temperature, logits.dtype)
    if 0 < rule.top_k < logits.shape[-1]:
        kth_largest = jax.lax.top_k(logits, rule.top_k)[0][..., -1:]       # (B, 1)
        logits = jnp.where(logits < kth_largest, neg_inf, logits)
    if rule.top_p < 1.0:
        descending = -jnp.sort(-logits, axis=-1)                             # (B, V)
        probs = jax.nn.softmax(descending, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # mass of the more probable tokens
        # A token is in the nucleus while the mass before it is still short of p; the top
        # token has mass_before = 0 < p, so it is always in.
        in_nucleus = mass_before < rule.top_p
        cutoff = jnp.min(jnp.where(in_nucleus, descending, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, neg_inf, logits)
    return logits


def next_token(key: Array, logits: Array, rule: SamplingRule,
               banned: Array | None = None) -> Array:
    """Pick one token per row: ids [B] (int32) from logits [B, V], following `rule`.

    Each row draws independently. The key is split in two, for the first draw and for 003's
    second draw, whether or not `rule.resample_once` is set, so turning that rule on does not
    change the first draws.
    """
    logits = filter_logits(logits, rule, banned)
    best = jnp.argmax(logits, axis=-1).astype(jnp.int32)                    # (B,)
    if rule.is_greedy:
        return best
    k_first, k_second = jax.random.split(key)
    draw = jax.random.categorical(k_first, logits, axis=-1).astype(jnp.int32)
    if rule.resample_once:
        second = jax.random.categorical(k_second, logits, axis=-1).astype(jnp.int32)
        draw = jnp.where(draw == best, draw, second)
    return draw


class GenerationState(NamedTuple):
    """What one generation step carries to the next."""

    carry: tuple   # per-layer model carries
    logits: Array  # [B, V] logits of the next token
    done: Array    # [B] bool, the row has drawn end_id
    length: Array  # [B] int32, tokens emitted up to and including the first end_id


def _prime(params: Params, prime: Array, *, config: model.LMConfig) -> GenerationState:
    """Run the prime [B, P] through the model: the state before the first generated token."""
    batch, prime_length = prime.shape
    if prime_length < 1:
        raise ValueError("the prime needs at least one token, e.g. a start-of-sentence id")
    logits, carry = model.apply_lm(params, prime, model.init_carry(config, batch), config=config)
    return GenerationState(carry, logits[:, -1], jnp.zeros((batch,), bool),
                           jnp.zeros((batch,), jnp.int32))


def _step(params: Params, state: GenerationState, key: Array, *, config: model.LMConfig,
          rule: SamplingRule, banned: tuple[int, ...], end_id: int | None):
    """One generation step, scan's signature: (state, key) -> (state, token [B])."""
    mask = banned_mask(banned, config.vocab_size) if banned else None
    token = next_token(key, state.logits, rule, mask)                       # (B,)
    done, length = state.done, state.length
    if end_id is None:
        length = length + 1
    else:
        token = jnp.where(done, end_id, token)  # finished rows repeat end_id
        length = length + jnp.logical_not(done).astype(jnp.int32)
        done = done | (token == end_id)
    # Finished rows keep stepping (static shapes); their outputs are overwritten above.
    logits, carry = model.apply_lm(params, token[:, None], state.carry, config=config)
    return GenerationState(carry, logits[:, 0], done, length), token


def _check_end_id(config: model.LMConfig, banned: tuple[int, ...], end_id: int | None):
    if end_id is not None:
        if not 0 <= end_id < config.vocab_size:
            raise ValueError(f"end_id {end_id} is outside the vocabulary [0, {config.vocab_size})")
        if end_id in banned:
            raise ValueError(f"end_id {end_id} is banned, so no row could ever end")


@functools.partial(jax.jit, static_argnames=("num_tokens", "config", "rule", "banned", "end_id"))
def generate(params: Params, prime: Array, num_tokens: int, key: Array, *,
             config: model.LMConfig, rule: SamplingRule = SamplingRule(),
             banned: tuple[int, ...] = (), end_id: int | None = None):
    """Sample `num_tokens` tokens after `prime`, as one compiled `jax.lax.scan`.

    Args:
      params: model parameters (`model.init_lm` layout).
      prime: [B, P] int token ids to condition on (P ≥ 1), e.g. a start token.
      num_tokens: how many tokens to generate (static).
      key: PRNG key; step t uses `jax.random.split(key, num_tokens)[t]`.
      config: the model's `LMConfig` (static).
      rule: the `SamplingRule` (static).
      banned: tuple of token ids that are never emitted, e.g. the unknown token (static).
      end_id: optional end-of-sentence id (static). A row that draws it stops: its later
        positions are filled with end_id.

    Returns:
      tokens [B, num_tokens] int32 (the prime not included) and lengths [B] int32: the number
      of tokens up to and including the first end_id, or num_tokens for a row that never
      drew end_id (always num_tokens without end_id).

    Only arrays are traced, so new keys, primes or parameters of the same shapes reuse the
    compiled function.
    """
    _check_end_id(config, banned, end_id)
    state = _prime(params, prime, config=config)
    step = functools.partial(_step, params, config=config, rule=rule, banned=banned,
                             end_id=end_id)
    state, tokens = jax.lax.scan(step, state, jax.random.split(key, num_tokens))
    return tokens.T, state.length                                           # (B, N), (B,)


_jit_prime = jax.jit(_prime, static_argnames=("config",))
_jit_step = jax.jit(_step, static_argnames=("config", "rule", "banned", "end_id"))


def generate_python_loop(params: Params, prime: Array, num_tokens: int, key: Array, *,
                         config: model.LMConfig, rule: SamplingRule = SamplingRule(),
                         banned: tuple[int, ...] = (), end_id: int | None = None):
    """`generate` with a Python loop over tokens: one jitted step call per token.

    Same arguments, same keys, same results as `generate`; kept as the reference the scan is
    tested against and as the per-token-dispatch baseline of the sampling benchmark.
    """
    _check_end_id(config, banned, end_id)
    state = _jit_prime(params, prime, config=config)
    tokens = []
    for step_key in jax.random.split(key, num_tokens):
        state, token = _jit_step(params, state, step_key, config=config, rule=rule,
                                 banned=banned, end_id=end_id)
        tokens.append(token)
    batch = prime.shape[0]
    stacked = jnp.stack(tokens, axis=1) if tokens else jnp.zeros((batch, 0), jnp.int32)
    return stacked, state.length


def sample_sentences(params: Params, key: Array, *, config: model.LMConfig, start_id: int,
                     end_id: int, unk_id: int | None, num_sentences: int, min_length: int = 0,
                     max_length: int = 50, rule: SamplingRule = SamplingRule(),
                     batch_size: int | None = None, max_rounds: int = 100) -> list[list[int]]:
    """001's sentence generation, vectorised: whole sentences between start and end tokens.

    Each candidate starts from `start_id` and samples until it draws `end_id`; `unk_id` is
    banned (001 re-draws while the draw is unknown, i.e. samples without it), and so is
    `start_id` when it differs from `end_id`. A candidate is
    kept when it ends within `max_length` tokens (end token not counted) and has at least
    `min_length` tokens (001 uses 7); otherwise it is rejected and generated again. Each round
    generates `batch_size` candidates with one `generate` call (max_length + 1 steps, one
    compilation for all rounds) and a fresh key `fold_in(key, round)`.

    Returns:
      `num_sentences` lists of token ids, without the start and end tokens.

    Raises:
      RuntimeError: fewer than `num_sentences` candidates were valid after `max_rounds` rounds
        (e.g. the model nearly always ends before `min_length`, or never ends by `max_length`).
    """
    if not 0 <= min_length <= max_length:
        raise ValueError(f"need 0 ≤ min_length ≤ max_length, got {min_length}, {max_length}")
    if unk_id is not None and unk_id == end_id:
        raise ValueError("unk_id and end_id must differ: the unknown token is banned")
    # Neither the unknown token nor a second start token can occur inside a sentence.
    banned = tuple(sorted({t for t in (unk_id, start_id) if t is not None and t != end_id}))
    batch = num_sentences if batch_size is None else batch_size
    prime = jnp.full((batch, 1), start_id, jnp.int32)
    sentences: list[list[int]] = []
    for round_ in range(max_rounds):
        if len(sentences) >= num_sentences:
            break
        tokens, lengths = generate(params, prime, max_length + 1, jax.random.fold_in(key, round_),
                                   config=config, rule=rule, banned=banned, end_id=end_id)
        for row, length in zip(np.asarray(tokens), np.asarray(lengths)):
            ended = row[length - 1] == end_id
            if ended and length - 1 >= min_length and len(sentences) < num_sentences:
                sentences.append(row[:length - 1].tolist())
    if len(sentences) < num_sentences:
        raise RuntimeError(
            f"sample_sentences: only {len(sentences)} of {num_sentences} sentences were valid "
            f"after max_rounds={max_rounds} rounds of {batch} candidates (a valid sentence draws "
            f"end_id={end_id} after {min_length} to {max_length} tokens); the model may end "
            f"sentences too early or never; lower min_length, raise max_length or max_rounds")
    return sentences
