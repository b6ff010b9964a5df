"""Figures of a run and of a sweep, drawn on `matplotlib.figure.Figure` objects.

No pyplot and no backend switch: the figures can be saved (`RunDir.save_figure`) or shown
inline by a notebook, and importing jax_lm leaves matplotlib's global state alone.
"""

from __future__ import annotations

import functools
import io
import math
from typing import Any


@functools.cache
def _figure_class():
    from matplotlib.figure import Figure

    class NotebookFigure(Figure):
        """A Figure that Jupyter shows inline (as a PNG) without pyplot or a backend."""

        def _repr_png_(self) -> bytes:
            png = io.BytesIO()
            self.savefig(png, format="png", dpi=100)
            return png.getvalue()

    return NotebookFigure


def new_figure(**kwargs):
    """An empty matplotlib Figure (`Figure(**kwargs)`) that notebooks show inline."""
    return _figure_class()(**kwargs)


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float, str)) else math.nan


def curves_figure(records: list[dict[str, Any]]):
    """Training loss per logged step and validation perplexity per epoch, side by side."""
    steps = [r for r in records if "train_loss" in r]
    epochs = [r for r in records if "valid_ppl" in r and "epoch" in r and not r.get("final")]
    fig = _figure_class()(figsize=(10, 3.5))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot([r["step"] for r in steps], [_number(r["train_loss"]) for r in steps])
    ax1.set(xlabel="step", ylabel="train loss (nats/token)", title="training loss")
    ax2.plot([r["epoch"] for r in epochs], [_number(r["valid_ppl"]) for r in epochs], marker="o")
    ax2.set(xlabel="epoch", ylabel="perplexity", title="validation perplexity")
    fig.tight_layout()
    return fig


def summary_figure(rows: list[dict[str, Any]]):
    """A sweep's settings as bars: mean ± std over seeds of the summarized metric."""
    fig = _figure_class()(figsize=(1.6 * len(rows) + 2, 3.5))
    ax = fig.subplots()
    std = [0.0 if math.isnan(r["std"]) else r["std"] for r in rows]
    ax.bar(range(len(rows)), [r["mean"] for r in rows], yerr=std, capsize=4)
    ax.set_xticks(range(len(rows)), [r["setting"] for r in rows], rotation=20, ha="right")
    ax.set_ylabel(f"{rows[0]['metric']} (mean ± std over seeds)")
    finite = [r["mean"] - s for r, s in zip(rows, std) if math.isfinite(r["mean"] - s)]
    if finite:
        low = min(finite)
        ax.set_ylim(bottom=max(0.0, low - 0.1 * abs(low)))
    fig.tight_layout()
    return fig
