"""Solving through established libraries: torchdiffeq and scipy (probability-flow ODE, in the
SDE's time t) and torchsde (reverse SDE). NFE is counted by the ScoreModel,
so it includes every evaluation the library made, rejected steps and Jacobian estimates too.
"""
from __future__ import annotations

import itertools
from typing import Callable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torchsde

from .. import _checks
from ..model import ScoreModel
from ._loop import EvalWatch, Loop, RowGenerators
from .ode import pf_velocity
from .registry import register

__all__ = [
    "odeint_in_range", "torchdiffeq_ode", "scipy_ode", "torchsde_sde", "TORCHDIFFEQ_FIXED", "TORCHDIFFEQ_ADAPTIVE",
    "SCIPY_METHODS", "TORCHSDE_METHODS", "TORCHDIFFEQ_OPTIONS",
]

TORCHDIFFEQ_ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
#: fixed-grid methods step exactly on the sampling schedule
TORCHDIFFEQ_FIXED = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams")
SCIPY_METHODS = ("RK45", "RK23", "DOP853", "LSODA", "Radau", "BDF")

_ADAPTIVE_OPTIONS = ("first_step", "step_t", "jump_t", "min_step", "max_step", "safety", "ifactor", "dfactor",
                     "max_num_steps", "norm")
#: the `options` each torchdiffeq method takes (torchdiffeq itself only warns about others). The
#: fixed-grid methods' step_size and grid_constructor are left out: they step on the schedule.
TORCHDIFFEQ_OPTIONS = {
    **{method: _ADAPTIVE_OPTIONS for method in TORCHDIFFEQ_ADAPTIVE},
    **{method: ("perturb", "interp") for method in TORCHDIFFEQ_FIXED},
    **{method: ("perturb", "interp", "max_iters", "max_order") for method in ("explicit_adams", "implicit_adams")},
}


def _check_tolerances(rtol: float, atol: float) -> None:
    for name, value in (("rtol", rtol), ("atol", atol)):
        _checks.real(name, value, low=0, open_low=True)


def _check_options(method: str, options: Optional[Mapping]) -> dict:
    """torchdiffeq `options` for `method`, refusing names it does not take."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise _checks.fail("options", "None or a dict of torchdiffeq options", type(options).__name__)
    accepted = TORCHDIFFEQ_OPTIONS[method]
    unknown = sorted(repr(name) for name in options if name not in accepted)
    if unknown:
        raise _checks.ArgumentError(f"options must be a dict of the options torchdiffeq's {method!r} takes "
                                    f"({', '.join(accepted)}); got unknown {', '.join(unknown)}")
    return dict(options)


class _Evaluations:
    """fn(t, y) as a library solver calls it: at t clamped into [lo, hi] (torchdiffeq computes
    stage times in the state's dtype and moves step ends by one ulp, so a float32 solve may ask
    for T + 1 ulp), each output watched for non-finite values, and an exception raised inside an
    evaluation remembered, so that it propagates as it is, not as the library's failure."""

    def __init__(self, fn: Callable[[float, torch.Tensor], torch.Tensor], watch: EvalWatch, lo: float, hi: float):
        self.fn, self.watch, self.lo, self.hi = fn, watch, lo, hi
        self.raised: Optional[BaseException] = None

    def __call__(self, t, y: torch.Tensor) -> torch.Tensor:
        t = min(max(float(t), self.lo), self.hi)
        try:
            return self.watch(t, self.fn(t, y))
        except BaseException as err:
            self.raised = err
            raise

    def failure(self, solver: str, err: BaseException) -> Exception:
        """What to raise for the library's own `err` (not `raised`) out of `solver`: a
        NonFiniteError naming the first non-finite evaluation, else a RuntimeError."""
        cause = f"{type(err).__name__}: {err}"
        if self.watch.first() is not None:
            return self.watch.error(solver, cause)
        return RuntimeError(f"{solver} failed after {self.watch.count} evaluations: {cause}")


#: a state torchdiffeq integrates: one tensor or a tuple of them
State = Union[torch.Tensor, Tuple[torch.Tensor, ...]]


def odeint_in_range(
    func: Callable[[torch.Tensor, State], State],
    y0: State,
    t_span: Tuple[float, float],
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    options: dict | None = None,
    t_dtype: torch.dtype = torch.float64,
    times: Optional[Sequence[float]] = None,
) -> State:
    """y(t1) of dy/dt = func(t, y), y(t0) = y0, with (t0, t1) = t_span in either direction, by
    torchdiffeq's adaptive `method` under rtol/atol; y0 (and the result) a tensor or a tuple.
    With `times` (from t0 to t1, monotone), the states at every one of them instead, stacked
    (len(times), ...): each is a step end, never an interpolation (torchdiffeq's dopri8
    interpolant is ~1e-6 off at a 1e-10 tolerance).

    func is never evaluated outside [t0, t1], where an SDE may be undefined: torchdiffeq's
    automatic first step probes ahead of t0 and its steps may overshoot t1, so the first step is
    1e-3 |t1 - t0| and steps stop at t1 (`first_step`, `step_t`; `options` may override them),
    and func sees its time as a float64 tensor clamped into [t0, t1] (torchdiffeq computes stage
    times in y0's dtype and perturbs step ends by one ulp: float32 round-off past an end).
    t0 and t1 reach torchdiffeq as a `t_dtype` tensor on y0's device."""
    import torchdiffeq

    method = _checks.choice("method", method, TORCHDIFFEQ_ADAPTIVE)
    options = _check_options(method, options)
    device = (y0[0] if isinstance(y0, tuple) else y0).device
    if times is None:
        t = torch.tensor([float(t_span[0]), float(t_span[1])], dtype=t_dtype, device=device)
    else:
        t = torch.as_tensor(times, dtype=t_dtype).to(device)
        if float(t[0]) != float(t_span[0]) or float(t[-1]) != float(t_span[1]):
            raise _checks.fail("times", f"output times from t_span[0] = {float(t_span[0]):g} to t_span[1] = "
                               f"{float(t_span[1]):g}", f"from {float(t[0]):g} to {float(t[-1]):g}")
    lo, hi = sorted(float(end) for end in t_span)
    options.setdefault("first_step", 1e-3 * abs(float(t_span[1]) - float(t_span[0])))
    options.setdefault("step_t", t[1:])  # every output time a step end

    def inside(t: torch.Tensor, y: State) -> State:
        return func(t.to(torch.float64).clamp(lo, hi), y)

    path = torchdiffeq.odeint(inside, y0, t, method=method, rtol=rtol, atol=atol, options=options)
    if times is not None:
        return path
    return tuple(p[-1] for p in path) if isinstance(path, tuple) else path[-1]


@register("torchdiffeq", kind="ode", order=5, evals_per_step="adaptive", step_hook=False, description="torchdiffeq.odeint (any method)")
def torchdiffeq_ode(
    model: ScoreModel,
    x: torch.Tensor,
    ts: torch.Tensor,
    loop: Loop,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    options: dict | None = None,
) -> torch.Tensor:
    """Adaptive methods integrate from ts[0] to ts[-1] under rtol/atol; fixed-grid methods
    step on the schedule `ts`. `options`: torchdiffeq's, those in TORCHDIFFEQ_OPTIONS[method].
    A solve that meets non-finite values stops with NonFiniteError naming the first non-finite
    evaluation (torchdiffeq's own failures, such as "underflow in dt", are its cause)."""
    import torchdiffeq

    method = _checks.choice("method", method, TORCHDIFFEQ_ADAPTIVE + TORCHDIFFEQ_FIXED)
    _check_tolerances(rtol, atol)
    options = _check_options(method, options)
    loop.watch = EvalWatch()
    func = _Evaluations(lambda t, y: pf_velocity(model, y, t), loop.watch, float(ts[-1]), float(ts[0]))
    solver = f"torchdiffeq's {method!r}"
    try:
        if method in TORCHDIFFEQ_ADAPTIVE:
            x = odeint_in_range(func, x, (float(ts[0]), float(ts[-1])), method=method, rtol=rtol, atol=atol,
                                options=options)
        else:
            path = torchdiffeq.odeint(func, x, ts.to(x.device), method=method, rtol=rtol, atol=atol, options=options)
    except Exception as err:
        if err is func.raised:
            raise
        raise func.failure(solver, err) from err
    if method in TORCHDIFFEQ_ADAPTIVE:
        _finish_adaptive(loop, x, solver)
        return x
    for i, state in enumerate(path[1:]):
        loop.done(i, state)
    return path[-1]


@register("scipy", kind="ode", order=5, evals_per_step="adaptive", step_hook=False, description="scipy.integrate.solve_ivp")
def scipy_ode(
    model: ScoreModel,
    x: torch.Tensor,
    ts: torch.Tensor,
    loop: Loop,
    *,
    method: str = "RK45",
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> torch.Tensor:
    """solve_ivp on the whole batch flattened into one float64 vector (one step size for the
    batch). The state crosses to the CPU and NumPy at every evaluation: a reference solver,
    not a fast one. The first non-finite evaluation stops it with NonFiniteError."""
    from scipy.integrate import solve_ivp

    method = _checks.choice("method", method, SCIPY_METHODS)
    _check_tolerances(rtol, atol)
    shape, dtype, device = x.shape, x.dtype, x.device
    loop.watch = EvalWatch()
    velocity = _Evaluations(lambda t, y: pf_velocity(model, y, t), loop.watch, float(ts[-1]), float(ts[0]))
    solver = f"scipy's solve_ivp({method})"

    def fun(t: float, y: np.ndarray) -> np.ndarray:
        state = torch.from_numpy(y).to(device=device, dtype=dtype).reshape(shape)
        v = velocity(t, state).detach().to("cpu", torch.float64).numpy().ravel()
        if loop.watch.first() is not None:  # scipy's methods do not recover from it (LSODA never returns)
            velocity.raised = loop.watch.error(solver)
            raise velocity.raised
        return v

    y0 = x.detach().to("cpu", torch.float64).numpy().ravel()
    try:
        with np.errstate(invalid="ignore", over="ignore"):  # non-finite values are reported below
            sol = solve_ivp(fun, (float(ts[0]), float(ts[-1])), y0, method=method, rtol=rtol, atol=atol)
    except Exception as err:
        if err is velocity.raised:
            raise
        raise velocity.failure(solver, err) from err
    if not sol.success:
        if loop.watch.first() is not None:
            raise loop.watch.error(solver, sol.message)
        raise RuntimeError(f"{solver} failed at t={float(sol.t[-1]):.6g}: {sol.message}")
    x = torch.from_numpy(sol.y[:, -1].copy()).to(device=device, dtype=dtype).reshape(shape)
    _finish_adaptive(loop, x, solver)
    return x


def _finish_adaptive(loop: Loop, x: torch.Tensor, solver: str) -> None:
    """The end of an adaptive solve (one step for the loop): a non-finite result is reported
    at the first non-finite evaluation (a rejected trial step's may have been harmless)."""
    if loop.watch.first() is not None and not bool(torch.isfinite(x).all()):
        raise loop.watch.error(solver, "it returned non-finite values")
    loop.done(len(loop.ts) - 2, x)


#: torchsde methods for diagonal noise, with the SDE type each integrates
TORCHSDE_METHODS = {"euler": "ito", "milstein": "ito", "srk": "ito",
                    "heun": "stratonovich", "midpoint": "stratonovich", "reversible_heun": "stratonovich"}


class _TorchsdeReverse(torch.nn.Module):
    """The reverse SDE in torchsde's form: time s = -t runs forward, states are (B, D).
    Noise is additive (g depends on t only), so the Ito and Stratonovich forms coincide."""

    noise_type = "diagonal"

    def __init__(self, model: ScoreModel, shape: torch.Size, sde_type: str, watch: EvalWatch,
                 t_span: Tuple[float, float]):
        super().__init__()
        self.model, self.shape, self.sde_type = model, shape, sde_type
        self.reverse = model.sde.reverse(model.score)
        self.drift = _Evaluations(lambda t, x: self.reverse.drift(x, t), watch, *t_span)  # (t, x), watched

    def f(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -self.drift(-float(s), y.reshape(self.shape)).reshape(y.shape)

    def g(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = y.reshape(self.shape)
        return self.reverse.diffusion(x, -float(s)).expand(self.shape).reshape(y.shape)


class _RowBrownian(torchsde.BaseBrownian):
    """Independent Brownian paths, one (1, D) interval per batch row, stacked along rows."""

    __slots__ = ("rows",)

    def __init__(self, rows):
        self.rows = rows

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        parts = [row(ta, tb, return_U=return_U, return_A=return_A) for row in self.rows]
        if isinstance(parts[0], tuple):
            return tuple(torch.cat(p, 0) for p in zip(*parts))
        return torch.cat(parts, 0)

    def __repr__(self):
        return f"_RowBrownian({len(self.rows)} rows)"

    dtype = property(lambda self: self.rows[0].dtype)
    device = property(lambda self: self.rows[0].device)
    shape = property(lambda self: torch.Size((len(self.rows), *self.rows[0].shape[1:])))
    levy_area_approximation = property(lambda self: self.rows[0].levy_area_approximation)


@register("torchsde", kind="sde", order=1, evals_per_step=1, default_schedule="uniform", extra_evals=1, step_hook=False,
          description="torchsde.sdeint on the reverse SDE (diagonal noise)")
def torchsde_sde(model: ScoreModel, x: torch.Tensor, ts: torch.Tensor, loop: Loop, *, generator=None,
                 method: str = "euler", bm=None) -> torch.Tensor:
    """One torchsde.sdeint call over the schedule, which must be uniform in t (torchsde steps
    with a fixed dt), with a BrownianInterval over [-T, -t_end] seeded from `generator` (or the
    given `bm`, to share a Brownian path with another solver). NFE: the method's evaluations
    per step (counted here: euler 1, srk 10) plus the one sdeint spends checking the SDE's
    shapes before its first step."""
    if method not in TORCHSDE_METHODS:
        raise _checks.fail("method", "a torchsde method for diagonal noise, one of: " + ", ".join(TORCHSDE_METHODS), method)
    steps = len(ts) - 1
    dt = float(ts[0] - ts[-1]) / steps
    if not torch.allclose(ts[:-1] - ts[1:], torch.full((steps,), dt, dtype=ts.dtype), rtol=1e-9, atol=0):
        raise ValueError("the torchsde backend steps with a fixed dt: use schedule='uniform'")
    shape = x.shape
    y = x.reshape(shape[0], -1)
    loop.watch = EvalWatch()
    sde = _TorchsdeReverse(model, shape, TORCHSDE_METHODS[method], loop.watch, (float(ts[-1]), float(ts[0])))
    # torchsde steps at s_0 + k dt, accumulated in float64; outputs requested exactly there never
    # leave a round-off sliver of an extra step (the grid moves by ~1e-16)
    s = torch.tensor(list(itertools.accumulate([-float(ts[0])] + [dt] * steps)), dtype=torch.float64, device=x.device)
    s[-1] = min(float(s[-1]), -float(ts[-1]))  # never past t_end, where the Brownian path ends
    if bm is None:
        levy = "space-time" if method == "srk" else "none"

        def interval(seed: int, size) -> torchsde.BrownianInterval:
            return torchsde.BrownianInterval(t0=float(s[0]), t1=float(s[-1]), size=size, dtype=y.dtype,
                                             device=x.device, entropy=seed, levy_area_approximation=levy)

        if isinstance(generator, RowGenerators):  # one Brownian path per row, from the row's own stream
            seeds = [int(torch.randint(0, 2**31 - 1, (1,), generator=g, device=g.device)) for g in generator.generators]
            bm = _RowBrownian([interval(seed, (1, *y.shape[1:])) for seed in seeds])
        else:
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator,
                                     device=generator.device if generator else None))
            bm = interval(seed, y.shape)
    try:
        path = torchsde.sdeint(sde, y, s, bm=bm, method=method, dt=dt)
    except Exception as err:
        if err is sde.drift.raised:
            raise
        raise sde.drift.failure(f"torchsde's sdeint({method})", err) from err
    for i, state in enumerate(path[1:]):
        loop.done(i, state.reshape(shape))
    return path[-1].reshape(shape)
