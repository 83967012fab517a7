"""Restart sampling (Xu et al., NeurIPS 2023, Algorithm 1): a backward ODE solve by any
fixed-step ODE solver of the registry, which at the low-noise end t_min of each restart interval
[t_min, t_max] K times jumps forward to t_max with the exact forward transition and solves the
ODE back to t_min; the large forward noise contracts the errors accumulated before it.

The main pass steps on the given grid; an interval's t_min is taken as the first grid time at or
below it (as the paper's code snaps t_min to its schedule), the jump adds exactly the noise of
the forward transition from there to t_max, and each restart pass takes `restart_steps` steps
uniform in log-SNR. Every backward pass is a solve of the base solver of its own (its warm-up and
last-step rules included), so the evaluations are those of the passes (`restart_nfe`):
base.nfe(k) + base.nfe(steps - k) for the main pass split at grid index k, plus K base.nfe(N).
The registry's extra_evals is that count less steps x base evaluations, as a function of the
options, so `get("restart").nfe(steps, options)` and `steps_for_nfe` follow them (exact when
each restart interval's t_min falls inside the main grid, as it does for the default interval)."""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .. import _checks
from ..model import ScoreModel
from ._loop import Loop, NonFiniteError, Noise, NoiseFn, Scalar, as_float, sqrt
from .registry import get, register

__all__ = ["restart", "restart_nfe", "DEFAULT_LOG_SNR_INTERVAL"]

#: the default restart interval: sigma/alpha in [0.1, 1] (the paper's CIFAR-10 interval is
#: [0.06, 0.30] for data in [-1, 1]; this one measured better on the unit-scale mixtures of
#: tests/test_restart_sa.py), as log-SNRs so that one default serves every affine SDE
DEFAULT_LOG_SNR_INTERVAL = (0.0, math.log(10.0))

Pair = Tuple[float, float]


def _pairs(name: str, value) -> List[Pair]:
    """One pair (lo, hi) with lo < hi, or a sequence of them, as a list of float pairs."""
    def is_pair(v):
        return isinstance(v, (tuple, list)) and len(v) == 2 and not isinstance(v[0], (tuple, list))

    pairs = [value] if is_pair(value) else list(value) if isinstance(value, (tuple, list)) and value else None
    if pairs is None or not all(is_pair(p) for p in pairs):
        raise _checks.fail(name, "a pair (lo, hi) or a sequence of pairs", value)
    out = []
    for lo, hi in pairs:
        lo, hi = _checks.real(name, lo), _checks.real(name, hi)
        if not lo < hi:
            raise _checks.fail(name, "intervals (lo, hi) with lo < hi", value)
        out.append((lo, hi))
    return out


def _per_interval(name: str, value, count: int, low: int) -> List[int]:
    values = list(value) if isinstance(value, (tuple, list)) else [value] * count
    if len(values) != count:
        raise _checks.fail(name, f"an integer or one per restart interval ({count})", value)
    return [_checks.integer(name, v, low=low) for v in values]


def _base(base: str, base_options: Optional[Mapping[str, object]]):
    """The base solver's registry entry and options, refused unless a fixed-step ODE solver."""
    if not isinstance(base, str):
        raise _checks.fail("base", "the name of a fixed-step ODE solver", base)
    info = get(base)
    if info.kind != "ode" or info.adaptive or not info.step_hook:
        raise _checks.fail("base", "a fixed-step ODE solver (e.g. 'heun', 'dpm++2m')", base)
    options = dict(base_options or {})
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        raise _checks.fail("base_options", f"options of {info.name!r} ({', '.join(info.options) or 'none'})",
                           options)
    return info, options


def _intervals(model: ScoreModel, ts: torch.Tensor, interval, log_snr_interval) -> List[Pair]:
    """Restart intervals as (t_min, t_max) in the SDE's time, each within the grid's range."""
    if interval is not None and log_snr_interval is not None:
        raise _checks.ArgumentError("give interval (times) or log_snr_interval (log-SNRs), not both")
    t_end, t_start = float(ts[-1].detach()), float(ts[0].detach())
    if interval is not None:
        pairs, given = _pairs("interval", interval), "interval"
    else:
        lams = _pairs("log_snr_interval", DEFAULT_LOG_SNR_INTERVAL if log_snr_interval is None else log_snr_interval)
        sde = model.sde
        pairs = [tuple(float(sde.t_of_log_snr(torch.tensor(v, dtype=torch.float64))) for v in (hi, lo))
                 for lo, hi in lams]
        given = "log_snr_interval" if log_snr_interval is not None else "the default log_snr_interval"
    for t_min, t_max in pairs:
        if t_min < t_end or t_max > t_start:
            raise _checks.ArgumentError(
                f"{given} must lie within the grid's times [t_end, T] = [{t_end:.6g}, {t_start:.6g}]; got the "
                f"interval [t_min, t_max] = [{t_min:.6g}, {t_max:.6g}]")
    return pairs


def restart_nfe(steps: int, options: Optional[Mapping[str, object]] = None, ts: Optional[torch.Tensor] = None,
                model: Optional[ScoreModel] = None) -> int:
    """Evaluations of `restart` with `options` on a grid of `steps` steps: base.nfe of each
    backward pass. Without a grid (ts, model) every interval is taken to split the main pass."""
    o = {**_DEFAULTS, **(options or {})}
    info, base_options = _base(o["base"], o["base_options"])
    count = len(_pairs("interval", o["interval"])) if o["interval"] is not None else \
        len(_pairs("log_snr_interval", o["log_snr_interval"] or DEFAULT_LOG_SNR_INTERVAL))
    ks = _per_interval("restarts", o["restarts"], count, 0)
    ns = _per_interval("restart_steps", o["restart_steps"], count, 1)
    if ts is not None:
        pairs = _intervals(model, ts, o["interval"], o["log_snr_interval"])
        cuts = sorted({_snap(ts, t_min) for t_min, _ in pairs})
    else:
        cuts = list(range(1, count + 1))
    bounds = [0, *[k for k in cuts if 0 < k < steps], steps]
    main = sum(info.nfe(b - a, base_options) for a, b in zip(bounds, bounds[1:]))
    return main + sum(k * info.nfe(n, base_options) for k, n in zip(ks, ns))


def _snap(ts: torch.Tensor, t_min: float) -> int:
    """Index of the first grid time at or below t_min (the grid descends to ts[-1] <= t_min)."""
    return next(k for k, t in enumerate(ts.detach().tolist()) if t <= t_min)


class _Pass(Loop):
    """The loop of one backward pass over grid times outer.ts[a:b+1], reporting its steps as
    the outer loop's steps a.. (state hook, checks, callback and trajectory stay the outer's)."""

    def __init__(self, outer: Loop, a: int, b: int):
        super().__init__(outer.ts[a:b + 1], outer.sde)
        self.outer, self.offset = outer, a

    def done(self, i: int, x: torch.Tensor, x0_pred: Optional[torch.Tensor] = None) -> None:
        self.outer.done(self.offset + i, x, x0_pred)


def _restart_grid(model: ScoreModel, lam_min: Scalar, t_min: Scalar, t_max: float, steps: int) -> torch.Tensor:
    """steps + 1 times from t_max down to t_min, uniform in log-SNR (in t_min's graph if any)."""
    lam_max = float(model.sde.log_snr(torch.tensor(t_max, dtype=torch.float64)))
    lam = [lam_max + (lam_min - lam_max) * (j / steps) for j in range(1, steps)]
    inner = model.sde.t_of_log_snr(torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in lam])) if lam \
        else torch.zeros(0, dtype=torch.float64)
    return torch.cat([torch.tensor([t_max], dtype=torch.float64), inner,
                      torch.as_tensor(t_min, dtype=torch.float64).reshape(1)])


_DEFAULTS: Dict[str, object] = dict(base="dpm++2m", base_options=None, interval=None, log_snr_interval=None,
                                    restarts=2, restart_steps=4)


def _evals_per_step(options: Mapping[str, object]) -> int:
    return _base(options["base"], options["base_options"])[0].evals(options["base_options"])


@register("restart", kind="sde", order=2, evals_per_step=_evals_per_step, affine=True,
          extra_evals=lambda options: restart_nfe(100, options) - 100 * _evals_per_step(options),
          description="Restart sampling: a base ODE solver with forward noise jumps over restart intervals")
def restart(model: ScoreModel, x: torch.Tensor, ts: torch.Tensor, loop: Loop, *, generator=None,
            noise_fn: Optional[NoiseFn] = None, base: str = "dpm++2m", base_options: Optional[Dict[str, object]] = None,
            interval: Union[Pair, Sequence[Pair], None] = None,
            log_snr_interval: Union[Pair, Sequence[Pair], None] = None,
            restarts: Union[int, Sequence[int]] = 2, restart_steps: Union[int, Sequence[int]] = 4) -> torch.Tensor:
    """Restart (Xu et al. 2023) on `base` (a fixed-step ODE solver, with `base_options`; the
    paper's is 'heun', the default 'dpm++2m' measured better at equal NFE).

    interval: (t_min, t_max) in the SDE's time, or a sequence of them; or log_snr_interval:
    (lam_lo, lam_hi), i.e. t in [t(lam_hi), t(lam_lo)]; default DEFAULT_LOG_SNR_INTERVAL. Each
    within [t_end, T] of the grid. restarts: K, the restarts of each interval (0: the base
    solver alone); restart_steps: the ODE steps of each restart pass (an integer, or one per
    interval)."""
    info, base_options = _base(base, base_options)
    pairs = _intervals(model, ts, interval, log_snr_interval)
    ks = _per_interval("restarts", restarts, len(pairs), 0)
    ns = _per_interval("restart_steps", restart_steps, len(pairs), 1)
    draw, g, steps = Noise(generator, noise_fn), loop.grid, loop.num_steps
    plan: Dict[int, List[Tuple[float, int, int]]] = {}
    for (t_min, t_max), k, n in sorted(zip(pairs, ks, ns), key=lambda p: -p[0][0]):
        if k > 0:
            plan.setdefault(_snap(ts, t_min), []).append((t_max, k, n))
    a = 0
    for cut in sorted(plan) + ([] if steps in plan else [steps]):
        if cut > a:  # the main pass down to the grid time `cut`
            x = info.fn(model, x, ts[a:cut + 1], _Pass(loop, a, cut), **base_options)
            a = cut
        for t_max, k, n in plan.get(cut, []):
            for r in range(k):
                x = _restart_pass(model, x, loop, info, base_options, draw, g, cut, t_max, n, r, k)
    return x


def _restart_pass(model, x, loop: Loop, info, base_options, draw, g, cut: int, t_max: float, n: int, r: int,
                  k: int) -> torch.Tensor:
    """Jump from the grid time ts[cut] forward to t_max, then solve back to ts[cut] in n steps."""
    sub_ts = _restart_grid(model, g.lam[cut], loop.times[cut], t_max, n)
    sub = Loop(sub_ts, model.sde, state_hook=None if loop.state_hook is None else
               (lambda x_, t_, last: loop.state_hook(x_, t_, False)))
    s = sub.grid
    # the forward transition x_tmax | x_tmin = a x_tmin + sqrt(b) z, a = alpha_max / alpha_min
    a = s.alpha[0] / s.alpha[-1]
    x = a * x + sqrt(s.sigma[0] ** 2 - a**2 * s.sigma[-1] ** 2) * draw(x)
    if loop.state_hook is not None:
        x = loop.state_hook(x, sub.times[0], False)
    try:
        x = info.fn(model, x, sub_ts, sub, **base_options)
        sub.finish()
    except NonFiniteError as err:
        raise NonFiniteError(f"restart pass {r + 1} of {k} from t={t_max:.6g} to t={as_float(loop.times[cut]):.6g}: "
                             f"{err}") from None
    return x
