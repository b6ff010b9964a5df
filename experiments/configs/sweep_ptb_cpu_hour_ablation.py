"""Ablation of `ptb_cpu_hour`: each regularizer switched off in turn, at the same budget.

The recipe, then one switch off per point, all at the recipe's budget (60 minutes of
training each on the 2-core CPU, about 8 hours in all; the sweep skips finished points
and resumes an interrupted one, so it can run over several sessions that keep runs/).

    jax-lm sweep sweep_ptb_cpu_hour_ablation

The points measured so far are in experiments/results/ptb_cpu_hour.md; the grid lists
the ones still missing there first, so that a session can stop the sweep once they are
done. The recipe's point comes second because the host's speed varies between
sessions: rows measured in one session are compared with the recipe measured beside them.
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
