"""Reverse-time SDE samplers: dx = [f - g^2 score] dt + g dW_bar, integrated from T down to t_end.

Every sampler here is a step function run by one loop (`_run`); noise comes from `_Noise`,
which draws N(0, I) from the caller's generator, or from a user `noise` callable (to share a
Brownian path between solvers, or to probe a sampler's linear response in tests). With
`final_mean=True` (default) the last step returns its noise-free mean, as Song et al.'s
samplers do with `denoise=True`: no extra evaluation, and no noise added at t_end.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch

from .._utils import expand_as_batch
from ..model import ScoreModel
from ._loop import Grid, Loop
from .exponential import _order_at
from .registry import register

__all__ = [
    "euler_maruyama", "reverse_diffusion", "ancestral", "pc", "sde_heun", "edm_sde", "dpm_sde",
    "langevin_step_size",
]

NoiseFn = Callable[[torch.Tensor], torch.Tensor]
Step = Callable[[ScoreModel, torch.Tensor, float, float, "_Noise"], Tuple[torch.Tensor, torch.Tensor]]


class _Noise:
    """Standard normal draws shaped like x, from `generator` or from a user callable."""

    def __init__(self, generator: Optional[torch.Generator], noise: Optional[NoiseFn]):
        self.generator, self.noise = generator, noise

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        if self.noise is not None:
            return self.noise(like)
        return torch.randn(like.shape, generator=self.generator, dtype=like.dtype, device=like.device)


def _run(model, x, loop: Loop, step: Step, generator, noise, final_mean: bool) -> torch.Tensor:
    draw = _Noise(generator, noise)
    last = len(loop.ts) - 2
    for i, t, t_next in loop.steps():
        x, x_mean = step(model, x, t, t_next, draw)
        if i == last and final_mean:
            x = x_mean
        loop.done(i, x)
    return x


# ---- predictors (one step from t to t_next < t) ------------------------------------------
def _em_step(model, x, t, t_next, draw):
    dt = t - t_next
    x_mean = x - dt * model.sde.reverse(model.score).drift(x, t)
    return x_mean + model.sde.diffusion(x, t) * math.sqrt(dt) * draw(x), x_mean


def _transition(sde, s: float, t: float) -> Tuple[float, float]:
    """Forward transition x_t | x_s = a x_s + sqrt(b) z of an affine SDE, s < t: (a, b)."""
    ts = torch.tensor([s, t], dtype=torch.float64)
    alpha, sigma = sde.alpha(ts).tolist(), sde.sigma(ts).tolist()
    a = alpha[1] / alpha[0]
    return a, sigma[1] ** 2 - a**2 * sigma[0] ** 2


def _reverse_diffusion_step(model, x, t, t_next, draw):
    # Song et al. 2021, eq. 46: reverse the forward discretization x_t = x_s + f_s + G_s z,
    # here the exact affine transition between grid times: f_s = (a - 1) x, G_s^2 = b
    a, b = _transition(model.sde, t_next, t)
    x_mean = x - (a - 1) * x + b * model.score(x, t)
    return x_mean + math.sqrt(b) * draw(x), x_mean


def _ancestral_step(model, x, t, t_next, draw):
    # Ho et al. 2020, eq. 7: the posterior q(x_s | x_t, x0) with x0 predicted, for any affine
    # SDE (for VE it is NCSN's ancestral step of Song et al. 2021, eq. 47)
    sde = model.sde
    a, b = _transition(sde, t_next, t)
    alpha_s, var_s = float(sde.alpha(t_next)), float(sde.sigma(t_next)) ** 2
    var_t = a**2 * var_s + b
    x0_pred = model.x0(x, t)
    x_mean = (alpha_s * b / var_t) * x0_pred + (a * var_s / var_t) * x
    return x_mean + math.sqrt(var_s * b / var_t) * draw(x), x_mean


_PREDICTORS = {"euler_maruyama": _em_step, "reverse_diffusion": _reverse_diffusion_step,
               "ancestral": _ancestral_step, "none": None}


def _need_affine(model: ScoreModel, what: str) -> None:
    if not model.sde.is_affine:
        raise ValueError(f"{what} needs an affine SDE (alpha, sigma); {type(model.sde).__name__} is not")


@register("euler_maruyama", kind="sde", order=1, evals_per_step=1, description="Euler-Maruyama on the reverse SDE")
def euler_maruyama(model, x, ts, loop, *, generator=None, noise: Optional[NoiseFn] = None,
                   final_mean: bool = True) -> torch.Tensor:
    return _run(model, x, loop, _em_step, generator, noise, final_mean)


@register("reverse_diffusion", kind="sde", order=1, evals_per_step=1, affine=True,
          description="reverse of the SDE's own discretization (Song et al. 2021)")
def reverse_diffusion(model, x, ts, loop, *, generator=None, noise: Optional[NoiseFn] = None,
                      final_mean: bool = True) -> torch.Tensor:
    return _run(model, x, loop, _reverse_diffusion_step, generator, noise, final_mean)


@register("ancestral", kind="sde", order=1, evals_per_step=1, affine=True,
          description="DDPM posterior step (NCSN's for VE)")
def ancestral(model, x, ts, loop, *, generator=None, noise: Optional[NoiseFn] = None,
              final_mean: bool = True) -> torch.Tensor:
    _need_affine(model, "the ancestral step")
    return _run(model, x, loop, _ancestral_step, generator, noise, final_mean)


# ---- Langevin correctors --------------------------------------------------------------------
def langevin_step_size(model: ScoreModel, grad: torch.Tensor, z: torch.Tensor, t: float, t_next: float,
                       snr: float, kind: str, per_sample: bool) -> torch.Tensor:
    """Song et al. 2021, Algorithm 4-5: eps = 2 a (snr ||z|| / ||grad||)^2 ('langevin'), or
    annealed Langevin's eps = 2 a (snr sigma_t)^2 ('ald'), with a = alpha_{t_next}^2/alpha_t^2 the
    one-step signal retention (1 - beta_i for VP, 1 for VE). Norms are per sample, shape (B,),
    or with per_sample=False averaged over the batch as in the original code."""
    sde = model.sde
    a = _transition(sde, t_next, t)[0] ** 2 if sde.is_affine else 1.0
    if kind == "ald":
        eps = 2 * a * (snr * float(sde.sigma(t))) ** 2
        return torch.full((grad.shape[0],), eps, dtype=grad.dtype, device=grad.device)
    grad_norm = grad.reshape(grad.shape[0], -1).norm(dim=1)
    noise_norm = z.reshape(z.shape[0], -1).norm(dim=1)
    if not per_sample:
        grad_norm, noise_norm = grad_norm.mean().expand_as(grad_norm), noise_norm.mean().expand_as(noise_norm)
    return 2 * a * (snr * noise_norm / grad_norm) ** 2


@register("pc", kind="sde", order=1, evals_per_step=2,
          description="predictor-corrector, Langevin corrector (1 + corrector_steps evaluations per step)")
def pc(model, x, ts, loop, *, generator=None, noise: Optional[NoiseFn] = None, final_mean: bool = True,
       predictor: str = "reverse_diffusion", corrector: str = "langevin", snr: float = 0.16,
       corrector_steps: int = 1, per_sample_step: bool = True) -> torch.Tensor:
    """At each grid time: `corrector_steps` Langevin steps at t, then one predictor step to
    t_next (Song et al. 2021, Algorithm 1-3). NFE = steps x (corrector_steps + 1 if a predictor)."""
    if predictor not in _PREDICTORS:
        raise ValueError(f"predictor={predictor!r} is not valid; choose one of: {', '.join(_PREDICTORS)}")
    if corrector not in ("langevin", "ald"):
        raise ValueError(f"corrector={corrector!r} is not valid; choose one of: langevin, ald")
    if not (isinstance(snr, (int, float)) and snr >= 0):
        raise ValueError(f"snr must be a number >= 0; got {snr!r}")
    if isinstance(corrector_steps, bool) or int(corrector_steps) != corrector_steps or corrector_steps < 0:
        raise ValueError(f"corrector_steps must be an integer >= 0; got {corrector_steps!r}")
    if predictor in ("reverse_diffusion", "ancestral"):
        _need_affine(model, f"predictor={predictor!r}")
    predict = _PREDICTORS[predictor]

    def step(model, x, t, t_next, draw):
        for _ in range(int(corrector_steps)):
            grad = model.score(x, t)
            z = draw(x)
            eps = expand_as_batch(langevin_step_size(model, grad, z, t, t_next, snr, corrector, per_sample_step), x)
            x = x + eps * grad + torch.sqrt(2 * eps) * z
        return (x, x) if predict is None else predict(model, x, t, t_next, draw)

    return _run(model, x, loop, step, generator, noise, final_mean)


# ---- higher-order and exponential SDE solvers -------------------------------------------------
@register("sde_heun", kind="sde", order=2, evals_per_step=2, description="stochastic improved Euler (weak order 2)")
def sde_heun(model, x, ts, loop, *, generator=None, noise: Optional[NoiseFn] = None,
             final_mean: bool = True) -> torch.Tensor:
    # Jolicoeur-Martineau et al. 2021, eq. 4 (improved Euler for additive noise), reverse time
    def step(model, x, t, t_next, draw):
        dt = t - t_next
        reverse = model.sde.reverse(model.score)
        z = draw(x) * math.sqrt(dt)
        d = reverse.drift(x, t)
        x_euler = x - dt * d + reverse.diffusion(x, t) * z
        d_next = reverse.drift(x_euler, t_next)
        x_mean = x - 0.5 * dt * (d + d_next)
        return x_mean + 0.5 * (reverse.diffusion(x, t) + reverse.diffusion(x, t_next)) * z, x_mean

    return _run(model, x, loop, step, generator, noise, final_mean)


@register("edm_sde", kind="sde", order=1, evals_per_step=2, affine=True, extra_evals=-1,
          description="EDM's stochastic sampler (S_churn, Heun)")
def edm_sde(model, x, ts, loop, *, generator=None, noise: Optional[NoiseFn] = None, S_churn: float = 40.0,
            S_tmin: float = 0.05, S_tmax: float = 50.0, S_noise: float = 1.003) -> torch.Tensor:
    """Karras et al. 2022, Algorithm 2, in y = x/alpha against sigma_hat = sigma/alpha (for
    EDMSDE these are x and t). Churn only where sigma_hat in [S_tmin, S_tmax] and where the raised
    level stays within the SDE's range (at T it cannot be raised); the last step is Euler."""
    for name, value in (("S_churn", S_churn), ("S_tmin", S_tmin), ("S_tmax", S_tmax), ("S_noise", S_noise)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0; got {value!r}")
    sde = model.sde
    g = Grid.of(sde, ts)
    steps, draw = len(ts) - 1, _Noise(generator, noise)
    sigma_hat = [math.exp(-lam) for lam in g.lam]
    sigma_hat_max = float(torch.exp(-sde.log_snr(sde.T)))
    gamma_max = math.sqrt(2) - 1

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:  # dy/dsigma_hat = eps
        return model.eps(x, t)

    for i, t, t_next in loop.steps():
        y = x / g.alpha[i]
        s_cur = sigma_hat[i]
        gamma = min(S_churn / steps, gamma_max) if S_tmin <= s_cur <= S_tmax else 0.0
        s_up = min(s_cur * (1 + gamma), sigma_hat_max)
        t_up, alpha_up = t, g.alpha[i]
        if s_up > s_cur:  # increase noise temporarily
            y = y + math.sqrt(s_up**2 - s_cur**2) * S_noise * draw(y)
            t_up = float(sde.t_of_log_snr(torch.tensor(-math.log(s_up), dtype=torch.float64)))
            alpha_up = float(sde.alpha(t_up))
        d = velocity(alpha_up * y, t_up)
        y_next = y + (sigma_hat[i + 1] - s_up) * d  # Euler step
        if i < steps - 1:  # apply 2nd order correction
            d_next = velocity(g.alpha[i + 1] * y_next, t_next)
            y_next = y + (sigma_hat[i + 1] - s_up) * 0.5 * (d + d_next)
        x = g.alpha[i + 1] * y_next
        loop.done(i, x)
    return x


@register("sde-dpm-solver-1", kind="sde", order=1, evals_per_step=1, affine=True, defaults={"order": 1},
          description="SDE-DPM-Solver-1 (data prediction)")
@register("dpm++2m_sde", kind="sde", order=2, evals_per_step=1, affine=True, defaults={"order": 2},
          description="DPM-Solver++(2M) SDE")
def dpm_sde(model, x, ts, loop, *, generator=None, noise: Optional[NoiseFn] = None, order: int = 2,
            eta: float = 1.0, final_mean: bool = True) -> torch.Tensor:
    """Lu et al. 2022b, eq. 9 / Appendix: the exponential integrator of the SDE with data
    prediction; eta interpolates between the probability-flow ODE (eta = 0: DDIM / DPM-Solver++
    (2M)) and the reverse SDE (eta = 1). The second-order term is DPM-Solver++(2M)'s."""
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2; got {order!r}")
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0; got {eta!r}")
    g, steps, draw = Grid.of(model.sde, ts), len(ts) - 1, _Noise(generator, noise)
    x0_prev = None
    for i, t, t_next in loop.steps():
        x0_pred = model.x0(x, t)
        h = g.lam[i + 1] - g.lam[i]
        data_weight = -math.expm1(-(1 + eta) * h)  # 1 - e^{-(1+eta) h}
        x_mean = (g.sigma[i + 1] / g.sigma[i] * math.exp(-eta * h)) * x + (g.alpha[i + 1] * data_weight) * x0_pred
        if _order_at(i, steps, order, lower_order_final=True) == 2:
            r = (g.lam[i] - g.lam[i - 1]) / h
            x_mean = x_mean + (0.5 * g.alpha[i + 1] * data_weight / r) * (x0_pred - x0_prev)
        x0_prev = x0_pred
        noise_std = g.sigma[i + 1] * math.sqrt(-math.expm1(-2 * eta * h))
        x = x_mean if (i == steps - 1 and final_mean) or noise_std == 0 else x_mean + noise_std * draw(x)
        loop.done(i, x, x0_pred)
    return x
