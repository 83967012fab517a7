"""`scoresde.sample`: the front door to every registered solver."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Union

import torch

from ..guidance import Inpainting
from ..model import ScoreModel
from ..schedules import OptimizedSchedule, ScheduleSpec, get_schedule
from ..sde import SDE
from ._loop import Loop
from .registry import get

__all__ = ["sample", "SampleResult", "DEFAULT_SOLVER", "DEFAULT_SCHEDULE", "DEFAULT_STEPS"]

DEFAULT_SOLVER = "ipndm"  # most accurate at 10 NFE in benchmarks/ode_solvers.py (README)
DEFAULT_SCHEDULE = "logsnr"
DEFAULT_STEPS = 10
#: solvers that integrate inside a backend or choose their own steps: a per-step replacement
#: of the state (inpainting) cannot act on them
NO_STEP_HOOK = ("torchdiffeq", "scipy", "torchsde", "adaptive_sde")


@dataclass
class SampleResult:
    """x: samples (B, *shape); nfe: network evaluations counted by the model; times: the grid;
    trajectory: (len(times), B, *shape) states on the grid if asked for (adaptive solvers
    record only their start and end); seconds: wall time of the solve."""

    x: torch.Tensor
    nfe: int
    times: torch.Tensor
    solver: str
    seconds: float
    trajectory: Optional[torch.Tensor] = None


def sample(
    model: ScoreModel,
    sde: Optional[SDE] = None,
    shape: Optional[Sequence[int]] = None,
    x_T: Optional[torch.Tensor] = None,
    solver: str = DEFAULT_SOLVER,
    steps: Optional[int] = DEFAULT_STEPS,
    schedule: Union[ScheduleSpec, None] = None,
    t_end: Optional[float] = None,
    denoise: bool = False,
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callable[[dict], None]] = None,
    progress: bool = False,
    return_trajectory: bool = False,
    dtype: Optional[torch.dtype] = None,
    device: Union[str, torch.device, None] = None,
    enable_grad: bool = False,
    inpaint: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    **solver_options,
) -> SampleResult:
    """Draw samples by integrating from T down to t_end with a registered solver.

    Args:
        model: the ScoreModel (or a guided wrapper); its `sde` is used when `sde` is None.
        shape: (B, *data_shape) when `x_T` is not given; x_T is then drawn from the prior with
            `generator` (in `dtype` on `device`, default float32 on the generator's device).
        solver: a name from `scoresde.solvers.available()`.
        steps: number of solver steps (each costs the solver's evals_per_step evaluations);
            ignored by adaptive solvers.
        schedule: 'uniform', 'quadratic', 'logsnr', 'karras', a descending list of times, or an
            `OptimizedSchedule` (`scoresde.schedules.optimize`; it must be used with the SDE and
            solver it was tuned for) (default: the solver's own if it needs one, else
            DEFAULT_SCHEDULE for affine SDEs, 'uniform' otherwise).
        t_end: last time of the grid, default sde.t_eps.
        denoise: finish with one extra evaluation returning the posterior mean E[x0 | x_t_end]
            (Tweedie); it is counted in nfe.
        callback: called after every step with {'i', 't', 'x', 'x0_pred'}.
        enable_grad: keep the autograd graph (e.g. to optimize a schedule); off by default.
        inpaint: (known (B, *shape), mask (bool, (B, *shape) or (*shape), True = known)):
            impute the unknown part by the replacement method (`scoresde.guidance`, Song et al.
            2021, App. I.2): after every step the known part becomes a forward-noised copy of
            `known` (drawn with `generator`), and at the end `known` itself. Any fixed-step
            solver; not those in NO_STEP_HOOK. Approximate: see `scoresde.guidance`.
        solver_options: passed to the solver; unknown names raise ValueError.
    """
    info = get(solver)
    if sde is None:
        sde = model.sde
    elif sde is not model.sde and repr(sde) != repr(model.sde):
        raise ValueError(f"sde {sde!r} differs from the model's sde {model.sde!r}")
    if info.affine and not sde.is_affine:
        raise ValueError(f"solver {solver!r} needs an affine SDE (alpha, sigma, log-SNR); {type(sde).__name__} is not")
    unknown = set(solver_options) - set(info.options) - ({"generator"} if info.kind == "sde" else set())
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(sorted(unknown))} for solver {solver!r}; "
            f"it accepts: {', '.join(info.options) or 'no options'}"
        )
    if schedule is None:
        schedule = info.default_schedule or (DEFAULT_SCHEDULE if sde.is_affine else "uniform")
    if info.evals_per_step == "adaptive" and isinstance(schedule, str) and steps is None:
        steps = 1
    if isinstance(schedule, OptimizedSchedule) and steps == DEFAULT_STEPS:
        steps = None  # it brings its own step count; only an explicit other count is refused
    ts = get_schedule(schedule, sde, steps, t_end, solver=solver)
    x = _initial_state(sde, shape, x_T, generator, dtype, device)
    replace = None
    if inpaint is not None:
        if solver in NO_STEP_HOOK:
            raise ValueError(f"inpaint works with fixed-step solvers; solver={solver!r} is one of {', '.join(NO_STEP_HOOK)}")
        if not (isinstance(inpaint, (tuple, list)) and len(inpaint) == 2):
            raise ValueError("inpaint must be a pair (known, mask)")
        replace = Inpainting(sde, *inpaint, generator=generator)
        replace.check_state(x)

    options = {**info.defaults, **solver_options}
    if info.kind == "sde":
        options["generator"] = generator
    loop = Loop(ts, callback=callback, progress=progress, record=return_trajectory, desc=solver, replace=replace)
    nfe_start = model.nfe
    start = time.perf_counter()
    with torch.set_grad_enabled(enable_grad):
        x = loop.start(x)
        try:
            x = info.fn(model, x, ts, loop, **options)
            loop.finish()
        finally:
            loop.close()
        if denoise:
            x = model.x0(x, float(ts[-1]))
            if replace is not None:
                x = replace(x, float(ts[-1]), True)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)  # wall time of the work, not of its launch
    seconds = time.perf_counter() - start
    trajectory = torch.stack(loop.trajectory) if return_trajectory else None
    return SampleResult(x, model.nfe - nfe_start, ts, solver, seconds, trajectory)


def _initial_state(sde, shape, x_T, generator, dtype, device) -> torch.Tensor:
    if x_T is None:
        if shape is None:
            raise ValueError("give either shape=(B, *data_shape) or x_T")
        return sde.prior_sample(tuple(shape), generator=generator, dtype=dtype or torch.float32, device=device)
    if shape is not None and tuple(shape) != tuple(x_T.shape):
        raise ValueError(f"shape {tuple(shape)} disagrees with x_T's shape {tuple(x_T.shape)}")
    if not bool(torch.isfinite(x_T).all()):
        raise ValueError("x_T contains non-finite values")
    return x_T.to(dtype=dtype or x_T.dtype, device=device or x_T.device)
