import pytest
import torch

import scoresde as sd
from conftest import interior_times


class Recorder(torch.nn.Module):
    """A 'network' that returns a fixed tensor and records its time input."""

    def __init__(self, out):
        super().__init__()
        self.out, self.seen_t = out, None

    def forward(self, x, t):
        self.seen_t = t
        return self.out


@pytest.mark.parametrize("prediction", sd.PREDICTIONS)
def test_conversions_round_trip_exactly(any_sde, prediction):
    """target(eps, x0) and to_eps_x0(target) are inverse; score, v and x0 agree with the
    definitions score = -eps/sigma, x = alpha x0 + sigma eps, v = alpha eps - sigma x0."""
    g = torch.Generator().manual_seed(0)
    t = interior_times(any_sde, n=6)
    x0 = torch.randn(6, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 3, generator=g, dtype=torch.float64)
    alpha, sigma = any_sde.alpha(t)[:, None], any_sde.sigma(t)[:, None]
    x = alpha * x0 + sigma * eps
    model = sd.ScoreModel(Recorder(None), any_sde, prediction=prediction)
    out = model.target(eps, x0, x, t)
    model.net.out = out
    eps_back, x0_back = model.to_eps_x0(out, x, t)
    torch.testing.assert_close(eps_back, eps, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x0_back, x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(model.score(x, t), -eps / sigma, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(model.v(x, t), alpha * eps - sigma * x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(model.x0(x, t), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(model.eps(x, t), eps, rtol=1e-9, atol=1e-9)
    assert model.nfe == 4
    assert model.reset_nfe() == 4 and model.nfe == 0


def test_time_inputs_the_network_sees():
    vp = sd.VPSDE()
    t = torch.tensor([0.2, 0.7], dtype=torch.float64)
    x = torch.zeros(2, 3, dtype=torch.float64)
    expected = {
        "t": t,
        "999t": 999 * t,
        "sigma": vp.sigma(t),
        "log_sigma": vp.log_sigma(t),
        "c_noise": 0.25 * torch.log(vp.sigma(t) / vp.alpha(t)),
    }
    for name, want in expected.items():
        net = Recorder(x)
        sd.ScoreModel(net, vp, prediction="eps", time_input=name)(x, t)
        torch.testing.assert_close(net.seen_t, want)
    net = Recorder(x)
    sd.ScoreModel(net, vp, prediction="eps", time_input=lambda t: 3 * t)(x, t)
    torch.testing.assert_close(net.seen_t, 3 * t)
    assert sd.ScoreModel(net, vp, prediction="edm").time_input == "c_noise"


def test_edm_preconditioning_matches_karras_on_edm_sde():
    """On EDMSDE (alpha = 1, sigma = t) D(x; sigma) = c_skip x + c_out F(c_in x, log(sigma)/4)."""
    sde, sd_data = sd.EDMSDE(), 0.5
    sigma = torch.tensor([0.1, 3.0], dtype=torch.float64)
    x = torch.randn(2, 4, dtype=torch.float64)
    seen = {}

    def net(x_in, t_in):
        seen["x_in"], seen["t_in"] = x_in, t_in
        return torch.ones_like(x_in)

    x0 = sd.ScoreModel(net, sde, prediction="edm", sigma_data=sd_data).x0(x, sigma)
    s = sigma[:, None]
    c_skip = sd_data**2 / (s**2 + sd_data**2)
    c_out = s * sd_data / (s**2 + sd_data**2).sqrt()
    c_in = 1 / (s**2 + sd_data**2).sqrt()
    torch.testing.assert_close(seen["x_in"], c_in * x)
    torch.testing.assert_close(seen["t_in"], sigma.log() / 4)
    torch.testing.assert_close(x0, c_skip * x + c_out)


def test_scalar_and_batched_time_agree_and_any_data_shape():
    mix = sd.data.GaussianMixture.random(dim=12, components=3, seed=0)
    model = mix.score_model(sd.VPSDE(), prediction="v")
    x = torch.randn(5, 12, dtype=torch.float64)
    torch.testing.assert_close(model.score(x, 0.3), model.score(x, torch.full((5,), 0.3, dtype=torch.float64)))
    images = sd.data.GaussianMixture(mix.weights, mix.means, mix.covariances, event_shape=(3, 2, 2))
    xi = x.reshape(5, 3, 2, 2)
    torch.testing.assert_close(images.score_model(sd.VPSDE()).score(xi, 0.3).reshape(5, 12), model.score(x, 0.3))


def test_module_parameters_are_registered():
    net = torch.nn.Linear(3, 3)
    model = sd.ScoreModel(lambda x, t: net(x), sd.VPSDE())
    assert len(list(model.parameters())) == 0
    model = sd.ScoreModel(torch.nn.Sequential(), sd.VPSDE())
    assert isinstance(model.net, torch.nn.Module)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prediction="noise"), "prediction must be one of: score, eps, x0, v, edm; got 'noise'"),
        (dict(time_input="1000t"), "time_input must be one of: t, 999t, sigma, log_sigma, c_noise; got '1000t'"),
        (dict(sigma_data=0.0), "sigma_data must be a finite number > 0; got 0.0"),
    ],
)
def test_bad_model_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sd.ScoreModel(lambda x, t: x, sd.VPSDE(), **kwargs)


def test_bad_sde_argument():
    with pytest.raises(ValueError, match="sde must be a scoresde.SDE; got 'vp'"):
        sd.ScoreModel(lambda x, t: x, "vp")


def test_bad_call_arguments():
    model = sd.ScoreModel(lambda x, t: x[:, :1], sd.VPSDE())
    with pytest.raises(ValueError, match="shape"):
        model.eps(torch.zeros(2, 3), 0.5)
    model = sd.ScoreModel(lambda x, t: x, sd.VPSDE())
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(B,\)"):
        model.eps(torch.zeros(2, 3), torch.full((3,), 0.5))
    with pytest.raises(ValueError, match="t must be times in"):
        model.eps(torch.zeros(2, 3), 2.0)
