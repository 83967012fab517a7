"""Named analytic problems: Gaussian mixtures whose every noised density is known exactly."""
from __future__ import annotations

from typing import Callable, Dict

from .. import _checks
from .gmm import GaussianMixture

__all__ = ["PROBLEMS", "get_problem"]

PROBLEMS: Dict[str, Callable[[], GaussianMixture]] = {
    "ring2d": lambda: GaussianMixture.ring(modes=8),
    "gmm16d": lambda: GaussianMixture.random(dim=16, components=8, seed=0),
    "gmm64d": lambda: GaussianMixture.random(dim=64, components=8, seed=1),
    "bimodal1d": GaussianMixture.bimodal_1d,
    "gaussian2d": lambda: GaussianMixture.gaussian(2, mean=0.5, std=0.5),
    "gaussian": lambda: GaussianMixture.gaussian(2, mean=0.5, std=0.5),  # alias of gaussian2d
}


def get_problem(name: str) -> GaussianMixture:
    """The mixture named `name`, one of PROBLEMS."""
    _checks.choice("problem", name, PROBLEMS)
    return PROBLEMS[name]()
