"""What the library promises on a CUDA device: every solver and the likelihood run there and
agree with the CPU, CUDA generators reproduce, bf16 training steps, the on-device non-finite
check, and `load_model(device="cuda")`. Every test is marked `cuda` and skips without a CUDA
device: run them with `pytest -m cuda tests/` or `bash benchmarks/device_check.sh`."""
import pytest
import torch

import scoresde as sd
from scoresde import metrics
from scoresde.data import GaussianMixture
from scoresde.solvers import Loop, NonFiniteError

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DEVICE = torch.device("cuda")
SDE = sd.VPSDE()
RING = GaussianMixture.ring()
ORACLE = RING.score_model(SDE)
STEPS = 10
#: float32 on the device against float64 on the CPU, relative to the samples' largest entry: the
#: fixed-step ODE solvers differ by ~1e-6 at 10 steps (measured float32 against float64 on the
#: CPU), the adaptive ones (float64 on both) by far less than their rtol 1e-5
RTOL = 1e-4
#: options that make each SDE solver sit on the exact distribution at 200 steps (as in
#: tests/test_sde_solvers.py, whose floor test this repeats on the device in float32)
ACCURATE = {"pc": dict(per_sample_step=False), "adaptive-sde": dict(rtol=1e-3, atol=1e-4)}
ODE_RUNS = {name: dict(solver=name) for name in sd.solvers.available("ode")}
ODE_RUNS["torchdiffeq-rk4"] = dict(solver="torchdiffeq", method="rk4")  # a fixed-grid torchdiffeq method


def _gen(seed=0, device=DEVICE):
    return torch.Generator(device=device).manual_seed(seed)


def _on_device(x):
    return x.device.type == DEVICE.type and bool(torch.isfinite(x).all())


# ---- every solver on the device ------------------------------------------------------------
@pytest.mark.parametrize("run", list(ODE_RUNS))
def test_every_ode_solver_on_the_device_matches_the_cpu_float64_solve(run):
    """The same x_T solved on the device (float32; adaptive solvers float64) and on the CPU in
    float64 agree to RTOL, with the same counted NFE; scipy integrates on the CPU in numpy and
    returns the samples on x_T's device."""
    kwargs = dict(ODE_RUNS[run])
    adaptive = sd.solvers.get(kwargs["solver"]).adaptive and "method" not in kwargs
    dtype = torch.float64 if adaptive else torch.float32
    if not adaptive:
        kwargs["steps"] = STEPS
    out = sd.sample(ORACLE, shape=(256, 2), device=DEVICE, dtype=dtype, generator=_gen(), return_trajectory=True,
                    **kwargs)
    assert _on_device(out.x) and out.x.dtype == dtype, run
    x_T = out.trajectory[0]
    assert x_T.device.type == DEVICE.type
    ref = sd.sample(ORACLE, x_T=x_T.cpu().double(), **kwargs)
    scale = float(ref.x.abs().max())
    gap = float((out.x.cpu().double() - ref.x).abs().max())
    assert gap <= RTOL * scale, (run, gap, scale)
    if not adaptive:
        assert out.nfe == ref.nfe, run


@pytest.fixture(scope="module")
def ring_floor():
    """Sliced W2 between two independent exact sample sets of 2000: mean and std over 10 pairs."""
    floor = metrics.two_sample_floor(metrics.sliced_wasserstein,
                                     lambda n, g: RING.sample(n, g, dtype=torch.float64), 2000, repeats=10)
    return float(floor.mean), float(floor.std)


@pytest.mark.parametrize("solver", sd.solvers.available("sde"))
def test_every_sde_solver_on_the_device_reproduces_and_sits_on_the_exact_distribution(solver, ring_floor):
    """With a CUDA generator: the same seed gives the same samples bit for bit, another seed
    others; the NFE is the CPU run's; and 2000 samples of 200 steps in float32 are within the
    two-sample floor (mean + 3 std) of exact samples, as on the CPU."""
    adaptive = sd.solvers.get(solver).adaptive
    steps = None if adaptive else 8
    runs = [sd.sample(ORACLE, shape=(32, 2), solver=solver, steps=steps, device=DEVICE, generator=_gen(seed))
            for seed in (4, 4, 5)]
    assert all(_on_device(r.x) for r in runs), solver
    assert torch.equal(runs[0].x, runs[1].x) and not torch.equal(runs[0].x, runs[2].x), solver
    if not adaptive:
        cpu = sd.sample(ORACLE, shape=(32, 2), solver=solver, steps=steps, generator=_gen(4, "cpu"))
        assert runs[0].nfe == cpu.nfe, solver

    out = sd.sample(ORACLE, shape=(2000, 2), solver=solver, steps=None if adaptive else 200, device=DEVICE,
                    generator=_gen(1), **ACCURATE.get(solver, {}))
    assert _on_device(out.x), solver
    exact = RING.sample(2000, torch.Generator().manual_seed(100), dtype=torch.float64)
    distance = float(metrics.sliced_wasserstein(out.x.cpu().double(), exact))
    floor_mean, floor_std = ring_floor
    assert distance < floor_mean + 3 * floor_std, (solver, distance, floor_mean, floor_std)


@pytest.mark.parametrize("solver", ["euler-maruyama", "dpm++2m-sde", "torchdiffeq"])
def test_per_row_seeds_on_the_device_are_batch_invariant(solver):
    """`seeds=` on the device: rows 0..2 of a batch of 3 equal the first rows of a batch of 8."""
    steps = None if sd.solvers.get(solver).adaptive else 6
    small, large = (sd.sample(ORACLE, shape=(n, 2), solver=solver, steps=steps, seeds=list(range(100, 100 + n)),
                              device=DEVICE).x for n in (3, 8))
    assert _on_device(large) and torch.equal(small, large[:3]), solver


# ---- the likelihood -------------------------------------------------------------------------
def test_log_likelihood_on_the_device_matches_the_cpu_and_the_closed_form():
    """Exact trace in float64: the device and the CPU agree to 1e-6 nats per dimension and both
    sit on the closed form (1e-4 nats per dimension, as tests/test_likelihood.py asserts); a
    Hutchinson estimate with a CUDA generator reproduces (its probes are the generator's)."""
    mix = GaussianMixture.random(dim=3, components=3, seed=0)
    model = mix.score_model(SDE)
    x = mix.sample(6, torch.Generator().manual_seed(1), dtype=torch.float64)
    tight = dict(rtol=1e-7, atol=1e-7)
    cpu = sd.log_likelihood(model, x, **tight)
    dev = sd.log_likelihood(model, x.to(DEVICE), **tight)
    assert _on_device(dev.logp) and dev.logp.shape == (6,)
    assert float((dev.logp.cpu() - cpu.logp).abs().max()) / mix.dim < 1e-6
    exact = mix.log_prob_t(x, SDE.t_eps, SDE)
    exact_T = mix.log_prob_t(dev.z.cpu(), SDE.T, SDE)
    assert float((dev.delta_logp.cpu() + exact_T - exact).abs().max()) / mix.dim < 1e-4

    hutchinson = [sd.log_likelihood(model, x.to(DEVICE), trace="hutchinson", generator=_gen(seed)).logp.cpu()
                  for seed in (3, 3, 4)]
    assert bool(torch.isfinite(hutchinson[0]).all())
    assert torch.allclose(hutchinson[0], hutchinson[1], rtol=1e-6, atol=0)  # the same probes
    assert float((hutchinson[0] - hutchinson[2]).abs().max()) > 1e-4  # other probes, another estimate


# ---- training in bf16 -------------------------------------------------------------------------
def _digits_shaped(n):
    """n images (1, 8, 8) in [-1, 1] like `sd.data.load_digits` (which needs scikit-learn)."""
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)


def _unet_trainer(bf16: bool):
    torch.manual_seed(0)  # the same initial weights for both precisions
    x = _digits_shaped(256)
    model = sd.ScoreModel(sd.nets.UNet(base_channels=16, groups=4), SDE, prediction="eps")
    return sd.Trainer(model, x, batch_size=64, lr=1e-3, warmup_steps=1, seed=0, bf16=bf16, device=DEVICE,
                      progress=False)


def test_bf16_training_steps_on_the_device():
    """bf16 autocast: 10 steps give finite losses, the weights stay float32 on the device, and the
    first loss (same weights, batch, times and noise) is the float32 one to bf16's precision (2%);
    the EMA model then samples finite values there."""
    bf16, fp32 = _unet_trainer(True).fit(10), _unet_trainer(False).fit(10)
    assert bf16.step == 10 and len(bf16.loss_history) == 10
    assert all(torch.isfinite(torch.tensor(bf16.loss_history)))
    assert all(p.dtype == torch.float32 and p.device.type == DEVICE.type for p in bf16.model.parameters())
    first, reference = bf16.loss_history[0], fp32.loss_history[0]
    assert abs(first - reference) <= 0.02 * abs(reference), (first, reference)
    out = sd.sample(bf16.ema_model, shape=(16, 1, 8, 8), steps=5, device=DEVICE, generator=_gen())
    assert _on_device(out.x)


# ---- the on-device non-finite check ------------------------------------------------------------
#: where the broken network starts returning NaN: between grid times 0.5005 and 0.4006 of a
#: 10-step uniform grid (as in tests/test_nonfinite.py)
BAD_BELOW = 0.5


def _broken(below=BAD_BELOW):
    """An eps network that is 0 (exact for N(0, I) data) at t >= `below` and NaN below it; it
    never reads a value back to the host, so the solvers' own device-side check must find it."""
    def net(x, t):
        return torch.where(t[:, None] < below, torch.full_like(x, float("nan")), torch.zeros_like(x))

    return sd.ScoreModel(net, SDE, prediction="eps")


def test_the_loop_keeps_its_non_finite_check_on_the_device_and_reports_at_finish():
    """On an accelerator `Loop.done` only records the first bad step on the device (no host
    read per step); `finish` reads it once and raises, naming that step."""
    loop = Loop(torch.tensor([1.0, 0.5, 0.25, 0.1], dtype=torch.float64), SDE)
    x = torch.zeros(4, 2, device=DEVICE)
    loop.done(0, x)
    loop.done(1, torch.full_like(x, float("nan")))
    loop.done(2, torch.full_like(x, float("inf")))
    assert loop.deferred_check is (DEVICE.type != "cpu")
    with pytest.raises(NonFiniteError, match=r"after step 2 of 3 \(t=0\.25\)"):
        loop.finish()


@pytest.mark.parametrize("kwargs, step, t_step", [
    (dict(solver="euler"), 7, 0.3007),  # evaluated at 0.4006, the state after step 7 is NaN
    (dict(solver="dpm++2m"), 7, 0.3007),
    (dict(solver="torchdiffeq", method="rk4"), 6, 0.4006),  # its midpoint stage at 0.4506 is NaN
    (dict(solver="torchsde", generator=True), 7, 0.3007),
    (dict(solver="euler-maruyama", generator=True), 7, 0.3007),
])
def test_fixed_step_solvers_on_the_device_name_the_first_non_finite_step(kwargs, step, t_step):
    """The same step and time as on the CPU (tests/test_nonfinite.py), found by the device-side check."""
    kwargs = {**kwargs, **({"generator": _gen()} if "generator" in kwargs else {})}
    with pytest.raises(NonFiniteError, match=rf"after step {step} of 10 \(t={t_step}\)"):
        sd.sample(_broken(), shape=(4, 2), steps=10, schedule="uniform", device=DEVICE, **kwargs)


@pytest.mark.parametrize("solver", ["torchdiffeq", "scipy", "adaptive-sde"])
def test_adaptive_solvers_on_the_device_stop_with_non_finite_error(solver):
    """Adaptive solvers name an evaluation below the time where the network turns NaN."""
    kwargs = {"generator": _gen()} if solver == "adaptive-sde" else {}
    with pytest.raises(NonFiniteError, match=r"evaluation (?:was number )?\d+ of \d+ \(t=") as raised:
        sd.sample(_broken(), shape=(4, 2), solver=solver, device=DEVICE, **kwargs)
    t = float(str(raised.value).rsplit("(t=", 1)[1].split(")")[0])
    assert t < BAD_BELOW and solver in str(raised.value)


# ---- checkpoints onto the device --------------------------------------------------------------
def test_load_model_onto_the_device_samples_as_on_the_cpu(tmp_path):
    """A CPU-trained U-Net loaded with device=DEVICE has every tensor there, and from
    the same x_T samples what the CPU copy samples (float32 both; cuDNN's TF32 off)."""
    torch.manual_seed(0)
    model = sd.ScoreModel(sd.nets.UNet(base_channels=8, channel_mults=(1,), groups=4), SDE, prediction="eps")
    trainer = sd.Trainer(model, _digits_shaped(64), batch_size=16, warmup_steps=1, progress=False, ckpt_dir=tmp_path)
    path = trainer.fit(2).save()
    dev, cpu = sd.load_model(path, device=DEVICE), sd.load_model(path)
    assert all(v.device.type == DEVICE.type for v in dev.state_dict().values())
    x_T = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
        out = sd.sample(dev, x_T=x_T.to(DEVICE), solver="ipndm", steps=STEPS)
    ref = sd.sample(cpu, x_T=x_T, solver="ipndm", steps=STEPS)
    assert _on_device(out.x)
    gap, scale = float((out.x.cpu() - ref.x).abs().max()), float(ref.x.abs().max())
    assert gap <= RTOL * scale, (gap, scale)
