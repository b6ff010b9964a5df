"""Why the LSTM ranked last in `sweep_cells`: its forget-gate bias and learning rate as axes.

The same setup and budget as `sweep_cells` (Tiny Shakespeare, about 300K parameters, 1,500
steps of 32 × 100 characters, Adam, no dropout), for the LSTM only: forget-gate bias 0 (as
`sweep_cells` had it) and 1 (Gers et al. 2000; Jozefowicz et al. 2015), learning rate 2e-3
(as `sweep_cells`) and 5e-3; seed 0.
    jax-lm sweep sweep_lstm_forget_bias     # about 30 minutes on 2 CPU cores
"""

from jax_lm.config import config_path, load_module

_cells = load_module(config_path("sweep_cells"))


def get_config():
    c = _cells.get_config()
    c.model.cell = "lstm"
    c.model.hidden_size = _cells.hidden_size_for("lstm")
    return c


def get_sweep():
    return [{"model.forget_bias": bias, "train.learning_rate": lr}
            for bias in (0.0, 1.0) for lr in (2e-3, 5e-3)]
