"""AWD-LSTM on PTB (Merity et al. 2018): 3 layers 1150-1150-400, tied, NT-ASGD (a GPU run).

Merity, Keskar & Socher 2018, "Regularizing and Optimizing LSTM Language Models": a tied
400-wide embedding, the paper's regularizers and NT-ASGD, 500 epochs.

Paper, without the cache pointer: 60.0 validation / 57.3 test perplexity after its
fine-tuning stage, which jax_lm does not have. The reference code's README: about
61.2 / 58.8 without fine-tuning (batch 20), and about 45 s per epoch at batch 40 on a
Quadro GP100.
    jax-lm train --config awd_lstm_ptb

Deviations from the paper's code, all of them small: the BPTT length is a fixed 70 (the
paper draws it per batch around 70 and rescales the learning rate with it); no weight
decay (the paper's 1.2e-6); biases start at 0 ("fan_in" init: weights U(±1/√n)).
"""

from jax_lm.config import load_config


def get_config():
    c = load_config("zaremba_small")
    c.data.batch_size = 40          # the paper's PTB batch (80 is its WikiText-2 batch)
    c.data.seq_len = 70
    c.data.eval_batch_size = 10
    c.model.cell = "lstm"
    c.model.num_layers = 3
    c.model.layer_sizes = "1150,1150,400"
    c.model.embed_size = 400
    c.model.tie_weights = True
    c.model.init = "fan_in"
    c.model.locked_dropout = True    # variational dropout everywhere
    c.model.dropout_input = 0.4      # dropouti: the embedded input
    c.model.dropout_hidden = 0.25    # dropouth: between layers
    c.model.dropout_output = 0.4     # dropout: the last layer's output
    c.model.embed_dropout = 0.1      # dropoute
    c.model.weight_drop = 0.5        # wdrop on W_h of every layer
    c.model.ar = 2.0                 # alpha
    c.model.tar = 1.0                # beta
    c.train.optimizer = "sgd"
    c.train.learning_rate = 30.0
    c.train.clip_norm = 0.25
    c.train.loss_reduction = "token_mean"
    c.train.lr_rule = "constant"
    c.train.ntasgd_patience = 5      # nonmono
    c.train.epochs = 500
    c.train.log_every = 100
    return c
