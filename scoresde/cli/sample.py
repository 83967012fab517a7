"""`scoresde sample`."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .. import _checks
from ..sde import SDES, by_name
from ._args import DTYPES, MAX_SAMPLES, WHY_SAMPLES, MAX_STEPS, WHY_STEPS, SolverNames, int_flag, seed_flag, device_flag, input_file, output_folder, solver_options, schedule_file, picture


def add(command) -> None:
    from ..data.problems import PROBLEMS
    from ..model import PREDICTIONS
    from ..schedules import SCHEDULES
    from ..solvers import DEFAULT_SOLVER, DEFAULT_STEPS, available

    p = command("sample", "sample an analytic problem with any solver; save .pt and a PNG")
    p.add_argument("--problem", default="ring2d", choices=list(PROBLEMS), help="analytic problem (exact samples)")
    p.add_argument("--sde", default="vp", choices=list(SDES), help="forward SDE")
    p.add_argument("--prediction", default="eps", choices=list(PREDICTIONS), help="parameterization of the oracle")
    p.add_argument("--solver", default=None, choices=SolverNames(available()),
                   help=f"default: the --schedule-file's solver, else {DEFAULT_SOLVER}")
    int_flag(p, "--steps", high=MAX_STEPS, why=WHY_STEPS, default=None,
             help=f"solver steps (default: the --schedule-file's, else {DEFAULT_STEPS})")
    grid = p.add_mutually_exclusive_group()
    grid.add_argument("--schedule", default=None, choices=list(SCHEDULES), help="default: the solver's or the SDE's")
    grid.add_argument("--schedule-file", default=None,
                      help="a JSON file from `scoresde schedule optimize` (sets the steps; same --sde and solver)")
    p.add_argument("--options", default=None,
                   help='solver options as a JSON object, e.g. \'{"history": 3}\' (not sample()\'s own arguments)')
    p.add_argument("--denoise", action="store_true", help="finish with a Tweedie denoising step (+1 NFE)")
    int_flag(p, "--samples", "--n", dest="samples", low=2, high=MAX_SAMPLES, why=WHY_SAMPLES, default=2000,
             help="number of samples (at least 2: the sliced W2 and its floor compare samples)")
    seed_flag(p)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cuda:1")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="dtype of the sampling")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.add_argument("--out", default="out", help="folder for the .pt and .png (created if missing)")
    p.add_argument("--ckpt", default=None, help="a Trainer checkpoint: sample its model instead of --problem "
                                                "(writes .pt, .npz and a picture; no exact samples to compare)")
    p.add_argument("--weights", default="ema", choices=["ema", "raw", "model"], help="weights of the --ckpt model")
    p.add_argument("--label", type=int, default=None, help="class to generate (class-conditional --ckpt models)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance scale with --label (default 1: the conditional model)")
    p.set_defaults(func=run)



def run(args: argparse.Namespace) -> None:
    from .. import metrics
    from ..data.problems import get_problem
    from ..solvers import DEFAULT_SOLVER, DEFAULT_STEPS, get, sample

    device_flag(args.device)
    folder = output_folder(args.out)
    options = solver_options(args.options)
    schedule, steps = args.schedule, args.steps
    if args.schedule_file is not None:
        schedule = schedule_file(args.schedule_file)
        args.solver = args.solver or schedule.solver
        args.steps = schedule.steps if steps is None else steps  # an explicit --steps goes to sample()
    else:
        if steps is None and not get(args.solver or DEFAULT_SOLVER).adaptive:
            steps = DEFAULT_STEPS  # an adaptive solver chooses its own steps: none are claimed for it
        args.steps = "adaptive" if steps is None else steps
    args.solver = args.solver or DEFAULT_SOLVER
    dtype = DTYPES[args.dtype]
    if args.ckpt is not None:
        return _sample_checkpoint(args, folder, schedule, steps, options, dtype)
    if args.label is not None or args.guidance_scale is not None:
        raise _checks.fail("--label/--guidance-scale", "used with --ckpt of a class-conditional model",
                           "an analytic --problem")
    sde = by_name(args.sde)
    truth = get_problem(args.problem)
    model = truth.score_model(sde, prediction=args.prediction)
    n = args.samples
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    out = sample(model, shape=(n, *truth.event_shape), solver=args.solver, steps=steps,
                 schedule=schedule, denoise=args.denoise, generator=gen, dtype=dtype, device=args.device,
                 progress=args.progress, **options)
    exact = truth.sample(n, torch.Generator(device=args.device).manual_seed(args.seed + 1),
                         dtype=torch.float64, device=args.device)
    sw = float(metrics.sliced_wasserstein(out.x.double(), exact))
    floor = metrics.two_sample_floor(metrics.sliced_wasserstein,
                                     lambda k, g: truth.sample(k, g, dtype=torch.float64, device=args.device),
                                     n, repeats=5, generator=torch.Generator(device=args.device).manual_seed(args.seed + 2))
    schedule_name = args.schedule_file or args.schedule or "default"
    print(f"{args.problem} | {args.sde} | {args.solver} | steps={args.steps} schedule={schedule_name}: "
          f"nfe={out.nfe}, {out.seconds:.3f} s, sliced W2 to exact samples {sw:.4f} "
          f"(two-sample floor {float(floor.mean):.4f} +- {float(floor.std):.4f})")
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{args.problem}_{args.sde}_{args.solver}_{args.steps}"
    settings = {k: v for k, v in vars(args).items() if k != "func" and not k.startswith("_")}
    torch.save({"x": out.x.cpu(), "nfe": out.nfe, "times": out.times, "args": settings}, folder / f"{stem}.pt")
    _plot(out.x.double().cpu(), exact.cpu(), folder / f"{stem}.png", f"{args.solver}, {out.nfe} NFE, {args.sde}")
    print(f"wrote {folder / (stem + '.pt')} and {folder / (stem + '.png')}")


def _sample_checkpoint(args, folder: Path, schedule, steps, options: dict, dtype: torch.dtype) -> None:
    """`sample --ckpt`: samples of a trained model (EMA or raw weights), classifier-free guided
    towards `--label` for a class-conditional one; .pt, .npz and a picture in --out."""
    import numpy as np

    from ..guidance import ClassifierFree
    from ..solvers import sample
    from ..training import load_checkpoint, load_model

    path = input_file("--ckpt", args.ckpt, "Trainer checkpoint file")
    state = load_checkpoint(path)
    shape = tuple(state["config"]["data_shape"])
    model = load_model(path, args.weights, device=args.device, dtype=dtype)
    classes = getattr(model.net, "num_classes", None)
    guided = model
    if args.label is not None:
        if not classes:
            raise _checks.fail("--label", "used with a class-conditional model (its network has num_classes)",
                               args.label)
        label = _checks.integer("label", args.label, 0, classes - 1)
        scale = 1.0 if args.guidance_scale is None else _checks.real("guidance-scale", args.guidance_scale, low=0)
        cond = torch.full((args.samples,), label, dtype=torch.long, device=args.device)
        guided = ClassifierFree(model, cond, scale)
    elif args.guidance_scale is not None:
        raise _checks.fail("--guidance-scale", "used with --label (the class to guide towards)", args.guidance_scale)
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    with torch.no_grad():
        out = sample(guided, shape=(args.samples, *shape), solver=args.solver, steps=steps, schedule=schedule,
                     denoise=args.denoise, generator=gen, dtype=dtype, device=args.device, progress=args.progress,
                     **options)
    what = "" if args.label is None else f" label={args.label} scale={guided.scale:g}"
    print(f"{path} ({args.weights} weights, step {int(state['step'])}) | {args.solver} | steps={args.steps}{what}: "
          f"{args.samples} samples of shape {shape}, nfe={out.nfe}, {out.seconds:.3f} s")
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{path.stem}_{args.solver}_{args.steps}" + ("" if args.label is None else f"_label{args.label}")
    x = out.x.detach().cpu()
    settings = {k: v for k, v in vars(args).items() if k != "func" and not k.startswith("_")}
    torch.save({"x": x, "nfe": out.nfe, "times": out.times, "args": settings}, folder / f"{stem}.pt")
    np.savez(folder / f"{stem}.npz", x=x.double().numpy(), nfe=out.nfe, times=out.times.numpy())
    picture(folder / f"{stem}.png", (x.double(), f"{args.solver}, {out.nfe} NFE{what}"))
    print(f"wrote {folder / stem}.{{pt,npz,png}}")


def _plot(x: torch.Tensor, exact: torch.Tensor, path: Path, title: str) -> None:
    """Samples beside exact samples of the analytic problem."""
    picture(path, (exact, "exact samples"), (x, title))
