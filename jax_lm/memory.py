"""How much memory a training step needs, and how much the device has (estimates, no allocation).

`config.resolve` refuses a config whose step cannot fit before anything is read or
written (with the smallest vocabulary the config allows), and the fit loop checks again
once the vocabulary is known (`config.check_memory`).
"""

from __future__ import annotations

import os

_BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}
_OPTIMIZER_COPIES = {"sgd": 0, "momentum": 1, "adagrad": 1, "rmsprop": 1, "adam": 2, "adamw": 2}
_GATES = {"rnn": 1, "lstm": 4, "cifg": 3, "gru": 3}


def estimate_memory(config, vocab_size: int) -> dict[str, int]:
    """Rough bytes of a training step: parameters, optimizer state, activations, total.

    Parameters: embedding V·E, per layer G·H·(I + H + 1), output H·V + V. Activations of a
    training step: the embedded inputs, the gates and states of every layer and position,
    and the logits with their gradient, B·T·(E + L·(G + 2)·H + 2·V) values in the compute
    dtype (`logits_chunk` C: 2·C·V for the logits); evaluation (forward only, batch
    `eval_batch_size`) counts when it needs more. Reads only the config: nothing is
    allocated. An estimate for refusing hopeless configs early, not a measurement.
    """
    from jax_lm.config import layer_sizes  # noqa: PLC0415 - config imports this module

    m, d = config.model, config.data
    gates = _GATES.get(m.cell, 4)
    sizes = layer_sizes(m)  # a resolved config's are valid
    embed = 0 if m.one_hot else (m.embed_size or sizes[0])
    params, width = vocab_size * embed, vocab_size if m.one_hot else embed
    for hidden in sizes:
        params += gates * hidden * (width + hidden + 1)
        width = hidden
    params += (0 if m.tie_weights else width * vocab_size) + vocab_size
    hidden = sum(sizes) / len(sizes)  # activations: the mean width
    size = _BYTES.get(m.param_dtype, 4)
    act_size = _BYTES.get(m.compute_dtype or m.param_dtype, 4)
    steps = d.seq_len if d.batcher != "sentences" else 64  # sentences: a typical length

    def values(batch, per_layer, logit_copies):
        positions = batch * steps
        scored = min(positions, m.logits_chunk) if m.logits_chunk else positions
        return positions * (embed + m.num_layers * per_layer * hidden) \
            + logit_copies * scored * vocab_size

    train = values(d.batch_size, gates + 2, 2)
    evaluate = values(d.eval_batch_size or d.batch_size, 2, 1)
    activations = int(max(train, evaluate) * act_size)
    estimate = {"parameters": params * size,
                "optimizer state": params * size * (
                    _OPTIMIZER_COPIES.get(config.train.optimizer, 2)
                    + (config.train.ntasgd_patience > 0)),  # NT-ASGD: the average
                "gradients": params * size, "activations": activations}
    estimate["total"] = sum(estimate.values())
    return estimate


def available_memory() -> tuple[int | None, str]:
    """(bytes, what has them): the accelerator's `bytes_limit` when JAX's default device is
    not the CPU, else the physical memory. Allocates nothing."""
    try:
        import jax  # noqa: PLC0415

        device = jax.devices()[0]
        if device.platform != "cpu":
            stats = device.memory_stats() or {}
            if "bytes_limit" in stats:
                return int(stats["bytes_limit"]), f"this {device.platform.upper()}"
    except Exception:  # noqa: BLE001 - no backend: fall back to RAM
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "this machine"
    except (ValueError, OSError, AttributeError):
        return None, "this machine"
