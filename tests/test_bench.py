"""The accuracy-vs-NFE suite (`scoresde bench`): output schema, falling errors at the solver's
order, honest NFE labels within the budget, failed cells, resume, and torchrun sharding equal to
one process."""
import csv
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import scoresde as sd
from scoresde import bench
from scoresde.bench.run import _cells
from scoresde.cli import main
from scoresde.solvers import get

SMALL = dict(problems=["ring2d/vp"], solvers=["heun", "euler", "euler_maruyama", "torchdiffeq"],
             nfes=[10, 20, 50], n=200, tolerances=1, floor_repeats=3)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return bench.run_benchmark(**SMALL, out=out), out


def test_outputs_and_schema(small_run):
    results, out = small_run
    for suffix in ("json", "csv", "md", "png"):
        assert (out / f"accuracy_vs_nfe.{suffix}").stat().st_size > 0
    assert json.loads((out / "accuracy_vs_nfe.json").read_text()) == json.loads(json.dumps(results))
    assert set(results) >= {"config", "machine", "problems", "cells", "seconds"}
    problem = results["problems"]["ring2d/vp"]
    assert problem["dim"] == 2 and problem["reference"]["method"] == "dopri8"
    assert set(problem["floors"]) == {"sliced_w2", "mmd", "nll_gap"}
    cells = results["cells"]
    assert len(cells) == 3 * 3 + 1  # three fixed-step solvers x 3 budgets, one tolerance
    # an old solver name runs as its alias; cells carry the registry's name
    assert list(dict.fromkeys(c["solver"] for c in cells)) == ["heun", "euler", "euler-maruyama", "torchdiffeq"]
    for c in cells:
        assert c["status"] == "ok" and c["nfe"] > 0 and c["seconds"] > 0
        assert set(c) >= set(bench.CSV_COLUMNS)
        assert (c["rmse"] is None) == (c["kind"] == "sde")
    with open(out / "accuracy_vs_nfe.csv") as f:
        assert len(list(csv.DictReader(f))) == len(cells)


def test_errors_fall_at_second_order(small_run):
    """Heun (order 2) at 9, 19, 49 NFE: log-log slope of the terminal RMSE within 0.5 of -2;
    sample metrics approach the floor."""
    results, _ = small_run
    heun = sorted((c["nfe"], c["rmse"]) for c in results["cells"] if c["solver"] == "heun")
    for (n0, e0), (n1, e1) in zip(heun, heun[1:]):
        slope = math.log(e1 / e0) / math.log(n1 / n0)
        assert -2.5 < slope < -1.5, heun
    floor = results["problems"]["ring2d/vp"]["floors"]["sliced_w2"]
    best = min(c["sliced_w2"] for c in results["cells"] if c["solver"] == "heun")
    assert best < floor["mean"] + 3 * floor["std"]


def test_budget_runs_the_most_steps_that_fit_and_reports_the_counted_nfe(small_run):
    """Heun costs 2 per step minus 1 (its last step is Euler): budget 10 runs 5 steps = 9 NFE,
    and the table says so. A budget is never exceeded: one below a single step's cost is not run."""
    results, out = small_run
    cell = next(c for c in results["cells"] if c["solver"] == "heun" and c["requested_nfe"] == 10)
    assert (cell["steps"], cell["nfe"]) == (5, 9)
    euler = next(c for c in results["cells"] if c["solver"] == "euler" and c["requested_nfe"] == 10)
    assert euler["nfe"] == 10
    row = next(line for line in (out / "accuracy_vs_nfe.md").read_text().splitlines() if line.startswith("| heun |"))
    assert "(9)" in row and "(19)" in row
    assert get("heun").steps_for_nfe(4) == 2 and get("heun").nfe(2) == 3  # 3 NFE fits, 5 would not
    cells = _cells(["rk4", "heun"], [3, 4, 8], tolerances=1)
    # rk4 (4 per step) cannot spend 3; heun's budget 4 lands on budget 3's two steps, run once
    assert [(s, b, o["steps"]) for s, b, o in cells] == [("rk4", 4, 1), ("rk4", 8, 2), ("heun", 3, 2), ("heun", 8, 4)]
    assert all(get(s).nfe(o["steps"]) <= b for s, b, o in cells)
    # a budget no cell ran (below one step) reads '-' in the summary, not 0 problems near the floor
    without = dict(results, cells=[c for c in results["cells"] if not (c["solver"] == "euler" and c["requested_nfe"] == 10)])
    row = next(line for line in bench.markdown(without).splitlines() if line.startswith("| euler |"))
    assert row.split(" | ")[1] == "-"  # the columns are the run's budgets: 10, 20, 50


def test_resume_skips_finished_cells(small_run, tmp_path):
    results, out = small_run
    again = bench.run_benchmark(**SMALL, out=out, resume=True)
    assert again["cells"] == results["cells"]
    with pytest.raises(ValueError, match="another configuration"):
        bench.run_benchmark(**{**SMALL, "n": 100}, out=out, resume=True)


class _NanAfterHalfway(torch.nn.Module):
    def forward(self, x, t):
        return torch.where(t[:, None] < 0.5, torch.nan, 0.0) + 0 * x


def test_failed_cell_is_recorded_and_run_goes_on():
    mixture = sd.data.GaussianMixture.gaussian(2)
    sde = sd.VPSDE()
    broken = sd.ScoreModel(_NanAfterHalfway(), sde, prediction="eps", time_input="t")
    target = mixture.sample(100, torch.Generator().manual_seed(1), dtype=torch.float64)
    problem = bench.Problem("broken", broken, broken, (2,), target,
                               lambda n, g: mixture.sample(n, g, dtype=torch.float64))
    results = bench.run_benchmark([problem, "ring2d/vp"], solvers=["euler"], nfes=[4], n=100,
                                     metrics=["sliced_w2"], floor_repeats=2)
    failed, ok = results["cells"]
    assert failed["status"] == "failed" and "non-finite" in failed["reason"] and failed["nfe"] is None
    assert ok["problem"] == "ring2d/vp" and ok["status"] == "ok"
    assert "failed" in bench.markdown(results)


def test_bad_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="ring2d, gmm16d, gmm64d, bimodal1d"):
        bench.run_benchmark(["moons/vp"], solvers=["euler"], nfes=[4], n=10)
    with pytest.raises(ValueError, match="vp, ve, edm"):
        bench.run_benchmark(["ring2d/subvpp"], solvers=["euler"], nfes=[4], n=10)
    with pytest.raises(ValueError, match="solver must be one of: .*dpm\\+\\+2m"):
        bench.run_benchmark(["ring2d/vp"], solvers=["dpm++9m"], nfes=[4], n=10)
    with pytest.raises(ValueError, match="rmse, sliced_w2, mmd, nll_gap"):
        bench.run_benchmark(["ring2d/vp"], solvers=["euler"], metrics=["fid"], nfes=[4], n=10)
    with pytest.raises(ValueError, match="digits_checkpoint"):
        bench.run_benchmark(["digits"], solvers=["euler"], nfes=[4], n=10)
    assert main(["bench", "--problems", "ring2d", "--sdes", "vp", "--solvers", "nope", "--no-progress"]) == 2


def test_torchrun_two_processes_match_one_process(tmp_path):
    """The batch sharded over 2 gloo processes gives the single-process cells: fixed-step
    solvers (ODE, and SDE through the shared noise) to float round-off."""
    args = ["bench", "--problems", "ring2d", "--sdes", "vp", "--solvers", "dpm++2m", "euler_maruyama", "ancestral",
            "--nfe", "5", "12", "--samples", "101", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "scoresde",
           *args, "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    two = json.loads((tmp_path / "two" / "accuracy_vs_nfe.json").read_text())
    one = json.loads((tmp_path / "one" / "accuracy_vs_nfe.json").read_text())
    assert two["config"]["world_size"] == 2 and one["config"]["world_size"] == 1
    assert len(two["cells"]) == len(one["cells"]) == 6
    for a, b in zip(one["cells"], two["cells"]):
        assert (a["solver"], a["nfe"], a["status"]) == (b["solver"], b["nfe"], "ok")
        for metric in bench.METRICS:
            if a[metric] is not None:
                assert b[metric] == pytest.approx(a[metric], rel=1e-4, abs=1e-6), (a["solver"], metric)


def test_resume_refuses_a_file_that_no_run_wrote(tmp_path):
    path = tmp_path / "accuracy_vs_nfe.json"
    for text, match in (('{"cells": []}', "resume must be a results file with config, problems, cells"),
                        ('{"config": ', "resume must be a readable accuracy_vs_nfe.json")):
        path.write_text(text)
        with pytest.raises(ValueError, match=match) as err:
            bench.run_benchmark(["ring2d/vp"], solvers=["euler"], nfes=[4], n=10, out=tmp_path, resume=True,
                                progress=False)
        assert str(path) in str(err.value)
