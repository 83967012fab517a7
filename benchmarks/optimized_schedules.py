"""Optimized time grids against the best fixed schedule, on held-out noise.

    OMP_NUM_THREADS=1 python benchmarks/optimized_schedules.py \
        [--ckpt out/digits_quality/checkpoint.pt] [--out benchmarks/results]

For each problem, solver and NFE budget: `scoresde.tuning.optimize` tunes the grid on a
calibration batch of prior noise (seed + 1), then the optimized grid and each fixed schedule
(uniform, quadratic, logsnr, karras) sample a held-out batch (seed, as in the accuracy
benchmark) and are scored by terminal RMSE against the problem's reference solve from the same
noise. The ratio optimized / best fixed (the best chosen on the held-out batch itself, so the
comparison favours the fixed schedules) is the figure of merit; < 1 means the optimized grid wins.

Analytic mixtures use the float64 dopri8 reference at 1e-10; the trained digits model (a U-Net,
float32) uses the accuracy benchmark's float32 dopri5 reference at 1e-5 and a smaller setting.
Writes optimized_schedules.json after every cell (rerunning skips finished cells) and
optimized_schedules.png; prints a table of ratios.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

import scoresde as sd
from scoresde import schedules
from scoresde.bench import Problem, analytic_problem, digits_problem
from scoresde.tuning import optimize

ANALYTIC = ["ring2d/vp", "ring2d/edm", "gmm16d/vp", "gmm16d/edm"]
SOLVERS = ["ddim", "heun", "dpm++2m", "dpm++3m", "unipc", "ipndm", "deis"]
DIGITS_SOLVERS = ["dpm++2m", "unipc", "ipndm"]
NFES = [5, 10, 20]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problems", nargs="*", default=ANALYTIC, help="analytic problems (none: digits only)")
    p.add_argument("--solvers", nargs="+", default=SOLVERS)
    p.add_argument("--nfes", nargs="+", type=int, default=NFES)
    p.add_argument("--calibration", type=int, default=256, help="calibration batch (analytic problems)")
    p.add_argument("--heldout", type=int, default=1000, help="held-out batch (analytic problems)")
    p.add_argument("--ckpt", "--digits-ckpt", dest="ckpt", default=None,
                   help="a digits Trainer checkpoint: adds problem 'digits'")
    p.add_argument("--digits-solvers", nargs="+", default=DIGITS_SOLVERS)
    p.add_argument("--digits-calibration", type=int, default=64)
    p.add_argument("--digits-heldout", type=int, default=200)
    p.add_argument("--digits-max-evals", type=int, default=200, help="grids the search may try (digits)")
    p.add_argument("--knots", type=int, default=None, help="optimize's knots (default: one free time per step)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--replot", action="store_true", help="redo table and plot from the existing JSON")
    args = p.parse_args()
    path = Path(args.out) / "optimized_schedules.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(path.read_text()) if path.exists() else {}
    if not args.replot:
        results.setdefault("config", {k: v for k, v in vars(args).items() if k != "replot"})
        results.setdefault("machine", dict(processor=platform.processor() or platform.machine(),
                                           torch=torch.__version__, threads=torch.get_num_threads()))
        results.setdefault("cells", [])
        runs = [(name, args.solvers, args.calibration, args.heldout, None) for name in args.problems]
        if args.ckpt:
            runs.append(("digits", args.digits_solvers, args.digits_calibration, args.digits_heldout,
                         args.digits_max_evals))
        for name, solvers, calibration, heldout, max_evals in runs:
            problem = digits_problem(args.ckpt) if name == "digits" else analytic_problem(name)
            run_problem(problem, solvers, args.nfes, calibration, heldout, max_evals, args.knots, args.seed, results,
                        path)
    print(table(results))
    plot(results, path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png')}")


def _noise_and_reference(problem: Problem, n: int, seed: int):
    """Prior noise (n, *shape) in the sampling dtype and its reference terminal states (float64)."""
    sde = problem.model.sde
    dtype = problem.reference_dtype if problem.model is problem.reference_model else torch.float32
    x_T = sde.prior_sample((n, *problem.shape), torch.Generator().manual_seed(seed), dtype=dtype)
    ref = problem.reference(x_T)
    return x_T, ref.x.to(torch.float64), ref.nfe


def run_problem(problem: Problem, solvers, nfes, calibration, heldout, max_evals, knots, seed, results, path) -> None:
    done = {(c["problem"], c["solver"], c["nfe_budget"]) for c in results["cells"]}
    todo = [(s, b) for s in solvers for b in nfes if (problem.name, s, b) not in done]
    if not todo:
        return
    model, sde = problem.model, problem.model.sde
    x_test, ref_test, _ = _noise_and_reference(problem, heldout, seed)
    x_cal, ref_cal, ref_cal_nfe = _noise_and_reference(problem, calibration, seed + 1)

    def rmse(solver, schedule) -> float:
        x = sd.sample(model, x_T=x_test, solver=solver, steps=None, schedule=schedule, t_end=problem.t_end).x
        return float((x.to(torch.float64) - ref_test).square().mean().sqrt())

    for solver, budget in todo:
        info = sd.solvers.get(solver)
        if info.nfe(1) > budget:
            continue  # not even one step fits
        steps = info.steps_for_nfe(budget)
        start = time.perf_counter()
        opt = optimize(model, sde, solver, budget, x_T=x_cal, reference=ref_cal,
                        t_end=problem.t_end, max_evals=max_evals, knots=knots)
        seconds = time.perf_counter() - start
        fixed = {name: rmse(solver, schedules.get_schedule(name, sde, steps, problem.t_end))
                 for name in schedules.SCHEDULES}
        best = min(fixed, key=fixed.get)
        optimized = rmse(solver, opt)
        cell = dict(problem=problem.name, solver=solver, nfe_budget=budget, steps=steps,
                    nfe=info.nfe(steps), fixed=fixed, best_fixed=best,
                    optimized=optimized, ratio=optimized / fixed[best], start=opt.start,
                    calibration_loss_start=opt.loss_start, calibration_loss=opt.loss, grids_tried=len(opt.loss_history),
                    cost_nfe=opt.cost_nfe + ref_cal_nfe, calibration=calibration, heldout=heldout,
                    seconds=seconds, times=opt.times.tolist())
        results["cells"].append(cell)
        print(f"{problem.name:11s} {solver:9s} NFE {cell['nfe']:3d}: best fixed {best:9s} {fixed[best]:.3e}, "
              f"optimized {optimized:.3e}, ratio {cell['ratio']:.3f} (cost {cell['cost_nfe']} NFE, {seconds:.0f} s)",
              flush=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(path)


def table(results: dict) -> str:
    """Ratio optimized / best fixed per (problem, solver) and budget, and its geometric mean
    over solvers per problem and over everything."""
    cells = results["cells"]
    budgets = sorted({c["nfe_budget"] for c in cells})
    lines = ["| problem | solver | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
             "|---|---|" + "---|" * len(budgets)]
    problems = list(dict.fromkeys(c["problem"] for c in cells))
    for name in problems:
        for solver in dict.fromkeys(c["solver"] for c in cells if c["problem"] == name):
            row = [_ratio([c for c in cells if c["problem"] == name and c["solver"] == solver and c["nfe_budget"] == b])
                   for b in budgets]
            lines.append(f"| {name} | {solver} | " + " | ".join(row) + " |")
    for name in problems + ["all"]:
        row = [_ratio([c for c in cells if c["nfe_budget"] == b and name in ("all", c["problem"])]) for b in budgets]
        lines.append(f"| **{name}** | geometric mean | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _ratio(cells) -> str:
    if not cells:
        return "-"
    mean = math.exp(sum(math.log(c["ratio"]) for c in cells) / len(cells))
    wins = sum(c["ratio"] < 1 for c in cells)
    return f"{mean:.2f}" if len(cells) == 1 else f"{mean:.2f} ({wins}/{len(cells)} < 1)"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = results["cells"]
    problems = list(dict.fromkeys(c["problem"] for c in cells))
    fig, axes = plt.subplots(1, len(problems), figsize=(3.6 * len(problems), 3.6), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], problems):
        for solver in dict.fromkeys(c["solver"] for c in cells if c["problem"] == name):
            pts = sorted((c["nfe_budget"], c["ratio"]) for c in cells if c["problem"] == name and c["solver"] == solver)
            ax.semilogy(*zip(*pts), "o-", ms=3, lw=1, label=solver)
        ax.axhline(1.0, color="grey", lw=1)
        ax.set(title=name, xlabel="NFE budget (heun: one less)", xticks=sorted({c["nfe_budget"] for c in cells}))
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("held-out RMSE: optimized / best fixed")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
