import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import scoresde as sd
from scoresde.training import load_checkpoint
from _training_setup import STEPS, make_trainer

RING = sd.data.GaussianMixture.ring()


def sliced_w2(a, b, n_proj=128, seed=0):
    """Sliced 2-Wasserstein distance between equal-size sample sets: RMS over random unit
    directions of the W2 distance between the sorted 1-D projections."""
    dirs = torch.randn(a.shape[1], n_proj, generator=torch.Generator().manual_seed(seed), dtype=a.dtype)
    dirs = dirs / dirs.norm(dim=0)
    pa, pb = (a @ dirs).sort(0).values, (b @ dirs).sort(0).values
    return float((pa - pb).pow(2).mean().sqrt())


def euler_maruyama(model, sde, n, steps, generator):
    """The reverse SDE dx = [f x - g^2 score] dt + g dW_bar from T to t_eps, uniform steps."""
    reverse = sde.reverse(model.score)
    x = sde.prior_sample((n, 2), generator=generator)
    ts = torch.linspace(sde.T, sde.t_eps, steps + 1)
    with torch.no_grad():
        for t, t_next in zip(ts[:-1], ts[1:]):
            dt = t_next - t
            z = torch.randn(x.shape, generator=generator)
            x = x + reverse.drift(x, t) * dt + reverse.diffusion(x, t) * (-dt).sqrt() * z
    return x


def mode_hits(x, radius=0.45):
    """Fraction of samples within 3 standard deviations of one of the ring's means."""
    return float(((x[:, None] - RING.means.float()).norm(dim=-1).min(1).values < radius).float().mean())


def tiny_model(sde=None, prediction="eps", **net_kwargs):
    torch.manual_seed(0)
    net_kwargs = {"hidden": 16, "depth": 1, **net_kwargs}
    return sd.ScoreModel(sd.nets.MLP(2, **net_kwargs), sde or sd.VPSDE(), prediction=prediction)


def ring_data(n=256):
    return RING.sample(n, torch.Generator().manual_seed(0))


def assert_same_state(a, b):
    for (key, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), key


def test_training_on_a_ring_moves_samples_from_the_prior_to_the_data():
    """400 steps of a small MLP: Euler-Maruyama samples of the EMA model are 3x closer to the
    ring than prior draws in sliced W2 (0.09 vs 0.31; two exact sample sets: 0.075), and most
    land on a mode (70% vs 26% for the prior, 99% for the data)."""
    sde = sd.VPSDE()
    torch.manual_seed(0)
    model = sd.ScoreModel(sd.nets.MLP(2, hidden=64, depth=2), sde, prediction="eps")
    trainer = sd.Trainer(model, RING.sample(8192, torch.Generator().manual_seed(0)), batch_size=256, lr=2e-3,
                         warmup_steps=20, ema_decay=0.99, progress=False)
    trainer.fit(400)
    assert trainer.step == 400 and len(trainer.loss_history) == 400
    assert sum(trainer.loss_history[-50:]) / 50 < 0.8 * sum(trainer.loss_history[:10]) / 10
    ref = RING.sample(2000, torch.Generator().manual_seed(1))
    x = euler_maruyama(trainer.ema_model, sde, 2000, 100, torch.Generator().manual_seed(2))
    prior = sde.prior_sample((2000, 2), generator=torch.Generator().manual_seed(3))
    sw_model, sw_prior = sliced_w2(x, ref), sliced_w2(prior, ref)
    assert sw_model < 0.5 * sw_prior
    assert mode_hits(x) > mode_hits(prior) + 0.3


def test_resume_continues_bit_for_bit(tmp_path):
    """N steps straight equals N/2, a checkpoint, a new Trainer from it and N/2 more: model,
    EMA, optimizer and losses identical (labels, label dropout, importance-sampled t)."""
    n = 8
    straight = make_trainer()
    straight.fit(n)
    first = make_trainer(ckpt_dir=tmp_path, ckpt_every=100)
    first.fit(n // 2)
    torch.randn(100)  # the global RNG moves on in between; the checkpoint restores it
    x, labels = first.data.x, first.data.y
    resumed = sd.Trainer.from_checkpoint(tmp_path / "checkpoint.pt", (x, labels), progress=False)
    assert resumed.step == n // 2 and resumed.options == first.options
    resumed.fit(n)
    assert_same_state(straight.model, resumed.model)
    assert_same_state(straight.ema_model, resumed.ema_model)
    for sa, sb in zip(straight.optimizer.state.values(), resumed.optimizer.state.values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert straight.loss_history == resumed.loss_history
    # resume() into a Trainer built by hand does the same
    again = make_trainer()
    again.resume(tmp_path / "checkpoint.pt").fit(n)
    assert_same_state(straight.model, again.model)


def test_checkpoint_is_safetensors_with_its_config_as_json(tmp_path):
    """No pickle: a safetensors file whose metadata holds the configuration as JSON."""
    import json

    from safetensors import safe_open

    trainer = sd.Trainer(tiny_model(sd.VESDE(sigma_max=20.0), "x0"), ring_data(), batch_size=16,
                         ckpt_dir=tmp_path, ckpt_every=2, progress=False)
    trainer.fit(3)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]  # no temporary files left behind
    with safe_open(str(tmp_path / "checkpoint.pt"), "pt") as f:
        body = json.loads(f.metadata()["scoresde"])
        assert f.get_tensor("rng/generator").dtype == torch.uint8
        assert f.get_tensor("loss_history").shape == (3,)
    assert body["step"] == 3
    config = body["config"]
    assert config["model"]["sde"] == {"class": "VESDE", "params": {"sigma_min": 0.01, "sigma_max": 20.0, "t_eps": 1e-5}}
    assert config["model"]["net"]["class"] == "MLP" and config["model"]["net"]["config"]["hidden"] == 16
    assert config["model"]["prediction"] == "x0" and config["data_shape"] == [2]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3
    rebuilt = sd.Trainer.from_checkpoint(tmp_path / "checkpoint.pt", ring_data(), progress=False)
    assert isinstance(rebuilt.model.sde, sd.VESDE) and rebuilt.model.sde.sigma_max == 20.0
    assert_same_state(trainer.model, rebuilt.model)


def write_good_checkpoint(path):
    trainer = sd.Trainer(tiny_model(), ring_data(), batch_size=16, ckpt_dir=path, progress=False)
    trainer.fit(2)
    return trainer, path / "checkpoint.pt"


def test_load_model_serves_the_ema_or_the_raw_weights_in_eval_mode(tmp_path):
    trainer, path = write_good_checkpoint(tmp_path)
    ema, raw = sd.load_model(path), sd.load_model(path, weights="raw")
    assert isinstance(ema, sd.ScoreModel) and not ema.training and not raw.training
    assert_same_state(ema, trainer.ema_model)
    assert_same_state(raw, trainer.model)
    assert_same_state(sd.load_model(path, weights="model"), trainer.model)  # the checkpoint's key, an alias
    x, t = ring_data(8), torch.full((8,), 0.5)
    with torch.no_grad():
        assert torch.equal(ema.eps(x, t), trainer.ema_model.eps(x, t))
        assert not torch.equal(ema.eps(x, t), raw.eps(x, t))
    double = sd.load_model(path, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in double.parameters())
    assert isinstance(double.sde, sd.VPSDE) and double.prediction == "eps"
    with pytest.raises(ValueError, match="weights must be one of: ema, raw; got 'best'"):
        sd.load_model(path, weights="best")
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        sd.load_model(tmp_path / "missing.pt")


def test_cli_nll_weights_raw_and_its_old_name_model(tmp_path, capsys):
    from scoresde.cli import main

    torch.manual_seed(0)
    x, _ = sd.data.load_digits("train")
    model = sd.ScoreModel(sd.nets.UNet(base_channels=8, channel_mults=(1,), groups=4), sd.VPSDE(), prediction="eps")
    path = sd.Trainer(model, x[:64], batch_size=16, warmup_steps=1, progress=False, ckpt_dir=tmp_path).fit(2).save()
    lines = []
    for weights in ("ema", "raw", "model"):
        assert main(["nll", "--ckpt", str(path), "--samples", "2", "--trace", "hutchinson", "--rtol", "1e-3", "--atol", "1e-3",
                     "--weights", weights]) == 0
        lines.append(capsys.readouterr().out.strip())
    assert "(raw weights, step 2)" in lines[1]
    bpd = [line.split(": ")[-1] for line in lines]
    assert bpd[1] == bpd[2] and bpd[0] != bpd[1]


def test_corrupted_or_truncated_checkpoints_give_clear_errors(tmp_path):
    """(tests/test_checkpoints.py flips bytes everywhere, edits the JSON, and crafts pickles.)"""
    trainer, good = write_good_checkpoint(tmp_path)
    blob = good.read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="bad.pt: is corrupted, truncated or not a scoresde checkpoint"):
        load_checkpoint(bad)
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt: is corrupted, truncated or not a scoresde checkpoint"):
        sd.Trainer.from_checkpoint(bad, ring_data())
    from safetensors.torch import save_file

    save_file({"weights": torch.zeros(2)}, str(bad))
    with pytest.raises(ValueError, match="bad.pt: is not a scoresde Trainer checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        trainer.resume(tmp_path / "missing.pt")
    assert load_checkpoint(good)["step"] == 2


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    trainer, good = write_good_checkpoint(tmp_path)

    def disk_full(fd):
        raise OSError("No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(RuntimeError, match=r"writing checkpoint .*checkpoint.pt at step 4 failed \(No space left on device\); the previous checkpoint .* is intact"):
        trainer.fit(4)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]
    assert load_checkpoint(good)["step"] == 2
    with pytest.raises(ValueError, match="path must be a checkpoint file path \\(not a directory\\); got"):
        trainer.save(tmp_path)


class NaNAfter(torch.nn.Module):
    """A tiny network whose output turns NaN from its `bad_call`-th training call on."""

    def __init__(self, bad_call):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.calls, self.bad_call = 0, bad_call

    def forward(self, x, t):
        self.calls += 1
        out = self.lin(torch.cat([x, t[:, None]], 1))
        return out * float("nan") if self.calls >= self.bad_call else out


def test_nan_loss_raises_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    net = NaNAfter(bad_call=8)  # call 1 is the Trainer's shape check, so step 7 is the first bad one
    trainer = sd.Trainer(sd.ScoreModel(net, sd.VPSDE()), ring_data(), batch_size=16, ckpt_dir=tmp_path,
                         ckpt_every=5, progress=False)
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(FloatingPointError, match=r"training diverged at step 7: the loss is nan; the last good checkpoint is .*checkpoint.pt \(step 5\)"):
        trainer.fit(20)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 5
    # on CPU the check runs before the optimizer step: the weights are those after step 6
    assert trainer.step == 6 and all(torch.isfinite(p).all() for p in net.parameters())
    assert any(not torch.equal(weights[k], v) for k, v in net.state_dict().items())


def test_ema_and_learning_rate_warmup():
    trainer = sd.Trainer(tiny_model(), ring_data(), batch_size=16, lr=1e-2, warmup_steps=4, ema_decay=0.999,
                         grad_clip=None, progress=False)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.fit(1)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 / 4)
    # first EMA update: decay min(0.999, (1 + 0) / (10 + 0)) = 0.1
    for e, p0, p in zip(trainer.ema_model.parameters(), before, trainer.model.parameters()):
        torch.testing.assert_close(e, 0.1 * p0 + 0.9 * p)
    trainer.fit(5)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2)
    plain = sd.Trainer(tiny_model(), ring_data(), batch_size=16, ema_warmup=False, ema_decay=0.75, progress=False)
    before = [p.detach().clone() for p in plain.model.parameters()]
    plain.fit(1)
    for e, p0, p in zip(plain.ema_model.parameters(), before, plain.model.parameters()):
        torch.testing.assert_close(e, 0.75 * p0 + 0.25 * p)


def test_sample_fn_is_called_and_leaves_the_trajectory_alone():
    seen = []

    def sample_fn(model, step):
        seen.append((step, model.training))
        return torch.randn(3)  # draws from the global RNG, which the Trainer forks

    a = sd.Trainer(tiny_model(), ring_data(), batch_size=16, sample_every=2, sample_fn=sample_fn, progress=False)
    torch.manual_seed(1)
    a.fit(5)
    b = sd.Trainer(tiny_model(), ring_data(), batch_size=16, progress=False)
    torch.manual_seed(1)
    b.fit(5)
    assert seen == [(2, False), (4, False)] and [s for s, _ in a.sample_log] == [2, 4]
    assert_same_state(a.model, b.model)


def test_a_dataset_trains_exactly_like_its_tensor():
    x = ring_data(64)

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return x[i]

    a = sd.Trainer(tiny_model(), x, batch_size=24, progress=False).fit(4)  # batches cross epochs
    b = sd.Trainer(tiny_model(), Items(), batch_size=24, progress=False).fit(4)
    c = sd.Trainer(tiny_model(), torch.utils.data.TensorDataset(x), batch_size=24, progress=False).fit(4)
    assert_same_state(a.model, b.model)
    assert_same_state(a.model, c.model)


def test_unet_on_digits_with_labels_runs_a_few_steps():
    x, y = sd.data.load_digits("test")
    torch.manual_seed(0)
    net = sd.nets.UNet(base_channels=8, groups=4, num_classes=10)
    trainer = sd.Trainer(sd.ScoreModel(net, sd.VPSDE(), prediction="v"), (x, y), batch_size=16,
                         label_dropout=0.1, progress=False)
    trainer.fit(3)
    assert trainer.step == 3 and all(torch.isfinite(torch.tensor(trainer.loss_history)))


@pytest.mark.parametrize(
    "data, kwargs, match",
    [
        (torch.zeros(0, 2), {}, r"data must be a tensor of shape \(N, \*shape\) with N >= 1; got \(0, 2\)"),
        (torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]), {}, "data must be finite; got a tensor with NaN or inf"),
        (torch.full((8, 2), float("nan")), {}, "data must be finite; got a tensor with NaN or inf"),
        (torch.zeros(4, 3), {}, r"data samples of shape \(3,\) do not fit the network MLP: x must have shape \(B, dim\) = \(B, 2\)"),
        (torch.zeros(4, 2, dtype=torch.long), {}, "data must be a floating-point tensor"),
        ([1.0, 2.0], {}, "data must be a tensor"),
        ((torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)), {}, "data has labels but the network has no num_classes"),
        (torch.zeros(4, 2), {"batch_size": 0}, "batch_size must be an integer >= 1; got 0"),
        (torch.zeros(4, 2), {"lr": float("nan")}, "lr must be a finite number > 0"),
        (torch.zeros(4, 2), {"weighting": "mse"}, "weighting must be one of: score, likelihood, eps, edm; got 'mse'"),
        (torch.zeros(4, 2), {"ema_decay": 1.0}, r"ema_decay must be a finite number in \[0, 1\); got 1.0"),
        (torch.zeros(4, 2), {"grad_clip": 0.0}, "grad_clip must be None or a finite number > 0"),
        (torch.zeros(4, 2), {"bf16": True}, "bf16=True needs a CUDA device; got device='cpu'"),
        (torch.zeros(4, 2), {"sample_every": 5}, "sample_every > 0 needs a callable sample_fn"),
        (torch.zeros(4, 2), {"label_dropout": 0.1}, "label_dropout > 0 needs labelled data"),
        # the types and ranges of every option, refused before any work (issue 16)
        (torch.zeros(4, 2), {"lr": "1e-3"}, "lr must be a finite number > 0; got '1e-3'"),
        (torch.zeros(4, 2), {"batch_size": 2.5}, "batch_size must be an integer >= 1; got 2.5"),
        (torch.zeros(4, 2), {"batch_size": "16"}, "batch_size must be an integer >= 1; got '16'"),
        (torch.zeros(4, 2), {"ema_decay": 1.5}, r"ema_decay must be a finite number in \[0, 1\); got 1.5"),
        (torch.zeros(4, 2), {"label_dropout": 1.0}, r"label_dropout must be a finite number in \[0, 1\); got 1.0"),
        (torch.zeros(4, 2), {"label_dropout": "0.1"}, r"label_dropout must be a finite number in \[0, 1\); got '0.1'"),
        (torch.zeros(4, 2), {"grad_clip": True}, "grad_clip must be None or a finite number > 0; got True"),
        (torch.zeros(4, 2), {"grad_clip": float("inf")}, "grad_clip must be None or a finite number > 0; got inf"),
        (torch.zeros(4, 2), {"warmup_steps": -1}, "warmup_steps must be an integer >= 0; got -1"),
        (torch.zeros(4, 2), {"weight_decay": float("nan")}, "weight_decay must be a finite number >= 0; got nan"),
        (torch.zeros(4, 2), {"ckpt_every": 0}, "ckpt_every must be an integer >= 1; got 0"),
        (torch.zeros(4, 2), {"sample_every": -1}, "sample_every must be an integer >= 0; got -1"),
        (torch.zeros(4, 2), {"sample_fn": 5}, r"sample_fn must be None or a callable sample_fn\(ema_model, step\); got 5"),
        (torch.zeros(4, 2), {"loss_fn": "dsm"}, "loss_fn must be None or a callable .*; got 'dsm'"),
        (torch.zeros(4, 2), {"seed": -1}, "seed must be an integer in \\[0, 9.22337e\\+18\\]; got -1"),
        (torch.zeros(4, 2), {"seed": "0"}, "seed must be an integer in .*; got '0'"),
        (torch.zeros(4, 2), {"ema_warmup": "yes"}, "ema_warmup must be True or False; got 'yes'"),
        (torch.zeros(4, 2), {"bf16": 1}, "bf16 must be True or False; got 1"),
        (torch.zeros(4, 2), {"use_labels": 1}, "use_labels must be True or False; got 1"),
        (torch.zeros(4, 2), {"device": "gpu"}, "device must be None, a torch.device or a device string such as 'cpu', "
                                               "'cuda', 'cuda:0'; got 'gpu'"),
        (torch.zeros(4, 2), {"device": 0}, "device must be None, a torch.device or a device string .*; got 0"),
        (torch.zeros(4, 2), {"ckpt_dir": 3}, r"ckpt_dir must be None or a directory path \(not a file\); got 3"),
    ],
)
def test_bad_trainer_inputs(data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sd.Trainer(tiny_model(), data, progress=False, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_device_without_cuda_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"device must be an available device \('cpu'; CUDA is not available here\); "
                                         r"got 'cuda'"):
        sd.Trainer(tiny_model(), ring_data(), device="cuda", ckpt_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before creating the checkpoint directory


def test_a_file_as_ckpt_dir_and_progress_not_a_bool_are_refused(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"ckpt_dir must be None or a directory path \(not a file\); got .*file"):
        sd.Trainer(tiny_model(), ring_data(), ckpt_dir=tmp_path / "file", progress=False)
    with pytest.raises(ValueError, match="progress must be True or False; got 'no'"):
        sd.Trainer(tiny_model(), ring_data(), progress="no")


def test_bad_model_and_fit_arguments():
    with pytest.raises(ValueError, match="model has no trainable parameters"):
        sd.Trainer(RING.score_model(sd.VPSDE()), ring_data())
    with pytest.raises(ValueError, match="model must be a scoresde.ScoreModel; got Linear"):
        sd.Trainer(torch.nn.Linear(2, 2), ring_data())
    labelled = sd.ScoreModel(sd.nets.MLP(2, hidden=16, depth=1, num_classes=3), sd.VPSDE())
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes\) = \[0, 3\); got \[0, 3\]"):
        sd.Trainer(labelled, (torch.zeros(4, 2), torch.tensor([0, 1, 2, 3])))
    trainer = sd.Trainer(tiny_model(), ring_data(), batch_size=8, progress=False).fit(2)
    with pytest.raises(ValueError, match="steps=1 is below the 2 steps already done"):
        trainer.fit(1)
    for steps in (2.5, float("inf"), "10", True):
        with pytest.raises(ValueError, match=f"steps must be an integer >= 0; got {steps!r}"):
            trainer.fit(steps)
    assert trainer.step == 2


def test_resuming_another_configuration_is_refused(tmp_path):
    _, path = write_good_checkpoint(tmp_path)
    other_sde = sd.Trainer(tiny_model(sd.VPSDE(beta_max=10.0)), ring_data(), batch_size=16, progress=False)
    with pytest.raises(ValueError, match=r"is for another configuration: model.sde.params.beta_max: checkpoint 20.0, here 10.0"):
        other_sde.resume(path)
    other_net = sd.Trainer(tiny_model(hidden=32), ring_data(), batch_size=16, progress=False)
    with pytest.raises(ValueError, match=r"model.net.config.hidden: checkpoint 16, here 32"):
        other_net.resume(path)
    other_kind = sd.Trainer(tiny_model(sd.VESDE()), ring_data(), batch_size=16, progress=False)
    with pytest.raises(ValueError, match=r"model.sde.class: checkpoint 'VPSDE', here 'VESDE'"):
        other_kind.resume(path)
    other_prediction = sd.Trainer(tiny_model(prediction="v"), ring_data(), batch_size=16, progress=False)
    with pytest.raises(ValueError, match=r"model.prediction: checkpoint 'eps', here 'v'"):
        other_prediction.resume(path)
    with pytest.warns(UserWarning, match="trainer.lr: checkpoint 0.0002, here 0.001"):
        sd.Trainer(tiny_model(), ring_data(), batch_size=16, lr=1e-3, progress=False).resume(path)


def test_torchrun_two_processes_match_one_process(tmp_path):
    """DDP on 2 CPU processes (gloo) = a 1-process run on the same global batch: identical
    parameters across ranks, equal to the single run within float summation error; the
    rank-0 checkpoint resumes in a single process."""
    tests = Path(__file__).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent)])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tests / "_ddp_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    single = make_trainer()
    single.fit(STEPS)
    for key, value in single.model.state_dict().items():
        assert torch.equal(rank0[key], rank1[key]), key
        torch.testing.assert_close(rank0[key], value, rtol=1e-5, atol=1e-6, msg=key)
    resumed = sd.Trainer.from_checkpoint(tmp_path / "checkpoint.pt", (single.data.x, single.data.y), progress=False)
    assert resumed.step == STEPS
    single.fit(STEPS + 2)
    resumed.fit(STEPS + 2)
    for key, value in single.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=key)


# ---- vector conditions (issue 17) ------------------------------------------------------------
def cond_data(n=128, cond_dim=3):
    """Ring samples with a vector condition per row: the mean of the row's mixture component."""
    x, k = RING.sample(n, torch.Generator().manual_seed(0), return_components=True)
    cond = torch.cat([RING.means.float()[k], torch.randn(n, cond_dim - 2, generator=torch.Generator().manual_seed(1))], 1)
    return x, k, cond


def cond_trainer(cond, data=None, cond_dim=3, **kwargs):
    torch.manual_seed(0)
    model = sd.ScoreModel(sd.nets.MLP(2, hidden=16, depth=1, cond_dim=cond_dim, num_classes=8), sd.VPSDE())
    x, k, _ = cond_data(cond_dim=cond_dim)
    kwargs = {"batch_size": 16, "lr": 1e-2, "warmup_steps": 2, "seed": 3, "progress": False, **kwargs}
    return sd.Trainer(model, (x, k) if data is None else data, cond=cond, **kwargs)


def test_cond_dropout_drops_whole_rows_to_the_null_condition():
    """The network sees each row's own condition, or zeros (the null condition) with
    probability cond_dropout per row, independently of the label dropout."""
    x, k, cond = cond_data()
    seen = []

    def record(model, x0, t, noise, **kw):
        seen.append((x0, kw["y"], kw["cond"]))
        return sd.losses.dsm_loss(model, x0, t=t, noise=noise, **kw)

    cond_trainer(cond, cond_dropout=0.3, label_dropout=0.5, loss_fn=record).fit(40)
    seen = seen[1:]  # the first call is the Trainer's fitting check on two items
    x0, y, c = (torch.cat(parts) for parts in zip(*seen))
    dropped = (c == 0).all(1)
    row = (x0[:, None] == x[None]).all(-1).float().argmax(1)  # each batch row's index in the data
    torch.testing.assert_close(c[~dropped], cond[row[~dropped]], rtol=0, atol=0)
    # 640 rows at p = 0.3: the fraction lies within 4 binomial standard deviations (0.018)
    assert abs(float(dropped.float().mean()) - 0.3) < 4 * (0.3 * 0.7 / len(c)) ** 0.5
    label_dropped = y == 8
    assert abs(float(label_dropped.float().mean()) - 0.5) < 4 * (0.25 / len(c)) ** 0.5
    assert abs(float((dropped & label_dropped).float().mean()) - 0.15) < 4 * (0.15 * 0.85 / len(c)) ** 0.5


def test_training_with_conditions_resumes_bit_for_bit(tmp_path):
    x, k, cond = cond_data()
    straight = cond_trainer(cond, cond_dropout=0.25, label_dropout=0.1).fit(8)
    first = cond_trainer(cond, cond_dropout=0.25, label_dropout=0.1, ckpt_dir=tmp_path, ckpt_every=100).fit(4)
    assert first.options["cond_dropout"] == 0.25 and first.options["use_cond"] is True
    stored = load_checkpoint(tmp_path / "checkpoint.pt")["config"]
    assert stored["trainer"]["cond_dropout"] == 0.25 and stored["model"]["net"]["config"]["cond_dim"] == 3
    torch.randn(100)
    resumed = sd.Trainer.from_checkpoint(tmp_path / "checkpoint.pt", (x, k), cond=cond, progress=False)
    assert resumed.options == first.options
    resumed.fit(8)
    assert_same_state(straight.model, resumed.model)
    assert_same_state(straight.ema_model, resumed.ema_model)
    assert straight.loss_history == resumed.loss_history
    # without its conditions, the run cannot be resumed
    with pytest.raises(ValueError, match="cond_dropout > 0 needs vector conditions"):
        sd.Trainer.from_checkpoint(tmp_path / "checkpoint.pt", (x, k), progress=False)
    with pytest.raises(ValueError, match="was trained with vector conditions; resume it with cond"):
        cond_trainer(None).resume(tmp_path / "checkpoint.pt")
    # the condition changes the trajectory: zero conditions give another run
    other = cond_trainer(torch.zeros_like(cond), cond_dropout=0.25, label_dropout=0.1).fit(8)
    assert straight.loss_history != other.loss_history


def test_checkpoints_written_before_conditions_existed_resume_without_a_warning(tmp_path):
    import warnings

    trainer = sd.Trainer(tiny_model(), ring_data(), batch_size=16, ckpt_dir=tmp_path, progress=False).fit(2)
    state = load_checkpoint(trainer.checkpoint_path)
    for key in ("cond_dropout", "use_cond"):
        del state["config"]["trainer"][key]
    fresh = sd.Trainer(tiny_model(), ring_data(), batch_size=16, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh._restore(state, trainer.checkpoint_path)
    assert fresh.step == 2


def test_a_dataset_of_dicts_trains_exactly_like_tensors_with_cond():
    x, k, cond = cond_data()

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return {"x": x[i], "y": k[i], "cond": cond[i]}

    a = cond_trainer(cond, cond_dropout=0.2).fit(4)
    b = cond_trainer(None, data=Items(), cond_dropout=0.2).fit(4)
    assert_same_state(a.model, b.model)
    with pytest.raises(ValueError, match=r"cond must be None when the Dataset items carry 'cond'"):
        cond_trainer(cond, data=Items())


def test_unet_with_labels_and_a_vector_condition_trains_a_few_steps():
    x, y = sd.data.load_digits("test")
    cond = torch.nn.functional.one_hot(y, 10).float() + 0.1 * torch.randn(len(y), 10, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = sd.nets.UNet(base_channels=8, groups=4, num_classes=10, cond_dim=10)
    trainer = sd.Trainer(sd.ScoreModel(net, sd.VPSDE(), prediction="v"), (x, y), cond=cond, batch_size=16,
                         label_dropout=0.1, cond_dropout=0.2, progress=False)
    trainer.fit(3)
    assert trainer.step == 3 and all(torch.isfinite(torch.tensor(trainer.loss_history)))
    assert net.cond_embed.weight.grad is not None and net.cond_embed.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "cond, kwargs, match",
    [
        (torch.zeros(100, 3), {}, r"cond must be a real floating-point tensor \(N, cond_dim\) = \(128, cond_dim\), "
                                  r"row-aligned with the data; got \(100, 3\)"),
        (torch.zeros(128, 4), {}, r"cond must be of width cond_dim = 3 \(the network's\); got 4"),
        (torch.zeros(128), {}, r"cond must be a real floating-point tensor \(N, cond_dim\) .*; got 'a torch.float32 "
                               r"tensor of shape \(128,\)'"),
        (torch.zeros(128, 3, 1), {}, r"cond must be a real floating-point tensor \(N, cond_dim\) .*; got \(128, 3, 1\)"),
        (torch.zeros(128, 3, dtype=torch.long), {}, "cond must be a real floating-point tensor .*; got 'a torch.int64"),
        (torch.full((128, 3), float("nan")), {}, "cond must be finite; got a tensor with NaN or inf"),
        ([[0.0] * 3] * 128, {}, "cond must be a real floating-point tensor .*; got 'list'"),
        (torch.zeros(128, 3), {"cond_dropout": 1.0}, r"cond_dropout must be a finite number in \[0, 1\); got 1.0"),
        (torch.zeros(128, 3), {"cond_dropout": "0.1"}, r"cond_dropout must be a finite number in \[0, 1\); got '0.1'"),
        (None, {"cond_dropout": 0.1}, "cond_dropout > 0 needs vector conditions"),
    ],
)
def test_bad_conditions_are_refused_before_any_work(cond, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cond_trainer(cond, **kwargs)


def test_conditions_for_a_network_without_cond_dim_are_refused():
    x, k, cond = cond_data()
    with pytest.raises(ValueError, match="data has vector conditions .cond. but the network has no cond_dim"):
        sd.Trainer(tiny_model(), x, cond=cond, progress=False)


def test_a_vector_conditioned_model_follows_its_condition_and_cond_dropout_trains_the_null():
    """The must-show of vector conditions, against exact laws. A 4-mode ring whose condition is
    the row's component mean; 600 steps of a small MLP with cond_dropout 0.2 (v prediction:
    with eps prediction this small net's probability-flow ODE sends ~2% of the prior's tail to
    |x| ~ 100, under every ODE solver including dopri5). dpm++2m, 20 steps, 1000 samples,
    sliced W2 (measured: 0.03-0.05 to the exact conditional, floor 0.011; 1.4 to the
    unconditional law; scale 0: 0.15 to the unconditional law, floor 0.13 +- 0.03)."""
    from scoresde.guidance import ClassifierFree

    ring = sd.data.GaussianMixture.ring(modes=4)
    x, k = ring.sample(8192, torch.Generator().manual_seed(0), return_components=True)
    torch.manual_seed(0)
    model = sd.ScoreModel(sd.nets.MLP(2, hidden=64, depth=2, cond_dim=2), sd.VPSDE(), prediction="v")
    trainer = sd.Trainer(model, x, cond=ring.means.float()[k], cond_dropout=0.2, batch_size=256, lr=2e-3,
                         warmup_steps=20, ema_decay=0.99, progress=False).fit(600)
    n = 1000

    def draw(cond, scale, seed):
        with torch.no_grad():
            guided = ClassifierFree(trainer.ema_model, cond.float().expand(n, 2), scale)
            return sd.sample(guided, shape=(n, 2), solver="dpm++2m", steps=20,
                             generator=torch.Generator().manual_seed(seed)).x.double()

    def metric(a, b):
        return sd.metrics.sliced_wasserstein(a, b, generator=torch.Generator().manual_seed(9))

    unconditional = ring.sample(n, torch.Generator().manual_seed(11))
    for j in (0, 2):
        component = sd.data.GaussianMixture([1.0], ring.means[j:j + 1], ring.covariances[j:j + 1])
        samples = draw(ring.means[j], 1.0, 20 + j)
        to_conditional = float(metric(samples, component.sample(n, torch.Generator().manual_seed(30 + j))))
        assert to_conditional < 0.1 * float(metric(samples, unconditional))
        floor = sd.metrics.two_sample_floor(metric, component.sample, n, repeats=5,
                                            generator=torch.Generator().manual_seed(5))
        assert to_conditional < 10 * float(floor.mean)
    # scale 0 is the null condition alone: the unconditional law, within its two-sample floor
    floor = sd.metrics.two_sample_floor(metric, ring.sample, n, repeats=10, generator=torch.Generator().manual_seed(5))
    null = draw(ring.means[0], 0.0, 40)
    assert float(metric(null, unconditional)) < float(floor.mean) + 3 * float(floor.std)
