"""Time grids for samplers: descending float64 tensors t_0 = T > t_1 > ... > t_N = t_end.

Each grid is a pure function of the SDE, the step count and the end time. Named grids:
`uniform` in t, `quadratic` in t (denser near t_end, as in DDIM), `logsnr` (uniform in
lambda = log(alpha/sigma), DPM-Solver's choice) and `karras` (Karras et al. 2022: uniform in
sigma_hat^(1/rho) for the noise level sigma_hat = sigma/alpha = exp(-lambda), rho = 7).
A user-given list or tensor of times is validated and used as is, and any object with a
`grid(sde, solver, steps, t_end)` method (a `GridProvider`, such as the tuned schedules of
`scoresde.tuning`) provides its own grid.
"""
from __future__ import annotations

from typing import Optional, Protocol, Sequence, Union, runtime_checkable

import torch

from . import _checks
from .sde import SDE, AffineSDE

__all__ = ["SCHEDULES", "get_schedule", "uniform", "quadratic", "logsnr", "karras", "validate", "GridProvider",
           "ScheduleSpec", "check_end"]


@runtime_checkable
class GridProvider(Protocol):
    """Anything that provides its own time grid for (sde, solver, steps, t_end); it refuses
    settings it was not made for (steps=None: its own step count)."""

    def grid(self, sde: SDE, solver: Optional[str], steps: Optional[int], t_end: Optional[float]) -> torch.Tensor:
        ...


def check_end(sde: SDE, t_end: Optional[float]) -> float:
    """t_end (default the SDE's t_eps), checked to lie in (0, T)."""
    if t_end is None:
        return sde.t_eps
    return _checks.real("t_end", t_end, 0, sde.T, open_low=True, open_high=True)


def _check(sde: SDE, steps: int, t_end: Optional[float]) -> float:
    _checks.integer("steps", steps, low=1)
    return check_end(sde, t_end)


def uniform(sde: SDE, steps: int, t_end: Optional[float] = None) -> torch.Tensor:
    t_end = _check(sde, steps, t_end)
    return torch.linspace(sde.T, t_end, int(steps) + 1, dtype=torch.float64)


def quadratic(sde: SDE, steps: int, t_end: Optional[float] = None) -> torch.Tensor:
    t_end = _check(sde, steps, t_end)
    u = torch.linspace(1, 0, int(steps) + 1, dtype=torch.float64)
    return t_end + (sde.T - t_end) * u**2


def logsnr(sde: AffineSDE, steps: int, t_end: Optional[float] = None) -> torch.Tensor:
    t_end = _check(sde, steps, t_end)
    _checks.affine(sde, "schedule='logsnr'")
    lam = torch.linspace(float(sde.log_snr(sde.T)), float(sde.log_snr(t_end)), int(steps) + 1, dtype=torch.float64)
    return _pin_ends(sde.t_of_log_snr(lam), sde.T, t_end)


def karras(sde: AffineSDE, steps: int, t_end: Optional[float] = None, rho: float = 7.0) -> torch.Tensor:
    t_end = _check(sde, steps, t_end)
    _checks.affine(sde, "schedule='karras'")
    rho = _checks.real("rho", rho, low=0, open_low=True)
    s_max = float(sde.sigma_hat(sde.T)) ** (1 / rho)
    s_min = float(sde.sigma_hat(t_end)) ** (1 / rho)
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
    schedule: "ScheduleSpec", sde: SDE, steps: Optional[int] = None, t_end: Optional[float] = None,
    solver: Optional[str] = None, **options
) -> torch.Tensor:
    """The time grid (steps + 1 descending float64 times) named by `schedule` (with its
    `options`, e.g. karras' rho), the validated user grid if `schedule` is a sequence (then
    `steps` and `t_end`, if given, must agree), or the grid a `GridProvider` gives for
    (sde, solver, steps, t_end)."""
    if not isinstance(schedule, str) and options:
        raise _checks.ArgumentError(f"schedule options ({', '.join(sorted(options))}) apply to named schedules "
                                    f"only; got schedule={type(schedule).__name__}")
    if isinstance(schedule, GridProvider):
        return schedule.grid(sde, solver, steps, t_end)
    if isinstance(schedule, str):
        _checks.choice("schedule", schedule, SCHEDULES)
        return SCHEDULES[schedule](sde, steps, t_end, **options)
    ts = validate(sde, schedule)
    if steps is not None and steps != ts.numel() - 1:
        raise ValueError(f"steps={steps} disagrees with the given schedule of {ts.numel() - 1} steps")
    if t_end is not None and abs(float(ts[-1]) - t_end) > 1e-12 * max(1.0, t_end):
        raise ValueError(f"t_end={t_end:g} disagrees with the given schedule's last time {float(ts[-1]):g}")
    return ts


def _pin_ends(ts: torch.Tensor, T: float, t_end: float) -> torch.Tensor:
    """Remove the round-off of t(lambda(t)) at the two ends, so grids start exactly at T."""
    ts[0], ts[-1] = T, t_end
    return ts


ScheduleSpec = Union[str, Sequence[float], torch.Tensor, GridProvider]

#: names that moved to another module, and where they went
_MOVED = {"optimize": "scoresde.tuning.optimize", "OptimizedSchedule": "scoresde.tuning.OptimizedSchedule",
          "MIN_CALIBRATION": "scoresde.tuning.MIN_CALIBRATION"}


def __getattr__(name: str):
    if name in _MOVED:
        raise AttributeError(f"scoresde.schedules.{name} moved to {_MOVED[name]} (schedules are pure grids)")
    raise AttributeError(f"module 'scoresde.schedules' has no attribute {name!r}")
