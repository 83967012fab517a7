"""Toy data sets of roughly unit scale: five 2-D shapes and the 1-D bimodal mixture.

Every set is a function `sample(n, generator=None, dtype=torch.float32, device=None)` returning
an (n, 2) tensor ((n, 1) for "bimodal1d"); `TOYS` maps names to them, `sample_toy` samples by
name. All randomness comes from `generator` (draws happen on its device, in float64). Two sets
are Gaussian mixtures with exact scores at every t: `TOY_MIXTURES` gives their
`GaussianMixture`.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import torch

from .. import _checks
from .gmm import MAX_SAMPLES, GaussianMixture

__all__ = [
    "ring_mixture", "two_moons", "swiss_roll", "checkerboard", "pinwheel", "bimodal_1d",
    "TOYS", "TOY_MIXTURES", "sample_toy",
]


def _check_draw(n, generator, dtype, **nonnegative) -> int:
    """n, the generator, the dtype and the named noise levels (each a finite number >= 0) checked;
    returns n."""
    _checks.generator("generator", generator)
    _checks.floating_dtype("dtype", dtype, optional=False)
    for name, value in nonnegative.items():
        _checks.at_most(name, _checks.real(name, value, low=0), 1e6, " (far beyond any toy's scale)")
    return _checks.at_most("n", _checks.integer("n", n, low=0), MAX_SAMPLES, " samples in one call")


def _draw_opts(generator: Optional[torch.Generator]) -> dict:
    device = generator.device if generator is not None else None
    return dict(generator=generator, dtype=torch.float64, device=device)


def _finish(x: torch.Tensor, dtype: torch.dtype, device) -> torch.Tensor:
    return x.to(dtype=dtype, device=device if device is not None else x.device)


def ring_mixture(n: int, generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32,
                 device: Optional[torch.device] = None) -> torch.Tensor:
    """8 isotropic Gaussians (std 0.15) on a circle of radius 1.5: `GaussianMixture.ring()`."""
    n = _check_draw(n, generator, dtype)
    return GaussianMixture.ring().sample(n, generator, dtype=dtype, device=device)


def bimodal_1d(n: int, generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32,
               device: Optional[torch.device] = None) -> torch.Tensor:
    """0.4 N(-1, 0.3^2) + 0.6 N(1, 0.3^2) in 1-D, shape (n, 1): `GaussianMixture.bimodal_1d()`."""
    n = _check_draw(n, generator, dtype)
    return GaussianMixture.bimodal_1d().sample(n, generator, dtype=dtype, device=device)


def two_moons(n: int, generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32,
              device: Optional[torch.device] = None, noise: float = 0.1) -> torch.Tensor:
    """Two interleaved half circles (as scikit-learn's make_moons, random split between the
    moons) plus N(0, noise^2) jitter, centred and scaled by 1.4 (per-coordinate std ~ 1.2, 0.7)."""
    n = _check_draw(n, generator, dtype, noise=noise)
    opts = _draw_opts(generator)
    angle = math.pi * torch.rand(n, **opts)
    lower = torch.rand(n, **opts) < 0.5
    x = torch.stack([angle.cos(), angle.sin()], dim=1)
    x = torch.where(lower[:, None], torch.stack([1 - x[:, 0], 0.5 - x[:, 1]], dim=1), x)
    x = x + noise * torch.randn(n, 2, **opts)
    return _finish(1.4 * (x - torch.tensor([0.5, 0.25], dtype=torch.float64, device=x.device)), dtype, device)


def swiss_roll(n: int, generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32,
               device: Optional[torch.device] = None, noise: float = 0.05) -> torch.Tensor:
    """The 2-D Swiss roll (u cos u, u sin u) / 7 with u ~ U(1.5 pi, 4.5 pi), plus N(0, noise^2)."""
    n = _check_draw(n, generator, dtype, noise=noise)
    opts = _draw_opts(generator)
    u = 1.5 * math.pi * (1 + 2 * torch.rand(n, **opts))
    x = torch.stack([u * u.cos(), u * u.sin()], dim=1) / 7
    return _finish(x + noise * torch.randn(n, 2, **opts), dtype, device)


def checkerboard(n: int, generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32,
                 device: Optional[torch.device] = None) -> torch.Tensor:
    """Uniform on the 8 dark squares of a 4x4 checkerboard covering [-2, 2]^2 (std ~ 1.15)."""
    n = _check_draw(n, generator, dtype)
    opts = _draw_opts(generator)
    x1 = 4 * torch.rand(n, **opts) - 2
    row = torch.randint(0, 2, (n,), generator=generator, device=opts["device"]).to(torch.float64)
    x2 = torch.rand(n, **opts) - 2 * row + torch.floor(x1).remainder(2)  # square parity follows x1's column
    return _finish(torch.stack([x1, x2], dim=1), dtype, device)


def pinwheel(n: int, generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32,
             device: Optional[torch.device] = None, arms: int = 5) -> torch.Tensor:
    """Johnson et al. (2016)'s pinwheel: `arms` Gaussian blobs (radial std 0.3, tangential std
    0.1 around (1, 0)), each bent by the angle 0.25 exp(radius) and rotated to its arm."""
    n = _check_draw(n, generator, dtype)
    opts = _draw_opts(generator)
    arms = _checks.integer("arms", arms, low=1)
    arm = torch.randint(0, arms, (n,), generator=generator, device=opts["device"])
    feats = torch.randn(n, 2, **opts) * torch.tensor([0.3, 0.1], dtype=torch.float64, device=arm.device)
    feats[:, 0] += 1
    angle = arm.to(torch.float64) * (2 * math.pi / arms) + 0.25 * feats[:, 0].exp()
    cos, sin = angle.cos(), angle.sin()
    x = torch.stack([cos * feats[:, 0] - sin * feats[:, 1], sin * feats[:, 0] + cos * feats[:, 1]], dim=1)
    return _finish(1.2 * x, dtype, device)


TOYS: Dict[str, Callable[..., torch.Tensor]] = {
    "ring": ring_mixture,
    "moons": two_moons,
    "swissroll": swiss_roll,
    "checkerboard": checkerboard,
    "pinwheel": pinwheel,
    "bimodal1d": bimodal_1d,
}

#: the toys with exact ground truth (scores, log p_t) at every t
TOY_MIXTURES: Dict[str, Callable[[], GaussianMixture]] = {
    "ring": GaussianMixture.ring,
    "bimodal1d": GaussianMixture.bimodal_1d,
}


def sample_toy(name: str, n: int, generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32,
               device: Optional[torch.device] = None) -> torch.Tensor:
    """n samples of the toy set `name` (one of TOYS)."""
    return TOYS[_checks.choice("name", name, TOYS)](n, generator, dtype=dtype, device=device)
