"""Time loading a corpus: tokenizing into a fresh cache, then reading that cache back.

    python experiments/bench/data_load.py                      # PTB train/valid/test, word level
    python experiments/bench/data_load.py PATH --level char    # any source `jax-lm stats` takes

Times `jax_lm.data.load_corpus` (reads the text, tokenizes, builds the vocabulary, encodes;
datasets writes cache files), then the same call again, which reads those cache files. Each
pair runs twice, with a fresh temporary cache folder each time: within one Python process,
and as two fresh processes (what two `jax-lm` commands see; datasets' own lazy imports, about
0.1 s, then count in both loads). Imports of jax_lm and datasets are never timed.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jax_lm.data import shared_data_dir

DATA = shared_data_dir()


def timed_load(source: str, level: str, cache_dir: str) -> tuple[float, object]:
    from jax_lm.data import load_corpus

    start = time.perf_counter()
    corpus = load_corpus(source, level, cache_dir=cache_dir)
    return time.perf_counter() - start, corpus


def load_in_new_process(source: str, level: str, cache_dir: str) -> float:
    command = [
        sys.executable,
        __file__,
        source,
        "--level",
        level,
        "--cache-dir",
        cache_dir,
        "--child",
    ]
    return float(
        subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()[-1]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", default=str(DATA / "ptb"))
    parser.add_argument("--level", default="word")
    parser.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import datasets

    datasets.disable_progress_bars()
    if args.child:
        print(f"{timed_load(args.source, args.level, args.cache_dir)[0]:.4f}")
        return
    with tempfile.TemporaryDirectory() as cache:
        first, corpus = timed_load(args.source, args.level, cache)
        second, _ = timed_load(args.source, args.level, cache)
    with tempfile.TemporaryDirectory() as cache:
        first_new = load_in_new_process(args.source, args.level, cache)
        second_new = load_in_new_process(args.source, args.level, cache)
    sizes = ", ".join(f"{split} {len(ids):,}" for split, ids in corpus.splits.items())
    vocab = f"vocabulary {corpus.vocab.size:,}"
    print(f"source: {args.source} ({args.level} level, {vocab}; tokens: {sizes})")
    print(
        f"python {sys.version.split()[0]}, datasets {datasets.__version__}, {os.cpu_count()} cores"
    )
    print(f"{'':15}{'first load (tokenize)':>24}{'second load (cached)':>24}{'speed-up':>10}")
    for name, a, b in [("one process", first, second), ("two processes", first_new, second_new)]:
        print(f"{name:15}{a:22.3f} s{b:22.3f} s{a / b:9.1f}x")


if __name__ == "__main__":
    main()
