"""Processes without drift (alpha = 1): variance exploding (NCSN's limit) and EDM's sigma(t) = t."""
from __future__ import annotations

import math

import torch

from .. import _checks
from .._utils import Time, as_time
from .base import LOG_SNR_LIMIT, AffineSDE

__all__ = ["VESDE", "EDMSDE"]


class _UnitAlphaSDE(AffineSDE):
    """Shared by VE and EDM: no drift (alpha = 1), noise level between sigma_min and sigma_max."""

    def _set_noise_range(self, sigma_min: float, sigma_max: float) -> None:
        # sigma^2 (and (sigma/alpha)^2 = exp(-2 log-SNR)) must stay inside float64's normal range
        self.sigma_min = _checks.real("sigma_min", sigma_min, low=0, open_low=True)
        self.sigma_max = _checks.real("sigma_max", sigma_max)
        lo, hi = math.exp(-LOG_SNR_LIMIT), math.exp(LOG_SNR_LIMIT)
        for name, value in (("sigma_min", self.sigma_min), ("sigma_max", self.sigma_max)):
            if not lo <= value <= hi:
                raise _checks.fail(name, f"a finite number in [{lo:.3g}, {hi:.3g}] (|log-SNR| <= {LOG_SNR_LIMIT:g}, so "
                                   "that sigma^2 stays inside float64's range)", value)
        if self.sigma_max <= self.sigma_min:
            raise _checks.fail("sigma_max", f"> sigma_min = {self.sigma_min:g}", sigma_max)
        self.prior_std = self.sigma_max

    def _params(self) -> dict:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def log_alpha(self, t: Time) -> torch.Tensor:
        return 0 * self.check_time(t)  # keeps t's graph, so autograd derivatives exist

    def alpha(self, t: Time) -> torch.Tensor:
        return torch.exp(self.log_alpha(t))

    def f(self, t: Time) -> torch.Tensor:
        return 0 * self.check_time(t)


class VESDE(_UnitAlphaSDE):
    """Variance exploding SDE (NCSN's continuous limit): alpha = 1,
    sigma(t) = sigma_min (sigma_max / sigma_min)^t, g^2 = 2 sigma^2 log(sigma_max / sigma_min)."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_eps: float = 1e-5):
        self._set_noise_range(sigma_min, sigma_max)
        self.T = 1.0
        self.t_eps = _checks.real("t_eps", t_eps, low=0, high=self.T, open_low=True, open_high=True)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def log_sigma(self, t: Time) -> torch.Tensor:
        return math.log(self.sigma_min) + self.check_time(t) * self._log_ratio

    def sigma(self, t: Time) -> torch.Tensor:
        return torch.exp(self.log_sigma(t))

    def g2(self, t: Time) -> torch.Tensor:
        return 2 * self.sigma(t) ** 2 * self._log_ratio

    def t_of_log_snr(self, lam: Time) -> torch.Tensor:
        return (-as_time(lam) - math.log(self.sigma_min)) / self._log_ratio


class EDMSDE(_UnitAlphaSDE):
    """The EDM / Karras et al. (2022) process: alpha = 1, sigma(t) = t, so time *is* the noise
    level; g^2 = 2t. Sampling runs from T = sigma_max down to t_eps = sigma_min."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self._set_noise_range(sigma_min, sigma_max)
        self.T = self.sigma_max
        self.t_eps = self.sigma_min

    def sigma(self, t: Time) -> torch.Tensor:
        return self.check_time(t).clone()

    def log_sigma(self, t: Time) -> torch.Tensor:
        return torch.log(self.check_time(t))

    def g2(self, t: Time) -> torch.Tensor:
        return 2 * self.check_time(t)

    def t_of_log_snr(self, lam: Time) -> torch.Tensor:
        return torch.exp(-as_time(lam))
