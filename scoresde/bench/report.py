"""The results of an accuracy-vs-NFE run (`scoresde.bench.run_benchmark`) as files: the JSON
every cell is written to, a CSV of the cells, Markdown tables (per problem and metric, and a
summary over problems) and log-log plots of a metric against the counted NFE.

A results dict holds `config`, `machine`, `problems` (dimension, reference solve, two-sample
floors) and `cells`, one record per (problem, solver, budget) with the CSV_COLUMNS.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from ..solvers import get

__all__ = ["METRICS", "TUNED", "OPTIMIZED", "CSV_COLUMNS", "TABLE_NFES", "tuned_method", "write_json", "write_outputs",
           "markdown", "summary", "plot"]

#: the measures of a cell (see `scoresde.bench.run`)
METRICS = ("rmse", "sliced_w2", "mmd", "nll_gap")
#: the prefix of a tuned cell's `schedule`: "tuned:<method>", its sampler tuned by `scoresde.tune`
#: with that method; its table row is "tuned:<method>:<solver>"
TUNED = "tuned:"
#: the `schedule` of a Nelder-Mead cell in results files of earlier versions (read as "tuned:nelder-mead")
OPTIMIZED = "optimized"
#: the budgets the Markdown tables show
TABLE_NFES = (5, 10, 20, 50)
CSV_COLUMNS = ("problem", "solver", "kind", "schedule", "requested_nfe", "tolerance", "steps", "nfe", "seconds",
               "status", "reason") + METRICS


def write_json(results: dict, path: Path) -> None:
    """`results` as JSON at `path`, replaced atomically (an interrupted run leaves the previous file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)


def write_outputs(results: dict, out: Union[str, Path]) -> None:
    """accuracy_vs_nfe.json, .csv, .md, .png (RMSE) and _sliced_w2.png in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(results, out / "accuracy_vs_nfe.json")
    with open(out / "accuracy_vs_nfe.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results["cells"])
    (out / "accuracy_vs_nfe.md").write_text(markdown(results))
    try:
        plot(results, out / "accuracy_vs_nfe.png", "rmse")
        plot(results, out / "accuracy_vs_nfe_sliced_w2.png", "sliced_w2")
    except ImportError:
        print("accuracy_vs_nfe.png not drawn: matplotlib is missing (pip install 'scoresde[plot]')")


def tuned_method(cell: dict) -> Optional[str]:
    """The tuning method of a tuned cell ("nelder-mead" for an earlier version's optimized
    cell), None for any other."""
    schedule = cell.get("schedule")
    if schedule == OPTIMIZED:
        return "nelder-mead"
    return schedule[len(TUNED):] if isinstance(schedule, str) and schedule.startswith(TUNED) else None


def _rows(cells: List[dict], solvers: Sequence[str]) -> List[Tuple[str, Optional[str]]]:
    """Table rows (solver, tuning method or None): each solver, then its tuned rows in the
    order their methods first appear."""
    methods = list(dict.fromkeys(m for m in map(tuned_method, cells) if m is not None))
    tuned = {(c["solver"], tuned_method(c)) for c in cells}
    return [(s, m) for s in solvers for m in (None, *methods) if m is None or (s, m) in tuned]


def _label(solver: str, method: Optional[str]) -> str:
    return f"{TUNED}{method}:{solver}" if method else solver


def _cell_at(cells: List[dict], solver: str, budget: int, method: Optional[str] = None) -> Optional[dict]:
    """The cell that ran `budget` for a fixed-step solver (tuned by `method`, if given): the one
    with its step count (a budget that fell on a step count already run shares that cell; one
    below a single step's cost has none)."""
    info = get(solver)
    if info.nfe(1) > budget:
        return None
    steps = info.steps_for_nfe(budget)
    return next((c for c in cells if c["solver"] == solver and c["steps"] == steps and c["requested_nfe"] is not None
                 and tuned_method(c) == method), None)


def _fmt(cell: Optional[dict], metric: str, budget: Optional[int]) -> str:
    if cell is None:
        return "-"
    if cell["status"] != "ok":
        return "failed"
    value = cell.get(metric)
    if value is None:
        return "-"
    text = f"{value:.2e}" if metric in ("rmse", "mmd") else f"{value:.4f}"
    return text if budget is None or cell["nfe"] == budget else f"{text} ({cell['nfe']})"


def markdown(results: dict, budgets: Sequence[int] = TABLE_NFES) -> str:
    """Per problem and metric: a solver x NFE table (a value whose counted NFE differs from the
    column's budget shows that NFE in brackets), and the adaptive solvers' sweeps."""
    cfg = results["config"]
    lines = [f"# Accuracy vs NFE\n\nn={cfg['n']} samples per cell, seed {cfg['seed']}, {cfg['dtype']}, "
             f"{cfg['world_size']} process(es), {results['machine'].get('gpu', results['machine']['processor'])}, "
             f"{results.get('seconds', 0):.0f} s.\n"]
    budgets = [b for b in budgets if b in cfg["nfes"]]
    if len(results["problems"]) > 1:
        lines.append(summary(results, budgets))
    for name, info in results["problems"].items():
        cells = [c for c in results["cells"] if c["problem"] == name]
        lines.append(f"\n## {name} (dim {info['dim']})\n")
        for metric in cfg["metrics"]:
            rows = [s for s in dict.fromkeys(c["solver"] for c in cells)
                    if metric != "rmse" or get(s).kind == "ode"]
            fixed = [s for s in rows if not get(s).adaptive]
            if not fixed or all(c.get(metric) is None for c in cells):
                continue
            floor = info.get("floors", {}).get(metric)
            note = f"; two-sample floor {floor['mean']:.4g} +- {floor['std']:.2g}" if floor else ""
            lines.append(f"\n{metric}{note}\n")
            lines.append("| solver | " + " | ".join(f"NFE {b}" for b in budgets) + " |")
            lines.append("|---|" + "---|" * len(budgets))
            for s, method in _rows(cells, fixed):
                lines.append(f"| {_label(s, method)} | "
                             + " | ".join(_fmt(_cell_at(cells, s, b, method), metric, b) for b in budgets) + " |")
        adaptive = [c for c in cells if c["requested_nfe"] is None]
        if adaptive:
            lines.append("\nadaptive solvers (tolerance: NFE, " + ", ".join(cfg["metrics"]) + ")\n")
            for c in adaptive:
                vals = ", ".join(_fmt(c, m, None) for m in cfg["metrics"])
                lines.append(f"- {c['solver']} tol {c['tolerance']:g}: "
                             + (f"{c['nfe']} NFE, {vals}" if c["status"] == "ok" else f"failed ({c['reason']})"))
        failed = [c for c in cells if c["status"] != "ok" and c["requested_nfe"] is not None]
        for c in failed:
            lines.append(f"- failed: {_label(c['solver'], tuned_method(c))} at NFE {c['requested_nfe']}: {c['reason']}")
        tuned = [c for c in cells if c.get("tuning") and c["status"] == "ok"]
        if tuned:
            lines.append("\ntuning (validation RMSE of the start -> the tuned sampler; cost)\n")
            for c in tuned:
                t = c["tuning"]
                lines.append(f"- {_label(c['solver'], tuned_method(c))} at NFE {c['requested_nfe']}: "
                             f"{t['loss_start']:.3e} ({t['start']}) -> {t['loss']:.3e}"
                             f"{' (kept the start)' if t['kept_start'] else ''}; {t['cost_nfe']} NFE, "
                             f"{t['cost_seconds']:.1f} s")
    return "\n".join(lines) + "\n"


def summary(results: dict, budgets: Sequence[int] = TABLE_NFES) -> str:
    """Over all problems, per fixed-step solver and budget: the geometric mean of the terminal
    RMSE (ODE solvers; '-' unless every problem has a finished cell) and how many problems'
    sliced W2 lies within two floor standard deviations of the floor mean; a counted NFE other
    than the column's budget follows in brackets. A budget no problem ran (below one step of
    the solver) is '-'."""
    problems = results["problems"]
    solvers = [s for s in dict.fromkeys(c["solver"] for c in results["cells"]) if not get(s).adaptive]
    lines = [f"\n## Summary over {len(problems)} problems\n",
             "geometric mean of RMSE (ODE solvers) / problems with sliced W2 within 2 std of the floor "
             "(counted NFE in brackets where it differs from the budget)\n",
             "| solver | " + " | ".join(f"NFE {b}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for solver, method in _rows(results["cells"], solvers):
        row = []
        for b in budgets:
            cells = [_cell_at([c for c in results["cells"] if c["problem"] == name], solver, b, method)
                     for name in problems]
            rmse = [c["rmse"] for c in cells if c is not None and c["status"] == "ok" and c.get("rmse")]
            mean = f"{math.exp(sum(map(math.log, rmse)) / len(rmse)):.2e}" if len(rmse) == len(problems) else "-"
            near = sum(1 for c, name in zip(cells, problems) if c is not None and c.get("sliced_w2") is not None
                       and c["sliced_w2"] <= problems[name]["floors"]["sliced_w2"]["mean"]
                       + 2 * problems[name]["floors"]["sliced_w2"]["std"])
            counted = sorted({c["nfe"] for c in cells if c is not None and c["status"] == "ok"} - {b})
            nfe = f" ({'/'.join(map(str, counted))})" if counted else ""  # what the cells counted, if not b
            if all(c is None for c in cells):  # a budget below one step of this solver: never run
                row.append("-")
                continue
            row.append((f"{mean} / {near}" if get(solver).kind == "ode" else f"{near}") + nfe)
        lines.append(f"| {_label(solver, method)} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path, metric: str = "rmse", columns: int = 3) -> None:
    """Log-log `metric` vs counted NFE, one line per solver (SDE solvers dashed), one panel per
    problem; sample metrics draw the two-sample floor (mean +- std) as a grey band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = list(results["problems"])
    if metric not in results["config"]["metrics"] or not problems:
        return
    cols = min(columns, len(problems))
    rows = math.ceil(len(problems) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.7 * rows + 1.2), squeeze=False)
    solvers = list(dict.fromkeys(c["solver"] for c in results["cells"]))
    colors = dict(zip(solvers, plt.get_cmap("tab20").colors * 3))
    markers = dict(zip(solvers, "osD^v<>ph*" * 4))
    for ax, name in zip(axes.flat, problems):
        cells = [c for c in results["cells"] if c["problem"] == name and c["status"] == "ok"
                 and tuned_method(c) is None]  # the Markdown tables carry the tuned rows
        for s in solvers:
            pts = sorted((c["nfe"], c[metric]) for c in cells if c["solver"] == s and c.get(metric))
            if pts:
                ax.loglog(*zip(*pts), ls="--" if get(s).kind == "sde" else "-", marker=markers[s], ms=3, lw=1,
                          color=colors[s], label=s)
        floor = results["problems"][name].get("floors", {}).get(metric)
        if floor:
            ax.axhspan(max(floor["mean"] - floor["std"], 1e-12), floor["mean"] + floor["std"], color="grey",
                       alpha=0.3, label="two-sample floor")
        ax.set_title(name, fontsize=10)
        ax.set(xlabel="NFE (counted)", ylabel=metric)
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([2, 3, 5, 10, 20, 50, 100, 200, 500, 1000]))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(problems):]:
        ax.set_visible(False)
    handles = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(8, len(handles)), fontsize=7)
    fig.tight_layout(rect=(0, 1.0 / (3.7 * rows + 1.2) * min(4, math.ceil(len(handles) / 8)) * 0.3, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
