"""Reverse-SDE samplers against exact answers: distributions, weak orders, DDPM's formula."""
import math

import numpy as np
import pytest
import torch

import scoresde as sd
from scoresde import metrics
from scoresde.data import GaussianMixture
from conftest import CountingNet

SDE_SOLVERS = sd.solvers.available("sde")
RING = GaussianMixture.ring()


# options that make each solver accurate enough to sit on the exact distribution at ~200 steps;
# in 2-D a sample's ||score|| can be near 0, where the per-sample Langevin step explodes, so the
# PC test here uses the batch-averaged rule (per-sample is tested in 16-D below)
ACCURATE = {"pc": dict(per_sample_step=False), "adaptive-sde": dict(rtol=1e-3, atol=1e-4)}


@pytest.fixture(scope="module")
def ring_floor():
    """Sliced W2 between two independent exact sample sets of 2000: mean and std over 10 pairs."""
    floor = metrics.two_sample_floor(metrics.sliced_wasserstein,
                                     lambda n, g: RING.sample(n, g, dtype=torch.float64), 2000, repeats=10)
    return float(floor.mean), float(floor.std)


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.SubVPSDE(), sd.VESDE(), sd.EDMSDE()], ids=lambda s: type(s).__name__)
def test_samples_sit_within_the_two_sample_floor(sde, ring_floor):
    """With 200 steps, every SDE sampler's sliced W2 to 2000 exact samples is within the floor
    mean + 3 std (floor ~0.06 +- 0.015 here), i.e. indistinguishable from exact sampling."""
    model = RING.score_model(sde)
    exact = RING.sample(2000, torch.Generator().manual_seed(100), dtype=torch.float64)
    floor_mean, floor_std = ring_floor
    for solver in SDE_SOLVERS:
        if solver == "torchsde" and isinstance(sde, sd.EDMSDE):
            continue  # torchsde needs a fixed dt: 200 uniform steps in t = sigma leave the last at sigma 0.4
        steps = None if sd.solvers.get(solver).adaptive else 200  # adaptive: steps of its own
        out = sd.sample(model, shape=(2000, 2), solver=solver, steps=steps, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(1), **ACCURATE.get(solver, {}))
        distance = float(metrics.sliced_wasserstein(out.x, exact))
        assert distance < floor_mean + 3 * floor_std, (solver, distance, floor_mean, floor_std)


def test_per_sample_langevin_corrector_in_16d():
    mix = GaussianMixture.random(dim=16, components=4, seed=2)
    model = mix.score_model(sd.VESDE())
    exact = mix.sample(2000, torch.Generator().manual_seed(100), dtype=torch.float64)
    floor = metrics.two_sample_floor(metrics.sliced_wasserstein, lambda n, g: mix.sample(n, g, dtype=torch.float64),
                                     2000, repeats=6)
    for corrector in ("langevin", "ald"):
        out = sd.sample(model, shape=(2000, 16), solver="pc", steps=100, corrector=corrector, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(1))
        assert float(metrics.sliced_wasserstein(out.x, exact)) < float(floor.mean + 3 * floor.std), corrector


def linear_response(solver, sde, steps, **options):
    """For Gaussian data the score is affine in x, so a sampler's output is affine in (x_T, z_1,
    ..., z_k): x = a x_T + b + sum_i c_i z_i. One batched run finds a, b and every c_i: row 0
    starts at 0 with no noise, row 1 at 1 with no noise, row 2 + i gets z_i = 1 only."""
    draws = 4 * steps + 4
    calls = {"n": 0}

    def unit_noise(like):
        z = torch.zeros_like(like)
        if 2 + calls["n"] < like.shape[0]:
            z[2 + calls["n"]] = 1.0
        calls["n"] += 1
        return z

    mix = GaussianMixture.gaussian(1, mean=0.5, std=0.5)
    x_T = torch.zeros(2 + draws, 1, dtype=torch.float64)
    x_T[1] = 1.0
    out = sd.sample(mix.score_model(sde), x_T=x_T, solver=solver, steps=steps, noise_fn=unit_noise, **options).x[:, 0]
    assert calls["n"] <= draws
    b, a, c = out[0], out[1] - out[0], out[2:] - out[0]
    alpha_T, sigma_T = sde.alpha(sde.T), sde.sigma(sde.T)
    mean_T, var_T = alpha_T * 0.5, alpha_T**2 * 0.25 + sigma_T**2  # the exact marginal at T
    mean, var = a * mean_T + b, a**2 * var_T + (c**2).sum()
    t_end = sde.t_eps
    return float(mean - sde.alpha(t_end) * 0.5), float(var - (sde.alpha(t_end) ** 2 * 0.25 + sde.sigma(t_end) ** 2))


WEAK_ORDER = {name: sd.solvers.get(name).order
              for name in ("euler_maruyama", "reverse_diffusion", "ancestral", "sde-dpm-solver-1", "dpm++2m_sde", "sde_heun")}


@pytest.mark.parametrize("solver", list(WEAK_ORDER))
@pytest.mark.parametrize("sde, schedule", [(sd.VPSDE(), "logsnr"), (sd.EDMSDE(), "karras")], ids=["VP", "EDM"])
def test_weak_order_on_gaussian_data(solver, sde, schedule):
    """Exact mean and variance of the sampler's output (no Monte-Carlo error, see
    linear_response) approach the true ones at the solver's weak order (registry `order`)."""
    steps = (40, 80, 160)
    errors = [sum(abs(e) for e in linear_response(solver, sde, n, schedule=schedule)) for n in steps]
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope - WEAK_ORDER[solver]) < 0.3, (errors, slope)


def test_ancestral_step_is_ddpm_posterior():
    """One ancestral step from t to s on VP is DDPM's posterior (Ho et al. eq. 7) with
    alphas_cumprod = alpha(t)^2: mean sqrt(ab_s) beta/(1-ab_t) x0 + sqrt(1-beta)(1-ab_s)/(1-ab_t) x_t,
    variance (1-ab_s)/(1-ab_t) beta, beta = 1 - ab_t/ab_s."""
    vp = sd.VPSDE()
    x0 = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    model = sd.ScoreModel(lambda x, t: x0.expand_as(x), vp, prediction="x0")
    x_t = torch.tensor([[0.7, 0.1]], dtype=torch.float64)
    for t, s in ((0.5, 0.499), (0.9, 0.7), (0.011, 0.001)):
        ab_t, ab_s = float(vp.alpha(t)) ** 2, float(vp.alpha(s)) ** 2
        beta = 1 - ab_t / ab_s
        mean = math.sqrt(ab_s) * beta / (1 - ab_t) * x0 + math.sqrt(1 - beta) * (1 - ab_s) / (1 - ab_t) * x_t
        std = math.sqrt((1 - ab_s) / (1 - ab_t) * beta)
        step = sd.sample(model, x_T=x_t, solver="ancestral", schedule=[t, s], steps=None, final_mean=False,
                         noise_fn=lambda like: torch.ones_like(like)).x
        torch.testing.assert_close(step, mean + std, rtol=1e-12, atol=1e-12)


def test_pc_without_corrector_is_its_predictor():
    model = RING.score_model(sd.VPSDE())
    for predictor in ("euler_maruyama", "reverse_diffusion", "ancestral"):
        runs = [sd.sample(model, shape=(64, 2), steps=20, generator=torch.Generator().manual_seed(3), **kw).x
                for kw in (dict(solver="pc", predictor=predictor, corrector_steps=0), dict(solver=predictor))]
        assert torch.equal(runs[0], runs[1]), predictor


def test_eta_zero_gives_the_ode_solvers():
    model = RING.score_model(sd.VPSDE())
    x_T = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for sde_solver, ode_solver in (("sde-dpm-solver-1", "ddim"), ("dpm++2m_sde", "dpm++2m")):
        a = sd.sample(model, x_T=x_T, solver=sde_solver, steps=15, eta=0.0).x
        torch.testing.assert_close(a, sd.sample(model, x_T=x_T, solver=ode_solver, steps=15).x, rtol=1e-10, atol=1e-10)


def brownian(sde, batch, dim, seed, srk=False):
    import torchsde

    return torchsde.BrownianInterval(t0=-sde.T, t1=-sde.t_eps, size=(batch, dim), dtype=torch.float64, entropy=seed,
                                     levy_area_approximation="space-time" if srk else "none")


def path_noise(bm, ts):
    """Standard normal draws for native solvers that follow the Brownian path `bm`."""
    calls = {"i": 0}

    def noise(like):
        i = calls["i"]
        calls["i"] += 1
        t, t_next = float(ts[i]), float(ts[i + 1])
        return bm(-t, -t_next) / math.sqrt(t - t_next)

    return noise


def test_torchsde_euler_equals_native_euler_maruyama_on_the_same_path():
    sde = sd.VPSDE()
    model = RING.score_model(sde)
    x_T = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    bm = brownian(sde, 16, 2, seed=5)
    # torchsde first: querying a BrownianInterval before sdeint builds its tree makes sdeint crawl
    theirs = sd.sample(model, x_T=x_T, solver="torchsde", method="euler", steps=50, bm=bm)
    ts = sd.schedules.uniform(sde, 50)
    ours = sd.sample(model, x_T=x_T, solver="euler_maruyama", steps=50, schedule="uniform", final_mean=False,
                     noise_fn=path_noise(bm, ts))
    # equal up to the ~1e-16 shift of torchsde's accumulated step times, amplified near t_eps
    torch.testing.assert_close(theirs.x, ours.x, rtol=0, atol=1e-5)
    assert theirs.nfe == 51  # + 1: torchsde evaluates the drift once to check shapes


def test_native_euler_maruyama_converges_pathwise_to_torchsde_srk_at_strong_order_1():
    """Additive noise: Euler-Maruyama has strong order 1. Against SRK (strong order 1.5) on
    the same Brownian path, the pathwise gap halves when the steps double."""
    sde = sd.VPSDE()
    model = RING.score_model(sde)
    x_T = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    bm = brownian(sde, 32, 2, seed=7, srk=True)
    reference = sd.sample(model, x_T=x_T, solver="torchsde", method="srk", steps=800, bm=bm).x
    steps = (25, 50, 100)
    gaps = []
    for n in steps:
        ts = sd.schedules.uniform(sde, n)
        x = sd.sample(model, x_T=x_T, solver="euler_maruyama", steps=n, schedule="uniform", final_mean=False,
                      noise_fn=path_noise(bm, ts)).x
        gaps.append(float(((x - reference) ** 2).mean().sqrt()))
    slope = -np.polyfit(np.log(steps), np.log(gaps), 1)[0]
    assert 0.8 < slope < 1.3, (gaps, slope)


def test_every_sde_solver_reports_its_counted_nfe_and_is_reproducible():
    sde = sd.VPSDE()
    model = RING.score_model(sde)
    model.net = counter = CountingNet(model.net)
    expected = {"pc": 2 * 8, "sde-heun": 16, "edm-sde": 15, "torchsde": 9, "restart": 8 + 2 * 4}
    for solver in SDE_SOLVERS:
        counter.calls = 0
        steps = None if sd.solvers.get(solver).adaptive else 8
        runs = [sd.sample(model, shape=(32, 2), solver=solver, steps=steps, generator=torch.Generator().manual_seed(4))
                for _ in range(2)]
        assert runs[0].nfe == counter.calls // 2
        if solver != "adaptive-sde":
            assert runs[0].nfe == expected.get(solver, 8), solver
        assert torch.equal(runs[0].x, runs[1].x), solver


def test_adaptive_sde_counts_rejected_steps_and_paper_error_control_is_biased():
    """The paper's noise-dependent error control inflates the variance of Gaussian data; the
    drift-only control converges to it."""
    mix = GaussianMixture.gaussian(1, mean=0.5, std=0.5)
    model = mix.score_model(sd.VPSDE())
    model.net = counter = CountingNet(model.net)
    variances = {}
    for control in ("drift", "sde"):
        counter.calls = 0
        out = sd.sample(model, shape=(20000, 1), solver="adaptive_sde", rtol=1e-3, atol=1e-4, error_control=control,
                        dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        assert out.nfe == counter.calls
        variances[control] = float(out.x.var())
    exact = 0.25 + float(sd.VPSDE().sigma(1e-3)) ** 2
    se = exact * math.sqrt(2 / 20000)
    assert abs(variances["drift"] - exact) < 0.02 + 4 * se
    assert variances["sde"] > exact + 0.1


def test_bad_sde_solver_input():
    model = RING.score_model(sd.VPSDE())
    x_T = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="snr must be a finite number >= 0"):
        sd.sample(model, x_T=x_T, solver="pc", snr=-0.1)
    with pytest.raises(ValueError, match="corrector_steps must be an integer >= 0"):
        sd.sample(model, x_T=x_T, solver="pc", corrector_steps=-1)
    with pytest.raises(ValueError, match="predictor must be one of: .*; got 'heun'"):
        sd.sample(model, x_T=x_T, solver="pc", predictor="heun")
    for name in ("rtol", "atol"):
        with pytest.raises(ValueError, match=f"{name} must be a finite number > 0"):
            sd.sample(model, x_T=x_T, solver="adaptive_sde", **{name: 0.0})
    with pytest.raises(ValueError, match="method must be a torchsde method for diagonal noise, one of: euler.*; got 'log_ode'"):
        sd.sample(model, x_T=x_T, solver="torchsde", method="log_ode")
    with pytest.raises(ValueError, match="schedule='uniform'"):
        sd.sample(model, x_T=x_T, solver="torchsde", schedule="logsnr")

    class General(sd.SDE):
        def drift(self, x, t):
            return -x

        def diffusion(self, x, t):
            return torch.ones_like(x)

    general = sd.ScoreModel(lambda x, t: -x, General(), prediction="score")
    with pytest.raises(ValueError, match="needs an affine SDE"):
        sd.sample(general, x_T=x_T, solver="ancestral", schedule="uniform")
    out = sd.sample(general, x_T=x_T, solver="euler_maruyama", steps=10, generator=torch.Generator().manual_seed(0))
    assert out.nfe == 10


def test_non_finite_state_stops_sde_solver_with_step_and_time():
    def explodes(x, t):
        return torch.where(t[:, None] < 0.5, torch.full_like(x, float("inf")), torch.zeros_like(x))

    model = sd.ScoreModel(explodes, sd.VPSDE(), prediction="eps")
    with pytest.raises(sd.solvers.NonFiniteError, match=r"after step 7 of 10 \(t=0\.3007\)"):
        sd.sample(model, shape=(4, 2), solver="euler_maruyama", steps=10, schedule="uniform",
                  generator=torch.Generator().manual_seed(0))
