"""Tests for the command line (``jax-lm`` / ``python -m jax_lm``)."""

import subprocess
import sys
from pathlib import Path

import pytest

from jax_lm.cli import main
from jax_lm.data import Vocab


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.txt").write_text(" a b a \n c \n")
    (tmp_path / "d" / "valid.txt").write_text(" a \n")
    return tmp_path / "d"


def stats(*args):
    return main(["stats", *map(str, args)])


def test_stats_prints_vocab_size_and_tokens_per_split(folder, tmp_path, capsys):
    assert stats(folder, "--level", "word", "--eos", "<eos>",
                 "--cache-dir", tmp_path / "cache") == 0
    out = capsys.readouterr().out.splitlines()
    assert "vocab_size         4" in out  # <eos> a b c
    assert "train              6 tokens, 2 lines" in out
    assert "valid              2 tokens, 1 lines" in out


def test_stats_options_reach_the_tokenizer_and_vocabulary(folder, tmp_path, capsys):
    assert (
        stats(
            folder,
            "--level",
            "char",
            "--cache-dir",
            tmp_path / "cache",
            "--save-vocab",
            tmp_path / "v.json",
        )
        == 0
    )
    assert "vocab_size         5" in capsys.readouterr().out.splitlines()
    assert Vocab.load(tmp_path / "v.json").tokens == (
        " ",
        "\n",
        "a",
        "b",
        "c",
    )  # by count, then code point
    assert stats(folder, "--level", "word", "--max-vocab", "2",
                 "--cache-dir", tmp_path / "cache") == 0
    assert "vocab_size         2" in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize(
    "args, message",
    [
        (["stats", "no/such/place"], "no such file or folder: 'no/such/place'"),
        (["stats", "default", "--level", "byte"], "unknown level 'byte'"),
        (["stats", "default", "--vocab", "missing.json"], "vocabulary file not found"),
    ],
)
def test_stats_reports_bad_input_in_one_line_with_status_1(tmp_path, capsys, args, message):
    assert main([*args, "--cache-dir", str(tmp_path / "cache")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jax-lm: error: ") and message in err


def test_unknown_command_is_rejected(capsys):
    with pytest.raises(SystemExit) as raised:
        main(["fly"])
    assert raised.value.code == 2


def test_python_dash_m_jax_lm_runs_the_stats_command(folder, tmp_path):
    command = [
        sys.executable,
        "-m",
        "jax_lm",
        "stats",
        str(folder),
        "--level=word",
        "--eos=<eos>",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1]
    )
    assert "vocab_size         4" in result.stdout


def test_stats_and_train_agree_on_the_default_level_and_framing(tmp_path, capsys):
    from jax_lm.config import get_config

    assert stats("default", "--cache-dir", tmp_path / "cache") == 0
    out = capsys.readouterr().out
    assert f"level              {get_config().data.level}" in out
    assert "vocab_size         103" in out  # the character vocabulary `jax-lm train` prints


def test_configs_lists_every_shipped_config_with_its_purpose(capsys):
    from jax_lm import config

    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = sorted(p.stem for p in config.CONFIG_DIR.glob("*.py") if p.stem != "__init__")
    assert sorted(line.split()[0] for line in lines) == names
    assert all(len(line.split()) > 2 for line in lines)  # a name and a purpose
