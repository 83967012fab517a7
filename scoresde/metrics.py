"""Distances between sample sets and between Gaussians, for measuring samplers against exact samples.

Sample metrics take x of shape (N, *shape) and y of shape (M, *shape); both are flattened to
(N, D) and (M, D). They compute in the inputs' (promoted) dtype on the inputs' device, with
pairwise distances built in row chunks so that N = M = 10^4 needs tens of MB, never N x M at once.
Every value is a 0-dim tensor; none is moved to the CPU. Which values are squared:

| function | returns | squared? |
|---|---|---|
| `sliced_wasserstein` | SW_p | no |
| `mmd` | MMD^2, unbiased (can be < 0) | yes |
| `energy_distance` | 2E|X-Y| - E|X-X'| - E|Y-Y'|, unbiased (can be < 0) | yes (of a metric) |
| `gaussian_w2` | W_2 (W_2^2 with `squared=True`) | no by default |
| `frechet_distance` | ||m1-m2||^2 + tr(...), as FID reports it | yes |

A sampler's distance to exact samples is only meaningful next to `two_sample_floor`: the same
metric between two independent exact sample sets of the same size.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Sequence, Tuple, Union

import torch

from . import _checks

__all__ = [
    "sliced_wasserstein", "mmd", "median_bandwidth", "energy_distance", "gaussian_w2",
    "frechet_distance", "two_sample_floor", "Floor",
]

Bandwidth = Union[None, float, Sequence[float], torch.Tensor]

_CHUNK_ELEMENTS = 2**23  # entries of one pairwise block or one (N, projections) block
_MEDIAN_POINTS = 1024  # points of the pooled sample used by the median heuristic


# ---- sample metrics ----------------------------------------------------------------------
def sliced_wasserstein(
    x: torch.Tensor,
    y: torch.Tensor,
    projections: int = 256,
    p: float = 2,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Sliced Wasserstein-p distance SW_p = (mean_l W_p^p(<theta_l, x>, <theta_l, y>))^(1/p).

    The directions theta_l are `projections` fixed random unit vectors, uniform on the sphere,
    drawn from `generator` (default: a fresh generator seeded 0, so the metric is deterministic
    and two calls compare samples along the same directions). Each 1-D W_p is the exact one
    between the two empirical measures: for N = M it pairs the sorted projections; for N != M it
    integrates |F^-1(u) - G^-1(u)|^p over u in (0, 1], where both quantile functions are step
    functions, constant between consecutive levels of the merged grid {i/N} U {j/M} (no
    approximation: x repeated k times gives the same value as x). In one dimension every
    direction is +-1, so the exact W_p is returned and `projections` is not used.

    Args:
        x: (N, *shape), y: (M, *shape), N, M >= 2.
        projections: number of directions, >= 1.
        p: order, in [1, inf).
    Returns:
        SW_p, a 0-dim tensor (not raised to the power p). For a pure shift y = x + d it equals
        (mean_l |<theta_l, d>|^p)^(1/p); for p = 2 that is ||d|| / sqrt(D) in expectation over
        directions.
    """
    x, y = _sample_pair(x, y)
    projections = _checks.at_most("projections", _checks.integer("projections", projections, low=1), 2**20)
    p = _checks.at_most("p", _checks.real("p", p, low=1), 100, " (|x - y|^p overflows float64 soon beyond)")
    _checks.generator("generator", generator)
    (n, d), m = x.shape, y.shape[0]
    if d == 1:
        theta = torch.ones(1, 1, dtype=x.dtype, device=x.device)
    else:
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        # drawn in float64 on the generator's device so the directions do not depend on x's dtype
        theta = torch.randn(d, projections, generator=generator, dtype=torch.float64, device=generator.device)
        theta = (theta / theta.norm(dim=0, keepdim=True)).to(dtype=x.dtype, device=x.device)
    if n == m:
        ix = iy = weights = None
    else:  # merged quantile grid, in integer units of 1/(N M): x's levels i M, y's levels j N
        cuts = torch.cat([torch.arange(1, n + 1, device=x.device) * m, torch.arange(1, m + 1, device=x.device) * n])
        cuts = torch.unique(cuts, sorted=True)
        weights = torch.diff(cuts, prepend=cuts.new_zeros(1)).to(x.dtype) / (n * m)
        ix, iy = (cuts - 1) // m, (cuts - 1) // n
    total = x.new_zeros(())
    step = max(1, _CHUNK_ELEMENTS // max(n, m))
    for start in range(0, theta.shape[1], step):
        directions = theta[:, start:start + step].T  # (L, D); sorting along the last dim is fastest
        xs = (directions @ x.T).sort(dim=1).values  # (L, N)
        ys = (directions @ y.T).sort(dim=1).values
        if weights is None:
            total = total + (xs - ys).abs().pow(p).mean(1).sum()
        else:
            total = total + ((xs[:, ix] - ys[:, iy]).abs().pow(p) @ weights).sum()
    return (total / theta.shape[1]).pow(1 / p)


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidth: Bandwidth = None) -> torch.Tensor:
    """Squared maximum mean discrepancy with a Gaussian (RBF) kernel, unbiased estimator.

    k(a, b) = sum_h exp(-||a - b||^2 / (2 h^2)) over the bandwidths h, and

        MMD^2 = 1/(N(N-1)) sum_{i!=j} k(x_i, x_j) + 1/(M(M-1)) sum_{i!=j} k(y_i, y_j)
                - 2/(N M) sum_{i,j} k(x_i, y_j),

    the U-statistic MMD^2_u of Gretton et al. (JMLR 2012): its mean is the population MMD^2, so it
    is ~0 (and can be negative) for two samples of one distribution.

    Args:
        x: (N, *shape), y: (M, *shape), N, M >= 2.
        bandwidth: h > 0, a sequence of them (their kernels are summed) or None for the median
            heuristic `median_bandwidth(x, y)`. The median moves with the samples; to compare
            several samplers against one reference, fix it once, e.g.
            `median_bandwidth(reference)`.
    Returns:
        MMD^2, a 0-dim tensor (squared; not the square root).
    """
    x, y = _sample_pair(x, y)
    if bandwidth is None:
        h = median_bandwidth(x, y)[None]
    else:
        h = _bandwidths(bandwidth).to(dtype=x.dtype, device=x.device)
    scale = 0.5 / h.square()
    if not bool(torch.isfinite(scale).all()):  # 0 * inf on the diagonal would be NaN
        smallest = math.sqrt(0.5 / torch.finfo(x.dtype).max)
        raise _checks.fail("bandwidth", f"None or numbers >= {smallest:.3g} (1 / (2 h^2) finite in {x.dtype})",
                           bandwidth)

    def kernel(sq_dist: torch.Tensor) -> torch.Tensor:
        return sum(torch.exp(-sq_dist * c) for c in scale)

    x, y = _centred(x, y)
    n, m = x.shape[0], y.shape[0]
    k_xx = _pair_sum(x, x, kernel, exclude_diagonal=True) / (n * (n - 1))
    k_yy = _pair_sum(y, y, kernel, exclude_diagonal=True) / (m * (m - 1))
    k_xy = _pair_sum(x, y, kernel) / (n * m)
    return k_xx + k_yy - 2 * k_xy


def median_bandwidth(x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The median heuristic: the median Euclidean distance between distinct points of the pooled
    sample cat(x, y), shapes (N, *shape) and (M, *shape). Above 1024 pooled points it uses 1024
    of them picked by a fixed-seed permutation (deterministic). Returns a 0-dim tensor > 0."""
    if y is None:
        x = _samples("x", x)
        pooled = x
    else:
        pooled = torch.cat(_sample_pair(x, y))
    if pooled.shape[0] > _MEDIAN_POINTS:
        pick = torch.randperm(pooled.shape[0], generator=torch.Generator().manual_seed(0))[:_MEDIAN_POINTS]
        pooled = pooled[pick.to(pooled.device)]
    pooled = pooled - pooled.mean(0)
    i, j = torch.triu_indices(pooled.shape[0], pooled.shape[0], offset=1, device=pooled.device)
    dist = _sq_dist(pooled, pooled)[i, j].sqrt()
    h = torch.quantile(dist, 0.5)
    if not bool(h > 0):
        raise _checks.fail("bandwidth", "a number > 0 given explicitly when more than half of the pairs of points "
                           "coincide (the median heuristic gives 0 then)", None)
    return h


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Energy distance 2 E||X - Y|| - E||X - X'|| - E||Y - Y'|| (Szekely & Rizzo), unbiased.

    Estimated by U-statistics, 2/(N M) sum_{i,j} ||x_i - y_j|| - 1/(N(N-1)) sum_{i!=j}
    ||x_i - x_j|| - 1/(M(M-1)) sum_{i!=j} ||y_i - y_j||, whose mean is the population value: ~0
    (possibly negative) for two samples of one distribution. The population value is the square
    of a metric; scipy.stats.energy_distance instead returns the square root of the V-statistic
    (1/N^2 and 1/M^2 in place of 1/(N(N-1)) and 1/(M(M-1))).

    Args:
        x: (N, *shape), y: (M, *shape), N, M >= 2.
    Returns:
        a 0-dim tensor, in units of distance (not of distance squared).
    """
    x, y = _centred(*_sample_pair(x, y))
    n, m = x.shape[0], y.shape[0]
    d_xx = _pair_sum(x, x, torch.sqrt, exclude_diagonal=True) / (n * (n - 1))
    d_yy = _pair_sum(y, y, torch.sqrt, exclude_diagonal=True) / (m * (m - 1))
    d_xy = _pair_sum(x, y, torch.sqrt) / (n * m)
    return 2 * d_xy - d_xx - d_yy


# ---- Gaussian fits -----------------------------------------------------------------------
def gaussian_w2(
    mean1: torch.Tensor,
    cov1: torch.Tensor,
    mean2: torch.Tensor,
    cov2: torch.Tensor,
    squared: bool = False,
) -> torch.Tensor:
    """Exact Wasserstein-2 distance between N(mean1, cov1) and N(mean2, cov2):

        W_2^2 = ||mean1 - mean2||^2 + tr(cov1 + cov2 - 2 (cov2^(1/2) cov1 cov2^(1/2))^(1/2)).

    Both matrix square roots are of symmetric PSD matrices, taken by eigendecomposition with
    round-off negative eigenvalues clipped to 0 (stabler than sqrtm of the non-symmetric
    cov1 cov2). Batched: means (..., D) and covariances (..., D, D) broadcast together.
    Prefer float64 for large D: the trace term cancels, so W_2^2 carries an absolute error of
    about eps * tr(cov), and W_2 near 0 about sqrt(eps * tr(cov)).

    Returns:
        W_2 with shape (...) (the distance, not squared), or W_2^2 if `squared`.
    """
    squared = _checks.boolean("squared", squared)
    mean1, cov1 = _gaussian("mean1", "cov1", mean1, cov1)
    mean2, cov2 = _gaussian("mean2", "cov2", mean2, cov2)
    if mean1.shape[-1] != mean2.shape[-1]:
        raise ValueError(f"mean1 and mean2 must have the same dimension D; got {mean1.shape[-1]} and {mean2.shape[-1]}")
    if mean1.device != mean2.device:
        raise ValueError(f"both Gaussians must be on one device; got {mean1.device} and {mean2.device}")
    dtype = torch.promote_types(mean1.dtype, mean2.dtype)
    mean1, cov1, mean2, cov2 = (a.to(dtype) for a in (mean1, cov1, mean2, cov2))
    eigvals2, eigvecs2 = torch.linalg.eigh(cov2)
    root2 = (eigvecs2 * eigvals2.clamp_min(0).sqrt()[..., None, :]) @ eigvecs2.mT
    middle = root2 @ cov1 @ root2
    cross = torch.linalg.eigvalsh(0.5 * (middle + middle.mT)).clamp_min(0).sqrt().sum(-1)
    trace = cov1.diagonal(dim1=-2, dim2=-1).sum(-1) + cov2.diagonal(dim1=-2, dim2=-1).sum(-1)
    w2_squared = ((mean1 - mean2).square().sum(-1) + trace - 2 * cross).clamp_min(0)
    return w2_squared if squared else w2_squared.sqrt()


def frechet_distance(
    x: torch.Tensor,
    y: torch.Tensor,
    features: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    batch_size: Optional[int] = None,
) -> torch.Tensor:
    """Frechet distance between Gaussian fits of features(x) and features(y), as FID reports it.

    The fits are the sample mean and the unbiased (1/(N-1)) sample covariance of the features,
    and the value is `gaussian_w2(m_x, C_x, m_y, C_y, squared=True)`, i.e. the *squared* W_2
    between the fits. With an Inception-v3 pool feature extractor this is FID.

    Args:
        x: (N, *shape), y: (M, *shape), N, M >= 2.
        features: a callable (B, *shape) -> (B, *feature_shape); default the identity on the
            flattened data. Its output is flattened to (B, F).
        batch_size: if given, features is called on batches of this many samples.
    Returns:
        a 0-dim tensor, squared (units of feature^2).
    """
    if batch_size is not None:
        batch_size = _checks.integer("batch_size", batch_size, low=1)
    if features is None:
        fx, fy = _sample_pair(x, y)
    else:
        _samples("x", x), _samples("y", y)  # N >= 2 and finite; features sees x and y unflattened
        fx, fy = _sample_pair(
            _features("x", x, features, batch_size), _features("y", y, features, batch_size),
            names=("features(x)", "features(y)"),
        )
    return gaussian_w2(*_mean_cov(fx), *_mean_cov(fy), squared=True)


# ---- the floor ---------------------------------------------------------------------------
class Floor(NamedTuple):
    """A metric between independent exact sample sets: mean and (unbiased) std over repeats
    (0-dim tensors), and the per-repeat values, shape (repeats,)."""

    mean: torch.Tensor
    std: torch.Tensor
    values: torch.Tensor


def two_sample_floor(
    metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sampler: Callable[[int, Optional[torch.Generator]], torch.Tensor],
    n: int,
    repeats: int = 10,
    generator: Optional[torch.Generator] = None,
) -> Floor:
    """The value `metric` takes between two independent sets of n exact samples, over `repeats`
    pairs: the floor a sampler's metric(samples, exact samples) is to be compared to, since
    finite samples keep even a perfect sampler above it (or, for unbiased metrics, spread
    around it).

    Args:
        metric: (x, y) -> 0-dim tensor, e.g. `functools.partial(mmd, bandwidth=1.0)`.
        sampler: (n, generator) -> (n, *shape) exact samples, e.g. `GaussianMixture(...).sample`
            (an object with a `.sample` method is accepted too).
        n: samples per set, >= 2. repeats: pairs of sets, >= 2.
        generator: the source of all draws; default a fresh generator seeded 0.
    """
    n = _checks.integer("n", n, low=2)
    repeats = _checks.integer("repeats", repeats, low=2)
    if not callable(sampler) and callable(getattr(sampler, "sample", None)):
        sampler = sampler.sample
    if not callable(metric):
        raise _checks.fail("metric", "a callable (x, y) -> 0-dim tensor", metric)
    if not callable(sampler):
        raise _checks.fail("sampler", "a callable (n, generator) -> samples, or an object with a .sample method",
                           sampler)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    values = torch.stack([
        torch.as_tensor(metric(sampler(n, generator), sampler(n, generator))) for _ in range(repeats)
    ])
    return Floor(values.mean(), values.std(), values)


# ---- helpers -----------------------------------------------------------------------------
def _samples(name: str, x: torch.Tensor) -> torch.Tensor:
    """x as (N, D) floating point after checking N >= 2 and finiteness."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (N, ...); got {type(x).__name__}")
    if x.ndim == 0:
        raise ValueError(f"{name} must have shape (N, ...); got a 0-dim tensor")
    if x.is_complex() or x.dtype == torch.bool:
        raise _checks.fail(name, "a real tensor of shape (N, ...)", f"dtype {x.dtype}")
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if x.shape[0] < 2:
        raise ValueError(f"{name} must hold N >= 2 samples; got N = {x.shape[0]}")
    x = x.reshape(x.shape[0], -1)
    if x.shape[1] == 0:
        raise _checks.fail(name, "samples with at least one feature", tuple(x.shape))
    _checks.finite(name, x)
    return x


def _sample_pair(
    x: torch.Tensor, y: torch.Tensor, names: Tuple[str, str] = ("x", "y")
) -> Tuple[torch.Tensor, torch.Tensor]:
    x, y = _samples(names[0], x), _samples(names[1], y)
    pair = f"{names[0]} and {names[1]}"
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{pair} must have the same number of features D; got {x.shape[1]} and {y.shape[1]}")
    if x.device != y.device:
        raise ValueError(f"{pair} must be on one device; got {x.device} and {y.device}")
    dtype = torch.promote_types(x.dtype, y.dtype)
    return x.to(dtype), y.to(dtype)


def _centred(x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Subtract the pooled mean: distances are unchanged, and ||a||^2 + ||b||^2 - 2 a.b cancels less."""
    centre = (x.sum(0) + y.sum(0)) / (x.shape[0] + y.shape[0])
    return x - centre, y - centre


def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances, (A, D) x (B, D) -> (A, B), clipped at 0."""
    sq = a.square().sum(1)[:, None] + b.square().sum(1)[None, :] - 2 * (a @ b.T)
    return sq.clamp_min(0)


def _pair_sum(
    a: torch.Tensor, b: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], exclude_diagonal: bool = False
) -> torch.Tensor:
    """sum_{i,j} fn(||a_i - b_j||^2), over row chunks; with `exclude_diagonal` (a is b) the i = j
    terms are left out."""
    total = a.new_zeros(())
    rows = max(1, _CHUNK_ELEMENTS // b.shape[0])
    for start in range(0, a.shape[0], rows):
        values = fn(_sq_dist(a[start:start + rows], b))
        total = total + values.sum()
        if exclude_diagonal:
            total = total - values.diagonal(offset=start).sum()
    return total


def _real_tensor(name: str, value, accepted: str) -> torch.Tensor:
    """A tensor of real numbers (a tensor keeps its dtype and device), or refused."""
    if isinstance(value, torch.Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise _checks.fail(name, accepted, f"a {value.dtype} tensor")
        return value
    return _checks.numbers_tensor(name, value, accepted)


def _gaussian(mean_name: str, cov_name: str, mean: torch.Tensor, cov: torch.Tensor):
    mean = _real_tensor(mean_name, mean, "a real tensor of shape (..., D)")
    cov = _real_tensor(cov_name, cov, "a real tensor of shape (..., D, D)")
    if not mean.is_floating_point():
        mean = mean.to(torch.get_default_dtype())
    if not cov.is_floating_point():
        cov = cov.to(torch.get_default_dtype())
    if mean.ndim < 1:
        raise ValueError(f"{mean_name} must have shape (..., D); got a 0-dim tensor")
    d = mean.shape[-1]
    if cov.ndim < 2 or cov.shape[-2:] != (d, d):
        raise ValueError(f"{cov_name} must have shape (..., D, D) with D = {d} from {mean_name}; got {tuple(cov.shape)}")
    if mean.device != cov.device:
        raise ValueError(f"{mean_name} and {cov_name} must be on one device; got {mean.device} and {cov.device}")
    _checks.finite(mean_name, mean)
    _checks.finite(cov_name, cov)
    dtype = torch.promote_types(mean.dtype, cov.dtype)
    mean, cov = mean.to(dtype), cov.to(dtype)
    tol = math.sqrt(torch.finfo(dtype).eps) * cov.abs().amax(dim=(-2, -1)).clamp_min(torch.finfo(dtype).tiny)
    asymmetry = (cov - cov.mT).abs().amax(dim=(-2, -1))
    if bool((asymmetry > tol).any()):
        raise _checks.fail(cov_name, "symmetric (within sqrt(eps) of its largest entry)",
                           f"max |C - C^T| = {float(asymmetry.max()):.3g}")
    cov = 0.5 * (cov + cov.mT)
    smallest = torch.linalg.eigvalsh(cov)[..., 0]
    if bool((smallest < -tol * d).any()):
        raise _checks.fail(cov_name, "positive semi-definite", f"smallest eigenvalue {float(smallest.min()):.3g}")
    return mean, cov


def _mean_cov(f: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sample mean (F,) and unbiased covariance (F, F) of f, shape (N, F)."""
    mean = f.mean(0)
    centred = f - mean
    cov = centred.T @ centred / (f.shape[0] - 1)
    return mean, 0.5 * (cov + cov.T)


def _features(name: str, x: torch.Tensor, features, batch_size: Optional[int]) -> torch.Tensor:
    if not callable(features):
        raise _checks.fail("features", "a callable or None", features)
    if batch_size is None:
        f = features(x)
    else:
        f = torch.cat([features(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    if not isinstance(f, torch.Tensor) or f.ndim == 0 or f.shape[0] != x.shape[0]:
        shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
        raise ValueError(f"features must map (N, ...) to (N, ...) with N = {x.shape[0]} for {name}; got {shape}")
    return f


def _bandwidths(bandwidth) -> torch.Tensor:
    """`bandwidth` (a number or a sequence of them, each finite and > 0) as a float64 (H,) tensor."""
    accepted = "None, a finite number > 0 or a non-empty sequence of them"
    h = _checks.numbers_tensor("bandwidth", bandwidth, accepted).reshape(-1)
    if h.numel() == 0 or not bool(torch.isfinite(h).all()) or not bool((h > 0).all()):
        raise _checks.fail("bandwidth", accepted, bandwidth)
    return h
