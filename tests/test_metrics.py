import functools
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

import scoresde as sd
from scoresde import metrics
from scoresde.data import GaussianMixture

F64 = dict(dtype=torch.float64)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def random_spd(d, seed, batch=()):
    g = gen(seed)
    a = torch.randn(*batch, d, d, generator=g, **F64)
    return a @ a.mT / d + 0.1 * torch.eye(d, **F64)


# ---- gaussian_w2 -------------------------------------------------------------------------
def test_gaussian_w2_one_dimensional_closed_form():
    g = gen(0)
    m1, m2 = torch.randn(6, 1, generator=g, **F64), torch.randn(6, 1, generator=g, **F64)
    s1, s2 = torch.rand(6, generator=g, **F64) + 0.1, torch.rand(6, generator=g, **F64) + 0.1
    w2 = metrics.gaussian_w2(m1, s1[:, None, None] ** 2, m2, s2[:, None, None] ** 2)  # batched
    exact = ((m1 - m2)[:, 0] ** 2 + (s1 - s2) ** 2).sqrt()
    torch.testing.assert_close(w2, exact, rtol=1e-12, atol=1e-12)


def test_gaussian_w2_commuting_covariances():
    d = 5
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen(1), **F64))  # a shared eigenbasis
    a, b = torch.rand(d, generator=gen(2), **F64) + 0.05, torch.rand(d, generator=gen(3), **F64) + 0.05
    m1, m2 = torch.randn(d, generator=gen(4), **F64), torch.randn(d, generator=gen(5), **F64)
    cov1, cov2 = q @ torch.diag(a) @ q.T, q @ torch.diag(b) @ q.T
    exact_sq = (m1 - m2).square().sum() + (a.sqrt() - b.sqrt()).square().sum()
    torch.testing.assert_close(metrics.gaussian_w2(m1, cov1, m2, cov2, squared=True), exact_sq, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(metrics.gaussian_w2(m1, cov1, m2, cov2), exact_sq.sqrt(), rtol=1e-10, atol=1e-12)


def test_gaussian_w2_general_covariances_zero_on_equal_and_symmetric():
    d = 8
    m1, m2 = torch.randn(d, generator=gen(6), **F64), torch.randn(d, generator=gen(7), **F64)
    cov1, cov2 = random_spd(d, 8), random_spd(d, 9)
    w12, w21 = metrics.gaussian_w2(m1, cov1, m2, cov2), metrics.gaussian_w2(m2, cov2, m1, cov1)
    torch.testing.assert_close(w12, w21, rtol=1e-10, atol=0)
    # independent reference: tr (C1 C2)^(1/2) by scipy's general (non-symmetric) sqrtm
    cross = np.trace(scipy.linalg.sqrtm(cov1.numpy() @ cov2.numpy())).real
    ref = (m1 - m2).square().sum() + cov1.trace() + cov2.trace() - 2 * cross
    torch.testing.assert_close(w12**2, ref, rtol=1e-9, atol=0)
    # W2 near 0 carries sqrt(eps * tr C) of round-off
    assert metrics.gaussian_w2(m1, cov1, m1, cov1) < 1e-6
    # batched over a leading dimension, broadcast against one Gaussian
    covs = random_spd(d, 10, batch=(3,))
    batched = metrics.gaussian_w2(torch.zeros(3, d, **F64), covs, m2, cov2)
    single = torch.stack([metrics.gaussian_w2(torch.zeros(d, **F64), c, m2, cov2) for c in covs])
    torch.testing.assert_close(batched, single, rtol=1e-10, atol=1e-12)


# ---- sliced Wasserstein ------------------------------------------------------------------
def test_sliced_w2_in_one_dimension_approaches_exact_w2_at_rate_one_over_sqrt_n():
    # N(0, 1) vs N(1, 2^2): W2 = sqrt(1^2 + (2-1)^2). To first order the empirical W2 is the W2
    # of the fitted Gaussians, whose std is sqrt((5 + 2.5) / 2 / n) (delta method on the mean
    # and std differences), so the RMS error over seeds must track sigma_n.
    exact, seeds = math.sqrt(2.0), 16
    for n in (100, 1000, 10_000, 100_000):
        err = torch.stack([
            metrics.sliced_wasserstein(torch.randn(n, 1, generator=g, **F64), 1 + 2 * torch.randn(n, 1, generator=g, **F64))
            for g in map(gen, range(seeds))
        ]) - exact
        sigma_n = math.sqrt(3.75 / n)
        assert abs(err.mean()) < 4 * sigma_n / math.sqrt(seeds), (n, err.mean())
        assert 0.4 * sigma_n < err.square().mean().sqrt() < 2.0 * sigma_n, (n, err)


def test_sliced_w2_of_a_pure_shift_is_norm_over_sqrt_dim():
    # y = x + d projects to a 1-D shift by <theta, d>, so SW2^2 = mean_l <theta_l, d>^2 exactly,
    # whatever x is; over uniform directions E<u, d>^2 = |d|^2 / D and
    # Var <u, d>^2 = |d|^4 (2D - 2) / (D^2 (D + 2)).
    dim, projections = 4, 1024
    d = torch.tensor([1.5, -1.0, 0.5, 0.8], **F64)
    x1 = torch.randn(500, dim, generator=gen(0), **F64)
    x2 = 3 * torch.rand(2000, dim, generator=gen(1), **F64)
    sw1 = metrics.sliced_wasserstein(x1, x1 + d, projections=projections)
    sw2 = metrics.sliced_wasserstein(x2, x2 + d, projections=projections)
    torch.testing.assert_close(sw1, sw2, rtol=1e-10, atol=0)
    norm2 = d.square().sum()
    proj_std = norm2 * math.sqrt((2 * dim - 2) / (dim**2 * (dim + 2) * projections))
    assert abs(sw1**2 - norm2 / dim) < 4 * proj_std

    # independent samples of N(0, I) and N(d, I), along the same directions: the sample mean
    # difference delta ~ N(0, 2/n I) adds about 2 <d, delta> / D (std 2 |d| sqrt(2/n) / D) to the
    # pure-shift value, and the shapes add the two-sample floor
    n = 4000
    x = torch.randn(n, dim, generator=gen(2), **F64)
    y = torch.randn(n, dim, generator=gen(3), **F64) + d
    sw2_sq = metrics.sliced_wasserstein(x, y, projections=projections) ** 2
    floor = metrics.two_sample_floor(
        lambda a, b: metrics.sliced_wasserstein(a, b, projections=projections) ** 2,
        lambda k, g: torch.randn(k, dim, generator=g, **F64), n, repeats=5, generator=gen(4),
    )
    cross_std = 2 * norm2.sqrt() * math.sqrt(2 / n) / dim
    tol = 4 * cross_std + floor.mean + 4 * floor.std
    assert abs(sw2_sq - sw1**2) < tol, (sw2_sq, sw1**2, tol)


def test_sliced_wasserstein_unequal_counts_is_exact():
    x = torch.randn(300, 1, generator=gen(0), **F64)
    y = 2 * torch.randn(200, 1, generator=gen(1), **F64) + 1
    ref = scipy.stats.wasserstein_distance(x[:, 0].numpy(), y[:, 0].numpy())
    torch.testing.assert_close(metrics.sliced_wasserstein(x, y, p=1), torch.tensor(ref, **F64), rtol=1e-12, atol=0)
    # an empirical measure is unchanged by repeating its points
    x3, y3 = torch.randn(150, 3, generator=gen(2), **F64), torch.randn(50, 3, generator=gen(3), **F64)
    for p in (1, 2, 3.5):
        torch.testing.assert_close(
            metrics.sliced_wasserstein(x3, y3, p=p), metrics.sliced_wasserstein(x3, y3.repeat(3, 1), p=p),
            rtol=1e-12, atol=0,
        )


def test_sliced_wasserstein_is_deterministic_symmetric_and_zero_on_equal_sets():
    x = torch.randn(400, 3, generator=gen(0))
    y = torch.randn(400, 3, generator=gen(1)) + 0.5
    assert metrics.sliced_wasserstein(x, y) == metrics.sliced_wasserstein(x, y)
    torch.testing.assert_close(metrics.sliced_wasserstein(x, y), metrics.sliced_wasserstein(y, x))
    assert metrics.sliced_wasserstein(x, x[torch.randperm(400, generator=gen(2))]) == 0
    assert metrics.sliced_wasserstein(x, y).dtype == torch.float32
    other = metrics.sliced_wasserstein(x, y, generator=gen(5))
    assert other != metrics.sliced_wasserstein(x, y) and abs(other - metrics.sliced_wasserstein(x, y)) < 0.05


# ---- MMD and energy distance -------------------------------------------------------------
def test_mmd_matches_closed_form_for_shifted_isotropic_gaussians():
    # E exp(-|Z|^2 / (2h^2)) for Z ~ N(delta, 2 s^2 I_D) is (1 + 2s^2/h^2)^(-D/2) exp(-|delta|^2 / (2(h^2 + 2s^2))),
    # so MMD^2 = 2 (1 + 2s^2/h^2)^(-D/2) (1 - exp(-|d|^2 / (2(h^2 + 2s^2)))) for N(0, s^2 I) vs N(d, s^2 I)
    # mean over 16 seeds within 5 standard errors (t with 15 dof: p ~ 2e-4 per check)
    dim, s, n, seeds = 2, 1.0, 500, 16
    for h in (0.5, 2.0):
        for shift in (0.0, 0.5, 1.0):
            d = torch.tensor([shift, 0.0], **F64)
            exact = 2 * (1 + 2 * s**2 / h**2) ** (-dim / 2) * (1 - math.exp(-shift**2 / (2 * (h**2 + 2 * s**2))))
            vals = torch.stack([
                metrics.mmd(s * torch.randn(n, dim, generator=g, **F64), s * torch.randn(n, dim, generator=g, **F64) + d, h)
                for g in map(gen, range(seeds))
            ])
            assert abs(vals.mean() - exact) < 5 * vals.std() / math.sqrt(seeds), (h, shift, vals, exact)
    # a list of bandwidths sums the kernels, so the estimates add
    x, y = torch.randn(300, 2, generator=gen(0), **F64), torch.randn(300, 2, generator=gen(1), **F64) + 0.3
    torch.testing.assert_close(metrics.mmd(x, y, [0.5, 2.0]), metrics.mmd(x, y, 0.5) + metrics.mmd(x, y, 2.0))


def test_median_bandwidth_is_median_pairwise_distance():
    x, y = torch.randn(60, 3, generator=gen(0), **F64), torch.randn(40, 3, generator=gen(1), **F64) + 1
    pooled = torch.cat([x, y]).numpy()
    ref = np.median(scipy.spatial.distance.pdist(pooled))
    torch.testing.assert_close(metrics.median_bandwidth(x, y), torch.tensor(ref, **F64))
    torch.testing.assert_close(metrics.mmd(x, y), metrics.mmd(x, y, float(ref)))


def _energy_closed_form_1d(shift, s):
    # X - Y ~ N(shift, 2 s^2): E|X - Y| is the folded-normal mean; E|X - X'| the same at shift 0
    sig = s * math.sqrt(2)
    folded = sig * math.sqrt(2 / math.pi) * math.exp(-shift**2 / (2 * sig**2)) + shift * math.erf(shift / (sig * math.sqrt(2)))
    return 2 * folded - 2 * sig * math.sqrt(2 / math.pi)


def test_energy_distance_matches_closed_form_for_shifted_1d_gaussians():
    s, n, seeds = 0.7, 1000, 16  # 5 standard errors, as for MMD
    for shift in (0.0, 0.3, 1.0, 3.0):
        vals = torch.stack([
            metrics.energy_distance(s * torch.randn(n, generator=g, **F64), s * torch.randn(n, generator=g, **F64) + shift)
            for g in map(gen, range(seeds))
        ])
        exact = _energy_closed_form_1d(shift, s)
        assert abs(vals.mean() - exact) < 5 * vals.std() / math.sqrt(seeds), (shift, vals, exact)


def test_energy_distance_is_scipys_with_unbiased_self_terms():
    x, y = torch.randn(300, **F64, generator=gen(0)), 1.5 * torch.randn(200, **F64, generator=gen(1)) + 0.4
    n, m = 300, 200
    # scipy returns sqrt(2 A - B_V - C_V) with V-statistics B_V = (n-1)/n B_U, C_V = (m-1)/m C_U
    b_u = torch.pdist(x[:, None]).sum() * 2 / (n * (n - 1))
    c_u = torch.pdist(y[:, None]).sum() * 2 / (m * (m - 1))
    v = scipy.stats.energy_distance(x.numpy(), y.numpy()) ** 2
    expected = v + (n - 1) / n * b_u + (m - 1) / m * c_u - b_u - c_u
    torch.testing.assert_close(metrics.energy_distance(x, y), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("metric", ["mmd", "energy_distance"])
def test_unbiased_metrics_are_zero_on_average_for_one_distribution(metric):
    ring = GaussianMixture.ring()
    fn = getattr(metrics, metric)
    repeats = 16
    floor = metrics.two_sample_floor(fn, ring.sample, n=400, repeats=repeats, generator=gen(0))
    assert abs(floor.mean) < 4 * floor.std / math.sqrt(repeats)
    assert (floor.values < 0).any() and (floor.values > 0).any()  # unbiased: spread around 0
    shifted = fn(ring.sample(400, gen(1)), ring.sample(400, gen(2)) + torch.tensor([0.6, 0.0]))
    assert shifted > floor.mean + 4 * floor.std


# ---- Frechet distance --------------------------------------------------------------------
def test_frechet_distance_is_squared_gaussian_w2_of_the_empirical_fits():
    mix = GaussianMixture.random(dim=6, components=3, seed=1)
    x = mix.sample(500, gen(0), dtype=torch.float64)
    y = mix.sample(400, gen(1), dtype=torch.float64) * 1.2 + 0.1
    fits = [(torch.from_numpy(a.mean(0)), torch.from_numpy(np.cov(a, rowvar=False))) for a in (x.numpy(), y.numpy())]
    expected = metrics.gaussian_w2(*fits[0], *fits[1]) ** 2
    torch.testing.assert_close(metrics.frechet_distance(x, y), expected, rtol=1e-10, atol=1e-12)
    # (N, ...) data is flattened
    torch.testing.assert_close(metrics.frechet_distance(x.reshape(500, 2, 3), y.reshape(400, 2, 3)), expected)


def test_frechet_distance_feature_extractor_invariances():
    x = torch.randn(500, 4, generator=gen(0), **F64)
    y = 0.8 * torch.randn(600, 4, generator=gen(1), **F64) + torch.tensor([0.5, 0.0, -0.2, 0.1], **F64)
    plain = metrics.frechet_distance(x, y)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=gen(2), **F64))
    isometry = lambda a: a @ q.T + 3.0  # rotations and translations leave W2 unchanged
    torch.testing.assert_close(metrics.frechet_distance(x, y, isometry), plain, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(metrics.frechet_distance(x, y, lambda a: 2.5 * a), 2.5**2 * plain)
    torch.testing.assert_close(metrics.frechet_distance(x, y, isometry, batch_size=64), plain, rtol=1e-10, atol=1e-12)
    # one feature: the 1-D closed form on sample means and (unbiased) stds
    first = metrics.frechet_distance(x, y, lambda a: a[:, 0])
    expected = (x[:, 0].mean() - y[:, 0].mean()) ** 2 + (x[:, 0].std() - y[:, 0].std()) ** 2
    torch.testing.assert_close(first, expected, rtol=1e-10, atol=1e-12)
    # the extractor sees the samples unflattened
    images = x.reshape(500, 1, 2, 2)
    torch.testing.assert_close(
        metrics.frechet_distance(images, y.reshape(600, 1, 2, 2), lambda a: a.mean(dim=(1, 2))), 
        metrics.frechet_distance(x.reshape(500, 2, 2).mean(1), y.reshape(600, 2, 2).mean(1)),
    )


# ---- all metrics together ----------------------------------------------------------------
def test_all_metrics_increase_with_shift_and_exceed_the_floor():
    ring = GaussianMixture.ring()
    n = 1000
    x, y = ring.sample(n, gen(0), dtype=torch.float64), ring.sample(n, gen(1), dtype=torch.float64)
    bandwidth = metrics.median_bandwidth(x)  # fixed, so that values are comparable across shifts
    fns = {
        "sliced_w2": metrics.sliced_wasserstein,
        "mmd": functools.partial(metrics.mmd, bandwidth=bandwidth),
        "mmd_median": metrics.mmd,
        "energy": metrics.energy_distance,
        "frechet": metrics.frechet_distance,
    }
    shifts = torch.tensor([0.0, 0.25, 0.5, 1.0, 2.0], **F64)
    direction = torch.tensor([0.6, 0.8], **F64)
    for name, fn in fns.items():
        values = torch.stack([fn(x, y + s * direction) for s in shifts])
        assert (values.diff() > 0).all(), (name, values)
        floor = metrics.two_sample_floor(fn, functools.partial(ring.sample, dtype=torch.float64), n, repeats=4,
                                         generator=gen(2))
        assert (values[2:] > floor.mean + 4 * floor.std).all(), (name, values, floor)


def test_two_sample_floor_is_reproducible_and_accepts_a_mixture():
    ring = GaussianMixture.ring()
    a = metrics.two_sample_floor(metrics.sliced_wasserstein, ring, n=200, repeats=3, generator=gen(0))
    b = metrics.two_sample_floor(metrics.sliced_wasserstein, ring.sample, n=200, repeats=3, generator=gen(0))
    assert a.values.shape == (3,) and torch.equal(a.values, b.values)
    torch.testing.assert_close(a.mean, a.values.mean())
    torch.testing.assert_close(a.std, a.values.std())
    assert (a.values > 0).all()  # SW is biased upwards: a positive floor
    assert metrics.two_sample_floor(metrics.sliced_wasserstein, ring, n=200, repeats=3).mean == a.mean  # default seed 0


def test_metrics_are_exported():
    assert sd.metrics is metrics
    assert set(metrics.__all__) >= {"sliced_wasserstein", "mmd", "energy_distance", "gaussian_w2",
                                    "frechet_distance", "two_sample_floor"}


# ---- bad inputs --------------------------------------------------------------------------
X = torch.randn(10, 3)
BAD = [
    (lambda: metrics.mmd(X, torch.randn(10, 4)), "same number of features D"),
    (lambda: metrics.energy_distance(X, torch.randn(1, 3)), "y must hold N >= 2 samples; got N = 1"),
    (lambda: metrics.sliced_wasserstein(torch.tensor([[float("nan")] * 3] * 4), X), "x must be finite; got a tensor with NaN or inf"),
    (lambda: metrics.frechet_distance(X, X.clone().fill_(float("inf"))), "y must be finite; got a tensor with NaN or inf"),
    (lambda: metrics.sliced_wasserstein(X, X, projections=0), "projections must be an integer >= 1; got 0"),
    (lambda: metrics.sliced_wasserstein(X, X, projections=2.5), "projections must be an integer >= 1; got 2.5"),
    (lambda: metrics.sliced_wasserstein(X, X, p=0.5), "p must be a finite number >= 1; got 0.5"),
    (lambda: metrics.mmd(X, X, bandwidth=-1.0),
     "bandwidth must be None, a finite number > 0 or a non-empty sequence of them; got -1.0"),
    (lambda: metrics.mmd(X, X, bandwidth=[]), r"bandwidth must be None, .*; got \[\]"),
    (lambda: metrics.mmd(torch.zeros(10, 3), torch.zeros(10, 3)),
     "bandwidth must be a number > 0 given explicitly .*the median heuristic gives 0.*; got None"),
    (lambda: metrics.mmd(torch.tensor(1.0), X), "x must have shape"),
    (lambda: metrics.gaussian_w2(torch.zeros(3), torch.eye(2), torch.zeros(3), torch.eye(3)), "cov1 must have shape"),
    (lambda: metrics.gaussian_w2(torch.zeros(2), torch.eye(2), torch.zeros(3), torch.eye(3)), "mean1 and mean2"),
    (lambda: metrics.gaussian_w2(torch.zeros(2), torch.eye(2), torch.zeros(2), torch.tensor([[1.0, 0.5], [0.0, 1.0]])),
     r"cov2 must be symmetric .*; got 'max \|C - C\^T\| = 0.5'"),
    (lambda: metrics.gaussian_w2(torch.zeros(2), torch.diag(torch.tensor([1.0, -1.0])), torch.zeros(2), torch.eye(2)),
     "cov1 must be positive semi-definite; got 'smallest eigenvalue -1'"),
    (lambda: metrics.frechet_distance(X, X, features=lambda a: a[:5]), "features must map"),
    (lambda: metrics.frechet_distance(X, torch.randn(10, 4), features=lambda a: a), "features\\(x\\) and features\\(y\\)"),
    (lambda: metrics.frechet_distance(X, X, batch_size=0), "batch_size must be an integer >= 1; got 0"),
    (lambda: metrics.two_sample_floor(metrics.mmd, GaussianMixture.ring(), n=1), "n must be an integer >= 2; got 1"),
    (lambda: metrics.two_sample_floor(metrics.mmd, GaussianMixture.ring(), n=10, repeats=1),
     "repeats must be an integer >= 2; got 1"),
    (lambda: metrics.two_sample_floor(metrics.mmd, "ring", n=10), "sampler must be a callable .*; got 'ring'"),
    (lambda: metrics.frechet_distance(X, X, features=3), "features must be a callable or None; got 3"),
    (lambda: metrics.mmd(torch.zeros(10, 0), torch.zeros(10, 0)),
     r"x must be samples with at least one feature; got \(10, 0\)"),
]


@pytest.mark.parametrize("call,message", BAD, ids=[m for _, m in BAD])
def test_bad_inputs_raise_value_error_naming_the_parameter(call, message):
    with pytest.raises(ValueError, match=message):
        call()
