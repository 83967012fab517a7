"""Forward SDEs: dx = f(x, t) dt + g(t) dW, and their reverse-time / probability-flow forms.

Affine ("Gaussian-path") SDEs dx = f(t) x dt + g(t) dW have marginals
x_t = alpha(t) x_0 + sigma(t) eps and expose alpha, sigma, log_snr = log(alpha / sigma), its
inverse, f = d log alpha / dt and g2 = d sigma^2/dt - 2 f sigma^2 (Song et al., ICLR 2021).
Time `t` is a float, a 0-dim tensor or a (B,) tensor; coefficients come back with t's shape.
"""
from __future__ import annotations

import hashlib
import math
from typing import Callable, Optional, Sequence

import torch

from . import _checks
from ._utils import Time, as_time, expand_as_batch

__all__ = [
    "SDE", "AffineSDE", "ReverseSDE", "VPSDE", "DiscreteVPSDE", "CosineVPSDE", "SubVPSDE", "VESDE", "EDMSDE",
    "SDES", "by_name",
]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


def _check_unit_interval(name: str, values: torch.Tensor, why: str = "") -> None:
    """Refuse a table of coefficients (betas, alphas_cumprod) with a value outside (0, 1)."""
    if values.numel() and not bool(((values > 0) & (values < 1)).all()):
        given = f"values in [{float(values.min()):g}, {float(values.max()):g}]"
        raise _checks.fail(name, "values in (0, 1)" + why, given)


class _LinearBetaSDE(AffineSDE):
    """Shared by VP and sub-VP: drift -beta(t)/2 x with beta(t) = beta_min + t (beta_max - beta_min)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0, t_eps: float = 1e-3):
        self.beta_min = _checks.real("beta_min", beta_min, low=0)
        self.beta_max = _checks.real("beta_max", beta_max)
        if self.beta_max <= self.beta_min:
            raise _checks.fail("beta_max", f"> beta_min = {self.beta_min:g}", beta_max)
        self.T = _checks.real("T", T, low=0, open_low=True)
        self.t_eps = _checks.real("t_eps", t_eps, low=0, high=self.T, open_low=True, open_high=True)

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
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        n = betas.numel()
        if n < 2:
            raise ValueError(f"betas must hold at least 2 values; got {n}")
        _check_unit_interval("betas", betas)
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
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu().flatten()
        n = ac.numel()
        if n < 2:
            raise ValueError(f"alphas_cumprod must hold at least 2 values; got {n}")
        _check_unit_interval("alphas_cumprod", ac, " (alpha_bar = 1 is no noise; alpha_bar = 0, zero terminal SNR, "
                             "has no finite log-SNR)")
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
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        _check_unit_interval("betas", betas)
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


class CosineVPSDE(AffineSDE):
    """VP SDE with the cosine schedule of Nichol & Dhariwal (2021):
    alpha(t) = cos((t+s)/(1+s) pi/2) / cos(s/(1+s) pi/2), sigma = sqrt(1 - alpha^2).
    T defaults to 0.9946 (as in DPM-Solver), where alpha(T) ~ 0.008, since alpha(1) = 0."""

    def __init__(self, s: float = 0.008, T: float = 0.9946, t_eps: float = 1e-3):
        self.s = _checks.real("s", s, low=0)
        self.T = _checks.real("T", T, low=0, high=1, open_low=True, open_high=True)  # alpha(1) = 0
        self.t_eps = _checks.real("t_eps", t_eps, low=0, high=self.T, open_low=True, open_high=True)
        self._log_cos0 = math.log(math.cos(self.s / (1 + self.s) * math.pi / 2))

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


class _UnitAlphaSDE(AffineSDE):
    """Shared by VE and EDM: no drift (alpha = 1), noise level between sigma_min and sigma_max."""

    def _set_noise_range(self, sigma_min: float, sigma_max: float) -> None:
        self.sigma_min = _checks.real("sigma_min", sigma_min, low=0, open_low=True)
        self.sigma_max = _checks.real("sigma_max", sigma_max)
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


#: the built-in SDEs by their short names (the CLI's --sde, benchmark problem names)
SDES = {"vp": VPSDE, "cosine": CosineVPSDE, "subvp": SubVPSDE, "ve": VESDE, "edm": EDMSDE}


def by_name(name: str, **params) -> AffineSDE:
    """The built-in SDE called `name` (a key of SDES), built with `params`."""
    return SDES[_checks.choice("sde", name, SDES)](**params)
