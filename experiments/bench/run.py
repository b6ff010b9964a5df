"""Training, evaluation and sampling speed of jax_lm against PyTorch, flax and NumPy.

    pip install -r experiments/bench/requirements.txt     # torch, for the PyTorch peer only
    python experiments/bench/run.py --quick               # < 10 minutes on 2 cores
    python experiments/bench/run.py                       # more and longer rounds
    python experiments/bench/run.py --only zaremba_small,tutorial_step
    python experiments/bench/run.py --ablations           # jax_lm's speed options, one by one
    JAX_LM_TUNE_MALLOC=0 python experiments/bench/run.py  # glibc's malloc defaults
    python experiments/bench/breakdown.py                 # a step piece by piece, vs PyTorch
    python experiments/bench/ab.py HEAD~1                 # this tree against a git revision
    python experiments/bench/run.py --quick --matmul-precision tf32   # GPU: allow TF32 in both

On a GPU (JAX's default backend) everything but NumPy runs on it: PyTorch's peer moves to
CUDA (and is left out, with a note, where its build has no CUDA), timers wait for the device
(`block_until_ready`, `torch.cuda.synchronize`), and float32 matmuls are full float32 in
both libraries unless `--matmul-precision tf32` lets both use TF32 tensor cores.

Like `jax-lm`, the script re-executes itself with `jax_lm.allocator.TUNABLES` (glibc
malloc settings that stop XLA:CPU from page-faulting its temporary buffers every step);
the one process runs every implementation, so PyTorch, flax and NumPy run under them too.

What is measured (all float32 unless said otherwise; one process):

- **train**: tokens/s of a full training step (forward, backward, global-norm clipping at 5,
  SGD), state carried from step to step (truncated BPTT). jax_lm runs its own jitted
  `train.make_train_step` with its default `LMConfig`; PyTorch runs `nn.LSTM/GRU/RNN`
  (cuDNN-style fused layers, `clip_grad_norm_`, `optim.SGD`); flax runs `nn.RNN` with its
  own cells (OptimizedLSTMCell, GRUCell, SimpleCell; it has no CIFG cell) and optax.
- **eval**: tokens/s of the forward pass and the summed NLL, no gradient.
- **sample**: tokens/s of `jax_lm.sample.generate` (one compiled scan) against
  `generate_python_loop` (one jitted step per token) on the same model and keys.
- **tutorial_step**: 001's SGD step (vocabulary 8,000, hidden 100, one 45-word sentence,
  per-output truncation k = 4): jax_lm's jitted "window" step in float32 against the
  document's step in NumPy float64 (`tests.oracles.tutorial_rnn.sgd_step`).

Method: every implementation is compiled and warmed up, then timed in rounds that
alternate between implementations (the order rotates each round), so that load from other
processes on the machine falls on all of them alike; a round starts with one untimed call
(the first call after a switch can be slower) and then runs enough steps to last
`min_seconds`. The tables give the median over rounds and the range (min–max).

FLOPs count the matmuls only (2·m·k·n each; a training step is the forward matmuls plus
the two products of each in the backward pass). The ceiling is the step time if every
matmul of the step ran at the best float32 rate measured here, in this run, for its exact
shape (row-major operands; XLA or PyTorch/MKL, whichever is faster); the per-timestep
recurrent matmuls are measured as a loop of T products of their [B, ·] shape.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import importlib
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # jax_lm and tests.oracles from this checkout

from jax_lm import allocator  # noqa: E402

if __name__ == "__main__":  # as `jax-lm` does: glibc malloc tunables, for every peer alike
    allocator.reexec_with_tuned_malloc()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jax_lm import batching, cells, model, optim, sample, train  # noqa: E402

try:  # the PyTorch peer is optional: experiments/bench/requirements.txt
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

TORCH_DEVICE = "cpu"  # "cuda" when JAX runs on a GPU and PyTorch has CUDA (set by `main`)


def torch_sync() -> None:
    """Wait for PyTorch's queued GPU work (a no-op on CPU), as `block_until_ready` does."""
    if TORCH_DEVICE == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class Bench:
    """One benchmarked model and batch shape."""

    name: str
    vocab: int
    hidden: int
    layers: int = 2
    batch: int = 20
    steps: int = 20        # unroll T: tokens per row and step
    cell: str = "lstm"
    dropout: float = 0.0

    @property
    def tokens(self) -> int:
        return self.batch * self.steps


TRAIN = [
    Bench("zaremba_small", 10_000, 200),
    Bench("zaremba_medium", 10_000, 650, steps=35),
    Bench("zaremba_medium_dropout", 10_000, 650, steps=35, dropout=0.5),
    Bench("char_2x512", 65, 512, batch=64, steps=128),  # Tiny Shakespeare's 65 characters
    *[Bench(f"small_{c}", 10_000, 200, cell=c) for c in ("rnn", "lstm", "cifg", "gru")],
]
EVAL = ["zaremba_small", "zaremba_medium"]
HEADLINE = ["zaremba_small", "zaremba_medium"]
BUSY = 0.15  # other processes using ≥ this share of all cores during the run: flagged
TUTORIAL = dict(vocab=8_000, hidden=100, words=45, k=4, learning_rate=0.005)


def tiny(b: Bench) -> Bench:
    """The same model family at toy size, for the smoke test."""
    return dataclasses.replace(b, vocab=min(b.vocab, 50), hidden=8, batch=2, steps=5)


GATES = {"rnn": 1, "lstm": 4, "cifg": 3, "gru": 3}


def matmuls(b: Bench, training: bool = True) -> list[tuple[str, int, int, int, int]]:
    """The matmuls of one step: (what, m, k, n, times) for an [m, k] @ [k, n] product."""
    n, h, g = b.tokens, b.hidden, GATES[b.cell] * b.hidden
    out = []
    for _ in range(b.layers):
        out += [("input projection", n, h, g, 1), ("recurrent, per step", b.batch, h, g, b.steps)]
        if training:
            out += [("dW_x", h, n, g, 1), ("dx", n, g, h, 1),
                    ("dh, per step", b.batch, g, h, b.steps), ("dW_h", h, n, g, 1)]
    out += [("output projection", n, h, b.vocab, 1)]
    if training:
        out += [("dW_out", h, n, b.vocab, 1), ("dh_out", n, b.vocab, h, 1)]
    return out


def flops(mms) -> float:
    return float(sum(2 * m * k * n * t for _, m, k, n, t in mms))


# ----------------------------------------------------------------------------- timing


def alternate(runs: dict[str, Callable[[int], None]], units: float, rounds: int,
              min_seconds: float) -> dict[str, list[float]]:
    """Rates (units per second) of each `run(n)` over alternating rounds.

    `run(n)` performs n calls and waits for their results; each yields `units` (tokens,
    steps). The first call compiles; one more calibrates how many calls fill a round.
    Each round starts with one untimed call: the first call after another implementation
    ran can be slower than the next ones (measured per call at Zaremba medium: PyTorch
    +36 ms over 248, flax +270 ms over 408; char: flax +500 ms over 1,165), and a training
    run never switches, so the rates are those of back-to-back steps.
    """
    calls = {}
    for name, run in runs.items():
        run(1)
        start = time.perf_counter()
        run(1)
        calls[name] = max(1, math.ceil(min_seconds / max(time.perf_counter() - start, 1e-6)))
    rates: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    for r in range(rounds):
        for name in order[r % len(order):] + order[: r % len(order)]:
            runs[name](1)                                              # untimed: warm-up
            start = time.perf_counter()
            runs[name](calls[name])
            rates[name].append(units * calls[name] / (time.perf_counter() - start))
    return rates


def summary(rates: list[float]) -> tuple[float, float, float]:
    return statistics.median(rates), min(rates), max(rates)


# ----------------------------------------------------------------------------- data


def random_batch(b: Bench, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed random tokens and targets [B, T] (speed does not depend on the values)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, b.vocab, (b.batch, b.steps), dtype=np.int32),
            rng.integers(0, b.vocab, (b.batch, b.steps), dtype=np.int32))


def _lm_batch(b: Bench, lib) -> batching.Batch:
    inputs, targets = random_batch(b)
    return jax.device_put(lib.batching.Batch(inputs, targets, np.ones(inputs.shape, np.float32),
                                             np.zeros(b.batch, bool)))


# ----------------------------------------------------------------------------- jax_lm


def library(package=None) -> types.SimpleNamespace:
    """jax_lm's modules, or those of another copy of the package (`ab.py` imports an older
    revision under another name)."""
    names = ("batching", "cells", "model", "optim", "train")
    if package is None:
        return types.SimpleNamespace(batching=batching, cells=cells, model=model, optim=optim,
                                     train=train)
    return types.SimpleNamespace(**{m: importlib.import_module(f"{package.__name__}.{m}")
                                    for m in names})


def jax_lm_config(b: Bench, lib=None, **options) -> model.LMConfig:
    """Library defaults except the model's shape (and any `options` given)."""
    lib = lib or library()
    return lib.model.LMConfig(vocab_size=b.vocab, cell=lib.cells.make_cell(b.cell),
                              num_layers=b.layers, hidden_size=b.hidden, dropout=b.dropout,
                              **options)


def jax_lm_train(b: Bench, lib=None, **options) -> Callable[[int], None]:
    lib = lib or library()
    config = jax_lm_config(b, lib, **options)
    optimizer = lib.optim.make_optimizer("sgd", 1.0, clip_norm=5.0)
    step = lib.train.make_train_step(config, optimizer)
    state = [lib.train.init_train_state(jax.random.key(0), config, optimizer, b.batch)]
    batch = _lm_batch(b, lib)

    def run(n):
        s = state[0]
        for _ in range(n):
            s, _ = step(s, batch)
        state[0] = jax.block_until_ready(s)

    return run


def jax_lm_eval(b: Bench, lib=None) -> Callable[[int], None]:
    lib = lib or library()
    config = jax_lm_config(b, lib)
    params = lib.model.init_lm(jax.random.key(0), config)
    step = lib.train.make_eval_step(config)
    batch, carry = _lm_batch(b, lib), [lib.model.init_carry(config, b.batch)]

    def run(n):
        c = carry[0]
        for _ in range(n):
            nll, _, c = step(params, batch, c)
        carry[0] = jax.block_until_ready(c)

    return run


# ----------------------------------------------------------------------------- flax


def flax_train_and_eval(b: Bench):
    """(train run, eval run) of the same model written with flax.linen's own cells."""
    import flax.linen as nn

    cell_cls = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell, "rnn": nn.SimpleCell}[b.cell]

    class FlaxLM(nn.Module):
        @nn.compact
        def __call__(self, tokens, carries, train: bool):
            x = nn.Embed(b.vocab, b.hidden)(tokens)                          # (B, T, H)
            new = []
            for layer in range(b.layers):
                x = nn.Dropout(b.dropout, deterministic=not train)(x)
                carry, x = nn.RNN(cell_cls(b.hidden), return_carry=True)(
                    x, initial_carry=carries[layer])
                new.append(carry)
            x = nn.Dropout(b.dropout, deterministic=not train)(x)
            return nn.Dense(b.vocab)(x), tuple(new)

    lm = FlaxLM()
    zeros = jnp.zeros((b.batch, b.hidden), jnp.float32)
    carries = tuple(((zeros, zeros) if b.cell == "lstm" else zeros) for _ in range(b.layers))
    inputs, targets = (jnp.asarray(a) for a in random_batch(b))
    params = lm.init(jax.random.key(0), inputs, carries, train=False)["params"]
    tx = optax.chain(optax.clip_by_global_norm(5.0), optax.sgd(1.0))

    def loss_fn(params, carries, key):
        logits, carries = lm.apply({"params": params}, inputs, carries, train=True,
                                   rngs={"dropout": key})
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean(), carries

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def train_step(params, opt_state, carries, step):
        key = jax.random.fold_in(jax.random.key(1), step)
        grads, carries = jax.grad(loss_fn, has_aux=True)(params, carries, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, carries

    @jax.jit
    def eval_step(params, carries):
        logits, carries = lm.apply({"params": params}, inputs, carries, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).sum(), carries

    # The train step donates its state: it gets copies, so the eval step can share nothing.
    state = [jax.tree.map(jnp.copy, params), tx.init(params), jax.tree.map(jnp.copy, carries), 0]
    eval_params = params

    def run_train(n):
        p, o, c, k = state
        for _ in range(n):
            p, o, c = train_step(p, o, c, k)
            k += 1
        state[:] = [*jax.block_until_ready((p, o, c)), k]

    def run_eval(n):
        c = carries
        for _ in range(n):
            _, c = eval_step(eval_params, c)
        jax.block_until_ready(c)

    return run_train, run_eval


# ----------------------------------------------------------------------------- PyTorch


def torch_train_and_eval(b: Bench):
    """(train run, eval run) of the same model with PyTorch's fused recurrent layers."""
    nn = torch.nn
    layer_cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[b.cell]

    class TorchLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(b.vocab, b.hidden)
            self.drop = nn.Dropout(b.dropout)
            self.rnn = layer_cls(b.hidden, b.hidden, b.layers, dropout=b.dropout)
            self.out = nn.Linear(b.hidden, b.vocab)

        def forward(self, tokens, carry):                                    # tokens (T, B)
            h, carry = self.rnn(self.drop(self.embed(tokens)), carry)
            return self.out(self.drop(h)), carry

    torch.manual_seed(0)  # the peer's own initialisation; jax_lm never seeds globally
    lm = TorchLM().to(TORCH_DEVICE)
    sgd = torch.optim.SGD(lm.parameters(), lr=1.0)
    inputs, targets = (torch.from_numpy(a.T.copy()).long().to(TORCH_DEVICE)
                       for a in random_batch(b))
    zeros = torch.zeros(b.layers, b.batch, b.hidden, device=TORCH_DEVICE)
    carry0 = (zeros, zeros.clone()) if b.cell == "lstm" else zeros
    state = [carry0]

    def detach(carry):  # truncated BPTT: PyTorch's repackage_hidden
        return tuple(c.detach() for c in carry) if isinstance(carry, tuple) else carry.detach()

    def run_train(n):
        lm.train()
        carry = state[0]
        for _ in range(n):
            logits, carry = lm(inputs, detach(carry))
            loss = nn.functional.cross_entropy(logits.reshape(-1, b.vocab), targets.reshape(-1))
            sgd.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(lm.parameters(), 5.0)
            sgd.step()
        state[0] = detach(carry)
        torch_sync()

    def run_eval(n):
        lm.eval()
        carry = carry0
        with torch.inference_mode():
            for _ in range(n):
                logits, carry = lm(inputs, carry)
                nn.functional.cross_entropy(logits.reshape(-1, b.vocab), targets.reshape(-1),
                                            reduction="sum")
        torch_sync()

    return run_train, run_eval


# ----------------------------------------------------------------------------- GEMM ceiling


def gemm_rate(m: int, k: int, n: int, times: int, use_torch: bool) -> float:
    """Best float32 GFLOP/s of `times` consecutive [m, k] @ [k, n] products (3 trials)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((times, m, k), dtype=np.float32)
    w = rng.standard_normal((k, n), dtype=np.float32)
    if use_torch:
        ta, tw = torch.from_numpy(a).to(TORCH_DEVICE), torch.from_numpy(w).to(TORCH_DEVICE)
        out = torch.empty(m, n, device=TORCH_DEVICE)

        def once():
            for i in range(times):
                torch.mm(ta[i], tw, out=out)
            torch_sync()
    else:
        products = jax.jit(lambda a, w: jax.lax.map(lambda x: x @ w, a))
        ja, jw = jnp.asarray(a), jnp.asarray(w)

        def once():
            products(ja, jw).block_until_ready()
    once()
    reps = max(1, math.ceil(0.05 / max(_timed(once), 1e-6)))
    best = min(_timed(lambda: [once() for _ in range(reps)]) / reps for _ in range(3))
    return 2.0 * m * k * n * times / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ceiling(mms, rates_cache: dict) -> tuple[float, dict]:
    """Step time (s) with every matmul at the best measured rate, and the rates used."""
    seconds, used = 0.0, {}
    for what, m, k, n, t in mms:
        key = (m, k, n, t)
        if key not in rates_cache:
            peers = [False] + ([True] if torch is not None else [])
            rates_cache[key] = max(gemm_rate(m, k, n, t, p) for p in peers)
        used[what] = rates_cache[key]
        seconds += 2.0 * m * k * n * t / (rates_cache[key] * 1e9)
    return seconds, used


def step_ceiling(b: Bench, mms, rates_cache: dict) -> float | None:
    """Tokens/s at the FLOP ceiling, or None on an accelerator: there a product timed alone
    is mostly launch latency, and a fused step runs "above" such a ceiling."""
    if jax.default_backend() != "cpu":
        return None
    return b.tokens / ceiling(mms, rates_cache)[0]


# ----------------------------------------------------------------------------- sections


def bench_train(b: Bench, opts, rates_cache) -> dict:
    runs = {"jax_lm": jax_lm_train(b)}
    if b.cell != "cifg":  # neither peer has a CIFG cell
        if torch is not None:
            runs["pytorch"] = torch_train_and_eval(b)[0]
        runs["flax"] = flax_train_and_eval(b)[0]
    rates = alternate(runs, b.tokens, opts.rounds, opts.min_seconds)
    mms = matmuls(b)
    return {"bench": b, "rates": rates, "flops_per_token": flops(mms) / b.tokens,
            "ceiling": step_ceiling(b, mms, rates_cache)}


def bench_eval(b: Bench, opts, rates_cache) -> dict:
    runs = {"jax_lm": jax_lm_eval(b)}
    if torch is not None:
        runs["pytorch"] = torch_train_and_eval(b)[1]
    runs["flax"] = flax_train_and_eval(b)[1]
    rates = alternate(runs, b.tokens, opts.rounds, opts.min_seconds)
    mms = matmuls(b, training=False)
    return {"bench": b, "rates": rates, "flops_per_token": flops(mms) / b.tokens,
            "ceiling": step_ceiling(b, mms, rates_cache)}


def bench_sample(b: Bench, opts) -> dict:
    config = jax_lm_config(b)
    params = model.init_lm(jax.random.key(0), config)
    prime = jnp.zeros((opts.sample_batch, 1), jnp.int32)
    key = jax.random.key(1)

    def runner(generate):
        def run(n):
            for _ in range(n):
                tokens, _ = generate(params, prime, opts.sample_tokens, key, config=config)
            jax.block_until_ready(tokens)
        return run

    runs = {"generate (scan)": runner(sample.generate),
            "generate_python_loop": runner(sample.generate_python_loop)}
    rates = alternate(runs, opts.sample_batch * opts.sample_tokens, opts.rounds,
                      opts.min_seconds)
    return {"bench": b, "rates": rates}


def bench_tutorial(opts) -> dict:
    """001's step: jax_lm float32 (jitted) against the document's NumPy float64 step."""
    from tests.oracles import tutorial_rnn

    t = dict(TUTORIAL)
    if opts.tiny:
        t.update(vocab=50, hidden=8, words=6)
    config = model.LMConfig(vocab_size=t["vocab"], cell=cells.RNN(use_bias=False), num_layers=1,
                            hidden_size=t["hidden"], one_hot=True, output_bias=False,
                            init="fan_in")
    optimizer = optim.make_optimizer("sgd", t["learning_rate"])
    step = train.make_train_step(config, optimizer, regime="window", window_k=t["k"],
                                 reduction="sum")
    rng = np.random.default_rng(0)
    sentence = rng.integers(0, t["vocab"], t["words"] + 1)
    x, y = sentence[:-1], sentence[1:]
    batch = jax.device_put(batching.Batch(x[None].astype(np.int32), y[None].astype(np.int32),
                                          np.ones((1, t["words"]), np.float32),
                                          np.ones(1, bool)))
    state = [train.init_train_state(jax.random.key(0), config, optimizer, 1)]
    np_params = [tutorial_rnn.init_params(rng, t["vocab"], t["hidden"])]

    def run_jax(n):
        s = state[0]
        for _ in range(n):
            s, _ = step(s, batch)
        state[0] = jax.block_until_ready(s)

    def run_numpy(n):
        for _ in range(n):
            np_params[0] = tutorial_rnn.sgd_step(np_params[0], x, y, t["learning_rate"], t["k"])

    runs = {"jax_lm (float32, jitted)": run_jax, "numpy (float64, 001's step)": run_numpy}
    return {"setup": t, "rates": alternate(runs, 1.0, opts.rounds, opts.min_seconds)}


ABLATIONS = {
    "reference: jax.grad of the plain scan (fast_backward=False)": dict(fast_backward=False),
    "default (fast_backward=True, unroll=1)": {},
    "unroll=8": dict(unroll=8),
    "remat_segment=5": dict(remat_segment=5),
    "logits_chunk=100": dict(logits_chunk=100),
    "compute_dtype=bfloat16 (not float32!)": dict(compute_dtype="bfloat16"),
}


def bench_ablations(b: Bench, opts) -> dict:
    runs = {name: jax_lm_train(b, **options) for name, options in ABLATIONS.items()}
    return {"bench": b, "rates": alternate(runs, b.tokens, opts.rounds, opts.min_seconds)}


# ----------------------------------------------------------------------------- report


class OtherLoad:
    """Share of the machine's CPU time that *other* processes used between start and stop.

    From /proc/stat (all busy time) minus this process's own CPU time (`os.times`); None
    where /proc/stat is missing.
    """

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        except (OSError, ValueError):
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields) - fields[3] - fields[4]) / ticks   # all but idle and iowait
        own = os.times()
        return busy, own.user + own.system, time.monotonic()

    def share(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None:
            return None
        (busy0, own0, t0), (busy1, own1, t1) = self.start, end
        others = (busy1 - busy0) - (own1 - own0)
        return max(0.0, others / ((t1 - t0) * os.cpu_count()))


def machine() -> dict:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               text=True, capture_output=True, check=True).stdout.strip()
        commit += " + uncommitted changes" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    import flax
    import jaxlib

    versions = {"python": platform.python_version(), "jax": jax.__version__,
                "jaxlib": jaxlib.__version__,
                "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__,
                "torch": torch.__version__ if torch is not None else "not installed"}
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    malloc = (f"GLIBC_TUNABLES={tunables}" if "glibc.malloc." in tunables
              else f"{platform.libc_ver()[0] or 'libc'} defaults")
    accelerator = None
    if jax.default_backend() != "cpu":
        accelerator = f"{jax.devices()[0].device_kind} (JAX: {jax.default_backend()}; PyTorch: "
        accelerator += (torch.cuda.get_device_name() if TORCH_DEVICE == "cuda" else
                        "not on it, left out") + ")"
    return {"cpu": f"{cpu} ({isa})", "cores": os.cpu_count(), "commit": commit,
            "versions": versions, "malloc": malloc, "accelerator": accelerator,
            "torch_threads": torch.get_num_threads() if torch is not None else None}


def _fmt_rate(rates: list[float]) -> str:
    med, lo, hi = summary(rates)
    return f"{med:,.0f} ({lo:,.0f}–{hi:,.0f})"


def report(results: dict, info: dict, opts, elapsed: float) -> str:
    """The results as markdown (also what is printed)."""
    lines = [f"# jax_lm benchmark, {info['date']}", "",
             f"- command: `{info['command']}`",
             f"- commit: {info['commit']}",
             f"- machine: {info['cpu']}, {info['cores']} cores; load average "
             f"{info['load_before']} before, {info['load_after']} after (1, 5, 15 min)",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
             f"- malloc (one process, every implementation alike; `jax_lm.allocator`): "
             f"{info['malloc']}",
             *([f"- accelerator: {info['accelerator']}; float32 matmuls: "
                f"{opts.matmul_precision}"] if info["accelerator"] else []),
             f"- PyTorch threads: {info['torch_threads']}; rounds: {opts.rounds}, "
             f"≥ {opts.min_seconds} s each, alternating; wall time {elapsed / 60:.1f} min",
             "- numbers: median tokens/s over rounds (min–max); float32; GFLOP/s counts matmul "
             "FLOPs only; ceiling = every matmul of the step at the best rate measured here "
             "for its shape", ""]
    if info["others"] is not None:
        lines[-1:-1] = [f"- other processes used {100 * info['others']:.0f}% of the machine's "
                        "CPU time during the run"]
    if info["busy"]:
        lines[-1:-1] = [f"- **WARNING: the machine was busy** (other processes used ≥ "
                        f"{100 * BUSY:.0f}% of its CPU time during the run). Other processes slow "
                        "every implementation, PyTorch's spin-waiting OpenMP threads most of all "
                        "(its rates can drop tenfold): do not compare these numbers; rerun on a "
                        "quiet machine."]
    for kind, title in (("train", "Training (forward + backward + clip 5 + SGD)"),
                        ("eval", "Evaluation (forward + summed NLL)")):
        if results.get(kind):
            lines += [f"## {title}, tokens/s", "",
                      "| config | jax_lm | PyTorch | flax | jax_lm / PyTorch | jax_lm / flax | "
                      "MFLOP/token | jax_lm GFLOP/s | ceiling tok/s | jax_lm % of ceiling |",
                      "|---|---|---|---|---|---|---|---|---|---|",
                      *(_row(r) for r in results[kind]), ""]
    if results.get("sample"):
        r = results["sample"]
        fast, slow = (summary(r["rates"][k])[0] for k in ("generate (scan)",
                                                           "generate_python_loop"))
        lines += [f"## Sampling, {r['bench'].name} model, batch {opts.sample_batch}, "
                  f"{opts.sample_tokens} tokens per call, tokens/s", "",
                  "| generate (one compiled scan) | generate_python_loop (a jitted call per "
                  "token) | speed-up |", "|---|---|---|",
                  f"| {_fmt_rate(r['rates']['generate (scan)'])} | "
                  f"{_fmt_rate(r['rates']['generate_python_loop'])} | {fast / slow:.1f}× |", ""]
    if results.get("tutorial"):
        r = results["tutorial"]
        jax_name, np_name = list(r["rates"])
        j, n = summary(r["rates"][jax_name])[0], summary(r["rates"][np_name])[0]
        s = r["setup"]
        lines += [f"## 001's SGD step (vocabulary {s['vocab']:,}, hidden {s['hidden']}, one "
                  f"{s['words']}-word sentence, truncation k = {s['k']})", "",
                  "| implementation | steps/s | ms/step |", "|---|---|---|",
                  f"| {jax_name} | {_fmt_rate(r['rates'][jax_name])} | {1000 / j:.2f} |",
                  f"| {np_name} | {_fmt_rate(r['rates'][np_name])} | {1000 / n:.1f} |",
                  f"| speed-up | {j / n:.0f}× | |", ""]
    for r in results.get("ablations", []):
        base = summary(r["rates"][next(iter(r["rates"]))])[0]
        lines += [f"## jax_lm options, {r['bench'].name}, training tokens/s", "",
                  "| LMConfig | tokens/s | vs reference |", "|---|---|---|"]
        for name, rates in r["rates"].items():
            lines.append(f"| {name} | {_fmt_rate(rates)} | {summary(rates)[0] / base:.2f}× |")
        lines.append("")
    ratios = []
    for r in results.get("train", []):
        if r["bench"].name in HEADLINE and "pytorch" in r["rates"]:
            ratio = summary(r["rates"]["jax_lm"])[0] / summary(r["rates"]["pytorch"])[0]
            ratios.append(f"{r['bench'].name} jax_lm/pytorch = {ratio:.2f}")
    if ratios:
        note = ["(machine busy: not a valid comparison)"] if info["busy"] else []
        lines += ["```", *ratios, *note, "```", ""]
    return "\n".join(lines)


def _row(r: dict) -> str:
    rates, b = r["rates"], r["bench"]
    med = {k: summary(v)[0] for k, v in rates.items()}
    cell = lambda k: _fmt_rate(rates[k]) if k in rates else "—"  # noqa: E731
    ratio = lambda k: f"{med['jax_lm'] / med[k]:.2f}" if k in med else "—"  # noqa: E731
    gflops = med["jax_lm"] * r["flops_per_token"] / 1e9
    top, share = "—", "—"  # no ceiling on an accelerator (`step_ceiling`)
    if r["ceiling"] is not None:
        top, share = f"{r['ceiling']:,.0f}", f"{100 * med['jax_lm'] / r['ceiling']:.0f}%"
    return (f"| {b.name} | {cell('jax_lm')} | {cell('pytorch')} | {cell('flax')} | "
            f"{ratio('pytorch')} | {ratio('flax')} | {r['flops_per_token'] / 1e6:.1f} | "
            f"{gflops:.0f} | {top} | {share} |")


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="5 rounds of ≥ 1 s (< 10 min on 2 cores; ratios good to a few %%)")
    p.add_argument("--tiny", action="store_true",
                   help="toy sizes, 1 round: checks that everything runs (the test uses it)")
    p.add_argument("--only", default="",
                   help="comma-separated config names or sections (train, eval, sample, "
                        "tutorial_step); default: all")
    p.add_argument("--ablations", action="store_true",
                   help="also time jax_lm's LMConfig speed options at Zaremba small and medium")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
    p.add_argument("--matmul-precision", choices=("float32", "tf32"), default="float32",
                   help="on a GPU: full float32 matmuls in every library (default) or TF32 "
                        "tensor cores in all (JAX 'tensorfloat32', PyTorch allow_tf32)")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--min-seconds", type=float, default=None, help="least time per round")
    p.add_argument("--out", default=None,
                   help="results file (default experiments/results/bench-<date>.md; "
                        "'-' writes none; --tiny writes none unless given)")
    opts = p.parse_args(argv)
    opts.rounds = opts.rounds or (1 if opts.tiny else 5 if opts.quick else 9)
    if opts.min_seconds is None:
        opts.min_seconds = 0.0 if opts.tiny else 1.0 if opts.quick else 2.0
    opts.sample_batch, opts.sample_tokens = (2, 5) if opts.tiny else (1, 200)
    return opts


def use_accelerator(opts) -> None:
    """On a GPU: PyTorch's peer on CUDA (or none), one float32 matmul precision for all."""
    global torch, TORCH_DEVICE
    if jax.default_backend() == "cpu":
        return
    if torch is not None and not torch.cuda.is_available():
        print(f"JAX runs on {jax.default_backend()}, this PyTorch build has no CUDA: "
              "PyTorch's peer is left out.", file=sys.stderr)
        torch = None
    tf32 = opts.matmul_precision == "tf32"
    jax.config.update("jax_default_matmul_precision", "tensorfloat32" if tf32 else "highest")
    if torch is not None:
        TORCH_DEVICE = "cuda"
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32


def main(argv=None) -> dict:
    global torch
    opts = parse_args(argv)
    if opts.no_torch:
        torch = None
    use_accelerator(opts)
    if torch is not None:
        torch.set_num_threads(os.cpu_count())
    only = {s for s in opts.only.split(",") if s}
    wanted = lambda *names: not only or bool(only & set(names))  # noqa: E731
    shrink = tiny if opts.tiny else (lambda b: b)
    info = {**machine(), "date": datetime.date.today().isoformat(),
            "command": " ".join(["python", "experiments/bench/run.py", *(argv or sys.argv[1:])]),
            "load_before": ", ".join(f"{x:.2f}" for x in os.getloadavg())}
    others = OtherLoad()
    start = time.perf_counter()
    results: dict = {"train": [], "eval": []}
    rates_cache: dict = {}
    by_name = {b.name: b for b in TRAIN}

    out = opts.out if opts.out is not None else (None if opts.tiny else str(
        ROOT / "experiments" / "results" / f"bench-{info['date']}.md"))

    def say(msg):
        print(msg, file=sys.stderr, flush=True)

    def render(done: bool) -> str:
        """The report so far; also written after every section, so a run cut short (a
        timeout, Ctrl-C) leaves the tables it finished, marked partial."""
        info["load_after"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        info["others"] = others.share()
        info["busy"] = info["others"] is not None and info["others"] >= BUSY
        text = report(results, info, opts, time.perf_counter() - start)
        if not done:
            text = text.replace("\n\n", "\n\n**PARTIAL: written before the run's last section "
                                "(still running, or cut short); the tables below are the finished "
                                "ones.**\n\n", 1)
        if out and out != "-":
            Path(out).write_text(text + "\n")
        return text

    for b in TRAIN:
        if wanted("train", b.name):
            say(f"train {b.name} ...")
            results["train"].append(bench_train(shrink(b), opts, rates_cache))
            render(done=False)
    for name in EVAL:
        if wanted("eval", name):
            say(f"eval {name} ...")
            results["eval"].append(bench_eval(shrink(by_name[name]), opts, rates_cache))
            render(done=False)
    if wanted("sample"):
        say("sample ...")
        results["sample"] = bench_sample(shrink(by_name["zaremba_small"]), opts)
        render(done=False)
    if wanted("tutorial_step"):
        say("tutorial_step ...")
        results["tutorial"] = bench_tutorial(opts)
        render(done=False)
    if opts.ablations:
        results["ablations"] = []
        for name in HEADLINE:
            say(f"ablations {name} ...")
            results["ablations"].append(bench_ablations(shrink(by_name[name]), opts))
            render(done=False)
    text = render(done=True)
    print(text)
    if out and out != "-":
        say(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
