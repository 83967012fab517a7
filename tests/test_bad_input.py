"""Bad calls to the front door are refused before any work, naming the parameter, the accepted
values and what was given (issue 16 grows this file)."""
import pytest
import torch

import scoresde as sd
from scoresde.data.problems import get_problem

MODEL = get_problem("ring2d").score_model(sd.VPSDE())


@pytest.mark.parametrize("kwargs, match", [
    (dict(shape=(0, 2)), r"shape\[0\] must be an integer >= 1; got 0"),
    (dict(shape=(4, -2)), r"shape\[1\] must be an integer >= 1; got -2"),
    (dict(shape=(4, 2.0)), r"shape\[1\] must be an integer >= 1; got 2.0"),
    (dict(shape="42"), r"shape must be a sequence \(B, \*data_shape\) of integers >= 1; got '42'"),
    (dict(shape=(4, 2), dtype=torch.int64), "dtype must be None or a real floating-point torch.dtype.*; got torch.int64"),
    (dict(shape=(4, 2), dtype=torch.complex64), "dtype must be None or a real floating-point.*; got torch.complex64"),
    (dict(x_T=[[0.0, 0.0]]), "x_T must be a real floating-point tensor.*; got 'list'"),
    (dict(x_T=torch.zeros(4, 2, dtype=torch.long)), "x_T must be a real floating-point tensor.*; got 'torch.int64 tensor'"),
    (dict(shape=(4, 2), generator=0), "generator must be None or a torch.Generator; got 'int'"),
    (dict(shape=(4, 2), callback="print"), "callback must be None or a callable; got 'str'"),
    (dict(shape=(4, 2), steps=float("inf")), "steps must be an integer >= 1; got inf"),
    (dict(shape=(4, 2), steps=2.5), "steps must be an integer >= 1; got 2.5"),
])
def test_sample_refuses_bad_types(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sd.sample(MODEL, **kwargs)


def test_sample_refuses_a_plain_function_as_model():
    with pytest.raises(ValueError, match="model must be a scoresde.ScoreModel .*; got 'function'"):
        sd.sample(lambda x, t: -x, sd.VPSDE(), shape=(4, 2))


# ---- constructors and functions outside the solvers: one message shape ------------------------
# Each case: the call, and a regex naming the parameter, the accepted values and what was given.
from scoresde import interop, metrics, schedules, tuning  # noqa: E402
from scoresde._checks import ArgumentError  # noqa: E402
from scoresde.data import GaussianMixture  # noqa: E402
from scoresde.guidance import Classifier, ClassifierFree  # noqa: E402
from scoresde.likelihood import divergence  # noqa: E402
from scoresde.losses import dsm_loss  # noqa: E402

X = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
ALPHAS_CUMPROD = torch.linspace(0.99, 0.01, 10, dtype=torch.float64)
LABELLED = sd.ScoreModel(sd.nets.MLP(2, hidden=16, depth=1, num_classes=3), sd.VPSDE())

ARGUMENT_ERRORS = [
    # string numbers and wrong types
    (lambda: sd.VPSDE(beta_max="20"), r"beta_max must be a finite number; got '20'"),
    (lambda: sd.ScoreModel(lambda x, t: x, sd.VPSDE(), sigma_data="0.5"), r"sigma_data must be a finite number > 0; got '0.5'"),
    (lambda: sd.ScoreModel(3, sd.VPSDE()), r"net must be a callable net\(x, t_in, \*\*cond\).*; got 'int'"),
    (lambda: GaussianMixture.ring(modes=2.5), r"modes must be an integer >= 1; got 2.5"),
    (lambda: GaussianMixture.ring(radius="1"), r"radius must be a finite number; got '1'"),
    (lambda: GaussianMixture.ring(std=0), r"std must be a finite number > 0; got 0.0"),
    (lambda: GaussianMixture.gaussian(0), r"dim must be an integer >= 1; got 0"),
    (lambda: GaussianMixture.gaussian(2, std=-1.0), r"std must be a finite number > 0 or 2 of them; got -1.0"),
    (lambda: GaussianMixture.random(2, 2, seed="a"), r"seed must be an integer >= 0; got 'a'"),
    (lambda: GaussianMixture("ab", [[0.0, 0.0]], [[[1.0, 0], [0, 1.0]]]), r"weights must be real numbers of shape \(K,\); got 'ab'"),
    (lambda: GaussianMixture([1.0], torch.zeros(1, 0), torch.zeros(1, 0, 0)), r"means must be a \(K, D\) table with D >= 1.*; got \(1, 0\)"),
    (lambda: GaussianMixture.ring().sample(-1), r"n must be an integer >= 0; got -1"),
    (lambda: GaussianMixture.ring().sample(4, generator=0), r"generator must be None or a torch.Generator; got 'int'"),
    (lambda: GaussianMixture.ring().sample(4, dtype=torch.int64), r"dtype must be a real floating-point torch.dtype.*; got torch.int64"),
    (lambda: GaussianMixture.ring().score([[0.0, 0.0]], 0.5, sd.VPSDE()), r"x must be a real floating-point tensor \(B, 2\); got 'list'"),
    (lambda: sd.data.two_moons(5, noise=-1), r"noise must be a finite number >= 0; got -1.0"),
    (lambda: sd.data.swiss_roll(5, noise="0.1"), r"noise must be a finite number >= 0; got '0.1'"),
    (lambda: sd.data.checkerboard(5, dtype=torch.int64), r"dtype must be a real floating-point torch.dtype.*; got torch.int64"),
    # SDEs: float64 range of alpha and sigma/alpha, tables
    (lambda: sd.VPSDE(T=100), r"T must be a finite number in \(0, 8.43036\] for beta_min=0.1, beta_max=20 .*overflows float64.*; got 100"),
    (lambda: sd.SubVPSDE(beta_max=1e6), r"T must be a finite number in \(0, 0.0376297\] for beta_min=0.1, beta_max=1e\+06.*; got 1.0"),
    (lambda: sd.VPSDE(t_eps=1e-320), r"t_eps must be a finite number in \[3.3\d*e-307, T\).*; got 1e-320"),
    (lambda: sd.VESDE(sigma_max=1e300), r"sigma_max must be a finite number in \[.*e-154, .*e\+153\].*; got 1e\+300"),
    (lambda: sd.EDMSDE(sigma_min=1e-200), r"sigma_min must be a finite number in \[.*e-154, .*e\+153\].*; got 1e-200"),
    (lambda: sd.DiscreteVPSDE(ALPHAS_CUMPROD.reshape(2, 5)),
     r"alphas_cumprod must be a 1-D sequence or tensor of real numbers; got 'a torch.float64 tensor of shape \(2, 5\)'"),
    (lambda: sd.DiscreteVPSDE.from_betas(torch.full((2, 5), 0.1)), r"betas must be a 1-D sequence or tensor of real numbers; got .*\(2, 5\)"),
    (lambda: sd.VPSDE.from_betas([[1e-4, 0.02]]), r"betas must be a 1-D sequence or tensor of real numbers; got \[\[0.0001, 0.02\]\]"),
    (lambda: sd.DiscreteVPSDE("abc"), r"alphas_cumprod must be a 1-D sequence or tensor of real numbers; got 'abc'"),
    (lambda: sd.DiscreteVPSDE([0.5, 1e-320]), r"alphas_cumprod must be values >= 3.31e-308 .*; got 'a minimum of 1e-320'"),
    (lambda: sd.VPSDE.from_betas(torch.linspace(1e-4, 0.02, 10), rtol="a"), r"rtol must be a finite number >= 0; got 'a'"),
    # schedules
    (lambda: schedules.karras(sd.VPSDE(), 10, rho=1e-3), r"rho must be a finite number in \[0.1, 1000\]; got 0.001"),
    (lambda: schedules.karras(sd.VPSDE(), 10, rho=float("inf")), r"rho must be a finite number in \[0.1, 1000\]; got inf"),
    (lambda: schedules.uniform(sd.VPSDE(), 10**7), r"steps must be an integer in \[1, 1000000\] \(MAX_STEPS\); got 10000000"),
    (lambda: schedules.logsnr(sd.VPSDE(), 2.5), r"steps must be an integer >= 1; got 2.5"),
    (lambda: schedules.uniform(sd.VPSDE(), 5, t_end="0.1"), r"t_end must be a finite number in \(0, 1\); got '0.1'"),
    (lambda: schedules.uniform("vp", 5), r"sde must be a scoresde.SDE; got 'str'"),
    (lambda: schedules.validate(sd.VPSDE(), "abc"), r"schedule must be a 1-D list of at least 2 times.*; got 'abc'"),
    (lambda: schedules.validate(sd.VPSDE(), [1.0, 0.5, 0.7]), r"schedule must be .*strictly decreasing.*; got 'times 1 and 2: 0.5, 0.7'"),
    (lambda: schedules.get_schedule(5, sd.VPSDE()), r"schedule must be a name \(uniform, quadratic, logsnr, karras\), .*; got 5"),
    (lambda: schedules.get_schedule([1.0, 0.5], sd.VPSDE(), steps=3), r"steps must be None or the given schedule's 1 steps .*; got 3"),
    (lambda: schedules.get_schedule("uniform", sd.VPSDE(), 3, rho=7), r"schedule options must be rho \(for schedule='karras'\) or none; got .*rho"),
    # losses, likelihood
    (lambda: dsm_loss(MODEL, torch.full((4, 2), float("nan"))), r"x0 must be finite; got a tensor with NaN or inf values"),
    (lambda: dsm_loss(MODEL, [[0.0, 0.0]]), r"x0 must have shape \(B, \*shape\) with B >= 1 and a real floating-point dtype; got list"),
    (lambda: dsm_loss(MODEL, torch.zeros(4, 2, dtype=torch.long)), r"x0 must have .*real floating-point dtype; got torch.int64 tensor"),
    (lambda: dsm_loss(MODEL, X, reduce="yes"), r"reduce must be True or False; got 'yes'"),
    (lambda: dsm_loss(MODEL, X, generator=1), r"generator must be None or a torch.Generator; got 'int'"),
    (lambda: sd.losses.sample_time(sd.VPSDE(), 2.5), r"n must be an integer >= 0; got 2.5"),
    (lambda: sd.log_likelihood(lambda x, t: x, X), r"model must be a scoresde.ScoreModel .*; got 'function'"),
    (lambda: sd.log_likelihood(MODEL, [[0.0, 0.0]]), r"x must be a real floating-point tensor of shape \(B, \*data_shape\); got 'list'"),
    (lambda: sd.log_likelihood(MODEL, X, rtol="1e-3"), r"rtol must be a finite number > 0; got '1e-3'"),
    (lambda: sd.log_likelihood(MODEL, X, trace="hutchinson", generator=0), r"generator must be None or a torch.Generator; got 'int'"),
    (lambda: sd.bits_per_dim(MODEL, X, levels=2.5), r"levels must be an integer >= 2; got 2.5"),
    (lambda: sd.bits_per_dim(MODEL, torch.zeros(2, 2, dtype=torch.long), dtype=torch.int64),
     r"dtype must be None or a real floating-point torch.dtype.*; got torch.int64"),
    (lambda: sd.bits_per_dim(MODEL, torch.zeros(2, 2, dtype=torch.complex64)), r"x must be a real .*tensor.*; got 'a torch.complex64 tensor"),
    (lambda: sd.likelihood.decode(MODEL, [[0.0, 0.0]]), r"z must be a real floating-point tensor of shape \(B, \*data_shape\); got 'list'"),
    (lambda: divergence(MODEL, X, t="0.5"), r"t must be a finite number in \[0, 1\]; got '0.5'"),
    # metrics
    (lambda: metrics.sliced_wasserstein(X, X, generator=3), r"generator must be None or a torch.Generator; got 'int'"),
    (lambda: metrics.gaussian_w2(torch.zeros(2), torch.eye(2), torch.zeros(2), torch.eye(2), squared="no"), r"squared must be True or False; got 'no'"),
    (lambda: metrics.gaussian_w2("a", torch.eye(2), torch.zeros(2), torch.eye(2)), r"mean1 must be a real tensor of shape \(\.\.\., D\); got 'a'"),
    (lambda: metrics.gaussian_w2(torch.zeros(2, dtype=torch.complex64), torch.eye(2), torch.zeros(2), torch.eye(2)),
     r"mean1 must be a real tensor of shape \(\.\.\., D\); got 'a torch.complex64 tensor'"),
    (lambda: metrics.mmd(X.bool(), X), r"x must be a real tensor of shape \(N, \.\.\.\); got 'dtype torch.bool'"),
    # guidance
    (lambda: ClassifierFree(LABELLED, torch.tensor([0, 1]), scale="2"), r"scale must be a finite number >= 0; got '2'"),
    (lambda: ClassifierFree(LABELLED, torch.tensor([0, 1]), scale=float("inf")), r"scale must be a finite number >= 0; got inf"),
    (lambda: ClassifierFree(LABELLED, torch.tensor([], dtype=torch.long), scale=2), r"cond must be a tensor: .*B >= 1; got 'a torch.int64 tensor of shape \(0,\)'"),
    (lambda: ClassifierFree(LABELLED, torch.tensor([True, False]), scale=2), r"cond must be a tensor: .*; got 'a torch.bool tensor of shape \(2,\)'"),
    (lambda: ClassifierFree(LABELLED, torch.tensor([0, 1]), scale=2, null=[3, 3]), r"null must be None or a tensor matching cond.*; got 'list'"),
    (lambda: Classifier(MODEL, lambda x, t: x, torch.tensor([True]), scale=1), r"y must be an integer tensor of shape \(B,\), B >= 1; got torch.bool"),
    # interop
    (lambda: interop.from_denoiser(lambda x, s: x, sigma_min="0.1"), r"sigma_min must be a finite number > 0; got '0.1'"),
    (lambda: interop.from_diffusers(lambda x, t: x, torch.full((2, 5), 0.01)),
     r"scheduler_or_betas must be a diffusers scheduler with `alphas_cumprod` or a 1-D sequence of betas; got .*\(2, 5\)"),
    (lambda: interop.SolverScheduler(ALPHAS_CUMPROD, schedule="foo"), r"schedule must be one of: uniform, quadratic, logsnr, karras; got 'foo'"),
    (lambda: interop.SolverScheduler(ALPHAS_CUMPROD, lower_order_final="no"), r"lower_order_final must be True, False or an integer >= 0; got 'no'"),
    (lambda: interop.SolverScheduler(ALPHAS_CUMPROD).set_timesteps(timesteps="abc"), r"timesteps must be finite values in \[0, 9\].*; got 'abc'"),
    (lambda: interop.SolverScheduler(ALPHAS_CUMPROD).set_timesteps(3, timesteps=[5, 2]), r"exactly one of num_inference_steps or timesteps must be given; got both"),
    # tuning
    (lambda: tuning.optimize(lambda x, t: x, sde=sd.VPSDE(), shape=(16, 2)), r"model must be a scoresde.ScoreModel .*; got 'function'"),
    (lambda: tuning.optimize(MODEL, shape=(16, 2), max_evals=0), r"max_evals .* must be an integer >= 1; got 0"),
    (lambda: tuning.optimize(MODEL, shape=(16, -2)), r"shape\[1\] must be an integer >= 1; got -2"),
    (lambda: tuning.optimize(MODEL, shape="16,2"), r"shape must be a sequence of integers >= 1, \(B, \*data_shape\) with B >= 16; got '16,2'"),
    (lambda: tuning.optimize(MODEL, shape=(16, 2), generator=1), r"generator must be None or a torch.Generator; got 'int'"),
    (lambda: tuning.optimize(MODEL, shape=(16, 2), dtype=torch.int64), r"dtype must be a real floating-point torch.dtype.*; got torch.int64"),
    (lambda: tuning.optimize(MODEL, x_T=torch.zeros(16, 2, dtype=torch.long)), r"x_T must be a real floating-point tensor .*; got 'a torch.int64 tensor"),
    (lambda: tuning.optimize(MODEL, shape=(16, 2), reference=[1.0]), r"reference must be None or a floating-point tensor .*; got 'list'"),
    (lambda: tuning.optimize(MODEL, shape=(16, 2), reference_options=[1]), r"reference_options must be None or a mapping.*; got 'list'"),
    (lambda: tuning.optimize(MODEL, sde=sd.VESDE(), shape=(16, 2)), r"sde must be the model's sde VPSDE.*; got VESDE"),
    # networks
    (lambda: sd.nets.MLP(2, fourier_scale="16"), r"fourier_scale must be a finite number > 0; got '16'"),
    (lambda: sd.nets.UNet(channel_mults=2), r"channel_mults must be a non-empty sequence of integers >= 1; got 2"),
    (lambda: sd.nets.build_net("MLP", None), r"config must be a mapping of MLP's constructor arguments; got 'NoneType'"),
    (lambda: sd.nets.build_net("MLP", {"dim": 2, "width": 3}), r"config must be keys among MLP's constructor arguments \(dim, .*\); got 'unknown width'"),
]


@pytest.mark.parametrize("call, match", ARGUMENT_ERRORS, ids=[m[:60] for _, m in ARGUMENT_ERRORS])
def test_refused_naming_parameter_accepted_values_and_given(call, match):
    with pytest.raises(ValueError, match=match) as caught:
        call()
    assert " must " in str(caught.value) and "; got " in str(caught.value)


def test_refusals_are_argument_errors():
    # the checks module's own type (a ValueError), not an internal error a user cannot act on
    for call, _ in ARGUMENT_ERRORS:
        try:
            call()
        except ValueError as err:
            assert isinstance(err, ArgumentError) or type(err) is ValueError, repr(err)


@pytest.mark.parametrize("T", [1.0, 5.0, 8.43])
def test_vp_T_inside_the_bound_keeps_alpha_and_sigma_hat_finite(T):
    for sde in (sd.VPSDE(T=T), sd.SubVPSDE(T=T)):
        assert float(sde.alpha(T)) > 0 and torch.isfinite(sde.sigma_hat(T) ** 2)
        ts = schedules.karras(sde, 10)  # karras used to overflow at large T
        assert bool(torch.isfinite(ts).all()) and bool((ts[1:] < ts[:-1]).all())


@pytest.mark.parametrize("rho", [0.1, 1.0, 7.0, 1000.0])
@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE(), sd.EDMSDE(), sd.CosineVPSDE(), sd.SubVPSDE()], ids=repr)
def test_karras_grid_strictly_decreasing_over_the_accepted_rho(sde, rho):
    ts = schedules.karras(sde, 25, rho=rho)
    assert ts[0] == sde.T and ts[-1] == sde.t_eps
    assert bool((ts[1:] < ts[:-1]).all())


def test_karras_matches_the_power_form_where_it_does_not_overflow():
    edm = sd.EDMSDE()
    s_max, s_min = 80.0 ** (1 / 7), 0.002 ** (1 / 7)
    want = torch.linspace(s_max, s_min, 11, dtype=torch.float64) ** 7
    torch.testing.assert_close(schedules.karras(edm, 10), want, rtol=1e-12, atol=0)


def test_empty_sample_of_a_mixture_is_allowed():
    assert GaussianMixture.ring().sample(0).shape == (0, 2)
    assert sd.data.ring_mixture(0).shape == (0, 2)
