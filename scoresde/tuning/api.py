"""`scoresde.tune`: one front door to every tuning method, returning a `TunedSampler`.

Every method is measured the same way: its grid's terminal RMSE against the teacher (the
reference solve) on a validation batch that tuning never saw, next to the best fixed schedule
of the same solver on that batch, which is the initialization; a tuned grid that does not beat
it is not returned, the initialization is (`kept_start`)."""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch

from .. import _checks
from ..model import ScoreModel
from ..schedules import SCHEDULES, check_end
from ..solvers import DEFAULT_SOLVER, get
from ..solvers.learned import LEARNED, NATIVE
from . import coefficients as _coefficients
from . import gits as _gits
from . import steps as _steps
from .schedule import MIN_CALIBRATION, endpoint_rmse, fixed_step_ode_solvers, optimize
from .teacher import teacher
from .tuned import TunedSampler, model_fingerprint

__all__ = ["tune", "METHODS", "DEFAULT_VALIDATION", "GITS_DEFAULTS", "STEPS_DEFAULTS"]

STEPS_DEFAULTS = _steps.STEPS_DEFAULTS
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
            defaults GITS_DEFAULTS), "nelder-mead" (`optimize`; options max_evals, knots),
            "steps" (LD3: the grid and per-step evaluation-time offsets trained by gradient
            through the solver, see `scoresde.tuning.steps`; defaults STEPS_DEFAULTS) or
            "coefficients" (the solver's per-step weights learned with its grid, run by
            `learned-multistep`; defaults
            `scoresde.tuning.coefficients.COEFFICIENTS_DEFAULTS`). The two gradient-trained methods start from the grid
            their option init names (`steps.INITS`; default the best on calibration of the
            fixed schedule, GITS' grid and Nelder-Mead's).
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
        raise _checks.fail("solver", "a fixed-step ODE solver: " + ", ".join(fixed_step_ode_solvers()), solver)
    solver_options = dict(solver_options or {})
    steps = info.steps_for_nfe(nfe, solver_options)
    t_end = check_end(sde, t_end)
    _checks.generator("generator", generator)
    dtype = _checks.floating_dtype("dtype", dtype, optional=False)
    entry = _METHODS[method]
    options = entry.options(method_options, sde)
    t_options, batch_size = _teacher_options(teacher_options)
    x_cal = _noise(sde, shape, x_T, generator, dtype, device)
    x_val = _validation(sde, validation, x_cal, generator)
    setting = _Setting(model, info.name, int(nfe), steps, t_end, solver_options, options, x_cal, x_val, generator,
                       dict(options=t_options, batch_size=batch_size, cache_dir=cache_dir))
    entry.check(setting)  # the method's own limits, before any work

    nfe_start = model.nfe
    reference = setting.teacher(x_val).x

    def validation_rmse(ts: torch.Tensor) -> float:
        return _rmse(model, x_val, reference, info.name, ts, solver_options)

    fixed = {}
    for name, schedule in SCHEDULES.items():
        try:
            fixed[name] = validation_rmse(schedule(sde, steps, t_end))
        except _checks.ArgumentError:  # a schedule this SDE cannot have (log-SNR of a general SDE)
            continue
    start = min(fixed, key=fixed.get)
    setting.start, setting.start_times, setting.reference = start, SCHEDULES[start](sde, steps, t_end), reference

    found = entry.run(setting)
    base = dict(method=method, solver=info.name, nfe=int(nfe), sde=repr(sde), sde_fingerprint=sde.fingerprint(),
                model_fingerprint=model_fingerprint(model), solver_options=solver_options, start=start,
                loss_start=fixed[start], calibration=x_cal.shape[0], validation=x_val.shape[0])
    candidate = TunedSampler(times=found.times, **{**base, **found.fields})  # fields may name another solver
    loss = endpoint_rmse(model, x_val, reference, solver=candidate)  # exactly what sample(solver=tuned) gives
    kept = not loss < fixed[start]
    chosen = TunedSampler(times=setting.start_times, **base) if kept else candidate
    return dataclasses.replace(
        chosen, loss=fixed[start] if kept else loss, kept_start=kept, loss_history=found.history,
        cost_nfe=model.nfe - nfe_start, cost_seconds=time.perf_counter() - started,
        details={**found.details, "fixed_validation": fixed, "tuned_validation": loss},
    )


@dataclass
class _Setting:
    """What a method sees: the problem, its checked options, the batches, and (once the fixed
    schedules are measured) the start, its grid and the validation teacher's endpoints."""

    model: ScoreModel
    solver: str
    nfe: int
    steps: int
    t_end: float
    solver_options: Dict[str, object]
    options: Dict[str, object]
    x_cal: torch.Tensor
    x_val: torch.Tensor
    generator: Optional[torch.Generator]
    teacher_kwargs: Dict[str, object]
    start: str = ""
    start_times: Optional[torch.Tensor] = None
    reference: Optional[torch.Tensor] = None

    def teacher(self, x: torch.Tensor, times: Optional[torch.Tensor] = None):
        """The teacher of noise x (cached where tune was given a cache_dir)."""
        if times is None:
            return teacher(self.model, x, t_end=self.t_end, **self.teacher_kwargs)
        return teacher(self.model, x, times, **self.teacher_kwargs)


@dataclass
class _Found:
    """A method's result: its grid, its loss history, its details (JSON-able) and any further
    TunedSampler fields it learned (e.g. time_offsets)."""

    times: torch.Tensor
    history: List[float]
    details: Dict[str, object]
    fields: Dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class _Method:
    """One tuning method: options(given, sde) -> checked options; check(setting) refuses what
    it cannot do before any work; run(setting) -> _Found."""

    options: Callable[[Dict[str, object], object], Dict[str, object]]
    check: Callable[[_Setting], None]
    run: Callable[[_Setting], _Found]


def _gits_grids(setting: _Setting, coeffs: Sequence[float]):
    """GITS' grids, one per coefficient, with their calibration RMSEs (nan when there is one
    coefficient and nothing to choose), and the calibration teacher's endpoints."""
    model, options = setting.model, setting.options
    candidates = _gits.candidate_grid(model.sde, options["candidates"], setting.t_end, options["candidate_schedule"])
    cal = setting.teacher(setting.x_cal, candidates)
    cost = _gits.step_costs(model, cal.states, candidates, options["metric"], options["cost_solver"])
    grids, history = [], []
    for coeff in coeffs:
        grids.append(candidates[_gits.shortest_path(cost, setting.steps, coeff)])
        history.append(_rmse(model, setting.x_cal, cal.x, setting.solver, grids[-1], setting.solver_options)
                       if len(coeffs) > 1 else math.nan)
    return grids, history, cal.x


def _tune_gits(setting: _Setting) -> _Found:
    """GITS' grid; the coefficient (of several) whose grid has the lowest calibration RMSE."""
    options, solver = setting.options, setting.solver
    coeffs = options["coeff"]
    grids, history, _ = _gits_grids(setting, coeffs)
    best = min(range(len(coeffs)), key=lambda k: history[k]) if len(coeffs) > 1 else 0
    details = {**options, "coeff": coeffs[best], "coeffs": list(coeffs), "solver": solver,
               "note": f"grid chosen with {options['cost_solver']} step costs; meant for solver {solver!r}"}
    return _Found(grids[best], history, details)


def _tune_nelder_mead(setting: _Setting) -> _Found:
    cal = setting.teacher(setting.x_cal)
    found = optimize(setting.model, setting.model.sde, setting.solver, setting.nfe, x_T=setting.x_cal,
                     t_end=setting.t_end, reference=cal.x, dtype=setting.x_cal.dtype,
                     solver_options=setting.solver_options, **setting.options)
    details = dict(setting.options, calibration_start=found.start, calibration_loss=found.loss)
    return _Found(found.times, list(found.loss_history), details)


def _initial_grid(setting: _Setting, y_cal: torch.Tensor):
    """The initial grid of a gradient-trained method by its option init (`steps.INITS`):
    (its name, the grid, the calibration RMSE of each candidate measured)."""
    model, init = setting.model, setting.options["init"]
    known = {}  # calibration RMSEs already measured (optimize's is against this same y_cal)

    def measure(name: str) -> float:
        return known[name] if name in known else _rmse(model, setting.x_cal, y_cal, setting.solver, grids[name],
                                                       setting.solver_options)

    grids = {"start": setting.start_times}
    if init in ("gits", "best"):
        gits_setting = dataclasses.replace(setting, options=_gits_options({}, model.sde))
        found, history, _ = _gits_grids(gits_setting, gits_setting.options["coeff"])
        grids["gits"] = found[min(range(len(found)), key=lambda j: history[j]) if len(found) > 1 else 0]
    if init == "nelder-mead" or (init == "best" and setting.x_cal.shape[0] >= MIN_CALIBRATION):
        searched = optimize(model, model.sde, setting.solver, setting.nfe, x_T=setting.x_cal, t_end=setting.t_end,
                            reference=y_cal, dtype=setting.x_cal.dtype, solver_options=setting.solver_options)
        grids["nelder-mead"], known["nelder-mead"] = searched.times, searched.loss
    if init != "best":
        return init, grids[init], ({} if init == "start" else {init: measure(init)})
    rmse = {name: measure(name) for name in grids}
    name = min(rmse, key=rmse.get)
    return name, grids[name], rmse


def _tune_steps(setting: _Setting) -> _Found:
    """LD3 (`scoresde.tuning.steps.learn_steps`) from the initial grid its option init names
    (`_initial_grid`)."""
    model, o = setting.model, setting.options
    y_cal = setting.teacher(setting.x_cal).x
    init, start, init_rmse = _initial_grid(setting, y_cal)
    nfe_before = model.nfe
    learned = _steps.learn_steps(model, setting.solver, start, setting.x_cal, y_cal, setting.x_val,
                                 setting.reference, o, setting.solver_options, setting.generator)
    details = {**o, "init_grid": init, "init_calibration": init_rmse, "init_validation": learned.loss_start,
               "best_epoch": learned.best_epoch, "iterations": learned.iterations,
               "train_history": learned.train_history, "training_nfe": model.nfe - nfe_before,
               "note": "loss_history: validation RMSE after each epoch (0: the initial grid); training_nfe: "
                       "forward evaluations of the training solves (backward passes evaluate nothing anew)"}
    fields = {"time_offsets": learned.offsets} if any(v != 0 for v in learned.offsets) else {}
    return _Found(learned.times, learned.validation_history, details, fields)


def _tune_coefficients(setting: _Setting) -> _Found:
    """`learned-multistep` weights (and grid) learned from the solver's own on the initial grid
    its option init names (`scoresde.tuning.coefficients.learn_coefficients`); the sampler runs
    `learned-multistep`."""
    y_cal = setting.teacher(setting.x_cal).x
    init, start, init_rmse = _initial_grid(setting, y_cal)
    learned = _coefficients.learn_coefficients(
        setting.model, setting.solver, start, setting.x_cal, y_cal, setting.x_val, setting.reference,
        setting.options, setting.solver_options, setting.generator)
    details = {**setting.options, "init_solver": setting.solver, "init_grid": init, "init_calibration": init_rmse,
               "init_validation": learned.loss_start,
               "best_epoch": learned.best_epoch, "iterations": learned.iterations,
               "train_history": learned.train_history, "training_nfe": learned.nfe}
    return _Found(learned.times, learned.validation_history, details,
                  {"solver": LEARNED, "solver_options": learned.solver_options})


def _check_coefficients(setting: _Setting) -> None:
    if setting.solver not in NATIVE:
        raise _checks.fail("solver", f"one whose weights learned-multistep starts from ({', '.join(NATIVE)}) for "
                           "method 'coefficients'", setting.solver)


def _check_nothing(setting: _Setting) -> None:
    return None


def _check_gits(setting: _Setting) -> None:
    if setting.steps > setting.options["candidates"] - 1:
        raise _checks.fail("candidates", f"more than the {setting.steps} steps of solver {setting.solver!r} at "
                           f"nfe={setting.nfe}", setting.options["candidates"])


def _check_nelder_mead(setting: _Setting) -> None:
    if setting.x_cal.shape[0] < MIN_CALIBRATION:
        raise _checks.fail("the calibration batch size", f">= {MIN_CALIBRATION} for method 'nelder-mead' "
                           "(MIN_CALIBRATION)", setting.x_cal.shape[0])


def _check_steps(setting: _Setting) -> None:
    if setting.steps < 2:
        needed = get(setting.solver).nfe(2, setting.solver_options)
        raise _checks.fail("nfe", f">= {needed} for method 'steps' with solver {setting.solver!r} (2 steps: a grid "
                           "with a time to learn between T and t_end)", setting.nfe)


def _rmse(model, x_T, reference, solver, ts, solver_options) -> float:
    return endpoint_rmse(model, x_T, reference, solver=solver, schedule=ts, **solver_options)


def _nelder_mead_options(given: Dict[str, object], sde) -> Dict[str, object]:
    unknown = sorted(set(given) - set(_NELDER_MEAD_OPTIONS))
    if unknown:
        raise _checks.fail("method options", f"those of method 'nelder-mead' ({', '.join(_NELDER_MEAD_OPTIONS)})",
                           unknown)
    _checks.affine(sde, "method='nelder-mead' (a grid in log-SNR)")
    return dict(given)


def _gits_options(given: Dict[str, object], sde) -> Dict[str, object]:
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


#: method name -> its options, checks and run; a new method is one entry here
_METHODS: Dict[str, _Method] = {
    "gits": _Method(_gits_options, _check_gits, _tune_gits),
    "nelder-mead": _Method(_nelder_mead_options, _check_nelder_mead, _tune_nelder_mead),
    "steps": _Method(_steps.check_options, _check_steps, _tune_steps),
    "coefficients": _Method(_coefficients.check_options, _check_coefficients, _tune_coefficients),
}
#: the implemented methods
METHODS = tuple(_METHODS)


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
