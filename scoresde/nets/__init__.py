"""Score networks: `MLP` for low-dimensional data, `UNet` for images. Both are called as
`net(x, t, **cond)` (labels `y`, and `cond` for the MLP), as `ScoreModel` calls them, and
carry a `config` dict of their constructor arguments, from which `build_net` rebuilds them
(checkpoints store it)."""
from __future__ import annotations

import inspect
from typing import Any, Dict, Mapping

from torch import nn

from .. import _checks
from .embeddings import TIME_EMBEDDINGS, GaussianFourierEmbedding, LabelEmbedding, SinusoidalEmbedding
from .mlp import MLP
from .unet import UNet

__all__ = [
    "MLP", "UNet", "NETS", "build_net", "TIME_EMBEDDINGS",
    "GaussianFourierEmbedding", "SinusoidalEmbedding", "LabelEmbedding",
]

NETS = {"MLP": MLP, "UNet": UNet}


def build_net(name: str, config: Dict[str, Any]) -> nn.Module:
    """The network `NETS[name](**config)`, e.g. from a checkpoint's stored configuration."""
    cls = NETS[_checks.choice("name", name, NETS)]
    accepted = inspect.signature(cls.__init__).parameters
    if not isinstance(config, Mapping):
        raise _checks.fail("config", f"a mapping of {name}'s constructor arguments", type(config).__name__)
    unknown = sorted(set(config) - set(accepted) - {"self"})
    if unknown:
        raise _checks.fail("config", f"keys among {name}'s constructor arguments ("
                           + ", ".join(k for k in accepted if k != "self") + ")", f"unknown {', '.join(map(str, unknown))}")
    return cls(**config)
