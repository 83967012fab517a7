"""Log-likelihood through the probability-flow ODE (Song et al., ICLR 2021, eq. 39; the
instantaneous change of variables of Chen et al., NeurIPS 2018).

`log_likelihood` integrates x and the divergence of the ODE's velocity v together from t_end up
to T, log p_{t_end}(x) = log p_T(z) + int_{t_end}^T div v(x_t, t) dt with z = x_T and p_T taken
as the prior: the density of the model's marginal at t_end (the data slightly noised; the ODE
never reaches t = 0). The trace is exact (low dimension) or a Hutchinson-Skilling estimate.
`bits_per_dim` bounds the bits per dimension of discrete data by uniform dequantization;
`encode` and `decode` carry data to latents and back along the same ODE.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch

from . import _checks
from .model import ScoreModel
from .sde import SDE
from .solvers import sample
from .solvers.backends import TORCHDIFFEQ_ADAPTIVE, odeint_in_range

__all__ = [
    "LikelihoodResult", "BitsPerDim", "log_likelihood", "divergence", "encode", "decode",
    "round_trip_error", "bits_per_dim", "TRACES", "PROBE_DISTRIBUTIONS",
]

TRACES = ("exact", "hutchinson")
#: distributions of the Hutchinson probes eps (both have E[eps eps^T] = I)
PROBE_DISTRIBUTIONS = ("rademacher", "gaussian")
#: keywords renamed here: the end time is `t_end` as in `sample` (the SDE keeps `t_eps` as its
#: default), and the probes' distribution is no longer called `noise`
_RENAMED = {"t_eps": "t_end", "noise": "probe_distribution"}


@dataclass
class LikelihoodResult:
    """logp: log p_{t_end}(x) in nats, (B,); z: the latent x_T, shaped like x; nfe: network
    evaluations counted by the model; prior_logp: log prior(z), (B,); delta_logp: the integral
    of div v from t_end to T, (B,), so that logp = prior_logp + delta_logp; t_end: the time
    the integral starts from, in the SDE's units."""

    logp: torch.Tensor
    z: torch.Tensor
    nfe: int
    prior_logp: torch.Tensor
    delta_logp: torch.Tensor
    t_end: float

    @property
    def t_eps(self):
        raise AttributeError("LikelihoodResult.t_eps was renamed t_end")


@dataclass
class BitsPerDim:
    """bpd: bits per dimension of each sample, (B,) (an upper bound on the discrete model's
    -log2 P(x) / D, averaged over the dequantization draws); nfe: counted evaluations."""

    bpd: torch.Tensor
    nfe: int

    @property
    def mean(self) -> float:
        return float(self.bpd.mean())

    @property
    def half_width(self) -> float:
        """Half-width of the normal-approximation 95% confidence interval of the mean over
        samples (1.96 standard errors); 0 for a single sample."""
        n = self.bpd.numel()
        return 1.96 * float(self.bpd.std()) / math.sqrt(n) if n > 1 else 0.0


# ---- checks ---------------------------------------------------------------------------------
def _no_renamed(where: str, given: Dict[str, object], names: Sequence[str]) -> None:
    """Refuse the old keywords `names` (naming each one's replacement) and any other unknown one."""
    _checks.renamed(given, {name: _RENAMED[name] for name in names}, where)
    if given:
        raise TypeError(f"{where}() got an unexpected keyword argument {next(iter(given))!r}")


def _data(name: str, x, floating: bool = True) -> None:
    """Refuse anything but a finite (floating-point) tensor of shape (B, *data_shape)."""
    _checks.tensor(name, x, "of shape (B, *data_shape)", floating=floating, check_finite=False)
    if x.is_floating_point():
        _checks.finite(name, x)


def _model(model) -> ScoreModel:
    if not isinstance(model, ScoreModel):
        raise _checks.fail("model", "a scoresde.ScoreModel (wrap a network or function with ScoreModel(net, sde))",
                           type(model).__name__)
    return model


def _resolve(model: ScoreModel, sde: Optional[SDE], x: torch.Tensor, t_end: Optional[float],
             method: str, rtol: float, atol: float) -> Tuple[SDE, float]:
    _model(model)
    if sde is None:
        sde = model.sde
    else:
        _checks.same_sde(sde, model.sde)
    _data("x", x)
    if t_end is None:
        t_end = sde.t_eps
    else:
        t_end = _checks.real("t_end", t_end, low=0, high=sde.T, open_low=True, open_high=True)
    _checks.choice("method", method, TORCHDIFFEQ_ADAPTIVE)
    _checks.real("rtol", rtol, low=0, open_low=True)
    _checks.real("atol", atol, low=0, open_low=True)
    return sde, float(t_end)


_NOT_DIFFERENTIABLE = (
    "the model's score is not differentiable with respect to x (computed under torch.no_grad, detached, or "
    "outside torch): the divergence needs autograd; the network must keep its graph back to its input"
)


def _velocity(model: ScoreModel, sde: SDE, x: torch.Tensor, t: float, need_grad: bool,
              check_graph: bool = False) -> torch.Tensor:
    """The probability-flow velocity v(x, t): one network evaluation. With `need_grad`, refuse a
    score that carries no graph back to x (computed under no_grad, detached, or non-torch);
    `check_graph` also tries one backward pass, which catches a graph through the parameters
    only (e.g. net(x.detach())). A score that truly does not depend on x is refused as well."""

    def score(x_: torch.Tensor, t_) -> torch.Tensor:
        s = model.score(x_, t_)
        if need_grad and not s.requires_grad:
            raise ValueError(_NOT_DIFFERENTIABLE)
        if check_graph:
            (grad,) = torch.autograd.grad(s.sum(), x_, retain_graph=True, allow_unused=True)
            if grad is None:
                raise ValueError(_NOT_DIFFERENTIABLE)
        return s

    return sde.reverse(score, probability_flow=True).drift(x, t)


def _divergence(v: torch.Tensor, x: torch.Tensor, probes: Optional[torch.Tensor]) -> torch.Tensor:
    """div v at x, (B,): exact (probes None) or the mean of eps^T (dv/dx) eps over probes (P, *x.shape)."""
    flat = v.reshape(v.shape[0], -1)
    if probes is None:
        div = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
        for i in range(flat.shape[1]):  # samples are independent: column i of every Jacobian at once
            (grad,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
            div = div + grad.reshape(grad.shape[0], -1)[:, i]
        return div
    total = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
    for eps in probes:
        (vjp,) = torch.autograd.grad(v, x, grad_outputs=eps, retain_graph=True)
        total = total + (vjp * eps).reshape(v.shape[0], -1).sum(1)
    return total / probes.shape[0]


def _draw_probes(shape, probes: int, distribution: str, generator, dtype, device) -> torch.Tensor:
    eps = torch.randn((probes, *shape), generator=generator, dtype=dtype, device=device)
    return eps.sign() if distribution == "rademacher" else eps  # sign of a Gaussian: +-1 with probability 1/2


def _check_trace_options(trace: str, probes: int, probe_distribution: str) -> int:
    _checks.choice("trace", trace, TRACES)
    _checks.choice("probe_distribution", probe_distribution, PROBE_DISTRIBUTIONS)
    # each probe is a vector-Jacobian product per evaluation, and all are held at once
    return _checks.at_most("probes", _checks.integer("probes", probes, low=1), 1024)


def divergence(
    model: ScoreModel, x: torch.Tensor, t: float, trace: str = "exact", probes: int = 1,
    probe_distribution: str = "rademacher", generator: Optional[torch.Generator] = None, **renamed,
) -> torch.Tensor:
    """div_x of the probability-flow velocity at (x, t), shape (B,): exact, or the
    Hutchinson-Skilling estimate averaged over `probes` fresh probes drawn from
    `probe_distribution` ('rademacher' or 'gaussian'). One network evaluation."""
    _no_renamed("divergence", renamed, ["noise"])
    _model(model)
    probes = _check_trace_options(trace, probes, probe_distribution)
    _checks.generator("generator", generator)
    _data("x", x)
    t = _checks.real("t", t, low=0, high=model.sde.T)
    eps = None if trace == "exact" else _draw_probes(x.shape, probes, probe_distribution, generator, x.dtype, x.device)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = _velocity(model, model.sde, x, float(t), need_grad=True, check_graph=True)
        return _divergence(v, x, eps).detach()


# ---- the ODE ------------------------------------------------------------------------------
def _solve_up(func, y0, sde: SDE, t_end: float, dtype: torch.dtype, method: str, rtol: float, atol: float):
    """The state at T of the ODE from y0 at t_end, with the times in `dtype` (x's)."""
    try:
        return odeint_in_range(func, y0, (t_end, sde.T), method=method, rtol=rtol, atol=atol, t_dtype=dtype)
    except AssertionError as err:  # torchdiffeq's "underflow in dt"
        raise ValueError(f"the probability-flow ODE solve failed ({err}); is the model finite on [t_end, T]?") from err


def log_likelihood(
    model: ScoreModel,
    x: torch.Tensor,
    sde: Optional[SDE] = None,
    trace: str = "exact",
    probes: int = 1,
    probe_distribution: str = "rademacher",
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_end: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
    **renamed,
) -> LikelihoodResult:
    """log p_{t_end}(x) of the model's probability-flow ODE, in nats, for x of shape (B, *shape).

    Args:
        trace: "exact" (D vector-Jacobian products per evaluation, from one network evaluation;
            low dimension) or "hutchinson": E[eps^T (dv/dx) eps] with `probes` probes drawn
            from `probe_distribution` ("rademacher" or "gaussian") once, from `generator`, and
            kept fixed over the whole integration, so the integral estimate is unbiased too.
        method, rtol, atol: the torchdiffeq adaptive method and tolerances, applied to x and
            to the accumulated divergence alike; computation runs in x's dtype.
        t_end: the time the integral starts from (default sde.t_eps); the result is the
            density of the marginal at t_end, not at 0.

    Samples of a batch must not interact inside the network (no batch-norm in training mode):
    one backward pass serves the whole batch. The result carries no autograd graph. NFE counts
    one per evaluation (traces reuse it).
    """
    _no_renamed("log_likelihood", renamed, ["t_eps", "noise"])
    sde, t_end = _resolve(model, sde, x, t_end, method, rtol, atol)
    probes = _check_trace_options(trace, probes, probe_distribution)
    _checks.generator("generator", generator)
    eps = None if trace == "exact" else _draw_probes(x.shape, probes, probe_distribution, generator, x.dtype, x.device)

    first = [True]  # check the graph to x once per solve (one extra backward pass)

    def func(t: torch.Tensor, state):
        x_t, _ = state
        with torch.enable_grad():
            x_t = x_t.detach().requires_grad_(True)
            v = _velocity(model, sde, x_t, float(t), need_grad=True, check_graph=first[0])
            first[0] = False
            div = _divergence(v, x_t, eps)
        return v.detach(), div.detach()

    nfe_start = model.nfe
    delta0 = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    with torch.no_grad():
        z, delta = _solve_up(func, (x.detach(), delta0), sde, t_end, x.dtype, method, rtol, atol)
    if not bool(torch.isfinite(z).all()) or not bool(torch.isfinite(delta).all()):
        raise ValueError("the probability-flow ODE produced non-finite values; is the model finite on [t_end, T]?")
    prior_logp = sde.prior_logp(z)
    return LikelihoodResult(prior_logp + delta, z, model.nfe - nfe_start, prior_logp, delta, t_end)


def encode(
    model: ScoreModel, x: torch.Tensor, sde: Optional[SDE] = None, method: str = "dopri5",
    rtol: float = 1e-5, atol: float = 1e-5, t_end: Optional[float] = None, **renamed,
) -> torch.Tensor:
    """The latent z = x_T of data x (B, *shape): the probability-flow ODE from t_end (default
    sde.t_eps) up to T. `decode` (or `scoresde.sample(model, x_T=z, solver="torchdiffeq",
    t_end=t_end)`) inverts it."""
    _no_renamed("encode", renamed, ["t_eps"])
    sde, t_end = _resolve(model, sde, x, t_end, method, rtol, atol)

    def func(t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        return _velocity(model, sde, x_t, float(t), need_grad=False)

    with torch.no_grad():
        return _solve_up(func, x.detach(), sde, t_end, x.dtype, method, rtol, atol)


def decode(
    model: ScoreModel, z: torch.Tensor, method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
    t_end: Optional[float] = None, **renamed,
) -> torch.Tensor:
    """Data from latents z (B, *shape): the probability-flow ODE from T down to t_end (default
    sde.t_eps) through `scoresde.sample` with the torchdiffeq backend."""
    _no_renamed("decode", renamed, ["t_eps"])
    _model(model)
    _data("z", z)
    t_end = model.sde.t_eps if t_end is None else t_end
    return sample(model, x_T=z, solver="torchdiffeq", t_end=t_end, method=method, rtol=rtol, atol=atol).x


def round_trip_error(
    model: ScoreModel, x: torch.Tensor, method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
    t_end: Optional[float] = None, **renamed,
) -> torch.Tensor:
    """max |decode(encode(x)) - x| of each sample, shape (B,): the ODE's invertibility at the
    given tolerances."""
    _no_renamed("round_trip_error", renamed, ["t_eps"])
    z = encode(model, x, method=method, rtol=rtol, atol=atol, t_end=t_end)
    back = decode(model, z, method=method, rtol=rtol, atol=atol, t_end=t_end)
    return (back - x).abs().reshape(x.shape[0], -1).amax(1)


# ---- discrete data --------------------------------------------------------------------------
def bits_per_dim(
    model: ScoreModel,
    x: torch.Tensor,
    levels: int = 256,
    draws: int = 1,
    generator: Optional[torch.Generator] = None,
    dtype: Optional[torch.dtype] = None,
    **likelihood_options,
) -> BitsPerDim:
    """Bits per dimension of discrete data under the model, with uniform dequantization.

    Two input conventions, both mapping the `levels` grey levels onto [-1, 1]:

    * integer tensor (e.g. uint8) of levels k in {0, ..., levels-1}: dequantized as
      x~ = 2 (k + u) / levels - 1, u ~ U[0, 1)^D, the usual image convention; each level owns a
      bin of width Delta = 2 / levels (8-bit: Delta = 1/128).
    * float tensor already scaled to the grid x_k = 2 k / (levels-1) - 1 (what the model was
      trained on, e.g. `scoresde.data.load_digits`: grey levels 0..16 as k/8 - 1, levels=17):
      dequantized inside the bin centred on the grid point, x~ = x_k + Delta (u - 1/2) with
      Delta = 2 / (levels-1) (digits: Delta = 1/8).

    The discrete model P(k) = int_bin p(x~) dx~ >= exp(E_u log p(x~) + D log Delta) (Jensen), so

        bpd = (-E_u log p(x~) - D log Delta) / (D log 2)

    is an upper bound on -log2 P(k) / D; 8-bit data: -D log Delta = D log 128, i.e. +7 bits.
    E_u is the mean over `draws` dequantization draws from `generator`; log p is
    `log_likelihood` (log p_{t_end}, see the module note) with `likelihood_options`.
    Computation runs in `dtype` (default float32, or x's float dtype).
    """
    _checks.renamed(likelihood_options, _RENAMED, "bits_per_dim")
    _model(model)
    levels = _checks.integer("levels", levels, low=2)
    draws = _checks.integer("draws", draws, low=1)
    _checks.generator("generator", generator)
    _checks.floating_dtype("dtype", dtype)
    _data("x", x, floating=False)
    if x.is_floating_point():
        dtype = dtype or x.dtype
        k = (x.double() + 1) * (levels - 1) / 2
        if bool((k < -1e-4).any()) or bool((k > levels - 1 + 1e-4).any()):
            raise ValueError(
                f"x lies outside the declared range [-1, 1] of {levels} levels: values in "
                f"[{float(x.min()):g}, {float(x.max()):g}]"
            )
        if bool(((k - k.round()).abs() > 1e-3).any()):
            raise ValueError(
                f"x is not on the grid 2k/{levels - 1} - 1 of {levels} levels: pass the discrete data "
                "(not already dequantized), or the right `levels`"
            )
        delta = 2 / (levels - 1)
        low = (2 * k.round() / (levels - 1) - 1 - delta / 2).to(dtype)
    else:
        dtype = dtype or torch.float32
        x = x.to(torch.int64)  # uint8 cannot hold `levels` = 256 for the comparison
        if bool((x < 0).any()) or bool((x >= levels).any()):
            raise ValueError(
                f"x lies outside the declared range 0..{levels - 1} of {levels} levels: values in "
                f"[{int(x.min())}, {int(x.max())}]"
            )
        delta = 2 / levels
        low = (2 * x.to(torch.float64) / levels - 1).to(dtype)
    dim = x[0].numel()
    logp = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    nfe = 0
    for _ in range(int(draws)):
        u = torch.rand(low.shape, generator=generator, dtype=dtype, device=low.device)
        res = log_likelihood(model, low + delta * u, generator=generator, **likelihood_options)
        logp += res.logp.double() / draws
        nfe += res.nfe
    bpd = (-logp - dim * math.log(delta)) / (dim * math.log(2))
    return BitsPerDim(bpd, nfe)
