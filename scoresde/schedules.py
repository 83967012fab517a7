"""Time grids for samplers: descending float64 tensors t_0 = T > t_1 > ... > t_N = t_end.

Each grid is a pure function of the SDE, the step count and the end time. Named grids:
`uniform` in t, `quadratic` in t (denser near t_end, as in DDIM), `logsnr` (uniform in
lambda = log(alpha/sigma), DPM-Solver's choice) and `karras` (Karras et al. 2022: uniform in
sigma_hat^(1/rho) for the noise level sigma_hat = sigma/alpha = exp(-lambda), rho = 7).
A user-given list or tensor of times is validated and used as is.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from ._utils import check_choice
from .sde import SDE, AffineSDE

__all__ = ["SCHEDULES", "get_schedule", "uniform", "quadratic", "logsnr", "karras", "validate"]

ScheduleSpec = Union[str, Sequence[float], torch.Tensor]


def _check(sde: SDE, steps: int, t_end: Optional[float]) -> float:
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}")
    t_end = sde.t_eps if t_end is None else float(t_end)
    if not 0 < t_end < sde.T:
        raise ValueError(f"t_end must lie in (0, T) = (0, {sde.T:g}); got {t_end!r}")
    return t_end


def uniform(sde: SDE, steps: int, t_end: Optional[float] = None) -> torch.Tensor:
    t_end = _check(sde, steps, t_end)
    return torch.linspace(sde.T, t_end, int(steps) + 1, dtype=torch.float64)


def quadratic(sde: SDE, steps: int, t_end: Optional[float] = None) -> torch.Tensor:
    t_end = _check(sde, steps, t_end)
    u = torch.linspace(1, 0, int(steps) + 1, dtype=torch.float64)
    return t_end + (sde.T - t_end) * u**2


def logsnr(sde: AffineSDE, steps: int, t_end: Optional[float] = None) -> torch.Tensor:
    t_end = _check(sde, steps, t_end)
    _need_affine(sde, "logsnr")
    lam = torch.linspace(float(sde.log_snr(sde.T)), float(sde.log_snr(t_end)), int(steps) + 1, dtype=torch.float64)
    return _pin_ends(sde.t_of_log_snr(lam), sde.T, t_end)


def karras(sde: AffineSDE, steps: int, t_end: Optional[float] = None, rho: float = 7.0) -> torch.Tensor:
    t_end = _check(sde, steps, t_end)
    _need_affine(sde, "karras")
    if not rho > 0:
        raise ValueError(f"rho must be > 0; got {rho!r}")
    s_max = float(torch.exp(-sde.log_snr(sde.T))) ** (1 / rho)
    s_min = float(torch.exp(-sde.log_snr(t_end))) ** (1 / rho)
    sigma_hat = torch.linspace(s_max, s_min, int(steps) + 1, dtype=torch.float64) ** rho
    return _pin_ends(sde.t_of_log_snr(-torch.log(sigma_hat)), sde.T, t_end)


SCHEDULES = {"uniform": uniform, "quadratic": quadratic, "logsnr": logsnr, "karras": karras}


def validate(sde: SDE, ts: Union[Sequence[float], torch.Tensor]) -> torch.Tensor:
    """A user-given grid as a float64 tensor, after checking it is 1-D, has >= 2 finite
    entries, decreases strictly and lies in (0, T]."""
    ts = torch.as_tensor(ts, dtype=torch.float64).detach().cpu()
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError(f"schedule must be a 1-D list of at least 2 times; got shape {tuple(ts.shape)}")
    if not bool(torch.isfinite(ts).all()):
        raise ValueError("schedule contains non-finite times")
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError("schedule must be strictly decreasing (from T towards 0)")
    if float(ts[-1]) <= 0 or float(ts[0]) > sde.T:
        raise ValueError(f"schedule times must lie in (0, T] = (0, {sde.T:g}]; got [{float(ts[-1]):g}, {float(ts[0]):g}]")
    return ts


def get_schedule(
    schedule: ScheduleSpec, sde: SDE, steps: Optional[int] = None, t_end: Optional[float] = None, **options
) -> torch.Tensor:
    """The time grid (steps + 1 descending float64 times) named by `schedule`, or the validated
    user grid if `schedule` is a sequence (then `steps` and `t_end`, if given, must agree)."""
    if isinstance(schedule, str):
        check_choice("schedule", schedule, SCHEDULES)
        return SCHEDULES[schedule](sde, steps, t_end, **options)
    ts = validate(sde, schedule)
    if steps is not None and steps != ts.numel() - 1:
        raise ValueError(f"steps={steps} disagrees with the given schedule of {ts.numel() - 1} steps")
    if t_end is not None and abs(float(ts[-1]) - t_end) > 1e-12 * max(1.0, t_end):
        raise ValueError(f"t_end={t_end:g} disagrees with the given schedule's last time {float(ts[-1]):g}")
    return ts


def _need_affine(sde: SDE, name: str) -> None:
    if not sde.is_affine:
        raise ValueError(f"schedule={name!r} needs an affine SDE (log-SNR); use 'uniform' or 'quadratic'")


def _pin_ends(ts: torch.Tensor, T: float, t_end: float) -> torch.Tensor:
    """Remove the round-off of t(lambda(t)) at the two ends, so grids start exactly at T."""
    ts[0], ts[-1] = T, t_end
    return ts
