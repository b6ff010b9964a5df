"""Sweeps: one command runs a grid of configs and writes a table and a plot of the results.

A sweep file is a config file whose module also defines `get_sweep()`: a list of override
dicts (`{"model.cell": "gru", "seed": 1}`) applied to its `get_config()`. Every grid point
is an ordinary run folder under the sweep folder, so a sweep that is stopped and started
again skips the finished runs and resumes the interrupted one. With `vmap_seeds` (`jax-lm
sweep --vmap-seeds`) the points that differ only in `seed` train together, one vmapped step
for all seeds (`jax_lm.multiseed`).

    sweep_dir/<point name>/...     one run folder per grid point
    sweep_dir/results.jsonl        one record per run (overrides, scores, training seconds)
    sweep_dir/results.md           mean ± std over seeds of each setting
    sweep_dir/results.png          the same as a bar chart
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jax_lm import checkpoint
from jax_lm import config as config_lib


def load_sweep(path_or_name: str | os.PathLike) -> tuple[Any, list[dict[str, Any]]]:
    """(base config, grid) of a sweep file or of `experiments/configs/<name>.py`."""
    path = Path(path_or_name)
    if not path.suffix and not path.exists():
        path = config_lib.CONFIG_DIR / f"{path_or_name}.py"
    config = config_lib.load_config(path)
    spec = importlib.util.spec_from_file_location(f"jax_lm_sweep_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise config_lib.ConfigError(f"{path} defines no get_sweep(): it is not a sweep file")
    grid = module.get_sweep()
    if not grid:
        raise config_lib.ConfigError(f"{path}: get_sweep() returned an empty grid")
    return config, grid


def point_name(overrides: dict[str, Any]) -> str:
    """A folder name for a grid point: `cell=gru,seed=1`."""
    return ",".join(f"{k.split('.')[-1]}={v}" for k, v in overrides.items())


def _as_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _final_record(run_dir: Path) -> dict | None:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    finals = [json.loads(line) for line in path.read_text().splitlines() if '"final"' in line]
    return finals[-1] if finals else None


def _point_config(base, overrides: dict[str, Any]):
    return config_lib.apply_overrides(config_lib.from_json(config_lib.to_json(base)),
                                      {k: _as_text(v) for k, v in overrides.items()})


def _train_seed_groups(base, grid: list[dict], sweep_dir: Path, print_fn) -> None:
    """Train, S seeds at a time with `jax_lm.multiseed`, every group of grid points that
    differ only in `seed` and have not started; other points are left to the loop."""
    from jax_lm import multiseed

    groups: dict[str, list[dict]] = {}
    for overrides in grid:
        if "seed" in overrides:
            rest = {k: v for k, v in overrides.items() if k != "seed"}
            groups.setdefault(json.dumps(rest, sort_keys=True), []).append(overrides)
    for points in groups.values():
        fresh = [p for p in points if not (sweep_dir / point_name(p)).exists()]
        if len(fresh) < 2:
            continue
        config = _point_config(base, fresh[0])
        try:
            multiseed.check_supported(config)
        except config_lib.ConfigError as e:
            print_fn(f"seeds one by one: {e}")
            continue
        names = [point_name(p) for p in fresh]
        print_fn(f"[{len(fresh)} seeds at once] {', '.join(names)}")
        multiseed.train_seeds(config, [p["seed"] for p in fresh],
                              [sweep_dir / n for n in names], print_fn=print_fn)


def run_sweep(sweep: str | os.PathLike, sweep_dir: str | os.PathLike, *,
              progress: bool = False, vmap_seeds: bool = False,
              print_fn: Callable[[str], None] = print) -> list[dict]:
    """Run every grid point that has not finished yet; write and return the result records.

    With `vmap_seeds`, points that differ only in `seed` train together (`jax_lm.multiseed`).
    """
    from jax_lm import train

    base, grid = load_sweep(sweep)
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if vmap_seeds:
        _train_seed_groups(base, grid, sweep_dir, print_fn)
    records = []
    for i, overrides in enumerate(grid, 1):
        name = point_name(overrides)
        run_dir = sweep_dir / name
        config = _point_config(base, overrides)
        final = _final_record(run_dir)
        if final is None:
            print_fn(f"[{i}/{len(grid)}] {name}")
            resume = checkpoint.latest_path(run_dir) is not None
            train.train_and_evaluate(config, run_dir, resume=resume, progress=progress,
                                     print_fn=print_fn)
            final = _final_record(run_dir)
        else:
            print_fn(f"[{i}/{len(grid)}] {name}: finished earlier, skipped")
        records.append({"name": name, "overrides": overrides,
                        "seconds": final.get("train_seconds"),
                        "num_params": final.get("num_params"),
                        **{k: v for k, v in final.items() if k.startswith(("valid_", "test_"))}})
    with (sweep_dir / "results.jsonl").open("w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    table = summarize(records)
    (sweep_dir / "results.md").write_text(format_table(table))
    plot_summary(table, sweep_dir / "results.png")
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
        lines.append(f"| {r['setting']} | {r['runs']} | {params} | {r['mean']:.4f} ± "
                     f"{r['std']:.4f} | {r['bits']:.3f} | {seconds} |")
    return "\n".join(lines) + "\n"


def plot_summary(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 3.5))
    ax.bar(range(len(rows)), [r["mean"] for r in rows],
           yerr=[0 if math.isnan(r["std"]) else r["std"] for r in rows], capsize=4)
    ax.set_xticks(range(len(rows)), [r["setting"] for r in rows], rotation=20, ha="right")
    ax.set_ylabel(f"{rows[0]['metric']} (mean ± std over seeds)")
    low = min(r["mean"] - (0 if math.isnan(r["std"]) else r["std"]) for r in rows)
    ax.set_ylim(bottom=max(0.0, low - 0.1 * abs(low)))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
