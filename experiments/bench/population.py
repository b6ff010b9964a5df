"""Populations: members × tokens/s of S members trained as one population (one vmapped
step) against the same S runs one after another, through the real loop.

    python experiments/bench/population.py                       # Zaremba small, S = 1, 4, 16
    python experiments/bench/population.py --members 1,2,8 --config zaremba_medium
    python experiments/bench/population.py --out experiments/results/population-cpu.md

Each measurement is a `jax_lm.loop.fit_population` of S members (seeds 0 … S-1; on a mesh
of one device, or as `--config.mesh.*` says) that is stopped once it has logged
`--windows` windows of `--log-every` steps after a first, untimed one (which holds the
compilation). The rate is the loop's own logged `tokens_per_s` (every member's tokens over
the wall time of the window, host syncs included), times S. Runs one after another train
at the rate of S = 1, so the speedup of a population is its rate over the S = 1 rate. The
sizes alternate within each round, so a drift of the machine's speed falls on all alike;
the tables give the median over rounds and the range.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from jax_lm import allocator  # noqa: E402

if __name__ == "__main__":  # the malloc settings `jax-lm` runs with
    allocator.reexec_with_tuned_malloc()

import jax  # noqa: E402

from jax_lm import callbacks, loop  # noqa: E402
from jax_lm import config as config_lib  # noqa: E402
from jax_lm import mesh as mesh_lib  # noqa: E402


class _Enough(Exception):
    """Raised by `_Meter` once it has what it measures (the run is left unfinished)."""


class _Meter(callbacks.Callback):
    """Collects member 0's logged tokens/s; stops the fit after `windows` + 1 windows."""

    def __init__(self, windows: int):
        self.windows, self.rates = windows, []

    def on_record(self, member, record):
        if member == 0 and "tokens_per_s" in record:
            self.rates.append(record["tokens_per_s"])
            if len(self.rates) > self.windows:
                raise _Enough


def measure(config_name: str, members: int, overrides: dict[str, str], windows: int,
            folder: Path) -> float:
    """Members × tokens/s of one population of `members` (median over its windows)."""
    configs = []
    for seed in range(members):
        config = config_lib.load_config(config_name)
        config_lib.apply_overrides(config, {**overrides, "seed": str(seed)})
        configs.append(config)
    meter = _Meter(windows)
    dirs = [folder / f"s{members}-{seed}" for seed in range(members)]
    try:
        loop.fit_population(configs, dirs, callbacks=[meter], progress=False,
                            print_fn=lambda _: None)
    except _Enough:
        pass
    return members * statistics.median(meter.rates[1:])


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="zaremba_small")
    p.add_argument("--members", default="1,4,16", help="population sizes S, comma-separated")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--windows", type=int, default=3, help="timed windows per measurement")
    p.add_argument("--log-every", type=int, default=25, help="steps per window")
    p.add_argument("--out", default=None, help="also write the report (markdown) here")
    opts, extra = p.parse_known_args(argv)
    overrides = {"train.log_every": str(opts.log_every), "train.eval_at_start": "false",
                 **{k.removeprefix("--config."): v for k, v in
                    (a.split("=", 1) for a in extra)}}
    sizes = [int(s) for s in opts.members.split(",")]
    rates: dict[int, list[float]] = {s: [] for s in sizes}
    with tempfile.TemporaryDirectory(prefix="jax_lm_population_") as tmp:
        for r in range(opts.rounds):
            order = sizes[r % len(sizes):] + sizes[: r % len(sizes)]
            for s in order:
                folder = Path(tmp) / f"round{r}"
                rates[s].append(measure(opts.config, s, overrides, opts.windows, folder))
                print(f"round {r + 1}/{opts.rounds}: S={s}: {rates[s][-1]:,.0f} "
                      "member-tokens/s", flush=True)
    one = statistics.median(rates[sizes[0]]) if sizes[0] == 1 else None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    lines = [f"Command: `python experiments/bench/population.py {' '.join(argv or sys.argv[1:])}`",
             f"Commit {commit}, {datetime.date.today()}, {mesh_lib.describe_devices()} "
             f"({jax.devices()[0].device_kind}), jax {jax.__version__}, malloc "
             f"{allocator.describe()}; config {opts.config}, {opts.rounds} rounds × "
             f"{opts.windows} windows of {opts.log_every} steps.", "",
             "| members S | population: members × tokens/s (median, range) | S runs one "
             "after another | speedup |", "|---|---|---|---|"]
    for s in sizes:
        med = statistics.median(rates[s])
        alone = f"{one:,.0f}" if one else "—"
        speedup = f"{med / one:.2f}×" if one else "—"
        lines.append(f"| {s} | {med:,.0f} ({min(rates[s]):,.0f}–{max(rates[s]):,.0f}) | "
                     f"{alone} | {speedup} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if opts.out:
        Path(opts.out).write_text(text)
    return text


if __name__ == "__main__":
    main()
