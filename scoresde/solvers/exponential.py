"""Exponential integrators of the probability-flow ODE, written in lambda = log(alpha/sigma).

The linear part of the ODE is solved exactly; only the network term is approximated (Lu et al.
2022a, eq. 3.4): x_t = (alpha_t/alpha_s) x_s - alpha_t int_s^t e^{-lambda} eps dlambda, or in
data prediction x_t = (sigma_t/sigma_s) x_s + sigma_t int_s^t e^{lambda} x0 dlambda.
`ipndm` and `deis` work in y = x/alpha against sigma_hat = sigma/alpha = e^{-lambda}, where
the ODE is dy/dsigma_hat = eps. All need an affine SDE. Multistep solvers take `history`, the
number of evaluations one step combines (the newest included), `lower_order_final` the step
count below which the order tapers on the final steps (True: LOWER_ORDER_FINAL_BELOW, False: 0)
and `final_step` what the last step does (FINAL_STEPS).
"""
from __future__ import annotations

import numbers
from typing import Callable, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from .. import _checks
from ..model import ScoreModel
from ._loop import (LOWER_ORDER_FINAL_BELOW, Grid, History, Loop, Scalar, as_float, expm1, log,
                    multistep_order, with_value)
from .registry import register

__all__ = [
    "ddim", "dpm_solver_2", "dpm_solver_3", "dpm_multistep", "unipc", "ipndm", "deis",
    "ddim_update", "dpm_multistep_update", "unipc_update", "lower_order_threshold", "FINAL_STEPS",
    "UNIPC_VARIANTS", "DEIS_BASES", "final_step_evals", "final_options", "to_zero", "finish",
]

#: what a multistep solver's last step does: "t_end" stops at the grid's last time; "denoise"
#: adds one evaluation there and returns the posterior mean E[x0 | x_t_end] (Tweedie, as
#: `sample(denoise=True)`); "zero" is diffusers' final_sigmas_type="zero": the last step goes from
#: the second-to-last grid time to sigma = 0 (the data), so the grid's last time is not used and
#: the step costs no extra evaluation (a state hook and the callback still see that time).
#: Solvers of data predictions take that step at first order, x = x0_pred (their step formulas
#: have h = infinity there); those in sigma_hat integrate their own polynomial to sigma_hat = 0.
FINAL_STEPS = ("t_end", "denoise", "zero")


def final_step_evals(options: Mapping[str, object]) -> int:
    """Evaluations beyond one per step of a solver with a final_step option, from its options:
    the Tweedie evaluation of final_step="denoise" (a registry `extra_evals`)."""
    return 1 if options.get("final_step") == "denoise" else 0


def lower_order_threshold(lower_order_final: Union[bool, int]) -> int:
    """The step count below which a multistep solver's order tapers on the final steps, from
    the option lower_order_final: True is LOWER_ORDER_FINAL_BELOW, False is 0 (never), an
    integer >= 0 is itself; anything else is refused."""
    if isinstance(lower_order_final, bool):
        return LOWER_ORDER_FINAL_BELOW if lower_order_final else 0
    if not isinstance(lower_order_final, numbers.Integral) or lower_order_final < 0:
        raise _checks.fail("lower_order_final", "True, False or an integer >= 0", lower_order_final)
    return int(lower_order_final)


def final_options(lower_order_final: Union[bool, int], final_step: str) -> Tuple[int, str]:
    """(threshold, rule): lower_order_final as the step count below which the order tapers
    (`lower_order_threshold`) and the final_step rule (one of FINAL_STEPS), both checked."""
    return lower_order_threshold(lower_order_final), _checks.choice("final_step", final_step, FINAL_STEPS)


def to_zero(loop: Loop, i: int, final_step: str) -> bool:
    """Whether step i of the loop is final_step="zero"'s jump to sigma = 0 (the last step)."""
    return final_step == "zero" and loop.is_last(i)


def finish(model: ScoreModel, x: torch.Tensor, loop: Loop, final_step: str) -> torch.Tensor:
    """The state a solver returns: with final_step="denoise", `Loop.denoise` (what
    `sample(denoise=True)` does)."""
    return loop.denoise(model, x, "final_step='denoise'") if final_step == "denoise" else x


@register("ddim", kind="ode", order=1, evals_per_step=1, affine=True, description="DDIM = DPM-Solver-1")
def ddim(model: ScoreModel, x: torch.Tensor, ts: torch.Tensor, loop: Loop) -> torch.Tensor:
    # Song et al. 2021 (DDIM, eta = 0) = Lu et al. 2022a, eq. 3.7, in data-prediction form
    g = loop.grid
    for i, t, t_next in loop.steps():
        x0_pred = model.x0(x, t)
        x = ddim_update(g, i, x, x0_pred)
        loop.done(i, x, x0_pred)
    return x


def ddim_update(g: Grid, i: int, x: torch.Tensor, x0_pred: torch.Tensor) -> torch.Tensor:
    """One DDIM step from g.t[i] to g.t[i+1] given the data prediction at g.t[i]: the first-order
    term every data-prediction solver here starts from (and `scoresde.interop` steps with)."""
    return (g.sigma[i + 1] / g.sigma[i]) * x - (g.alpha[i + 1] * expm1(-g.h(i))) * x0_pred


@register("dpm-solver-2", kind="ode", order=2, evals_per_step=2, affine=True, description="single-step DPM-Solver-2")
def dpm_solver_2(model: ScoreModel, x: torch.Tensor, ts: torch.Tensor, loop: Loop) -> torch.Tensor:
    # Lu et al. 2022a, Algorithm 1 (DPM-Solver-2, r1 = 1/2), noise prediction
    g, r1 = loop.grid, 0.5
    for i, t, t_next in loop.steps():
        h = g.h(i)
        s1, alpha_s1, sigma_s1 = g.at_lambda(g.lam[i] + r1 * h)
        eps_s = model.eps(x, t)
        u = (alpha_s1 / g.alpha[i]) * x - (sigma_s1 * expm1(r1 * h)) * eps_s
        eps_s1 = model.eps(u, s1)
        phi = g.sigma[i + 1] * expm1(h)
        x = (g.alpha[i + 1] / g.alpha[i]) * x - phi * eps_s - (phi / (2 * r1)) * (eps_s1 - eps_s)
        loop.done(i, x)
    return x


@register("dpm-solver-3", kind="ode", order=3, evals_per_step=3, affine=True, description="single-step DPM-Solver-3")
def dpm_solver_3(model: ScoreModel, x: torch.Tensor, ts: torch.Tensor, loop: Loop) -> torch.Tensor:
    # Lu et al. 2022a, Algorithm 2 (DPM-Solver-3, r1 = 1/3, r2 = 2/3), noise prediction
    g, r1, r2 = loop.grid, 1 / 3, 2 / 3
    for i, t, t_next in loop.steps():
        a_s, a_t, sigma_t = g.alpha[i], g.alpha[i + 1], g.sigma[i + 1]
        h = g.h(i)
        s1, a_s1, sigma_s1 = g.at_lambda(g.lam[i] + r1 * h)
        s2, a_s2, sigma_s2 = g.at_lambda(g.lam[i] + r2 * h)
        eps_s = model.eps(x, t)
        u1 = (a_s1 / a_s) * x - (sigma_s1 * expm1(r1 * h)) * eps_s
        d1 = model.eps(u1, s1) - eps_s
        u2 = (
            (a_s2 / a_s) * x
            - (sigma_s2 * expm1(r2 * h)) * eps_s
            - (sigma_s2 * r2 / r1 * (expm1(r2 * h) / (r2 * h) - 1)) * d1
        )
        d2 = model.eps(u2, s2) - eps_s
        x = (a_t / a_s) * x - (sigma_t * expm1(h)) * eps_s - (sigma_t / r2 * (expm1(h) / h - 1)) * d2
        loop.done(i, x)
    return x


@register("dpm++2m", kind="ode", order=2, evals_per_step=1, affine=True, defaults={"history": 2},
          extra_evals=final_step_evals, description="multistep DPM-Solver++(2M)")
@register("dpm++3m", kind="ode", order=3, evals_per_step=1, affine=True, defaults={"history": 3},
          extra_evals=final_step_evals, description="multistep DPM-Solver++(3M)")
def dpm_multistep(
    model: ScoreModel, x: torch.Tensor, ts: torch.Tensor, loop: Loop, *, history: int = 2,
    lower_order_final: Union[bool, int] = LOWER_ORDER_FINAL_BELOW, final_step: str = "t_end"
) -> torch.Tensor:
    # Lu et al. 2022b, Algorithm 2 (2M) and its third-order extension, data prediction
    history = _checks.integer("history", history, 1, 3)
    below, final_step = final_options(lower_order_final, final_step)
    g, x0s = loop.grid, History(history)
    for i, t, t_next in loop.steps():
        x0s.push(g.lam[i], model.x0(x, t))
        if to_zero(loop, i, final_step):
            x = x0s.values[-1]
        else:
            x = dpm_multistep_update(g, i, x, x0s, multistep_order(i, loop.num_steps, history, below))
        loop.done(i, x, x0s.values[-1])
    return finish(model, x, loop, final_step)


def dpm_multistep_update(g: Grid, i: int, x: torch.Tensor, x0s: History, p: int) -> torch.Tensor:
    """One DPM-Solver++(pM) step from g.t[i] to g.t[i+1]; `x0s` holds the data predictions,
    the newest at g.t[i], with their log-SNRs (at least p of them). p = 1 is DDIM."""
    x0_hist, lam = x0s.values, x0s.lam
    x0_pred = x0_hist[-1]
    h = g.h(i)
    phi_1 = expm1(-h)
    a_t = g.alpha[i + 1]
    x_next = ddim_update(g, i, x, x0_pred)
    if p >= 2:
        r0 = (lam[-1] - lam[-2]) / h
        d1_0 = (x0_pred - x0_hist[-2]) / r0
    if p == 2:
        x_next = x_next - (0.5 * a_t * phi_1) * d1_0
    elif p == 3:
        r1 = (lam[-2] - lam[-3]) / h
        d1_1 = (x0_hist[-2] - x0_hist[-3]) / r1
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)  # ~ h x0'
        d2 = 2 * (d1_0 - d1_1) / (r0 + r1)  # ~ h^2 x0''
        phi_2 = phi_1 / h + 1
        phi_3 = phi_2 / h - 0.5
        # the x0'' Taylor term integrates to -alpha_t h^2 phi_3 x0''; with d2 at half that
        # size (as in the reference implementation) the method is only second order
        x_next = x_next + (a_t * phi_2) * d1 - (a_t * phi_3) * d2
    return x_next


def _unipc_coefficients(rks: List[Scalar], h: Scalar, variant: str):
    """UniPC's B(h), predictor weights rhos_p (p-1 of them) and corrector weights rhos_c (p),
    for data prediction; rks are (lambda_prev_k - lambda_prev_0)/h of earlier points."""
    hh = -h
    b_h = hh if variant == "bh1" else expm1(hh)
    p = len(rks) + 1
    h_phi_k = expm1(hh) / hh - 1
    factorial = 1
    b = []
    for k in range(1, p + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    rhos_p = [0.5] if p == 2 else (_solve_vandermonde(rks, b[:-1]) if p > 2 else [])
    rhos_c = [0.5] if p == 1 else _solve_vandermonde(rks + [1.0], b)
    return b_h, rhos_p, rhos_c


def _solve_vandermonde(r: Sequence[Scalar], b: Sequence[Scalar]) -> List[Scalar]:
    """rho with sum_j r_j^k rho_j = b_k, k = 0..len(r)-1, by numpy; when any entry is a tensor,
    also by torch in float64 for the derivatives."""
    tensors = any(isinstance(v, torch.Tensor) for v in (*r, *b))
    r_np, b_np = (np.array([as_float(v) for v in r]), np.array([as_float(v) for v in b])) if tensors else (
        np.array(r), np.array(b))
    rho = np.linalg.solve(np.stack([r_np**k for k in range(len(r))]), b_np)
    if not tensors:
        return rho.tolist()
    r_t = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in r])
    b_t = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in b])
    rho_t = torch.linalg.solve(torch.stack([r_t**k for k in range(len(r))]), b_t)
    return [with_value(y, v) for y, v in zip(rho_t.unbind(), rho.tolist())]


#: UniPC's B(h): "bh1" is h, "bh2" is e^h - 1 (Zhao et al. 2023, Sec. 3.3)
UNIPC_VARIANTS = ("bh1", "bh2")


@register("unipc", kind="ode", order=3, evals_per_step=1, affine=True, extra_evals=final_step_evals,
          description="UniPC (UniP-p + UniC), bh1/bh2")
def unipc(
    model: ScoreModel,
    x: torch.Tensor,
    ts: torch.Tensor,
    loop: Loop,
    *,
    history: int = 2,
    variant: str = "bh2",
    corrector: bool = True,
    lower_order_final: Union[bool, int] = LOWER_ORDER_FINAL_BELOW,
    final_step: str = "t_end",
) -> torch.Tensor:
    # Zhao et al. 2023, Algorithms 2-3 (UniPC-p with B(h) = h or e^h - 1, p = history), data
    # prediction. The corrector reuses the evaluation at the predicted point, so it costs no
    # extra NFE and UniPC-p with the corrector has order p + 1.
    history = _checks.integer("history", history, 1, 3)
    variant = _checks.choice("variant", variant, UNIPC_VARIANTS)
    corrector = _checks.boolean("corrector", corrector)
    below, final_step = final_options(lower_order_final, final_step)
    g, x0s = loop.grid, History(3)
    x0s.push(g.lam[0], model.x0(x, g.t[0]))
    for i, t, t_next in loop.steps():
        if to_zero(loop, i, final_step):
            x = x0s.values[-1]
            loop.done(i, x, x)
            break
        p = multistep_order(i, loop.num_steps, history, below)
        x_pred = unipc_update(g, i, x, x0s, p, variant)
        if loop.is_last(i):
            x = x_pred
        else:
            x0_next = model.x0(x_pred, t_next)
            x = unipc_update(g, i, x, x0s, p, variant, x0_next) if corrector else x_pred
            x0s.push(g.lam[i + 1], x0_next)
        loop.done(i, x, x0s.values[-1])
    return finish(model, x, loop, final_step)


def unipc_update(g: Grid, i: int, x: torch.Tensor, x0s: History, p: int, variant: str = "bh2",
                 x0_next: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One UniPC-p step from g.t[i] to g.t[i+1] with B(h) of `variant` ('bh1': h, 'bh2':
    e^h - 1): the predictor UniP-p, or, given `x0_next` (the data prediction at the predicted
    point at g.t[i+1]), the corrector UniC-p of the same step, from the same x. `x0s` holds the
    data predictions up to the one at g.t[i] (newest last, at least p) with their log-SNRs."""
    lam_hist, x0_hist = x0s.lam, x0s.values
    h = g.h(i)
    rks = [(lam_hist[-(k + 1)] - lam_hist[-1]) / h for k in range(1, p)]
    d1s = [(x0_hist[-(k + 1)] - x0_hist[-1]) / rk for k, rk in zip(range(1, p), rks)]
    b_h, rhos_p, rhos_c = _unipc_coefficients(rks, h, variant)
    x_base = ddim_update(g, i, x, x0_hist[-1])
    if x0_next is None:
        res = sum((rho * d for rho, d in zip(rhos_p, d1s)), torch.zeros_like(x))
    else:
        res = sum((rho * d for rho, d in zip(rhos_c[:-1], d1s)), rhos_c[-1] * (x0_next - x0_hist[-1]))
    return x_base - (g.alpha[i + 1] * b_h) * res


_ADAMS_BASHFORTH = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


def _sigma_hat_multistep(model: ScoreModel, x: torch.Tensor, loop: Loop, history: int,
                         weights: Callable[[List[Scalar], Scalar, Scalar], List[Scalar]],
                         lower_order_final: Union[bool, int], final_step: str) -> torch.Tensor:
    """Adams-Bashforth in y = x/alpha against sigma_hat: y_{i+1} = y_i + sum_k w_k eps_{i-k},
    with w = weights(sigma_hat of the p newest eps, newest first; sigma_hat_i; sigma_hat_{i+1}),
    p = multistep_order (lower order for the first steps, and the last ones below the threshold).
    The jump of final_step="zero" integrates to sigma_hat = 0, where x = y."""
    history = _checks.integer("history", history, 1, 4)
    below, final_step = final_options(lower_order_final, final_step)
    g, eps = loop.grid, History(history)
    for i, t, t_next in loop.steps():
        eps.push(g.lam[i], model.eps(x, t))
        p = multistep_order(i, loop.num_steps, history, below)
        zero = to_zero(loop, i, final_step)
        w = weights([g.sigma_hat[i - j] for j in range(p)], g.sigma_hat[i], 0.0 if zero else g.sigma_hat[i + 1])
        y = x / g.alpha[i] + sum(w_k * e for w_k, e in zip(w, reversed(eps.values)))
        x = y if zero else g.alpha[i + 1] * y
        loop.done(i, x)
    return finish(model, x, loop, final_step)


@register("ipndm", kind="ode", order=2, evals_per_step=1, affine=True, extra_evals=final_step_evals,
          description="improved PNDM: AB4 with equal-step weights (order 2 on non-uniform grids)")
def ipndm(model: ScoreModel, x: torch.Tensor, ts: torch.Tensor, loop: Loop, *, history: int = 4,
          lower_order_final: Union[bool, int] = 0, final_step: str = "t_end") -> torch.Tensor:
    # Zhang & Chen 2023 (DEIS), iPNDM: Adams-Bashforth with equal-step weights on eps
    def weights(nodes, lo, hi):
        return [(hi - lo) * c for c in _ADAMS_BASHFORTH[len(nodes)]]

    return _sigma_hat_multistep(model, x, loop, history, weights, lower_order_final, final_step)


#: the variable in which `deis` fits its eps polynomial: rho = sigma_hat (the paper's rhoAB-DEIS)
#: or log rho (diffusers' DEISMultistepScheduler, solver_type="logrho")
DEIS_BASES = ("rho", "log_rho")


def _lagrange_integrals(nodes: List[Scalar], lo: Scalar, hi: Scalar, basis: str = "rho") -> List[Scalar]:
    """int_lo^hi l_j(s) ds for the Lagrange basis polynomials l_j on `nodes` in s (basis "rho")
    or in log s ("log_rho"; nodes, lo > 0, hi >= 0), by numpy (rho) or float arithmetic (log
    rho); when any entry is a tensor, also by the same expansion in tensor arithmetic for the
    derivatives."""
    if len(nodes) == 1:
        return [hi - lo]
    tensors = any(isinstance(v, torch.Tensor) for v in (*nodes, lo, hi))
    values, lo_f, hi_f = ([as_float(n) for n in nodes], as_float(lo), as_float(hi)) if tensors else (nodes, lo, hi)
    if basis == "log_rho":
        out = [_log_lagrange_integral(values, j, lo_f, hi_f) for j in range(len(values))]
        if not tensors:
            return out
        return [with_value(_log_lagrange_integral(nodes, j, lo, hi), v) for j, v in enumerate(out)]
    out = []
    for j, node in enumerate(values):
        others = [n for k, n in enumerate(values) if k != j]
        basis_j = np.polynomial.Polynomial.fromroots(others) / np.prod([node - n for n in others])
        antiderivative = basis_j.integ()
        out.append(float(antiderivative(hi_f) - antiderivative(lo_f)))
    if not tensors:
        return out
    return [with_value(_lagrange_integral(nodes, j, lo, hi), v) for j, v in enumerate(out)]


def lagrange_basis(nodes: Sequence[Scalar], j: int):
    """(ascending coefficients of prod_{k != j} (u - nodes_k), prod_{k != j} (nodes_j - nodes_k)):
    l_j(u) is the first over the second."""
    coef, denom = [1.0], 1.0
    for k, root in enumerate(nodes):
        if k != j:
            coef = [(coef[m - 1] if m else 0.0) - (root * coef[m] if m < len(coef) else 0.0)
                    for m in range(len(coef) + 1)]
            denom = denom * (nodes[j] - root)
    return coef, denom


def _lagrange_integral(nodes: List[Scalar], j: int, lo: Scalar, hi: Scalar) -> Scalar:
    """int_lo^hi l_j(s) ds in scalar arithmetic (differentiable): the coefficients of
    prod_{k != j} (s - nodes_k) integrated term by term, over prod_{k != j} (nodes_j - nodes_k)."""
    coef, denom = lagrange_basis(nodes, j)
    return sum(c * (hi ** (m + 1) - lo ** (m + 1)) / (m + 1) for m, c in enumerate(coef)) / denom


def _log_lagrange_integral(nodes: List[Scalar], j: int, lo: Scalar, hi: Scalar) -> Scalar:
    """int_lo^hi l_j(log s) ds, l_j the Lagrange basis on log(nodes), in scalar arithmetic: with
    u = log s, int P(u) e^u du = e^u Q(u) for Q = P - P' + P'' - ..., so the antiderivative is
    s Q(log s), which tends to 0 as s -> 0."""
    coef, denom = lagrange_basis([log(n) for n in nodes], j)
    q, d, sign = list(coef), list(coef), 1.0
    while len(d) > 1:
        d, sign = [m * d[m] for m in range(1, len(d))], -sign
        q = [q[m] + sign * d[m] if m < len(d) else q[m] for m in range(len(q))]

    def antiderivative(s):
        if as_float(s) == 0.0:
            return 0.0
        u = log(s)
        return s * sum(c * u**m for m, c in enumerate(q))

    return (antiderivative(hi) - antiderivative(lo)) / denom


@register("deis", kind="ode", order=3, evals_per_step=1, affine=True, extra_evals=final_step_evals,
          description="DEIS (variable-step AB in rho or log rho)")
def deis(
    model: ScoreModel, x: torch.Tensor, ts: torch.Tensor, loop: Loop, *, history: int = 3, basis: str = "log_rho",
    lower_order_final: Union[bool, int] = 0, final_step: str = "t_end"
) -> torch.Tensor:
    """basis="log_rho" (default) fits eps in log rho, as diffusers' DEIS; "rho" is the paper's
    rhoAB-DEIS. log rho is the default because it had the smaller terminal RMSE in 47 of 48 cells
    of `benchmarks/final_steps.py deis` (ring2d and gmm16d under VP and EDM, logsnr and karras
    grids, 5/10/20 NFE, history 2 and 3; rho 1.5x worse in geometric mean at history 2, 1.7x at
    3; benchmarks/results/final_steps_deis.json). Its lower_order_final default, 0, and the
    others' 15 come from the same script's `final` runs (final_steps_{logsnr,karras}.json)."""
    # Zhang & Chen 2023, rhoAB-DEIS: eps extrapolated by the Lagrange polynomial through the
    # last `history` points in rho = sigma_hat (or in log rho) and integrated exactly over the step
    basis = _checks.choice("basis", basis, DEIS_BASES)

    def weights(nodes, lo, hi):
        return _lagrange_integrals(nodes, lo, hi, basis)

    return _sigma_hat_multistep(model, x, loop, history, weights, lower_order_final, final_step)
