"""Every experiment config loads, is locked against unknown keys, and builds a model."""

from pathlib import Path

import pytest

from jax_lm import config as config_lib

CONFIGS = sorted(p.stem for p in config_lib.CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))


def test_the_experiment_configs_are_found():
    assert {"base", "zaremba_small", "gist_lstm", "tutorial_rnn"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_locked_and_builds_a_model(name):
    config = config_lib.load_config(name)
    lm_config = config_lib.build_lm_config(config_lib.resolve(config), vocab_size=50)
    assert lm_config.hidden_size == config.model.hidden_size
    with pytest.raises(config_lib.ConfigError, match="unknown config key"):
        config_lib.apply_overrides(config, {"model.hidden_sizes": "3"})
    assert config_lib.from_json(config_lib.to_json(config)) == config


def test_a_config_file_path_works_and_a_missing_one_lists_the_configs(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("from jax_lm.config import get_config as base\n"
                    "def get_config():\n    c = base()\n    c.model.hidden_size = 7\n    return c\n")
    assert config_lib.load_config(str(path)).model.hidden_size == 7
    with pytest.raises(config_lib.ConfigError, match="zaremba_small"):
        config_lib.load_config("no_such_config")


def test_options_a_cell_does_not_have_are_rejected():
    config = config_lib.load_config("base")
    config_lib.apply_overrides(config, {"model.cell": "gru", "model.peepholes": "true"})
    with pytest.raises(config_lib.ConfigError, match="does not apply to cell 'gru'"):
        config_lib.build_lm_config(config, vocab_size=10)


def test_the_seed_configs_describe_the_seed_models():
    gist = config_lib.build_lm_config(config_lib.load_config("gist_lstm"), 100)
    assert gist.cell == config_lib.cells.LSTM(gate_fn="tanh", peepholes=True) and gist.one_hot
    rnn = config_lib.build_lm_config(config_lib.load_config("tutorial_rnn"), 8000)
    assert rnn.cell == config_lib.cells.RNN(use_bias=False) and not rnn.output_bias
    assert Path(config_lib.load_config("zaremba_small").data.source).name == "ptb"
