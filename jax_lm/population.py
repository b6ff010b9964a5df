"""Populations: which runs can train together, and what each member brings to the step.

Members of a population share every shape and the schedule (one vmapped step, one loop)
and may differ in the fields of `MEMBER_FIELDS`: values that enter the step as arrays
(learning rate and clip norm in the optimizer state, the dropout rate as an input), only
at initialisation (seed, init scale), or only on the host (the Zaremba decay).

    key = population_key(config)     # equal keys: the runs can train as one population
    check_members(configs)           # ConfigError naming the fields that must agree
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

from jax_lm import optim
from jax_lm import config as config_lib

# Dotted config keys in which members of one population may differ.
MEMBER_FIELDS = ("seed", "train.learning_rate", "train.clip_norm", "train.lr_decay",
                 "train.lr_decay_start", "model.dropout", "model.init_scale")


def _flat(config) -> dict[str, object]:
    out = {}
    for section, values in config.to_dict().items():
        if isinstance(values, dict):
            out.update({f"{section}.{k}": v for k, v in values.items()})
        else:
            out[section] = values
    return out


def population_key(config: config_lib.RunConfig, fields: tuple[str, ...] = MEMBER_FIELDS) -> str:
    """Equal for runs that can train as one population: the config without `fields` (a
    subset of `MEMBER_FIELDS`; the seed only where the batches do not depend on it)."""
    flat = _flat(config)
    for key in fields:
        if key != "seed" or config.data.batcher == "stream":
            flat.pop(key)
    return json.dumps(flat, sort_keys=True, default=str)


def check_members(configs: list[config_lib.RunConfig]) -> None:
    """ConfigError unless the configs can train together as one population."""
    first = _flat(configs[0])
    for c in configs[1:]:
        flat = _flat(c)
        differ = sorted(k for k in first if flat[k] != first[k] and k not in MEMBER_FIELDS)
        if differ:
            raise config_lib.ConfigError(
                f"members trained together may differ only in {', '.join(MEMBER_FIELDS)}; "
                f"these differ too: {', '.join(differ)}")
    if configs[0].data.batcher != "stream" and len({c.seed for c in configs}) > 1:
        raise config_lib.ConfigError(
            "members with different seeds train together only with data.batcher='stream' "
            f"(its batches do not depend on the seed); got {configs[0].data.batcher!r}")


def dropout_rates(configs) -> np.ndarray | None:
    """The members' dropout rates when they differ (an input of the step), else None."""
    rates = [c.model.dropout for c in configs]
    return np.asarray(rates) if len(set(rates)) > 1 else None


def member_opt_state(opt_state, config):
    """A member's optimizer state with its own learning rate and clip norm (inf: off)."""
    return optim.set_hyperparams(opt_state, learning_rate=config.train.learning_rate,
                                 clip_norm=config.train.clip_norm or math.inf)


def member_lm_config(lm_config, configs):
    """The LMConfig of the shared step: dropout on when any member uses it."""
    return dataclasses.replace(lm_config, dropout=max(c.model.dropout for c in configs))
