"""Checkpoints of a whole run state, stored as data and written atomically.

A checkpoint is ONE file: a msgpack map (flax.serialization) holding the state pytree's
arrays and a JSON string of host-side metadata (epoch, data position, learning-rate rule,
metrics, ...). Loading decodes arrays and JSON only; nothing in a checkpoint can execute code.

Atomicity: the file is written under a temporary name in the same folder, flushed to disk,
and renamed over its final name with `os.replace`, which POSIX makes atomic. A process
killed mid-write leaves at most a stray ``.tmp-*`` file, never a broken checkpoint, and the
previous checkpoint of that name stays intact.

    run_dir/checkpoints/step_00001200.msgpack   # the last `keep` of these are kept
    run_dir/checkpoints/best.msgpack            # the best validation score so far

PRNG keys (typed key arrays) are stored as their raw key data and rewrapped on restore.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

_STEP_FILE = re.compile(r"^step_(\d+)\.msgpack$")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not fit the run that loads it."""


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_host(state) -> Any:
    """Pytree -> nested dicts of NumPy arrays (keys unwrapped to their uint32 data)."""
    state = jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, state)
    return serialization.to_state_dict(jax.tree.map(np.asarray, state))


def save_checkpoint(path: str | os.PathLike, state, metadata: dict | None = None) -> Path:
    """Atomically write `state` (any pytree of arrays) and JSON `metadata` to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = serialization.msgpack_serialize(
        {"state": _to_host(state), "metadata": json.dumps(metadata or {})})
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, like) -> tuple[Any, dict]:
    """Read a checkpoint into the structure of `like` (a state of the same run shape).

    Returns:
      (state, metadata). Raises `CheckpointError` naming the file when it is missing,
      undecodable, or when its arrays do not match `like` (another model or vocabulary).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        raw = serialization.msgpack_restore(path.read_bytes())
        stored, metadata = raw["state"], json.loads(raw["metadata"])
    except Exception as e:  # noqa: BLE001 - any decoding failure means an unusable file
        raise CheckpointError(f"checkpoint {path} is unreadable: {e}") from e

    template = jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, like)
    try:
        restored = serialization.from_state_dict(template, stored)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this run: {e}") from e
    mismatched = [
        f"{jax.tree_util.keystr(p)}: stored {np.shape(a)}, expected {np.shape(b)}"
        for (p, a), b in zip(jax.tree_util.tree_leaves_with_path(restored),
                             jax.tree.leaves(template))
        if np.shape(a) != np.shape(b)
    ]
    if mismatched:
        raise CheckpointError(f"checkpoint {path} does not fit this run: {mismatched[0]}")
    state = jax.tree.map(
        lambda x, ref: jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref))
        if _is_key(ref) else jax.numpy.asarray(x, ref.dtype), restored, like)
    return state, metadata


def step_path(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}.msgpack"


def best_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints" / "best.msgpack"


def saved_steps(run_dir: str | os.PathLike) -> list[int]:
    """Steps with a complete checkpoint in `run_dir`, ascending."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for f in folder.iterdir() if (m := _STEP_FILE.match(f.name)))


def latest_path(run_dir: str | os.PathLike) -> Path | None:
    steps = saved_steps(run_dir)
    return step_path(run_dir, steps[-1]) if steps else None


def save_step(run_dir: str | os.PathLike, step: int, state, metadata: dict, *,
              keep: int = 2) -> Path:
    """Save the checkpoint of `step`, then delete all but the `keep` newest step files."""
    path = save_checkpoint(step_path(run_dir, step), state, metadata)
    for old in saved_steps(run_dir)[:-keep]:
        step_path(run_dir, old).unlink(missing_ok=True)
    return path
