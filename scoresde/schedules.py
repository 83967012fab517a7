"""Time grids for samplers: descending float64 tensors t_0 = T > t_1 > ... > t_N = t_end.

Each grid is a pure function of the SDE, the step count and the end time. Named grids:
`uniform` in t, `quadratic` in t (denser near t_end, as in DDIM), `logsnr` (uniform in
lambda = log(alpha/sigma), DPM-Solver's choice) and `karras` (Karras et al. 2022: uniform in
sigma_hat^(1/rho) for the noise level sigma_hat = sigma/alpha = exp(-lambda), rho = 7).
A user-given list or tensor of times is validated and used as is.

`optimize` tunes a grid to one model, solver and NFE budget (the "optimal steps" idea of
Sabour et al. 2024, "Align Your Steps", here by direct minimization of the terminal error) and
returns an `OptimizedSchedule`, which `sample(schedule=...)` accepts and which saves to JSON.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ._utils import check_choice
from .sde import SDE, AffineSDE

__all__ = [
    "SCHEDULES", "get_schedule", "uniform", "quadratic", "logsnr", "karras", "validate", "optimize",
    "OptimizedSchedule", "MIN_CALIBRATION",
]


def _check(sde: SDE, steps: int, t_end: Optional[float]) -> float:
    if steps is None or isinstance(steps, bool) or int(steps) != steps or steps < 1:
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
    schedule: "ScheduleSpec", sde: SDE, steps: Optional[int] = None, t_end: Optional[float] = None,
    solver: Optional[str] = None, **options
) -> torch.Tensor:
    """The time grid (steps + 1 descending float64 times) named by `schedule`, or the validated
    user grid if `schedule` is a sequence (then `steps` and `t_end`, if given, must agree).
    An `OptimizedSchedule` is checked against `sde` and `solver` (see `OptimizedSchedule.grid`)."""
    if isinstance(schedule, OptimizedSchedule):
        return schedule.grid(sde, solver, steps, t_end)
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


# ---- schedules optimized for a model, solver and NFE budget --------------------------------
#: fewest calibration samples `optimize` accepts: below this the terminal error of a batch is
#: too noisy an estimate of the expected error for a grid of up to ~20 free times to be fitted
MIN_CALIBRATION = 16
#: the reference solve `optimize` measures against when none is given (as the benchmark's)
REFERENCE_OPTIONS = dict(method="dopri8", rtol=1e-10, atol=1e-10)


@dataclass
class OptimizedSchedule:
    """A time grid tuned by `optimize` for one (SDE, solver, NFE budget); pass it as
    `sample(..., schedule=...)` with the same SDE and solver.

    times: (steps + 1,) descending float64 times in the SDE's units, from T to t_end.
    sde: repr of the SDE it was tuned under. solver, nfe: the solver and the NFE budget.
    start: the fixed schedule the search started from (the best on the calibration batch).
    loss_start, loss: calibration RMSE of that start and of `times`.
    loss_history: calibration RMSE of every grid evaluated, in order: the fixed schedules
    (in SCHEDULES order), then the search's.
    cost_nfe: network evaluations the whole optimization spent (reference solve, the fixed
    schedules and the search), as counted by the model; calibration: its batch size.
    """

    times: torch.Tensor
    sde: str
    solver: str
    nfe: int
    start: str = ""
    loss_start: float = float("nan")
    loss: float = float("nan")
    loss_history: List[float] = field(default_factory=list)
    cost_nfe: int = 0
    calibration: int = 0

    @property
    def steps(self) -> int:
        return self.times.numel() - 1

    def grid(self, sde: SDE, solver: Optional[str] = None, steps: Optional[int] = None,
             t_end: Optional[float] = None) -> torch.Tensor:
        """`times`, after checking that `sde`, `solver` (if given), `steps` (if given) and
        `t_end` (if given) are the ones it was tuned for: a grid tuned for one setting is no
        better than a fixed one in another."""
        if repr(sde) != self.sde:
            raise ValueError(f"this optimized schedule was tuned for sde {self.sde}; got {sde!r}")
        if solver is not None and solver != self.solver:
            raise ValueError(f"this optimized schedule was tuned for solver={self.solver!r} at nfe={self.nfe}; "
                             f"got solver={solver!r}")
        if steps is not None and steps != self.steps:
            raise ValueError(f"steps={steps} disagrees with the optimized schedule's {self.steps} steps "
                             f"(solver {self.solver!r}, nfe={self.nfe}); pass steps=None")
        return get_schedule(self.times, sde, None, t_end)

    def to_dict(self) -> dict:
        return {**asdict(self), "times": self.times.tolist()}

    def save(self, path: Union[str, Path]) -> None:
        """Write a small JSON file (times in full float64 precision)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Union[str, Path]) -> "OptimizedSchedule":
        """Read a file written by `save`; the times are validated when the schedule is used."""
        data = json.loads(Path(path).read_text())
        missing = {"times", "sde", "solver", "nfe"} - set(data)
        unknown = set(data) - set(cls.__dataclass_fields__)
        if missing or unknown:
            raise ValueError(f"{path} is not an optimized schedule file: "
                             + "; ".join(f"{what} {', '.join(sorted(keys))}" for what, keys in
                                         (("it lacks", missing), ("unknown keys", unknown)) if keys))
        return cls(**{**data, "times": torch.tensor(data["times"], dtype=torch.float64)})


def optimize(
    model,
    sde: Optional[AffineSDE] = None,
    solver: str = "dpm++2m",
    nfe: int = 10,
    calibration: Union[int, torch.Tensor] = 256,
    shape: Optional[Sequence[int]] = None,
    generator: Optional[torch.Generator] = None,
    t_end: Optional[float] = None,
    max_evals: Optional[int] = None,
    knots: Optional[int] = None,
    reference: Optional[torch.Tensor] = None,
    reference_options: Optional[Dict[str, object]] = None,
    dtype: torch.dtype = torch.float64,
    device: Union[str, torch.device, None] = None,
) -> OptimizedSchedule:
    """The time grid for `solver` at `nfe` evaluations that minimizes the terminal RMSE against
    a tight adaptive solve of the probability-flow ODE from the same noise, on a calibration
    batch.

    Parameterization: the grid is monotone by construction. The log-SNR interval
    [lambda(T), lambda(t_end)] is cut into `steps` increments proportional to softmax(logits) and
    times are t(lambda). The logits are those of the best fixed schedule (SCHEDULES) on the
    calibration batch plus offsets interpolated linearly between `knots` evenly spaced steps,
    the first offset held at 0 (softmax ignores a common shift): knots - 1 free parameters, by
    default one per step. The search minimizes log RMSE with Nelder-Mead (scipy) from zero
    offsets; it is deterministic given the batch, so the same seed gives the same grid.

    Derivative-free by choice: the solvers compute step coefficients as Python floats
    (`solvers._loop.Grid`, `math.expm1`, numpy for UniPC), which keeps sampling fast but cuts
    the autograd graph to the grid; a gradient path would need every solver's coefficients as
    tensors. A search over steps - 1 parameters works for every fixed-step ODE solver unchanged.

    Args:
        model: a ScoreModel (counts its evaluations); sde: its SDE (default model.sde), affine.
        solver: a fixed-step ODE solver of the registry. nfe: the budget; the grid has the
            largest step count whose evaluations fit in it.
        calibration: a batch size (>= MIN_CALIBRATION, needs `shape` = the data shape without
            the batch dimension; the prior noise is drawn with `generator` in `dtype` on
            `device`) or the calibration noise x_T itself, (B, *shape).
        t_end: last time of the grid (default sde.t_eps). max_evals: grids the search may
            evaluate (default 30 per free parameter, at least 60); each costs `nfe` batched
            evaluations. knots: fewer free parameters (>= 2; None: one per step) for a
            cheaper search and a smoother grid. reference: the reference terminal states, (B, *shape), if
            already solved; else solved with `reference_options` (default dopri8 at 1e-10).

    Returns an OptimizedSchedule; its `cost_nfe` is the counted cost of the whole search.

    Held-out error is what counts, and RMSE is ruled by the few trajectories with the largest
    error: a small batch may hold none of them, and the grid it tunes can then trade them for
    the bulk (benchmarks/optimized_schedules.py: digits at 20 NFE with 64-128 samples lost on
    2 of 200 held-out images while its median error improved). Calibrate on hundreds of samples.
    """
    from scipy.optimize import minimize

    from .solvers import get, sample  # here: the solvers import this module
    from .solvers._loop import NonFiniteError

    sde = model.sde if sde is None else sde
    info = get(solver)
    if info.kind != "ode" or info.evals_per_step == "adaptive":
        raise ValueError(f"solver={solver!r} is not a fixed-step ODE solver; optimize needs one of: "
                         + ", ".join(_fixed_step_ode_solvers()))
    _need_affine(sde, "optimize")
    minimum = int(info.evals_per_step) + max(info.extra_evals, 0)
    if isinstance(nfe, bool) or int(nfe) != nfe or nfe < minimum:
        raise ValueError(f"nfe must be an integer >= {minimum} (one step of solver {solver!r}); got {nfe!r}")
    steps = info.steps_for_nfe(int(nfe))
    t_end = _check(sde, steps, t_end)
    if knots is not None and (isinstance(knots, bool) or int(knots) != knots or knots < 2):
        raise ValueError(f"knots must be None (one per step) or an integer >= 2; got {knots!r}")
    x_T = _calibration_noise(sde, calibration, shape, generator, dtype, device)
    nfe_start = model.nfe
    if reference is None:
        reference = sample(model, x_T=x_T, solver="torchdiffeq", t_end=t_end,
                           **(reference_options or REFERENCE_OPTIONS)).x
    elif reference.shape != x_T.shape:
        raise ValueError(f"reference must have the calibration batch's shape {tuple(x_T.shape)}; "
                         f"got {tuple(reference.shape)}")
    reference = reference.to(torch.float64)
    history: List[float] = []

    def rmse(ts: torch.Tensor) -> float:
        try:
            x = sample(model, x_T=x_T, solver=solver, steps=None, schedule=ts).x
        except NonFiniteError:
            value = math.inf
        else:
            value = float((x.to(torch.float64) - reference).square().mean().sqrt())
            value = value if math.isfinite(value) else math.inf
        history.append(value)
        return value

    fixed = {name: rmse(SCHEDULES[name](sde, steps, t_end)) for name in SCHEDULES}
    start = min(fixed, key=fixed.get)
    best_ts, best = SCHEDULES[start](sde, steps, t_end), fixed[start]
    lam_T, lam_end = float(sde.log_snr(sde.T)), float(sde.log_snr(t_end))
    count = steps if knots is None else min(int(knots), steps)
    if count > 1:
        log_widths = torch.log(torch.diff(sde.log_snr(best_ts)) / (lam_end - lam_T)).numpy()
        at = np.linspace(0, steps - 1, count)
        max_evals = max(60, 30 * (count - 1)) if max_evals is None else int(max_evals)
        found: Dict[Tuple[float, ...], float] = {}

        def grid(offsets) -> Optional[torch.Tensor]:
            logits = log_widths + np.interp(np.arange(steps), at, np.concatenate([[0.0], offsets]))
            return _grid_from_logits(sde, logits, lam_T, lam_end, t_end)

        def objective(offsets) -> float:
            ts = grid(offsets)
            value = math.inf if ts is None else rmse(ts)
            found[tuple(offsets)] = value
            return math.log(value) if value > 0 else -math.inf

        # a simplex of 0.5 in log-width: large enough to leave the start's basin of round-off
        simplex = np.concatenate([np.zeros((1, count - 1)), 0.5 * np.eye(count - 1)])
        result = minimize(objective, simplex[0], method="Nelder-Mead",
                          options=dict(maxfev=max_evals, initial_simplex=simplex, xatol=1e-3, fatol=1e-4))
        if found.get(tuple(result.x), math.inf) < best:
            best_ts, best = grid(result.x), found[tuple(result.x)]
    return OptimizedSchedule(best_ts, repr(sde), solver, int(nfe), start, fixed[start], best, history,
                             model.nfe - nfe_start, x_T.shape[0])


def _grid_from_logits(sde: AffineSDE, logits, lam_T: float, lam_end: float, t_end: float) -> Optional[torch.Tensor]:
    """The grid whose log-SNR increments are proportional to softmax(logits) (one per step);
    None if round-off makes two times equal (the search then sees an infinite loss)."""
    logits = torch.as_tensor(logits, dtype=torch.float64)
    fractions = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.softmax(logits, 0), 0)])
    ts = _pin_ends(sde.t_of_log_snr(lam_T + (lam_end - lam_T) * fractions), sde.T, t_end)
    return ts if bool((ts[1:] < ts[:-1]).all()) and bool(torch.isfinite(ts).all()) else None


def _calibration_noise(sde: SDE, calibration, shape, generator, dtype, device) -> torch.Tensor:
    if isinstance(calibration, torch.Tensor):
        x_T = calibration
        if x_T.ndim < 2 or x_T.shape[0] < MIN_CALIBRATION:
            raise ValueError(f"calibration noise must be (B, *shape) with B >= {MIN_CALIBRATION}; "
                             f"got shape {tuple(x_T.shape)}")
        return x_T
    if isinstance(calibration, bool) or not isinstance(calibration, int) or calibration < MIN_CALIBRATION:
        raise ValueError(f"calibration must be a batch size >= {MIN_CALIBRATION} or a (B, *shape) tensor of "
                         f"prior noise; got {calibration!r}")
    if shape is None:
        raise ValueError("calibration given as a batch size needs shape=(*data_shape), e.g. shape=(2,)")
    return sde.prior_sample((calibration, *shape), generator=generator, dtype=dtype, device=device)


def _fixed_step_ode_solvers() -> List[str]:
    from .solvers import available, get

    return [s for s in available("ode") if get(s).evals_per_step != "adaptive"]


ScheduleSpec = Union[str, Sequence[float], torch.Tensor, OptimizedSchedule]
