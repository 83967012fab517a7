"""Classical fixed-step solvers of the probability-flow ODE dx/dt = f x - g^2 score / 2,
integrated in the SDE's own time t (Song et al. 2021, eq. 13). They need only drift and
diffusion, so they also run on user-defined non-affine SDEs."""
from __future__ import annotations

from typing import Mapping

import torch

from .. import _checks
from ..model import ScoreModel
from .registry import register
from ._loop import Loop, Scalar

__all__ = ["pf_velocity", "euler", "heun", "midpoint", "rk4", "LAST_STEPS", "last_step_evals"]

#: the last step of heun and edm-sde: "euler" (EDM's rule, Karras et al. 2022, Algorithm 1
#: line 9: its second evaluation would be at the final time, sigma = 0 there) or "heun" (the
#: full second-order step, one evaluation more)
LAST_STEPS = ("euler", "heun")


def last_step_evals(options: Mapping[str, object]) -> int:
    """Evaluations beyond two per step of a solver with a `last_step` option: -1 for an
    Euler last step."""
    return -1 if _checks.choice("last_step", options["last_step"], LAST_STEPS) == "euler" else 0


def pf_velocity(model: ScoreModel, x: torch.Tensor, t: Scalar) -> torch.Tensor:
    """dx/dt of the probability-flow ODE: one network evaluation."""
    return model.sde.reverse(model.score, probability_flow=True).drift(x, t)


@register("euler", kind="ode", order=1, evals_per_step=1, description="explicit Euler in t")
def euler(model: ScoreModel, x: torch.Tensor, ts: torch.Tensor, loop: Loop) -> torch.Tensor:
    for i, t, t_next in loop.steps():
        x = x + (t_next - t) * pf_velocity(model, x, t)
        loop.done(i, x)
    return x


@register("heun", kind="ode", order=2, evals_per_step=2, extra_evals=last_step_evals,
          description="EDM's 2nd-order Heun (last step Euler by default)")
def heun(model: ScoreModel, x: torch.Tensor, ts: torch.Tensor, loop: Loop, *, last_step: str = "euler") -> torch.Tensor:
    """last_step="euler" (default, EDM's rule) or "heun" (LAST_STEPS). Euler stays the default
    by `benchmarks/final_steps.py last_step` (benchmarks/results/final_steps_last_step.json): within
    a 5-NFE budget a Heun last step costs a whole step, at 10 NFE (same steps, one evaluation
    more) it was worse on most mixtures and grids, at 20 NFE on a par."""
    # Karras et al. 2022, Algorithm 1 (deterministic)
    euler_last = _checks.choice("last_step", last_step, LAST_STEPS) == "euler"
    for i, t, t_next in loop.steps():
        h = t_next - t
        d = pf_velocity(model, x, t)
        x_euler = x + h * d  # Euler step
        if euler_last and loop.is_last(i):
            x = x_euler
        else:  # apply 2nd order correction
            x = x + 0.5 * h * (d + pf_velocity(model, x_euler, t_next))
        loop.done(i, x)
    return x


@register("midpoint", kind="ode", order=2, evals_per_step=2, description="explicit midpoint rule")
def midpoint(model: ScoreModel, x: torch.Tensor, ts: torch.Tensor, loop: Loop) -> torch.Tensor:
    for i, t, t_next in loop.steps():
        h = t_next - t
        x_mid = x + 0.5 * h * pf_velocity(model, x, t)
        x = x + h * pf_velocity(model, x_mid, t + 0.5 * h)
        loop.done(i, x)
    return x


@register("rk4", kind="ode", order=4, evals_per_step=4, description="classical 4th-order Runge-Kutta")
def rk4(model: ScoreModel, x: torch.Tensor, ts: torch.Tensor, loop: Loop) -> torch.Tensor:
    for i, t, t_next in loop.steps():
        h = t_next - t
        k1 = pf_velocity(model, x, t)
        k2 = pf_velocity(model, x + 0.5 * h * k1, t + 0.5 * h)
        k3 = pf_velocity(model, x + 0.5 * h * k2, t + 0.5 * h)
        k4 = pf_velocity(model, x + h * k3, t_next)
        x = x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
        loop.done(i, x)
    return x
