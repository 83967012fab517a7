"""`scoresde bench`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List

from .. import _checks
from ._args import DTYPES, MAX_SAMPLES, WHY_SAMPLES, MAX_STEPS, WHY_STEPS, int_flag, seed_flag, refuse, device_flag, input_file, output_folder, json_object


def add(command) -> None:
    from ..bench import ADAPTIVE_TOLERANCES, ANALYTIC, BENCH_SDES, DEFAULT_NFES, METRICS
    from ..data import BUILTIN_DATA
    from ..schedules import SCHEDULES
    from ..tuning import METHODS
    from ..tuning.api import DEFAULT_VALIDATION

    p = command("bench", "accuracy against NFE of any solvers on problems with exact answers, or on any trained "
                         "model (--ckpt) against a data set's held-out split (--data)")
    p.add_argument("--quick", action="store_true", help="two problems, 11 solvers, NFE 5-50, 1000 samples (about a minute)")
    p.add_argument("--problems", nargs="+", default=None,
                   help=f"mixtures ({' '.join(ANALYTIC)}, each under every --sdes), 'ring2d/vp'-style pairs, "
                        "or ckpt (the --ckpt model on --data; digits: the same on the digits); default: the four "
                        "mixtures, and ckpt with --ckpt")
    p.add_argument("--sdes", nargs="+", default=None, choices=list(BENCH_SDES), help=f"default: {' '.join(BENCH_SDES)}")
    p.add_argument("--solvers", nargs="+", default=None, help="registry names; default: all (--quick: 11)")
    int_flag(p, "--nfe", nargs="+", high=MAX_STEPS, why=WHY_STEPS, default=None,
             help=f"NFE budgets; default {' '.join(map(str, DEFAULT_NFES))} (--quick: 5 10 20 50)")
    p.add_argument("--metrics", nargs="+", default=None, help=f"a subset of {' '.join(METRICS)}; default: all")
    # no --n alias: under torchrun that prefix is ambiguous with torchrun's own --nnodes/--nproc-per-node
    int_flag(p, "--samples", low=2, high=MAX_SAMPLES, why=WHY_SAMPLES, default=None, help="samples per cell (default 1000)")
    int_flag(p, "--tolerances", low=0, high=max(map(len, ADAPTIVE_TOLERANCES.values())), why="the longest sweep",
             default=None,
         help="entries of each adaptive solver's tolerance sweep (default 4; --quick: 2)")
    p.add_argument("--schedule", default=None, choices=list(SCHEDULES), help="default: each solver's own")
    p.add_argument("--ckpt", "--digits-ckpt", dest="ckpt", default=None,
                   help="a Trainer checkpoint of any score model (adds its problem, named after --data): reference "
                        "trajectories are its own float32 dopri5 solves at 1e-5, samples are compared with the "
                        "--data test split, the floor is the train split against it (--digits-ckpt: old name)")
    p.add_argument("--data", default=None,
                   help=f"data set of the --ckpt model: a built-in name ({' '.join(BUILTIN_DATA)}) or a "
                        ".pt/.npy/.npz file; default digits for a model of "
                        "shape (1, 8, 8), else required")
    seed_flag(p)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cuda:1" + " (under torchrun: each rank's own GPU)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="dtype of the sampling")
    p.add_argument("--out", default="out/bench", help="folder for accuracy_vs_nfe.{json,csv,md,png}")
    p.add_argument("--resume", action="store_true", help="skip the cells an earlier run with these settings finished")
    p.add_argument("--tune", nargs="+", default=[], choices=list(METHODS), metavar="METHOD",
                   help=f"add a row tuned:METHOD:SOLVER per method ({', '.join(METHODS)}) and fixed-step ODE solver: "
                        "its sampler tuned by scoresde.tune per problem and NFE on noise held out from the cells'")
    p.add_argument("--optimize", action="store_true", help="the same as --tune nelder-mead (its older name)")
    int_flag(p, "--calibration", high=MAX_SAMPLES, why=WHY_SAMPLES, default=256,
             help="calibration batch of --tune (prior noise from seed + 3, not the cells')")
    int_flag(p, "--validation", high=MAX_SAMPLES, why=WHY_SAMPLES, default=DEFAULT_VALIDATION,
             help="validation batch of --tune (drawn after the calibration batch)")
    p.add_argument("--tune-options", default=None,
                   help='options of the --tune methods as a JSON object by method, e.g. \'{"steps": {"epochs": 10}}\'')
    p.add_argument("--cache-dir", default=None,
                   help="folder where --tune caches its teacher solves (default: a temporary one for the run; "
                        "single process only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)



def _check_bench(args: argparse.Namespace, names: List[str]) -> List[str]:
    """What bench would otherwise find only when it reaches it (a later problem, the checkpoint
    and its data set, the first write, the resume file), checked on every rank before any work;
    returns the problem names, the checkpoint's named digits when its data set is the digits."""
    from .. import bench

    device_flag(args.device)
    for name in names:
        if name not in bench.CHECKPOINT_PROBLEMS:
            mixture, _, sde = name.partition("/")
            _checks.choice("--problems", mixture, bench.ANALYTIC)
            _checks.choice(f"the SDE of --problems {name}", sde, bench.BENCH_SDES)
    if any(name in bench.CHECKPOINT_PROBLEMS for name in names):
        if args.ckpt is None:
            raise _checks.fail("--ckpt", "a Trainer checkpoint with --problems ckpt or digits", None)
        input_file("--ckpt", args.ckpt, "Trainer checkpoint file")
        state = bench.score_checkpoint(args.ckpt, "--ckpt")
        data = bench.checkpoint_data(state, args.data, "test", name="--data").name
        if "digits" in names and data != "digits":
            raise _checks.fail("--problems", f"a list with ckpt, not digits, for --data {data} (problem digits is "
                               "the --ckpt model on the digits)", args.problems)
        train = len(bench.checkpoint_data(state, data, "train", name="--data"))
        if (args.samples or 1000) > train:
            raise _checks.fail("--samples", f"at most {train} with --ckpt (the floor draws that many from the "
                               f"{data} train split)", args.samples or 1000)
        names = ["digits" if name == "ckpt" and data == "digits" else name for name in names]
    elif args.ckpt is not None:
        raise _checks.fail("--problems", "a list with digits or ckpt when --ckpt is given (the checkpoint's "
                           "problem)", args.problems)
    elif args.data is not None:
        raise _checks.fail("--data", "used with --ckpt (the data set of the checkpoint's model)", args.data)
    _check_tune(args)
    folder = output_folder(args.out)
    results = folder / "accuracy_vs_nfe.json"
    if args.resume and results.exists():
        accepted = "used with an --out whose accuracy_vs_nfe.json was written by `scoresde bench` (or is absent)"
        try:
            earlier = json.loads(results.read_text())
        except OSError as err:
            raise refuse("--resume", accepted, str(results), f"it cannot be read: {err.strerror or err}") from None
        except ValueError as err:  # not JSON, or not text
            raise refuse("--resume", accepted, str(results), f"it cannot be parsed: {err}") from None
        fields = dict(config=dict, problems=dict, cells=list)
        wrong = [k for k, kind in fields.items() if not isinstance(earlier, dict) or not isinstance(earlier.get(k), kind)]
        if wrong:
            raise refuse("--resume", accepted, str(results), "it has no valid " + ", ".join(wrong))
    return names


def _check_tune(args: argparse.Namespace) -> None:
    """--tune (with --optimize, its alias), --tune-options (methods of --tune, option names each
    method takes; their values are checked by scoresde.tune) and --cache-dir."""
    from .tune import method_options

    from ..tuning import MIN_CALIBRATION

    if args.optimize:
        args.tune = [*args.tune, "nelder-mead"]
    args.tune = list(dict.fromkeys(args.tune))
    if "nelder-mead" in args.tune and args.calibration < MIN_CALIBRATION:
        raise _checks.fail("calibration", f"an integer >= {MIN_CALIBRATION} for --tune nelder-mead (--optimize)",
                           args.calibration)
    owners = method_options()
    accepted = "a JSON object of options by --tune method, e.g. {\"steps\": {\"epochs\": 10}}"
    options = json_object("--tune-options", args.tune_options, "options by --tune method")
    for method, given in options.items():
        if method not in args.tune:
            raise refuse("--tune-options", accepted, args.tune_options,
                         f"{method!r} is not a --tune method ({', '.join(args.tune) or 'none given'})")
        if not isinstance(given, dict):
            raise refuse("--tune-options", accepted, args.tune_options, f"the options of {method!r} are no object")
        unknown = sorted(set(given) - owners[method])
        if unknown:
            raise refuse("--tune-options", accepted, args.tune_options,
                         f"method {method!r} has no option {', '.join(unknown)}; it takes "
                         f"{', '.join(sorted(owners[method]))}")
    args.tune_options = options
    if args.cache_dir is not None:
        output_folder(args.cache_dir, "--cache-dir")


def run(args: argparse.Namespace) -> None:
    """Accuracy against NFE (scoresde.bench); under torchrun the batch is sharded."""
    from .. import bench
    from .._dist import torchrun_group

    quick = bench.QUICK if args.quick else {}
    if quick and not args.problems:
        names = list(quick["problems"])
    else:
        names = [p if "/" in p or p in bench.CHECKPOINT_PROBLEMS else f"{p}/{s}"
                 for p in args.problems or bench.ANALYTIC for s in args.sdes or bench.BENCH_SDES]
    if args.ckpt and not args.problems:
        names.append("ckpt")
    names = _check_bench(args, names)
    with torchrun_group(args.device) as device:
        results = bench.run_benchmark(
            problems=list(dict.fromkeys(names)), solvers=args.solvers or quick.get("solvers"),
            nfes=args.nfe or quick.get("nfes", bench.DEFAULT_NFES), metrics=args.metrics or bench.METRICS,
            n=args.samples or quick.get("n", 1000), seed=args.seed, device=device, dtype=DTYPES[args.dtype],
            schedule=args.schedule, tolerances=args.tolerances or quick.get("tolerances", 4), out=args.out,
            resume=args.resume, progress=not args.no_progress, checkpoint=args.ckpt, data=args.data,
            tune=args.tune, calibration=args.calibration, validation=args.validation,
            tune_options=args.tune_options, cache_dir=args.cache_dir,
        )
    if results is not None:
        print(bench.markdown(results))
        print(f"wrote {Path(args.out) / 'accuracy_vs_nfe'}.{{json,csv,md,png}} in {results['seconds']:.0f} s")
