"""The `scoresde` command line: `scoresde sample`, `scoresde sdes`, `scoresde nll`, `scoresde bench`,
`scoresde schedule optimize`."""
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
    from .solvers import DEFAULT_SOLVER, sample

    dtype = DTYPES[args.dtype]
    sde = make_sde(args.sde)
    truth = get_problem(args.problem)
    model = truth.score_model(sde, prediction=args.prediction)
    options = json.loads(args.options) if args.options else {}
    schedule = args.schedule
    if args.schedule_file is not None:
        from .schedules import OptimizedSchedule

        schedule = OptimizedSchedule.load(args.schedule_file)
        args.solver, args.steps = args.solver or schedule.solver, schedule.steps
    args.solver = args.solver or DEFAULT_SOLVER
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    out = sample(model, shape=(args.n, *truth.event_shape), solver=args.solver, steps=args.steps,
                 schedule=schedule, denoise=args.denoise, generator=gen, dtype=dtype, device=args.device,
                 progress=args.progress, **options)
    exact = truth.sample(args.n, torch.Generator(device=args.device).manual_seed(args.seed + 1),
                         dtype=torch.float64, device=args.device)
    sw = float(metrics.sliced_wasserstein(out.x.double(), exact))
    floor = metrics.two_sample_floor(metrics.sliced_wasserstein,
                                     lambda n, g: truth.sample(n, g, dtype=torch.float64, device=args.device),
                                     args.n, repeats=5, generator=torch.Generator(device=args.device).manual_seed(args.seed + 2))
    schedule_name = args.schedule_file or args.schedule or "default"
    print(f"{args.problem} | {args.sde} | {args.solver} | steps={args.steps} schedule={schedule_name}: "
          f"nfe={out.nfe}, {out.seconds:.3f} s, sliced W2 to exact samples {sw:.4f} "
          f"(two-sample floor {float(floor.mean):.4f} +- {float(floor.std):.4f})")
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{args.problem}_{args.sde}_{args.solver}_{args.steps}"
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    torch.save({"x": out.x.cpu(), "nfe": out.nfe, "times": out.times, "args": settings}, folder / f"{stem}.pt")
    _plot(out.x.double().cpu(), exact.cpu(), folder / f"{stem}.png", f"{args.solver}, {out.nfe} NFE, {args.sde}")
    print(f"wrote {folder / (stem + '.pt')} and {folder / (stem + '.png')}")


def _cmd_nll(args: argparse.Namespace) -> None:
    """Negative log-likelihood through the probability-flow ODE: bits/dim of a trained digits
    model (--ckpt), or exact vs ODE nll on an analytic problem (--problem)."""
    import math

    from .likelihood import bits_per_dim, log_likelihood

    dtype = DTYPES[args.dtype]
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    options = dict(trace=args.trace, probes=args.probes, method=args.method, rtol=args.rtol, atol=args.atol)
    if args.ckpt is not None:
        from .data.digits import load_digits
        from .training import _build_model, load_checkpoint

        try:
            state = load_checkpoint(args.ckpt)
        except FileNotFoundError as err:
            raise ValueError(str(err)) from err
        model = _build_model(state["config"]["model"])
        model.load_state_dict(state[args.weights])
        model.to(device=args.device, dtype=dtype).eval()
        x, _ = load_digits(args.split, dtype=dtype, device=args.device)
        x = x[: args.n]
        # digits: grey levels 0..16 scaled by k/8 - 1, so 17 levels (bins of width 1/8)
        out = bits_per_dim(model, x, levels=17, draws=args.draws, generator=gen, dtype=dtype, **options)
        print(f"digits ({args.split}, n={x.shape[0]}) | {args.ckpt} ({args.weights} weights, step {int(state['step'])}) | "
              f"trace={args.trace} rtol={args.rtol:g} atol={args.atol:g} draws={args.draws}: "
              f"{out.mean:.4f} +- {out.half_width:.4f} bits/dim (95% CI), {out.nfe} NFE")
        return
    from .data.problems import get_problem

    sde = make_sde(args.sde)
    truth = get_problem(args.problem)
    model = truth.score_model(sde)
    x = truth.sample(args.n, gen, dtype=dtype, device=args.device)
    res = log_likelihood(model, x, generator=gen, **options)
    exact = truth.log_prob_t(x, sde.t_eps, sde)
    diff = (res.logp - exact).double()
    half = 1.96 * float(diff.std()) / math.sqrt(args.n) if args.n > 1 else 0.0
    print(f"{args.problem} | {args.sde} | n={args.n} trace={args.trace} rtol={args.rtol:g} atol={args.atol:g}: "
          f"nll exact {float(-exact.mean()):.5f}, ODE {float(-res.logp.mean()):.5f} nats "
          f"(difference {float(-diff.mean()):+.2e} +- {half:.1e}, max |diff| {float(diff.abs().max()):.2e}; "
          f"of log p_{{t_eps}} with t_eps={sde.t_eps:g}), {res.nfe} NFE")


def _cmd_bench(args: argparse.Namespace) -> None:
    """Accuracy against NFE (scoresde.bench.accuracy); under torchrun the batch is sharded."""
    import os

    from .bench import accuracy

    dist = torch.distributed
    started = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    if started:
        if torch.device(args.device).type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            args.device = f"cuda:{torch.cuda.current_device()}"
        dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
    try:
        _bench(args, accuracy)
    finally:
        if started:  # a live gloo group at interpreter exit aborts the process
            dist.destroy_process_group()


def _bench(args: argparse.Namespace, accuracy) -> None:
    quick = accuracy.QUICK if args.quick else {}
    if quick and not args.problems:
        names = list(quick["problems"])
    else:
        names = [p if "/" in p or p == "digits" else f"{p}/{s}"
                 for p in args.problems or accuracy.ANALYTIC for s in args.sdes or accuracy.BENCH_SDES]
    if args.digits_ckpt and not args.problems:
        names.append("digits")
    results = accuracy.run_benchmark(
        problems=list(dict.fromkeys(names)), solvers=args.solvers or quick.get("solvers"), nfes=args.nfe or quick.get("nfes", accuracy.DEFAULT_NFES),
        metrics=args.metrics or accuracy.METRICS, n=args.samples or quick.get("n", 1000), seed=args.seed, device=args.device,
        dtype=DTYPES[args.dtype], schedule=args.schedule, tolerances=args.tolerances or quick.get("tolerances", 4),
        out=args.out, resume=args.resume, progress=not args.no_progress, digits_checkpoint=args.digits_ckpt,
        optimize=args.optimize, calibration=args.calibration,
    )
    if results is not None:
        print(accuracy.markdown(results))
        print(f"wrote {Path(args.out) / 'accuracy_vs_nfe'}.{{json,csv,md,png}} in {results['seconds']:.0f} s")


def _cmd_schedule(args: argparse.Namespace) -> None:
    """Tune a time grid to an analytic problem, solver and NFE budget (scoresde.schedules.optimize)."""
    from .data.problems import get_problem
    from .schedules import optimize

    sde = make_sde(args.sde)
    truth = get_problem(args.problem)
    model = truth.score_model(sde)
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    result = optimize(model, sde, args.solver, args.nfe, calibration=args.calibration, shape=truth.event_shape,
                      generator=gen, max_evals=args.max_evals, device=args.device)
    result.save(args.out)
    print(f"{args.problem} | {args.sde} | {args.solver} | nfe={args.nfe} ({result.steps} steps): calibration RMSE "
          f"{result.loss_start:.3e} ({result.start}) -> {result.loss:.3e} (optimized), "
          f"{len(result.loss_history)} grids tried, cost {result.cost_nfe} NFE on a batch of {result.calibration}")
    print("times: " + ", ".join(f"{t:.6g}" for t in result.times.tolist()))
    print(f"wrote {args.out}; use it with: scoresde sample --problem {args.problem} --sde {args.sde} "
          f"--schedule-file {args.out}")


def _plot(x: torch.Tensor, exact: torch.Tensor, path: Path, title: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("scoresde sample draws its PNG with matplotlib: pip install 'scoresde[plot]'") from None
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
    p.add_argument("--solver", default=None, choices=available(),
                   help=f"default: the --schedule-file's solver, else {DEFAULT_SOLVER}")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--schedule", default=None, choices=list(SCHEDULES), help="default: the SDE's default")
    p.add_argument("--schedule-file", default=None,
                   help="a JSON file from `scoresde schedule optimize` (sets the steps; same --sde and solver)")
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

    p = sub.add_parser("nll", help="negative log-likelihood through the probability-flow ODE (bits/dim or nats)")
    p.add_argument("--ckpt", default=None, help="a Trainer checkpoint: report bits/dim on --data")
    p.add_argument("--data", default="digits", choices=["digits"])
    p.add_argument("--split", default="test", choices=["train", "test", "all"])
    p.add_argument("--weights", default="ema", choices=["ema", "model"])
    p.add_argument("--draws", type=int, default=1, help="dequantization draws per image")
    p.add_argument("--problem", default="ring2d", choices=list(PROBLEMS), help="analytic problem (without --ckpt)")
    p.add_argument("--sde", default="vp", choices=list(SDE_NAMES))
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--trace", default="exact", choices=["exact", "hutchinson"])
    p.add_argument("--probes", type=int, default=1)
    p.add_argument("--method", default="dopri5")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float64", choices=list(DTYPES))
    p.set_defaults(func=_cmd_nll)

    p = sub.add_parser("bench", help="accuracy against NFE of any solvers on problems with exact answers")
    p.add_argument("--quick", action="store_true", help="two problems, 11 solvers, NFE 5-50, n=1000 (about a minute)")
    p.add_argument("--problems", nargs="+", default=None,
                   help="mixtures (ring2d gmm16d gmm64d bimodal1d, each under every --sdes), 'ring2d/vp'-style pairs, "
                        "or digits (with --digits-ckpt); default: the four mixtures")
    p.add_argument("--sdes", nargs="+", default=None, choices=["vp", "ve", "edm"], help="default: vp ve edm")
    p.add_argument("--solvers", nargs="+", default=None, help="registry names; default: all")
    p.add_argument("--nfe", nargs="+", type=int, default=None, help="NFE budgets; default 3 4 5 6 8 10 12 15 20 30 50 70 100")
    p.add_argument("--metrics", nargs="+", default=None, help="rmse sliced_w2 mmd nll_gap (default: all)")
    # not --n: under torchrun that prefix is ambiguous with torchrun's own --nnodes/--nproc-per-node
    p.add_argument("--samples", type=int, default=None, help="samples per cell (default 1000)")
    p.add_argument("--tolerances", type=int, default=None, help="entries of each adaptive solver's tolerance sweep")
    p.add_argument("--schedule", default=None, choices=list(SCHEDULES), help="default: each solver's own")
    p.add_argument("--digits-ckpt", default=None, help="a Trainer checkpoint of a digits model (adds problem 'digits')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--out", default="out/bench")
    p.add_argument("--resume", action="store_true", help="skip the cells an earlier run with these settings finished")
    p.add_argument("--optimize", action="store_true",
                   help="add an optimized-schedule row per fixed-step ODE solver (scoresde.schedules.optimize)")
    p.add_argument("--calibration", type=int, default=256, help="calibration batch of --optimize (held-out noise)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("schedule", help="time grids tuned to a problem, solver and NFE budget")
    schedule_sub = p.add_subparsers(dest="action", required=True)
    p = schedule_sub.add_parser("optimize", help="minimize the terminal error against a tight reference solve")
    p.add_argument("--problem", default="ring2d", choices=list(PROBLEMS))
    p.add_argument("--sde", default="vp", choices=list(SDE_NAMES))
    p.add_argument("--solver", default="dpm++2m", choices=available("ode"))
    p.add_argument("--nfe", type=int, default=10, help="NFE budget")
    p.add_argument("--calibration", type=int, default=256, help="calibration batch size (prior noise from --seed)")
    p.add_argument("--max-evals", type=int, default=None, help="grids the search may try (default 30 per free time)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="schedule.json")
    p.set_defaults(func=_cmd_schedule)
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
