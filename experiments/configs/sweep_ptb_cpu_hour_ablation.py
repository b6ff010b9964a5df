"""Ablation of `ptb_cpu_hour`: each regularizer switched off in turn, at the same budget.

One switch off per point, and the recipe itself, all at the recipe's budget (60 minutes of
training each on the 2-core CPU, about 8 hours in all; the sweep skips finished points
and resumes an interrupted one, so it can run over several sessions that keep runs/).

    jax-lm sweep sweep_ptb_cpu_hour_ablation

The table is in experiments/results/ptb_cpu_hour.md. The host's speed varies between
hours, so a 60-minute budget ends at different steps; the table compares the points by
validation at equal steps (end of epoch 8).
"""

from jax_lm.config import load_config


def get_config():
    c = load_config("ptb_cpu_hour")
    c.sample.num_samples = 0
    return c


def get_sweep():
    return [{"model.ar": 0.0, "model.tar": 0.0},
            {},                                          # the recipe again, same machine
            {"model.locked_dropout": False},             # per-position masks instead
            {"model.embed_dropout": 0.0},
            {"train.ntasgd_patience": 0},                # no averaging (it never started)
            {"model.weight_drop": 0.0},
            {"model.dropout_input": 0.0, "model.dropout_hidden": 0.0,
             "model.dropout_output": 0.0}]               # no dropout between layers at all
