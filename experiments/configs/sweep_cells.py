"""Ablation: RNN vs LSTM vs CIFG vs GRU on Tiny Shakespeare, matched parameters, equal budget.

Every cell gets two layers sized so that the whole model has about `PARAMS` parameters,
and the same number of training steps (the same tokens); 3 seeds each.
    jax-lm sweep sweep_cells                  # on an accelerator each cell's 3 seeds
                                              # train together (--population auto)
(the cells differ in shapes, so only seeds can share a population; on the 2-core CPU
populations train slower than one run after another, so `auto` runs them one by one:
experiments/results/population-cpu.md)
"""

import jax

from jax_lm import cells, model
from jax_lm.config import load_config

PARAMS = 300_000      # parameter budget per model
VOCAB = 65            # Tiny Shakespeare's characters
CELLS = ("rnn", "lstm", "cifg", "gru")
SEEDS = (0, 1, 2)


def hidden_size_for(cell: str, params: int = PARAMS, num_layers: int = 2) -> int:
    """The hidden size whose 2-layer model (embedding = hidden) is closest to `params`."""
    def count(h):
        config = model.LMConfig(vocab_size=VOCAB, cell=cells.make_cell(cell),
                                num_layers=num_layers, hidden_size=h)
        return model.num_params(jax.eval_shape(lambda k: model.init_lm(k, config),
                                               jax.random.key(0)))

    low, high = 1, 4096  # the count grows with h: bisect for the last h under budget
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if count(mid) <= params else (low, mid)
    return min((low, high), key=lambda h: abs(count(h) - params))


def get_config():
    c = load_config("cifg_shakespeare")
    c.data.batch_size = 32
    c.data.seq_len = 100
    c.model.dropout = 0.0
    c.train.lr_rule = "constant"
    c.train.epochs = 100
    c.train.max_steps = 1500       # the equal budget: 1500 × 32 × 100 = 4.8M characters
    c.train.eval_test = False
    c.sample.num_tokens = 200
    return c


def get_sweep():
    return [{"model.cell": cell, "model.hidden_size": hidden_size_for(cell), "seed": seed}
            for cell in CELLS for seed in SEEDS]
