"""The run folder: everything a run keeps on disk, and the rules that keep it intact.

    run_dir/config.json        the resolved config (written atomically)
    run_dir/vocab.json         the vocabulary (written atomically)
    run_dir/metrics.jsonl      one JSON record per line: training logs, epochs, final scores
    run_dir/checkpoints/       step_<N>.msgpack (the newest `keep` of them), best.msgpack
    run_dir/curves.png         loss and validation perplexity
    run_dir/samples.txt        text sampled at the end
    run_dir/tensorboard/       TensorBoard event files
    run_dir/.lock              held (flock) by the one process that writes the folder
    run_dir/.lock.holder       pid, host and command of that process, while it holds the lock

Rules: one writer at a time (a second is refused with the holder's pid and host; a lock
whose process died is released by the kernel and taken over); every file is replaced
atomically (temporary file + rename), except metrics.jsonl, which is appended and whose
length at each checkpoint is saved in the checkpoint, so a resume cuts off whatever was
logged after it (a torn last line included); a new folder whose start fails is removed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import filelock

from jax_lm import checkpoint
from jax_lm.checkpoint import write_atomic

CONFIG = "config.json"
VOCAB = "vocab.json"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
SAMPLES = "samples.txt"
TENSORBOARD = "tensorboard"
LOCK = ".lock"
HOLDER = ".lock.holder"


class RunFolderError(RuntimeError):
    """The run folder cannot be used as asked (in use, already a run, not a run, unwritable)."""


class RunFolderWarning(UserWarning):
    """Something about a run folder a user should know, that does not stop the command."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDir:
    """A run folder (`path`) and the operations on it; see the module docstring."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock: filelock.BaseFileLock | None = None
        self._created: Path | None = None  # what to remove if a new run fails to start

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ----------------------------------------------------------------- what is there

    def holds_run(self) -> bool:
        """True when the folder has a config, a metrics log or a checkpoint."""
        return (self.path / CONFIG).exists() or (self.path / METRICS).exists() or bool(
            checkpoint.saved_steps(self.path)) or checkpoint.best_path(self.path).exists()

    def read_config_text(self) -> str:
        path = self.path / CONFIG
        if not path.is_file():
            what = "does not exist" if not self.path.exists() else "is not a run folder"
            raise RunFolderError(f"{self.path} {what} (no {CONFIG}); give the folder that "
                                 "'jax-lm train' wrote")
        try:
            return path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise RunFolderError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") \
                from None

    # ----------------------------------------------------------------- the lock

    @contextlib.contextmanager
    def locked(self, *, new: bool = False) -> Iterator[RunDir]:
        """Hold the folder's lock; with `new`, create the folder first (refusing a run).

        A new folder that this call created is removed again when the block raises before
        `started()` is called (a failed start leaves nothing behind).
        """
        if new:
            self._create()
        elif not self.path.is_dir():
            raise RunFolderError(f"{self.path} does not exist")
        lock = filelock.FileLock(self.path / LOCK, timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise RunFolderError(f"{self.path} is in use by {self._holder_text()}; wait for "
                                 "it to end or stop it (one process writes a run at a time)") \
                from None
        except OSError as e:
            self._discard_new()
            raise RunFolderError(f"cannot lock {self.path}: {e.strerror or e}") from None
        self._lock = lock
        try:
            self._take_over_stale_holder()
            holder = {"pid": os.getpid(), "host": socket.gethostname(),
                      "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
            write_atomic(self.path / HOLDER, json.dumps(holder))
            yield self
        except BaseException:
            self._discard_new()
            raise
        finally:
            if self.path.exists():
                (self.path / HOLDER).unlink(missing_ok=True)
            lock.release()
            self._lock = None

    def started(self) -> None:
        """The run has begun: from now on a failure keeps the folder (it can be resumed)."""
        self._created = None

    def _create(self) -> None:
        if self.holds_run():
            raise RunFolderError(f"{self.path} already holds a run; resume it with 'jax-lm "
                                 f"train --resume {self.path}' or choose another --workdir "
                                 "(nothing was overwritten)")
        missing = self.path  # the topmost folder this call creates: removed if the start fails
        while not missing.parent.exists():
            missing = missing.parent
        try:
            self.path.mkdir(parents=True)
            self._created = missing
        except FileExistsError:
            if not self.path.is_dir():
                raise RunFolderError(f"{self.path} exists and is not a folder") from None
        except OSError as e:
            raise RunFolderError(f"cannot create run folder {self.path}: "
                                 f"{e.strerror or e}") from None

    def _discard_new(self) -> None:
        if self._created:
            shutil.rmtree(self._created, ignore_errors=True)
            self._created = None

    def _holder_text(self) -> str:
        try:
            holder = json.loads((self.path / HOLDER).read_text())
            return f"pid {holder['pid']} on {holder['host']} (since {holder['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def _take_over_stale_holder(self) -> None:
        try:
            holder = json.loads((self.path / HOLDER).read_text())
        except (OSError, ValueError):
            return
        if isinstance(holder, dict) and holder.get("pid") != os.getpid():
            same_host = holder.get("host") == socket.gethostname()
            if not same_host or not _process_alive(int(holder.get("pid", 0))):
                warnings.warn(f"took over the lock of {self.path} left by pid "
                              f"{holder.get('pid')} on {holder.get('host')}, which stopped "
                              "without releasing it", RunFolderWarning, stacklevel=2)

    # ----------------------------------------------------------------- files

    def write_config(self, text: str) -> None:
        write_atomic(self.path / CONFIG, text)

    def write_vocab(self, vocab) -> None:
        vocab.save(self.path / VOCAB)

    def remove_orphans(self) -> None:
        """Delete temporary files that a killed write left behind."""
        checkpoint.remove_orphans(self.path)

    def write_text(self, name: str, text: str) -> None:
        write_atomic(self.path / name, text)

    def save_figure(self, figure, name: str = CURVES) -> None:
        """A matplotlib Figure as a PNG, replaced atomically."""
        png = io.BytesIO()
        figure.savefig(png, format="png", dpi=100)
        write_atomic(self.path / name, png.getvalue())

    # ----------------------------------------------------------------- the metrics log

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    def log(self, record: dict[str, Any]) -> None:
        """Append one record as a JSON line (non-finite numbers as the strings inf/nan)."""
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(_jsonable(record)) + "\n")

    def log_size(self) -> int:
        try:
            return self.metrics_path.stat().st_size
        except FileNotFoundError:
            return 0

    def records(self) -> list[dict[str, Any]]:
        """Every complete record of metrics.jsonl (a torn last line is left out)."""
        return read_records(self.metrics_path)

    def cut_log(self, offset: int) -> str | None:
        """Truncate metrics.jsonl to `offset` bytes (what the resumed checkpoint accounts
        for); returns a warning when a torn line was cut off."""
        size = self.log_size()
        if size <= offset:
            return None
        with self.metrics_path.open("rb") as f:
            f.seek(offset)
            tail = f.read()
        with self.metrics_path.open("r+b") as f:
            f.truncate(offset)
            f.flush()
            os.fsync(f.fileno())
        if not tail.endswith(b"\n"):
            return (f"{self.metrics_path} ended in a torn line (the process was killed while "
                    "writing it); cut back to the last checkpoint")
        return None

    # ----------------------------------------------------------------- checkpoints

    def save_step(self, step: int, state, metadata: dict, keep: int) -> Path:
        return checkpoint.save_step(self.path, step, state, metadata, keep=keep)

    def save_best(self, state, metadata: dict) -> Path:
        return checkpoint.save_checkpoint(checkpoint.best_path(self.path), state, metadata)

    def latest_checkpoint(self) -> Path | None:
        return checkpoint.latest_path(self.path)


def _jsonable(value):
    """Floats that JSON cannot hold (inf, nan) become the strings "inf", "-inf", "nan"."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The complete JSON records of a metrics log; a torn or damaged line is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class FollowerRunDir(RunDir):
    """A run folder as a process other than process 0 of a multi-process run sees it:
    it reads as `RunDir` does and writes nothing (process 0 holds the lock and writes)."""

    @contextlib.contextmanager
    def locked(self, *, new: bool = False) -> Iterator[RunDir]:
        yield self

    def started(self) -> None:
        pass

    def write_config(self, text: str) -> None:
        pass

    def write_vocab(self, vocab) -> None:
        pass

    def remove_orphans(self) -> None:
        pass

    def write_text(self, name: str, text: str) -> None:
        pass

    def save_figure(self, figure, name: str = CURVES) -> None:
        pass

    def log(self, record: dict[str, Any]) -> None:
        pass

    def cut_log(self, offset: int) -> str | None:
        return None

    def save_step(self, step: int, state, metadata: dict, keep: int) -> None:
        return None

    def save_best(self, state, metadata: dict) -> None:
        return None
