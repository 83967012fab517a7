"""Distributional error vs NFE of every reverse-SDE sampler, next to the two-sample floor, and
the wall time per step of native Euler-Maruyama against torchsde's euler.

    OMP_NUM_THREADS=1 python benchmarks/sde_solvers.py [--samples 2000] [--out benchmarks/results]

Writes sde_solvers_<problem>.json and prints a Markdown table (sliced W2 to exact samples under VP).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import scoresde as sd
from scoresde import metrics
from scoresde.data.problems import get_problem

NFES = [10, 20, 50, 100, 200]
OPTIONS = {"pc": dict(per_sample_step=False)}  # 2-D: see README on the per-sample Langevin step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problem", default="ring2d")
    p.add_argument("--samples", "--n", dest="n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()

    mix, sde = get_problem(args.problem), sd.VPSDE()
    model = mix.score_model(sde)
    exact = mix.sample(args.n, torch.Generator().manual_seed(args.seed + 1), dtype=torch.float64)
    floor = metrics.two_sample_floor(metrics.sliced_wasserstein, lambda n, g: mix.sample(n, g, dtype=torch.float64),
                                     args.n, repeats=10, generator=torch.Generator().manual_seed(args.seed + 2))
    records = []
    for solver in sd.solvers.available("sde"):
        info = sd.solvers.get(solver)
        for budget in NFES:
            options = dict(OPTIONS.get(solver, {}))
            if info.adaptive:  # tolerance sweep instead of steps
                options.update(rtol=0.5 / budget, atol=0.05 / budget)
                steps = None
            elif info.nfe(1, options) > budget:
                continue  # not even one step fits
            else:
                steps = info.steps_for_nfe(budget, options)
            out = sd.sample(model, shape=(args.n, *mix.event_shape), solver=solver, steps=steps, dtype=torch.float64,
                            generator=torch.Generator().manual_seed(args.seed), **options)
            if not info.adaptive and out.nfe > budget:
                continue
            records.append(dict(solver=solver, budget=budget, nfe=out.nfe, seconds=out.seconds,
                                sliced_w2=float(metrics.sliced_wasserstein(out.x, exact))))

    # wall time per step on the same problem: native Euler-Maruyama vs torchsde's euler
    timing = {}
    x_T = sde.prior_sample((args.n, *mix.event_shape), torch.Generator().manual_seed(0), dtype=torch.float32)
    native = sd.solvers.get("euler-maruyama").name
    for solver in (native, "torchsde"):
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            sd.sample(model, x_T=x_T, solver=solver, steps=200, schedule="uniform", generator=torch.Generator().manual_seed(0))
            best = min(best, time.perf_counter() - start)
        timing[solver] = best / 200
    start = time.perf_counter()
    for _ in range(200):
        model.x0(x_T, 0.5)
    timing["one_network_evaluation"] = (time.perf_counter() - start) / 200

    results = dict(problem=args.problem, sde="vp", n=args.n, floor_mean=float(floor.mean), floor_std=float(floor.std),
                   records=records, seconds_per_step=timing, torch_threads=torch.get_num_threads())
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"sde_solvers_{args.problem}.json").write_text(json.dumps(results, indent=1))
    print(f"{args.problem} / VP, sliced W2 to {args.n} exact samples; two-sample floor "
          f"{results['floor_mean']:.4f} +- {results['floor_std']:.4f}")
    print("| solver | " + " | ".join(f"NFE {b}" for b in NFES) + " |")
    print("|---|" + "---|" * len(NFES))
    for solver in dict.fromkeys(r["solver"] for r in records):
        cells = {r["budget"]: r for r in records if r["solver"] == solver}
        row = " | ".join(f"{cells[b]['sliced_w2']:.4f}" + (f" ({cells[b]['nfe']})" if sd.solvers.get(solver).adaptive else "")
                         if b in cells else "-" for b in NFES)
        print(f"| {solver} | {row} |")
    print(f"\nseconds per step (batch {args.n}, float32, 200 uniform steps, best of 3): "
          + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in timing.items()))
    print(f"torchsde euler / native Euler-Maruyama: {timing['torchsde'] / timing[native]:.2f}x")


if __name__ == "__main__":
    main()
