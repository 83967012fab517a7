"""Forward SDEs: dx = f(x, t) dt + g(t) dW, and their reverse-time / probability-flow forms.

Affine ("Gaussian-path") SDEs dx = f(t) x dt + g(t) dW have marginals
x_t = alpha(t) x_0 + sigma(t) eps and expose alpha, sigma, log_snr = log(alpha / sigma), its
inverse, f = d log alpha / dt and g2 = d sigma^2/dt - 2 f sigma^2 (Song et al., ICLR 2021).
Time `t` is a float, a 0-dim tensor or a (B,) tensor; coefficients come back with t's shape.
"""
from .. import _checks
from .base import SDE, AffineSDE, ReverseSDE, ScoreFn
from .discrete import DiscreteVPSDE
from .ve import EDMSDE, VESDE
from .vp import CosineVPSDE, SubVPSDE, VPSDE

__all__ = [
    "SDE", "AffineSDE", "ReverseSDE", "ScoreFn", "VPSDE", "DiscreteVPSDE", "CosineVPSDE", "SubVPSDE", "VESDE",
    "EDMSDE", "SDES", "by_name",
]


#: the built-in SDEs by their short names (the CLI's --sde, benchmark problem names)
SDES = {"vp": VPSDE, "cosine": CosineVPSDE, "subvp": SubVPSDE, "ve": VESDE, "edm": EDMSDE}


def by_name(name: str, **params) -> AffineSDE:
    """The built-in SDE called `name` (a key of SDES), built with `params`."""
    return SDES[_checks.choice("sde", name, SDES)](**params)
