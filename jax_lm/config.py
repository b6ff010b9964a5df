"""Run configuration: one `ml_collections.ConfigDict`, every field documented in `get_config`.

Experiment files (`experiments/configs/<name>.py`) define `get_config()`, start from this
base and override only what differs. On the command line, `--config.<path>=<value>`
overrides a field; the value is parsed to the field's type, and an unknown path is rejected
with the list of valid keys. A run folder stores the resolved config as JSON.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import os
from pathlib import Path

import ml_collections

from jax_lm import cells
from jax_lm.model import LMConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "experiments" / "configs"


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
    m.dropout = 0.0                 # dropout on every layer's input and on the output layer's input
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
    return _lock(c)


def _lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Reject unknown keys everywhere except in the free-form `train.optimizer_options`."""
    config.lock()
    config.train.optimizer_options.unlock()
    return config


def load_config(path_or_name: str | os.PathLike | None = None) -> ml_collections.ConfigDict:
    """`get_config()` of a config file, or of `experiments/configs/<name>.py`; the base if None."""
    if path_or_name in (None, "", "base"):
        return get_config()
    path = Path(path_or_name)
    if not path.suffix and not path.exists():
        path = CONFIG_DIR / f"{path_or_name}.py"
    if not path.is_file():
        available = sorted(p.stem for p in CONFIG_DIR.glob("*.py")) if CONFIG_DIR.is_dir() else []
        raise ConfigError(f"no config file {path_or_name!r}; configs in {CONFIG_DIR}: {available}")
    spec = importlib.util.spec_from_file_location(f"jax_lm_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config()")
    return _lock(module.get_config())


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


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def from_json(text: str) -> ml_collections.ConfigDict:
    """A config saved by `to_json`, checked against the base: unknown keys are rejected."""
    config = get_config()
    saved = json.loads(text)

    def flatten(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and not (prefix + k == "train.optimizer_options"):
                yield from flatten(v, f"{prefix}{k}.")
            else:
                yield prefix + k, v

    for path, value in flatten(saved):
        if path == "train.optimizer_options":
            with config.train.optimizer_options.unlocked():
                config.train.optimizer_options.update(value)
            continue
        apply_overrides(config, {path: value if isinstance(value, str) else json.dumps(value)})
    return config


def build_cell(model: ml_collections.ConfigDict) -> cells.Cell:
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
        if name in fields:
            options[name] = model[name]
        elif model[name] != base[name]:
            raise ConfigError(f"model.{name}={model[name]!r} does not apply to cell {model.cell!r}")
    return cells.make_cell(model.cell, **options)


def build_lm_config(config: ml_collections.ConfigDict, vocab_size: int) -> LMConfig:
    m = config.model
    return LMConfig(
        vocab_size=vocab_size, cell=build_cell(m), num_layers=m.num_layers,
        hidden_size=m.hidden_size, embed_size=m.embed_size or None, one_hot=m.one_hot,
        dropout=m.dropout, tie_weights=m.tie_weights, output_bias=m.output_bias, init=m.init,
        init_scale=m.init_scale, param_dtype=m.param_dtype, unroll=m.unroll,
        compute_dtype=m.compute_dtype or None, fast_backward=m.fast_backward,
        remat_segment=m.remat_segment, logits_chunk=m.logits_chunk)
