"""A/B of the whole training loop: a single run's logged tokens/s, this tree against a
git revision (both `loop.fit`, alternating rounds in one process).

    python experiments/bench/loop_ab.py 7b4088a                  # Zaremba small, 5 rounds
    python experiments/bench/loop_ab.py HEAD~3 --config base --rounds 3

Where `ab.py` times the jitted step alone, this includes everything the loop does between
steps (batches, host syncs, device placement), as `population.py` measures it: each
measurement is a fit stopped after `--windows` windows of `--log-every` steps past a first
(compiling) one; the ratio printed is the median of the per-round ratios, with its range.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ab  # noqa: E402  (imports a revision's jax_lm under another name)
import population  # noqa: E402  (the metered, stopped fit)

if __name__ == "__main__":
    population.allocator.reexec_with_tuned_malloc()


def measure(lib, config_name: str, overrides: dict[str, str], windows: int, folder: Path):
    """Logged tokens/s of `lib.loop.fit` (the config file is read by this tree's jax_lm, and
    handed to `lib` as JSON, without the keys that `lib` does not know)."""
    from jax_lm import config as config_lib

    saved = config_lib.apply_overrides(config_lib.load_config(config_name), overrides).to_dict()
    known = lib.config.get_config()
    config = lib.config.from_json(json.dumps({k: v for k, v in saved.items() if k in known}))
    meter = population._Meter(windows)  # the loop only calls its methods
    try:
        lib.loop.fit(config, folder, callbacks=[meter], progress=False, print_fn=lambda _: None)
    except population._Enough:
        pass
    return statistics.median(meter.rates[1:])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rev")
    p.add_argument("--config", default="zaremba_small")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--log-every", type=int, default=25)
    opts = p.parse_args(argv)
    import importlib

    new = importlib.import_module("jax_lm")
    for name in ("callbacks", "config", "loop"):
        importlib.import_module(f"jax_lm.{name}")
    overrides = {"train.log_every": str(opts.log_every)}
    ratios, rates = [], {"new": [], "old": []}
    with tempfile.TemporaryDirectory() as tmp:
        old = ab.import_revision(opts.rev, Path(tmp))
        for name in ("callbacks", "config", "loop"):
            importlib.import_module(f"{old.__name__}.{name}")
        for r in range(opts.rounds):
            pair = {}
            for label, lib in ([("new", new), ("old", old)] if r % 2 == 0 else
                               [("old", old), ("new", new)]):
                pair[label] = measure(lib, opts.config, overrides, opts.windows,
                                      Path(tmp) / f"{label}{r}")
                rates[label].append(pair[label])
            ratios.append(pair["new"] / pair["old"])
            print(f"round {r + 1}: new {pair['new']:,.0f} tok/s, {opts.rev} {pair['old']:,.0f} "
                  f"tok/s, ratio {ratios[-1]:.3f}", flush=True)
    print(f"{opts.config}: this tree / {opts.rev} = {statistics.median(ratios):.3f} "
          f"({min(ratios):.3f}–{max(ratios):.3f}); {statistics.median(rates['new']):,.0f} vs "
          f"{statistics.median(rates['old']):,.0f} tok/s")


if __name__ == "__main__":
    main()
