"""Seed 002: Chainer's PTB example `RNNForLM`.

Embedding 650 → dropout → LSTM 650 → dropout → LSTM 650 → dropout → linear; every parameter
from U(−0.1, 0.1); SGD lr 1 with gradient clipping 5; BPTT 35, batch 20, 39 epochs.
    jax-lm train --config chainer_ptb
"""

from jax_lm.config import load_config


def get_config():
    c = load_config("zaremba_small")
    c.data.seq_len = 35
    c.model.hidden_size = 650
    c.model.dropout = 0.5          # chainer.functions.dropout's default ratio
    c.train.epochs = 39
    c.train.lr_rule = "constant"   # the example keeps lr 1 throughout
    return c
