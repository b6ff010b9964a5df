"""Ablation of `ptb_cpu_hour`: each regularizer switched off in turn, at the same budget.

The recipe, then one switch off per point, all at the recipe's budget (60 minutes of
training each on the 2-core CPU, about 8 hours in all; the sweep resumes where it
stopped, so it can run over several sessions).

    jax-lm sweep sweep_ptb_cpu_hour_ablation
"""

from jax_lm.config import load_config


def get_config():
    c = load_config("ptb_cpu_hour")
    c.sample.num_samples = 0
    return c


def get_sweep():
    return [{},                                          # the recipe as it is
            {"model.locked_dropout": False},             # per-position masks instead
            {"model.dropout_input": 0.0, "model.dropout_hidden": 0.0,
             "model.dropout_output": 0.0},               # no dropout between layers at all
            {"model.embed_dropout": 0.0},
            {"model.weight_drop": 0.0},
            {"model.ar": 0.0, "model.tar": 0.0},
            {"train.ntasgd_patience": 0}]
