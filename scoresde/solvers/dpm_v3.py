"""DPM-Solver-v3 (Zheng, Lu, Bao, Zhu et al., NeurIPS 2023): a multistep exponential integrator
whose linear part and parameterization are fitted to the model, by its empirical model
statistics (EMS).

In lambda = log(alpha/sigma), with y = x/alpha and sigma_hat = e^{-lambda}, the probability-flow
ODE is dx/dlam = (dlog alpha/dlam - l) x - alpha f, with f = sigma_hat eps - l y for any l.
The statistics, per dimension on a lambda grid, are
  l = E[sigma d eps_d / d x_d]            (the Jacobian diagonal: f then depends least on x),
  s, b = argmin E|f' - s f - b|^2          (least squares of f' = df/dlam along the ODE),
and the solver extrapolates g = e^{-S} f - int e^{-S} b (S = int s), which
changes least along the ODE, by its Taylor polynomial (the multistep predictor) with a
UniC-style corrector at no extra evaluation. With l = 1, s = b = 0 it is DPM-Solver++ (f = -x0).

`model_statistics(model, x0)` computes the statistics from data samples x0 (its cost, counted by
the model, in `ModelStatistics.nfe`); `sample(..., solver="dpm-solver-v3", statistics=stats)`
uses them. For an exact Gaussian-mixture oracle they are computed from exact samples with a
fixed seed when not given (`oracle_statistics`, cached: a benchmark loop pays once; the cost is
not in a sample's NFE, as a tuned grid's is not).
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD

from .. import _checks
from .._utils import tensor_bytes
from ..model import ScoreModel, fingerprint
from ..sde import SDE
from ._loop import LOWER_ORDER_FINAL_BELOW, Loop, as_float, multistep_order
from .exponential import final_options, final_step_evals, finish, to_zero
from .registry import register

__all__ = ["ModelStatistics", "model_statistics", "oracle_statistics", "ORACLE_STATISTICS", "FORMAT",
           "dpm_solver_v3"]

#: the `format` entry of a statistics file
FORMAT = "scoresde.dpm_v3_statistics"
#: how the statistics of an exact Gaussian-mixture oracle are computed when not given
ORACLE_STATISTICS = {"samples": 512, "steps": 128, "seed": 0}
#: Gauss-Legendre nodes and weights on [0, 1] for the step integrals (exact to degree 9 per piece)
_GL_NODES, _GL_WEIGHTS = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(5))
_GL_NODES, _GL_WEIGHTS = (_GL_NODES + 1) / 2, _GL_WEIGHTS / 2
_CACHE: "OrderedDict[tuple, ModelStatistics]" = OrderedDict()
_CACHE_SIZE = 32


@dataclass
class ModelStatistics:
    """Empirical model statistics of one model under one SDE.

    lam: (M+1,) increasing float64 log-SNR grid. l, s, b: (M+1, *data_shape) float64, the
    statistics at each grid point. model_fingerprint: `scoresde.model.fingerprint` of the model;
    sde, sde_fingerprint: repr and `SDE.fingerprint()` of its SDE. seed: the initial seed of the
    generator the noise and probes were drawn from; samples: the number of data samples;
    nfe: the model evaluations the computation cost (as counted by the model).
    """

    lam: torch.Tensor
    l: torch.Tensor
    s: torch.Tensor
    b: torch.Tensor
    model_fingerprint: str
    sde: str
    sde_fingerprint: str
    seed: int
    samples: int
    nfe: int
    _hermite: Dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    @property
    def data_shape(self) -> Tuple[int, ...]:
        return tuple(self.l.shape[1:])

    def check(self, model: ScoreModel, sde: SDE, lam_lo: float, lam_hi: float, data_shape) -> None:
        """Refuse statistics of another model, another SDE, another data shape, or whose lambda
        range does not cover [lam_lo, lam_hi] (the grid's)."""
        given = fingerprint(model)
        if given != self.model_fingerprint:
            raise _checks.fail("statistics", f"the statistics of this model (fingerprint {given})",
                               f"statistics of a model with fingerprint {self.model_fingerprint}")
        if sde.fingerprint() != self.sde_fingerprint:
            raise _checks.fail("statistics", f"statistics computed under this SDE {sde!r}",
                               f"statistics of {self.sde}")
        if tuple(data_shape) != self.data_shape:
            raise _checks.fail("statistics", f"statistics of data shape {tuple(data_shape)}",
                               f"statistics of data shape {self.data_shape}")
        lo, hi = float(self.lam[0]), float(self.lam[-1])
        slack = 1e-9 * max(1.0, abs(lo), abs(hi))
        if lam_lo < lo - slack or lam_hi > hi + slack:
            raise _checks.fail(
                "statistics", f"statistics whose log-SNR range covers the grid's [{lam_lo:.6g}, {lam_hi:.6g}] "
                              "(compute them with model_statistics(..., lam_min=, lam_max=))",
                f"statistics on [{lo:.6g}, {hi:.6g}]")

    # ---- the statistics as functions of lambda ------------------------------------------
    def hermite(self, name: str) -> torch.Tensor:
        """(M, 4, *data_shape) coefficients of the cubic Hermite interpolant of statistic `name`
        on each grid interval, in the offset from the interval's left end (slopes by central
        differences): smooth enough that the solver's g stays smooth between grid points."""
        if name not in self._hermite:
            y = getattr(self, name)
            (m,) = torch.gradient(y, spacing=(self.lam,), dim=0, edge_order=2)
            width = (self.lam[1:] - self.lam[:-1]).reshape(-1, *[1] * (y.ndim - 1))
            secant = (y[1:] - y[:-1]) / width
            a2 = (3 * secant - 2 * m[:-1] - m[1:]) / width
            a3 = (m[:-1] + m[1:] - 2 * secant) / width**2
            self._hermite[name] = torch.stack([y[:-1], m[:-1], a2, a3], dim=1)
        return self._hermite[name]

    # ---- files ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": 1, "lam": self.lam.tolist(), "data_shape": list(self.data_shape),
                "l": self.l.flatten().tolist(), "s": self.s.flatten().tolist(), "b": self.b.flatten().tolist(),
                "model_fingerprint": self.model_fingerprint, "sde": self.sde, "sde_fingerprint": self.sde_fingerprint,
                "seed": self.seed, "samples": self.samples, "nfe": self.nfe}

    def save(self, path: Union[str, Path]) -> None:
        """Write a JSON file (floats in full precision: `load` gives the same tensors, bit for bit)."""
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: Union[str, Path]) -> "ModelStatistics":
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise _checks.fail("path", f"a DPM-Solver-v3 statistics file (format {FORMAT!r})", str(path))
        lam = torch.tensor(data["lam"], dtype=torch.float64)
        shape = (lam.numel(), *data["data_shape"])
        tables = {}
        for name in ("l", "s", "b"):
            values = torch.tensor(data[name], dtype=torch.float64)
            if values.numel() != math.prod(shape):
                raise _checks.fail("path", f"a statistics file whose {name} has {math.prod(shape)} entries",
                                   f"{values.numel()} entries in {str(path)!r}")
            tables[name] = values.reshape(shape)
        return cls(lam, tables["l"], tables["s"], tables["b"], data["model_fingerprint"], data["sde"],
                   data["sde_fingerprint"], int(data["seed"]), int(data["samples"]), int(data["nfe"]))


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()[:16]


def _jvp(model: ScoreModel, x: torch.Tensor, t: torch.Tensor, dx: torch.Tensor, dt: torch.Tensor):
    """(eps(x, t), its derivative along (dx, dt)) by forward-mode autodiff: one evaluation."""
    with fwAD.dual_level():
        out = model.eps(fwAD.make_dual(x, dx), fwAD.make_dual(t, dt))
        eps, tangent = fwAD.unpack_dual(out)
    return eps, tangent


def model_statistics(
    model: ScoreModel,
    x0: torch.Tensor,
    steps: int = 256,
    lam_min: Optional[float] = None,
    lam_max: Optional[float] = None,
    batch_size: int = 16384,
    generator: Optional[torch.Generator] = None,
) -> ModelStatistics:
    """The empirical model statistics of `model` on data samples x0 (n, *data_shape), on `steps`+1
    log-SNRs uniform in [lam_min, lam_max] (default the SDE's [log_snr(T), log_snr(t_eps)]).

    Every grid point sees the same data, noise z and Rademacher probes v (drawn once from
    `generator`, default seed 0): x = alpha x0 + sigma z. l is Hutchinson's estimate
    E[sigma v * (d eps/dx) v] of the Jacobian diagonal; f' comes from the derivative of eps along
    the ODE; both by forward-mode autodiff: 2 evaluations (counted in `nfe`) per batch of at
    most `batch_size` rows, a batch holding several grid points when the samples fit. Computed
    in x0's dtype and device, accumulated in float64. Cached in memory per (model, SDE, options,
    data, generator state)."""
    if not isinstance(model, ScoreModel):
        raise _checks.fail("model", "a scoresde.ScoreModel", type(model).__name__)
    sde = model.sde
    _checks.affine(sde, "DPM-Solver-v3's statistics")
    if not (isinstance(x0, torch.Tensor) and x0.is_floating_point() and x0.ndim >= 2 and x0.shape[0] >= 2):
        raise _checks.fail("x0", "a floating-point tensor of data samples (n, *data_shape), n >= 2", x0)
    _checks.finite("x0", x0)
    steps = _checks.integer("steps", steps, 2)
    batch_size = _checks.integer("batch_size", batch_size, 1)
    _checks.generator("generator", generator)
    t_hi, t_lo = float(sde.T), float(sde.t_eps)
    lam_lo_sde = float(sde.log_snr(torch.tensor(t_hi, dtype=torch.float64)))
    lam_hi_sde = float(sde.log_snr(torch.tensor(t_lo, dtype=torch.float64)))
    lam_min = lam_lo_sde if lam_min is None else _checks.real("lam_min", lam_min, lam_lo_sde)
    lam_max = lam_hi_sde if lam_max is None else _checks.real("lam_max", lam_max, None, lam_hi_sde)
    if not lam_min < lam_max:
        raise _checks.fail("lam_max", f"a log-SNR above lam_min = {lam_min!r}", lam_max)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    key = (fingerprint(model), sde.fingerprint(), steps, lam_min, lam_max, batch_size, _digest(x0),
           _digest(generator.get_state()))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]

    seed = generator.initial_seed()
    n, shape = x0.shape[0], tuple(x0.shape[1:])
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=generator.device).to(x0.device)
    v = (torch.randint(0, 2, x0.shape, generator=generator, device=generator.device) * 2 - 1).to(x0)
    lam = torch.linspace(lam_min, lam_max, steps + 1, dtype=torch.float64)
    t = sde.t_of_log_snr(lam).to(torch.float64)
    if lam_min == lam_lo_sde:
        t[0] = t_hi
    if lam_max == lam_hi_sde:
        t[-1] = t_lo
    alpha, sigma = sde.alpha(t).to(torch.float64), sde.sigma(t).to(torch.float64)
    dt_dlam = -2 * sigma**2 / sde.g2(t).to(torch.float64)  # g2 = -2 sigma^2 dlam/dt
    dlogalpha_dlam = sde.f(t).to(torch.float64) * dt_dlam
    nfe_start = model.nfe
    names = ("probe", "u", "y", "w", "uu", "uy", "yy", "uw", "yw")
    sums = {k: torch.zeros((steps + 1, *shape), dtype=torch.float64, device=x0.device) for k in names}
    per_call = max(1, batch_size // n)  # grid points per evaluation when all samples fit in one
    rows_per = min(n, batch_size)
    with torch.no_grad():
        for j0 in range(0, steps + 1, per_call):
            js = torch.arange(j0, min(j0 + per_call, steps + 1))
            for lo in range(0, n, rows_per):
                rows = slice(lo, min(lo + rows_per, n))
                k = rows.stop - rows.start

                def col(v):  # a per-grid-point value for every row of the batch: (J * k, 1, ...)
                    return v[js].to(x0).repeat_interleave(k).reshape(-1, *[1] * len(shape))

                x = col(alpha) * x0[rows].repeat(len(js), *[1] * len(shape)) \
                    + col(sigma) * z[rows].repeat(len(js), *[1] * len(shape))
                tj = col(t).flatten()
                probe = v[rows].repeat(len(js), *[1] * len(shape))
                eps, jv = _jvp(model, x, tj, probe, torch.zeros_like(tj))
                velocity = col(dlogalpha_dlam) * x - col(sigma) * eps  # dx/dlam of the ODE
                _, d_eps = _jvp(model, x, tj, velocity, col(dt_dlam).flatten())
                sigma_hat = torch.exp(-col(lam)).double()
                u, y = sigma_hat * eps.double(), x.double() / col(alpha).double()
                w = sigma_hat * (d_eps.double() - eps.double())  # f' = l u + w - l' y
                for name, value in (("probe", col(sigma).double() * probe.double() * jv.double()), ("u", u),
                                    ("y", y), ("w", w), ("uu", u * u), ("uy", u * y), ("yy", y * y),
                                    ("uw", u * w), ("yw", y * w)):
                    sums[name][js] += value.reshape(len(js), k, *shape).sum(1)
    nfe = model.nfe - nfe_start
    m = {k: (value / n).cpu() for k, value in sums.items()}
    l = m["probe"]
    (dl,) = torch.gradient(l, spacing=(lam,), dim=0, edge_order=2)
    var_u, cov_uy, var_y = m["uu"] - m["u"] ** 2, m["uy"] - m["u"] * m["y"], m["yy"] - m["y"] ** 2
    cov_uw, cov_yw = m["uw"] - m["u"] * m["w"], m["yw"] - m["y"] * m["w"]
    var_f = var_u - 2 * l * cov_uy + l**2 * var_y
    cov_ff = l * var_u + cov_uw - dl * cov_uy - l**2 * cov_uy - l * cov_yw + l * dl * var_y
    mean_f, mean_df = m["u"] - l * m["y"], l * m["u"] + m["w"] - dl * m["y"]
    # a ridge far below any real variance: where f is deterministic (eps linear in x) its
    # variance is rounding noise, and s = 0 is then as exact as any s (b takes the mean)
    ridge = 1e-12 * (var_u.abs() + l**2 * var_y.abs() + mean_f**2) + 1e-300
    s = cov_ff / (var_f.clamp_min(0) + ridge)
    b = mean_df - s * mean_f
    stats = ModelStatistics(lam, l, s, b, key[0], repr(sde), key[1], seed, n, nfe)
    _CACHE[key] = stats
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return stats


def oracle_statistics(model: ScoreModel) -> ModelStatistics:
    """The statistics of an exact Gaussian-mixture oracle (`GaussianMixture.score_model`) from
    ORACLE_STATISTICS["samples"] exact samples drawn with seed ORACLE_STATISTICS["seed"], in
    float64 (cached). Its evaluations are counted in the statistics' `nfe`, not in the model's
    counter."""
    from ..data import GaussianMixture

    mixture = getattr(model.net, "mixture", None)
    if not isinstance(mixture, GaussianMixture):
        raise _checks.fail(
            "statistics", "given for a model other than an exact Gaussian-mixture oracle: compute them with "
                          "scoresde.solvers.dpm_v3.model_statistics(model, x0) from data samples x0 "
                          "(n, *data_shape), then pass statistics=...", None)
    generator = torch.Generator().manual_seed(ORACLE_STATISTICS["seed"])
    x0 = mixture.sample(ORACLE_STATISTICS["samples"], generator, dtype=torch.float64)
    nfe, rows_apart = model.nfe, getattr(model, "rows_apart", False)
    model.rows_apart = False  # a batch computation whose result no sampled row depends on
    try:
        return model_statistics(model, x0, steps=ORACLE_STATISTICS["steps"], generator=generator)
    finally:
        model.nfe, model.rows_apart = nfe, rows_apart


# ---- the solver ------------------------------------------------------------------------------
class _Coefficients:
    """What the update from lam_s to lam_t needs, per data dimension, from the statistics:
    the linear part's decay (alpha_t/alpha_s) e^{-(L_t - L_s)}, and with
    a(r) = (L + S)(r) - (L + S)(lam_s) and beta(r) = int_s^r e^{-(S_u - S_s)} b_u du the
    integrals E_k = int_s^t e^{a(r)} (r - lam_s)^k / k! dr (k = 0..3) and Eb = int e^a beta;
    dS = S_t - S_s and Bstep = beta(lam_t) to carry g to the next step's base point. The
    statistics are cubic Hermite in lambda on each grid interval; the integrals are Gauss-Legendre
    per interval (nested for beta), accurate far below the solver's own error."""

    def __init__(self, stats: ModelStatistics, lam_s, lam_t, alpha_s, alpha_t):
        grid = stats.lam
        nodes = grid.numel() - 1
        k_s = int(torch.searchsorted(grid, torch.as_tensor(as_float(lam_s), dtype=torch.float64)).clamp(1, nodes)) - 1
        k_t = int(torch.searchsorted(grid, torch.as_tensor(as_float(lam_t), dtype=torch.float64)).clamp(1, nodes)) - 1
        ks = torch.arange(k_s, k_t + 1)
        lam_s, lam_t = _scalar(lam_s), _scalar(lam_t)
        start = torch.cat([lam_s.reshape(1), grid[k_s + 1:k_t + 1]])
        end = torch.cat([grid[k_s + 1:k_t + 1], lam_t.reshape(1)])
        offset, width = start - grid[ks], end - start  # (P,): each piece within its grid interval
        shape = stats.data_shape
        cl, cs, cb = (stats.hermite(name)[ks].flatten(2) for name in ("l", "s", "b"))  # (P, 4, D)

        def poly(c, tau, antiderivative=False):  # each piece's cubic (or its integral from the
            # interval's left end) at offsets tau (P, *q): (P, *q, D)
            t = tau[..., None]
            cj = [c[:, j].reshape(c.shape[0], *[1] * (tau.ndim - 1), c.shape[2]) for j in range(4)]
            if antiderivative:
                return sum(cj[j] * t ** (j + 1) / (j + 1) for j in range(4))
            return sum(cj[j] * t**j for j in range(4))

        def per_piece(v, q):  # (P, D) -> (P, 1 x q, D)
            return v.reshape(v.shape[0], *[1] * q, v.shape[1])

        lp = poly(cl, offset + width, True) - poly(cl, offset, True)  # (P, D): int of l per piece
        sp = poly(cs, offset + width, True) - poly(cs, offset, True)
        l_cum, s_cum = torch.cumsum(lp, 0) - lp, torch.cumsum(sp, 0) - sp  # at each piece's start
        xi, omega = _GL_NODES, _GL_WEIGHTS
        u = width[:, None] * xi  # (P, Q) offsets of the nodes within each piece
        tau = offset[:, None] + u
        s_loc = poly(cs, tau, True) - per_piece(poly(cs, offset, True), 1)  # S - S(piece start)
        l_loc = poly(cl, tau, True) - per_piece(poly(cl, offset, True), 1)
        e = torch.exp(l_loc + s_loc + per_piece(l_cum + s_cum, 1))  # e^{a(r)} at the nodes
        rho = start[:, None] + u - lam_s  # r - lam_s
        wq = (width[:, None] * omega)[..., None]
        self.E = [(wq * e * (rho**k / math.factorial(k))[..., None]).sum((0, 1)) for k in range(4)]
        # beta at the outer nodes: over earlier pieces, plus a nested rule from the piece start
        piece_b = torch.exp(-s_cum) * (wq * torch.exp(-s_loc) * poly(cb, tau)).sum(1)
        beta_cum = torch.cumsum(piece_b, 0) - piece_b
        v_tau = offset[:, None, None] + u[:, :, None] * xi  # (P, Q, Q) inner nodes
        s_in = poly(cs, v_tau, True) - per_piece(poly(cs, offset, True), 2)
        inner = ((u[:, :, None] * omega)[..., None] * torch.exp(-s_in) * poly(cb, v_tau)).sum(2)
        beta = per_piece(beta_cum, 1) + per_piece(torch.exp(-s_cum), 1) * inner
        self.E = [e_k.reshape(shape) for e_k in self.E]
        self.Eb = (wq * e * beta).sum((0, 1)).reshape(shape)
        self.dL, self.dS, self.Bstep = (v.sum(0).reshape(shape) for v in (lp, sp, piece_b))
        self.decay = (alpha_t / alpha_s) * torch.exp(-self.dL)
        self.scale = alpha_t * torch.exp(-self.dL)

    def to(self, like: torch.Tensor) -> "_Coefficients":
        """The coefficients as (1, *shape) tensors of like's dtype and device."""
        for name in ("decay", "scale", "Eb", "dS", "Bstep"):
            setattr(self, name, _cast(getattr(self, name), like))
        self.E = [_cast(e, like) for e in self.E]
        self.exp_dS = torch.exp(self.dS)
        return self


def _scalar(v) -> torch.Tensor:
    return v.to(torch.float64) if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=torch.float64)


def _cast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(dtype=like.dtype, device=like.device).unsqueeze(0)


def _statistic_at(stats: ModelStatistics, name: str, lam) -> torch.Tensor:
    """Statistic `name` at log-SNR lam (a float or 0-d tensor): (*shape) float64."""
    grid = stats.lam
    where = torch.as_tensor(as_float(lam), dtype=torch.float64)
    k = int(torch.searchsorted(grid, where).clamp(1, grid.numel() - 1)) - 1
    c = stats.hermite(name)[k]
    tau = _scalar(lam) - grid[k]
    return sum(c[j] * tau**j for j in range(4))


def _taylor(lam: List, g: List[torch.Tensor], pseudo: bool) -> List[torch.Tensor]:
    """Estimates of g', g'', ... at lam[0] from values g at lam (the first is the base point):
    the derivatives of the interpolating polynomial (Taylor coefficients times k!, from its
    Vandermonde system), or with `pseudo` the divided differences times k! (the paper's
    pseudo-order: lower order, steadier on very few steps)."""
    n = len(g) - 1
    if n == 0:
        return []
    r = [lam[j] - lam[0] for j in range(n + 1)]
    if pseudo:
        table, out = list(g), []
        for k in range(1, n + 1):
            table = [(table[j] - table[j + 1]) / (lam[j] - lam[j + k]) for j in range(n + 1 - k)]
            out.append(table[0] * math.factorial(k))
        return out
    # sum_k r_j^k / k! d_k = g_j - g_0, j = 1..n
    vander = torch.stack([torch.stack([_scalar(r[j]) ** k / math.factorial(k) for k in range(1, n + 1)])
                          for j in range(1, n + 1)])
    inv = torch.linalg.inv(vander)
    diffs = [g[j] - g[0] for j in range(1, n + 1)]
    return [sum(_as_coef(inv[k, j], g[0]) * diffs[j] for j in range(n)) for k in range(n)]


def _as_coef(v: torch.Tensor, like: torch.Tensor):
    return v.to(like.dtype) if v.requires_grad else float(v)


def _update(c: _Coefficients, x: torch.Tensor, g0: torch.Tensor, derivatives: List[torch.Tensor]) -> torch.Tensor:
    """x at lam_t from x at lam_s, g's value and derivative estimates at lam_s."""
    inner = c.E[0] * g0 + c.Eb
    for k, d in enumerate(derivatives, start=1):
        inner = inner + c.E[k] * d
    return c.decay * x - c.scale * inner


@register("dpm-solver-v3", kind="ode", order=3, evals_per_step=1, affine=True, extra_evals=final_step_evals,
          description="DPM-Solver-v3: multistep predictor-corrector on empirical model statistics")
def dpm_solver_v3(
    model: ScoreModel,
    x: torch.Tensor,
    ts: torch.Tensor,
    loop: Loop,
    *,
    history: int = 2,
    corrector: bool = True,
    pseudo: bool = False,
    statistics: Optional[ModelStatistics] = None,
    lower_order_final: Union[bool, int] = LOWER_ORDER_FINAL_BELOW,
    final_step: str = "t_end",
) -> torch.Tensor:
    """history: evaluations the predictor combines (1-3); corrector: the UniC-style corrector
    (one more point, the evaluation at the predicted state, at no extra NFE); pseudo: derivative
    estimates by divided differences (the paper's pseudo-order) instead of the interpolating
    polynomial; statistics: a `ModelStatistics` of this model and SDE (computed for an exact
    Gaussian-mixture oracle when None)."""
    # Zheng et al. 2023 (DPM-Solver-v3): the multistep predictor on g and its corrector, in lambda
    history = _checks.integer("history", history, 1, 3)
    corrector = _checks.boolean("corrector", corrector)
    pseudo = _checks.boolean("pseudo", pseudo)
    below, final_step = final_options(lower_order_final, final_step)
    if statistics is not None and not isinstance(statistics, ModelStatistics):
        raise _checks.fail("statistics", "None or a ModelStatistics (scoresde.solvers.dpm_v3.model_statistics)",
                           type(statistics).__name__)
    g = loop.grid
    steps = loop.num_steps
    stepped = steps - 1 if final_step == "zero" else steps  # the "zero" jump needs no statistics
    lam_used = [as_float(v) for v in g.lam[:stepped + 1]]
    if statistics is None:
        statistics = oracle_statistics(model)
    statistics.check(model, g.sde, min(lam_used), max(lam_used), x.shape[1:])
    coefficients = [_Coefficients(statistics, g.lam[i], g.lam[i + 1], g.alpha[i], g.alpha[i + 1]).to(x)
                    for i in range(stepped)]
    l_at = [_cast(_statistic_at(statistics, "l", g.lam[i]), x) for i in range(stepped + 1)]

    def rescaled(i, x, eps):  # f = sigma_hat eps - l y, y = x / alpha
        return g.sigma_hat[i] * eps - l_at[i] * (x / g.alpha[i])

    lam_hist: List = []  # log-SNRs of the evaluations, newest last
    g_hist: List[torch.Tensor] = []  # their g relative to the newest (g = f there)
    eps = model.eps(x, g.t[0])
    f = rescaled(0, x, eps) if stepped else None
    for i, t, t_next in loop.steps():
        if to_zero(loop, i, final_step):
            x = x / g.alpha[i] - g.sigma_hat[i] * eps  # the data prediction at the last time
            loop.done(i, x, x)
            break
        lam_hist, g_hist = (lam_hist + [g.lam[i]])[-history:], (g_hist + [f])[-history:]
        p, c, x_s = multistep_order(i, steps, history, below), coefficients[i], x
        x = _update(c, x_s, f, _taylor(lam_hist[::-1][:p], g_hist[::-1][:p], pseudo))
        if not loop.is_last(i):
            eps = model.eps(x, t_next)
            f = rescaled(i + 1, x, eps)
            if corrector:
                # the same step again with the new evaluation as one more point (its g relative
                # to lam_s); the nonlinear part sigma eps - l x of that evaluation is kept, so f
                # is unchanged and eps follows x
                g_new = f / c.exp_dS - c.Bstep
                lam_c = [lam_hist[-1], g.lam[i + 1], *lam_hist[::-1][1:p]]
                g_c = [g_hist[-1], g_new, *g_hist[::-1][1:p]]
                x_c = _update(c, x_s, g_hist[-1], _taylor(lam_c, g_c, pseudo))
                eps = eps + (l_at[i + 1] / g.sigma[i + 1]) * (x_c - x)
                x = x_c
            g_hist = [c.exp_dS * (gv + c.Bstep) for gv in g_hist]  # to the new base point
        loop.done(i, x, x_s / g.alpha[i] - g.sigma_hat[i] * eps if loop.is_last(i) else
                  x / g.alpha[i + 1] - g.sigma_hat[i + 1] * eps)
    return finish(model, x, loop, final_step)
