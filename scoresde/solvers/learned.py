"""A linear multistep solver of the probability-flow ODE whose per-step weights are given, so
that they can be learned (S4S, Frankel et al. 2025; Bespoke solvers, Shaul et al. 2023):

    x_{i+1} = sum_k a_{i,k} x_{i-k} + sum_k b_{i,k} D_{i-k},

x_j the state at grid time t_j where the model was evaluated and D_j = x0(x_j, t_j) its data
prediction, newest first (k = 0 is step i's own). Every one-evaluation multistep solver that is
linear in its predictions is a point of this family: DPM-Solver++(2M/3M), UniPC (its corrected
state is the predicted one plus a combination of predictions), and through
eps_j = (x_j - alpha_j D_j) / sigma_j iPNDM, DEIS and Euler. `coefficients_of` finds a solver's
point on a grid by running it on a probe whose predictions are unit vectors, so zero training
reproduces the solver to round-off.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

import torch

from .. import _checks
from ..model import ScoreModel
from ._loop import Grid, Loop, Scalar, as_float
from .registry import get, register

__all__ = ["LEARNED", "DEFAULT_BASE", "NATIVE", "Coefficients", "coefficients_of", "learned_multistep",
           "check_coefficients"]

#: the registered name of the solver
LEARNED = "learned-multistep"
#: the solver whose weights `learned-multistep` uses when none are given
DEFAULT_BASE = "dpm++3m"
#: the solvers `coefficients_of` expresses, each with the prediction it combines linearly
NATIVE: Dict[str, str] = {"ddim": "x0", "dpm++2m": "x0", "dpm++3m": "x0", "unipc": "x0", "ipndm": "eps",
                          "deis": "eps", "euler": "eps"}
#: a probe weight below this fraction of its row's largest is round-off, not part of the solver
_SUPPORT_RTOL = 1e-12


@dataclass
class Coefficients:
    """The weights of `learned-multistep` on a grid of `steps` steps: a[i][k] of the state
    x_{i-k}, b[i][k] of the data prediction D_{i-k} (rows of 1 to i + 1 entries, newest first).
    Entries are Python floats, or 0-d tensors (learnable, or in a differentiable grid's graph)."""

    a: List[List[Scalar]]
    b: List[List[Scalar]]

    @property
    def steps(self) -> int:
        return len(self.a)

    def to_options(self) -> Dict[str, List[List[float]]]:
        """The solver options {"a": ..., "b": ...} as plain floats (JSON-able)."""
        return {"a": [[as_float(v) for v in row] for row in self.a],
                "b": [[as_float(v) for v in row] for row in self.b]}


def check_coefficients(a, b, steps: int) -> Coefficients:
    """a and b (each a sequence of `steps` rows, row i of 1 to i + 1 finite numbers or a 1-D
    tensor of them) as Coefficients; a one-line error naming what is wrong otherwise."""
    if (a is None) != (b is None):
        raise _checks.ArgumentError(f"give both a and b (the weights of states and of data predictions) or "
                                    f"neither; got {'only a' if b is None else 'only b'}")
    rows = {}
    for name, value in (("a", a), ("b", b)):
        what = "state" if name == "a" else "data prediction"
        accepted = (f"a list of {steps} rows (one per step), row i holding 1 to i + 1 weights of the {what}s "
                    f"x_i, x_(i-1), ... (newest first)")
        if isinstance(value, torch.Tensor) and value.ndim == 2:
            value = list(value.unbind())
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
            raise _checks.fail(name, accepted, type(value).__name__)
        if len(value) != steps:
            raise _checks.ArgumentError(f"{name} must be {accepted}; got {len(value)} rows")
        out = []
        for i, row in enumerate(value):
            if isinstance(row, torch.Tensor):
                if row.ndim != 1 or not row.is_floating_point():
                    raise _checks.fail(f"{name}[{i}]", "1 to i + 1 weights", f"a tensor of shape {tuple(row.shape)}")
                entries = list(row.unbind())
            elif isinstance(row, Sequence) and not isinstance(row, (str, bytes)):
                entries = [v if isinstance(v, torch.Tensor) else _checks.real(f"{name}[{i}][{k}]", v)
                           for k, v in enumerate(row)]
            else:
                raise _checks.fail(f"{name}[{i}]", f"a list of 1 to {i + 1} weights", row)
            if not 1 <= len(entries) <= i + 1:
                raise _checks.ArgumentError(f"{name}[{i}] must be 1 to {i + 1} weights (step {i} has {i + 1} "
                                            f"evaluations so far); got {len(entries)} weights")
            if not all(bool(torch.isfinite(torch.as_tensor(as_float(v)))) for v in entries):
                raise _checks.fail(f"{name}[{i}]", "finite weights", [as_float(v) for v in entries])
            out.append(entries)
        rows[name] = out
    return Coefficients(rows["a"], rows["b"])


@register(LEARNED, kind="ode", order=get(DEFAULT_BASE).order, evals_per_step=1, affine=True,
          description=f"linear multistep with given per-step weights (default: {DEFAULT_BASE}'s)")
def learned_multistep(
    model: ScoreModel, x: torch.Tensor, ts: torch.Tensor, loop: Loop, *, a=None, b=None, base: str = DEFAULT_BASE,
    base_options: Optional[Mapping[str, object]] = None,
) -> torch.Tensor:
    # x_{i+1} = sum_k a_{i,k} x_{i-k} + sum_k b_{i,k} D_{i-k}; `base`'s weights when a, b are None
    steps = loop.num_steps
    if a is None and b is None:
        c = coefficients_of(base, loop.grid, **dict(base_options or {}))
    else:
        c = check_coefficients(a, b, steps)
    depth = max(max(len(r) for r in c.a), max(len(r) for r in c.b))
    xs: List[torch.Tensor] = []  # evaluated states, newest first
    x0s: List[torch.Tensor] = []  # their data predictions
    for i, t, t_next in loop.steps():
        x0s = [model.x0(x, t)] + x0s[: depth - 1]
        xs = [x] + xs[: depth - 1]
        x_next = c.a[i][0] * xs[0]
        for w, state in zip(c.a[i][1:], xs[1:]):
            x_next = x_next + w * state
        for w, x0_pred in zip(c.b[i], x0s):
            x_next = x_next + w * x0_pred
        x = x_next
        loop.done(i, x, x0s[0])
    return x


def coefficients_of(solver: str, grid: Grid, **solver_options) -> Coefficients:
    """The weights with which `learned-multistep` is `solver` (with `solver_options`) on `grid`
    (`Loop.grid`, or `Grid.of(sde, ts)`): floats, or 0-d tensors in the graph of a
    differentiable grid's times. Solvers: those of NATIVE.

    Found by a probe: the solver runs from x_T = e_0 on a model whose j-th prediction (data or
    noise, as the solver combines them) is e_{j+1}, so every state it visits is the vector of
    its weights on x_T and the predictions; each step's weights follow from two neighbouring
    states, and weights below round-off (1e-12 of their row's largest) are dropped."""
    name = get(solver).name
    if name not in NATIVE:
        raise _checks.fail("solver", f"one of {', '.join(NATIVE)} (one evaluation per step, linear in its "
                           "predictions)", solver)
    info = get(name)
    unknown = sorted(set(solver_options) - set(info.options))
    if unknown:
        raise _checks.fail(f"options of solver {name!r}", f"among {', '.join(info.options) or 'none'}", unknown)
    if not isinstance(grid, Grid):
        raise _checks.fail("grid", "a scoresde.solvers.Grid (Grid.of(sde, ts))", type(grid).__name__)
    sde = grid.sde
    _checks.affine(sde, f"coefficients_of({name!r})")
    steps = len(grid.t) - 1
    tensors = isinstance(grid.t[0], torch.Tensor)
    ts = torch.stack(grid.t) if tensors else torch.tensor(grid.t, dtype=torch.float64)
    calls = []

    def probe(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append((x, as_float(t[0])))
        return torch.eye(steps + 1, dtype=torch.float64)[len(calls): len(calls) + 1].expand_as(x).clone()

    model = ScoreModel(probe, sde, prediction=NATIVE[name], time_input="t")
    x_T = torch.eye(steps + 1, dtype=torch.float64)[:1]
    with torch.set_grad_enabled(tensors):
        loop = Loop(ts, sde)
        out = info.fn(model, x_T, ts, loop, **{**info.defaults, **solver_options})
    times = [as_float(t) for t in grid.t]
    if [t for _, t in calls] != times[:-1] or not torch.equal(calls[0][0].detach(), x_T):
        raise _checks.ArgumentError(f"solver {name!r} did not evaluate once at each grid time but the last; "
                                    "it is not a linear multistep solver")
    states = [x_T[0]] + [x[0] for x, _ in calls[1:]] + [out[0]]
    if not tensors:
        states = [s.tolist() for s in states]
    a_rows, b_rows = [], []
    for i in range(steps):
        now, new = states[i], states[i + 1]
        c = new[0] / now[0]
        w = [new[1 + i - k] - c * now[1 + i - k] for k in range(i + 1)]  # on prediction i - k
        size = max(abs(as_float(v)) for v in w)
        keep = max([k + 1 for k in range(i + 1) if abs(as_float(w[k])) > _SUPPORT_RTOL * size] or [1])
        w = w[:keep]
        if NATIVE[name] == "x0":
            a_rows.append([c])
            b_rows.append(w)
        else:  # eps_j = (x_j - alpha_j D_j) / sigma_j
            a_rows.append([c + w[0] / grid.sigma[i]] + [w[k] / grid.sigma[i - k] for k in range(1, keep)])
            b_rows.append([-w[k] * grid.alpha[i - k] / grid.sigma[i - k] for k in range(keep)])
    return Coefficients(a_rows, b_rows)
