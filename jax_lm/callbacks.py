"""What the fit loop tells the world: progress bar, console lines, TensorBoard, plot, samples.

A callback is any object with some of these methods (all optional; `Callback` has them as
no-ops to subclass). `member` is the index of a population member (0 for a single run):

    on_start(info: FitInfo)                   once, before the first step of this call
    on_record(member, record: dict)           every record the loop writes to metrics.jsonl:
                                              training logs ("train_loss"), epoch ends
                                              ("valid_ppl", "next_lr"), the final scores
    on_end(member, end: RunEnd)               the run's end-of-run work (after its final
                                              record): plots, samples, reports
    on_close()                                always, last (also after an error or interrupt)

The loop itself owns what exact resume depends on (metrics.jsonl, checkpoints, the config);
callbacks only read. A callback must not raise for a run to go on; the ones here are what
`jax-lm train` uses (`default_callbacks`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Sequence

from jax_lm import plots
from jax_lm.rundir import SAMPLES, TENSORBOARD, RunDir


@dataclasses.dataclass(frozen=True)
class FitInfo:
    """What a fit call is about to do."""

    run_dirs: tuple[RunDir, ...]   # one per member
    start_step: int
    total_steps: int
    steps_per_epoch: int
    summary: str                   # the one-line description printed at the start


@dataclasses.dataclass(frozen=True)
class RunEnd:
    """A member's run at its end: everything a report needs."""

    run_dir: RunDir
    run: Any            # jax_lm.runs.Run with the best params
    records: list       # every record of its metrics.jsonl
    result: dict        # its final record


class Callback:
    """Base class with every hook as a no-op."""

    def on_start(self, info: FitInfo) -> None:
        pass

    def on_record(self, member: int, record: dict[str, Any]) -> None:
        pass

    def on_end(self, member: int, end: RunEnd) -> None:
        pass

    def on_close(self) -> None:
        pass


def fmt(value, spec: str = ".2f") -> str:
    """A figure for people: `inf` / `nan` when not finite, powers of ten when huge."""
    if isinstance(value, str):  # "inf" / "nan" as read back from metrics.jsonl
        value = float(value)
    if not isinstance(value, (int, float)) or math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if abs(value) >= 1e9:
        return format(value, ".3g")
    return format(value, spec)


class ProgressBar(Callback):
    """A tqdm bar over the training steps: loss, tokens/s, learning rate, ETA."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None
        self.step = 0

    def on_start(self, info: FitInfo) -> None:
        self.step = info.start_step
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=info.total_steps, initial=info.start_step, disable=not self.enabled,
                        unit="step", dynamic_ncols=True, leave=True)

    def on_record(self, member: int, record: dict[str, Any]) -> None:
        if self.bar is None or member != 0 or "train_loss" not in record:
            return
        self.bar.set_postfix(loss=fmt(record["train_loss"], ".3f"),
                             tok_s=fmt(record["tokens_per_s"], ",.0f"), lr=f"{record['lr']:.3g}")
        self.bar.update(record["step"] - self.step)
        self.step = record["step"]

    def on_close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Console(Callback):
    """The start line, one line per epoch, the final scores and the samples."""

    def __init__(self, print_fn: Callable[[str], None] = print, level: str = "char",
                 names: Sequence[str] = ()):
        """`names`: the members' run folder names, prefixed to their lines when several."""
        self.print = print_fn
        self.unit = "char" if level == "char" else "token"
        self.names = list(names)

    def _prefix(self, member: int) -> str:
        return f"{self.names[member]}: " if len(self.names) > 1 else ""

    def on_start(self, info: FitInfo) -> None:
        self.print(info.summary)

    def on_record(self, member: int, record: dict[str, Any]) -> None:
        if record.get("final") or "train_loss" in record or record.get("partial_epoch"):
            return
        if record.get("epoch") == 0:
            msg = "epoch 0: " + ", ".join(f"{k} {fmt(v, '.4f')}" for k, v in record.items()
                                          if k not in ("epoch", "step"))
        elif "next_lr" in record:
            msg = f"epoch {record['epoch']}: train ppl {fmt(record['train_ppl'])}"
            if "valid_ppl" in record:
                msg += (f", valid ppl {fmt(record['valid_ppl'])} "
                        f"({fmt(record['valid_bits'], '.3f')} bits/{self.unit})")
            msg += f", next lr {record['next_lr']:.4g}"
        else:
            return
        self.print(self._prefix(member) + msg)

    def on_end(self, member: int, end: RunEnd) -> None:
        r = end.result
        summary = ", ".join(f"{s} ppl {fmt(r[f'{s}_ppl'])}" for s in ("valid", "test")
                            if f"{s}_ppl" in r)
        self.print(f"{self._prefix(member)}done: {summary}; run folder {end.run_dir.path}")
        for text in r.get("samples", ()):
            self.print("--- sample ---\n" + text)


class CurvesPlot(Callback):
    """curves.png of each member's run folder, at its end."""

    def on_end(self, member: int, end: RunEnd) -> None:
        end.run_dir.save_figure(plots.curves_figure(end.records))


class Samples(Callback):
    """`sample.num_samples` texts from the best params into samples.txt (and the result)."""

    def on_end(self, member: int, end: RunEnd) -> None:
        from jax_lm import runs

        texts = runs.sample_texts(end.run, seed=end.run.config.seed)
        end.result["samples"] = texts
        end.run_dir.write_text(SAMPLES, "\n\n".join(texts) + "\n")


class TensorBoard(Callback):
    """Event files in run_dir/tensorboard (tensorboardX): every numeric field of every record.

    On resume, events at or after the resumed step are purged (`purge_step`), so the
    curves show each step once.
    """

    def __init__(self):
        self.writers: dict[int, Any] = {}
        self.info: FitInfo | None = None

    def on_start(self, info: FitInfo) -> None:
        self.info = info

    def _writer(self, member: int):
        if member not in self.writers:
            from tensorboardX import SummaryWriter

            path = Path(self.info.run_dirs[member].path) / TENSORBOARD
            self.writers[member] = SummaryWriter(
                str(path), purge_step=self.info.start_step or None, flush_secs=30)
        return self.writers[member]

    def on_record(self, member: int, record: dict[str, Any]) -> None:
        if self.info is None:
            return
        step = int(record.get("step", 0))
        group = ("final" if record.get("final") else "train" if "train_loss" in record
                 else "epoch")
        writer = self._writer(member)
        for key, value in record.items():
            if key in ("step", "final") or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                writer.add_scalar(f"{group}/{key}", value, step)

    def on_close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


def default_callbacks(*, progress: bool = True, print_fn: Callable[[str], None] = print,
                      level: str = "char", names: Sequence[str] = (),
                      tensorboard: bool = True) -> list[Callback]:
    """What `jax-lm train` uses: bar, console, TensorBoard, curves.png and samples.txt."""
    callbacks: list[Callback] = [CurvesPlot(), Samples(), Console(print_fn, level, names=names),
                                 ProgressBar(progress)]
    if tensorboard:
        callbacks.append(TensorBoard())
    return callbacks
