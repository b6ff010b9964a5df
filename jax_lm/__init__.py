"""jax_lm: recurrent language models (vanilla RNN, LSTM, CIFG, GRU) in JAX."""

__version__ = "0.1.0"
