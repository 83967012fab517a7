"""Data: analytic Gaussian mixtures (exact ground truth)."""
from .gmm import GaussianMixture

__all__ = ["GaussianMixture"]
