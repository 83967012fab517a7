"""Embeddings of the network's time input and of class labels.

The time input is whatever `ScoreModel.network_time` hands the network (t itself by default,
so t in [0, 1] for the VP/VE families, t = sigma in [0.002, 80] for EDMSDE; or log sigma,
c_noise, 999 t, ...). Both embeddings accept any real value; their frequency scales are set
for inputs of order 1 and can be changed.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import _checks

__all__ = ["GaussianFourierEmbedding", "SinusoidalEmbedding", "LabelEmbedding", "TIME_EMBEDDINGS", "make_time_embedding"]

TIME_EMBEDDINGS = ("fourier", "sinusoidal")


class GaussianFourierEmbedding(nn.Module):
    """[sin(2 pi w t), cos(2 pi w t)] with fixed random frequencies w ~ N(0, scale^2)
    (Tancik et al. 2020; Song et al. 2021 use scale 16). (B,) -> (B, dim).

    The frequencies are a buffer: drawn from the global RNG at construction like any weight,
    saved in `state_dict`, never trained.
    """

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        dim = _checks.integer("dim", dim, low=2)
        if dim % 2:
            raise _checks.fail("dim", "an even integer >= 2", dim)
        scale = _checks.real("scale", scale, low=0, open_low=True)
        self.register_buffer("freqs", torch.randn(dim // 2) * scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angle = 2 * math.pi * t[:, None].to(self.freqs.dtype) * self.freqs
        return torch.cat([angle.sin(), angle.cos()], dim=-1)


class SinusoidalEmbedding(nn.Module):
    """The Transformer / DDPM embedding of `time_scale * t`: [sin(f_k s), cos(f_k s)] with
    geometric frequencies f_k = max_period^(-k / (dim/2)), k = 0 .. dim/2 - 1. (B,) -> (B, dim).

    DDPM feeds step indices in [0, 1000); `time_scale=1000` maps t in [0, 1] onto that range.
    """

    def __init__(self, dim: int, time_scale: float = 1000.0, max_period: float = 10000.0):
        super().__init__()
        dim = _checks.integer("dim", dim, low=2)
        if dim % 2:
            raise _checks.fail("dim", "an even integer >= 2", dim)
        time_scale = _checks.real("time_scale", time_scale, low=0, open_low=True)
        max_period = _checks.real("max_period", max_period, low=1, open_low=True)
        half = dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(max_period) * torch.arange(half) / half), persistent=False)
        self.time_scale = float(time_scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angle = self.time_scale * t[:, None].to(self.freqs.dtype) * self.freqs
        return torch.cat([angle.sin(), angle.cos()], dim=-1)


def make_time_embedding(kind: str, dim: int, fourier_scale: float = 16.0) -> nn.Module:
    """`kind` in TIME_EMBEDDINGS -> the embedding module, (B,) -> (B, dim)."""
    if _checks.choice("time_embedding", kind, TIME_EMBEDDINGS) == "fourier":
        return GaussianFourierEmbedding(dim, scale=fourier_scale)
    return SinusoidalEmbedding(dim)


class LabelEmbedding(nn.Module):
    """Class labels 0 .. num_classes-1 plus the null label `num_classes` (the unconditional
    model of classifier-free guidance) -> (B, dim). y=None means the null label for every sample.
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = _checks.integer("num_classes", num_classes, low=1)
        self.table = nn.Embedding(self.num_classes + 1, dim)

    def forward(self, y: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        if y is None:
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        elif y.shape != (batch,) or y.is_floating_point():
            raise ValueError(f"y must be an integer tensor of shape (B,) = ({batch},); got {y.dtype} {tuple(y.shape)}")
        elif y.device.type == "cpu" and y.numel() and not (0 <= int(y.min()) and int(y.max()) <= self.num_classes):
            # (checked on CPU only, to keep accelerator loops free of syncs)
            raise _checks.fail("y", f"labels in [0, num_classes={self.num_classes}] (num_classes = the null label)",
                               f"values in [{int(y.min())}, {int(y.max())}]")
        return self.table(y)


def embed_time_and_label(time_embed: nn.Module, label_embed: "LabelEmbedding | None", t: torch.Tensor,
                         y: torch.Tensor | None, batch: int, device: torch.device, net: str) -> torch.Tensor:
    """time_embed(t) (t a scalar or (B,)) plus label_embed(y) when the net has labels: (B, dim).
    Shared by MLP and UNet; `net` names the caller in the error for a label it cannot take."""
    if t.ndim == 0:
        t = t.expand(batch)
    emb = time_embed(t)
    if label_embed is not None:
        return emb + label_embed(y, batch, device)
    if y is not None:
        raise ValueError(f"y was given but the {net} was built without num_classes")
    return emb
