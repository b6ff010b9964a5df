"""The command line: ``jax-lm COMMAND …`` or ``python -m jax_lm COMMAND …``.

Each command is a small function ``(args) -> exit code`` registered by ``_add_<command>``;
the parser rejects unknown commands and flags. A data problem (`DataError`) prints one line,
``jax-lm: error: …``, and exits with status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jax_lm.data import DataError, Tokenizer, load_corpus


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jax-lm", description="Recurrent language models in JAX.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_stats(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns the process exit status."""
    args = build_parser().parse_args(argv)
    import datasets

    datasets.disable_progress_bars()  # the command prints its own summary
    try:
        return args.run(args)
    except DataError as err:
        print(f"jax-lm: error: {err}", file=sys.stderr)
        return 1
