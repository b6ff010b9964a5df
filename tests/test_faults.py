"""Fault injection: kills, signals, damaged files, concurrent writers, bad configs, full disks.

Every fault is injected, not reasoned about: a run is killed (SIGKILL in a subprocess) or
signalled (SIGTERM/SIGINT) at a chosen point of its schedule — a step, a checkpoint write,
the validation, the best checkpoint, the metrics log, the plot, the samples — and then
resumed; its final parameters must equal an uninterrupted run's bit for bit. The fast
cases run in the README's test command; `-m slow` adds a randomised sweep of kill points.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from jax_lm import checkpoint, cli, loop, rundir, runs
from jax_lm import config as config_lib

ROOT = Path(__file__).resolve().parents[1]
TEXT = "the cat sat on the mat. the dog sat on the log.\n" * 30

# A short run with every phase: 2 epochs of 9 steps, validation, a plateau rule, dropout,
# step checkpoints every 4 steps, a test split scored at the end, a plot and a sample.
SETTINGS = {
    "data.batch_size": "4", "data.seq_len": "16", "model.hidden_size": "16",
    "model.dropout": "0.2", "train.epochs": "2", "train.log_every": "3",
    "train.checkpoint_every": "4", "train.learning_rate": "0.01",
    "train.lr_rule": "halve_when_loss_rises", "sample.num_tokens": "10",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    (folder / "data").mkdir()
    (folder / "data" / "train.txt").write_text(TEXT)
    (folder / "data" / "valid.txt").write_text(TEXT[:400])
    (folder / "data" / "test.txt").write_text(TEXT[400:800])
    return folder


def overrides(corpus, **extra) -> dict[str, str]:
    return {"data.source": str(corpus / "data"), "data.cache_dir": str(corpus / "cache"),
            **SETTINGS, **{k: str(v) for k, v in extra.items()}}


def make_config(corpus, **extra):
    return config_lib.apply_overrides(config_lib.get_config(), overrides(corpus, **extra))


def quiet_fit(config, run_dir, **kwargs):
    import datasets

    datasets.disable_progress_bars()  # as the command line does: stderr holds only errors
    return loop.fit(config, run_dir, progress=False, print_fn=lambda _: None, **kwargs)


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """The uninterrupted run: its folder and its final (latest) parameters."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    quiet_fit(make_config(corpus), run_dir)
    return run_dir, runs.load_run(run_dir, "latest").params


def assert_same_params(run_dir, expected):
    got = runs.load_run(run_dir, "latest").params
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(a, b)


def assert_same_epochs(run_dir, reference_dir):
    """The resumed run logged each epoch once, with the same decisions."""
    def epochs(folder):
        return [(r["epoch"], r["valid_nll"], r["next_lr"])
                for r in rundir.read_records(Path(folder) / "metrics.jsonl") if "next_lr" in r]
    assert epochs(run_dir) == epochs(reference_dir)
    finals = [r for r in rundir.read_records(Path(run_dir) / "metrics.jsonl") if r.get("final")]
    assert len(finals) == 1


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a folder (recursively) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------- signals, in process
# Where a signal arrives: the N-th call of a function the loop uses in that phase.

PHASES = {
    "step": ("jax_lm.loop._Loop", "_sync", 2),                 # between steps (finish, save)
    "checkpoint": ("jax_lm.checkpoint", "save_checkpoint", 3),  # while a checkpoint is written
    "validation": ("jax_lm.loop._Loop", "_evaluate", 1),      # the first epoch end
    "best": ("jax_lm.rundir.RunDir", "save_best", 1),          # writing the best checkpoint
    "lr_rule": ("jax_lm.lr_rules.DecayWhenWorse", "update", 1),  # the learning-rate decision
    "log": ("jax_lm.rundir.RunDir", "log", 7),                 # appending to metrics.jsonl
    "plot": ("jax_lm.rundir.RunDir", "save_figure", 1),        # the end: curves.png
    "samples": ("jax_lm.runs", "sample_texts", 1),             # the end: samples.txt
    "test": ("jax_lm.loop._Loop", "_evaluate", 4),             # the end: the test split
}


def _signal_on_call(monkeypatch, phase: str, signum: int) -> None:
    import importlib

    owner, name, nth = PHASES[phase]  # owner: a module, or a module's class
    parts = owner.split(".")
    try:
        target = importlib.import_module(owner)
    except ModuleNotFoundError:
        target = getattr(importlib.import_module(".".join(parts[:-1])), parts[-1])
    real = getattr(target, name)
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == nth:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapped)


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_a_signal_at_any_phase_saves_or_keeps_a_checkpoint_and_resume_is_bitwise_exact(
        corpus, reference, tmp_path, monkeypatch, phase):
    signum = signal.SIGTERM if phase in ("step", "validation", "plot", "log") else signal.SIGINT
    _signal_on_call(monkeypatch, phase, signum)
    with pytest.raises(loop.Interrupted) as stopped:
        quiet_fit(make_config(corpus), tmp_path / "run")
    monkeypatch.undo()
    assert stopped.value.exit_code == 128 + signum
    assert "resume with: jax-lm train --resume" in str(stopped.value)
    quiet_fit(make_config(corpus), tmp_path / "run", resume=True)
    assert_same_params(tmp_path / "run", reference[1])
    assert_same_epochs(tmp_path / "run", reference[0])


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_the_cli_prints_one_line_and_exits_with_the_conventional_code(
        corpus, tmp_path, monkeypatch, capsys, signum, code):
    _signal_on_call(monkeypatch, "step", signum)
    args = [f"--config.{k}={v}" for k, v in overrides(corpus).items()]
    status = cli.main(["train", "--workdir", str(tmp_path / "run"), "--no-progress", *args])
    err = capsys.readouterr().err.strip()
    assert status == code
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("jax-lm: interrupted at step ") and "checkpoint saved" in err
    assert f"jax-lm train --resume {tmp_path / 'run'}" in err


# ------------------------------------------------------------------- kill -9, in a subprocess

DRIVER = textwrap.dedent('''
    import importlib, json, os, signal, sys
    owner, name, nth, config_path, run_dir, resume = sys.argv[1:7]
    from jax_lm import config as config_lib, loop
    if owner != "-":
        parts = owner.split(".")
        try:
            target = importlib.import_module(owner)
        except ModuleNotFoundError:
            target = getattr(importlib.import_module(".".join(parts[:-1])), parts[-1])
        real, calls = getattr(target, name), []
        def wrapped(*args, **kwargs):
            calls.append(1)
            if len(calls) == int(nth):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        setattr(target, name, wrapped)
    overrides = json.load(open(config_path))
    config = config_lib.apply_overrides(config_lib.get_config(), overrides)
    loop.fit(config, run_dir, resume=resume == "1", progress=False, print_fn=lambda _: None)
''')


def _run_driver(tmp_path, corpus, run_dir, owner="-", name="-", nth=0, resume=False):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    config_path = tmp_path / "overrides.json"
    config_path.write_text(json.dumps(overrides(corpus)))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_ENABLE_X64": "1"}
    return subprocess.run([sys.executable, str(script), owner, name, str(nth), str(config_path),
                           str(run_dir), "1" if resume else "0"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


KILL_POINTS = [
    ("jax_lm.checkpoint", "save_checkpoint", 1),   # the start: before its first checkpoint
    ("jax_lm.checkpoint", "save_checkpoint", 3),   # mid-run, while a step checkpoint is written
    ("jax_lm.loop._Loop", "_evaluate", 2),         # during the second epoch's validation
    ("jax_lm.rundir.RunDir", "save_figure", 1),    # during the end-of-run work
]


@pytest.mark.parametrize("owner, name, nth", KILL_POINTS,
                         ids=[f"{p[1]}-{p[2]}" for p in KILL_POINTS])
def test_kill_9_at_a_point_of_the_run_then_resume_gives_the_same_bits(
        corpus, reference, tmp_path, owner, name, nth):
    run_dir = tmp_path / "run"
    killed = _run_driver(tmp_path, corpus, run_dir, owner, name, nth)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = _run_driver(tmp_path, corpus, run_dir, resume=True)
    assert resumed.returncode == 0, resumed.stderr
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))  # orphans were removed
    assert_same_params(run_dir, reference[1])
    assert_same_epochs(run_dir, reference[0])


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(12))
def test_kill_9_at_random_points_then_resume_gives_the_same_bits(corpus, reference, tmp_path,
                                                                 trial):
    """The randomised sweep (`pytest -m slow`): random function, random call, twice per run."""
    candidates = list(PHASES.values()) + KILL_POINTS
    rng = random.Random(trial)
    run_dir = tmp_path / "run"
    for attempt in range(2):
        owner, name, _ = rng.choice(candidates)
        killed = _run_driver(tmp_path, corpus, run_dir, owner, name, rng.randint(1, 6),
                             resume=attempt > 0)
        assert killed.returncode in (0, -signal.SIGKILL), killed.stderr
        if killed.returncode == 0:
            break
    resumed = _run_driver(tmp_path, corpus, run_dir, resume=True)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_params(run_dir, reference[1])
    assert_same_epochs(run_dir, reference[0])


# ------------------------------------------------------------------- damaged files


def test_a_torn_last_line_of_the_metrics_log_is_cut_on_resume_with_a_warning(
        corpus, reference, tmp_path):
    run_dir = tmp_path / "run"
    quiet_fit(make_config(corpus, **{"train.max_steps": 6}), run_dir)
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 7, "train_lo')  # killed while appending
    said = []
    loop.fit(make_config(corpus), run_dir, resume=True, progress=False, print_fn=said.append)
    assert any("torn line" in line for line in said)
    assert all(json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    assert_same_params(run_dir, reference[1])


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_intact_one(
        corpus, reference, tmp_path):
    run_dir = tmp_path / "run"
    quiet_fit(make_config(corpus, **{"train.max_steps": 8}), run_dir)
    newest = checkpoint.latest_path(run_dir)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x10  # one flipped bit
    newest.write_bytes(bytes(data))
    said = []
    loop.fit(make_config(corpus), run_dir, resume=True, progress=False, print_fn=said.append)
    warning = next(line for line in said if "damaged" in line)
    assert newest.name in warning and "step_00000004" in warning
    assert_same_params(run_dir, reference[1])


def test_orphaned_temporary_checkpoint_files_are_removed_on_resume(corpus, tmp_path):
    run_dir = tmp_path / "run"
    quiet_fit(make_config(corpus, **{"train.max_steps": 4}), run_dir)
    orphan = run_dir / "checkpoints" / ".tmp-step_00000008.msgpack-abc123"
    orphan.write_bytes(b"half a checkpoint")
    quiet_fit(make_config(corpus, **{"train.max_steps": 5}), run_dir, resume=True)
    assert not orphan.exists()


# ------------------------------------------------------------------- run folders


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(
        corpus, tmp_path):
    run_dir = tmp_path / "run"
    quiet_fit(make_config(corpus, **{"train.max_steps": 2}), run_dir)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f'''
        import sys, time
        from jax_lm.rundir import RunDir
        with RunDir({str(run_dir)!r}).locked():
            print("locked", flush=True)
            time.sleep(60)
    ''')], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run_dir)
        with pytest.raises(rundir.RunFolderError, match=rf"in use by pid {holder.pid} on "):
            quiet_fit(make_config(corpus, **{"train.max_steps": 4}), run_dir, resume=True)
        assert snapshot(run_dir) == before
    finally:
        holder.kill()
        holder.wait()
    # The killed holder's lock is released by the kernel; its holder file is stale.
    with pytest.warns(UserWarning, match=f"left by pid {holder.pid}"):
        quiet_fit(make_config(corpus, **{"train.max_steps": 4}), run_dir, resume=True)
    assert checkpoint.saved_steps(run_dir)[-1] == 4


def test_a_failed_resume_leaves_the_run_folder_byte_identical(corpus, tmp_path, capsys):
    run_dir = tmp_path / "run"
    quiet_fit(make_config(corpus, **{"train.max_steps": 3}), run_dir)
    before = snapshot(run_dir)
    capsys.readouterr()
    bad = [
        ["--config.train.learning_rate=-1"],            # rejected by validation
        ["--config.model.hidden_size=32"],              # the checkpoint does not fit
        ["--config.data.source=/no/such/corpus"],       # the data is missing
        ["--config.train.lr_rule=sometimes"],           # not a rule
    ]
    for args in bad:
        assert cli.main(["train", "--resume", str(run_dir), "--no-progress", *args]) == 1
        err = capsys.readouterr().err
        assert err.startswith("jax-lm: error: ") and err.count("\n") == 1, err
        assert snapshot(run_dir) == before, args
    for command in (["eval", str(run_dir)], ["sample", str(run_dir), "--num-tokens", "5"]):
        assert cli.main(command) == 0  # the run is still usable


def test_a_failed_start_leaves_no_folder_behind(corpus, tmp_path, capsys):
    run_dir = tmp_path / "new"
    args = [f"--config.{k}={v}" for k, v in overrides(corpus).items()]
    status = cli.main(["train", "--workdir", str(run_dir), "--no-progress", *args,
                       "--config.data.source=/no/such/corpus"])
    assert status == 1 and not run_dir.exists()
    assert "JAX_LM_DATA_DIR" in capsys.readouterr().err


def test_resuming_a_finished_run_says_so_and_changes_nothing(corpus, reference, tmp_path):
    run_dir = tmp_path / "run"
    quiet_fit(make_config(corpus, **{"train.max_steps": 3}), run_dir)
    before = snapshot(run_dir)
    said = []
    loop.fit(make_config(corpus, **{"train.max_steps": 3}), run_dir, resume=True,
            progress=False, print_fn=said.append)
    assert any("already finished at step 3; nothing changed" in line for line in said)
    assert snapshot(run_dir) == before


def test_a_diverging_run_stops_and_every_saved_checkpoint_is_finite(corpus, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = [f"--config.{k}={v}" for k, v in overrides(corpus).items()]
    status = cli.main(["train", "--workdir", str(run_dir), "--no-progress", *args,
                       "--config.train.learning_rate=1e300", "--config.train.optimizer=sgd",
                       "--config.train.clip_norm=0", "--config.train.log_every=1"])
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1
    assert "non-finite loss or gradient at step 2" in err
    assert "kept checkpoint" in err and "step_00000000" in err
    for path in [*(run_dir / "checkpoints").glob("*.msgpack")]:
        run = runs.load_run(run_dir, str(path))
        assert checkpoint.all_finite(run.params), path


@pytest.mark.parametrize("failure, message", [
    (errno.ENOSPC, "the disk is full"),
    (errno.EROFS, "read-only file system"),
    (errno.EACCES, "permission denied"),
])
def test_disk_full_read_only_or_forbidden_is_one_sentence_and_keeps_what_was_saved(
        corpus, tmp_path, monkeypatch, capsys, failure, message):
    run_dir = tmp_path / "run"
    quiet_fit(make_config(corpus, **{"train.max_steps": 4}), run_dir)
    before = snapshot(run_dir)
    real = os.replace

    def failing_replace(src, dst, *args, **kwargs):
        if "checkpoints" in str(dst):
            Path(src).unlink(missing_ok=True)
            raise OSError(failure, os.strerror(failure), str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", failing_replace)
    status = cli.main(["train", "--resume", str(run_dir), "--no-progress",
                       "--config.train.max_steps=8"])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert status == 1 and err.startswith(f"jax-lm: error: {message}") and err.count("\n") == 1
    after = snapshot(run_dir)
    for name, content in before.items():  # every checkpoint saved before is intact
        if name.startswith("checkpoints/"):
            assert after[name] == content, name


# ------------------------------------------------------------------- bad configs: one sentence

BAD_CONFIGS = [
    ({"model.hidden_size": "0"}, "model.hidden_size"),
    ({"model.hidden_size": "-3"}, "model.hidden_size"),
    ({"model.hidden_size": "1000000"}, "memory"),
    ({"model.num_layers": "0"}, "model.num_layers"),
    ({"model.dropout": "1.0"}, "model.dropout"),
    ({"train.optimizer": "adamax2"}, "train.optimizer"),
    ({"train.regime": "tbptt"}, "train.regime"),
    ({"model.activation": "swish"}, "model.activation"),
    ({"model.init": "xavier"}, "model.init"),
    ({"model.param_dtype": "float8"}, "model.param_dtype"),
    ({"train.learning_rate": "-0.1"}, "train.learning_rate"),
    ({"train.epochs": "0"}, "train.epochs"),
    ({"train.lr_rule_metric": "vlaid"}, "train.lr_rule_metric"),
    ({"sample.temperature": "0"}, "sample.temperature"),
    ({"sample.top_p": "1.5"}, "sample.top_p"),
    ({"model.hiden_size": "3"}, "unknown config key"),
    ({"train.epochs": "three"}, "train.epochs"),
]


@pytest.mark.parametrize("bad, phrase", BAD_CONFIGS, ids=[next(iter(b)) + "=" + next(
    iter(b.values())) for b, _ in BAD_CONFIGS])
def test_a_bad_config_is_one_sentence_before_anything_is_read_or_written(
        tmp_path, capsys, monkeypatch, bad, phrase):
    monkeypatch.chdir(tmp_path)
    args = [f"--config.{k}={v}" for k, v in bad.items()]
    status = cli.main(["train", "--workdir", "run", "--no-progress",
                       "--config.data.source=/no/such/corpus", *args])
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("jax-lm: error: ") and err.count("\n") == 1, err
    assert phrase in err and "JAX_LM_DATA_DIR" not in err  # refused before the data is read
    assert list(tmp_path.iterdir()) == []


def test_a_config_file_with_a_syntax_error_and_a_malformed_config_json_are_one_sentence(
        corpus, tmp_path, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(:\n    pass\n")
    assert cli.main(["train", "--config", str(broken)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broken.py" in err and "syntax" in err.lower()

    run_dir = tmp_path / "run"
    quiet_fit(make_config(corpus, **{"train.max_steps": 2}), run_dir)
    (run_dir / "config.json").write_text("{ not json")
    for command in (["eval", str(run_dir)], ["train", "--resume", str(run_dir)]):
        assert cli.main(command) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "config.json" in err, err


def test_sample_on_a_run_without_a_checkpoint_says_so(corpus, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(config_lib.to_json(make_config(corpus)))
    assert cli.main(["sample", str(run_dir)]) == 1
    assert "no checkpoint" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(config_lib.ConfigError):
        cli.main(["--debug", "train", "--config.train.epochs=0"])


def test_a_failed_start_removes_the_parent_folders_it_created(corpus, tmp_path, capsys):
    args = [f"--config.{k}={v}" for k, v in overrides(corpus).items()]
    status = cli.main(["train", "--workdir", str(tmp_path / "runs" / "new"), "--no-progress",
                       *args, "--config.data.source=/no/such/corpus"])
    assert status == 1 and list(tmp_path.iterdir()) == []


def test_float64_from_the_command_line_turns_on_64_bit_jax_for_that_command(corpus, tmp_path):
    import jax

    args = [f"--config.{k}={v}" for k, v in overrides(corpus).items()]
    jax.config.update("jax_enable_x64", False)  # as in a fresh `jax-lm` process
    try:
        with pytest.raises(config_lib.ConfigError, match="needs 64-bit JAX"):
            config_lib.resolve(make_config(corpus, **{"model.param_dtype": "float64"}))
        assert cli.main(["train", "--workdir", str(tmp_path / "run"), "--no-progress", *args,
                         "--config.model.param_dtype=float64", "--config.train.max_steps=2"]) == 0
        assert jax.config.jax_enable_x64
    finally:
        jax.config.update("jax_enable_x64", True)  # tests/conftest.py's setting
    assert runs.load_run(tmp_path / "run").params["out"]["w"].dtype == np.float64


def test_the_cli_reports_a_stale_lock_as_a_one_line_warning(corpus, tmp_path, capsys):
    run_dir = tmp_path / "run"
    quiet_fit(make_config(corpus, **{"train.max_steps": 2}), run_dir)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    (run_dir / rundir.HOLDER).write_text(json.dumps(
        {"pid": int(dead.stdout), "host": __import__("socket").gethostname(),
         "since": "2026-12-04 00:00:00", "command": "jax-lm train"}))
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run_dir), "--no-progress",
                     "--config.train.max_steps=3"]) == 0
    err = capsys.readouterr().err
    assert f"jax-lm: warning: took over the lock of {run_dir} left by pid {int(dead.stdout)}" in err
    assert "UserWarning" not in err and not (run_dir / rundir.HOLDER).exists()


def test_loading_a_run_whose_newest_checkpoint_is_damaged_warns_and_uses_the_previous(
        corpus, tmp_path):
    run_dir = tmp_path / "run"
    quiet_fit(make_config(corpus, **{"train.max_steps": 8}), run_dir)
    newest = checkpoint.latest_path(run_dir)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x01
    newest.write_bytes(bytes(data))
    with pytest.warns(rundir.RunFolderWarning, match="step_00000004"):
        run = runs.load_run(run_dir, "latest")
    assert checkpoint.all_finite(run.params)
