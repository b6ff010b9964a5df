"""Training: the TrainState pytree, jitted train/eval steps, and the fit loop at the edge.

    batches (host, NumPy) ──▶ train_step(state, batch) ──▶ (state, metric sums)   jitted, donated
                                     ▲                              │ every log_every steps
                                     └──── state ◀──────────────────┘ to the host: loss, tok/s

The pure core is `make_train_step` / `make_eval_step`; `train_and_evaluate` is the loop with
all side effects: the run folder, progress bar, validation, learning-rate rules,
checkpoints, plots and samples. Batches reach the device two steps ahead
(`prefetch_to_device`), so that their copy overlaps the running step. Everything a run
does follows from its config and seed, and a resumed run continues bit for bit: batch k
and the dropout key of step k are functions of k alone (`jax.random.fold_in(rng, k)`),
and checkpoints hold the whole state.
"""

from __future__ import annotations

import collections
import functools
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jax_lm import batching, bptt, checkpoint, data, lr_rules, model, optim
from jax_lm import config as config_lib
from jax_lm.model import LMConfig, Params

Array = jax.Array
REGIMES = ("full", "truncated", "window")
REDUCTIONS = ("token_mean", "batch_mean", "sum")
LR_RULES = ("constant", "zaremba", "halve_when_loss_rises", "halve_when_likelihood_drops",
            "quarter_when_not_best")
PREFETCH = 2  # batches copied to the device ahead of the step that reads them


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step."""


class TrainState(NamedTuple):
    """Everything on the device that a training step reads and writes."""

    step: Array       # int32 scalar: steps taken
    params: Params
    opt_state: Any
    rng: Array        # PRNG key; step s uses fold_in(rng, s) for dropout
    carry: tuple      # recurrent state carried into the next window (per layer)


class StepMetrics(NamedTuple):
    """Sums over the steps since the last host sync (all device scalars)."""

    nll: Array             # Σ target NLL (nats)
    tokens: Array          # Σ scored targets
    nonfinite: Array       # steps whose loss or gradient was NaN/inf (their update was skipped)
    first_nonfinite: Array  # first such step, or -1

    @staticmethod
    def zeros() -> StepMetrics:
        z = jnp.zeros((), jnp.float32)
        return StepMetrics(z, z, jnp.zeros((), jnp.int32), jnp.full((), -1, jnp.int32))

    def __add__(self, other: StepMetrics) -> StepMetrics:  # noqa: D105
        first = jnp.where(self.first_nonfinite >= 0, self.first_nonfinite, other.first_nonfinite)
        return StepMetrics(self.nll + other.nll, self.tokens + other.tokens,
                           self.nonfinite + other.nonfinite, first)


def init_train_state(key: Array, config: LMConfig, optimizer, batch_size: int) -> TrainState:
    k_init, k_rng = jax.random.split(key)
    params = model.init_lm(k_init, config)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params), rng=k_rng,
                      carry=model.init_carry(config, batch_size))


def _reset_rows(carry: tuple, reset: Array, fresh: tuple) -> tuple:
    """Rows where `reset` [B] is true start again from the initial state."""
    return jax.tree.map(lambda c, z: jnp.where(reset[:, None], z, c), carry, fresh)


def make_train_step(config: LMConfig, optimizer, *, regime: str = "truncated", window_k: int = 4,
                    reduction: str = "token_mean", jit: bool = True) -> Callable:
    """A jitted `train_step(state, batch) -> (state, StepMetrics)`; `state` is donated.

    (`jit=False`: the plain function, e.g. to vmap it over seeds in `jax_lm.multiseed`.)

    Regimes: "full" starts every batch from the zero state (whole sequences, 000/001);
    "truncated" carries each row's state into the next window (the stream layout), and
    since the carry enters as an input array no gradient crosses the window boundary
    (JAX's `repackage_hidden`); "window" is 001's per-output truncation
    (`bptt.window_token_nll`, k = `window_k`) from the zero state.
    Loss: Σ nll / Σ mask ("token_mean"), Σ nll / B ("batch_mean": sum over time, mean over
    the batch, as Zaremba's code) or Σ nll ("sum", the per-sentence loss of 000 and 001).
    A step whose loss or gradient is not finite (a NaN/inf entry, or a gradient norm beyond
    the float range) leaves params and optimizer state unchanged and is counted in the
    metrics.
    """
    if regime not in REGIMES:
        raise ValueError(f"unknown regime {regime!r}; choose one of {REGIMES}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown loss_reduction {reduction!r}; choose one of {REDUCTIONS}")

    def loss_fn(params, batch, carry, dropout_key):
        mask = batch.mask
        if regime == "window":
            nll = bptt.window_token_nll(params, batch.inputs, batch.targets, carry,
                                        config=config, k=window_k, mask=mask)
        else:
            nll, carry = model.token_nll(params, batch.inputs, batch.targets, carry,
                                         config=config, mask=mask, dropout_key=dropout_key)
        total, count = nll.sum(), mask.sum()
        loss = {"token_mean": total / jnp.maximum(count, 1.0), "batch_mean":
                total / batch.inputs.shape[0], "sum": total}[reduction]
        return loss, (total, count, carry)

    def train_step(state: TrainState, batch: batching.Batch):
        batch_size = batch.inputs.shape[0]
        fresh = model.init_carry(config, batch_size)
        carry = fresh if regime in ("full", "window") else _reset_rows(state.carry, batch.reset,
                                                                       fresh)
        dropout_key = jax.random.fold_in(state.rng, state.step) if config.dropout else None
        grads, (total, count, carry) = jax.grad(loss_fn, has_aux=True)(
            state.params, batch, carry, dropout_key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = jax.tree.map(jnp.add, state.params, updates)

        # One reduction per leaf, shared with the clipping's norm (XLA merges the two):
        # any NaN/inf entry makes the norm NaN/inf (so does a norm beyond float range).
        finite = jnp.isfinite(total) & jnp.isfinite(optax.tree.norm(grads))
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        metrics = StepMetrics(
            nll=jnp.where(finite, total, 0.0).astype(jnp.float32),
            tokens=jnp.where(finite, count, 0.0).astype(jnp.float32),
            nonfinite=(~finite).astype(jnp.int32),
            first_nonfinite=jnp.where(finite, -1, state.step).astype(jnp.int32))
        return TrainState(step=state.step + 1, params=keep(params, state.params),
                          opt_state=keep(opt_state, state.opt_state), rng=state.rng,
                          carry=keep(carry, fresh)), metrics

    return jax.jit(train_step, donate_argnums=0) if jit else train_step


def make_eval_step(config: LMConfig) -> Callable:
    """A jitted `eval_step(params, batch, carry) -> (Σ nll, Σ tokens, carry)`, no dropout."""

    def eval_step(params, batch: batching.Batch, carry):
        carry = _reset_rows(carry, batch.reset, model.init_carry(config, batch.inputs.shape[0]))
        nll, carry = model.token_nll(params, batch.inputs, batch.targets, carry,
                                     config=config, mask=batch.mask)
        return nll.sum(), batch.mask.sum(), carry

    return jax.jit(eval_step)


def evaluate(params: Params, config: LMConfig, batches: Iterator[batching.Batch],
             eval_step: Callable | None = None) -> dict[str, float]:
    """Mean NLL (nats), perplexity and bits per token over every target of `batches`."""
    eval_step = eval_step or make_eval_step(config)
    total, count, carry = 0.0, 0.0, None
    for batch in prefetch_to_device(batches):
        if carry is None or jax.tree.leaves(carry)[0].shape[0] != batch.inputs.shape[0]:
            carry = model.init_carry(config, batch.inputs.shape[0])
        nll, n, carry = eval_step(params, batch, carry)
        total, count = total + nll, count + n  # stays on the device until the end
    total, count = float(total), float(count)
    if count == 0:
        raise TrainingError("evaluation saw no tokens")
    mean = total / count
    return {"nll": mean, "ppl": math.exp(min(mean, 700.0)), "bits": mean / math.log(2),
            "tokens": int(count)}


# ------------------------------------------------------------------------- data plumbing


def load_run_corpus(config: ml_collections.ConfigDict, vocab: data.Vocab | None = None):
    """The corpus that a config names (with a fixed vocabulary when resuming/evaluating)."""
    d = config.data
    tokenizer = data.Tokenizer(level=d.level, split=d.word_split, lowercase=d.lowercase,
                               bos=d.bos or None, eos=d.eos or None)
    load = functools.partial(data.load_corpus, d.source, tokenizer, max_vocab=d.max_vocab or None,
                             min_count=d.min_count, unk=d.unk or None,
                             cache_dir=d.cache_dir or None, errors=d.errors,
                             train_fraction=d.train_fraction)
    corpus = load(vocab=vocab)
    if vocab is None and d.vocab_from_train_lines and d.max_train_lines:
        # 000 builds its vocabulary from the sentences it trains on: count those lines only,
        # then encode every split again with that vocabulary (tokenization is cached).
        ids = _train_ids(config, corpus)
        counts = collections.Counter(corpus.vocab.decode(ids))
        others = set(corpus.vocab.tokens) - set(counts)
        corpus = load(vocab=data.build_vocab(
            counts, reserved=(tokenizer.bos, tokenizer.eos), unk=d.unk or None,
            max_size=d.max_vocab or None, min_count=d.min_count, other_types=others))
    return corpus


def _train_sentences(config, corpus) -> list[np.ndarray]:
    """The training lines in use: all, or the first `data.max_train_lines`."""
    sentences = corpus.sentences("train")
    return sentences[: config.data.max_train_lines] if config.data.max_train_lines else sentences


def _train_ids(config, corpus) -> np.ndarray:
    """The training stream in use: the ids of `_train_sentences`, concatenated."""
    ids, n = corpus.splits["train"], config.data.max_train_lines
    return ids[: corpus.line_offsets["train"][min(n, len(corpus.line_offsets["train"]) - 1)]] \
        if n else ids


def steps_per_epoch(config: ml_collections.ConfigDict, corpus) -> int:
    d = config.data
    if d.batcher == "stream":
        return batching.stream_layout(len(_train_ids(config, corpus)), d.batch_size,
                                      d.seq_len).num_windows
    if d.batcher == "sentences":
        return -(-len(_train_sentences(config, corpus)) // d.batch_size)
    if d.batcher == "random_windows":
        return max(1, len(_train_ids(config, corpus)) // (d.batch_size * d.seq_len))
    raise config_lib.ConfigError(f"unknown data.batcher {d.batcher!r}; choose 'stream', "
                                 "'sentences' or 'random_windows'")


def train_batches(config: ml_collections.ConfigDict, corpus, start_step: int):
    """Training batches from `start_step` on, forever (epochs follow each other)."""
    d = config.data
    if d.batcher == "stream":
        return batching.stream_batches(_train_ids(config, corpus), d.batch_size, d.seq_len,
                                       start_step=start_step)
    if d.batcher == "sentences":
        return batching.sentence_batches(_train_sentences(config, corpus), d.batch_size,
                                         seed=config.seed, shuffle=d.shuffle, bucket=d.bucket,
                                         start_step=start_step, length_multiple=d.pad_multiple)
    return batching.random_window_batches(_train_ids(config, corpus), d.batch_size, d.seq_len,
                                          seed=config.seed, start_step=start_step)


def prefetch_to_device(batches: Iterator[batching.Batch], size: int = PREFETCH
                       ) -> Iterator[batching.Batch]:
    """`batches`, each copied to the default device (`jax.device_put`) `size` batches ahead.

    The copy is asynchronous: batch n + 1 travels to the accelerator while step n runs,
    instead of at the call of step n + 1. On a CPU backend it changes nothing but where
    the batch lives. Yields the same batches in the same order; reads at most `size` past
    the one it yields.
    """
    if size < 1:
        raise ValueError(f"prefetch size must be ≥ 1, got {size}")
    ahead: collections.deque = collections.deque()
    for batch in batches:
        ahead.append(jax.device_put(batch))
        if len(ahead) > size:
            yield ahead.popleft()
    while ahead:
        yield ahead.popleft()


def eval_batches(config: ml_collections.ConfigDict, corpus, split: str):
    """One pass scoring every target of `split` once (train: the training subset in use)."""
    d = config.data
    batch_size = d.eval_batch_size or d.batch_size
    if d.batcher == "sentences":
        sentences = (_train_sentences(config, corpus) if split == "train"
                     else corpus.sentences(split))
        return batching.sentence_batches(sentences, batch_size, shuffle=False, bucket=False,
                                         num_epochs=1, length_multiple=d.pad_multiple)
    ids = _train_ids(config, corpus) if split == "train" else corpus.splits[split]
    return batching.stream_batches(ids, batch_size, d.seq_len, num_epochs=1)


# ------------------------------------------------------------------------- the fit loop


def make_lr_rule(config: ml_collections.ConfigDict) -> lr_rules.DecayWhenWorse | None:
    """The plateau rule named by `train.lr_rule` (None for "constant" and "zaremba")."""
    rules = {"halve_when_loss_rises": lr_rules.HALVE_WHEN_LOSS_RISES,
             "halve_when_likelihood_drops": lr_rules.HALVE_WHEN_LIKELIHOOD_DROPS,
             "quarter_when_not_best": lr_rules.QUARTER_WHEN_NOT_BEST}
    name = config.train.lr_rule
    if name in ("constant", "zaremba"):
        return None
    if name not in rules:
        raise config_lib.ConfigError(f"unknown train.lr_rule {name!r}; choose one of {LR_RULES}")
    return rules[name]


def build_optimizer(config: ml_collections.ConfigDict):
    t = config.train
    try:
        return optim.make_optimizer(t.optimizer, t.learning_rate, clip_norm=t.clip_norm or None,
                                    **t.optimizer_options.to_dict())
    except TypeError as e:
        raise config_lib.ConfigError(f"train.optimizer_options do not fit {t.optimizer!r}: {e}")


class _Logger:
    """Appends JSON lines to run_dir/metrics.jsonl."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "metrics.jsonl"

    def __call__(self, **record):
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step",
                dynamic_ncols=True, leave=True)


def train_and_evaluate(config: ml_collections.ConfigDict, run_dir: str | os.PathLike, *,
                       resume: bool = False, progress: bool = True,
                       print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Train as `config` says, writing everything to `run_dir`; returns the final metrics.

    run_dir/config.json, vocab.json, metrics.jsonl, checkpoints/, curves.png, samples.txt.
    With `resume`, continue the run saved in `run_dir` from its latest checkpoint.
    """
    run_dir = Path(run_dir)
    t = config.train
    if resume:
        latest = checkpoint.latest_path(run_dir)
        if latest is None:
            raise TrainingError(f"nothing to resume in {run_dir}: it has no checkpoint")
    elif checkpoint.saved_steps(run_dir) or checkpoint.best_path(run_dir).exists():
        raise TrainingError(f"{run_dir} already holds a run; resume it with --resume or "
                            "choose another --workdir (nothing was overwritten)")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(config_lib.to_json(config))

    vocab_path = run_dir / "vocab.json"
    corpus = load_run_corpus(config, data.Vocab.load(vocab_path) if resume else None)
    if not resume:
        corpus.vocab.save(vocab_path)
    lm_config = config_lib.build_lm_config(config, corpus.vocab.size)
    optimizer = build_optimizer(config)
    lr_rule = make_lr_rule(config)
    per_epoch = steps_per_epoch(config, corpus)
    total_steps = t.epochs * per_epoch
    if t.max_steps:
        total_steps = min(total_steps, t.max_steps)
    if t.on_nonfinite not in ("stop", "skip"):
        raise config_lib.ConfigError(f"train.on_nonfinite must be 'stop' or 'skip', got "
                                     f"{t.on_nonfinite!r}")

    state = init_train_state(jax.random.key(config.seed), lm_config, optimizer,
                             config.data.batch_size)
    host = {"epoch": 0, "lr": t.learning_rate, "lr_reference": None, "best_valid": None,
            "epoch_nll": 0.0, "epoch_tokens": 0.0, "train_seconds": 0.0,
            "vocab": corpus.vocab.fingerprint()}
    if resume:
        state, host = checkpoint.load_checkpoint(latest, state)
        if host.get("vocab") != corpus.vocab.fingerprint():
            raise TrainingError(f"{vocab_path} does not match the checkpoint's vocabulary")
        print_fn(f"resuming {run_dir} at step {int(state.step)} (epoch {host['epoch'] + 1})")

    train_step = make_train_step(lm_config, optimizer, regime=t.regime, window_k=t.window_k,
                                 reduction=t.loss_reduction)
    eval_step = make_eval_step(lm_config)
    log = _Logger(run_dir)
    print_fn(f"jax_lm: {corpus.source} ({config.data.level}, vocab {corpus.vocab.size}, "
             f"{len(corpus.splits['train']):,} train tokens), {config.model.cell} "
             f"{lm_config.num_layers}×{lm_config.hidden_size}, "
             f"{model.num_params(state.params):,} params, {per_epoch} steps/epoch, "
             f"devices {jax.devices()}")

    def save(step: int):
        checkpoint.save_step(run_dir, step, state, host, keep=t.keep_checkpoints)

    start = int(state.step)
    if start == 0 and t.eval_at_start:
        host = _evaluate_at_start(config, corpus, lm_config, state, host, lr_rule, eval_step, log,
                                  print_fn)
    budget = 60.0 * t.time_budget_minutes
    bar = _progress(total_steps, start, progress)
    batches = prefetch_to_device(train_batches(config, corpus, start))
    window = StepMetrics.zeros()
    window_start, window_steps = time.perf_counter(), 0
    step = start
    try:
        while step < total_steps:
            state, metrics = train_step(state, next(batches))
            window = window + metrics
            step += 1
            window_steps += 1
            end_of_epoch = step % per_epoch == 0
            out_of_time = budget > 0 and (host["train_seconds"] + time.perf_counter()
                                          - window_start >= budget)
            save_now = (end_of_epoch or step == total_steps or out_of_time
                        or (t.checkpoint_every and step % t.checkpoint_every == 0))
            if window_steps == t.log_every or save_now:  # a checkpoint holds synced metrics
                window = jax.block_until_ready(window)  # the steps are done: time them
                host = _sync_metrics(window, window_steps, time.perf_counter() - window_start,
                                     state, host, log, bar, run_dir, t.on_nonfinite)
                window, window_steps = StepMetrics.zeros(), 0
            if end_of_epoch:
                state, host = _end_epoch(config, corpus, lm_config, state, host, lr_rule,
                                         eval_step, log, run_dir, print_fn)
            elif out_of_time:
                host = _score_partial_epoch(config, corpus, lm_config, state, host, eval_step,
                                            log, run_dir)
            if save_now:
                save(step)
            if not window_steps:  # validation and saving are not training time
                window_start = time.perf_counter()
            if out_of_time:
                print_fn(f"\ntime budget of {t.time_budget_minutes:g} min spent at step {step} "
                         f"(epoch {host['epoch'] + 1}, {step % per_epoch}/{per_epoch} steps)")
                break
    except KeyboardInterrupt:
        try:  # keep what was trained; the state may be unusable if a step was cut short
            if window_steps:
                host = _sync_metrics(window, window_steps, time.perf_counter() - window_start,
                                     state, host, log, bar, run_dir, t.on_nonfinite)
            step = int(state.step)
            save(step)
            print_fn(f"\ninterrupted: saved step {step}; resume with "
                     f"'jax-lm train --resume {run_dir}'")
        except Exception:  # noqa: BLE001
            print_fn(f"\ninterrupted; resume from the latest checkpoint in {run_dir}")
        raise
    finally:
        bar.close()
    return _finish(config, corpus, lm_config, state, host, eval_step, log, run_dir, print_fn)


def _sync_metrics(window: StepMetrics, steps: int, elapsed: float, state: TrainState,
                  host: dict, log, bar, run_dir: Path, on_nonfinite: str) -> dict:
    """Bring the summed step metrics to the host: log them, update the bar, catch NaN/inf."""
    nll, tokens = float(window.nll), float(window.tokens)
    bad, first_bad = int(window.nonfinite), int(window.first_nonfinite)
    if bad and on_nonfinite == "stop":
        last = checkpoint.latest_path(run_dir)
        raise TrainingError(
            f"non-finite loss or gradient at step {first_bad + 1} (epoch {host['epoch'] + 1}); "
            "training stopped, " + (f"last good checkpoint: {last}" if last else
                                    "no checkpoint was written yet")
            + ". Lower train.learning_rate, or set train.on_nonfinite='skip'.")
    host = {**host, "epoch_nll": host["epoch_nll"] + nll,
            "epoch_tokens": host["epoch_tokens"] + tokens,
            "train_seconds": host.get("train_seconds", 0.0) + elapsed}
    loss = nll / max(tokens, 1.0)
    lr = float(f"{optim.learning_rate(state.opt_state):.7g}")
    record = dict(step=int(state.step), epoch=host["epoch"] + 1, train_loss=loss,
                  tokens_per_s=tokens / elapsed, lr=lr)
    if bad:
        record["skipped_nonfinite"] = bad
    log(**record)
    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens / elapsed:,.0f}", lr=f"{lr:.3g}")
    bar.update(steps)
    return host


def _watched_metric(config, corpus, lm_config, params, eval_step, record: dict) -> float:
    """The number a plateau rule compares, as a loss (lower is better)."""
    metric = config.train.lr_rule_metric
    if metric == "train_eval":
        return evaluate(params, lm_config, eval_batches(config, corpus, "train"), eval_step)["nll"]
    watched = {"valid": record.get("valid_nll"), "train": record.get("train_nll")}.get(metric)
    if watched is None:
        raise config_lib.ConfigError(f"train.lr_rule_metric={metric!r} is unknown or needs a "
                                     "valid split")
    return watched


def _evaluate_at_start(config, corpus, lm_config, state, host, lr_rule, eval_step, log,
                       print_fn) -> dict:
    """Epoch-0 scores of the initial parameters (001 evaluates before it trains)."""
    record = {"epoch": 0, "step": 0}
    if "valid" in corpus.splits:
        valid = evaluate(state.params, lm_config, eval_batches(config, corpus, "valid"), eval_step)
        record.update(valid_nll=valid["nll"], valid_ppl=valid["ppl"], valid_bits=valid["bits"])
    host = dict(host)
    if lr_rule is not None and config.train.lr_rule_metric != "train":
        watched = _watched_metric(config, corpus, lm_config, state.params, eval_step, record)
        record["lr_rule_metric"] = watched
        host["lr_reference"] = -watched if lr_rule.mode == "max" else watched
    log(**record)
    print_fn("epoch 0: " + ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                                     if k not in ("epoch", "step")))
    return host


def _end_epoch(config, corpus, lm_config, state, host, lr_rule, eval_step, log, run_dir,
               print_fn):
    """Validation, the learning-rate rule, the best checkpoint; returns (state, host)."""
    t = config.train
    host = dict(host)
    epoch = host["epoch"] + 1
    train_nll = host["epoch_nll"] / max(host["epoch_tokens"], 1.0)
    record = {"epoch": epoch, "step": int(state.step), "train_nll": train_nll,
              "train_ppl": math.exp(min(train_nll, 700.0))}
    if "valid" in corpus.splits:
        valid = evaluate(state.params, lm_config, eval_batches(config, corpus, "valid"), eval_step)
        record.update(valid_nll=valid["nll"], valid_ppl=valid["ppl"], valid_bits=valid["bits"])
        if host["best_valid"] is None or valid["nll"] < host["best_valid"]:
            host["best_valid"] = valid["nll"]
            checkpoint.save_checkpoint(checkpoint.best_path(run_dir), state, host)
    lr = optim.learning_rate(state.opt_state)
    if t.lr_rule == "zaremba":
        lr = lr_rules.zaremba_decay(t.learning_rate, epoch + 1, start=t.lr_decay_start,
                                    decay=t.lr_decay)
    elif lr_rule is not None:
        watched = _watched_metric(config, corpus, lm_config, state.params, eval_step, record)
        if lr_rule.mode == "max":  # a likelihood rule (000) watches the log-likelihood
            watched = -watched
        plateau = lr_rule.update(lr_rules.PlateauState(lr, host["lr_reference"]), watched)
        lr, host["lr_reference"] = plateau.learning_rate, plateau.reference
        record["lr_rule_metric"] = watched
    record["next_lr"] = lr
    state = state._replace(opt_state=optim.set_learning_rate(state.opt_state, lr))
    host.update(epoch=epoch, lr=lr, epoch_nll=0.0, epoch_tokens=0.0)
    log(**record)
    msg = f"epoch {epoch}: train ppl {record['train_ppl']:.2f}"
    if "valid_ppl" in record:
        unit = "char" if config.data.level == "char" else "token"
        msg += f", valid ppl {record['valid_ppl']:.2f} ({record['valid_bits']:.3f} bits/{unit})"
    print_fn(msg + f", next lr {lr:.4g}")
    return state, host


def _score_partial_epoch(config, corpus, lm_config, state, host, eval_step, log, run_dir):
    """Validation of params that stopped mid-epoch (time budget).

    They are logged, and kept as the best only when no epoch has ended yet: the best
    checkpoint stays an end-of-epoch one, as in a run that was never stopped and resumed.
    """
    record = {"epoch": host["epoch"] + 1, "step": int(state.step), "partial_epoch": True}
    host = dict(host)
    if "valid" in corpus.splits:
        valid = evaluate(state.params, lm_config, eval_batches(config, corpus, "valid"), eval_step)
        record.update(valid_nll=valid["nll"], valid_ppl=valid["ppl"], valid_bits=valid["bits"])
        if host["best_valid"] is None:
            checkpoint.save_checkpoint(checkpoint.best_path(run_dir), state, host)
    log(**record)
    return host


def _finish(config, corpus, lm_config, state, host, eval_step, log, run_dir, print_fn):
    """Test with the best params, the curves plot, and samples; returns the final metrics."""
    result: dict[str, Any] = {"step": int(state.step), "num_params": model.num_params(state.params),
                              "train_seconds": round(host.get("train_seconds", 0.0), 1)}
    best = checkpoint.best_path(run_dir)
    params = state.params
    if best.exists():
        params = checkpoint.load_checkpoint(best, state)[0].params
    for split in ("valid", "test"):
        if split in corpus.splits and (split == "valid" or config.train.eval_test):
            scores = evaluate(params, lm_config, eval_batches(config, corpus, split), eval_step)
            result.update({f"{split}_{k}": v for k, v in scores.items()})
    log(final=True, **result)
    plot_curves(log.records(), run_dir / "curves.png")
    run = Run(config, lm_config, corpus.vocab, corpus.tokenizer, params, {})
    samples = sample_texts(run, seed=config.seed)
    (run_dir / "samples.txt").write_text("\n\n".join(samples) + "\n")
    summary = ", ".join(f"{s} ppl {result[f'{s}_ppl']:.2f}" for s in ("valid", "test")
                        if f"{s}_ppl" in result)
    print_fn(f"done: {summary}; run folder {run_dir}")
    for text in samples:
        print_fn("--- sample ---\n" + text)
    result["samples"] = samples
    return result


def plot_curves(records: list[dict], path: Path) -> None:
    """Train loss (per log) and validation perplexity (per epoch) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in records if "train_loss" in r]
    epochs = [r for r in records if "valid_ppl" in r and "epoch" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot([r["step"] for r in steps], [r["train_loss"] for r in steps])
    ax1.set(xlabel="step", ylabel="train loss (nats/token)", title="training loss")
    ax2.plot([r["epoch"] for r in epochs], [r["valid_ppl"] for r in epochs], marker="o")
    ax2.set(xlabel="epoch", ylabel="perplexity", title="validation perplexity")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def prime_ids(text: str, vocab: data.Vocab, tokenizer: data.Tokenizer) -> np.ndarray:
    """Token ids of a sampling prompt; an empty prompt starts where a line starts."""
    tokens = tokenizer.tokenize(text) if text else []
    if tokens and tokenizer.framed and tokenizer.eos is not None and tokens[-1] == tokenizer.eos:
        tokens = tokens[:-1]  # a prompt continues its last line rather than ending it
    if not tokens:
        starts = [tokenizer.bos, tokenizer.eos, "\n"]
        tokens = [next((t for t in starts if t is not None and t in vocab.index), vocab.tokens[0])]
    return vocab.encode(tokens)


def _generate(run: Run, prime: np.ndarray, num_samples: int, num_tokens: int,
              seed: int) -> np.ndarray:
    """[num_samples, num_tokens] ids continuing `prime`, with the run's sampling rule."""
    from jax_lm import sample as sample_lib

    s = run.config.sample
    rule = sample_lib.SamplingRule(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                                   greedy=s.greedy, resample_once=s.resample_once)
    banned = () if run.vocab.unk_id is None else (run.vocab.unk_id,)
    tokens, _ = sample_lib.generate(run.params, jnp.tile(prime, (num_samples, 1)), num_tokens,
                                    jax.random.key(seed), config=run.lm_config, rule=rule,
                                    banned=banned)
    return np.asarray(tokens)


def sample_texts(run: Run, seed: int = 0) -> list[str]:
    """`sample.num_samples` texts of `sample.num_tokens` tokens after `sample.prime`."""
    s = run.config.sample
    prime = prime_ids(s.prime, run.vocab, run.tokenizer)
    rows = _generate(run, prime, s.num_samples, s.num_tokens, seed)
    return [run.tokenizer.detokenize(run.vocab.decode(np.concatenate([prime, row])))
            for row in rows]


def sample_sentence_texts(run: Run, num_sentences: int, *, min_length: int = 0,
                          max_length: int = 50, seed: int = 0) -> list[str]:
    """001's sentence mode: whole sentences between the start and end tokens, no unknown token."""
    from jax_lm import sample as sample_lib

    tok, index = run.tokenizer, run.vocab.index
    start, end = tok.bos or tok.eos, tok.eos or tok.bos
    if start is None or start not in index or end not in index:
        raise TrainingError("sentence mode needs a corpus whose lines are framed: train with "
                            "--config.data.bos=... and/or --config.data.eos=...")
    s = run.config.sample
    rule = sample_lib.SamplingRule(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                                   greedy=s.greedy, resample_once=s.resample_once)
    try:
        sentences = sample_lib.sample_sentences(
            run.params, jax.random.key(seed), config=run.lm_config, start_id=index[start],
            end_id=index[end], unk_id=run.vocab.unk_id, num_sentences=num_sentences,
            min_length=min_length, max_length=max_length, rule=rule)
    except RuntimeError as e:
        raise TrainingError(str(e)) from None
    return [tok.detokenize(run.vocab.decode(ids)) for ids in sentences]


def generate_token_samples(run: Run, num_samples: int, num_tokens: int,
                           seed: int = 0) -> list[np.ndarray]:
    """Generated ids only (no prompt), for the quality measures of `jax_lm.metrics`."""
    prime = prime_ids(run.config.sample.prime, run.vocab, run.tokenizer)
    return list(_generate(run, prime, num_samples, num_tokens, seed))


class Run(NamedTuple):
    """A finished or interrupted run, loaded for evaluation or sampling."""

    config: ml_collections.ConfigDict
    lm_config: LMConfig
    vocab: data.Vocab
    tokenizer: data.Tokenizer
    params: Params
    metadata: dict


def load_run(run_dir: str | os.PathLike, which: str = "best") -> Run:
    """Config, vocabulary and parameters of a run folder (`which`: "best", "latest" or a path)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise TrainingError(f"{run_dir} is not a run folder (no config.json)")
    config = config_lib.from_json((run_dir / "config.json").read_text())
    vocab = data.Vocab.load(run_dir / "vocab.json")
    d = config.data
    tokenizer = data.Tokenizer(level=d.level, split=d.word_split, lowercase=d.lowercase,
                               bos=d.bos or None, eos=d.eos or None)
    lm_config = config_lib.build_lm_config(config, vocab.size)
    path = {"best": checkpoint.best_path(run_dir), "latest": checkpoint.latest_path(run_dir)}.get(
        which, Path(which))
    if which == "best" and not path.exists():
        path = checkpoint.latest_path(run_dir)
    if path is None or not Path(path).exists():
        raise TrainingError(f"{run_dir} has no {which} checkpoint")
    template = init_train_state(jax.random.key(0), lm_config, build_optimizer(config),
                                d.batch_size)
    state, metadata = checkpoint.load_checkpoint(path, template)
    if metadata.get("vocab") not in (None, vocab.fingerprint()):
        raise TrainingError(f"{run_dir / 'vocab.json'} does not match checkpoint {path}")
    return Run(config, lm_config, vocab, tokenizer, state.params, metadata)
