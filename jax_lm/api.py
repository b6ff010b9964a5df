"""The Python face of the command line: the same configs, loop, run folders and sweeps.

    import jax_lm
    cfg = jax_lm.get_config("base", **{"train.max_steps": 20})   # checked, typed, frozen
    run = jax_lm.fit(cfg, workdir="runs/nb")                     # -> jax_lm.Run
    run.history; run.evaluate("valid"); run.sample(prime="def ", num_tokens=40, seed=0)
    fig = run.plot(); same = jax_lm.load_run(run.path)
    table = jax_lm.sweep("sweep_cells", **{"train.max_steps": 50})  # rows linked to runs

`fit` is `jax_lm.loop.fit` (what `jax-lm train` runs) plus a `Run` at the end; calling it
again on the same folder resumes the run, so a cell stopped with the notebook's stop button
(which saves a checkpoint and raises `jax_lm.loop.Interrupted`) continues where it stopped.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from jax_lm import callbacks as callbacks_lib
from jax_lm import config as config_lib
from jax_lm import loop, rundir, runs, sweeps
from jax_lm.config import RunConfig


def get_config(name_or_path: str | os.PathLike = "base",
               overrides: Mapping[str, Any] | None = None, /, **more: Any) -> RunConfig:
    """A shipped config (`jax-lm configs`) or a config file, with dotted-key overrides, checked.

    Overrides are Python values, given as a dict or as keyword arguments:
    `get_config("zaremba_small", {"train.epochs": 2})`, `get_config("base", seed=3)`,
    `get_config("base", **{"model.hidden_size": 64})`. Returns the frozen `RunConfig` the
    command line builds (its `replace(...)` gives changed, checked copies); every problem
    is a `ConfigError` with one sentence per problem.
    """
    config = config_lib.load_config(name_or_path)
    return config_lib.resolve(config_lib.apply_values(config, {**(overrides or {}), **more}))


def fit(config: RunConfig | str, workdir: str | os.PathLike | None = None, *,
        callbacks: Sequence[callbacks_lib.Callback] = (), progress: bool = True) -> runs.Run:
    """Train as `config` says into `workdir`, or resume the run already there; its `Run`.

    `config`: a `RunConfig` (`get_config`), a ConfigDict, or a shipped config's name.
    `workdir`: default `runs/run-<date>-<time>`. A folder that holds a run is resumed from
    its newest checkpoint (with this config, as `jax-lm train --resume` with overrides);
    a finished one is returned as it is. `callbacks` are added to the usual ones (progress
    bar, console lines, TensorBoard, curves.png, samples.txt). Ctrl-C or the notebook's stop
    button saves a checkpoint and raises `jax_lm.loop.Interrupted`; call `fit` again to go on.
    """
    if isinstance(config, (str, os.PathLike)):
        config = get_config(config)
    config = config_lib.resolve(config)
    workdir = Path(workdir or f"runs/run-{time.strftime('%Y%m%d-%H%M%S')}")
    resume = rundir.RunDir(workdir).holds_run()
    every = callbacks_lib.default_callbacks(progress=progress, print_fn=print,
                                           level=config.data.level, names=[workdir.name])
    loop.fit(config, workdir, resume=resume, callbacks=[*every, *callbacks],
             progress=progress)
    return runs.load_run(workdir)


def load_run(path: str | os.PathLike, which: str = "best") -> runs.Run:
    """The `Run` in a run folder, finished or interrupted (`which`: "best", "latest" or a
    checkpoint's path)."""
    return runs.load_run(path, which)


class Sweep:
    """A sweep's results: one record per grid point (as results.jsonl), the table of
    results.md, and each point's `Run` (`result.runs[name]`, loaded on first use)."""

    def __init__(self, path: Path, records: list[dict[str, Any]]):
        self.path, self.records = path, records
        self.table = sweeps.summarize(records)

    def __repr__(self) -> str:
        return sweeps.format_table(self.table)

    def _repr_markdown_(self) -> str:
        return sweeps.format_table(self.table)

    def __len__(self) -> int:
        return len(self.records)

    @functools.cached_property
    def runs(self) -> dict[str, runs.Run]:
        return {r["name"]: runs.load_run(self.path / r["name"]) for r in self.records}

    def to_pandas(self):
        """One row per grid point: its overrides and scores (needs pandas)."""
        import pandas as pd  # noqa: PLC0415 - optional

        return pd.DataFrame([{**r["overrides"], **{k: v for k, v in r.items()
                                                   if k != "overrides"}} for r in self.records])


def sweep(sweep_or_config: str | os.PathLike | RunConfig,
          workdir: str | os.PathLike | None = None, *, grid: list[dict] | None = None,
          population: str = "auto", progress: bool = False,
          overrides: Mapping[str, Any] | None = None, **more: Any) -> Sweep:
    """Run a grid of configs as `jax-lm sweep` does (finished points are skipped); the results.

    Either a sweep file (or a shipped sweep's name) with its `get_sweep()` grid, or any
    config (name, path or `RunConfig`) with `grid`, a list of override dicts
    (`[{"model.cell": "gru", "seed": 1}, ...]`). `overrides` (dotted keys, Python values)
    apply to every point before the grid's own; `population`: "auto", "on", "seeds" or
    "off" (see `jax_lm.sweeps`); default folder `runs/<sweep name>`.
    """
    name = "sweep" if isinstance(sweep_or_config, RunConfig) else Path(sweep_or_config).stem
    workdir = Path(workdir or f"runs/{name}")
    values = {k: config_lib.override_text(v) for k, v in {**(overrides or {}), **more}.items()}
    records = sweeps.run_sweep(sweep_or_config, workdir, grid=grid, progress=progress,
                               population_mode=population, overrides=values)
    return Sweep(workdir, records)
