"""Oracle for seed 003: a two-layer CIFG language model with hand-derived BPTT, NumPy float64.

003 survives only as a README (a multi-layer LSTM with coupled input and forget gates, no
peepholes, cross-entropy loss), so this uses the standard CIFG equations (Greff et al. 2017,
"LSTM: A Search Space Odyssey"), written with **column vectors** and one weight matrix per
gate. For layer l with input x_t (a one-hot word for layer 1, an embedding row when the
model has one, and h¹_t for layer 2):

    a^q_t = W_q x_t + R_q h_{t−1} + b_q          q ∈ {i, g, o}; W_q [H, I], R_q [H, H], b_q [H]
    i_t = σ(a^i_t)      g_t = tanh(a^g_t)      o_t = σ(a^o_t)
    c_t = (1 − i_t) ⊙ c_{t−1} + i_t ⊙ g_t        (forget gate f_t = 1 − i_t)
    h_t = o_t ⊙ tanh(c_t)                        h_{−1} = c_{−1} = 0

    p_t = softmax(W_y h²_t + b_y)                W_y [V, H], b_y [V]
    L   = −Σ_t log p_t[y_t]

Backward through time (full sequence), with dh_t the total gradient reaching h_t (from the
output at t, from step t+1, and for layer 1 from layer 2's input) and dc_{t+1}^← the part
of ∂L/∂c_t that comes back from step t+1:

    dp_t  = p_t − onehot(y_t);   ∂L/∂W_y += dp_t h²_tᵀ;   ∂L/∂b_y += dp_t;   dh²_t += W_yᵀ dp_t
    dc_t  = dh_t ⊙ o_t ⊙ (1 − tanh²c_t) + dc_{t+1}^←
    da^o  = dh_t ⊙ tanh(c_t) ⊙ o_t (1 − o_t)
    da^i  = dc_t ⊙ (g_t − c_{t−1}) ⊙ i_t (1 − i_t)       (∂c_t/∂i_t = g_t − c_{t−1}: coupling)
    da^g  = dc_t ⊙ i_t ⊙ (1 − g_t²)
    dc_t^← = dc_t ⊙ (1 − i_t)
    ∂L/∂W_q += da^q x_tᵀ;   ∂L/∂R_q += da^q h_{t−1}ᵀ;   ∂L/∂b_q += da^q
    dx_t = Σ_q W_qᵀ da^q;   dh_{t−1} += Σ_q R_qᵀ da^q

Parameters::

    {"embed": [V, D]                             (only for the embedding variant)
     "layers": [{"W": {q: [H, I]}, "R": {q: [H, H]}, "b": {q: [H]}}, ...]   (two layers)
     "out": {"W": [V, H], "b": [V]}}

`from_jax_lm` / `to_jax_lm` convert to and from jax_lm's row-vector layout, where the gate
blocks sit side by side in (i, g, o) order: w_x [I, 3H] = [W_iᵀ W_gᵀ W_oᵀ], likewise w_h and b.
"""

from __future__ import annotations

import numpy as np

GATES = ("i", "g", "o")  # jax_lm's block order for a coupled LSTM


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def layer_forward(p: dict, xs: np.ndarray) -> dict:
    """One CIFG layer over inputs xs [T, I] (row t is the column vector x_t).

    Returns the cache {x [T, I], h [T+1, H], c [T+1, H], i, g, o [T, H]}, where h[0], c[0]
    are the zero initial states and h[t+1], c[t+1] the states after step t.
    """
    steps, hidden = len(xs), p["R"]["i"].shape[0]
    h, c = np.zeros((steps + 1, hidden)), np.zeros((steps + 1, hidden))
    gate = {q: np.zeros((steps, hidden)) for q in GATES}
    for t in range(steps):
        a = {q: p["W"][q] @ xs[t] + p["R"][q] @ h[t] + p["b"][q] for q in GATES}
        gate["i"][t], gate["g"][t], gate["o"][t] = sigmoid(a["i"]), np.tanh(a["g"]), sigmoid(a["o"])
        c[t + 1] = (1.0 - gate["i"][t]) * c[t] + gate["i"][t] * gate["g"][t]
        h[t + 1] = gate["o"][t] * np.tanh(c[t + 1])
    return {"x": xs, "h": h, "c": c, **gate}


def layer_backward(p: dict, cache: dict, dh_out: np.ndarray) -> tuple[dict, np.ndarray]:
    """Backward through one layer given dh_out [T, H], the gradient reaching each h_t from above.

    Returns (gradients in the layout of p, dx [T, I] the gradient w.r.t. the layer's inputs).
    """
    x, h, c, i, g, o = (cache[n] for n in ("x", "h", "c", "i", "g", "o"))
    grads = {part: {q: np.zeros_like(p[part][q]) for q in GATES} for part in ("W", "R", "b")}
    dx = np.zeros_like(x)
    dh_next, dc_next = np.zeros(h.shape[1]), np.zeros(h.shape[1])
    for t in reversed(range(len(x))):
        dh = dh_out[t] + dh_next
        tanh_c = np.tanh(c[t + 1])
        dc = dh * o[t] * (1.0 - tanh_c**2) + dc_next
        da = {
            "i": dc * (g[t] - c[t]) * i[t] * (1.0 - i[t]),
            "g": dc * i[t] * (1.0 - g[t] ** 2),
            "o": dh * tanh_c * o[t] * (1.0 - o[t]),
        }
        dc_next = dc * (1.0 - i[t])
        for q in GATES:
            grads["W"][q] += np.outer(da[q], x[t])
            grads["R"][q] += np.outer(da[q], h[t])
            grads["b"][q] += da[q]
        dx[t] = sum(p["W"][q].T @ da[q] for q in GATES)
        dh_next = sum(p["R"][q].T @ da[q] for q in GATES)
    return grads, dx


def _inputs(params: dict, tokens: np.ndarray) -> np.ndarray:
    """Layer-1 inputs [T, I]: explicit one-hot vectors, or embedding rows."""
    if "embed" in params:
        return params["embed"][tokens]
    vocab = params["layers"][0]["W"]["i"].shape[1]
    return np.eye(vocab)[tokens]


def forward(params: dict, tokens: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    """Next-token distributions p [T, V] for one sequence tokens [T], and the layer caches."""
    xs, caches = _inputs(params, tokens), []
    for p in params["layers"]:
        caches.append(layer_forward(p, xs))
        xs = caches[-1]["h"][1:]
    probs = softmax(xs @ params["out"]["W"].T + params["out"]["b"])
    return probs, caches


def token_nll(params: dict, tokens: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """−log p_t[y_t] for each step: [T]."""
    probs, _ = forward(params, tokens)
    return -np.log(probs[np.arange(len(targets)), targets])


def bptt(params: dict, tokens: np.ndarray, targets: np.ndarray) -> tuple[float, dict]:
    """(L, ∂L/∂params) for one sequence, L the summed cross-entropy (full BPTT)."""
    probs, caches = forward(params, tokens)
    loss = -np.sum(np.log(probs[np.arange(len(targets)), targets]))
    dlogits = probs.copy()
    dlogits[np.arange(len(targets)), targets] -= 1.0      # (T, V): p_t − onehot(y_t)
    h_top = caches[-1]["h"][1:]                           # (T, H)
    grads = {"out": {"W": dlogits.T @ h_top, "b": dlogits.sum(axis=0)}, "layers": []}
    dh = dlogits @ params["out"]["W"]                     # (T, H): W_yᵀ dp_t per row
    for p, cache in reversed(list(zip(params["layers"], caches))):
        layer_grads, dh = layer_backward(p, cache, dh)    # dh becomes the layer's input grad
        grads["layers"].insert(0, layer_grads)
    if "embed" in params:
        grads["embed"] = np.zeros_like(params["embed"])
        np.add.at(grads["embed"], tokens, dh)             # repeated tokens accumulate
    return loss, grads


def from_jax_lm(lm_params) -> dict:
    """Split jax_lm's [·, 3H] gate blocks into per-gate column-vector matrices."""

    def split(a):  # [..., 3H] -> {q: [..., H]}
        return dict(zip(GATES, np.split(np.asarray(a), len(GATES), axis=-1)))

    layers = []
    for lp in lm_params["layers"]:
        w_x, w_h, b = split(lp["w_x"]), split(lp["w_h"]), split(lp["b"])
        layers.append({"W": {q: w_x[q].T for q in GATES}, "R": {q: w_h[q].T for q in GATES},
                       "b": b})
    params = {"layers": layers, "out": {"W": np.asarray(lm_params["out"]["w"]).T,
                                        "b": np.asarray(lm_params["out"]["b"])}}
    if "embed" in lm_params:
        params["embed"] = np.asarray(lm_params["embed"])
    return params


def to_jax_lm(params: dict) -> dict:
    """The inverse of `from_jax_lm`."""

    def join(blocks):  # {q: [H, ·]} -> [·, 3H]
        return np.concatenate([blocks[q].T for q in GATES], axis=-1)

    layers = [{"w_x": join(p["W"]), "w_h": join(p["R"]),
               "b": np.concatenate([p["b"][q] for q in GATES])} for p in params["layers"]]
    lm = {"layers": layers, "out": {"w": params["out"]["W"].T, "b": params["out"]["b"]}}
    if "embed" in params:
        lm["embed"] = params["embed"]
    return lm
