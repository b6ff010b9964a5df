"""Checkpoints: exact round trips, atomic writes (even under SIGKILL), damage detection and
fallback, clear errors for any file that is not an intact checkpoint."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import jax
import msgpack
import numpy as np
import pytest
from flax import serialization

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


def _flip_bit(path, offset, bit=0):
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def _payload_region(data):
    payload = serialization.msgpack_restore(data)["payload"]
    start = data.index(payload)
    return start, start + len(payload)


def _wrap(inner: dict) -> bytes:
    """A format/2 file with a correct digest around an arbitrary inner map."""
    payload = serialization.msgpack_serialize(inner)
    return serialization.msgpack_serialize({
        "format": checkpoint.FORMAT, "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": payload})


def test_files_are_format_2_with_a_digest_of_the_payload(tmp_path):
    path = checkpoint.save_checkpoint(tmp_path / "c.msgpack", {"w": np.arange(3.0)})
    raw = serialization.msgpack_restore(path.read_bytes())
    assert raw["format"] == "jax_lm.checkpoint/2"
    assert raw["sha256"] == hashlib.sha256(raw["payload"]).hexdigest()


def test_a_flipped_bit_in_the_middle_of_the_file_is_detected_as_a_checksum_mismatch(tmp_path):
    path = checkpoint.save_checkpoint(tmp_path / "c.msgpack", _state(), {"epoch": 1})
    size = path.stat().st_size
    start, end = _payload_region(path.read_bytes())
    assert start < size // 2 < end
    _flip_bit(path, size // 2, bit=3)
    with pytest.raises(checkpoint.CheckpointDamaged,
                       match=re.escape(f"checkpoint {path} is damaged: its checksum")):
        checkpoint.load_checkpoint(path, _state())


def test_every_single_bit_flip_anywhere_in_a_small_file_is_rejected(tmp_path):
    good = checkpoint.save_checkpoint(tmp_path / "c.msgpack", {"w": np.arange(4.0)},
                                      {"i": 1}).read_bytes()
    start, end = _payload_region(good)
    path = tmp_path / "flipped.msgpack"
    for offset in range(len(good)):
        path.write_bytes(good)
        _flip_bit(path, offset, bit=offset % 8)
        expected = checkpoint.CheckpointDamaged if start <= offset < end else (
            checkpoint.CheckpointError)
        with pytest.raises(expected, match=re.escape(str(path))):
            checkpoint.load_checkpoint(path, {"w": np.zeros(4)})


def _good(tmp_path) -> bytes:
    return checkpoint.save_checkpoint(tmp_path / "good.msgpack", {"w": np.arange(4.0)},
                                      {"i": 1}).read_bytes()


HOSTILE = {
    "empty": lambda good: b"",
    "truncated_to_half": lambda good: good[: len(good) // 2],
    "random_bytes": lambda good: np.random.default_rng(0).bytes(300),
    "json_text": lambda good: json.dumps({"state": {"w": [1, 2]}, "metadata": "{}"}).encode(),
    "msgpack_of_a_list": lambda good: msgpack.packb([1, 2, 3]),
    "msgpack_of_an_int": lambda good: msgpack.packb(7),
    "payload_of_wrong_type": lambda good: msgpack.packb(
        {"format": checkpoint.FORMAT, "sha256": "0" * 64, "payload": "not bytes"}),
    "digest_of_wrong_type": lambda good: msgpack.packb(
        {"format": checkpoint.FORMAT, "sha256": 12, "payload": b"\x80"}),
    "format_2_with_a_wrong_digest": lambda good: msgpack.packb(
        {**serialization.msgpack_restore(good), "sha256": "0" * 64}),
    "unknown_format_string": lambda good: msgpack.packb(
        {**serialization.msgpack_restore(good), "format": "something/else"}),
    "newer_format_version": lambda good: msgpack.packb(
        {**serialization.msgpack_restore(good), "format": "jax_lm.checkpoint/99"}),
    "intact_digest_of_a_garbage_payload": lambda good: msgpack.packb(
        {"format": checkpoint.FORMAT, "sha256": hashlib.sha256(b"\xc1").hexdigest(),
         "payload": b"\xc1"}),
    "payload_that_is_not_a_map": lambda good: _wrap([1, 2]),
    "metadata_json_but_not_an_object": lambda good: _wrap(
        {"state": {"w": np.arange(4.0)}, "metadata": "[1, 2]"}),
    "metadata_not_json": lambda good: _wrap(
        {"state": {"w": np.arange(4.0)}, "metadata": "{oops"}),
    "metadata_of_wrong_type": lambda good: _wrap({"state": {"w": np.arange(4.0)},
                                                  "metadata": 5}),
    "old_layout_without_state": lambda good: msgpack.packb({"metadata": "{}"}),
    "state_of_wrong_type": lambda good: _wrap({"state": "text", "metadata": "{}"}),
    "array_leaf_of_wrong_type": lambda good: _wrap({"state": {"w": "text"}, "metadata": "{}"}),
    "array_leaf_replaced_by_a_map": lambda good: _wrap(
        {"state": {"w": {"a": np.zeros(4)}}, "metadata": "{}"}),
    "bad_array_extension": lambda good: msgpack.packb(
        {"state": {"w": msgpack.ExtType(1, msgpack.packb(((4,), "float64", b"123")))},
         "metadata": "{}"}),
}


@pytest.mark.parametrize("make", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_or_damaged_files_raise_checkpoint_error_naming_the_file(tmp_path, make):
    path = tmp_path / "hostile.msgpack"
    path.write_bytes(make(_good(tmp_path)))
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(str(path))):
        checkpoint.load_checkpoint(path, {"w": np.zeros(4)})


def test_a_file_of_the_old_layout_still_loads(tmp_path):
    state = _state()
    path = tmp_path / "old.msgpack"
    path.write_bytes(serialization.msgpack_serialize(
        {"state": checkpoint._to_host(state), "metadata": json.dumps({"epoch": 2})}))
    restored, metadata = checkpoint.load_checkpoint(path, _state(key=1))
    _assert_same(restored, state)
    assert metadata == {"epoch": 2}


def test_fallback_skips_damaged_newer_steps_and_warns_naming_both_files(tmp_path):
    for step in (10, 20, 30):
        checkpoint.save_step(tmp_path, step, {"w": np.full(2, float(step))}, {"step": step},
                             keep=3)
    p10, p20, p30 = (checkpoint.step_path(tmp_path, s) for s in (10, 20, 30))
    _flip_bit(p30, p30.stat().st_size // 2)
    p20.write_bytes(p20.read_bytes()[:20])
    path, state, metadata, warnings = checkpoint.load_latest_intact(
        tmp_path, {"w": np.zeros(2)})
    assert path == p10 and metadata == {"step": 10} and np.all(state["w"] == 10)
    assert warnings == [
        f"checkpoint {p30} is damaged (checksum mismatch); using {p10} instead",
        f"checkpoint {p20} is damaged (unreadable); using {p10} instead",
    ]


def test_fallback_returns_the_newest_step_without_warnings_when_it_is_intact(tmp_path):
    for step in (10, 20):
        checkpoint.save_step(tmp_path, step, {"w": np.full(2, float(step))}, {"step": step})
    path, _, metadata, warnings = checkpoint.load_latest_intact(tmp_path, {"w": np.zeros(2)})
    assert path == checkpoint.step_path(tmp_path, 20) and metadata == {"step": 20}
    assert warnings == []


def test_fallback_does_not_skip_a_checkpoint_of_another_model(tmp_path):
    checkpoint.save_step(tmp_path, 10, _state(vocab_size=11), {})
    checkpoint.save_step(tmp_path, 20, _state(vocab_size=11), {})
    with pytest.raises(checkpoint.CheckpointError, match="does not fit this run") as err:
        checkpoint.load_latest_intact(tmp_path, _state(vocab_size=12))
    assert not isinstance(err.value, checkpoint.CheckpointDamaged)
    assert str(checkpoint.step_path(tmp_path, 20)) in str(err.value)


def test_fallback_with_every_step_damaged_names_the_newest(tmp_path):
    for step in (10, 20):
        checkpoint.save_step(tmp_path, step, {"w": np.zeros(2)}, {})
        checkpoint.step_path(tmp_path, step).write_bytes(b"")
    with pytest.raises(checkpoint.CheckpointDamaged,
                       match=re.escape(str(checkpoint.step_path(tmp_path, 20)))) as err:
        checkpoint.load_latest_intact(tmp_path, {"w": np.zeros(2)})
    assert "no intact checkpoint" in str(err.value)


def test_fallback_without_any_step_file_says_there_is_no_checkpoint(tmp_path):
    checkpoint.save_checkpoint(checkpoint.best_path(tmp_path), {"w": np.zeros(2)})
    with pytest.raises(checkpoint.CheckpointError,
                       match=re.escape(f"no checkpoint in {tmp_path / 'checkpoints'}")):
        checkpoint.load_latest_intact(tmp_path, {"w": np.zeros(2)})


def test_remove_orphans_deletes_temporary_files_and_keeps_checkpoints(tmp_path):
    assert checkpoint.remove_orphans(tmp_path) == []  # no checkpoints folder yet
    checkpoint.save_step(tmp_path, 10, {"w": np.zeros(2)}, {})
    checkpoint.save_checkpoint(checkpoint.best_path(tmp_path), {"w": np.zeros(2)})
    folder = tmp_path / "checkpoints"
    orphans = [folder / ".tmp-step_00000020.msgpack-a1b2", folder / ".tmp-best.msgpack-xyz"]
    for orphan in orphans:
        orphan.write_bytes(b"half a checkpoint")
    assert checkpoint.remove_orphans(tmp_path) == sorted(orphans)
    assert sorted(os.listdir(folder)) == ["best.msgpack", "step_00000010.msgpack"]
    assert checkpoint.remove_orphans(tmp_path) == []


def test_all_finite_is_false_for_nan_or_inf_and_true_otherwise():
    tree = {"w": np.ones(3, np.float32), "b": jax.numpy.zeros(2, jax.numpy.bfloat16),
            "key": jax.random.key(0), "step": np.int32(4), "count": 7}
    assert checkpoint.all_finite(tree)
    assert checkpoint.all_finite(_state())
    assert checkpoint.all_finite({"key": jax.random.key(1), "step": np.int32(1)})
    assert not checkpoint.all_finite({**tree, "w": np.array([1.0, np.nan, 2.0], np.float32)})
    assert not checkpoint.all_finite({**tree, "b": jax.numpy.array([np.inf], "bfloat16")})
    assert not checkpoint.all_finite({**tree, "x": -np.inf})
