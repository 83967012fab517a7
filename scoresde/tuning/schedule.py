"""Time grids tuned to one model, solver and NFE budget (the "optimal steps" idea of Sabour et
al. 2024, "Align Your Steps", here by direct minimization of the terminal error against a
reference solve from the same calibration noise). `optimize` returns an `OptimizedSchedule`,
which `sample(schedule=...)` accepts as a grid provider and which saves to JSON."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .. import _checks
from ..model import ScoreModel
from ..schedules import SCHEDULES, check_end, get_schedule
from ..sde import SDE, AffineSDE
from ..solvers import NonFiniteError, available, get, reference_solve, sample

__all__ = ["optimize", "OptimizedSchedule", "MIN_CALIBRATION", "fixed_step_ode_solvers", "endpoint_rmse"]

#: fewest calibration samples `optimize` accepts: below this the terminal error of a batch is
#: too noisy an estimate of the expected error for a grid of up to ~20 free times to be fitted
MIN_CALIBRATION = 16


@dataclass
class OptimizedSchedule:
    """A time grid tuned by `optimize` for one (SDE, solver, NFE budget); pass it as
    `sample(..., schedule=...)` with the same SDE and solver.

    times: (steps + 1,) descending float64 times in the SDE's units, from T to t_end.
    sde: repr of the SDE it was tuned under; sde_fingerprint: `SDE.fingerprint()` of it, which
    `grid` compares (by value, not by the rounded repr). solver, nfe: the solver and the budget.
    start: the fixed schedule the search started from (the best on the calibration batch).
    loss_start, loss: calibration RMSE of that start and of `times`.
    loss_history: calibration RMSE of every grid evaluated, in order: the fixed schedules
    (in SCHEDULES order), then the search's.
    cost_nfe: network evaluations the whole optimization spent (reference solve, the fixed
    schedules and the search), as counted by the model; calibration: its batch size.
    """

    times: torch.Tensor
    sde: str
    sde_fingerprint: str
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
        return tuned_grid(self, "schedule", sde, solver, steps, t_end)

    def to_dict(self) -> dict:
        return {**asdict(self), "times": self.times.tolist()}

    def save(self, path: Union[str, Path]) -> None:
        """Write a small JSON file (times in full float64 precision)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Union[str, Path]) -> "OptimizedSchedule":
        """Read a file written by `save`; the times are validated when the schedule is used."""
        data = json.loads(Path(path).read_text())
        missing = {"times", "sde", "sde_fingerprint", "solver", "nfe"} - set(data)
        unknown = set(data) - set(cls.__dataclass_fields__)
        if missing or unknown:
            raise ValueError(f"{path} is not an optimized schedule file: "
                             + "; ".join(f"{what} {', '.join(sorted(keys))}" for what, keys in
                                         (("it lacks", missing), ("unknown keys", unknown)) if keys))
        return cls(**{**data, "times": torch.tensor(data["times"], dtype=torch.float64)})


def endpoint_rmse(model: ScoreModel, x_T: torch.Tensor, reference: torch.Tensor, **sample_kwargs) -> float:
    """RMSE (float64) of `sample(model, x_T=x_T, **sample_kwargs)`'s endpoints against
    `reference`; inf where the solve or the error is not finite."""
    try:
        x = sample(model, x_T=x_T, **sample_kwargs).x
    except NonFiniteError:
        return math.inf
    value = float((x.to(torch.float64) - reference.to(torch.float64)).square().mean().sqrt())
    return value if math.isfinite(value) else math.inf


def optimize(
    model,
    sde: Optional[AffineSDE] = None,
    solver: str = "dpm++2m",
    nfe: int = 10,
    shape: Optional[Sequence[int]] = None,
    x_T: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    t_end: Optional[float] = None,
    max_evals: Optional[int] = None,
    knots: Optional[int] = None,
    reference: Optional[torch.Tensor] = None,
    reference_options: Optional[Dict[str, object]] = None,
    dtype: torch.dtype = torch.float64,
    device: Union[str, torch.device, None] = None,
    solver_options: Optional[Mapping[str, object]] = None,
    **renamed,
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
    Derivative-free: it works for every fixed-step ODE solver unchanged.

    Args:
        model: a ScoreModel (counts its evaluations); sde: its SDE (default model.sde), affine.
        solver: a fixed-step ODE solver of the registry. nfe: the budget; the grid has the
            largest step count whose evaluations fit in it.
        shape: (B, *data_shape) of the calibration batch (B >= MIN_CALIBRATION), whose prior
            noise is drawn with `generator` in `dtype` on `device`; or x_T: that noise itself.
        t_end: last time of the grid (default sde.t_eps). max_evals: grids the search may
            evaluate (default 30 per free parameter, at least 60); each costs `nfe` batched
            evaluations. knots: fewer free parameters (>= 2; None: one per step) for a
            cheaper search and a smoother grid. reference: the reference terminal states,
            (B, *data_shape), if already solved; else `reference_solve` with `reference_options`.
        solver_options: the solver's options (they may change its evaluations per step).

    Returns an OptimizedSchedule; its `cost_nfe` is the counted cost of the whole search.

    Held-out error is what counts, and RMSE is ruled by the few trajectories with the largest
    error: a small batch may hold none of them, and the grid it tunes can then trade them for
    the bulk (benchmarks/optimized_schedules.py measures it). Calibrate on hundreds of samples.
    """
    from scipy.optimize import minimize

    _checks.renamed(renamed, {"calibration": "shape=(B, *data_shape) (a batch size) or x_T (the noise)"},
                    "optimize")
    if renamed:
        raise TypeError(f"optimize() got unexpected keyword argument(s) {', '.join(sorted(renamed))}")
    if not isinstance(model, ScoreModel):
        raise _checks.fail("model", "a scoresde.ScoreModel (wrap a network or function with ScoreModel(net, sde))",
                           type(model).__name__)
    if sde is None:
        sde = model.sde
    else:
        _checks.same_sde(sde, model.sde)
    _checks.generator("generator", generator)
    dtype = _checks.floating_dtype("dtype", dtype, optional=False)
    if max_evals is not None:
        max_evals = _checks.integer("max_evals (None: 30 per free parameter, at least 60)", max_evals, low=1)
    if reference_options is not None and not isinstance(reference_options, Mapping):
        raise _checks.fail("reference_options", "None or a mapping of reference_solve options",
                           type(reference_options).__name__)
    info = get(solver)
    if info.kind != "ode" or info.adaptive:
        raise _checks.fail("solver", "a fixed-step ODE solver: " + ", ".join(fixed_step_ode_solvers()), solver)
    _checks.affine(sde, "optimize")
    if solver_options is not None and not isinstance(solver_options, Mapping):
        raise _checks.fail("solver_options", f"None or a mapping of solver {info.name!r}'s options",
                           type(solver_options).__name__)
    solver_options = dict(solver_options or {})
    steps = info.steps_for_nfe(nfe, solver_options)
    t_end = check_end(sde, t_end)
    if knots is not None:
        knots = _checks.integer("knots (None: one per step)", knots, low=2)
    x_T = _calibration_noise(sde, shape, x_T, generator, dtype, device)
    nfe_start = model.nfe
    if reference is None:
        reference = reference_solve(model, x_T, t_end, reference_options).x
    elif not isinstance(reference, torch.Tensor) or not reference.is_floating_point():
        raise _checks.fail("reference", f"None or a floating-point tensor of the calibration batch's shape "
                           f"{tuple(x_T.shape)}", type(reference).__name__ if not isinstance(reference, torch.Tensor)
                           else f"{reference.dtype} tensor")
    elif reference.shape != x_T.shape:
        raise _checks.fail("reference", f"a tensor of the calibration batch's shape {tuple(x_T.shape)}",
                           tuple(reference.shape))
    reference = reference.to(torch.float64)
    history: List[float] = []

    def rmse(ts: torch.Tensor) -> float:
        history.append(endpoint_rmse(model, x_T, reference, solver=solver, schedule=ts, **solver_options))
        return history[-1]

    fixed = {name: rmse(SCHEDULES[name](sde, steps, t_end)) for name in SCHEDULES}
    start = min(fixed, key=fixed.get)
    best_ts, best = SCHEDULES[start](sde, steps, t_end), fixed[start]
    lam_T, lam_end = float(sde.log_snr(sde.T)), float(sde.log_snr(t_end))
    count = steps if knots is None else min(knots, steps)
    if count > 1:
        log_widths = torch.log(torch.diff(sde.log_snr(best_ts)) / (lam_end - lam_T)).numpy()
        at = np.linspace(0, steps - 1, count)
        max_evals = max(60, 30 * (count - 1)) if max_evals is None else max_evals
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
    return OptimizedSchedule(best_ts, repr(sde), sde.fingerprint(), info.name, int(nfe), start, fixed[start], best,
                             history, model.nfe - nfe_start, x_T.shape[0])


def tuned_grid(tuned, what: str, sde: SDE, solver: Optional[str], steps: Optional[int],
               t_end: Optional[float]) -> torch.Tensor:
    """`tuned.times` (a tuned `what`: "schedule" or "sampler", with sde_fingerprint, solver, nfe
    and steps), refused for another SDE, solver (if given) or step count (if given)."""
    if not isinstance(sde, SDE) or sde.fingerprint() != tuned.sde_fingerprint:
        raise _checks.fail("sde", f"the SDE this {what} was tuned for, {tuned.sde}", sde)
    if solver is not None and get(solver).name != get(tuned.solver).name:
        raise _checks.fail("solver", f"{tuned.solver!r}, which this {what} was tuned for at nfe={tuned.nfe}", solver)
    if steps is not None and steps != tuned.steps:
        raise _checks.fail("steps", f"None or this tuned {what}'s {tuned.steps} (solver {tuned.solver!r}, "
                                    f"nfe={tuned.nfe})", steps)
    return get_schedule(tuned.times, sde, None, t_end)


def _grid_from_logits(sde: AffineSDE, logits, lam_T: float, lam_end: float, t_end: float) -> Optional[torch.Tensor]:
    """The grid whose log-SNR increments are proportional to softmax(logits) (one per step);
    None if round-off makes two times equal (the search then sees an infinite loss)."""
    logits = torch.as_tensor(logits, dtype=torch.float64)
    fractions = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.softmax(logits, 0), 0)])
    ts = sde.t_of_log_snr(lam_T + (lam_end - lam_T) * fractions)
    ts[0], ts[-1] = sde.T, t_end  # the round-off of t(lambda(t)) at the ends
    return ts if bool((ts[1:] < ts[:-1]).all()) and bool(torch.isfinite(ts).all()) else None


def _calibration_noise(sde: SDE, shape, x_T, generator, dtype, device) -> torch.Tensor:
    accepted = f"(B, *data_shape) with B >= {MIN_CALIBRATION}"
    if (shape is None) == (x_T is None):
        raise _checks.ArgumentError(f"give the calibration batch as exactly one of shape={accepted} or x_T "
                                    f"(its prior noise); got shape={shape!r} and x_T "
                                    f"{'given' if x_T is not None else 'None'}")
    if x_T is not None:
        if not isinstance(x_T, torch.Tensor) or x_T.ndim < 2 or x_T.shape[0] < MIN_CALIBRATION:
            raise _checks.fail("x_T", f"a tensor {accepted}", tuple(getattr(x_T, "shape", ())) or x_T)
        _checks.tensor("x_T", x_T, accepted)  # real floating point, finite
        return x_T
    shape = _checks.shape("shape", shape, min_len=2, accepted=accepted)
    _checks.integer("shape[0] (the calibration batch size)", shape[0], low=MIN_CALIBRATION)
    return sde.prior_sample(shape, generator=generator, dtype=dtype, device=device)


def fixed_step_ode_solvers() -> List[str]:
    """The solvers a grid can be tuned for: every registered fixed-step ODE solver."""
    return [s for s in available("ode") if not get(s).adaptive]
