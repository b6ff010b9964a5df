"""A finished or interrupted run, loaded from its folder: its history; score it, sample from it.

    run = load_run("runs/base-20261204-045243")          # best params (else the latest)
    run.history.epochs["valid_ppl"]                      # NumPy columns (`to_pandas()`)
    run.evaluate("test")                                 # {"nll", "ppl", "bits", "tokens"}
    run.sample(prime="The ", num_tokens=80, seed=0)      # text
    run.plot()                                           # a matplotlib Figure (inline)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jax_lm import checkpoint, data, optim, pipeline, plots, train
from jax_lm import config as config_lib
from jax_lm import sample as sample_lib
from jax_lm.model import LMConfig, Params
from jax_lm.rundir import VOCAB, RunDir, RunFolderError, RunFolderWarning


class History(NamedTuple):
    """A run's metrics.jsonl as columns (NumPy arrays; NaN where a record lacks a field).

    steps:  one row per training log — step, epoch, train_loss, tokens_per_s, lr
    epochs: one row per evaluation — epoch (0: before training), step, train_ppl,
            valid_nll, valid_ppl, valid_bits, next_lr, partial_epoch (a time budget's cut)
    final:  the final record (valid_* and test_* with the best params), {} while unfinished
    """

    steps: dict[str, np.ndarray]
    epochs: dict[str, np.ndarray]
    final: dict[str, Any]

    @classmethod
    def from_records(cls, records: list[dict[str, Any]]) -> History:
        steps = [r for r in records if "train_loss" in r]
        epochs = [r for r in records if not r.get("final") and "train_loss" not in r
                  and ("valid_nll" in r or "train_nll" in r)]
        finals = [r for r in records if r.get("final")]
        return cls(_columns(steps), _columns(epochs), finals[-1] if finals else {})

    def to_pandas(self, which: str = "epochs"):
        """`steps` or `epochs` as a pandas DataFrame (needs pandas, which jax_lm does not)."""
        import pandas as pd  # noqa: PLC0415 - optional

        return pd.DataFrame({"steps": self.steps, "epochs": self.epochs}[which])


def _columns(records: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    keys = list(dict.fromkeys(k for r in records for k in r))
    out = {}
    for key in keys:
        values = [r.get(key, math.nan) for r in records]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            out[key] = np.asarray(values, np.int64)
        elif all(isinstance(v, (int, float)) or v in ("inf", "-inf", "nan") for v in values):
            out[key] = np.asarray([float(v) for v in values])  # JSON's "inf"/"nan" strings too
        else:
            out[key] = np.asarray(values, object)
    return out


@dataclasses.dataclass(eq=False)
class Run:
    """A run: its typed config, model config, vocabulary, tokenizer and parameters.

    `params` are the best parameters (lowest validation NLL at an epoch end; the latest
    where no epoch has ended); `last_params` the newest checkpoint's. `path` is the run
    folder (None for a run held only in memory). `history`, `evaluate`, `sample` and
    `plot` read the folder and the corpus when called.
    """

    config: config_lib.RunConfig
    lm_config: LMConfig
    vocab: data.Vocab
    tokenizer: data.Tokenizer
    params: Params
    metadata: dict
    path: Path | None = None

    def __repr__(self) -> str:
        final = self.history.final if self.path else {}
        done = (f", finished at step {final['step']}, valid ppl {final['valid_ppl']:.2f}"
                if "valid_ppl" in final else "")
        return (f"Run({str(self.path)!r}, {self.config.model.cell} "
                f"{self.lm_config.layers_text}, vocab "
                f"{self.vocab.size}{done})")

    def _folder(self) -> RunDir:
        if self.path is None:
            raise RunFolderError("this run has no folder (load it with jax_lm.load_run)")
        return RunDir(self.path)

    @functools.cached_property
    def last_params(self) -> Params:
        return load_run(self._folder().path, "latest").params

    @property
    def history(self) -> History:
        """The metrics log as it is now (a run still training grows it)."""
        return History.from_records(self._folder().records())

    @functools.cached_property
    def corpus(self) -> data.Corpus:
        """The run's corpus, encoded with its vocabulary (read once, on first use)."""
        return pipeline.load_run_corpus(self.config, self.vocab)

    def evaluate(self, split: str = "valid", params: Params | None = None) -> dict[str, float]:
        """Mean NLL (nats), perplexity, bits per token and the number of targets on `split`
        ("train", "valid" or "test") with `params` (default: the best)."""
        if split not in self.corpus.splits:
            raise data.DataError(f"this corpus has no {split!r} split; it has "
                                 f"{', '.join(self.corpus.splits)}")
        return train.evaluate(self.params if params is None else params, self.lm_config,
                              pipeline.eval_batches(self.config, self.corpus, split))

    def sample(self, prime: str = "", num_tokens: int | None = None, *,
               temperature: float | None = None, top_k: int | None = None,
               top_p: float | None = None, greedy: bool | None = None, seed: int = 0,
               num_samples: int = 1) -> str | list[str]:
        """Text continuing `prime` (default: a line start); unset options are the config's
        `sample` ones. One text, or a list of `num_samples`."""
        changes = {"sample.prime": prime, "sample.num_samples": num_samples,
                   "sample.num_tokens": num_tokens, "sample.temperature": temperature,
                   "sample.top_k": top_k, "sample.top_p": top_p, "sample.greedy": greedy}
        config = self.config.replace({k: v for k, v in changes.items() if v is not None})
        texts = sample_texts(dataclasses.replace(self, config=config), seed=seed)
        return texts[0] if num_samples == 1 else texts

    def plot(self):
        """Training loss and validation perplexity (a matplotlib Figure, shown inline)."""
        return plots.curves_figure(self._folder().records())


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
    params = optim.evaluation_params(state.opt_state, state.params)  # NT-ASGD: the average
    return Run(config, lm_config, vocab, pipeline.tokenizer_for(config), params, metadata,
               folder.path)


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
