"""Method "steps" of scoresde.tune (LD3: the grid learned by gradient through the solver): on a
1-D Gaussian, whose exact flow is known, it drives the endpoint error down by orders of
magnitude; the same seed gives the same sampler; a run that cannot improve returns its start;
`sample(solver=tuned)` reproduces the tuned validation loss exactly (time offsets included,
through a JSON file too); bad input is refused before any work."""
import math

import pytest
import torch

import scoresde as sd
from scoresde.tuning import ShiftedTime

SOLVER = "dpm++2m"
SDE = sd.VPSDE()
MEAN, STD = 1.0, 0.5
MODEL = sd.data.GaussianMixture.gaussian(1, mean=MEAN, std=STD).score_model(SDE)


def exact_flow(x_T: torch.Tensor, t_end: float) -> torch.Tensor:
    """The probability-flow map of N(MEAN, STD^2) under VP from T to t_end: the standardized
    state (x - alpha MEAN) / sqrt(alpha^2 STD^2 + sigma^2) is constant along the flow."""
    def scale(t):
        t = torch.tensor(t, dtype=torch.float64)
        return SDE.alpha(t), torch.sqrt(SDE.alpha(t) ** 2 * STD**2 + SDE.sigma(t) ** 2)

    (a_T, s_T), (a_e, s_e) = scale(SDE.T), scale(t_end)
    return a_e * MEAN + s_e * (x_T - a_T * MEAN) / s_T


def noise(n: int, seed: int) -> torch.Tensor:
    return SDE.prior_sample((n, 1), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def held_rmse(solver, **kwargs) -> float:
    x_T = noise(200, 99)
    x = sd.sample(MODEL, x_T=x_T, solver=solver, **kwargs).x
    return float((x - exact_flow(x_T, SDE.t_eps)).square().mean().sqrt())


def tune(**options):
    options = {"init": "start", **options}
    return sd.tune(MODEL, 4, "steps", SOLVER, x_T=noise(32, 0), validation=noise(32, 1),
                   generator=torch.Generator().manual_seed(5), **options)


@pytest.fixture(scope="module")
def learned():
    return tune(lr=0.03, epochs=120, patience=200, offsets=False)


def test_a_learned_grid_drives_the_error_on_a_gaussian_down_by_orders_of_magnitude(learned):
    assert not learned.kept_start and learned.method == "steps"
    assert learned.loss < 1e-2 * learned.loss_start  # validation, against the teacher
    start = sd.schedules.SCHEDULES[learned.start](SDE, learned.steps, None)
    before, after = held_rmse(SOLVER, schedule=start), held_rmse(learned)  # held out, against the exact flow
    assert after < 1e-2 * before
    assert bool((learned.times[1:] < learned.times[:-1]).all())
    assert float(learned.times[0]) == SDE.T and float(learned.times[-1]) == SDE.t_eps
    assert learned.details["training_nfe"] > 0 and learned.cost_nfe > learned.details["training_nfe"]
    assert learned.loss_history[0] == pytest.approx(learned.loss_start, rel=1e-12)
    assert min(learned.loss_history) == pytest.approx(learned.loss, rel=1e-12)


@pytest.fixture(scope="module")
def with_offsets():
    return tune(lr=0.03, epochs=8, max_offset=0.5, offset_lr=1.0)


def test_the_same_seed_gives_the_same_sampler(with_offsets):
    again = tune(lr=0.03, epochs=8, max_offset=0.5, offset_lr=1.0)
    assert torch.equal(again.times, with_offsets.times)
    assert again.time_offsets == with_offsets.time_offsets and again.loss == with_offsets.loss
    assert again.loss_history == with_offsets.loss_history


def test_sample_with_the_tuned_sampler_reproduces_its_validation_loss_exactly(with_offsets, tmp_path):
    tuned = with_offsets
    assert not tuned.kept_start and len(tuned.time_offsets) == tuned.steps + 1
    assert any(v != 0 for v in tuned.time_offsets) and all(abs(v) <= 0.5 for v in tuned.time_offsets)
    x_val = noise(32, 1)
    reference = sd.tuning.teacher(MODEL, x_val).x
    for sampler in (tuned, _saved(tuned, tmp_path)):
        out = sd.sample(MODEL, x_T=x_val, solver=sampler)
        assert out.nfe == 4
        assert float((out.x - reference).square().mean().sqrt()) == tuned.loss
    # the offsets matter: the grid alone samples differently
    grid_only = sd.sample(MODEL, x_T=x_val, solver=SOLVER, schedule=tuned).x
    assert not torch.equal(grid_only, sd.sample(MODEL, x_T=x_val, solver=tuned).x)


def _saved(tuned, tmp_path):
    path = tmp_path / "steps.json"
    tuned.save(path)
    return sd.TunedSampler.load(path)


def test_shifted_time_with_zero_offsets_is_the_model_bit_for_bit():
    ts = sd.schedules.SCHEDULES["logsnr"](SDE, 4, None)
    x_T = noise(8, 3)
    shifted = ShiftedTime(MODEL, ts, torch.zeros(5, dtype=torch.float64))
    a = sd.sample(MODEL, x_T=x_T, solver=SOLVER, schedule=ts)
    b = sd.sample(shifted, x_T=x_T, solver=SOLVER, schedule=ts)
    assert torch.equal(a.x, b.x) and a.nfe == b.nfe == 4
    # an offset moves the evaluation to the time of log-SNR lambda(t_i) + d_i
    d = torch.tensor([0.0, 0.3, 0.0, 0.0, 0.0], dtype=torch.float64)
    t_shifted = ShiftedTime(MODEL, ts, d).evaluation_time(ts[1])
    assert float(SDE.log_snr(t_shifted)) == pytest.approx(float(SDE.log_snr(ts[1])) + 0.3, abs=1e-12)


def test_a_run_that_cannot_improve_returns_its_start():
    # steps far too large for the landscape: every epoch is worse than the start on validation
    tuned = tune(lr=30.0, epochs=2, lr_final=1.0)
    start = sd.schedules.SCHEDULES[tuned.start](SDE, 4, None)
    assert tuned.kept_start and torch.equal(tuned.times, start) and tuned.time_offsets == []
    assert tuned.loss == tuned.loss_start
    nothing = tune(epochs=0)
    assert nothing.kept_start and torch.equal(nothing.times, start) and nothing.loss == nothing.loss_start


@pytest.mark.parametrize("loss", ["huber", "cvar"])
def test_the_robust_and_tail_losses_train_too(loss):
    tuned = tune(lr=0.1, epochs=15, loss=loss, offsets=False)
    assert tuned.loss < 0.5 * tuned.loss_start


def test_the_soft_teacher_slack_trains_from_a_ball_and_validates_from_x_T():
    tuned = tune(lr=0.1, epochs=15, slack=0.05, offsets=False)
    assert tuned.loss < 0.5 * tuned.loss_start
    assert tuned.details["slack"] == 0.05


class DoubleWell(sd.SDE):
    def drift(self, x, t):
        return x - x**3

    def diffusion(self, x, t):
        return torch.full_like(x, 0.5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(nfe=1), r"nfe must be >= 2 for method 'steps' with solver 'dpm\+\+2m'"),
    (dict(x_T=torch.zeros(0, 1, dtype=torch.float64)), "x_T must be a real floating-point tensor"),
    (dict(validation=0), "validation must be an integer >= 1"),
    (dict(validation=torch.zeros(0, 1, dtype=torch.float64)), "validation must be a real floating-point tensor"),
    (dict(validation=torch.zeros(4, 2, dtype=torch.float64)), r"validation must be .*like the calibration's"),
    (dict(loss="l1"), "loss must be one of: mse, huber, cvar"),
    (dict(optimizer="sgd"), "optimizer must be one of: adam, rmsprop"),
    (dict(cvar_alpha=0.0), "cvar_alpha must be"),
    (dict(learning_rate=0.1), "method options must be those of method 'steps'"),
])
def test_bad_input_is_refused_before_any_work(kwargs, message):
    call = {"nfe": 4, "x_T": noise(8, 0), "validation": 8, **kwargs}
    nfe = call.pop("nfe")
    before = MODEL.nfe
    with pytest.raises(ValueError, match=message) as err:
        sd.tune(MODEL, nfe, "steps", SOLVER, **call)
    assert "\n" not in str(err.value)
    assert MODEL.nfe == before


def test_a_general_sde_is_refused():
    general = sd.ScoreModel(lambda x, t: -x, DoubleWell(), prediction="score")
    with pytest.raises(ValueError, match="method='steps' .*needs an affine SDE"):
        sd.tune(general, 4, "steps", "euler", shape=(8, 1))
    assert general.nfe == 0


def test_the_initial_grid_that_fits_calibration_best_is_taken():
    tuned = tune(epochs=0, init="best")
    cal = tuned.details["init_calibration"]
    assert set(cal) == {"gits", "start", "nelder-mead"}
    assert tuned.details["init_grid"] == min(cal, key=cal.get)
    assert cal["nelder-mead"] <= cal["start"]  # optimize starts from the fixed schedules
    assert math.isfinite(tuned.loss)
    alone = tune(epochs=0, init="nelder-mead")
    assert alone.details["init_grid"] == "nelder-mead" and set(alone.details["init_calibration"]) == {"nelder-mead"}


def test_the_shared_fitting_loop_keeps_the_validation_best_and_stops_after_patience():
    # gradient descent on the calibration loss (p - 3)^2 from p = 0, validated on (p - 2)^2: p
    # passes 2 at a known epoch, then validation worsens for `patience` epochs and the loop stops
    from scoresde.tuning.fitting import fit_early_stopped

    p, lr, rows, batch, patience = [0.0], 0.1, 10, 4, 3
    seen = []

    def step(indices):
        seen.append(indices.tolist())
        p[0] -= lr * 2 * (p[0] - 3)
        return (p[0] - 3) ** 2

    fit = fit_early_stopped(step, lambda: ((p[0] - 2) ** 2, p[0]), (4.0, 0.0), rows, batch, 50, patience,
                            torch.Generator().manual_seed(0), torch.device("cpu"))
    per_epoch = math.ceil(rows / batch)  # 3 steps: p_k = 3 (1 - 0.8^(3k))
    values = [(3 * (1 - 0.8 ** (per_epoch * k)) - 2) ** 2 for k in range(len(fit.validation_history))]
    best = min(range(len(values)), key=values.__getitem__)
    assert fit.validation_history == pytest.approx(values, rel=1e-12)
    assert fit.best_epoch == best == 2 and fit.state == pytest.approx(3 * (1 - 0.8**6), rel=1e-12)
    assert len(fit.train_history) == best + patience and fit.iterations == (best + patience) * per_epoch
    for epoch in range(best + patience):  # each epoch visits every row once, in mini-batches of 4, 4, 2
        chunk = seen[epoch * per_epoch: (epoch + 1) * per_epoch]
        assert [len(c) for c in chunk] == [4, 4, 2] and sorted(sum(chunk, [])) == list(range(rows))
    # a loss that never improves on the start returns the start's state
    never = fit_early_stopped(step, lambda: (5.0, "moved"), (4.0, "start"), rows, batch, 10, 2,
                              torch.Generator().manual_seed(0), torch.device("cpu"))
    assert never.state == "start" and never.best_epoch == 0 and never.loss == never.loss_start == 4.0
