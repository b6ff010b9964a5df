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
# # Quick start: train, look, sample, evaluate, load again
#
# A small character-level LSTM on the corpus that ships with jax_lm (CPython's own
# reference text, so nothing is downloaded), trained with `jax_lm.fit` — the same loop,
# run folder and checkpoints as `jax-lm train`. Stop a training cell with the stop button:
# the checkpoint is kept and running the cell again resumes it exactly.
#
# With `FULL = False` (the default) it trains for 200 steps (under a minute on two CPU
# cores); `FULL = True` trains the base config's six epochs (`jax-lm train` took 1 min 5 s
# for them on two CPU cores, evaluations included).

# %%
FULL = False

# %%
import matplotlib
import numpy as np

import jax_lm

backend = matplotlib.get_backend()
settings = {} if FULL else {"train.max_steps": 200, "train.log_every": 25}
cfg = jax_lm.get_config("base", **settings)
print(cfg.model.cell, cfg.model.num_layers, "×", cfg.model.hidden_size, "| batch",
      cfg.data.batch_size, "×", cfg.data.seq_len, "|", cfg.train.optimizer, cfg.train.learning_rate)

# %% [markdown]
# `fit` trains into a run folder (`config.json`, `vocab.json`, `metrics.jsonl`,
# `checkpoints/`, `curves.png`, `samples.txt`) and returns a `Run`. A folder that already
# holds the run is resumed (and a finished one is just loaded).

# %%
run = jax_lm.fit(cfg, workdir="runs/quickstart", progress=False)
run

# %% [markdown]
# The history is plain NumPy: one row per logged step, one per evaluation, and the final
# scores (`run.history.to_pandas()` gives a DataFrame when pandas is installed).

# %%
h = run.history
print("steps logged:", h.steps["step"][:5], "…", h.steps["step"][-1])
print("train loss:  ", np.round(h.steps["train_loss"][:5], 3), "…",
      round(float(h.steps["train_loss"][-1]), 3))
print("final:", {k: round(v, 4) for k, v in h.final.items() if k.startswith("valid_")})

# %%
run.plot()

# %% [markdown]
# Sampling: the temperature divides the logits before the softmax — low is conservative
# and repetitive, high is inventive and misspelled.

# %%
for temperature in (0.3, 0.8, 1.2):
    text = run.sample(prime="The ", num_tokens=120, temperature=temperature, seed=0)
    print(f"--- temperature {temperature}\n{text}\n")

# %% [markdown]
# Scores, and how they compare with a model that knows only character frequencies (a
# unigram model of the training text, add-one smoothed).

# %%
valid = run.evaluate("valid")
train_ids, valid_ids = run.corpus.splits["train"], run.corpus.splits["valid"]
counts = np.bincount(train_ids, minlength=run.vocab.size) + 1.0
unigram_nll = float(-np.log(counts / counts.sum())[valid_ids].mean())
print(f"validation: {valid['ppl']:.2f} perplexity, {valid['bits']:.3f} bits/char over "
      f"{valid['tokens']:,} characters")
print(f"unigram baseline: {np.exp(unigram_nll):.2f} perplexity, {unigram_nll / np.log(2):.3f} "
      "bits/char")

# %% [markdown]
# The run folder is all there is: load it again (in this kernel or any other) and it
# scores and samples the same.

# %%
same = jax_lm.load_run(run.path)
again = same.evaluate("valid")
print(same)
print(same.sample(prime="The ", num_tokens=60, temperature=0.8, seed=0))

# %% [markdown]
# ## Checks
# What this notebook showed, asserted (the test suite runs every notebook).

# %%
assert np.isfinite(valid["ppl"]) and valid["nll"] < unigram_nll, (valid, unigram_nll)
assert h.steps["train_loss"][-1] < h.steps["train_loss"][0]
assert again["nll"] == valid["nll"]
assert same.sample(prime="The ", num_tokens=60, temperature=0.8, seed=0) == run.sample(
    prime="The ", num_tokens=60, temperature=0.8, seed=0)
assert matplotlib.get_backend() == backend  # jax_lm drew without switching backends
print("all checks passed")
