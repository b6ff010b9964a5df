"""Seed 000: the gist's LSTM LM (Sundermeyer et al. 2012 style) and its training rule.

One-hot words, 10 units, tanh gates with peepholes (S_{t−1} into the input and forget
gates, S_t into the output gate), the bias as an always-on input unit (= the cell's bias),
no output bias, U(±0.1) init, sentences framed by <s> on both sides, per-sentence SGD ascent
on the log-likelihood with ALPHA = 1, halved when the epoch's log-likelihood drops. The
first 300 PTB training sentences stand in for the gist's stdin.
    jax-lm train --config gist_lstm
"""

from jax_lm.config import get_config as base_config
from jax_lm.data import shared_data_dir


def get_config():
    c = base_config()
    c.data.source = str(shared_data_dir() / "ptb")
    c.data.level = "word"
    c.data.bos = "<s>"
    c.data.eos = "<s>"
    c.data.batcher = "sentences"
    c.data.batch_size = 1
    c.data.shuffle = False
    c.data.bucket = False
    c.data.max_train_lines = 300
    c.data.vocab_from_train_lines = True  # the gist's vocabulary is that of its input
    c.model.cell = "lstm"
    c.model.gate_fn = "tanh"
    c.model.peepholes = True
    c.model.num_layers = 1
    c.model.hidden_size = 10
    c.model.one_hot = True
    c.model.output_bias = False
    c.model.init = "uniform"
    c.model.init_scale = 0.1
    c.train.optimizer = "sgd"      # descent on −log-likelihood = the gist's ascent
    c.train.learning_rate = 1.0
    c.train.clip_norm = 0.0
    c.train.epochs = 10
    c.train.regime = "full"
    c.train.loss_reduction = "sum"
    c.train.lr_rule = "halve_when_likelihood_drops"
    c.train.lr_rule_metric = "train"   # the epoch's own running log-likelihood
    c.train.log_every = 100
    c.sample.num_tokens = 20
    return c
