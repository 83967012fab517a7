"""Variance-preserving processes with a closed form: VP (linear beta, the limit of DDPM), sub-VP
and the cosine schedule."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .. import _checks
from .._utils import Time, as_time
from .base import LOG_SNR_LIMIT, AffineSDE, check_unit_interval, coefficient_table

__all__ = ["VPSDE", "SubVPSDE", "CosineVPSDE"]


def _check_log_snr_range(sde: AffineSDE, T, t_eps, params: str) -> None:
    """Refuse a T (or t_eps) at which |log-SNR| passes LOG_SNR_LIMIT: alpha(T) underflows, or
    sigma(t_eps) does, so that (sigma/alpha)^2 leaves float64's range and sampling breaks."""
    if not float(sde.log_snr(sde.T)) >= -LOG_SNR_LIMIT:
        t_max = float(sde.t_of_log_snr(-LOG_SNR_LIMIT))
        raise _checks.fail("T", f"a finite number in (0, {t_max:.6g}] for {params} (lower T or the rates: beyond it "
                                f"log-SNR < -{LOG_SNR_LIMIT:g}, alpha(T) is about 0 and (sigma/alpha)^2 overflows "
                                "float64)", T)
    if not float(sde.log_snr(sde.t_eps)) <= LOG_SNR_LIMIT:
        t_min = float(sde.t_of_log_snr(LOG_SNR_LIMIT))
        raise _checks.fail("t_eps", f"a finite number in [{t_min:.6g}, T) for {params} (below it log-SNR > "
                                    f"{LOG_SNR_LIMIT:g} and sigma(t_eps)^2 underflows float64)", t_eps)


class _LinearBetaSDE(AffineSDE):
    """Shared by VP and sub-VP: drift -beta(t)/2 x with beta(t) = beta_min + t (beta_max - beta_min)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0, t_eps: float = 1e-3):
        self.beta_min = _checks.real("beta_min", beta_min, low=0)
        self.beta_max = _checks.real("beta_max", beta_max)
        if self.beta_max <= self.beta_min:
            raise _checks.fail("beta_max", f"> beta_min = {self.beta_min:g}", beta_max)
        self.T = _checks.real("T", T, low=0, open_low=True)
        self.t_eps = _checks.real("t_eps", t_eps, low=0, high=self.T, open_low=True, open_high=True)
        _check_log_snr_range(self, T, t_eps, f"beta_min={self.beta_min:g}, beta_max={self.beta_max:g}")

    def _params(self) -> dict:
        return {"beta_min": self.beta_min, "beta_max": self.beta_max}

    def beta(self, t: Time) -> torch.Tensor:
        t = self.check_time(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t: Time) -> torch.Tensor:
        """-int_0^t beta / 2."""
        t = self.check_time(t)
        return -(0.25 * t**2 * (self.beta_max - self.beta_min) + 0.5 * t * self.beta_min)

    def alpha(self, t: Time) -> torch.Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: Time) -> torch.Tensor:
        return torch.exp(self.log_sigma(t))

    def f(self, t: Time) -> torch.Tensor:
        return -0.5 * self.beta(t)

    def _t_of_log_alpha(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """Inverse of log_alpha: the root of the quadratic (b1-b0)/4 t^2 + b0/2 t = m = -log alpha."""
        m = -log_alpha
        a = 0.25 * (self.beta_max - self.beta_min)
        b = 0.5 * self.beta_min
        return 2 * m / (b + torch.sqrt(b**2 + 4 * a * m))  # (-b + sqrt(b^2 + 4am)) / 2a, no cancellation


class VPSDE(_LinearBetaSDE):
    """Variance preserving SDE, dx = -beta(t)/2 x dt + sqrt(beta(t)) dW with linear
    beta(t) = beta_min + t (beta_max - beta_min): the continuous limit of DDPM."""

    def log_sigma(self, t: Time) -> torch.Tensor:
        return 0.5 * torch.log(-torch.expm1(2 * self.log_alpha(t)))

    def g2(self, t: Time) -> torch.Tensor:
        return self.beta(t)

    def t_of_log_snr(self, lam: Time) -> torch.Tensor:
        # alpha^2 = sigmoid(2 lam)
        return self._t_of_log_alpha(0.5 * torch.nn.functional.logsigmoid(2 * as_time(lam)))

    # --- the DDPM chain x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z, i = 1..N ---
    @classmethod
    def from_betas(cls, betas: Sequence[float] | torch.Tensor, rtol: float = 1e-6) -> "VPSDE":
        """The VP SDE whose discretization is a DDPM chain with *linear* betas:
        beta_min = N beta_1, beta_max = N beta_N (DESIGN.md)."""
        betas = coefficient_table("betas", betas)
        rtol = _checks.real("rtol", rtol, low=0)
        n = betas.numel()
        if n < 2:
            raise _checks.fail("betas", "a 1-D table of at least 2 values", f"{n} value(s)")
        check_unit_interval("betas", betas)
        linear = torch.linspace(float(betas[0]), float(betas[-1]), n, dtype=torch.float64)
        if not torch.allclose(betas, linear, rtol=rtol, atol=0):
            deviation = float(((betas - linear).abs() / linear).max())
            raise _checks.fail("betas", "a linear schedule (beta_i = beta_1 + (i-1)(beta_N - beta_1)/(N-1)) to map "
                               f"to VPSDE's linear beta(t), within rtol={rtol:g}",
                               f"a relative deviation of {deviation:.3g} from linear")
        return cls(beta_min=n * float(betas[0]), beta_max=n * float(betas[-1]))

    def discrete_betas(self, N: int) -> torch.Tensor:
        """The N betas of the DDPM chain matching this SDE: beta_i = beta(t_{i-1}) / N with
        t_{i-1} = (i-1)/(N-1), float64, shape (N,). Inverse of `from_betas`."""
        N = _checks.integer("N", N, low=2)
        frac = torch.linspace(0, 1, N, dtype=torch.float64)
        return (self.beta_min + frac * (self.beta_max - self.beta_min)) / N


class CosineVPSDE(AffineSDE):
    """VP SDE with the cosine schedule of Nichol & Dhariwal (2021):
    alpha(t) = cos((t+s)/(1+s) pi/2) / cos(s/(1+s) pi/2), sigma = sqrt(1 - alpha^2).
    T defaults to 0.9946 (as in DPM-Solver), where alpha(T) ~ 0.008, since alpha(1) = 0."""

    def __init__(self, s: float = 0.008, T: float = 0.9946, t_eps: float = 1e-3):
        self.s = _checks.real("s", s, low=0)
        self.T = _checks.real("T", T, low=0, high=1, open_low=True, open_high=True)  # alpha(1) = 0
        self.t_eps = _checks.real("t_eps", t_eps, low=0, high=self.T, open_low=True, open_high=True)
        self._log_cos0 = math.log(math.cos(self.s / (1 + self.s) * math.pi / 2))
        _check_log_snr_range(self, T, t_eps, f"s={self.s:g}")

    def _params(self) -> dict:
        return {"s": self.s, "T": self.T}

    def _angle(self, t: torch.Tensor) -> torch.Tensor:
        return (t + self.s) / (1 + self.s) * (math.pi / 2)

    def log_alpha(self, t: Time) -> torch.Tensor:
        return torch.log(torch.cos(self._angle(self.check_time(t)))) - self._log_cos0

    def alpha(self, t: Time) -> torch.Tensor:
        return torch.exp(self.log_alpha(t))

    def log_sigma(self, t: Time) -> torch.Tensor:
        return 0.5 * torch.log(-torch.expm1(2 * self.log_alpha(t)))

    def sigma(self, t: Time) -> torch.Tensor:
        return torch.exp(self.log_sigma(t))

    def f(self, t: Time) -> torch.Tensor:
        return -torch.tan(self._angle(self.check_time(t))) * (math.pi / 2) / (1 + self.s)

    def g2(self, t: Time) -> torch.Tensor:
        return -2 * self.f(t)  # variance preserving: alpha^2 + sigma^2 = 1

    def t_of_log_snr(self, lam: Time) -> torch.Tensor:
        log_alpha = 0.5 * torch.nn.functional.logsigmoid(2 * as_time(lam))
        angle = torch.arccos(torch.exp(log_alpha + self._log_cos0))
        return angle * 2 * (1 + self.s) / math.pi - self.s


class SubVPSDE(_LinearBetaSDE):
    """sub-VP SDE (Song et al. 2021): VP's drift with g^2 = beta(t)(1 - alpha^4), so that
    sigma(t) = 1 - alpha(t)^2 (no square root)."""

    def log_sigma(self, t: Time) -> torch.Tensor:
        return torch.log(-torch.expm1(2 * self.log_alpha(t)))

    def g2(self, t: Time) -> torch.Tensor:
        return self.beta(t) * -torch.expm1(4 * self.log_alpha(t))

    def t_of_log_snr(self, lam: Time) -> torch.Tensor:
        # (1 - a^2)/a = e^{-lam}  =>  a = 2 / (e^{-lam} + sqrt(e^{-2 lam} + 4))
        e = torch.exp(-as_time(lam))
        return self._t_of_log_alpha(math.log(2) - torch.log(e + torch.sqrt(e**2 + 4)))
