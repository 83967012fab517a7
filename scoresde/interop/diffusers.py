"""diffusers' models as scoresde models: `from_diffusers` turns a network trained on a discrete
DDPM chain (diffusers' `UNet2DModel`, `UNet2DConditionModel`, or any `(x, timestep) -> output`)
into a continuous-time `ScoreModel`, so every scoresde solver runs on it. Also the reading of
a diffusers scheduler's chain and prediction type, shared with `interop.scheduler`.

Nothing here imports diffusers: schedulers and models are read through their attributes.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from .. import _checks
from ..model import ScoreModel
from ..sde import VPSDE, DiscreteVPSDE
from .net import CallableNet

__all__ = ["from_diffusers", "chain_of", "prediction_type_of", "PREDICTION_TYPES", "DIFFUSERS_SDES"]

#: diffusers' `prediction_type` -> scoresde's `ScoreModel.prediction`
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
#: `from_diffusers(sde=...)`: the exact discrete VP, or the continuous VPSDE of linear betas
DIFFUSERS_SDES = ("discrete", "vp")


class _MatchedTimestep:
    """The float timestep whose (interpolated) noise level equals `sde`'s at t."""

    def __init__(self, sde: VPSDE, discrete: DiscreteVPSDE):
        self.sde, self.discrete = sde, discrete

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return self.discrete.timestep(self.discrete.t_of_log_snr(self.sde.log_snr(t)))


def chain_of(scheduler_or_betas) -> Tuple[torch.Tensor, torch.Tensor]:
    """(alphas_cumprod, betas), float64 (N,), of a diffusers scheduler or of a 1-D sequence of betas."""
    ac = getattr(scheduler_or_betas, "alphas_cumprod", None)
    if ac is not None:
        betas = getattr(scheduler_or_betas, "betas", None)
        ac = torch.as_tensor(ac, dtype=torch.float64)
        return ac, (1 - ac / torch.cat([ac.new_ones(1), ac[:-1]]) if betas is None else torch.as_tensor(betas).double())
    if isinstance(scheduler_or_betas, (torch.Tensor, list, tuple)) or hasattr(scheduler_or_betas, "__array__"):
        betas = _checks.numbers_tensor("scheduler_or_betas", scheduler_or_betas,
                                       "a diffusers scheduler with `alphas_cumprod` or a 1-D sequence of betas", ndim=1)
        return DiscreteVPSDE.from_betas(betas).alphas_cumprod, betas
    raise _checks.ArgumentError(
        f"scheduler_or_betas must be a DDPM-family diffusers scheduler with `alphas_cumprod` (DDPMScheduler, "
        f"DDIMScheduler, DPMSolverMultistepScheduler, ...) or a 1-D sequence of betas; got "
        f"{type(scheduler_or_betas).__name__} without `alphas_cumprod`"
    )


def prediction_type_of(scheduler_or_betas, prediction_type: Optional[str] = None) -> str:
    """`prediction_type` checked, or when None the scheduler's `config.prediction_type`
    (default 'epsilon')."""
    if prediction_type is None:
        config = getattr(scheduler_or_betas, "config", None)
        prediction_type = getattr(config, "prediction_type", None) or "epsilon"
    return _checks.choice("prediction_type", prediction_type, PREDICTION_TYPES)


def from_diffusers(
    unet: Callable,
    scheduler_or_betas,
    prediction_type: Optional[str] = None,
    sde: str = "discrete",
) -> ScoreModel:
    """A network trained on a discrete DDPM chain as a continuous-time `ScoreModel`.

    Args:
        unet: `unet(x, timestep, **cond)` with x (B, *shape) and float timesteps (B,) on the
            chain's 0..N-1 scale, returning a tensor shaped like x or an object with `.sample`
            (diffusers' UNets). Conditioning keywords given to the ScoreModel (e.g.
            `encoder_hidden_states=`) are passed through.
        scheduler_or_betas: a diffusers scheduler with `alphas_cumprod` (its
            `config.prediction_type` is the default prediction type), or the N betas.
        prediction_type: 'epsilon', 'v_prediction' or 'sample' (diffusers' names).
        sde: 'discrete' (default): `DiscreteVPSDE` of the chain's alphas_cumprod, t in [1/N, 1];
            'vp': `VPSDE.from_betas` (linear betas only), t in [t_eps, 1].

    What is exact: under 'discrete', at the trained times t_k = (k+1)/N the network is called
    at the integer timestep k with exactly the noise level it was trained at, so the ScoreModel
    is the network's own score there. Between trained timesteps alpha(t) is interpolated
    (log-SNR linear in t) and the network gets the fractional timestep N t - 1, never truncated:
    its output there is the network's own interpolation, as when diffusers' DPM-Solver or Karras
    schedules query it. Under 'vp' the network gets the fractional timestep whose interpolated
    noise level equals the VPSDE's at t, so it is exact wherever VPSDE's log-SNR meets a trained
    timestep's; the continuous beta(t) itself matches the chain only to O(1/N) (DESIGN.md).
    """
    ac, betas = chain_of(scheduler_or_betas)
    prediction = PREDICTION_TYPES[prediction_type_of(scheduler_or_betas, prediction_type)]
    sde = _checks.choice("sde", sde, DIFFUSERS_SDES)
    discrete = DiscreteVPSDE(ac)
    net = CallableNet(unet, "unet")
    if sde == "discrete":
        return ScoreModel(net, discrete, prediction=prediction, time_input=discrete.timestep)
    vp = VPSDE.from_betas(betas)
    return ScoreModel(net, vp, prediction=prediction, time_input=_MatchedTimestep(vp, discrete))
