"""The fit loop's edges: callbacks, TensorBoard events, no global side effects, figures."""

from __future__ import annotations

import math
import struct

import jax
import pytest

from jax_lm import callbacks, cli, config as config_lib, loop, train

from tests.test_train import _config, corpus_file  # noqa: F401 - shared fixture and config


class Recorder(callbacks.Callback):
    def __init__(self):
        self.events = []

    def on_start(self, info):
        self.events.append(("start", info.start_step, info.total_steps))

    def on_record(self, member, record):
        self.events.append(("record", member, dict(record)))

    def on_end(self, member, end):
        self.events.append(("end", member, end.result["step"], len(end.records)))

    def on_close(self):
        self.events.append(("close",))


def test_a_user_callback_sees_every_record_once_in_order_then_the_end(corpus_file, tmp_path):
    recorder = Recorder()
    result = loop.fit(_config(corpus_file, tmp_path), tmp_path / "run", callbacks=[recorder])
    kinds = [e[0] for e in recorder.events]
    assert kinds[0] == "start" and kinds[-2:] == ["end", "close"]
    records = [e[2] for e in recorder.events if e[0] == "record"]
    from jax_lm.rundir import read_records

    assert records == read_records(tmp_path / "run" / "metrics.jsonl")  # the log, exactly
    assert recorder.events[0][2] == result["step"]
    # Without the default callbacks nothing but the loop's own files is written.
    assert not (tmp_path / "run" / "curves.png").exists()
    assert not (tmp_path / "run" / "tensorboard").exists()


def _tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Scalars of TFRecord event files, parsed with tensorboardX's own protobufs."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list] = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_event_files_hold_the_logged_metrics(corpus_file, tmp_path):
    loop.fit(_config(corpus_file, tmp_path), tmp_path / "run", progress=False,
            print_fn=lambda _: None)
    scalars = _tensorboard_scalars(tmp_path / "run" / "tensorboard")
    from jax_lm.rundir import read_records

    logged = [r for r in read_records(tmp_path / "run" / "metrics.jsonl") if "train_loss" in r]
    assert [s for s, _ in scalars["train/train_loss"]] == [r["step"] for r in logged]
    assert [v for _, v in scalars["train/train_loss"]] == pytest.approx(
        [r["train_loss"] for r in logged], rel=1e-6)
    assert len(scalars["epoch/valid_ppl"]) == 2 and "final/valid_ppl" in scalars


def test_fit_leaves_matplotlib_and_jax_global_state_alone(corpus_file, tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    flags = {name: getattr(jax.config, name) for name in
             ("jax_enable_x64", "jax_numpy_rank_promotion", "jax_default_matmul_precision")}
    loop.fit(_config(corpus_file, tmp_path), tmp_path / "run", progress=False,
            print_fn=lambda _: None)
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0
    assert matplotlib.get_backend() == backend
    assert {name: getattr(jax.config, name) for name in flags} == flags


def test_importing_jax_lm_does_not_reexecute_or_tune_the_process():
    import subprocess
    import sys

    code = ("import os, jax_lm.cli, jax_lm.loop, jax_lm.sweeps; "
            "print(os.environ.get('GLIBC_TUNABLES', ''), os.getpid())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"})
    tunables, _ = out.stdout.rsplit(" ", 1)
    assert "glibc.malloc" not in tunables


@pytest.mark.parametrize("value, text", [
    (float("inf"), "inf"), (float("nan"), "nan"), ("inf", "inf"), (3.14159, "3.14"),
    (math.exp(700.0), "1.01e+304"), (12.0, "12.00")])
def test_figures_print_as_inf_nan_or_powers_of_ten_never_as_300_digits(value, text):
    assert callbacks.fmt(value) == text


def test_perplexity_of_a_diverged_model_is_inf():
    assert train.perplexity(800.0) == math.inf and math.isnan(train.perplexity(math.nan))
    assert train.perplexity(math.log(50.0)) == pytest.approx(50.0)


def test_a_sweep_takes_config_overrides_for_every_point(corpus_file, tmp_path, capsys):
    sweep_file = tmp_path / "s.py"
    sweep_file.write_text(
        "from jax_lm.config import get_config\n\n"
        "def get_sweep():\n    return [{'model.cell': 'rnn'}, {'model.cell': 'gru'}]\n")
    args = [f"--config.{k}={v}" for k, v in {
        "data.source": corpus_file, "data.cache_dir": tmp_path / "cache", "data.batch_size": 4,
        "data.seq_len": 8, "model.hidden_size": 6, "train.max_steps": 2,
        "sample.num_tokens": 3}.items()]
    assert cli.main(["sweep", str(sweep_file), "--workdir", str(tmp_path / "out"),
                     "--no-progress", *args]) == 0
    for point in ("cell=rnn", "cell=gru"):
        saved = config_lib.from_json((tmp_path / "out" / point / "config.json").read_text())
        assert saved.model.hidden_size == 6 and saved.train.max_steps == 2
    assert cli.main(["sweep", str(sweep_file), "--config.model.hidden_size=0"]) == 1
    assert "model.hidden_size=0 must be ≥ 1" in capsys.readouterr().err
