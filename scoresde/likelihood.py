"""Exact log-likelihood through the probability-flow ODE (Song et al., ICLR 2021, eq. 39; the
instantaneous change of variables of Chen et al., NeurIPS 2018).

Along the ODE dx/dt = v(x, t) = f x - g^2 score / 2 the log-density obeys
d log p_t(x_t) / dt = -div v(x_t, t). Integrating x and the divergence together from t_eps up to T,

    log p_{t_eps}(x) = log p_T(z) + int_{t_eps}^T div v(x_t, t) dt,   z = x_T,

with p_T replaced by the prior. What is computed is therefore the density of the *model's
marginal at t_eps* (the data slightly noised, never the t = 0 density, which the ODE cannot
reach), up to the prior mismatch at T; the analytic mixture's counterpart is
`GaussianMixture.log_prob_t(x, t_eps, sde)`.

The divergence is exact (one vector-Jacobian product per dimension, on the whole batch, from a
single network evaluation: low dimension only) or the Hutchinson-Skilling estimate
E[eps^T (dv/dx) eps] with probes eps drawn once and kept fixed over the whole integration, so the
integral estimate is unbiased too. Samples of a batch must not interact inside the network
(no batch-norm in training mode), since one backward pass serves the whole batch.

`bits_per_dim` turns log-densities of dequantized discrete data into a bound on bits per
dimension; `encode` runs the same ODE without the trace (data to latent) and `round_trip_error`
decodes with `scoresde.sample(..., solver="torchdiffeq")`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ._utils import check_choice, check_finite
from .model import ScoreModel
from .sde import SDE
from .solvers import sample
from .solvers.backends import TORCHDIFFEQ_ADAPTIVE

__all__ = [
    "LikelihoodResult", "BitsPerDim", "log_likelihood", "divergence", "encode", "decode",
    "round_trip_error", "bits_per_dim", "TRACES", "NOISES",
]

TRACES = ("exact", "hutchinson")
NOISES = ("rademacher", "gaussian")


@dataclass
class LikelihoodResult:
    """logp: log p_{t_eps}(x) in nats, (B,); z: the latent x_T, shaped like x; nfe: network
    evaluations counted by the model; prior_logp: log prior(z), (B,); delta_logp: the integral
    of div v from t_eps to T, (B,), so that logp = prior_logp + delta_logp; t_eps: start time."""

    logp: torch.Tensor
    z: torch.Tensor
    nfe: int
    prior_logp: torch.Tensor
    delta_logp: torch.Tensor
    t_eps: float


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
def _resolve(model: ScoreModel, sde: Optional[SDE], x: torch.Tensor, t_eps: Optional[float],
             method: str, rtol: float, atol: float) -> Tuple[SDE, float]:
    if sde is None:
        sde = model.sde
    elif sde is not model.sde and repr(sde) != repr(model.sde):
        raise ValueError(f"sde {sde!r} differs from the model's sde {model.sde!r}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise ValueError("x must be a floating-point tensor of shape (B, *data_shape)")
    check_finite("x", x)
    t_eps = sde.t_eps if t_eps is None else t_eps
    if not isinstance(t_eps, (int, float)) or not math.isfinite(t_eps) or not 0 < t_eps < sde.T:
        raise ValueError(f"t_eps must be a number in (0, T={sde.T:g}); got {t_eps!r}")
    check_choice("method", method, TORCHDIFFEQ_ADAPTIVE)
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0; got {value!r}")
    return sde, float(t_eps)


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


def _draw_probes(shape, probes: int, noise: str, generator, dtype, device) -> torch.Tensor:
    eps = torch.randn((probes, *shape), generator=generator, dtype=dtype, device=device)
    return eps.sign() if noise == "rademacher" else eps  # sign of a Gaussian: +-1 with probability 1/2


def _check_trace_options(trace: str, probes: int, noise: str) -> None:
    check_choice("trace", trace, TRACES)
    check_choice("noise", noise, NOISES)
    if isinstance(probes, bool) or int(probes) != probes or probes < 1:
        raise ValueError(f"probes must be an integer >= 1; got {probes!r}")


def divergence(
    model: ScoreModel, x: torch.Tensor, t: float, trace: str = "exact", probes: int = 1,
    noise: str = "rademacher", generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """div_x of the probability-flow velocity at (x, t), shape (B,): exact, or the
    Hutchinson-Skilling estimate averaged over `probes` fresh probes. One network evaluation."""
    _check_trace_options(trace, probes, noise)
    check_finite("x", x)
    eps = None if trace == "exact" else _draw_probes(x.shape, probes, noise, generator, x.dtype, x.device)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = _velocity(model, model.sde, x, float(t), need_grad=True, check_graph=True)
        return _divergence(v, x, eps).detach()


# ---- the ODE ------------------------------------------------------------------------------
def _odeint(func, y0, sde: SDE, t_eps: float, dtype, device, method: str, rtol: float, atol: float):
    import torchdiffeq

    ts = torch.tensor([t_eps, sde.T], dtype=dtype, device=device)
    # as in solvers/backends.py: no automatic first-step probe and no overshoot past T, so the
    # SDE is never evaluated outside [t_eps, T]
    options = {"first_step": 1e-3 * (sde.T - t_eps), "step_t": ts[[-1]]}
    try:
        path = torchdiffeq.odeint(func, y0, ts, method=method, rtol=rtol, atol=atol, options=options)
    except AssertionError as err:  # torchdiffeq's "underflow in dt"
        raise ValueError(f"the probability-flow ODE solve failed ({err}); is the model finite on [t_eps, T]?") from err
    return tuple(p[-1] for p in path) if isinstance(path, tuple) else path[-1]


def log_likelihood(
    model: ScoreModel,
    x: torch.Tensor,
    sde: Optional[SDE] = None,
    trace: str = "exact",
    probes: int = 1,
    noise: str = "rademacher",
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_eps: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
) -> LikelihoodResult:
    """log p_{t_eps}(x) of the model's probability-flow ODE, in nats, for x of shape (B, *shape).

    Args:
        trace: "exact" (D vector-Jacobian products per evaluation; low dimension) or
            "hutchinson" (`probes` probes of `noise` type, drawn once from `generator`).
        method, rtol, atol: the torchdiffeq adaptive method and tolerances, applied to x and
            to the accumulated divergence alike; computation runs in x's dtype.
        t_eps: start time (default sde.t_eps); the result is the density of the marginal at
            t_eps, not at 0.

    The result carries no autograd graph. NFE counts one per evaluation (traces reuse it).
    """
    sde, t_eps = _resolve(model, sde, x, t_eps, method, rtol, atol)
    _check_trace_options(trace, probes, noise)
    eps = None if trace == "exact" else _draw_probes(x.shape, probes, noise, generator, x.dtype, x.device)

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
        z, delta = _odeint(func, (x.detach(), delta0), sde, t_eps, x.dtype, x.device, method, rtol, atol)
    if not bool(torch.isfinite(z).all()) or not bool(torch.isfinite(delta).all()):
        raise ValueError("the probability-flow ODE produced non-finite values; is the model finite on [t_eps, T]?")
    prior_logp = sde.prior_logp(z)
    return LikelihoodResult(prior_logp + delta, z, model.nfe - nfe_start, prior_logp, delta, t_eps)


def encode(
    model: ScoreModel, x: torch.Tensor, sde: Optional[SDE] = None, method: str = "dopri5",
    rtol: float = 1e-5, atol: float = 1e-5, t_eps: Optional[float] = None,
) -> torch.Tensor:
    """The latent z = x_T of data x (B, *shape): the probability-flow ODE from t_eps up to T.
    `decode` (or `scoresde.sample(model, x_T=z, solver="torchdiffeq", t_end=t_eps)`) inverts it."""
    sde, t_eps = _resolve(model, sde, x, t_eps, method, rtol, atol)

    def func(t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        return _velocity(model, sde, x_t, float(t), need_grad=False)

    with torch.no_grad():
        return _odeint(func, x.detach(), sde, t_eps, x.dtype, x.device, method, rtol, atol)


def decode(
    model: ScoreModel, z: torch.Tensor, method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
    t_eps: Optional[float] = None,
) -> torch.Tensor:
    """Data from latents: the probability-flow ODE from T down to t_eps through
    `scoresde.sample` with the torchdiffeq backend."""
    t_end = model.sde.t_eps if t_eps is None else t_eps
    return sample(model, x_T=z, solver="torchdiffeq", t_end=t_end, method=method, rtol=rtol, atol=atol).x


def round_trip_error(
    model: ScoreModel, x: torch.Tensor, method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
    t_eps: Optional[float] = None,
) -> torch.Tensor:
    """max |decode(encode(x)) - x| of each sample, shape (B,): the ODE's invertibility at the
    given tolerances."""
    z = encode(model, x, method=method, rtol=rtol, atol=atol, t_eps=t_eps)
    back = decode(model, z, method=method, rtol=rtol, atol=atol, t_eps=t_eps)
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
    `log_likelihood` (log p_{t_eps}, see the module note) with `likelihood_options`.
    Computation runs in `dtype` (default float32, or x's float dtype).
    """
    if isinstance(levels, bool) or int(levels) != levels or levels < 2:
        raise ValueError(f"levels must be an integer >= 2; got {levels!r}")
    if isinstance(draws, bool) or int(draws) != draws or draws < 1:
        raise ValueError(f"draws must be an integer >= 1; got {draws!r}")
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        raise ValueError("x must be a tensor of shape (B, *data_shape)")
    if x.is_floating_point():
        check_finite("x", x)
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
