"""A time-dependent classifier p(y | x_t, t), the one classifier guidance needs
(`guidance.Classifier`); it is trained with `losses.classifier_loss` by `Trainer`."""
from __future__ import annotations

from typing import Callable

import torch

from .model import ScoreModel
from .sde import AffineSDE

__all__ = ["NoisyClassifier"]


class NoisyClassifier(ScoreModel):
    """A time-dependent classifier p(y | x_t, t): `net(x_in, t_in)` -> logits (B, K).

    A ScoreModel only to share what training needs: the SDE, the network's time input, NFE
    counting and the `Trainer` (EMA, checkpoints, resumption). Train it with
    `Trainer(NoisyClassifier(net, sde), (x, labels), loss_fn=losses.classifier_loss)`; the
    network must have `num_classes` (K). It serves logits, not a score: `eps`, `x0` and `score`
    raise.
    """

    def __init__(self, net: Callable[..., torch.Tensor], sde: AffineSDE, time_input="t"):
        super().__init__(net, sde, prediction="eps", time_input=time_input)

    def forward(self, x: torch.Tensor, t, **cond) -> torch.Tensor:
        """Logits (B, K) at (x, t)."""
        t = self._batch_time(x, t)
        logits = self.net(x, self.network_time(t).to(x.dtype), **cond)
        self.nfe += 1
        if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(f"the classifier network must return logits (B, K) = ({x.shape[0]}, K); got {tuple(logits.shape)}")
        return logits

    def to_eps_x0(self, out, x, t):
        raise TypeError("a NoisyClassifier serves class logits, not a score; guide a score model with guidance.Classifier")
