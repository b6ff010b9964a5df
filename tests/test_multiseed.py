"""Seeds trained together (one vmapped step for all) equal their single runs."""

import json

import jax
import numpy as np
import pytest

from jax_lm import checkpoint, multiseed, sweep, train
from jax_lm import config as config_lib

from tests.test_sweep import SWEEP_FILE
from tests.test_train import corpus_file  # noqa: F401 - a fixture shared with test_train


def _config(corpus_file, tmp_path, **overrides):
    base = {
        "data.source": str(corpus_file), "data.cache_dir": str(tmp_path / "cache"),
        "data.batch_size": "4", "data.seq_len": "16", "model.hidden_size": "12",
        "model.param_dtype": "float64", "model.dropout": "0.2", "train.epochs": "2",
        "train.log_every": "5", "train.learning_rate": "0.01",
        "train.lr_rule": "halve_when_loss_rises", "sample.num_tokens": "10",
    }
    return config_lib.apply_overrides(config_lib.get_config(),
                                      {**base, **{k: str(v) for k, v in overrides.items()}})


def _final_params(run_dir, config, vocab_size):
    lm = config_lib.build_lm_config(config, vocab_size)
    like = train.init_train_state(jax.random.key(0), lm, train.build_optimizer(config),
                                  config.data.batch_size)
    state, _ = checkpoint.load_checkpoint(checkpoint.latest_path(run_dir), like)
    return state.params


def test_seeds_trained_together_match_their_single_runs(corpus_file, tmp_path):
    config = _config(corpus_file, tmp_path)  # float64 (tests/conftest.py enables x64)
    seeds = [3, 5]
    together = multiseed.train_seeds(config, seeds, [tmp_path / f"v{s}" for s in seeds],
                                     print_fn=lambda _: None)
    for seed, result in zip(seeds, together):
        single_config = _config(corpus_file, tmp_path, seed=seed)
        single = train.train_and_evaluate(single_config, tmp_path / f"s{seed}",
                                          progress=False, print_fn=lambda _: None)
        assert result["valid_nll"] == pytest.approx(single["valid_nll"], rel=1e-10)
        vocab_size = len(json.loads((tmp_path / f"s{seed}" / "vocab.json").read_text())
                         ["tokens"])
        for a, b in zip(
                jax.tree.leaves(_final_params(tmp_path / f"v{seed}", single_config, vocab_size)),
                jax.tree.leaves(_final_params(tmp_path / f"s{seed}", single_config, vocab_size))):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    assert together[0]["valid_nll"] != together[1]["valid_nll"]  # the seeds differ


def test_a_batcher_whose_batches_depend_on_the_seed_is_refused(corpus_file, tmp_path):
    config = _config(corpus_file, tmp_path, **{"data.batcher": "random_windows"})
    with pytest.raises(config_lib.ConfigError, match="batcher"):
        multiseed.train_seeds(config, [0, 1], [tmp_path / "a", tmp_path / "b"])


def test_a_sweep_with_vmap_seeds_trains_each_group_together_and_tabulates_it(
        corpus_file, tmp_path):
    path = tmp_path / "tiny_sweep.py"
    path.write_text(SWEEP_FILE.format(source=str(corpus_file), cache=str(tmp_path / "cache")))
    said = []
    records = sweep.run_sweep(path, tmp_path / "out", vmap_seeds=True, print_fn=said.append)
    assert sum("2 seeds at once" in line for line in said) == 2
    assert len(records) == 4 and all(np.isfinite(r["valid_nll"]) for r in records)
    assert "| cell=gru | 2 |" in (tmp_path / "out" / "results.md").read_text()
