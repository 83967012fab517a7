"""`scoresde.sample`: the front door to every registered solver."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch

from .. import _checks
from ..model import ScoreModel
from ..schedules import ScheduleSpec, get_schedule
from ..sde import SDE
from ._loop import Loop, StateHook
from .hooks import Inpainting
from .registry import available, get

__all__ = ["sample", "SampleResult", "DEFAULT_SOLVER", "DEFAULT_SCHEDULE", "DEFAULT_STEPS", "RENAMED_OPTIONS"]

DEFAULT_SOLVER = "ipndm"  # most accurate at 10 NFE in benchmarks/ode_solvers.py (README)
DEFAULT_SCHEDULE = "logsnr"
DEFAULT_STEPS = 10
#: solver options renamed in 0.2 -> their new names (an old name is refused with the new one)
RENAMED_OPTIONS = {"order": "history", "noise": "noise_fn"}


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
    steps: Optional[int] = None,
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
    state_hook: Optional[StateHook] = None,
    schedule_options: Optional[Dict[str, object]] = None,
    **solver_options,
) -> SampleResult:
    """Draw samples by integrating from T down to t_end with a registered solver.

    Args:
        model: the ScoreModel (or a guided wrapper); its `sde` is used when `sde` is None.
        shape: (B, *data_shape) when `x_T` is not given; x_T is then drawn from the prior with
            `generator` (in `dtype` on `device`, default float32 on the generator's device).
        solver: a name from `scoresde.solvers.available()` (or an older alias of one).
        steps: number of solver steps (each costs the solver's evaluations per step); default
            DEFAULT_STEPS, or the step count of a user grid or of a schedule that brings its own
            (an explicit other count is refused); adaptive solvers integrate [T, t_end] by
            themselves (a given `steps` only sets `times`, or the grid of torchdiffeq's
            fixed-grid methods).
        schedule: 'uniform', 'quadratic', 'logsnr', 'karras', a descending list of times, or any
            `scoresde.schedules.GridProvider` (e.g. a tuned schedule of `scoresde.tuning`, which
            checks the SDE and solver it was tuned for) (default: the solver's own if it needs
            one, else DEFAULT_SCHEDULE for affine SDEs, 'uniform' otherwise).
        schedule_options: options of a named schedule, e.g. {'rho': 5.0} for 'karras'.
        t_end: last time of the grid, default sde.t_eps.
        denoise: finish with one extra evaluation returning the posterior mean E[x0 | x_t_end]
            (Tweedie); it is counted in nfe.
        callback: called after every step with {'i', 't', 'x', 'x0_pred'}.
        enable_grad: keep the autograd graph (e.g. to optimize a schedule); off by default.
        state_hook: hook(x, t, last) -> x, applied to the state after every step (and to x_T);
            any solver that steps on the grid itself (SolverInfo.step_hook).
        inpaint: (known (B, *shape), mask (bool, (B, *shape) or (*shape), True = known)):
            shorthand for state_hook=Inpainting(sde, known, mask, generator), the replacement
            method (Song et al. 2021, App. I.2; see `scoresde.solvers.hooks`). Approximate.
        solver_options: passed to the solver; unknown names raise ValueError.
    """
    info = get(solver)
    _check_entry(model, shape, x_T, generator, callback, state_hook, dtype)
    if sde is None:
        sde = model.sde
    else:
        _checks.same_sde(sde, model.sde)
    if info.affine:
        _checks.affine(sde, f"solver {info.name!r}")
    _checks.renamed({k: v for k, v in solver_options.items() if k not in info.options}, RENAMED_OPTIONS,
                    f"options of solver {info.name!r}")
    unknown = set(solver_options) - set(info.options) - ({"generator"} if info.kind == "sde" else set())
    if unknown:
        raise _checks.ArgumentError(
            f"unknown option(s) {', '.join(sorted(unknown))} for solver {info.name!r}; "
            f"it accepts: {', '.join(info.options) or 'no options'}"
        )
    if schedule is None:
        schedule = info.default_schedule or (DEFAULT_SCHEDULE if sde.is_affine else "uniform")
    if steps is None and isinstance(schedule, str):
        steps = 1 if info.adaptive else DEFAULT_STEPS  # a user grid or a GridProvider has its own
    ts = get_schedule(schedule, sde, steps, t_end, solver=info.name, **(schedule_options or {}))
    x = _initial_state(sde, shape, x_T, generator, dtype, device)
    if inpaint is not None:
        if state_hook is not None:
            raise _checks.ArgumentError("give inpaint=(known, mask) or state_hook, not both")
        if not (isinstance(inpaint, (tuple, list)) and len(inpaint) == 2):
            raise _checks.fail("inpaint", "a pair (known, mask)", inpaint)
        state_hook = Inpainting(sde, *inpaint, generator=generator)
    if state_hook is not None:
        if not info.step_hook:
            without = ", ".join(n for n in available() if not get(n).step_hook)
            raise _checks.fail("solver", f"one that steps on the grid itself to take inpaint or a state_hook "
                                         f"(not {without})", info.name)
        if hasattr(state_hook, "check_state"):
            state_hook.check_state(x)

    options = {**info.defaults, **solver_options}
    if info.kind == "sde":
        options["generator"] = generator
    loop = Loop(ts, sde, callback=callback, progress=progress, record=return_trajectory, desc=info.name,
                state_hook=state_hook)
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
            if state_hook is not None:
                x = state_hook(x, float(ts[-1]), True)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)  # wall time of the work, not of its launch
    seconds = time.perf_counter() - start
    trajectory = torch.stack(loop.trajectory) if return_trajectory else None
    return SampleResult(x, model.nfe - nfe_start, ts, info.name, seconds, trajectory)


def _check_entry(model, shape, x_T, generator, callback, state_hook, dtype) -> None:
    """The types sample() needs, refused before any work (values are checked where used)."""
    if not isinstance(model, ScoreModel):
        raise _checks.fail("model", "a scoresde.ScoreModel (wrap a network or function with ScoreModel(net, sde))",
                           type(model).__name__)
    if shape is not None:
        if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) or len(shape) < 1:
            raise _checks.fail("shape", "a sequence (B, *data_shape) of integers >= 1", shape)
        for k, size in enumerate(shape):
            _checks.integer(f"shape[{k}]", size, low=1)
    if x_T is not None and not (isinstance(x_T, torch.Tensor) and x_T.is_floating_point() and x_T.ndim >= 1):
        given = f"{x_T.dtype} tensor" if isinstance(x_T, torch.Tensor) else type(x_T).__name__
        raise _checks.fail("x_T", "a real floating-point tensor (B, *data_shape)", given)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise _checks.fail("dtype", "None or a real floating-point torch.dtype (e.g. torch.float32)", dtype)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise _checks.fail("generator", "None or a torch.Generator", type(generator).__name__)
    for name, fn in (("callback", callback), ("state_hook", state_hook)):
        if fn is not None and not callable(fn):
            raise _checks.fail(name, "None or a callable", type(fn).__name__)


def _initial_state(sde, shape, x_T, generator, dtype, device) -> torch.Tensor:
    if x_T is None:
        if shape is None:
            raise _checks.ArgumentError("give either shape=(B, *data_shape) or x_T")
        return sde.prior_sample(tuple(shape), generator=generator, dtype=dtype or torch.float32, device=device)
    if shape is not None and tuple(shape) != tuple(x_T.shape):
        raise ValueError(f"shape {tuple(shape)} disagrees with x_T's shape {tuple(x_T.shape)}")
    _checks.finite("x_T", x_T)
    return x_T.to(dtype=dtype or x_T.dtype, device=device or x_T.device)
