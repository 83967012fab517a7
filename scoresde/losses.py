"""Denoising score matching (Vincent 2011; Song et al. 2021) for any affine SDE and any
prediction type of `ScoreModel`.

For x_t = alpha(t) x0 + sigma(t) eps, the conditional score is grad log p(x_t | x0) = -eps / sigma,
and every weighting below is defined in score space, per sample (sums over data dimensions):

    L(t) = w(t) * lambda(t) * || s_theta(x_t, t) - grad log p(x_t | x0) ||^2

    weighting     lambda(t)                                       equivalently
    "score"       sigma^2                        (Song et al.)   || eps_theta - eps ||^2
    "likelihood"  g^2                 (Song et al. 2021, ML)     g^2/sigma^2 || eps_theta - eps ||^2
    "eps"         sigma^2 / D                    (DDPM L_simple) mean over the D dims of (eps_theta - eps)^2
    "edm"         sigma^2 (s^2 + sd^2) / sd^2    (Karras et al.) (s^2 + sd^2)/(s sd)^2 || x0_theta - x0 ||^2

with s = sigma / alpha the noise level of x_t / alpha, sd = `model.sigma_data`, D the number of
data dimensions, and w(t) = 1 except for importance-sampled t (below). The loss is computed on
the network's raw output: eps_theta - eps = a(t) (out - target) exactly, where
target = `model.target(eps, x0, x_t, t)` and a(t) = d eps / d out comes from `model.to_eps_x0`,
so L = w lambda a^2 / sigma^2 || out - target ||^2; no division by a small sigma or alpha ever
touches the network's output.

Time sampling (time in the SDE's own units, t in [t_eps, T]):
    "uniform"     t ~ U(t_eps, T).
    "importance"  t with density q(t) proportional to g^2/sigma^2 = -2 d lambda_snr/dt, i.e.
                  log-SNR uniform on [log_snr(T), log_snr(t_eps)] (Song et al. 2021,
                  "Maximum likelihood training", Sec. 5), reweighted by
                  w(t) = p_uniform(t) / q(t) = Z sigma^2 / (g^2 (T - t_eps)),
                  Z = 2 (log_snr(t_eps) - log_snr(T)), so the expected loss is that of "uniform"
                  for any weighting; with "likelihood" every sample's weight is the constant
                  Z / (T - t_eps), which removes most of the variance.
    "lognormal"   EDM's log sigma ~ N(P_mean, P_std^2) (-1.2, 1.2) for the noise level
                  s = sigma/alpha, truncated to the SDE's range [s(t_eps), s(T)] and mapped to
                  t = sde.t_of_log_snr(-log s). Not reweighted: as in EDM, this density is part
                  of the objective (effective weight lambda(t) q(t) / p_uniform(t)).

With "uniform" t, "likelihood" weighting and `reduce`, (T - t_eps)/2 times the loss is the
score-matching term of the bound on the negative log-likelihood (in nats) up to a constant.

`classifier_loss` is the cross-entropy that trains a time-dependent classifier
(`classifier.NoisyClassifier`) on data noised the same way.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from . import _checks
from .classifier import NoisyClassifier
from .model import ScoreModel
from .sde import AffineSDE

__all__ = [
    "dsm_loss", "classifier_loss", "sample_time", "time_weight", "score_weighting", "WEIGHTINGS", "T_SAMPLINGS",
]

WEIGHTINGS = ("score", "likelihood", "eps", "edm")
T_SAMPLINGS = ("uniform", "importance", "lognormal")
EDM_P_MEAN, EDM_P_STD = -1.2, 1.2


def _check_affine(sde) -> AffineSDE:
    _checks.affine(sde, "denoising score matching (a Gaussian x_t | x0)")
    return sde


def sample_time(
    sde: AffineSDE,
    n: int,
    t_sampling: str = "uniform",
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """n training times in [t_eps, T] drawn as `t_sampling` says (see module docstring),
    float64, shape (n,), drawn on the generator's device and moved to `device`."""
    _checks.choice("t_sampling", t_sampling, T_SAMPLINGS)
    _check_affine(sde)
    n = _checks.integer("n", n, low=0)
    _checks.generator("generator", generator)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=gen_device)
    u = u.to(device) if device is not None else u
    lo, hi = float(sde.t_eps), float(sde.T)
    if t_sampling == "uniform":
        return lo + (hi - lo) * u
    lam_max, lam_min = float(sde.log_snr(lo)), float(sde.log_snr(hi))  # log-SNR decreases in t
    if t_sampling == "importance":
        lam = lam_min + (lam_max - lam_min) * u
    else:
        # inverse-CDF draw of the normal truncated to the SDE's noise levels (not clamped)
        a = torch.special.ndtr(torch.tensor((-lam_max - EDM_P_MEAN) / EDM_P_STD, dtype=torch.float64))
        b = torch.special.ndtr(torch.tensor((-lam_min - EDM_P_MEAN) / EDM_P_STD, dtype=torch.float64))
        z = torch.special.ndtri(a + (b - a) * u)
        lam = -(EDM_P_MEAN + EDM_P_STD * z)
    # t_of_log_snr is exact up to rounding, which may step a hair outside [t_eps, T]
    return sde.t_of_log_snr(lam).clamp(lo, hi)


def time_weight(sde: AffineSDE, t: torch.Tensor, t_sampling: str = "uniform") -> torch.Tensor:
    """w(t): the importance weight p_uniform(t) / q(t) for "importance", else 1; shaped like t."""
    _checks.choice("t_sampling", t_sampling, T_SAMPLINGS)
    if t_sampling != "importance":
        return torch.ones_like(t)
    z = 2 * (float(sde.log_snr(sde.t_eps)) - float(sde.log_snr(sde.T)))
    return z / (sde.T - sde.t_eps) * sde.sigma(t) ** 2 / sde.g2(t)


def score_weighting(model: ScoreModel, t: torch.Tensor, weighting: str, dim: int) -> torch.Tensor:
    """lambda(t) / sigma(t)^2 for `weighting` (the score-space weight divided by sigma^2, i.e.
    the weight on || eps_theta - eps ||^2), shape of t; `dim` is D, the data dimensions."""
    _checks.choice("weighting", weighting, WEIGHTINGS)
    sde = _check_affine(model.sde)
    if weighting == "score":
        return torch.ones_like(t)
    if weighting == "likelihood":
        return sde.g2(t) / sde.sigma(t) ** 2
    if weighting == "eps":
        return torch.full_like(t, 1.0 / dim)
    s2 = torch.exp(-2 * sde.log_snr(t))  # (sigma / alpha)^2
    return (s2 + model.sigma_data**2) / model.sigma_data**2


def dsm_loss(
    model: ScoreModel,
    x0: torch.Tensor,
    t: Optional[torch.Tensor] = None,
    noise: Optional[torch.Tensor] = None,
    weighting: str = "score",
    t_sampling: str = "uniform",
    generator: Optional[torch.Generator] = None,
    reduce: bool = True,
    **cond,
) -> torch.Tensor:
    """Denoising score-matching loss of `model` on data x0 (see the module docstring).

    Args:
        model: a `ScoreModel` on an affine SDE, any prediction type.
        x0: data, (B, *shape).
        t: times (B,) in [t_eps, T]; drawn with `generator` as `t_sampling` says when None.
            When given, `t_sampling` states how it was drawn (the importance weight is a
            function of t alone).
        noise: eps ~ N(0, I) shaped like x0; drawn with `generator` (after t) when None.
        weighting: one of WEIGHTINGS.
        t_sampling: one of T_SAMPLINGS.
        generator: source of all randomness (t, then noise); draws happen on its device.
        reduce: mean over the batch if True, else the per-sample losses (B,).
        **cond: conditioning passed to the network (e.g. y=labels).

    Returns:
        a scalar, or (B,) per-sample losses.
    """
    _checks.choice("weighting", weighting, WEIGHTINGS)
    _checks.choice("t_sampling", t_sampling, T_SAMPLINGS)
    if not isinstance(model, ScoreModel):
        raise ValueError(f"model must be a scoresde.ScoreModel; got {type(model).__name__}")
    sde = _check_affine(model.sde)
    reduce = _checks.boolean("reduce", reduce)
    _checks.generator("generator", generator)
    # finiteness is read on the host for CPU data only: on accelerators a per-step sync would
    # stall training, and the Trainer's batched check of the loss catches NaN data there
    if not (isinstance(x0, torch.Tensor) and x0.is_floating_point() and x0.ndim >= 2 and x0.shape[0] >= 1):
        given = f"{x0.dtype} tensor of shape {tuple(x0.shape)}" if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise _checks.ArgumentError(f"x0 must have shape (B, *shape) with B >= 1 and a real floating-point dtype; "
                                    f"got {given}")
    if x0.device.type == "cpu":
        _checks.finite("x0", x0)
    b = x0.shape[0]
    if t is None:
        t = sample_time(sde, b, t_sampling, generator, device=x0.device)
    elif not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.shape != (b,):
        given = f"{t.dtype} tensor of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise _checks.ArgumentError(f"t must have shape (B,) = ({b},) and a floating-point dtype (or be None); "
                                    f"got {given}")
    if noise is not None:
        _checks.tensor("noise", noise, "shaped like x0")
    if noise is None:
        gen_device = generator.device if generator is not None else x0.device
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=gen_device).to(x0.device)
    x_t = sde.marginal(x0, t, noise)  # checks t's range and noise's shape
    out = model(x_t, t, **cond)
    target = model.target(noise, x0, x_t, t)
    # eps_theta - eps = a (out - target) with a = d eps / d out, read off the model's own
    # (affine) conversion at out = 1, x = 0 so that no cancellation can occur
    unit = torch.ones((b,) + (1,) * (x0.ndim - 1), dtype=x0.dtype, device=x0.device)
    a = model.to_eps_x0(unit, torch.zeros_like(unit), t)[0].reshape(b)
    dim = math.prod(x0.shape[1:])
    weight = (time_weight(sde, t, t_sampling) * score_weighting(model, t, weighting, dim)).to(x0.dtype) * a**2
    per_sample = weight * (out - target).pow(2).reshape(b, -1).sum(1)
    return per_sample.mean() if reduce else per_sample


def classifier_loss(model: NoisyClassifier, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                    y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of p(y | x_t, t) at x_t = alpha(t) x0 + sigma(t) noise, mean over the batch:
    the `loss_fn` that trains a `NoisyClassifier` with `Trainer`. x0, noise (B, *shape); t, y (B,)."""
    logits = model(model.sde.marginal(x0, t, noise), t)
    return torch.nn.functional.cross_entropy(logits, y)
