"""Small private helpers shared by every layer: time tensors and broadcasting (argument checks
live in `_checks`)."""
from __future__ import annotations

from typing import Union

import torch

Time = Union[float, torch.Tensor]


def as_time(t: Time) -> torch.Tensor:
    """A float tensor for `t`; Python numbers become float64 scalars (0-dim tensors)."""
    if isinstance(t, torch.Tensor):
        return t if t.is_floating_point() else t.to(torch.get_default_dtype())
    return torch.tensor(float(t), dtype=torch.float64)


def expand_as_batch(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Cast a per-sample coefficient of shape () or (B,) to x's dtype/device, shaped to broadcast
    against x of shape (B, *shape)."""
    coef = coef.to(dtype=x.dtype, device=x.device)
    if coef.ndim == 0:
        return coef
    if coef.ndim != 1 or coef.shape[0] not in (1, x.shape[0]):
        raise ValueError(
            f"t must be a scalar or have shape (B,) = ({x.shape[0]},); got shape {tuple(coef.shape)}"
        )
    return coef.reshape(-1, *([1] * (x.ndim - 1)))


def tensor_bytes(t: torch.Tensor) -> bytes:
    """A tensor's values as bytes (on the CPU, row-major), for digests of data and weights."""
    t = t.detach().to("cpu").contiguous()
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
