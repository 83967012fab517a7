"""Learned samplers (`scoresde.tune`) against the best fixed solver/schedule pair, on held-out noise.

    OMP_NUM_THREADS=1 python benchmarks/learned_samplers.py [--ckpt out/digits_quick/checkpoint.pt]
        [--quick] [--problems ring2d/vp gmm16d/edm digits] [--nfe 5 10] [--methods steps gits]
        [--solvers ipndm dpm++3m] [--out benchmarks/results]

Four disjoint batches of prior noise per problem: calibration (seed + 1: what tuning fits),
validation (seed + 2: what tuning early-stops and falls back on), selection (seed + 5: what picks
among the tuned samplers and the fixed pairs, so that the choice is not made on the batch that
early stopping already fitted) and held-out (seed: what every number here is measured on, seen
by nothing before). Validation and selection are 4x the calibration batch on the mixtures: the
error there is carried by the few trajectories that end in another mode than the teacher's
(on gmm16d/vp at 10 NFE the worst 1% of the best fixed pair's samples carry 70% of its squared
error: the JSON's tail_share), and
1024 noises hold only a handful of them, too few to stop on.
Teachers (tight solves from the same noise: float64 dopri8 at 1e-10 for the exact mixture
oracles, float32 dopri5 at 1e-5 for the digits U-Net) are cached under --cache.

Per (problem, NFE) cell:
- every fixed pair of FIXED_SOLVERS x SCHEDULES on the held-out batch; the best of them chosen on
  the held-out batch itself (the optimistic baseline);
- every method of --methods tuned for every solver of --solvers: held-out RMSE (the root mean
  per-coordinate squared error against the teacher), median and 99th percentile of the per-sample
  RMS error, sliced W2 to exact samples (mixtures) or test digits next to its floor (two exact
  sets of the same size), for digits the Frechet distance in a digit classifier's features next to
  its floor (real train digits of the same count against the test split) and the teacher's own
  (its model's own flow, which every sampler approximates), tuning cost in NFE and
  wall seconds, validation RMSE;
- "learned": of the methods other than nelder-mead and of the fixed pairs, the sampler with the
  lowest selection RMSE (so a cell where nothing learned beats the fixed pairs there returns the
  best fixed pair on selection); its held-out ratio to the best fixed pair is the figure of
  merit, next to nelder-mead's, and next to its ratio to the fixed pair chosen on selection
  (the fair baseline: the best on held-out is picked with the held-out noise); "tail share":
  the fraction of its held-out squared error that the worst 1% of samples carry.

Writes learned_samplers.json after every tuned sampler (a rerun skips what is there; --quick
writes learned_samplers_quick.*) and a plot of held-out RMSE vs NFE, one panel per problem.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

import scoresde as sd
from scoresde import schedules
from scoresde.bench import Problem, analytic_problem, digits_problem
from scoresde.metrics import sliced_wasserstein
from scoresde.tuning import teacher
from scoresde.tuning.schedule import endpoint_rmse

MIXTURES = ["ring2d/vp", "ring2d/edm", "gmm16d/vp", "gmm16d/edm", "gmm64d/vp", "gmm64d/edm"]
ALL_NFES = [4, 5, 6, 8, 10, 20]
NFES = [5, 10]
METHODS = ["steps", "coefficients", "gits", "nelder-mead"]
#: the solvers every method is tuned for (the learned sampler picks among them on selection);
#: "best" is the solver of the fixed pair best on the validation batch (the cell's own choice)
SOLVERS = ["best"]
FIXED_SOLVERS = ["ddim", "dpm++2m", "dpm++3m", "unipc", "ipndm", "deis"]
SCHEDULES = ["uniform", "quadratic", "logsnr", "karras"]
#: batch sizes (calibration, validation, selection, held-out) of the mixtures and of the digits
SIZES = {"mixture": (1024, 4096, 4096, 2000), "digits": (128, 512, 512, 500)}
QUICK_SIZES = {"mixture": (256, 512, 512, 500), "digits": (32, 64, 64, 100)}
#: options of the methods on the digits U-Net (its backward passes cost ~100x an oracle's)
DIGITS_OPTIONS = {"steps": dict(epochs=15, patience=5, batch_size=32), "coefficients": dict(epochs=15, patience=5,
                                                                                          batch_size=32),
                  "nelder-mead": dict(max_evals=100)}
TARGET = {10: (0.25, 0.5), 5: (0.5, None)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problems", nargs="+", default=None,
                   help=f"of {', '.join(MIXTURES)} and digits (default all mixtures, and digits with --ckpt)")
    p.add_argument("--nfe", nargs="+", type=int, default=NFES, help=f"budgets (default {NFES}; the issue's grid: {ALL_NFES})")
    p.add_argument("--methods", nargs="+", default=METHODS, choices=sd.tuning.METHODS)
    p.add_argument("--solvers", nargs="+", default=SOLVERS,
                   help="solvers each method is tuned for; 'best': the solver of the fixed pair best on validation")
    p.add_argument("--ckpt", default=None, help="the digits checkpoint (adds problem 'digits')")
    p.add_argument("--digits-label", default="digits",
                   help="the name the digits problem is recorded under (e.g. digits-v for another checkpoint)")
    p.add_argument("--quick", action="store_true", help="small batches, outputs *_quick")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default="out/learned_samplers/teachers", help="teacher cache")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--replot", action="store_true", help="redo the summary and plot from the JSON")
    return p


def main(argv: Optional[List[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    suffix = "_quick" if args.quick else ""
    path = Path(args.out) / f"learned_samplers{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(path.read_text()) if path.exists() else {}
    results.setdefault("fixed", [])
    results.setdefault("tuned", [])
    results.setdefault("commands", [])
    if not args.replot:
        problems = args.problems or (MIXTURES + (["digits"] if args.ckpt else []))
        command = "OMP_NUM_THREADS=1 python " + " ".join(shlex.quote(a) for a in ["benchmarks/learned_samplers.py"]
                                                        + (sys.argv[1:] if argv is None else argv))
        results["commands"].append(command)
        results["machine"] = dict(processor=platform.processor() or platform.machine(), torch=torch.__version__,
                                  threads=torch.get_num_threads())
        results["settings"] = dict(sizes=QUICK_SIZES if args.quick else SIZES, fixed_solvers=FIXED_SOLVERS,
                                   schedules=SCHEDULES, digits_options=DIGITS_OPTIONS, seed=args.seed,
                                   batches="held-out seed, calibration seed + 1, validation seed + 2, selection seed + 5")
        for name in problems:
            if name == "digits" and not args.ckpt:
                raise SystemExit("problem digits needs --ckpt (e.g. out/digits_quick/checkpoint.pt)")
            run_problem(args.digits_label if name == "digits" else name, args, results, path)
    results["summary"] = summary(results)
    save(results, path)
    print(table(results))
    plot(results, path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return results


def save(results: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)


class _Bench:
    """One problem's batches, teachers and measures."""

    def __init__(self, name: str, args):
        self.name, self.digits = name, name == args.digits_label
        self.problem: Problem = digits_problem(args.ckpt) if self.digits else analytic_problem(name)
        self.model, self.sde = self.problem.model, self.problem.model.sde
        kind = "digits" if self.digits else "mixture"
        n_cal, n_val, n_sel, n_held = (QUICK_SIZES if args.quick else SIZES)[kind]
        dtype = torch.float32 if self.digits else torch.float64
        self.cache = args.cache

        def noise(n: int, seed: int) -> torch.Tensor:
            return self.sde.prior_sample((n, *self.problem.shape), generator=torch.Generator().manual_seed(seed),
                                         dtype=dtype)

        self.x_held, self.x_cal, self.x_val = noise(n_held, args.seed), noise(n_cal, args.seed + 1), \
            noise(n_val, args.seed + 2)
        self.x_sel = noise(n_sel, args.seed + 5)
        started = time.perf_counter()
        self.ref_held, self.ref_val, self.ref_sel = (
            teacher(self.model, x, t_end=self.problem.t_end, cache_dir=self.cache).x
            for x in (self.x_held, self.x_val, self.x_sel))
        self.teacher_seconds = time.perf_counter() - started
        draw = torch.Generator().manual_seed(args.seed + 3)
        self.exact = self.problem.draw(n_held, draw)  # the floor's second set
        self.floor = {"sliced_w2": float(sliced_wasserstein(self.exact, self.problem.target))}
        if self.digits:
            from scoresde.bench import classifier_frechet, train_digit_classifier
            from scoresde.data import load_digits

            x_train, y_train = load_digits("train")
            self.classifier = train_digit_classifier(x_train, y_train, epochs=30, seed=args.seed + 1)
            self.fd = lambda x: classifier_frechet(self.classifier, x, self.problem.target)
            self.floor["frechet"] = self.fd(self.exact)
            self.floor["frechet_all_train"] = self.fd(x_train)
            # the model's own limit: its probability-flow ODE solved tightly from the held-out noise
            self.floor["frechet_teacher"] = self.fd(self.ref_held)

    def measure(self, x: torch.Tensor) -> Dict[str, float]:
        """Held-out errors of samples x from x_held, and their sample metrics."""
        e = (x.to(torch.float64) - self.ref_held.to(torch.float64)).square().flatten(1).mean(1)
        per_sample = e.sqrt()
        worst = torch.topk(e, max(1, len(e) // 100)).values
        out = dict(rmse=float(e.mean().sqrt()), median=float(per_sample.median()),
                   p99=float(torch.quantile(per_sample, 0.99)), tail_share=float(worst.sum() / e.sum()),
                   sliced_w2=float(sliced_wasserstein(x.to(torch.float64), self.problem.target)))
        if not math.isfinite(out["rmse"]):
            out = {k: math.inf for k in out}
        elif self.digits:
            out["frechet"] = self.fd(x)
        return out

    def rmse_on(self, batch: str, **sample_kwargs) -> float:
        """RMSE on the "validation" or "selection" batch."""
        x_T, ref = (self.x_val, self.ref_val) if batch == "validation" else (self.x_sel, self.ref_sel)
        return endpoint_rmse(self.model, x_T, ref, **sample_kwargs)


def run_problem(name: str, args, results: dict, path: Path) -> None:
    done_fixed = {(c["problem"], c["nfe"]) for c in results["fixed"]}
    done_tuned = {(c["problem"], c["nfe"], c["method"], c["solver"]) for c in results["tuned"]}
    best = {c["nfe"]: c["best_on_validation"].partition("/")[0] for c in results["fixed"] if c["problem"] == name}
    todo = [(b, m, s) for b in args.nfe for m in args.methods for s in args.solvers
            if (name, b, m, best.get(b) if s == "best" else s) not in done_tuned]
    if not todo:
        return
    bench = _Bench(name, args)
    print(f"{name}: teachers {bench.teacher_seconds:.0f} s; floors {bench.floor}", flush=True)
    for budget in args.nfe:
        if (name, budget) not in done_fixed:
            results["fixed"].append(fixed_cell(bench, budget))
            save(results, path)
        fixed = next(c for c in results["fixed"] if (c["problem"], c["nfe"]) == (name, budget))
        for method in args.methods:
            for requested in args.solvers:
                solver = fixed["best_on_validation"].partition("/")[0] if requested == "best" else requested
                if (name, budget, method, solver) in done_tuned:
                    continue
                done_tuned.add((name, budget, method, solver))
                results["tuned"].append(tuned_cell(bench, budget, method, solver, args.seed))
                save(results, path)


def fixed_cell(bench: _Bench, budget: int) -> dict:
    """Every fixed pair on the held-out batch (and on validation, where the solver to tune is
    chosen, and on selection, where the learned sampler is)."""
    pairs = {}
    for solver in FIXED_SOLVERS:
        steps = sd.solvers.get(solver).steps_for_nfe(budget)
        for schedule in SCHEDULES:
            ts = schedules.get_schedule(schedule, bench.sde, steps, bench.problem.t_end)
            x = sd.sample(bench.model, x_T=bench.x_held, solver=solver, schedule=ts).x
            pairs[f"{solver}/{schedule}"] = {**bench.measure(x),
                                             "validation": bench.rmse_on("validation", solver=solver, schedule=ts),
                                             "selection": bench.rmse_on("selection", solver=solver, schedule=ts)}
    best = min(pairs, key=lambda k: pairs[k]["rmse"])
    best_val = min(pairs, key=lambda k: pairs[k]["validation"])
    cell = dict(problem=bench.name, nfe=budget, pairs=pairs, best=best, best_on_validation=best_val,
                floor=bench.floor, sizes=dict(calibration=len(bench.x_cal), validation=len(bench.x_val),
                                              selection=len(bench.x_sel), held_out=len(bench.x_held)))
    print(f"{bench.name:11s} NFE {budget:3d}: best fixed {best} {pairs[best]['rmse']:.3e} "
          f"(on validation: {best_val})", flush=True)
    return cell


def tuned_cell(bench: _Bench, budget: int, method: str, solver: str, seed: int) -> dict:
    options = dict(DIGITS_OPTIONS.get(method, {})) if bench.digits else {}
    record = dict(problem=bench.name, nfe=budget, method=method, solver=solver, options=options)
    bench.model.nfe = 0
    started = time.perf_counter()
    try:
        tuned = sd.tune(bench.model, budget, method, solver, x_T=bench.x_cal, validation=bench.x_val,
                        generator=torch.Generator().manual_seed(seed + 4), cache_dir=bench.cache,
                        t_end=bench.problem.t_end, **options)
    except (sd._checks.ArgumentError, ValueError) as err:  # a budget the method cannot use
        record.update(error=f"{type(err).__name__}: {err}")
        print(f"{bench.name:11s} NFE {budget:3d} {method:12s} {solver:8s}: {record['error']}", flush=True)
        return record
    seconds = time.perf_counter() - started
    x = sd.sample(bench.model, x_T=bench.x_held, solver=tuned).x
    record.update(bench.measure(x), validation=tuned.loss, selection=bench.rmse_on("selection", solver=tuned),
                  validation_start=tuned.loss_start, start=tuned.start,
                  kept_start=tuned.kept_start, cost_nfe=tuned.cost_nfe, cost_seconds=seconds,
                  times=tuned.times.tolist(), sampler_nfe=tuned.nfe)
    print(f"{bench.name:11s} NFE {budget:3d} {method:12s} {solver:8s}: held-out {record['rmse']:.3e} "
          f"validation {tuned.loss:.3e} (start {tuned.loss_start:.3e}{', kept' if tuned.kept_start else ''}) "
          f"{seconds:.0f} s", flush=True)
    return record


# ---- summary, table, plot ---------------------------------------------------------------------
def _learned(fixed: dict, tuned: List[dict]) -> dict:
    """The sampler with the lowest selection RMSE among the tuned ones (not nelder-mead) and
    the fixed pairs."""
    candidates = [(r["selection"], f"{r['method']}/{r['solver']}", r) for r in tuned
                  if "error" not in r and r["method"] != "nelder-mead"]
    candidates += [(v["selection"], f"fixed {k}", v) for k, v in fixed["pairs"].items()]
    value, label, chosen = min(candidates, key=lambda c: c[0])
    return dict(choice=label, selection=value, validation=chosen["validation"],
                **{k: chosen[k] for k in ("rmse", "median", "p99", "tail_share", "sliced_w2")},
                **({"frechet": chosen["frechet"]} if "frechet" in chosen else {}))


def summary(results: dict) -> dict:
    cells = []
    for fixed in results["fixed"]:
        tuned = [r for r in results["tuned"] if r["problem"] == fixed["problem"] and r["nfe"] == fixed["nfe"]]
        if not tuned:
            continue
        best = fixed["pairs"][fixed["best"]]
        fair = min(fixed["pairs"], key=lambda k: fixed["pairs"][k]["selection"])
        cell = dict(problem=fixed["problem"], nfe=fixed["nfe"], best_fixed=fixed["best"], best_fixed_rmse=best["rmse"],
                    fixed_on_selection=fair, fixed_on_selection_rmse=fixed["pairs"][fair]["rmse"], floor=fixed["floor"])
        learned = _learned(fixed, tuned)
        cell["learned"] = {**learned, "ratio": learned["rmse"] / best["rmse"],
                           "ratio_to_fixed_on_selection": learned["rmse"] / fixed["pairs"][fair]["rmse"],
                           "heldout_over_validation": learned["rmse"] / learned["validation"]}
        if "frechet" in learned:
            cell["learned"]["frechet_over_floor"] = learned["frechet"] / fixed["floor"]["frechet"]
        per_method = {}
        for method in dict.fromkeys(r["method"] for r in tuned):
            rows = [r for r in tuned if r["method"] == method and "error" not in r]
            if rows:
                r = min(rows, key=lambda r: r["selection"])  # its solver chosen on selection
                per_method[method] = dict(solver=r["solver"], rmse=r["rmse"], ratio=r["rmse"] / best["rmse"],
                                          validation=r["validation"], heldout_over_validation=r["rmse"] / r["validation"],
                                          cost_nfe=sum(x["cost_nfe"] for x in rows),
                                          cost_seconds=sum(x["cost_seconds"] for x in rows))
        cell["methods"] = per_method
        if "nelder-mead" in per_method:
            cell["learned"]["ratio_to_nelder_mead"] = learned["rmse"] / per_method["nelder-mead"]["rmse"]
        cell["best_fixed_frechet"] = best.get("frechet")
        cells.append(cell)
    order = list(dict.fromkeys(c["problem"] for c in cells))
    cells.sort(key=lambda c: (order.index(c["problem"]), c["nfe"]))
    targets = {}
    for budget, (gmean_target, worst_target) in TARGET.items():
        ratios = [c["learned"]["ratio"] for c in cells if c["nfe"] == budget and c["problem"] in MIXTURES]
        if ratios:
            targets[f"nfe{budget}"] = dict(
                problems=len(ratios), geometric_mean=math.exp(sum(map(math.log, ratios)) / len(ratios)),
                worst=max(ratios), losses=sum(r > 1 for r in ratios), target_geometric_mean=gmean_target,
                target_worst=worst_target)
    return dict(cells=cells, targets=targets)


def table(results: dict) -> str:
    s = results.get("summary") or summary(results)
    methods = list(dict.fromkeys(m for c in s["cells"] for m in c["methods"]))
    lines = ["| problem | NFE | best fixed (held-out) | RMSE | learned (chosen on selection) | ratio | held-out / "
             "validation | tail share | ratio to the fixed pair chosen on selection | " + " | ".join(methods) + " |",
             "|---|---|---|---|---|---|---|---|---|" + "---|" * len(methods)]
    for c in s["cells"]:
        m = [f"{c['methods'][k]['ratio']:.2f}" if k in c["methods"] else "-" for k in methods]
        lines.append(f"| {c['problem']} | {c['nfe']} | {c['best_fixed']} | {c['best_fixed_rmse']:.3g} | "
                     f"{c['learned']['choice']} | {c['learned']['ratio']:.2f} | "
                     f"{c['learned']['heldout_over_validation']:.2f} | {c['learned']['tail_share']:.2f} | "
                     f"{c['learned']['ratio_to_fixed_on_selection']:.2f} | " + " | ".join(m) + " |")
        if "frechet_over_floor" in c["learned"]:
            lines.append(f"| {c['problem']} | {c['nfe']} | Frechet distance: learned {c['learned']['frechet']:.3g}, "
                         f"best fixed {c['best_fixed_frechet']:.3g}, floor {c['floor']['frechet']:.3g} (learned / floor "
                         f"{c['learned']['frechet_over_floor']:.2f})"
                         + (f", the teacher's {c['floor']['frechet_teacher']:.3g}" if "frechet_teacher" in c["floor"] else "")
                         + " |")
    for key, t in s["targets"].items():
        lines.append(f"{key}: learned / best fixed geometric mean {t['geometric_mean']:.2f} (target "
                     f"{t['target_geometric_mean']}), worst {t['worst']:.2f}, losses {t['losses']}/{t['problems']}")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = (results.get("summary") or summary(results))["cells"]
    problems = list(dict.fromkeys(c["problem"] for c in cells))
    if not problems:
        return
    fig, axes = plt.subplots(1, len(problems), figsize=(3.2 * len(problems), 3.3), squeeze=False)
    for ax, name in zip(axes[0], problems):
        rows = sorted((c for c in cells if c["problem"] == name), key=lambda c: c["nfe"])
        nfes = [c["nfe"] for c in rows]
        ax.semilogy(nfes, [c["best_fixed_rmse"] for c in rows], "k-s", ms=3, lw=1.5, label="best fixed (held-out)")
        ax.semilogy(nfes, [c["learned"]["rmse"] for c in rows], "r-o", ms=4, lw=1.5, label="learned (selection)")
        for method in dict.fromkeys(m for c in rows for m in c["methods"]):
            pts = [(c["nfe"], c["methods"][method]["rmse"]) for c in rows if method in c["methods"]]
            ax.semilogy(*zip(*pts), "--", marker=".", ms=3, lw=0.8, label=method)
        ax.set(title=name, xlabel="NFE", xticks=nfes)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("held-out RMSE vs teacher")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
