"""Several seeds of one config trained at once, every step `jax.vmap`ped over a seed axis.

Runs that differ only in `seed` read the same batches when the batcher is "stream" (its
windows do not depend on the seed), so S of them can take each step together: the
training state gets a leading axis S (params, optimizer state, dropout key, carry), the
batch is shared, and every [B, ·] matmul becomes S of them in one batched call::

    states = vmap(init_train_state)(keys [S])           # leaves [S, ...]
    states, metrics = vmap(train_step, (0, None))(states, batch)

Everything around the steps is the single-run code applied to each seed's slice of the
state: per-seed run folders with the same files, validation, learning-rate rules and best
checkpoint at each epoch end, step checkpoints (an interrupted seed resumes on its own with
`jax-lm train --resume`), and the final test, plot and samples. Each seed's numbers equal
its single run up to float rounding (tests/test_multiseed.py).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from jax_lm import checkpoint
from jax_lm import config as config_lib
from jax_lm import train


def seed_slice(tree, i: int):
    """Seed i's part of a tree whose leaves have a leading seed axis."""
    return jax.tree.map(lambda x: x[i], tree)


def stack_seeds(trees: list):
    """The inverse of `seed_slice`: one tree with a leading seed axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def check_supported(config: ml_collections.ConfigDict) -> None:
    """Raise `ConfigError` unless the seeds of `config` can be trained together."""
    if config.data.batcher != "stream":
        raise config_lib.ConfigError(
            f"training seeds together needs data.batcher='stream' (its batches do not depend "
            f"on the seed); got {config.data.batcher!r}")
    for key in ("time_budget_minutes", "eval_at_start", "checkpoint_every"):
        if config.train[key]:
            raise config_lib.ConfigError(f"train.{key} is not supported when training seeds "
                                         "together; train them one by one")


def train_seeds(config: ml_collections.ConfigDict, seeds: list[int],
                run_dirs: list[str | os.PathLike], *,
                print_fn: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train `config` once per seed, all seeds in each vmapped step; one run folder each.

    Returns each seed's final metrics, as `train.train_and_evaluate` does. Run folders must
    be new (a partly trained seed is resumed alone with `train_and_evaluate(resume=True)`).
    """
    if len(seeds) != len(run_dirs) or not seeds:
        raise ValueError("train_seeds needs one run folder per seed, and at least one seed")
    check_supported(config)
    t = config.train
    run_dirs = [Path(d) for d in run_dirs]
    for run_dir in run_dirs:
        if checkpoint.saved_steps(run_dir) or checkpoint.best_path(run_dir).exists():
            raise train.TrainingError(f"{run_dir} already holds a run; resume it alone with "
                                      "'jax-lm train --resume' (nothing was overwritten)")
    configs = []
    for seed in seeds:
        c = config_lib.from_json(config_lib.to_json(config))
        c.seed = seed
        configs.append(c)

    corpus = train.load_run_corpus(config)
    lm_config = config_lib.build_lm_config(config, corpus.vocab.size)
    optimizer = train.build_optimizer(config)
    lr_rule = train.make_lr_rule(config)
    per_epoch = train.steps_per_epoch(config, corpus)
    total_steps = t.epochs * per_epoch if not t.max_steps else min(t.epochs * per_epoch,
                                                                   t.max_steps)
    batch_size = config.data.batch_size
    keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
    states = jax.vmap(lambda k: train.init_train_state(k, lm_config, optimizer,
                                                       batch_size))(keys)
    hosts, logs = [], []
    for c, run_dir in zip(configs, run_dirs):
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(config_lib.to_json(c))
        corpus.vocab.save(run_dir / "vocab.json")
        hosts.append({"epoch": 0, "lr": t.learning_rate, "lr_reference": None,
                      "best_valid": None, "epoch_nll": 0.0, "epoch_tokens": 0.0,
                      "train_seconds": 0.0, "vocab": corpus.vocab.fingerprint()})
        logs.append(train._Logger(run_dir))

    step_fn = train.make_train_step(lm_config, optimizer, regime=t.regime,
                                    window_k=t.window_k, reduction=t.loss_reduction, jit=False)
    vstep = jax.jit(jax.vmap(step_fn, in_axes=(0, None)), donate_argnums=0)
    eval_step = train.make_eval_step(lm_config)
    print_fn(f"jax_lm: {len(seeds)} seeds {list(seeds)} at once (vmap), {config.model.cell} "
             f"{lm_config.num_layers}×{lm_config.hidden_size}, {per_epoch} steps/epoch")
    bar = train._progress(total_steps, 0, enabled=False)

    batches = train.prefetch_to_device(train.train_batches(config, corpus, 0))
    window = None
    window_start, window_steps = time.perf_counter(), 0
    for step in range(1, total_steps + 1):
        states, metrics = vstep(states, next(batches))
        window = metrics if window is None else window + metrics  # elementwise per seed
        window_steps += 1
        end_of_epoch = step % per_epoch == 0
        if not (window_steps == t.log_every or end_of_epoch or step == total_steps):
            continue
        window = jax.block_until_ready(window)  # the steps are done: time them
        elapsed = time.perf_counter() - window_start
        slices = [seed_slice(states, i) for i in range(len(seeds))]
        for i in range(len(seeds)):
            hosts[i] = train._sync_metrics(
                train.StepMetrics(*seed_slice(window, i)), window_steps, elapsed, slices[i],
                hosts[i], logs[i], bar, run_dirs[i], t.on_nonfinite)
            if end_of_epoch:
                slices[i], hosts[i] = train._end_epoch(
                    configs[i], corpus, lm_config, slices[i], hosts[i], lr_rule, eval_step,
                    logs[i], run_dirs[i], print_fn=lambda msg, s=seeds[i]: print_fn(
                        f"seed {s}: {msg}"))
            if end_of_epoch or step == total_steps:
                checkpoint.save_step(run_dirs[i], step, slices[i], hosts[i],
                                     keep=t.keep_checkpoints)
        if end_of_epoch:  # the learning-rate rules may have changed some seeds' rates
            states = stack_seeds(slices)
        window, window_steps, window_start = None, 0, time.perf_counter()
    bar.close()

    results = []
    for i in range(len(seeds)):
        results.append(train._finish(configs[i], corpus, lm_config, seed_slice(states, i),
                                     hosts[i], eval_step, logs[i], run_dirs[i],
                                     print_fn=lambda msg, s=seeds[i]: print_fn(f"seed {s}: {msg}")))
    return results
