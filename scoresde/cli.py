"""The `scoresde` command line (also `python -m scoresde`): `scoresde sample`, `scoresde sdes`,
`scoresde nll`, `scoresde bench`, `scoresde schedule optimize`.

Flags mean one thing in every subcommand: `--samples` (alias `--n`, except under `bench`,
where torchrun's own `--nnodes`/`--nproc-per-node` make that prefix ambiguous) is the sample
count, `--ckpt` a Trainer checkpoint, `--steps` solver steps, `--nfe` NFE budgets, and
`--dtype` defaults to float32 everywhere (`nll` too).

Bad input (a flag's value, a missing or malformed input file, an --out that cannot be
written, a device this machine lacks) is refused before any work, in one line
`scoresde: error: <flag> must be <accepted>; got <given>` with exit status 2; `--debug`
(before or after the subcommand) shows the traceback instead.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from . import _checks
from .sde import SDES, by_name

__all__ = ["main", "build_parser"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# the most a flag may ask for: beyond these a run exhausts memory or runs for hours on a typo
_MAX_SAMPLES, _WHY_SAMPLES = 10_000_000, "a batch in memory"
_MAX_STEPS, _WHY_STEPS = 100_000, "a grid this fine only adds round-off"


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except where it is None or False (the help says what then)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


class _SolverNames(list):
    """The canonical solver names (what --help lists), of which `in` also accepts old aliases."""

    def __contains__(self, name) -> bool:
        from .solvers import get

        try:
            return get(name).name in list(self)
        except ValueError:
            return False


class _UsageError(ValueError):
    """argparse's own refusal (unknown flag, invalid choice), printed by main() as one line."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser (and, through add_subparsers, every subparser) whose usage errors are
    raised, so that main() prints them as the one line every other bad input gets."""

    def error(self, message: str):
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


def _number(text: str):
    """An integer flag's value as parsed: an int, or the text itself, which `_checks.integer`
    then refuses in its own words (`steps must be an integer >= 1; got 'inf'`)."""
    try:
        return int(text)
    except ValueError:
        return text


def _int(parser: argparse.ArgumentParser, *flags: str, low: Optional[int] = 1, high: Optional[int] = None,
         why: str = "", **kwargs) -> None:
    """An integer flag, checked by `_checks.integer` (>= low) once parsed, as the library checks
    its arguments: one line naming it (`rows must be an integer >= 1; got 0`), no traceback.
    `high` refuses what would exhaust memory or time on a typo; `why` says so in the message."""
    action = parser.add_argument(*flags, type=_number, **kwargs)
    parser.set_defaults(_ints=(*(parser.get_default("_ints") or ()), (action.dest, low, high, why)))


def _check_ints(args: argparse.Namespace) -> None:
    for dest, low, high, why in getattr(args, "_ints", ()):
        value = getattr(args, dest)
        for v in value if isinstance(value, list) else [value]:
            if v is not None:
                v = _checks.integer(dest, v, low=low)
                if high is not None and v > high:
                    raise _checks.fail(dest, f"an integer <= {high}{f' ({why})' if why else ''}", v)


def _seed(parser: argparse.ArgumentParser) -> None:
    # torch maps a negative seed silently onto 2**64 + seed, and the commands draw from seed + 1..3
    _int(parser, "--seed", low=0, high=2**32 - 1, why="32 bits", default=0,
         help="seed of the prior noise and of every other draw")


def _refuse(flag: str, accepted: str, given: str, why: str) -> _checks.ArgumentError:
    """`_checks.fail`'s message with the reason added, and `given` (a path) never shortened."""
    return _checks.ArgumentError(f"{flag} must be {accepted}; got {given!r} ({why})")


def _device(text: str) -> str:
    """--device, refused here if torch does not know it or this machine lacks it (torch itself
    would fail at the first tensor, with a message about its build)."""
    accepted = "cpu, cuda or cuda:<index>"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise _checks.fail("--device", accepted, text) from None
    if device.type == "cpu":
        return text
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise _refuse("--device", "cpu", text, "this machine has no CUDA device, or torch was built without CUDA")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise _refuse("--device", f"cpu, cuda or cuda:<index> with index < {count}", text,
                          f"this machine has {count} CUDA device{'s' if count > 1 else ''}")
        return text
    if device.type == "mps" and torch.backends.mps.is_available():
        return text
    raise _checks.fail("--device", accepted, text)


def _input_file(flag: str, path: str, what: str) -> Path:
    """An input file, refused before any work if it is missing, a directory or unreadable."""
    file = Path(path)
    accepted = f"a readable {what}"
    if file.is_dir():
        raise _refuse(flag, accepted, path, "it is a directory")
    if not file.exists():
        raise _refuse(flag, accepted, path, "it does not exist")
    if not os.access(file, os.R_OK):
        raise _refuse(flag, accepted, path, "it cannot be read")
    return file


def _writable(folder: Path) -> Optional[str]:
    """Why files cannot be created in the existing `folder`, or None if they can (tried, since
    permission bits do not tell for root or a read-only file system)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as err:
        return f"cannot write in {folder}: {err.strerror or err}"


def _output_folder(path: str) -> Path:
    """--out as a folder (created when the results are written): refused before any work if it
    is a file, lies under a file, or cannot be created or written."""
    folder = Path(path)
    accepted = "a folder that exists or can be created, and can be written"
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise _refuse("--out", accepted, path, "it is a file" if existing == folder else f"{existing} is a file")
    why = _writable(existing)
    if why:
        raise _refuse("--out", accepted, path, why)
    return folder


def _output_file(path: str) -> Path:
    """--out as a file (replaced if it exists): refused before any work if it is a folder, or
    its folder is missing or cannot be written."""
    file = Path(path)
    accepted = "a file path in an existing, writable folder"
    if file.is_dir():
        raise _refuse("--out", accepted, path, "it is a folder")
    if not file.parent.is_dir():
        raise _refuse("--out", accepted, path, f"{file.parent} is not a folder"
                      if file.parent.exists() else f"folder {file.parent} does not exist")
    why = _writable(file.parent) or (None if not file.exists() or os.access(file, os.W_OK) else "it is read-only")
    if why:
        raise _refuse("--out", accepted, path, why)
    return file


def _cmd_sdes(args: argparse.Namespace) -> None:
    for name in args.sde or list(SDES):
        sde = by_name(name)
        print(f"{name}: {sde!r}  T={sde.T:g}  t_eps={sde.t_eps:g}  prior_std={sde.prior_std:g}")
        print(f"  {'t':>10} {'alpha':>10} {'sigma':>10} {'log_snr':>10} {'f':>10} {'g2':>10}")
        grid = torch.linspace(sde.t_eps, sde.T, args.rows, dtype=torch.float64)
        rows = zip(grid, sde.alpha(grid), sde.sigma(grid), sde.log_snr(grid), sde.f(grid), sde.g2(grid))
        for row in rows:
            print("  " + " ".join(f"{float(v):10.4g}" for v in row))


def _solver_options(text: Optional[str]) -> dict:
    """`--options` JSON: an object of solver options, none of them an argument of `sample()`
    itself (those have their own flags, or none on purpose)."""
    from .solvers import sample

    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError:
        raise _checks.fail("--options", "a JSON object of solver options", text) from None
    if not isinstance(options, dict):
        raise _checks.fail("--options", "a JSON object of solver options", text)
    params = inspect.signature(sample).parameters
    own = [k for k in options if k in params and params[k].kind is not inspect.Parameter.VAR_KEYWORD]
    if own:
        raise _checks.fail("--options", f"solver options, not arguments of sample() itself ({', '.join(own)})", text)
    return options


def _schedule_file(path: str):
    """--schedule-file's OptimizedSchedule; its times are checked by sample() before it starts."""
    from .tuning import OptimizedSchedule

    accepted = "a JSON file written by `scoresde schedule optimize`"
    _input_file("--schedule-file", path, accepted[2:])
    try:
        return OptimizedSchedule.load(path)
    except (ValueError, TypeError, KeyError) as err:  # not JSON, not an object, or fields of the wrong types
        raise _refuse("--schedule-file", accepted, path, f"{type(err).__name__}: {err}") from None


def _cmd_sample(args: argparse.Namespace) -> None:
    from . import metrics
    from .data.problems import get_problem
    from .solvers import DEFAULT_SOLVER, DEFAULT_STEPS, get, sample

    _device(args.device)
    folder = _output_folder(args.out)
    options = _solver_options(args.options)
    schedule, steps = args.schedule, args.steps
    if args.schedule_file is not None:
        schedule = _schedule_file(args.schedule_file)
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

    from .guidance import ClassifierFree
    from .solvers import sample
    from .training import load_checkpoint, load_model

    path = _input_file("--ckpt", args.ckpt, "Trainer checkpoint file")
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
    _picture(folder / f"{stem}.png", (x.double(), f"{args.solver}, {out.nfe} NFE{what}"))
    print(f"wrote {folder / stem}.{{pt,npz,png}}")


def _picture(path: Path, *panels: Tuple[torch.Tensor, str]) -> None:
    """(samples, title) panels side by side in one PNG: an image grid for (N, 1, H, W), a
    histogram for 1-D data, else a scatter of the first two coordinates."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("scoresde sample draws its PNG with matplotlib: pip install 'scoresde[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = panels[0][0].ndim == 4 and panels[0][0].shape[1] == 1
    dims = panels[0][0][0].numel()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.5 if images else 4.2), squeeze=False,
                             sharex=True, sharey=dims > 1)
    for ax, (x, title) in zip(axes[0], panels):
        if images:
            from .bench.digits import image_grid

            ax.imshow(image_grid(x[:100].clamp(-1, 1), pad_value=1.0).numpy(), cmap="gray_r", vmin=-1, vmax=1)
            ax.axis("off")
        elif dims == 1:
            ax.hist(x.reshape(len(x)).numpy(), bins=80, density=True)
        else:
            flat = x.reshape(len(x), -1)
            ax.scatter(flat[:, 0].numpy(), flat[:, 1].numpy(), s=2, alpha=0.5)
            ax.set_aspect("equal", adjustable="box")
        ax.set_title(title + ("" if images or dims <= 2 else " (first 2 coordinates)"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cmd_nll(args: argparse.Namespace) -> None:
    """Negative log-likelihood through the probability-flow ODE: bits/dim of a trained digits
    model (--ckpt), or exact vs ODE nll on an analytic problem (--problem)."""
    import math

    from .likelihood import bits_per_dim, log_likelihood

    _device(args.device)
    if args.ckpt is not None:
        _input_file("--ckpt", args.ckpt, "Trainer checkpoint file")
    dtype = DTYPES[args.dtype]
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    options = dict(trace=args.trace, probes=args.probes, method=args.method, rtol=args.rtol, atol=args.atol)
    if args.ckpt is not None:
        from .data.digits import load_digits
        from .training import load_checkpoint, load_model

        try:
            state = load_checkpoint(args.ckpt)  # for its step
        except FileNotFoundError as err:
            raise ValueError(str(err)) from err
        model = load_model(args.ckpt, args.weights, device=args.device, dtype=dtype)
        x, _ = load_digits(args.split, dtype=dtype, device=args.device)
        x = x[: args.samples]
        # digits: grey levels 0..16 scaled by k/8 - 1, so 17 levels (bins of width 1/8)
        out = bits_per_dim(model, x, levels=17, draws=args.draws, generator=gen, dtype=dtype, **options)
        print(f"digits ({args.split}, n={x.shape[0]}) | {args.ckpt} ({args.weights} weights, step {int(state['step'])}) | "
              f"trace={args.trace} rtol={args.rtol:g} atol={args.atol:g} draws={args.draws}: "
              f"{out.mean:.4f} +- {out.half_width:.4f} bits/dim (95% CI), {out.nfe} NFE")
        return
    from .data.problems import get_problem

    n = args.samples
    sde = by_name(args.sde)
    truth = get_problem(args.problem)
    model = truth.score_model(sde)
    x = truth.sample(n, gen, dtype=dtype, device=args.device)
    res = log_likelihood(model, x, generator=gen, **options)
    exact = truth.log_prob_t(x, sde.t_eps, sde)
    diff = (res.logp - exact).double()
    half = 1.96 * float(diff.std()) / math.sqrt(n) if n > 1 else 0.0
    print(f"{args.problem} | {args.sde} | n={n} trace={args.trace} rtol={args.rtol:g} atol={args.atol:g}: "
          f"nll exact {float(-exact.mean()):.5f}, ODE {float(-res.logp.mean()):.5f} nats "
          f"(difference {float(-diff.mean()):+.2e} +- {half:.1e}, max |diff| {float(diff.abs().max()):.2e}; "
          f"of log p_{{t_end}} with t_end={res.t_end:g}), {res.nfe} NFE")


def _check_bench(args: argparse.Namespace, names: List[str]) -> None:
    """What bench would otherwise find only when it reaches it (a later problem, the first
    write, the resume file), checked on every rank before any work."""
    from . import bench

    _device(args.device)
    for name in names:
        if name != "digits":
            mixture, _, sde = name.partition("/")
            _checks.choice("--problems", mixture, bench.ANALYTIC)
            _checks.choice(f"the SDE of --problems {name}", sde, bench.BENCH_SDES)
    if "digits" in names:
        if args.ckpt is None:
            raise _checks.fail("--ckpt", "a Trainer checkpoint of a digits model with --problems digits", None)
        _input_file("--ckpt", args.ckpt, "Trainer checkpoint file")
    elif args.ckpt is not None:
        raise _checks.fail("--problems", "a list with digits when --ckpt is given (the checkpoint is used by "
                           "problem digits only)", args.problems)
    folder = _output_folder(args.out)
    results = folder / "accuracy_vs_nfe.json"
    if args.resume and results.exists():
        accepted = "used with an --out whose accuracy_vs_nfe.json was written by `scoresde bench` (or is absent)"
        try:
            earlier = json.loads(results.read_text())
        except OSError as err:
            raise _refuse("--resume", accepted, str(results), f"it cannot be read: {err.strerror or err}") from None
        except ValueError as err:  # not JSON, or not text
            raise _refuse("--resume", accepted, str(results), f"it cannot be parsed: {err}") from None
        fields = dict(config=dict, problems=dict, cells=list)
        wrong = [k for k, kind in fields.items() if not isinstance(earlier, dict) or not isinstance(earlier.get(k), kind)]
        if wrong:
            raise _refuse("--resume", accepted, str(results), "it has no valid " + ", ".join(wrong))


def _cmd_bench(args: argparse.Namespace) -> None:
    """Accuracy against NFE (scoresde.bench); under torchrun the batch is sharded."""
    from . import bench
    from ._dist import torchrun_group

    quick = bench.QUICK if args.quick else {}
    if quick and not args.problems:
        names = list(quick["problems"])
    else:
        names = [p if "/" in p or p == "digits" else f"{p}/{s}"
                 for p in args.problems or bench.ANALYTIC for s in args.sdes or bench.BENCH_SDES]
    if args.ckpt and not args.problems:
        names.append("digits")
    _check_bench(args, names)
    with torchrun_group(args.device) as device:
        results = bench.run_benchmark(
            problems=list(dict.fromkeys(names)), solvers=args.solvers or quick.get("solvers"),
            nfes=args.nfe or quick.get("nfes", bench.DEFAULT_NFES), metrics=args.metrics or bench.METRICS,
            n=args.samples or quick.get("n", 1000), seed=args.seed, device=device, dtype=DTYPES[args.dtype],
            schedule=args.schedule, tolerances=args.tolerances or quick.get("tolerances", 4), out=args.out,
            resume=args.resume, progress=not args.no_progress, digits_checkpoint=args.ckpt,
            optimize=args.optimize, calibration=args.calibration,
        )
    if results is not None:
        print(bench.markdown(results))
        print(f"wrote {Path(args.out) / 'accuracy_vs_nfe'}.{{json,csv,md,png}} in {results['seconds']:.0f} s")


def _cmd_schedule(args: argparse.Namespace) -> None:
    """Tune a time grid to an analytic problem, solver and NFE budget (scoresde.tuning.optimize)."""
    from .data.problems import get_problem
    from .tuning import optimize

    _device(args.device)
    _output_file(args.out)
    if args.ckpt is not None:  # a trained model: calibrate in float32 on its own data shape
        from .training import load_checkpoint, load_model

        path = _input_file("--ckpt", args.ckpt, "Trainer checkpoint file")
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


def _plot(x: torch.Tensor, exact: torch.Tensor, path: Path, title: str) -> None:
    """Samples beside exact samples of the analytic problem."""
    _picture(path, (exact, "exact samples"), (x, title))


def build_parser() -> argparse.ArgumentParser:
    from .bench import ADAPTIVE_TOLERANCES, ANALYTIC, BENCH_SDES, DEFAULT_NFES, METRICS
    from .data.problems import PROBLEMS
    from .model import PREDICTIONS
    from .schedules import SCHEDULES
    from .solvers import DEFAULT_SOLVER, DEFAULT_STEPS, available
    from .tuning import MIN_CALIBRATION

    parser = _Parser(prog="scoresde", description=__doc__, formatter_class=_Formatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not one line")
    debug = _Parser(add_help=False)  # --debug after the subcommand too (SUPPRESS: it never resets the first)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of an error, not one line")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, parent=sub) -> argparse.ArgumentParser:
        return parent.add_parser(name, help=help, description=help, formatter_class=_Formatter, parents=[debug])

    p = command("sample", "sample an analytic problem with any solver; save .pt and a PNG")
    p.add_argument("--problem", default="ring2d", choices=list(PROBLEMS), help="analytic problem (exact samples)")
    p.add_argument("--sde", default="vp", choices=list(SDES), help="forward SDE")
    p.add_argument("--prediction", default="eps", choices=list(PREDICTIONS), help="parameterization of the oracle")
    p.add_argument("--solver", default=None, choices=_SolverNames(available()),
                   help=f"default: the --schedule-file's solver, else {DEFAULT_SOLVER}")
    _int(p, "--steps", high=_MAX_STEPS, why=_WHY_STEPS, default=None,
         help=f"solver steps (default: the --schedule-file's, else {DEFAULT_STEPS})")
    grid = p.add_mutually_exclusive_group()
    grid.add_argument("--schedule", default=None, choices=list(SCHEDULES), help="default: the solver's or the SDE's")
    grid.add_argument("--schedule-file", default=None,
                      help="a JSON file from `scoresde schedule optimize` (sets the steps; same --sde and solver)")
    p.add_argument("--options", default=None,
                   help='solver options as a JSON object, e.g. \'{"history": 3}\' (not sample()\'s own arguments)')
    p.add_argument("--denoise", action="store_true", help="finish with a Tweedie denoising step (+1 NFE)")
    _int(p, "--samples", "--n", dest="samples", low=2, high=_MAX_SAMPLES, why=_WHY_SAMPLES, default=2000,
         help="number of samples (at least 2: the sliced W2 and its floor compare samples)")
    _seed(p)
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
    p.set_defaults(func=_cmd_sample)

    p = command("sdes", "print alpha, sigma, log-SNR, f and g^2 of each forward SDE")
    p.add_argument("--sde", action="append", choices=list(SDES), help="repeatable; default all")
    _int(p, "--rows", high=10_000, why="a printed table", default=6, help="times per SDE, from t_eps to T")
    p.set_defaults(func=_cmd_sdes)

    p = command("nll", "negative log-likelihood through the probability-flow ODE (bits/dim or nats)")
    p.add_argument("--ckpt", default=None, help="a Trainer checkpoint: report bits/dim on --data")
    p.add_argument("--data", default="digits", choices=["digits"], help="data set of the --ckpt model")
    p.add_argument("--split", default="test", choices=["train", "test", "all"], help="split of --data")
    p.add_argument("--weights", default="ema", choices=["ema", "raw", "model"],
                   help="ema: the moving average of the weights; raw: the optimized weights (model: old name of raw)")
    _int(p, "--draws", high=10_000, default=1, help="dequantization draws per image")
    p.add_argument("--problem", default="ring2d", choices=list(PROBLEMS), help="analytic problem (without --ckpt)")
    p.add_argument("--sde", default="vp", choices=list(SDES), help="forward SDE (without --ckpt)")
    _int(p, "--samples", "--n", dest="samples", high=_MAX_SAMPLES, why=_WHY_SAMPLES, default=200,
         help="exact samples of --problem, or the first images of --split with --ckpt")
    p.add_argument("--trace", default="exact", choices=["exact", "hutchinson"], help="divergence of the ODE drift")
    _int(p, "--probes", high=10_000, default=1, help="Hutchinson probes")
    p.add_argument("--method", default="dopri5", help="torchdiffeq method")
    p.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance of the ODE solve")
    p.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance of the ODE solve")
    _seed(p)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cuda:1")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="dtype of the model, data and ODE solve")
    p.set_defaults(func=_cmd_nll)

    p = command("bench", "accuracy against NFE of any solvers on problems with exact answers")
    p.add_argument("--quick", action="store_true", help="two problems, 11 solvers, NFE 5-50, 1000 samples (about a minute)")
    p.add_argument("--problems", nargs="+", default=None,
                   help=f"mixtures ({' '.join(ANALYTIC)}, each under every --sdes), 'ring2d/vp'-style pairs, "
                        "or digits (with --ckpt); default: the four mixtures")
    p.add_argument("--sdes", nargs="+", default=None, choices=list(BENCH_SDES), help=f"default: {' '.join(BENCH_SDES)}")
    p.add_argument("--solvers", nargs="+", default=None, help="registry names; default: all (--quick: 11)")
    _int(p, "--nfe", nargs="+", high=_MAX_STEPS, why=_WHY_STEPS, default=None,
         help=f"NFE budgets; default {' '.join(map(str, DEFAULT_NFES))} (--quick: 5 10 20 50)")
    p.add_argument("--metrics", nargs="+", default=None, help=f"a subset of {' '.join(METRICS)}; default: all")
    # no --n alias: under torchrun that prefix is ambiguous with torchrun's own --nnodes/--nproc-per-node
    _int(p, "--samples", low=2, high=_MAX_SAMPLES, why=_WHY_SAMPLES, default=None, help="samples per cell (default 1000)")
    _int(p, "--tolerances", low=0, high=max(map(len, ADAPTIVE_TOLERANCES.values())), why="the longest sweep",
         default=None,
         help="entries of each adaptive solver's tolerance sweep (default 4; --quick: 2)")
    p.add_argument("--schedule", default=None, choices=list(SCHEDULES), help="default: each solver's own")
    p.add_argument("--ckpt", "--digits-ckpt", dest="ckpt", default=None,
                   help="a Trainer checkpoint of a digits model (adds problem 'digits')")
    _seed(p)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cuda:1" + " (under torchrun: each rank's own GPU)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="dtype of the sampling")
    p.add_argument("--out", default="out/bench", help="folder for accuracy_vs_nfe.{json,csv,md,png}")
    p.add_argument("--resume", action="store_true", help="skip the cells an earlier run with these settings finished")
    p.add_argument("--optimize", action="store_true",
                   help="add an optimized-schedule row per fixed-step ODE solver (scoresde.tuning.optimize)")
    _int(p, "--calibration", low=MIN_CALIBRATION, high=_MAX_SAMPLES, why=_WHY_SAMPLES, default=256,
         help="calibration batch of --optimize (held-out noise)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_bench)

    p = command("schedule", "time grids tuned to a problem, solver and NFE budget")
    schedule_sub = p.add_subparsers(dest="action", required=True)
    p = command("optimize", "minimize the terminal error against a tight reference solve", schedule_sub)
    p.add_argument("--problem", default="ring2d", choices=list(PROBLEMS), help="analytic problem")
    p.add_argument("--sde", default="vp", choices=list(SDES), help="forward SDE")
    p.add_argument("--solver", default="dpm++2m", choices=_SolverNames(available("ode")), help="fixed-step ODE solver")
    _int(p, "--nfe", high=1000, why="each step is a free time of the search", default=10, help="NFE budget")
    _int(p, "--calibration", low=MIN_CALIBRATION, high=_MAX_SAMPLES, why=_WHY_SAMPLES, default=256,
         help="calibration batch size (prior noise from --seed)")
    _int(p, "--max-evals", high=100_000, default=None, help="grids the search may try (default 30 per free time)")
    _seed(p)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cuda:1")
    p.add_argument("--out", default="schedule.json", help="the JSON file to write (replaced if it exists)")
    p.add_argument("--ckpt", default=None, help="a Trainer checkpoint: tune for its model instead of --problem "
                                                "(float32; reference: the model's own dopri5 solve at 1e-5)")
    p.add_argument("--weights", default="ema", choices=["ema", "raw", "model"], help="weights of the --ckpt model")
    p.set_defaults(func=_cmd_schedule)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; 0 on success, 2 for bad input (one line `scoresde: error: ...`;
    `--debug` shows the traceback instead), 1 for a run that failed (NaN or inf mid-run)."""
    from .solvers import NonFiniteError

    try:
        args = build_parser().parse_args(argv)
    except _UsageError as err:
        print(f"scoresde: error: {err}", file=sys.stderr)
        return 2
    try:
        _check_ints(args)
        args.func(args)
    except BrokenPipeError:  # `scoresde sdes | head`: the reader left; say nothing (Python docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ValueError, OSError, NonFiniteError) as err:  # OSError: a file that went away or filled the disk
        if args.debug:
            raise
        print(f"scoresde: error: {err}", file=sys.stderr)
        return 1 if isinstance(err, NonFiniteError) else 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("scoresde: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
