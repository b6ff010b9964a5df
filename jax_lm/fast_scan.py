"""Backward passes that keep weight gradients out of the time loop, as big matmuls.

`cells.unroll_projected` differentiated by `jax.grad` runs a backward scan that, at every
step t, uses the recurrent matmul hw_t = h_{t-1} W_h twice:

    d h_{t-1} += d hw_t W_hᵀ         [B, G·H] @ [G·H, H]   needed inside: it feeds step t−1
    d W_h     += h_{t-1}ᵀ d hw_t     [H, B] @ [B, G·H]     not needed inside

With B ≈ 20 rows the second product runs far below the GEMM rate, and the accumulation
reads and writes the whole [H, G·H] matrix at every step. Here the backward
scan carries only d carry and emits d hw_t; after it, one matmul does the whole sum:

    d W_h = Σ_t h_{t-1}ᵀ d hw_t = H_prevᵀ @ dHW           [H, T·B] @ [T·B, G·H]

Each step is `cell.update` (elementwise, reads no weight matrix) fed with hw_t:

    hw_t                 = output(carry_{t-1}) W_h
    (carry_t, h_t)       = hold(m_t, update(θ, carry_{t-1}, xw_t, hw_t), carry_{t-1})

and its backward step is the VJP of that `update` (with the mask) w.r.t. (θ, carry_{t-1},
xw_t, hw_t), plus the one product that must stay inside:

    d carry_{t-1} = ∂update/∂carry_{t-1} ᵀ (d carry_t, d h_t) + outputᵀ(d hw_t W_hᵀ)

θ are the small elementwise parameters (LSTM peepholes, GRU's b_hn); their per-step
gradients are summed after the scan. d xw is returned as is; the gradients of w_x and b
follow from it through `project`, whose weight and bias gradients, like the output
layer's (`dense_bias`), are one [I + 1, T·B] @ [T·B, O] product with the transposed input
(and a row of ones) materialized first.

A cell whose `update` reads xw_t and hw_t only as their sum z_t (`SUMS_INPUTS`: RNN and
the LSTM family, not GRU) saves z_t instead of hw_t, and its backward scan emits one
[T, B, G·H] array, d z, which is both d xw and d hw.

Measured on the 2-core benchmark machine (experiments/results/bench-*.md): the VJP of the
scan bought +7% (Zaremba small) and +12% (medium) in training tokens/s, the materialized
transposes another +23% and +15%.

The values and, up to summation order, the gradients are those of plain `jax.grad`
(`tests/test_fast_scan.py`, float64). `jax.custom_vjp` supports reverse mode only: for
forward-mode differentiation (`jax.jvp`, `jax.jacfwd`) use `LMConfig(fast_backward=False)`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jax_lm import cells

Array = jax.Array

# Parameters used by the matmuls (outside `cell.update`); every other entry is elementwise.
_MATMUL_PARAMS = ("w_x", "w_h", "b")


def _weight_grad(x: Array, g: Array) -> Array:
    """Σ over leading axes of x[..., I]ᵀ g[..., O] -> [I, O], as one matmul xᵀ @ g.

    xᵀ is materialized first: XLA:CPU runs a product that contracts the leading (row) axis
    of both operands about 1.4× slower than a plain row-major [I, N] @ [N, O] (measured at
    the output layer of Zaremba small); the copy of x costs far less than that.
    """
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    x_t = jax.lax.optimization_barrier(x2.T)                                  # (I, N) in memory
    return x_t @ g2


@jax.custom_vjp
def dense(x: Array, w: Array) -> Array:
    """x [..., I] @ w [I, O], whose weight gradient is `_weight_grad` (one materialized xᵀ).

    Values and gradients are those of `x @ w`; only the backward matmul's layout differs.
    """
    return x @ w


def _dense_fwd(x, w):
    return x @ w, (x, w)


def _dense_bwd(residuals, g):
    x, w = residuals
    return g @ w.T, _weight_grad(x, g)


dense.defvjp(_dense_fwd, _dense_bwd)


@jax.custom_vjp
def dense_bias(x: Array, w: Array, b: Array) -> Array:
    """x [..., I] @ w [I, O] + b [O], whose w and b gradients are one matmul [x, 1]ᵀ @ g.

    The bias gradient Σ g (a pass over g, e.g. the [B·T, V] logit gradient) becomes the
    last row of the weight-gradient product, for one more row of xᵀ.
    """
    return _dense_bias(x, w, b)


def _dense_bias(x, w, b):
    xw = x @ w
    return xw + cells.lead(b, xw.ndim)


def _dense_bias_fwd(x, w, b):
    return _dense_bias(x, w, b), (x, w)


def _dense_bias_bwd(residuals, g):
    x, w = residuals
    ones = jnp.ones(x.shape[:-1] + (1,), x.dtype)
    d_wb = _weight_grad(jnp.concatenate([x, ones], axis=-1), g)               # (I + 1, O)
    return g @ w.T, d_wb[:-1], d_wb[-1]


dense_bias.defvjp(_dense_bias_fwd, _dense_bias_bwd)


def _masked_update(cell, small_params, carry, xw_t, hw_t, m_t):
    """`cell.update`, holding the carry where m_t [B] is 0 (as `cells.unroll_projected`)."""
    new_carry, h_t = cell.update(small_params, carry, xw_t, hw_t)
    if m_t is not None:
        new_carry = cells._hold(m_t, new_carry, carry)
        h_t = cell.output(new_carry)
    return new_carry, h_t


def _scan_prefetched(body, carry, xs, *, unroll: int = 1):
    """`jax.lax.scan(body, carry, xs)`, with step t's xs_t read from a buffer that step
    t − 1 filled, not from a slice of xs inside the step's fusions.

    Same results. XLA:CPU does not vectorize an elementwise fusion that reads a dynamic
    slice of xs through static slices (the gates of z_t): an isolated LSTM step of Zaremba
    small takes 140 µs so, 84 µs with the slice copied into the loop carry a step ahead
    (Zaremba small: +2% training tokens/s, evaluation within ±5%). Not for `jax.grad` (each slice
    would transpose to a full-size update): it runs inside `_scan`'s own forward pass only.
    """
    steps = jax.tree.leaves(xs)[0].shape[0]
    if steps == 0:
        return jax.lax.scan(body, carry, xs)

    def at(t):
        return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, t, keepdims=False), xs)

    def step(state, t):
        carry, xs_t = state
        xs_next = at(jnp.minimum(t + 1, steps - 1))
        carry, ys_t = body(carry, xs_t)
        return (carry, xs_next), ys_t

    (carry, _), ys = jax.lax.scan(step, (carry, at(0)), jnp.arange(steps), unroll=unroll)
    return carry, ys


def _forward(cell, w_h, small_params, carry, xw, mask, unroll):
    """The scan; also returns what the backward pass needs: every carry_{t-1} and the
    step's input to `update`: hw_t, or z_t = xw_t + hw_t for a cell that `SUMS_INPUTS`."""

    def body(carry, inputs):
        xw_t, m_t = inputs
        hw_t = cell.output(carry) @ w_h                                       # (B, G·H)
        if cell.SUMS_INPUTS:
            xw_t, hw_t = xw_t + hw_t, 0.0                     # update reads xw_t + 0 = z_t
        new_carry, h_t = _masked_update(cell, small_params, carry, xw_t, hw_t, m_t)
        return new_carry, (h_t, carry, xw_t if cell.SUMS_INPUTS else hw_t)

    final, (hs, prev_carries, saved) = _scan_prefetched(body, carry, (xw, mask), unroll=unroll)
    return (final, hs), (prev_carries, saved)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 6))
def _scan(cell, w_h, small_params, carry, xw, mask, unroll):
    return _forward(cell, w_h, small_params, carry, xw, mask, unroll)[0]


def _scan_fwd(cell, w_h, small_params, carry, xw, mask, unroll):
    outputs, (prev_carries, saved) = _forward(cell, w_h, small_params, carry, xw, mask, unroll)
    xw = None if cell.SUMS_INPUTS else xw
    return outputs, (w_h, small_params, xw, mask, prev_carries, saved)


def _scan_bwd(cell, unroll, residuals, cotangents):
    w_h, small_params, xw, mask, prev_carries, saved = residuals
    d_final, d_hs = cotangents
    sums = cell.SUMS_INPUTS

    def body(d_carry, inputs):
        carry, xw_t, saved_t, m_t, d_h_t = inputs
        if sums:  # saved_t = z_t; d xw_t = d hw_t = d z_t
            _, update_vjp = jax.vjp(
                lambda p, c, z: _masked_update(cell, p, c, z, 0.0, m_t), small_params, carry,
                saved_t)
            d_small, d_prev, d_hw_t = update_vjp((d_carry, d_h_t))
        else:     # saved_t = hw_t
            _, update_vjp = jax.vjp(
                lambda p, c, x, y: _masked_update(cell, p, c, x, y, m_t), small_params, carry,
                xw_t, saved_t)
            d_small, d_prev, d_xw_t, d_hw_t = update_vjp((d_carry, d_h_t))
        _, output_vjp = jax.vjp(cell.output, carry)
        (d_prev_from_hw,) = output_vjp(d_hw_t @ w_h.T)                        # (B, H)
        d_prev = jax.tree.map(jnp.add, d_prev, d_prev_from_hw)
        return d_prev, (d_small, d_hw_t) if sums else (d_small, (d_xw_t, d_hw_t))

    d_carry, (d_small, d_inputs) = jax.lax.scan(
        body, d_final, (prev_carries, xw, saved, mask, d_hs), reverse=True, unroll=unroll)
    d_xw, d_hw = (d_inputs, d_inputs) if sums else d_inputs
    h_prev = cell.output(prev_carries)                                        # (T, B, H)
    d_w_h = _weight_grad(h_prev, d_hw)                                        # one big matmul
    d_small = jax.tree.map(lambda g: g.sum(axis=0), d_small)
    return d_w_h, d_small, d_carry, d_xw, None


_scan.defvjp(_scan_fwd, _scan_bwd)


def unroll_projected(cell: cells.Cell, params: cells.Params, carry, xw: Array,
                     mask: Array | None = None, *, unroll: int = 1):
    """`cells.unroll_projected` (no `return_carries`) with the backward pass of this module.

    Args:
      cell: a `jax_lm.cells` cell (static).
      params: its params; w_x and b are not read here (they made xw).
      carry: initial carry, leaves [B, H].
      xw: [T, B, G·H] input projections.
      mask: optional bool [T, B]; where False the carry is held and the held h is emitted.
      unroll: `jax.lax.scan` unroll factor, of the forward and of the backward scan.

    Returns:
      (final carry, hs [T, B, H]).
    """
    small_params = {k: v for k, v in params.items() if k not in _MATMUL_PARAMS}
    return _scan(cell, params["w_h"], small_params, carry, xw, mask, unroll)


def project(params: cells.Params, x: Array) -> Array:
    """`cells.project` (x @ w_x + b) with the weight (and bias) gradient of `dense_bias`."""
    return dense_bias(x, params["w_x"], params["b"]) if "b" in params else dense(x, params["w_x"])


def unroll(cell: cells.Cell, params: cells.Params, carry, xs: Array,
           mask: Array | None = None, *, unroll: int = 1):
    """`cells.unroll` with the backward pass of this module: xs [T, B, I] -> (carry, hs)."""
    return unroll_projected(cell, params, carry, project(params, xs), mask, unroll=unroll)
