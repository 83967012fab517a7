"""The VP process of a trained discrete DDPM chain (its alphas_cumprod), exact at its timesteps."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .. import _checks
from .._utils import Time, as_time
from .base import LOG_SNR_LIMIT, AffineSDE, check_unit_interval, coefficient_table

__all__ = ["DiscreteVPSDE"]


class DiscreteVPSDE(AffineSDE):
    """The VP process of a trained discrete DDPM chain, exact at its trained timesteps.

    Timestep k = 0..N-1 of the chain, alphas_cumprod[k] = prod_{j<=k} (1 - beta_j), sits at
    t_k = (k+1)/N, where alpha(t_k)^2 = alphas_cumprod[k] exactly (DESIGN.md's map of the chain
    onto [0, 1]); `timestep(t)` = N t - 1 is the model's float timestep. Between trained
    timesteps the log-SNR is *interpolated*, linearly in t (as diffusers interpolates log sigma
    between timesteps for its DPM-Solver and Karras schedules); below t_0 = 1/N, sigma^2 grows
    linearly from 0 at t = 0 (the data) to 1 - alphas_cumprod[0]. Variance preserving:
    alpha^2 + sigma^2 = 1. T = 1 (timestep N-1) and t_eps = 1/N (timestep 0).

    Args:
        alphas_cumprod: (N,) strictly decreasing values in (0, 1), N >= 2 (kept in float64).
    """

    def __init__(self, alphas_cumprod: Sequence[float] | torch.Tensor):
        ac = coefficient_table("alphas_cumprod", alphas_cumprod)
        n = ac.numel()
        if n < 2:
            raise _checks.fail("alphas_cumprod", "a 1-D table of at least 2 values", f"{n} value(s)")
        check_unit_interval("alphas_cumprod", ac, " (alpha_bar = 1 is no noise; alpha_bar = 0, zero terminal SNR, "
                             "has no finite log-SNR)")
        smallest = math.exp(-2 * LOG_SNR_LIMIT)  # log-SNR = -LOG_SNR_LIMIT
        if float(ac.min()) < smallest:
            raise _checks.fail("alphas_cumprod", f"values >= {smallest:.3g} (a log-SNR >= -{LOG_SNR_LIMIT:g}, so that "
                               "(sigma/alpha)^2 stays finite in float64)", f"a minimum of {float(ac.min()):.3g}")
        if not bool((ac[1:] < ac[:-1]).all()):
            k = int((ac[1:] >= ac[:-1]).nonzero()[0])
            raise _checks.fail("alphas_cumprod", "strictly decreasing (more noise at every timestep)",
                               f"alphas_cumprod[{k + 1}] = {float(ac[k + 1]):g} >= "
                               f"alphas_cumprod[{k}] = {float(ac[k]):g}")
        self.alphas_cumprod = ac
        self.num_train_timesteps = n
        self.T, self.t_eps = 1.0, 1.0 / n
        self._log_snr_knots = 0.5 * (torch.log(ac) - torch.log1p(-ac))  # lambda at t_k, decreasing
        self._tables: dict = {}

    @classmethod
    def from_betas(cls, betas: Sequence[float] | torch.Tensor) -> "DiscreteVPSDE":
        """The chain x_k = sqrt(1 - beta_k) x_{k-1} + sqrt(beta_k) z, any beta schedule in (0, 1)."""
        betas = coefficient_table("betas", betas)
        check_unit_interval("betas", betas)
        return cls(torch.cumprod(1 - betas, 0))

    def _params(self) -> dict:
        return {"num_train_timesteps": self.num_train_timesteps, "alpha_bar_last": float(self.alphas_cumprod[-1])}

    def _identity(self) -> tuple:
        return tuple(self.alphas_cumprod.tolist())  # the whole table, in float64

    def timestep(self, t: Time) -> torch.Tensor:
        """The model's float timestep N t - 1 at time t (k at t_k; no rounding)."""
        return self.num_train_timesteps * as_time(t) - 1

    def t_of_timestep(self, timestep: Time) -> torch.Tensor:
        """The time (k + 1) / N of a (float) timestep k; integer timesteps give float64."""
        if isinstance(timestep, torch.Tensor) and not timestep.is_floating_point():
            timestep = timestep.double()
        return (as_time(timestep) + 1) / self.num_train_timesteps

    def _knots(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.dtype, like.device)
        if key not in self._tables:
            self._tables[key] = self._log_snr_knots.to(dtype=like.dtype, device=like.device)
        return self._tables[key]

    def _segment(self, t: torch.Tensor):
        """(lambda at t, d lambda / dt) on the trained range, linear between knots (extrapolated
        below t_0, where the caller uses the first interval's closed form instead)."""
        lam = self._knots(t)
        u = self.timestep(t)
        j = u.detach().floor().clamp(0, self.num_train_timesteps - 2).long()
        slope = lam[j + 1] - lam[j]
        return lam[j] + (u - j) * slope, slope * self.num_train_timesteps

    def _first_sigma2(self, t: torch.Tensor) -> torch.Tensor:
        """sigma^2 on [0, t_0]: linear from 0 to 1 - alphas_cumprod[0] (t clipped to t_0)."""
        return (1 - float(self.alphas_cumprod[0])) * self.num_train_timesteps * t.clamp(max=self.t_eps)

    def log_snr(self, t: Time) -> torch.Tensor:
        t = self.check_time(t)
        s2 = self._first_sigma2(t)
        first = 0.5 * (torch.log1p(-s2) - torch.log(s2))
        return torch.where(t < self.t_eps, first, self._segment(t)[0])

    def log_alpha(self, t: Time) -> torch.Tensor:
        return 0.5 * torch.nn.functional.logsigmoid(2 * self.log_snr(t))  # alpha^2 = sigmoid(2 lambda)

    def log_sigma(self, t: Time) -> torch.Tensor:
        return 0.5 * torch.nn.functional.logsigmoid(-2 * self.log_snr(t))

    def alpha(self, t: Time) -> torch.Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: Time) -> torch.Tensor:
        return torch.exp(self.log_sigma(t))

    def f(self, t: Time) -> torch.Tensor:
        # d log alpha / dt = sigma^2 d lambda / dt; on [0, t_0], d log(1 - sigma^2) / 2 dt
        t = self.check_time(t)
        s2 = self._first_sigma2(t)
        first = -0.5 * (1 - float(self.alphas_cumprod[0])) * self.num_train_timesteps / (1 - s2)
        lam, slope = self._segment(t)
        return torch.where(t < self.t_eps, first, torch.sigmoid(-2 * lam) * slope)

    def g2(self, t: Time) -> torch.Tensor:
        return -2 * self.f(t)  # variance preserving: alpha^2 + sigma^2 = 1

    def t_of_log_snr(self, lam: Time) -> torch.Tensor:
        lam = as_time(lam)
        knots = self._knots(lam)
        n = self.num_train_timesteps
        # segment j with knots[j] >= lam > knots[j+1] (knots decrease)
        j = (torch.searchsorted(-knots, -lam.detach().contiguous(), right=True) - 1).clamp(0, n - 2)
        u = j + (lam - knots[j]) / (knots[j + 1] - knots[j])
        first = torch.sigmoid(-2 * lam) / ((1 - float(self.alphas_cumprod[0])) * n)  # sigma^2 / rate
        return torch.where(lam > knots[0], first, self.t_of_timestep(u))
