"""The shipped configs (experiments/configs), packaged as `jax_lm.configs`."""
