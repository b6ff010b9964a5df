# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Inside a cell: gates, state norms, and what the carried state tracks
#
# A character LSTM reads a text one character at a time; everything it remembers lives in
# its carried state (h, c). This notebook trains a small one on jax_lm's embedded corpus
# (Python's reference documentation), runs it over a passage, recomputes every gate with
# the cell's equations (`jax_lm.cells.LSTM`), and looks for units whose cell state follows
# something readable in the text: being inside parentheses or quotes, the position in the
# line. With `FULL = False` training takes about half a minute on two CPU cores.
#
#     i = σ(z_i)   f = σ(z_f + forget_bias)   g = tanh(z_g)   o = σ(z_o)
#     c_t = f ⊙ c_{t-1} + i ⊙ g              h_t = o ⊙ tanh(c_t),   z = x W_x + h_{t-1} W_h + b

# %%
FULL = False

# %%
import jax
import jax.numpy as jnp
import numpy as np

import jax_lm
from jax_lm import model
from jax_lm.plots import new_figure  # a matplotlib Figure shown inline, no pyplot

steps = 2000 if FULL else 400
cfg = jax_lm.get_config("base", **{"model.hidden_size": 128, "train.max_steps": steps,
                                   "train.log_every": 50, "train.learning_rate": 0.005,
                                   "sample.num_samples": 0})
run = jax_lm.fit(cfg, workdir="runs/inside_a_cell", progress=False)
print(run)

# %% [markdown]
# A passage of the validation text, and the gates at every character.

# %%
text_ids = np.asarray(run.corpus.splits["valid"][:600])
text = run.tokenizer.detokenize(run.vocab.decode(text_ids))
layer = run.params["layers"][0]
cell = run.lm_config.cell
H = run.lm_config.hidden_size


def gates_over(params, ids):
    """Per character: the gates i, f, g, o and the state c, h (each [T, H]), step by step."""
    xs = jnp.take(params["embed"], jnp.asarray(ids), axis=0)  # (T, D)
    lp = params["layers"][0]

    def step(carry, x):
        h, c = carry
        z = x @ lp["w_x"] + lp["b"] + h @ lp["w_h"]
        zi, zf, zg, zo = jnp.split(z, 4)
        i, f = jax.nn.sigmoid(zi), jax.nn.sigmoid(zf + cell.forget_bias)
        g, o = jnp.tanh(zg), jax.nn.sigmoid(zo)
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (h, c), dict(i=i, f=f, g=g, o=o, c=c, h=h)

    zero = jnp.zeros(H, xs.dtype)
    return jax.tree.map(np.asarray, jax.lax.scan(step, (zero, zero), xs)[1])


acts = gates_over(run.params, text_ids)
print({k: v.shape for k, v in acts.items()})

# %% [markdown]
# The recomputation is checked against the library's own scan (`model.layer_carries`):
# the same cell state at every step.

# %%
carries = model.layer_carries(run.params, jnp.asarray(text_ids)[None], model.init_carry(
    run.lm_config, 1), config=run.lm_config)
library_c = np.asarray(carries[0].cell[:, 0])  # (T, H)
recompute_error = float(np.abs(library_c - acts["c"]).max())
print(f"max |c_library − c_recomputed| = {recompute_error:.2e}")

# %% [markdown]
# Gate statistics over the passage: how open each gate is on average, and how the state's
# size evolves. A forget gate near 1 keeps the cell state; near 0 it resets it.

# %%
for name in "ifo":
    a = acts[name]
    print(f"{name}: mean {a.mean():.3f}; share of units × steps above 0.9: {(a > 0.9).mean():.3f}, "
          f"below 0.1: {(a < 0.1).mean():.3f}")
print(f"g: mean |g| {np.abs(acts['g']).mean():.3f}; saturated (|g| > 0.9): "
      f"{(np.abs(acts['g']) > 0.9).mean():.3f}")

fig = new_figure(figsize=(11, 5.5))
ax1, ax2 = fig.subplots(2, 1, sharex=True)
ax1.imshow(acts["f"].T, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
ax1.set(ylabel="unit", title="forget gate f per unit and character (yellow: keep)")
ax2.plot(np.linalg.norm(acts["c"], axis=1), label="‖c_t‖")
ax2.plot(np.linalg.norm(acts["h"], axis=1), label="‖h_t‖")
for t, ch in enumerate(text):
    if ch == "\n":
        ax2.axvline(t, color="0.85", lw=0.8, zorder=0)
ax2.set(xlabel="character (grey lines: newlines)", ylabel="norm", title="state norms")
ax2.legend()
fig.tight_layout()
fig

# %% [markdown]
# What does the carried state track? Three readable features of the text at each
# character, and for each the unit whose cell state correlates with it most strongly.

# %%
depth, quote, column, features = 0, False, 0, {"inside ( )": [], "inside quotes": [],
                                               "position in line": []}
for ch in text:
    depth = max(0, depth + (ch == "(") - (ch == ")"))
    quote = (not quote) if ch in "\"'" else quote
    column = 0 if ch == "\n" else column + 1
    features["inside ( )"].append(float(depth > 0))
    features["inside quotes"].append(float(quote))
    features["position in line"].append(float(column))

c = acts["c"]
best = {}
for name, values in features.items():
    v = np.asarray(values)
    if v.std() == 0:
        continue
    corr = np.array([np.corrcoef(v, c[:, u])[0, 1] if c[:, u].std() > 0 else 0.0
                     for u in range(H)])
    u = int(np.nanargmax(np.abs(corr)))
    best[name] = (u, float(corr[u]))
    print(f"{name:>17}: unit {u:3d}, correlation {corr[u]:+.2f} "
          f"(median |corr| over units {np.nanmedian(np.abs(corr)):.2f})")

# %% [markdown]
# The passage coloured by those units (red: positive cell state, blue: negative), as text:
# each character with its unit's value. A unit that tracks a feature switches where the
# feature does.

# %%
fig = new_figure(figsize=(11, 2.2 * len(best)))
axes = np.atleast_1d(fig.subplots(len(best), 1, sharex=True))
for ax, (name, (u, r)) in zip(axes, best.items()):
    ax.plot(c[:, u], lw=1, label=f"c of unit {u}")
    ax.plot(np.asarray(features[name]) / max(1.0, max(features[name])) * np.abs(c[:, u]).max(),
            lw=1, alpha=0.6, label=f"{name} (scaled)")
    ax.set(title=f"{name}: unit {u}, r = {r:+.2f}")
    ax.legend(loc="upper right", fontsize=8)
axes[-1].set(xlabel="character")
fig.tight_layout()
fig

# %%
u, _ = best["position in line"]
scale = np.abs(c[:, u]).max()
line = "".join(("+" if v > 0.3 * scale else "-" if v < -0.3 * scale else "·")
               for v in c[:, u][:160])
shown = text[:160].replace("\n", "⏎")
print(shown)
print(line)

# %% [markdown]
# ## Checks

# %%
assert recompute_error < 1e-4, recompute_error   # the equations above are the cell's
for name in "ifo":
    assert 0.0 <= acts[name].min() and acts[name].max() <= 1.0
assert np.all(np.abs(acts["g"]) <= 1.0) and np.all(np.abs(acts["h"]) <= 1.0)
assert run.history.final["valid_ppl"] < 20
# a trained character model's state follows the line position far more than a typical unit
v = np.asarray(features["position in line"])
corrs = np.abs([np.corrcoef(v, c[:, k])[0, 1] for k in range(H) if c[:, k].std() > 0])
assert abs(best["position in line"][1]) > 2 * np.median(corrs), (best, np.median(corrs))
print("all checks passed")
