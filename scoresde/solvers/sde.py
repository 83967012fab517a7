"""Reverse-time SDE samplers: dx = [f - g^2 score] dt + g dW_bar, integrated from T down to t_end.

Noise comes from `Noise` (`_loop.py`): N(0, I) from the caller's generator, or a user `noise_fn`
callable (to share a Brownian path between solvers, or to probe a sampler's linear response in
tests). With `final_mean=True` (default) the last step returns its noise-free mean,
as Song et al.'s samplers do with `denoise=True`: no extra evaluation, and no noise added at
t_end. `euler-maruyama`, `reverse-diffusion` and `ancestral` are the predictor-only members of
the predictor-corrector family (`pc` with `corrector_steps=0`).
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Tuple

import torch

from .. import _checks
from .._utils import expand_as_batch
from .ode import LAST_STEPS, last_step_evals
from ._loop import Grid, History, Noise, NoiseFn, RowGenerators, Scalar, exp, expm1, log, multistep_order, sqrt
from .registry import register

__all__ = ["euler_maruyama_step", "reverse_diffusion_step", "ancestral_step", "pc", "sde_heun", "edm_sde",
           "dpm_sde", "langevin_step_size", "PREDICTORS"]


# ---- predictors: one step from g.t[i] to g.t[i+1] < g.t[i], returning (x, its noise-free mean) --
def euler_maruyama_step(model, x, g: Grid, i: int, draw) -> Tuple[torch.Tensor, torch.Tensor]:
    t, dt = g.t[i], g.t[i] - g.t[i + 1]
    x_mean = x - dt * model.sde.reverse(model.score).drift(x, t)
    return x_mean + model.sde.diffusion(x, t) * sqrt(dt) * draw(x), x_mean


def reverse_diffusion_step(model, x, g: Grid, i: int, draw) -> Tuple[torch.Tensor, torch.Tensor]:
    # Song et al. 2021, eq. 46: reverse the forward discretization x_t = x_s + f_s + G_s z,
    # here the exact affine transition between grid times: f_s = (a - 1) x, G_s^2 = b
    a, b = g.transition(i)
    x_mean = x - (a - 1) * x + b * model.score(x, g.t[i])
    return x_mean + sqrt(b) * draw(x), x_mean


def ancestral_step(model, x, g: Grid, i: int, draw) -> Tuple[torch.Tensor, torch.Tensor]:
    # Ho et al. 2020, eq. 7: the posterior q(x_s | x_t, x0) with x0 predicted, for any affine
    # SDE (for VE it is NCSN's ancestral step of Song et al. 2021, eq. 47)
    a, b = g.transition(i)
    alpha_s, var_s = g.alpha[i + 1], g.sigma[i + 1] ** 2
    var_t = a**2 * var_s + b
    x0_pred = model.x0(x, g.t[i])
    x_mean = (alpha_s * b / var_t) * x0_pred + (a * var_s / var_t) * x
    return x_mean + sqrt(var_s * b / var_t) * draw(x), x_mean


#: predictor name -> (step, needs an affine SDE); "none" runs the corrector alone
PREDICTORS = {"euler-maruyama": (euler_maruyama_step, False), "reverse-diffusion": (reverse_diffusion_step, True),
              "ancestral": (ancestral_step, True), "none": (None, False)}
_PREDICTOR_ALIASES = {"euler_maruyama": "euler-maruyama", "reverse_diffusion": "reverse-diffusion"}


# ---- Langevin correctors --------------------------------------------------------------------
def langevin_step_size(grad: torch.Tensor, z: torch.Tensor, snr: float, kind: str, per_sample: bool,
                       retention: Scalar = 1.0, sigma: Optional[Scalar] = None) -> torch.Tensor:
    """Song et al. 2021, Algorithm 4-5: eps = 2 a (snr ||z|| / ||grad||)^2 ('langevin'), or
    annealed Langevin's eps = 2 a (snr sigma_t)^2 ('ald'), with a = `retention` =
    alpha_{t_next}^2/alpha_t^2 the one-step signal retention (1 - beta_i for VP, 1 for VE) and
    `sigma` = sigma_t. Norms are per sample, shape (B,), or with per_sample=False averaged
    over the batch as in the original code."""
    a = retention
    if kind == "ald":
        eps = 2 * a * (snr * sigma) ** 2
        if isinstance(eps, torch.Tensor):  # on a differentiable grid
            return eps.to(dtype=grad.dtype, device=grad.device).expand(grad.shape[0])
        return torch.full((grad.shape[0],), eps, dtype=grad.dtype, device=grad.device)
    grad_norm = grad.reshape(grad.shape[0], -1).norm(dim=1)
    noise_norm = z.reshape(z.shape[0], -1).norm(dim=1)
    if not per_sample:
        grad_norm, noise_norm = grad_norm.mean().expand_as(grad_norm), noise_norm.mean().expand_as(noise_norm)
    return 2 * a * (snr * noise_norm / grad_norm) ** 2


def _pc_evals(options: Mapping[str, object]) -> int:
    return int(options["corrector_steps"]) + (options["predictor"] != "none")


@register("pc", kind="sde", order=1, evals_per_step=_pc_evals,
          description="predictor-corrector, Langevin corrector (1 + corrector_steps evaluations per step)")
@register("ancestral", kind="sde", order=1, evals_per_step=_pc_evals, affine=True,
          defaults={"predictor": "ancestral", "corrector_steps": 0}, description="DDPM posterior step (NCSN's for VE)")
@register("reverse-diffusion", kind="sde", order=1, evals_per_step=_pc_evals, affine=True,
          aliases=("reverse_diffusion",), defaults={"predictor": "reverse-diffusion", "corrector_steps": 0},
          description="reverse of the SDE's own discretization (Song et al. 2021)")
@register("euler-maruyama", kind="sde", order=1, evals_per_step=_pc_evals, aliases=("euler_maruyama",),
          defaults={"predictor": "euler-maruyama", "corrector_steps": 0}, description="Euler-Maruyama on the reverse SDE")
def pc(model, x, ts, loop, *, generator=None, noise_fn: Optional[NoiseFn] = None, final_mean: bool = True,
       predictor: str = "reverse-diffusion", corrector: str = "langevin", snr: float = 0.16,
       corrector_steps: int = 1, per_sample_step: bool = True) -> torch.Tensor:
    """At each grid time: `corrector_steps` Langevin steps at t, then one predictor step to
    t_next (Song et al. 2021, Algorithm 1-3). NFE = steps x (corrector_steps + 1 if a predictor)."""
    predictor = _checks.choice("predictor", predictor, PREDICTORS, _PREDICTOR_ALIASES)
    corrector = _checks.choice("corrector", corrector, ("langevin", "ald"))
    snr = _checks.real("snr", snr, low=0)
    corrector_steps = _checks.integer("corrector_steps", corrector_steps, low=0)
    if not per_sample_step and isinstance(generator, RowGenerators):
        raise _checks.fail("per_sample_step", "True with seeds (False averages the step size over the batch, "
                                              "so a row would depend on its batch)", per_sample_step)
    predict, needs_affine = PREDICTORS[predictor]
    if needs_affine:
        _checks.affine(model.sde, f"predictor={predictor!r}")
    g, draw = loop.grid, Noise(generator, noise_fn)
    for i, t, t_next in loop.steps():
        a = g.transition(i)[0] ** 2 if model.sde.is_affine else 1.0
        sigma = g.sigma[i] if corrector == "ald" else None
        for _ in range(corrector_steps):
            grad = model.score(x, t)
            z = draw(x)
            eps = expand_as_batch(langevin_step_size(grad, z, snr, corrector, per_sample_step, a, sigma), x)
            x = x + eps * grad + torch.sqrt(2 * eps) * z
        x_mean = x
        if predict is not None:
            x, x_mean = predict(model, x, g, i, draw)
        if final_mean and loop.is_last(i):
            x = x_mean
        loop.done(i, x)
    return x


# ---- higher-order and exponential SDE solvers -------------------------------------------------
@register("sde-heun", kind="sde", order=2, evals_per_step=2, aliases=("sde_heun",),
          description="stochastic improved Euler (weak order 2)")
def sde_heun(model, x, ts, loop, *, generator=None, noise_fn: Optional[NoiseFn] = None,
             final_mean: bool = True) -> torch.Tensor:
    # Jolicoeur-Martineau et al. 2021, eq. 4 (improved Euler for additive noise), reverse time
    draw, reverse = Noise(generator, noise_fn), model.sde.reverse(model.score)
    for i, t, t_next in loop.steps():
        dt = t - t_next
        z = draw(x) * sqrt(dt)
        d = reverse.drift(x, t)
        x_euler = x - dt * d + reverse.diffusion(x, t) * z
        d_next = reverse.drift(x_euler, t_next)
        x_mean = x - 0.5 * dt * (d + d_next)
        x = x_mean if final_mean and loop.is_last(i) else \
            x_mean + 0.5 * (reverse.diffusion(x, t) + reverse.diffusion(x, t_next)) * z
        loop.done(i, x)
    return x


@register("edm-sde", kind="sde", order=1, evals_per_step=2, affine=True, extra_evals=last_step_evals,
          aliases=("edm_sde",), description="EDM's stochastic sampler (S_churn, Heun)")
def edm_sde(model, x, ts, loop, *, generator=None, noise_fn: Optional[NoiseFn] = None, S_churn: float = 40.0,
            S_tmin: float = 0.05, S_tmax: float = 50.0, S_noise: float = 1.003, last_step: str = "euler") -> torch.Tensor:
    """Karras et al. 2022, Algorithm 2, in y = x/alpha against sigma_hat = sigma/alpha (for
    EDMSDE these are x and t). Churn only where sigma_hat in [S_tmin, S_tmax] and where the raised
    level stays within the SDE's range (at T it cannot be raised). The last step is Euler, as in
    the paper, or with last_step="heun" a full Heun step (LAST_STEPS)."""
    S_churn, S_tmin, S_tmax, S_noise = (_checks.real(name, value, low=0) for name, value in
                                        (("S_churn", S_churn), ("S_tmin", S_tmin), ("S_tmax", S_tmax),
                                         ("S_noise", S_noise)))
    euler_last = _checks.choice("last_step", last_step, LAST_STEPS) == "euler"
    g, draw = loop.grid, Noise(generator, noise_fn)
    sigma_hat, sigma_hat_max = g.sigma_hat, float(model.sde.sigma_hat(model.sde.T))  # at T, not ts[0]
    gamma_max = math.sqrt(2) - 1
    for i, t, t_next in loop.steps():
        y = x / g.alpha[i]
        s_cur = sigma_hat[i]
        gamma = min(S_churn / loop.num_steps, gamma_max) if S_tmin <= s_cur <= S_tmax else 0.0
        s_up = min(s_cur * (1 + gamma), sigma_hat_max)
        t_up, alpha_up = t, g.alpha[i]
        if s_up > s_cur:  # increase noise temporarily
            y = y + sqrt(s_up**2 - s_cur**2) * S_noise * draw(y)
            t_up, alpha_up, _ = g.at_lambda(-log(s_up))
        d = model.eps(alpha_up * y, t_up)  # dy/dsigma_hat = eps
        y_next = y + (sigma_hat[i + 1] - s_up) * d  # Euler step
        if not (euler_last and loop.is_last(i)):  # apply 2nd order correction
            d_next = model.eps(g.alpha[i + 1] * y_next, t_next)
            y_next = y + (sigma_hat[i + 1] - s_up) * 0.5 * (d + d_next)
        x = g.alpha[i + 1] * y_next
        loop.done(i, x)
    return x


@register("sde-dpm-solver-1", kind="sde", order=1, evals_per_step=1, affine=True, defaults={"history": 1},
          description="SDE-DPM-Solver-1 (data prediction)")
@register("dpm++2m-sde", kind="sde", order=2, evals_per_step=1, affine=True, defaults={"history": 2},
          aliases=("dpm++2m_sde",), description="DPM-Solver++(2M) SDE")
def dpm_sde(model, x, ts, loop, *, generator=None, noise_fn: Optional[NoiseFn] = None, history: int = 2,
            eta: float = 1.0, final_mean: bool = True) -> torch.Tensor:
    """Lu et al. 2022b, eq. 9 / Appendix: the exponential integrator of the SDE with data
    prediction; eta interpolates between the probability-flow ODE (eta = 0: DDIM / DPM-Solver++
    (2M)) and the reverse SDE (eta = 1). The second-order term (history=2) is DPM-Solver++(2M)'s."""
    history = _checks.integer("history", history, 1, 2)
    eta = _checks.real("eta", eta, low=0)
    g, draw, x0s = loop.grid, Noise(generator, noise_fn), History(2)
    for i, t, t_next in loop.steps():
        x0_pred = model.x0(x, t)
        x0s.push(g.lam[i], x0_pred)
        h = g.h(i)
        data_weight = -expm1(-(1 + eta) * h)  # 1 - e^{-(1+eta) h}
        x_mean = (g.sigma[i + 1] / g.sigma[i] * exp(-eta * h)) * x + (g.alpha[i + 1] * data_weight) * x0_pred
        if multistep_order(i, loop.num_steps, history, lower_order_final=True) == 2:
            r = (x0s.lam[-1] - x0s.lam[-2]) / h
            x_mean = x_mean + (0.5 * g.alpha[i + 1] * data_weight / r) * (x0_pred - x0s.values[-2])
        noise_std = g.sigma[i + 1] * sqrt(-expm1(-2 * eta * h))
        x = x_mean if (final_mean and loop.is_last(i)) or noise_std == 0 else x_mean + noise_std * draw(x)
        loop.done(i, x, x0_pred)
    return x
