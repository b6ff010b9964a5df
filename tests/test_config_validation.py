"""The config is checked as a whole, before anything runs, and reaches the core typed."""

from __future__ import annotations

import dataclasses
import types

import pytest

from jax_lm import config as config_lib
from jax_lm.config import ConfigError, apply_overrides, get_config, resolve

BAD = [
    ({"seed": "-1"}, "seed=-1 must be ≥ 0"),
    ({"data.level": "byte"}, "data.level='byte' is not one of 'char', 'word'"),
    ({"data.word_split": "nltk"}, "data.word_split"),
    ({"data.batcher": "bucket"}, "'stream', 'sentences', 'random_windows'"),
    ({"data.errors": "ignore"}, "data.errors"),
    ({"data.batch_size": "0"}, "data.batch_size=0 must be ≥ 1"),
    ({"data.seq_len": "-5"}, "data.seq_len=-5 must be ≥ 1"),
    ({"data.min_count": "0"}, "data.min_count"),
    ({"data.train_fraction": "1.0"}, "data.train_fraction=1.0 must be in (0, 1)"),
    ({"data.pad_multiple": "0"}, "data.pad_multiple"),
    ({"data.eval_batch_size": "-1"}, "data.eval_batch_size"),
    ({"model.cell": "transformer"}, "'cifg', 'gru', 'lstm', 'rnn'"),
    ({"model.num_layers": "0"}, "model.num_layers=0 must be ≥ 1"),
    ({"model.hidden_size": "0"}, "model.hidden_size=0 must be ≥ 1"),
    ({"model.embed_size": "-1"}, "model.embed_size"),
    ({"model.dropout": "1.0"}, "model.dropout=1.0 must be in [0, 1)"),
    ({"model.dropout": "-0.1"}, "model.dropout"),
    ({"model.init": "xavier"}, "model.init='xavier' is not one of"),
    ({"model.init_scale": "0.0"}, "model.init_scale=0.0 must be > 0"),
    ({"model.param_dtype": "float8"}, "model.param_dtype"),
    ({"model.compute_dtype": "int8"}, "model.compute_dtype"),
    ({"model.gate_fn": "relu"}, "model.gate_fn"),
    ({"model.activation": "gelu"}, "model.activation"),
    ({"model.unroll": "0"}, "model.unroll"),
    ({"model.cell": "gru", "model.peepholes": "true"}, "does not apply to cell 'gru'"),
    ({"model.cell": "cifg", "model.forget_bias": "1.0"}, "no forget gate"),
    ({"model.cell": "rnn", "model.activation": "sigmoid"}, "the rnn cell takes"),
    ({"model.tie_weights": "true", "model.embed_size": "32"}, "tie_weights"),
    ({"model.tie_weights": "true", "model.one_hot": "true"}, "tie_weights"),
    ({"train.optimizer": "lbfgs"}, "train.optimizer='lbfgs' is not one of"),
    ({"train.optimizer_options.nesterov_please": "1"}, "do not fit 'adam'"),
    ({"train.learning_rate": "0.0"}, "train.learning_rate=0.0 must be > 0 and finite"),
    ({"train.learning_rate": "1e999"}, "must be > 0 and finite"),
    ({"train.clip_norm": "-1.0"}, "train.clip_norm"),
    ({"train.epochs": "0"}, "train.epochs=0 must be ≥ 1"),
    ({"train.max_steps": "-1"}, "train.max_steps"),
    ({"train.time_budget_minutes": "-5.0"}, "train.time_budget_minutes"),
    ({"train.regime": "bptt"}, "'full', 'truncated', 'window'"),
    ({"train.loss_reduction": "mean"}, "train.loss_reduction"),
    ({"train.lr_rule": "cosine"}, "train.lr_rule"),
    ({"train.lr_rule_metric": "vlaid"}, "'valid', 'train', 'train_eval'"),
    ({"train.lr_decay": "1.5"}, "train.lr_decay=1.5 must be in (0, 1]"),
    ({"train.log_every": "0"}, "train.log_every"),
    ({"train.keep_checkpoints": "0"}, "train.keep_checkpoints"),
    ({"train.on_nonfinite": "ignore"}, "'stop', 'skip'"),
    ({"sample.num_tokens": "0"}, "sample.num_tokens"),
    ({"sample.temperature": "0.0"}, "sample.temperature=0.0 must be > 0"),
    ({"sample.top_k": "-1"}, "sample.top_k"),
    ({"sample.top_p": "0.0"}, "sample.top_p=0.0 must be in (0, 1]"),
    ({"model.hidden_size": "1000000"}, "GiB of memory"),
]


@pytest.mark.parametrize("overrides, phrase", BAD, ids=[",".join(f"{k}={v}" for k, v in o.items())
                                                       for o, _ in BAD])
def test_each_bad_setting_is_one_sentence_naming_the_key_and_what_is_allowed(overrides, phrase):
    with pytest.raises(ConfigError) as raised:
        resolve(apply_overrides(get_config(), overrides))
    assert phrase in str(raised.value) and "\n" not in str(raised.value)


def test_several_problems_are_reported_together():
    with pytest.raises(ConfigError, match="model.hidden_size=0.*; train.epochs=0"):
        resolve(apply_overrides(get_config(), {"model.hidden_size": "0", "train.epochs": "0"}))


@pytest.mark.parametrize("name", [n for n, _ in config_lib.list_configs()])
def test_every_shipped_config_resolves_and_round_trips(name):
    config = config_lib.load_config(name)
    typed = resolve(config)
    assert typed.to_configdict() == config
    assert isinstance(typed.train.optimizer_options, types.MappingProxyType)
    with pytest.raises(dataclasses.FrozenInstanceError):
        typed.model.hidden_size = 3


def test_memory_is_estimated_from_the_shapes_and_checked_against_what_is_there():
    small = resolve(config_lib.load_config("zaremba_small"))
    need = config_lib.estimate_memory(small, vocab_size=10_000)
    assert need["parameters"] == 4 * 4_651_600  # the README's parameter count, float32
    assert need["optimizer state"] == 0  # plain SGD keeps no state
    adam = resolve(apply_overrides(config_lib.load_config("zaremba_small"),
                                   {"train.optimizer": "adam"}))
    assert config_lib.estimate_memory(adam, 10_000)["optimizer state"] == 2 * need["parameters"]
    config_lib.check_memory(small, 10_000, available=need["total"])
    with pytest.raises(ConfigError, match="lower model.hidden_size"):
        config_lib.check_memory(small, 10_000, available=need["total"] - 1)


@pytest.mark.parametrize("text, phrase", [
    ("def get_config(:\n", "syntax error at line 1"),
    ("raise RuntimeError('boom')\n", "failed: RuntimeError: boom"),
    ("def get_config():\n    return {'a': 1}\n", "returned a dict"),
    ("def get_config():\n    return 1 / 0\n", "ZeroDivisionError"),
    ("x = 1\n", "defines no get_config()"),
])
def test_a_broken_config_file_is_one_sentence_naming_the_file(tmp_path, text, phrase):
    path = tmp_path / "mine.py"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        config_lib.load_config(str(path))
    assert phrase in str(raised.value) and "mine.py" in str(raised.value)


@pytest.mark.parametrize("text, phrase", [
    ("{ not json", "is not valid JSON"), ("[1, 2]", "does not hold a config"),
    ('{"model": {"hidden_size": "big"}}', "model.hidden_size"),
    ('{"model": {"hiden_size": 3}}', "unknown config key"),
])
def test_a_malformed_saved_config_names_its_file(text, phrase):
    with pytest.raises(ConfigError) as raised:
        config_lib.from_json(text, source="runs/x/config.json")
    assert phrase in str(raised.value) and "runs/x/config.json" in str(raised.value)


def test_shipped_configs_are_listed_with_their_purpose_without_running_them():
    entries = dict(config_lib.list_configs())
    assert {"base", "zaremba_small", "gist_lstm", "tutorial_rnn", "sweep_cells"} <= set(entries)
    assert entries["sweep_cells"].startswith("sweep: ")
    assert all(purpose for purpose in entries.values())
