"""The early-stopped fitting loop that the gradient-trained methods ("steps", "coefficients")
share: epochs over seeded shuffles of the calibration rows in mini-batches, the validation loss
after every epoch, the best state kept (the start counts: a run that never beats it returns it),
and a stop after `patience` epochs without a new best. The caller owns the parameters, the
optimizer and the losses; this loop owns the order of the rows and the bookkeeping."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Generic, List, Optional, Tuple, TypeVar

import torch

__all__ = ["Fit", "fit_early_stopped"]

State = TypeVar("State")


@dataclass
class Fit(Generic[State]):
    """What `fit_early_stopped` found: the state best on validation and its loss, the start's
    loss, the epoch that reached it (0: the start), the mean training loss of each epoch, the
    validation loss after each (validation_history[0] is the start's) and the optimizer steps."""

    state: State
    loss: float
    loss_start: float
    best_epoch: int
    train_history: List[float] = field(default_factory=list)
    validation_history: List[float] = field(default_factory=list)
    iterations: int = 0


def fit_early_stopped(
    step: Callable[[torch.Tensor], Optional[float]],
    evaluate: Callable[[], Tuple[float, State]],
    start: Tuple[float, State],
    rows: int,
    batch_size: int,
    epochs: int,
    patience: int,
    generator: torch.Generator,
    device: torch.device,
) -> Fit[State]:
    """Fit by mini-batches of `rows` calibration rows.

    step(indices) takes one optimizer step on the rows `indices` (a (b,) long tensor on
    `device`) and returns its mean training loss, or None to end the epoch there (a grid whose
    times merged, a non-finite loss). evaluate() -> (validation loss, a snapshot of the state)
    after each epoch; start: the same for the initial state. Each epoch's order is
    `torch.randperm(rows, generator=generator)`: the same generator gives the same fit.
    """
    best, best_state = start
    fit = Fit(best_state, best, best, 0, validation_history=[best])
    batch = min(batch_size, rows)
    since = 0
    for epoch in range(1, epochs + 1):
        order = torch.randperm(rows, generator=generator, device=generator.device).to(device)
        total, count = 0.0, 0
        for lo in range(0, rows, batch):
            indices = order[lo: lo + batch]
            loss = step(indices)
            if loss is None:
                break
            fit.iterations += 1
            total, count = total + loss * len(indices), count + len(indices)
        fit.train_history.append(total / count if count else math.inf)
        value, state = evaluate()
        fit.validation_history.append(value)
        if value < fit.loss:
            fit.loss, fit.state, fit.best_epoch, since = value, state, epoch, 0
        else:
            since += 1
            if since >= patience:
                break
    return fit
