"""The search behind `ptb_cpu_hour`: layer widths and learning rate at a 6-minute budget.

Each point trains for 6 minutes, to rank candidates before one hour-long run.

    jax-lm sweep sweep_ptb_cpu_hour     # about 30 minutes on 2 CPU cores
"""

from jax_lm.config import load_config


def get_config():
    c = load_config("ptb_cpu_hour")
    c.train.time_budget_minutes = 6.0
    c.train.eval_test = False
    c.sample.num_samples = 0
    return c


def get_sweep():
    sizes = [{"model.layer_sizes": "650,650", "model.embed_size": 650},
             {"model.layer_sizes": "1000,400", "model.embed_size": 400},
             {"model.layer_sizes": "500,400", "model.embed_size": 400}]
    return sizes + [{"model.layer_sizes": "1000,400", "model.embed_size": 400,
                     "train.learning_rate": 3e-3}]
