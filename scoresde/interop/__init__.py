"""Models and loops from the wider ecosystem, in both directions.

* `from_diffusers` (`interop.diffusers`): a network trained on a discrete DDPM chain as a
  continuous-time `ScoreModel`, so every scoresde solver runs on it.
* `from_denoiser` (`interop.kdiffusion`): a k-diffusion / EDM denoiser D(x, sigma) as a
  `ScoreModel` under `EDMSDE`.
* `SolverScheduler` (`interop.scheduler`): scoresde's exponential integrators behind a
  diffusers-scheduler interface, for existing diffusers loops.

diffusers is optional (`pip install scoresde[diffusers]`); nothing here imports it.
"""
from .diffusers import DIFFUSERS_SDES, PREDICTION_TYPES, from_diffusers
from .kdiffusion import from_denoiser
from .net import CallableNet
from .scheduler import FINAL_SIGMAS_TYPES, SCHEDULER_SOLVERS, SchedulerStepOutput, SolverScheduler

__all__ = [
    "from_diffusers", "from_denoiser", "SolverScheduler", "SchedulerStepOutput", "CallableNet",
    "PREDICTION_TYPES", "DIFFUSERS_SDES", "SCHEDULER_SOLVERS", "FINAL_SIGMAS_TYPES",
]
