"""The SDE base classes: a general forward SDE, its reverse-time / probability-flow form, and the
affine ("Gaussian-path") layer with alpha, sigma, log-SNR and their derivatives."""
from __future__ import annotations

import hashlib
import math
from typing import Callable, Optional, Sequence

import torch

from .. import _checks
from .._utils import Time, as_time, expand_as_batch

__all__ = ["SDE", "ReverseSDE", "AffineSDE", "ScoreFn", "check_unit_interval", "coefficient_table", "LOG_SNR_LIMIT"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: the largest |log-SNR| an SDE may reach on [t_eps, T]: solvers, losses and the EDM
#: preconditioning square sigma / alpha = exp(-lambda), and exp(+-2 * 354) is the edge of
#: float64's normal range (about 1e+-308). Built-in SDEs refuse parameters beyond it.
LOG_SNR_LIMIT = 354.0


class SDE:
    """A forward SDE dx = drift(x, t) dt + diffusion(x, t) dW on t in [0, T] (diagonal noise).

    Subclass it with `drift` and `diffusion` for a user-defined, possibly non-affine, process.
    The prior at T is N(0, prior_std^2 I); override `prior_sample`/`prior_logp` for another.
    """

    T: float = 1.0
    t_eps: float = 1e-3  # default end time of sampling and start time of likelihood integrals
    prior_std: float = 1.0
    is_affine: bool = False

    def drift(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        raise NotImplementedError

    def diffusion(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """g(x, t), broadcastable to x."""
        raise NotImplementedError

    def check_time(self, t: Time, what: str = "t") -> torch.Tensor:
        """t as a float tensor, after checking it lies in [0, T]."""
        t = as_time(t)
        _checks.time_range(t, 0.0, self.T, what)
        return t

    def prior_sample(
        self,
        shape: Sequence[int],
        generator: Optional[torch.Generator] = None,
        dtype: Optional[torch.dtype] = None,
        device: Optional[torch.device] = None,
    ) -> torch.Tensor:
        """Exact draws from the prior N(0, prior_std^2 I), shape `shape` = (B, *data_shape)."""
        if device is None and generator is not None:
            device = generator.device
        z = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
        return z * self.prior_std

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """Exact log-density of the prior, summed over all but the batch dimension: shape (B,)."""
        d = z[0].numel()
        s2 = self.prior_std**2
        sq = z.reshape(z.shape[0], -1).pow(2).sum(1)
        return -0.5 * sq / s2 - 0.5 * d * math.log(2 * math.pi * s2)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE dx = [f - g^2 score] dt + g dW_bar, or with `probability_flow`
        the ODE dx/dt = f - g^2 score / 2 (both written in forward time t)."""
        return ReverseSDE(self, score_fn, probability_flow)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v:g}" for k, v in self._params().items())
        return f"{type(self).__name__}({params})"

    def _params(self) -> dict:
        """The parameters shown by repr (a summary for long tables)."""
        return {}

    def _identity(self) -> tuple:
        """Everything that defines the process (its numeric attributes; not t_eps, which is only
        the default end time of sampling): two SDEs of one class are equal when these are."""
        return tuple(sorted((k, v) for k, v in vars(self).items()
                            if k != "t_eps" and isinstance(v, (int, float, str, bool))))

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if type(self) is not type(other):
            return NotImplemented if not isinstance(other, SDE) else False
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._identity()))

    def fingerprint(self) -> str:
        """A short digest of the class and `_identity()`: equal SDEs have equal fingerprints, so
        files can record which process they were made for (a repr rounds, a digest does not)."""
        text = f"{type(self).__name__}:{self._identity()!r}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class ReverseSDE:
    """Drift and diffusion of the reverse-time SDE (or the probability-flow ODE) of `sde`."""

    def __init__(self, sde: SDE, score_fn: ScoreFn, probability_flow: bool = False):
        self.sde = sde
        self.score_fn = score_fn
        self.probability_flow = probability_flow

    def drift(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        g = self.sde.diffusion(x, t)
        weight = 0.5 if self.probability_flow else 1.0
        return self.sde.drift(x, t) - weight * g**2 * self.score_fn(x, t)

    def diffusion(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        g = self.sde.diffusion(x, t)
        return torch.zeros_like(g) if self.probability_flow else g


class AffineSDE(SDE):
    """dx = f(t) x dt + g(t) dW with marginal x_t = alpha(t) x_0 + sigma(t) eps.

    A subclass needs only `alpha` and `sigma`; `f`, `g2` (by autograd) and `t_of_log_snr`
    (by bisection, log-SNR being decreasing) have general defaults that the built-in SDEs
    replace by closed forms.
    """

    is_affine = True

    def alpha(self, t: Time) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t: Time) -> torch.Tensor:
        raise NotImplementedError

    def log_alpha(self, t: Time) -> torch.Tensor:
        return torch.log(self.alpha(t))

    def log_sigma(self, t: Time) -> torch.Tensor:
        return torch.log(self.sigma(t))

    def log_snr(self, t: Time) -> torch.Tensor:
        """lambda(t) = log(alpha / sigma), decreasing in t."""
        return self.log_alpha(t) - self.log_sigma(t)

    def sigma_hat(self, t: Time) -> torch.Tensor:
        """sigma / alpha = e^{-lambda}: the noise level of x / alpha (EDM's sigma)."""
        return torch.exp(-self.log_snr(t))

    def t_of_log_snr(self, lam: Time) -> torch.Tensor:
        lam = as_time(lam)
        lo = torch.zeros_like(lam, dtype=torch.float64)
        hi = torch.full_like(lo, self.T)
        target = lam.to(torch.float64)
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > target
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return (0.5 * (lo + hi)).to(lam.dtype)

    def f(self, t: Time) -> torch.Tensor:
        """d log alpha / dt."""
        return _time_derivative(self.log_alpha, self.check_time(t))

    def g2(self, t: Time) -> torch.Tensor:
        """g(t)^2 = d sigma^2/dt - 2 f sigma^2 = -2 sigma^2 d lambda/dt."""
        t = self.check_time(t)
        return -2 * self.sigma(t) ** 2 * _time_derivative(self.log_snr, t)

    def drift(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        return expand_as_batch(self.f(t), x) * x

    def diffusion(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        return expand_as_batch(self.g2(t).sqrt(), x)

    def marginal(
        self,
        x0: torch.Tensor,
        t: Time,
        noise: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """A draw of x_t | x_0 = alpha(t) x_0 + sigma(t) noise; noise ~ N(0, I) if not given."""
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}; got {tuple(noise.shape)}")
        t = self.check_time(t)
        return expand_as_batch(self.alpha(t), x0) * x0 + expand_as_batch(self.sigma(t), x0) * noise


def _time_derivative(fn: Callable[[torch.Tensor], torch.Tensor], t: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        tt = t.detach().clone().requires_grad_(True)
        (d,) = torch.autograd.grad(fn(tt).sum(), tt)
    return d


def coefficient_table(name: str, values) -> torch.Tensor:
    """A 1-D table of real coefficients (betas, alphas_cumprod) as float64, refusing anything
    else (a 2-D table is not flattened)."""
    return _checks.numbers_tensor(name, values, "a 1-D sequence or tensor of real numbers", ndim=1)


def check_unit_interval(name: str, values: torch.Tensor, why: str = "") -> None:
    """Refuse a table of coefficients (betas, alphas_cumprod) with a value outside (0, 1)."""
    if values.numel() and not bool(((values > 0) & (values < 1)).all()):
        given = f"values in [{float(values.min()):g}, {float(values.max()):g}]"
        raise _checks.fail(name, "values in (0, 1)" + why, given)
