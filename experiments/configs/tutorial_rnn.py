"""Seed 001: the vanilla RNN tutorial's model and training rule.

One-hot input, RNN without biases (s_t = tanh(U x_t + W s_{t−1}), o_t = softmax(V s_t)),
hidden 100, vocabulary 8,000 with an unknown token, sentences framed by start/end tokens
(raw text, punctuation split off, lowercased), U(±1/√n) init, per-output truncation k = 4,
per-sentence SGD with lr 0.005 halved when the loss on the training sentences rises. The
document trained on reddit comments; PTB's training sentences stand in (the first 100, as in
its 10-epoch check).
    jax-lm train --config tutorial_rnn
"""

from jax_lm.config import get_config as base_config
from jax_lm.data import shared_data_dir


def get_config():
    c = base_config()
    c.data.source = str(shared_data_dir() / "ptb")
    c.data.level = "word"
    c.data.word_split = "regex"
    c.data.lowercase = True
    c.data.bos = "sentence_start"
    c.data.eos = "sentence_end"
    c.data.unk = "unknown_token"
    c.data.max_vocab = 8000
    c.data.batcher = "sentences"
    c.data.batch_size = 1          # one sentence per SGD step
    c.data.shuffle = False         # the document iterates in corpus order
    c.data.bucket = False
    c.data.max_train_lines = 100
    c.model.cell = "rnn"
    c.model.use_bias = False
    c.model.num_layers = 1
    c.model.hidden_size = 100
    c.model.one_hot = True
    c.model.output_bias = False
    c.model.init = "fan_in"
    c.train.optimizer = "sgd"
    c.train.learning_rate = 0.005
    c.train.clip_norm = 0.0
    c.train.epochs = 10
    c.train.regime = "window"
    c.train.window_k = 4
    c.train.loss_reduction = "sum"
    c.train.lr_rule = "halve_when_loss_rises"
    c.train.lr_rule_metric = "train_eval"  # the loss on the training sentences, as 001
    c.train.eval_at_start = True   # 001 prints the loss at init (≈ ln 8000) before training
    c.train.log_every = 100
    c.sample.num_tokens = 30
    return c
