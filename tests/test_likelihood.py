"""Log-likelihood through the probability-flow ODE against closed-form Gaussian-mixture densities."""
import math

import pytest
import torch

import scoresde as sd
from scoresde.data import GaussianMixture
from scoresde.likelihood import bits_per_dim, decode, divergence, encode, log_likelihood, round_trip_error

SDES = [sd.VPSDE(), sd.SubVPSDE(), sd.VESDE(), sd.EDMSDE()]
SDE_IDS = [type(s).__name__ for s in SDES]
PROBLEMS = {
    "gaussian": GaussianMixture.gaussian(2, mean=0.5, std=0.5),
    "gmm3d": GaussianMixture.random(dim=3, components=3, seed=0),
}
TIGHT = dict(rtol=1e-7, atol=1e-7)


def data(mix, n=6, seed=1):
    return mix.sample(n, torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_exact_trace_matches_closed_form(problem, sde):
    """With the exact density at T in place of the prior, the ODE reproduces log p_{t_eps}(x)
    to 1e-4 nats per dimension (measured ~1e-6 at rtol=atol=1e-7); with the prior, the gap is
    exactly the prior mismatch log N(z) - log p_T(z) (+- the same 1e-4)."""
    mix = PROBLEMS[problem]
    model = mix.score_model(sde)
    x = data(mix)
    res = log_likelihood(model, x, **TIGHT)
    exact = mix.log_prob_t(x, sde.t_eps, sde)
    exact_T = mix.log_prob_t(res.z, sde.T, sde)
    assert res.logp.shape == (6,) and res.z.shape == x.shape
    assert torch.allclose(res.logp, res.prior_logp + res.delta_logp)
    assert torch.allclose(res.prior_logp, sde.prior_logp(res.z))
    assert ((res.delta_logp + exact_T - exact).abs() / mix.dim).max() < 1e-4
    mismatch = res.prior_logp - exact_T
    assert ((res.logp - exact - mismatch).abs() / mix.dim).max() < 1e-4
    assert res.nfe > 0 and res.t_end == sde.t_eps


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_centred_data_within_1e3_nats_per_dim(sde):
    """For centred data the prior mismatch is negligible, so logp itself matches the closed
    form log p_{t_eps}(x) within 1e-3 nats per dimension."""
    mix = GaussianMixture.gaussian(2, mean=0.0, std=0.5)
    x = data(mix)
    res = log_likelihood(mix.score_model(sde), x, **TIGHT)
    assert ((res.logp - mix.log_prob_t(x, sde.t_eps, sde)).abs() / 2).max() < 1e-3


def test_other_t_end_and_prediction():
    """t_end is honoured (compared with log p at that time), and the parameterization does not matter."""
    sde, mix = sd.VPSDE(), PROBLEMS["gmm3d"]
    x = data(mix, n=4)
    for prediction in ("x0", "v", "edm"):
        res = log_likelihood(mix.score_model(sde, prediction=prediction), x, t_end=0.05, **TIGHT)
        ref = res.delta_logp + mix.log_prob_t(res.z, sde.T, sde)
        assert (ref - mix.log_prob_t(x, 0.05, sde)).abs().max() < 3e-4


def test_hutchinson_divergence_unbiased():
    """Mean of many single-probe estimates agrees with the exact divergence within 4 standard errors."""
    sde, mix = sd.VPSDE(), PROBLEMS["gmm3d"]
    model = mix.score_model(sde)
    x = data(mix, n=1).expand(4000, -1).clone()
    exact = divergence(model, x[:1], 0.3)
    for distribution in ("rademacher", "gaussian"):
        est = divergence(model, x, 0.3, trace="hutchinson", probe_distribution=distribution,
                         generator=torch.Generator().manual_seed(0))
        se = float(est.std()) / math.sqrt(est.numel())
        assert se > 0 and abs(float(est.mean()) - float(exact)) < 4 * se


def test_hutchinson_log_likelihood_unbiased():
    """The whole integral with probes fixed over the solve: mean over 300 draws within 4 SE of
    the exact-trace log-likelihood, for both probe types; more probes shrink the spread."""
    sde, mix = sd.VPSDE(), PROBLEMS["gmm3d"]
    model = mix.score_model(sde)
    x = data(mix, n=1).expand(300, -1).clone()
    exact = log_likelihood(model, x[:1], rtol=1e-6, atol=1e-6).logp
    for distribution in ("gaussian", "rademacher"):  # rademacher last: est is compared below
        est = log_likelihood(model, x, trace="hutchinson", probe_distribution=distribution, rtol=1e-6, atol=1e-6,
                             generator=torch.Generator().manual_seed(0)).logp
        se = float(est.std()) / math.sqrt(est.numel())
        assert abs(float(est.mean()) - float(exact)) < 4 * se
    est4 = log_likelihood(model, x[:100], trace="hutchinson", probes=4, rtol=1e-6, atol=1e-6,
                          generator=torch.Generator().manual_seed(1)).logp
    assert float(est4.std()) < float(est.std())


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.EDMSDE()], ids=["VPSDE", "EDMSDE"])
def test_round_trip(sde):
    """encode -> decode recovers x to the solver's tolerance: dopri5's local error control
    gives a global error of about 100x rtol = atol here (measured 1.4e-4 / 2.3e-4 at 1e-5 and
    1.0e-6 / 7.8e-7 at 1e-8 for VP / EDM), so the bound is 1000x, and it shrinks with the
    tolerance. encode's latent is the one log_likelihood integrates to."""
    mix = GaussianMixture.ring()
    model = mix.score_model(sde)
    x = data(mix, n=16)
    errors = []
    for tol in (1e-5, 1e-8):
        err = round_trip_error(model, x, rtol=tol, atol=tol)
        assert err.shape == (16,) and err.max() < 1000 * tol
        errors.append(float(err.max()))
    assert errors[1] < errors[0] / 30
    z = encode(model, x, rtol=1e-8, atol=1e-8)
    assert torch.allclose(z, log_likelihood(model, x, rtol=1e-8, atol=1e-8).z, rtol=1e-5, atol=1e-5 * sde.prior_std)
    assert (decode(model, z, rtol=1e-8, atol=1e-8) - x).abs().max() < 1e-5


def test_bits_per_dim_matches_exact_discrete_probability():
    """For a Gaussian marginal, the dequantized bound is within a small Jensen gap of the exact
    -log2 P(bin)/D (computed with the normal CDF), and above it on average. Integer and
    grid-scaled float inputs describe the same bins up to the convention documented."""
    sde = sd.VPSDE()
    mix = GaussianMixture.gaussian(4, mean=0.0, std=0.6)
    model = mix.score_model(sde)
    levels = 17
    k = torch.randint(4, 13, (8, 4), generator=torch.Generator().manual_seed(0))
    x = (2 * k / (levels - 1) - 1).double()  # digits convention: k / 8 - 1
    out = bits_per_dim(model, x, levels=levels, draws=8, generator=torch.Generator().manual_seed(1), rtol=1e-6, atol=1e-6)
    # exact probability of each centred bin under p_{t_eps} = N(0, alpha^2 0.36 + sigma^2) per dimension
    t = torch.tensor(sde.t_eps, dtype=torch.float64)
    std = (sde.alpha(t) ** 2 * 0.36 + sde.sigma(t) ** 2).sqrt()
    normal = torch.distributions.Normal(0.0, std)
    half = 1 / 16
    p = normal.cdf(x + half) - normal.cdf(x - half)
    exact_bpd = -p.log2().mean(1)
    gap = out.bpd - exact_bpd
    assert gap.mean() > -0.01 and gap.abs().max() < 0.05  # prior mismatch and dequant noise: small
    assert out.nfe > 0 and 0 < out.half_width < 1

    ints = k.to(torch.uint8)
    out8 = bits_per_dim(model, ints, levels=levels, draws=2, generator=torch.Generator().manual_seed(1),
                        dtype=torch.float64, rtol=1e-6, atol=1e-6)
    low = 2 * k.double() / levels - 1
    p8 = normal.cdf(low + 2 / levels) - normal.cdf(low)
    assert (out8.bpd + p8.log2().mean(1)).abs().max() < 0.05


def test_bits_per_dim_8bit_offset():
    """The 8-bit change of variables: bpd = -E log p(x~)/(D ln 2) + log2(128)."""
    sde = sd.VPSDE()
    mix = GaussianMixture.gaussian(3, 0.0, 0.5)
    model = mix.score_model(sde)
    k = torch.randint(100, 156, (4, 3), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    out = bits_per_dim(model, k, draws=1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    u = torch.rand(k.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    logp = log_likelihood(model, 2 * (k.double() + u) / 256 - 1).logp
    assert torch.allclose(out.bpd, -logp / (3 * math.log(2)) + 7, atol=1e-6)


# ---- bad input ------------------------------------------------------------------------------
def test_bad_input():
    sde, mix = sd.VPSDE(), GaussianMixture.ring()
    model = mix.score_model(sde)
    x = data(mix, n=4)
    with pytest.raises(ValueError, match=r"t_end must be a finite number in \(0, 1\); got 0.0"):
        log_likelihood(model, x, t_end=0.0)
    with pytest.raises(ValueError, match="t_end must be"):
        log_likelihood(model, x, t_end=-1e-3)
    with pytest.raises(ValueError, match="t_end must be"):
        encode(model, x, t_end=2.0)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="x must be finite"):
        log_likelihood(model, bad)
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="x must be finite"):
        encode(model, bad)
    with pytest.raises(ValueError, match="trace"):
        log_likelihood(model, x, trace="skilling")
    with pytest.raises(ValueError, match="probes"):
        log_likelihood(model, x, trace="hutchinson", probes=0)
    with pytest.raises(ValueError, match="method"):
        log_likelihood(model, x, method="euler")
    with pytest.raises(ValueError, match="sde"):
        log_likelihood(model, x, sde=sd.EDMSDE())
    with pytest.raises(ValueError, match="sde must be the model's sde"):
        log_likelihood(model, x, sde=sd.VPSDE(beta_max=19.0))
    log_likelihood(model, x[:1], sde=sd.VPSDE(), rtol=1e-3, atol=1e-3)  # an equal sde, not the same object
    with pytest.raises(ValueError, match="probe_distribution must be one of: rademacher, gaussian; got 'uniform'"):
        log_likelihood(model, x, trace="hutchinson", probe_distribution="uniform")


def test_renamed_keywords_name_their_replacement():
    """t_eps (now t_end, as in sample) and noise (now probe_distribution) fail, naming the new name."""
    sde, mix = sd.VPSDE(), GaussianMixture.ring()
    model = mix.score_model(sde)
    x = data(mix, n=2)
    for call in (lambda: log_likelihood(model, x, t_eps=0.01), lambda: encode(model, x, t_eps=0.01),
                 lambda: decode(model, x, t_eps=0.01), lambda: round_trip_error(model, x, t_eps=0.01),
                 lambda: bits_per_dim(model, x.clamp(-1, 1).mul(8).round().div(8), levels=17, t_eps=0.01)):
        with pytest.raises(ValueError, match="t_eps was renamed t_end"):
            call()
    with pytest.raises(ValueError, match="noise was renamed probe_distribution"):
        log_likelihood(model, x, trace="hutchinson", noise="gaussian")
    with pytest.raises(ValueError, match="noise was renamed probe_distribution"):
        divergence(model, x, 0.5, trace="hutchinson", noise="gaussian")
    with pytest.raises(TypeError, match="unexpected keyword argument 'tol'"):
        log_likelihood(model, x, tol=1e-3)
    with pytest.raises(AttributeError, match="t_eps was renamed t_end"):
        log_likelihood(model, x[:1], rtol=1e-3, atol=1e-3).t_eps


def test_bad_dequantization_input():
    model = GaussianMixture.gaussian(2, 0.0, 0.5).score_model(sd.VPSDE())
    with pytest.raises(ValueError, match="outside the declared range"):
        bits_per_dim(model, torch.tensor([[0.0, 1.5]]), levels=17)
    with pytest.raises(ValueError, match="outside the declared range"):
        bits_per_dim(model, torch.tensor([[0, 17]]), levels=17)
    with pytest.raises(ValueError, match="not on the grid"):
        bits_per_dim(model, torch.tensor([[0.01, 0.5]]), levels=17)
    with pytest.raises(ValueError, match="x must be finite"):
        bits_per_dim(model, torch.tensor([[float("nan"), 0.5]]), levels=17)


class _NoGradNet(torch.nn.Module):
    """0.1 x computed without a graph back to x, in three ways."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.scale = torch.nn.Parameter(torch.tensor(0.1))

    def forward(self, x, t):
        if self.how == "detached":
            return (0.1 * x).detach()
        if self.how == "input_detached":  # a graph through the parameters only
            return self.scale * x.detach()
        with torch.no_grad():
            return 0.1 * x


@pytest.mark.parametrize("how", ["no_grad", "detached", "input_detached"])
def test_non_differentiable_model(how):
    model = sd.ScoreModel(_NoGradNet(how), sd.VPSDE(), prediction="eps")
    x = data(GaussianMixture.ring(), n=2)
    with pytest.raises(ValueError, match="not differentiable"):
        log_likelihood(model, x)
    with pytest.raises(ValueError, match="not differentiable"):
        log_likelihood(model, x, trace="hutchinson")
    with pytest.raises(ValueError, match="not differentiable"):
        divergence(model, x, 0.5)
    assert encode(model, x, rtol=1e-3, atol=1e-3).shape == x.shape  # no trace: no gradient needed


# ---- command line -------------------------------------------------------------------------
def test_cli_nll_problem(capsys):
    from scoresde.cli import main

    assert main(["nll", "--problem", "gaussian", "--sde", "vp", "--n", "20", "--rtol", "1e-6", "--atol", "1e-6"]) == 0
    out = capsys.readouterr().out
    assert "nll exact" in out and "ODE" in out and "NFE" in out


def test_cli_nll_checkpoint(tmp_path, capsys):
    """bits/dim with an interval from a (barely trained) digits checkpoint; a missing file is one clear line."""
    from scoresde.cli import main

    torch.manual_seed(0)
    x, labels = sd.data.load_digits("train")
    model = sd.ScoreModel(sd.nets.UNet(base_channels=8, channel_mults=(1,), groups=4), sd.VPSDE(), prediction="eps")
    trainer = sd.Trainer(model, x[:64], batch_size=16, warmup_steps=1, progress=False, ckpt_dir=tmp_path)
    path = trainer.fit(2).save()
    for dtype in ("float64", "float32"):  # the model follows the data's dtype
        assert main(["nll", "--ckpt", str(path), "--n", "3", "--trace", "hutchinson", "--rtol", "1e-3", "--atol", "1e-3",
                     "--dtype", dtype]) == 0
    out = capsys.readouterr().out
    assert "bits/dim (95% CI)" in out and "n=3" in out
    assert main(["nll", "--ckpt", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
