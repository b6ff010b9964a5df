"""Zaremba, Sutskever & Vinyals 2014, "small": PTB, 2×200 LSTM, no dropout.

Paper: 120.7 validation / 114.5 test perplexity after 13 epochs.
    jax-lm train --config zaremba_small
"""

from jax_lm.config import get_config as base_config
from jax_lm.data import shared_data_dir


def get_config():
    c = base_config()
    c.data.source = str(shared_data_dir() / "ptb")
    c.data.level = "word"
    c.data.eos = "<eos>"           # one <eos> per line, as in the paper's PTB counts
    c.data.batch_size = 20
    c.data.seq_len = 20            # unroll 20
    c.model.num_layers = 2
    c.model.hidden_size = 200
    c.model.init = "uniform"
    c.model.init_scale = 0.1
    c.train.optimizer = "sgd"
    c.train.learning_rate = 1.0
    c.train.clip_norm = 5.0
    c.train.epochs = 13
    c.train.loss_reduction = "batch_mean"  # Σ over the 20 steps, mean over the batch
    c.train.lr_rule = "zaremba"    # lr 1 for 4 epochs, then halved every epoch
    c.train.lr_decay_start = 4
    c.train.lr_decay = 0.5
    c.train.log_every = 100
    c.sample.num_tokens = 40
    return c
