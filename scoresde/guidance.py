"""Guided models: classifier-free guidance and classifier guidance.

Guided models are `ScoreModel`s, so every ODE and SDE sampler runs them unchanged.

Classifier-free guidance (Ho & Salimans 2022): with the conditional and unconditional
predictions of one network trained with condition dropout,

    eps_guided = eps_uncond + scale * (eps_cond - eps_uncond)

(scale 0: unconditional, 1: conditional, > 1: sharper, less diverse). Every conversion of
`ScoreModel` (eps, x0, v, score, EDM's denoiser) is affine in the raw network output with
coefficients that depend only on (x, t), so this combination is the same whether it is written
in eps, x0, score or the raw output; `ClassifierFree` combines raw outputs.

Classifier guidance (Dhariwal & Nichol 2021, eq. 12 in score form; Song et al. 2021, eq. 48):

    score_guided = score(x_t, t) + scale * grad_x log p(y | x_t, t)

How guided evaluations count in `nfe`. One evaluation of a guided model is one counted
evaluation (`nfe += 1`, so `SampleResult.nfe` equals a solver's step count times its
evaluations per step, as for an unguided model), and it makes exactly one call of the
wrapped model (whose own `nfe` also rises by 1):

- `ClassifierFree` with 0 < scale != 1: one batched network call on 2B rows (conditional rows
  first, then unconditional), so the compute of an evaluation is that of an unguided one at
  twice the batch. Compare wall time, not NFE, with unguided sampling. At scale 0 or 1 only the
  B rows that matter are evaluated.
- `Classifier`: one call of the score network on B rows, plus one classifier forward and
  backward pass on B rows, counted apart in `classifier_evals` (it is not a score network).

Inpainting is a state hook of the solver loop: `scoresde.solvers.hooks.Inpainting`.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from . import _checks
from .model import ScoreModel

__all__ = ["ClassifierFree", "Classifier"]


def _check_scale(scale) -> float:
    scale = _checks.real("scale", scale, low=0)
    if scale > 1e6:  # the guided output would overflow long before any use
        raise _checks.fail("scale", "a finite number in [0, 1e6]", scale)
    return scale


class _Guided(ScoreModel):
    """A ScoreModel serving a modified output of `model` (same SDE, prediction, time input)."""

    def __init__(self, model: ScoreModel):
        if not isinstance(model, ScoreModel):
            # the type, not the repr: a network's repr runs over many lines
            raise _checks.ArgumentError(f"model must be a scoresde.ScoreModel; got {type(model).__name__}")
        super().__init__(model.net, model.sde, model.prediction, model.time_input, model.sigma_data)
        self.model = model

    def _fixed_conditioning(self, cond: dict) -> None:
        if cond:
            raise ValueError(
                f"a guided model's condition is fixed when it is built; got extra keyword(s) {', '.join(cond)}"
            )


class ClassifierFree(_Guided):
    """Classifier-free guidance of a conditional `model` (Ho & Salimans 2022).

    Args:
        model: a ScoreModel whose network takes labels `y` (built with `num_classes`, trained
            with `label_dropout`) or a continuous condition `cond` (an MLP or UNet with
            `cond_dim`, trained with `cond_dropout`, the condition dropped to zeros).
        cond: the condition of each sample: integer labels (B,) in [0, num_classes), passed as
            `y`; or a float tensor (B, cond_dim), passed as `cond`. B is the sampling batch.
        scale: guidance scale >= 0: 0 unconditional, 1 conditional, > 1 guided.
        null: the null condition, shaped like `cond`; default the null label `num_classes`
            for labels, zeros for a continuous condition.
    """

    def __init__(self, model: ScoreModel, cond: torch.Tensor, scale: float, null: Optional[torch.Tensor] = None):
        super().__init__(model)
        self.scale = _check_scale(scale)
        accepted = "a tensor: labels (B,) or a continuous condition (B, cond_dim), B >= 1"
        if not isinstance(cond, torch.Tensor) or cond.ndim == 0 or cond.shape[0] == 0 or cond.dtype == torch.bool \
                or cond.is_complex():
            raise _checks.fail("cond", accepted, cond if not isinstance(cond, torch.Tensor)
                               else f"a {cond.dtype} tensor of shape {tuple(cond.shape)}")
        net = model.net
        if cond.is_floating_point():
            if cond.device.type == "cpu":
                _checks.finite("cond", cond)
            self.key = "cond"
            cond_dim = getattr(net, "cond_dim", None)
            if cond_dim is None:
                raise ValueError(f"cond is a float tensor but the network {type(net).__name__} has no cond_dim")
            if cond.ndim != 2 or cond.shape[1] != cond_dim:
                raise ValueError(f"cond must have shape (B, cond_dim) = (B, {cond_dim}); got {tuple(cond.shape)}")
            default_null = torch.zeros_like(cond)
        else:
            self.key = "y"
            num_classes = getattr(net, "num_classes", None)
            if num_classes is None:
                raise ValueError(f"cond holds labels but the network {type(net).__name__} has no num_classes")
            if cond.ndim != 1:
                raise ValueError(f"cond (labels) must have shape (B,); got {tuple(cond.shape)}")
            lo, hi = int(cond.min()), int(cond.max())
            if lo < 0 or hi >= num_classes:
                raise ValueError(
                    f"cond (labels) must lie in [0, num_classes) = [0, {num_classes}) (the null label "
                    f"{num_classes} is the unconditional model); got values in [{lo}, {hi}]"
                )
            default_null = torch.full_like(cond, num_classes)
        if null is None:
            null = default_null
        elif not isinstance(null, torch.Tensor):
            raise _checks.fail("null", f"None or a tensor matching cond: {cond.dtype} {tuple(cond.shape)}",
                               type(null).__name__)
        elif null.shape != cond.shape or null.dtype != cond.dtype:
            raise ValueError(f"null must match cond: {cond.dtype} {tuple(cond.shape)}; got {null.dtype} {tuple(null.shape)}")
        self.cond, self.null = cond, null

    def forward(self, x: torch.Tensor, t, **cond) -> torch.Tensor:
        """The guided raw output at (x, t): one counted evaluation (see the module docstring)."""
        self._fixed_conditioning(cond)
        if x.shape[0] != self.cond.shape[0]:
            raise ValueError(f"x has batch {x.shape[0]} but cond was given for a batch of {self.cond.shape[0]}")
        t = self._batch_time(x, t)
        cond_c, cond_u = self.cond.to(x.device), self.null.to(x.device)
        if self.scale == 1:
            out = self.model(x, t, **{self.key: cond_c})
        elif self.scale == 0:
            out = self.model(x, t, **{self.key: cond_u})
        else:
            both = self.model(torch.cat([x, x]), torch.cat([t, t]), **{self.key: torch.cat([cond_c, cond_u])})
            out_c, out_u = both.chunk(2)
            out = out_u + self.scale * (out_c - out_u)
        self.nfe += 1
        return out

    def extra_repr(self) -> str:
        return f"scale={self.scale}, condition={self.key!r}"


class Classifier(_Guided):
    """Classifier guidance: score + scale * grad_x log p(y | x_t, t) (Dhariwal & Nichol 2021).

    Args:
        model: the (unconditional) ScoreModel.
        classifier: (x (B, *shape), t (B,) model time) -> logits (B, K) of p(y | x_t, t), e.g. a
            trained `classifier.NoisyClassifier`, or an exact posterior's log-probabilities.
        y: target labels (B,) in [0, K).
        scale: guidance scale >= 0 (0: the model itself; 1: the exact conditional score when
            the classifier is the exact posterior).

    The gradient is taken with autograd even when sampling runs without gradients; it is
    not differentiated further (no graph through it).
    """

    def __init__(self, model: ScoreModel, classifier: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 y: torch.Tensor, scale: float):
        super().__init__(model)
        if not callable(classifier):
            raise _checks.fail("classifier", "a callable (x, t) -> logits (B, K)", classifier)
        if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.is_floating_point() or y.is_complex() \
                or y.dtype == torch.bool or y.numel() == 0:
            raise ValueError(f"y must be an integer tensor of shape (B,), B >= 1; got {getattr(y, 'dtype', type(y))} "
                             f"{tuple(getattr(y, 'shape', ()))}")
        if y.numel() and int(y.min()) < 0:
            raise ValueError(f"y must lie in [0, K) for a classifier with K classes; got minimum {int(y.min())}")
        self.classifier, self.y = classifier, y
        self.scale = _check_scale(scale)
        self.classifier_evals = 0

    def log_prob_grad(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """grad_x log p(y | x_t = x, t), shaped like x; t of shape (B,)."""
        y = self.y.to(x.device)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            logits = self.classifier(x_in, t)
            if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                raise ValueError(f"the classifier must return logits (B, K) = ({x.shape[0]}, K); got {tuple(logits.shape)}")
            if y.device.type == "cpu" and int(y.max()) >= logits.shape[1]:
                raise ValueError(f"y must lie in [0, K) = [0, {logits.shape[1]}); got maximum {int(y.max())}")
            log_p = torch.log_softmax(logits, dim=1).gather(1, y[:, None]).sum()
            (grad,) = torch.autograd.grad(log_p, x_in)
        self.classifier_evals += 1
        return grad

    def forward(self, x: torch.Tensor, t, **cond) -> torch.Tensor:
        """The guided raw output at (x, t): one counted evaluation (see the module docstring)."""
        self._fixed_conditioning(cond)
        if x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has batch {x.shape[0]} but y was given for a batch of {self.y.shape[0]}")
        t = self._batch_time(x, t)
        out = self.model(x, t)
        self.nfe += 1
        if self.scale == 0:
            return out
        grad = self.scale * self.log_prob_grad(x, t)
        if self.prediction == "score":
            return out + grad
        # score = -eps / sigma, so adding s * grad to the score subtracts sigma * s * grad from eps
        eps, _ = self.to_eps_x0(out, x, t)
        alpha, sigma = self._alpha_sigma(x, t)
        eps = eps - sigma * grad
        return self.target(eps, (x - sigma * eps) / alpha, x, t)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"

#: names that moved to another module, and where they went
_MOVED = {"Inpainting": "scoresde.solvers.Inpainting (a state hook of the solver loop)",
          "NoisyClassifier": "scoresde.classifier.NoisyClassifier", "classifier_loss": "scoresde.losses.classifier_loss"}


def __getattr__(name: str):
    if name in _MOVED:
        raise AttributeError(f"scoresde.guidance.{name} moved to {_MOVED[name]}")
    raise AttributeError(f"module 'scoresde.guidance' has no attribute {name!r}")
