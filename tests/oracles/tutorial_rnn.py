"""Oracle for seed 001: the vanilla RNN language model of the tutorial, in NumPy float64.

Re-derived from the document's equations (column vectors, one-hot words, no biases):

    s_t = tanh(U x_t + W s_{t-1})        s_{-1} = 0              U [H, C], W [H, H]
    o_t = softmax(V s_t)                                         V [C, H]
    L   = −Σ_t log o_t[y_t]              (summed over a sentence; `loss` divides by N)

Because x_t is one-hot, U x_t is the column U[:, x_t].

Backpropagation through time with truncation k (the document's `bptt_truncate`): the loss
at step t sends its gradient through the state computations t, t−1, …, max(0, t−k) only.
With δo_t = o_t − onehot(y_t) and δ_τ the gradient w.r.t. the pre-activation of s_τ:

    ∂L/∂V += δo_t s_tᵀ
    δ_t    = (Vᵀ δo_t) ⊙ (1 − s_t²)
    for τ = t, t−1, …, max(0, t−k):
        ∂L/∂W         += δ_τ s_{τ−1}ᵀ
        ∂L/∂U[:, x_τ] += δ_τ
        δ_{τ−1}        = (Wᵀ δ_τ) ⊙ (1 − s_{τ−1}²)

k ≥ T − 1 gives the full gradient of L.

Parameters are a dict {"U", "V", "W"} in the document's shapes; `from_jax_lm` / `to_jax_lm`
map them to and from a one-layer `jax_lm` model built with
`LMConfig(cell=RNN(use_bias=False), num_layers=1, one_hot=True, output_bias=False)`:
w_x = Uᵀ, w_h = Wᵀ, out.w = Vᵀ (jax_lm uses row vectors).
"""

from __future__ import annotations

import numpy as np

Params = dict[str, np.ndarray]


def init_params(rng: np.random.Generator, vocab_size: int, hidden_size: int) -> Params:
    """U(−1/√n, 1/√n) with n the number of incoming connections (001, after Glorot & Bengio)."""
    c, h = vocab_size, hidden_size
    return {
        "U": rng.uniform(-np.sqrt(1.0 / c), np.sqrt(1.0 / c), (h, c)),
        "V": rng.uniform(-np.sqrt(1.0 / h), np.sqrt(1.0 / h), (c, h)),
        "W": rng.uniform(-np.sqrt(1.0 / h), np.sqrt(1.0 / h), (h, h)),
    }


def softmax(z: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, shifted by the max for stability."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def forward(params: Params, x) -> tuple[np.ndarray, np.ndarray]:
    """Run one sentence of word ids x [T].

    Returns:
      o [T, C]: next-word distributions.
      s [T + 1, H]: states; s[0] is the initial zero state and s[t + 1] the state after
        reading x[t] (the document stores the initial state at index −1 instead).
    """
    U, V, W = params["U"], params["V"], params["W"]
    steps = len(x)
    s = np.zeros((steps + 1, W.shape[0]))
    o = np.zeros((steps, V.shape[0]))
    for t in range(steps):
        s[t + 1] = np.tanh(U[:, x[t]] + W @ s[t])
        o[t] = softmax(V @ s[t + 1])
    return o, s


def sentence_loss(params: Params, x, y) -> float:
    """−Σ_t log o_t[y_t] of one sentence."""
    o, _ = forward(params, x)
    return float(-np.sum(np.log(o[np.arange(len(y)), y])))


def total_loss(params: Params, xs, ys) -> float:
    """Summed cross-entropy over sentences (the document's `calculate_total_loss`)."""
    return sum(sentence_loss(params, x, y) for x, y in zip(xs, ys))


def loss(params: Params, xs, ys) -> float:
    """Mean cross-entropy per word: total loss / number of target words (`calculate_loss`)."""
    return total_loss(params, xs, ys) / sum(len(y) for y in ys)


def bptt(params: Params, x, y, bptt_truncate: int) -> Params:
    """Gradient of `sentence_loss` truncated to `bptt_truncate` steps back (module docstring)."""
    U, V, W = params["U"], params["V"], params["W"]
    o, s = forward(params, x)           # s[t + 1] is the document's s_t
    grads = {name: np.zeros_like(p) for name, p in params.items()}
    delta_o = o.copy()
    delta_o[np.arange(len(y)), y] -= 1.0  # ∂L/∂(V s_t) = o_t − onehot(y_t)
    for t in reversed(range(len(y))):
        grads["V"] += np.outer(delta_o[t], s[t + 1])
        delta = (V.T @ delta_o[t]) * (1.0 - s[t + 1] ** 2)
        for tau in range(t, max(0, t - bptt_truncate) - 1, -1):
            grads["W"] += np.outer(delta, s[tau])          # s[tau] = s_{τ−1}
            grads["U"][:, x[tau]] += delta
            delta = (W.T @ delta) * (1.0 - s[tau] ** 2)
    return grads


def gradient_check(loss_fn, params: Params, grads: Params, h: float = 1e-3,
                   threshold: float = 1e-2) -> list[tuple[str, tuple, float]]:
    """The document's numerical gradient check, element by element.

    For every scalar θ of every parameter, the central difference
    (J(θ + h) − J(θ − h)) / 2h is compared with `grads`; the relative error is
    |a − b| / (|a| + |b|) (taken as 0 when both are exactly 0, as for the columns of U of
    words that do not occur).

    Args:
      loss_fn: params -> float, the total loss J.
      params: the point to check at (not modified).
      grads: the claimed gradient, same structure as params.

    Returns:
      The failures as (name, index, relative error), empty when the check passes.
    """
    failures = []
    for name in params:
        probe = {k: v.copy() for k, v in params.items()}
        for ix in np.ndindex(params[name].shape):
            original = probe[name][ix]
            probe[name][ix] = original + h
            plus = loss_fn(probe)
            probe[name][ix] = original - h
            minus = loss_fn(probe)
            probe[name][ix] = original
            estimate = (plus - minus) / (2 * h)
            claimed = grads[name][ix]
            scale = abs(claimed) + abs(estimate)
            error = 0.0 if scale == 0 else abs(claimed - estimate) / scale
            if error > threshold:
                failures.append((name, ix, error))
    return failures


def sgd_step(params: Params, x, y, learning_rate: float, bptt_truncate: int) -> Params:
    """θ ← θ − lr · ∂L/∂θ on one sentence (the document's `sgd_step`), as a new dict."""
    grads = bptt(params, x, y, bptt_truncate)
    return {name: p - learning_rate * grads[name] for name, p in params.items()}


def train_with_sgd(params: Params, xs, ys, learning_rate: float, nepoch: int,
                   evaluate_loss_after: int = 1, bptt_truncate: int = 4):
    """The document's outer loop: per-sentence SGD, rate halved when the evaluated loss rises.

    Every `evaluate_loss_after` epochs, *before* that epoch's updates, the mean loss is
    evaluated; if it is higher than the previous evaluation the rate is halved.

    Returns:
      (params, losses, rates): final params, the evaluated losses, and the rate each epoch used.
    """
    losses, rates = [], []
    for epoch in range(nepoch):
        if epoch % evaluate_loss_after == 0:
            losses.append(loss(params, xs, ys))
            if len(losses) > 1 and losses[-1] > losses[-2]:
                learning_rate *= 0.5
        rates.append(learning_rate)
        for x, y in zip(xs, ys):
            params = sgd_step(params, x, y, learning_rate, bptt_truncate)
    return params, losses, rates


def from_jax_lm(lm_params) -> Params:
    """{"U", "V", "W"} from the params of the matching one-layer jax_lm model."""
    layer = lm_params["layers"][0]
    return {"U": np.asarray(layer["w_x"]).T, "V": np.asarray(lm_params["out"]["w"]).T,
            "W": np.asarray(layer["w_h"]).T}


def to_jax_lm(params: Params) -> dict:
    """The inverse of `from_jax_lm`: a jax_lm params dict of NumPy arrays."""
    return {"layers": [{"w_x": params["U"].T, "w_h": params["W"].T}],
            "out": {"w": params["V"].T}}
