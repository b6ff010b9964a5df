"""Host-side learning-rate rules of the seed documents and the classic PTB recipes.

Each rule is a pure function of (rule, state, metric) -> state, evaluated once per epoch on
the host; the new rate goes into the optimizer state with `optim.set_hyperparams`.

- 000: halve when the epoch's log-likelihood drops   -> `HALVE_WHEN_LIKELIHOOD_DROPS`
- 001: halve when the evaluated loss rises           -> `HALVE_WHEN_LOSS_RISES`
- PyTorch word_language_model: ÷4 when validation loss is not a new best -> `QUARTER_WHEN_NOT_BEST`
- Zaremba et al. 2014: constant for `start` epochs, then × decay per epoch -> `zaremba_decay`
- Merity et al. 2018: NT-ASGD's non-monotone trigger for iterate averaging -> `nt_trigger`
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple


class PlateauState(NamedTuple):
    """The current learning rate and the metric that the next evaluation is compared to."""

    learning_rate: float
    reference: float | None = None


@dataclasses.dataclass(frozen=True)
class DecayWhenWorse:
    """Multiply the learning rate by `factor` when an evaluation is worse than a reference.

    Attributes:
      factor: the multiplier (0.5 halves).
      mode: "min" for a loss, "max" for a likelihood.
      reference: "previous" compares with the last evaluation (000, 001);
        "best" with the best one so far (PyTorch's word_language_model, where a tie also
        counts as not better).
    """

    factor: float = 0.5
    mode: str = "min"
    reference: str = "previous"

    def __post_init__(self):
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if self.reference not in ("previous", "best"):
            raise ValueError(f"reference must be 'previous' or 'best', got {self.reference!r}")

    def init(self, learning_rate: float) -> PlateauState:
        return PlateauState(learning_rate=learning_rate)

    def update(self, state: PlateauState, metric: float) -> PlateauState:
        """Compare `metric` with the reference, decay if worse, and move the reference."""
        sign = 1.0 if self.mode == "min" else -1.0  # sign * metric is a loss
        ref = state.reference
        if self.reference == "previous":
            worse = ref is not None and sign * metric > sign * ref
            new_ref = metric
        else:
            worse = ref is not None and not sign * metric < sign * ref
            new_ref = metric if ref is None or sign * metric < sign * ref else ref
        lr = state.learning_rate * self.factor if worse else state.learning_rate
        return PlateauState(learning_rate=lr, reference=new_ref)


HALVE_WHEN_LIKELIHOOD_DROPS = DecayWhenWorse(factor=0.5, mode="max", reference="previous")
HALVE_WHEN_LOSS_RISES = DecayWhenWorse(factor=0.5, mode="min", reference="previous")
QUARTER_WHEN_NOT_BEST = DecayWhenWorse(factor=0.25, mode="min", reference="best")


def zaremba_decay(base_rate: float, epoch: int, *, start: int, decay: float) -> float:
    """Rate for 1-based `epoch`: `base_rate` up to epoch `start`, then × `decay` per epoch.

    Zaremba et al. 2014: small model base 1, start 4, decay 0.5 (halved from epoch 5 on);
    medium base 1, start 6, decay 1/1.2.
    """
    return base_rate * decay ** max(epoch - start, 0)


def nt_trigger(history: list[float], value: float, patience: int) -> bool:
    """NT-ASGD's non-monotone trigger (Merity et al. 2018, Algorithm 1; AWD-LSTM's code).

    True when the validation loss `value` is worse than the best of the earlier ones
    `history` (oldest first) excluding the `patience` most recent, and there are more than
    `patience` of them: len(history) > n and value > min(history[:-n]).
    """
    return len(history) > patience and value > min(history[:len(history) - patience])
