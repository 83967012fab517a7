"""Which fixed-step ODE sampler should `scoresde.sample()` use by default? (issue 19, item 7)

Every fixed-step ODE solver (ddim, dpm++2m, dpm++3m, unipc bh1/bh2, ipndm, deis, and
dpm-solver-v3 when it is registered) on every schedule (uniform, quadratic, logsnr, karras at
several rho), each solver with its own final-step defaults, except that the multistep solvers
have the final-step controls crossed instead (order tapering on the last steps,
lower_order_final = 1000 "taper" or 0 "full"; final_step = "t_end" or "zero") on the grids
FINAL_SCHEDULES. All
at 5, 10 and 20 NFE on every mixture problem of the accuracy suite (ANALYTIC x BENCH_SDES) and
on a trained digits model.

Metric, as `scoresde bench` measures it: terminal RMSE of float32 samples against the problem's
reference solve of the probability-flow ODE from the same prior noise (float64 dopri8 at 1e-10
for the mixtures, float32 dopri5 at 1e-5 for a checkpoint). final_step="zero" ends at sigma = 0,
so it is compared with the reference continued to sigma = 0 by (y + D(y))/2 at t_end (y = x/alpha,
D the model's x0; O(sigma_hat^3), as in benchmarks/final_steps.py).

Honesty: every problem gets two independent noise batches, "select" (seed 100) and "heldout"
(seed 101). Rules are chosen on "select" and reported on "heldout", against the best fixed
configuration found on "heldout" itself (an oracle the rule never saw). Also a problem split:
the rule chosen on half the mixtures (select noise) and reported on the other half (held-out
noise), both ways. Digits gets one batch (held-out, 100 noises) and is never used to choose.
dpm-solver-v3 is measured but never a candidate default (a trained model's statistics need data
samples, which sample() does not have); on digits its statistics come from training digits.

    OMP_NUM_THREADS=1 python benchmarks/default_sampler.py --ckpt out/digits_quick/checkpoint.pt
    # the committed JSON: --problems (the 11 mixture problems but gmm64d/edm, not finished in time)
    #   --ckpt out/digits_quick/checkpoint.pt --cache DIR (per-problem runs merged from DIR)
    OMP_NUM_THREADS=1 python benchmarks/default_sampler.py --analyze   # from the JSON, no solves

Writes benchmarks/results/default_sampler.{json,png}; `--cache DIR` keeps each problem's
results (resumes an interrupted run).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path

import torch

import scoresde as sd
from scoresde.bench.problems import ANALYTIC, BENCH_SDES, analytic_problem, digits_problem
from scoresde.solvers import NonFiniteError, available, get

NFES = (5, 10, 20)
SEEDS = {"select": 100, "heldout": 101}
#: schedule label -> (name, options)
SCHEDULES = {"uniform": ("uniform", {}), "quadratic": ("quadratic", {}), "logsnr": ("logsnr", {}),
             "karras3": ("karras", {"rho": 3.0}), "karras5": ("karras", {"rho": 5.0}),
             "karras7": ("karras", {"rho": 7.0}), "karras10": ("karras", {"rho": 10.0})}
#: the schedules on which the final-step controls are crossed with every multistep solver
FINAL_SCHEDULES = ("logsnr", "karras5", "karras7")
#: solver label -> (registry name, options)
SOLVERS = {"ddim": ("ddim", {}), "dpm++2m": ("dpm++2m", {}), "dpm++3m": ("dpm++3m", {}),
           "unipc-bh1": ("unipc", {"variant": "bh1"}), "unipc-bh2": ("unipc", {"variant": "bh2"}),
           "ipndm": ("ipndm", {}), "deis": ("deis", {})}
if "dpm-solver-v3" in available():
    SOLVERS["dpm-solver-v3"] = ("dpm-solver-v3", {})
FINALS = {"taper": {"lower_order_final": 1000}, "full": {"lower_order_final": 0}}
OLD_DEFAULT = "ipndm|logsnr|full,t_end"  # ipndm's lower_order_final default is 0


def configs() -> dict:
    """label 'solver|schedule|final' -> (registry name, solver options, schedule name, schedule
    options); final is 'default' (the solver's own final-step options) or, on FINAL_SCHEDULES
    for solvers that take both controls, each of taper/full x t_end/zero instead."""
    out = {}
    for (slabel, (name, opts)), (sched, (sname, sopts)) in itertools.product(SOLVERS.items(), SCHEDULES.items()):
        accepted = get(name).options
        if sched not in FINAL_SCHEDULES or "lower_order_final" not in accepted or "final_step" not in accepted:
            out[f"{slabel}|{sched}|default"] = (name, dict(opts), sname, dict(sopts))
        else:
            for (taper, topts), final_step in itertools.product(FINALS.items(), ("t_end", "zero")):
                out[f"{slabel}|{sched}|{taper},{final_step}"] = (
                    name, {**opts, **topts, "final_step": final_step}, sname, dict(sopts))
    return out


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.to(torch.float64) - b).square().mean().sqrt())


def references(problem, x_T: torch.Tensor) -> dict:
    """The reference at t_end and continued to sigma = 0 (float64)."""
    sde = problem.model.sde
    ref = problem.reference(x_T).x.to(torch.float64)
    t_end = torch.tensor(problem.t_end if problem.t_end is not None else sde.t_eps, dtype=torch.float64)
    with torch.no_grad():
        d = problem.reference_model.x0(ref.to(problem.reference_dtype),
                                       t_end.to(problem.reference_dtype).expand(ref.shape[0])).to(torch.float64)
    y = ref / float(sde.alpha(t_end))
    return {"t_end": ref, "zero": (y + d) / 2}


def measure(problem, n: int, table: dict, log, splits=tuple(SEEDS), extra=None) -> dict:
    """{split: {config: {nfe: rmse}}} for one problem; `extra`: options added per solver name."""
    sde = problem.model.sde
    extra = extra or {}
    out = {}
    for split in splits:
        seed = SEEDS[split]
        gen = torch.Generator().manual_seed(seed)
        x_T = sde.prior_sample((n, *problem.shape), gen, dtype=torch.float64)
        start = time.perf_counter()
        refs = references(problem, x_T)
        log(f"  {split}: reference {time.perf_counter() - start:.0f} s")
        x32 = x_T.to(torch.float32)
        cells = {}
        for label, (name, opts, sname, sopts) in table.items():
            info = get(name)
            cells[label] = {}
            for nfe in NFES:
                steps = info.steps_for_nfe(nfe, opts)
                try:
                    with torch.no_grad():
                        res = sd.sample(problem.model, x_T=x32, solver=name, steps=steps, schedule=sname,
                                        schedule_options=sopts or None, t_end=problem.t_end, **opts,
                                        **extra.get(name, {}))
                    assert res.nfe <= nfe, (label, nfe, res.nfe)
                    value = rmse(res.x, refs[opts.get("final_step", "t_end")])
                    value = value if math.isfinite(value) else float("inf")
                except (NonFiniteError, ValueError, RuntimeError, ArithmeticError):
                    value = float("inf")
                cells[label][str(nfe)] = value
        out[split] = cells
        log(f"  {split}: {len(table)} configurations in {time.perf_counter() - start:.0f} s")
    return out


# ---------------------------------------------------------------- analysis

def gmean(values) -> float:
    values = list(values)
    if any(not math.isfinite(v) or v <= 0 for v in values):
        return float("inf")
    return math.exp(sum(math.log(v) for v in values) / len(values))


def score(rmse_: dict, split: str, problems, label: str, nfe: int) -> float:
    """Geometric mean over `problems` of a configuration's RMSE at `nfe`."""
    return gmean(rmse_[p][split][label][str(nfe)] for p in problems)


def best(rmse_: dict, split: str, problems, nfe: int, labels) -> str:
    return min(labels, key=lambda c: score(rmse_, split, problems, c, nfe))


def candidates(labels, final_steps=("t_end", "zero")) -> list:
    """The configurations a default may be: not dpm-solver-v3 (a trained model's statistics need
    data samples, which sample() does not have), with a final step in `final_steps`."""
    return [c for c in labels if not c.startswith("dpm-solver-v3|")
            and (c.endswith("|default") or c.rsplit(",", 1)[-1] in final_steps)]


def choose_rules(rmse_: dict, problems, labels) -> dict:
    """The candidate default rules, chosen on the 'select' noise of `problems` among
    `candidates(labels)`: single: one configuration for every step count (smallest geometric mean
    over problems and NFE); per_nfe: the best configuration at each NFE (a rule of the step
    count); per_nfe_t_end: the same among configurations that stop at t_end."""
    allowed = candidates(labels)
    single = min(allowed, key=lambda c: sum(math.log(score(rmse_, "select", problems, c, nfe)) for nfe in NFES))
    return {"single": {str(nfe): single for nfe in NFES},
            "per_nfe": {str(nfe): best(rmse_, "select", problems, nfe, allowed) for nfe in NFES},
            "per_nfe_t_end": {str(nfe): best(rmse_, "select", problems, nfe, candidates(labels, ("t_end",)))
                              for nfe in NFES}}


def report_rule(rmse_: dict, rule: dict, problems, labels, split: str = "heldout") -> dict:
    """Per NFE: the rule's configuration and geometric-mean RMSE on (problems, split); the best
    fixed configuration there among all (`best`, dpm-solver-v3 included) and among the default's
    candidates (`best_candidate`), with the ratios rule/best; and the ratio to the per-problem
    best configuration (an oracle no fixed rule can reach)."""
    out = {}
    for nfe in NFES:
        label = rule[str(nfe)]
        mine = score(rmse_, split, problems, label, nfe)
        entry = dict(config=label, rmse=mine)
        for key, pool in (("best", labels), ("best_candidate", candidates(labels))):
            top = best(rmse_, split, problems, nfe, pool)
            theirs = score(rmse_, split, problems, top, nfe)
            entry.update({key: top, f"{key}_rmse": theirs, f"ratio_to_{key}": mine / theirs})
        oracle = gmean(min(rmse_[p][split][c][str(nfe)] for c in labels) for p in problems)
        entry["ratio_to_per_problem_best"] = mine / oracle
        out[str(nfe)] = entry
    return out


def analyze(results: dict) -> dict:
    rmse_ = results["rmse"]
    labels = list(results["configs"])
    mixtures = [p for p in rmse_ if p != "digits"]
    old = {str(n): OLD_DEFAULT for n in NFES}
    analysis = {}
    rules = choose_rules(rmse_, mixtures, labels)
    analysis["rules_chosen_on_all_mixtures_select_noise"] = rules
    analysis["mixtures_heldout_noise"] = {name: report_rule(rmse_, r, mixtures, labels)
                                          for name, r in {**rules, "old_default": old}.items()}
    # half the problems to choose, the other half to report (by mixture, both ways)
    folds = {}
    names = sorted({p.split("/")[0] for p in mixtures})
    for chosen in itertools.combinations(names, len(names) // 2):
        on = [p for p in mixtures if p.split("/")[0] in chosen]
        off = [p for p in mixtures if p not in on]
        fold_rules = choose_rules(rmse_, on, labels)
        folds["+".join(chosen)] = {"chosen_on": on, "reported_on": off, "rules": fold_rules,
                                   "report": {k: report_rule(rmse_, r, off, labels) for k, r in fold_rules.items()}}
    analysis["problem_split"] = folds
    if "digits" in rmse_:  # over the configurations measured there (--only)
        measured = [c for c in labels if c in rmse_["digits"]["heldout"]]
        analysis["digits_configurations"] = len(measured)
        analysis["digits_heldout_noise"] = {name: report_rule(rmse_, r, ["digits"], measured)
                                            for name, r in {**rules, "old_default": old}.items()
                                            if all(c in measured for c in r.values())}
    if "digits" in rmse_ and "select" in rmse_["digits"]:
        rules_all = choose_rules(rmse_, mixtures + ["digits"], labels)
        analysis["rules_chosen_on_mixtures_and_digits_select_noise"] = rules_all
        analysis["with_digits_in_the_choice"] = {
            where: {name: report_rule(rmse_, r, probs, labels) for name, r in rules_all.items()}
            for where, probs in (("mixtures", mixtures), ("digits", ["digits"]))}
    # per SDE: how much a rule of the SDE (its log-SNR range) could gain over one rule for all
    allowed = candidates(labels)
    per_sde = {}
    for sde_name in sorted({p.split("/")[1] for p in mixtures}):
        probs = [p for p in mixtures if p.endswith("/" + sde_name)]
        per_sde[sde_name] = {}
        for nfe in NFES:
            here = best(rmse_, "heldout", probs, nfe, allowed)
            per_sde[sde_name][str(nfe)] = dict(
                best_candidate_here=here,
                per_nfe_rule_over_it=score(rmse_, "heldout", probs, rules["per_nfe"][str(nfe)], nfe)
                / score(rmse_, "heldout", probs, here, nfe))
    analysis["per_sde"] = per_sde
    # a rule of the SDE: per SDE one configuration for every step count, chosen on the select
    # noise of that SDE's mixtures, reported on held-out noise over all mixtures and on digits (VP)
    by_sde = {}
    for sde_name in per_sde:
        probs = [p for p in mixtures if p.endswith("/" + sde_name)]
        by_sde[sde_name] = choose_rules(rmse_, probs, labels)["single"]
    sde_report = {}
    for nfe in NFES:
        mine = gmean(rmse_[p]["heldout"][by_sde[p.split("/")[1]][str(nfe)]][str(nfe)] for p in mixtures)
        top = best(rmse_, "heldout", mixtures, nfe, allowed)
        sde_report[str(nfe)] = dict(rmse=mine, best_candidate=top,
                                    ratio_to_best_candidate=mine / score(rmse_, "heldout", mixtures, top, nfe))
        if "digits" in rmse_ and by_sde.get("vp", {}).get(str(nfe)) in rmse_["digits"]["heldout"]:
            measured = [c for c in labels if c in rmse_["digits"]["heldout"]]
            sde_report[str(nfe)]["digits_ratio_to_best"] = (
                score(rmse_, "heldout", ["digits"], by_sde["vp"][str(nfe)], nfe)
                / score(rmse_, "heldout", ["digits"], best(rmse_, "heldout", ["digits"], nfe, measured), nfe))
    analysis["rule_of_the_sde"] = {"rules": by_sde, "heldout": sde_report}
    # the ten best configurations per NFE on all mixtures (and digits), held-out noise
    for where, probs in (("mixtures", mixtures), ("digits", ["digits"] if "digits" in rmse_ else [])):
        if probs:
            pool = [c for c in labels if all(c in rmse_[p]["heldout"] for p in probs)]
            analysis[f"top10_{where}_heldout"] = {
                str(nfe): [(c, score(rmse_, "heldout", probs, c, nfe))
                           for c in sorted(pool, key=lambda c: score(rmse_, "heldout", probs, c, nfe))[:10]]
                for nfe in NFES}
    return analysis


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rmse_ = results["rmse"]
    labels = list(results["configs"])
    groups = [("mixtures", [p for p in rmse_ if p != "digits"])] + ([("digits", ["digits"])] if "digits" in rmse_ else [])
    default = results["analysis"]["rules_chosen_on_all_mixtures_select_noise"]["single"]
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.5), squeeze=False)
    for ax, (title, probs) in zip(axes[0], groups):
        pool = [c for c in labels if all(c in rmse_[p]["heldout"] for p in probs)]
        for slabel in SOLVERS:
            mine = [c for c in pool if c.startswith(slabel + "|")]
            if not mine:
                continue
            bests = [min(score(rmse_, "heldout", probs, c, nfe) for c in mine) for nfe in NFES]
            ax.plot(NFES, bests, "-", lw=1, alpha=0.6, label=f"{slabel} (best schedule/final per NFE)")
        ax.plot(NFES, [score(rmse_, "heldout", probs, OLD_DEFAULT, nfe) for nfe in NFES], "k--", label="old default ipndm/logsnr")
        ax.plot(NFES, [score(rmse_, "heldout", probs, default[str(nfe)], nfe) for nfe in NFES], "ko-", lw=2,
                label="default rule 'single' (chosen on mixtures, select noise)")
        ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="geometric-mean terminal RMSE (held-out noise)",
               title=title, xticks=NFES, xticklabels=[str(n) for n in NFES])
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="*", default=[f"{m}/{s}" for m in ANALYTIC for s in BENCH_SDES])
    parser.add_argument("--samples", type=int, default=500, help="noises per split per mixture problem")
    parser.add_argument("--ckpt", default=None, help="a trained digits checkpoint (adds problem 'digits')")
    parser.add_argument("--digits-samples", type=int, default=100)
    parser.add_argument("--digits-splits", nargs="+", default=["heldout"], choices=list(SEEDS),
                        help="noise batches on digits (default: held-out only; digits is never used to choose)")
    parser.add_argument("--v3-statistics", nargs=2, type=int, default=(256, 64), metavar=("SAMPLES", "STEPS"),
                        help="dpm-solver-v3 on digits: statistics from SAMPLES training digits on STEPS log-SNRs")
    parser.add_argument("--only", nargs="+", default=None, metavar="CONFIG",
                        help="measure only these configurations (labels 'solver|schedule|final') on digits")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--cache", default=None, help="folder for per-problem results (resume)")
    parser.add_argument("--analyze", action="store_true", help="re-analyze the JSON in --out, no solves")
    args = parser.parse_args()
    torch.set_num_threads(1)
    json_path = Path(args.out) / "default_sampler.json"
    if args.analyze:
        results = json.loads(json_path.read_text())
    else:
        table = configs()
        start = time.perf_counter()
        results = dict(config=dict(nfes=NFES, seeds=SEEDS, samples=args.samples, digits_samples=args.digits_samples,
                                   checkpoint=args.ckpt, dtype="float32", torch=torch.__version__,
                                   threads=torch.get_num_threads()),
                       configs={k: dict(solver=v[0], options=v[1], schedule=v[2], schedule_options=v[3])
                                for k, v in table.items()},
                       rmse={}, seconds={})
        specs = list(args.problems) + (["digits"] if args.ckpt else [])
        for spec in specs:
            cached = Path(args.cache) / f"{spec.replace('/', '_')}.json" if args.cache else None
            if cached is not None and cached.exists():
                entry = json.loads(cached.read_text())
                if set(next(iter(entry["rmse"].values()))) <= set(table):
                    results["rmse"][spec], results["seconds"][spec] = entry["rmse"], entry["seconds"]
                    continue
            t0 = time.perf_counter()
            print(spec, flush=True)
            problem = digits_problem(args.ckpt) if spec == "digits" else analytic_problem(spec)
            n = args.digits_samples if spec == "digits" else args.samples
            splits, extra = tuple(SEEDS), {}
            if spec == "digits":
                splits = tuple(args.digits_splits)
                if "dpm-solver-v3" in SOLVERS and not args.only:  # a trained model's statistics come from data samples
                    from scoresde.data import load_data
                    from scoresde.solvers.dpm_v3 import model_statistics

                    count, steps = args.v3_statistics
                    x0 = load_data("digits", "train").x[:count]
                    stats = model_statistics(problem.model, x0, steps=steps)
                    results["config"]["v3_statistics"] = dict(samples=count, steps=steps, nfe=stats.nfe)
                    print(f"  dpm-solver-v3 statistics: {stats.nfe} NFE", flush=True)
                    extra = {"dpm-solver-v3": {"statistics": stats}}
            here = {k: v for k, v in table.items() if k in args.only} if spec == "digits" and args.only else table
            results["rmse"][spec] = measure(problem, n, here, lambda s: print(s, flush=True), splits, extra)
            results["seconds"][spec] = time.perf_counter() - t0
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                cached.write_text(json.dumps({"rmse": results["rmse"][spec], "seconds": results["seconds"][spec]}))
        results["seconds"]["total"] = time.perf_counter() - start
    results["analysis"] = analyze(results)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1))
    plot(results, json_path.with_suffix(".png"))
    a = results["analysis"]
    reports = [(where, a.get(where, {})) for where in ("mixtures_heldout_noise", "digits_heldout_noise")]
    reports += [(f"split {k} -> {'+'.join(sorted({p.split('/')[0] for p in v['reported_on']}))}", v["report"])
                for k, v in a["problem_split"].items()]
    for where, report in reports:
        for name, rep in report.items():
            for nfe, r in rep.items():
                print(f"{where} | {name} | NFE {nfe}: {r['config']} {r['rmse']:.3e} | best {r['best']} "
                      f"{r['ratio_to_best']:.3f}x | best candidate {r['best_candidate']} {r['ratio_to_best_candidate']:.3f}x"
                      f" | per-problem best {r['ratio_to_per_problem_best']:.3f}x")


if __name__ == "__main__":
    main()
