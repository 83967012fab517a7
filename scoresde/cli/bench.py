"""`scoresde bench`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List

from .. import _checks
from ._args import DTYPES, MAX_SAMPLES, WHY_SAMPLES, MAX_STEPS, WHY_STEPS, int_flag, seed_flag, refuse, device_flag, input_file, output_folder


def add(command) -> None:
    from ..bench import ADAPTIVE_TOLERANCES, ANALYTIC, BENCH_SDES, DEFAULT_NFES, METRICS
    from ..schedules import SCHEDULES
    from ..tuning import MIN_CALIBRATION

    p = command("bench", "accuracy against NFE of any solvers on problems with exact answers")
    p.add_argument("--quick", action="store_true", help="two problems, 11 solvers, NFE 5-50, 1000 samples (about a minute)")
    p.add_argument("--problems", nargs="+", default=None,
                   help=f"mixtures ({' '.join(ANALYTIC)}, each under every --sdes), 'ring2d/vp'-style pairs, "
                        "or digits (with --ckpt); default: the four mixtures")
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
                   help="a Trainer checkpoint of a digits model (adds problem 'digits')")
    seed_flag(p)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cuda:1" + " (under torchrun: each rank's own GPU)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="dtype of the sampling")
    p.add_argument("--out", default="out/bench", help="folder for accuracy_vs_nfe.{json,csv,md,png}")
    p.add_argument("--resume", action="store_true", help="skip the cells an earlier run with these settings finished")
    p.add_argument("--optimize", action="store_true",
                   help="add an optimized-schedule row per fixed-step ODE solver (scoresde.tuning.optimize)")
    int_flag(p, "--calibration", low=MIN_CALIBRATION, high=MAX_SAMPLES, why=WHY_SAMPLES, default=256,
             help="calibration batch of --optimize (held-out noise)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)



def _check_bench(args: argparse.Namespace, names: List[str]) -> None:
    """What bench would otherwise find only when it reaches it (a later problem, the first
    write, the resume file), checked on every rank before any work."""
    from .. import bench

    device_flag(args.device)
    for name in names:
        if name != "digits":
            mixture, _, sde = name.partition("/")
            _checks.choice("--problems", mixture, bench.ANALYTIC)
            _checks.choice(f"the SDE of --problems {name}", sde, bench.BENCH_SDES)
    if "digits" in names:
        if args.ckpt is None:
            raise _checks.fail("--ckpt", "a Trainer checkpoint of a digits model with --problems digits", None)
        input_file("--ckpt", args.ckpt, "Trainer checkpoint file")
    elif args.ckpt is not None:
        raise _checks.fail("--problems", "a list with digits when --ckpt is given (the checkpoint is used by "
                           "problem digits only)", args.problems)
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


def run(args: argparse.Namespace) -> None:
    """Accuracy against NFE (scoresde.bench); under torchrun the batch is sharded."""
    from .. import bench
    from .._dist import torchrun_group

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
