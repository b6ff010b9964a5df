"""Checkpoints: exact round trips, atomic writes (even under SIGKILL), clear errors."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from jax_lm import checkpoint, model, optim, train


def _state(vocab_size=11, key=0):
    config = model.LMConfig(vocab_size=vocab_size, hidden_size=6)
    opt = optim.make_optimizer("adam", 0.01, clip_norm=1.0)
    return train.init_train_state(jax.random.key(key), config, opt, batch_size=3)


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if checkpoint._is_key(x):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def test_train_state_round_trips_exactly_with_metadata(tmp_path):
    state = _state()
    checkpoint.save_checkpoint(tmp_path / "c.msgpack", state, {"epoch": 3, "lr": 0.5})
    restored, metadata = checkpoint.load_checkpoint(tmp_path / "c.msgpack", _state(key=1))
    _assert_same(restored, state)
    assert metadata == {"epoch": 3, "lr": 0.5}


def test_checkpoint_of_another_model_is_rejected_naming_the_array(tmp_path):
    checkpoint.save_checkpoint(tmp_path / "c.msgpack", _state(vocab_size=11))
    with pytest.raises(checkpoint.CheckpointError, match=r"does not fit this run: .*embed"):
        checkpoint.load_checkpoint(tmp_path / "c.msgpack", _state(vocab_size=12))


def test_missing_and_corrupt_files_get_clear_errors(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint at"):
        checkpoint.load_checkpoint(tmp_path / "absent.msgpack", _state())
    (tmp_path / "bad.msgpack").write_bytes(b"\x93not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="unreadable"):
        checkpoint.load_checkpoint(tmp_path / "bad.msgpack", _state())


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_temporary_file(
        tmp_path, monkeypatch):
    path = tmp_path / "c.msgpack"
    checkpoint.save_checkpoint(path, {"w": np.zeros(3)}, {"version": 1})

    def broken_replace(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_checkpoint(path, {"w": np.ones(3)}, {"version": 2})
    monkeypatch.undo()
    state, metadata = checkpoint.load_checkpoint(path, {"w": np.zeros(3)})
    assert metadata == {"version": 1} and np.all(state["w"] == 0)
    assert os.listdir(tmp_path) == ["c.msgpack"]


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from jax_lm import checkpoint

    path, n = sys.argv[1], 2_000_000
    checkpoint.save_checkpoint(path, {"w": np.zeros(n)}, {"i": 0})
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        checkpoint.save_checkpoint(path, {"w": np.full(n, float(i))}, {"i": i})
""")


def test_sigkill_during_writes_always_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "c.msgpack"
    like = {"w": np.zeros(2_000_000)}
    for delay in (0.05, 0.2, 0.45):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state, metadata = checkpoint.load_checkpoint(path, like)
        assert np.all(state["w"] == metadata["i"])  # one whole write, never a mixture
    assert checkpoint.saved_steps(tmp_path) == []  # stray .tmp files are not checkpoints


def test_save_step_keeps_the_newest_checkpoints(tmp_path):
    for step in (10, 20, 30):
        checkpoint.save_step(tmp_path, step, {"w": np.full(2, step)}, {"step": step}, keep=2)
    assert checkpoint.saved_steps(tmp_path) == [20, 30]
    assert checkpoint.latest_path(tmp_path) == checkpoint.step_path(tmp_path, 30)
