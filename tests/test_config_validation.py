"""The config is checked as a whole, before anything runs, and reaches the core typed."""

from __future__ import annotations

import dataclasses
import types

import ml_collections
import pytest

from jax_lm import config as config_lib
from jax_lm import memory
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
    ({"train.optimizer_options.nesterov_please": "1"},
     "train.optimizer_options.nesterov_please is not an option of 'adam' (its options: b1,"),
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
    ({"model.remat_segment": "-1"}, "model.remat_segment=-1 must be ≥ 0"),
    ({"model.logits_chunk": "-1"}, "model.logits_chunk=-1 must be ≥ 0"),
    ({"model.init_scale": "1e999"}, "model.init_scale=inf must be > 0 and finite"),
    ({"model.cell": "cifg", "model.forget_bias": "1.0"},
     "model.forget_bias=1.0 does not apply to cell 'cifg'"),
    ({"model.cell": "rnn", "model.gate_fn": "tanh"}, "model.gate_fn='tanh' does not apply"),
    ({"model.cell": "gru", "model.activation": "relu"}, "model.activation='relu' does not apply"),
    ({"model.tie_weights": "true", "model.embed_size": "32"},
     "model.tie_weights=True needs the embedding as wide as the last layer "
     "(model.hidden_size=256), got model.embed_size=32; set model.embed_size=256"),
    ({"model.num_layers": "3", "model.layer_sizes": "64,32", "model.tie_weights": "true"},
     "model.layer_sizes='64,32' must be 3 positive integers separated by commas"),
    ({"model.num_layers": "2", "model.layer_sizes": "64,32", "model.tie_weights": "true"},
     "needs the embedding as wide as the last layer (the last of model.layer_sizes='64,32'), "
     "got 64 (the first layer's width, as model.embed_size=0); set model.embed_size=32"),
    ({"model.dropout_output": "1.0"}, "model.dropout_output=1.0 must be in [0, 1) or -1"),
    ({"model.weight_drop": "-0.1"}, "model.weight_drop=-0.1 must be in [0, 1)"),
    ({"model.ar": "-2.0"}, "model.ar=-2.0 must be ≥ 0 and finite"),
    ({"train.ntasgd_patience": "-1"}, "train.ntasgd_patience=-1 must be ≥ 0"),
    ({"train.regime": "window", "model.weight_drop": "0.5", "model.tar": "1.0"},
     "train.regime='window' does not support model.weight_drop=0.5, model.tar=1.0"),
    ({"model.tie_weights": "true", "model.one_hot": "true"},
     "model.tie_weights=True needs an embedding to tie, but model.one_hot=True"),
    ({"train.regime": "window", "model.dropout": "0.5"},
     "train.regime='window' does not support model.dropout=0.5"),
    ({"train.optimizer": "sgd", "train.optimizer_options.b1": "0.9"},
     "train.optimizer_options.b1 is not an option of 'sgd'"),
    ({"train.window_k": "-1"}, "train.window_k=-1 must be ≥ 0"),
    ({"train.checkpoint_every": "-1"}, "train.checkpoint_every=-1 must be ≥ 0"),
    ({"train.lr_decay_start": "-1"}, "train.lr_decay_start=-1 must be ≥ 0"),
    ({"train.lr_decay": "0.0"}, "train.lr_decay=0.0 must be in (0, 1]"),
    ({"data.max_vocab": "-1"}, "data.max_vocab=-1 must be ≥ 0"),
    ({"data.max_vocab": "1"}, "data.max_vocab=1 must be 0 (no cap) or more than the 1 special"),
    ({"data.bos": "<s>", "data.eos": "</s>", "data.max_vocab": "3"},
     "more than the 3 special tokens ('<s>', '</s>', '<unk>')"),
    ({"data.max_train_lines": "-1"}, "data.max_train_lines=-1 must be ≥ 0"),
    ({"data.train_fraction": "0.0"}, "data.train_fraction=0.0 must be in (0, 1)"),
    ({"sample.num_samples": "-1"}, "sample.num_samples=-1 must be ≥ 0"),
    ({"sample.top_p": "1.5"}, "sample.top_p=1.5 must be in (0, 1]"),
    ({"seed": str(2**32)}, "seed=4294967296 must be ≥ 0 and < 2**32"),
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
    need = memory.estimate_memory(small, vocab_size=10_000)
    assert need["parameters"] == 4 * 4_651_600  # the README's parameter count, float32
    assert need["optimizer state"] == 0  # plain SGD keeps no state
    adam = resolve(apply_overrides(config_lib.load_config("zaremba_small"),
                                   {"train.optimizer": "adam"}))
    assert memory.estimate_memory(adam, 10_000)["optimizer state"] == 2 * need["parameters"]
    config_lib.check_memory(small, 10_000, available=need["total"])
    with pytest.raises(ConfigError, match="lower model.hidden_size"):
        config_lib.check_memory(small, 10_000, available=need["total"] - 1)
    config_lib.check_memory(small, 10_000, available=4 * need["total"], members=4)
    with pytest.raises(ConfigError, match="4 population members on one device need about .*"
                       "train fewer members together"):
        config_lib.check_memory(small, 10_000, available=4 * need["total"] - 1, members=4)


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


def test_float64_needs_64_bit_jax(monkeypatch):
    monkeypatch.setattr(config_lib, "_x64_enabled", lambda: False)
    with pytest.raises(ConfigError, match=r"model.param_dtype='float64' needs 64-bit JAX.*"
                                          "JAX_ENABLE_X64=1"):
        resolve(apply_overrides(get_config(), {"model.param_dtype": "float64"}))
    resolve(get_config())  # float32 does not care


def test_the_greedy_flag_goes_with_top_k_and_top_p():
    typed = resolve(apply_overrides(get_config(), {"sample.greedy": "true", "sample.top_k": "5",
                                                   "sample.top_p": "0.9"}))
    assert typed.sample.greedy and typed.sample.top_k == 5


def test_an_integer_is_a_fine_float_and_becomes_one():
    config = get_config()
    config.train.learning_rate = 1  # what a config file may write
    typed = resolve(config)
    assert typed.train.learning_rate == 1.0 and isinstance(typed.train.learning_rate, float)


def _broken(**changes):
    """A ConfigDict built from scratch the way a config file might (no get_config)."""
    raw = get_config().to_dict()
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for p in parents:
            node = node[p]
        if value is KeyError:
            del node[leaf]
        else:
            node[leaf] = value
    return ml_collections.ConfigDict(raw)


@pytest.mark.parametrize("changes, phrases", [
    ({"model.hidden_size": "big"}, ["model.hidden_size must be an integer, got 'big'"]),
    ({"model.dropout": True, "train.epochs": 2.5},
     ["model.dropout must be a number, got True", "train.epochs must be an integer, got 2.5"]),
    ({"model.cell": KeyError}, ["model.cell is missing"]),
    ({"model.cells": "lstm"}, ["unknown config key 'model.cells'; model has cell,"]),
    ({"model": 5}, ["model must be a group of keys"]),
    ({"seed": True, "sample.prime": 3}, ["seed must be an integer, got True",
                                         "sample.prime must be a string, got 3"]),
    ({"train.optimizer_options": 5}, ["train.optimizer_options must be a group of keys"]),
    ({"extra": 1}, ["unknown config key 'extra'"]),
])
def test_a_config_built_by_hand_has_its_keys_and_types_checked(changes, phrases):
    with pytest.raises(ConfigError) as raised:
        resolve(_broken(**changes))
    assert all(p in str(raised.value) for p in phrases), str(raised.value)
    assert "\n" not in str(raised.value)


def test_resolve_takes_a_configdict_or_a_run_config():
    typed = resolve(get_config())
    assert resolve(typed) is typed
    with pytest.raises(ConfigError, match="must be an ml_collections.ConfigDict"):
        resolve({"seed": 0})


def test_the_typed_config_round_trips_with_optimizer_options():
    config = apply_overrides(get_config(), {"train.optimizer_options.eps": "1e-6",
                                            "model.dropout": "0.25"})
    typed = resolve(config)
    assert dict(typed.train.optimizer_options) == {"eps": 1e-6}
    with pytest.raises(TypeError):
        typed.train.optimizer_options["eps"] = 1.0
    back = typed.to_configdict()
    assert back == config and resolve(back) == typed
    assert config_lib.from_json(config_lib.to_json(back)) == config


def test_the_core_reads_the_typed_config():
    typed = resolve(apply_overrides(get_config(), {"model.cell": "gru", "model.num_layers": "2"}))
    lm = config_lib.build_lm_config(typed, vocab_size=30)
    assert lm.cell == config_lib.cells.GRU() and lm.num_layers == 2 and lm.vocab_size == 30
    assert config_lib.build_cell(typed.model) == config_lib.cells.GRU()


def test_the_memory_message_names_each_part_and_what_to_lower():
    typed = resolve(get_config())
    with pytest.raises(ConfigError) as raised:
        config_lib.check_memory(typed, 100, available=2**20)
    text = str(raised.value)
    for phrase in ("the model needs about", "GiB of memory (parameters", "optimizer state",
                   "activations", "but this machine has 0.0 GiB", "lower model.hidden_size"):
        assert phrase in text
    assert memory.available_memory()[0] > 2**20


def test_memory_counts_the_logits_unless_they_are_chunked_and_the_evaluation_batch():
    config = apply_overrides(get_config(), {"data.batch_size": "8", "data.seq_len": "10"})
    plain = memory.estimate_memory(resolve(config), vocab_size=50_000)
    chunked = memory.estimate_memory(
        resolve(apply_overrides(get_config(), {"data.batch_size": "8", "data.seq_len": "10",
                                               "model.logits_chunk": "16"})), 50_000)
    assert chunked["activations"] < plain["activations"] / 4
    assert chunked["parameters"] == plain["parameters"]
    big_eval = memory.estimate_memory(
        resolve(apply_overrides(get_config(), {"data.batch_size": "8", "data.seq_len": "10",
                                               "data.eval_batch_size": "1000"})), 50_000)
    assert big_eval["activations"] > 10 * plain["activations"]
    assert plain["total"] == sum(v for k, v in plain.items() if k != "total")


@pytest.mark.parametrize("text, phrase", [
    ('{"model": {"hidden_size": "5"}}', "model.hidden_size must be an integer, got '5'"),
    ('{"data": {"source": 5}}', "data.source must be a string, got 5"),
    ('{"model": {"dropout": true}}', "model.dropout must be a number, got True"),
    ('{"model": 5}', "model must be a JSON object of keys, got 5"),
    ('{"train": {"optimizer_options": [1]}}', "train.optimizer_options must be a JSON object"),
    ('{"colour": 1}', "unknown config key 'colour'"),
    ('"config"', "does not hold a config"),
    ('', "is not valid JSON"),
])
def test_a_saved_config_with_wrong_types_is_rejected(text, phrase):
    with pytest.raises(ConfigError) as raised:
        config_lib.from_json(text, source="runs/x/config.json")
    assert phrase in str(raised.value) and str(raised.value).startswith("runs/x/config.json")


def test_an_older_saved_config_without_newer_keys_takes_the_base_values():
    config = config_lib.from_json('{"model": {"hidden_size": 7, "dropout": 0}}')
    assert config.model.hidden_size == 7 and config.model.dropout == 0.0
    assert isinstance(config.model.dropout, float)
    assert config.train.epochs == get_config().train.epochs


def test_list_configs_reads_docstrings_without_running_the_files(tmp_path, monkeypatch):
    (tmp_path / "loud.py").write_text('"""Purpose line.\n\nMore."""\nraise SystemExit(3)\n')
    (tmp_path / "grid.py").write_text('"""A grid."""\ndef get_config(): pass\n'
                                      'def get_sweep(): pass\n')
    (tmp_path / "_private.py").write_text('"""Hidden."""\n')
    (tmp_path / "broken.py").write_text("def (:\n")
    monkeypatch.setattr(config_lib, "CONFIG_DIR", tmp_path)
    assert config_lib.list_configs() == [("broken", "(unreadable)"), ("grid", "sweep: A grid."),
                                         ("loud", "Purpose line.")]


def test_every_shipped_config_file_is_listed_with_a_one_line_purpose():
    files = sorted(p.stem for p in config_lib.CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))
    entries = config_lib.list_configs()
    assert [name for name, _ in entries] == files
    for name, purpose in entries:
        assert purpose and purpose != "(unreadable)" and "\n" not in purpose, name
        assert len(purpose.removeprefix("sweep: ")) > 10, name


def test_the_shipped_configs_are_the_package_jax_lm_configs():
    import importlib.resources
    from pathlib import Path

    folder = Path(str(importlib.resources.files("jax_lm.configs")))
    assert folder.resolve() == config_lib.CONFIG_DIR.resolve()
    assert (folder / "zaremba_small.py").is_file()
