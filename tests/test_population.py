"""A population (seeds trained together, one vmapped step) equals its members' single runs,
and uses the same loop: time budgets, eval at start, checkpoints and resume work per member."""

import jax
import numpy as np
import pytest

from jax_lm import checkpoint, loop, runs, sweep
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


def _final_params(run_dir):
    return runs.load_run(run_dir, "latest").params


def _members(config, seeds):
    out = []
    for seed in seeds:
        member = config_lib.from_json(config_lib.to_json(config))
        member.seed = seed
        out.append(member)
    return out


def test_seeds_trained_together_match_their_single_runs(corpus_file, tmp_path):
    config = _config(corpus_file, tmp_path)  # float64 (tests/conftest.py enables x64)
    seeds = [3, 5]
    together = loop.fit_population(_members(config, seeds), [tmp_path / f"v{s}" for s in seeds],
                                  progress=False, print_fn=lambda _: None)
    for seed, result in zip(seeds, together):
        single_config = _config(corpus_file, tmp_path, seed=seed)
        single = loop.fit(single_config, tmp_path / f"s{seed}", progress=False,
                         print_fn=lambda _: None)
        assert result["valid_nll"] == pytest.approx(single["valid_nll"], rel=1e-10)
        for a, b in zip(jax.tree.leaves(_final_params(tmp_path / f"v{seed}")),
                        jax.tree.leaves(_final_params(tmp_path / f"s{seed}"))):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    assert together[0]["valid_nll"] != together[1]["valid_nll"]  # the seeds differ


def test_a_batcher_whose_batches_depend_on_the_seed_is_refused(corpus_file, tmp_path):
    config = _config(corpus_file, tmp_path, **{"data.batcher": "random_windows"})
    with pytest.raises(config_lib.ConfigError, match="batcher"):
        loop.fit_population(_members(config, [0, 1]), [tmp_path / "a", tmp_path / "b"])


def test_a_sweep_with_vmap_seeds_trains_each_group_together_and_tabulates_it(
        corpus_file, tmp_path):
    path = tmp_path / "tiny_sweep.py"
    path.write_text(SWEEP_FILE.format(source=str(corpus_file), cache=str(tmp_path / "cache")))
    said = []
    records = sweep.run_sweep(path, tmp_path / "out", vmap_seeds=True, print_fn=said.append)
    assert sum("2 seeds at once" in line for line in said) == 2
    assert len(records) == 4 and all(np.isfinite(r["valid_nll"]) for r in records)
    assert "| cell=gru | 2 |" in (tmp_path / "out" / "results.md").read_text()


def test_a_population_with_budget_eval_at_start_and_checkpoints_resumes_like_one_by_one(
        corpus_file, tmp_path):
    """The options the old vmapped-seeds path refused, through the one loop."""
    settings = {"train.eval_at_start": True, "train.checkpoint_every": 3, "train.epochs": 2}
    config = _config(corpus_file, tmp_path, **settings)
    seeds = [1, 2]
    cut = _members(_config(corpus_file, tmp_path, **settings, **{"train.max_steps": 5}), seeds)
    loop.fit_population(cut, [tmp_path / f"p{s}" for s in seeds], progress=False,
                       print_fn=lambda _: None)
    assert all(checkpoint.saved_steps(tmp_path / f"p{s}")[-1] == 5 for s in seeds)
    resumed = loop.fit_population(_members(config, seeds), [tmp_path / f"p{s}" for s in seeds],
                                 resume=True, progress=False, print_fn=lambda _: None)
    for seed, result in zip(seeds, resumed):
        single = loop.fit(_config(corpus_file, tmp_path, **settings, seed=seed),
                         tmp_path / f"one{seed}", progress=False, print_fn=lambda _: None)
        assert result["valid_nll"] == pytest.approx(single["valid_nll"], rel=1e-10)
        for a, b in zip(jax.tree.leaves(_final_params(tmp_path / f"p{seed}")),
                        jax.tree.leaves(_final_params(tmp_path / f"one{seed}"))):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
