"""A/B: training (or evaluation) tokens/s of this working tree against a git revision.

    python experiments/bench/ab.py HEAD~1                       # Zaremba small and medium
    python experiments/bench/ab.py b5bce28 --configs char_2x512,small_gru --eval

The revision's `jax_lm` is exported (`git archive`) into a temporary folder and imported
under another name, so both run in one process, in alternating rounds (`run.alternate`);
the ratio printed is the median of the per-round ratios, with its range: a drift of the
machine's speed during the run falls on both alike. Configs are run.py's `TRAIN` names.
Like run.py, it re-executes itself with `jax_lm.allocator.TUNABLES`.
"""

from __future__ import annotations

import argparse
import importlib
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the benchmark: configs, timing, allocator re-exec)

if __name__ == "__main__":
    run.allocator.reexec_with_tuned_malloc()


def import_revision(rev: str, folder: Path):
    """`jax_lm` as of `rev`, importable as `jax_lm_<short rev>` from `folder`."""
    name = "jax_lm_" + re.sub(r"\W", "_", rev)
    archive = subprocess.run(["git", "archive", rev, "jax_lm"], cwd=run.ROOT, check=True,
                             capture_output=True).stdout
    tar_path = folder / "rev.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(folder, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    package = folder / name
    (folder / "jax_lm").rename(package)
    for path in package.glob("*.py"):
        path.write_text(re.sub(r"\bjax_lm\b", name, path.read_text()))
    sys.path.insert(0, str(folder))
    return importlib.import_module(name)


def main(argv=None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rev", help="git revision to compare against, e.g. HEAD~1")
    p.add_argument("--configs", default="zaremba_small,zaremba_medium",
                   help="comma-separated names from run.py's TRAIN, or 'tiny'")
    p.add_argument("--eval", action="store_true", help="evaluation steps instead of training")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--min-seconds", type=float, default=1.0, help="least time per round")
    opts = p.parse_args(argv)
    benches = {b.name: b for b in run.TRAIN}
    benches["tiny"] = run.tiny(benches["zaremba_small"])
    lines = []
    with tempfile.TemporaryDirectory() as folder:
        old = import_revision(opts.rev, Path(folder))
        for name in opts.configs.split(","):
            b = benches[name]
            timer = run.jax_lm_eval if opts.eval else run.jax_lm_train
            rates = run.alternate({"rev": timer(b, run.library(old)), "tree": timer(b)},
                                  b.tokens, opts.rounds, opts.min_seconds)
            ratios = sorted(t / r for t, r in zip(rates["tree"], rates["rev"]))
            lines.append(f"{name} {'eval' if opts.eval else 'train'}: {opts.rev} "
                         f"{statistics.median(rates['rev']):,.0f} tok/s, working tree "
                         f"{statistics.median(rates['tree']):,.0f} tok/s, ratio "
                         f"{statistics.median(ratios):.3f} ({ratios[0]:.3f}–{ratios[-1]:.3f})")
            print(lines[-1], flush=True)
    return lines


if __name__ == "__main__":
    main()
