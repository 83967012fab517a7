"""`scoresde tune`, `scoresde sample --tuned` and `scoresde bench --tune`: the tuned sampler's
file, its validation RMSE recomputed from the noise the seed names, samples equal to the API's,
the tuned rows of the benchmark measured on its held-out noise; and every refusal, one line
with exit status 2 before any work."""
import json

import pytest
import torch

import scoresde as sd
from scoresde.cli import main
from scoresde.data.problems import get_problem

from _cli import refused

# the problem of every run here: 1-D, so teachers cost little; float32 teachers (dopri5 at 1e-5)
TUNE = ["tune", "--problem", "bimodal1d", "--solver", "dpm++2m", "--nfe", "4", "--calibration", "16",
        "--validation", "16", "--seed", "3"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One teacher cache for the module: each teacher is solved once."""
    return str(tmp_path_factory.mktemp("teachers"))


@pytest.fixture(scope="module")
def tuned_file(tmp_path_factory, cache):
    """A "steps" sampler written by `scoresde tune` (two epochs: grid and time offsets move)."""
    path = tmp_path_factory.mktemp("tuned") / "steps.json"
    assert main([*TUNE, "--method", "steps", "--epochs", "2", "--init", "start", "--cache-dir", cache,
                 "--out", str(path)]) == 0
    return path


def _oracle(sde=None):
    return get_problem("bimodal1d").score_model(sde or sd.VPSDE())


def test_tune_writes_a_sampler_whose_validation_rmse_the_seed_reproduces(tuned_file, cache, capsys, tmp_path):
    tuned = sd.TunedSampler.load(tuned_file)
    assert (tuned.method, tuned.solver, tuned.nfe, tuned.steps) == ("steps", "dpm++2m", 4, 4)
    assert (tuned.calibration, tuned.validation) == (16, 16) and tuned.cost_nfe > 0 and tuned.cost_seconds > 0
    assert tuned.loss <= tuned.loss_start and len(tuned.loss_history) == 3  # the start and two epochs
    # the validation batch is the 16 noises drawn after the 16 calibration ones from --seed, in
    # float32; its teacher is the model's own float32 solve (a cache hit: the very same tensors)
    model = _oracle()
    gen = torch.Generator().manual_seed(3)
    sd.VPSDE().prior_sample((16, 1), generator=gen, dtype=torch.float32)
    x_val = sd.VPSDE().prior_sample((16, 1), generator=gen, dtype=torch.float32)
    teacher = sd.tuning.teacher(model, x_val, cache_dir=cache)
    assert teacher.cached
    for grid, loss in (("start", tuned.loss_start), ("tuned", tuned.loss)):
        if grid == "start":
            x = sd.sample(model, x_T=x_val, solver="dpm++2m", steps=4, schedule=tuned.start).x
        else:
            x = sd.sample(model, x_T=x_val, solver=tuned).x
        assert float((x.double() - teacher.x.double()).square().mean().sqrt()) == pytest.approx(loss, rel=1e-6)
    # the same seed gives the same sampler (teachers now from the cache)
    again = tmp_path / "again.json"
    assert main([*TUNE, "--method", "steps", "--epochs", "2", "--init", "start", "--cache-dir", cache,
                 "--out", str(again)]) == 0
    assert torch.equal(sd.TunedSampler.load(again).times, tuned.times)
    out = capsys.readouterr().out
    assert f"validation RMSE {tuned.loss_start:.3e} ({tuned.start}, the best fixed schedule) -> {tuned.loss:.3e}" in out
    assert f"tuning cost: {sd.TunedSampler.load(again).cost_nfe} NFE" in out
    assert f"scoresde sample --problem bimodal1d --sde vp --tuned {again}" in out


def test_sample_tuned_reproduces_the_api_on_the_same_seed(tuned_file, tmp_path, capsys):
    tuned = sd.TunedSampler.load(tuned_file)
    assert tuned.time_offsets  # the evaluation times moved too: sample must apply them
    assert main(["sample", "--problem", "bimodal1d", "--tuned", str(tuned_file), "--samples", "50", "--seed", "5",
                 "--dtype", "float64", "--out", str(tmp_path)]) == 0
    saved = torch.load(tmp_path / "bimodal1d_vp_tuned-steps_dpm++2m_4.pt", weights_only=True)
    api = sd.sample(_oracle(), shape=(50, 1), solver=tuned, generator=torch.Generator().manual_seed(5),
                    dtype=torch.float64)
    assert torch.equal(saved["x"], api.x) and torch.equal(saved["times"], tuned.times) and saved["nfe"] == 4
    assert "bimodal1d | vp | dpm++2m | steps=4 schedule=" in capsys.readouterr().out


def test_sample_tuned_refuses_other_flags_models_and_sdes(tuned_file, tmp_path, capsys, monkeypatch):
    import scoresde.solvers

    monkeypatch.setattr(scoresde.solvers, "sample", lambda *a, **k: pytest.fail("sampled before refusing"))
    base = ["sample", "--problem", "bimodal1d", "--tuned", str(tuned_file), "--out", str(tmp_path)]
    for extra in (["--solver", "ddim"], ["--steps", "4"], ["--schedule", "karras"],
                  ["--schedule-file", str(tuned_file)]):
        refused(capsys, base + extra, "--tuned must be given without --solver, --steps", f"with {extra[0]}")
    refused(capsys, base + ["--prediction", "x0"], f"--tuned {tuned_file}: model must be the one this sampler was "
            "tuned to", "--prediction x0")
    refused(capsys, base + ["--sde", "edm"], f"--tuned {tuned_file}: sde must be the SDE this sampler was tuned for",
            "EDMSDE")
    refused(capsys, ["sample", "--problem", "ring2d", "--tuned", str(tuned_file), "--out", str(tmp_path)],
            "model must be the one this sampler was tuned to")
    not_tuned = tmp_path / "x.json"
    not_tuned.write_text("[1, 2]")
    refused(capsys, ["sample", "--tuned", str(not_tuned), "--out", str(tmp_path)],
            "--tuned must be a JSON file written by `scoresde tune`", "JSON list")


def test_tune_and_sample_a_checkpoint_and_refuse_another(tmp_path, cache, capsys):
    """Two untrained MLP score models differing only in their weights: a sampler tuned to one
    runs it exactly as the API does and is refused for the other."""
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = sd.ScoreModel(sd.nets.MLP(2, hidden=16, depth=1), sd.VPSDE())
        paths.append(str(sd.Trainer(model, torch.zeros(8, 2), batch_size=8, progress=False,
                                    ckpt_dir=tmp_path / str(seed)).save()))
    out = str(tmp_path / "ckpt.json")
    assert main(["tune", "--method", "gits", "--candidates", "12", "--ckpt", paths[0], "--solver", "ddim", "--nfe", "3",
                 "--calibration", "8", "--validation", "8", "--cache-dir", cache, "--out", out]) == 0
    tuned = sd.TunedSampler.load(out)
    assert tuned.model_fingerprint == sd.tuning.model_fingerprint(sd.training.load_model(paths[0]))
    assert main(["sample", "--ckpt", paths[0], "--tuned", out, "--samples", "8", "--out", str(tmp_path)]) == 0
    saved = torch.load(tmp_path / "checkpoint_tuned-gits_ddim_3.pt", weights_only=True)
    api = sd.sample(sd.training.load_model(paths[0]), shape=(8, 2), solver=tuned,
                    generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    assert torch.equal(saved["x"], api.x)
    refused(capsys, ["sample", "--ckpt", paths[1], "--tuned", out, "--out", str(tmp_path)],
            "model must be the one this sampler was tuned to", f"--ckpt {paths[1]}")


@pytest.fixture
def no_tuning(monkeypatch):
    import scoresde.tuning

    monkeypatch.setattr(scoresde.tuning, "tune", lambda *a, **k: pytest.fail("tuned before refusing"))


def test_tune_refuses_bad_input_before_any_work(capsys, tmp_path, no_tuning):
    out = ["--out", str(tmp_path / "t.json")]
    args = ["tune", "--problem", "ring2d", *out]
    refused(capsys, ["tune", "--method", "nope", *out], "argument --method: invalid choice: 'nope'")
    refused(capsys, args + ["--nfe", "0"], "nfe must be an integer >= 1", "got 0")
    refused(capsys, args + ["--solver", "midpoint", "--nfe", "1"], "nfe must be an integer >= 2 (one step of solver "
            "'midpoint')", "got 1")
    refused(capsys, args + ["--solver", "euler-maruyama"], "--solver must be a fixed-step ODE solver",
            "'euler-maruyama' (an SDE solver)")
    refused(capsys, args + ["--solver", "torchdiffeq"], "--solver must be a fixed-step ODE solver",
            "(an adaptive solver: it chooses its own steps)")
    refused(capsys, args + ["--solver", "nope"], "--solver must be a fixed-step ODE solver", "got 'nope'")
    refused(capsys, ["tune", *out], "--problem/--ckpt must be exactly one of them", "got 'neither'")
    refused(capsys, args + ["--ckpt", "x.pt"], "--problem/--ckpt must be exactly one", "--problem ring2d and --ckpt")
    refused(capsys, ["tune", "--ckpt", str(tmp_path / "none.pt"), *out], "--ckpt", "does not exist")
    refused(capsys, ["tune", "--ckpt", str(tmp_path), "--sde", "ve", *out], "--sde must be used with --problem")
    refused(capsys, ["tune", "--problem", "ring2d", "--out", str(tmp_path)], "--out must be a file path", "a folder")
    refused(capsys, ["tune", "--problem", "ring2d", "--out", str(tmp_path / "no" / "t.json")], "--out",
            "does not exist")
    (tmp_path / "afile").touch()
    refused(capsys, args + ["--cache-dir", str(tmp_path / "afile" / "x")], "--cache-dir must be a folder",
            "afile is a file")
    refused(capsys, args + ["--method", "gits", "--loss", "cvar"], "--loss must be used with --method steps or "
            "coefficients", "--loss with --method gits")
    refused(capsys, args + ["--method", "nelder-mead", "--epochs", "3"], "--epochs must be used with --method")
    refused(capsys, args + ["--method", "gits", "--max-evals", "3"], "--max-evals must be used with --method "
            "nelder-mead")
    refused(capsys, args + ["--method", "steps", "--method-options", '{"bogus": 1}'],
            "--method-options must be options of method 'steps'")
    refused(capsys, args + ["--method", "steps", "--epochs", "2", "--method-options", '{"epochs": 3}'],
            "--method-options must be options without a flag of their own (given: epochs)")
    refused(capsys, args + ["--method-options", "[1]"], "--method-options must be a JSON object")
    refused(capsys, args + ["--calibration", "0"], "calibration must be an integer >= 1", "got 0")
    refused(capsys, args + ["--validation", "0"], "validation must be an integer >= 1", "got 0")
    refused(capsys, args + ["--options", '{"steps": 3}'], "--options must be solver options, not arguments of sample()")
    assert not (tmp_path / "t.json").exists()


def test_tune_refuses_what_the_method_cannot_do_before_any_work(capsys, tmp_path):
    out = ["--out", str(tmp_path / "t.json")]
    refused(capsys, ["tune", "--problem", "ring2d", "--method", "steps", "--solver", "ddim", "--nfe", "1", *out],
            "nfe must be >= 2 for method 'steps'")
    refused(capsys, ["tune", "--problem", "ring2d", "--method", "coefficients", "--solver", "heun", *out],
            "solver must be one whose weights learned-multistep starts from", "'heun'")
    refused(capsys, ["tune", "--problem", "ring2d", "--method", "nelder-mead", "--calibration", "4", *out],
            "calibration batch size must be >= 16")
    refused(capsys, ["tune", "--problem", "ring2d", "--method", "steps", "--lr", "-1", *out], "lr must be", "got -1.0")
    assert not (tmp_path / "t.json").exists()


def test_bench_tune_adds_rows_measured_on_held_out_noise(tmp_path, cache, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--problems", "bimodal1d/vp", "--solvers", "ddim", "--nfe", "5", "--samples", "16",
                 "--metrics", "rmse", "--tune", "gits", "coefficients", "--optimize", "--calibration", "16",
                 "--validation", "16", "--tune-options",
                 '{"gits": {"candidates": 15}, "coefficients": {"epochs": 2}, "nelder-mead": {"max_evals": 3}}',
                 "--cache-dir", cache, "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "accuracy_vs_nfe.json").read_text())
    assert results["config"]["tune"] == dict(methods=["gits", "coefficients", "nelder-mead"], calibration=16,
                                             validation=16, seed=3, options={"gits": {"candidates": 15},
                                             "coefficients": {"epochs": 2}, "nelder-mead": {"max_evals": 3}})
    cells = {c["schedule"]: c for c in results["cells"]}
    assert set(cells) == {None, "tuned:gits", "tuned:coefficients", "tuned:nelder-mead"}
    assert all(c["status"] == "ok" and c["nfe"] == 5 and c["steps"] == 5 for c in cells.values())
    # each tuned row is its tuned sampler run on the cells' own noise (seed 0; tuning drew from seed 3)
    problem = sd.bench.analytic_problem("bimodal1d/vp", n=16)
    x_T = problem.model.sde.prior_sample((16, 1), torch.Generator().manual_seed(0), dtype=torch.float64)
    reference = problem.reference(x_T).x
    for method in ("gits", "nelder-mead"):
        tuning = cells[f"tuned:{method}"]["tuning"]
        assert tuning["method"] == method and tuning["cost_nfe"] > 0 and tuning["cost_seconds"] > 0
        assert tuning["loss"] <= tuning["loss_start"] and (tuning["calibration"], tuning["validation"]) == (16, 16)
        x = sd.sample(problem.model, x_T=x_T.float(), solver="ddim", schedule=tuning["times"]).x
        assert float((x.double() - reference).square().mean().sqrt()) == pytest.approx(
            cells[f"tuned:{method}"]["rmse"], rel=1e-9)
    assert cells["tuned:coefficients"]["tuning"]["solver"] == "learned-multistep"
    table = capsys.readouterr().out
    for row in ("| ddim |", "| tuned:gits:ddim |", "| tuned:coefficients:ddim |", "| tuned:nelder-mead:ddim |"):
        assert row in table
    assert "- tuned:gits:ddim at NFE 5: " in table


def test_bench_tune_refusals(capsys, tmp_path, monkeypatch):
    from scoresde import bench

    monkeypatch.setattr(bench, "run_benchmark", lambda **k: pytest.fail("benchmarked before refusing"))
    args = ["bench", "--problems", "ring2d/vp", "--solvers", "ddim", "--out", str(tmp_path), "--no-progress"]
    refused(capsys, args + ["--tune", "nope"], "argument --tune: invalid choice: 'nope'")
    refused(capsys, args + ["--tune", "gits", "--tune-options", '{"steps": {"epochs": 1}}'],
            "--tune-options must be a JSON object of options by --tune method", "'steps' is not a --tune method")
    refused(capsys, args + ["--tune", "steps", "--tune-options", '{"steps": {"bogus": 1}}'],
            "--tune-options", "method 'steps' has no option bogus")
    refused(capsys, args + ["--tune", "steps", "--tune-options", '{"steps": 3}'], "--tune-options",
            "the options of 'steps' are no object")
    refused(capsys, args + ["--tune", "gits", "--validation", "0"], "validation must be an integer >= 1", "got 0")
    (tmp_path / "file").touch()
    refused(capsys, args + ["--tune", "gits", "--cache-dir", str(tmp_path / "file")], "--cache-dir must be a folder")
    from scoresde.bench.run import run_benchmark

    with pytest.raises(ValueError, match="tune_options must be a mapping from tuning methods of this run"):
        run_benchmark(["ring2d/vp"], ["ddim"], [5], tune=["gits"], tune_options={"steps": {}})
    with pytest.raises(ValueError, match="tune must be one of"):
        run_benchmark(["ring2d/vp"], ["ddim"], [5], tune=["nope"])
