"""Terminal error of ODE samplers against a tight reference solve from the same noise."""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional

import torch

from ..model import ScoreModel
from ..solvers import get, reference_solve, sample

__all__ = ["ode_error_table"]


def ode_error_table(
    model: ScoreModel,
    x_T: torch.Tensor,
    solvers: Iterable[str],
    schedules: Iterable[str],
    nfes: Iterable[int],
    reference: Optional[torch.Tensor] = None,
    progress: bool = False,
) -> List[Dict]:
    """One record per (solver, schedule, NFE budget): the step count chosen for the budget, the
    NFE actually counted, the terminal RMSE against `reference` (default: `reference_solve`
    from x_T) and the wall time. Each budget runs the most steps that fit
    (`SolverInfo.steps_for_nfe`); budgets below a solver's cost per step are skipped."""
    if reference is None:
        reference = reference_solve(model, x_T).x
    cells = [(s, sch, n) for s in solvers for sch in schedules for n in nfes]
    if progress:
        from tqdm.auto import tqdm

        cells = tqdm(cells, desc="cells")
    records = []
    for solver, schedule, budget in cells:
        info = get(solver)
        if info.nfe(1) > budget:
            continue
        steps = info.steps_for_nfe(budget)
        out = sample(model, x_T=x_T, solver=solver, steps=steps, schedule=schedule)
        if out.nfe > budget:
            continue
        rmse = float(((out.x - reference) ** 2).mean().sqrt())
        records.append(dict(solver=solver, schedule=schedule, budget=budget, steps=steps, nfe=out.nfe,
                            rmse=rmse, seconds=out.seconds))
    return records
