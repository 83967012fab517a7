"""The `scoresde` command line: `scoresde sample`, `scoresde sdes`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

import torch

from . import sde as sdes

__all__ = ["main", "make_sde", "SDE_NAMES"]

SDE_NAMES = {"vp": sdes.VPSDE, "cosine": sdes.CosineVPSDE, "subvp": sdes.SubVPSDE, "ve": sdes.VESDE, "edm": sdes.EDMSDE}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def make_sde(name: str) -> sdes.AffineSDE:
    if name not in SDE_NAMES:
        raise SystemExit(f"--sde {name!r} is not valid; choose one of: {', '.join(SDE_NAMES)}")
    return SDE_NAMES[name]()


def _cmd_sdes(args: argparse.Namespace) -> None:
    for name in args.sde or list(SDE_NAMES):
        sde = make_sde(name)
        print(f"{name}: {sde!r}  T={sde.T:g}  t_eps={sde.t_eps:g}  prior_std={sde.prior_std:g}")
        print(f"  {'t':>10} {'alpha':>10} {'sigma':>10} {'log_snr':>10} {'f':>10} {'g2':>10}")
        grid = torch.linspace(sde.t_eps, sde.T, args.rows, dtype=torch.float64)
        rows = zip(grid, sde.alpha(grid), sde.sigma(grid), sde.log_snr(grid), sde.f(grid), sde.g2(grid))
        for row in rows:
            print("  " + " ".join(f"{float(v):10.4g}" for v in row))


def _cmd_sample(args: argparse.Namespace) -> None:
    from . import metrics
    from .data.problems import get_problem
    from .solvers import sample

    dtype = DTYPES[args.dtype]
    sde = make_sde(args.sde)
    truth = get_problem(args.problem)
    model = truth.score_model(sde, prediction=args.prediction)
    options = json.loads(args.options) if args.options else {}
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    out = sample(model, shape=(args.n, *truth.event_shape), solver=args.solver, steps=args.steps,
                 schedule=args.schedule, denoise=args.denoise, generator=gen, dtype=dtype, device=args.device,
                 progress=args.progress, **options)
    exact = truth.sample(args.n, torch.Generator(device=args.device).manual_seed(args.seed + 1),
                         dtype=torch.float64, device=args.device)
    sw = float(metrics.sliced_wasserstein(out.x.double(), exact))
    floor = metrics.two_sample_floor(metrics.sliced_wasserstein,
                                     lambda n, g: truth.sample(n, g, dtype=torch.float64, device=args.device),
                                     args.n, repeats=5, generator=torch.Generator(device=args.device).manual_seed(args.seed + 2))
    print(f"{args.problem} | {args.sde} | {args.solver} | steps={args.steps} schedule={args.schedule or 'default'}: "
          f"nfe={out.nfe}, {out.seconds:.3f} s, sliced W2 to exact samples {sw:.4f} "
          f"(two-sample floor {float(floor.mean):.4f} +- {float(floor.std):.4f})")
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{args.problem}_{args.sde}_{args.solver}_{args.steps}"
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    torch.save({"x": out.x.cpu(), "nfe": out.nfe, "times": out.times, "args": settings}, folder / f"{stem}.pt")
    _plot(out.x.double().cpu(), exact.cpu(), folder / f"{stem}.png", f"{args.solver}, {out.nfe} NFE, {args.sde}")
    print(f"wrote {folder / (stem + '.pt')} and {folder / (stem + '.png')}")


def _plot(x: torch.Tensor, exact: torch.Tensor, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, exact = x.reshape(len(x), -1), exact.reshape(len(exact), -1)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharex=True, sharey=x.shape[1] > 1)
    for ax, data, name in ((axes[0], exact, "exact samples"), (axes[1], x, title)):
        if x.shape[1] == 1:
            ax.hist(data[:, 0].numpy(), bins=80, density=True)
        else:
            ax.scatter(data[:, 0].numpy(), data[:, 1].numpy(), s=2, alpha=0.5)
            ax.set_aspect("equal", adjustable="box")
        ax.set_title(name + ("" if x.shape[1] <= 2 else " (first 2 coordinates)"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    from .data.problems import PROBLEMS
    from .model import PREDICTIONS
    from .schedules import SCHEDULES
    from .solvers import DEFAULT_SOLVER, DEFAULT_STEPS, available

    parser = argparse.ArgumentParser(prog="scoresde", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="sample an analytic problem with any solver; save .pt and a PNG")
    p.add_argument("--problem", default="ring2d", choices=list(PROBLEMS))
    p.add_argument("--sde", default="vp", choices=list(SDE_NAMES))
    p.add_argument("--prediction", default="eps", choices=list(PREDICTIONS), help="parameterization of the oracle")
    p.add_argument("--solver", default=DEFAULT_SOLVER, choices=available())
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--schedule", default=None, choices=list(SCHEDULES), help="default: the SDE's default")
    p.add_argument("--options", default=None, help='solver options as JSON, e.g. \'{"order": 3}\'')
    p.add_argument("--denoise", action="store_true", help="finish with a Tweedie denoising step (+1 NFE)")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--progress", action="store_true")
    p.add_argument("--out", default="out")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("sdes", help="print alpha, sigma, log-SNR, f and g^2 of each forward SDE")
    p.add_argument("--sde", action="append", choices=list(SDE_NAMES), help="repeatable; default all")
    p.add_argument("--rows", type=int, default=6)
    p.set_defaults(func=_cmd_sdes)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ValueError as err:  # bad input: one clear line, no traceback
        print(f"scoresde: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
