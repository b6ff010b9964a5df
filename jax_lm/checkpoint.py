"""Checkpoints of a whole run state: stored as data, written atomically, checked on load.

A checkpoint is ONE msgpack file (flax.serialization); nothing in it can execute code:

    {"format": "jax_lm.checkpoint/2",
     "sha256": <hex digest of payload>,
     "payload": <msgpack bytes of {"state": <pytree of arrays>, "metadata": <JSON object text>}>}

`load_checkpoint` verifies the digest before it decodes the payload, so a flipped bit is
reported as damage (`CheckpointDamaged`) rather than restored as wrong numbers. Files of the
first layout (the payload map itself, with no "format") still load, unchecked.

Atomicity: the file is written under a temporary name in the same folder, flushed to disk,
renamed over its final name with `os.replace` (atomic on POSIX), and the folder is flushed.
A process killed mid-write leaves at most a stray ``.tmp-*`` file (see `remove_orphans`),
never a broken checkpoint, and the previous checkpoint of that name stays intact.

    run_dir/checkpoints/step_00001200.msgpack   # the last `keep` of these are kept
    run_dir/checkpoints/best.msgpack            # the best validation score so far

PRNG keys (typed key arrays) are stored as their raw key data and rewrapped on restore.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

FORMAT = "jax_lm.checkpoint/2"
_STEP_FILE = re.compile(r"^step_(\d+)\.msgpack$")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not fit the run that loads it."""


class CheckpointDamaged(CheckpointError):
    """A checkpoint file is damaged or unreadable (as opposed to intact but for another run).

    `reason` is a few words for messages: "checksum mismatch", "unreadable", ...
    """

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_host(state) -> Any:
    """Pytree -> nested dicts of NumPy arrays (keys unwrapped to their uint32 data)."""
    state = jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, state)
    return serialization.to_state_dict(jax.tree.map(np.asarray, state))


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike, state, metadata: dict | None = None) -> Path:
    """Atomically write `state` (any pytree of arrays) and JSON `metadata` to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = serialization.msgpack_serialize(
        {"state": _to_host(state), "metadata": json.dumps(metadata or {})})
    data = serialization.msgpack_serialize(
        {"format": FORMAT, "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload})
    return write_atomic(path, data)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Replace the file `path` by `data` in one step: a reader sees the old file or the new.

    Written under a temporary name (``.tmp-<name>-*``) in the same folder, flushed, then
    renamed over `path` (`os.replace`, atomic on POSIX); the folder entry is flushed too.
    """
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
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
    _fsync_dir(path.parent)
    return path


def _decode(path: Path) -> tuple[Any, dict]:
    """The stored state dict and metadata of the file at `path`, or CheckpointDamaged."""
    def unreadable(e: Exception) -> CheckpointDamaged:
        detail = str(e) or type(e).__name__
        return CheckpointDamaged(f"checkpoint {path} is unreadable: {detail}", "unreadable")

    def foreign(why: str) -> CheckpointDamaged:
        return CheckpointDamaged(f"{path} is not a jax_lm checkpoint: {why}",
                                 "not a jax_lm checkpoint")

    try:
        raw = serialization.msgpack_restore(path.read_bytes())
    except Exception as e:  # noqa: BLE001 - any decoding failure means an unusable file
        raise unreadable(e) from e
    if not isinstance(raw, dict):
        raise foreign(f"its top level is a {type(raw).__name__}, not a map")
    if "format" in raw:
        fmt, digest, payload = raw["format"], raw.get("sha256"), raw.get("payload")
        if isinstance(fmt, str) and fmt.startswith("jax_lm.checkpoint/") and fmt != FORMAT:
            raise CheckpointError(f"checkpoint {path} has format {fmt!r}, which this "
                                  f"version of jax_lm cannot read (it reads {FORMAT!r})")
        if fmt != FORMAT or not isinstance(digest, str) or not isinstance(payload, bytes):
            raise foreign("its format, sha256 or payload field is missing or of the wrong type")
        if hashlib.sha256(payload).hexdigest() != digest:
            raise CheckpointDamaged(
                f"checkpoint {path} is damaged: its checksum does not match its contents",
                "checksum mismatch")
        try:
            raw = serialization.msgpack_restore(payload)
        except Exception as e:  # noqa: BLE001
            raise unreadable(e) from e
    if not isinstance(raw, dict) or "state" not in raw or not isinstance(raw.get("metadata"), str):
        raise foreign("it lacks a state or a metadata text")
    try:
        metadata = json.loads(raw["metadata"])
    except ValueError as e:
        raise unreadable(e) from e
    if not isinstance(metadata, dict):
        raise foreign("its metadata is not a JSON object")
    return raw["state"], metadata


def load_checkpoint(path: str | os.PathLike, like) -> tuple[Any, dict]:
    """Read a checkpoint into the structure of `like` (a state of the same run shape).

    Returns:
      (state, metadata). Raises `CheckpointError` naming the file when it is missing or
      its arrays do not match `like` (another model or vocabulary), and its subclass
      `CheckpointDamaged` when the file is damaged, truncated or not a checkpoint at all.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    stored, metadata = _decode(path)

    def misfit(why) -> CheckpointError:
        return CheckpointError(f"checkpoint {path} does not fit this run: {why}")

    template = jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, like)
    try:
        restored = serialization.from_state_dict(template, stored)
    except Exception as e:  # noqa: BLE001 - a stored tree of another shape, in any way
        raise misfit(e) from e
    if jax.tree.structure(restored) != jax.tree.structure(template):
        raise misfit("its tree structure differs")
    for (p, a), b in zip(jax.tree_util.tree_leaves_with_path(restored),
                         jax.tree.leaves(template)):
        if not isinstance(a, (np.ndarray, np.generic, int, float, bool)):
            raise misfit(f"{jax.tree_util.keystr(p)}: stored a {type(a).__name__}")
        if np.shape(a) != np.shape(b):
            raise misfit(f"{jax.tree_util.keystr(p)}: stored {np.shape(a)}, "
                         f"expected {np.shape(b)}")
    try:
        state = jax.tree.map(
            lambda x, ref: jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref))
            if _is_key(ref) else jnp.asarray(x, ref.dtype), restored, like)
    except Exception as e:  # noqa: BLE001
        raise misfit(e) from e
    return state, metadata


def load_latest_intact(run_dir: str | os.PathLike, like) -> tuple[Path, Any, dict, list[str]]:
    """Load the newest step checkpoint that is intact, skipping damaged newer ones.

    Returns:
      (path, state, metadata, warnings): one warning sentence per damaged newer file.
      A checkpoint that does not fit `like` raises `CheckpointError` at once (wrong run);
      `CheckpointDamaged` when every step file is damaged; `CheckpointError` when none exist.
    """
    steps = saved_steps(run_dir)
    if not steps:
        raise CheckpointError(f"no checkpoint in {Path(run_dir) / 'checkpoints'}")
    damaged = []
    for step in reversed(steps):
        path = step_path(run_dir, step)
        try:
            state, metadata = load_checkpoint(path, like)
        except CheckpointDamaged as e:
            damaged.append((path, e.reason))
            continue
        warnings = [f"checkpoint {bad} is damaged ({why}); using {path} instead"
                    for bad, why in damaged]
        return path, state, metadata, warnings
    raise CheckpointDamaged(
        f"no intact checkpoint in {Path(run_dir) / 'checkpoints'}: the newest, "
        f"{damaged[0][0]}, is damaged ({damaged[0][1]}) and so are all "
        f"{len(damaged) - 1} older ones", "none intact")


def remove_orphans(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the ``.tmp-*`` files interrupted writes left in run_dir/checkpoints.

    Only call it while holding the run folder's lock (a live writer's file looks the same).
    """
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    removed = []
    for f in sorted(folder.glob(".tmp-*")):
        if f.is_file():
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed


def all_finite(tree) -> bool:
    """Whether every floating leaf of `tree` is finite (PRNG keys and integers are skipped)."""
    checks = []
    for x in jax.tree.leaves(tree):
        if _is_key(x):
            continue
        dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
        if jnp.issubdtype(dtype, jnp.inexact):
            checks.append(jnp.all(jnp.isfinite(jnp.asarray(x))))
    return bool(jnp.all(jnp.stack(checks))) if checks else True


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
