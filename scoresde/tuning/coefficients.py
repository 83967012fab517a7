"""Method "coefficients": a multistep solver whose per-step weights are learned jointly with its
grid (the idea of S4S, Frankel et al. 2025, and Bespoke solvers, Shaul et al. 2023, trained
here by gradient through the solver as LD3 trains a grid).

Parameterization. The solver is `learned-multistep` (`scoresde.solvers.learned`): step i is
x_{i+1} = sum_k a_{i,k} x_{i-k} + sum_k b_{i,k} D_{i-k}. Its weights are the initial solver's
on the current grid (`coefficients_of`, differentiable in the times) plus learned residuals in
natural units: a_{i,k} += (sigma_{i+1} / sigma_{i-k}) u_{i,k} and b_{i,k} += alpha_{i+1}
(1 - e^{-h_i}) v_{i,k} (DDIM's weight of D_i), so u = v = 0 is the initial solver and one unit
of residual moves x_{i+1} by about its noise level. The rows have the initial solver's support,
widened to `history` entries where asked. The grid is the one of method "steps": log-SNR
increments proportional to softmax(logits), the ends fixed. The penalty reg * mean(u^2, v^2)
pulls the weights back toward the known solver's.

Initial grid. By option init, as method "steps": by default the one of the best fixed schedule,
GITS' grid and `optimize`'s Nelder-Mead grid with the lowest calibration RMSE. Nelder-Mead sees
the few trajectories that end in another mode than the teacher's, which gradients cannot bring
back; the weights then refine the bulk (benchmarks/learned_samplers.py measures both).

Training. Adam on mini-batches of calibration pairs (x_T, teacher endpoint), validation RMSE
after every epoch; the parameters best on validation are kept (the start counts: a run that
never beats it returns it exactly), training stops after `patience` epochs without a new best
(`scoresde.tuning.fitting.fit_early_stopped`, as method "steps").
Losses of the per-sample mean squared errors e_b as in method "steps": "mse", "huber", "cvar".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from .. import _checks
from ..model import ScoreModel
from ..schedules import check_end, validate
from ..solvers import Grid, NonFiniteError, get, sample
from ..solvers._loop import as_float
from ..solvers.learned import LEARNED, NATIVE, Coefficients, coefficients_of
from .fitting import fit_early_stopped
from .steps import INITS, LOSSES, grid_from_logits, logits_of_grid, training_loss

__all__ = ["COEFFICIENTS_DEFAULTS", "LOSSES", "LearnedCoefficients", "check_options", "learn_coefficients",
           "tune_coefficients", "LEARNED"]

#: the losses of per-sample endpoint errors (as method "steps")
#: method "coefficients"' settings (module docstring): lr the Adam step on the residuals,
#: lr_grid on the grid's logits (0: the start grid stays), epochs of ceil(B / batch_size)
#: iterations, history None (the initial solver's rows) or the row length to widen them to,
#: init the initial grid (as method "steps"': INITS)
COEFFICIENTS_DEFAULTS = dict(lr=0.005, lr_grid=0.005, epochs=120, batch_size=64, patience=15, loss="mse",
                             huber_scale=0.5, cvar_alpha=0.2, reg=1e-4, history=None, consistent=True, init="best")


def check_options(given: Mapping[str, object], sde) -> Dict[str, object]:
    """Method "coefficients"' options over COEFFICIENTS_DEFAULTS, each checked (one-line errors)."""
    unknown = sorted(set(given) - set(COEFFICIENTS_DEFAULTS))
    if unknown:
        raise _checks.fail("method options", f"those of method 'coefficients' ({', '.join(COEFFICIENTS_DEFAULTS)})",
                           unknown)
    _checks.affine(sde, "method='coefficients' (an exponential-integrator family in log-SNR)")
    o = {**COEFFICIENTS_DEFAULTS, **given}
    o["loss"] = _checks.choice("loss", o["loss"], LOSSES)
    o["init"] = _checks.choice("init", o["init"], INITS)
    o["lr"] = _checks.real("lr", o["lr"], low=0, open_low=True)
    o["lr_grid"] = _checks.real("lr_grid", o["lr_grid"], low=0)
    o["epochs"] = _checks.integer("epochs", o["epochs"], low=0)
    o["batch_size"] = _checks.integer("batch_size", o["batch_size"], low=1)
    o["patience"] = _checks.integer("patience", o["patience"], low=1)
    o["huber_scale"] = _checks.real("huber_scale", o["huber_scale"], low=0, open_low=True)
    o["cvar_alpha"] = _checks.real("cvar_alpha", o["cvar_alpha"], low=0, high=1, open_low=True)
    o["reg"] = _checks.real("reg", o["reg"], low=0)
    o["consistent"] = _checks.boolean("consistent", o["consistent"])
    if o["history"] is not None:
        o["history"] = _checks.integer("history (None: the initial solver's rows)", o["history"], low=1)
    return o


@dataclass
class LearnedCoefficients:
    """What `learn_coefficients` found: times (steps + 1,) float64 and solver_options (the
    weights {"a", "b"} of `learned-multistep`, JSON-able), the validation RMSE of the start and
    of the best epoch, the per-epoch histories (validation: epoch 0 is the start) and counts."""

    times: torch.Tensor
    solver_options: Dict[str, List[List[float]]]
    loss_start: float
    loss: float
    best_epoch: int
    train_history: List[float] = field(default_factory=list)
    validation_history: List[float] = field(default_factory=list)
    iterations: int = 0
    nfe: int = 0


def tune_coefficients(
    model: ScoreModel, x_cal: torch.Tensor, reference_cal: torch.Tensor, x_val: torch.Tensor,
    reference_val: torch.Tensor, steps: int, t_end: float, init_solver: str, start_times: torch.Tensor,
    generator: Optional[torch.Generator] = None, init_options: Optional[Mapping[str, object]] = None, **options,
) -> Tuple[torch.Tensor, Dict[str, object], List[float], Dict[str, object]]:
    """Learn `learned-multistep` weights and grid from `init_solver` (with `init_options`) on
    `start_times` (steps + 1,), on calibration pairs (x_cal, reference_cal) (B, *data_shape),
    early-stopped on (x_val, reference_val). Every argument is checked before any work.

    Returns (times, solver_options of `learned-multistep`, validation RMSE per epoch (0: the
    start), details (JSON-able))."""
    if not isinstance(model, ScoreModel):
        raise _checks.fail("model", "a scoresde.ScoreModel", type(model).__name__)
    sde = model.sde
    o = check_options(options, sde)
    init = get(init_solver).name
    if init not in NATIVE:
        raise _checks.fail("init_solver", f"one of {', '.join(NATIVE)} (a solver learned-multistep can start "
                           "from)", init_solver)
    init_options = dict(init_options or {})
    unknown = sorted(set(init_options) - set(get(init).options))
    if unknown:
        raise _checks.fail(f"options of solver {init!r}", f"among {', '.join(get(init).options) or 'none'}", unknown)
    steps = _checks.integer("steps", steps, low=1)
    t_end = check_end(sde, t_end)
    start = validate(sde, start_times)
    if start.numel() != steps + 1 or float(start[0]) != sde.T or float(start[-1]) != t_end:
        raise _checks.fail("start_times", f"{steps + 1} descending times from T = {sde.T:g} to t_end = {t_end:g}",
                           start.tolist())
    for name, x, y in (("calibration", x_cal, reference_cal), ("validation", x_val, reference_val)):
        _checks.tensor(f"x_{name[:3]}", x, "(B, *data_shape) with B >= 1")
        if x.shape[0] < 1:
            raise _checks.fail(f"the {name} batch", "at least 1 noise", tuple(x.shape))
        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            raise _checks.fail(f"reference_{name[:3]}", f"the teacher's endpoints, shaped like x_{name[:3]} "
                               f"{tuple(x.shape)}", tuple(getattr(y, "shape", ())) or type(y).__name__)
    if x_val.shape[1:] != x_cal.shape[1:]:
        raise _checks.fail("x_val", f"noise shaped (V, {', '.join(map(str, x_cal.shape[1:]))}) like x_cal's",
                           tuple(x_val.shape))
    learned = learn_coefficients(model, init, start, x_cal, reference_cal, x_val, reference_val, o, init_options,
                                 generator)
    details = {**o, "init_solver": init, "init_options": init_options, "init_validation": learned.loss_start,
               "best_epoch": learned.best_epoch, "iterations": learned.iterations, "training_nfe": learned.nfe,
               "train_history": learned.train_history, "kept_start": learned.best_epoch == 0,
               "note": f"solver {LEARNED!r} with these weights; loss_history: validation RMSE after each epoch "
                       "(0: the initial solver on the start grid)"}
    return learned.times, learned.solver_options, learned.validation_history, details


def learn_coefficients(
    model: ScoreModel,
    init_solver: str,
    start: torch.Tensor,
    x_cal: torch.Tensor,
    y_cal: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    options: Mapping[str, object],
    init_options: Optional[Mapping[str, object]] = None,
    generator: Optional[torch.Generator] = None,
) -> LearnedCoefficients:
    """Train the weights (and grid) of `learned-multistep` from `init_solver`'s on the grid
    `start`; arguments as `tune_coefficients` checks them, `options` as `check_options`
    returns them. Mini-batches are drawn with `generator` (default seeded 0)."""
    sde = model.sde
    o = dict(options)
    init_options = dict(init_options or {})
    nfe_before = model.nfe
    steps = start.numel() - 1
    gen = generator if generator is not None else torch.Generator(x_cal.device).manual_seed(0)

    c_start = coefficients_of(init_solver, Grid.of(sde, start), **init_options)
    widen = o["history"] or 1
    len_a = [max(len(c_start.a[i]), min(i + 1, widen if NATIVE[init_solver] == "eps" else 1)) for i in range(steps)]
    len_b = [max(len(c_start.b[i]), min(i + 1, widen)) for i in range(steps)]
    u = [torch.zeros(n, dtype=torch.float64, requires_grad=True) for n in len_a]
    v = [torch.zeros(n, dtype=torch.float64, requires_grad=True) for n in len_b]
    logits = logits_of_grid(sde, start).clone().requires_grad_(o["lr_grid"] > 0)
    groups = [{"params": u + v, "lr": o["lr"]}]
    if o["lr_grid"] > 0:
        groups.append({"params": [logits], "lr": o["lr_grid"]})
    optimizer = torch.optim.Adam(groups)

    def current(grad: bool) -> Tuple[torch.Tensor, Coefficients]:
        """The grid and the weights of the parameters (0-d tensors in their graph when grad)."""
        with torch.set_grad_enabled(grad):
            ts = grid_from_logits(sde, logits, float(start[-1])) if o["lr_grid"] > 0 else start
            g = Grid.of(sde, ts, grad=grad and o["lr_grid"] > 0)
            c0 = coefficients_of(init_solver, g, **init_options)
            a, b = [], []
            for i in range(steps):
                da, db = _residuals(g, i, u[i], v[i], o["consistent"])
                a.append(_row(c0.a[i], len_a[i]) + da)
                b.append(_row(c0.b[i], len_b[i]) + db)
        return ts, Coefficients(a, b)

    def errors(x_T, y, ts, c: Coefficients, grad: bool) -> torch.Tensor:
        """(B,) per-sample mean squared endpoint errors."""
        x = sample(model, x_T=x_T, solver=LEARNED, schedule=ts, enable_grad=grad, a=c.a, b=c.b).x
        return (x.to(torch.float64) - y.to(torch.float64)).square().flatten(1).mean(1)

    def validation(ts: torch.Tensor, c: Coefficients) -> float:
        if not bool((ts[1:] < ts[:-1]).all()):
            return math.inf
        try:
            with torch.no_grad():
                value = float(errors(x_val, y_val, ts, c, grad=False).mean().sqrt())
        except NonFiniteError:
            return math.inf
        return value if math.isfinite(value) else math.inf

    def snapshot() -> Tuple[torch.Tensor, Dict[str, List[List[float]]]]:
        ts, c = current(grad=False)
        return ts.detach().clone(), c.to_options()

    start_options = c_start.to_options()
    with torch.no_grad():
        e_start = errors(x_cal, y_cal, start, c_start, grad=False)
    scale2 = max((o["huber_scale"] ** 2) * float(e_start.mean()), 1e-300)
    loss_fn = training_loss(o["loss"], o["cvar_alpha"], scale2)
    n, batch = x_cal.shape[0], min(o["batch_size"], x_cal.shape[0])
    count_params = sum(len(r) for r in u + v)

    def step(rows: torch.Tensor) -> Optional[float]:
        ts, c = current(grad=True)
        if not bool((ts.detach()[1:] < ts.detach()[:-1]).all()):
            return None  # round-off merged two times: the epoch ends, the best state stays
        try:
            loss = loss_fn(errors(x_cal[rows], y_cal[rows], ts, c, grad=True))
        except NonFiniteError:
            return None
        if not bool(torch.isfinite(loss)):
            return None
        penalty = o["reg"] * sum((r.square().sum() for r in u + v), torch.zeros((), dtype=torch.float64))
        optimizer.zero_grad()
        (loss + penalty / count_params).backward()
        optimizer.step()
        return float(loss.detach())

    def evaluate():
        state = snapshot()
        return validation(state[0], _as_coefficients(state[1])), state

    fit = fit_early_stopped(step, evaluate, (validation(start, c_start), (start.clone(), start_options)), n, batch,
                            o["epochs"], o["patience"], gen, x_cal.device)
    times, solver_options = fit.state
    return LearnedCoefficients(times, solver_options, fit.loss_start, fit.loss, fit.best_epoch, fit.train_history,
                               fit.validation_history, fit.iterations, model.nfe - nfe_before)


def _residuals(g: Grid, i: int, u: torch.Tensor, v: torch.Tensor, consistent: bool):
    """Step i's weight residuals (of the states, of the predictions) from the parameters u, v:
    scaled to natural units and, if `consistent`, projected (in parameter space) onto the
    residuals that keep the step exact for a point mass (D constant): sum_k a_k sigma_{i-k} =
    sigma_{i+1} and sum_k a_k alpha_{i-k} + sum_k b_k = alpha_{i+1}, which the initial solvers
    satisfy."""
    sigma_next, alpha_next = as_float(g.sigma[i + 1]), as_float(g.alpha[i + 1])
    scale_a = [sigma_next / as_float(g.sigma[i - k]) for k in range(len(u))]
    scale_b = [alpha_next * -math.expm1(-as_float(g.h(i)))] * len(v)
    scale = torch.tensor(scale_a + scale_b, dtype=torch.float64)
    theta = torch.cat([u, v])
    if consistent:
        rows = torch.tensor([[as_float(g.sigma[i - k]) for k in range(len(u))] + [0.0] * len(v),
                             [as_float(g.alpha[i - k]) for k in range(len(u))] + [1.0] * len(v)],
                            dtype=torch.float64) * scale
        rows = rows / rows.norm(dim=1, keepdim=True)
        theta = theta - torch.linalg.pinv(rows, rtol=1e-10) @ (rows @ theta)
    r = scale * theta
    return r[: len(u)], r[len(u):]


def _row(entries, size: int) -> torch.Tensor:
    """A weight row as a 1-D float64 tensor of `size` (zeros appended; a tensor's graph kept)."""
    values = [e if isinstance(e, torch.Tensor) else torch.tensor(e, dtype=torch.float64) for e in entries[:size]]
    values += [torch.zeros((), dtype=torch.float64)] * (size - len(values))
    return torch.stack(values)


def _as_coefficients(options: Mapping[str, List[List[float]]]) -> Coefficients:
    return Coefficients(options["a"], options["b"])


