"""Oracles for the seed documents' update rules and learning-rate schedules, NumPy/Python.

Parameter updates are elementwise, so each takes one parameter array θ, its gradient g and
its optimizer state, and returns new ones (map them over a pytree with `jax.tree.map`):

- SGD (001 `sgd_step`, 003):  θ ← θ − η g
- Adagrad (003; Duchi et al. 2011, as in Karpathy's min-char-rnn):
      G ← G + g²;   θ ← θ − η g / √(G + ε),  G₀ = 0, ε = 1e-8 inside the square root
- Adam (003; Kingma & Ba 2015, Algorithm 1):
      m ← β₁ m + (1 − β₁) g;   v ← β₂ v + (1 − β₂) g²
      m̂ = m / (1 − β₁ᵗ);       v̂ = v / (1 − β₂ᵗ)
      θ ← θ − η m̂ / (√v̂ + ε)                                         (ε outside the root)
- Global-norm clipping (Pascanu et al. 2013): g ← g · min(1, c / ‖g‖₂), the norm taken over
  all parameters together.

Learning-rate rules, as the plain loops of their sources; each returns the rate in force
after every evaluation:

- 000: `if last_ll > epoch_ll: alpha /= 2`, then `last_ll = epoch_ll` (last_ll starts at
  −1e99, so the first epoch never halves).
- 001: `if len(losses) > 1 and losses[-1] > losses[-2]: lr *= 0.5`.
- PyTorch word_language_model: a new best validation loss is kept, anything else
  (a tie included) divides the rate by 4.
- Zaremba et al. 2014: after epoch `start`, the rate is divided by `divisor` each epoch.
"""

from __future__ import annotations

import numpy as np


def sgd_update(theta: np.ndarray, grad: np.ndarray, lr: float) -> np.ndarray:
    """θ − η g."""
    return theta - lr * grad


def adagrad_update(theta, grad, memory, lr: float, eps: float = 1e-8):
    """One Adagrad step; `memory` (G, start from zeros) is the running sum of g².

    Returns (θ, G).
    """
    memory = memory + grad * grad
    return theta - lr * grad / np.sqrt(memory + eps), memory


def adam_update(theta, grad, m, v, step: int, lr: float, b1: float = 0.9, b2: float = 0.999,
                eps: float = 1e-8):
    """One Adam step; `step` is t, counted from 1; m and v start from zeros.

    Returns (θ, m, v).
    """
    m = b1 * m + (1.0 - b1) * grad
    v = b2 * v + (1.0 - b2) * grad * grad
    m_hat = m / (1.0 - b1**step)
    v_hat = v / (1.0 - b2**step)
    return theta - lr * m_hat / (np.sqrt(v_hat) + eps), m, v


def clip_by_global_norm(grads: list[np.ndarray], max_norm: float) -> list[np.ndarray]:
    """Rescale a list of gradient arrays so that their joint L2 norm is at most max_norm."""
    norm = np.sqrt(sum(np.sum(g * g) for g in grads))
    scale = min(1.0, max_norm / norm)
    return [g * scale for g in grads]


def halve_when_likelihood_drops(alpha: float, epoch_lls) -> list[float]:
    """000's rule on a sequence of epoch log-likelihoods."""
    rates, last_ll = [], -1e99
    for epoch_ll in epoch_lls:
        if last_ll > epoch_ll:
            alpha /= 2.0
        last_ll = epoch_ll
        rates.append(alpha)
    return rates


def halve_when_loss_rises(lr: float, evaluated_losses) -> list[float]:
    """001's rule on the sequence of evaluated losses."""
    rates, losses = [], []
    for value in evaluated_losses:
        losses.append(value)
        if len(losses) > 1 and losses[-1] > losses[-2]:
            lr *= 0.5
        rates.append(lr)
    return rates


def quarter_when_not_best(lr: float, val_losses) -> list[float]:
    """PyTorch word_language_model's rule (its `not best_val_loss` is `best is None` here:
    the two differ only for a validation loss of exactly 0)."""
    rates, best = [], None
    for value in val_losses:
        if best is None or value < best:
            best = value
        else:
            lr /= 4.0
        rates.append(lr)
    return rates


def zaremba_rates(base: float, num_epochs: int, start: int, divisor: float) -> list[float]:
    """Rates of epochs 1..num_epochs: `base` through epoch `start`, then ÷ divisor per epoch."""
    rates, lr = [], base
    for epoch in range(1, num_epochs + 1):
        if epoch > start:
            lr /= divisor
        rates.append(lr)
    return rates
