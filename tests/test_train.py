"""Training end to end: every cell learns, resume is bit-exact, NaN stops cleanly, regimes."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_lm import batching, checkpoint, loop, model, optim, pipeline, rundir, runs, train
from jax_lm import config as config_lib
from tests.oracles import tutorial_rnn

TEXT = "the cat sat on the mat. the dog sat on the log.\n" * 40


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.txt"
    path.write_text(TEXT)
    return path


def _config(corpus_file, tmp_path, **overrides):
    config = config_lib.get_config()
    base = {
        "data.source": str(corpus_file), "data.cache_dir": str(tmp_path / "cache"),
        "data.batch_size": "4", "data.seq_len": "16", "model.hidden_size": "24",
        "train.epochs": "2", "train.log_every": "5", "train.learning_rate": "0.01",
        "sample.num_tokens": "20",
    }
    return config_lib.apply_overrides(config, {**base, **{k: str(v) for k, v in overrides.items()}})


def _run(config, run_dir, **kwargs):
    return loop.fit(config, run_dir, progress=False, print_fn=lambda _: None, **kwargs)


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("cell", ["rnn", "lstm", "cifg", "gru"])
def test_each_cell_trains_end_to_end_and_its_loss_drops(corpus_file, tmp_path, cell):
    config = _config(corpus_file, tmp_path, **{"model.cell": cell, "train.epochs": 3})
    result = _run(config, tmp_path / "run")
    epochs = [r for r in _records(tmp_path / "run") if "valid_ppl" in r and "epoch" in r]
    assert len(epochs) == 3
    assert epochs[-1]["valid_nll"] < 0.7 * epochs[0]["valid_nll"]  # clearly learning
    assert result["valid_ppl"] == pytest.approx(np.exp(result["valid_nll"]))
    for name in ("config.json", "vocab.json", "metrics.jsonl", "curves.png", "samples.txt"):
        assert (tmp_path / "run" / name).is_file(), name
    assert checkpoint.best_path(tmp_path / "run").is_file()


def test_resumed_run_ends_with_bitwise_identical_parameters(corpus_file, tmp_path):
    """Stop after 7 steps (mid-epoch, with dropout and a plateau rule), resume, compare."""
    settings = {"model.dropout": 0.3, "train.lr_rule": "halve_when_loss_rises",
                "train.epochs": 3}
    full = _config(corpus_file, tmp_path, **settings)
    _run(full, tmp_path / "full")
    _run(_config(corpus_file, tmp_path, **settings, **{"train.max_steps": 7}), tmp_path / "cut")
    assert checkpoint.saved_steps(tmp_path / "cut")[-1] == 7
    _run(full, tmp_path / "cut", resume=True)

    def final_params(run_dir):
        path = checkpoint.latest_path(run_dir)
        template = runs.load_run(run_dir, "latest")
        return checkpoint.load_checkpoint(
            path, runs.state_template(template.config, template.lm_config))[0]

    a, b = final_params(tmp_path / "full"), final_params(tmp_path / "cut")
    assert int(a.step) == int(b.step)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(optim.learning_rate(a.opt_state),
                                  optim.learning_rate(b.opt_state))


def test_interrupted_run_saves_and_resumes_exactly_with_the_epoch_metrics(
        corpus_file, tmp_path, monkeypatch):
    """Ctrl-C mid-epoch saves the step; 000's rule (watching the epoch's running loss) and
    the parameters come out as in an uninterrupted run."""
    settings = {"train.lr_rule": "halve_when_likelihood_drops", "train.lr_rule_metric": "train",
                "train.learning_rate": 0.05, "train.epochs": 3, "train.checkpoint_every": 4}
    config = _config(corpus_file, tmp_path, **settings)
    _run(config, tmp_path / "full")

    real_batches = pipeline.train_batches

    def interrupted(config, corpus, start):  # Ctrl-C while the loop fetches step 37's batch
        for i, batch in enumerate(real_batches(config, corpus, start)):
            if i == 36 + pipeline.PREFETCH:  # the loop reads PREFETCH batches ahead
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    monkeypatch.setattr(pipeline, "train_batches", interrupted)
    with pytest.raises(loop.Interrupted, match="interrupted at step 37, checkpoint saved"):
        _run(config, tmp_path / "cut")
    monkeypatch.undo()
    assert checkpoint.saved_steps(tmp_path / "cut")[-1] == 37
    _run(config, tmp_path / "cut", resume=True)

    def epochs(run_dir):
        return [(r["train_nll"], r["next_lr"]) for r in _records(run_dir) if "train_nll" in r]

    # The epoch's loss is summed from float32 window sums, grouped differently around the
    # interruption: equal to rounding. The rate decisions and parameters are exact.
    cut, full = epochs(tmp_path / "cut"), epochs(tmp_path / "full")
    assert [lr for _, lr in cut] == [lr for _, lr in full]
    np.testing.assert_allclose([nll for nll, _ in cut], [nll for nll, _ in full], rtol=1e-6)
    a = runs.load_run(tmp_path / "full", "latest").params
    b = runs.load_run(tmp_path / "cut", "latest").params
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_an_existing_run_is_never_overwritten(corpus_file, tmp_path):
    config = _config(corpus_file, tmp_path, **{"train.max_steps": 2})
    _run(config, tmp_path / "run")
    before = checkpoint.latest_path(tmp_path / "run").read_bytes()
    with pytest.raises(rundir.RunFolderError, match="already holds a run"):
        _run(config, tmp_path / "run")
    assert checkpoint.latest_path(tmp_path / "run").read_bytes() == before


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
        corpus_file, tmp_path):
    config = _config(corpus_file, tmp_path, **{
        "train.optimizer": "sgd", "train.learning_rate": 1e12, "train.clip_norm": 0.0,
        "train.checkpoint_every": 1, "train.log_every": 1, "model.cell": "rnn",
        "model.activation": "relu"})
    with pytest.raises(train.TrainingError, match=r"non-finite loss or gradient at step \d+"):
        _run(config, tmp_path / "run")
    run = runs.load_run(tmp_path / "run", "latest")
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(run.params))


def test_nonfinite_steps_can_be_skipped_instead(corpus_file, tmp_path):
    config = _config(corpus_file, tmp_path, **{
        "train.optimizer": "sgd", "train.learning_rate": 1e12, "train.clip_norm": 0.0,
        "train.on_nonfinite": "skip", "train.max_steps": 6, "model.cell": "rnn",
        "model.activation": "relu"})
    _run(config, tmp_path / "run")
    assert sum(r.get("skipped_nonfinite", 0) for r in _records(tmp_path / "run")) > 0


def test_window_regime_train_step_applies_001s_truncated_sgd_update(key):
    """One SGD step of the 'window' regime on a sentence == 001's bptt_truncate=4 update."""
    vocab, hidden, lr = 9, 5, 0.3
    rnn = tutorial_rnn.init_params(np.random.default_rng(0), vocab, hidden)
    x = np.array([0, 3, 1, 4, 1, 5, 2, 6, 5, 3])
    y = np.array([3, 1, 4, 1, 5, 2, 6, 5, 3, 8])
    expected = tutorial_rnn.sgd_step(rnn, x, y, lr, bptt_truncate=4)

    lm_config = model.LMConfig(vocab_size=vocab, cell=config_lib.cells.RNN(use_bias=False),
                               num_layers=1, hidden_size=hidden, one_hot=True,
                               output_bias=False, param_dtype="float64")
    opt = optim.make_optimizer("sgd", lr)
    params = tutorial_rnn.to_jax_lm(rnn)
    state = train.TrainState(jnp.zeros((), jnp.int32), params, opt.init(params), key,
                             model.init_carry(lm_config, 1))
    step = train.make_train_step(lm_config, opt, regime="window", window_k=4, reduction="sum")
    batch = batching.Batch(x[None], y[None], np.ones((1, len(x))), np.ones(1, bool))
    state, _ = step(state, batch)
    got = tutorial_rnn.from_jax_lm(state.params)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("eval_batch_size", [0, 1])
def test_stream_evaluation_scores_every_validation_token_once(corpus_file, tmp_path,
                                                              eval_batch_size):
    config = _config(corpus_file, tmp_path, **{"data.eval_batch_size": eval_batch_size})
    corpus = pipeline.load_run_corpus(config)
    rows = {b.inputs.shape[0] for b in pipeline.eval_batches(config, corpus, "valid")}
    assert rows == {eval_batch_size or config.data.batch_size}
    lm_config = config_lib.build_lm_config(config, corpus.vocab.size)
    params = model.init_lm(jax.random.key(0), lm_config)
    scores = train.evaluate(params, lm_config, pipeline.eval_batches(config, corpus, "valid"))
    assert scores["tokens"] == len(corpus.splits["valid"]) - 1


def test_fit_loop_with_001s_config_reproduces_the_documents_training(tmp_path):
    """`jax-lm train --config tutorial_rnn` on tiny data == 001's train_with_sgd, float64."""
    path = tmp_path / "talk.txt"
    sentences = ["the cat sat .", "a dog ran !", "the dog sat on a cat .", "cats run ?"]
    path.write_text("\n".join(sentences * 6) + "\n")
    config = config_lib.load_config("tutorial_rnn")
    config_lib.apply_overrides(config, {
        "data.source": str(path), "data.cache_dir": str(tmp_path / "cache"),
        "data.max_train_lines": "6", "data.max_vocab": "12", "model.hidden_size": "6",
        "model.param_dtype": "float64", "train.epochs": "4", "train.learning_rate": "1.0"})
    _run(config, tmp_path / "run")

    corpus = pipeline.load_run_corpus(config)
    lm_config = config_lib.build_lm_config(config, corpus.vocab.size)
    opt = train.build_optimizer(config)
    initial = train.init_train_state(jax.random.key(config.seed), lm_config, opt, 1).params
    lines = corpus.sentences("train")[:6]
    xs, ys = [s[:-1] for s in lines], [s[1:] for s in lines]
    params, losses, rates = tutorial_rnn.train_with_sgd(
        tutorial_rnn.from_jax_lm(initial), xs, ys, 1.0, nepoch=4, bptt_truncate=4)

    records = _records(tmp_path / "run")
    watched = [r["lr_rule_metric"] for r in records if "lr_rule_metric" in r]
    # float64 on both sides; lr 1.0 (large, so that the rule fires) amplifies round-off.
    np.testing.assert_allclose(watched[:4], losses, rtol=1e-7)  # 001 evaluates before epochs
    used = [r["lr"] for r in records if "train_loss" in r]
    assert sorted(set(used), reverse=True) == sorted(set(rates), reverse=True)
    assert len(set(rates)) > 1  # the halving rule fired
    final = tutorial_rnn.from_jax_lm(runs.load_run(tmp_path / "run", "latest").params)
    for name in params:
        np.testing.assert_allclose(final[name], params[name], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("batcher", ["stream", "sentences", "random_windows"])
def test_max_train_lines_limits_the_training_data_of_every_batcher(corpus_file, tmp_path, batcher):
    config = _config(corpus_file, tmp_path, **{"data.batcher": batcher})
    corpus = pipeline.load_run_corpus(config)
    full = pipeline.steps_per_epoch(config, corpus)
    config_lib.apply_overrides(config, {"data.max_train_lines": "4"})
    assert pipeline.steps_per_epoch(config, corpus) < full
    lines = corpus.sentences("train")[:4]
    scored = sum(float(b.mask.sum()) for b in pipeline.eval_batches(config, corpus, "train"))
    # Sentences score every line but its first token; a stream every token but the first.
    expected = sum(len(s) - 1 for s in lines) if batcher == "sentences" else sum(map(len, lines)) - 1
    assert scored == expected


def test_vocabulary_can_come_from_the_training_lines_in_use(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("a cat sat\nthe dog ran\n" * 20)
    config = _config(path, tmp_path, **{
        "data.level": "word", "data.max_train_lines": 1, "data.vocab_from_train_lines": True})
    corpus = pipeline.load_run_corpus(config)
    assert set(corpus.vocab.tokens) == {"a", "cat", "sat", "<unk>"}  # "dog" etc. are unknown
    assert corpus.vocab.unk_id in corpus.splits["train"]


def test_padding_sentences_to_a_multiple_does_not_change_training(tmp_path):
    """Masked padding holds the state and drops the loss: same parameters, float64."""
    path = tmp_path / "lines.txt"
    path.write_text("a cat sat on the mat\nthe dog ran\nsat\na dog and a cat ran on\n" * 5)
    finals = []
    for multiple in (1, 8):
        config = _config(path, tmp_path, **{
            "data.level": "word", "data.batcher": "sentences", "data.batch_size": 1,
            "data.pad_multiple": multiple, "data.bos": "<s>", "data.eos": "</s>",
            "model.param_dtype": "float64", "train.optimizer": "sgd", "train.regime": "full",
            "train.loss_reduction": "sum", "train.learning_rate": 0.1, "train.epochs": 1})
        _run(config, tmp_path / f"run{multiple}")
        finals.append(runs.load_run(tmp_path / f"run{multiple}", "latest").params)
    for x, y in zip(jax.tree.leaves(finals[0]), jax.tree.leaves(finals[1])):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)


def test_time_budget_stops_mid_epoch_and_scores_the_last_params(corpus_file, tmp_path):
    """A budget shorter than the first step (its compilation) stops after that step."""
    config = _config(corpus_file, tmp_path, **{"train.time_budget_minutes": 1e-6,
                                               "train.epochs": 50})
    result = _run(config, tmp_path / "run")
    records = _records(tmp_path / "run")
    partial = [r for r in records if r.get("partial_epoch")]
    assert result["step"] == 1
    assert len(partial) == 1 and partial[0]["step"] == 1
    assert result["valid_nll"] == pytest.approx(partial[0]["valid_nll"])  # the best so far
    latest = checkpoint.latest_path(tmp_path / "run")
    run = runs.load_run(tmp_path / "run", "latest")
    metadata = checkpoint.load_checkpoint(latest, runs.state_template(run.config, run.lm_config))[1]
    assert metadata["best_valid"] is None  # no epoch has ended: a resumed
    #                                       run's first epoch end replaces this best checkpoint


def test_speed_options_of_the_config_reach_the_model(corpus_file, tmp_path):
    config = _config(corpus_file, tmp_path, **{
        "model.compute_dtype": "bfloat16", "model.fast_backward": False,
        "model.remat_segment": 4, "model.logits_chunk": 8})
    lm = config_lib.build_lm_config(config, vocab_size=30)
    assert (lm.compute_dtype, lm.fast_backward, lm.remat_segment, lm.logits_chunk) == (
        "bfloat16", False, 4, 8)
    assert config_lib.build_lm_config(_config(corpus_file, tmp_path), 30).compute_dtype is None


def test_a_run_stopped_by_its_time_budget_resumes_to_the_uninterrupted_result(
        corpus_file, tmp_path):
    whole = _run(_config(corpus_file, tmp_path), tmp_path / "whole")
    _run(_config(corpus_file, tmp_path, **{"train.time_budget_minutes": 1e-6}), tmp_path / "cut")
    resumed = _run(_config(corpus_file, tmp_path), tmp_path / "cut", resume=True)
    assert resumed["step"] == whole["step"]
    assert resumed["valid_nll"] == whole["valid_nll"]  # the same best (end-of-epoch) params


def _counted_batches(n):
    """n distinct host batches, and a list recording how many have been read."""
    read = []

    def gen():
        for i in range(n):
            read.append(i)
            ids = np.full((2, 3), i, np.int32)
            yield batching.Batch(ids, ids + 1, np.ones((2, 3), np.float32), np.zeros(2, bool))

    return gen(), read


def test_prefetch_to_device_yields_the_same_batches_in_order_as_device_arrays():
    batches, _ = _counted_batches(5)
    out = list(pipeline.prefetch_to_device(batches, size=2))
    assert [int(b.inputs[0, 0]) for b in out] == [0, 1, 2, 3, 4]
    assert all(isinstance(leaf, jax.Array) for b in out for leaf in b)
    np.testing.assert_array_equal(out[3].targets, np.full((2, 3), 4))


def test_prefetch_to_device_reads_at_most_size_batches_ahead():
    batches, read = _counted_batches(10)
    prefetched = pipeline.prefetch_to_device(batches, size=2)
    first = next(prefetched)
    assert int(first.inputs[0, 0]) == 0 and len(read) == 3  # the one yielded + 2 ahead
    next(prefetched)
    assert len(read) == 4
    with pytest.raises(ValueError, match="size"):
        next(pipeline.prefetch_to_device(iter([]), size=0))


def test_the_zaremba_rule_through_the_loop_decays_after_its_start_epoch(corpus_file, tmp_path):
    config = _config(corpus_file, tmp_path, **{
        "train.optimizer": "sgd", "train.learning_rate": 1.0, "train.lr_rule": "zaremba",
        "train.lr_decay_start": 2, "train.lr_decay": 0.5, "train.epochs": 4})
    _run(config, tmp_path / "run")
    records = _records(tmp_path / "run")
    assert [r["next_lr"] for r in records if "next_lr" in r] == [1.0, 0.5, 0.25, 0.125]
    used = sorted({r["lr"] for r in records if "train_loss" in r}, reverse=True)
    assert used == [1.0, 0.5, 0.25]  # the last decay applies after the last epoch


def test_eval_test_false_skips_the_test_split(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        (folder / f"{split}.txt").write_text(TEXT)
    on = _run(_config(folder, tmp_path, **{"train.max_steps": 2}), tmp_path / "on")
    off = _run(_config(folder, tmp_path, **{"train.max_steps": 2, "train.eval_test": False}),
               tmp_path / "off")
    assert "test_ppl" in on and "test_ppl" not in off


def test_optimizer_options_reach_optax(corpus_file, tmp_path):
    """adam with b1=0 and a huge eps moves params far less than the default adam."""
    moved = []
    for options in ({}, {"train.optimizer_options.eps": 1e3}):
        config = _config(corpus_file, tmp_path, **{"train.max_steps": 3, **options})
        run_dir = tmp_path / f"run{len(moved)}"
        _run(config, run_dir)
        state = runs.load_run(run_dir, "latest")
        init = train.init_train_state(jax.random.key(0), state.lm_config,
                                      train.build_optimizer(state.config), 1).params
        moved.append(sum(float(np.abs(a - b).sum()) for a, b in
                         zip(jax.tree.leaves(state.params), jax.tree.leaves(init))))
    assert moved[1] < 0.01 * moved[0]


def test_word_split_regex_separates_punctuation(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("Hello, world! Bye.\n" * 20)
    whitespace = pipeline.load_run_corpus(_config(path, tmp_path, **{"data.level": "word"}))
    regex = pipeline.load_run_corpus(_config(path, tmp_path, **{
        "data.level": "word", "data.word_split": "regex"}))
    assert "world!" in whitespace.vocab.index and "world!" not in regex.vocab.index
    assert {",", "!", "."} <= set(regex.vocab.index)


def test_keep_checkpoints_keeps_that_many_step_files(corpus_file, tmp_path):
    config = _config(corpus_file, tmp_path, **{"train.checkpoint_every": 2,
                                               "train.keep_checkpoints": 3, "train.max_steps": 11})
    _run(config, tmp_path / "run")
    assert checkpoint.saved_steps(tmp_path / "run") == [8, 10, 11]
    assert checkpoint.best_path(tmp_path / "run").exists()
