"""Text corpora to token ids: sources, tokenizers, the vocabulary, and the `Corpus`.

Data flows one way::

    source ──► lines (datasets, cached) ──► tokens (map, cached) ──► Vocab ──► ids (map, cached)
                                                                              │
    Corpus(vocab, splits={"train": int32[N], ...}, line_offsets=...) ◄────────┘

`load_corpus` is the one call training code needs. Batching the ids lives in
`jax_lm.batching`.

Sources (`resolve_source`):
    * a text file: split by characters, the first 90% is train and the rest valid
      (Tiny Shakespeare's convention, ``n = int(0.9 * len(text))``);
    * a folder with ``train.txt`` and optionally ``valid.txt`` (or ``validation.txt``) and
      ``test.txt``; a folder holding a single ``.txt`` file counts as that file;
    * a mapping ``{"train": path or [paths], "valid": ..., "test": ...}`` (Python API);
    * a hub dataset: a name from `HUB_DATASETS` or ``hub:owner/name[:config]``;
    * ``"default"``: CPython's own ``pydoc_data.topics`` reference text, so that everything
      works offline with no data at all (its numbers vary with the Python version).

    The CLI takes the source as ``--config.data.source=...`` (``jax-lm stats SOURCE``). The
    experiment configs read the real corpora (``ptb/``, ``tinyshakespeare/``) from
    `shared_data_dir`: ``$JAX_LM_DATA_DIR``, else the checkout's ``shared/data``, else ``./data``.

Lines. Every split is read as ``"\\n"``-terminated lines (the final line may lack its newline;
``"\\r\\n"`` and ``"\\r"`` read as ``"\\n"``, as in Python's text mode). At word level each
line gives its words, framed by ``bos``/``eos`` when those are set (PTB: ``eos="<eos>"``, one
per line, an empty line is just ``<eos>``). A whitespace-only final line with no newline is not
a line. At character level without framing every character is a token, newlines included;
with framing, each line's characters are framed and its newline dropped. A line that gives
no tokens at all (a blank line when nothing frames lines) is left out of the corpus.

Vocabulary rule (`build_vocab`), chosen so that published counts come out unchanged:
    1. the framing tokens (``bos``, ``eos``) that are set come first;
    2. then the unknown token, only when it is needed: it occurs in the training text (PTB
       writes ``<unk>``), the size cap or ``min_count`` drops a type, another split has a type
       missing from train, or ``reserve_unk=True``;
    3. then every other training type by count, descending, ties broken by code-point order.
    ``max_size`` counts everything, the special tokens included (seed 001's 8,000).
    PTB gives 10,000 types (``<eos>`` and the text's ``<unk>`` included); Tiny Shakespeare at
    character level gives 65 (its validation text has no character missing from train).

Caching. Each step is a ``Dataset.map(batched=True)`` whose fingerprint is derived from its
input's fingerprint, the step's settings and `CACHE_VERSION`, so datasets writes its result to
a cache file next to the input and a second load reads it back instead of tokenizing again.
The cache lives in ``cache_dir`` (default: ``$JAX_LM_CACHE_DIR`` or ``~/.cache/jax_lm``).
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# datasets and pyarrow are imported inside the functions that read text, so that importing
# this module (for Vocab or Tokenizer, say at sampling time) stays cheap.

# Bump when tokenization or line handling changes, so that stale cache files are not reused.
CACHE_VERSION = "2"

LEVELS = ("char", "word")
WORD_SPLITS = ("whitespace", "regex")
SPLITS = ("train", "valid", "test")


class DataError(ValueError):
    """A problem with the user's data or data settings, stated in one line."""


# ----------------------------------------------------------------------------- tokenization

# Splits raw text into words and punctuation, in the spirit of nltk's word_tokenize
# (which seed 001 uses) but with no data download. "Don't stop!" -> do n't stop !
_WORD_PATTERN = re.compile(
    r"""
      <\w+>                         # markup tokens such as PTB's <unk> stay whole
    | \w+(?=n['’]t\b)               # "do" of "don't": the clitic n't is split off ...
    | n['’]t\b                      # ... and kept as a token of its own
    | ['’](?:s|re|ve|ll|m|d)\b      # the other clitics: 's 're 've 'll 'm 'd
    | \d+(?:[.,]\d+)+               # numbers with separators: 3.14, 1,000
    | \w+(?:-\w+)*                  # words; hyphenated compounds stay whole
    | \.\.\.                        # an ellipsis
    | \S                            # any other symbol on its own
    """,
    re.VERBOSE | re.IGNORECASE,
)


def split_lines(text: str) -> list[str]:
    """Cuts text after every ``"\\n"``; the newlines are kept and nothing else splits.

    >>> split_lines("a b\\n\\nc")
    ['a b\\n', '\\n', 'c']
    """
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


@dataclass(frozen=True)
class Tokenizer:
    """How one line of text becomes tokens.

    Attributes:
        level: ``"char"`` (every character is a token) or ``"word"``.
        split: word level only: ``"whitespace"`` for pre-tokenized corpora such as PTB, or
            ``"regex"`` for raw text (punctuation and clitics split off, see
            ``_WORD_PATTERN``).
        lowercase: lowercase the text first (seed 001 does).
        bos: token put before every line, or None (seed 000: ``"<s>"``; 001:
            ``"sentence_start"``).
        eos: token put after every line, or None (PTB: ``"<eos>"``; 000: ``"<s>"``; 001:
            ``"sentence_end"``).

    Use `Tokenizer.for_level` for the usual defaults.
    """

    level: str = "word"
    split: str = "whitespace"
    lowercase: bool = False
    bos: str | None = None
    eos: str | None = None

    def __post_init__(self):
        if self.level not in LEVELS:
            raise DataError(f"unknown level {self.level!r}: choose 'char' or 'word'")
        if self.split not in WORD_SPLITS:
            raise DataError(f"unknown word split {self.split!r}: choose 'whitespace' or 'regex'")

    @classmethod
    def for_level(cls, level: str, **overrides: Any) -> Tokenizer:
        """The defaults: ``char`` has no framing; ``word`` splits on whitespace and ends
        every line with ``<eos>`` (the PTB convention)."""
        defaults = {"eos": "<eos>"} if level == "word" else {}
        return cls(level=level, **{**defaults, **overrides})

    @property
    def framed(self) -> bool:
        return self.bos is not None or self.eos is not None

    def tokenize_line(self, line: str) -> list[str]:
        """Tokens of one line, as cut by `split_lines` (its ``"\\n"``, if any, at the end)."""
        if self.lowercase:
            line = line.lower()
        if self.level == "char" and not self.framed:
            return list(line)  # the newline is a character like any other
        ended = line.endswith("\n")
        body = line[:-1] if ended else line
        if not ended and not body.strip():
            return []  # a blank tail after the last newline is not a line
        if self.level == "char":
            words = list(body)
        elif self.split == "whitespace":
            words = body.split()
        else:
            words = _WORD_PATTERN.findall(body)
        return [self.bos] * (self.bos is not None) + words + [self.eos] * (self.eos is not None)

    def tokenize(self, text: str) -> list[str]:
        """Tokens of a whole text (for example a sampling prompt)."""
        return [token for line in split_lines(text) for token in self.tokenize_line(line)]

    def detokenize(self, tokens: Iterable[str]) -> str:
        """Joins tokens back into text: characters directly, words with single spaces."""
        return ("" if self.level == "char" else " ").join(tokens)


# ----------------------------------------------------------------------------- vocabulary

_VOCAB_FORMAT = "jax_lm.vocab"


@dataclass(frozen=True)
class Vocab:
    """An ordered token list; a token's id is its position.

    Attributes:
        tokens: the tokens, id order, no duplicates.
        unk: the token that unseen tokens map to, or None (then they are an error).
    """

    tokens: tuple[str, ...]
    unk: str | None = None

    def __post_init__(self):
        if len(set(self.tokens)) != len(self.tokens):
            raise DataError("vocabulary has duplicate tokens")
        if self.unk is not None and self.unk not in self.index:
            raise DataError(f"vocabulary's unknown token {self.unk!r} is not among its tokens")

    @functools.cached_property
    def index(self) -> dict[str, int]:
        """Token -> id."""
        return {token: i for i, token in enumerate(self.tokens)}

    @property
    def size(self) -> int:
        return len(self.tokens)

    @property
    def unk_id(self) -> int | None:
        return None if self.unk is None else self.index[self.unk]

    def encode(self, tokens: Iterable[str]) -> np.ndarray:
        """Tokens -> int32[N] ids; a token not in the vocabulary becomes `unk`."""
        index, unk_id = self.index, self.unk_id
        ids = []
        for token in tokens:
            i = index.get(token, unk_id)
            if i is None:
                raise DataError(
                    f"token {token!r} is not in the vocabulary, which has no unknown token"
                )
            ids.append(i)
        return np.asarray(ids, dtype=np.int32)

    def decode(self, ids: Iterable[int]) -> list[str]:
        """int ids[N] -> N tokens."""
        return [self.tokens[int(i)] for i in ids]

    def fingerprint(self) -> str:
        """sha256 (hex) of the token list and unknown token; a checkpoint records it."""
        payload = json.dumps({"tokens": list(self.tokens), "unk": self.unk}, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        """Writes the vocabulary as JSON (UTF-8, one token list, no pickle), atomically."""
        from jax_lm.checkpoint import write_atomic

        payload = {
            "format": _VOCAB_FORMAT,
            "version": 1,
            "unk": self.unk,
            "tokens": list(self.tokens),
        }
        write_atomic(path, (json.dumps(payload, ensure_ascii=False, indent=0) + "\n").encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocab:
        """Reads a vocabulary written by `save`."""
        path = Path(path)
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"vocabulary file not found: {path}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(f"vocabulary file {path} is not valid JSON: {err}") from None
        if not isinstance(payload, dict) or payload.get("format") != _VOCAB_FORMAT:
            raise DataError(f"{path} is not a jax_lm vocabulary file (no format {_VOCAB_FORMAT!r})")
        tokens = payload.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise DataError(f"vocabulary file {path} has no list of string tokens")
        return cls(tuple(tokens), payload.get("unk"))


def build_vocab(
    counts: Mapping[str, int],
    *,
    reserved: Sequence[str | None] = (),
    unk: str | None = "<unk>",
    max_size: int | None = None,
    min_count: int = 1,
    reserve_unk: bool = False,
    other_types: Iterable[str] = (),
) -> Vocab:
    """The vocabulary of the training counts, by the rule in the module docstring.

    Args:
        counts: token -> count in the training split.
        reserved: tokens always kept and put first (the framing tokens; None entries skipped).
        unk: the unknown token's spelling, or None for no unknown token.
        max_size: cap on the vocabulary size, special tokens included.
        min_count: types seen fewer times than this in train are dropped.
        reserve_unk: include `unk` even when nothing needs it.
        other_types: the types of the other splits; one missing from the vocabulary calls
            for `unk`.
    """
    reserved = tuple(dict.fromkeys(t for t in reserved if t is not None))
    ranked = sorted(
        (t for t in counts if t not in reserved and t != unk), key=lambda t: (-counts[t], t)
    )
    kept = [t for t in ranked if counts[t] >= min_count]
    room = None if max_size is None else max_size - len(reserved)
    known = set(reserved).union(kept)
    drops = len(kept) < len(ranked) or (room is not None and len(kept) > room)
    needs_unk = drops or unk in counts or reserve_unk or any(t not in known for t in other_types)
    if needs_unk and unk is None:
        if drops:
            raise DataError(
                "the vocabulary cap drops token types, so an unknown token is needed (unk=None)"
            )
        needs_unk = False  # the caller reports other splits' unseen tokens
    needs_unk = needs_unk and unk not in reserved  # a framing token may double as unk
    if needs_unk and room is not None:
        room -= 1
    if room is not None and room < 0:
        raise DataError(f"max vocabulary size {max_size} is smaller than its special tokens")
    kept = kept if room is None else kept[:room]
    tokens = reserved + ((unk,) if needs_unk else ()) + tuple(kept)
    return Vocab(tokens, unk if unk in tokens else None)


def check_vocab_matches(
    vocab: Vocab, *, size: int | None = None, fingerprint: str | None = None
) -> None:
    """Raises DataError when `vocab` is not the one a checkpoint recorded."""
    if size is not None and vocab.size != size:
        raise DataError(f"vocabulary does not match: it has {vocab.size} tokens, expected {size}")
    if fingerprint is not None and vocab.fingerprint() != fingerprint:
        got = vocab.fingerprint()
        raise DataError(
            f"vocabulary does not match: fingerprint {got[:12]}…, expected {fingerprint[:12]}…"
        )


# ----------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class HubDataset:
    """Where a corpus lives on the HuggingFace hub and how its columns and splits are named."""

    path: str
    config: str | None = None
    text_column: str = "text"
    splits: tuple[tuple[str, str], ...] = (
        ("train", "train"),
        ("valid", "validation"),
        ("test", "test"),
    )
    revision: str | None = None


# Older hub corpora ship a loading script, which datasets no longer runs; their parquet
# conversion lives on the "refs/convert/parquet" revision.
HUB_DATASETS = {
    "tiny_shakespeare": HubDataset("karpathy/tiny_shakespeare", revision="refs/convert/parquet"),
    "ptb_text_only": HubDataset(
        "ptb-text-only/ptb_text_only", "penn_treebank", "sentence", revision="refs/convert/parquet"
    ),
    "wikitext-2": HubDataset("Salesforce/wikitext", "wikitext-2-v1"),
    "wikitext-2-raw": HubDataset("Salesforce/wikitext", "wikitext-2-raw-v1"),
    "wikitext-103": HubDataset("Salesforce/wikitext", "wikitext-103-v1"),
    "wikitext-103-raw": HubDataset("Salesforce/wikitext", "wikitext-103-raw-v1"),
}


@dataclass(frozen=True)
class Source:
    """A resolved corpus source; exactly one of `files`, `file`, `hub` is set.

    Attributes:
        name: what the user asked for, for messages.
        files: split -> text files, read in order.
        file: one text file, cut by characters into train (first `train_fraction`) and valid.
        hub: a hub dataset.
    """

    name: str
    files: tuple[tuple[str, tuple[Path, ...]], ...] = ()
    file: Path | None = None
    hub: HubDataset | None = None
    train_fraction: float = 0.9


def default_cache_dir() -> Path:
    """``$JAX_LM_CACHE_DIR``, else ``~/.cache/jax_lm``."""
    return Path(os.environ.get("JAX_LM_CACHE_DIR") or Path.home() / ".cache" / "jax_lm")


def _checkout_data_dir() -> Path:
    """Where a source checkout keeps the real corpora: ``shared/data`` beside the repository
    (which may not exist, and after a non-editable install points nowhere useful)."""
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data_dir() -> Path:
    """The folder of real corpora (ptb/, tinyshakespeare/, ...) that the experiment configs
    read, in place, never copied: ``$JAX_LM_DATA_DIR`` if set; else the ``shared/data`` folder
    beside this repository's checkout, if it exists; else ``./data`` in the current folder."""
    value = os.environ.get("JAX_LM_DATA_DIR")
    if value:
        return Path(value).expanduser()
    checkout = _checkout_data_dir()
    if checkout.is_dir():
        return checkout
    return Path.cwd() / "data"


def _data_dir_note() -> str:
    """``JAX_LM_DATA_DIR``'s value, or the folder used in its place, for messages."""
    value = os.environ.get("JAX_LM_DATA_DIR")
    if value:
        return f"JAX_LM_DATA_DIR={value}"
    return f"JAX_LM_DATA_DIR is unset, so {shared_data_dir()}"


def _source_hint() -> str:
    """The end of every "no such data" message: where data comes from and what sets it."""
    return (
        "data comes from --config.data.source=... (jax-lm stats: its SOURCE argument), which is "
        "a text file, a folder with train.txt, 'default', a hub name (such as tiny_shakespeare "
        "or wikitext-2, or hub:owner/name), and the experiment configs read their "
        f"corpora (ptb/, tinyshakespeare/) from the data folder ({_data_dir_note()})"
    )


def default_corpus_text() -> str:
    """CPython's pydoc reference topics, joined in key order: a corpus on every install."""
    from pydoc_data.topics import topics

    return "\n".join(topics[key].rstrip("\n") + "\n" for key in sorted(topics))


def _folder_files(folder: Path) -> dict[str, tuple[Path, ...]] | Path:
    names = {"train": ["train.txt"], "valid": ["valid.txt", "validation.txt"], "test": ["test.txt"]}
    found = {
        split: [folder / n for n in ns if (folder / n).is_file()] for split, ns in names.items()
    }
    if found["train"]:
        return {split: (paths[0],) for split, paths in found.items() if paths}
    texts = sorted(folder.glob("*.txt"))
    if len(texts) == 1:
        return texts[0]
    raise DataError(
        f"folder {folder} has no train.txt (and not exactly one .txt file to split); "
        + _source_hint()
    )


def resolve_source(
    source: str | os.PathLike | Mapping[str, Any],
    *,
    cache_dir: str | os.PathLike | None = None,
    train_fraction: float = 0.9,
) -> Source:
    """Turns what the user typed into a `Source` (nothing is read yet, except that
    ``"default"`` writes its text into the cache folder once)."""
    if not 0 < train_fraction < 1:
        raise DataError(f"train_fraction must be between 0 and 1, got {train_fraction}")
    if isinstance(source, Mapping):
        unknown = set(source) - set(SPLITS)
        if unknown or "train" not in source:
            raise DataError(
                f"split files need a 'train' entry and only keys {SPLITS}, got {sorted(source)}"
            )
        files = {
            s: (p,) if isinstance(p, (str, os.PathLike)) else tuple(p) for s, p in source.items()
        }
        name = ", ".join(os.fspath(p) for p in files["train"])
        return Source(name, files=tuple((s, tuple(Path(p) for p in ps)) for s, ps in files.items()))
    name = os.fspath(source)
    if name == "default":
        text = default_corpus_text()
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
        path = (
            Path(cache_dir or default_cache_dir()) / "default_corpus" / f"pydoc_topics_{digest}.txt"
        )
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".tmp{os.getpid()}")
            partial.write_text(text, encoding="utf-8")
            partial.replace(path)
        return Source("default", file=path, train_fraction=train_fraction)
    if name.startswith("hub:"):
        path, _, config = name[len("hub:") :].partition(":")
        return Source(name, hub=HubDataset(path, config or None))
    if name in HUB_DATASETS and not Path(name).exists():
        return Source(name, hub=HUB_DATASETS[name])
    path = Path(name)
    if path.is_dir():
        found = _folder_files(path)
        if isinstance(found, Path):
            return Source(name, file=found, train_fraction=train_fraction)
        return Source(name, files=tuple(found.items()))
    if path.is_file():
        return Source(name, file=path, train_fraction=train_fraction)
    raise DataError(f"no such file or folder: {name!r}; " + _source_hint())


def check_text_file(
    path: str | os.PathLike, *, errors: str = "strict", chunk_bytes: int = 1 << 22
) -> None:
    """Raises DataError unless `path` is an existing, non-empty file of valid UTF-8.

    With ``errors="replace"`` the UTF-8 check is skipped (bad bytes will read as U+FFFD).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}; " + _source_hint())
    if path.stat().st_size == 0:
        raise DataError(f"file is empty: {path}")
    if errors != "strict":
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes of the file handed to the decoder before this chunk
    with path.open("rb") as f:
        while True:
            chunk = f.read(chunk_bytes)
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the last chunk
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                # err.start counts from the held-back bytes, which precede this chunk
                at = offset - pending + err.start
                raise DataError(
                    f"{path} is not valid UTF-8: {err.reason} at byte offset {at}; to read bad "
                    "bytes as U+FFFD set --config.data.errors=replace (jax-lm stats: "
                    "--errors replace, Python: errors='replace')"
                ) from None
            if not chunk:
                return
            offset += len(chunk)


# ----------------------------------------------------------------------------- cached steps


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(repr((CACHE_VERSION,) + parts).encode("utf-8")).hexdigest()[:24]


def _cached_map(
    ds, function, *, step: Any, desc: str, batch_size: int | None = 1000, arrow: bool = False
):
    """``ds.map(function, batched=True)`` with a fingerprint of our own.

    Because the fingerprint names the input and the step's settings, datasets finds the
    result's cache file on a second run and reads it instead of calling `function` again.
    Every input column is removed; `function` returns the new columns.
    """
    ds = ds.with_format("arrow") if arrow else ds.with_format(None)
    out = ds.map(
        function,
        batched=True,
        batch_size=batch_size,
        remove_columns=ds.column_names,
        new_fingerprint=_fingerprint(ds._fingerprint, step),
        desc=desc,
    )
    return out.with_format(None)


def _lines_batch(batch: dict[str, list], *, column: str) -> dict[str, list]:
    """Rows of any length -> one row per line (hub datasets store a line, a paragraph or a
    whole text per row; a row without a final newline is given one)."""
    rows = (row if row.endswith("\n") else row + "\n" for row in batch[column] if row is not None)
    return {"text": [line for row in rows for line in split_lines(row)]}


def _fraction_batch(batch: dict[str, list], *, part: str, train_fraction: float) -> dict[str, list]:
    """All rows at once -> the lines of the train or valid part, cut by characters."""
    text = "".join(batch["text"])
    cut = int(train_fraction * len(text))
    return {"text": split_lines(text[:cut] if part == "train" else text[cut:])}


def _tokenize_batch(batch: dict[str, list], *, tokenizer: Tokenizer) -> dict[str, list]:
    """Lines -> token lists; a line with no tokens is left out."""
    tokens = (tokenizer.tokenize_line(line) for line in batch["text"])
    return {"tokens": [line_tokens for line_tokens in tokens if line_tokens]}


def _encode_table(table, *, tokens, unk_id: int):
    """Arrow table with a list<string> ``tokens`` column -> table with list<int32> ``ids``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = table.column("tokens").combine_chunks()
    ids = pc.index_in(pc.list_flatten(column), value_set=tokens)
    ids = pc.fill_null(ids, unk_id).cast(pa.int32())
    offsets = pc.subtract(column.offsets, column.offsets[0])
    return pa.table({"ids": pa.ListArray.from_arrays(offsets, ids)})


def _load_lines(source: Source, *, cache_dir: Path, errors: str) -> dict[str, Any]:
    """Split -> datasets.Dataset with one ``"\\n"``-terminated line of text per row."""
    import datasets

    if source.hub is not None:
        return _load_hub_lines(source, cache_dir=cache_dir)
    files = dict(source.files) if source.file is None else {"train": (source.file,)}
    for paths in files.values():
        for path in paths:
            check_text_file(path, errors=errors)
    data_files = {split: [str(Path(p).resolve()) for p in paths] for split, paths in files.items()}
    loaded = datasets.load_dataset(
        "text",
        data_files=data_files,
        cache_dir=str(cache_dir),
        keep_linebreaks=True,
        encoding_errors=errors,
    )
    if source.file is None:
        return dict(loaded)
    return {
        part: _cached_map(
            loaded["train"],
            functools.partial(_fraction_batch, part=part, train_fraction=source.train_fraction),
            step=("fraction", part, source.train_fraction),
            desc=f"cut {part} split",
            batch_size=None,
        )
        for part in ("train", "valid")
    }


def _load_hub_lines(source: Source, *, cache_dir: Path) -> dict[str, Any]:
    import datasets

    hub = source.hub
    try:
        loaded = datasets.load_dataset(
            hub.path, hub.config, revision=hub.revision, cache_dir=str(cache_dir)
        )
    except ConnectionError:
        raise DataError(
            f"cannot download hub dataset {source.name!r} (offline or no network), so use local "
            "files instead (a text file, or a folder with train.txt/valid.txt/test.txt); "
            + _source_hint()
        ) from None
    except datasets.exceptions.DatasetNotFoundError:
        raise DataError(
            f"hub dataset {hub.path!r} not found, so check the name or use local text files; "
            + _source_hint()
        ) from None
    lines = {}
    for ours, theirs in hub.splits:
        if theirs in loaded:
            ds = loaded[theirs]
            if hub.text_column not in ds.column_names:
                raise DataError(
                    f"hub dataset {hub.path!r} has no column {hub.text_column!r}: {ds.column_names}"
                )
            lines[ours] = _cached_map(
                ds.select_columns([hub.text_column]),
                functools.partial(_lines_batch, column=hub.text_column),
                step=("lines", hub.text_column),
                desc=f"split {ours} into lines",
            )
    return lines


def _token_counts(tokens_ds) -> dict[str, int]:
    """Type -> count over a tokens dataset (vectorized in Arrow)."""
    import pyarrow.compute as pc

    if tokens_ds.num_rows == 0:
        return {}
    counts = pc.value_counts(pc.list_flatten(tokens_ds.with_format("arrow")["tokens"]))
    return dict(
        zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    )


def _ids_and_offsets(ids_ds) -> tuple[np.ndarray, np.ndarray]:
    """The ids dataset -> (int32[N] all ids, int64[L + 1] line boundaries)."""
    import pyarrow.compute as pc

    column = ids_ds.with_format("arrow")["ids"]
    ids = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    return ids, np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])


# ----------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Corpus:
    """A tokenized corpus.

    Attributes:
        vocab: the vocabulary (built from train unless one was given).
        tokenizer: how the text was tokenized; also decodes generated ids back to text.
        splits: split name -> int32[N] ids of the whole split, lines concatenated in order.
        line_offsets: split name -> int64[L + 1]; line i is ``ids[o[i]:o[i + 1]]``.
        source: a description of where the text came from.
    """

    vocab: Vocab
    tokenizer: Tokenizer
    splits: dict[str, np.ndarray]
    line_offsets: dict[str, np.ndarray] = field(repr=False)
    source: str = ""

    def sentences(self, split: str) -> list[np.ndarray]:
        """The lines of a split as int32 arrays (framed when the tokenizer frames lines)."""
        ids, offsets = self.splits[split], self.line_offsets[split]
        return [ids[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def load_corpus(
    source: str | os.PathLike | Mapping[str, Any] = "default",
    level: str | Tokenizer = "word",
    *,
    vocab: Vocab | str | os.PathLike | None = None,
    max_vocab: int | None = None,
    min_count: int = 1,
    unk: str | None = "<unk>",
    reserve_unk: bool = False,
    cache_dir: str | os.PathLike | None = None,
    errors: str = "strict",
    train_fraction: float = 0.9,
) -> Corpus:
    """Reads, tokenizes and encodes a corpus; see the module docstring for every rule.

    Args:
        source: a file, a folder, a ``{split: files}`` mapping, a hub name or ``"default"``.
        level: ``"char"``, ``"word"`` (with `Tokenizer.for_level` defaults), or a `Tokenizer`.
        vocab: use this vocabulary (or JSON file) instead of building one from train.
        max_vocab, min_count, unk, reserve_unk: see `build_vocab`.
        cache_dir: where datasets keeps its cache files (default `default_cache_dir()`).
        errors: ``"strict"`` (bad UTF-8 is an error naming file and byte offset) or
            ``"replace"`` (bad bytes read as U+FFFD).
        train_fraction: for a single file: the part of its characters that is train.

    Returns:
        A `Corpus` whose splits hold int32 ids.
    """
    tokenizer = level if isinstance(level, Tokenizer) else Tokenizer.for_level(level)
    if errors not in ("strict", "replace"):
        raise DataError(
            f"unknown errors mode {errors!r}: choose 'strict' or 'replace' "
            "(--config.data.errors=..., jax-lm stats: --errors ...)"
        )
    cache_dir = Path(cache_dir or default_cache_dir())
    resolved = resolve_source(source, cache_dir=cache_dir, train_fraction=train_fraction)
    lines = _load_lines(resolved, cache_dir=cache_dir, errors=errors)
    if "train" not in lines:
        raise DataError(f"{resolved.name!r} has no train split; " + _source_hint())
    tokenized = {
        split: _cached_map(
            ds,
            functools.partial(_tokenize_batch, tokenizer=tokenizer),
            step=("tokenize", tokenizer),
            desc=f"tokenize {split}",
        )
        for split, ds in lines.items()
    }
    counts = {split: _token_counts(ds) for split, ds in tokenized.items()}
    for split, split_counts in counts.items():
        if not split_counts:
            raise DataError(f"split {split!r} of {resolved.name!r} has no tokens")
    if vocab is None:
        others = {t for split, c in counts.items() if split != "train" for t in c}
        vocab = build_vocab(
            counts["train"],
            reserved=(tokenizer.bos, tokenizer.eos),
            unk=unk,
            max_size=max_vocab,
            min_count=min_count,
            reserve_unk=reserve_unk,
            other_types=others,
        )
    elif not isinstance(vocab, Vocab):
        vocab = Vocab.load(vocab)
    if vocab.unk is None:
        for split, split_counts in counts.items():
            missing = sorted(t for t in split_counts if t not in vocab.index)
            if missing:
                raise DataError(
                    f"split {split!r} has {len(missing)} token types missing from the vocabulary "
                    f"(e.g. {missing[0]!r}) and there is no unknown token"
                )
    import pyarrow as pa

    encode = functools.partial(
        _encode_table, tokens=pa.array(vocab.tokens, pa.string()), unk_id=vocab.unk_id or 0
    )
    splits, offsets = {}, {}
    for split, ds in tokenized.items():
        encoded = _cached_map(
            ds, encode, step=("encode", vocab.fingerprint()), desc=f"encode {split}", arrow=True
        )
        splits[split], offsets[split] = _ids_and_offsets(encoded)
    return Corpus(vocab, tokenizer, splits, offsets, source=resolved.name)
