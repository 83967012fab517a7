"""One registry of samplers: name -> function and facts (kind, order and its kind, evaluations
per step, aliases).

A solver is a function `fn(model, x, ts, loop, **options) -> x` that integrates from ts[0]
down to ts[-1] (a descending float64 grid) and calls `loop.done(i, x)` after each step.
SDE solvers also take a `generator` keyword for their noise. Names are lower case with
hyphens (`dpm++2m-sde`); older spellings are aliases that `get` resolves.
"""
from __future__ import annotations

import inspect
import numbers
import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

from .. import _checks

__all__ = ["SolverInfo", "register", "get", "available", "ORDER_KINDS"]

#: what a registered order measures: global error of an ODE solution, weak (moments) or
#: strong (paths) error of an SDE solution
ORDER_KINDS = ("global", "weak", "strong")

#: network evaluations per step: a number, "adaptive", or a function of the solver's options
Evals = Union[int, str, Callable[[Mapping[str, object]], int]]


@dataclass(frozen=True)
class SolverInfo:
    name: str
    fn: Callable
    kind: str  # "ode" (deterministic probability flow) or "sde" (stochastic)
    order: int  # convergence order with default options, of kind `order_kind`; tested
    order_kind: str  # "global" (ODE solvers), "weak" or "strong" (SDE solvers)
    evals_per_step: Union[int, str]  # with default options: a number, or "adaptive"
    affine: bool  # needs an affine SDE (alpha, sigma, log-SNR)
    description: str = ""
    defaults: Dict[str, object] = field(default_factory=dict)  # option values this name implies
    default_schedule: Optional[str] = None  # the schedule it needs by default, if not the SDE's
    extra_evals: int = 0  # with default options: evaluations beyond steps x evals_per_step (Heun's last step: -1)
    step_hook: bool = True  # calls loop.done after each of its own steps (a state hook can act)
    aliases: tuple = ()
    evals_fn: Optional[Callable[[Mapping[str, object]], int]] = None  # evaluations per step of the options
    extra_fn: Optional[Callable[[Mapping[str, object]], int]] = None  # extra evaluations of the options

    @property
    def adaptive(self) -> bool:
        return self.evals_per_step == "adaptive"

    @property
    def options(self) -> List[str]:
        """The keyword options this solver accepts."""
        params = inspect.signature(self.fn).parameters
        return [p for p in params if p != "generator" and params[p].kind == inspect.Parameter.KEYWORD_ONLY]

    def resolve(self, options: Optional[Mapping[str, object]] = None) -> Dict[str, object]:
        """Every option's value: the function's defaults, then this name's, then `options`."""
        params = inspect.signature(self.fn).parameters
        own = {p: params[p].default for p in self.options if params[p].default is not inspect.Parameter.empty}
        return {**own, **self.defaults, **(options or {})}

    def evals(self, options: Optional[Mapping[str, object]] = None) -> int:
        """Network evaluations per step with `options` (on top of the defaults)."""
        if self.adaptive:
            raise ValueError(f"solver {self.name!r} is adaptive; its NFE is not set by steps")
        if self.evals_fn is not None:
            return int(self.evals_fn(self.resolve(options)))
        return int(self.evals_per_step)

    def extra(self, options: Optional[Mapping[str, object]] = None) -> int:
        """Evaluations beyond steps x evals(options) with `options` (on top of the defaults)."""
        if self.extra_fn is not None:
            return int(self.extra_fn(self.resolve(options)))
        return int(self.extra_evals)

    def nfe(self, steps: int, options: Optional[Mapping[str, object]] = None) -> int:
        """Evaluations of `steps` steps (what the model will count)."""
        return steps * self.evals(options) + self.extra(options)

    def steps_for_nfe(self, nfe: int, options: Optional[Mapping[str, object]] = None) -> int:
        """The largest step count whose evaluations fit in `nfe`: the one NFE-budget policy
        (never over the budget). Refuses a budget below one step's cost."""
        per, extra = self.evals(options), self.extra(options)
        lowest = max(per + extra, 1)
        if isinstance(nfe, bool) or not isinstance(nfe, numbers.Integral) or nfe < lowest:
            raise _checks.fail("nfe", f"an integer >= {lowest} (one step of solver {self.name!r})", nfe)
        return (int(nfe) - extra) // per


_REGISTRY: Dict[str, SolverInfo] = {}
_ALIASES: Dict[str, str] = {}


def register(
    name: str,
    kind: str,
    order: int,
    evals_per_step: Evals,
    affine: bool = False,
    description: str = "",
    defaults: Optional[Dict[str, object]] = None,
    default_schedule: Optional[str] = None,
    extra_evals: Union[int, Callable[[Mapping[str, object]], int]] = 0,
    order_kind: Optional[str] = None,
    step_hook: bool = True,
    aliases: Sequence[str] = (),
) -> Callable[[Callable], Callable]:
    """Decorator adding `fn` to the registry under `name` (and its `aliases`). `defaults` are
    option values this name implies, so one function can serve several names (e.g. 'dpm++2m'
    and 'dpm++3m'); a caller may still override them. `order_kind` defaults to 'global' for
    ODE and 'weak' for SDE solvers. `evals_per_step` and `extra_evals` may be functions of the
    resolved options (so `nfe` and `steps_for_nfe` follow them)."""
    kind = _checks.choice("kind", kind, ("ode", "sde"))
    order_kind = _checks.choice("order_kind", order_kind or ("global" if kind == "ode" else "weak"), ORDER_KINDS)

    def wrap(fn: Callable) -> Callable:
        for key in (name, *aliases):
            if key in _REGISTRY or key in _ALIASES:
                raise ValueError(f"a solver named {key!r} is already registered")
        evals_fn = evals_per_step if callable(evals_per_step) else None
        extra_fn = extra_evals if callable(extra_evals) else None
        info = SolverInfo(
            name, fn, kind, order, order_kind, 0 if evals_fn else evals_per_step, affine, description,
            dict(defaults or {}), default_schedule, 0 if extra_fn else extra_evals, step_hook, tuple(aliases),
            evals_fn, extra_fn,
        )
        if evals_fn is not None or extra_fn is not None:  # the counts with default options, for readers
            info = dataclasses.replace(info, evals_per_step="adaptive" if evals_per_step == "adaptive" else info.evals(),
                                       extra_evals=info.extra())
        _REGISTRY[name] = info
        _ALIASES.update({alias: name for alias in aliases})
        return fn

    return wrap


def get(name: str) -> SolverInfo:
    """The solver registered as `name` or under an older alias of it."""
    return _REGISTRY[_checks.choice("solver", name, _REGISTRY, _ALIASES)]


def available(kind: Optional[str] = None) -> List[str]:
    """Canonical solver names, optionally only those of one kind ('ode' or 'sde')."""
    return [n for n, info in _REGISTRY.items() if kind is None or info.kind == kind]
