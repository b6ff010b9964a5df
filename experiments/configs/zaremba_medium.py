"""Zaremba et al. 2014, "medium": PTB, 2×650 LSTM, dropout 0.5 (a GPU-sized run).

Paper: 86.2 validation / 82.7 test perplexity after 39 epochs.
    jax-lm train --config zaremba_medium
"""

from jax_lm.config import load_config


def get_config():
    c = load_config("zaremba_small")
    c.data.seq_len = 35            # unroll 35
    c.model.hidden_size = 650
    c.model.dropout = 0.5          # on the non-recurrent connections
    c.model.init_scale = 0.05
    c.train.epochs = 39
    c.train.lr_decay_start = 6     # lr 1 for 6 epochs, then ÷1.2 per epoch (the paper's rule)
    c.train.lr_decay = 1 / 1.2
    return c
