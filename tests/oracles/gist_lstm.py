"""Oracle for seed 000: the gist's LSTM language model, its hand BPTT and its errata, in NumPy.

Seed 000 is a minimal NumPy LSTM LM (a public gist after Sundermeyer, Schlüter & Ney,
"LSTM Neural Networks for Language Modeling", Interspeech 2012, with the full-gradient
BPTT of Graves & Schmidhuber, "Framewise Phoneme Classification with Bidirectional LSTM",
Neural Networks 2005). Everything here is re-derived from its equations, in its
column-vector convention and its names, float64 throughout.

Model (one sentence `<s> w_1 … w_n <s>` of word ids, t = 1 … τ−1, Y_0 = S_0 = 0):

    I_{t-1} = [Y_{t-1}; 1; onehot(w_{t-1})]                   (N + K): state, bias unit, word
    ι_t = tanh(W_ι I_{t-1} + w_ιs ⊙ S_{t-1})                   input gate
    φ_t = tanh(W_φ I_{t-1} + w_φs ⊙ S_{t-1})                   forget gate
    G_t = tanh(W I_{t-1})                                       cell input
    S_t = φ_t ⊙ S_{t-1} + ι_t ⊙ G_t                             cell state
    η_t = tanh(W_η I_{t-1} + w_ηs ⊙ S_t)                       output gate (peeks at S_t)
    Y_t = η_t ⊙ tanh(S_t)                                       cell output
    P_t = softmax(W_o Y_t)                                      no output bias
    ll  = Σ_t log P_t[w_t]                                      maximised: W += α ∂ll/∂W

The word one-hot sits at index N + id; ids start at 1 (`<s>`) because id 0 is the name
the gist gives its bias unit (`<BIAS>`), so index N is both the bias and word 0, a word
that never occurs.

Correct BPTT (ascent direction, ∂ll/∂·; "next" quantities are those of step t + 1, zero
after the last step; with Δ_· the derivative w.r.t. a pre-activation):

    Δo_t = onehot(w_t) − P_t                                    ∂ll/∂W_o += Δo_t Y_tᵀ
    ε_t  = W_oᵀ Δo_t + Σ_{g ∈ W, ι, φ, η} W_g[:, :N]ᵀ Δg_{t+1}  ∂ll/∂Y_t (Y_t feeds I_t)
    Δη_t = η'_t ⊙ ε_t ⊙ tanh(S_t)
    dE_t = ε_t ⊙ η_t ⊙ tanh'(S_t) + dE_{t+1} ⊙ φ_{t+1}          ∂ll/∂S_t
           + Δι_{t+1} ⊙ w_ιs + Δφ_{t+1} ⊙ w_φs + Δη_t ⊙ w_ηs
    ΔW_t = ι_t ⊙ G'_t ⊙ dE_t                                   (∂S_t/∂G_t = ι_t)
    Δφ_t = φ'_t ⊙ dE_t ⊙ S_{t-1}                               (∂S_t/∂φ_t = S_{t-1})
    Δι_t = ι'_t ⊙ dE_t ⊙ G_t                                   (∂S_t/∂ι_t = G_t)
    ∂ll/∂W_g += Δg_t I_{t-1}ᵀ,   ∂ll/∂w_ηs += Δη_t ⊙ S_t,   ∂ll/∂w_{ι,φ}s += Δ{ι,φ}_t ⊙ S_{t-1}

The gist's derivation departs from this in the six places listed in `ERRATA`; `bptt`
takes the set of corrections to apply, so `bptt(w, s, frozenset())` is the gist as
written and `bptt(w, s)` the corrected gradient (checked against `jax.grad` in
`tests/test_gist_parity.py`).

Weights are a dict of the gist's arrays (`BLOCKS`), in its shapes: W_ι, W_φ, W, W_η
[N, N + K]; the peepholes w_ιs, w_φs, w_ηs [N, 1]; W_o [K, N]. `to_jax_lm` / `from_jax_lm`
map them to and from `LMConfig(vocab_size=K, cell=LSTM(gate_fn="tanh", peepholes=True),
num_layers=1, hidden_size=N, one_hot=True, output_bias=False)`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

Weights = dict[str, np.ndarray]

# The gist's weight arrays, gates first in jax_lm's block order (i, f, g, o), then W_o.
BLOCKS = ("W_iota_y", "W_iota_s", "W_phi_y", "W_phi_s", "W", "W_eta_y", "W_eta_s", "W_o")
# The gates' full input matrices, in jax_lm's gate order i, f, g, o.
GATE_MATRICES = ("W_iota_y", "W_phi_y", "W", "W_eta_y")
PEEPHOLES = {"i": "W_iota_s", "f": "W_phi_s", "o": "W_eta_s"}

BOS = 1  # `<s>`, both start and end of every sentence; id 0 is the gist's `<BIAS>`

# The corrections to the gist's BPTT. The readers' comments under the gist name three of
# them ("line 146": forget_next; "lines 156, 160": the two peephole ones); the other three
# were found by comparing every term with autodiff.
ERRATA = {
    "eps_sign":
        "ε_t adds the cell-input term W[:, :N]ᵀ ΔW_{t+1}; the gist subtracts it",
    "eps_gate_terms":
        "ε_t misses Y_t's paths through the next step's gates: W_ι,φ,η[:, :N]ᵀ Δ{ι,φ,η}_{t+1}",
    "forget_next":
        "dE_t carries dE_{t+1} through φ_{t+1}; the gist uses φ_t (reader comment)",
    "iota_uses_g":
        "Δι_t = ι'_t ⊙ dE_t ⊙ G_t (∂S_t/∂ι_t = G_t); the gist uses S_{t-1}",
    "phi_peephole_prev":
        "∂ll/∂w_φs accumulates Δφ_t ⊙ S_{t-1}; the gist uses S_t (reader comment)",
    "iota_peephole_prev":
        "∂ll/∂w_ιs accumulates Δι_t ⊙ S_{t-1}; the gist uses S_t (reader comment)",
}
ALL_FIXES = frozenset(ERRATA)


def init_weights(rng: np.random.Generator, hidden_size: int, vocab_size: int,
                 scale: float = 0.1) -> Weights:
    """Every array from U(−scale, +scale), in the gist's shapes (it uses scale 0.1)."""
    n, k = hidden_size, vocab_size
    shapes = {"W_iota_y": (n, n + k), "W_iota_s": (n, 1), "W_phi_y": (n, n + k),
              "W_phi_s": (n, 1), "W": (n, n + k), "W_eta_y": (n, n + k), "W_eta_s": (n, 1),
              "W_o": (k, n)}
    return {name: rng.uniform(-scale, scale, shapes[name]) for name in BLOCKS}


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax of a column, shifted by its max."""
    e = np.exp(x - np.max(x))
    return e / np.sum(e)


def tanh_prime(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """tanh(x) and its derivative 1 − tanh(x)²."""
    y = np.tanh(x)
    return y, 1.0 - y * y


class Activations(NamedTuple):
    """What the forward pass saves for BPTT, in the gist's names; lists indexed by step t.

    `I[t-1]` is the input read at step t; `Y_x[t]` / `Yp_x[t]` are a tanh unit's value and
    derivative (ι, φ, η; `G`/`Gp` the cell input, `H`/`Hp` tanh(S_t)); `Y_o[t]` is P_t.
    Index 0 holds only the initial `Y[0] = S[0] = 0`.
    """

    I: list
    Y_iota: list
    Yp_iota: list
    Y_phi: list
    Yp_phi: list
    G: list
    Gp: list
    S: list
    Y_eta: list
    Yp_eta: list
    H: list
    Hp: list
    Y: list
    Y_o: list


def input_vector(y_prev: np.ndarray, word: int, vocab_size: int) -> np.ndarray:
    """I = [Y_{t-1}; 1; onehot(word)] (N + K, 1); the bias unit is index N = word 0."""
    n = y_prev.shape[0]
    i = np.zeros((n + vocab_size, 1))
    i[:n] += y_prev
    i[n] = 1.0
    i[n + word] = 1.0
    return i


def forward(weights: Weights, sent) -> tuple[float, Activations]:
    """The gist's forward pass over one sentence of ids `<s> … <s>` (τ = len(sent) ≥ 2).

    Returns:
      (ll, activations): ll = Σ_{t=1}^{τ-1} log P_t[sent[t]], natural log, with the gist's
      floor log(max(p, 1e-20)); activations for `bptt`.
    """
    w = weights
    vocab_size, n = w["W_o"].shape
    tau = len(sent)
    a = Activations(*([None] * tau for _ in Activations._fields))
    a.Y[0] = np.zeros((n, 1))
    a.S[0] = np.zeros((n, 1))
    ll = 0.0
    for t in range(1, tau):
        i = a.I[t - 1] = input_vector(a.Y[t - 1], sent[t - 1], vocab_size)
        s_prev = a.S[t - 1]
        a.Y_iota[t], a.Yp_iota[t] = tanh_prime(w["W_iota_y"] @ i + w["W_iota_s"] * s_prev)
        a.Y_phi[t], a.Yp_phi[t] = tanh_prime(w["W_phi_y"] @ i + w["W_phi_s"] * s_prev)
        a.G[t], a.Gp[t] = tanh_prime(w["W"] @ i)
        a.S[t] = a.Y_phi[t] * s_prev + a.Y_iota[t] * a.G[t]
        a.Y_eta[t], a.Yp_eta[t] = tanh_prime(w["W_eta_y"] @ i + w["W_eta_s"] * a.S[t])
        a.H[t], a.Hp[t] = tanh_prime(a.S[t])
        a.Y[t] = a.Y_eta[t] * a.H[t]
        a.Y_o[t] = softmax(w["W_o"] @ a.Y[t])
        ll += math.log(max(a.Y_o[t][sent[t], 0], 1e-20))
    return ll, a


def bptt(weights: Weights, sent, fixes: frozenset = ALL_FIXES) -> Weights:
    """∂ll/∂weights of one sentence by the gist's hand BPTT, with the corrections `fixes`.

    Args:
      weights: the gist's arrays (`BLOCKS`).
      sent: ids `<s> … <s>`.
      fixes: which `ERRATA` to correct; `frozenset()` is the derivation as the gist
        writes it, `ALL_FIXES` (default) the true gradient.

    Returns:
      The ascent direction for every block (the gist's `Dg_*` accumulators), same shapes.
    """
    unknown = set(fixes) - ALL_FIXES
    if unknown:
        raise ValueError(f"unknown fix(es) {sorted(unknown)}; choose from {sorted(ALL_FIXES)}")
    w = weights
    n = w["W_o"].shape[1]
    tau = len(sent)
    _, a = forward(weights, sent)
    grad = {name: np.zeros_like(w[name]) for name in BLOCKS}

    # Deltas of step t + 1, zero after the last step.
    zero = np.zeros((n, 1))
    dl_last, dl_iota_last, dl_phi_last, dl_eta_last, de_last = zero, zero, zero, zero, zero
    for t in reversed(range(1, tau)):
        i, s, s_prev = a.I[t - 1], a.S[t], a.S[t - 1]
        y_phi_next = a.Y_phi[t + 1] if t + 1 < tau else zero

        dl_o = -a.Y_o[t]                                  # onehot(w_t) − P_t
        dl_o[sent[t]] += 1.0
        grad["W_o"] += dl_o @ a.Y[t].T

        # ε_t = ∂ll/∂Y_t: the emission at t, plus Y_t's four uses in step t+1's input I_t.
        through_cell_input = w["W"][:, :n].T @ dl_last
        through_gates = (w["W_iota_y"][:, :n].T @ dl_iota_last
                         + w["W_phi_y"][:, :n].T @ dl_phi_last
                         + w["W_eta_y"][:, :n].T @ dl_eta_last)
        eps = (w["W_o"].T @ dl_o
               + (through_cell_input if "eps_sign" in fixes else -through_cell_input)
               + (through_gates if "eps_gate_terms" in fixes else 0.0))

        dl_eta = a.Yp_eta[t] * eps * a.H[t]
        grad["W_eta_y"] += dl_eta @ i.T
        grad["W_eta_s"] += dl_eta * s

        # dE_t = ∂ll/∂S_t: through Y_t, S_{t+1}, the peepholes of t+1's gates and of η_t.
        de = (eps * a.Y_eta[t] * a.Hp[t]
              + de_last * (y_phi_next if "forget_next" in fixes else a.Y_phi[t])
              + dl_iota_last * w["W_iota_s"]
              + dl_phi_last * w["W_phi_s"]
              + dl_eta * w["W_eta_s"])

        dl = a.Y_iota[t] * a.Gp[t] * de                   # cell input
        grad["W"] += dl @ i.T

        dl_phi = a.Yp_phi[t] * de * s_prev
        grad["W_phi_y"] += dl_phi @ i.T
        grad["W_phi_s"] += dl_phi * (s_prev if "phi_peephole_prev" in fixes else s)

        dl_iota = a.Yp_iota[t] * de * (a.G[t] if "iota_uses_g" in fixes else s_prev)
        grad["W_iota_y"] += dl_iota @ i.T
        grad["W_iota_s"] += dl_iota * (s_prev if "iota_peephole_prev" in fixes else s)

        dl_last, dl_iota_last, dl_phi_last, dl_eta_last, de_last = (
            dl, dl_iota, dl_phi, dl_eta, de)
    return grad


def perplexity_as_written(epoch_ll: float, words: int) -> float:
    """The gist's `2 ** (epoch_ll * -log(2) / words)`, `words` excluding both `<s>`.

    With ll in nats this is exp(−ll · (ln 2)² / words): the nats-to-bits conversion
    multiplies by ln 2 where it should divide, so the exponent is (ln 2)² ≈ 0.48 times too
    small; and the final `<s>` predictions are scored but not counted.
    """
    return 2.0 ** (epoch_ll * -math.log(2) / words)


def perplexity(epoch_ll: float, n_predictions: int) -> float:
    """exp(−ll / n), n counting every predicted token (the final `<s>` of each sentence too)."""
    return math.exp(-epoch_ll / n_predictions)


def sgd_ascent_epoch(weights: Weights, sents, alpha: float,
                     fixes: frozenset = ALL_FIXES) -> tuple[Weights, float]:
    """One epoch of the gist's training: per sentence, W += α ∂ll/∂W.

    The gradient is `bptt(…, fixes)`: the true one by default, the gist's with `frozenset()`.

    Returns:
      (new weights, epoch ll), the ll of each sentence taken before its own update.
    """
    weights = {name: value.copy() for name, value in weights.items()}
    epoch_ll = 0.0
    for sent in sents:
        sent_ll, _ = forward(weights, sent)
        grad = bptt(weights, sent, fixes)
        for name in BLOCKS:
            weights[name] += alpha * grad[name]
        epoch_ll += sent_ll
    return weights, epoch_ll


def train_with_halving(weights: Weights, sents, alpha: float, num_epochs: int,
                       fixes: frozenset = ALL_FIXES) -> tuple[Weights, list[float], list[float]]:
    """The gist's epoch loop: after each epoch, halve α if the epoch ll dropped.

    Returns:
      (weights, the α used in each epoch, each epoch's ll).
    """
    last_ll = -1e99
    alphas, lls = [], []
    for _ in range(num_epochs):
        weights, epoch_ll = sgd_ascent_epoch(weights, sents, alpha, fixes)
        alphas.append(alpha)
        lls.append(epoch_ll)
        if last_ll > epoch_ll:
            alpha /= 2.0
        last_ll = epoch_ll
    return weights, alphas, lls


def to_jax_lm(weights: Weights) -> dict:
    """The gist's arrays as one-layer `jax_lm` params (row vectors, gate order i, f, g, o).

    w_x [K, 4N] is the word columns transposed, w_h [N, 4N] the Y-columns transposed,
    b [4N] the bias-unit column N; row 0 of w_x (the `<BIAS>` word, never read) is zero,
    so that the bias is counted once.
    """
    n = weights["W_o"].shape[1]
    w_x = np.concatenate([weights[g][:, n:].T for g in GATE_MATRICES], axis=1)
    w_x[0] = 0.0
    layer = {
        "w_x": w_x,
        "w_h": np.concatenate([weights[g][:, :n].T for g in GATE_MATRICES], axis=1),
        "b": np.concatenate([weights[g][:, n] for g in GATE_MATRICES]),
        "peep": {gate: weights[name][:, 0] for gate, name in PEEPHOLES.items()},
    }
    return {"layers": [layer], "out": {"w": weights["W_o"].T}}


def from_jax_lm(params: dict) -> Weights:
    """Inverse of `to_jax_lm` for params or their gradients (row 0 of w_x must be zero)."""
    layer = params["layers"][0]
    w_x, w_h, b = (np.asarray(layer[k]) for k in ("w_x", "w_h", "b"))
    if np.any(w_x[0] != 0):
        raise ValueError("w_x row 0 (the `<BIAS>` word) has no place in the gist's weights")
    n = w_h.shape[0]
    weights = {}
    for j, name in enumerate(GATE_MATRICES):
        block = slice(j * n, (j + 1) * n)
        weights[name] = np.concatenate(
            [w_h[:, block].T, b[block, None], w_x[1:, block].T], axis=1)  # (N, N + K)
    for gate, name in PEEPHOLES.items():
        weights[name] = np.asarray(layer["peep"][gate])[:, None]
    weights["W_o"] = np.asarray(params["out"]["w"]).T
    return {name: weights[name] for name in BLOCKS}
