"""PTB in one hour of training on 2 CPU cores: tied 2-layer LSTM, AWD regularizers, Adam.

The AWD-LSTM regularizers (Merity et al. 2018) at a strength an hour can use, and
NT-ASGD-style iterate averaging.

Goal (issue 17): test perplexity below 100 within `time_budget_minutes=60` of training
(validation and test time are not counted). Chosen with `sweep_ptb_cpu_hour`; the runs and
its ablation are in experiments/results/ptb_cpu_hour.md.
    jax-lm train --config ptb_cpu_hour
"""

from jax_lm.config import load_config


def get_config():
    c = load_config("zaremba_small")
    c.data.batch_size = 32
    c.data.seq_len = 35
    c.model.num_layers = 2
    c.model.layer_sizes = "650,650"   # the last layer as wide as the embedding, for tying
    c.model.embed_size = 650
    c.model.tie_weights = True
    c.model.init = "uniform"
    c.model.init_scale = 0.1
    c.model.locked_dropout = True     # variational dropout, one mask per sequence
    c.model.dropout_input = 0.3
    c.model.dropout_hidden = 0.2
    c.model.dropout_output = 0.3
    c.model.embed_dropout = 0.05
    c.model.weight_drop = 0.2
    c.model.ar = 2.0
    c.model.tar = 1.0
    c.train.optimizer = "adam"
    c.train.learning_rate = 3e-3
    c.train.clip_norm = 0.25
    c.train.loss_reduction = "token_mean"
    c.train.lr_rule = "zaremba"        # constant for 4 epochs, then × 0.6 per epoch
    c.train.lr_decay_start = 4
    c.train.lr_decay = 0.6
    c.train.ntasgd_patience = 2
    c.train.epochs = 100               # the time budget ends the run
    c.train.time_budget_minutes = 60.0
    c.train.log_every = 100
    return c
