"""Where one training step's time goes: jax_lm against PyTorch, piece by piece.

    python experiments/bench/breakdown.py                 # Zaremba small and medium
    python experiments/bench/breakdown.py --sizes small --rounds 9
    python experiments/bench/breakdown.py --out experiments/results/breakdown-DATE.md

Needs the PyTorch peer (experiments/bench/requirements.txt). One process, alternating
rounds (`run.alternate`), float32, times in ms per call (median over rounds):

- **pieces** of a Zaremba step (batch 20): the embedding + 2 LSTM layers forward only (as
  in evaluation) and forward and backward (under a fixed random cotangent), the output
  layer + loss forward and backward (gradients of W, b and h), and the whole training
  step (+ clip 5, SGD). PyTorch runs each with oneDNN (its default on this CPU: `nn.LSTM`
  is oneDNN's fused LSTM primitive) and without it
  (`torch.backends.mkldnn.flags(enabled=False)`).
- **products** in GFLOP/s: T steps of the recurrent product [B, H] @ [H, 4H] in a loop
  (forward) and of [B, 4H] @ [4H, H] (backward), and the output layer's three products.

Like run.py, it re-executes itself with `jax_lm.allocator.TUNABLES`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the benchmark: its timing, models and allocator re-exec)

if __name__ == "__main__":
    run.allocator.reexec_with_tuned_malloc()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jax_lm import model  # noqa: E402

torch = run.torch
SIZES = {"small": run.Bench("zaremba_small", 10_000, 200),
         "medium": run.Bench("zaremba_medium", 10_000, 650, steps=35),
         "tiny": run.tiny(run.Bench("tiny", 10_000, 200))}


def _jax_calls(fn, *args):
    """`run(n)`: n calls of the jitted `fn(*args)`, then a wait for the last result."""
    def go(n):
        for _ in range(n):
            out = fn(*args)
        jax.block_until_ready(out)
    return go


def _torch_calls(fn, onednn: bool = True):
    """`run(n)`: n calls of `fn()`, with PyTorch's oneDNN kernels on or off."""
    def go(n):
        with torch.backends.mkldnn.flags(enabled=onednn):
            for _ in range(n):
                fn()
    return go


def _ms(runs: dict, rounds: int, min_seconds: float) -> dict[str, float]:
    rates = run.alternate(runs, 1.0, rounds, min_seconds)
    return {name: 1000.0 / statistics.median(r) for name, r in rates.items()}


def _jax_pieces(b: run.Bench) -> dict:
    config = run.jax_lm_config(b)
    params = model.init_lm(jax.random.key(0), config)
    carry = model.init_carry(config, b.batch)
    inputs, targets = (jnp.asarray(a) for a in run.random_batch(b))
    rng = np.random.default_rng(1)
    d_h = jnp.asarray(rng.standard_normal((b.batch, b.steps, b.hidden), np.float32) * 0.01)
    h = jnp.asarray(rng.standard_normal((b.batch, b.steps, b.hidden), np.float32))

    def layers(p):
        return jnp.sum(model.hidden_states(p, inputs, carry, config=config)[0] * d_h)

    def output(p, h):
        logits = model.output_logits(p, h, config=config)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    layers_fwd = jax.jit(lambda p: model.hidden_states(p, inputs, carry, config=config)[0])
    layers_grad = jax.jit(jax.grad(layers))
    output_grad = jax.jit(jax.grad(output, argnums=(0, 1)))
    return {"layers_fwd": _jax_calls(layers_fwd, params), "layers": _jax_calls(layers_grad, params),
            "output": _jax_calls(output_grad, params, h), "step": run.jax_lm_train(b)}


def _torch_pieces(b: run.Bench, onednn: bool) -> dict:
    nn = torch.nn
    torch.manual_seed(0)
    embed, lstm = nn.Embedding(b.vocab, b.hidden), nn.LSTM(b.hidden, b.hidden, b.layers)
    out = nn.Linear(b.hidden, b.vocab)
    inputs, targets = (torch.from_numpy(a.T.copy()).long() for a in run.random_batch(b))
    rng = np.random.default_rng(1)
    d_h = torch.from_numpy(rng.standard_normal((b.steps, b.batch, b.hidden), np.float32) * 0.01)
    h = torch.from_numpy(rng.standard_normal((b.steps, b.batch, b.hidden), np.float32))
    step_run = run.torch_train_and_eval(b)[0]

    def layers_fwd():
        with torch.no_grad():
            lstm(embed(inputs))

    def layers():
        (lstm(embed(inputs))[0] * d_h).sum().backward()

    def output():
        h_ = h.clone().requires_grad_()
        nn.functional.cross_entropy(out(h_).reshape(-1, b.vocab), targets.reshape(-1)).backward()

    return {"layers_fwd": _torch_calls(layers_fwd, onednn), "layers": _torch_calls(layers, onednn),
            "output": _torch_calls(output, onednn),
            "step": _torch_calls(lambda: step_run(1), onednn)}


def _product_rates(b: run.Bench, rounds: int, min_seconds: float) -> dict:
    """GFLOP/s of the recurrent loop products and the output layer's products."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    w_h = rng.standard_normal((b.hidden, 4 * b.hidden), f32) * 0.05
    dz = rng.standard_normal((b.steps, b.batch, 4 * b.hidden), f32) * 0.05
    hs = rng.standard_normal((b.steps * b.batch, b.hidden), f32)
    w_out = rng.standard_normal((b.hidden, b.vocab), f32) * 0.05
    g = rng.standard_normal((b.steps * b.batch, b.vocab), f32)
    j = {k: jnp.asarray(v) for k, v in dict(w_h=w_h, dz=dz, hs=hs, w_out=w_out, g=g).items()}
    t = {k: torch.from_numpy(v) for k, v in dict(w_h=w_h, dz=dz, hs=hs, w_out=w_out, g=g,
                                                  hs_t=hs.T.copy()).items()}
    H = b.hidden

    def loop_fwd(w, dz):  # h_t = tanh((h_{t-1} W + dz_t)[:, :H])
        return jax.lax.scan(lambda h, d: (jnp.tanh((h @ w + d)[:, :H]), None),
                            jnp.zeros((b.batch, H)), dz)[0]

    def loop_bwd(w, dz):  # g_{t-1} = (dz_t ⊙ [g_t]×4) Wᵀ
        return jax.lax.scan(lambda g, d: ((d * jnp.tile(g, (1, 4))) @ w.T, None),
                            jnp.ones((b.batch, H)), dz)[0]

    def torch_fwd():
        h = torch.zeros(b.batch, H)
        for d in t["dz"]:
            h = torch.tanh((h @ t["w_h"] + d)[:, :H])

    def torch_bwd():
        g_ = torch.ones(b.batch, H)
        for d in t["dz"]:
            g_ = (d * g_.repeat(1, 4)) @ t["w_h"].T

    fwd, bwd = jax.jit(loop_fwd), jax.jit(loop_bwd)
    hs_t = jax.jit(lambda x: jax.lax.optimization_barrier(x.T))(j["hs"])
    out_fwd, out_dh, out_dw = (jax.jit(f) for f in (lambda h, w: h @ w, lambda g, w: g @ w.T,
                                                    lambda ht, g: ht @ g))

    pairs = {
        f"recurrent loop, forward: T × [{b.batch}, {H}] @ [{H}, {4 * H}]":
            (_jax_calls(fwd, j["w_h"], j["dz"]), _torch_calls(torch_fwd)),
        f"recurrent loop, backward: T × [{b.batch}, {4 * H}] @ [{4 * H}, {H}]":
            (_jax_calls(bwd, j["w_h"], j["dz"]), _torch_calls(torch_bwd)),
        f"output layer h @ W: [{b.tokens}, {H}] @ [{H}, {b.vocab}]":
            (_jax_calls(out_fwd, j["hs"], j["w_out"]), _torch_calls(lambda: t["hs"] @ t["w_out"])),
        "output layer dh = g @ Wᵀ":
            (_jax_calls(out_dh, j["g"], j["w_out"]), _torch_calls(lambda: t["g"] @ t["w_out"].T)),
        "output layer dW = hᵀ @ g (hᵀ materialized)":
            (_jax_calls(out_dw, hs_t, j["g"]), _torch_calls(lambda: t["hs_t"] @ t["g"])),
    }
    gflop = {name: 2.0 * b.tokens * H * 4 * H / 1e9 for name in list(pairs)[:2]}
    gflop.update({name: 2.0 * b.tokens * H * b.vocab / 1e9 for name in list(pairs)[2:]})
    rows = {}
    for name, (jax_run, torch_run) in pairs.items():
        ms = _ms({"xla": jax_run, "torch": torch_run}, rounds, min_seconds)
        rows[name] = {k: gflop[name] / (v / 1000.0) for k, v in ms.items()}
    return rows


def breakdown(size: str, rounds: int, min_seconds: float) -> str:
    b = SIZES[size]
    jax_runs = _jax_pieces(b)
    torch_runs = {on: _torch_pieces(b, on) for on in (True, False)}
    labels = {"layers_fwd": "embedding + 2 LSTM layers, forward only (no gradient)",
              "layers": "embedding + 2 LSTM layers, forward + backward",
              "output": "output layer + loss, forward + backward (dW, db, dh)",
              "step": "training step (+ clip 5, SGD)"}
    lines = [f"### {b.name} (batch {b.batch}, unroll {b.steps}): ms per call", "",
             "| piece | jax_lm | PyTorch (oneDNN) | PyTorch without oneDNN |", "|---|---|---|---|"]
    for piece, label in labels.items():
        ms = _ms({"jax_lm": jax_runs[piece], "on": torch_runs[True][piece],
                  "off": torch_runs[False][piece]}, rounds, min_seconds)
        lines.append(f"| {label} | {ms['jax_lm']:.1f} | {ms['on']:.1f} | {ms['off']:.1f} |")
    lines += ["", f"### {b.name}: products, GFLOP/s", "", "| product | XLA | PyTorch |",
              "|---|---|---|"]
    for name, rates in _product_rates(b, rounds, min_seconds).items():
        lines.append(f"| {name} | {rates['xla']:.0f} | {rates['torch']:.0f} |")
    return "\n".join(lines + [""])


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="small,medium", help="comma-separated: small, medium, tiny")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--min-seconds", type=float, default=1.0, help="least time per round")
    p.add_argument("--out", type=Path, help="also write the record (with its command) here")
    opts = p.parse_args(argv)
    if torch is None:
        raise SystemExit("breakdown.py compares with PyTorch: pip install -r "
                         "experiments/bench/requirements.txt")
    torch.set_num_threads(os.cpu_count())
    info = run.machine()
    args = sys.argv[1:] if argv is None else argv
    command = " ".join(["python experiments/bench/breakdown.py", *args])
    header = [f"# Where the time goes ({info['cpu']}, {info['cores']} cores, commit "
              f"{info['commit']}, malloc: {info['malloc']})", "",
              f"- command: `{command}` ({opts.rounds} rounds of ≥ {opts.min_seconds:g} s, "
              f"alternating), {datetime.date.today().isoformat()}",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()), ""]
    text = "\n".join(header + [breakdown(s, opts.rounds, opts.min_seconds)
                               for s in opts.sizes.split(",")])
    print(text)
    if opts.out:
        opts.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
