"""SA-Solver (Xue et al., NeurIPS 2023): stochastic Adams predictor-corrector for the
variance-controlled reverse SDE dx = [f x - (1 + tau^2)/2 g^2 score] dt + tau g dW_bar, in data
prediction (eqs. 11-14; Algorithm 1).

Its exact solution from s to t, with c = 1 + tau^2 and u = lam_t - lam the log-SNR still to go,
  x_t = (sigma_t/sigma_s) e^{-tau^2 h} x_s + alpha_t int_0^h c e^{-c u} x0(u) du
        + sigma_t sqrt(1 - e^{-2 tau^2 h}) z,
is approximated by integrating a Lagrange interpolant of x0 exactly: through the newest
`predictor_order` evaluations (SA-Predictor, Adams-Bashforth), then through the evaluation at the
predicted point and the newest `corrector_order - 1` (SA-Corrector, Adams-Moulton) with the same
noise z. The corrector reuses the evaluation the next step needs: one evaluation per step. As in
the reference code (and diffusers' SASolverScheduler, which tests/test_restart_sa.py matches),
two-point rules take the linear term's leading weight c h^2/2 instead of its exact integral.

tau = 0 is an ODE solver: predictor_order p with corrector_order p + 1 is UniPC-p with
B(h) = h (variant 'bh1'), and predictor order 1 alone is DDIM. tau = 1 with predictor order 1
alone is SDE-DPM-Solver-1; with predictor order 2 alone it differs from `dpm++2m-sde` only in
the two-point weight (h/r against (1 - e^{-2h})/(2r), equal to leading order). Weak order 2 with
tau > 0 (the three-point rules too, measured), up to 3 and more with tau = 0."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch

from .. import _checks
from ..model import ScoreModel
from ._loop import (LOWER_ORDER_FINAL_BELOW, Grid, History, Loop, Noise, NoiseFn, Scalar, as_float, exp, expm1,
                    multistep_order, sqrt)
from .exponential import lagrange_basis
from .registry import register

__all__ = ["sa_solver", "sa_update", "sa_weights"]

#: tau as a constant or as a function of the time t (a float) of the step's start
Tau = Union[float, Callable[[float], float]]


def _moments(c: float, h: Scalar, n: int) -> List[Scalar]:
    """M_m = int_0^h c e^{-c u} u^m du for m < n, by M_m = (m/c) M_{m-1} - h^m e^{-c h}."""
    decay = exp(-c * h)
    out, power = [-expm1(-c * h)], 1.0
    for m in range(1, n):
        power = power * h
        out.append((m / c) * out[-1] - power * decay)
    return out


def _basis(nodes: Sequence[Scalar], j: int) -> List[Scalar]:
    """Ascending power coefficients of the Lagrange basis polynomial l_j on `nodes`."""
    coef, denom = lagrange_basis(nodes, j)
    return [v / denom for v in coef]


def sa_weights(h: Scalar, nodes: Sequence[Scalar], start: int, tau: float) -> List[Scalar]:
    """Weights of the x0 values at `nodes` (u = lam_t - lam of each; nodes[start] = h, the
    step's start) in int_0^h c e^{-c u} x0(u) du, c = 1 + tau^2, for the interpolant through them."""
    c = 1 + tau * tau
    moments = _moments(c, h, len(nodes))
    if len(nodes) == 2:
        # the reference code's two-point rule: around the start node, the weight of the divided
        # difference is c h^2 / 2, the leading term of its exact h M_0 - M_1 = h - (1 - e^{-ch})/c
        other = 1 - start
        slope = (0.5 * c) * h * h / (nodes[start] - nodes[other])  # weight of x0_other - x0_start
        w = [moments[0], moments[0]]
        w[other], w[start] = slope, moments[0] - slope
        return w
    return [sum((b * m for b, m in zip(_basis(nodes, j), moments)), 0.0) for j in range(len(nodes))]


def sa_update(g: Grid, i: int, x: torch.Tensor, lam: Sequence[Scalar], x0: Sequence[torch.Tensor], start: int,
              tau: float, z: Optional[torch.Tensor]) -> torch.Tensor:
    """One SA step from g.t[i] to g.t[i+1] (eqs. 13-14) with the x0 values `x0` at log-SNRs
    `lam`, lam[start] = g.lam[i] (the corrector's also holds g.lam[i+1]); noise z, or None for
    tau = 0 or the noise-free mean."""
    h = g.h(i)
    nodes = [h if k == start else g.lam[i + 1] - v for k, v in enumerate(lam)]
    weights = sa_weights(h, nodes, start, tau)
    x_next = (g.sigma[i + 1] / g.sigma[i] * exp(-tau * tau * h)) * x
    for w, value in zip(weights, x0):
        x_next = x_next + (g.alpha[i + 1] * w) * value
    if z is not None:
        x_next = x_next + (g.sigma[i + 1] * sqrt(-expm1(-2 * tau * tau * h))) * z
    return x_next


def _tau_of(tau: Tau, interval: Optional[Tuple[float, float]]) -> Callable[[float], float]:
    if interval is not None:
        if not (isinstance(interval, (tuple, list)) and len(interval) == 2):
            raise _checks.fail("tau_interval", "None or a pair (t_lo, t_hi) of times", interval)
        lo, hi = (_checks.real("tau_interval", v) for v in interval)
        if not lo < hi:
            raise _checks.fail("tau_interval", "a pair (t_lo, t_hi) with t_lo < t_hi", interval)
    constant = None if callable(tau) else _checks.real("tau", tau, low=0)

    def tau_at(t: float) -> float:
        if interval is not None and not lo <= t <= hi:
            return 0.0
        return constant if constant is not None else _checks.real(f"tau(t={t:.6g})", tau(t), low=0)

    return tau_at


@register("sa-solver", kind="sde", order=2, evals_per_step=1, affine=True,
          description="SA-Solver: stochastic Adams predictor-corrector, data prediction (tau = noise control)")
def sa_solver(model: ScoreModel, x: torch.Tensor, ts: torch.Tensor, loop: Loop, *, generator=None,
              noise_fn: Optional[NoiseFn] = None, predictor_order: int = 3, corrector_order: int = 3,
              tau: Tau = 1.0, tau_interval: Optional[Tuple[float, float]] = None, lower_order_final: bool = True,
              final_mean: bool = True) -> torch.Tensor:
    """Xue et al. 2023, Algorithm 1. tau: a number >= 0, or a function of the time t of a step's
    start returning one; with tau_interval=(t_lo, t_hi) it applies only for t in [t_lo, t_hi] (0
    elsewhere). tau = 0 is the probability-flow ODE, tau = 1 the reverse SDE. Orders taper at
    the start (warm-up) and, below LOWER_ORDER_FINAL_BELOW steps, at the end."""
    predictor_order = _checks.integer("predictor_order", predictor_order, 1, 3)
    corrector_order = _checks.integer("corrector_order", corrector_order, 0, 3)
    tau_at = _tau_of(tau, tau_interval)
    _checks.boolean("lower_order_final", lower_order_final)
    steps = loop.num_steps
    taper = lower_order_final and steps < LOWER_ORDER_FINAL_BELOW  # the rule of multistep_order
    g, draw = loop.grid, Noise(generator, noise_fn)
    x0s = History(max(predictor_order, corrector_order - 1, 1))
    x0s.push(g.lam[0], model.x0(x, g.t[0]))
    for i, t, t_next in loop.steps():
        tau_i = tau_at(as_float(t))
        last = loop.is_last(i)
        z = None if tau_i == 0 or (final_mean and last) else draw(x)
        x0_start = x0s.values[-1]
        # SA-Predictor through the newest p evaluations, the start's last
        p = multistep_order(i, steps, predictor_order, lower_order_final)
        x_next = sa_update(g, i, x, x0s.lam[-p:], x0s.values[-p:], p - 1, tau_i, z)
        if not last:
            x0_next = model.x0(x_next, t_next)
            c = min(corrector_order, i + 2, steps - i + 1 if taper else corrector_order)
            if c > 0:  # SA-Corrector through the newest c - 1 and the new one, with the same noise
                lam, values = x0s.lam[len(x0s) - c + 1:], x0s.values[len(x0s) - c + 1:]  # start's last
                x_next = sa_update(g, i, x, [*lam, g.lam[i + 1]], [*values, x0_next], len(lam) - 1, tau_i, z)
            x0s.push(g.lam[i + 1], x0_next)
        x = x_next
        loop.done(i, x, x0_start)
    return x
