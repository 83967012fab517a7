"""`scoresde train` (scoresde.training.recipe): the run folder, exact resumption, the TOML
configuration and its precedence, torchrun, and bad input refused in one line before any work."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import scoresde.training.recipe as recipe
from scoresde.cli import main

from _cli import refused as _refused
from scoresde.training import TrainConfig, Trainer

TINY = ["--data", "moons", "--hidden", "32", "--depth", "2", "--batch-size", "64", "--no-progress"]


def _rows(folder):
    with open(Path(folder) / "loss.csv", newline="") as f:
        return list(csv.DictReader(f))


def _tensors(path):
    """Every tensor of a checkpoint by name, and its JSON body and digest."""
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.fixture
def no_work(monkeypatch):
    """The run itself replaced by a failure: a refusal must come before any of it."""
    def work(*args, **kwargs):
        raise AssertionError("the run started before the bad input was refused")

    monkeypatch.setattr(recipe, "_train", work)


def test_train_writes_the_run_folder_and_sample_reads_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "200", "--lr", "3e-3", "--sample-every", "100", "--prediction", "eps",
                 "--out", str(out)]) == 0
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and "step 200" in summary[0] and str(out) in summary[0]
    for name in ("checkpoint.pt", "config.toml", "loss.csv", "loss.png", "samples_100.png", "samples_200.png"):
        assert (out / name).is_file(), name
    rows = _rows(out)
    assert [int(r["step"]) for r in rows] == list(range(1, 201))
    loss = [float(r["loss"]) for r in rows]
    assert sum(loss[-50:]) < 0.6 * sum(loss[:50])  # it learned: the DSM loss falls from ~2 (eps = 0) well below
    assert float(rows[0]["lr"]) == pytest.approx(3e-3 / 100) and float(rows[-1]["lr"]) == 3e-3  # warm-up of 100
    secs = [float(r["seconds"]) for r in rows]
    assert secs == sorted(secs)
    stored = TrainConfig.from_toml(out / "config.toml")  # the resolved configuration
    assert stored.net == "mlp" and stored.steps == 200 and stored.hidden == 32 and stored.lr == 3e-3
    assert stored.prediction == "eps" and TrainConfig("moons").prediction == "v"  # v unless asked (prediction_types.py)
    assert main(["sample", "--ckpt", str(out / "checkpoint.pt"), "--solver", "dpm++2m", "--steps", "10",
                 "--n", "256", "--out", str(tmp_path / "samples")]) == 0
    x = torch.load(tmp_path / "samples" / "checkpoint_dpm++2m_10.pt", weights_only=True)["x"]
    assert x.shape == (256, 2) and torch.isfinite(x).all()


def test_interrupted_and_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, capsys, monkeypatch):
    args = [*TINY, "--sample-every", "0", "--ckpt-every", "30", "--steps", "60"]
    assert main(["train", *args, "--out", str(tmp_path / "full")]) == 0
    step = Trainer._train_step

    def interrupted(self):  # killed at step 45: the checkpoint is step 30's, loss.csv has 45 rows
        if self.step == 45:
            raise KeyboardInterrupt
        step(self)

    monkeypatch.setattr(Trainer, "_train_step", interrupted)
    assert main(["train", *args, "--out", str(tmp_path / "part")]) == 130
    assert len(_rows(tmp_path / "part")) == 45 and (tmp_path / "part" / "config.toml").is_file()
    monkeypatch.setattr(Trainer, "_train_step", step)
    assert main(["train", *args, "--resume", "--out", str(tmp_path / "part")]) == 0
    full, part = _tensors(tmp_path / "full" / "checkpoint.pt"), _tensors(tmp_path / "part" / "checkpoint.pt")
    assert full[0].keys() == part[0].keys()
    for key, value in full[0].items():
        assert torch.equal(value, part[0][key]), key
    assert json.loads(full[1]["scoresde"]) == json.loads(part[1]["scoresde"])
    assert full[1]["digest"] == part[1]["digest"]
    assert (tmp_path / "full" / "checkpoint.pt").read_bytes() == (tmp_path / "part" / "checkpoint.pt").read_bytes()
    strip = [[r["step"], r["loss"], r["lr"]] for r in _rows(tmp_path / "full")]
    assert [[r["step"], r["loss"], r["lr"]] for r in _rows(tmp_path / "part")] == strip  # no duplicate rows
    capsys.readouterr()
    # a resumed run must be the same run: any option but steps, ckpt_every, sample_every, device, progress
    _refused(capsys, ["train", *args, "--resume", "--lr", "0.01", "--depth", "3", "--out", str(tmp_path / "part")],
             "resume must use the configuration", "depth: 2 there, 3 here", "lr: 0.001 there, 0.01 here")
    assert main(["train", *args, "--steps", "70", "--ckpt-every", "5", "--resume", "--out", str(tmp_path / "part")]) == 0
    assert len(_rows(tmp_path / "part")) == 70


def test_config_file_round_trip_and_flags_override_it(tmp_path, capsys):
    config = TrainConfig(data="digits", net="unet", channels=16, channel_mults=(1, 2, 2), lr=2.5e-4, ema=0.9999,
                         num_classes=12, label_dropout=0.1, seed=7)
    path = tmp_path / "c.toml"
    path.write_text(config.to_toml())
    assert TrainConfig.from_toml(path) == config
    path.write_text('data = "moons"\nhidden = 32\ndepth = 2\nbatch-size = 32\nlr = 0.01\nsteps = 50\n'
                    'sample_every = 0\nprogress = false\n')
    assert main(["train", "--config", str(path), "--lr", "0.002", "--steps", "8", "--out", str(tmp_path / "run")]) == 0
    stored = TrainConfig.from_toml(tmp_path / "run" / "config.toml")
    assert (stored.lr, stored.steps, stored.batch_size, stored.hidden) == (0.002, 8, 32, 32)  # flag, flag, file, file
    assert len(_rows(tmp_path / "run")) == 8
    # the written config.toml runs the same training again
    assert main(["train", "--config", str(tmp_path / "run" / "config.toml"), "--out", str(tmp_path / "again")]) == 0
    a, b = _tensors(tmp_path / "run" / "checkpoint.pt"), _tensors(tmp_path / "again" / "checkpoint.pt")
    assert all(torch.equal(v, b[0][k]) for k, v in a[0].items())


def test_torchrun_two_processes_match_one_process(tmp_path, capsys):
    args = [*TINY, "--sample-every", "0", "--steps", "12", "--ckpt-every", "12"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "scoresde", "train", *args, "--out", str(tmp_path / "ddp")]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.skip("torchrun did not finish in 180 s (a loaded machine)")
    if proc.returncode != 0 and ("Address already in use" in proc.stderr or "EADDRINUSE" in proc.stderr):
        pytest.skip("torchrun could not start its rendezvous")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(proc.stdout.strip().splitlines()) == 1  # rank 0 alone reports
    assert [int(r["step"]) for r in _rows(tmp_path / "ddp")] == list(range(1, 13))  # and logs
    assert main(["train", *args, "--out", str(tmp_path / "one")]) == 0
    ddp, one = _tensors(tmp_path / "ddp" / "checkpoint.pt")[0], _tensors(tmp_path / "one" / "checkpoint.pt")[0]
    for key in (k for k in one if k.startswith(("model/", "ema/"))):
        torch.testing.assert_close(ddp[key], one[key], rtol=1e-5, atol=1e-6, msg=key)  # float summation order


def test_bad_input_is_refused_in_one_line_before_any_work(tmp_path, capsys, no_work):
    out = ["--out", str(tmp_path / "run"), "--no-progress"]
    np.savez(tmp_path / "no_x.npz", y=np.zeros(10, dtype=np.int64))
    nan = np.random.default_rng(0).normal(size=(20, 2))
    nan[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.savez(tmp_path / "small_images.npz", x=np.zeros((20, 1, 6, 6)))
    np.savez(tmp_path / "labels.npz", x=np.zeros((20, 2)), y=np.arange(20) % 5)
    np.savez(tmp_path / "negative.npz", x=np.zeros((20, 2)), y=np.arange(20) - 1)
    (tmp_path / "unknown.toml").write_text('data = "moons"\nlearning_rate = 0.1\n')
    (tmp_path / "bad_value.toml").write_text('data = "moons"\nlr = "fast"\n')
    (tmp_path / "broken.toml").write_text('data = "moons\n')
    for argv, words in [
        (["--data", str(tmp_path / "no_x.npz")], ["x (N, *shape)", "only y"]),
        (["--data", str(tmp_path / "nan.npy")], ["must be finite", "NaN"]),
        (["--data", str(tmp_path / "absent.pt")], ["data must be", "no such file"]),
        (["--data", "spiral"], ["data must be", "moons", "'spiral'"]),
        (["--data", "moons", "--net", "unet"], ["net must be mlp", "(2,)", "'unet'"]),
        (["--data", "digits", "--net", "mlp"], ["net must be unet", "(1, 8, 8)", "'mlp'"]),
        (["--data", str(tmp_path / "small_images.npz"), "--channel-mults", "1", "2", "2"],
         ["channel_mults must be at most 2 levels", "6x6", "[1, 2, 2]"]),
        (["--data", str(tmp_path / "labels.npz"), "--num-classes", "3"],
         ["num_classes must be > every label", "largest is 4", "got 3"]),
        (["--data", str(tmp_path / "negative.npz")], ["labels >= 0", "got -1"]),
        (["--data", "moons", "--label-dropout", "0.1"], ["label_dropout must be 0 for data without labels"]),
        (["--data", "moons", "--num-classes", "3"], ["num_classes must be unset"]),
        (["--data", "moons", "--bf16"], ["bf16", "CUDA"]),
        (["--data", "moons", "--lr", "0"], ["lr must be a finite number > 0", "got 0"]),
        (["--data", "moons", "--lr", "nan"], ["lr must be", "got nan"]),
        (["--data", "moons", "--ema", "1"], ["ema must be a finite number in [0, 1)", "got 1.0"]),
        (["--data", "moons", "--steps", "0"], ["steps must be an integer >= 1", "got 0"]),
        (["--data", "moons", "--hidden", "33"], ["hidden must be an even integer", "got 33"]),
        (["--data", "moons", "--device", "cuda:99"], ["--device"]),
        (["--data", "moons", "--resume"], ["resume needs a checkpoint"]),
        ([], ["data must be given"]),
        (["--config", str(tmp_path / "absent.toml")], ["--config must be a readable TOML file", "does not exist"]),
        (["--config", str(tmp_path / "unknown.toml")], ["keys of", "learning_rate", "batch_size, lr,"]),
        (["--config", str(tmp_path / "bad_value.toml")], ["bad_value.toml: lr must be a finite number", "'fast'"]),
        (["--config", str(tmp_path / "broken.toml")], ["config must be a readable TOML file", "broken.toml"]),
    ]:
        _refused(capsys, ["train", *argv, *out], *words)
    assert not (tmp_path / "run").exists()


def test_a_condition_of_another_width_is_refused_on_resume(tmp_path, capsys):
    data = tmp_path / "cond.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.normal(size=(64, 2)), cond=rng.normal(size=(64, 3)))
    args = ["train", "--data", str(data), "--hidden", "16", "--depth", "1", "--batch-size", "16", "--no-progress",
            "--sample-every", "0", "--out", str(tmp_path / "run")]
    assert main([*args, "--steps", "3"]) == 0
    assert "'cond_dim': 3" in str(recipe.load_checkpoint(tmp_path / "run" / "checkpoint.pt")["config"]["model"])
    np.savez(data, x=rng.normal(size=(64, 2)), cond=rng.normal(size=(64, 4)))
    capsys.readouterr()
    _refused(capsys, [*args, "--steps", "6", "--resume"], "the width of cond", "3 (the checkpoint's cond_dim)", "got 4")
    _refused(capsys, [*args, "--steps", "6"], "out must be a folder without a checkpoint")


def test_from_data_to_samples_end_to_end_on_a_2d_toy_set(tmp_path, capsys):
    """The researcher's loop from the command line on one `scoresde train` run: sample it (its
    sliced W2 to the held-out split clearly below the prior's), its likelihood, a tuned
    schedule and sampling with it, and a benchmark of it."""
    import re

    run, ckpt = tmp_path / "run", str(tmp_path / "run" / "checkpoint.pt")
    assert main(["train", "--data", "moons", "--hidden", "64", "--depth", "2", "--batch-size", "256", "--lr", "3e-3",
                 "--steps", "300", "--sample-every", "0", "--no-progress", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["sample", "--ckpt", ckpt, "--solver", "dpm++2m", "--steps", "20", "--n", "1000", "--data", "moons",
                 "--out", str(tmp_path / "samples")]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("sliced W2"))
    samples, prior = (float(v) for v in re.search(r"samples ([\d.]+), prior N\(0, [^)]*\) ([\d.]+)", line).groups())
    assert samples < 0.5 * prior, line
    assert main(["nll", "--ckpt", ckpt, "--data", "moons", "--samples", "50"]) == 0
    assert "nats/dim" in capsys.readouterr().out
    schedule = tmp_path / "schedule.json"
    assert main(["schedule", "optimize", "--ckpt", ckpt, "--solver", "dpm++2m", "--nfe", "5", "--calibration", "32",
                 "--max-evals", "20", "--out", str(schedule)]) == 0
    assert main(["sample", "--ckpt", ckpt, "--schedule-file", str(schedule), "--n", "64",
                 "--out", str(tmp_path / "samples")]) == 0
    capsys.readouterr()
    assert main(["bench", "--ckpt", ckpt, "--data", "moons", "--problems", "ckpt", "--solvers", "dpm++2m",
                 "--nfe", "5", "10", "--samples", "64", "--metrics", "rmse", "--no-progress",
                 "--out", str(tmp_path / "bench")]) == 0
    cells = json.loads((tmp_path / "bench" / "accuracy_vs_nfe.json").read_text())["cells"]
    assert [c["status"] for c in cells] == ["ok", "ok"] and cells[1]["rmse"] < cells[0]["rmse"]
