"""Gradient regimes: how far back in time the loss at step t sends its gradient.

1. **Full BPTT** — `jax.grad` of the summed `token_nll` of a whole sequence: every loss
   term reaches back to the first step (000, and 001 with `bptt_truncate ≥ T`).
2. **Truncated BPTT with carried state** — the same loss on consecutive windows of a
   stream, each window starting from the previous window's final carry. The carry enters
   the jitted step as an input array, so no gradient flows into the previous window: this
   is JAX's `repackage_hidden` (Zaremba et al. 2014; PyTorch's word_language_model).
3. **Per-output window** — `window_token_nll` below: the loss at step t back-propagates
   through at most k + 1 state computations, s_{t−k} … s_t, with s_{t−k−1} held constant.
   This is exactly the gradient of 001's `bptt(…)` with `bptt_truncate = k`.

Regimes 1 and 2 need nothing beyond `model.token_nll`; regime 3 is computed here by
re-running the model on T overlapping windows of k + 1 steps, batched as one [T·B, k+1]
sequence batch, whose initial carries are the (gradient-stopped) states of a plain forward
pass. That costs k + 1 times the recurrent work of a forward pass, all of it in parallel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jax_lm.model import LMConfig, Params, hidden_states, layer_carries, output_logits

Array = jax.Array


def window_token_nll(params: Params, tokens: Array, targets: Array, carry: tuple, *,
                     config: LMConfig, k: int, mask: Array | None = None) -> Array:
    """Per-target NLL whose gradient w.r.t. params is the per-output truncated gradient.

    The value equals `model.token_nll`; only the gradient differs: ∂nll[b, t]/∂θ is taken
    through the steps t−k … t alone (k = 001's `bptt_truncate`).

        step:      0   1   …  t−k−1 │ t−k  …   t
        state:  s₀ → s₁ → … → s_{t−k−1} ┆→ s_{t−k} → … → s_t → loss_t
                        constant ──────┘ └──── gradient flows here ────┘

    Args:
      tokens, targets: [B, T] int ids.
      carry: per-layer initial carries (held constant).
      k: truncation; each window re-runs k + 1 steps.
      mask: optional [B, T], 0 on padding (state held, loss 0).

    Returns:
      nll [B, T].
    """
    if config.stochastic or config.ar or config.tar:
        raise ValueError("the per-output window regime does not support dropout or AR/TAR; "
                         "turn them off")
    if k < 0:
        raise ValueError(f"truncation k must be ≥ 0, got {k}")
    batch, steps = tokens.shape

    # States after every step, prefixed with the initial carry: history[s] feeds step s.
    after = jax.lax.stop_gradient(layer_carries(params, tokens, carry, config=config, mask=mask))
    history = jax.tree.map(lambda c0, cs: jnp.concatenate([c0[None], cs]), carry, after)

    start = jnp.arange(steps) - k                        # (T,) first step of each window
    window = start[:, None] + jnp.arange(k + 1)[None]    # (T, k+1) step indices, may be < 0
    valid = window >= 0                                  # steps before 0 hold the carry
    clipped = jnp.maximum(window, 0)

    def flat(x):  # (T, B, ...) -> (T·B, ...): one sequence per (t, b)
        return x.reshape((steps * batch,) + x.shape[2:])

    init = jax.tree.map(lambda h: flat(h[jnp.maximum(start, 0)]), history)
    win_tokens = flat(jnp.transpose(tokens[:, clipped], (1, 0, 2)))    # (T·B, k+1)
    win_mask = jnp.broadcast_to(valid[:, None, :], (steps, batch, k + 1))
    if mask is not None:
        win_mask = win_mask & jnp.transpose(mask.astype(bool)[:, clipped], (1, 0, 2))
    h, _ = hidden_states(params, win_tokens, init, config=config, mask=flat(win_mask))
    logits = output_logits(params, h[:, -1], config=config)           # (T·B, V)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, flat(targets.T))
    nll = nll.reshape(steps, batch).T                                  # (B, T)
    return nll if mask is None else jnp.where(mask.astype(bool), nll, 0.0)
