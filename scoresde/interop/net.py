"""A plain callable `model(x, timestep, **cond)` as the network inside a `ScoreModel`, with
the output conventions of diffusers' models unwrapped and the output's shape checked."""
from __future__ import annotations

from typing import Callable

import torch

from .. import _checks

__all__ = ["CallableNet"]


class CallableNet(torch.nn.Module):
    """net(x, t_in, **cond) for a model(x, timestep, **cond) whose output is a tensor, a tuple
    (diffusers' return_dict=False) or an object with `.sample` (diffusers' UNet outputs), shaped
    like x (B, *shape). An nn.Module model is registered: its parameters are the net's.
    `name` is the argument's name in error messages."""

    def __init__(self, model: Callable, name: str):
        super().__init__()
        if not callable(model):
            raise _checks.fail(name, f"callable as {name}(x, timestep)", model)
        self.model, self.name = model, name

    def forward(self, x: torch.Tensor, t_in: torch.Tensor, **cond) -> torch.Tensor:
        out = self.model(x, t_in, **cond)
        out = out[0] if isinstance(out, tuple) else getattr(out, "sample", out)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"{self.name} returned {shape} for input shape {tuple(x.shape)}; its output must have the "
                "input's shape (a model with learned variance, out_channels = 2 x in_channels, needs its "
                "first half sliced off first)"
            )
        return out
