import math

import pytest
import torch

import scoresde as sd
from scoresde.data import GaussianMixture
from conftest import interior_times

PROBLEMS = {
    "ring": GaussianMixture.ring(),
    "random16": GaussianMixture.random(dim=16, components=5, seed=3),
    "bimodal1d": GaussianMixture.bimodal_1d(),
    "gaussian3": GaussianMixture.gaussian(3, mean=torch.tensor([0.5, -1.0, 2.0]), std=torch.tensor([0.3, 1.0, 2.0])),
}


def reference_log_prob_t(mix, x, alpha, sigma):
    """log p_t by torch.distributions, one full covariance per component."""
    cov = alpha**2 * mix.covariances + sigma**2 * torch.eye(mix.dim, dtype=torch.float64)
    comps = torch.distributions.MultivariateNormal(alpha * mix.means, covariance_matrix=cov)
    dist = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(mix.weights), comps)
    return dist.log_prob(x)


@pytest.mark.parametrize("name", PROBLEMS)
def test_log_prob_matches_torch_distributions(name, any_sde):
    mix = PROBLEMS[name]
    x = mix.sample(64, torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(mix.log_prob(x), reference_log_prob_t(mix, x, 1.0, 0.0))
    for t in interior_times(any_sde, n=3):
        xt = any_sde.marginal(x, t, generator=torch.Generator().manual_seed(1))
        ref = reference_log_prob_t(mix, xt, any_sde.alpha(t), any_sde.sigma(t))
        torch.testing.assert_close(mix.log_prob_t(xt, t, any_sde), ref)


@pytest.mark.parametrize("name", PROBLEMS)
def test_score_is_the_gradient_of_log_p_t_and_x0_obeys_tweedie(name, any_sde):
    mix = PROBLEMS[name]
    n = 32
    t = interior_times(any_sde, n=n)  # a different t per sample
    x = any_sde.marginal(mix.sample(n, torch.Generator().manual_seed(0), dtype=torch.float64), t,
                         generator=torch.Generator().manual_seed(1))
    xg = x.clone().requires_grad_(True)
    (autograd_score,) = torch.autograd.grad(mix.log_prob_t(xg, t, any_sde).sum(), xg)
    score = mix.score(x, t, any_sde)
    torch.testing.assert_close(score, autograd_score, rtol=1e-9, atol=1e-9)
    alpha, sigma = any_sde.alpha(t)[:, None], any_sde.sigma(t)[:, None]
    torch.testing.assert_close(mix.x0(x, t, any_sde), (x + sigma**2 * score) / alpha, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", PROBLEMS)
def test_samples_match_mixture_mean_and_covariance(name):
    mix = PROBLEMS[name]
    n = 200_000
    x = mix.sample(n, torch.Generator().manual_seed(2), dtype=torch.float64)
    cov = mix.covariance()
    std = cov.diagonal().sqrt()
    # 5 standard errors: the mean's is std/sqrt(n); a covariance entry's is at most
    # sqrt((S_ii S_jj + S_ij^2) / n) (Gaussian fourth moments) times a mixture kurtosis factor 2
    assert bool(((x.mean(0) - mix.mean()).abs() <= 5 * std / math.sqrt(n)).all())
    bound = 5 * 2 * torch.sqrt((std[:, None] ** 2 * std[None, :] ** 2 + cov**2) / n)
    assert bool(((torch.cov(x.T) - cov).abs() <= bound).all())


def test_component_posterior_is_bayes_rule():
    mix, vp = PROBLEMS["ring"], sd.VPSDE()
    x = torch.randn(10, 2, dtype=torch.float64)
    post = mix.component_posterior(x, 0.3, vp)
    a, s = vp.alpha(0.3), vp.sigma(0.3)
    comp = torch.stack([
        torch.distributions.MultivariateNormal(a * m, a**2 * c + s**2 * torch.eye(2, dtype=torch.float64)).log_prob(x)
        for m, c in zip(mix.means, mix.covariances)
    ], 1) + mix.weights.log()
    torch.testing.assert_close(post, torch.softmax(comp, 1))


def test_float32_and_image_shaped_data():
    mix = GaussianMixture.random(dim=16, components=4, seed=1)
    img = GaussianMixture(mix.weights, mix.means, mix.covariances, event_shape=(1, 4, 4))
    x = img.sample(8, torch.Generator().manual_seed(0))
    assert x.shape == (8, 1, 4, 4) and x.dtype == torch.float32
    s = img.score(x, 0.5, sd.VPSDE())
    assert s.dtype == torch.float32
    torch.testing.assert_close(s.reshape(8, 16).double(), mix.score(x.reshape(8, 16).double(), 0.5, sd.VPSDE()),
                               rtol=1e-4, atol=1e-4)


def test_same_seed_same_samples():
    mix = PROBLEMS["random16"]
    a = mix.sample(100, torch.Generator().manual_seed(7))
    b = mix.sample(100, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "args, match",
    [
        (([0.5, 0.6], [[0.0], [1.0]], [[[1.0]], [[1.0]]]), r"weights must be probabilities summing to 1 \(within 1e-6\); got 'a sum of 1.1'"),
        (([-0.5, 1.5], [[0.0], [1.0]], [[[1.0]], [[1.0]]]), r"weights must be finite and >= 0; got tensor\(\[-0.5000, +1.5000\]"),
        (([1.0], [[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]]), "covariances must be positive definite; got 'smallest eigenvalue -1'"),
        (([1.0], [[0.0, 0.0]], [[[1.0, 0.5], [0.0, 1.0]]]), r"covariances must be symmetric; got 'max \|C - C\^T\| = 0.5'"),
        (([1.0], [[0.0, 0.0]], [[[1.0]]]), r"covariances must have shape \(K, D, D\)"),
        (([0.5, 0.5], [[0.0, 0.0]], [[[1.0]]]), r"means must have shape \(K, D\)"),
    ],
)
def test_bad_mixture_parameters(args, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(*args)


def test_bad_named_mixtures():
    with pytest.raises(ValueError, match="modes must be an integer >= 1; got 0"):
        GaussianMixture.ring(modes=0)
    with pytest.raises(ValueError, match="components must be an integer >= 1; got 0"):
        GaussianMixture.random(dim=2, components=0)
    with pytest.raises(ValueError, match=r"event_shape must be a shape of D = 2 elements; got \(1, 3\)"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.0], [0.0, 1.0]]], event_shape=(1, 3))


def test_bad_mixture_calls():
    mix = PROBLEMS["ring"]
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\)"):
        mix.log_prob(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="t must be times in"):
        mix.score(torch.zeros(3, 2), 1.5, sd.VPSDE())
