"""`scoresde.sample`: the front door to every registered solver.

The default sampler (no `solver`, no `schedule`): `ipndm` on the `logsnr` grid with its own
final-step options (no order tapering, stop at t_end), at every step count and under every
affine SDE; the logsnr grid is what adapts to the SDE, spanning its log-SNR range uniformly.
`benchmarks/default_sampler.py` chose it among every fixed-step ODE solver x schedule x
final-step control as the one configuration with the smallest geometric-mean terminal RMSE over
the suite's mixtures at 5, 10 and 20 NFE on one noise batch; rules of the step count chosen the
same way did worse on held-out noise. It is not the best on a trained VP model (the digits U-Net
there prefers unipc/deis on t-uniform, quadratic or karras grids), nor next to dpm-solver-v3,
which needs model statistics: see benchmarks/results/default_sampler.json.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple, Union

import torch

from .. import _checks
from ..model import ScoreModel
from ..schedules import MAX_STEPS, ScheduleSpec, get_schedule
from ..sde import SDE
from ._loop import Loop, RowGenerators, StateHook
from .backends import TORCHDIFFEQ_FIXED
from .hooks import Inpainting
from .registry import available, get

__all__ = ["sample", "SampleResult", "DEFAULT_SOLVER", "DEFAULT_SCHEDULE", "DEFAULT_STEPS", "RENAMED_OPTIONS"]

#: the default sampler (see the module docstring): DEFAULT_SOLVER with its own options on DEFAULT_SCHEDULE
DEFAULT_SOLVER = "ipndm"
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
    seeds: Optional[Sequence[int]] = None,
    **solver_options,
) -> SampleResult:
    """Draw samples by integrating from T down to t_end with a registered solver.

    Args:
        model: the ScoreModel (or a guided wrapper); its `sde` is used when `sde` is None.
        shape: (B, *data_shape) when `x_T` is not given; x_T is then drawn from the prior with
            `generator` (in `dtype` on `device`, default float32 on the generator's device).
        solver: a name from `scoresde.solvers.available()` (or an older alias of one), or a
            tuned sampler (`scoresde.tune`'s `TunedSampler`, any `schedules.TunedSolver`): its
            solver with its grid and options, for the model it was tuned to (`schedule` None).
        steps: number of solver steps, 1 to `scoresde.schedules.MAX_STEPS` (each costs the
            solver's evaluations per step); default DEFAULT_STEPS, or the step count of a user
            grid or of a schedule that brings its own (an explicit other count is refused).
            Adaptive solvers (torchdiffeq's adaptive methods, scipy, adaptive-sde) choose their
            own steps from T to t_end and refuse `steps` and grids of more than two times;
            torchdiffeq's fixed-grid methods (method='rk4', ...) step on the grid.
        schedule: 'uniform', 'quadratic', 'logsnr', 'karras', a descending list of times, or any
            `scoresde.schedules.GridProvider` (e.g. a tuned schedule of `scoresde.tuning`, which
            checks the SDE and solver it was tuned for) (default: the solver's own if it needs
            one, else DEFAULT_SCHEDULE for affine SDEs, 'uniform' otherwise).
            A grid that starts below T needs `x_T` (the state at its first time): the prior
            gives draws at T only.
        schedule_options: options of a named schedule, e.g. {'rho': 5.0} for 'karras'.
        t_end: last time of the grid, default sde.t_eps.
        denoise: finish with one extra evaluation returning the posterior mean E[x0 | x_t_end]
            (Tweedie); it is counted in nfe.
        callback: called after every step with {'i', 't', 'x', 'x0_pred'}.
        enable_grad: keep the autograd graph; off by default. With a schedule tensor that
            requires grad, every fixed-step solver computes its coefficients from it, so a loss
            of `x` can be differentiated with respect to the times (to learn a grid).
        state_hook: hook(x, t, last) -> x, applied to the state after every step (and to x_T);
            any solver that steps on the grid itself (SolverInfo.step_hook).
        inpaint: (known (B, *shape), mask (bool, (B, *shape) or (*shape), True = known)):
            shorthand for state_hook=Inpainting(sde, known, mask, generator), the replacement
            method (Song et al. 2021, App. I.2; see `scoresde.solvers.hooks`). Approximate.
        seeds: batch invariance: one integer seed per row (instead of `generator`). Row i's
            prior draw and every later noise draw come from its own generator, the network is
            evaluated one row at a time, and adaptive solvers integrate one row at a time, so a
            row's sample depends on its seed alone, not on the batch it is drawn in nor on
            torchrun sharding (tests/test_batch_invariance.py). It costs one network call per
            row per evaluation (NFE still counts batched evaluations).
        solver_options: passed to the solver; unknown names raise ValueError.

    Raises NonFiniteError when NaN or inf appears, naming the step (or, for library and
    adaptive solvers, the network evaluation) and the time where it first did.
    """
    model, solver, schedule, solver_options = _tuned(model, solver, schedule, solver_options)
    info = get(solver)
    _check_entry(model, shape, x_T, generator, callback, state_hook, dtype)
    if seeds is not None:
        generator = _row_generators(seeds, generator, shape, x_T, device)
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
    if denoise and solver_options.get("final_step") == "denoise":
        raise _checks.fail("denoise", "False with final_step='denoise' (that is the same final evaluation)", denoise)
    on_grid = _steps_on_grid(info, solver_options)
    if steps is not None:
        if _checks.integer("steps", steps, low=1) > MAX_STEPS:  # before any grid is allocated
            raise _checks.fail("steps", f"an integer in [1, {MAX_STEPS}] (scoresde.schedules.MAX_STEPS)", steps)
        if not on_grid:
            raise _checks.fail("steps", f"None for {_adaptive_name(info, solver_options)}", steps)
    if schedule is None:
        schedule = info.default_schedule or (DEFAULT_SCHEDULE if sde.is_affine else "uniform")
    if steps is None and isinstance(schedule, str):
        steps = DEFAULT_STEPS if on_grid else 1  # a user grid or a GridProvider has its own
    ts = get_schedule(schedule, sde, steps, t_end, solver=info.name, **(schedule_options or {}))
    if not on_grid and ts.numel() > 2:
        raise _checks.ArgumentError(
            f"schedule must be a named schedule or the two times [T, t_end] for {_adaptive_name(info, solver_options)} "
            f"(only the grid's ends are used); got a grid of {ts.numel()} times")
    if x_T is None and sde.T - float(ts[0]) > 1e-12 * abs(sde.T):
        raise _checks.ArgumentError(
            f"x_T must be given (the state at the schedule's first time {float(ts[0])!r}) when the schedule starts "
            f"below T = {sde.T!r}, since shape= draws x_T from the prior, the law at T; got x_T=None")
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
    nfe_start = model.nfe
    with torch.set_grad_enabled(enable_grad), _rows_apart(model, isinstance(generator, RowGenerators)):
        # built under the grad mode: a grid that requires grad then reaches the solver as tensors
        loop = Loop(ts, sde, callback=callback, progress=progress, record=return_trajectory, desc=info.name,
                    state_hook=state_hook)
        start = time.perf_counter()
        x = loop.start(x)
        try:
            if isinstance(generator, RowGenerators) and info.adaptive:
                x = _row_by_row(info, model, x, ts, loop, options)
            else:
                x = info.fn(model, x, ts, loop, **options)
            loop.finish()
        finally:
            loop.close()
        if denoise:
            x = loop.denoise(model, x, "denoise=True")
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)  # wall time of the work, not of its launch
    seconds = time.perf_counter() - start
    trajectory = torch.stack(loop.trajectory) if return_trajectory else None
    return SampleResult(x, model.nfe - nfe_start, ts, info.name, seconds, trajectory)


def _steps_on_grid(info, solver_options: dict) -> bool:
    """Whether the solver steps on the time grid: every fixed-step solver and torchdiffeq's
    fixed-grid methods; other adaptive solvers choose their own steps between the grid's ends."""
    if not info.adaptive:
        return True
    return info.name == "torchdiffeq" and info.resolve(solver_options).get("method") in TORCHDIFFEQ_FIXED


def _adaptive_name(info, solver_options: dict) -> str:
    """The adaptive solver, in words, for messages."""
    if info.name == "torchdiffeq":
        method = info.resolve(solver_options).get("method")
        return (f"torchdiffeq's adaptive method {method!r}, which chooses its own steps from T to t_end (set "
                f"rtol/atol; the fixed-grid methods {', '.join(TORCHDIFFEQ_FIXED)} take steps)")
    return f"the adaptive solver {info.name!r}, which chooses its own steps from T to t_end (set rtol/atol)"


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
    _checks.floating_dtype("dtype", dtype)
    _checks.generator("generator", generator)
    for name, fn in (("callback", callback), ("state_hook", state_hook)):
        if fn is not None and not callable(fn):
            raise _checks.fail(name, "None or a callable", type(fn).__name__)


@contextlib.contextmanager
def _rows_apart(model: ScoreModel, on: bool) -> Iterator[None]:
    """With `on`, the model (and the models it wraps, e.g. a guided model's) evaluates its
    network one row at a time for the duration: batch-invariant evaluations for `seeds`."""
    chain = []
    while on and isinstance(model, ScoreModel) and model not in chain:
        chain.append(model)
        model = getattr(model, "model", None)
    saved = [getattr(m, "rows_apart", False) for m in chain]
    for m in chain:
        m.rows_apart = True
    try:
        yield
    finally:
        for m, value in zip(chain, saved):
            m.rows_apart = value


def _row_by_row(info, model, x, ts, loop: Loop, options: dict) -> torch.Tensor:
    """An adaptive solver run one row at a time: its step control (an error norm over the
    batch, or the batch's evaluations of a shrinking subset) then sees one row only, so a
    row's result depends on its own seed alone. The loop records start and end, as for any
    adaptive solver."""
    rows = []
    for r in range(x.shape[0]):
        row_options = {**options, "generator": options["generator"].subset([r])} if "generator" in options else options
        row_loop = Loop(ts, loop.sde)
        rows.append(info.fn(model, x[r:r + 1], ts, row_loop, **row_options))
        row_loop.finish()
    x = torch.cat(rows)
    loop.done(len(ts) - 2, x)
    return x


def _row_generators(seeds, generator, shape, x_T, device) -> RowGenerators:
    if generator is not None:
        raise _checks.ArgumentError("give generator or seeds (one per row), not both")
    if isinstance(seeds, torch.Tensor):
        seeds = seeds.tolist()
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
        raise _checks.fail("seeds", "a sequence of integer seeds, one per batch row", seeds)
    for k, seed in enumerate(seeds):
        _checks.integer(f"seeds[{k}]", seed, 0, 2**63 - 1)
    batch = x_T.shape[0] if x_T is not None else (shape[0] if shape is not None else None)
    if batch is not None and len(seeds) != batch:
        raise _checks.fail("seeds", f"one seed per batch row ({batch})", f"{len(seeds)} seeds")
    where = device if device is not None else (x_T.device if x_T is not None else "cpu")
    return RowGenerators(seeds, where)


def _initial_state(sde, shape, x_T, generator, dtype, device) -> torch.Tensor:
    if x_T is None:
        if shape is None:
            raise _checks.ArgumentError("give either shape=(B, *data_shape) or x_T")
        if isinstance(generator, RowGenerators):  # the prior N(0, prior_std^2 I), row by row
            return generator.randn(tuple(shape), dtype or torch.float32, device) * sde.prior_std
        return sde.prior_sample(tuple(shape), generator=generator, dtype=dtype or torch.float32, device=device)
    if shape is not None and tuple(shape) != tuple(x_T.shape):
        raise ValueError(f"shape {tuple(shape)} disagrees with x_T's shape {tuple(x_T.shape)}")
    _checks.finite("x_T", x_T)
    return x_T.to(dtype=dtype or x_T.dtype, device=device or x_T.device)


def _tuned(model, solver, schedule, solver_options: dict):
    """(model, solver name, schedule, options) of `solver`: itself, or a tuned sampler's own,
    after it checked the model (and the model as the sampler evaluates it, `model_for`: e.g.
    at learned time offsets); user options may add to the tuned ones but not replace them."""
    if isinstance(solver, str):
        return model, solver, schedule, solver_options
    if not all(hasattr(solver, name) for name in ("grid", "solver", "solver_options")):
        raise _checks.fail("solver", "a registered solver name or a tuned sampler (scoresde.tune)", solver)
    if schedule is not None:
        raise _checks.fail("schedule", "None with a tuned sampler as solver (it brings its own grid)", schedule)
    clash = sorted(set(solver_options) & set(solver.solver_options))
    if clash:
        raise _checks.fail("solver options", f"none of the tuned sampler's own ({', '.join(clash)})",
                           {k: solver_options[k] for k in clash})
    check = getattr(solver, "check", None)
    if check is not None:
        check(model)
    model_for = getattr(solver, "model_for", None)
    if model_for is not None and isinstance(model, ScoreModel):
        model = model_for(model)
    return model, solver.solver, solver, {**solver.solver_options, **solver_options}
