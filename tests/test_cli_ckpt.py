"""Every evaluating command on any checkpoint and data set: `bench --ckpt --data`, `nll --ckpt
--data`, `sample --ckpt --data` (sliced W2 next to the prior's and the floor) and `--cond`; and
their refusals, each one line with exit status 2 before any work."""
import json
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

import scoresde as sd
from scoresde import bench
from scoresde.cli import main

from _cli import refused as _refused


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Checkpoints of: an MLP trained on moons (300 steps, ~4 s), an MLP with a vector condition,
    an untrained digits-shaped UNet, a noisy classifier, and a truncated copy of the first."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ckpts")
    x = sd.data.load_data("moons", "train").x
    torch.manual_seed(0)
    moons = sd.ScoreModel(sd.nets.MLP(2, hidden=64, depth=2), sd.VPSDE(), prediction="v")
    paths = {"moons": sd.Trainer(moons, x, batch_size=256, lr=3e-3, warmup_steps=20, seed=0, progress=False,
                                 ckpt_dir=root / "moons").fit(300).save()}
    cond = torch.cat([x[:512], x[:512, :1]], 1)  # cond_dim 3: the point itself and its first coordinate
    net = sd.nets.MLP(2, hidden=32, depth=1, cond_dim=3)
    paths["cond"] = sd.Trainer(sd.ScoreModel(net, sd.VPSDE(), prediction="v"), x[:512], cond=cond, batch_size=64,
                               lr=1e-2, cond_dropout=0.2, seed=0, progress=False, ckpt_dir=root / "cond").fit(20).save()
    digits = sd.data.load_data("digits", "train").x[:64]
    unet = sd.nets.UNet(base_channels=8, channel_mults=(1,), groups=4)
    paths["digits"] = sd.Trainer(sd.ScoreModel(unet, sd.VPSDE()), digits, batch_size=16, progress=False,
                                 ckpt_dir=root / "digits").save()
    xs, labels = sd.data.GaussianMixture.ring(modes=4).sample(128, torch.Generator().manual_seed(0),
                                                              return_components=True)
    classifier = sd.classifier.NoisyClassifier(_TimeMLP(), sd.VPSDE())
    paths["classifier"] = sd.Trainer(classifier, (xs, labels), batch_size=32, loss_fn=sd.losses.classifier_loss,
                                     progress=False, ckpt_dir=root / "classifier").fit(1).save()
    # a classifier on a built-in network whose output width equals the data's (dim == K = 2):
    # told from a score model only by the kind its checkpoint records
    builtin = sd.classifier.NoisyClassifier(sd.nets.MLP(2, hidden=16, depth=1, num_classes=2), sd.VPSDE())
    paths["mlp_classifier"] = sd.Trainer(builtin, (xs, labels % 2), batch_size=32, loss_fn=sd.losses.classifier_loss,
                                         progress=False, ckpt_dir=root / "mlp_classifier").fit(1).save()
    data = paths["moons"].read_bytes()
    paths["truncated"] = root / "truncated.pt"
    paths["truncated"].write_bytes(data[: len(data) // 2])
    torch.set_num_threads(threads)
    return {k: str(v) for k, v in paths.items()}


class _TimeMLP(nn.Module):
    """A time-dependent 4-class classifier, [x, t] -> logits (not a built-in score network)."""

    def __init__(self):
        super().__init__()
        self.num_classes = 4
        self.body = nn.Sequential(nn.Linear(3, 16), nn.SiLU(), nn.Linear(16, 4))

    def forward(self, x, t):
        return self.body(torch.cat([x, t[:, None].to(x.dtype)], dim=1))


@pytest.fixture
def no_work(monkeypatch):
    """Every command's work replaced by a failure: a refusal must come before any of it."""
    import scoresde.likelihood
    import scoresde.solvers

    def work(*args, **kwargs):
        raise AssertionError("the work started before the bad input was refused")

    for module, name in ((scoresde.solvers, "sample"), (bench, "run_benchmark"),
                         (scoresde.likelihood, "log_likelihood"), (scoresde.likelihood, "bits_per_dim")):
        monkeypatch.setattr(module, name, work)


def test_bench_measures_a_checkpoint_on_its_data_sets_held_out_split(ckpts, tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--ckpt", ckpts["moons"], "--data", "moons", "--problems", "ckpt", "--solvers", "euler",
                 "dpm++2m", "--nfe", "5", "10", "--samples", "64", "--metrics", "rmse", "sliced_w2",
                 "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "accuracy_vs_nfe.json").read_text())
    problem = results["problems"]["moons"]  # named after its data set
    assert problem["dim"] == 2 and problem["reference"]["method"] == "dopri5" and problem["reference"]["rtol"] == 1e-5
    floor = problem["floors"]["sliced_w2"]["mean"]
    cells = {(c["solver"], c["requested_nfe"]): c for c in results["cells"]}
    assert set(cells) == {("euler", 5), ("euler", 10), ("dpm++2m", 5), ("dpm++2m", 10)}
    assert all(c["status"] == "ok" and c["nfe"] == c["requested_nfe"] for c in cells.values())
    for solver in ("euler", "dpm++2m"):
        # nearer the model's own ODE solution with twice the steps (the learned field is rough near
        # t_end, so no solver reaches its nominal order here), and near the held-out points
        assert cells[solver, 10]["rmse"] < 0.8 * cells[solver, 5]["rmse"] < 0.2
        assert cells[solver, 10]["sliced_w2"] < floor + 0.2
    assert "moons (dim 2)" in capsys.readouterr().out
    # the same problem from the API: the test split as target, the train split drawn for the floor
    problem = bench.checkpoint_problem(ckpts["moons"], "moons")
    assert problem.name == "moons" and problem.shape == (2,)
    assert torch.equal(problem.target, sd.data.load_data("moons", "test", dtype=torch.float64).x)
    train = sd.data.load_data("moons", "train", dtype=torch.float64).x
    drawn = problem.draw(5, torch.Generator().manual_seed(0))
    assert all(bool((train == row).all(1).any()) for row in drawn)


def test_bench_ckpt_defaults_digits_for_a_digits_model_and_keeps_the_old_flag(ckpts, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(bench, "run_benchmark", lambda **kwargs: calls.append(kwargs))
    for flag in ("--digits-ckpt", "--ckpt"):
        assert main(["bench", "--sdes", "vp", flag, ckpts["digits"], "--out", str(tmp_path), "--no-progress"]) == 0
    assert calls[0] == calls[1]
    assert calls[0]["checkpoint"] == ckpts["digits"] and calls[0]["data"] is None
    assert calls[0]["problems"] == [f"{p}/vp" for p in bench.ANALYTIC] + ["digits"]
    # problem ckpt on the digits is problem digits (one problem, not two)
    assert main(["bench", "--problems", "ckpt", "digits", "--ckpt", ckpts["digits"], "--data", "digits",
                 "--out", str(tmp_path), "--no-progress"]) == 0
    assert calls[2]["problems"] == ["digits"]
    assert main(["bench", "--problems", "ring2d/vp", "--ckpt", ckpts["moons"], "--data", "moons",
                 "--out", str(tmp_path), "--no-progress"]) == 2
    assert main(["bench", "--ckpt", ckpts["moons"], "--data", "moons", "--sdes", "vp",
                 "--out", str(tmp_path), "--no-progress"]) == 0
    assert calls[3]["problems"][-1] == "ckpt" and calls[3]["data"] == "moons"
    assert bench.digits_problem(ckpts["digits"]).name == "digits"


def test_nll_of_a_checkpoint_on_continuous_data_in_nats_per_dim(ckpts, capsys):
    assert main(["nll", "--ckpt", ckpts["moons"], "--data", "moons", "--samples", "64", "--rtol", "1e-4",
                 "--atol", "1e-4"]) == 0
    line = capsys.readouterr().out
    mean, half = map(float, re.search(r": ([-\d.]+) \+- ([\d.]+) nats/dim \(95% CI\)", line).groups())
    assert "moons (test, n=64)" in line and 0 < half < 0.3
    # the model beats the best Gaussian fit to the data (the largest entropy at this covariance)
    x = sd.data.load_data("moons", "test", dtype=torch.float64).x
    gaussian = 0.5 * math.log(2 * math.pi * math.e) + 0.5 * float(torch.logdet(torch.cov(x.T))) / 2
    assert mean + half < gaussian - 0.1, (mean, half, gaussian)


def test_nll_of_a_digits_checkpoint_is_in_bits_per_dim_by_default(ckpts, capsys):
    assert main(["nll", "--ckpt", ckpts["digits"], "--samples", "2", "--trace", "hutchinson", "--rtol", "1e-2",
                 "--atol", "1e-2"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("digits (test, n=2)") and "bits/dim (95% CI)" in line


def test_sample_with_data_prints_sliced_w2_below_the_priors(ckpts, tmp_path, capsys):
    assert main(["sample", "--ckpt", ckpts["moons"], "--data", "moons", "--solver", "dpm++2m", "--steps", "20",
                 "--samples", "500", "--out", str(tmp_path)]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("sliced W2"))
    found = re.search(r"samples ([\d.]+), prior N\(0, 1\^2 I\) ([\d.]+), floor \(train vs test, n=500\) "
                      r"([\d.]+) \+- ([\d.]+)", line)
    samples, prior, floor, spread = map(float, found.groups())
    assert floor < samples < 0.5 * prior, line
    saved = torch.load(tmp_path / "checkpoint_dpm++2m_20.pt", weights_only=True)
    xs = saved["x"].double()
    test = sd.data.load_data("moons", "test", dtype=torch.float64).x
    assert abs(float(sd.metrics.sliced_wasserstein(xs, test)) - samples) < 1e-3


def test_sample_with_a_vector_condition_equals_classifier_free_guidance(ckpts, tmp_path, capsys):
    vector = torch.tensor([1.0, 0.5, 1.0])
    torch.save(vector, tmp_path / "c.pt")
    np.save(tmp_path / "rows.npy", vector.expand(16, 3).numpy())
    np.savez(tmp_path / "other.npz", cond=np.array([-1.0, 0.5, -1.0]))
    argv = ["sample", "--ckpt", ckpts["cond"], "--solver", "ddim", "--steps", "6", "--samples", "16"]
    assert main(argv + ["--cond", str(tmp_path / "c.pt"), "--guidance-scale", "2", "--out", str(tmp_path / "a")]) == 0
    assert "scale=2" in capsys.readouterr().out
    got = torch.load(tmp_path / "a" / "checkpoint_ddim_6_cond-c.pt", weights_only=True)["x"]
    model = sd.load_model(ckpts["cond"])
    guided = sd.guidance.ClassifierFree(model, vector.expand(16, 3).contiguous(), 2.0)
    with torch.no_grad():
        want = sd.sample(guided, shape=(16, 2), solver="ddim", steps=6, generator=torch.Generator().manual_seed(0)).x
    assert torch.allclose(got, want, atol=1e-6)
    # rows equal to the vector give the same samples; another condition other samples
    assert main(argv + ["--cond", str(tmp_path / "rows.npy"), "--guidance-scale", "2",
                        "--out", str(tmp_path / "b")]) == 0
    assert torch.equal(torch.load(tmp_path / "b" / "checkpoint_ddim_6_cond-rows.pt", weights_only=True)["x"], got)
    assert main(argv + ["--cond", str(tmp_path / "other.npz"), "--guidance-scale", "2", "--out", str(tmp_path)]) == 0
    assert not torch.allclose(torch.load(tmp_path / "checkpoint_ddim_6_cond-other.pt", weights_only=True)["x"], got)


def test_bad_checkpoints_data_and_conditions_are_refused_in_one_line_before_any_work(ckpts, tmp_path, capsys,
                                                                                    no_work):
    out = ["--out", str(tmp_path)]
    moons, cond = ckpts["moons"], ckpts["cond"]
    bench_args = ["--problems", "ckpt", "--no-progress", *out]
    for command, extra in (("bench", bench_args), ("nll", []), ("sample", out)):
        # a classifier checkpoint, a truncated file
        _refused(capsys, [command, "--ckpt", ckpts["classifier"], "--data", "ring", *extra],
                 "--ckpt must be a checkpoint of a score model", "network _TimeMLP", "classifier")
        _refused(capsys, [command, "--ckpt", ckpts["mlp_classifier"], "--data", "ring", *extra],
                 "--ckpt must be a checkpoint of a score model", "kind classifier")
        _refused(capsys, [command, "--ckpt", ckpts["truncated"], "--data", "moons", *extra],
                 "truncated", "truncated.pt")
        # a data set of another shape, naming both; no data set for a model that is not of digits
        _refused(capsys, [command, "--ckpt", moons, "--data", "digits", *extra],
                 "--data must hold samples of the checkpoint's data shape (2,)", "'digits'", "shape (1, 8, 8)")
        _refused(capsys, [command, "--ckpt", moons, "--data", "bimodal1d", *extra], "(2,)", "shape (1,)")
        _refused(capsys, [command, "--ckpt", moons, "--data", "nope", *extra], "--data must be one of", "'nope'")
    # --data names the data set of a checkpoint
    for argv in (["bench", "--problems", "ring2d/vp", "--no-progress", *out], ["nll"], ["sample", *out]):
        _refused(capsys, [*argv, "--data", "moons"], "--data must be used with --ckpt", "'moons'")
    for command, extra in (("bench", bench_args), ("nll", [])):
        _refused(capsys, [command, "--ckpt", moons, *extra], "--data must be a data set for this model of sample "
                 "shape (2,)", "got None")
    _refused(capsys, ["bench", "--ckpt", moons, "--data", "moons", "--samples", "30000", *bench_args],
             "--samples must be at most 20000", "got 30000")
    _refused(capsys, ["bench", "--problems", "digits", "--ckpt", moons, "--data", "moons", "--no-progress", *out],
             "--problems must be a list with ckpt, not digits")
    # conditions: none for an unconditional model, the model's width, one file of numbers
    _refused(capsys, ["sample", "--ckpt", moons, "--label", "1", *out], "--label must be used with a "
             "class-conditional model", "got 1")
    np.save(tmp_path / "c3.npy", np.ones(3))
    np.save(tmp_path / "c4.npy", np.ones(4))
    np.save(tmp_path / "rows.npy", np.ones((5, 3)))
    (tmp_path / "bad.pt").write_bytes(b"not a tensor file")
    _refused(capsys, ["sample", "--ckpt", moons, "--cond", str(tmp_path / "c3.npy"), *out],
             "--cond must be used with a model whose network has cond_dim")
    _refused(capsys, ["sample", "--ckpt", cond, "--cond", str(tmp_path / "c4.npy"), *out],
             "--cond must be", "width 4, not the model's cond_dim 3", "c4.npy")
    _refused(capsys, ["sample", "--ckpt", cond, "--cond", str(tmp_path / "rows.npy"), "--samples", "8", *out],
             "(8, 3) rows", "its shape is (5, 3)")
    _refused(capsys, ["sample", "--ckpt", cond, "--cond", str(tmp_path / "bad.pt"), *out], "--cond", "cannot be read")
    _refused(capsys, ["sample", "--ckpt", cond, "--cond", str(tmp_path / "missing.npy"), *out], "--cond",
             "does not exist")
    _refused(capsys, ["sample", "--ckpt", cond, "--guidance-scale", "2", *out],
             "--guidance-scale must be used with --label or --cond")
    _refused(capsys, ["sample", "--cond", str(tmp_path / "c3.npy"), *out], "--cond must be used with --ckpt")


def test_a_classifier_checkpoint_loads_as_the_classifier_it_is(ckpts):
    model = sd.load_model(ckpts["mlp_classifier"])
    assert isinstance(model, sd.classifier.NoisyClassifier)
    assert isinstance(sd.load_model(ckpts["moons"]), sd.ScoreModel)
    assert not isinstance(sd.load_model(ckpts["moons"]), sd.classifier.NoisyClassifier)
    assert model(torch.zeros(3, 2), 0.5).shape == (3, 2)


def test_nll_refuses_dequantization_draws_for_continuous_data(ckpts, capsys, no_work):
    _refused(capsys, ["nll", "--ckpt", ckpts["moons"], "--data", "moons", "--draws", "4"],
             "--draws must be 1 for continuous data", "got 4")
