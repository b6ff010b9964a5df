"""Tests for jax_lm.data: tokenizers, vocabulary, sources, caching, bad input, real corpora."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from jax_lm import data
from jax_lm.cli import main
from jax_lm.data import DataError, Tokenizer, Vocab, build_vocab, check_vocab_matches, load_corpus

SHARED_DATA = data.shared_data_dir()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


# ----------------------------------------------------------------------------- tokenizers


def test_whitespace_tokenizer_ends_every_line_with_eos():
    tok = Tokenizer.for_level("word")
    assert tok.tokenize(" the cat <unk> \n\nsat") == [
        "the",
        "cat",
        "<unk>",
        "<eos>",
        "<eos>",
        "sat",
        "<eos>",
    ]


def test_blank_tail_without_newline_is_not_a_line():
    assert Tokenizer.for_level("word").tokenize("a b\n ") == ["a", "b", "<eos>"]


def test_regex_tokenizer_keeps_markup_tokens_such_as_unk_whole():
    tok = Tokenizer(level="word", split="regex")
    assert tok.tokenize_line("a <unk> costs $3 < 4 ") == ["a", "<unk>", "costs", "$", "3", "<", "4"]


def test_regex_tokenizer_splits_punctuation_and_clitics_like_nltk():
    tok = Tokenizer(
        level="word", split="regex", lowercase=True, bos="sentence_start", eos="sentence_end"
    )
    assert tok.tokenize("What aren't you understanding about this?!") == [
        "sentence_start",
        "what",
        "are",
        "n't",
        "you",
        "understanding",
        "about",
        "this",
        "?",
        "!",
        "sentence_end",
    ]
    assert Tokenizer(split="regex").tokenize("It's 3.14, well-known... ok") == [
        "It",
        "'s",
        "3.14",
        ",",
        "well-known",
        "...",
        "ok",
    ]


def test_char_tokenizer_keeps_newlines_unless_lines_are_framed():
    assert Tokenizer.for_level("char").tokenize("ab\nc") == ["a", "b", "\n", "c"]
    framed = Tokenizer(level="char", bos="<s>", eos="<s>")
    assert framed.tokenize("ab\nc") == ["<s>", "a", "b", "<s>", "<s>", "c", "<s>"]


@pytest.mark.parametrize("kwargs", [{"level": "byte"}, {"split": "spaces"}])
def test_unknown_level_or_split_is_a_data_error(kwargs):
    with pytest.raises(DataError, match="unknown"):
        Tokenizer(**kwargs)


def test_detokenize_joins_chars_directly_and_words_with_spaces():
    assert Tokenizer.for_level("char").detokenize(["a", "b"]) == "ab"
    assert Tokenizer.for_level("word").detokenize(["a", "b"]) == "a b"


# ----------------------------------------------------------------------------- vocabulary


def test_vocab_puts_framing_tokens_first_then_count_desc_then_code_point():
    vocab = build_vocab({"b": 2, "a": 2, "c": 5, "<eos>": 1}, reserved=("<s>", "<eos>"))
    assert vocab.tokens == ("<s>", "<eos>", "c", "a", "b")
    assert vocab.unk is None


@pytest.mark.parametrize(
    "kwargs, has_unk",
    [
        ({}, False),
        ({"other_types": ["a", "z"]}, True),  # valid has a type train lacks
        ({"max_size": 2}, True),  # the cap drops a type
        ({"min_count": 2}, True),  # min_count drops a type
        ({"reserve_unk": True}, True),
    ],
)
def test_vocab_adds_unk_only_when_needed(kwargs, has_unk):
    vocab = build_vocab({"a": 3, "b": 1, "c": 1}, unk="<unk>", **kwargs)
    assert (vocab.unk == "<unk>") == has_unk
    assert ("<unk>" in vocab.tokens) == has_unk


def test_vocab_keeps_unk_written_in_the_text_without_adding_another():
    vocab = build_vocab({"<unk>": 4, "a": 5}, reserved=("<eos>",), unk="<unk>")
    assert vocab.tokens == ("<eos>", "<unk>", "a")


def test_vocab_cap_counts_special_tokens():
    counts = {w: 100 - i for i, w in enumerate("abcdefgh")}
    vocab = build_vocab(counts, reserved=("<s>", "</s>"), unk="<unk>", max_size=5)
    assert vocab.tokens == ("<s>", "</s>", "<unk>", "a", "b")


def test_vocab_cap_without_unk_is_a_data_error():
    with pytest.raises(DataError, match="unknown token"):
        build_vocab({"a": 2, "b": 1}, unk=None, max_size=1)


def test_encode_maps_unseen_tokens_to_unk_and_decode_inverts():
    vocab = Vocab(("<unk>", "a", "b"), "<unk>")
    ids = vocab.encode(["b", "zzz", "a"])
    assert ids.dtype == np.int32 and ids.tolist() == [2, 0, 1]
    assert vocab.decode(ids) == ["b", "<unk>", "a"]
    with pytest.raises(DataError, match="not in the vocabulary"):
        Vocab(("a",)).encode(["b"])


def test_vocab_json_round_trip(tmp_path):
    vocab = Vocab(("<eos>", "<unk>", "é", "a\nb", '"q"'), "<unk>")
    vocab.save(tmp_path / "vocab.json")
    payload = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert payload["tokens"][2] == "é"
    loaded = Vocab.load(tmp_path / "vocab.json")
    assert loaded == vocab and loaded.fingerprint() == vocab.fingerprint()


@pytest.mark.parametrize(
    "content, message",
    [(None, "not found"), ("{", "not valid JSON"), ('{"a": 1}', "not a jax_lm vocabulary")],
)
def test_bad_vocab_file_is_a_data_error(tmp_path, content, message):
    path = tmp_path / "vocab.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message):
        Vocab.load(path)


def test_check_vocab_matches_names_size_and_fingerprint_mismatch():
    vocab = Vocab(("a", "b"))
    check_vocab_matches(vocab, size=2, fingerprint=vocab.fingerprint())
    with pytest.raises(DataError, match="has 2 tokens, expected 3"):
        check_vocab_matches(vocab, size=3)
    with pytest.raises(DataError, match="fingerprint"):
        check_vocab_matches(vocab, fingerprint=Vocab(("b", "a")).fingerprint())


# ----------------------------------------------------------------------------- local sources


def test_folder_with_split_files_gives_ptb_style_counts(tmp_path, cache):
    write(tmp_path / "d" / "train.txt", " a b a \n c <unk> \n")
    write(tmp_path / "d" / "valid.txt", " a c \n")
    write(tmp_path / "d" / "test.txt", " b \n\n")
    corpus = load_corpus(tmp_path / "d", "word", cache_dir=cache)
    assert corpus.vocab.tokens == ("<eos>", "<unk>", "a", "b", "c")
    assert {s: len(ids) for s, ids in corpus.splits.items()} == {"train": 7, "valid": 3, "test": 3}
    assert corpus.vocab.decode(corpus.splits["test"]) == ["b", "<eos>", "<eos>"]
    assert all(ids.dtype == np.int32 for ids in corpus.splits.values())


def test_several_files_per_split_are_read_in_order(tmp_path, cache):
    files = {
        "train": [write(tmp_path / "a.txt", "x y\n"), write(tmp_path / "b.txt", "z\n")],
        "valid": write(tmp_path / "c.txt", "y\n"),
    }
    corpus = load_corpus(files, "word", cache_dir=cache)
    assert corpus.vocab.decode(corpus.splits["train"]) == ["x", "y", "<eos>", "z", "<eos>"]
    assert [len(s) for s in corpus.sentences("train")] == [3, 2]


def test_single_file_splits_90_10_by_characters(tmp_path, cache):
    text = "".join(f"line {i} {'ab' * (i % 7)}\n" for i in range(50))
    corpus = load_corpus(write(tmp_path / "input.txt", text), "char", cache_dir=cache)
    cut = int(0.9 * len(text))
    decode = corpus.tokenizer.detokenize
    assert decode(corpus.vocab.decode(corpus.splits["train"])) == text[:cut]
    assert decode(corpus.vocab.decode(corpus.splits["valid"])) == text[cut:]


def test_sentences_are_lines_framed_with_start_and_end_tokens(tmp_path, cache):
    write(tmp_path / "d" / "train.txt", "Hello, world!\nBye.\n")
    tok = Tokenizer(
        level="word", split="regex", lowercase=True, bos="sentence_start", eos="sentence_end"
    )
    corpus = load_corpus(tmp_path / "d", tok, cache_dir=cache)
    sentences = [corpus.vocab.decode(s) for s in corpus.sentences("train")]
    assert sentences == [
        ["sentence_start", "hello", ",", "world", "!", "sentence_end"],
        ["sentence_start", "bye", ".", "sentence_end"],
    ]


def test_given_vocab_is_used_and_unseen_tokens_map_to_unk(tmp_path, cache):
    write(tmp_path / "d" / "train.txt", "a b new\n")
    vocab = Vocab(("<eos>", "<unk>", "a", "b"), "<unk>")
    vocab.save(tmp_path / "vocab.json")
    corpus = load_corpus(tmp_path / "d", "word", vocab=tmp_path / "vocab.json", cache_dir=cache)
    assert corpus.vocab == vocab
    assert corpus.splits["train"].tolist() == [2, 3, 1, 0]


def test_unseen_valid_tokens_without_unk_is_a_data_error(tmp_path, cache):
    write(tmp_path / "d" / "train.txt", "a b\n")
    write(tmp_path / "d" / "valid.txt", "a c\n")
    with pytest.raises(DataError, match="split 'valid' has 1 token types missing"):
        load_corpus(tmp_path / "d", "word", unk=None, cache_dir=cache)


def test_default_corpus_is_cpython_pydoc_topics_split_90_10(cache):
    from pydoc_data.topics import topics

    corpus = load_corpus("default", "char", cache_dir=cache)
    text = data.default_corpus_text()
    assert topics[sorted(topics)[0]].strip() in text
    assert len(corpus.splits["train"]) == int(0.9 * len(text))
    assert len(corpus.splits["train"]) + len(corpus.splits["valid"]) == len(text)


# ----------------------------------------------------------------------------- caching


def test_second_load_reads_the_cache_without_tokenizing(tmp_path, cache, monkeypatch):
    write(tmp_path / "d" / "train.txt", "a b c\n" * 50)
    write(tmp_path / "d" / "valid.txt", "b c\n")
    calls = []
    tokenize_line = Tokenizer.tokenize_line
    monkeypatch.setattr(
        Tokenizer,
        "tokenize_line",
        lambda self, line: calls.append(line) or tokenize_line(self, line),
    )
    first = load_corpus(tmp_path / "d", "word", cache_dir=cache)
    assert len(calls) == 51
    second = load_corpus(tmp_path / "d", "word", cache_dir=cache)
    assert len(calls) == 51  # no line was tokenized again
    assert second.vocab == first.vocab
    assert all(np.array_equal(first.splits[s], second.splits[s]) for s in first.splits)
    load_corpus(tmp_path / "d", Tokenizer.for_level("word", lowercase=True), cache_dir=cache)
    assert len(calls) == 102  # other settings, other cache entry


def test_edited_file_is_read_again(tmp_path, cache):
    path = write(tmp_path / "d" / "train.txt", "a b\n")
    assert len(load_corpus(tmp_path / "d", "word", cache_dir=cache).splits["train"]) == 3
    write(path, "a b c d\n")
    os.utime(path, (1, 1))  # a different modification time even on coarse clocks
    assert len(load_corpus(tmp_path / "d", "word", cache_dir=cache).splits["train"]) == 5


# ----------------------------------------------------------------------------- bad input


def test_missing_source_is_a_data_error(tmp_path, cache):
    with pytest.raises(DataError, match="no such file or folder: .*nowhere"):
        load_corpus(tmp_path / "nowhere", cache_dir=cache)
    with pytest.raises(DataError, match="no such file: .*gone.txt"):
        load_corpus({"train": tmp_path / "gone.txt"}, cache_dir=cache)


@pytest.mark.parametrize("env", [None, "/srv/corpora"])
def test_missing_source_says_where_data_comes_from(tmp_path, cache, monkeypatch, env):
    if env is None:
        monkeypatch.delenv("JAX_LM_DATA_DIR", raising=False)
    else:
        monkeypatch.setenv("JAX_LM_DATA_DIR", env)
    with pytest.raises(DataError) as raised:
        load_corpus(tmp_path / "nowhere", cache_dir=cache)
    message = str(raised.value)
    assert "\n" not in message
    assert "--config.data.source=" in message and "JAX_LM_DATA_DIR" in message
    assert "tiny_shakespeare" in message  # a hub name
    if env is None:
        assert f"JAX_LM_DATA_DIR is unset, so {data.shared_data_dir()}" in message
    else:
        assert "JAX_LM_DATA_DIR=/srv/corpora" in message


def test_folder_without_train_txt_says_where_data_comes_from(tmp_path, cache):
    write(tmp_path / "d" / "a.txt", "x\n")
    write(tmp_path / "d" / "b.txt", "y\n")
    hint = "has no train.txt .*--config.data.source=.*JAX_LM_DATA_DIR"
    with pytest.raises(DataError, match=hint):
        load_corpus(tmp_path / "d", cache_dir=cache)


def test_default_data_dir_is_data_in_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("JAX_LM_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "_checkout_data_dir", lambda: tmp_path / "no" / "shared" / "data")
    monkeypatch.chdir(tmp_path)
    assert data.shared_data_dir() == tmp_path / "data"
    package = Path(data.__file__).resolve().parent
    assert package not in data.shared_data_dir().resolve().parents


def test_checkout_shared_data_is_used_only_when_it_exists(tmp_path, monkeypatch):
    monkeypatch.delenv("JAX_LM_DATA_DIR", raising=False)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.setattr(data, "_checkout_data_dir", lambda: tmp_path / "shared" / "data")
    assert data.shared_data_dir() == tmp_path / "shared" / "data"


def test_jax_lm_data_dir_wins(tmp_path, monkeypatch):
    (tmp_path / "shared" / "data").mkdir(parents=True)
    monkeypatch.setattr(data, "_checkout_data_dir", lambda: tmp_path / "shared" / "data")
    monkeypatch.setenv("JAX_LM_DATA_DIR", str(tmp_path / "mine"))
    assert data.shared_data_dir() == tmp_path / "mine"
    assert isinstance(data.shared_data_dir(), Path)


def test_empty_file_is_a_data_error(tmp_path, cache):
    path = write(tmp_path / "empty.txt", "")
    with pytest.raises(DataError, match=f"file is empty: {path}"):
        load_corpus(path, cache_dir=cache)


def test_split_without_tokens_is_a_data_error(tmp_path, cache):
    write(tmp_path / "d" / "train.txt", "a\n")
    write(tmp_path / "d" / "valid.txt", "   ")
    with pytest.raises(DataError, match="split 'valid' .* has no tokens"):
        load_corpus(tmp_path / "d", cache_dir=cache)


def test_invalid_utf8_names_the_file_and_byte_offset(tmp_path, cache):
    path = tmp_path / "bad.txt"
    path.write_bytes("ok é\n".encode() + b"\xff rest\n")
    bad = f"{path} is not valid UTF-8: .* at byte offset 6;"
    with pytest.raises(DataError, match=bad) as raised:
        load_corpus(path, cache_dir=cache)
    message = str(raised.value)
    assert "--config.data.errors=replace" in message and "--errors replace" in message
    corpus = load_corpus(path, "char", cache_dir=cache, errors="replace", train_fraction=0.5)
    assert "\ufffd" in corpus.vocab.tokens


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 5, 1 << 22])
@pytest.mark.parametrize(
    "raw, offset",
    [
        ("aé€😀".encode() + b"\x80", 10),
        (b"ab\xe2\x82", 2),
        (b"abc\xc3(", 3),
        ("é€😀".encode(), None),
    ],
)
def test_utf8_check_finds_the_first_bad_byte_whatever_the_chunking(
    tmp_path, chunk_bytes, raw, offset
):
    path = tmp_path / "f.txt"
    path.write_bytes(raw)
    if offset is None:
        data.check_text_file(path, chunk_bytes=chunk_bytes)
    else:
        with pytest.raises(DataError, match=f"byte offset {offset};"):
            data.check_text_file(path, chunk_bytes=chunk_bytes)


def test_unknown_level_is_a_data_error_in_load_corpus(cache):
    with pytest.raises(DataError, match="unknown level 'bytes'"):
        load_corpus("default", "bytes", cache_dir=cache)


def test_offline_hub_source_says_how_to_use_local_files(cache, monkeypatch):
    import datasets
    import huggingface_hub

    # datasets and huggingface_hub read these variables at import time, so patch both.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as raised:
        load_corpus("ptb_text_only", cache_dir=cache)
    message = str(raised.value)
    assert "\n" not in message
    assert "offline" in message and "local files" in message and "train.txt" in message
    assert "--config.data.source=" in message and "JAX_LM_DATA_DIR" in message


# ----------------------------------------------------------------------------- real corpora


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("shared_cache")


def shared(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(
            f"{path} is absent (set JAX_LM_DATA_DIR to the folder with ptb/ and tinyshakespeare/)"
        )
    return path


def test_ptb_word_pipeline_reproduces_published_counts(shared_cache):
    corpus = load_corpus(shared("ptb"), "word", cache_dir=shared_cache)
    assert corpus.vocab.size == 10_000
    assert "<eos>" in corpus.vocab.index and corpus.vocab.unk == "<unk>"
    assert {s: len(ids) for s, ids in corpus.splits.items()} == {
        "train": 929_589,
        "valid": 73_760,
        "test": 82_430,
    }
    assert len(corpus.sentences("train")) == 42_068


def test_tiny_shakespeare_char_pipeline_reproduces_published_counts(shared_cache):
    corpus = load_corpus(shared("tinyshakespeare/input.txt"), "char", cache_dir=shared_cache)
    assert corpus.vocab.size == 65 and corpus.vocab.unk is None
    assert {s: len(ids) for s, ids in corpus.splits.items()} == {
        "train": 1_003_854,
        "valid": 111_540,
    }


@pytest.mark.parametrize(
    "relative, args, expected",
    [
        (
            "ptb",
            ["--level", "word", "--eos", "<eos>"],
            [
                "vocab_size         10000",
                "train  929589 tokens",
                "valid  73760 tokens",
                "test   82430 tokens",
            ],
        ),
        (
            "tinyshakespeare/input.txt",
            ["--level", "char"],
            ["vocab_size         65", "train  1003854 tokens", "valid  111540 tokens"],
        ),
    ],
)
def test_stats_command_prints_published_counts(shared_cache, capsys, relative, args, expected):
    assert main(["stats", str(shared(relative)), "--cache-dir", str(shared_cache), *args]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for line in expected:
        assert " ".join(line.split()) in out
