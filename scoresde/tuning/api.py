"""`scoresde.tune`: one front door to every tuning method, returning a `TunedSampler`.

Every method is measured the same way: its grid's terminal RMSE against the teacher (the
reference solve) on a validation batch that tuning never saw, next to the best fixed schedule
of the same solver on that batch, which is the initialization; a tuned grid that does not beat
it is not returned, the initialization is (`kept_start`)."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch

from .. import _checks
from ..model import ScoreModel
from ..schedules import SCHEDULES, check_end
from ..solvers import DEFAULT_SOLVER, NonFiniteError, get, sample
from . import gits as _gits
from .schedule import MIN_CALIBRATION, optimize
from .teacher import teacher
from .tuned import TunedSampler, model_fingerprint

__all__ = ["tune", "METHODS", "DEFAULT_VALIDATION", "GITS_DEFAULTS"]

#: the implemented methods
METHODS = ("gits", "nelder-mead")
#: validation noises drawn (after the calibration batch, from the same generator) when not given
DEFAULT_VALIDATION = 256
#: GITS' settings: a fine candidate grid uniform in log-SNR, DDIM step costs, and the weight of
#: later steps (the paper's coeff, 1.15 for its image models) chosen from a list on calibration:
#: it costs one solve of the calibration batch per value (benchmarks: the best value ranges from
#: 1.3 to 2.5 across problems and budgets)
GITS_DEFAULTS = dict(candidates=100, candidate_schedule="logsnr", coeff=(1.0, 1.15, 1.3, 1.5, 1.75, 2.0, 2.5, 3.0),
                     metric="mse", cost_solver="ddim")
_NELDER_MEAD_OPTIONS = ("max_evals", "knots")


def tune(
    model: ScoreModel,
    nfe: int,
    method: str = "gits",
    solver: str = DEFAULT_SOLVER,
    shape: Optional[Sequence[int]] = None,
    x_T: Optional[torch.Tensor] = None,
    validation: Union[int, torch.Tensor, None] = None,
    generator: Optional[torch.Generator] = None,
    teacher_options: Optional[Mapping[str, object]] = None,
    cache_dir: Union[str, Path, None] = None,
    dtype: torch.dtype = torch.float64,
    device: Union[str, torch.device, None] = None,
    t_end: Optional[float] = None,
    solver_options: Optional[Mapping[str, object]] = None,
    **method_options,
) -> TunedSampler:
    """A sampler for `model` with `solver` at `nfe` evaluations, tuned by `method` on
    calibration noise and validated on other noise.

    Args:
        method: "gits" (dynamic programming over a fine grid with one-step costs from teacher
            trajectories; options candidates, candidate_schedule, coeff (a number or a list,
            the one whose grid fits the calibration batch best is kept), metric, cost_solver;
            defaults GITS_DEFAULTS) or "nelder-mead" (`optimize`; options max_evals, knots).
        solver: a fixed-step ODE solver; the grid has the most steps whose evaluations fit nfe.
        shape: (B, *data_shape) of the calibration batch, drawn from the prior with `generator`
            in `dtype` on `device`; or x_T: the calibration noise itself (as in `sample`).
        validation: the validation noise (V, *data_shape), or a count V of noises drawn after
            the calibration batch (default DEFAULT_VALIDATION).
        teacher_options: {"options": torchdiffeq options of the teacher (default: the reference
            solve's), "batch_size": rows per solve}; cache_dir: where teachers are cached.
        t_end: the grid's last time (default the SDE's t_eps). solver_options: the solver's.

    Returns a TunedSampler whose loss_start and loss are validation RMSEs against the teacher,
    and whose cost counts every evaluation and second of the call.
    """
    started = time.perf_counter()
    method = _checks.choice("method", method, METHODS)
    if not isinstance(model, ScoreModel):
        raise _checks.fail("model", "a scoresde.ScoreModel (wrap a network or function with ScoreModel(net, sde))",
                           type(model).__name__)
    sde = model.sde
    info = get(solver)
    if info.kind != "ode" or info.adaptive:
        fixed_step = [s for s in _ode_solvers() if not get(s).adaptive]
        raise _checks.fail("solver", "a fixed-step ODE solver: " + ", ".join(fixed_step), solver)
    solver_options = dict(solver_options or {})
    steps = info.steps_for_nfe(nfe, solver_options)
    t_end = check_end(sde, t_end)
    _checks.generator("generator", generator)
    dtype = _checks.floating_dtype("dtype", dtype, optional=False)
    options = _method_options(method, method_options, sde)
    t_options, batch_size = _teacher_options(teacher_options)
    x_cal = _noise(sde, shape, x_T, generator, dtype, device)
    x_val = _validation(sde, validation, x_cal, generator)
    if method == "nelder-mead" and x_cal.shape[0] < MIN_CALIBRATION:
        raise _checks.fail("the calibration batch size", f">= {MIN_CALIBRATION} for method 'nelder-mead' "
                           "(MIN_CALIBRATION)", x_cal.shape[0])
    if method == "gits" and steps > options["candidates"] - 1:
        raise _checks.fail("candidates", f"more than the {steps} steps of solver {info.name!r} at nfe={nfe}",
                           options["candidates"])

    nfe_start = model.nfe
    reference = teacher(model, x_val, t_end=t_end, options=t_options, batch_size=batch_size, cache_dir=cache_dir).x

    def validation_rmse(ts: torch.Tensor) -> float:
        return _rmse(model, x_val, reference, info.name, ts, solver_options)

    fixed = {}
    for name, schedule in SCHEDULES.items():
        try:
            fixed[name] = validation_rmse(schedule(sde, steps, t_end))
        except _checks.ArgumentError:  # a schedule this SDE cannot have (log-SNR of a general SDE)
            continue
    start = min(fixed, key=fixed.get)
    start_times = SCHEDULES[start](sde, steps, t_end)

    if method == "gits":
        times, history, details = _tune_gits(model, x_cal, info.name, steps, t_end, solver_options, options,
                                             t_options, batch_size, cache_dir)
    else:
        cal = teacher(model, x_cal, t_end=t_end, options=t_options, batch_size=batch_size, cache_dir=cache_dir)
        found = optimize(model, sde, info.name, nfe, x_T=x_cal, t_end=t_end, reference=cal.x, dtype=dtype, **options)
        times, history = found.times, list(found.loss_history)
        details = dict(options, calibration_start=found.start, calibration_loss=found.loss)
    loss = validation_rmse(times)
    kept = not loss < fixed[start]
    return TunedSampler(
        times=start_times if kept else times, method=method, solver=info.name, nfe=int(nfe), sde=repr(sde),
        sde_fingerprint=sde.fingerprint(), model_fingerprint=model_fingerprint(model), solver_options=solver_options,
        start=start, loss_start=fixed[start], loss=fixed[start] if kept else loss, kept_start=kept,
        loss_history=history, calibration=x_cal.shape[0], validation=x_val.shape[0], cost_nfe=model.nfe - nfe_start,
        cost_seconds=time.perf_counter() - started,
        details={**details, "fixed_validation": fixed, "tuned_validation": loss},
    )


def _tune_gits(model, x_cal, solver, steps, t_end, solver_options, options, t_options, batch_size, cache_dir):
    """GITS' grid; the coefficient (of several) whose grid has the lowest calibration RMSE."""
    sde = model.sde
    candidates = _gits.candidate_grid(sde, options["candidates"], t_end, options["candidate_schedule"])
    cal = teacher(model, x_cal, candidates, options=t_options, batch_size=batch_size, cache_dir=cache_dir)
    cost = _gits.step_costs(model, cal.states, candidates, options["metric"], options["cost_solver"])
    coeffs = options["coeff"]
    grids, history = [], []
    for coeff in coeffs:
        grids.append(candidates[_gits.shortest_path(cost, steps, coeff)])
        history.append(_rmse(model, x_cal, cal.x, solver, grids[-1], solver_options) if len(coeffs) > 1 else math.nan)
    best = min(range(len(coeffs)), key=lambda k: history[k]) if len(coeffs) > 1 else 0
    details = {**options, "coeff": coeffs[best], "coeffs": list(coeffs), "solver": solver,
               "note": f"grid chosen with {options['cost_solver']} step costs; meant for solver {solver!r}"}
    return grids[best], history, details


def _rmse(model, x_T, reference, solver, ts, solver_options) -> float:
    try:
        x = sample(model, x_T=x_T, solver=solver, schedule=ts, **solver_options).x
    except NonFiniteError:
        return math.inf
    value = float((x.to(torch.float64) - reference.to(torch.float64)).square().mean().sqrt())
    return value if math.isfinite(value) else math.inf


def _method_options(method: str, given: Dict[str, object], sde) -> Dict[str, object]:
    if method == "nelder-mead":
        unknown = sorted(set(given) - set(_NELDER_MEAD_OPTIONS))
        if unknown:
            raise _checks.fail("method options", f"those of method 'nelder-mead' ({', '.join(_NELDER_MEAD_OPTIONS)})",
                               unknown)
        _checks.affine(sde, "method='nelder-mead' (a grid in log-SNR)")
        return dict(given)
    unknown = sorted(set(given) - set(GITS_DEFAULTS))
    if unknown:
        raise _checks.fail("method options", f"those of method 'gits' ({', '.join(GITS_DEFAULTS)})", unknown)
    options = {**GITS_DEFAULTS, **given}
    options["candidates"] = _checks.integer("candidates", options["candidates"], low=3)
    options["candidate_schedule"] = _checks.choice("candidate_schedule", options["candidate_schedule"], SCHEDULES)
    options["metric"] = _checks.choice("metric", options["metric"], _gits.METRICS)
    options["cost_solver"] = get(_checks.choice("cost_solver", options["cost_solver"], _gits.COST_SOLVERS)).name
    coeff = options["coeff"]
    coeffs = list(coeff) if isinstance(coeff, (list, tuple)) else [coeff]
    if not coeffs:
        raise _checks.fail("coeff", "a number > 0 or a non-empty list of them", coeff)
    options["coeff"] = [_checks.real("coeff", c, low=0, open_low=True) for c in coeffs]
    if options["cost_solver"] == "ddim" or options["candidate_schedule"] in ("logsnr", "karras"):
        _checks.affine(sde, f"method='gits' with cost_solver={options['cost_solver']!r} and "
                            f"candidate_schedule={options['candidate_schedule']!r}")
    return options


def _teacher_options(given):
    if given is None:
        return None, None
    if not isinstance(given, Mapping) or set(given) - {"options", "batch_size"}:
        raise _checks.fail("teacher_options", "None or a mapping with keys options (torchdiffeq's: method, rtol, "
                           "atol, options) and batch_size", given)
    return given.get("options"), given.get("batch_size")


def _noise(sde, shape, x_T, generator, dtype, device) -> torch.Tensor:
    accepted = "(B, *data_shape) with B >= 1"
    if (shape is None) == (x_T is None):
        raise _checks.ArgumentError(f"give the calibration batch as exactly one of shape={accepted} or x_T "
                                    f"(its prior noise); got shape={shape!r} and x_T "
                                    f"{'given' if x_T is not None else 'None'}")
    if x_T is not None:
        return _checks.tensor("x_T", x_T, accepted)
    shape = _checks.shape("shape", shape, min_len=2, accepted=accepted)
    return sde.prior_sample(shape, generator=generator, dtype=dtype, device=device)


def _validation(sde, validation, x_cal: torch.Tensor, generator) -> torch.Tensor:
    accepted = f"a count >= 1 or a noise tensor (V, {', '.join(map(str, x_cal.shape[1:]))}) like the calibration's"
    if validation is None:
        validation = DEFAULT_VALIDATION
    if isinstance(validation, torch.Tensor):
        x_val = _checks.tensor("validation", validation, accepted)
        if x_val.shape[1:] != x_cal.shape[1:]:
            raise _checks.fail("validation", accepted, f"shape {tuple(x_val.shape)}")
        return x_val.to(device=x_cal.device)
    count = _checks.integer("validation", validation, low=1)
    return sde.prior_sample((count, *x_cal.shape[1:]), generator=generator, dtype=x_cal.dtype, device=x_cal.device)


def _ode_solvers() -> List[str]:
    from ..solvers import available

    return available("ode")
