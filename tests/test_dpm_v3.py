"""DPM-Solver-v3 against exact answers: convergence order on a mixture, the Gaussian case its
statistics capture, reproducible statistics, their cost in NFE, files, and bad input."""
import numpy as np
import pytest
import torch

import scoresde as sd
from scoresde.data import GaussianMixture
from scoresde.model import fingerprint
from scoresde.solvers import dpm_v3
from scoresde.solvers.dpm_v3 import ModelStatistics, model_statistics

RING = GaussianMixture.ring()
MEAN, STD = torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64), torch.tensor([0.2, 1.0, 0.6], dtype=torch.float64)
GAUSS = GaussianMixture.gaussian(3, mean=MEAN, std=STD)


def rmse(a, b):
    return float(((a - b) ** 2).mean().sqrt())


def stats_of(model, data, n=64, steps=64, seed=1):
    x0 = data.sample(n, torch.Generator().manual_seed(0), dtype=torch.float64)
    return model_statistics(model, x0, steps=steps, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def ring_vp():
    sde = sd.VPSDE()
    model = RING.score_model(sde)
    x_T = sde.prior_sample((32, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = sd.sample(model, x_T=x_T, solver="torchdiffeq", method="dopri8", rtol=1e-10, atol=1e-10).x
    return model, x_T, ref, stats_of(model, RING, n=64, steps=128)


@pytest.mark.parametrize("options, order", [({}, 3), ({"corrector": False}, 2)])
def test_convergence_order_on_the_ring(ring_vp, options, order):
    """Terminal RMSE against a tight reference falls like NFE^-order (log-log slope within 0.35):
    the predictor with history p has order p, and the corrector adds one."""
    model, x_T, ref, stats = ring_vp
    nfes, errors = [], []
    for steps in (40, 80, 160):
        out = sd.sample(model, x_T=x_T, solver="dpm-solver-v3", steps=steps, statistics=stats, **options)
        nfes.append(out.nfe)
        errors.append(rmse(out.x, ref))
    slope = -np.polyfit(np.log(nfes), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.35, (options, errors, slope)
    assert sd.solvers.get("dpm-solver-v3").order == 3


def gaussian_flow(sde, x_T, t):
    """The probability-flow map of N(MEAN, diag(STD^2)) in closed form."""
    def scale(u):
        return torch.sqrt(sde.alpha(u) ** 2 * STD**2 + sde.sigma(u) ** 2)

    return sde.alpha(t) * MEAN + scale(t) * (x_T - sde.alpha(sde.T) * MEAN) / scale(sde.T)


def test_a_gaussian_is_solved_in_few_steps_up_to_the_statistics_resolution():
    """For Gaussian data with diagonal covariance eps is linear in x with a diagonal Jacobian: l
    is exact (Hutchinson's probe is exact on a diagonal), f is the same for every sample, and g is
    constant between the grid points of the statistics, so even 2 steps are exact but for the
    interpolation of the tabulated statistics, an O(grid spacing^2) error: refining the
    statistics grid 4x shrinks it by more than 12x, while DPM-Solver++(3M) at 2 steps is off by
    O(1)."""
    sde = sd.VPSDE()
    model = GAUSS.score_model(sde)
    x_T = sde.prior_sample((128, 3), torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = gaussian_flow(sde, x_T, torch.tensor(sde.t_eps, dtype=torch.float64))
    coarse, fine = stats_of(model, GAUSS, n=16, steps=32), stats_of(model, GAUSS, n=16, steps=128)
    errors = [rmse(sd.sample(model, x_T=x_T, solver="dpm-solver-v3", steps=2, statistics=st).x, exact)
              for st in (coarse, fine)]
    assert errors[1] < 2e-3 and errors[0] / errors[1] > 12, errors
    assert rmse(sd.sample(model, x_T=x_T, solver="dpm++3m", steps=2).x, exact) > 0.1


def test_with_degenerate_statistics_it_is_dpm_solver_pp():
    """l = 1, s = b = 0 makes f = -x0: the first-order step is DDIM (DPM-Solver++ 1)."""
    sde = sd.VPSDE()
    model = RING.score_model(sde)
    lam = torch.linspace(-11, 8, 9, dtype=torch.float64)
    ones = torch.ones(9, 2, dtype=torch.float64)
    stats = ModelStatistics(lam, ones, 0 * ones, 0 * ones, fingerprint(model), repr(sde), sde.fingerprint(), 0, 0, 0)
    x_T = sde.prior_sample((32, 2), torch.Generator().manual_seed(2), dtype=torch.float64)
    ddim = sd.sample(model, x_T=x_T, solver="ddim", steps=7).x
    v3 = sd.sample(model, x_T=x_T, solver="dpm-solver-v3", steps=7, statistics=stats, history=1, corrector=False).x
    torch.testing.assert_close(v3, ddim, rtol=1e-10, atol=1e-10)  # quadrature rounding


def test_statistics_are_reproducible_from_a_seed_and_cost_what_the_model_counts(tmp_path):
    sde = sd.VESDE()
    model = RING.score_model(sde)
    x0 = RING.sample(40, torch.Generator().manual_seed(0), dtype=torch.float64)
    before = model.nfe
    a = model_statistics(model, x0, steps=16, batch_size=100, generator=torch.Generator().manual_seed(5))
    # 17 grid points x 40 rows in batches of 100 rows (2 grid points each): 9 batches, 2 evaluations each
    assert a.nfe == model.nfe - before == 18 and a.samples == 40 and a.seed == 5
    dpm_v3._CACHE.clear()
    b = model_statistics(model, x0, steps=16, batch_size=100, generator=torch.Generator().manual_seed(5))
    assert a is not b
    for name in ("lam", "l", "s", "b"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert model_statistics(model, x0, steps=16, batch_size=100, generator=torch.Generator().manual_seed(5)) is b
    c = model_statistics(model, x0, steps=16, batch_size=100, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(a.l, c.l)
    a.save(tmp_path / "stats.json")
    loaded = ModelStatistics.load(tmp_path / "stats.json")
    for name in ("lam", "l", "s", "b"):
        assert torch.equal(getattr(a, name), getattr(loaded, name)), name
    assert (loaded.model_fingerprint, loaded.sde_fingerprint, loaded.nfe, loaded.seed) == (
        a.model_fingerprint, a.sde_fingerprint, a.nfe, a.seed)


def test_the_oracles_statistics_are_computed_once_and_not_counted_in_a_samples_nfe(monkeypatch):
    monkeypatch.setitem(dpm_v3.ORACLE_STATISTICS, "samples", 32)
    monkeypatch.setitem(dpm_v3.ORACLE_STATISTICS, "steps", 32)
    sde = sd.EDMSDE()
    model = RING.score_model(sde)
    x_T = sde.prior_sample((8, 2), torch.Generator().manual_seed(3), dtype=torch.float64)
    first = sd.sample(model, x_T=x_T, solver="dpm-solver-v3", steps=6)
    assert first.nfe == 6 and model.nfe == 6
    again = sd.sample(model, x_T=x_T, solver="dpm-solver-v3", steps=6)
    assert torch.equal(first.x, again.x) and dpm_v3.oracle_statistics(model).nfe > 0


def test_bad_input():
    vp, ve = sd.VPSDE(), sd.VESDE()
    model = RING.score_model(vp)
    stats = stats_of(model, RING, n=8, steps=8)
    x_T = vp.prior_sample((4, 2), torch.Generator().manual_seed(4), dtype=torch.float64)
    other = GaussianMixture.ring(modes=6).score_model(vp)
    with pytest.raises(ValueError, match="statistics must be the statistics of this model"):
        sd.sample(other, x_T=x_T, solver="dpm-solver-v3", steps=4, statistics=stats)
    on_ve = RING.score_model(ve)
    relabelled = ModelStatistics(**{**stats.__dict__, "model_fingerprint": fingerprint(on_ve), "_hermite": {}})
    with pytest.raises(ValueError, match="statistics must be statistics computed under this SDE"):
        sd.sample(on_ve, x_T=x_T, solver="dpm-solver-v3", steps=4, statistics=relabelled)
    narrow = model_statistics(model, RING.sample(8, torch.Generator().manual_seed(0), dtype=torch.float64), steps=8,
                              lam_min=-5.0, lam_max=2.0)
    with pytest.raises(ValueError, match="statistics must be statistics whose log-SNR range covers"):
        sd.sample(model, x_T=x_T, solver="dpm-solver-v3", steps=4, statistics=narrow)
    for history in (0, 4):
        with pytest.raises(ValueError, match="history must be an integer in"):
            sd.sample(model, x_T=x_T, solver="dpm-solver-v3", steps=4, statistics=stats, history=history)
    net = sd.ScoreModel(torch.nn.Linear(2, 2), vp)
    with pytest.raises(ValueError, match="compute them with scoresde.solvers.dpm_v3.model_statistics"):
        sd.sample(net, x_T=x_T.float(), solver="dpm-solver-v3", steps=4)
    with pytest.raises(ValueError, match="statistics must be None or a ModelStatistics"):
        sd.sample(model, x_T=x_T, solver="dpm-solver-v3", steps=4, statistics="stats.json")
