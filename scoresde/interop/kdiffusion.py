"""k-diffusion's and EDM's denoisers as scoresde models: `from_denoiser` turns D(x, sigma), or
the raw network inside EDM's preconditioning, into a `ScoreModel` under `EDMSDE`."""
from __future__ import annotations

from typing import Callable, Optional

from .. import _checks
from ..model import ScoreModel
from ..sde import EDMSDE
from .net import CallableNet

__all__ = ["from_denoiser"]


def from_denoiser(
    fn: Callable,
    sigma_data: Optional[float] = None,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
) -> ScoreModel:
    """A k-diffusion / EDM denoiser as a `ScoreModel` under `EDMSDE(sigma_min, sigma_max)`
    (Karras et al. 2022: x = x0 + sigma eps, t = sigma).

    Args:
        fn: with `sigma_data=None`, the denoiser D(x, sigma) -> E[x0 | x], x (B, *shape) and
            sigma (B,) (k-diffusion's `model(x, sigma)`, EDM's `net(x, sigma)`). With a float
            `sigma_data`, the raw network F(c_in x, c_noise) inside EDM's preconditioning
            D = c_skip x + c_out F (ScoreModel's prediction='edm').
        sigma_data: the data standard deviation of the preconditioning, or None (see fn).
    """
    sde = EDMSDE(sigma_min=sigma_min, sigma_max=sigma_max)
    net = CallableNet(fn, "fn")
    if sigma_data is None:
        return ScoreModel(net, sde, prediction="x0", time_input="sigma")
    sigma_data = _checks.real("sigma_data", sigma_data, low=0, open_low=True)
    return ScoreModel(net, sde, prediction="edm", time_input="c_noise", sigma_data=sigma_data)
