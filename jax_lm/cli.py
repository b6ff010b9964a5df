"""The command line: ``jax-lm COMMAND …`` or ``python -m jax_lm COMMAND …``.

Each command is a small function ``(args) -> exit code`` registered by ``_add_<command>``;
the parser rejects unknown commands and flags. Every user error (config, data, files,
permissions, disk, memory, a damaged checkpoint) prints one line, ``jax-lm: error: …``,
and exits with status 1; ``--debug`` (or ``JAX_LM_DEBUG=1``) shows the traceback instead.
SIGINT / SIGTERM print one line and exit with 130 / 143.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from jax_lm.checkpoint import CheckpointError
from jax_lm.config import ConfigError
from jax_lm.data import DataError
from jax_lm.rundir import RunFolderError
from jax_lm.train import TrainingError

USER_ERRORS = (DataError, ConfigError, TrainingError, CheckpointError, RunFolderError)


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
        "[valid.txt test.txt], a hub "
        "name (tiny_shakespeare, ptb_text_only, wikitext-2, …, or hub:owner/name[:config]), "
        "or 'default' (CPython's pydoc topics, offline)",
    )
    p.add_argument(
        "--level", default=None, metavar="{char,word}",
        help="token level (default: the base config's data.level, char, as 'jax-lm train')"
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
        help="token after each line (default: none, as 'jax-lm train'; PTB uses <eos>)",
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
    from jax_lm import data
    from jax_lm.config import get_config

    base = get_config().data  # the same defaults as `jax-lm train`
    level = args.level or base.level
    overrides = {"split": args.split, "lowercase": args.lowercase, "bos": args.bos,
                 "eos": getattr(args, "eos", base.eos or None)}
    corpus = data.load_corpus(
        args.source,
        data.Tokenizer(level=level, **overrides),
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
        ("level", level),
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
        "e.g. --config.model.hidden_size=650; unknown keys are rejected. SIGINT/SIGTERM save a "
        "checkpoint and exit (130/143); --resume continues exactly where the run stopped.")
    p.add_argument("--config", dest="config_file", default=None, metavar="NAME_OR_PATH",
                   help="a shipped config (see 'jax-lm configs') or a path to a config file "
                   "(default: base)")
    p.add_argument("--workdir", default=None,
                   help="run folder (default: runs/<config>-<date>-<time>)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its latest checkpoint (overrides "
                   "given with it, e.g. a larger train.time_budget_minutes, apply from there)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    group = p.add_argument_group(
        "several processes", "one process per host (or per GPU); all three together, or "
        "none inside SLURM or on a TPU slice, where JAX reads them from the environment")
    group.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                       help="address of process 0, which coordinates the others")
    group.add_argument("--num-processes", type=int, default=None, metavar="N")
    group.add_argument("--process-id", type=int, default=None, metavar="I",
                       help="this process's rank, 0 … N-1 (process 0 writes the run folder)")
    p.set_defaults(run=_train, takes_overrides=True)


def _train(args: argparse.Namespace) -> int:
    from jax_lm import config as config_lib
    from jax_lm import loop, runs
    from jax_lm.mesh import join_processes

    join_processes(args.coordinator, args.num_processes, args.process_id)  # before any JAX use

    if args.resume:
        if args.config_file or args.workdir:
            raise ConfigError("--resume continues the run as its config.json says; give "
                              "--config.<field>=<value> overrides, not --config or --workdir")
        config = runs.read_config(args.resume)
        run_dir = args.resume
    else:
        config = config_lib.load_config(args.config_file)
        name = Path(args.config_file).stem if args.config_file else "base"
        run_dir = args.workdir or f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    config_lib.apply_overrides(config, args.overrides)
    _enable_x64_if_asked(config)
    resolved = config_lib.resolve(config)  # every check before any file is touched
    loop.fit(resolved, run_dir, resume=bool(args.resume), progress=not args.no_progress)
    return 0


def _enable_x64_if_asked(config) -> None:
    """A float64 model needs JAX's 64-bit mode: the command (not the library) turns it on."""
    if "float64" in (config.model.param_dtype, config.model.compute_dtype):
        import jax

        jax.config.update("jax_enable_x64", True)


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
    from jax_lm import pipeline, runs, train

    if args.quality < 0 or args.num_tokens < 1:
        raise ConfigError("--quality must be ≥ 0 and --num-tokens ≥ 1")
    _enable_x64_if_asked(runs.read_config(args.run_dir))
    run = runs.load_run(args.run_dir, args.checkpoint)
    corpus = pipeline.load_run_corpus(run.config, run.vocab)
    if args.split not in corpus.splits:
        raise DataError(f"the corpus has no {args.split!r} split; it has {sorted(corpus.splits)}")
    scores = train.evaluate(run.params, run.lm_config,
                            pipeline.eval_batches(run.config, corpus, args.split))
    unit = "char" if run.config.data.level == "char" else "token"
    print(f"{args.split}: {scores['tokens']} tokens, nll {_num(scores['nll'], '.4f')} "
          f"nats/{unit}, perplexity {_num(scores['ppl'], '.3f')}, "
          f"{_num(scores['bits'], '.4f')} bits/{unit}")
    if args.quality:
        from jax_lm import metrics

        samples = runs.generate_token_samples(run, num_samples=args.quality,
                                              num_tokens=args.num_tokens)
        report = metrics.quality_report(samples, corpus.splits["train"], corpus.splits[args.split])
        for key, value in report.items():
            print(f"  {key:<24} {value:.4f}" if isinstance(value, float) else f"  {key:<24} {value}")
    return 0


def _num(value: float, spec: str) -> str:
    from jax_lm.callbacks import fmt

    return fmt(value, spec)


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
    from jax_lm import config as config_lib
    from jax_lm import runs

    config = runs.read_config(args.run_dir)
    _enable_x64_if_asked(config)
    options = {f"sample.{k}": str(getattr(args, k)) for k in
               ("prime", "num_tokens", "temperature", "top_k", "top_p")
               if getattr(args, k) is not None}
    options["sample.num_samples"] = str(args.num_samples)
    if args.greedy:
        options["sample.greedy"] = "true"
    if args.resample_once:
        options["sample.resample_once"] = "true"
    config_lib.apply_overrides(config, options)
    sample_options = config_lib.resolve(config).sample  # checked before anything is loaded
    if args.sentences < 0 or args.min_length < 0 or args.max_length < 1:
        raise ConfigError("--sentences and --min-length must be ≥ 0, --max-length ≥ 1")
    run = runs.load_run(args.run_dir, args.checkpoint)
    run = dataclasses.replace(run, config=dataclasses.replace(run.config, sample=sample_options))
    if args.sentences:
        for text in runs.sample_sentence_texts(run, args.sentences, min_length=args.min_length,
                                               max_length=args.max_length, seed=args.seed):
            print(text)
        return 0
    for text in runs.sample_texts(run, seed=args.seed):
        print(text)
        print()
    return 0


def _add_sweep(commands) -> None:
    p = commands.add_parser(
        "sweep", help="run a grid of configs and tabulate the results",
        description="Run every point of a sweep file's get_sweep() grid (skipping finished "
        "runs), then write results.md (mean ± std over seeds) and results.png. "
        "--config.<field>=<value> overrides apply to every point (before the grid's own).")
    p.add_argument("sweep", metavar="NAME_OR_PATH",
                   help="a shipped sweep (see 'jax-lm configs') or a path; it defines "
                   "get_config() and get_sweep()")
    p.add_argument("--workdir", default=None, help="sweep folder (default: runs/<name>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--population", default="auto", choices=("auto", "on", "seeds", "off"),
                   help="train the points that share shapes together as populations (on), "
                   "only those that differ in seed (seeds), or one by one (off); auto (the "
                   "default): on with an accelerator, off on a CPU, where populations are "
                   "slower")
    p.add_argument("--vmap-seeds", action="store_true", help="the same as --population seeds")
    p.set_defaults(run=_sweep, takes_overrides=True)


def _sweep(args: argparse.Namespace) -> int:
    from jax_lm import sweeps as sweep

    from jax_lm import config as config_lib

    base, grid = sweep.load_sweep(args.sweep)
    config_lib.apply_overrides(base, args.overrides)
    for point in grid:
        _enable_x64_if_asked(sweep.point_config(base, point))
    workdir = args.workdir or f"runs/{Path(args.sweep).stem}"
    sweep.run_sweep(args.sweep, workdir, progress=not args.no_progress,
                    population_mode="seeds" if args.vmap_seeds else args.population,
                    overrides=args.overrides)
    return 0


def _add_configs(commands) -> None:
    p = commands.add_parser("configs", help="list the shipped configs and sweeps",
                            description="List the configs that ship with jax_lm (use them "
                            "with 'jax-lm train --config NAME' or 'jax-lm sweep NAME').")
    p.set_defaults(run=_configs)


def _configs(args: argparse.Namespace) -> int:
    from jax_lm import config as config_lib

    entries = config_lib.list_configs()
    width = max(len(entry[0]) for entry in entries)
    for name, purpose, *rest in entries:
        print(f"{name:<{width}}  {purpose}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jax-lm", description="Recurrent language models in JAX.")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also: JAX_LM_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(commands)
    _add_eval(commands)
    _add_sample(commands)
    _add_sweep(commands)
    _add_stats(commands)
    _add_configs(commands)
    for sub in commands.choices.values():
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show the traceback of an error (also: JAX_LM_DEBUG=1)")
    return parser


def _split_overrides(extra: list[str]) -> dict[str, str]:
    """`--config.a.b=v` or `--config.a.b v` pairs from the arguments argparse did not know."""
    overrides, i = {}, 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--config."):
            raise ConfigError(f"unrecognized argument {arg!r} (overrides are written "
                              "--config.<field>=<value>)")
        key, eq, value = arg[len("--config."):].partition("=")
        if not eq:
            if i + 1 >= len(extra):
                raise ConfigError(f"{arg} needs a value")
            value, i = extra[i + 1], i + 1
        overrides[key] = value
        i += 1
    return overrides


def describe_error(err: BaseException) -> str | None:
    """One sentence for an error a user can act on; None for a bug (show the traceback)."""
    if isinstance(err, USER_ERRORS):
        return str(err)
    if isinstance(err, OSError):
        where = f": {err.filename}" if err.filename else ""
        if err.errno == errno.ENOSPC:
            return f"the disk is full{where}; free space and resume (nothing saved was lost)"
        if err.errno in (errno.EACCES, errno.EPERM):
            return f"permission denied{where}; choose a folder you can write or fix its rights"
        if err.errno == errno.EROFS:
            return f"read-only file system{where}; choose a writable --workdir"
        return f"{err.strerror or err}{where}"
    if isinstance(err, MemoryError):
        return ("out of memory; lower model.hidden_size, model.num_layers or data.batch_size")
    text = str(err)
    if any(sign in text for sign in ("CoordinationService", "Gloo context", "heartbeat")):
        return ("another process of this multi-process run stopped or cannot be reached (see "
                "its own output); the run folder is as process 0 left it: fix the cause and "
                "start every process again")
    if "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text:
        return ("the device ran out of memory; lower model.hidden_size, model.num_layers or "
                "data.batch_size")
    return None


def _one_line_warnings(show_other):
    """A `warnings.showwarning` printing jax_lm's warnings as `jax-lm: warning: …`."""
    from jax_lm.rundir import RunFolderWarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, RunFolderWarning):
            print(f"jax-lm: warning: {message}", file=sys.stderr)
        else:
            show_other(message, category, filename, lineno, file, line)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns the process exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get("JAX_LM_DEBUG", "") not in ("", "0")
    if extra and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.overrides = _split_overrides(extra)
        import datasets

        datasets.disable_progress_bars()  # the command prints its own summary
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
            return args.run(args)
    except KeyboardInterrupt as err:  # loop.Interrupted carries the step and the exit code
        if debug:
            raise
        newline = "\n" if sys.stderr.isatty() else ""  # off a progress bar's line
        print(f"{newline}jax-lm: {err or 'interrupted'}", file=sys.stderr)
        return getattr(err, "exit_code", 130)
    except Exception as err:  # noqa: BLE001 - every failure ends in one sentence
        if debug:
            raise
        message = describe_error(err)
        if message is None:
            first = (str(err).strip().splitlines() or [""])[0][:300]
            message = (f"unexpected {type(err).__name__}: {first} (run again with --debug for "
                       "the traceback, and please report it)")
        print("jax-lm: error: " + " ".join(message.split("\n")), file=sys.stderr)
        return 1
