"""Seed 003: a multi-layer CIFG (f = 1 − i) char LM on Tiny Shakespeare, trained with Adam.

Tiny Shakespeare split 90/10 by characters (char-rnn, nanoGPT); samples use 003's
"resample once when the draw is not the argmax" rule.
    jax-lm train --config cifg_shakespeare
"""

from jax_lm.config import get_config as base_config
from jax_lm.data import shared_data_dir


def get_config():
    c = base_config()
    c.data.source = str(shared_data_dir() / "tinyshakespeare" / "input.txt")
    c.data.level = "char"
    c.data.batch_size = 32
    c.data.seq_len = 128
    c.model.cell = "cifg"
    c.model.num_layers = 2
    c.model.hidden_size = 256
    c.model.dropout = 0.1
    c.train.optimizer = "adam"
    c.train.learning_rate = 2e-3
    c.train.epochs = 10
    c.train.log_every = 100
    c.sample.prime = "ROMEO:"
    c.sample.num_tokens = 400
    c.sample.resample_once = True
    c.sample.temperature = 1.0
    return c
