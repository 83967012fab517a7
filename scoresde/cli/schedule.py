"""`scoresde schedule`."""
from __future__ import annotations

import argparse

import torch

from ..sde import SDES, by_name
from ._args import MAX_SAMPLES, WHY_SAMPLES, SolverNames, int_flag, seed_flag, device_flag, input_file, output_file


def add(command) -> None:
    from ..data.problems import PROBLEMS
    from ..solvers import available
    from ..tuning import MIN_CALIBRATION

    p = command("schedule", "time grids tuned to a problem, solver and NFE budget")
    schedule_sub = p.add_subparsers(dest="action", required=True)
    p = command("optimize", "minimize the terminal error against a tight reference solve", schedule_sub)
    p.add_argument("--problem", default="ring2d", choices=list(PROBLEMS), help="analytic problem")
    p.add_argument("--sde", default="vp", choices=list(SDES), help="forward SDE")
    p.add_argument("--solver", default="dpm++2m", choices=SolverNames(available("ode")), help="fixed-step ODE solver")
    int_flag(p, "--nfe", high=1000, why="each step is a free time of the search", default=10, help="NFE budget")
    int_flag(p, "--calibration", low=MIN_CALIBRATION, high=MAX_SAMPLES, why=WHY_SAMPLES, default=256,
             help="calibration batch size (prior noise from --seed)")
    int_flag(p, "--max-evals", high=100_000, default=None, help="grids the search may try (default 30 per free time)")
    seed_flag(p)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cuda:1")
    p.add_argument("--out", default="schedule.json", help="the JSON file to write (replaced if it exists)")
    p.add_argument("--ckpt", default=None, help="a Trainer checkpoint: tune for its model instead of --problem "
                                                "(float32; reference: the model's own dopri5 solve at 1e-5)")
    p.add_argument("--weights", default="ema", choices=["ema", "raw", "model"], help="weights of the --ckpt model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Tune a time grid to an analytic problem, solver and NFE budget (scoresde.tuning.optimize)."""
    from ..data.problems import get_problem
    from ..tuning import optimize

    device_flag(args.device)
    output_file(args.out)
    if args.ckpt is not None:  # a trained model: calibrate in float32 on its own data shape
        from ..training import load_checkpoint, load_model

        path = input_file("--ckpt", args.ckpt, "Trainer checkpoint file")
        data_shape = tuple(load_checkpoint(path)["config"]["data_shape"])
        model = load_model(path, args.weights, device=args.device)
        sde, dtype, what, use = model.sde, torch.float32, str(path), f"--ckpt {path}"
        reference = dict(method="dopri5", rtol=1e-5, atol=1e-5)  # float32 cannot reach dopri8 at 1e-10
    else:
        sde = by_name(args.sde)
        truth = get_problem(args.problem)
        model, data_shape, dtype, reference = truth.score_model(sde), truth.event_shape, torch.float64, None
        what, use = f"{args.problem} | {args.sde}", f"--problem {args.problem} --sde {args.sde}"
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    with torch.no_grad():
        result = optimize(model, sde, args.solver, args.nfe, shape=(args.calibration, *data_shape), generator=gen,
                          max_evals=args.max_evals, reference_options=reference, dtype=dtype, device=args.device)
    result.save(args.out)
    print(f"{what} | {args.solver} | nfe={args.nfe} ({result.steps} steps): calibration RMSE "
          f"{result.loss_start:.3e} ({result.start}) -> {result.loss:.3e} (optimized), "
          f"{len(result.loss_history)} grids tried, cost {result.cost_nfe} NFE on a batch of {result.calibration}")
    print("times: " + ", ".join(f"{t:.6g}" for t in result.times.tolist()))
    print(f"wrote {args.out}; use it with: scoresde sample {use} --schedule-file {args.out}")
