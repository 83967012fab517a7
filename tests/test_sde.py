import math

import pytest
import torch

import scoresde as sd
from conftest import all_sdes, interior_times


def test_marginals_match_monte_carlo_simulation(any_sde):
    """Euler-Maruyama on many paths of the forward SDE, started from the exact marginal at t0
    for a point mass x0, reproduces mean alpha(t1) x0 and variance sigma(t1)^2 at t1."""
    sde = any_sde
    n_paths, n_steps, x0 = 40_000, 1000, 1.5
    t0, t1 = 0.05 * sde.T, 0.6 * sde.T
    g = torch.Generator().manual_seed(0)
    x = sde.alpha(t0) * x0 + sde.sigma(t0) * torch.randn(n_paths, 1, generator=g, dtype=torch.float64)
    ts = torch.linspace(t0, t1, n_steps + 1, dtype=torch.float64)
    for s, t in zip(ts[:-1], ts[1:]):
        dt = t - s
        x = x + sde.drift(x, s) * dt + sde.diffusion(x, s) * dt.sqrt() * torch.randn(x.shape, generator=g, dtype=x.dtype)
    mean, var = float(x.mean()), float(x.var())
    sigma1 = float(sde.sigma(t1))
    # 5 standard errors of the Monte-Carlo estimates, plus EM's O(dt) weak bias (1% relative)
    assert mean == pytest.approx(float(sde.alpha(t1)) * x0, abs=5 * sigma1 / math.sqrt(n_paths) + 0.01 * abs(x0))
    assert var == pytest.approx(sigma1**2, rel=5 * math.sqrt(2 / n_paths) + 0.01)


def test_f_and_g2_are_the_derivatives_of_alpha_and_sigma(any_sde):
    """f = d log alpha / dt and g2 = d sigma^2/dt - 2 f sigma^2, by autograd of alpha and sigma."""
    t = interior_times(any_sde).requires_grad_(True)
    (dlog_alpha,) = torch.autograd.grad(torch.log(any_sde.alpha(t)).sum(), t)
    (dsigma2,) = torch.autograd.grad((any_sde.sigma(t) ** 2).sum(), t)
    t = t.detach()
    f = any_sde.f(t)
    torch.testing.assert_close(f, dlog_alpha, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(any_sde.g2(t), dsigma2 - 2 * f * any_sde.sigma(t) ** 2, rtol=1e-10, atol=1e-12)


def test_log_snr_round_trip_and_monotone(any_sde):
    t = torch.linspace(any_sde.t_eps, any_sde.T, 101, dtype=torch.float64)
    lam = any_sde.log_snr(t)
    assert bool((lam[1:] < lam[:-1]).all())
    torch.testing.assert_close(any_sde.t_of_log_snr(lam), t, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(lam, torch.log(any_sde.alpha(t) / any_sde.sigma(t)), rtol=1e-12, atol=1e-12)


def test_closed_forms_agree_with_the_general_affine_defaults(any_sde):
    """The built-in closed forms of f, g2 and t_of_log_snr equal AffineSDE's generic ones
    (autograd and bisection), so a user subclass defining only alpha and sigma is right too."""
    t = interior_times(any_sde)
    torch.testing.assert_close(any_sde.f(t), sd.AffineSDE.f(any_sde, t), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(any_sde.g2(t), sd.AffineSDE.g2(any_sde, t), rtol=1e-10, atol=1e-12)
    lam = any_sde.log_snr(t)
    torch.testing.assert_close(sd.AffineSDE.t_of_log_snr(any_sde, lam), t, rtol=1e-9, atol=1e-12)


def test_prior_logp_is_the_exact_gaussian_density(any_sde):
    z = any_sde.prior_sample((16, 3, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = torch.distributions.Normal(0.0, any_sde.prior_std).log_prob(z).sum((1, 2))
    torch.testing.assert_close(any_sde.prior_logp(z), ref)
    assert z.std().item() == pytest.approx(any_sde.prior_std, rel=0.3)


def test_prior_matches_the_marginal_at_T_for_unit_variance_data():
    """VP-type priors are N(0, I); VE/EDM priors have std sigma_max = sigma(T)."""
    for sde in all_sdes():
        t = torch.tensor(sde.T, dtype=torch.float64)
        marginal_std = float(torch.sqrt(sde.alpha(t) ** 2 + sde.sigma(t) ** 2))
        assert sde.prior_std == pytest.approx(marginal_std, rel=1e-3)


def test_subvp_sigma_and_ve_g_follow_design_formulas():
    t = torch.linspace(0.01, 1, 50, dtype=torch.float64)
    sub = sd.SubVPSDE()
    torch.testing.assert_close(sub.sigma(t), 1 - sub.alpha(t) ** 2)
    torch.testing.assert_close(sub.g2(t), sub.beta(t) * (1 - sub.alpha(t) ** 4))
    ve = sd.VESDE(sigma_min=0.01, sigma_max=50)
    torch.testing.assert_close(ve.sigma(t), 0.01 * (50 / 0.01) ** t)
    torch.testing.assert_close(ve.g2(t).sqrt(), ve.sigma(t) * math.sqrt(2 * math.log(50 / 0.01)))
    vp = sd.VPSDE()
    torch.testing.assert_close(vp.alpha(t), torch.exp(-(t**2) * (20 - 0.1) / 4 - t * 0.1 / 2))
    edm = sd.EDMSDE()
    torch.testing.assert_close(edm.sigma(t * 80), t * 80)


def test_ddpm_betas_round_trip():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    vp = sd.VPSDE.from_betas(betas)
    assert (vp.beta_min, vp.beta_max) == (pytest.approx(0.1), pytest.approx(20.0))
    torch.testing.assert_close(vp.discrete_betas(1000), betas)


def test_alphas_cumprod_matches_continuous_alpha_at_first_order():
    """prod_{j<=i} (1 - beta_j) vs alpha(i/N)^2: the gap is O(1/N), so doubling N halves it."""
    vp = sd.VPSDE()
    errors = []
    for n in (250, 500, 1000, 2000):
        cumprod = torch.cumprod(1 - vp.discrete_betas(n), 0)
        t = torch.arange(1, n + 1, dtype=torch.float64) / n
        errors.append(float((cumprod - vp.alpha(t) ** 2).abs().max()))
    assert errors[-1] < 2e-3
    ratios = [a / b for a, b in zip(errors[:-1], errors[1:])]
    assert all(1.8 < r < 2.2 for r in ratios), ratios


def test_from_betas_refuses_a_nonlinear_schedule():
    betas = torch.linspace(1e-2, 0.14, 100) ** 2
    with pytest.raises(ValueError, match="betas must be a linear schedule .*; got 'a relative deviation of .* from linear'"):
        sd.VPSDE.from_betas(betas)


def test_time_and_batch_shapes():
    vp = sd.VPSDE()
    assert vp.alpha(0.5).shape == ()
    assert vp.alpha(torch.full((4,), 0.5)).shape == (4,)
    x = torch.randn(4, 3, 5, 5)
    assert vp.drift(x, torch.rand(4)).shape == x.shape
    assert vp.marginal(x, 0.3, generator=torch.Generator().manual_seed(0)).shape == x.shape


def test_reverse_sde_and_probability_flow_drifts():
    vp = sd.VPSDE()
    x, t = torch.randn(5, 2, dtype=torch.float64), torch.full((5,), 0.4, dtype=torch.float64)

    def score(x, t):
        return -x

    f, g2 = vp.f(t)[:, None], vp.g2(t)[:, None]
    torch.testing.assert_close(vp.reverse(score).drift(x, t), f * x + g2 * x)
    torch.testing.assert_close(vp.reverse(score, probability_flow=True).drift(x, t), f * x + 0.5 * g2 * x)
    assert float(vp.reverse(score, probability_flow=True).diffusion(x, t).abs().max()) == 0


def test_user_defined_nonaffine_sde():
    class DoubleWell(sd.SDE):
        T = 1.0

        def drift(self, x, t):
            return x - x**3

        def diffusion(self, x, t):
            return torch.full_like(x, 0.5)

    sde = DoubleWell()
    assert not sde.is_affine
    x = torch.tensor([[2.0]])
    torch.testing.assert_close(sde.reverse(lambda x, t: torch.zeros_like(x)).drift(x, 0.5), torch.tensor([[-6.0]]))
    with pytest.raises(ValueError, match="prediction='eps' .*needs an affine SDE .*; got DoubleWell"):
        sd.ScoreModel(lambda x, t: x, sde, prediction="eps")


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: sd.VPSDE(beta_min=-1), "beta_min must be a finite number >= 0; got -1"),
        (lambda: sd.VPSDE(beta_min=1, beta_max=1), "beta_max must be > beta_min = 1; got 1"),
        (lambda: sd.SubVPSDE(beta_max=float("nan")), "beta_max must be a finite number; got nan"),
        (lambda: sd.VESDE(sigma_min=0), "sigma_min must be a finite number > 0; got 0"),
        (lambda: sd.VESDE(sigma_min=1, sigma_max=0.5), "sigma_max must be > sigma_min = 1; got 0.5"),
        (lambda: sd.EDMSDE(sigma_min=-0.1), "sigma_min must be a finite number > 0; got -0.1"),
        (lambda: sd.EDMSDE(sigma_max=0.001), "sigma_max must be > sigma_min = 0.002; got 0.001"),
        (lambda: sd.CosineVPSDE(T=1.0), r"T must be a finite number in \(0, 1\); got 1.0"),
        (lambda: sd.VPSDE().alpha(1.5), r"\[0, 1\]"),
        (lambda: sd.EDMSDE().sigma(torch.tensor([-1.0, 2.0])), "t must be times in"),
        (lambda: sd.VPSDE().discrete_betas(1), "N must be an integer >= 2; got 1"),
        (lambda: sd.VPSDE().discrete_betas(4.0), "N must be an integer >= 2; got 4.0"),
        (lambda: sd.VPSDE(t_eps=1.0), r"t_eps must be a finite number in \(0, 1\); got 1.0"),
        (lambda: sd.CosineVPSDE(s=-0.1), "s must be a finite number >= 0; got -0.1"),
        (lambda: sd.VESDE(t_eps=0), r"t_eps must be a finite number in \(0, 1\); got 0"),
        (lambda: sd.DiscreteVPSDE([0.9, 0.95]),
         r"alphas_cumprod must be strictly decreasing .*; got 'alphas_cumprod\[1\] = 0.95 >= alphas_cumprod\[0\] = 0.9'"),
        (lambda: sd.DiscreteVPSDE.from_betas([0.1, 1.2]), r"betas must be values in \(0, 1\); got 'values in \[0.1, 1.2\]'"),
        (lambda: sd.VPSDE().marginal(torch.zeros(2, 3), 0.5, noise=torch.zeros(2, 2)),
         r"noise must have the shape of x0 \(2, 3\); got \(2, 2\)"),
    ],
)
def test_bad_parameters_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_sdes_compare_and_hash_by_value():
    # two different chains with the same length and last alpha_bar: their reprs agree (%g), the SDEs do not
    a = sd.DiscreteVPSDE(torch.linspace(0.99, 0.01, 10, dtype=torch.float64))
    b = sd.DiscreteVPSDE(torch.cat([torch.linspace(0.99, 0.5, 5), torch.linspace(0.4, 0.01, 5)]).double())
    assert repr(a) == repr(b) and a != b and a.fingerprint() != b.fingerprint()
    assert a == sd.DiscreteVPSDE(torch.linspace(0.99, 0.01, 10, dtype=torch.float64))
    assert sd.VPSDE() == sd.VPSDE() and hash(sd.VPSDE()) == hash(sd.VPSDE())
    assert sd.VPSDE() != sd.VPSDE(beta_max=19.0) and sd.VPSDE() != sd.SubVPSDE() and sd.VESDE() != sd.EDMSDE()
    assert sd.VPSDE(beta_max=20 + 1e-9) != sd.VPSDE()  # repr would round this away
    assert len({sd.VPSDE(), sd.VPSDE(), sd.VESDE()}) == 2


def test_by_name_builds_the_named_sde():
    assert sd.sde.by_name("edm") == sd.EDMSDE() and sd.sde.by_name("vp", beta_max=10.0) == sd.VPSDE(beta_max=10.0)
    with pytest.raises(ValueError, match="sde must be one of: vp, cosine, subvp, ve, edm; got 'vpp'"):
        sd.sde.by_name("vpp")
