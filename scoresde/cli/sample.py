"""`scoresde sample`."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .. import _checks
from ..sde import SDES, by_name
from ..plots import picture
from ._args import DTYPES, MAX_SAMPLES, WHY_SAMPLES, MAX_STEPS, WHY_STEPS, SolverNames, int_flag, seed_flag, device_flag, input_file, output_folder, solver_options, schedule_file, refuse, tuned_file


def add(command) -> None:
    from ..data import BUILTIN_DATA
    from ..data.problems import PROBLEMS
    from ..model import PREDICTIONS
    from ..schedules import SCHEDULES
    from ..solvers import DEFAULT_SOLVER, DEFAULT_STEPS, available

    p = command("sample", "sample an analytic problem, or any trained model (--ckpt), with any solver; save .pt "
                          "and a PNG")
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
    p.add_argument("--tuned", default=None,
                   help="a JSON file from `scoresde tune`: its solver, grid and options, for the model it was tuned "
                        "to (instead of --solver, --steps, --schedule and --schedule-file)")
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
    p.add_argument("--ckpt", default=None, help="a Trainer checkpoint of a score model: sample it instead of "
                                                "--problem (writes .pt, .npz and a picture)")
    p.add_argument("--weights", default="ema", choices=["ema", "raw", "model"], help="weights of the --ckpt model")
    p.add_argument("--data", default=None,
                   help=f"with --ckpt: a data set of the model's shape (a built-in name, {' '.join(BUILTIN_DATA)}, or "
                        "a .pt/.npy/.npz file); prints the sliced W2 of the samples to its test split, next to "
                        "that of prior noise N(0, prior_std^2 I) and the train-vs-test floor")
    p.add_argument("--label", type=int, default=None, help="class to generate (class-conditional --ckpt models)")
    p.add_argument("--cond", default=None,
                   help="vector condition of a --ckpt model whose network has cond_dim: a .pt/.npy/.npz file of "
                        "one (cond_dim,) vector for every sample or (samples, cond_dim) rows (.npz/.pt dict: key "
                        "cond)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance scale with --label or --cond (default 1: the conditional model)")
    p.set_defaults(func=run)



def run(args: argparse.Namespace) -> None:
    from .. import metrics
    from ..data.problems import get_problem
    from ..solvers import DEFAULT_SOLVER, DEFAULT_STEPS, get, sample

    device_flag(args.device)
    folder = output_folder(args.out)
    options = solver_options(args.options)
    schedule, steps = args.schedule, args.steps
    tuned = _tuned(args)
    if tuned is not None:  # sample() takes the solver, grid and options from the tuned sampler
        args.solver, args.steps, schedule = tuned, tuned.steps, None
    elif args.schedule_file is not None:
        schedule = schedule_file(args.schedule_file)
        args.solver = args.solver or schedule.solver
        args.steps = schedule.steps if steps is None else steps  # an explicit --steps goes to sample()
    else:
        if steps is None and not get(args.solver or DEFAULT_SOLVER).adaptive:
            steps = DEFAULT_STEPS  # an adaptive solver chooses its own steps: none are claimed for it
        args.steps = "adaptive" if steps is None else steps
    args.solver = args.solver or DEFAULT_SOLVER
    name = _solver_name(args.solver)
    dtype = DTYPES[args.dtype]
    if args.ckpt is not None:
        return _sample_checkpoint(args, folder, schedule, steps, options, dtype)
    if args.label is not None or args.guidance_scale is not None:
        raise _checks.fail("--label/--guidance-scale", "used with --ckpt of a class-conditional model",
                           "an analytic --problem")
    for flag, value in (("--cond", args.cond), ("--data", args.data)):
        if value is not None:
            raise _checks.fail(flag, "used with --ckpt (a trained model)", value)
    sde = by_name(args.sde)
    truth = get_problem(args.problem)
    model = truth.score_model(sde, prediction=args.prediction)
    if tuned is not None:
        _check_tuned(args, model, f"--problem {args.problem} --sde {args.sde} --prediction {args.prediction}")
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
    schedule_name = args.tuned or args.schedule_file or args.schedule or "default"
    print(f"{args.problem} | {args.sde} | {name} | steps={args.steps} schedule={schedule_name}: "
          f"nfe={out.nfe}, {out.seconds:.3f} s, sliced W2 to exact samples {sw:.4f} "
          f"(two-sample floor {float(floor.mean):.4f} +- {float(floor.std):.4f})")
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{args.problem}_{args.sde}_{_stem(args)}"
    torch.save({"x": out.x.cpu(), "nfe": out.nfe, "times": out.times, "args": _settings(args)}, folder / f"{stem}.pt")
    _plot(out.x.double().cpu(), exact.cpu(), folder / f"{stem}.png", f"{name}, {out.nfe} NFE, {args.sde}")
    print(f"wrote {folder / (stem + '.pt')} and {folder / (stem + '.png')}")


def _sample_checkpoint(args, folder: Path, schedule, steps, options: dict, dtype: torch.dtype) -> None:
    """`sample --ckpt`: samples of a trained model (EMA or raw weights), classifier-free guided
    towards `--label` or `--cond` for a conditional one; .pt, .npz and a picture in --out; with
    --data, their sliced W2 to its test split next to the prior's and the train-vs-test floor."""
    import numpy as np

    from ..bench import checkpoint_data, score_checkpoint
    from ..guidance import ClassifierFree
    from ..solvers import sample
    from ..training import load_model
    from ..tuning import TunedSampler

    path = input_file("--ckpt", args.ckpt, "Trainer checkpoint file")
    state = score_checkpoint(path, "--ckpt")
    shape = tuple(state["config"]["data_shape"])
    net = state["config"]["model"]["net"]["config"]
    cond = _condition(args, net.get("num_classes"), net.get("cond_dim"))
    data = None
    if args.data is not None:
        data = [checkpoint_data(state, args.data, split, name="--data", dtype=torch.float64, device=args.device)
                for split in ("train", "test")]
    model = load_model(path, args.weights, device=args.device, dtype=dtype)
    if isinstance(args.solver, TunedSampler):
        _check_tuned(args, model, f"--ckpt {path} --weights {args.weights}")
    guided = model
    if cond is not None:
        scale = 1.0 if args.guidance_scale is None else _checks.real("guidance-scale", args.guidance_scale, low=0)
        guided = ClassifierFree(model, cond.to(args.device, dtype if cond.is_floating_point() else cond.dtype), scale)
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    with torch.no_grad():
        out = sample(guided, shape=(args.samples, *shape), solver=args.solver, steps=steps, schedule=schedule,
                     denoise=args.denoise, generator=gen, dtype=dtype, device=args.device, progress=args.progress,
                     **options)
    name = _solver_name(args.solver)
    what, stem = "", f"{path.stem}_{_stem(args)}"
    if cond is not None:
        given = f"label={args.label}" if args.label is not None else f"cond={args.cond}"
        what = f" {given} scale={guided.scale:g}"
        stem += f"_label{args.label}" if args.label is not None else f"_cond-{Path(args.cond).stem}"
    print(f"{path} ({args.weights} weights, step {int(state['step'])}) | {name} | steps={args.steps}{what}"
          + (f" tuned={args.tuned}" if args.tuned else "") + ": "
          f"{args.samples} samples of shape {shape}, nfe={out.nfe}, {out.seconds:.3f} s")
    x = out.x.detach()
    if data is not None:
        _compare(x, model.sde, *data, args.seed)
    folder.mkdir(parents=True, exist_ok=True)
    x = x.cpu()
    torch.save({"x": x, "nfe": out.nfe, "times": out.times, "args": _settings(args)}, folder / f"{stem}.pt")
    np.savez(folder / f"{stem}.npz", x=x.double().numpy(), nfe=out.nfe, times=out.times.numpy())
    picture(folder / f"{stem}.png", (x.double(), f"{name}, {out.nfe} NFE{what}"))
    print(f"wrote {folder / stem}.{{pt,npz,png}}")


def _tuned(args):
    """--tuned's TunedSampler, or None; refused with the flags it replaces and with guidance
    (a sampler is tuned to one unguided model)."""
    if args.tuned is None:
        return None
    given = [f for f, v in (("--solver", args.solver), ("--steps", args.steps), ("--schedule", args.schedule),
                            ("--schedule-file", args.schedule_file)) if v is not None]
    if given:
        raise _checks.fail("--tuned", "given without --solver, --steps, --schedule and --schedule-file (it brings "
                           "its own solver and grid)", f"--tuned with {', '.join(given)}")
    guided = [f for f, v in (("--label", args.label), ("--cond", args.cond), ("--guidance-scale", args.guidance_scale))
              if v is not None]
    if guided:
        raise _checks.fail("--tuned", "given without guidance (a sampler is tuned to the unguided model)",
                           f"--tuned with {', '.join(guided)}")
    return tuned_file(args.tuned)


def _check_tuned(args, model, given: str) -> None:
    """The tuned sampler's own refusal of another model or SDE, before any work, naming the flags."""
    try:
        args.solver.grid(model.sde)
        args.solver.check(model)
    except ValueError as err:
        raise _checks.ArgumentError(f"--tuned {args.tuned}: {err} (the model of {given})") from None


def _solver_name(solver) -> str:
    return solver if isinstance(solver, str) else solver.solver


def _stem(args) -> str:
    """<solver>_<steps> of the output files; a tuned sampler's: tuned-<method>_<solver>_<steps>."""
    if isinstance(args.solver, str):
        return f"{args.solver}_{args.steps}"
    return f"tuned-{args.solver.method}_{args.solver.solver}_{args.steps}"


def _settings(args) -> dict:
    """The flags as saved with the samples (the tuned sampler as its file)."""
    settings = {k: v for k, v in vars(args).items() if k != "func" and not k.startswith("_")}
    if not isinstance(args.solver, str):
        settings["solver"] = args.solver.solver
    return settings


def _condition(args, num_classes, cond_dim):
    """The condition of every sample from --label (int64 (B,)) or --cond (float (B, cond_dim)), or
    None; refused before any work if the model has no such input or the widths differ."""
    if args.label is not None and args.cond is not None:
        raise _checks.fail("--label/--cond", "one of them (a model is guided towards one condition)",
                           f"--label {args.label} and --cond {args.cond}")
    if args.label is not None:
        if not num_classes:
            raise _checks.fail("--label", "used with a class-conditional model (its network has num_classes)",
                               args.label)
        label = _checks.integer("label", args.label, 0, num_classes - 1)
        return torch.full((args.samples,), label, dtype=torch.long)
    if args.cond is not None:
        if not cond_dim:
            raise _checks.fail("--cond", "used with a model whose network has cond_dim (a vector condition)",
                               args.cond)
        return _cond_file(args.cond, cond_dim, args.samples)
    if args.guidance_scale is not None:
        raise _checks.fail("--guidance-scale", "used with --label or --cond (the condition to guide towards)",
                           args.guidance_scale)
    return None


def _cond_file(path: str, cond_dim: int, n: int) -> torch.Tensor:
    """--cond's vectors as float64 (n, cond_dim): one (cond_dim,) vector repeated, or n rows."""
    import numpy as np

    accepted = f"a .pt/.npy/.npz file of a ({cond_dim},) vector or ({n}, {cond_dim}) rows (the model's cond_dim " \
               f"{cond_dim}, --samples {n})"
    file = input_file("--cond", path, accepted[2:])
    try:
        if file.suffix == ".pt":
            obj = torch.load(file, map_location="cpu", weights_only=True)
        elif file.suffix in (".npy", ".npz"):
            obj = np.load(file, allow_pickle=False)
        else:
            raise refuse("--cond", accepted, path, "not a .pt, .npy or .npz file")
    except _checks.ArgumentError:
        raise
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same bad input
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""  # torch.load's run over many lines
        raise refuse("--cond", accepted, path, f"it cannot be read: {type(err).__name__}: {first}") from None
    if isinstance(obj, np.lib.npyio.NpzFile):
        obj = {k: obj[k] for k in obj.files}
    if isinstance(obj, dict):
        if "cond" not in obj and len(obj) != 1:
            raise refuse("--cond", accepted, path, f"it holds {', '.join(sorted(map(str, obj)))}, not one array "
                         "or a key cond")
        obj = obj["cond"] if "cond" in obj else next(iter(obj.values()))
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "iuf":
            raise refuse("--cond", accepted, path, f"it holds a {obj.dtype} array")
        obj = torch.from_numpy(obj)
    if not isinstance(obj, torch.Tensor) or obj.is_complex() or obj.dtype == torch.bool:
        raise refuse("--cond", accepted, path, f"it holds {type(obj).__name__}"
                     + (f" {obj.dtype}" if isinstance(obj, torch.Tensor) else ""))
    cond = obj.to(torch.float64)
    if cond.ndim == 1:
        cond = cond[None].expand(n, -1) if cond.shape[0] == cond_dim else cond
    if cond.shape != (n, cond_dim):
        raise refuse("--cond", accepted, path, f"its shape is {tuple(obj.shape)}"
                     + (f": width {obj.shape[-1]}, not the model's cond_dim {cond_dim}"
                        if obj.ndim in (1, 2) and obj.shape[-1] != cond_dim else ""))
    _checks.finite("--cond", cond)
    return cond.contiguous()


def _compare(x: torch.Tensor, sde, train, test, seed: int) -> None:
    """Print the sliced W2 of samples x to the test split, next to that of as many prior draws
    N(0, prior_std^2 I) and the floor: train-split subsets of the same size against the test split."""
    from .. import metrics

    n = x.shape[0]
    device = test.x.device
    gen = torch.Generator(device=device).manual_seed(seed + 2)
    sw = float(metrics.sliced_wasserstein(x.double().to(device), test.x))
    prior = sde.prior_sample(tuple(x.shape), gen, dtype=torch.float64, device=device)
    sw_prior = float(metrics.sliced_wasserstein(prior, test.x))
    k = min(n, len(train))
    floors = torch.stack([metrics.sliced_wasserstein(train.x[torch.randperm(len(train), generator=gen,
                                                                            device=device)[:k]], test.x)
                          for _ in range(5)])
    print(f"sliced W2 to {test.name} (test, n={len(test)}): samples {sw:.4f}, prior N(0, {sde.prior_std:g}^2 I) "
          f"{sw_prior:.4f}, floor (train vs test, n={k}) {float(floors.mean()):.4f} +- {float(floors.std()):.4f}")


def _plot(x: torch.Tensor, exact: torch.Tensor, path: Path, title: str) -> None:
    """Samples beside exact samples of the analytic problem."""
    picture(path, (exact, "exact samples"), (x, title))
