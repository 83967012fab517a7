"""scoresde: score-based generative modeling through SDEs, with every sampler measured
against exact answers. The package's layers are those of DESIGN.md (pyproject's contract)."""
from . import classifier, data, guidance, interop, likelihood, losses, metrics, nets, schedules, solvers, tuning
from .likelihood import bits_per_dim, decode, encode, log_likelihood
from .losses import dsm_loss
from .model import PREDICTIONS, TIME_INPUTS, ScoreModel
from .sde import SDE, AffineSDE, CosineVPSDE, DiscreteVPSDE, EDMSDE, ReverseSDE, SubVPSDE, VESDE, VPSDE
from .solvers import SampleResult, sample
from .training import Trainer, load_model
from .tuning import TunedSampler, tune

__version__ = "0.1.0"

__all__ = [
    "SDE", "AffineSDE", "ReverseSDE", "VPSDE", "CosineVPSDE", "SubVPSDE", "VESDE", "EDMSDE", "DiscreteVPSDE",
    "ScoreModel", "PREDICTIONS", "TIME_INPUTS", "sample", "SampleResult", "Trainer", "load_model", "dsm_loss",
    "log_likelihood", "encode", "decode", "bits_per_dim", "tune", "TunedSampler",
    "classifier", "data", "guidance", "interop", "likelihood", "losses", "metrics", "nets", "schedules",
    "solvers", "tuning",
]
