"""DPM-Solver-v3 against the best of our other fixed solver/schedule pairs, by terminal RMSE
against the reference solve of the probability-flow ODE, on the accuracy suite's analytic
mixtures (scoresde.bench.problems: ANALYTIC x BENCH_SDES), from the same held-out noise.

    OMP_NUM_THREADS=1 python benchmarks/dpm_v3.py [--quick] [--nfe 5 10 20] [--n 500]

The statistics of each oracle come from exact samples (seed 0, ORACLE_STATISTICS); the noise
x_T is drawn with another seed. Writes benchmarks/results/dpm_v3.{json,png}: per problem and
NFE every pair's RMSE, the best other pair (of 6 solvers x 4 schedules), DPM-Solver-v3's RMSE
(default options on each schedule, its best of the four, and option variants), their ratios to
the best other pair, and the geometric means of the ratios over problems.

Separatrix rows: a row whose path ends in another mode than the reference's has an error of
the modes' distance, and one such row of 500 can decide a cell. So each cell also records, per
pair, its outlier rows (`flipped`: off by more than FLIP and more than OUTLIER times the pair's
median row error), and the same comparison on the rows that are no pair's outlier
(`common_rows`: the RMSEs, the ratios, and their geometric means `..._common_rows`).

    OMP_NUM_THREADS=1 python benchmarks/dpm_v3.py --problems gmm16d/ve gmm64d/ve --nfe 20
(a subset writes dpm_v3_subset.{json,png})

Chosen on other noise (`selected`): the best of each side picked on the same held-out rows it is
scored on favours the side with more candidates (24 other pairs against 4 schedules), since a
few rows decide each RMSE. So each cell also picks the best other pair and v3's configuration
(of V3_SELECT: every schedule, with and without the pseudo-order steps) on a selection batch
(seed + 1, --select rows) and compares the two choices on the held-out rows.
"""
import argparse
import json
import math
import time
from pathlib import Path

import torch

import scoresde as sd
from scoresde.bench.problems import ANALYTIC, BENCH_SDES, analytic_problem
from scoresde.solvers import dpm_v3

OTHERS = ("ddim", "dpm++2m", "dpm++3m", "unipc", "ipndm", "deis")
SCHEDULES = ("uniform", "quadratic", "logsnr", "karras")
#: DPM-Solver-v3 with default options on each schedule, then option variants (investigation)
V3 = {**{f"v3/{schedule}": ({}, schedule) for schedule in SCHEDULES},
      "v3/logsnr/history3": ({"history": 3}, "logsnr"), "v3/quadratic/history3": ({"history": 3}, "quadratic"),
      "v3/logsnr/no-corrector": ({"corrector": False}, "logsnr"),
      **{f"v3/{schedule}/pseudo": ({"pseudo": True}, schedule) for schedule in SCHEDULES}}
#: the configurations v3's side chooses from on the selection batch
V3_SELECT = (*(f"v3/{schedule}" for schedule in SCHEDULES), *(f"v3/{schedule}/pseudo" for schedule in SCHEDULES))
#: the rows compared with the best other pair: v3 on one fixed schedule, or on its best of the
#: four (per problem and NFE, as the other pairs' best is)
CLAIMS = ("v3/best-schedule", *(f"v3/{schedule}" for schedule in SCHEDULES))
#: a row (one sample) off the reference by more than FLIP and OUTLIER times its pair's median
#: row error ended near another mode
FLIP, OUTLIER = 0.1, 10.0


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).square().mean().sqrt())


def row_rmse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).square().mean(1).sqrt()


def outliers(e: torch.Tensor) -> torch.Tensor:
    """The rows of one pair's row errors e that ended near another mode (bool)."""
    return (e > FLIP) & (e > OUTLIER * e.median())


def common_rows(rows: dict) -> dict:
    """Each pair's RMSE over the rows that are no pair's outliers."""
    keep = ~torch.stack([outliers(e) for e in rows.values()]).any(0)
    return {k: float(e[keep].square().mean().sqrt()) for k, e in rows.items()}


def run(problems, nfes, n, seed, n_select):
    out = {}
    for name in problems:
        start = time.perf_counter()
        problem = analytic_problem(name)
        model = problem.model
        x_T = problem.model.sde.prior_sample((n, *problem.shape), torch.Generator().manual_seed(seed),
                                             dtype=torch.float64)
        ref = problem.reference(x_T).x
        x_sel = problem.model.sde.prior_sample((n_select, *problem.shape), torch.Generator().manual_seed(seed + 1),
                                               dtype=torch.float64)
        ref_sel = problem.reference(x_sel).x
        t_stats = time.perf_counter()
        stats = dpm_v3.oracle_statistics(model)
        t_stats = time.perf_counter() - t_stats
        cells = {}
        for nfe in nfes:
            row, rows, sel = {}, {}, {}
            for solver in OTHERS:
                for schedule in SCHEDULES:
                    steps = sd.solvers.get(solver).steps_for_nfe(nfe)
                    res = sd.sample(model, x_T=x_T, solver=solver, steps=steps, schedule=schedule)
                    assert res.nfe == nfe, (solver, res.nfe)
                    row[f"{solver}/{schedule}"] = rmse(res.x, ref)
                    rows[f"{solver}/{schedule}"] = row_rmse(res.x, ref)
                    sel[f"{solver}/{schedule}"] = rmse(sd.sample(model, x_T=x_sel, solver=solver, steps=steps,
                                                                 schedule=schedule).x, ref_sel)
            for label, (options, schedule) in V3.items():
                res = sd.sample(model, x_T=x_T, solver="dpm-solver-v3", steps=nfe, schedule=schedule,
                                statistics=stats, **options)
                assert res.nfe == nfe
                row[label] = rmse(res.x, ref)
                rows[label] = row_rmse(res.x, ref)
                if label in V3_SELECT:
                    sel[label] = rmse(sd.sample(model, x_T=x_sel, solver="dpm-solver-v3", steps=nfe,
                                                schedule=schedule, statistics=stats, **options).x, ref_sel)
            other_sel = min((k for k in sel if not k.startswith("v3")), key=sel.get)
            v3_sel = min(V3_SELECT, key=sel.get)
            best = min((k for k in row if not k.startswith("v3")), key=row.get)
            v3_best = min((f"v3/{schedule}" for schedule in SCHEDULES), key=row.get)
            row["v3/best-schedule"] = row[v3_best]
            common = common_rows(rows)
            best_c = min((k for k in common if not k.startswith("v3")), key=common.get)
            v3_best_c = min((f"v3/{schedule}" for schedule in SCHEDULES), key=common.get)
            common["v3/best-schedule"] = common[v3_best_c]
            cells[str(nfe)] = {"rmse": row, "selection_rmse": sel,
                               "selected": {"other": other_sel, "v3": v3_sel, "ratio": row[v3_sel] / row[other_sel]},
                               "best_other": best, "best_other_rmse": row[best],
                               "v3_best_schedule": v3_best.split("/")[1], "v3_rmse": row[v3_best],
                               "ratio": row[v3_best] / row[best],
                               "ratios": {k: row[k] / row[best] for k in (*CLAIMS, *V3) if k in row},
                               "flipped": {k: int(outliers(e).sum()) for k, e in rows.items()},
                               "common_rows": {"rows": int((~torch.stack([outliers(e) for e in rows.values()]).any(0)).sum()),
                                               "rmse": common, "best_other": best_c,
                                               "ratios": {k: common[k] / common[best_c] for k in (*CLAIMS, *V3)}}}
        out[name] = {"cells": cells, "statistics": {"samples": stats.samples, "grid": stats.lam.numel() - 1,
                                                    "nfe": stats.nfe, "seconds": t_stats},
                     "seconds": time.perf_counter() - start}
        print(name, " ".join(f"{k}:{c['ratio']:.3f}(v3 {c['v3_best_schedule']} vs {c['best_other']}; "
                             f"common rows {c['common_rows']['ratios']['v3/best-schedule']:.3f}; "
                             f"selected {c['selected']['v3']} vs {c['selected']['other']} "
                             f"{c['selected']['ratio']:.3f})"
                             for k, c in cells.items()), flush=True)
    return out


def summary(results, nfes):
    geo = {}
    for nfe in nfes:
        labels = results[next(iter(results))]["cells"][str(nfe)]["ratios"]
        geo[str(nfe)] = {label: math.exp(sum(math.log(r["cells"][str(nfe)]["ratios"][label]) for r in results.values())
                                         / len(results)) for label in labels}
        geo[str(nfe)].update({f"{label}_common_rows": math.exp(
            sum(math.log(r["cells"][str(nfe)]["common_rows"]["ratios"][label]) for r in results.values()) / len(results))
            for label in labels})
        geo[str(nfe)]["selected"] = math.exp(sum(math.log(r["cells"][str(nfe)]["selected"]["ratio"])
                                                 for r in results.values()) / len(results))
    return geo


def plot(results, geo, nfes, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names) + 2), 4))
    width = 0.8 / len(nfes)
    for k, nfe in enumerate(nfes):
        ratios = [results[p]["cells"][str(nfe)]["ratio"] for p in names]
        ax.bar([i + k * width for i in range(len(names))], ratios, width,
               label=f"{nfe} NFE (geo. mean {geo[str(nfe)]['v3/best-schedule']:.2f})")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=45, ha="right")
    ax.set_ylabel("RMSE(dpm-solver-v3) / RMSE(best other pair)")
    ax.set_title("DPM-Solver-v3 (its best of 4 schedules) vs best other solver/schedule pair")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 problems, 200 samples")
    parser.add_argument("--problems", nargs="+", default=None,
                        help="a subset of the problems (e.g. gmm16d/ve); writes dpm_v3_subset.*")
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--n", type=int, default=None, help="samples (default 500, quick 200)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the held-out noise x_T")
    parser.add_argument("--select", type=int, default=None, help="rows of the selection batch (default --n)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    every = [f"{p}/{s}" for p in ANALYTIC for s in BENCH_SDES]
    for name in args.problems or ():
        if name not in every:
            parser.error(f"--problems must be among {every}; got {name!r}")
    problems = args.problems or (["ring2d/vp", "gmm16d/edm", "bimodal1d/ve"] if args.quick else every)
    n = args.n or (200 if args.quick else 500)
    start = time.perf_counter()
    n_select = args.select or n
    results = run(problems, args.nfe, n, args.seed, n_select)
    geo = summary(results, args.nfe)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "dpm_v3_subset" if args.problems else "dpm_v3_quick" if args.quick else "dpm_v3"
    command = "python benchmarks/dpm_v3.py" + (" --quick" if args.quick else "") + (
        " --problems " + " ".join(args.problems) if args.problems else "") + (
        " --nfe " + " ".join(map(str, args.nfe)) if args.nfe != [5, 10, 20] else "") + (
        f" --n {args.n}" if args.n else "") + (f" --select {args.select}" if args.select else "")
    doc = {"command": command, "flip": FLIP, "outlier": OUTLIER, "n": n, "select": n_select, "seed": args.seed,
           "nfe": args.nfe, "others": list(OTHERS), "schedules": list(SCHEDULES),
           "v3_variants": {k: {"options": o, "schedule": s} for k, (o, s) in V3.items()},
           "oracle_statistics": dict(dpm_v3.ORACLE_STATISTICS), "geometric_mean_ratio": geo,
           "problems": results, "seconds": time.perf_counter() - start, "torch": torch.__version__}
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=1))
    plot(results, geo, args.nfe, out / f"{stem}.png")
    for nfe in args.nfe:
        print(f"{nfe} NFE geometric mean ratio to the best other pair: "
              + " ".join(f"{k}={v:.3f}" for k, v in geo[str(nfe)].items()))
    print(f"wrote {out / (stem + '.json')} in {doc['seconds']:.0f} s")


if __name__ == "__main__":
    main()
