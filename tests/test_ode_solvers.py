"""Probability-flow ODE solvers against exact answers: convergence orders, closed forms, NFE."""
import math

import numpy as np
import pytest
import torch

import scoresde as sd
from scoresde.data import GaussianMixture
from scoresde.solvers.dpm_v3 import model_statistics
from conftest import CountingNet, all_sdes

FIXED_STEP = [n for n in sd.solvers.available("ode") if sd.solvers.get(n).evals_per_step != "adaptive"]
RING = GaussianMixture.ring()


def rmse(a, b):
    return float(((a - b) ** 2).mean().sqrt())


def reference(model, x_T, t_end=None):
    """A tight float64 adaptive solve of the probability-flow ODE from the same noise."""
    return sd.sample(model, x_T=x_T, solver="torchdiffeq", method="dopri8", rtol=1e-11, atol=1e-11, t_end=t_end).x


# NFE budgets where each solver is in its asymptotic regime (measured; see benchmarks/ode_solvers.py)
NFE_RANGE = {"rk4": (160, 320, 640), "midpoint": (160, 320, 640), "dpm-solver-3": (160, 320, 640)}


@pytest.mark.parametrize("sde_name, schedule", [("vp", "logsnr"), ("edm", "karras")])
@pytest.mark.parametrize("solver", FIXED_STEP)
def test_convergence_order(solver, sde_name, schedule, ode_references):
    """Terminal error against the reference falls like NFE^-order: the log-log slope over
    three doublings is within 0.35 of the solver's order."""
    model, x_T, ref = ode_references[sde_name]
    info = sd.solvers.get(solver)
    nfes, errors = [], []
    for budget in NFE_RANGE.get(solver, (80, 160, 320)):
        out = sd.sample(model, x_T=x_T, solver=solver, steps=info.steps_for_nfe(budget), schedule=schedule)
        nfes.append(out.nfe)
        errors.append(rmse(out.x, ref))
    slope = -np.polyfit(np.log(nfes), np.log(errors), 1)[0]
    assert abs(slope - info.order) < 0.35, (solver, nfes, errors, slope)


@pytest.fixture(scope="module")
def ode_references():
    refs = {}
    for name, sde in (("vp", sd.VPSDE()), ("edm", sd.EDMSDE())):
        model = RING.score_model(sde)
        x_T = sde.prior_sample((64, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
        refs[name] = (model, x_T, reference(model, x_T))
    return refs


def gaussian_flow(mean, std, sde, x_T, t):
    """Closed-form probability-flow map for Gaussian data N(mean, diag(std^2)): each coordinate's
    standardized value is conserved, so x_t = alpha_t mean + s_t (x_T - alpha_T mean) / s_T with
    s_t^2 = alpha_t^2 std^2 + sigma_t^2."""
    def scale(u):
        return torch.sqrt(sde.alpha(u) ** 2 * std**2 + sde.sigma(u) ** 2)

    return sde.alpha(t) * mean + scale(t) * (x_T - sde.alpha(sde.T) * mean) / scale(sde.T)


@pytest.mark.parametrize("sde", all_sdes(), ids=lambda s: type(s).__name__)
def test_ddim_and_reference_against_closed_form_gaussian_flow(sde):
    mean, std = torch.tensor([1.0, -0.5, 0.3]), torch.tensor([0.2, 1.0, 0.6])
    data = GaussianMixture.gaussian(3, mean=mean, std=std)
    model = data.score_model(sde)
    x_T = sde.prior_sample((128, 3), torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = gaussian_flow(mean.double(), std.double(), sde, x_T, torch.tensor(sde.t_eps, dtype=torch.float64))
    assert rmse(reference(model, x_T), exact) < 1e-7
    errors = [rmse(sd.sample(model, x_T=x_T, solver="ddim", steps=n).x, exact) for n in (50, 100, 200)]
    ratios = [a / b for a, b in zip(errors[:-1], errors[1:])]
    assert all(1.8 < r < 2.2 for r in ratios), errors  # first order


def test_dpmpp_at_first_order_is_ddim():
    sde = sd.VPSDE()
    model = RING.score_model(sde)
    x_T = sde.prior_sample((32, 2), torch.Generator().manual_seed(2), dtype=torch.float64)
    ddim = sd.sample(model, x_T=x_T, solver="ddim", steps=12).x
    for name in ("dpm++2m", "dpm++3m", "unipc"):
        options = dict(history=1, corrector=False) if name == "unipc" else dict(history=1)
        torch.testing.assert_close(sd.sample(model, x_T=x_T, solver=name, steps=12, **options).x, ddim,
                                   rtol=1e-12, atol=1e-12)


def expected_nfe(solver, steps):
    info = sd.solvers.get(solver)
    return steps * info.evals_per_step + info.extra_evals


@pytest.mark.parametrize("prediction", sd.PREDICTIONS)
@pytest.mark.parametrize("sde", all_sdes(), ids=lambda s: type(s).__name__)
def test_every_solver_runs_on_every_sde_and_prediction_and_reports_its_nfe(sde, prediction):
    model = RING.score_model(sde, prediction=prediction)
    model.net = counter = CountingNet(model.net)
    x_T = sde.prior_sample((16, 2), torch.Generator().manual_seed(3), dtype=torch.float64)
    for solver in FIXED_STEP:
        # the wrapped oracle is no oracle to dpm-solver-v3: its statistics are given, computed first
        options = {"statistics": model_statistics(model, RING.sample(64, torch.Generator().manual_seed(0),
                                                                     dtype=torch.float64), steps=32)} \
            if solver == "dpm-solver-v3" else {}
        counter.calls = 0
        out = sd.sample(model, x_T=x_T, solver=solver, steps=6, **options)
        assert out.nfe == counter.calls == expected_nfe(solver, 6), solver
        assert bool(torch.isfinite(out.x).all())


@pytest.mark.parametrize("solver", FIXED_STEP + ["torchdiffeq", "scipy"])
def test_image_shapes_and_float32(solver):
    """(B, C, H, W) data in float32 gives the float64 answer to float32 accuracy."""
    sde = sd.VPSDE()
    mix = GaussianMixture.random(dim=12, components=3, seed=0)
    images = GaussianMixture(mix.weights, mix.means, mix.covariances, event_shape=(3, 2, 2))
    model = images.score_model(sde, prediction="v")
    x_T = sde.prior_sample((8, 3, 2, 2), torch.Generator().manual_seed(4), dtype=torch.float64)
    steps = {} if sd.solvers.get(solver).adaptive else {"steps": 8}  # adaptive: steps of its own
    out64 = sd.sample(model, x_T=x_T, solver=solver, **steps)
    out32 = sd.sample(model, x_T=x_T.float(), solver=solver, **steps)
    assert out32.x.dtype == torch.float32 and out32.x.shape == (8, 3, 2, 2)
    torch.testing.assert_close(out32.x.double(), out64.x, rtol=2e-3, atol=2e-3)


def test_adaptive_backends_count_every_evaluation():
    sde = sd.EDMSDE()
    model = RING.score_model(sde)
    model.net = counter = CountingNet(model.net)
    x_T = sde.prior_sample((16, 2), torch.Generator().manual_seed(5), dtype=torch.float64)
    ref = reference(model, x_T)
    for solver, method in (("torchdiffeq", "dopri5"), ("torchdiffeq", "bosh3"), ("scipy", "RK45"), ("scipy", "DOP853")):
        counter.calls = 0
        out = sd.sample(model, x_T=x_T, solver=solver, method=method, rtol=1e-7, atol=1e-7)
        assert out.nfe == counter.calls > 20
        assert rmse(out.x, ref) < 1e-4, (solver, method)
    counter.calls = 0
    out = sd.sample(model, x_T=x_T, solver="torchdiffeq", method="rk4", steps=10, schedule="karras")
    assert out.nfe == counter.calls == 40


def test_same_seed_gives_bitwise_identical_samples():
    model = RING.score_model(sd.VPSDE())
    runs = [sd.sample(model, shape=(64, 2), solver="dpm++2m", steps=8, generator=torch.Generator().manual_seed(9)).x
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    other = sd.sample(model, shape=(64, 2), solver="dpm++2m", steps=8, generator=torch.Generator().manual_seed(10)).x
    assert not torch.equal(runs[0], other)


def test_denoise_trajectory_and_callback():
    sde = sd.VPSDE()
    model = RING.score_model(sde)
    seen = []
    out = sd.sample(model, shape=(10, 2), solver="heun", steps=5, denoise=True, return_trajectory=True,
                    callback=lambda info: seen.append(info["t"]), generator=torch.Generator().manual_seed(0))
    assert out.nfe == 2 * 5 - 1 + 1
    assert out.trajectory.shape == (6, 10, 2)
    torch.testing.assert_close(torch.tensor(seen, dtype=torch.float64), out.times[1:])
    torch.testing.assert_close(out.x, RING.x0(out.trajectory[-1], out.times[-1], sde))


def test_non_affine_sde_runs_classical_solvers_and_refuses_exponential_ones():
    vp = sd.VPSDE()

    class SameAsVP(sd.SDE):
        """VP's drift and diffusion, without declaring the affine structure."""

        def drift(self, x, t):
            return vp.drift(x, t)

        def diffusion(self, x, t):
            return vp.diffusion(x, t)

    general = SameAsVP()
    model = sd.ScoreModel(lambda x, t: RING.score(x, t, vp), general, prediction="score")
    x_T = vp.prior_sample((8, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sd.sample(model, x_T=x_T, solver="rk4", steps=20, schedule="quadratic")
    torch.testing.assert_close(out.x, sd.sample(RING.score_model(vp), x_T=x_T, solver="rk4", steps=20,
                                                schedule="quadratic").x)
    with pytest.raises(ValueError, match="needs an affine SDE"):
        sd.sample(model, x_T=x_T, solver="dpm++2m", steps=5, schedule="uniform")
    with pytest.raises(ValueError, match="schedule='logsnr' needs an affine SDE"):
        sd.sample(model, x_T=x_T, solver="euler", steps=5, schedule="logsnr")


def test_bad_input():
    sde = sd.VPSDE()
    model = RING.score_model(sde)
    x_T = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="solver must be one of: euler, heun.*; got 'dpm'"):
        sd.sample(model, x_T=x_T, solver="dpm")
    with pytest.raises(ValueError, match="schedule must be one of: uniform, quadratic, logsnr, karras; got 'cosine'"):
        sd.sample(model, x_T=x_T, schedule="cosine")
    for steps in (0, -3, 2.5):
        with pytest.raises(ValueError, match="steps must be an integer >= 1"):
            sd.sample(model, x_T=x_T, steps=steps)
    for t_end in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"t_end must be a finite number in \(0, 1\)"):
            sd.sample(model, x_T=x_T, t_end=t_end)
    with pytest.raises(ValueError, match="disagrees with x_T"):
        sd.sample(model, x_T=x_T, shape=(4, 3))
    with pytest.raises(ValueError, match="give either shape"):
        sd.sample(model)
    with pytest.raises(ValueError, match="unknown option.*eta.*accepts: history, lower_order_final"):
        sd.sample(model, x_T=x_T, solver="dpm++2m", eta=0.5)
    with pytest.raises(ValueError, match="rtol must be a finite number > 0"):
        sd.sample(model, x_T=x_T, solver="torchdiffeq", rtol=0)
    with pytest.raises(ValueError, match="method must be one of: RK45.*; got 'rk45'"):
        sd.sample(model, x_T=x_T, solver="scipy", method="rk45")
    with pytest.raises(ValueError, match=r"history must be an integer in \[1, 3\]; got 5"):
        sd.sample(model, x_T=x_T, solver="unipc", history=5)
    with pytest.raises(ValueError, match="sde must be the model's sde"):
        sd.sample(model, sd.VESDE(), x_T=x_T)


def test_non_finite_state_reports_step_and_time():
    sde = sd.VPSDE()

    def explodes(x, t):
        return torch.where(t[:, None] < 0.5, torch.full_like(x, float("nan")), torch.zeros_like(x))

    model = sd.ScoreModel(explodes, sde, prediction="eps")
    with pytest.raises(sd.solvers.NonFiniteError, match=r"after step 7 of 10 \(t=0\.3007\)"):
        sd.sample(model, shape=(4, 2), solver="euler", steps=10, schedule="uniform")


def test_deferred_non_finite_check_names_the_first_bad_step(monkeypatch):
    """The accelerator path (no host sync per step) reports the same step after the solve."""
    from scoresde.solvers import _loop

    original = _loop.Loop.__init__

    def deferred(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.deferred_check = True

    monkeypatch.setattr(_loop.Loop, "__init__", deferred)
    test_non_finite_state_reports_step_and_time()
