"""Run configuration: one `ml_collections.ConfigDict`, every field documented in `get_config`.

Experiment files (`experiments/configs/<name>.py`) define `get_config()`, start from this
base and override only what differs. On the command line, `--config.<path>=<value>`
overrides a field; the value is parsed to the field's type, and an unknown path is rejected
with the list of valid keys. A run folder stores the resolved config as JSON.

`resolve` checks the whole config before anything is read or written (types, ranges,
enumerations, cross-field rules, a memory lower bound) and returns a frozen `RunConfig`
with the same field names, which the core reads; every problem is one sentence naming the
key, its value and what is allowed, all of them in one `ConfigError` joined by "; ".
`check_memory` repeats the memory check once the vocabulary size is known.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib.resources
import json
import math
import os
import types
from pathlib import Path
from typing import Any, Mapping

import ml_collections
import numpy as np

from jax_lm import cells, memory
from jax_lm.model import LMConfig



class ConfigError(ValueError):
    """A config file or override that cannot be used."""


def get_config() -> ml_collections.ConfigDict:
    """The base config: a small char-level LSTM on the embedded default corpus (CPU minutes)."""
    c = ml_collections.ConfigDict()
    c.seed = 0                      # determines init, dropout, shuffles and sampling

    c.data = d = ml_collections.ConfigDict()
    d.source = "default"            # text file, folder (train/valid/test.txt), hub name, or "default"
    d.level = "char"                # "char" or "word"
    d.word_split = "whitespace"     # word level: "whitespace" (pre-tokenized) or "regex" (raw text)
    d.lowercase = False             # lowercase the text before tokenizing
    d.bos = ""                      # token before every line ("" for none; 000 "<s>", 001 sentence_start)
    d.eos = ""                      # token after every line ("" for none; PTB "<eos>")
    d.unk = "<unk>"                 # unknown token, added to the vocabulary only when needed
    d.max_vocab = 0                 # cap on the vocabulary size, special tokens included (0: none)
    d.min_count = 1                 # drop training types seen fewer times
    d.train_fraction = 0.9          # single-file sources: leading fraction of characters for train
    d.max_train_lines = 0           # train on the first N training lines only (0: all)
    d.vocab_from_train_lines = False  # with max_train_lines: vocabulary from those lines (000)
    d.batcher = "stream"            # "stream" (state carried), "sentences" (padded), "random_windows"
    d.batch_size = 32               # B
    d.seq_len = 64                  # T: window length (stream, random windows)
    d.bucket = True                 # sentences: batch sentences of similar length together
    d.shuffle = True                # sentences: a new seeded order every epoch
    d.pad_multiple = 16             # sentences: pad lengths to a multiple (fewer jit shapes;
                                    # padding is masked, so results do not change)
    d.eval_batch_size = 0           # evaluation batch size (0: same as batch_size)
    d.cache_dir = ""                # datasets cache ("" : $JAX_LM_CACHE_DIR or ~/.cache/jax_lm)
    d.errors = "strict"             # bad UTF-8: "strict" (error) or "replace"

    c.model = m = ml_collections.ConfigDict()
    m.cell = "lstm"                 # "rnn", "lstm", "cifg" or "gru"
    m.num_layers = 1                # L stacked layers
    m.hidden_size = 256             # H
    m.embed_size = 0                # embedding width (0: same as hidden_size)
    m.one_hot = False               # no embedding: the first layer reads one-hot tokens (000, 001)
    m.layer_sizes = ""              # per-layer widths, e.g. "1150,1150,400" ("": hidden_size each)
    m.dropout = 0.0                 # dropout on every layer's input and on the output layer's input
    m.dropout_input = -1.0          # rate on the first layer's input (-1: model.dropout; AWD dropouti)
    m.dropout_hidden = -1.0         # rate between layers (-1: model.dropout; AWD dropouth)
    m.dropout_output = -1.0         # rate on the output layer's input (-1: model.dropout; AWD dropout)
    m.locked_dropout = False        # variational dropout: one mask per sequence for all its steps
    m.state_dropout = 0.0           # rate on h_{t-1} in the recurrent matmul, one mask per sequence
    m.embed_dropout = 0.0           # drop whole word types from the embedding per batch (AWD dropoute)
    m.weight_drop = 0.0             # DropConnect on the recurrent matrices, one mask per step (AWD wdrop)
    m.ar = 0.0                      # activation regularization α·mean(h²), last layer after dropout
    m.tar = 0.0                     # temporal AR β·mean((h_t − h_{t−1})²), last layer before dropout
    m.tie_weights = False           # output projection = embedding transposed
    m.output_bias = True            # bias on the output projection
    m.init = "uniform"              # "uniform" (±init_scale), "fan_in" (±1/√n) or "default" (flax's)
    m.init_scale = 0.1              # bound of the uniform init
    m.unroll = 1                    # jax.lax.scan unroll factor
    m.param_dtype = "float32"       # parameter dtype ("float64" for exact comparisons)
    m.compute_dtype = ""            # "" (= param_dtype) or e.g. "bfloat16" on GPU/TPU: layers and
                                    # output projection compute in it (params, loss: param_dtype)
    m.fast_backward = True          # jax_lm.fast_scan's backward (same numbers, faster)
    m.remat_segment = 0             # > 0: recompute states in segments of this many steps in
                                    # the backward pass (long sequences; same numbers)
    m.logits_chunk = 0              # > 0: score this many positions at a time, never holding
                                    # all [B·T, V] logits (large vocabularies; same numbers)
    m.gate_fn = "sigmoid"           # lstm/cifg: gate nonlinearity ("sigmoid"; 000 uses "tanh")
    m.activation = "tanh"           # rnn: "tanh" or "relu"; lstm/cifg: cell input/output nonlinearity
    m.peepholes = False             # lstm/cifg: diagonal peephole connections
    m.forget_bias = 0.0             # lstm: constant added to the forget gate's pre-activation
    m.use_bias = True               # biases inside the cell (001's RNN has none)

    c.train = t = ml_collections.ConfigDict()
    t.optimizer = "adam"            # "sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw"
    t.learning_rate = 2e-3          # initial learning rate
    t.optimizer_options = ml_collections.ConfigDict()  # extra optax arguments, e.g. .eps=1e-8
    t.clip_norm = 5.0               # global gradient-norm clip (0: off)
    t.ntasgd_patience = 0           # > 0: NT-ASGD, average the iterates from the first validation
                                    # worse than every one more than this many before it (AWD: 5);
                                    # evaluation and best checkpoint use the average (0: off)
    t.epochs = 6                    # passes over the training data
    t.max_steps = 0                 # stop after this many steps in total (0: no limit)
    t.time_budget_minutes = 0.0     # stop once this much training time is spent, in total over
                                    # resumes; validation then scores the last params (0: none)
    t.regime = "truncated"          # "full" (state reset every batch), "truncated" (carried), "window"
    t.window_k = 4                  # "window": the loss at t back-propagates through k + 1 steps (001)
    t.loss_reduction = "token_mean"  # "token_mean", "batch_mean" (Σ_t / B, Zaremba), "sum" (000, 001)
    t.lr_rule = "constant"          # "constant", "zaremba", "halve_when_loss_rises",
                                    # "halve_when_likelihood_drops", "quarter_when_not_best"
    t.lr_rule_metric = "valid"      # what plateau rules watch: "valid", "train" (epoch's running
                                    # loss, 000) or "train_eval" (train set evaluated, 001)
    t.lr_decay_start = 4            # zaremba: epochs at the initial rate
    t.lr_decay = 0.5                # zaremba: multiplier per epoch after that
    t.log_every = 50                # steps between host syncs for metrics and the progress bar
    t.checkpoint_every = 0          # steps between checkpoints (0: at epoch ends only)
    t.keep_checkpoints = 2          # step checkpoints kept (plus the best one)
    t.on_nonfinite = "stop"         # NaN/inf loss: "stop" (keep last good checkpoint) or "skip" step
    t.eval_test = True              # evaluate the test split (if any) with the best params at the end
    t.eval_at_start = False         # score the initial params as epoch 0 (001 does; plateau
                                    # rules then compare epoch 1 with it)

    c.sample = s = ml_collections.ConfigDict()
    s.num_samples = 1               # samples printed and saved at the end of training
    s.num_tokens = 300              # tokens per sample
    s.prime = ""                    # text the samples continue ("" : a line start)
    s.temperature = 0.8             # softmax temperature
    s.top_k = 0                     # keep the k most probable tokens (0: off)
    s.top_p = 1.0                   # nucleus: smallest set with this much probability (1: off)
    s.greedy = False                # always take the most probable token
    s.resample_once = False         # 003: draw again once when the draw is not the argmax

    c.mesh = m = ml_collections.ConfigDict()  # devices: a (population × data) mesh (jax_lm.mesh)
    m.population = 1                # devices that split a population's members (0: as many
                                    # of the remaining as divide the number of members)
    m.data = 1                      # devices that split each batch's rows (0: all left)
    return _lock(c)


def _lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Reject unknown keys everywhere except in the free-form `train.optimizer_options`."""
    config.lock()
    config.train.optimizer_options.unlock()
    return config


def _shipped_config_dir() -> Path:
    """experiments/configs, shipped as the package `jax_lm.configs` (see pyproject.toml)."""
    try:
        folder = Path(str(importlib.resources.files("jax_lm.configs")))
        if folder.is_dir():
            return folder
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / "experiments" / "configs"


CONFIG_DIR = _shipped_config_dir()


def config_path(path_or_name: str | os.PathLike) -> Path:
    """The file of a shipped config name (`jax-lm configs`) or of a path; ConfigError if none."""
    path = Path(path_or_name)
    if not path.suffix and not path.exists():
        path = CONFIG_DIR / f"{path_or_name}.py"
    if not path.is_file():
        available = [name for name, *_ in list_configs()]
        raise ConfigError(f"no config file {str(path_or_name)!r}; shipped configs: "
                          f"{', '.join(available)} (jax-lm configs lists them), or give a path")
    return path


def load_module(path: str | os.PathLike):
    """Execute a config file as a module; any error in it becomes one ConfigError."""
    path = Path(path)
    try:
        source = path.read_text()
        code = compile(source, str(path), "exec")
    except SyntaxError as e:
        raise ConfigError(f"config file {path} has a syntax error at line {e.lineno}: "
                          f"{e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    module = types.ModuleType(f"jax_lm_config_{path.stem}")
    module.__file__ = str(path)
    try:
        exec(code, module.__dict__)  # noqa: S102 - a config file is code the user chose to run
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"config file {path} failed: {type(e).__name__}: {e}") from None
    return module


def load_config(path_or_name: str | os.PathLike | None = None) -> ml_collections.ConfigDict:
    """`get_config()` of a config file or of a shipped config; the base if None."""
    if path_or_name in (None, "", "base"):
        return get_config()
    path = config_path(path_or_name)
    module = load_module(path)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config()")
    try:
        config = module.get_config()
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"get_config() of {path} failed: {type(e).__name__}: {e}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"get_config() of {path} returned a {type(config).__name__}, not an "
                          "ml_collections.ConfigDict")
    return _lock(config)


def list_configs() -> list[tuple[str, str]]:
    """(name, purpose) of every shipped config: the first line of its docstring, read with
    `ast` (nothing is executed). Sweeps (files with a get_sweep) say "sweep:" first."""
    entries = []
    for path in sorted(CONFIG_DIR.glob("*.py")):
        if path.stem.startswith("_"):
            continue
        try:
            tree = ast.parse(path.read_text())
        except (SyntaxError, OSError, UnicodeDecodeError):
            entries.append((path.stem, "(unreadable)"))
            continue
        doc = (ast.get_docstring(tree) or "").strip().splitlines()
        sweep = any(isinstance(n, ast.FunctionDef) and n.name == "get_sweep" for n in tree.body)
        entries.append((path.stem, ("sweep: " if sweep else "") + (doc[0] if doc else "")))
    return entries


def _leaf_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in config.items():
        if isinstance(v, ml_collections.ConfigDict):
            keys += _leaf_keys(v, f"{prefix}{k}.") or [f"{prefix}{k}.<name>"]
        else:
            keys.append(prefix + k)
    return keys


def _parse(text: str, current):
    """A command-line value as the type of the field it overrides."""
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"expected true or false, got {text!r}")
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if current is not None and not isinstance(value, type(current)):
        raise ConfigError(f"expected {type(current).__name__}, got {text!r}")
    return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str]):
    """Set `path=value` overrides (values as strings) with type checks; returns the config."""
    for path, text in overrides.items():
        *parents, leaf = path.split(".")
        node = config
        try:
            for p in parents:
                node = node[p]
            if not isinstance(node, ml_collections.ConfigDict):
                raise KeyError(path)
            open_dict = not node.is_locked  # e.g. train.optimizer_options takes any key
            if leaf not in node and not open_dict:
                raise KeyError(path)
            current = node[leaf] if leaf in node else None
            if isinstance(current, ml_collections.ConfigDict):
                raise KeyError(path)
            with node.unlocked() if open_dict else contextlib.nullcontext():
                node[leaf] = _parse(text, current)
        except KeyError:
            raise ConfigError(f"unknown config key {path!r}; valid keys: "
                              + ", ".join(_leaf_keys(config))) from None
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"bad value for {path}: {e}") from None
    return config


def override_text(value: Any) -> str:
    """A Python value as the text of a `--config.*` override (strings as they are)."""
    return value if isinstance(value, str) else json.dumps(value)


def apply_values(config: ml_collections.ConfigDict, values: Mapping[str, Any]):
    """`apply_overrides` with Python values (`{"train.max_steps": 20}`); returns the config."""
    return apply_overrides(config, {k: override_text(v) for k, v in values.items()})


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def from_json(text: str, source: str = "config.json") -> ml_collections.ConfigDict:
    """A config saved by `to_json`, checked against the base: unknown keys are rejected.

    `source` names the text in error messages (e.g. the run folder's config.json).
    """
    config = get_config()
    try:
        saved = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{source} is not valid JSON ({e}); restore it from a copy or "
                          "train again") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{source} does not hold a config (a JSON object)")

    problems: list[str] = []

    def merge(node: ml_collections.ConfigDict, saved: dict, prefix: str) -> None:
        for key, value in saved.items():
            path = prefix + key
            if key not in node:
                problems.append(f"unknown config key {path!r}"
                                + (f" ({prefix[:-1]} has {', '.join(node.keys())})"
                                   if prefix else " (a config has seed, data, model, train, "
                                   "sample, mesh)"))
                continue
            current = node[key]
            if path == "train.optimizer_options":
                if isinstance(value, dict):
                    with current.unlocked():
                        current.update(value)
                else:
                    problems.append(f"{path} must be a JSON object, got {value!r}")
            elif isinstance(current, ml_collections.ConfigDict):
                if isinstance(value, dict):
                    merge(current, value, path + ".")
                else:
                    problems.append(f"{path} must be a JSON object of keys, got {value!r}")
            else:
                want = type(current).__name__
                if _type_ok(want, value):
                    node[key] = float(value) if want == "float" else value
                else:
                    problems.append(f"{path} must be {_TYPE_WORDS.get(want, want)}, "
                                    f"got {value!r}")

    merge(config, saved, "")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return config


# ----------------------------------------------------------------------------- typed configs
# The core reads these frozen dataclasses, never the ConfigDict; their fields are the keys
# of `get_config` (documented there), so `config.train.epochs` reads the same on both.


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str
    level: str
    word_split: str
    lowercase: bool
    bos: str
    eos: str
    unk: str
    max_vocab: int
    min_count: int
    train_fraction: float
    max_train_lines: int
    vocab_from_train_lines: bool
    batcher: str
    batch_size: int
    seq_len: int
    bucket: bool
    shuffle: bool
    pad_multiple: int
    eval_batch_size: int
    cache_dir: str
    errors: str


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    cell: str
    num_layers: int
    hidden_size: int
    embed_size: int
    layer_sizes: str
    one_hot: bool
    dropout: float
    dropout_input: float
    dropout_hidden: float
    dropout_output: float
    locked_dropout: bool
    state_dropout: float
    embed_dropout: float
    weight_drop: float
    ar: float
    tar: float
    tie_weights: bool
    output_bias: bool
    init: str
    init_scale: float
    unroll: int
    param_dtype: str
    compute_dtype: str
    fast_backward: bool
    remat_segment: int
    logits_chunk: int
    gate_fn: str
    activation: str
    peepholes: bool
    forget_bias: float
    use_bias: bool


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    optimizer: str
    learning_rate: float
    optimizer_options: Mapping[str, Any]  # read-only
    clip_norm: float
    ntasgd_patience: int
    epochs: int
    max_steps: int
    time_budget_minutes: float
    regime: str
    window_k: int
    loss_reduction: str
    lr_rule: str
    lr_rule_metric: str
    lr_decay_start: int
    lr_decay: float
    log_every: int
    checkpoint_every: int
    keep_checkpoints: int
    on_nonfinite: str
    eval_test: bool
    eval_at_start: bool


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    num_samples: int
    num_tokens: int
    prime: str
    temperature: float
    top_k: int
    top_p: float
    greedy: bool
    resample_once: bool


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    population: int
    data: int


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole, validated run configuration (`resolve`)."""

    seed: int
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    sample: SampleConfig
    mesh: MeshConfig

    def to_dict(self) -> dict[str, Any]:
        out = {"seed": self.seed}
        for part in ("data", "model", "train", "sample", "mesh"):
            fields = dataclasses.fields(getattr(self, part))
            out[part] = {f.name: getattr(getattr(self, part), f.name) for f in fields}
        out["train"]["optimizer_options"] = dict(self.train.optimizer_options)
        return out

    def to_configdict(self) -> ml_collections.ConfigDict:
        """The equal ConfigDict (locked like `get_config`), e.g. for `to_json`."""
        return from_json(json.dumps(self.to_dict()))

    def replace(self, overrides: Mapping[str, Any] | None = None, /, **more) -> RunConfig:
        """A checked copy with dotted-key changes (Python values), as `--config.*` would:
        `config.replace({"model.hidden_size": 64})`, `config.replace(seed=3)`."""
        return resolve(apply_values(self.to_configdict(), {**(overrides or {}), **more}))


CHOICES = {
    "data.level": ("char", "word"),
    "data.word_split": ("whitespace", "regex"),
    "data.batcher": ("stream", "sentences", "random_windows"),
    "data.errors": ("strict", "replace"),
    "model.cell": tuple(sorted(cells.CELLS)),
    "model.init": ("uniform", "fan_in", "default"),
    "model.param_dtype": ("float32", "float64", "bfloat16", "float16"),
    "model.compute_dtype": ("", "float32", "float64", "bfloat16", "float16"),
    "model.gate_fn": ("sigmoid", "tanh"),
    "model.activation": ("tanh", "relu", "sigmoid"),
    "train.optimizer": ("sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw"),
    "train.regime": ("full", "truncated", "window"),
    "train.loss_reduction": ("token_mean", "batch_mean", "sum"),
    "train.lr_rule": ("constant", "zaremba", "halve_when_loss_rises",
                      "halve_when_likelihood_drops", "quarter_when_not_best"),
    "train.lr_rule_metric": ("valid", "train", "train_eval"),
    "train.on_nonfinite": ("stop", "skip"),
}

# key: (lowest, highest, text); None for no bound; `text` says the range in messages.
RANGES = {
    "seed": (0, 2**32 - 1, "≥ 0 and < 2**32"),
    "data.max_vocab": (0, None, "≥ 0 (0: no cap)"),
    "data.min_count": (1, None, "≥ 1"),
    "data.max_train_lines": (0, None, "≥ 0 (0: all)"),
    "data.batch_size": (1, None, "≥ 1"),
    "data.seq_len": (1, None, "≥ 1"),
    "data.pad_multiple": (1, None, "≥ 1"),
    "data.eval_batch_size": (0, None, "≥ 0 (0: batch_size)"),
    "model.num_layers": (1, None, "≥ 1"),
    "model.hidden_size": (1, None, "≥ 1"),
    "model.embed_size": (0, None, "≥ 0 (0: hidden_size)"),
    "model.unroll": (1, None, "≥ 1"),
    "model.remat_segment": (0, None, "≥ 0 (0: off)"),
    "model.logits_chunk": (0, None, "≥ 0 (0: off)"),
    "train.clip_norm": (0, None, "≥ 0 (0: off)"),
    "train.ntasgd_patience": (0, None, "≥ 0 (0: off)"),
    "train.epochs": (1, None, "≥ 1"),
    "train.max_steps": (0, None, "≥ 0 (0: no limit)"),
    "train.time_budget_minutes": (0, None, "≥ 0 (0: none)"),
    "train.window_k": (0, None, "≥ 0"),
    "train.lr_decay_start": (0, None, "≥ 0"),
    "train.log_every": (1, None, "≥ 1"),
    "train.checkpoint_every": (0, None, "≥ 0 (0: at epoch ends)"),
    "train.keep_checkpoints": (1, None, "≥ 1"),
    "sample.num_samples": (0, None, "≥ 0"),
    "sample.num_tokens": (1, None, "≥ 1"),
    "sample.top_k": (0, None, "≥ 0 (0: off)"),
    "mesh.population": (0, None, "≥ 0 (0: all remaining devices)"),
    "mesh.data": (0, None, "≥ 0 (0: all remaining devices)"),
}

# key: (test, text) for ranges with open ends (NaN fails every test).
OPEN_RANGES = {
    "data.train_fraction": (lambda v: 0 < v < 1, "in (0, 1)"),
    "model.dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    **{f"model.dropout_{where}": (lambda v: v == -1 or 0 <= v < 1, "in [0, 1) or -1 "
                                  "(model.dropout)") for where in ("input", "hidden", "output")},
    **{f"model.{name}": (lambda v: 0 <= v < 1, "in [0, 1)")
       for name in ("state_dropout", "embed_dropout", "weight_drop")},
    **{f"model.{name}": (lambda v: 0 <= v < math.inf, "≥ 0 and finite") for name in ("ar", "tar")},
    "model.init_scale": (lambda v: 0 < v < math.inf, "> 0 and finite"),
    "model.forget_bias": (math.isfinite, "finite"),
    "train.learning_rate": (lambda v: 0 < v < math.inf, "> 0 and finite"),
    "train.lr_decay": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "sample.temperature": (lambda v: 0 < v < math.inf, "> 0 and finite"),
    "sample.top_p": (lambda v: 0 < v <= 1, "in (0, 1] (1: off)"),
}

_TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "a string",
               "bool": "true or false"}


def _type_ok(want: str, value) -> bool:
    if want == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if want == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return type(value).__name__ == want


def _typed(cls, node, prefix: str, problems: list[str]):
    """`node` as the frozen dataclass `cls`, or None; type and key problems go to `problems`."""
    if not isinstance(node, ml_collections.ConfigDict):
        problems.append(f"{prefix[:-1]} must be a group of keys (a ConfigDict), got {node!r}")
        return None
    names = [f.name for f in dataclasses.fields(cls)]
    for extra in sorted(set(node.keys()) - set(names)):
        problems.append(f"unknown config key {prefix + extra!r}; {prefix[:-1]} has "
                        f"{', '.join(names)}")
    values, complete = {}, True
    for field in dataclasses.fields(cls):
        key = prefix + field.name
        if field.name not in node:
            problems.append(f"{key} is missing (get_config() has every key)")
            complete = False
            continue
        value = node[field.name]
        want = field.type if isinstance(field.type, str) else field.type.__name__
        if want == "Mapping[str, Any]":
            if not isinstance(value, (Mapping, ml_collections.ConfigDict)):
                problems.append(f"{key} must be a group of keys (e.g. {key}.eps=1e-8), "
                                f"got {value!r}")
                value = {}
            value = types.MappingProxyType(
                value.to_dict() if isinstance(value, ml_collections.ConfigDict) else dict(value))
        elif not _type_ok(want, value):
            problems.append(f"{key} must be {_TYPE_WORDS.get(want, want)}, got {value!r}")
        elif want == "float":
            value = float(value)
        values[field.name] = value
    return cls(**values) if complete else None


def _optimizer_problem(train: TrainConfig) -> str | None:
    """What is wrong with `train.optimizer_options` for `train.optimizer`, or None."""
    import inspect  # noqa: PLC0415

    from jax_lm import optim  # noqa: PLC0415 - optax is only needed here

    options = dict(train.optimizer_options)
    if not options:
        return None
    try:
        accepted = [p for p in inspect.signature(optim.OPTIMIZERS[train.optimizer]).parameters
                    if p != "learning_rate"]
    except (TypeError, ValueError):
        accepted = None
    unknown = sorted(set(options) - set(accepted)) if accepted is not None else []
    if unknown:
        return (f"{', '.join('train.optimizer_options.' + k for k in unknown)} "
                f"{'is not an option' if len(unknown) == 1 else 'are not options'} of "
                f"{train.optimizer!r} (its options: {', '.join(accepted)})")
    try:  # optax builds the transformation lazily: init one tiny tree to try the values
        optim.make_optimizer(train.optimizer, train.learning_rate,
                             clip_norm=train.clip_norm or None,
                             **options).init({"w": np.zeros(1, np.float32)})
    except (TypeError, ValueError) as e:
        return f"train.optimizer_options {options} do not fit {train.optimizer!r}: {e}"
    return None


def _special_tokens(data: DataConfig) -> list[str]:
    """The distinct special tokens a vocabulary can hold: bos, eos, unk (those set)."""
    return list(dict.fromkeys(t for t in (data.bos, data.eos, data.unk) if t))


def _check(config: RunConfig, problems: list[str]) -> None:
    def get(key):
        node = config
        for part in key.split("."):
            node = getattr(node, part)
        return node

    for key, choices in CHOICES.items():
        value = get(key)
        if isinstance(value, str) and value not in choices:  # other types: reported already
            problems.append(f"{key}={value!r} is not one of {', '.join(map(repr, choices))}")
    for key, (low, high, text) in RANGES.items():
        value = get(key)
        if _type_ok("float", value) and not (
                (low is None or value >= low) and (high is None or value <= high)):
            problems.append(f"{key}={value!r} must be {text}")
    for key, (test, text) in OPEN_RANGES.items():
        value = get(key)
        if _type_ok("float", value) and not test(value):
            problems.append(f"{key}={value!r} must be {text}")
    if problems:  # the rules below read the fields as valid
        return
    m, t, d = config.model, config.train, config.data
    if m.cell == "rnn" and m.activation == "sigmoid":
        problems.append("model.activation='sigmoid' is for gates; the rnn cell takes 'tanh' "
                        "or 'relu'")
    if m.tie_weights and m.one_hot:
        problems.append("model.tie_weights=True needs an embedding to tie, but model.one_hot="
                        "True has none; set one of them to false")
    sizes = None
    try:
        sizes = layer_sizes(m)
    except ConfigError as e:
        problems.append(str(e))
    if sizes and m.tie_weights and not m.one_hot and (m.embed_size or sizes[0]) != sizes[-1]:
        last = (f"model.hidden_size={m.hidden_size}" if not m.layer_sizes else
                f"the last of model.layer_sizes={m.layer_sizes!r}")
        got = (f"model.embed_size={m.embed_size}" if m.embed_size else
               f"{sizes[0]} (the first layer's width, as model.embed_size=0)")
        problems.append(f"model.tie_weights=True needs the embedding as wide as the last "
                        f"layer ({last}), got {got}; set model.embed_size={sizes[-1]}")
    if t.regime == "window":
        stochastic = [f"model.{k}={getattr(m, k)!r}" for k in (
            "dropout", "dropout_input", "dropout_hidden", "dropout_output", "state_dropout",
            "embed_dropout", "weight_drop", "ar", "tar") if getattr(m, k) > 0]
        if stochastic:
            problems.append(f"train.regime='window' does not support {', '.join(stochastic)}; "
                            "set them to 0 or train.regime to 'full' or 'truncated'")
    wide = [f"model.{k}={getattr(m, k)!r}" for k in ("param_dtype", "compute_dtype")
            if getattr(m, k) == "float64"]
    if wide and not _x64_enabled():
        problems.append(f"{' and '.join(wide)} needs 64-bit JAX, which is off: set "
                        "JAX_ENABLE_X64=1 in the environment (or use float32)")
    for key, rows in (("data.batch_size", d.batch_size),
                      ("data.eval_batch_size", d.eval_batch_size)):
        if config.mesh.data > 1 and rows % config.mesh.data:
            problems.append(f"{key}={rows} must be a multiple of mesh.data={config.mesh.data} "
                            "(each device of the data axis takes an equal share of the rows)")
    specials = _special_tokens(d)
    if 0 < d.max_vocab <= len(specials):
        problems.append(f"data.max_vocab={d.max_vocab} must be 0 (no cap) or more than the "
                        f"{len(specials)} special token{'s' * (len(specials) > 1)} "
                        f"({', '.join(map(repr, specials))})")
    if problems:
        return
    try:
        build_lm_config(config, vocab_size=max(d.max_vocab, 2))
    except ConfigError as e:
        problems.append(str(e))
    problem = _optimizer_problem(t)
    if problem:
        problems.append(problem)


def _x64_enabled() -> bool:
    import jax  # noqa: PLC0415

    return bool(jax.config.jax_enable_x64)


def resolve(config: ml_collections.ConfigDict) -> RunConfig:
    """Check a ConfigDict as a whole and return it typed and frozen; nothing is read or written.

    Checks keys and types (an integer is a fine float; true/false is not a number), ranges,
    enumerations (naming the valid values), cross-field rules (cell options, tied weights,
    the window regime without dropout, float64 needing 64-bit JAX, the vocabulary cap and
    the special tokens, optimizer options), and the memory of the model with the smallest
    vocabulary it can have (`check_memory` with data.max_vocab or 1). Every problem found is
    reported in one ConfigError: one sentence each, "key=value must be ..." or "key=value is
    not one of ...", joined by "; ".
    """
    if isinstance(config, RunConfig):
        return config
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"a config must be an ml_collections.ConfigDict (get_config()), got a "
                          f"{type(config).__name__}")
    problems: list[str] = []
    sections = (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig),
                ("sample", SampleConfig), ("mesh", MeshConfig))
    for extra in sorted(set(config.keys()) - {"seed"} - {name for name, _ in sections}):
        problems.append(f"unknown config key {extra!r}; a config has seed, data, model, train, "
                        "sample and mesh")
    parts = {name: _typed(cls, config[name], f"{name}.", problems) if name in config else None
             for name, cls in sections}
    for name, part in parts.items():
        if name not in config:
            problems.append(f"{name} is missing (get_config() has every key)")
    seed = config.get("seed")
    if "seed" not in config:
        problems.append("seed is missing (get_config() has every key)")
    elif not _type_ok("int", seed):
        problems.append(f"seed must be an integer, got {seed!r}")
    if any(part is None for part in parts.values()) or "seed" not in config:
        raise ConfigError("; ".join(problems))
    typed = RunConfig(seed=seed, **parts)
    _check(typed, problems)
    if problems:
        raise ConfigError("; ".join(problems))
    check_memory(typed, vocab_size=max(typed.data.max_vocab, 1))
    return typed


def check_memory(config: RunConfig, vocab_size: int, available: int | None = None,
                 members: int = 1) -> None:
    """ConfigError when the estimated memory of a training step exceeds what there is.

    `available`: bytes (default: `memory.available_memory()`, the accelerator's limit, else
    the machine's RAM). `members`: population members held by one device (each needs as
    much as one run).
    The message: "the model needs about 58.2 GiB of memory (parameters 14.9, optimizer
    state 29.8, gradients 14.9, activations 13.5) but this machine has 23.4 GiB; lower
    model.hidden_size, model.num_layers or data.batch_size".
    """
    where = "this machine"
    if available is None:
        available, where = memory.available_memory()
    need = {k: v * members for k, v in memory.estimate_memory(config, vocab_size).items()}
    if available is None or need["total"] <= available:
        return
    gib = 2.0 ** 30
    parts = ", ".join(f"{k} {v / gib:.1f}" for k, v in need.items() if k != "total")
    who, fewer = (("the model", "") if members == 1 else
                  (f"{members} population members on one device", ", train fewer members "
                   "together or split them over more devices (mesh.population)"))
    raise ConfigError(f"{who} need{'s' * (members == 1)} about {need['total'] / gib:.1f} GiB "
                      f"of memory ({parts}) but {where} has {available / gib:.1f} GiB; lower "
                      f"model.hidden_size, model.num_layers or data.batch_size{fewer}")


def build_cell(model) -> cells.Cell:
    """The cell named by `model.cell`, with the options that cell has.

    An option that the cell does not have must keep its base value; otherwise the config
    asks for something the cell cannot do (e.g. peepholes on a GRU) and is rejected.
    """
    base = get_config().model
    cls = cells.CELLS.get(model.cell)
    if cls is None:
        raise ConfigError(f"unknown cell {model.cell!r}; choose one of {sorted(cells.CELLS)}")
    fields = {f for f in cls.__dataclass_fields__}
    options = {}
    for name in ("gate_fn", "activation", "peepholes", "forget_bias", "use_bias"):
        value = getattr(model, name)
        if name in fields:
            options[name] = value
        elif value != base[name]:
            raise ConfigError(f"model.{name}={value!r} does not apply to cell {model.cell!r}")
    if model.cell == "cifg" and model.forget_bias != base.forget_bias:
        raise ConfigError(f"model.forget_bias={model.forget_bias!r} does not apply to cell "
                          "'cifg' (a coupled cell has no forget gate to bias)")
    try:
        return cells.make_cell(model.cell, **options)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None


def layer_sizes(model) -> tuple[int, ...]:
    """Every layer's width: `model.layer_sizes` ("1150,1150,400") or hidden_size each."""
    if not model.layer_sizes:
        return (model.hidden_size,) * model.num_layers
    try:
        sizes = tuple(int(w) for w in model.layer_sizes.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != model.num_layers or min(sizes) < 1:
        raise ConfigError(f"model.layer_sizes={model.layer_sizes!r} must be "
                          f"{model.num_layers} positive integers separated by commas, one per "
                          f"layer (model.num_layers={model.num_layers}), or '' for "
                          f"model.hidden_size each")
    return sizes


def build_lm_config(config, vocab_size: int) -> LMConfig:
    """The model's `LMConfig` (a ConfigDict or a `RunConfig`)."""
    m = config.model

    def rate(value):  # -1: model.dropout
        return None if value == -1 else value

    try:
        return LMConfig(
            vocab_size=vocab_size, cell=build_cell(m), num_layers=m.num_layers,
            hidden_size=m.hidden_size, embed_size=m.embed_size or None,
            layer_sizes=layer_sizes(m) if m.layer_sizes else None, one_hot=m.one_hot,
            dropout=m.dropout, dropout_input=rate(m.dropout_input),
            dropout_hidden=rate(m.dropout_hidden), dropout_output=rate(m.dropout_output),
            locked_dropout=m.locked_dropout, state_dropout=m.state_dropout,
            embed_dropout=m.embed_dropout, weight_drop=m.weight_drop, ar=m.ar, tar=m.tar,
            tie_weights=m.tie_weights, output_bias=m.output_bias,
            init=m.init, init_scale=m.init_scale, param_dtype=m.param_dtype, unroll=m.unroll,
            compute_dtype=m.compute_dtype or None, fast_backward=m.fast_backward,
            remat_segment=m.remat_segment, logits_chunk=m.logits_chunk)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
