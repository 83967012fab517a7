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

import math
from typing import Dict, Optional, Protocol, Sequence, Union, runtime_checkable

import torch

from . import _checks
from .sde import SDE, AffineSDE

__all__ = ["SCHEDULES", "get_schedule", "uniform", "quadratic", "logsnr", "karras", "validate", "GridProvider", "TunedSolver",
           "ScheduleSpec", "check_end", "MAX_STEPS", "RHO_RANGE"]

#: the most steps a named grid has (a longer one is more likely a mistake than a plan: the
#: tight reference solves of this library are adaptive)
MAX_STEPS = 1_000_000
#: karras' accepted rho: 1 is uniform in sigma, 7 Karras et al.'s choice; rho -> inf tends to
#: schedule='logsnr', rho -> 0 puts every step but the last at T
RHO_RANGE = (0.1, 1000.0)


@runtime_checkable
class GridProvider(Protocol):
    """Anything that provides its own time grid for (sde, solver, steps, t_end); it refuses
    settings it was not made for (steps=None: its own step count)."""

    def grid(self, sde: SDE, solver: Optional[str], steps: Optional[int], t_end: Optional[float]) -> torch.Tensor:
        ...


class TunedSolver(GridProvider, Protocol):
    """A sampler tuned to one model (`scoresde.tune`): a GridProvider that also names its
    registered `solver` and the `solver_options` it runs with, and `check(model)` refuses a
    model it was not tuned to. `sample(model, solver=tuned)` runs it."""

    solver: str
    solver_options: Dict[str, object]

    def check(self, model) -> None:
        ...


def check_end(sde: SDE, t_end: Optional[float]) -> float:
    """t_end (default the SDE's t_eps), checked to lie in (0, T)."""
    if not isinstance(sde, SDE):
        raise _checks.fail("sde", "a scoresde.SDE", type(sde).__name__)
    if t_end is None:
        return sde.t_eps
    return _checks.real("t_end", t_end, 0, sde.T, open_low=True, open_high=True)


def _check(sde: SDE, steps: int, t_end: Optional[float]) -> float:
    if _checks.integer("steps", steps, low=1) > MAX_STEPS:
        raise _checks.fail("steps", f"an integer in [1, {MAX_STEPS}] (MAX_STEPS)", steps)
    return check_end(sde, t_end)


def _decreasing(ts: torch.Tensor, name: str, steps: int, why: str = "") -> torch.Tensor:
    """Refuse a named grid that round-off made non-strictly-decreasing (too many steps for
    float64 on this SDE), naming the first offending step."""
    bad = ~(ts[1:] < ts[:-1])
    if bool(bad.any()) or not bool(torch.isfinite(ts).all()):
        k = int(bad.nonzero()[0]) if bool(bad.any()) else 0
        raise _checks.fail("steps", f"few enough for schedule={name!r}{why} to give strictly decreasing float64 "
                           "times", f"{steps} (times {k} and {k + 1} are {float(ts[k]):.17g} and "
                           f"{float(ts[k + 1]):.17g})")
    return ts


def uniform(sde: SDE, steps: int, t_end: Optional[float] = None) -> torch.Tensor:
    t_end = _check(sde, steps, t_end)
    return _decreasing(torch.linspace(sde.T, t_end, int(steps) + 1, dtype=torch.float64), "uniform", steps)


def quadratic(sde: SDE, steps: int, t_end: Optional[float] = None) -> torch.Tensor:
    t_end = _check(sde, steps, t_end)
    u = torch.linspace(1, 0, int(steps) + 1, dtype=torch.float64)
    return _decreasing(t_end + (sde.T - t_end) * u**2, "quadratic", steps)


def logsnr(sde: AffineSDE, steps: int, t_end: Optional[float] = None) -> torch.Tensor:
    t_end = _check(sde, steps, t_end)
    _checks.affine(sde, "schedule='logsnr'")
    lam = torch.linspace(float(sde.log_snr(sde.T)), float(sde.log_snr(t_end)), int(steps) + 1, dtype=torch.float64)
    return _decreasing(_pin_ends(sde.t_of_log_snr(lam), sde.T, t_end), "logsnr", steps)


def karras(sde: AffineSDE, steps: int, t_end: Optional[float] = None, rho: float = 7.0) -> torch.Tensor:
    t_end = _check(sde, steps, t_end)
    _checks.affine(sde, "schedule='karras'")
    rho = _checks.real("rho", rho, low=RHO_RANGE[0], high=RHO_RANGE[1])
    # sigma_hat_i = (s_max + u_i (s_min - s_max))^rho with s = sigma_hat^(1/rho), written as
    # lambda_i = lambda(T) - rho log(1 + u_i (r - 1)), r = (s_min / s_max): no power can overflow
    lam_T, lam_end = float(sde.log_snr(sde.T)), float(sde.log_snr(t_end))
    u = torch.linspace(0, 1, int(steps) + 1, dtype=torch.float64)
    lam = lam_T - rho * torch.log1p(u * math.expm1((lam_T - lam_end) / rho))
    return _decreasing(_pin_ends(sde.t_of_log_snr(lam), sde.T, t_end), "karras", steps, f" at rho={rho:g}")


SCHEDULES = {"uniform": uniform, "quadratic": quadratic, "logsnr": logsnr, "karras": karras}


def validate(sde: SDE, ts: Union[Sequence[float], torch.Tensor]) -> torch.Tensor:
    """A user-given grid as a float64 CPU tensor, after checking it is 1-D, has >= 2 finite
    entries, decreases strictly and lies in (0, T]. A tensor that requires grad keeps its
    autograd graph (a grid being learned through the solver)."""
    accepted = f"a 1-D list of at least 2 times, strictly decreasing, in (0, T] = (0, {sde.T:g}]"
    given = ts
    ts = _checks.numbers_tensor("schedule", ts, accepted)
    if ts.ndim != 1 or ts.numel() < 2:
        raise _checks.fail("schedule", accepted, f"shape {tuple(ts.shape)}")
    if not bool(torch.isfinite(ts).all()):
        raise _checks.fail("schedule", accepted, "non-finite times")
    if not bool((ts[1:] < ts[:-1]).all()):
        k = int((ts[1:] >= ts[:-1]).nonzero()[0])
        raise _checks.fail("schedule", accepted + " (strictly decreasing, from T towards 0)",
                           f"times {k} and {k + 1}: {float(ts[k]):g}, {float(ts[k + 1]):g}")
    if float(ts[-1]) <= 0 or float(ts[0]) > sde.T:
        raise _checks.fail("schedule", accepted, f"times in [{float(ts[-1]):g}, {float(ts[0]):g}]")
    if isinstance(given, torch.Tensor) and given.requires_grad:
        return given.to(device="cpu", dtype=torch.float64)
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
        unknown = set(options) - ({"rho"} if schedule == "karras" else set())
        if unknown:
            raise _checks.fail("schedule options", "rho (for schedule='karras') or none",
                               f"{', '.join(sorted(unknown))} for schedule={schedule!r}")
        return SCHEDULES[schedule](sde, steps, t_end, **options)
    if isinstance(schedule, (bool, int, float, complex)) or schedule is None:
        raise _checks.fail("schedule", "a name (" + ", ".join(SCHEDULES) + "), a 1-D sequence of times or a "
                           "GridProvider", schedule)
    ts = validate(sde, schedule)
    if steps is not None and _checks.integer("steps", steps, low=1) != ts.numel() - 1:
        raise _checks.fail("steps", f"None or the given schedule's {ts.numel() - 1} steps (it disagrees)", steps)
    if t_end is not None:
        t_end = check_end(sde, t_end)
        if abs(float(ts[-1]) - t_end) > 1e-12 * max(1.0, t_end):
            raise _checks.fail("t_end", f"None or the given schedule's last time {float(ts[-1]):g} (it disagrees)",
                               t_end)
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
