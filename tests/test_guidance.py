"""Guidance and inpainting against exact answers on Gaussian mixtures (class = component).

For a mixture p = sum_k w_k N(mu_k, S_k), the class-conditional score of class k at time t is
the score of component k alone, and the exact noise-conditional classifier is the component
posterior p(k | x_t). The conditional of a mixture given some coordinates is again a mixture
(`exact_conditional`), so imputed coordinates are compared with exact samples of it.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import scoresde as sd
from scoresde.classifier import NoisyClassifier
from scoresde.guidance import Classifier, ClassifierFree
from scoresde.losses import classifier_loss
from scoresde.metrics import sliced_wasserstein, two_sample_floor

from conftest import CountingNet

F64 = torch.float64


class ClassOracle:
    """Exact conditional answers of a mixture: label k < K gives component k, the null label K
    the whole mixture; in the raw-output format of the ScoreModel that calls it."""

    def __init__(self, gmm: sd.data.GaussianMixture, sde, prediction: str):
        self.num_classes = gmm.num_components
        parts = [sd.data.GaussianMixture([1.0], gmm.means[k:k + 1], gmm.covariances[k:k + 1])
                 for k in range(self.num_classes)] + [gmm]
        self.nets = [part.score_model(sde, prediction).net for part in parts]

    def __call__(self, x, t, y=None):
        if y is None:
            y = torch.full((x.shape[0],), self.num_classes)
        outs = torch.stack([net(x, t) for net in self.nets])  # (K + 1, B, *shape)
        return outs[y, torch.arange(x.shape[0])]


def ring():
    return sd.data.GaussianMixture.ring(modes=4, radius=1.5, std=0.3)


def conditional_model(gmm, sde, prediction="eps"):
    return sd.ScoreModel(ClassOracle(gmm, sde, prediction), sde, prediction=prediction, time_input="t")


def component_score(gmm, k, x, t, sde):
    return sd.data.GaussianMixture([1.0], gmm.means[k:k + 1], gmm.covariances[k:k + 1]).score(x, t, sde)


def points(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(n, 2, generator=g, dtype=F64), torch.randint(0, 4, (n,), generator=g)


TIMES = [0.05, 0.3, 0.8]


# ---- classifier-free guidance ----------------------------------------------------------------
@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE(), sd.EDMSDE()], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("t_frac", TIMES)
def test_classifier_free_scale_one_is_conditional_and_zero_unconditional(sde, t_frac):
    gmm, (x, y) = ring(), points()
    t = sde.t_eps + t_frac * (sde.T - sde.t_eps)
    model = conditional_model(gmm, sde)
    exact_cond = torch.stack([component_score(gmm, int(k), x[i:i + 1], t, sde)[0] for i, k in enumerate(y)])
    # float64 throughout: the only error is rounding in the eps <-> score conversions
    torch.testing.assert_close(ClassifierFree(model, y, 1.0).score(x, t), exact_cond, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ClassifierFree(model, y, 0.0).score(x, t), gmm.score(x, t, sde), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("t_frac", TIMES)
def test_guidance_is_the_same_in_eps_x0_score_v_and_edm(t_frac):
    """score_u + s (score_c - score_u) whatever the network predicts (all conversions are affine)."""
    sde, gmm, (x, y), scale = sd.VPSDE(), ring(), points(), 2.5
    t = sde.t_eps + t_frac * (sde.T - sde.t_eps)
    score_u = gmm.score(x, t, sde)
    score_c = torch.stack([component_score(gmm, int(k), x[i:i + 1], t, sde)[0] for i, k in enumerate(y)])
    expected = score_u + scale * (score_c - score_u)
    sigma, alpha = float(sde.sigma(torch.tensor(t, dtype=F64))), float(sde.alpha(torch.tensor(t, dtype=F64)))
    for prediction in sd.PREDICTIONS:
        guided = ClassifierFree(conditional_model(gmm, sde, prediction), y, scale)
        torch.testing.assert_close(guided.score(x, t), expected, rtol=1e-9, atol=1e-9, msg=prediction)
        eps, x0 = guided.eps_and_x0(x, t)
        torch.testing.assert_close(eps, -sigma * expected, rtol=1e-9, atol=1e-9, msg=prediction)
        torch.testing.assert_close(x0, (x + sigma**2 * expected) / alpha, rtol=1e-9, atol=1e-9, msg=prediction)


class RowCountingNet(CountingNet):
    """Counts calls and records the batch size of each."""

    def __init__(self, net):
        super().__init__(net)
        self.num_classes, self.rows = net.num_classes, []

    def __call__(self, x, t, **cond):
        self.rows.append(x.shape[0])
        return super().__call__(x, t, **cond)


def test_one_guided_evaluation_is_one_batched_call_and_one_nfe():
    sde, gmm = sd.VPSDE(), ring()
    counting = RowCountingNet(ClassOracle(gmm, sde, "eps"))
    model, rows = sd.ScoreModel(counting, sde, time_input="t"), counting.rows
    y = torch.arange(4).repeat(5)
    guided = ClassifierFree(model, y, 3.0)
    for solver, steps in (("dpm++2m", 6), ("heun", 5), ("pc", 4)):
        rows.clear()
        calls, base_nfe = counting.calls, model.nfe
        res = sd.sample(guided, shape=(20, 2), solver=solver, steps=steps, generator=torch.Generator().manual_seed(0))
        info = sd.solvers.get(solver)
        assert res.nfe == steps * info.evals_per_step + info.extra_evals
        assert counting.calls - calls == res.nfe == model.nfe - base_nfe
        assert rows == [40] * res.nfe  # conditional and unconditional rows in one call
    rows.clear()
    sd.sample(ClassifierFree(model, y, 1.0), shape=(20, 2), solver="ddim", steps=3)
    assert rows == [20] * 3  # scale 1 needs only the conditional rows


def test_embedding_conditioned_mlp_null_is_zero_and_batched_guidance_matches_two_calls():
    torch.manual_seed(0)
    net = sd.nets.MLP(3, hidden=32, depth=2, cond_dim=5)
    nn.init.normal_(net.out.weight, std=0.1)  # the output layer starts at zero
    model = sd.ScoreModel(net, sd.VPSDE(), prediction="eps")
    x, t, cond = torch.randn(6, 3), torch.rand(6) * 0.9 + 0.05, torch.randn(6, 5)
    with torch.no_grad():
        torch.testing.assert_close(net(x, t, cond=torch.zeros(6, 5)), net(x, t), rtol=0, atol=0)
        guided = ClassifierFree(model, cond, 4.0).eps(x, t)
        eps_c, eps_u = model.eps(x, t, cond=cond), model.eps(x, t)
    torch.testing.assert_close(guided, eps_u + 4.0 * (eps_c - eps_u), rtol=1e-5, atol=1e-6)


def test_classifier_free_drives_a_vector_conditioned_unet():
    """On a U-Net with cond_dim (and labels beside it): scale 0 is the unconditional model
    (cond=None, exactly), 1 the conditional one, 2.5 their batched extrapolation."""
    torch.manual_seed(0)
    net = sd.nets.UNet(base_channels=8, groups=4, num_classes=3, cond_dim=4)
    with torch.no_grad():
        for p in net.parameters():  # the residual branches and the output start at zero
            if p.ndim > 1 and not p.any():
                p.normal_(std=0.1)
    model = sd.ScoreModel(net, sd.VPSDE(), prediction="eps")
    x, t, cond = torch.randn(3, 1, 8, 8), torch.rand(3) * 0.9 + 0.05, torch.randn(3, 4)
    with torch.no_grad():
        eps_c, eps_u = model.eps(x, t, cond=cond), model.eps(x, t)
        assert (eps_c - eps_u).abs().amax(dim=(1, 2, 3)).min() > 1e-4
        torch.testing.assert_close(ClassifierFree(model, cond, 0.0).eps(x, t), eps_u, rtol=0, atol=0)
        torch.testing.assert_close(ClassifierFree(model, cond, 1.0).eps(x, t), eps_c, rtol=0, atol=0)
        guided = ClassifierFree(model, cond, 2.5).eps(x, t)
    torch.testing.assert_close(guided, eps_u + 2.5 * (eps_c - eps_u), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"cond must have shape \(B, cond_dim\) = \(B, 4\); got \(3, 5\)"):
        ClassifierFree(model, torch.randn(3, 5), 1.0)


# ---- classifier guidance ---------------------------------------------------------------------
@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0])
@pytest.mark.parametrize("prediction", ["eps", "x0", "score", "edm"])
def test_classifier_guidance_with_the_exact_posterior_equals_classifier_free(scale, prediction):
    """With exact quantities score_c - score_u = grad log p(y | x_t): both guidances agree at
    every scale, and at scale 1 give the exact conditional score."""
    sde, gmm, (x, y) = sd.VPSDE(), ring(), points()
    posterior = lambda x, t: gmm.component_posterior(x, t, sde).log()  # noqa: E731
    uncond = gmm.score_model(sde, prediction)
    for t in TIMES:
        guided = Classifier(uncond, posterior, y, scale)
        cfg = ClassifierFree(conditional_model(gmm, sde, prediction), y, scale)
        torch.testing.assert_close(guided.score(x, t), cfg.score(x, t), rtol=1e-8, atol=1e-8)
        assert guided.classifier_evals == (0 if scale == 0 else 1)


def test_classifier_guided_samples_follow_the_class():
    """Sampled with the exact posterior at scale 1, samples of class k are exact samples of
    component k: within the two-sample floor of sliced Wasserstein."""
    sde, gmm, n = sd.VPSDE(), ring(), 400
    posterior = lambda x, t: gmm.component_posterior(x, t, sde).log()  # noqa: E731
    guided = Classifier(gmm.score_model(sde), posterior, torch.full((n,), 2), 1.0)
    x = sd.sample(guided, shape=(n, 2), solver="dpm++2m", steps=30, dtype=F64,
                  generator=torch.Generator().manual_seed(0)).x
    component = sd.data.GaussianMixture([1.0], gmm.means[2:3], gmm.covariances[2:3])
    floor = two_sample_floor(sliced_wasserstein, lambda m, g: component.sample(m, g, dtype=F64), n)
    distance = sliced_wasserstein(x, component.sample(n, torch.Generator().manual_seed(1), dtype=F64))
    assert distance < floor.mean + 3 * floor.std, (float(distance), float(floor.mean), float(floor.std))


class TimeMLP(nn.Module):
    """A small time-dependent classifier: [x, t] -> logits."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 64):
        super().__init__()
        self.num_classes = num_classes
        self.body = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                  nn.Linear(hidden, num_classes))

    def forward(self, x, t):
        return self.body(torch.cat([x, t[:, None].to(x.dtype)], dim=1))


def test_noisy_classifier_trained_with_the_trainer_approaches_the_bayes_posterior():
    sde, gmm = sd.VPSDE(), ring()
    x, k = gmm.sample(4096, torch.Generator().manual_seed(0), return_components=True)
    torch.manual_seed(0)
    classifier = NoisyClassifier(TimeMLP(2, 4), sde)
    trainer = sd.Trainer(classifier, (x, k), batch_size=256, lr=3e-3, warmup_steps=20, loss_fn=classifier_loss,
                         progress=False)
    trainer.fit(400)
    # held-out cross-entropy against the Bayes-optimal one, times uniform on [t_eps, T]
    g = torch.Generator().manual_seed(1)
    x0, k0 = gmm.sample(4000, g, return_components=True)
    t = sd.losses.sample_time(sde, 4000, generator=g).float()
    x_t = sde.marginal(x0, t, generator=g)
    with torch.no_grad():
        learned = nn.functional.cross_entropy(trainer.model(x_t, t), k0)
    bayes = nn.functional.nll_loss(gmm.component_posterior(x_t.double(), t.double(), sde).log(), k0)
    # Bayes CE is ~0.7 nats (noisy times are ambiguous); 400 steps get within 0.05 of it
    assert float(learned) - float(bayes) < 0.05, (float(learned), float(bayes))
    with pytest.raises(TypeError, match="logits, not a score"):
        classifier.score(x_t, t)


# ---- inpainting --------------------------------------------------------------------------------
def exact_conditional(gmm: sd.data.GaussianMixture, known: list, unknown: list, value: torch.Tensor):
    """p(x[unknown] | x[known] = value) of a Gaussian mixture: the mixture of the components'
    Gaussian conditionals, weights w_k N(value; mu_k[known], S_k[known, known]) normalized."""
    a, b = torch.tensor(known), torch.tensor(unknown)
    mu, cov = gmm.means, gmm.covariances
    s_aa, s_ba, s_bb = cov[:, a][:, :, a], cov[:, b][:, :, a], cov[:, b][:, :, b]
    diff = value - mu[:, a]
    solved = torch.linalg.solve(s_aa, diff[..., None])[..., 0]
    log_w = gmm.weights.log() - 0.5 * (diff * solved).sum(-1) - 0.5 * torch.logdet(s_aa)
    means = mu[:, b] + (s_ba @ solved[..., None])[..., 0]
    covs = s_bb - s_ba @ torch.linalg.solve(s_aa, s_ba.transpose(1, 2))
    return sd.data.GaussianMixture(torch.softmax(log_w, 0), means, 0.5 * (covs + covs.transpose(1, 2)))


def two_blobs():
    """3-D, two components apart mostly along coordinate 0 (the known one), with correlation
    between the known and the unknown coordinates inside each component."""
    cov = torch.tensor([[0.1, 0.05, 0.0], [0.05, 0.2, 0.1], [0.0, 0.1, 0.2]], dtype=F64)
    return sd.data.GaussianMixture([0.3, 0.7], [[-1.0, 0.5, 0.0], [1.0, -0.5, 0.5]], torch.stack([cov, cov]))


def impute(gmm, value, n, **options):
    known = torch.zeros(n, gmm.dim, dtype=F64)
    known[:, 0] = value
    mask = torch.tensor([True, False, False])
    x = sd.sample(gmm.score_model(sd.VPSDE()), shape=(n, 3), dtype=F64, inpaint=(known, mask),
                  generator=torch.Generator().manual_seed(2), **options).x
    assert torch.equal(x[:, 0], known[:, 0])  # the known part is returned exactly
    return x[:, 1:]


def distance_to_exact(gmm, value, samples):
    exact = exact_conditional(gmm, [0], [1, 2], torch.tensor([value], dtype=F64))
    floor = two_sample_floor(sliced_wasserstein, lambda m, g: exact.sample(m, g, dtype=F64), samples.shape[0])
    distance = sliced_wasserstein(samples, exact.sample(samples.shape[0], torch.Generator().manual_seed(1), dtype=F64))
    return float(distance), float(floor.mean), float(floor.std)


PC_INPAINT = dict(solver="pc", steps=200, corrector_steps=2, per_sample_step=False)


def test_pc_inpainting_follows_the_exact_conditional_when_the_known_part_settles_the_component():
    """x0 = 0.8 makes component 1 certain (posterior 1 - 5e-8): the replacement method with
    Langevin correctors then samples the component's Gaussian conditional, whose mean moves with
    the known value through the correlation. Measured SW 0.038 vs floor 0.033 +- 0.007; the
    bound floor + 3 std is where an exact sampler's distance falls short of with ~99.9%."""
    distance, floor, std = distance_to_exact(two_blobs(), 0.8, impute(two_blobs(), 0.8, 1000, **PC_INPAINT))
    assert distance < floor + 3 * std, (distance, floor, std)


def test_replacement_is_not_exact_conditional_sampling():
    """The documented limit, measured: where the known value leaves the component ambiguous
    (x0 = 0.05: exact weights 0.14 / 0.86, mean of x1 -0.70), PC replacement gets the weights
    wrong (mean of x1 -0.36; SW 0.32 vs floor 0.053 +- 0.021), and the ODE version misses even
    the unimodal conditional of x0 = 0.8 (ddim 100 steps: SW 0.15 vs floor 0.033 +- 0.007)."""
    gmm = two_blobs()
    distance, floor, std = distance_to_exact(gmm, 0.05, impute(gmm, 0.05, 1000, **PC_INPAINT))
    assert distance > floor + 10 * std, (distance, floor, std)
    distance, floor, std = distance_to_exact(gmm, 0.8, impute(gmm, 0.8, 1000, solver="ddim", steps=100))
    assert distance > floor + 5 * std, (distance, floor, std)


def test_inpainting_keeps_known_values_through_denoise_and_leaves_inputs_untouched():
    gmm, n = two_blobs(), 8
    known, mask = torch.randn(n, 3, dtype=F64), torch.tensor([True, False, True])
    x_T = torch.randn(n, 3, dtype=F64)
    x_T_copy = x_T.clone()
    for solver in ("euler", "dpm++2m", "euler_maruyama"):
        res = sd.sample(gmm.score_model(sd.VPSDE()), x_T=x_T, solver=solver, steps=5, denoise=True,
                        inpaint=(known, mask), return_trajectory=True)
        assert torch.equal(res.x[:, mask], known[:, mask])
        assert torch.equal(x_T, x_T_copy)
        # the recorded states already carry the noised known part: at T it is nearly pure noise
        assert not torch.equal(res.trajectory[0][:, mask], x_T[:, mask])


# ---- bad input ------------------------------------------------------------------------------
def test_bad_guidance_inputs_raise_clear_errors():
    sde, gmm = sd.VPSDE(), ring()
    model = conditional_model(gmm, sde)
    with pytest.raises(ValueError, match=r"cond \(labels\) must lie in \[0, num_classes\) = \[0, 4\)"):
        ClassifierFree(model, torch.tensor([0, 4]), 1.0)
    with pytest.raises(ValueError, match=r"cond \(labels\) must lie in \[0, num_classes\)"):
        ClassifierFree(model, torch.tensor([-1]), 1.0)
    with pytest.raises(ValueError, match=r"cond \(labels\) must have shape \(B,\)"):
        ClassifierFree(model, torch.zeros(2, 1, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="scale must be a finite number >= 0; got -1.0"):
        ClassifierFree(model, torch.tensor([0, 1]), -1.0)
    with pytest.raises(ValueError, match="scale must be a finite number >= 0; got nan"):
        ClassifierFree(model, torch.tensor([0, 1]), float("nan"))
    with pytest.raises(ValueError, match=r"cond must be a tensor: labels \(B,\) .*; got \[0, 1\]"):
        ClassifierFree(model, [0, 1], 1.0)
    with pytest.raises(ValueError, match="model must be a scoresde.ScoreModel; got ClassOracle"):
        ClassifierFree(model.net, torch.tensor([0, 1]), 1.0)
    with pytest.raises(ValueError, match="has no cond_dim"):
        ClassifierFree(model, torch.zeros(2, 3), 1.0)
    with pytest.raises(ValueError, match="x has batch 3 but cond was given for a batch of 2"):
        ClassifierFree(model, torch.tensor([0, 1]), 2.0).eps(torch.zeros(3, 2), 0.5)
    mlp = sd.ScoreModel(sd.nets.MLP(2, hidden=16, depth=1, cond_dim=3), sde)
    with pytest.raises(ValueError, match=r"cond must have shape \(B, cond_dim\) = \(B, 3\)"):
        ClassifierFree(mlp, torch.zeros(2, 4), 1.0)
    with pytest.raises(ValueError, match="has no num_classes"):
        ClassifierFree(mlp, torch.tensor([0, 1]), 1.0)
    posterior = lambda x, t: gmm.component_posterior(x, t, sde).log()  # noqa: E731
    with pytest.raises(ValueError, match="y must be an integer tensor of shape"):
        Classifier(gmm.score_model(sde), posterior, torch.zeros(2), 1.0)
    with pytest.raises(ValueError, match=r"y must lie in \[0, K\) = \[0, 4\)"):
        Classifier(gmm.score_model(sde), posterior, torch.tensor([1, 4]), 1.0).score(torch.zeros(2, 2, dtype=F64), 0.5)
    with pytest.raises(ValueError, match="scale must be a finite number >= 0; got -0.5"):
        Classifier(gmm.score_model(sde), posterior, torch.tensor([1]), -0.5)
    with pytest.raises(ValueError, match=r"classifier must be a callable \(x, t\) -> logits \(B, K\); got 3"):
        Classifier(gmm.score_model(sde), 3, torch.tensor([1]), 1.0)


def test_bad_inpainting_inputs_raise_clear_errors():
    oracle = two_blobs().score_model(sd.VPSDE())
    known = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"mask must be a bool tensor \(True = known\)"):
        sd.sample(oracle, shape=(4, 3), inpaint=(known, torch.ones(3)))
    with pytest.raises(ValueError, match=r"mask must have shape \(B, \*shape\) = \(4, 3\) or \(\*shape\) = \(3,\)"):
        sd.sample(oracle, shape=(4, 3), inpaint=(known, torch.ones(2, dtype=torch.bool)))
    with pytest.raises(ValueError, match=r"known and mask are for shape \(4, 3\); the samples have shape \(5, 3\)"):
        sd.sample(oracle, shape=(5, 3), inpaint=(known, torch.ones(3, dtype=torch.bool)))
    with pytest.raises(ValueError, match="solver must be one that steps on the grid itself to take inpaint.*; got 'adaptive-sde'"):
        sd.sample(oracle, shape=(4, 3), solver="adaptive_sde", inpaint=(known, torch.ones(3, dtype=torch.bool)))
    with pytest.raises(ValueError, match=r"inpaint must be a pair \(known, mask\)"):
        sd.sample(oracle, shape=(4, 3), inpaint=known)
