"""Sweeps: one command runs a grid of configs and writes a table and a plot of the results.

A sweep file is a config file whose module also defines `get_sweep()`: a list of override
dicts (`{"model.cell": "gru", "seed": 1}`) applied to its `get_config()`. Every grid point
is an ordinary run folder under the sweep folder, so a sweep that is stopped and started
again skips the finished runs and resumes the interrupted ones. Points whose configs differ
only in `population.MEMBER_FIELDS` (seed, learning rate, clip norm, dropout, init scale,
Zaremba decay) can train together as one population: one vmapped step for all, their
members split over the mesh's "population" axis (`jax_lm.loop.fit_population`). The
folders, table and plot are the same as when each point trains alone. `--population auto`
(the default) forms populations on an accelerator and not on a CPU backend, where they
train slower than one run after another; `on` / `off` choose; `--vmap-seeds` (`--population
seeds`) groups only the points that differ in seed.

    sweep_dir/<point name>/...     one run folder per grid point
    sweep_dir/results.jsonl        one record per run (overrides, scores, training seconds)
    sweep_dir/results.md           mean ± std over seeds of each setting
    sweep_dir/results.png          the same as a bar chart
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jax_lm import checkpoint, loop, plots, population, rundir
from jax_lm import config as config_lib


def load_sweep(path_or_name: str | os.PathLike) -> tuple[Any, list[dict[str, Any]]]:
    """(base config, grid) of a sweep file or of a shipped sweep (`jax-lm configs`)."""
    path = config_lib.config_path(path_or_name)
    config = config_lib.load_config(path)
    module = config_lib.load_module(path)
    if not hasattr(module, "get_sweep"):
        raise config_lib.ConfigError(f"{path} defines no get_sweep(): it is not a sweep file")
    try:
        grid = list(module.get_sweep())
    except Exception as e:  # noqa: BLE001 - a broken sweep file is a user error
        raise config_lib.ConfigError(f"{path}: get_sweep() raised {type(e).__name__}: {e}") \
            from None
    if not grid or not all(isinstance(p, dict) for p in grid):
        raise config_lib.ConfigError(f"{path}: get_sweep() must return a non-empty list of "
                                     "override dicts")
    return config, grid


def point_name(overrides: dict[str, Any]) -> str:
    """A folder name for a grid point: `cell=gru,seed=1` ("base" for the point without
    overrides)."""
    return ",".join(f"{k.split('.')[-1]}={v}" for k, v in overrides.items()) or "base"


def _final_record(run_dir: Path) -> dict | None:
    finals = [r for r in rundir.read_records(run_dir / rundir.METRICS) if r.get("final")]
    return finals[-1] if finals else None


def point_config(base, overrides: dict[str, Any]):
    """The ConfigDict of a grid point: the sweep's base with the point's overrides."""
    return config_lib.apply_values(config_lib.from_json(config_lib.to_json(base)), overrides)


GROUPINGS = ("auto", "on", "seeds", "off")


def auto_grouping() -> str:
    """"on" on an accelerator; "off" on a CPU backend, where a vmapped step of S members
    trains slower than S runs one after another (experiments/results/population-*.md)."""
    import jax  # noqa: PLC0415 - imported when a sweep runs, not when this module loads

    return "off" if jax.default_backend() == "cpu" else "on"


def _groups(configs: dict[str, Any], names: list[str], grouping: str) -> list[list[str]]:
    """The points that train together: every shape-compatible group ("on"), the points that
    differ only in seed ("seeds", i.e. `--vmap-seeds`), or each alone ("off")."""
    if grouping not in GROUPINGS:
        raise config_lib.ConfigError(f"--population {grouping!r} is not one of "
                                     f"{', '.join(GROUPINGS)}")
    if grouping == "auto":
        grouping = auto_grouping()
    if grouping == "off":
        return [[name] for name in names]
    fields = population.MEMBER_FIELDS if grouping == "on" else ("seed",)
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(population.population_key(configs[name], fields), []).append(name)
    return list(groups.values())


def _batches(group: list[str], sweep_dir: Path) -> list[tuple[list[str], bool]]:
    """(points, resume) to train: the group's new points together; its interrupted ones
    together where they stopped at the same step (as a population stops), else alone."""
    fresh = [n for n in group if not rundir.RunDir(sweep_dir / n).holds_run()]
    by_step: dict[Any, list[str]] = {}
    for name in group:
        if name not in fresh:
            latest = checkpoint.saved_steps(sweep_dir / name)
            by_step.setdefault(latest[-1] if latest else None, []).append(name)
    return ([(fresh, False)] if fresh else []) + [(names, True) for names in by_step.values()]


def run_sweep(sweep, sweep_dir: str | os.PathLike, *, grid: list[dict] | None = None,
              progress: bool = False, population_mode: str = "auto", vmap_seeds: bool = False,
              overrides: dict[str, str] | None = None,
              print_fn: Callable[[str], None] = print) -> list[dict]:
    """Run every grid point that has not finished yet; write and return the result records.

    `overrides` (dotted key -> text, as `--config.*`) apply to every point before the
    grid's own. Every point's config is checked before the first one trains. Points that
    can share one vmapped step train together as a population (`population_mode="on"`);
    "seeds" (or `vmap_seeds`) groups only points that differ in seed; "off" runs each alone;
    "auto" is "on" on an accelerator and "off" on a CPU backend (`auto_grouping`).
    `sweep` is a sweep file (or a shipped sweep's name); with `grid` (override dicts) it may
    be any config: a name, a path, a ConfigDict or a `RunConfig`.
    """
    if grid is None:
        base, grid = load_sweep(sweep)
    elif isinstance(sweep, config_lib.RunConfig):
        base = sweep.to_configdict()
    elif isinstance(sweep, (str, os.PathLike)):
        base = config_lib.load_config(sweep)
    else:
        base = config_lib.from_json(config_lib.to_json(sweep))
    if not grid or not all(isinstance(p, dict) for p in grid):
        raise config_lib.ConfigError("a sweep's grid must be a non-empty list of override dicts")
    config_lib.apply_overrides(base, overrides or {})
    # Every point is checked before the first one trains.
    configs = {point_name(p): config_lib.resolve(point_config(base, p)) for p in grid}
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    names = [point_name(p) for p in grid]
    pending = [n for n in names if _final_record(sweep_dir / n) is None]
    for name in names:
        if name not in pending:
            print_fn(f"[{names.index(name) + 1}/{len(grid)}] {name}: finished earlier, skipped")
    for group in _groups(configs, pending, "seeds" if vmap_seeds else population_mode):
        for members, resume in _batches(group, sweep_dir):
            where = ", ".join(f"[{names.index(n) + 1}/{len(grid)}] {n}" for n in members)
            print_fn(f"{where}" + (f" ({len(members)} together)" if len(members) > 1 else ""))
            loop.fit_population([configs[n] for n in members], [sweep_dir / n for n in members],
                                resume=resume, progress=progress, print_fn=print_fn)
    records = []
    for point, name in zip(grid, names):
        final = _final_record(sweep_dir / name)
        records.append({"name": name, "overrides": point,
                        "seconds": final.get("train_seconds"),
                        "num_params": final.get("num_params"),
                        **{k: v for k, v in final.items()
                           if k.startswith(("valid_", "test_")) or k == "diverged_at"}})
    checkpoint.write_atomic(sweep_dir / "results.jsonl",
                            "".join(json.dumps(record) + "\n" for record in records))
    table = summarize(records)
    checkpoint.write_atomic(sweep_dir / "results.md", format_table(table))
    rundir.RunDir(sweep_dir).save_figure(plots.summary_figure(table), "results.png")
    print_fn(format_table(table))
    return records


def summarize(records: list[dict], metric: str = "valid_nll") -> list[dict]:
    """Group runs that differ only in `seed`; mean and sample std of `metric` per group."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        key = point_name({k: v for k, v in r["overrides"].items() if k != "seed"}) or "base"
        groups.setdefault(key, []).append(r)
    rows = []
    for key, runs in groups.items():
        values = np.array([r[metric] for r in runs], float)
        seconds = [r["seconds"] for r in runs if r["seconds"] is not None]
        rows.append({"setting": key, "runs": len(runs), "metric": metric,
                     "mean": float(values.mean()),
                     "std": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
                     "bits": float(values.mean() / math.log(2)),
                     "num_params": runs[0].get("num_params"),
                     "seconds": float(np.mean(seconds)) if seconds else None})
    return rows


def format_table(rows: list[dict]) -> str:
    metric = rows[0]["metric"]
    lines = [f"| setting | runs | params | {metric} (mean ± std) | bits | s/run |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        seconds = "" if r["seconds"] is None else f"{r['seconds']:.0f}"
        params = "" if r["num_params"] is None else f"{r['num_params']:,}"
        spread = "" if math.isnan(r["std"]) else f" ± {r['std']:.4f}"  # one run: no std
        lines.append(f"| {r['setting']} | {r['runs']} | {params} | {r['mean']:.4f}{spread} | "
                     f"{r['bits']:.3f} | {seconds} |")
    return "\n".join(lines) + "\n"
