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
# # Cell ablation: RNN, LSTM, CIFG and GRU, with learning rate and forget-gate bias as axes
#
# The recorded ablation (`jax-lm sweep sweep_cells`, experiments/results/sweep_cells.md)
# matched parameters (≈ 300K) and budget (1,500 steps) on Tiny Shakespeare and ranked the
# LSTM last: 1.770 nats/char against the GRU's 1.591. That invites a question — the LSTM is
# the stronger cell in most of the literature — so this notebook puts the suspects on axes:
# the learning rate (2e-3 as recorded, and 5e-3) and the LSTM's forget-gate bias (0 as
# recorded, and 1, the usual choice since Gers et al. 2000).
#
# The grid runs as a sweep of populations: the two learning rates of each cell share one
# vmapped step (`population="on"`). Everything is a `jax_lm.Run` afterwards.
#
# With `FULL = False` (the default) it trains small models (≈ 60K parameters) on a slice of
# the text for a few epochs, validating on the text's last 3% (not 10%) — under a minute on
# two CPU cores; it shows the machinery and a first ranking. `FULL = True` is the recorded
# budget: 10 runs of 1,500 steps (the recorded LSTM runs took 83–91 s each on two CPU cores,
# so expect roughly 15–25 minutes).

# %%
FULL = False

# %%
import math

import numpy as np

import jax_lm
from jax_lm.config import config_path, load_module
from jax_lm.data import shared_data_dir
from jax_lm.plots import new_figure

cells_sweep = load_module(config_path("sweep_cells"))  # its config and its size matching
shakespeare = shared_data_dir() / "tinyshakespeare" / "input.txt"
base = jax_lm.get_config("sweep_cells")
if not shakespeare.is_file():  # no corpora here: the embedded text instead
    print(f"{shakespeare} not found: using jax_lm's embedded corpus")
    base = base.replace({"data.source": "default"})
params = 300_000 if FULL else 60_000
if not FULL:
    base = base.replace({"data.max_train_lines": 2500, "data.batch_size": 16,
                         "data.seq_len": 50, "train.epochs": 3, "train.max_steps": 0,
                         "data.train_fraction": 0.97,  # validate on the last 3% of the text
                         "sample.num_samples": 0})
steps = "1,500 steps" if FULL else f"{base.train.epochs} epochs of {base.data.max_train_lines} lines"
print(f"{base.data.source}: {steps}, batch {base.data.batch_size} × {base.data.seq_len}")

# %%
settings = [("rnn", 0.0), ("lstm", 0.0), ("lstm", 1.0), ("cifg", 0.0), ("gru", 0.0)]
grid = [{"model.cell": cell, "model.forget_bias": bias,
         "model.hidden_size": cells_sweep.hidden_size_for(cell, params),
         "train.learning_rate": lr}
        for cell, bias in settings for lr in (2e-3, 5e-3)]
result = jax_lm.sweep(base, "runs/ablation" + ("_full" if FULL else ""), grid=grid,
                      population="on")
result

# %% [markdown]
# Validation curves of every member, one figure: colour is the cell, line style the
# learning rate.

# %%
colours = {"rnn": "tab:blue", "lstm": "tab:red", "lstm+fb1": "tab:pink", "cifg": "tab:green",
           "gru": "tab:purple"}
fig = new_figure(figsize=(10, 4.5))
ax = fig.subplots()
final = {}
for record in result.records:
    run = result.runs[record["name"]]
    o = record["overrides"]
    label = o["model.cell"] + ("+fb1" if o["model.forget_bias"] else "")
    h = run.history.epochs
    ax.plot(h["epoch"], h["valid_nll"], color=colours[label],
            ls="-" if o["train.learning_rate"] == 2e-3 else "--", marker="o", ms=3,
            label=f"{label}, lr {o['train.learning_rate']:g}")
    final[(label, o["train.learning_rate"])] = record["valid_nll"]
ax.set(xlabel="epoch", ylabel="validation nats/char", title="every member of the sweep")
ax.legend(fontsize=8, ncol=2)
fig

# %%
print("| cell | params | lr 2e-3 | lr 5e-3 |")
print("|---|---|---|---|")
for label in colours:
    run = result.runs[next(r["name"] for r in result.records if (
        r["overrides"]["model.cell"] + ("+fb1" if r["overrides"]["model.forget_bias"] else ""))
        == label)]
    print(f"| {label} | {run.history.final['num_params']:,} | {final[(label, 2e-3)]:.4f} | "
          f"{final[(label, 5e-3)]:.4f} |")
ranking = sorted(final, key=final.get)
print("\nranking:", ", ".join(f"{label} (lr {lr:g})" for label, lr in ranking))

# %% [markdown]
# ## What explains the LSTM's place
#
# Measured at the recorded budget (`jax-lm sweep sweep_lstm_forget_bias`, seed 0,
# experiments/results/lstm_forget_bias.md):
#
# | LSTM, 301K parameters, 1,500 steps | lr 2e-3 | lr 5e-3 |
# |---|---|---|
# | forget bias 0 | 1.7904 | 1.6820 |
# | forget bias 1 | 1.8071 | 1.6626 |
#
# (For comparison, the recorded means at lr 2e-3: GRU 1.591, RNN 1.633, CIFG 1.659, LSTM 1.770.)
#
# The ranking in the recorded ablation is a statement about its budget and learning rate,
# not about the cells. At 1,500 steps of Adam at 2e-3, none of the models has converged, and
# the LSTM is the slowest starter. Equal parameters give it the fewest units (133, against
# 152 for the GRU and 258 for the RNN). It has four gate blocks to fit, and with a
# forget-gate bias of 0 its cell state starts out halved at every step.
#
# The measurements separate those causes. The learning rate accounts for most of the gap:
# at 5e-3 the LSTM gains 0.11–0.14 nats/char and moves from last to level with the CIFG at
# 2e-3. A forget-gate bias of 1 changes the score by less than one seed's spread (−0.019
# at 5e-3, +0.017 at 2e-3). Every validation curve is still falling at step 1,500. So the
# ablation ranks how far each cell gets in 4.8 epochs at one learning rate, not where it
# converges. Whether the other cells also gain from 5e-3 at that budget was not measured
# there. The grid above runs every cell at both rates, at the small size by default and at
# the recorded budget with `FULL = True`.
#
# The small default run above is a different budget (small models, a slice of the text), so
# its ranking need not match. It is there to show the machinery; `FULL = True` repeats the
# recorded budget.

# %% [markdown]
# ## Checks

# %%
counts = np.bincount(result.runs[result.records[0]["name"]].corpus.splits["train"]) + 1.0
unigram = -float(np.sum(counts / counts.sum() * np.log(counts / counts.sum())))
assert len(result.records) == len(grid) == 10
assert all(math.isfinite(r["valid_nll"]) and r["valid_nll"] < unigram for r in result.records), (
    [r["valid_nll"] for r in result.records], unigram)
lstm_runs = [result.runs[r["name"]] for r in result.records if r["overrides"]["model.cell"] == "lstm"]
assert {run.lm_config.cell.forget_bias for run in lstm_runs} == {0.0, 1.0}
print(f"all {len(result.records)} runs beat the unigram entropy ({unigram:.3f} nats/char); "
      "all checks passed")
