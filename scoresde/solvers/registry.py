"""One registry of samplers: name -> function and facts (kind, order, evaluations per step).

A solver is a function `fn(model, x, ts, loop, **options) -> x` that integrates from ts[0]
down to ts[-1] (a descending float64 grid) and calls `loop.done(i, x)` after each step.
SDE solvers also take a `generator` keyword for their noise.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Union

__all__ = ["SolverInfo", "register", "get", "available"]


@dataclass(frozen=True)
class SolverInfo:
    name: str
    fn: Callable
    kind: str  # "ode" (deterministic probability flow) or "sde" (stochastic)
    order: int  # with default options: global order (ODE solvers), weak order (SDE solvers); tested
    evals_per_step: Union[int, str]  # network evaluations per step, or "adaptive"
    affine: bool  # needs an affine SDE (alpha, sigma, log-SNR)
    description: str = ""
    defaults: Dict[str, object] = field(default_factory=dict)  # option values this name implies
    default_schedule: Optional[str] = None  # the schedule it needs by default, if not the SDE's
    extra_evals: int = 0  # evaluations beyond steps x evals_per_step (Heun's Euler last step: -1)

    @property
    def options(self) -> List[str]:
        """The keyword options this solver accepts."""
        params = inspect.signature(self.fn).parameters
        return [p for p in params if p != "generator" and params[p].kind == inspect.Parameter.KEYWORD_ONLY]

    def steps_for_nfe(self, nfe: int) -> int:
        """The largest step count whose evaluations fit in `nfe` (for a fixed-step solver)."""
        if self.evals_per_step == "adaptive":
            raise ValueError(f"solver {self.name!r} is adaptive; its NFE is not set by steps")
        return max((nfe - self.extra_evals) // int(self.evals_per_step), 1)


_REGISTRY: Dict[str, SolverInfo] = {}


def register(
    name: str,
    kind: str,
    order: int,
    evals_per_step: Union[int, str],
    affine: bool = False,
    description: str = "",
    defaults: Optional[Dict[str, object]] = None,
    default_schedule: Optional[str] = None,
    extra_evals: int = 0,
) -> Callable[[Callable], Callable]:
    """Decorator adding `fn` to the registry under `name`. `defaults` are option values this
    name implies, so one function can serve several names (e.g. 'dpm++2m' and 'dpm++3m');
    a caller may still override them."""
    if kind not in ("ode", "sde"):
        raise ValueError(f"kind must be 'ode' or 'sde'; got {kind!r}")

    def wrap(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"a solver named {name!r} is already registered")
        _REGISTRY[name] = SolverInfo(
            name, fn, kind, order, evals_per_step, affine, description, dict(defaults or {}), default_schedule,
            extra_evals,
        )
        return fn

    return wrap


def get(name: str) -> SolverInfo:
    if name not in _REGISTRY:
        raise ValueError(f"solver={name!r} is not valid; choose one of: {', '.join(available())}")
    return _REGISTRY[name]


def available(kind: Optional[str] = None) -> List[str]:
    """Registered solver names, optionally only those of one kind ('ode' or 'sde')."""
    return [n for n, info in _REGISTRY.items() if kind is None or info.kind == kind]
