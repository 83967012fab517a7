"""Gaussian mixtures: the project's ground truth.

Under an affine SDE, p_t = sum_k w_k N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I), so log p_t,
the score and the posterior mean E[x0 | x_t] are exact. Each covariance is stored by its
eigendecomposition Sigma_k = U_k diag(d_k) U_k^T, so that the time-dependent covariance
U_k diag(alpha^2 d_k + sigma^2) U_k^T needs no per-sample factorization: every method is a few
batched einsums over (B, K, D), whatever t is per sample.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch

from .. import _checks
from .._utils import Time, as_time, expand_as_batch
from ..model import ScoreModel
from ..sde import AffineSDE

__all__ = ["GaussianMixture", "MAX_ELEMENTS", "MAX_SAMPLES"]

#: the most samples one call draws (10^8 rows: 0.8 GB for 2-D float32 data)
MAX_SAMPLES = 10**8

#: the most entries K D^2 the covariances of a mixture may hold (1 GiB of float64): larger
#: ones are refused before anything is allocated
MAX_ELEMENTS = 2**27
#: the largest |mean| and standard deviation the named constructors accept: squared distances
#: and variances must stay finite in float64
_MAX_SCALE = 1e100
_WHY = " (squared distances and variances must stay finite in float64)"


def _check_size(name: str, value: int, components: int, dim: int) -> None:
    if components > 2**24:  # torch.multinomial draws from at most 2^24 categories
        raise _checks.fail(name, "an integer <= 2^24 = 16777216 components", value)
    if components * dim * dim > MAX_ELEMENTS:
        raise _checks.fail(name, f"small enough that K D^2 = {components} x {dim}^2 covariance entries fit in "
                                 f"MAX_ELEMENTS = {MAX_ELEMENTS}", value)


class GaussianMixture:
    """sum_k weights[k] N(means[k], covariances[k]) on R^D, with samples shaped (B, *event_shape).

    Args:
        weights: (K,) non-negative, summing to 1.
        means: (K, D).
        covariances: (K, D, D) symmetric positive definite.
        event_shape: the shape of one sample (prod = D); default (D,). Use e.g. (1, 4, 4) to
            serve image-shaped data.

    Parameters are kept in float64; methods compute in the dtype and on the device of their input.
    """

    def __init__(
        self,
        weights: Sequence[float] | torch.Tensor,
        means: Sequence | torch.Tensor,
        covariances: Sequence | torch.Tensor,
        event_shape: Optional[Sequence[int]] = None,
    ):
        weights = _checks.numbers_tensor("weights", weights, "real numbers of shape (K,)")
        means = _checks.numbers_tensor("means", means, "real numbers of shape (K, D)")
        covariances = _checks.numbers_tensor("covariances", covariances, "real numbers of shape (K, D, D)")
        if weights.ndim != 1 or weights.numel() == 0:
            raise ValueError(f"weights must have shape (K,) with K >= 1; got {tuple(weights.shape)}")
        k = weights.numel()
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
            raise _checks.fail("weights", "finite and >= 0", weights)
        if abs(float(weights.sum()) - 1) > 1e-6:
            raise _checks.fail("weights", "probabilities summing to 1 (within 1e-6)",
                               f"a sum of {float(weights.sum()):.8g}")
        if means.ndim != 2 or means.shape[0] != k:
            raise ValueError(f"means must have shape (K, D) = ({k}, D); got {tuple(means.shape)}")
        d = means.shape[1]
        if d == 0:
            raise _checks.fail("means", "a (K, D) table with D >= 1 (a 0-dimensional mixture has no samples)",
                               tuple(means.shape))
        if covariances.shape != (k, d, d):
            raise ValueError(f"covariances must have shape (K, D, D) = ({k}, {d}, {d}); got {tuple(covariances.shape)}")
        _checks.finite("means", means)
        _checks.finite("covariances", covariances)
        if not torch.allclose(covariances, covariances.transpose(1, 2), rtol=1e-10, atol=1e-12):
            asymmetry = float((covariances - covariances.transpose(1, 2)).abs().max())
            raise _checks.fail("covariances", "symmetric", f"max |C - C^T| = {asymmetry:.3g}")
        eigvals, eigvecs = torch.linalg.eigh(covariances)
        if bool((eigvals <= 0).any()):
            raise _checks.fail("covariances", "positive definite", f"smallest eigenvalue {float(eigvals.min()):.3g}")
        event_shape = (d,) if event_shape is None else _checks.shape("event_shape", event_shape, accepted="")
        if math.prod(event_shape) != d:
            raise _checks.fail("event_shape", f"a shape of D = {d} elements", event_shape)
        self.weights, self.means, self.covariances = weights, means, covariances
        self.eigvals, self.eigvecs = eigvals, eigvecs
        self.event_shape = event_shape
        self._cache: dict = {}

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.weights.numel()

    # ---- named problems ---------------------------------------------------------------
    @classmethod
    def ring(cls, modes: int = 8, radius: float = 1.5, std: float = 0.15) -> "GaussianMixture":
        """`modes` equal isotropic Gaussians on a circle in 2-D."""
        modes = _checks.integer("modes", modes, low=1)
        _check_size("modes", modes, modes, 2)
        radius = _checks.real("radius", radius)
        if abs(radius) > _MAX_SCALE:
            raise _checks.fail("radius", f"at most {_MAX_SCALE:g} in absolute value{_WHY}", radius)
        std = _checks.at_most("std", _checks.real("std", std, low=0, open_low=True), _MAX_SCALE, _WHY)
        if std < 1 / _MAX_SCALE:
            raise _checks.fail("std", f"at least {1 / _MAX_SCALE:g}{_WHY}", std)
        angle = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
        means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
        cov = torch.eye(2, dtype=torch.float64).expand(modes, 2, 2) * std**2
        return cls(torch.full((modes,), 1 / modes, dtype=torch.float64), means, cov)

    @classmethod
    def random(cls, dim: int, components: int, seed: int = 0, scale: float = 1.0) -> "GaussianMixture":
        """Random weights, means ~ N(0, scale^2 I) and full anisotropic covariances (random
        rotations, eigenvalues log-uniform in [1e-3, 1e-1] scale^2), reproducible from `seed`."""
        dim = _checks.integer("dim", dim, low=1)
        components = _checks.integer("components", components, low=1)
        _check_size("components", components, components, 1)
        _check_size("dim", dim, components, dim)
        seed = _checks.integer("seed", seed, low=0)
        scale = _checks.at_most("scale", _checks.real("scale", scale, low=0, open_low=True), _MAX_SCALE, _WHY)
        g = torch.Generator().manual_seed(seed)
        opts = dict(generator=g, dtype=torch.float64)
        weights = torch.rand(components, **opts) + 0.5
        means = scale * torch.randn(components, dim, **opts)
        q, _ = torch.linalg.qr(torch.randn(components, dim, dim, **opts))
        eig = scale**2 * 10 ** (-3 + 2 * torch.rand(components, dim, **opts))
        cov = q @ torch.diag_embed(eig) @ q.transpose(1, 2)
        return cls(weights / weights.sum(), means, 0.5 * (cov + cov.transpose(1, 2)))

    @classmethod
    def bimodal_1d(cls) -> "GaussianMixture":
        """The lecture's 1-D example: two unequal peaks, 0.4 N(-1, 0.3^2) + 0.6 N(1, 0.3^2)."""
        return cls([0.4, 0.6], [[-1.0], [1.0]], [[[0.09]], [[0.09]]])

    @classmethod
    def gaussian(cls, dim: int, mean: float | torch.Tensor = 0.0, std: float | torch.Tensor = 1.0) -> "GaussianMixture":
        """A single Gaussian N(mean, diag(std^2)); mean and std broadcast to (dim,)."""
        dim = _checks.integer("dim", dim, low=1)
        _check_size("dim", dim, 1, dim)
        mean = _checks.numbers_tensor("mean", mean, f"a real number or {dim} of them")
        std = _checks.numbers_tensor("std", std, f"a number > 0 or {dim} of them")
        if mean.ndim > 1 or mean.numel() not in (1, dim):
            raise _checks.fail("mean", f"a real number or {dim} of them", tuple(mean.shape))
        if std.ndim > 1 or std.numel() not in (1, dim) or not bool((std > 0).all()):
            raise _checks.fail("std", f"a finite number > 0 or {dim} of them", std.tolist())
        if not bool(((std >= 1 / _MAX_SCALE) & (std <= _MAX_SCALE)).all()):
            raise _checks.fail("std", f"numbers in [{1 / _MAX_SCALE:g}, {_MAX_SCALE:g}]{_WHY}", std.tolist())
        if not bool((mean.abs() <= _MAX_SCALE).all()):
            raise _checks.fail("mean", f"numbers in [-{_MAX_SCALE:g}, {_MAX_SCALE:g}]", mean.tolist())
        mean, std = mean.reshape(-1).expand(dim), std.reshape(-1).expand(dim)
        return cls([1.0], mean[None].clone(), torch.diag_embed(std**2)[None].clone())

    # ---- exact quantities -------------------------------------------------------------
    def mean(self) -> torch.Tensor:
        """Mixture mean, (D,) float64."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """Mixture covariance, (D, D) float64."""
        centred = self.means - self.mean()
        return torch.einsum("k,kij->ij", self.weights, self.covariances + centred[:, :, None] * centred[:, None, :])

    def sample(
        self,
        n: int,
        generator: Optional[torch.Generator] = None,
        dtype: torch.dtype = torch.float32,
        device: Optional[torch.device] = None,
        return_components: bool = False,
    ):
        """n exact samples, shape (n, *event_shape); with `return_components` also the
        component index of each sample, shape (n,)."""
        n = _checks.at_most("n", _checks.integer("n", n, low=0), MAX_SAMPLES, " samples in one call")
        generator = _checks.generator("generator", generator)
        dtype = _checks.floating_dtype("dtype", dtype, optional=False)
        return_components = _checks.boolean("return_components", return_components)
        if device is None and generator is not None:
            device = generator.device
        w, mu, vecs, vals = self._params(torch.float64, device)
        if n == 0:  # multinomial refuses to draw nothing
            comp = torch.zeros(0, dtype=torch.long, device=w.device)
        else:
            comp = torch.multinomial(w, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64, device=device)
        x = mu[comp] + torch.einsum("nij,nj->ni", vecs[comp], vals[comp].sqrt() * z)
        x = x.to(dtype).reshape(n, *self.event_shape)
        return (x, comp) if return_components else x

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-density of the data, shape (B,)."""
        one = torch.ones((), dtype=torch.float64)
        return self._component_terms(x, one, 0 * one)[0]

    def log_prob_t(self, x: torch.Tensor, t: Time, sde: AffineSDE) -> torch.Tensor:
        """Exact log p_t(x) under `sde`, shape (B,)."""
        return self._at_time(x, t, sde)[0]

    def score(self, x: torch.Tensor, t: Time, sde: AffineSDE) -> torch.Tensor:
        """Exact grad_x log p_t(x), shaped like x."""
        return self._at_time(x, t, sde, score=True)[1]

    def x0(self, x: torch.Tensor, t: Time, sde: AffineSDE) -> torch.Tensor:
        """Exact posterior mean E[x0 | x_t = x], shaped like x."""
        return self._at_time(x, t, sde, x0=True)[2]

    def component_posterior(self, x: torch.Tensor, t: Time, sde: AffineSDE) -> torch.Tensor:
        """p(k | x_t = x), shape (B, K): the exact noise-conditional classifier."""
        return self._at_time(x, t, sde)[3].exp()

    def score_model(self, sde: AffineSDE, prediction: str = "eps") -> ScoreModel:
        """A `ScoreModel` whose 'network' is this mixture's exact answer in the given
        parameterization: every sampler runs on it without training, and counts NFE."""
        _checks.affine(sde, "the Gaussian-mixture oracle")
        oracle = _Oracle(self, sde)
        model = ScoreModel(oracle, sde, prediction=prediction, time_input="t")
        oracle.model = model
        return model

    # ---- implementation -----------------------------------------------------------------
    def _params(self, dtype: torch.dtype, device) -> Tuple[torch.Tensor, ...]:
        key = (dtype, torch.device(device) if device is not None else torch.device("cpu"))
        if key not in self._cache:
            self._cache[key] = tuple(
                p.to(dtype=dtype, device=key[1]) for p in (self.weights, self.means, self.eigvecs, self.eigvals)
            )
        return self._cache[key]

    def _check_x(self, x) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise _checks.fail("x", f"a real floating-point tensor (B, {', '.join(map(str, self.event_shape))})",
                               f"{x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__)

    def _at_time(self, x: torch.Tensor, t: Time, sde: AffineSDE, score: bool = False, x0: bool = False):
        _checks.affine(sde, "the Gaussian mixture's exact quantities at time t")
        self._check_x(x)
        t = sde.check_time(as_time(t)).to(device=x.device)
        return self._component_terms(x, sde.alpha(t), sde.sigma(t), score, x0)

    def _component_terms(
        self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, score: bool = False, x0: bool = False
    ):
        """(log p, score, x0, log responsibilities) for x_t = alpha x0 + sigma eps; alpha and
        sigma are scalars or (B,). score and x0 are None unless asked for."""
        self._check_x(x)
        shape = x.shape
        if tuple(shape[1:]) != self.event_shape:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.event_shape))}); got {tuple(shape)}")
        w, mu, vecs, vals = self._params(x.dtype, x.device)
        alpha = alpha.to(x.dtype).reshape(-1, 1, 1)  # (B or 1, 1, 1)
        sigma = sigma.to(x.dtype).reshape(-1, 1, 1)
        xf = x.reshape(shape[0], 1, -1)  # (B, 1, D)
        var = alpha**2 * vals + sigma**2  # (B|1, K, D) eigenvalues of alpha^2 Sigma_k + sigma^2 I
        y = torch.einsum("kde,bkd->bke", vecs, xf - alpha * mu)  # coordinates in each eigenbasis
        log_comp = -0.5 * ((y**2 / var).sum(-1) + var.log().sum(-1) + self.dim * math.log(2 * math.pi))
        log_joint = log_comp + w.log()
        log_p = torch.logsumexp(log_joint, dim=1)
        log_resp = log_joint - log_p[:, None]
        resp = log_resp.exp()
        score_t = x0_t = None
        if score:
            # two operands: a three-operand einsum here runs ~100x slower (no batched matmul path)
            score_t = -torch.einsum("kde,bke->bd", vecs, resp[:, :, None] * y / var).reshape(shape)
        if x0:
            post = mu + alpha * torch.einsum("kde,bke->bkd", vecs, vals * y / var)
            x0_t = torch.einsum("bk,bkd->bd", resp, post).reshape(shape)
        return log_p, score_t, x0_t, log_resp


class _Oracle:
    """The mixture's exact answer, returned in the format of `model.prediction`."""

    def __init__(self, mixture: GaussianMixture, sde: AffineSDE):
        self.mixture, self.sde = mixture, sde
        self.model: Optional[ScoreModel] = None

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        model = self.model
        if model.prediction == "edm":  # undo the input scaling the ScoreModel applied
            alpha, sigma_hat = model._scaled_sigma(x, t)
            x = x * alpha / model._c_in(sigma_hat)
        _, score, x0, _ = self.mixture._at_time(x, t, self.sde, score=True, x0=True)
        eps = -expand_as_batch(self.sde.sigma(t), x) * score
        return model.target(eps, x0, x, t)
