"""`scoresde tune`: `scoresde.tune` from the command line, for an analytic problem or any trained
model; writes the TunedSampler's JSON, which `scoresde sample --tuned` runs."""
from __future__ import annotations

import argparse
from typing import Dict, FrozenSet

import torch

from .. import _checks
from ..sde import SDES, by_name
from ._args import (DTYPES, MAX_SAMPLES, WEIGHTS, WHY_SAMPLES, device_flag, input_file, int_flag, json_object,
                    output_file, output_folder, refuse, seed_flag, solver_options)

#: the method options that have their own flag (dest -> help); the rest go in --method-options
OPTION_FLAGS = {
    "loss": "loss of the per-sample endpoint errors",
    "epochs": "training epochs",
    "lr": "learning rate",
    "batch_size": "calibration pairs per training step",
    "patience": "epochs without a better validation RMSE before training stops",
    "optimizer": "optimizer of the grid",
    "init": "initial grid",
    "slack": "LD3's soft-teacher radius (relative to the norm of x_T)",
    "candidates": "times of the fine candidate grid",
    "coeff": "weight(s) of later steps' costs; with several, the one best on calibration is kept",
    "max_evals": "grids the search may try",
    "knots": "free log-SNR offsets of the grid (default one per step)",
}


def method_options() -> Dict[str, FrozenSet[str]]:
    """Each method's option names, as `scoresde.tune` takes them (its defaults' keys)."""
    from ..tuning import STEPS_DEFAULTS
    from ..tuning.api import GITS_DEFAULTS
    from ..tuning.coefficients import COEFFICIENTS_DEFAULTS

    return {"gits": frozenset(GITS_DEFAULTS), "steps": frozenset(STEPS_DEFAULTS),
            "coefficients": frozenset(COEFFICIENTS_DEFAULTS), "nelder-mead": frozenset(("max_evals", "knots"))}


def add(command) -> None:
    from ..data.problems import PROBLEMS
    from ..solvers import DEFAULT_SOLVER
    from ..tuning import LOSSES, METHODS
    from ..tuning.api import DEFAULT_VALIDATION
    from ..tuning.schedule import fixed_step_ode_solvers
    from ..tuning.steps import INITS, OPTIMIZERS

    owners = method_options()

    def methods_of(option: str) -> str:
        return " and ".join(m for m in METHODS if option in owners[m])

    p = command("tune", "a sampler (time grid, and solver coefficients where learned) tuned to a model, solver and "
                        "NFE budget on calibration noise and validated on other noise (scoresde.tune); writes its JSON")
    p.add_argument("--method", default="gits", choices=list(METHODS), help="tuning method")
    p.add_argument("--problem", default=None, choices=list(PROBLEMS),
                   help="analytic problem (its exact mixture score); or --ckpt")
    p.add_argument("--sde", default=None, choices=list(SDES), help="forward SDE of --problem (default vp)")
    p.add_argument("--ckpt", default=None, help="a Trainer checkpoint of a score model: tune for it instead of "
                                                "--problem (its teachers: the model's own solve)")
    p.add_argument("--weights", default="ema", choices=WEIGHTS, help="weights of the --ckpt model")
    p.add_argument("--solver", default=DEFAULT_SOLVER,
                   help="fixed-step ODE solver: " + ", ".join(fixed_step_ode_solvers()))
    int_flag(p, "--nfe", high=1000, why="each step is a free time of the search", default=10, help="NFE budget")
    p.add_argument("--options", default=None,
                   help='solver options as a JSON object, e.g. \'{"history": 3}\' (not sample()\'s own arguments)')
    int_flag(p, "--calibration", high=MAX_SAMPLES, why=WHY_SAMPLES, default=256,
             help="calibration batch size (prior noise from --seed)")
    int_flag(p, "--validation", high=MAX_SAMPLES, why=WHY_SAMPLES, default=DEFAULT_VALIDATION,
             help="validation batch size (prior noise drawn after the calibration batch)")
    seed_flag(p)
    p.add_argument("--cache-dir", default=None, help="folder where teacher solves are cached (by model, noise and "
                                                     "options) and found again")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES),
                   help="dtype of the noise and the solves (teachers: dopri8 at 1e-10 in float64, dopri5 at 1e-5 "
                        "in float32)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cuda:1")
    p.add_argument("--out", default="tuned.json", help="the JSON file to write (replaced if it exists)")
    p.add_argument("--loss", default=None, choices=list(LOSSES), help=f"{OPTION_FLAGS['loss']} ({methods_of('loss')})")
    int_flag(p, "--epochs", low=0, high=100_000, default=None,
             help=f"{OPTION_FLAGS['epochs']} ({methods_of('epochs')})")
    p.add_argument("--lr", type=float, default=None, help=f"{OPTION_FLAGS['lr']} ({methods_of('lr')})")
    int_flag(p, "--batch-size", high=MAX_SAMPLES, why=WHY_SAMPLES, default=None,
             help=f"{OPTION_FLAGS['batch_size']} ({methods_of('batch_size')})")
    int_flag(p, "--patience", high=100_000, default=None,
             help=f"{OPTION_FLAGS['patience']} ({methods_of('patience')})")
    p.add_argument("--optimizer", default=None, choices=list(OPTIMIZERS),
                   help=f"{OPTION_FLAGS['optimizer']} ({methods_of('optimizer')})")
    p.add_argument("--init", default=None, choices=list(INITS), help=f"{OPTION_FLAGS['init']} ({methods_of('init')})")
    p.add_argument("--slack", type=float, default=None, help=f"{OPTION_FLAGS['slack']} ({methods_of('slack')})")
    int_flag(p, "--candidates", low=3, high=100_000, default=None,
             help=f"{OPTION_FLAGS['candidates']} ({methods_of('candidates')})")
    p.add_argument("--coeff", type=float, nargs="+", default=None,
                   help=f"{OPTION_FLAGS['coeff']} ({methods_of('coeff')})")
    int_flag(p, "--max-evals", high=100_000, default=None,
             help=f"{OPTION_FLAGS['max_evals']} ({methods_of('max_evals')})")
    int_flag(p, "--knots", high=100_000, default=None, help=f"{OPTION_FLAGS['knots']} ({methods_of('knots')})")
    p.add_argument("--method-options", default=None,
                   help="any other options of the method as a JSON object, e.g. '{\"huber_scale\": 0.3}'")
    p.set_defaults(func=run)


def _options(args: argparse.Namespace) -> dict:
    """The method options of the flags and --method-options, each refused unless --method takes it."""
    owners = method_options()[args.method]
    options = {}
    for dest in OPTION_FLAGS:
        value = getattr(args, dest)
        if value is None:
            continue
        flag = "--" + dest.replace("_", "-")
        if dest not in owners:
            takers = [m for m, names in method_options().items() if dest in names]
            raise _checks.fail(flag, f"used with --method {' or '.join(takers)}", f"{flag} with --method {args.method}")
        options[dest] = value[0] if dest == "coeff" and len(value) == 1 else value
    extra = json_object("--method-options", args.method_options, f"options of method {args.method!r}")
    unknown = sorted(set(extra) - owners)
    if unknown:
        raise _checks.fail("--method-options", f"options of method {args.method!r} ({', '.join(sorted(owners))})",
                           args.method_options)
    twice = sorted(set(extra) & set(options))
    if twice:
        raise _checks.fail("--method-options", f"options without a flag of their own (given: {', '.join(twice)})",
                           args.method_options)
    return {**options, **extra}


def _solver(args: argparse.Namespace) -> str:
    """--solver, refused unless it is a fixed-step ODE solver whose step fits --nfe."""
    from ..solvers import get
    from ..tuning.schedule import fixed_step_ode_solvers

    tunable = fixed_step_ode_solvers()
    try:
        info = get(args.solver)
    except ValueError:
        raise _checks.fail("--solver", "a fixed-step ODE solver: " + ", ".join(tunable), args.solver) from None
    if info.name not in tunable:
        why = "an SDE solver" if info.kind != "ode" else "an adaptive solver: it chooses its own steps"
        raise refuse("--solver", "a fixed-step ODE solver: " + ", ".join(tunable), args.solver, why)
    info.steps_for_nfe(args.nfe, args.solver_options)  # a budget below one step is refused here
    return info.name


def run(args: argparse.Namespace) -> None:
    """Tune a sampler (scoresde.tune) and write its JSON."""
    from .. import tuning

    device_flag(args.device)
    output_file(args.out)
    if args.cache_dir is not None:
        output_folder(args.cache_dir, "--cache-dir")
    args.solver_options = solver_options(args.options)
    args.solver = _solver(args)
    options = _options(args)
    if (args.problem is None) == (args.ckpt is None):
        raise _checks.fail("--problem/--ckpt", "exactly one of them (an analytic problem or a trained model)",
                           f"--problem {args.problem} and --ckpt {args.ckpt}" if args.problem else "neither")
    dtype = DTYPES[args.dtype]
    if args.ckpt is not None:
        from ..bench import score_checkpoint
        from ..training import load_model

        if args.sde is not None:
            raise _checks.fail("--sde", "used with --problem (a --ckpt model has its own SDE)", args.sde)
        path = input_file("--ckpt", args.ckpt, "Trainer checkpoint file")
        data_shape = tuple(score_checkpoint(path, "--ckpt")["config"]["data_shape"])
        model = load_model(path, args.weights, device=args.device, dtype=dtype)
        what, use = f"{path} ({args.weights} weights)", f"--ckpt {path}" + (
            f" --weights {args.weights}" if args.weights != "ema" else "")
    else:
        from ..data.problems import get_problem

        sde = args.sde or "vp"
        truth = get_problem(args.problem)
        model, data_shape = truth.score_model(by_name(sde)), tuple(truth.event_shape)
        what, use = f"{args.problem} | {sde}", f"--problem {args.problem} --sde {sde}"
    gen = torch.Generator(device=args.device).manual_seed(args.seed)
    tuned = tuning.tune(model, args.nfe, method=args.method, solver=args.solver,
                        shape=(args.calibration, *data_shape), validation=args.validation, generator=gen,
                        cache_dir=args.cache_dir, dtype=dtype, device=args.device,
                        solver_options=args.solver_options, **options)
    tuned.save(args.out)
    runs = f"{tuned.solver} " if tuned.solver != args.solver else ""
    verdict = "kept the start: the tuned sampler was no better on validation" if tuned.kept_start else "tuned"
    print(f"{what} | {args.solver} | nfe={args.nfe} ({tuned.steps} steps) | method {args.method}: validation RMSE "
          f"{tuned.loss_start:.3e} ({tuned.start}, the best fixed schedule) -> {tuned.loss:.3e} ({runs}{verdict})")
    print(f"tuning cost: {tuned.cost_nfe} NFE, {tuned.cost_seconds:.1f} s; calibration {tuned.calibration}, "
          f"validation {tuned.validation} noises")
    print("times: " + ", ".join(f"{t:.6g}" for t in tuned.times.tolist()))
    print(f"wrote {args.out}; use it with: scoresde sample {use} --tuned {args.out}")
