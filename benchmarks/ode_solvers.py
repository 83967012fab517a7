"""Terminal error vs NFE of every fixed-step ODE solver and schedule on analytic mixtures.

    python benchmarks/ode_solvers.py [--sdes vp edm] [--samples 1000] [--out benchmarks/results]

Writes ode_solvers.json (every cell), ode_solvers.png (log-log error vs NFE, best schedule per
solver, one panel per problem) and prints a table at 5, 10, 20 and 50 NFE with the ranking at
10 NFE that picks the library's default solver and schedule.
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
from scoresde.bench import ode_error_table
from scoresde.data.problems import get_problem

NFES = [3, 4, 5, 6, 8, 10, 12, 15, 20, 30, 50, 70, 100]
SCHEDULES = ["uniform", "quadratic", "logsnr", "karras"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problems", nargs="+", default=["ring2d", "gmm16d"])
    p.add_argument("--sdes", nargs="+", default=["vp", "edm"], choices=list(sd.sde.SDES))
    p.add_argument("--samples", "--n", dest="n", type=int, default=1000, help="samples per cell")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--replot", action="store_true", help="redo table and plot from the existing JSON")
    args = p.parse_args()
    out = Path(args.out)
    if args.replot:
        results = json.loads((out / "ode_solvers.json").read_text())
        print_tables(results, rank_at(results, 10))
        plot(results, out / "ode_solvers.png")
        return

    solvers = [s for s in sd.solvers.available("ode") if not sd.solvers.get(s).adaptive]
    results = {"n": args.n, "seed": args.seed, "machine": platform.processor() or platform.machine(),
               "torch": torch.__version__, "problems": {}}
    start = time.time()
    for sde_name in args.sdes:
        sde = sd.sde.by_name(sde_name)
        for name in args.problems:
            mix = get_problem(name)
            model = mix.score_model(sde)
            gen = torch.Generator(device=args.device).manual_seed(args.seed)
            x_T = sde.prior_sample((args.n, *mix.event_shape), gen, dtype=torch.float64, device=args.device)
            ref = sd.solvers.reference_solve(model, x_T).x
            records = ode_error_table(model, x_T, solvers, SCHEDULES, NFES, reference=ref, progress=True)
            results["problems"][f"{name}/{sde_name}"] = records
    results["seconds"] = time.time() - start

    out.mkdir(parents=True, exist_ok=True)
    (out / "ode_solvers.json").write_text(json.dumps(results, indent=1))
    ranking = rank_at(results, 10)
    print_tables(results, ranking)
    plot(results, out / "ode_solvers.png")
    print(f"\nwrote {out / 'ode_solvers.json'} and {out / 'ode_solvers.png'} in {results['seconds']:.0f} s")


def rank_at(results: dict, budget: int):
    """(solver, schedule) pairs ordered by the geometric mean of RMSE at `budget` over all
    problem/SDE pairs."""
    scores = {}
    for records in results["problems"].values():
        for r in records:
            if r["budget"] == budget:
                scores.setdefault((r["solver"], r["schedule"]), []).append(math.log(r["rmse"]))
    full = {k: math.exp(sum(v) / len(v)) for k, v in scores.items() if len(v) == len(results["problems"])}
    return sorted(full.items(), key=lambda kv: kv[1])


def best_schedule(records, solver):
    """The schedule with the smallest RMSE at budget 10 (or the nearest budget it has)."""
    rows = [r for r in records if r["solver"] == solver]
    at = min({r["budget"] for r in rows}, key=lambda b: abs(b - 10))
    return min((r for r in rows if r["budget"] == at), key=lambda r: r["rmse"])["schedule"]


def print_tables(results: dict, ranking) -> None:
    for name, records in results["problems"].items():
        print(f"\n{name}: terminal RMSE vs reference, best schedule per solver")
        print(f"| solver | schedule | " + " | ".join(f"NFE {b}" for b in (5, 10, 20, 50)) + " |")
        print("|---|---|" + "---|" * 4)
        for solver in dict.fromkeys(r["solver"] for r in records):
            sch = best_schedule(records, solver)
            cells = {r["budget"]: r for r in records if r["solver"] == solver and r["schedule"] == sch}
            row = " | ".join(f"{cells[b]['rmse']:.2e}" if b in cells else "-" for b in (5, 10, 20, 50))
            print(f"| {solver} | {sch} | {row} |")
    problems = results["problems"]
    print(f"\ngeometric mean of RMSE over {', '.join(problems)}, schedule 'logsnr'")
    print("| solver | " + " | ".join(f"NFE {b}" for b in (5, 10, 20, 50)) + " |")
    print("|---|" + "---|" * 4)
    for solver in dict.fromkeys(r["solver"] for recs in problems.values() for r in recs):
        cells = []
        for b in (5, 10, 20, 50):
            errs = [r["rmse"] for recs in problems.values() for r in recs
                    if r["solver"] == solver and r["schedule"] == "logsnr" and r["budget"] == b]
            cells.append(f"{math.exp(sum(map(math.log, errs)) / len(errs)):.2e}" if len(errs) == len(problems) else "-")
        print(f"| {solver} | " + " | ".join(cells) + " |")
    print("\nranking at 10 NFE (geometric mean of RMSE over problem/SDE pairs):")
    for (solver, schedule), err in ranking[:8]:
        print(f"  {solver:14s} {schedule:10s} {err:.3e}")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = results["problems"]
    cols = min(len(problems), 2)
    rows_ = math.ceil(len(problems) / cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(6.5 * cols, 5 * rows_), squeeze=False)
    for ax, (name, records) in zip(axes.flat, problems.items()):
        colors = plt.get_cmap("tab20").colors
        for k, solver in enumerate(dict.fromkeys(r["solver"] for r in records)):
            sch = best_schedule(records, solver)
            rows = sorted((r for r in records if r["solver"] == solver and r["schedule"] == sch), key=lambda r: r["nfe"])
            ax.loglog([r["nfe"] for r in rows], [r["rmse"] for r in rows], "o-", ms=3, color=colors[k % 20],
                      label=f"{solver} ({sch})")
        ax.set(title=f"{name} (best schedule at 10 NFE per solver)", xlabel="NFE", ylabel="terminal RMSE vs reference")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
