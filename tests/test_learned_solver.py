"""`learned-multistep` and method "coefficients": with no training the solver is its initial
solver (to round-off); gradients of the endpoint reach its weights and its grid; training on a
1-D Gaussian, whose exact flow is known, cuts the endpoint error by orders of magnitude; the
same seed learns the same solver; bad input is refused before any work."""
import json

import pytest
import torch

import scoresde as sd
from scoresde.data import GaussianMixture
from scoresde.solvers import Grid
from scoresde.solvers.learned import LEARNED, coefficients_of
from scoresde.tuning.coefficients import tune_coefficients

RING = GaussianMixture.ring()
#: (sde, schedule): grids where every init solver is well conditioned; on VP/karras iPNDM's own
#: endpoint moves by 1e-10 when the oracle's parameterization changes (eps vs x0), so no
#: rewriting of it can agree closer there
SETTINGS = [(sd.VPSDE(), "logsnr"), (sd.VPSDE(), "quadratic"), (sd.EDMSDE(), "karras"), (sd.EDMSDE(), "logsnr")]


def noise(sde, n=32, dim=2, seed=0):
    return sde.prior_sample((n, dim), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("steps", [3, 10])
@pytest.mark.parametrize("sde, schedule", SETTINGS, ids=lambda v: v if isinstance(v, str) else type(v).__name__)
@pytest.mark.parametrize("solver, options", [("dpm++2m", {}), ("dpm++3m", {}), ("ipndm", {}), ("unipc", {}),
                                             ("unipc", {"history": 3}), ("deis", {})])
def test_zero_training_reproduces_the_initial_solver(solver, options, sde, schedule, steps):
    model = RING.score_model(sde)
    x_T, ts = noise(sde), sd.schedules.SCHEDULES[schedule](sde, steps)
    expected = sd.sample(model, x_T=x_T, solver=solver, schedule=ts, **options).x
    weights = json.loads(json.dumps(coefficients_of(solver, Grid.of(sde, ts), **options).to_options()))
    given = sd.sample(model, x_T=x_T, solver=LEARNED, schedule=ts, **weights)
    default = sd.sample(model, x_T=x_T, solver=LEARNED, schedule=ts, base=solver, base_options=options)
    scale = float(expected.abs().max())
    assert float((given.x - expected).abs().max()) <= 1e-12 * scale
    assert torch.equal(default.x, given.x) or float((default.x - given.x).abs().max()) <= 1e-13 * scale
    assert given.nfe == default.nfe == steps
    if solver.startswith("dpm++"):  # data-prediction solvers combine only the newest state
        assert all(len(row) == 1 for row in weights["a"])


def test_gradients_reach_the_weights_and_the_grid():
    """d loss / d (weights, interior times) of a 3-step solve by autograd against central
    differences, float64."""
    sde = sd.VPSDE()
    model = RING.score_model(sde)
    x_T = noise(sde, 4)
    times = [1.0, 0.5, 0.15, 1e-3]
    weights = coefficients_of("ipndm", Grid.of(sde, torch.tensor(times, dtype=torch.float64))).to_options()
    flat = [v for name in ("a", "b") for row in weights[name] for v in row]

    def loss(values, ts, grad=False):
        rows, k = {}, 0
        for name in ("a", "b"):
            rows[name] = []
            for row in weights[name]:
                rows[name].append(values[k: k + len(row)])
                k += len(row)
        x = sd.sample(model, x_T=x_T, solver=LEARNED, schedule=ts, enable_grad=grad, **rows).x
        return (x**2).sum()

    values = torch.tensor(flat, dtype=torch.float64, requires_grad=True)
    ts = torch.tensor(times, dtype=torch.float64, requires_grad=True)
    g_values, g_times = torch.autograd.grad(loss(values, ts, grad=True), (values, ts))

    def central(f, h):
        return (float(f(h)) - float(f(-h))) / (2 * h)

    plain = torch.tensor(times, dtype=torch.float64)
    for k in range(len(flat)):
        fd = central(lambda h: loss(values.detach() + h * torch.eye(len(flat), dtype=torch.float64)[k], plain), 1e-6)
        assert abs(float(g_values[k]) - fd) <= 1e-6 * max(1.0, abs(fd)), k
    for k in (1, 2):
        fd = central(lambda h: loss(values.detach(), plain + h * times[k] * torch.eye(4, dtype=torch.float64)[k]),
                     1e-6) / times[k]
        assert abs(float(g_times[k]) - fd) <= 1e-5 * max(1.0, abs(fd)), k
    assert float(g_times[1:3].abs().min()) > 0 and float(g_values.abs().min()) > 0


def gaussian_problem(n=64, seed=0):
    """A 1-D Gaussian under VP with its exact probability-flow endpoints (the standardized value
    is conserved: x_t = alpha_t m + s_t (x_T - alpha_T m) / s_T, s_t^2 = alpha_t^2 std^2 + sigma_t^2)."""
    sde, mean, std = sd.VPSDE(), 1.5, 0.2
    model = GaussianMixture.gaussian(1, mean=mean, std=std).score_model(sde)

    def scale(t):
        t = torch.tensor(t, dtype=torch.float64)
        return torch.sqrt(sde.alpha(t) ** 2 * std**2 + sde.sigma(t) ** 2)

    alpha = lambda t: sde.alpha(torch.tensor(t, dtype=torch.float64))  # noqa: E731
    x_T = noise(sde, n, 1, seed)
    exact = alpha(sde.t_eps) * mean + scale(sde.t_eps) * (x_T - alpha(sde.T) * mean) / scale(sde.T)
    return sde, model, x_T, exact


def tune(seed=1, steps=4, **options):
    sde, model, x_cal, y_cal = gaussian_problem(64, 0)
    _, _, x_val, y_val = gaussian_problem(64, 1)
    start = sd.schedules.logsnr(sde, steps)
    options = {"epochs": 60, "lr": 0.05, "lr_grid": 0.05, **options}
    return tune_coefficients(model, x_cal, y_cal, x_val, y_val, steps, sde.t_eps, "dpm++2m", start,
                             torch.Generator().manual_seed(seed), **options)


def test_training_on_a_gaussian_cuts_the_error_by_orders_of_magnitude():
    sde, model, x_test, y_test = gaussian_problem(256, 2)
    times, weights, history, details = tune()
    start = sd.sample(model, x_T=x_test, solver="dpm++2m", schedule=sd.schedules.logsnr(sde, 4)).x
    learned = sd.sample(model, x_T=x_test, solver=LEARNED, schedule=times, **weights).x
    before, after = (float((x - y_test).square().mean().sqrt()) for x in (start, learned))
    assert after < 1e-2 * before, (before, after)
    assert history[0] > 100 * min(history) and details["best_epoch"] > 0 and not details["kept_start"]
    json.dumps(weights), json.dumps(details)  # JSON-able


def test_same_seed_same_solver():
    first, again, other = tune(seed=3, epochs=3), tune(seed=3, epochs=3), tune(seed=4, epochs=3)
    assert torch.equal(first[0], again[0]) and first[1] == again[1] and first[2] == again[2]
    assert first[1] != other[1]


def test_bad_weights_are_refused_before_any_evaluation():
    sde = sd.VPSDE()
    model = RING.score_model(sde)
    x_T, ts = noise(sde, 4), sd.schedules.logsnr(sde, 3)
    good = coefficients_of("dpm++2m", Grid.of(sde, ts)).to_options()
    bad = {
        "a must be a list of 3 rows .*; got 2 rows": dict(good, a=good["a"][:2]),
        r"b\[1\] must be 1 to 2 weights .*; got 3 weights": dict(good, b=[good["b"][0], [0.1, 0.2, 0.3],
                                                                          good["b"][2]]),
        r"a\[0\]\[0\] must be a finite number": dict(good, a=[[float("nan")], *good["a"][1:]]),
        "give both a and b": {"a": good["a"]},
    }
    for message, weights in bad.items():
        with pytest.raises(ValueError, match=message):
            sd.sample(model, x_T=x_T, solver=LEARNED, schedule=ts, **weights)
    assert model.nfe == 0
    with pytest.raises(ValueError, match="solver must be one of ddim, dpm\\+\\+2m, .*; got 'heun'"):
        coefficients_of("heun", Grid.of(sde, ts))
    with pytest.raises(ValueError, match="solver must be one of: "):
        coefficients_of("dpm++9m", Grid.of(sde, ts))


class _NonAffine(sd.SDE):
    def drift(self, x, t):
        return -x**3

    def diffusion(self, x, t):
        return torch.ones_like(x)


def test_bad_tuning_input_is_refused_before_any_work():
    sde, model, x_cal, y_cal = gaussian_problem(16)
    start = sd.schedules.logsnr(sde, 4)
    args = dict(model=model, x_cal=x_cal, reference_cal=y_cal, x_val=x_cal, reference_val=y_cal, steps=4,
                t_end=sde.t_eps, init_solver="dpm++2m", start_times=start)
    cases = {
        "init_solver must be one of ddim, .*; got 'heun'": dict(init_solver="heun"),
        "solver must be one of: .*; got 'dpm\\+\\+9m'": dict(init_solver="dpm++9m"),
        "start_times must be 6 descending times": dict(steps=5),
        "reference_cal must be the teacher's endpoints, shaped like x_cal \\(16, 1\\)": dict(reference_cal=y_cal[:8]),
        "x_val must be noise shaped \\(V, 1\\)": dict(x_val=torch.zeros(4, 2, dtype=torch.float64),
                                                      reference_val=torch.zeros(4, 2, dtype=torch.float64)),
        "loss must be one of: mse, huber, cvar; got 'l1'": dict(loss="l1"),
        "method options must be those of method 'coefficients'": dict(learning_rate=0.1),
        "options of solver 'unipc' must be among": dict(init_solver="unipc", init_options={"order": 2}),
    }
    for message, change in cases.items():
        with pytest.raises(ValueError, match=message):
            tune_coefficients(**{**args, **change})
    general = sd.ScoreModel(lambda x, t: -x, _NonAffine(), prediction="score")
    with pytest.raises(ValueError, match="affine"):
        tune_coefficients(**{**args, "model": general})
    with pytest.raises(ValueError, match="affine"):
        sd.sample(general, shape=(2, 1), solver=LEARNED, steps=3)
    assert model.nfe == 0 and general.nfe == 0


def test_tune_with_method_coefficients_returns_a_learned_multistep_sampler_that_sample_runs():
    mixture = sd.data.GaussianMixture.ring()
    model = mixture.score_model(sd.VPSDE())
    tuned = sd.tune(model, 6, method="coefficients", solver="dpm++2m", shape=(64, 2), validation=64,
                    generator=torch.Generator().manual_seed(0), dtype=torch.float64, epochs=3)
    assert tuned.method == "coefficients" and tuned.nfe == 6
    assert tuned.solver == ("dpm++2m" if tuned.kept_start else "learned-multistep")
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert sd.sample(model, x_T=x_T, solver=tuned).nfe == 6
    assert tuned.loss <= tuned.loss_start


def test_method_coefficients_starts_from_the_initial_grid_it_is_told_and_from_zero_residuals():
    """init="nelder-mead": with no epochs, the weights are the solver's own on optimize's grid,
    so the tuned sampler runs that grid, and its calibration RMSE is the one optimize found."""
    mixture = sd.data.GaussianMixture.ring()
    model = mixture.score_model(sd.VPSDE())
    x_cal = torch.randn(32, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    tuned = sd.tune(model, 6, method="coefficients", solver="dpm++2m", x_T=x_cal, validation=32,
                    generator=torch.Generator().manual_seed(0), init="nelder-mead", epochs=0)
    assert tuned.details["init_grid"] == "nelder-mead"
    grid = sd.tuning.optimize(model, model.sde, "dpm++2m", 6, x_T=x_cal,
                              reference=sd.tuning.teacher(model, x_cal).x).times
    assert not tuned.kept_start  # on this ring optimize's grid beats every fixed one (0.017 vs 0.070)
    assert torch.equal(tuned.times, grid)
    assert tuned.details["init_calibration"]["nelder-mead"] == pytest.approx(
        sd.tuning.optimize(model, model.sde, "dpm++2m", 6, x_T=x_cal).loss, rel=1e-9)
