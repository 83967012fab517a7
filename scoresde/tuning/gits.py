"""GITS: a time grid chosen by dynamic programming over a fine candidate grid, with the cost
of each step measured on teacher trajectories (Chen et al., ICML 2024, "On the Trajectory
Regularity of ODE-based Diffusion Sampling", Sec. 5).

The cost of a step from candidate time t_i down to t_j is the mean squared error between
one first-order step (DDIM in data prediction) from the teacher's state at t_i and the
teacher's state at t_j: one model evaluation per t_i serves every t_j. The path from T to
t_end with exactly `steps` steps minimizing the weighted sum of its step costs, the k-th step
(from T) weighted by coeff^k as in the paper's recursion, is then the grid of any solver.
The step costs are those of a one-step, first-order method: the grid fits a multistep solver
only as far as its error follows DDIM's.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch

from .. import _checks
from ..model import ScoreModel
from ..schedules import SCHEDULES
from ..solvers import Grid, get, sample
from ..solvers.exponential import ddim_update

__all__ = ["shortest_path", "path_cost", "step_costs", "candidate_grid", "COST_SOLVERS", "METRICS"]

#: how one step's error is scored: mean squared error over the batch and coordinates, or
#: the mean over the batch of each sample's L2 error (the paper's "l2")
METRICS = ("mse", "l2")


def _single_step_ode_solvers() -> List[str]:
    """Solvers whose one step over [t_i, t_j] is their own method (the cost_solver choices):
    fixed-step ODE solvers with no history and no special last step (heun's is Euler)."""
    from ..solvers import available

    return [s for s in available("ode") if not get(s).adaptive and "history" not in get(s).options
            and get(s).extra_evals == 0]


COST_SOLVERS = tuple(["ddim"] + [s for s in _single_step_ode_solvers() if s != "ddim"])


def candidate_grid(sde, candidates: int, t_end: float, schedule: str = "logsnr") -> torch.Tensor:
    """`candidates` descending times from T to t_end, spaced as the named `schedule`."""
    _checks.choice("candidate_schedule", schedule, SCHEDULES)
    return SCHEDULES[schedule](sde, candidates - 1, t_end)


def step_costs(model: ScoreModel, states: torch.Tensor, times: torch.Tensor, metric: str = "mse",
               cost_solver: str = "ddim", solver_options: Optional[dict] = None) -> torch.Tensor:
    """(M, M) float64 costs, entry [i, j] (i < j) the error of one `cost_solver` step from the
    teacher's state at times[i] to times[j] against the teacher's state there; inf for j <= i.
    states: (M, B, *data_shape) teacher states at the M times. "ddim" spends M - 1 batched
    evaluations; any other (single-step) cost solver one solve per pair."""
    metric = _checks.choice("metric", metric, METRICS)
    cost_solver = get(_checks.choice("cost_solver", cost_solver, COST_SOLVERS)).name
    m = len(times)
    cost = torch.full((m, m), float("inf"), dtype=torch.float64)
    g = Grid.of(model.sde, times) if cost_solver == "ddim" else None
    for i in range(m - 1):
        x = states[i]
        if g is not None:
            x0_pred = model.x0(x, times[i].to(x.device, x.dtype))
        for j in range(i + 1, m):
            if g is not None:
                pair = Grid(g.sde, [g.t[i], g.t[j]], [g.alpha[i], g.alpha[j]], [g.sigma[i], g.sigma[j]],
                            [g.lam[i], g.lam[j]], [g.sigma_hat[i], g.sigma_hat[j]])
                x_next = ddim_update(pair, 0, x, x0_pred)
            else:
                x_next = sample(model, x_T=x, solver=cost_solver, schedule=times[[i, j]],
                                **(solver_options or {})).x
            err = (x_next - states[j]).to(torch.float64).reshape(x.shape[0], -1)
            cost[i, j] = err.square().mean() if metric == "mse" else err.norm(dim=1).mean()
    return cost


def shortest_path(cost: torch.Tensor | np.ndarray, steps: int, coeff: float = 1.0) -> List[int]:
    """The indices 0 = p_0 < p_1 < ... < p_steps = M - 1 minimizing
    sum_k coeff^k cost[p_k, p_{k+1}] over paths of exactly `steps` steps through the (M, M)
    `cost` (only i < j entries are read). Dynamic programming backwards from the end:
    V_1(i) = cost[i, M-1], V_k(i) = min_{j > i} cost[i, j] + coeff V_{k-1}(j); ties go to the
    smallest j. O(steps M^2)."""
    c = np.asarray(cost.detach().cpu() if isinstance(cost, torch.Tensor) else cost, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] < 2:
        raise _checks.fail("cost", "a square (M, M) matrix with M >= 2", tuple(c.shape))
    m = c.shape[0]
    steps = _checks.integer("steps", steps, low=1, high=m - 1)
    coeff = _checks.real("coeff", coeff, low=0, open_low=True)
    upper = np.triu(np.ones((m, m), dtype=bool), 1)
    c = np.where(upper, c, np.inf)
    value = np.full(m, np.inf)
    value[: m - 1] = c[: m - 1, m - 1]  # V_1
    choices = []
    for _ in range(2, steps + 1):
        total = c[:, :] + coeff * value[None, :]  # [i, j]: step i -> j, then V_{k-1}(j)
        total[:, m - 1] = np.inf  # an intermediate point is never the end
        best = np.argmin(total, axis=1)
        choices.append(best)
        value = total[np.arange(m), best]
    if not np.isfinite(value[0]):
        raise ValueError(f"no finite path of {steps} steps through the cost matrix")
    path, i = [0], 0
    for best in reversed(choices):
        i = int(best[i])
        path.append(i)
    path.append(m - 1)
    return path


def path_cost(cost, path: Sequence[int], coeff: float = 1.0) -> float:
    """sum_k coeff^k cost[path[k], path[k+1]]: what `shortest_path` minimizes."""
    c = np.asarray(cost.detach().cpu() if isinstance(cost, torch.Tensor) else cost, dtype=np.float64)
    return float(sum(coeff**k * c[a, b] for k, (a, b) in enumerate(zip(path[:-1], path[1:]))))
