import math

import pytest
import torch

import scoresde as sd
from scoresde import schedules
from conftest import all_sdes


@pytest.mark.parametrize("name", list(schedules.SCHEDULES))
def test_grids_are_descending_float64_from_T_to_t_end(name, any_sde):
    ts = schedules.get_schedule(name, any_sde, steps=12)
    assert ts.dtype == torch.float64 and ts.shape == (13,)
    assert float(ts[0]) == any_sde.T and float(ts[-1]) == any_sde.t_eps
    assert bool((ts[1:] < ts[:-1]).all())
    ts = schedules.get_schedule(name, any_sde, steps=5, t_end=0.5 * any_sde.T)
    assert float(ts[-1]) == 0.5 * any_sde.T


def test_named_grids_follow_their_formulas(any_sde):
    n = 10
    ts = schedules.logsnr(any_sde, n)
    lam = any_sde.log_snr(ts)
    torch.testing.assert_close(lam[1:] - lam[:-1], torch.full((n,), float(lam[1] - lam[0]), dtype=torch.float64),
                               rtol=1e-8, atol=1e-10)
    ts = schedules.karras(any_sde, n, rho=7)
    root = torch.exp(-any_sde.log_snr(ts)) ** (1 / 7)
    torch.testing.assert_close(root[1:] - root[:-1], torch.full((n,), float(root[1] - root[0]), dtype=torch.float64),
                               rtol=1e-8, atol=1e-10)
    ts = schedules.quadratic(any_sde, n)
    u = torch.sqrt((ts - any_sde.t_eps) / (any_sde.T - any_sde.t_eps))
    torch.testing.assert_close(u, torch.linspace(1, 0, n + 1, dtype=torch.float64))


def test_karras_on_edm_is_karras_eq_5():
    edm = sd.EDMSDE(sigma_min=0.002, sigma_max=80)
    i = torch.arange(19, dtype=torch.float64)
    want = (80 ** (1 / 7) + i / 18 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    torch.testing.assert_close(schedules.karras(edm, 18), want)


def test_user_grids():
    vp = sd.VPSDE()
    ts = schedules.get_schedule([1.0, 0.5, 0.1, 0.01], vp)
    assert ts.dtype == torch.float64 and ts.tolist() == [1.0, 0.5, 0.1, 0.01]
    for bad, match in (([1.0], "at least 2"), ([0.5, 0.6], "strictly decreasing"), ([1.5, 0.1], r"\(0, T\]"),
                       ([1.0, 0.0], r"\(0, T\]"), ([1.0, float("nan")], "non-finite")):
        with pytest.raises(ValueError, match=match):
            schedules.get_schedule(bad, vp)
    with pytest.raises(ValueError, match="disagrees"):
        schedules.get_schedule([1.0, 0.5, 0.1], vp, steps=5)
    model = sd.data.GaussianMixture.ring().score_model(vp)
    out = sd.sample(model, shape=(4, 2), schedule=[1.0, 0.3, 0.05, 0.001], solver="ddim", steps=None)
    assert out.nfe == 3 and out.times.tolist() == [1.0, 0.3, 0.05, 0.001]


def test_bad_schedule_arguments():
    vp = sd.VPSDE()
    with pytest.raises(ValueError, match=r"rho must be a finite number in \[0.1, 1000\]; got 0.0"):
        schedules.karras(vp, 5, rho=0)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        schedules.uniform(vp, 0)
