"""Small private helpers shared by every layer: time tensors, broadcasting, input checks."""
from __future__ import annotations

from typing import Iterable, Union

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


def check_finite(name: str, x: torch.Tensor) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")


def check_choice(name: str, value: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; choose one of: {', '.join(choices)}")
    return value


def check_time_range(t: torch.Tensor, lo: float, hi: float, what: str = "t") -> None:
    """Raise if any t lies outside [lo, hi]. Skipped for accelerator tensors so that sampling
    loops never force a device sync; `scoresde.sample` checks its time grid up front instead."""
    if t.device.type != "cpu":
        return
    if t.numel() == 0:
        return
    if bool(torch.isnan(t).any()):
        raise ValueError(f"{what} contains NaN")
    t = t.detach()
    t_min, t_max = float(t.min()), float(t.max())
    if t_min < lo or t_max > hi:
        raise ValueError(f"{what} must lie in [{lo:g}, {hi:g}]; got values in [{t_min:g}, {t_max:g}]")
