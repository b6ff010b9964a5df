"""Seed 003: a multi-layer CIFG (f = 1 − i) char LM on Tiny Shakespeare, trained with Adam.

Tiny Shakespeare split 90/10 by characters (char-rnn, nanoGPT); samples use 003's
"resample once when the draw is not the argmax" rule. 2×512 with dropout 0.25 was the best of
four candidates trained for the same CPU budget (experiments/results/cifg_shakespeare.md).
    jax-lm train --config cifg_shakespeare
"""

from jax_lm.config import get_config as base_config
from jax_lm.data import shared_data_dir


def get_config():
    c = base_config()
    c.data.source = str(shared_data_dir() / "tinyshakespeare" / "input.txt")
    c.data.level = "char"
    c.data.batch_size = 64
    c.data.seq_len = 128
    c.model.cell = "cifg"
    c.model.num_layers = 2
    c.model.hidden_size = 512
    c.model.dropout = 0.25
    c.train.optimizer = "adam"
    c.train.learning_rate = 2e-3
    c.train.lr_rule = "halve_when_loss_rises"  # on validation loss
    c.train.epochs = 25            # ≈ 30 min on the 2-core CPU (≈ 14k chars/s)
    c.train.log_every = 100
    c.sample.prime = "ROMEO:"
    c.sample.num_tokens = 400
    c.sample.resample_once = True
    c.sample.temperature = 1.0
    return c
