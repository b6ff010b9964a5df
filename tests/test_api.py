"""The Python API: get_config, fit, load_run, Run, sweep — the command line's engine with a
Python face (same configs, loop and run folders), usable from any folder in a notebook."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

import jax_lm
from jax_lm import callbacks, loop, rundir
from jax_lm.data import DataError

from tests.test_sweep import SWEEP_FILE
from tests.test_train import TEXT

ROOT = Path(__file__).resolve().parents[1]

# The example, as a notebook would run it, from a folder outside the checkout.
SNIPPET = textwrap.dedent('''
    import json, sys
    import matplotlib
    before = matplotlib.get_backend()
    import jax_lm
    assert "jax" not in sys.modules  # importing the package loads nothing heavy
    cfg = jax_lm.get_config("base", **{"train.max_steps": 20})
    run = jax_lm.fit(cfg, workdir="runs/nb", progress=False)
    history = run.history
    valid = run.evaluate("valid")
    text = run.sample(prime="def ", num_tokens=40, seed=0)
    fig = run.plot(); same = jax_lm.load_run(run.path)
    json.dump({"steps": history.steps["step"].tolist(), "final": history.final["valid_nll"],
               "valid": valid, "text": text, "again": same.sample(prime="def ", num_tokens=40,
                                                                 seed=0),
               "png": fig._repr_png_()[:8].hex(), "figure": type(fig).__mro__[1].__module__,
               "backend": [before, matplotlib.get_backend()], "path": str(run.path)},
              open("out.json", "w"))
''')


def test_the_readme_example_runs_from_any_folder_and_leaves_matplotlib_alone(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", SNIPPET], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["steps"] == [20] and out["path"] == "runs/nb"
    assert (tmp_path / "runs" / "nb" / "config.json").is_file()
    assert out["valid"]["nll"] == pytest.approx(out["final"], rel=1e-12)  # same params, data
    assert np.isfinite(out["valid"]["ppl"]) and out["valid"]["tokens"] > 0
    assert out["text"].startswith("def ") and len(out["text"]) == 4 + 40  # chars
    assert out["again"] == out["text"]  # the loaded run samples the same text
    assert out["png"] == b"\x89PNG\r\n\x1a\n".hex()  # shown inline as a PNG
    assert out["figure"] == "matplotlib.figure"
    assert out["backend"][0] == out["backend"][1]


def _tiny(tmp_path, **more):
    (tmp_path / "tiny.txt").write_text(TEXT)
    return jax_lm.get_config("base", {
        "data.source": str(tmp_path / "tiny.txt"), "data.cache_dir": str(tmp_path / "cache"),
        "data.batch_size": 4, "data.seq_len": 16, "model.hidden_size": 12, "train.epochs": 2,
        "train.log_every": 3, "sample.num_tokens": 10, "model.param_dtype": "float64"}, **more)


class _StopAt(callbacks.Callback):
    """SIGINT while step `step` is logged, as the notebook's stop button sends it."""

    def __init__(self, step):
        self.step = step

    def on_record(self, member, record):
        if record.get("step") == self.step and "train_loss" in record:
            os.kill(os.getpid(), signal.SIGINT)


def test_fit_stopped_like_a_notebook_cell_resumes_when_called_again(tmp_path):
    config = _tiny(tmp_path)
    whole = jax_lm.fit(config, tmp_path / "whole", progress=False)
    with pytest.raises(jax_lm.Interrupted) as stopped:
        jax_lm.fit(config, tmp_path / "cut", callbacks=[_StopAt(6)], progress=False)
    assert stopped.value.saved and stopped.value.step == 6
    again = jax_lm.fit(config, tmp_path / "cut", progress=False)
    assert isinstance(again, jax_lm.Run) and again.path == tmp_path / "cut"
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(a, b)  # bitwise
    for name in ("steps", "epochs"):
        for key, column in getattr(whole.history, name).items():
            if key != "tokens_per_s":
                np.testing.assert_array_equal(column, getattr(again.history, name)[key])
    finished = jax_lm.fit(config, tmp_path / "cut", progress=False)  # nothing left to do
    assert finished.history.final == again.history.final


def test_run_gives_history_scores_samples_and_both_parameter_sets(tmp_path):
    run = jax_lm.fit(_tiny(tmp_path), tmp_path / "run", progress=False)
    h = run.history
    assert h.steps["step"].dtype == np.int64 and list(h.epochs["epoch"]) == [1, 2]
    assert set(h.final) >= {"valid_nll", "step"}  # (this corpus has no test split)
    assert run.evaluate()["nll"] == pytest.approx(h.final["valid_nll"], rel=1e-12)
    assert run.evaluate("valid", run.last_params)["nll"] == pytest.approx(
        h.epochs["valid_nll"][-1], rel=1e-12)
    texts = run.sample(num_tokens=12, temperature=0.5, top_k=3, seed=1, num_samples=2)
    assert len(texts) == 2 and texts != [run.sample(num_tokens=12, seed=1)] * 2
    assert run.sample(num_tokens=8, greedy=True, seed=0) == run.sample(num_tokens=8,
                                                                       greedy=True, seed=5)
    with pytest.raises(jax_lm.ConfigError, match="sample.temperature"):
        run.sample(temperature=-1.0)
    with pytest.raises(DataError, match="no 'test' split; it has train, valid"):
        run.evaluate("test")
    pd = pytest.importorskip("pandas")
    assert isinstance(h.to_pandas("epochs"), pd.DataFrame)
    assert "Run(" in repr(run) and "valid ppl" in repr(run)


def test_get_config_takes_python_values_and_reports_every_problem(tmp_path):
    config = jax_lm.get_config("zaremba_small", {"train.epochs": 2}, seed=3,
                               **{"model.dropout": 0.25, "train.eval_test": False})
    assert (config.train.epochs, config.seed, config.model.dropout) == (2, 3, 0.25)
    assert config.train.eval_test is False and isinstance(config, jax_lm.RunConfig)
    assert config.replace({"model.hidden_size": 64}).model.hidden_size == 64
    assert config.model.hidden_size == 200  # frozen: replace gives a copy
    with pytest.raises(jax_lm.ConfigError, match="unknown config key 'model.hiden_size'"):
        jax_lm.get_config("base", **{"model.hiden_size": 3})
    with pytest.raises(jax_lm.ConfigError, match="model.dropout=1.5 must be in"):
        jax_lm.get_config("base", **{"model.dropout": 1.5})


def test_sweep_returns_the_table_with_each_row_linked_to_its_run(tmp_path):
    (tmp_path / "text.txt").write_text("to be or not to be, that is the question.\n" * 30)
    path = tmp_path / "tiny_sweep.py"
    path.write_text(SWEEP_FILE.format(source=str(tmp_path / "text.txt"),
                                      cache=str(tmp_path / "cache")))
    result = jax_lm.sweep(path, tmp_path / "out", **{"train.max_steps": 2})
    assert len(result) == 4 and [r["setting"] for r in result.table] == ["cell=rnn", "cell=gru"]
    assert repr(result) == (tmp_path / "out" / "results.md").read_text()
    run = result.runs["cell=gru,seed=1"]
    assert run.config.model.cell == "gru" and run.config.seed == 1
    assert run.history.final["valid_nll"] == pytest.approx(
        [r for r in result.records if r["name"] == "cell=gru,seed=1"][0]["valid_nll"])
    assert all(r["overrides"] for r in result.records)
    assert rundir.read_records(tmp_path / "out" / "cell=rnn,seed=0" / rundir.METRICS)[-1][
        "step"] == 2


def test_the_package_exports_the_api_lazily():
    assert set(jax_lm.__all__) >= {"get_config", "fit", "load_run", "sweep", "Run"}
    assert jax_lm.fit.__module__ == "jax_lm.api" and jax_lm.loop is loop
    with pytest.raises(AttributeError):
        jax_lm.no_such_name  # noqa: B018


def test_sweep_takes_a_grid_over_any_config_and_forms_populations(tmp_path):
    config = _tiny(tmp_path, **{"train.max_steps": 4, "train.epochs": 1})
    grid = [{"train.learning_rate": lr, "seed": seed} for lr in (0.01, 0.02) for seed in (0, 1)]
    result = jax_lm.sweep(config, tmp_path / "grid", grid=grid, population="on")
    assert [r["name"] for r in result.records] == [
        "learning_rate=0.01,seed=0", "learning_rate=0.01,seed=1",
        "learning_rate=0.02,seed=0", "learning_rate=0.02,seed=1"]
    assert result.runs["learning_rate=0.02,seed=1"].config.train.learning_rate == 0.02
    assert len({r["valid_nll"] for r in result.records}) == 4
    with pytest.raises(jax_lm.ConfigError, match="non-empty list of override dicts"):
        jax_lm.sweep(config, tmp_path / "none", grid=[])
