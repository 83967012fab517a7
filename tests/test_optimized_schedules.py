"""scoresde.tuning.optimize: a grid tuned to (model, solver, NFE) on calibration noise must beat
every fixed schedule on held-out noise, be reproducible, monotone, and survive a JSON round trip."""
import pytest
import torch

import scoresde as sd
from scoresde import schedules, tuning
from scoresde.solvers import reference_solve
from scoresde.data.problems import get_problem
from scoresde.solvers import get

SOLVER, NFE = "dpm++2m", 5


@pytest.fixture(scope="module")
def setting():
    sde = sd.VPSDE()
    mixture = get_problem("ring2d")
    model = mixture.score_model(sde)
    opt = tuning.optimize(model, sde, SOLVER, NFE, shape=(64, 2), generator=torch.Generator().manual_seed(1))
    return sde, model, opt


def _rmse(model, x_T, reference, schedule) -> float:
    x = sd.sample(model, x_T=x_T, solver=SOLVER, steps=None, schedule=schedule).x
    return float((x - reference).square().mean().sqrt())


def test_beats_the_best_fixed_schedule_on_held_out_noise(setting):
    sde, model, opt = setting
    x_T = sde.prior_sample((1000, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reference = reference_solve(model, x_T).x
    fixed = {name: _rmse(model, x_T, reference, schedules.get_schedule(name, sde, opt.steps))
             for name in schedules.SCHEDULES}
    optimized = _rmse(model, x_T, reference, opt)
    # measured: 0.47 x the best fixed (quadratic) at 5 NFE; 0.75 leaves room for the noise of
    # a 64-sample calibration batch while still demanding a real gain
    assert optimized < 0.75 * min(fixed.values()), (optimized, fixed)
    # on its own calibration batch the search never ends worse than where it started
    assert opt.loss <= opt.loss_start == min(opt.loss_history[: len(schedules.SCHEDULES)])


def test_grid_is_strictly_monotone_spans_the_sde_and_fits_the_budget(setting):
    sde, model, opt = setting
    assert opt.times.dtype == torch.float64 and opt.steps == get(SOLVER).steps_for_nfe(NFE) == NFE
    assert float(opt.times[0]) == sde.T and float(opt.times[-1]) == sde.t_eps
    assert bool((opt.times[1:] < opt.times[:-1]).all())
    out = sd.sample(model, shape=(8, 2), solver=SOLVER, schedule=opt, generator=torch.Generator().manual_seed(0))
    assert out.nfe == NFE and torch.equal(out.times, opt.times)


def test_cost_is_the_counted_evaluations(setting):
    sde, model, _ = setting
    x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    reference = reference_solve(model, x_T).x
    before = model.nfe
    opt = tuning.optimize(model, sde, SOLVER, 3, x_T=x_T, reference=reference, max_evals=12)
    # with the reference given, the cost is exactly 3 NFE per grid tried: the 4 fixed ones + the search's
    assert opt.cost_nfe == model.nfe - before == 3 * len(opt.loss_history)
    assert len(schedules.SCHEDULES) < len(opt.loss_history) <= len(schedules.SCHEDULES) + 12 + 1


def test_knots_keep_the_gain_with_fewer_parameters(setting):
    sde, model, opt = setting
    smooth = tuning.optimize(model, sde, SOLVER, NFE, shape=(64, 2), knots=3,
                                generator=torch.Generator().manual_seed(1))
    # 2 free parameters: Nelder-Mead's default budget of 60 grids, after the 4 fixed ones
    assert len(smooth.loss_history) <= len(schedules.SCHEDULES) + 60 + 1
    assert smooth.loss < 0.8 * smooth.loss_start and bool((smooth.times[1:] < smooth.times[:-1]).all())


def test_same_seed_same_schedule(setting):
    sde, model, opt = setting
    again = tuning.optimize(model, sde, SOLVER, NFE, shape=(64, 2),
                               generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.times, opt.times) and again.loss_history == opt.loss_history
    other = tuning.optimize(model, sde, SOLVER, NFE, shape=(64, 2), max_evals=30,
                               generator=torch.Generator().manual_seed(2))
    assert not torch.equal(other.times, opt.times)


def test_save_load_round_trip_and_refusals(setting, tmp_path):
    sde, model, opt = setting
    path = tmp_path / "sched.json"
    opt.save(path)
    loaded = tuning.OptimizedSchedule.load(path)
    assert torch.equal(loaded.times, opt.times)  # JSON keeps float64 exactly (repr round-trips)
    assert (loaded.sde, loaded.solver, loaded.nfe, loaded.cost_nfe) == (opt.sde, opt.solver, opt.nfe, opt.cost_nfe)
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(sd.sample(model, x_T=x_T, solver=SOLVER, schedule=loaded).x,
                       sd.sample(model, x_T=x_T, solver=SOLVER, schedule=opt.times.tolist(), steps=None).x)
    with pytest.raises(ValueError, match="solver must be 'dpm\\+\\+2m', which this schedule was tuned for"):
        sd.sample(model, x_T=x_T, solver="ddim", schedule=loaded)
    edm_model = get_problem("ring2d").score_model(sd.EDMSDE())
    with pytest.raises(ValueError, match="sde must be the SDE this schedule was tuned for, VPSDE"):
        sd.sample(edm_model, x_T=x_T, solver=SOLVER, schedule=loaded)
    with pytest.raises(ValueError, match="steps must be None or this tuned schedule's 5 .*; got 7"):
        sd.sample(model, x_T=x_T, solver=SOLVER, schedule=loaded, steps=7)
    # an explicit steps equal to the schedule's own is honoured (DEFAULT_STEPS is no sentinel)
    assert loaded.steps != sd.solvers.DEFAULT_STEPS
    assert torch.equal(sd.sample(model, x_T=x_T, solver=SOLVER, schedule=loaded, steps=loaded.steps).x,
                       sd.sample(model, x_T=x_T, solver=SOLVER, schedule=loaded).x)
    with pytest.raises(ValueError, match="steps must be None or this tuned schedule's 5"):
        sd.sample(model, x_T=x_T, solver=SOLVER, schedule=loaded, steps=sd.solvers.DEFAULT_STEPS)
    (tmp_path / "bad.json").write_text('{"times": [1.0, 0.5]}')
    with pytest.raises(ValueError, match="lacks nfe, sde, sde_fingerprint, solver"):
        tuning.OptimizedSchedule.load(tmp_path / "bad.json")


def test_bad_input_names_the_parameter(setting):
    sde, model, _ = setting
    with pytest.raises(ValueError, match=r"nfe must be an integer >= 3 \(one step of solver 'dpm-solver-3'\); got 2"):
        tuning.optimize(model, sde, "dpm-solver-3", 2, shape=(64, 2))
    with pytest.raises(ValueError, match="calibration batch size.* >= 16; got 4"):
        tuning.optimize(model, sde, SOLVER, 10, shape=(4, 2))
    with pytest.raises(ValueError, match="B >= 16"):
        tuning.optimize(model, sde, SOLVER, 10, x_T=torch.randn(8, 2))
    with pytest.raises(ValueError, match="calibration was renamed shape="):
        tuning.optimize(model, sde, SOLVER, 10, calibration=64)
    with pytest.raises(ValueError, match="solver must be a fixed-step ODE solver.*dpm\\+\\+2m.*got 'euler_maruyama'"):
        tuning.optimize(model, sde, "euler_maruyama", 10, shape=(64, 2))
    with pytest.raises(ValueError, match="knots .* must be an integer >= 2; got 1"):
        tuning.optimize(model, sde, SOLVER, 10, shape=(64, 2), knots=1)
    with pytest.raises(ValueError,
                       match="solver_options must be None or a mapping of solver 'dpm\\+\\+2m''s options; got 'list'"):
        tuning.optimize(model, sde, SOLVER, 10, shape=(64, 2), solver_options=["order"])
    with pytest.raises(ValueError, match="strictly decreasing"):
        sd.sample(model, shape=(4, 2), solver=SOLVER, steps=None, schedule=[1.0, 0.5, 0.7, 0.001])


def test_the_solver_options_are_the_ones_searched_with(setting):
    """optimize tunes the grid of the solver as its options make it (here dpm++3m with a history of 2 is
    dpm++2m), not of its defaults."""
    sde, model, _ = setting
    x_T = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    as_2m = tuning.optimize(model, sde, "dpm++3m", 6, x_T=x_T, max_evals=10, solver_options={"history": 2})
    plain = tuning.optimize(model, sde, "dpm++2m", 6, x_T=x_T, max_evals=10)
    assert torch.equal(as_2m.times, plain.times) and as_2m.loss_history == plain.loss_history


def test_cli_optimize_then_sample_with_the_file(tmp_path, capsys):
    from scoresde.cli import main

    path = tmp_path / "sched.json"
    assert main(["schedule", "optimize", "--problem", "ring2d", "--sde", "vp", "--solver", "ddim", "--nfe", "4",
                 "--calibration", "16", "--max-evals", "8", "--out", str(path)]) == 0
    opt = tuning.OptimizedSchedule.load(path)
    assert (opt.solver, opt.nfe, opt.steps, opt.calibration) == ("ddim", 4, 4, 16)
    assert main(["sample", "--problem", "ring2d", "--sde", "vp", "--schedule-file", str(path), "--n", "50",
                 "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| ddim | steps=4" in printed and "nfe=4," in printed
    saved = torch.load(tmp_path / "ring2d_vp_ddim_4.pt", weights_only=True)
    assert saved["nfe"] == 4 and torch.equal(saved["times"], opt.times)


def test_bench_optimize_adds_an_optimized_row(tmp_path, capsys):
    import json

    from scoresde.cli import main

    assert main(["bench", "--problems", "ring2d/vp", "--solvers", "dpm++2m", "euler_maruyama", "--nfe", "5",
                 "--samples", "200", "--metrics", "rmse", "--optimize", "--calibration", "32", "--no-progress",
                 "--out", str(tmp_path)]) == 0
    cells = json.loads((tmp_path / "accuracy_vs_nfe.json").read_text())["cells"]
    default, tuned = [c for c in cells if c["solver"] == "dpm++2m"]
    # --optimize is --tune nelder-mead: the row is named after the method
    assert (default["schedule"], tuned["schedule"]) == (None, "tuned:nelder-mead") and tuned["nfe"] == default["nfe"] == 5
    assert tuned["tuning"]["calibration"] == 32 and tuned["tuning"]["cost_nfe"] > 0
    # measured 0.146 (logsnr, the default) vs 0.029: a factor 5, asserted as 2
    assert tuned["rmse"] < 0.5 * default["rmse"]
    assert [c["schedule"] for c in cells if c["solver"] == "euler-maruyama"] == [None]  # SDE solvers: no twin
    assert "| tuned:nelder-mead:dpm++2m |" in (tmp_path / "accuracy_vs_nfe.md").read_text()
