"""The fit loop: one schedule for a run, or for a population of runs trained together.

    setup (nothing written) ─▶ run folder, step-0 checkpoint
      ─▶ [epoch 0: eval at start]
      ─▶ ( steps ─▶ sync metrics ─▶ [checkpoint] ─▶ [epoch end: validation, lr rule, best] )*
      ─▶ [partial epoch scored, when the time budget stopped it] ─▶ close: test, plot, samples

Each member of a population has its own run folder, seed and `HostState`; they share the
data, the steps and the schedule (`jax.vmap` over a leading member axis when there are
several). The loop owns what exact resume depends on: every checkpoint holds the device
state and the `HostState`, including the length of metrics.jsonl at that moment, and is
written *before* the work that follows a step boundary (epoch end, close). A run killed
anywhere is therefore resumed from its newest checkpoint by cutting the log back and
redoing that work, which is deterministic: the resumed run ends with the same bits.

Signals: SIGINT / SIGTERM during the steps finish the current step, save, and raise
`Interrupted`; during evaluation or the close they abandon the work at once (the
checkpoint before it is kept). A second signal abandons at once too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from jax_lm import allocator, checkpoint, data, lr_rules, model, optim, pipeline, population
from jax_lm import config as config_lib
from jax_lm import mesh as mesh_lib
from jax_lm import runs, train
from jax_lm.callbacks import Callback, FitInfo, RunEnd, default_callbacks
from jax_lm.rundir import VOCAB, FollowerRunDir, RunDir, RunFolderError
from jax_lm.train import StepMetrics, TrainingError

PLATEAU_RULES = {"halve_when_loss_rises": lr_rules.HALVE_WHEN_LOSS_RISES,
                 "halve_when_likelihood_drops": lr_rules.HALVE_WHEN_LIKELIHOOD_DROPS,
                 "quarter_when_not_best": lr_rules.QUARTER_WHEN_NOT_BEST}


@dataclasses.dataclass(frozen=True)
class HostState:
    """A member's host-side state, saved in every checkpoint beside the device state."""

    lr: float                        # learning rate of the coming steps
    vocab: str = ""                  # fingerprint of the vocabulary
    epoch: int = 0                   # epochs whose end-of-epoch work is done
    lr_reference: float | None = None  # what a plateau rule compares with
    best_valid: float | None = None  # best end-of-epoch validation NLL
    epoch_nll: float = 0.0           # Σ NLL of this epoch's steps so far
    epoch_tokens: float = 0.0        # Σ tokens of this epoch's steps so far
    train_seconds: float = 0.0       # time spent in steps, over all resumes
    started: bool = True             # eval at start done (or not asked for)
    closed_step: int = -1            # step at which the close (test, plot, samples) was done
    diverged_at: int | None = None   # step whose loss turned non-finite (member frozen since)
    valid_history: tuple = ()        # NT-ASGD: every end-of-epoch validation NLL
    averaging_from: int | None = None  # NT-ASGD: the step after which iterates are averaged
    log_offset: int | None = None    # bytes of metrics.jsonl this state accounts for

    @classmethod
    def from_metadata(cls, metadata: dict) -> HostState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in metadata.items() if k in names})


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped `fit`; `saved` says whether the current step was saved."""

    def __init__(self, signum: int, step: int | None, run_dirs: Sequence[RunDir], saved: bool):
        super().__init__(signum)
        self.signum, self.step, self.run_dirs, self.saved = signum, step, list(run_dirs), saved

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        if self.step is None:
            return "interrupted before training started; nothing was saved"
        resume = " and ".join(f"jax-lm train --resume {d.path}" for d in self.run_dirs)
        kept = "checkpoint saved" if self.saved else "the latest checkpoint is kept"
        return f"interrupted at step {self.step}, {kept}; resume with: {resume}"


class _Abandon(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _Signals:
    """SIGINT/SIGTERM handlers for the duration of a fit (main thread only).

    While `steps` is true a first signal is only recorded (the loop saves, then stops);
    otherwise, or on a second signal, `_Abandon` is raised where the program is.
    """

    def __init__(self):
        self.signum: int | None = None
        self.steps = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        first = self.signum is None
        self.signum = signum
        if not (self.steps and first):
            raise _Abandon(signum)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------- the entry points


def fit(config, workdir, *, resume: bool = False, callbacks: Sequence[Callback] | None = None,
        progress: bool = True, print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """Train as `config` says (a ConfigDict or a resolved `RunConfig`) into `workdir`.

    Returns the final record (scores, steps, seconds, samples). With `resume`, continue
    the run in `workdir` from its newest intact checkpoint; a finished run is left as it
    is. `callbacks=None` uses `callbacks.default_callbacks`.
    """
    return fit_population([config], [workdir], resume=resume, callbacks=callbacks,
                          progress=progress, print_fn=print_fn)[0]


def fit_population(configs: Sequence, workdirs: Sequence, *, resume: bool = False,
                   callbacks: Sequence[Callback] | None = None, progress: bool = True,
                   print_fn: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train several members in one loop, one vmapped step for all; one run folder each.

    The members' configs may differ only in `population.MEMBER_FIELDS` (seed, learning
    rate, clip norm, dropout, init scale, Zaremba decay); with different seeds the batches
    must not depend on the seed (`data.batcher="stream"`). Each member's numbers equal its
    own single run up to float rounding. A member whose loss turns non-finite (with
    `train.on_nonfinite="stop"`) is frozen and reported; the others go on.

    With several processes (`jax.distributed`), every process calls this with the same
    arguments; process 0 holds the folders and writes them, and runs the callbacks.
    """
    configs = [c if isinstance(c, config_lib.RunConfig) else config_lib.resolve(c)
               for c in configs]
    if not configs or len(configs) != len(workdirs):
        raise ValueError("fit_population needs one run folder per config, and at least one")
    population.check_members(configs)
    writer = jax.process_index() == 0
    folders = [(RunDir if writer else FollowerRunDir)(d) for d in workdirs]
    if not writer:
        callbacks, print_fn = [], _silent
    elif callbacks is None:
        names = [f.path.name for f in folders]
        callbacks = default_callbacks(progress=progress, print_fn=print_fn,
                                      level=configs[0].data.level, names=names)
    loop = None
    with _Signals() as signals:
        try:
            with contextlib.ExitStack() as held:
                for folder in folders:
                    held.enter_context(folder.locked(new=not resume))
                loop = _Loop(configs, folders, list(callbacks), signals, print_fn, resume)
                try:
                    return loop.run()
                finally:
                    for callback in loop.callbacks:
                        callback.on_close()
        except _Abandon as stop:
            step = loop.step if loop is not None and loop.begun else None
            raise Interrupted(stop.signum, step, folders, saved=False) from None


def _silent(text: str) -> None:
    pass


# --------------------------------------------------------------------------- the loop


class _Loop:
    """One fit call: its setup (fixed after __init__), its step counter, and its phases.

    The phases take and return the device state (laid out by `self.layout`) and the
    members' `HostState`s; nothing else changes between them but `step`.
    """

    def __init__(self, configs, folders: list[RunDir], callbacks: list[Callback],
                 signals: _Signals, print_fn, resume: bool):
        self.configs, self.folders, self.callbacks = configs, folders, callbacks
        self.signals, self.print, self.resume = signals, print_fn, resume
        self.config = c = configs[0]
        self.size = len(configs)
        self.begun = False
        self.step = 0

        vocab = self._saved_vocab() if resume else None
        self.corpus = pipeline.load_run_corpus(c, vocab)
        if c.train.ntasgd_patience and "valid" not in self.corpus.splits:
            raise config_lib.ConfigError(
                f"train.ntasgd_patience={c.train.ntasgd_patience} watches the validation "
                f"loss, but {self.corpus.source} has no validation split; add a valid.txt "
                "or set train.ntasgd_patience=0")
        self.vocab = self.corpus.vocab
        self.member_lm_configs = [config_lib.build_lm_config(m, self.vocab.size)
                                  for m in configs]
        self.lm_config = population.member_lm_config(self.member_lm_configs[0], configs)
        t = c.train
        self.optimizer = train.build_optimizer(c)
        self.rule = PLATEAU_RULES.get(t.lr_rule)
        self.per_epoch = pipeline.steps_per_epoch(c, self.corpus)
        self.total = t.epochs * self.per_epoch
        if t.max_steps:
            self.total = min(self.total, t.max_steps)
        self.budget = 60.0 * t.time_budget_minutes

        self.processes = jax.process_count()
        self.layout = mesh_lib.Layout(mesh_lib.make_mesh(c.mesh.population, c.mesh.data,
                                                         members=self.size), self.size)
        config_lib.check_memory(c, self.vocab.size,
                                members=self.size // self.layout.mesh.shape["population"])
        self.layout.check_rows("data.batch_size", c.data.batch_size)
        self.layout.check_rows("data.eval_batch_size", c.data.eval_batch_size or
                               c.data.batch_size)
        self.template = self._init_member(0)  # a member's state, for loading checkpoints
        self.state_sharding = self.layout.state(self.template)  # (the tree's structure)
        self._compile_steps()

    def _compile_steps(self) -> None:
        c, layout = self.config, self.layout
        step_fn = train.make_train_step(self.lm_config, self.optimizer, regime=c.train.regime,
                                        window_k=c.train.window_k,
                                        reduction=c.train.loss_reduction, jit=False)
        eval_fn = train.make_eval_step(self.lm_config, jit=False)
        if self.size > 1:
            step_fn = jax.vmap(step_fn, in_axes=(0, None, 0))
            eval_fn = jax.vmap(eval_fn, in_axes=(0, None, 0))
        member, rows = layout.member, layout.rows
        self.train_step = jax.jit(step_fn, donate_argnums=0,
                                  in_shardings=(self.state_sharding, layout.batch, member),
                                  out_shardings=(self.state_sharding, member))
        self.eval_step = jax.jit(eval_fn, in_shardings=(member, layout.batch, rows),
                                 out_shardings=(member, member, rows))

        def with_hyperparams(state, values):
            return state._replace(opt_state=optim.set_hyperparams(state.opt_state, **values))

        self.with_hyperparams = jax.jit(with_hyperparams, donate_argnums=0,
                                        in_shardings=(self.state_sharding, member),
                                        out_shardings=self.state_sharding)

    # ------------------------------------------------------------------ member views

    def member(self, tree, i: int):
        """Member i of a stacked tree (host arrays; a single run's tree as it is)."""
        return tree if self.size == 1 else jax.tree.map(lambda x: x[i], tree)

    def stack(self, trees: list):
        return trees[0] if self.size == 1 else jax.tree.map(lambda *xs: jnp.stack(xs), *trees)

    def per_member(self, values, dtype) -> jax.Array:
        """A value per member ([S], or a scalar for a single run) on the devices."""
        values = np.asarray(values if self.size > 1 else values[0], dtype)
        return self.layout.put(values, self.layout.member)

    def eval_params(self, states):
        """The parameters that are evaluated and kept as the best: NT-ASGD's average (the
        iterate until averaging starts), else the iterate."""
        return optim.evaluation_params(states.opt_state, states.params)

    def log(self, i: int, record: dict[str, Any]) -> None:
        self.folders[i].log(record)
        for callback in self.callbacks:
            callback.on_record(i, record)

    # ------------------------------------------------------------------ setup

    def _saved_vocab(self) -> data.Vocab:
        vocabs = []
        for folder in self.folders:
            if not (folder.path / VOCAB).is_file():
                raise RunFolderError(f"nothing to resume in {folder.path}: it has no {VOCAB}")
            vocabs.append(data.Vocab.load(folder.path / VOCAB))
        if len({v.fingerprint() for v in vocabs}) > 1:
            raise RunFolderError("the members' vocabularies differ; resume them one by one")
        return vocabs[0]

    def _init_member(self, i: int):
        """Member i's initial state, on the host's default device (its own config's init
        scale, learning rate and clip norm: what its single run starts from)."""
        config = self.configs[i]
        state = train.init_train_state(jax.random.key(config.seed), self.member_lm_configs[i],
                                       self.optimizer, config.data.batch_size)
        return state._replace(opt_state=population.member_opt_state(state.opt_state, config))

    def _fresh(self):
        states = self.stack([self._init_member(i) for i in range(self.size)])
        hosts = [HostState(lr=m.train.learning_rate, vocab=self.vocab.fingerprint(),
                           started=not m.train.eval_at_start) for m in self.configs]
        return states, hosts

    def _restore(self, fresh_states, fresh_hosts):
        """The newest intact checkpoint of every member: (states, hosts, warnings).

        A run killed before its first checkpoint (its config and vocabulary written, no
        step saved) starts again from step 0: a fresh start is a function of the config.
        """
        saved = [bool(checkpoint.saved_steps(f.path)) for f in self.folders]
        if not any(saved):
            again = [dataclasses.replace(h, log_offset=0) for h in fresh_hosts]
            return fresh_states, again, [f"{f.path} has no checkpoint yet (its start was cut "
                                         "short); starting it again from step 0"
                                         for f in self.folders]
        states, hosts, notes = [], [], []
        for i, folder in enumerate(self.folders):
            if not saved[i]:
                raise RunFolderError(f"nothing to resume in {folder.path}: it has no checkpoint")
            path, state, metadata, warn = checkpoint.load_latest_intact(folder.path,
                                                                        self.template)
            notes += warn
            host = HostState.from_metadata(metadata)
            if host.vocab and host.vocab != self.vocab.fingerprint():
                raise RunFolderError(f"{folder.path / VOCAB} does not match checkpoint {path}")
            states.append(state)
            hosts.append(host)
        steps = {int(s.step) for s in states}
        if len(steps) > 1:
            raise RunFolderError(f"the members are at different steps {sorted(steps)}; "
                                 "resume them one by one")
        return self.stack(states), hosts, notes

    # ------------------------------------------------------------------ the run

    def run(self) -> list[dict[str, Any]]:
        states, hosts = self._fresh()
        if self.resume:
            states, hosts, notes = self._restore(states, hosts)
            self.step = int(self.member(states, 0).step)
            if all(h.closed_step == self.step for h in hosts) and (
                    self.step >= self.total or self._out_of_time(hosts)):
                return self._already_finished(hosts)
            for note in notes:
                self.print(f"jax-lm: warning: {note}")
            for i, folder in enumerate(self.folders):
                if hosts[i].log_offset is not None:
                    note = folder.cut_log(hosts[i].log_offset)
                    if note:
                        self.print(f"jax-lm: warning: {note}")
                folder.remove_orphans()
                text = config_lib.to_json(self.configs[i].to_configdict())
                if text != folder.read_config_text():
                    folder.write_config(text)
            states = self.layout.put(states, self.state_sharding)
            if not checkpoint.saved_steps(self.folders[0].path):
                hosts = self._save(states, hosts)
            self.print(f"resuming {', '.join(str(f.path) for f in self.folders)} at step "
                       f"{self.step} (epoch {hosts[0].epoch + 1})")
        else:
            for i, folder in enumerate(self.folders):
                folder.write_vocab(self.vocab)
                folder.write_config(config_lib.to_json(self.configs[i].to_configdict()))
            states = self.layout.put(states, self.state_sharding)
            hosts = self._save(states, hosts)
            for folder in self.folders:
                folder.started()
        self.begun = True
        info = FitInfo(tuple(self.folders), self.step, self.total, self.per_epoch,
                       self._summary())
        for callback in self.callbacks:
            callback.on_start(info)
        try:
            states, hosts = self._train(states, hosts)
            return self._close(states, hosts)
        except (_Abandon, Interrupted):
            raise
        except KeyboardInterrupt:  # e.g. raised by a callback or a data iterator
            raise _Abandon(signal.SIGINT) from None

    def _summary(self) -> str:
        c, lm = self.config, self.lm_config
        who = "" if self.size == 1 else f"{self.size} members at once (vmap), "
        mesh = self.layout.mesh.shape
        return (f"jax_lm: {self.corpus.source} ({c.data.level}, vocab {self.vocab.size}, "
                f"{len(self.corpus.splits['train']):,} train tokens), {who}{c.model.cell} "
                f"{lm.layers_text}, "
                f"{model.num_params(self.template.params):,} params, "
                f"{self.per_epoch} steps/epoch, mesh {mesh['population']}×{mesh['data']} "
                f"(population × data) of {mesh_lib.describe_devices()}, "
                f"malloc {allocator.describe()}")

    def _already_finished(self, hosts) -> list[dict[str, Any]]:
        results = []
        for folder in self.folders:
            finals = [r for r in folder.records() if r.get("final")]
            results.append(finals[-1] if finals else {})
        why = ("the time budget is spent; raise train.time_budget_minutes to go on"
               if self.step < self.total else "raise train.epochs or train.max_steps to go on")
        self.print(f"{', '.join(str(f.path) for f in self.folders)} already finished at step "
                   f"{self.step}; nothing changed ({why})")
        return results

    def _out_of_time(self, hosts) -> bool:
        return self.budget > 0 and hosts[0].train_seconds >= self.budget

    def _controls(self, hosts) -> train.Controls:
        rates = population.dropout_rates(self.configs)
        live = self.per_member([h.diverged_at is None for h in hosts], bool)
        dtype = jnp.dtype(self.lm_config.param_dtype)
        return train.Controls(live, None if rates is None else self.per_member(rates, dtype))

    def _train(self, states, hosts):
        t = self.config.train
        batches = None
        while True:
            self.signals.steps = False  # evaluation phases are abandoned at a signal
            if hosts[0].epoch == 0 and not hosts[0].started:
                states, hosts = self._evaluate_at_start(states, hosts)
                hosts = self._save(states, hosts)
            if self.step > 0 and self.step % self.per_epoch == 0 and \
                    hosts[0].epoch < self.step // self.per_epoch:
                states, hosts = self._end_epoch(states, hosts)
                hosts = self._save(states, hosts)
            if self.step >= self.total or self._out_of_time(hosts):
                return states, hosts
            self.signals.steps = True  # steps are finished and saved at a signal
            if batches is None:
                batches = self._batches(pipeline.train_batches(self.config, self.corpus,
                                                               self.step))
            controls = self._controls(hosts)
            window, steps = None, 0
            start = time.perf_counter()
            while True:  # the steps up to the next host sync
                states, metrics = self.train_step(states, next(batches), controls)
                window = metrics if window is None else window + metrics
                self.step += 1
                steps += 1
                due = (self.step % self.per_epoch == 0 or self.step == self.total
                       or (t.checkpoint_every and self.step % t.checkpoint_every == 0))
                timed_out = self.budget > 0 and (
                    hosts[0].train_seconds + time.perf_counter() - start >= self.budget)
                if due or steps == t.log_every or (self.processes == 1 and (
                        timed_out or self.signals.signum is not None)):
                    break
            window = self.layout.fetch(window)  # waits for the steps: time them
            elapsed, timed_out, signum = self._agree(time.perf_counter() - start, timed_out,
                                                     self.signals.signum)
            hosts = self._sync(window, steps, elapsed, hosts)
            if self.processes == 1:  # also a signal sent during the sync (by a callback)
                signum = self.signals.signum
            if due or timed_out or signum is not None:
                hosts = self._save(states, hosts)
            if signum is not None:
                raise Interrupted(signum, self.step, self.folders, saved=True)
            if timed_out:
                self.print(f"\ntime budget of {t.time_budget_minutes:g} min spent at step "
                           f"{self.step} (epoch {hosts[0].epoch + 1}, "
                           f"{self.step % self.per_epoch}/{self.per_epoch} steps)")

    def _agree(self, elapsed: float, timed_out: bool, signum: int | None):
        """With several processes, one decision for all at a sync: process 0's time, and
        stop when the budget is spent or a signal came for any of them (SLURM signals
        the tasks one by one); the steps in between run without a collective."""
        if self.processes == 1:
            return elapsed, timed_out, signum
        mine = np.array([elapsed, timed_out, signum or 0], np.float64)
        every = np.asarray(multihost_utils.process_allgather(mine))  # [processes, 3]
        signum = int(every[:, 2].max()) or None
        return float(every[0, 0]), bool(every[:, 1].any()), signum

    def _batches(self, batches):
        return pipeline.prefetch_to_device(
            batches, put=lambda batch: self.layout.put(batch, self.layout.batch))

    def _save(self, states, hosts) -> list[HostState]:
        """A step checkpoint of every member, holding its metrics.jsonl length."""
        states = self.layout.fetch(states)
        saved = []
        for i, folder in enumerate(self.folders):
            state = self.member(states, i)
            if not checkpoint.all_finite(state.params):
                raise TrainingError(f"the parameters of step {self.step} are not finite; they "
                                    f"were not saved (latest checkpoint: "
                                    f"{folder.latest_checkpoint()}). Lower train.learning_rate")
            host = dataclasses.replace(hosts[i], log_offset=folder.log_size())
            folder.save_step(self.step, state, dataclasses.asdict(host),
                             keep=self.config.train.keep_checkpoints)
            saved.append(host)
        return saved

    def _sync(self, window, steps: int, elapsed: float, hosts) -> list[HostState]:
        """Log the summed step metrics (host arrays) of every member; catch NaN/inf."""
        out = []
        for i, host in enumerate(hosts):
            if host.diverged_at is not None:  # frozen: nothing to log
                out.append(dataclasses.replace(host, train_seconds=host.train_seconds + elapsed))
                continue
            m = StepMetrics(*self.member(tuple(window), i))
            nll, tokens = float(m.nll), float(m.tokens)
            bad, first_bad = int(m.nonfinite), int(m.first_nonfinite)
            if bad and self.config.train.on_nonfinite == "stop":
                host = self._diverged(i, host, first_bad + 1)
            host = dataclasses.replace(host, epoch_nll=host.epoch_nll + nll,
                                       epoch_tokens=host.epoch_tokens + tokens,
                                       train_seconds=host.train_seconds + elapsed)
            record = dict(step=self.step, epoch=host.epoch + 1, train_loss=nll / max(tokens, 1.0),
                          tokens_per_s=tokens / elapsed, lr=float(f"{host.lr:.7g}"))
            if bad:
                record["skipped_nonfinite"] = bad
            self.log(i, record)
            out.append(host)
        if all(h.diverged_at is not None for h in out) and self.size > 1:
            raise TrainingError("every member's loss turned non-finite; training stopped. "
                                "Lower train.learning_rate")
        return out

    def _diverged(self, i: int, host: HostState, step: int) -> HostState:
        """A single run stops; a population member is frozen and reported."""
        if self.size == 1:
            last = self.folders[i].latest_checkpoint()
            kept = (f"kept checkpoint {last} (finite parameters)" if last else
                    "no checkpoint was written yet")
            raise TrainingError(
                f"non-finite loss or gradient at step {step} (epoch {host.epoch + 1}); "
                f"training stopped, {kept}. Lower train.learning_rate, or set "
                "train.on_nonfinite='skip'")
        self.print(f"\njax-lm: warning: {self.folders[i].path.name}: non-finite loss or "
                   f"gradient at step {step}; this member is frozen (its non-finite steps "
                   "were skipped), the others go on")
        self.log(i, {"step": self.step, "epoch": host.epoch + 1, "diverged_at": step})
        return dataclasses.replace(host, diverged_at=step)

    def _evaluate(self, params, split: str) -> list[dict[str, float]]:
        """Scores of every member's params (laid out on the devices) on `split`."""
        totals = carry = None
        for batch in self._batches(pipeline.eval_batches(self.config, self.corpus, split)):
            if carry is None:
                carry = model.init_carry(self.lm_config, batch.inputs.shape[0])
                carry = self.layout.put(self.stack([carry] * self.size), self.layout.rows)
            nll, count, carry = self.eval_step(params, batch, carry)
            totals = (nll, count) if totals is None else (totals[0] + nll, totals[1] + count)
        nll, count = (np.atleast_1d(x) for x in self.layout.fetch(totals))
        return [train.scores(float(nll[i]), float(count[i])) for i in range(self.size)]

    def _watched(self, params, records: list[dict]) -> list[float]:
        """The numbers a plateau rule compares, as losses (lower is better)."""
        metric = self.config.train.lr_rule_metric
        if metric == "train_eval":
            return [s["nll"] for s in self._evaluate(params, "train")]
        key = {"valid": "valid_nll", "train": "train_nll"}[metric]
        if records[0].get(key) is None:
            raise config_lib.ConfigError("train.lr_rule_metric='valid' needs a validation "
                                         "split; this corpus has none (use 'train')")
        return [r[key] for r in records]

    def _evaluate_at_start(self, states, hosts):
        """Epoch-0 scores of the initial parameters (001 evaluates before it trains)."""
        records = [{"epoch": 0, "step": 0} for _ in hosts]
        if "valid" in self.corpus.splits:
            for record, valid in zip(records, self._evaluate(self.eval_params(states),
                                                             "valid")):
                record.update(valid_nll=valid["nll"], valid_ppl=valid["ppl"],
                              valid_bits=valid["bits"])
        if self.rule is not None and self.config.train.lr_rule_metric != "train":
            watched = self._watched(self.eval_params(states), records)
            for i, host in enumerate(hosts):
                records[i]["lr_rule_metric"] = watched[i]
                hosts[i] = dataclasses.replace(
                    host, lr_reference=-watched[i] if self.rule.mode == "max" else watched[i])
        for i, record in enumerate(records):
            self.log(i, record)
        return states, [dataclasses.replace(h, started=True) for h in hosts]

    def _end_epoch(self, states, hosts):
        """Validation, the learning-rate rule, NT-ASGD's trigger, the best checkpoint, for
        every member."""
        records = []
        for host in hosts:
            train_nll = host.epoch_nll / max(host.epoch_tokens, 1.0)
            records.append({"epoch": host.epoch + 1, "step": self.step, "train_nll": train_nll,
                            "train_ppl": train.perplexity(train_nll)})
        best = [h.best_valid for h in hosts]
        params = self.eval_params(states)
        if "valid" in self.corpus.splits:
            improved = []
            for i, valid in enumerate(self._evaluate(params, "valid")):
                records[i].update(valid_nll=valid["nll"], valid_ppl=valid["ppl"],
                                  valid_bits=valid["bits"])
                if math.isfinite(valid["nll"]) and (best[i] is None or valid["nll"] < best[i]):
                    best[i] = valid["nll"]
                    improved.append(i)
            if improved:
                self._save_best(states, hosts, improved)
        watched = (self._watched(params, records)
                   if self.rule is not None and self.config.train.lr_rule != "zaremba" else None)
        out = []
        for i, host in enumerate(hosts):
            t, epoch = self.configs[i].train, host.epoch + 1
            lr, reference = host.lr, host.lr_reference
            if t.lr_rule == "zaremba":
                lr = lr_rules.zaremba_decay(t.learning_rate, epoch + 1, start=t.lr_decay_start,
                                            decay=t.lr_decay)
            elif watched is not None:
                value = -watched[i] if self.rule.mode == "max" else watched[i]
                plateau = self.rule.update(lr_rules.PlateauState(lr, reference), value)
                lr, reference = plateau.learning_rate, plateau.reference
                records[i]["lr_rule_metric"] = value
            records[i]["next_lr"] = lr
            history, since = host.valid_history, host.averaging_from
            if t.ntasgd_patience and "valid_nll" in records[i]:
                value = records[i]["valid_nll"]
                if since is None and lr_rules.nt_trigger(list(history), value,
                                                         t.ntasgd_patience):
                    since = self.step
                    records[i]["averaging_from"] = since
                    self.print(f"\n{self.folders[i].path.name}: validation stopped improving "
                               f"(NT-ASGD): averaging the iterates from step {since} on")
                history = (*history, value)
            out.append(dataclasses.replace(host, epoch=epoch, lr=lr, lr_reference=reference,
                                           best_valid=best[i], epoch_nll=0.0, epoch_tokens=0.0,
                                           valid_history=history, averaging_from=since))
            self.log(i, records[i])
        hyper = self.template.opt_state.hyperparams
        values = {"learning_rate": self.per_member([h.lr for h in out],
                                                   hyper["learning_rate"].dtype)}
        if "average" in hyper:
            values["average"] = self.per_member([h.averaging_from is not None for h in out],
                                                hyper["average"].dtype)
        return self.with_hyperparams(states, values), out

    def _save_best(self, states, hosts, members) -> None:
        """The best checkpoint of each of `members`, holding the parameters it was scored
        with (NT-ASGD: the average) in place of the iterate."""
        host_states = self.layout.fetch(states)
        host_states = host_states._replace(params=self.eval_params(host_states))
        for i in members:
            self.folders[i].save_best(self.member(host_states, i), dataclasses.asdict(hosts[i]))

    def _close(self, states, hosts) -> list[dict[str, Any]]:
        """Score the last partial epoch (time budget), then test, plot and sample."""
        if self.step % self.per_epoch != 0 and "valid" in self.corpus.splits:
            # Logged, and kept as the best only when no epoch has ended yet: the best
            # checkpoint stays an end-of-epoch one, as in a run never stopped.
            first = []
            for i, valid in enumerate(self._evaluate(self.eval_params(states), "valid")):
                host = hosts[i]
                self.log(i, {"epoch": host.epoch + 1, "step": self.step, "partial_epoch": True,
                             "valid_nll": valid["nll"], "valid_ppl": valid["ppl"],
                             "valid_bits": valid["bits"]})
                if host.best_valid is None and math.isfinite(valid["nll"]):
                    first.append(i)
            if first:
                self._save_best(states, hosts, first)
        host_states = self.layout.fetch(states)
        if self.processes > 1:  # process 0 has written the best checkpoints read below
            multihost_utils.sync_global_devices("jax_lm: best checkpoints written")
        finals = []  # every member's best params (or its last, without a best checkpoint)
        for i, folder in enumerate(self.folders):
            best = checkpoint.best_path(folder.path)
            finals.append(checkpoint.load_checkpoint(best, self.template)[0].params
                          if best.exists() else self.eval_params(self.member(host_states, i)))
        params = self.layout.put(self.stack(finals), self.layout.member)
        results = [{"step": self.step, "num_params": model.num_params(finals[i]),
                    "train_seconds": round(h.train_seconds, 1)} for i, h in enumerate(hosts)]
        for i, host in enumerate(hosts):
            if host.diverged_at is not None:
                results[i]["diverged_at"] = host.diverged_at
        for split in ("valid", "test"):
            if split in self.corpus.splits and (split == "valid" or self.config.train.eval_test):
                for i, scores in enumerate(self._evaluate(params, split)):
                    results[i].update({f"{split}_{k}": v for k, v in scores.items()})
        for i, (folder, result) in enumerate(zip(self.folders, results)):
            self.log(i, {"final": True, **result})
            run = runs.Run(self.configs[i], self.member_lm_configs[i], self.vocab,
                           self.corpus.tokenizer, finals[i], {}, folder.path)
            end = RunEnd(folder, run, folder.records(), result)
            for callback in self.callbacks:
                callback.on_end(i, end)
        self._save(states, [dataclasses.replace(h, closed_step=self.step) for h in hosts])
        return results
