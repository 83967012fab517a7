"""Score networks: `MLP` for low-dimensional data, `UNet` for images. Both are called as
`net(x, t, **cond)` (labels `y`, and `cond` for the MLP), as `ScoreModel` calls them, and
carry a `config` dict of their constructor arguments, from which `build_net` rebuilds them
(checkpoints store it)."""
from __future__ import annotations

from typing import Any, Dict

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
    return NETS[_checks.choice("name", name, NETS)](**config)
