"""Sweeps: a grid runs as ordinary runs, finished points are skipped, the table is right."""

import json

import numpy as np
import pytest

from jax_lm import cli
from jax_lm import sweeps as sweep

SWEEP_FILE = '''
from jax_lm.config import get_config as base

def get_config():
    c = base()
    c.data.source = {source!r}
    c.data.cache_dir = {cache!r}
    c.data.batch_size = 4
    c.data.seq_len = 8
    c.model.hidden_size = 8
    c.train.max_steps = 3
    c.train.log_every = 3
    c.sample.num_tokens = 5
    return c

def get_sweep():
    return [{{"model.cell": cell, "seed": seed}} for cell in ("rnn", "gru") for seed in (0, 1)]
'''


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    (root / "text.txt").write_text("to be or not to be, that is the question.\n" * 30)
    path = root / "tiny_sweep.py"
    path.write_text(SWEEP_FILE.format(source=str(root / "text.txt"), cache=str(root / "cache")))
    assert cli.main(["sweep", str(path), "--workdir", str(root / "out"), "--no-progress"]) == 0
    return path, root / "out"


def test_every_grid_point_is_a_run_and_the_table_and_plot_are_written(finished_sweep):
    _, out = finished_sweep
    for name in ("cell=rnn,seed=0", "cell=rnn,seed=1", "cell=gru,seed=0", "cell=gru,seed=1"):
        assert (out / name / "checkpoints").is_dir(), name
    assert (out / "results.png").is_file()
    table = (out / "results.md").read_text()
    assert "| cell=rnn | 2 |" in table and "| cell=gru | 2 |" in table


def test_summary_is_mean_and_sample_std_over_seeds(finished_sweep):
    _, out = finished_sweep
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    rows = {r["setting"]: r for r in sweep.summarize(records)}
    rnn = [r["valid_nll"] for r in records if r["overrides"]["model.cell"] == "rnn"]
    assert rows["cell=rnn"]["mean"] == pytest.approx(np.mean(rnn))
    assert rows["cell=rnn"]["std"] == pytest.approx(np.std(rnn, ddof=1))
    assert rnn[0] != rnn[1]  # the seeds really differ


def test_running_a_sweep_again_skips_finished_points(finished_sweep, capsys):
    path, out = finished_sweep
    before = (out / "cell=rnn,seed=0" / "metrics.jsonl").read_text()
    records = sweep.run_sweep(path, out)
    assert capsys.readouterr().out.count("finished earlier, skipped") == 4
    assert (out / "cell=rnn,seed=0" / "metrics.jsonl").read_text() == before
    assert all(r["seconds"] > 0 for r in records)  # the training time kept in each run


def test_a_config_without_a_grid_is_not_a_sweep(tmp_path):
    path = tmp_path / "plain.py"
    path.write_text("from jax_lm.config import get_config\n")
    with pytest.raises(sweep.config_lib.ConfigError, match="no get_sweep"):
        sweep.load_sweep(path)


def test_the_point_without_overrides_gets_a_folder_of_its_own():
    assert sweep.point_name({}) == "base"
    assert sweep.point_name({"model.cell": "gru", "seed": 1}) == "cell=gru,seed=1"
