"""Accuracy against NFE of every registered sampler (the `scoresde bench` command, with its
results in benchmarks/results/ by default).

    OMP_NUM_THREADS=1 python benchmarks/accuracy_vs_nfe.py [--quick] [--ckpt out/digits_quality/checkpoint.pt [--data SPEC]]
    torchrun --nproc_per_node=2 benchmarks/accuracy_vs_nfe.py ...     # the batch sharded over 2 processes

Growing the committed results without recomputing them (every cell of a problem starts from the
same seeded noise, so a cell run later equals the cell a full run would have made):

    OMP_NUM_THREADS=1 python benchmarks/accuracy_vs_nfe.py --resume --solvers restart sa-solver
        # adds the cells of newly registered solvers; the settings must be the earlier run's
    OMP_NUM_THREADS=1 python benchmarks/accuracy_vs_nfe.py --rerun deis
        # recomputes the cells of solvers whose code changed (drops them, then resumes)

Each such addition is recorded in the JSON's `updates` (solvers, cells, seconds, rerun or not);
the table's time is the sum of all runs' times. Cells are kept in registry order, so the tables
list solvers as a full run would.

All options: `scoresde bench --help` (or `python -m scoresde bench --help`). Writes accuracy_vs_nfe.{json,csv,md,png}.
"""
import json
import os
import sys
import time
from pathlib import Path

from scoresde.cli import main


def _option(argv, name):
    """The values after `name` (up to the next --flag) and argv without them."""
    if name not in argv:
        return None, argv
    i = argv.index(name)
    j = i + 1
    while j < len(argv) and not argv[j].startswith("--"):
        j += 1
    return argv[i + 1:j], argv[:i] + argv[j:]


def _in_registry_order(cells):
    """Cells grouped by problem (first-appearance order), then by the registry order of their
    solver; a stable sort, so each solver's cells keep their run order."""
    from scoresde.solvers import available, get

    problems = list(dict.fromkeys(c["problem"] for c in cells))
    names = available()
    return sorted(cells, key=lambda c: (problems.index(c["problem"]), names.index(get(c["solver"]).name)))


def run(argv):
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv += ["--out", "benchmarks/results"]
    rerun, argv = _option(argv, "--rerun")
    if rerun is not None and "--solvers" in argv:
        raise SystemExit("--rerun names the solvers to recompute; give it without --solvers")
    out = Path(argv[argv.index("--out") + 1] if "--out" in argv else next(a for a in argv if a.startswith("--out="))[6:])
    path = out / "accuracy_vs_nfe.json"
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reads and writes the files
    if rerun is not None and main_rank:
        from scoresde.solvers import get

        if not rerun or not path.exists():
            raise SystemExit(f"--rerun needs solver names and an earlier {path}")
        earlier = json.loads(path.read_text())
        names = {get(s).name for s in rerun}
        kept = [c for c in earlier["cells"] if c["solver"] not in names]
        earlier["cells"] = kept
        path.write_text(json.dumps(earlier, indent=1))
    if rerun is not None:
        argv += ["--resume", "--solvers", *rerun]
    if "--resume" not in argv or not path.exists() or not main_rank:
        return main(["bench", *argv])
    earlier = json.loads(path.read_text())
    cells_before, seconds_before = len(earlier["cells"]), earlier.get("seconds", 0.0)
    updates = earlier.get("updates", [])
    start = time.time()
    code = main(["bench", *argv])
    if code:
        return code
    from scoresde.bench.report import write_outputs

    results = json.loads(path.read_text())
    solvers, _ = _option(argv, "--solvers")
    added = len(results["cells"]) - cells_before
    if added:
        updates.append(dict(date=time.strftime("%Y-%m-%d", time.gmtime(start)), solvers=solvers, rerun=rerun is not None,
                            cells=added, seconds=results.get("seconds", 0.0) - seconds_before))
    results["updates"] = updates
    results["cells"] = _in_registry_order(results["cells"])
    write_outputs(results, out)
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
