"""What every solver loop shares: the grid's coefficients (`Grid`), the multistep history
(`History`, `multistep_order`), the noise of SDE solvers (`Noise`) and the per-step bookkeeping (`Loop`: the state hook, finite
check, user callback, trajectory, progress bar).

Step coefficients are Python floats, or 0-d float64 tensors when the grid's times require
grad (a grid being learned through the solver): `expm1`, `exp`, `log` and `sqrt` here take
either, so one solver body serves both and autograd reaches the times. On tensors they return
the float functions' values exactly (`with_value`), so the differentiable path computes the same
numbers as the fast one, bit for bit."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from ..sde import SDE

__all__ = ["NonFiniteError", "Loop", "Grid", "History", "multistep_order", "StateHook", "Noise", "NoiseFn",
           "RowGenerators", "LOWER_ORDER_FINAL_BELOW", "EvalWatch", "Scalar", "expm1", "exp", "log", "sqrt",
           "with_value", "as_float", "differentiable", "t_of_log_snr"]

#: a step coefficient: a Python float, or a 0-d float64 tensor on a differentiable grid
Scalar = Union[float, torch.Tensor]


def with_value(y: torch.Tensor, value: float) -> torch.Tensor:
    """y's graph (its derivatives) carrying exactly `value`, a float computation of the same
    quantity (torch's and libm's functions may differ in the last bit): y + (value - y) with
    the difference exact, as the two are within a factor 2 of each other."""
    return y + (value - y.detach())


def as_float(v: Scalar) -> float:
    """The value of a coefficient as a Python float (a tensor's without its graph)."""
    return float(v.detach()) if isinstance(v, torch.Tensor) else v


def expm1(v: Scalar) -> Scalar:
    return with_value(torch.expm1(v), math.expm1(as_float(v))) if isinstance(v, torch.Tensor) else math.expm1(v)


def exp(v: Scalar) -> Scalar:
    return with_value(torch.exp(v), math.exp(as_float(v))) if isinstance(v, torch.Tensor) else math.exp(v)


def log(v: Scalar) -> Scalar:
    return with_value(torch.log(v), math.log(as_float(v))) if isinstance(v, torch.Tensor) else math.log(v)


def sqrt(v: Scalar) -> Scalar:
    return torch.sqrt(v) if isinstance(v, torch.Tensor) else math.sqrt(v)  # both correctly rounded


class NonFiniteError(RuntimeError):
    """A sampler produced NaN or inf; the message names the step (or the network evaluation)
    and the time where it first appeared."""


def t_of_log_snr(sde: SDE, lam: torch.Tensor) -> torch.Tensor:
    """`sde.t_of_log_snr(lam)` in lam's autograd graph: an inverse without a graph (the bisection
    of AffineSDE) gets dt/dlam = 1 / lambda'(t) attached by the implicit function theorem, the
    value staying t exactly."""
    t = sde.t_of_log_snr(lam)
    if lam.requires_grad and not t.requires_grad:
        with torch.enable_grad():
            probe = t.detach().requires_grad_(True)
            (dlam_dt,) = torch.autograd.grad(sde.log_snr(probe).sum(), probe)
        t = t + (lam - lam.detach()) / dlam_dt
    return t


def differentiable(ts: torch.Tensor) -> bool:
    """Whether a grid of times `ts` is to be differentiated through: it requires grad and grad
    mode is on. Otherwise the loop runs on Python floats, as fast as ever."""
    return ts.requires_grad and torch.is_grad_enabled()


@dataclass
class Grid:
    """Everything a step needs at each grid time, as Python floats in float64 (so step
    coefficients cost no device work and keep full precision in float32 runs): t, and for an
    affine SDE alpha, sigma, lam = log(alpha/sigma) and sigma_hat = sigma/alpha = e^{-lam}, the
    noise level of y = x/alpha. `at_lambda` gives the same at an intermediate log-SNR.

    On a differentiable grid (`differentiable(ts)`) every entry is instead a 0-d float64 tensor
    computed from `ts` by the SDE's tensor methods, so autograd reaches the times; the values
    are the same."""

    sde: SDE
    t: List[Scalar]
    alpha: List[Scalar] = field(default_factory=list)
    sigma: List[Scalar] = field(default_factory=list)
    lam: List[Scalar] = field(default_factory=list)
    sigma_hat: List[Scalar] = field(default_factory=list)

    @classmethod
    def of(cls, sde: SDE, ts: torch.Tensor, grad: Optional[bool] = None) -> "Grid":
        """The grid of `ts`; with `grad` (default `differentiable(ts)`) as tensors in ts's graph."""
        if grad is None:
            grad = differentiable(ts)
        if grad:
            ts = ts.to(torch.float64)
            if not sde.is_affine:
                return cls(sde, list(ts.unbind()))
            lam = list(sde.log_snr(ts).unbind())
            return cls(sde, list(ts.unbind()), list(sde.alpha(ts).unbind()), list(sde.sigma(ts).unbind()), lam,
                       [exp(-v) for v in lam])
        if not sde.is_affine:
            return cls(sde, ts.tolist())
        lam = sde.log_snr(ts).tolist()
        return cls(sde, ts.tolist(), sde.alpha(ts).tolist(), sde.sigma(ts).tolist(), lam,
                   [math.exp(-v) for v in lam])

    def h(self, i: int) -> Scalar:
        """The log-SNR step lam_{i+1} - lam_i (> 0)."""
        return self.lam[i + 1] - self.lam[i]

    def at_lambda(self, lam: Scalar) -> Tuple[Scalar, Scalar, Scalar]:
        """(t, alpha, sigma) at log-SNR `lam` between grid points: floats for a float `lam`,
        0-d tensors in its graph for a tensor."""
        if not isinstance(lam, torch.Tensor):
            t = self.sde.t_of_log_snr(torch.tensor(lam, dtype=torch.float64))
            return float(t), float(self.sde.alpha(t)), float(self.sde.sigma(t))
        t = t_of_log_snr(self.sde, lam)
        return t, self.sde.alpha(t), self.sde.sigma(t)

    def transition(self, i: int) -> Tuple[Scalar, Scalar]:
        """The forward transition x_{t_i} | x_{t_{i+1}} = a x_{t_{i+1}} + sqrt(b) z between
        neighbouring grid times (t_{i+1} < t_i): (a, b)."""
        a = self.alpha[i] / self.alpha[i + 1]
        return a, self.sigma[i] ** 2 - a**2 * self.sigma[i + 1] ** 2


#: multistep solvers drop to lower order on their final steps when there are fewer steps than
#: this (as diffusers does), where extrapolating from far-apart lambdas hurts more than it helps;
#: the threshold `lower_order_final=True` means (False means 0: never)
LOWER_ORDER_FINAL_BELOW = 15


def multistep_order(i: int, steps: int, order: int, lower_order_final: Union[bool, int]) -> int:
    """Order of multistep step i (0-based) of `steps`: warm-up from 1, and tapering at the end
    (step i at most steps - i) when steps < lower_order_final, an integer threshold; True and
    False stand for LOWER_ORDER_FINAL_BELOW and 0."""
    below = LOWER_ORDER_FINAL_BELOW if lower_order_final is True else int(lower_order_final)
    p = min(order, i + 1)
    if steps < below:
        p = min(p, steps - i)
    return p


class History:
    """The last `size` evaluations of a multistep solver with their log-SNRs, newest last:
    `values[-1]` is the newest, `lam[-1]` its log-SNR."""

    def __init__(self, size: int):
        self.size = size
        self.values: List[torch.Tensor] = []
        self.lam: List[float] = []

    def push(self, lam: float, value: torch.Tensor) -> None:
        self.values = (self.values + [value])[-self.size:]
        self.lam = (self.lam + [lam])[-self.size:]

    def __len__(self) -> int:
        return len(self.values)


#: a user noise source: like -> standard normal draws shaped like `like`
NoiseFn = Callable[[torch.Tensor], torch.Tensor]


class RowGenerators:
    """One torch.Generator per batch row, seeded by `seeds[i]`: every draw of row i depends on
    its own seed alone, so a row's sample does not depend on the batch it was drawn in
    (`sample(..., seeds=...)`). Each draw is one `randn` of a row's shape per row, on `device`."""

    def __init__(self, seeds: Sequence[int], device: Union[str, torch.device, None] = None):
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device or "cpu")
        self.generators = [torch.Generator(device=self.device).manual_seed(s) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def subset(self, rows: Sequence[int]) -> "RowGenerators":
        """The generators of `rows` (the same objects: drawing from the subset advances them)."""
        out = RowGenerators.__new__(RowGenerators)
        out.seeds, out.device = [self.seeds[i] for i in rows], self.device
        out.generators = [self.generators[i] for i in rows]
        return out

    def randn(self, shape: Sequence[int], dtype: Optional[torch.dtype] = None,
              device: Union[str, torch.device, None] = None, rows: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Standard normal draws of `shape` = (len(rows), *row_shape), row k from the generator
        of row rows[k] (default all rows, in order)."""
        generators = self.generators if rows is None else [self.generators[i] for i in rows]
        if shape[0] != len(generators):
            raise ValueError(f"a draw for {shape[0]} rows from {len(generators)} row generators")
        out = torch.stack([torch.randn(tuple(shape[1:]), generator=g, dtype=dtype, device=self.device)
                           for g in generators])
        return out if device is None else out.to(device)


class Noise:
    """Standard normal draws shaped like x for SDE solvers, from `generator` (a torch.Generator
    or `RowGenerators`) or from a user `noise_fn` (to share a Brownian path between solvers, or
    to probe a sampler in tests). `rows` names the batch rows of `like` when it holds only some
    (adaptive solvers step a subset)."""

    def __init__(self, generator: Union[torch.Generator, RowGenerators, None], noise_fn: Optional[NoiseFn] = None):
        self.generator, self.noise_fn = generator, noise_fn

    def __call__(self, like: torch.Tensor, rows: Optional[Sequence[int]] = None) -> torch.Tensor:
        if self.noise_fn is not None:
            return self.noise_fn(like)
        if isinstance(self.generator, RowGenerators):
            return self.generator.randn(like.shape, like.dtype, like.device, rows)
        return torch.randn(like.shape, generator=self.generator, dtype=like.dtype, device=like.device)


#: hook(x, t, last) -> x: the state after a step with part of it changed (e.g. inpainting's
#: known region), t the time reached (a 0-d tensor on a differentiable grid), last whether it is
#: the final state
StateHook = Callable[[torch.Tensor, Scalar, bool], torch.Tensor]


class Loop:
    """Iterates a solver over its grid and does the bookkeeping after each step.

    With `state_hook`, the state is modified after every step before anything else looks at
    it (DPM-Solver's `correcting_xt_fn`): `done` overwrites the solver's state tensor in place
    with state_hook(x, t_{i+1}, last step?), so the solver continues from the modified state
    without knowing about it; `start` returns a modified copy of the initial state (the caller's
    tensor is never written).

    When `ts` requires grad and grad mode is on at construction (`differentiable`), `steps`,
    `times` and the grid give 0-d float64 tensors in ts's graph instead of Python floats, so a
    loss of the result can be differentiated with respect to the times; the state hook then sees
    tensor times too (the callback and messages always see floats).
    """

    def __init__(
        self,
        ts: torch.Tensor,
        sde: Optional[SDE] = None,
        callback: Optional[Callable[[dict], None]] = None,
        progress: bool = False,
        record: bool = False,
        desc: str = "sampling",
        state_hook: Optional[StateHook] = None,
    ):
        self.ts = ts
        self.sde = sde
        self._t = ts.tolist()
        self.grad = differentiable(ts)
        #: the grid's times as the solver sees them: Python floats, or 0-d tensors in ts's graph
        self.times: List[Scalar] = list(ts.to(torch.float64).unbind()) if self.grad else self._t
        self._grid: Optional[Grid] = None
        #: check for non-finite states at the end instead of after every step (default: on
        #: accelerators, where a per-step check is a host-device synchronization)
        self.deferred_check: Optional[bool] = None
        self._first_bad: Optional[torch.Tensor] = None
        #: the evaluations of a library solver (backends.py), named when a step turns non-finite
        self.watch: Optional["EvalWatch"] = None
        self.callback = callback
        self.state_hook = state_hook
        self.trajectory: Optional[List[torch.Tensor]] = [] if record else None
        self._bar = None
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=len(ts) - 1, desc=desc)

    @property
    def grid(self) -> Grid:
        """The grid's coefficients under the loop's SDE (computed once)."""
        if self._grid is None:
            if self.sde is None:
                raise ValueError("this Loop was built without an sde; pass Loop(ts, sde=...) to use its grid")
            self._grid = Grid.of(self.sde, self.ts, self.grad)
        return self._grid

    @property
    def num_steps(self) -> int:
        return len(self._t) - 1

    def is_last(self, i: int) -> bool:
        """Whether step i is the final step of the grid."""
        return i == len(self._t) - 2

    def steps(self) -> Iterator[Tuple[int, Scalar, Scalar]]:
        """(i, t_i, t_{i+1}) for each step, times as Python floats (0-d tensors on a
        differentiable grid)."""
        t = self.times
        for i in range(len(t) - 1):
            yield i, t[i], t[i + 1]

    def start(self, x: torch.Tensor) -> torch.Tensor:
        """The initial state (modified, as a new tensor, when the loop has a state hook)."""
        if self.state_hook is not None:
            x = self.state_hook(x, self.times[0], False)
        if self.trajectory is not None:
            self.trajectory.append(x.detach().clone())
        return x

    def done(self, i: int, x: torch.Tensor, x0_pred: Optional[torch.Tensor] = None) -> None:
        """After step i (now at time ts[i+1]): apply the state hook (in place), stop on
        non-finite values, record, call back."""
        t = self._t[i + 1]
        if self.state_hook is not None:
            x.copy_(self.state_hook(x, self.times[i + 1], self.is_last(i)))
        self._check_finite(i, x)
        if self.trajectory is not None:
            self.trajectory.append(x.detach().clone())
        if self.callback is not None:
            self.callback({"i": i, "t": t, "x": x, "x0_pred": x0_pred})
        if self._bar is not None:
            self._bar.update(1)

    def _check_finite(self, i: int, x: torch.Tensor) -> None:
        if self.deferred_check is None:
            self.deferred_check = x.device.type != "cpu"
        if not self.deferred_check:
            if not bool(torch.isfinite(x).all()):
                self._fail(i)
            return
        # On an accelerator, reading a flag every step would make the host wait for the device
        # every step; keep the first bad step on the device and read it once, in `finish`.
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=x.device)
        first = self._first_bad
        bad = ~torch.isfinite(x).all() & (first < 0)
        self._first_bad = torch.where(bad, torch.full_like(first, i), first)

    def denoise(self, model, x: torch.Tensor, why: str) -> torch.Tensor:
        """Tweedie's E[x0 | x_t_end] of the final state (one evaluation), checked for non-finite
        values and passed through the state hook as the final state; `why` names the option that
        asked for it in the error."""
        t_end = self.times[-1]
        x = model.x0(x, t_end)
        if not bool(torch.isfinite(x).all()):  # one host read, after the solve
            raise NonFiniteError(f"non-finite values from the final denoising evaluation ({why}) at "
                                 f"t={float(t_end):.6g}")
        return x if self.state_hook is None else self.state_hook(x, t_end, True)

    def finish(self) -> None:
        """Raise NonFiniteError if a step left non-finite values that were not yet reported
        (the device-side check); call after the solver returns."""
        if self._first_bad is not None and int(self._first_bad) >= 0:
            self._fail(int(self._first_bad))

    def _fail(self, i: int) -> None:
        self.close()
        first = "" if self.watch is None else self.watch.describe()
        raise NonFiniteError(
            f"non-finite values in the state after step {i + 1} of {len(self.ts) - 1} (t={self._t[i + 1]:.6g})"
            + (f"; {first}" if first else "")
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class EvalWatch:
    """Counts the network evaluations a solver makes through it and remembers the first whose
    output is non-finite (its number and time), so that a failure deep inside torchdiffeq, scipy
    or torchsde, or in a rejected adaptive step, is reported where it began.

    On accelerators the check stays on the device and is read once, by `first()`, so watching
    adds no host-device synchronization per evaluation (`deferred=False` checks at once)."""

    def __init__(self, deferred: Optional[bool] = None):
        self.count = 0
        self.deferred = deferred
        self._first: Optional[Tuple[int, float]] = None
        self._times: List[float] = []  # the time of each evaluation, while the check is deferred
        self._first_dev: Optional[torch.Tensor] = None

    def __call__(self, t, out: torch.Tensor) -> torch.Tensor:
        """Record one evaluation at time t (a float, or per-sample times of shape (B,)) with
        output `out` (B, *shape); returns `out`."""
        self.count += 1
        if self._first is not None:
            return out
        if self.deferred is None:
            self.deferred = out.device.type != "cpu"
        if self.deferred and not isinstance(t, torch.Tensor):
            self._times.append(float(t))
            if self._first_dev is None:
                self._first_dev = torch.zeros((), dtype=torch.long, device=out.device)
            first = self._first_dev
            bad = ~torch.isfinite(out).all() & (first == 0)
            self._first_dev = torch.where(bad, torch.full_like(first, self.count), first)
            return out
        out_ = out.detach()
        finite = torch.isfinite(out_).reshape(out_.shape[0], -1).all(1) if out_.ndim else torch.isfinite(out_)
        if not bool(finite.all()):
            if isinstance(t, torch.Tensor) and t.ndim == 1:
                t = t.detach()[~finite].max()  # the bad row met first, in reverse time
            self._first = (self.count, float(t))
        return out

    def wrap(self, fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """fn(x, t) -> output (e.g. `model.score`), watched."""
        def watched(x, t):
            return self(t, fn(x, t))

        return watched

    def first(self) -> Optional[Tuple[int, float]]:
        """(evaluation number, from 1; time) of the first non-finite output, or None."""
        if self._first is None and self._first_dev is not None:
            k = int(self._first_dev)
            if k > 0:
                self._first = (k, self._times[k - 1])
        return self._first

    def describe(self) -> str:
        """'the first non-finite evaluation was number k of n (t=...)', or ''."""
        first = self.first()
        if first is None:
            return ""
        return f"the first non-finite evaluation was number {first[0]} of {self.count} (t={first[1]:.6g})"

    def error(self, solver: str, cause: Optional[str] = None) -> NonFiniteError:
        """The NonFiniteError for `solver` having stopped (`cause`: the library's own words)
        after a non-finite evaluation; call only when `first()` is not None."""
        k, t = self.first()
        return NonFiniteError(
            f"non-finite values from evaluation {k} of {self.count} (t={t:.6g}) by {solver}"
            + (f"; the solver then stopped: {cause}" if cause else "")
        )
