"""A population (members trained together, one vmapped step) equals its members' single
runs, and uses the same loop: time budgets, eval at start, checkpoints and resume work per
member; sweeps form populations themselves and resume them after a kill."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from jax_lm import checkpoint, loop, rundir, runs
from jax_lm import sweeps as sweep
from jax_lm import config as config_lib

from jax_lm.rundir import RunFolderWarning
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
    assert sum("(2 together)" in line for line in said) == 2
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


LR_SWEEP = """
from jax_lm.config import get_config as base

def get_config():
    c = base()
    c.data.source = {source!r}
    c.data.cache_dir = {cache!r}
    c.data.batch_size = 4
    c.data.seq_len = 8
    c.model.hidden_size = 8
    c.model.param_dtype = "float64"
    c.model.dropout = 0.1
    c.train.max_steps = 6
    c.train.log_every = 2
    c.train.checkpoint_every = 2
    c.train.clip_norm = 1.0
    c.sample.num_tokens = 5
    return c

def get_sweep():
    return [{{"train.learning_rate": lr, "seed": seed}} for lr in (0.01, 0.05) for seed in (0, 1)]
"""

KILLED_SWEEP = textwrap.dedent('''
    import os, signal, sys
    from jax_lm import checkpoint, cli
    real, calls = checkpoint.save_checkpoint, []
    def save_then_die(*args, **kwargs):  # kill -9 while a step-4 checkpoint is written
        calls.append(1)
        if len(calls) == 9:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    checkpoint.save_checkpoint = save_then_die
    sys.exit(cli.main(["sweep", sys.argv[1], "--workdir", sys.argv[2], "--no-progress",
                       "--population", "on"]))
''')


def _valid(records):
    return {r["name"]: r["valid_nll"] for r in records}


def test_a_sweep_trains_its_grid_as_one_population_like_one_by_one_and_resumes_after_kill_9(
        corpus_file, tmp_path):
    path = tmp_path / "lr_sweep.py"
    path.write_text(LR_SWEEP.format(source=str(corpus_file), cache=str(tmp_path / "cache")))
    said = []
    alone = sweep.run_sweep(path, tmp_path / "off", population_mode="off", print_fn=said.append)
    assert not any("together" in line for line in said)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_ENABLE_X64": "1"}
    killed = subprocess.run([sys.executable, "-c", KILLED_SWEEP, str(path), str(tmp_path / "on")],
                            cwd=Path(__file__).resolve().parents[1], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert "(4 together)" in killed.stdout
    said = []
    with pytest.warns(RunFolderWarning, match="took over the lock"):  # the killed holder's
        together = sweep.run_sweep(path, tmp_path / "on", population_mode="on",
                                   print_fn=said.append)
    assert "(4 together)" in " ".join(said)  # the 4 members resumed as one population
    assert set(_valid(together)) == set(_valid(alone))
    for name, value in _valid(alone).items():
        assert _valid(together)[name] == pytest.approx(value, rel=1e-10), name
    assert len(set(_valid(alone).values())) == 4  # learning rates and seeds differ
    for name in _valid(alone):
        losses = [[r["train_loss"] for r in rundir.read_records(tmp_path / mode / name /
                                                                 rundir.METRICS)
                   if "train_loss" in r] for mode in ("on", "off")]
        assert len(losses[0]) == 3
        np.testing.assert_allclose(losses[0], losses[1], rtol=1e-10)


def test_members_that_differ_in_more_than_member_fields_are_refused(corpus_file, tmp_path):
    a = _config(corpus_file, tmp_path)
    b = _config(corpus_file, tmp_path, **{"model.hidden_size": 16, "train.learning_rate": 0.1})
    with pytest.raises(config_lib.ConfigError, match="these differ too: model.hidden_size"):
        loop.fit_population([a, b], [tmp_path / "a", tmp_path / "b"])


def test_a_diverging_member_is_frozen_and_reported_while_the_others_go_on(corpus_file, tmp_path):
    config = _config(corpus_file, tmp_path, **{"model.dropout": 0.0, "train.epochs": 1,
                                               "train.log_every": 1})
    wild = _config(corpus_file, tmp_path, **{"model.dropout": 0.0, "train.epochs": 1,
                                             "train.learning_rate": 1e308,
                                             "train.clip_norm": 0, "train.log_every": 1,
                                             "train.optimizer": "sgd"})
    config.train.optimizer = "sgd"
    said = []
    results = loop.fit_population([config, wild], [tmp_path / "calm", tmp_path / "wild"],
                                  progress=False, print_fn=said.append)
    assert "diverged_at" not in results[0] and np.isfinite(results[0]["valid_nll"])
    assert results[1]["diverged_at"] == 2
    logged = [r["step"] for r in rundir.read_records(tmp_path / "wild" / rundir.METRICS)
              if "train_loss" in r]
    assert logged == [1, 2]  # a frozen member logs no more training
    assert any("wild: non-finite loss" in line and "frozen" in line for line in said)
    frozen = [r for r in runs.load_run(tmp_path / "wild", "latest").params.values()]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(frozen))
    single = loop.fit(_config(corpus_file, tmp_path, **{"model.dropout": 0.0, "train.epochs": 1,
                                                          "train.log_every": 1,
                                                          "train.optimizer": "sgd"}),
                      tmp_path / "alone", progress=False, print_fn=lambda _: None)
    assert results[0]["valid_nll"] == pytest.approx(single["valid_nll"], rel=1e-10)


def test_sweeps_form_populations_by_default_on_accelerators_only(monkeypatch):
    assert sweep.auto_grouping() == "off"  # this CPU: populations train slower here
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert sweep.auto_grouping() == "on"


def test_members_differing_in_every_member_field_equal_their_single_runs(corpus_file, tmp_path):
    """Learning rate and clip norm (optimizer state), dropout (a step input), init scale
    and seed (initialisation), the Zaremba decay (host) — each member as if alone."""
    common = {"train.epochs": 3, "train.lr_rule": "zaremba", "model.init": "uniform"}
    members = [
        {"seed": 1, "train.learning_rate": 0.01, "train.clip_norm": 0.0, "model.dropout": 0.0,
         "model.init_scale": 0.05, "train.lr_decay": 0.5, "train.lr_decay_start": 1},
        {"seed": 2, "train.learning_rate": 0.03, "train.clip_norm": 0.5, "model.dropout": 0.3,
         "model.init_scale": 0.2, "train.lr_decay": 0.8, "train.lr_decay_start": 2},
    ]
    configs = [_config(corpus_file, tmp_path, **common, **m) for m in members]
    together = loop.fit_population(configs, [tmp_path / "p0", tmp_path / "p1"], progress=False,
                                   print_fn=lambda _: None)
    for i, member in enumerate(members):
        alone = loop.fit(_config(corpus_file, tmp_path, **common, **member), tmp_path / f"a{i}",
                         progress=False, print_fn=lambda _: None)
        assert together[i]["valid_nll"] == pytest.approx(alone["valid_nll"], rel=1e-12)
        logs = [[(r["step"], r["train_loss"], r["lr"]) for r in rundir.read_records(
            tmp_path / name / rundir.METRICS) if "train_loss" in r] for name in (f"p{i}", f"a{i}")]
        assert [s for s, _, _ in logs[0]] == [s for s, _, _ in logs[1]]
        assert [lr for _, _, lr in logs[0]] == [lr for _, _, lr in logs[1]]
        np.testing.assert_allclose([x for _, x, _ in logs[0]], [x for _, x, _ in logs[1]],
                                   rtol=1e-12)
        for a, b in zip(jax.tree.leaves(_final_params(tmp_path / f"p{i}")),
                        jax.tree.leaves(_final_params(tmp_path / f"a{i}"))):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    lrs = [{r["lr"] for r in rundir.read_records(tmp_path / f"p{i}" / rundir.METRICS)
            if "lr" in r} for i in range(2)]
    assert lrs[0] == {0.01, 0.005, 0.0025} and lrs[1] == {0.03, 0.024}  # each its own decay
