"""The command line: ``jax-lm COMMAND …`` or ``python -m jax_lm COMMAND …``.

Each command is a small function ``(args) -> exit code`` registered by ``_add_<command>``;
the parser rejects unknown commands and flags. A data problem (`DataError`) prints one line,
``jax-lm: error: …``, and exits with status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pathlib import Path

from jax_lm.checkpoint import CheckpointError
from jax_lm.config import ConfigError
from jax_lm.data import DataError, Tokenizer, load_corpus
from jax_lm.train import TrainingError


def _optional(token: str) -> str | None:
    """``--eos ''`` turns a token off."""
    return token or None


def _add_stats(commands) -> None:
    p = commands.add_parser(
        "stats",
        help="print the vocabulary size and the token count of each split",
        description="Tokenize a corpus (cached) and print its vocabulary size and split sizes.",
    )
    p.add_argument(
        "source",
        help="a text file (90/10 train/valid split by characters), a folder with train.txt "
        "[valid.txt test.txt], a hub name (tiny_shakespeare, ptb_text_only, wikitext-2, …, "
        "or hub:owner/name[:config]), or 'default' (CPython's pydoc topics, offline)",
    )
    p.add_argument(
        "--level", default="word", metavar="{char,word}", help="token level (default: word)"
    )
    p.add_argument(
        "--split",
        default="whitespace",
        metavar="{whitespace,regex}",
        help="word level: split on whitespace (pre-tokenized text) or punctuation-aware regex",
    )
    p.add_argument("--lowercase", action="store_true", help="lowercase the text first")
    p.add_argument(
        "--bos", type=_optional, default=None, help="token before each line (default: none)"
    )
    p.add_argument(
        "--eos",
        type=_optional,
        default=argparse.SUPPRESS,
        help="token after each line (default: <eos> for word level, none for char; '' for none)",
    )
    p.add_argument(
        "--unk",
        type=_optional,
        default="<unk>",
        help="unknown token, added only when needed ('' for none)",
    )
    p.add_argument("--reserve-unk", action="store_true", help="always include the unknown token")
    p.add_argument(
        "--max-vocab",
        type=int,
        default=None,
        help="cap the vocabulary size (special tokens included)",
    )
    p.add_argument("--min-count", type=int, default=1, help="drop types seen fewer times in train")
    p.add_argument(
        "--vocab", default=None, help="use this vocabulary JSON file instead of building one"
    )
    p.add_argument(
        "--save-vocab", default=None, metavar="PATH", help="write the vocabulary as JSON"
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="datasets cache (default: $JAX_LM_CACHE_DIR or ~/.cache/jax_lm)",
    )
    p.add_argument(
        "--errors",
        default="strict",
        metavar="{strict,replace}",
        help="bad UTF-8: fail, or replace bytes",
    )
    p.set_defaults(run=_stats)


def _stats(args: argparse.Namespace) -> int:
    overrides = {"split": args.split, "lowercase": args.lowercase, "bos": args.bos}
    if "eos" in args:
        overrides["eos"] = args.eos
    corpus = load_corpus(
        args.source,
        Tokenizer.for_level(args.level, **overrides),
        vocab=args.vocab,
        max_vocab=args.max_vocab,
        min_count=args.min_count,
        unk=args.unk,
        reserve_unk=args.reserve_unk,
        cache_dir=args.cache_dir,
        errors=args.errors,
    )
    vocab = corpus.vocab
    if args.save_vocab:
        vocab.save(args.save_vocab)
    rows = [
        ("source", corpus.source),
        ("level", args.level),
        ("vocab_size", str(vocab.size)),
        ("vocab_fingerprint", vocab.fingerprint()[:16]),
    ]
    for split, ids in corpus.splits.items():
        lines = len(corpus.line_offsets[split]) - 1
        rows.append((split, f"{len(ids)} tokens, {lines} lines"))
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _add_train(commands) -> None:
    p = commands.add_parser(
        "train", help="train a model (default: a small char LSTM on the embedded corpus)",
        description="Train as a config says. Override any field with --config.<path>=<value>, "
        "e.g. --config.model.hidden_size=650; unknown keys are rejected.")
    p.add_argument("--config", dest="config_file", default=None, metavar="NAME_OR_PATH",
                   help="experiments/configs/<NAME>.py or a path to a config file (default: base)")
    p.add_argument("--workdir", default=None,
                   help="run folder (default: runs/<config>-<date>-<time>)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its latest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_train, takes_overrides=True)


def _train(args: argparse.Namespace) -> int:
    import time as _time

    from jax_lm import config as config_lib
    from jax_lm import train

    if args.resume:
        run_dir = args.resume
        config = config_lib.from_json((Path(run_dir) / "config.json").read_text()) if (
            Path(run_dir) / "config.json").is_file() else None
        if config is None:
            raise train.TrainingError(f"nothing to resume in {run_dir}: no config.json")
    else:
        config = config_lib.load_config(args.config_file)
        name = Path(args.config_file).stem if args.config_file else "base"
        run_dir = args.workdir or f"runs/{name}-{_time.strftime('%Y%m%d-%H%M%S')}"
    config_lib.apply_overrides(config, args.overrides)
    train.train_and_evaluate(config, run_dir, resume=bool(args.resume),
                             progress=not args.no_progress)
    return 0


def _add_run_arg(p) -> None:
    p.add_argument("run_dir", help="a run folder written by 'jax-lm train'")
    p.add_argument("--checkpoint", default="best",
                   help="'best' (default), 'latest', or a checkpoint file")


def _add_eval(commands) -> None:
    p = commands.add_parser("eval", help="perplexity (and bits per token) of a run on a split",
                            description="Evaluate a trained run on a split of its corpus.")
    _add_run_arg(p)
    p.add_argument("--split", default="valid", help="train, valid or test (default: valid)")
    p.add_argument("--quality", type=int, default=0, metavar="N",
                   help="also generate N samples and report distinct-n, n-gram overlap with "
                   "the split and the longest span copied from the training text")
    p.add_argument("--num-tokens", type=int, default=200, help="tokens per quality sample")
    p.set_defaults(run=_eval)


def _eval(args: argparse.Namespace) -> int:
    from jax_lm import train

    run = train.load_run(args.run_dir, args.checkpoint)
    corpus = train.load_run_corpus(run.config, run.vocab)
    if args.split not in corpus.splits:
        raise DataError(f"the corpus has no {args.split!r} split; it has {sorted(corpus.splits)}")
    scores = train.evaluate(run.params, run.lm_config,
                            train.eval_batches(run.config, corpus, args.split))
    unit = "char" if run.config.data.level == "char" else "token"
    print(f"{args.split}: {scores['tokens']} tokens, nll {scores['nll']:.4f} nats/{unit}, "
          f"perplexity {scores['ppl']:.3f}, {scores['bits']:.4f} bits/{unit}")
    if args.quality:
        from jax_lm import metrics

        samples = train.generate_token_samples(run, num_samples=args.quality,
                                               num_tokens=args.num_tokens)
        report = metrics.quality_report(samples, corpus.splits["train"], corpus.splits[args.split])
        for key, value in report.items():
            print(f"  {key:<24} {value:.4f}" if isinstance(value, float) else f"  {key:<24} {value}")
    return 0


def _add_sample(commands) -> None:
    p = commands.add_parser("sample", help="generate text from a trained run",
                            description="Generate text from a run's checkpoint (one jitted loop).")
    _add_run_arg(p)
    p.add_argument("--prime", default=None, help="text to continue (default: the config's)")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--num-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--resample-once", action="store_true",
                   help="003's rule: draw once more when the draw is not the argmax")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sentences", type=int, default=0, metavar="N",
                   help="001's sentence mode: N sentences from the start token to the end "
                   "token, never the unknown token (needs a corpus framed with data.bos/eos)")
    p.add_argument("--min-length", type=int, default=0,
                   help="sentence mode: reject sentences with fewer tokens (001 uses 7)")
    p.add_argument("--max-length", type=int, default=50,
                   help="sentence mode: reject sentences that have not ended by then")
    p.set_defaults(run=_sample)


def _sample(args: argparse.Namespace) -> int:
    from jax_lm import train

    run = train.load_run(args.run_dir, args.checkpoint)
    s = run.config.sample
    for field in ("prime", "num_tokens", "temperature", "top_k", "top_p"):
        if getattr(args, field) is not None:
            s[field] = getattr(args, field)
    s.greedy = s.greedy or args.greedy
    s.resample_once = s.resample_once or args.resample_once
    s.num_samples = args.num_samples
    if args.sentences:
        for text in train.sample_sentence_texts(run, args.sentences, min_length=args.min_length,
                                                max_length=args.max_length, seed=args.seed):
            print(text)
        return 0
    for text in train.sample_texts(run, seed=args.seed):
        print(text)
        print()
    return 0


def _add_sweep(commands) -> None:
    p = commands.add_parser(
        "sweep", help="run a grid of configs and tabulate the results",
        description="Run every point of a sweep file's get_sweep() grid (skipping finished "
        "runs), then write results.md (mean ± std over seeds) and results.png.")
    p.add_argument("sweep", metavar="NAME_OR_PATH",
                   help="experiments/configs/<NAME>.py or a path; it defines get_config() "
                   "and get_sweep()")
    p.add_argument("--workdir", default=None, help="sweep folder (default: runs/<name>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--vmap-seeds", action="store_true",
                   help="train the points that differ only in seed together (jax.vmap)")
    p.set_defaults(run=_sweep)


def _sweep(args: argparse.Namespace) -> int:
    from jax_lm import sweep

    workdir = args.workdir or f"runs/{Path(args.sweep).stem}"
    sweep.run_sweep(args.sweep, workdir, progress=not args.no_progress,
                    vmap_seeds=args.vmap_seeds)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jax-lm", description="Recurrent language models in JAX.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(commands)
    _add_eval(commands)
    _add_sample(commands)
    _add_sweep(commands)
    _add_stats(commands)
    return parser


def _split_overrides(extra: list[str]) -> dict[str, str]:
    """`--config.a.b=v` or `--config.a.b v` pairs from the arguments argparse did not know."""
    overrides, i = {}, 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--config."):
            raise SystemExit(f"jax-lm: error: unrecognized argument {arg!r}")
        key, eq, value = arg[len("--config."):].partition("=")
        if not eq:
            if i + 1 >= len(extra):
                raise SystemExit(f"jax-lm: error: {arg} needs a value")
            value, i = extra[i + 1], i + 1
        overrides[key] = value
        i += 1
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns the process exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = _split_overrides(extra)
    import datasets

    datasets.disable_progress_bars()  # the command prints its own summary
    try:
        return args.run(args)
    except (DataError, ConfigError, TrainingError, CheckpointError) as err:
        print(f"jax-lm: error: {err}", file=sys.stderr)
        return 1
