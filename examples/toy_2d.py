"""Every solver at 10 NFE on a trained 2-D model, in one figure.

An MLP is trained on a 2-D toy set (default: the Swiss roll, whose thin arms show blur at
once), then every solver in the registry draws samples from the same starting noise with a
budget of 10 network evaluations: `SolverInfo.steps_for_nfe(10)` turns the budget into steps
(a 2-evaluation Heun step gets 5 steps; so does predictor-corrector, whose corrector costs an
evaluation too). Adaptive solvers choose their own steps: they run at a loose tolerance and
report what they spent. Each panel's title gives the counted NFE and the sliced W2 distance to
exact samples, next to the two-sample floor (a perfect sampler scores there).

What to look for (full run on the Swiss roll; examples/README.md has the numbers): at 10 NFE
the multistep exponential integrators of the probability-flow ODE (dpm++2m, unipc, ipndm) and
the midpoint rule draw the roll as sharply as the adaptive ODE solvers do with 30-45 NFE. Most
reverse-SDE samplers still look blurred: their injected noise needs many small steps to average
out (dpm++2m_sde and Euler-Maruyama are the exceptions). Three fail outright at this budget, each
for a reason worth knowing: EDM's churn (S_churn = 40 spread over 5 steps adds far too much
noise), torchsde's Euler (a uniform grid in t, and noise added on the last step too, where the
native samplers return the step's mean) and single-step high-order methods with 3-5 steps
(dpm-solver-2/3). `ancestral` and `sde-dpm-solver-1` coincide, as they should.

    python examples/toy_2d.py [--quick] [--out DIR] [--data swissroll] [--nfe 10]
"""
from __future__ import annotations

import math

import torch

import scoresde as sd
from scoresde.solvers.dpm_v3 import model_statistics
from _common import parse_args, pyplot, save_figure, scatter, toy_floor, train_toy_model, write_table

OPTIONS = {
    "pc": dict(per_sample_step=False),  # the batch-averaged Langevin step: stable in 2-D (README)
    # adaptive solvers: a loose tolerance, so that they spend a few tens of evaluations
    "torchdiffeq": dict(rtol=1e-2, atol=1e-2),
    "scipy": dict(rtol=1e-2, atol=1e-2),
    "adaptive_sde": dict(rtol=0.2, atol=0.05),
}


def main(argv=None) -> None:
    def options(p):
        p.add_argument("--data", default="swissroll", choices=[k for k in sd.data.TOYS if k != "bimodal1d"])
        p.add_argument("--nfe", type=int, default=10, help="the evaluation budget of every fixed-step solver")

    args = parse_args("toy_2d", __doc__, options, argv)
    n, train_steps = (500, 300) if args.quick else (2000, 6000)
    model = train_toy_model(args.data, train_steps, seed=args.seed)
    exact = sd.data.sample_toy(args.data, n, torch.Generator().manual_seed(args.seed + 1))
    floor = toy_floor(args.data, n, args.seed)
    x_T = sd.VPSDE().prior_sample((n, 2), generator=torch.Generator().manual_seed(args.seed))
    # dpm-solver-v3 needs the model's statistics, computed on data samples (here fresh toy draws)
    data = sd.data.sample_toy(args.data, 512, torch.Generator().manual_seed(args.seed + 2))
    OPTIONS["dpm-solver-v3"] = dict(statistics=model_statistics(model, data, steps=64,
                                                                generator=torch.Generator().manual_seed(args.seed)))

    rows, samples = [], {}
    for solver in sd.solvers.available():
        info = sd.solvers.get(solver)
        adaptive = info.evals_per_step == "adaptive"
        steps = None if adaptive else info.steps_for_nfe(args.nfe)
        res = sd.sample(model, x_T=x_T, solver=solver, steps=steps, generator=torch.Generator().manual_seed(args.seed),
                        **OPTIONS.get(solver, {}))
        samples[solver] = res.x
        rows.append({"solver": solver, "kind": info.kind, "steps": "adaptive" if adaptive else steps, "NFE": res.nfe,
                     "seconds": round(res.seconds, 3), "sliced W2": float(sd.metrics.sliced_wasserstein(res.x, exact)),
                     "floor": f"{float(floor.mean):.4f} +- {float(floor.std):.4f}"})
    write_table(args.out, "table", rows, intro=(
        f"{args.data}: {n} samples per solver from the same noise, budget {args.nfe} NFE (adaptive solvers: their "
        f"own), MLP trained {train_steps} steps; sliced W2 to {n} exact samples, floor between two exact sets."))

    plt = pyplot()
    cols = 5
    panels = len(rows) + 1
    fig, axes = plt.subplots(math.ceil(panels / cols), cols, figsize=(2.4 * cols, 2.6 * math.ceil(panels / cols)))
    axes = axes.ravel()
    scatter(axes[0], exact, f"exact data\nfloor {float(floor.mean):.3f}")
    for ax, row in zip(axes[1:], rows):
        kind = "ODE" if row["kind"] == "ode" else "SDE"
        scatter(ax, samples[row["solver"]], f"{row['solver']} ({kind})\nNFE {row['NFE']}, SW2 {row['sliced W2']:.3f}")
    for ax in axes[panels:]:
        ax.axis("off")
    fig.suptitle(f"{args.data}: every solver at {args.nfe} NFE (SW2: sliced W2 to exact samples)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, args.out / "toy_2d.png", dpi=80)


if __name__ == "__main__":
    main()
