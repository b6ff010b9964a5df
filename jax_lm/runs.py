"""A finished or interrupted run, loaded from its folder: score it, sample from it.

    run = load_run("runs/base-20261204-045243")          # best params (else the latest)
    texts = sample_texts(run, seed=0)                    # as the config's `sample` says
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jax_lm import checkpoint, data, pipeline, train
from jax_lm import config as config_lib
from jax_lm import sample as sample_lib
from jax_lm.model import LMConfig, Params
from jax_lm.rundir import VOCAB, RunDir, RunFolderError, RunFolderWarning


class Run(NamedTuple):
    """A run's typed config, model config, vocabulary, tokenizer and one set of params."""

    config: config_lib.RunConfig
    lm_config: LMConfig
    vocab: data.Vocab
    tokenizer: data.Tokenizer
    params: Params
    metadata: dict


def read_config(run_dir: str | os.PathLike):
    """The ConfigDict saved in a run folder (errors name the folder and the problem)."""
    folder = RunDir(run_dir)
    return config_lib.from_json(folder.read_config_text(), source=str(folder.path / "config.json"))


def state_template(config, lm_config: LMConfig):
    """A TrainState of the right structure, shapes and dtypes to load a checkpoint into."""
    return train.init_train_state(jax.random.key(0), lm_config, train.build_optimizer(config),
                                  config.data.batch_size)


def load_run(run_dir: str | os.PathLike, which: str = "best") -> Run:
    """Config, vocabulary and parameters of a run folder (`which`: "best", "latest" or a path).

    "best" falls back to the latest step checkpoint when no epoch has ended; "latest" falls
    back to an older intact step checkpoint when the newest is damaged (with a warning).
    """
    folder = RunDir(run_dir)
    config = config_lib.resolve(read_config(folder.path))
    if which == "best" and checkpoint.best_path(folder.path).exists():
        path = checkpoint.best_path(folder.path)
    elif which in ("best", "latest"):
        path = None
    else:
        path = Path(which)
    if path is None and not checkpoint.saved_steps(folder.path):
        raise RunFolderError(f"{folder.path} has no checkpoint yet (its training stopped "
                             "before the first one was saved); train it again")
    if not (folder.path / VOCAB).is_file():
        raise RunFolderError(f"{folder.path} has no {VOCAB}; it was not written by "
                             "'jax-lm train' or is damaged")
    vocab = data.Vocab.load(folder.path / VOCAB)
    lm_config = config_lib.build_lm_config(config, vocab.size)
    template = state_template(config, lm_config)
    if path is None:
        path, state, metadata, notes = checkpoint.load_latest_intact(folder.path, template)
        for note in notes:
            warnings.warn(note, RunFolderWarning, stacklevel=2)
    else:
        state, metadata = checkpoint.load_checkpoint(path, template)
    if metadata.get("vocab") not in (None, vocab.fingerprint()):
        raise RunFolderError(f"{folder.path / VOCAB} does not match checkpoint {path}")
    return Run(config, lm_config, vocab, pipeline.tokenizer_for(config), state.params, metadata)


def prime_ids(text: str, vocab: data.Vocab, tokenizer: data.Tokenizer) -> np.ndarray:
    """Token ids of a sampling prompt; an empty prompt starts where a line starts."""
    tokens = tokenizer.tokenize(text) if text else []
    if tokens and tokenizer.framed and tokenizer.eos is not None and tokens[-1] == tokenizer.eos:
        tokens = tokens[:-1]  # a prompt continues its last line rather than ending it
    if not tokens:
        starts = [tokenizer.bos, tokenizer.eos, "\n"]
        tokens = [next((t for t in starts if t is not None and t in vocab.index), vocab.tokens[0])]
    return vocab.encode(tokens)


def sampling_rule(sample_config) -> sample_lib.SamplingRule:
    s = sample_config
    return sample_lib.SamplingRule(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                                   greedy=s.greedy, resample_once=s.resample_once)


def _generate(run: Run, prime: np.ndarray, num_samples: int, num_tokens: int,
              seed: int) -> np.ndarray:
    """[num_samples, num_tokens] ids continuing `prime`, with the run's sampling rule."""
    banned = () if run.vocab.unk_id is None else (run.vocab.unk_id,)
    tokens, _ = sample_lib.generate(run.params, jnp.tile(prime, (num_samples, 1)), num_tokens,
                                    jax.random.key(seed), config=run.lm_config,
                                    rule=sampling_rule(run.config.sample), banned=banned)
    return np.asarray(tokens)


def sample_texts(run: Run, seed: int = 0) -> list[str]:
    """`sample.num_samples` texts of `sample.num_tokens` tokens after `sample.prime`."""
    s = run.config.sample
    if s.num_samples == 0:
        return []
    prime = prime_ids(s.prime, run.vocab, run.tokenizer)
    rows = _generate(run, prime, s.num_samples, s.num_tokens, seed)
    return [run.tokenizer.detokenize(run.vocab.decode(np.concatenate([prime, row])))
            for row in rows]


def sample_sentence_texts(run: Run, num_sentences: int, *, min_length: int = 0,
                          max_length: int = 50, seed: int = 0) -> list[str]:
    """001's sentence mode: whole sentences between the start and end tokens, no unknown token."""
    tok, index = run.tokenizer, run.vocab.index
    start, end = tok.bos or tok.eos, tok.eos or tok.bos
    if start is None or start not in index or end not in index:
        raise train.TrainingError("sentence mode needs a corpus whose lines are framed: train "
                                  "with --config.data.bos=... and/or --config.data.eos=...")
    try:
        sentences = sample_lib.sample_sentences(
            run.params, jax.random.key(seed), config=run.lm_config, start_id=index[start],
            end_id=index[end], unk_id=run.vocab.unk_id, num_sentences=num_sentences,
            min_length=min_length, max_length=max_length, rule=sampling_rule(run.config.sample))
    except RuntimeError as e:
        raise train.TrainingError(str(e)) from None
    return [tok.detokenize(run.vocab.decode(ids)) for ids in sentences]


def generate_token_samples(run: Run, num_samples: int, num_tokens: int,
                           seed: int = 0) -> list[np.ndarray]:
    """Generated ids only (no prompt), for the quality measures of `jax_lm.metrics`."""
    prime = prime_ids(run.config.sample.prime, run.vocab, run.tokenizer)
    return list(_generate(run, prime, num_samples, num_tokens, seed))
