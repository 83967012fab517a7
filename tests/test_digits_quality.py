"""Smoke test of benchmarks/digits_quality.py at tiny settings, and of the reusable pieces in
scoresde.bench.digits against known values."""
import importlib.util
import json
import math
from pathlib import Path

import torch

from scoresde.bench import classifier_frechet, image_grid, train_digit_classifier
from scoresde.data import load_digits

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "digits_quality.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("digits_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_writes_finite_json_and_png(tmp_path):
    script = _load_script()
    argv = ["--steps", "4", "--n", "50", "--samplers", "dpm++2m:4", "euler_maruyama:5", "--classifier-epochs", "2",
            "--batch-size", "32", "--out", str(tmp_path / "results"), "--ckpt-dir", str(tmp_path / "ckpt")]
    report = script.main(argv)
    saved = json.loads((tmp_path / "results" / "digits_quality.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert (tmp_path / "results" / "digits_samples.png").stat().st_size > 0
    assert (tmp_path / "ckpt" / "checkpoint.pt").is_file()
    assert saved["training"]["steps"] == 4 and saved["command"].startswith("python benchmarks/digits_quality.py")
    # one evaluation per step for both, plus the final denoising evaluation
    assert [(r["solver"], r["nfe"]) for r in saved["samplers"]] == [("dpm++2m", 5), ("euler_maruyama", 6)]
    judge = saved["judge"]
    numbers = [judge["floor_train_vs_test"], judge["floor_train_half_vs_half"], judge["test_accuracy"]]
    numbers += [r[k] for r in saved["samplers"] for k in ("fd_vs_test", "fd_vs_train", "ratio_to_floor")]
    assert all(math.isfinite(v) and v >= 0 for v in numbers)
    assert judge["floor_train_vs_test"] > 0 and 0.1 < judge["test_accuracy"] <= 1
    assert abs(sum(saved["samplers"][0]["predicted_class_fractions"]) - 1) < 1e-6


def test_classifier_frechet_is_zero_on_identical_sets_and_grows_with_a_shift():
    x_train, y_train = load_digits("train")
    x, _ = load_digits("test")
    net = train_digit_classifier(x_train, y_train, epochs=3, seed=0)
    assert abs(classifier_frechet(net, x, x)) < 1e-6
    # out-of-range inputs are clipped to [-1, 1]: scaling the ink beyond the range changes nothing
    assert abs(classifier_frechet(net, x, torch.where(x > 0.999, 5.0, x))) < 1e-6
    # inverted images are far from real ones, next to the real train/test floor
    assert classifier_frechet(net, x, -x) > 10 * classifier_frechet(net, x_train, x)


def test_image_grid_places_every_image():
    x = torch.arange(5 * 4, dtype=torch.float32).reshape(5, 1, 2, 2)
    grid = image_grid(x, nrow=3, pad=1, pad_value=-1.0)
    assert grid.shape == (2 * 3 + 1, 3 * 3 + 1)
    assert torch.equal(grid[1:3, 1:3], x[0, 0]) and torch.equal(grid[4:6, 4:6], x[4, 0])
    assert bool((grid[0] == -1).all()) and bool((grid[4:6, 7:9] == -1).all())  # the empty sixth cell
