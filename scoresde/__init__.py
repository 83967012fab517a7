"""scoresde: score-based generative modeling through SDEs, with every sampler measured
against exact answers."""
from . import data, metrics, schedules, solvers
from .model import PREDICTIONS, TIME_INPUTS, ScoreModel
from .sde import SDE, AffineSDE, CosineVPSDE, EDMSDE, ReverseSDE, SubVPSDE, VESDE, VPSDE
from . import losses, nets
from .losses import dsm_loss
from .training import Trainer, load_model
from .solvers import SampleResult, sample

__version__ = "0.1.0"

__all__ = [
    "SDE", "AffineSDE", "ReverseSDE", "VPSDE", "CosineVPSDE", "SubVPSDE", "VESDE", "EDMSDE",
    "ScoreModel", "PREDICTIONS", "TIME_INPUTS", "data", "metrics",
    "schedules", "solvers", "sample", "SampleResult",
]
__all__ += ["nets", "losses", "dsm_loss", "Trainer", "load_model"]
from . import likelihood
from .likelihood import bits_per_dim, encode, log_likelihood
__all__ += ["likelihood", "log_likelihood", "encode", "bits_per_dim"]
from . import classifier, guidance
__all__ += ["classifier", "guidance"]
from .sde import DiscreteVPSDE
from . import interop
__all__ += ["DiscreteVPSDE", "interop"]
