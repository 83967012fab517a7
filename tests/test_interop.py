"""scoresde.interop against exact answers: the Gaussian-mixture oracle exposed in diffusers' and
k-diffusion's conventions, and diffusers' own DDIM / DPM-Solver++ / UniPC schedulers on the same
model."""
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import scoresde as sd
from scoresde.interop import SolverScheduler, from_denoiser, from_diffusers
from scoresde.solvers.dpm_v3 import model_statistics

import test_sde as generic_sde_tests

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (pip install scoresde[diffusers])")

N = 1000
BETAS = torch.linspace(1e-4, 0.02, N, dtype=torch.float64)  # DDPM's linear schedule
MIXTURE = sd.data.GaussianMixture.random(dim=4, components=3, seed=0)
TRAINED = [0, 1, 10, 250, 500, 998, 999]


def exact(x, alpha, sigma):
    """(eps, x0, score) of the mixture at x_t = alpha x0 + sigma eps; alpha, sigma of shape (B,)."""
    _, score, x0, _ = MIXTURE._component_terms(x, alpha, sigma, score=True, x0=True)
    return -sigma[:, None] * score, x0, score


def diffusers_oracle(alphas_cumprod, prediction_type, calls=None):
    """The mixture as a diffusers model: unet(x, timestep).sample in `prediction_type` at integer
    timesteps, computed from alphas_cumprod[timestep] alone (no scoresde SDE involved)."""
    ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)

    def unet(x, timestep):
        k = torch.as_tensor(timestep, dtype=torch.float64).expand(x.shape[0])
        if calls is not None:
            calls.append(k.clone())
        index = k.round()
        assert torch.allclose(k, index, atol=1e-4), f"oracle defined at integer timesteps only; got {k}"
        alpha_bar = ac[index.long()]
        alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        eps, x0, _ = exact(x.double(), alpha, sigma)
        out = {"epsilon": eps, "sample": x0, "v_prediction": alpha[:, None] * eps - sigma[:, None] * x0}[prediction_type]
        return SimpleNamespace(sample=out.to(x.dtype))

    return unet


def points(n=32, seed=1):
    return 1.5 * torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---- DiscreteVPSDE -----------------------------------------------------------------------------
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_discrete_vp_alpha_squared_is_alphas_cumprod_at_trained_steps(beta_schedule):
    ac = diffusers.DDPMScheduler(beta_schedule=beta_schedule).alphas_cumprod.double()
    sde = sd.DiscreteVPSDE(ac)
    t = sde.t_of_timestep(torch.arange(N))
    # float64 round trip through lambda = log(alpha / sigma): a few ulp
    torch.testing.assert_close(sde.alpha(t) ** 2, ac, rtol=1e-13, atol=0)
    torch.testing.assert_close(sde.timestep(t), torch.arange(N, dtype=torch.float64), rtol=0, atol=1e-10)


def test_discrete_vp_interpolates_log_snr_linearly_and_reaches_the_data_at_t0():
    sde = sd.DiscreteVPSDE.from_betas(BETAS)
    lam = 0.5 * torch.log(sde.alphas_cumprod / (1 - sde.alphas_cumprod))
    k = torch.tensor([0, 7, 500, 998])
    quarter = k.double() + 0.25
    torch.testing.assert_close(sde.log_snr(sde.t_of_timestep(quarter)), 0.75 * lam[k] + 0.25 * lam[k + 1])
    assert float(sde.alpha(0.0)) == 1.0 and float(sde.sigma(0.0)) == 0.0
    # below t_0 = 1/N, sigma^2 grows linearly from 0 to 1 - alphas_cumprod[0]
    torch.testing.assert_close(sde.sigma(0.3 / N) ** 2, 0.3 * (1 - sde.alphas_cumprod[0]))
    torch.testing.assert_close(sde.t_of_log_snr(sde.log_snr(0.3 / N)), torch.tensor(0.3 / N, dtype=torch.float64))


@pytest.mark.parametrize("check", [
    generic_sde_tests.test_f_and_g2_are_the_derivatives_of_alpha_and_sigma,
    generic_sde_tests.test_log_snr_round_trip_and_monotone,
    generic_sde_tests.test_closed_forms_agree_with_the_general_affine_defaults,
    generic_sde_tests.test_prior_logp_is_the_exact_gaussian_density,
], ids=lambda f: f.__name__)
def test_discrete_vp_passes_the_generic_affine_sde_checks(check):
    check(sd.DiscreteVPSDE.from_betas(BETAS))


@pytest.mark.parametrize("ac, match", [
    ([0.9, 0.95], "strictly decreasing"),
    ([0.9, 0.0], r"\(0, 1\)"),
    ([1.0, 0.5], r"\(0, 1\)"),
    ([0.5], "at least 2"),
])
def test_discrete_vp_refuses_bad_alphas_cumprod(ac, match):
    with pytest.raises(ValueError, match=match):
        sd.DiscreteVPSDE(ac)


# ---- ScoreModels from other conventions reproduce the oracle's score -------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_from_diffusers_reproduces_the_exact_score_at_trained_timesteps(prediction_type):
    scheduler = diffusers.DDPMScheduler(prediction_type=prediction_type)
    ac = scheduler.alphas_cumprod.double()
    model = from_diffusers(diffusers_oracle(ac, prediction_type), scheduler)  # prediction type from the config
    assert isinstance(model.sde, sd.DiscreteVPSDE) and model.prediction == sd.interop.PREDICTION_TYPES[prediction_type]
    x = points()
    for k in TRAINED:
        alpha_bar = ac[k].expand(x.shape[0])
        score = exact(x, alpha_bar.sqrt(), (1 - alpha_bar).sqrt())[2]
        # float64 throughout; the conversions cost a few ulp of 1/sigma-sized quantities
        torch.testing.assert_close(model.score(x, model.sde.t_of_timestep(k)), score, rtol=1e-9, atol=1e-9)


def test_from_diffusers_vp_is_exact_where_its_log_snr_meets_a_trained_timestep():
    model = from_diffusers(diffusers_oracle(torch.cumprod(1 - BETAS, 0), "epsilon"), BETAS, sde="vp")
    vp, discrete = model.sde, sd.DiscreteVPSDE.from_betas(BETAS)
    assert (vp.beta_min, vp.beta_max) == (pytest.approx(0.1), pytest.approx(20.0))
    assert repr(from_diffusers(model.net.model, diffusers.DDPMScheduler(), sde="vp").sde) == repr(vp)
    x = points()
    for k in (0, 1, 10, 250, 500, 900):  # VPSDE's alpha(1)^2 = 4.3e-5 > alphas_cumprod[k >= 998]
        t = vp.t_of_log_snr(discrete.log_snr(discrete.t_of_timestep(k)))
        torch.testing.assert_close(model.score(x, t), MIXTURE.score(x, t, vp), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("solver", sd.solvers.available())
def test_every_solver_runs_on_a_wrapped_model_as_on_the_native_one(solver):
    """A diffusers-convention model defined at every float timestep (the mixture under the
    interpolated DiscreteVPSDE) gives, through from_diffusers, the very samples and NFE of the
    same ScoreModel built natively: the time map N t - 1 is right at every t a solver visits."""
    discrete = sd.DiscreteVPSDE.from_betas(BETAS)
    native = MIXTURE.score_model(discrete, prediction="eps")

    def unet(x, timestep):
        return native(x, discrete.t_of_timestep(timestep.double()))

    wrapped = from_diffusers(unet, BETAS)
    steps = None if sd.solvers.get(solver).adaptive else 8  # adaptive solvers choose their own steps
    options = [{}, {}]
    if solver == "dpm-solver-v3":  # each model's own statistics (the wrapped one is no oracle)
        x0 = MIXTURE.sample(16, torch.Generator().manual_seed(0), dtype=torch.float64)
        options = [{"statistics": model_statistics(m, x0, steps=16)} for m in (native, wrapped)]
    runs = [sd.sample(m, shape=(64, 4), solver=solver, steps=steps, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(3), **o) for m, o in zip((native, wrapped), options)]
    assert runs[0].nfe == runs[1].nfe
    torch.testing.assert_close(runs[1].x, runs[0].x, rtol=1e-9, atol=1e-9)


def test_from_diffusers_passes_float_timesteps_without_truncation():
    calls = []

    def unet(x, timestep):
        calls.append(timestep)
        return torch.zeros_like(x)

    model = from_diffusers(unet, BETAS)
    model.eps(points(4).float(), model.sde.t_of_timestep(10.37))
    assert calls[0].dtype == torch.float32 and calls[0].shape == (4,)
    torch.testing.assert_close(calls[0], torch.full((4,), 10.37))


def test_from_diffusers_registers_the_unet_parameters_and_counts_nfe():
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    model = from_diffusers(unet, diffusers.DDPMScheduler())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in unet.parameters())
    out = sd.sample(model, shape=(2, 1, 8, 8), solver="dpm++2m", steps=3, generator=torch.Generator().manual_seed(0))
    assert out.nfe == 3 and out.x.shape == (2, 1, 8, 8) and bool(torch.isfinite(out.x).all())


def test_from_denoiser_reproduces_the_exact_score():
    """k-diffusion's D(x, sigma) = E[x0 | x0 + sigma eps = x]; and EDM's raw F inside the
    preconditioning D = c_skip x + c_out F(c_in x, c_noise) when sigma_data is given."""
    sigma_data = 0.7

    def denoiser(x, sigma):
        return exact(x, torch.ones_like(sigma), sigma)[1]

    def raw(x_in, c_noise):
        sigma = torch.exp(4 * c_noise)
        c_in = 1 / (sigma**2 + sigma_data**2).sqrt()
        x = x_in / c_in[:, None]
        c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
        c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
        return (denoiser(x, sigma) - c_skip[:, None] * x) / c_out[:, None]

    x = points()
    for model in (from_denoiser(denoiser), from_denoiser(raw, sigma_data=sigma_data)):
        assert isinstance(model.sde, sd.EDMSDE)
        for sigma in (0.002, 0.1, 1.0, 10.0, 80.0):
            want = MIXTURE.score(x * 1, sigma, model.sde)
            # relative to the score's size ~ 1/sigma^2 at small sigma
            torch.testing.assert_close(model.score(x, sigma), want, rtol=1e-8, atol=1e-10 / sigma**2)


# ---- scoresde solvers inside diffusers loops ---------------------------------------------------
def run_loop(scheduler, unet, x):
    for t in scheduler.timesteps:
        x = scheduler.step(unet(scheduler.scale_model_input(x, t), t).sample, t, x).prev_sample
    return x


X_T = torch.randn(256, 4, generator=torch.Generator().manual_seed(2))
# diffusers rounds its step coefficients to float32 (relative 6e-8 each) and DPM-Solver steps the
# sample in float32; over <= 20 steps of O(1) samples that accumulates to a few 1e-6. A grid off
# by one timestep, or a wrong order on one step, moves the samples by > 1e-3 (asserted below).
LOOP_ATOL = 1e-5


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_matches_diffusers_ddim_scheduler(spacing, prediction_type):
    reference = diffusers.DDIMScheduler(clip_sample=False, timestep_spacing=spacing, prediction_type=prediction_type)
    reference.set_timesteps(10)
    unet = diffusers_oracle(reference.alphas_cumprod, prediction_type)
    want = run_loop(reference, unet, X_T.clone())

    ours = SolverScheduler.from_scheduler(reference, solver="ddim")
    ours.set_timesteps(timesteps=reference.timesteps)
    torch.testing.assert_close(run_loop(ours, unet, X_T.clone()), want, rtol=0, atol=LOOP_ATOL)

    # the same solve through scoresde.sample on the wrapped model: DDIM with set_alpha_to_one
    # ends with a step to sigma = 0, which is scoresde's final denoising evaluation
    model = from_diffusers(unet, reference)
    ts = model.sde.t_of_timestep(reference.timesteps)
    out = sd.sample(model, x_T=X_T.clone(), solver="ddim", steps=None, schedule=ts, denoise=True)
    assert out.nfe == 10
    torch.testing.assert_close(out.x, want, rtol=0, atol=LOOP_ATOL)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers
@pytest.mark.parametrize("steps", [5, 10, 20])
@pytest.mark.parametrize("final_sigmas_type", ["zero", "sigma_min"])
def test_dpm_solver_pp_2m_matches_diffusers_multistep_scheduler(steps, final_sigmas_type):
    """Both drop to first order on the last step (and at 'zero' always: the step to sigma = 0
    is x0_pred); diffusers' other lower-order rule (second-to-last step) is a no-op at order 2."""
    reference = diffusers.DPMSolverMultistepScheduler(final_sigmas_type=final_sigmas_type)
    reference.set_timesteps(steps)
    unet = diffusers_oracle(reference.alphas_cumprod, "epsilon")
    want = run_loop(reference, unet, X_T.clone())

    ours = SolverScheduler.from_scheduler(reference, solver="dpm++2m", final_sigmas_type=final_sigmas_type)
    ours.set_timesteps(timesteps=reference.timesteps)
    got = run_loop(ours, unet, X_T.clone())
    torch.testing.assert_close(got, want, rtol=0, atol=LOOP_ATOL)

    if final_sigmas_type == "sigma_min" and steps < 15:  # the tolerance tells the orders apart
        other = SolverScheduler.from_scheduler(reference, solver="dpm++2m", final_sigmas_type=final_sigmas_type,
                                               lower_order_final=False)
        other.set_timesteps(timesteps=reference.timesteps)
        assert float((run_loop(other, unet, X_T.clone()) - want).abs().max()) > 1e-3


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers
def test_a_loop_starting_mid_way_warms_up_from_first_order_as_diffusers_does():
    """img2img: set_timesteps(10), then loop over timesteps[4:] from a partly noised x."""
    reference = diffusers.DPMSolverMultistepScheduler()
    reference.set_timesteps(10)
    unet = diffusers_oracle(reference.alphas_cumprod, "epsilon")
    ours = SolverScheduler.from_scheduler(reference, solver="dpm++2m")
    ours.set_timesteps(timesteps=reference.timesteps)
    x = 0.5 * X_T

    def run(scheduler):
        y = x.clone()
        for t in scheduler.timesteps[4:]:
            y = scheduler.step(unet(y, t).sample, t, y).prev_sample
        return y

    torch.testing.assert_close(run(ours), run(reference), rtol=0, atol=LOOP_ATOL)


@pytest.mark.filterwarnings("ignore:__array_wrap__ must accept:DeprecationWarning")  # np.log on tensors in diffusers
@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("lower_order_final", [True, False])
def test_deis_log_rho_matches_diffusers_deis_on_the_same_grid(order, lower_order_final):
    """deis with basis="log_rho" is diffusers' DEISMultistepScheduler ("logrho") run in float64
    on our grid (its sigmas replaced by our sigma_hat = sigma/alpha) with the exact eps: equal to
    round-off, with diffusers' taper (below 15 steps) as lower_order_final=True; the rho basis
    differs by far more."""
    sde, steps = sd.VPSDE(), 10
    model = MIXTURE.score_model(sde)
    x_T = points(64, seed=3)
    ts = sd.schedules.get_schedule("logsnr", sde, steps)
    reference = diffusers.DEISMultistepScheduler(solver_order=order, lower_order_final=lower_order_final)
    reference.set_timesteps(steps)
    reference.sigmas = sde.sigma(ts) / sde.alpha(ts)  # diffusers' sigma is our sigma_hat, in float64
    reference.timesteps = torch.arange(steps, 0, -1)  # labels only: the model below is ours
    x = x_T.clone()
    for i, label in enumerate(reference.timesteps):
        x = reference.step(model.eps(x, ts[i].expand(x.shape[0])), label, x).prev_sample
    options = dict(schedule=ts, steps=None, history=order, lower_order_final=lower_order_final)
    ours = sd.sample(model, x_T=x_T.clone(), solver="deis", basis="log_rho", **options).x
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-10)
    rho = sd.sample(model, x_T=x_T.clone(), solver="deis", basis="rho", **options).x
    assert float((rho - x).abs().max()) > 1e-4


def float64_unipc(steps, final_sigmas_type="sigma_min", **config):
    """diffusers' UniPCMultistepScheduler with its float32 sigmas replaced by the exact float64
    ones of its timesteps, so that a float64 loop runs it in float64 throughout."""
    reference = diffusers.UniPCMultistepScheduler(final_sigmas_type=final_sigmas_type, **config)
    reference.set_timesteps(steps)
    ac = reference.alphas_cumprod.double()
    sigma = ((1 - ac) / ac).sqrt()
    last = sigma[:1] if final_sigmas_type == "sigma_min" else torch.zeros(1, dtype=torch.float64)
    reference.sigmas = torch.cat([sigma[reference.timesteps], last])
    return reference


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("corrector", [True, False])
def test_unipc_matches_diffusers_unipc_scheduler_in_float64(order, variant, corrector):
    """SolverScheduler(solver="unipc") is diffusers' UniPCMultistepScheduler with predict_x0=True,
    solver_type=variant and disable_corrector=[] (corrector off: every step) on the same
    timesteps: in float64 equal to round-off. diffusers' lower_order_final=True tapers at any
    step count, ours above the threshold: 1000 here (True, 15, at 5 steps); False is 0."""
    x_T = X_T[:64].double()
    for steps, taper in [(5, True), (5, False), (20, True), (20, False)]:
        reference = float64_unipc(steps, solver_order=order, solver_type=variant, lower_order_final=taper,
                                  disable_corrector=[] if corrector else list(range(steps)))
        unet = diffusers_oracle(reference.alphas_cumprod, "epsilon")
        want = run_loop(reference, unet, x_T.clone())
        ours = SolverScheduler.from_scheduler(reference, solver="unipc", final_sigmas_type="sigma_min", history=order,
                                              variant=variant, corrector=corrector,
                                              lower_order_final=(True if steps < 15 else 1000) if taper else False)
        ours.set_timesteps(timesteps=reference.timesteps)
        torch.testing.assert_close(run_loop(ours, unet, x_T.clone()), want, rtol=0, atol=1e-11)
    # a wrong setting (the corrector flipped) moves the samples by far more
    other = SolverScheduler.from_scheduler(reference, solver="unipc", final_sigmas_type="sigma_min", history=order,
                                           variant=variant, corrector=not corrector, lower_order_final=False)
    other.set_timesteps(timesteps=reference.timesteps)
    assert float((run_loop(other, unet, x_T.clone()) - want).abs().max()) > 1e-4


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers
@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_final_sigmas_zero_matches_diffusers_and_the_unipc_solver(order):
    """final_sigmas_type="zero": the last step returns the data prediction, as diffusers' bh2 with
    lower_order_final=True (its bh1, and any order > 1 on that step, give NaN or inf there: h is
    infinite). The same loop is scoresde.sample's unipc with final_step="zero" on the grid."""
    x_T = X_T[:64].double()
    steps = 10
    reference = float64_unipc(steps, "zero", solver_order=order)
    unet = diffusers_oracle(reference.alphas_cumprod, "epsilon")
    want = run_loop(reference, unet, x_T.clone())
    ours = SolverScheduler.from_scheduler(reference, solver="unipc", history=order)
    ours.set_timesteps(timesteps=reference.timesteps)
    got = run_loop(ours, unet, x_T.clone())
    torch.testing.assert_close(got, want, rtol=0, atol=1e-11)

    model = from_diffusers(unet, reference)
    ts = torch.cat([model.sde.t_of_timestep(reference.timesteps.double()), torch.tensor([model.sde.t_eps])])
    out = sd.sample(model, x_T=x_T.clone(), solver="unipc", steps=None, schedule=ts, history=order, final_step="zero")
    assert out.nfe == steps
    torch.testing.assert_close(out.x, got, rtol=0, atol=1e-12)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers
@pytest.mark.parametrize("steps", [5, 20])
def test_unipc_default_matches_diffusers_default_in_float32(steps):
    """Both defaults (bh2, order 2, corrector on, final sigma zero) in a float32 loop: equal to
    diffusers' float32 rounding (LOOP_ATOL)."""
    reference = diffusers.UniPCMultistepScheduler()
    reference.set_timesteps(steps)
    unet = diffusers_oracle(reference.alphas_cumprod, "epsilon")
    want = run_loop(reference, unet, X_T.clone())
    ours = SolverScheduler.from_scheduler(reference, solver="unipc", lower_order_final=steps + 1)
    ours.set_timesteps(timesteps=reference.timesteps)
    torch.testing.assert_close(run_loop(ours, unet, X_T.clone()), want, rtol=0, atol=LOOP_ATOL)


def test_unipc_scheduler_is_the_unipc_solver_on_its_grid():
    """The scheduler's UniC at the start of the next step is the same computation as the unipc
    solver's (float64, sigma_min, a scoresde log-SNR grid with fractional timesteps)."""
    ddpm = diffusers.DDPMScheduler()
    model = MIXTURE.score_model(sd.DiscreteVPSDE(ddpm.alphas_cumprod.double()), prediction="eps")
    x_T = X_T[:64].double()
    for variant, history in [("bh1", 3), ("bh2", 2)]:
        ours = SolverScheduler.from_scheduler(ddpm, solver="unipc", final_sigmas_type="sigma_min", history=history,
                                              variant=variant)
        ours.set_timesteps(8)
        x = x_T.clone()
        for t, ti in zip(ours.timesteps, ours._ts):
            x = ours.step(model.eps(x, ti.expand(x.shape[0])), t, x).prev_sample
        out = sd.sample(model, x_T=x_T.clone(), solver="unipc", steps=8, schedule="logsnr", history=history,
                        variant=variant)
        assert float(ours.timesteps[3]) != round(float(ours.timesteps[3]))
        torch.testing.assert_close(x, out.x, rtol=0, atol=1e-12)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers
def test_scheduler_lower_order_final_is_the_solvers_threshold():
    """True is 15 and False 0, as for the solvers; an integer is the step count below which the
    final steps drop order: at 10 steps, 11 tapers and 10 does not."""
    reference = diffusers.DPMSolverMultistepScheduler(final_sigmas_type="sigma_min")
    reference.set_timesteps(10)
    unet = diffusers_oracle(reference.alphas_cumprod, "epsilon")

    def run(lower_order_final):
        ours = SolverScheduler.from_scheduler(reference, solver="dpm++3m", final_sigmas_type="sigma_min",
                                              lower_order_final=lower_order_final)
        ours.set_timesteps(timesteps=reference.timesteps)
        return run_loop(ours, unet, X_T.clone())

    tapered, untapered = run(11), run(10)
    assert torch.equal(run(True), tapered) and torch.equal(run(15), tapered)
    assert torch.equal(run(False), untapered) and torch.equal(run(0), untapered)
    assert float((tapered - untapered).abs().max()) > 1e-3


def test_scheduler_runs_a_diffusers_pipeline_and_matches_scoresde_sample():
    """diffusers' own DDPMPipeline loop driven by SolverScheduler equals scoresde.sample with the
    same solver and grid on the wrapped model (fractional timesteps of the log-SNR grid)."""
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    ddpm = diffusers.DDPMScheduler()
    ours = SolverScheduler.from_scheduler(ddpm, solver="dpm++2m")
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=ours)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=3, num_inference_steps=6, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert ours.timesteps.dtype == torch.float32 and float(ours.timesteps[1]) != round(float(ours.timesteps[1]))

    model = from_diffusers(unet, ddpm)
    x_T = diffusers.utils.torch_utils.randn_tensor((3, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    # the scheduler's final step goes to sigma = 0 (scoresde's denoise), so the step before it
    # keeps order 2 as in diffusers; scoresde.sample would lower its own last step to t_eps
    out = sd.sample(model, x_T=x_T, solver="dpm++2m", steps=5, schedule="logsnr", denoise=True, lower_order_final=False)
    assert out.nfe == 6
    torch.testing.assert_close(images, (out.x / 2 + 0.5).clamp(0, 1), rtol=0, atol=1e-5)


# ---- bad input ---------------------------------------------------------------------------------
def test_bad_input_raises_clear_errors():
    unet = diffusers_oracle(torch.cumprod(1 - BETAS, 0), "epsilon")
    with pytest.raises(ValueError, match="prediction_type must be one of: epsilon, v_prediction, sample; got 'flow_prediction'"):
        from_diffusers(unet, BETAS, prediction_type="flow_prediction")
    with pytest.raises(ValueError, match="scheduler_or_betas.*FlowMatchEulerDiscreteScheduler without `alphas_cumprod`"):
        from_diffusers(unet, diffusers.FlowMatchEulerDiscreteScheduler())
    with pytest.raises(ValueError, match="sde must be one of: discrete, vp; got 've'"):
        from_diffusers(unet, BETAS, sde="ve")
    with pytest.raises(ValueError, match="betas must be a linear schedule"):
        from_diffusers(unet, diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2"), sde="vp")
    with pytest.raises(ValueError, match="unet must be callable"):
        from_diffusers("unet", BETAS)
    model = from_diffusers(lambda x, t: torch.cat([x, x], 1), BETAS)  # learned variance: 2x channels
    with pytest.raises(ValueError, match=r"unet returned \(2, 8\) for input shape \(2, 4\)"):
        model.eps(points(2), 0.5)
    with pytest.raises(ValueError, match="sigma_data must be a finite number > 0; got -1.0"):
        from_denoiser(lambda x, s: x, sigma_data=-1.0)


def test_scheduler_bad_input_raises_clear_errors():
    ac = torch.cumprod(1 - BETAS, 0)
    with pytest.raises(ValueError, match="solver must be one of: ddim, dpm\\+\\+2m, dpm\\+\\+3m, unipc; got 'euler'"):
        SolverScheduler(ac, solver="euler")
    for value in (-1, 2.5, "no"):
        with pytest.raises(ValueError, match=f"lower_order_final must be True, False or an integer >= 0; got {value!r}"):
            SolverScheduler(ac, lower_order_final=value)
    with pytest.raises(ValueError, match="variant must be None for solver 'dpm\\+\\+2m' \\(an option of 'unipc'\\); got 'bh1'"):
        SolverScheduler(ac, solver="dpm++2m", variant="bh1")
    with pytest.raises(ValueError, match="history must be None for solver 'ddim'"):
        SolverScheduler(ac, solver="ddim", history=1)
    with pytest.raises(ValueError, match="variant must be one of: bh1, bh2; got 'bh3'"):
        SolverScheduler(ac, solver="unipc", variant="bh3")
    with pytest.raises(ValueError, match="history must be an integer in \\[1, 3\\]; got 4"):
        SolverScheduler(ac, solver="unipc", history=4)
    with pytest.raises(ValueError, match="corrector must be True or False; got 1"):
        SolverScheduler(ac, solver="unipc", corrector=1)
    with pytest.raises(ValueError, match="final_sigmas_type must be one of: zero, sigma_min; got 'none'"):
        SolverScheduler(torch.cumprod(1 - BETAS, 0), final_sigmas_type="none")
    with pytest.raises(ValueError, match="scheduler_or_betas.*without `alphas_cumprod`"):
        SolverScheduler.from_scheduler(diffusers.FlowMatchEulerDiscreteScheduler())
    ours = SolverScheduler.from_scheduler(diffusers.DDPMScheduler())
    x = points(2).float()
    with pytest.raises(ValueError, match="call set_timesteps"):
        ours.step(x, 999, x)
    with pytest.raises(ValueError, match="num_inference_steps must be an integer >= 1; got 0"):
        ours.set_timesteps(0)
    with pytest.raises(ValueError, match=r"timesteps must be finite values in \[0, 999\]"):
        ours.set_timesteps(timesteps=[1000, 500])
    ours.set_timesteps(4)
    ours.step(x, ours.timesteps[0], x)
    with pytest.raises(ValueError, match="loop over scheduler.timesteps in order"):
        ours.step(x, ours.timesteps[3], x)
    with pytest.raises(ValueError, match="model_output has shape"):
        ours.step(x[:, :2], ours.timesteps[1], x)
    with pytest.raises(ValueError, match="eta must be 0"):
        ours.step(x, ours.timesteps[1], x, eta=1.0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        ours.step(x, ours.timesteps[1], x, churn=1.0)


def test_interop_module_does_not_import_diffusers():
    code = "import sys, scoresde.interop; assert 'diffusers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
