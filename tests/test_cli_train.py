"""The command line end to end on a tiny corpus: train, resume, eval, sample, and errors."""

import json

import pytest

from jax_lm import cli

TEXT = "a cat sat on a mat .\na dog sat on a log .\nthe end .\n" * 30


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One trained word-level run shared by the tests below (sentences framed for 001)."""
    root = tmp_path_factory.mktemp("cli")
    data = root / "tiny.txt"
    data.write_text(TEXT)
    run = root / "run"
    status = cli.main([
        "train", "--workdir", str(run), "--no-progress",
        f"--config.data.source={data}", f"--config.data.cache_dir={root / 'cache'}",
        "--config.data.level=word", "--config.data.bos=<s>", "--config.data.eos=</s>",
        "--config.data.batch_size=4", "--config.data.seq_len=8", "--config.model.hidden_size=16",
        "--config.train.epochs=2", "--config.train.learning_rate", "0.02",
        "--config.sample.num_tokens=12"])
    assert status == 0
    return run


def test_train_writes_a_complete_run_folder_and_prints_a_sample(run_dir):
    for name in ("config.json", "vocab.json", "metrics.jsonl", "curves.png", "samples.txt"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["hidden_size"] == 16 and config["train"]["learning_rate"] == 0.02
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["final"] and records[-1]["valid_ppl"] > 1


def test_eval_prints_perplexity_and_quality_measures(run_dir, capsys):
    assert cli.main(["eval", str(run_dir), "--split", "valid", "--quality", "2",
                     "--num-tokens", "10"]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "bits/token" in out
    for measure in ("distinct_2", "heldout_overlap_2", "copied_span_max"):
        assert measure in out


def test_sample_continues_a_prime_and_sentence_mode_frames_sentences(run_dir, capsys):
    assert cli.main(["sample", str(run_dir), "--prime", "a cat", "--num-tokens", "5",
                     "--seed", "3"]) == 0
    assert capsys.readouterr().out.startswith("<s> a cat")
    assert cli.main(["sample", str(run_dir), "--sentences", "3", "--min-length", "2"]) == 0
    sentences = capsys.readouterr().out.strip().splitlines()
    assert len(sentences) == 3
    for sentence in sentences:
        words = sentence.split()
        assert len(words) >= 2 and "<s>" not in words and "</s>" not in words


def test_unknown_config_key_is_rejected_with_the_valid_keys(capsys):
    assert cli.main(["train", "--config.model.hiden_size=3"]) == 1
    err = capsys.readouterr().err
    assert "unknown config key 'model.hiden_size'" in err and "model.hidden_size" in err


def test_badly_typed_override_is_rejected(capsys):
    assert cli.main(["train", "--config.train.epochs=three"]) == 1
    assert "bad value for train.epochs: expected int" in capsys.readouterr().err


def test_training_into_an_existing_run_is_refused_and_resume_of_nothing_fails(
        run_dir, tmp_path, capsys):
    assert cli.main(["train", "--workdir", str(run_dir)]) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(tmp_path)]) == 1
    assert "is not a run folder (no config.json)" in capsys.readouterr().err
