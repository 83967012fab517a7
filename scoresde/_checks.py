"""Argument checks with one message shape: `<name> must be <accepted>; got <given>`.

Every public entry point validates its arguments here before any work starts, so a bad call
is refused with a message that names the parameter, the accepted values and what was given.
Each check returns the value in its canonical type (an `int`, a `float`, the chosen string).
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Mapping, Optional

import torch

__all__ = [
    "ArgumentError", "fail", "integer", "real", "choice", "boolean", "affine", "same_sde", "finite",
    "time_range", "renamed", "generator", "floating_dtype", "tensor", "shape", "numbers_tensor", "at_most",
]


class ArgumentError(ValueError):
    """A bad argument, refused before any work started (a ValueError, so `except ValueError`
    catches it as before)."""


def _given(value: Any) -> str:
    """What was given, on one line: a string in full (paths, names), anything else's repr with
    its whitespace collapsed and cut at 80 characters (a tensor, a network)."""
    if isinstance(value, str):
        return repr(value)
    text = " ".join(repr(value).split())
    return text if len(text) <= 80 else text[:77] + "..."


def fail(name: str, accepted: str, value: Any) -> ArgumentError:
    """The error to raise for `name` = `value`, which should have been `accepted`."""
    return ArgumentError(f"{name} must be {accepted}; got {_given(value)}")


def integer(name: str, value: Any, low: Optional[int] = None, high: Optional[int] = None) -> int:
    """An integer (not a bool, a float or a string) in [low, high]."""
    bounds = _bounds(low, high, open_low=False, open_high=False)
    accepted = "an integer" + bounds
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise fail(name, accepted, value)
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise fail(name, accepted, value)
    return value


def real(name: str, value: Any, low: Optional[float] = None, high: Optional[float] = None,
         open_low: bool = False, open_high: bool = False, finite: bool = True) -> float:
    """A real number (not a bool or a string) in the interval from `low` to `high`, each end
    closed unless `open_low`/`open_high`; finite unless `finite=False`."""
    accepted = ("a finite number" if finite else "a number") + _bounds(low, high, open_low, open_high)
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
        raise fail(name, accepted, value)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise fail(name, accepted, value)
        value = value.item()
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise fail(name, accepted, value)
    if low is not None and (value < low or (open_low and value == low)):
        raise fail(name, accepted, value)
    if high is not None and (value > high or (open_high and value == high)):
        raise fail(name, accepted, value)
    return value


def _bounds(low, high, open_low: bool, open_high: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    if low is not None:
        return f" {'>' if open_low else '>='} {low:g}"
    if high is not None:
        return f" {'<' if open_high else '<='} {high:g}"
    return ""


def choice(name: str, value: Any, choices: Iterable[str], aliases: Optional[Mapping[str, str]] = None) -> str:
    """One of `choices` (or an old name in `aliases`, returned as its canonical choice)."""
    choices = list(choices)
    if isinstance(value, str):
        if value in choices:
            return value
        if aliases and value in aliases:
            return aliases[value]
    raise fail(name, "one of: " + ", ".join(choices), value)


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise fail(name, "True or False", value)
    return value


def affine(sde: Any, what: str) -> None:
    """Refuse a non-affine SDE for `what`, which needs alpha(t), sigma(t) and the log-SNR."""
    if not getattr(sde, "is_affine", False):
        raise ArgumentError(
            f"{what} needs an affine SDE (marginals alpha(t) x0 + sigma(t) eps); got {type(sde).__name__}"
        )


def same_sde(sde: Any, model_sde: Any) -> None:
    """Refuse an `sde` argument that differs from the model's own (compared by value)."""
    if sde is not model_sde and sde != model_sde:
        raise ArgumentError(f"sde must be the model's sde {model_sde!r} (or None); got {sde!r}")


def finite(name: str, x: torch.Tensor) -> None:
    """Refuse a tensor holding NaN or inf (one host read)."""
    if not bool(torch.isfinite(x).all()):
        raise ArgumentError(f"{name} must be finite; got a tensor with NaN or inf values")


def renamed(given: Mapping[str, Any], renames: Mapping[str, str], where: str) -> None:
    """Refuse keyword arguments that were renamed, naming each one's replacement."""
    old = [name for name in given if name in renames]
    if old:
        raise ArgumentError(f"{where}: " + "; ".join(f"{name} was renamed {renames[name]}" for name in old))


def time_range(t: torch.Tensor, lo: float, hi: float, what: str = "t") -> None:
    """Refuse times outside [lo, hi]. Skipped for accelerator tensors so that sampling loops
    never force a device sync; `scoresde.sample` checks its time grid up front instead."""
    if t.device.type != "cpu" or t.numel() == 0:
        return
    t = t.detach()
    if bool(torch.isnan(t).any()):
        raise fail(what, f"times in [{lo:g}, {hi:g}]", "a tensor with NaN")
    t_min, t_max = float(t.min()), float(t.max())
    if t_min < lo or t_max > hi:
        raise fail(what, f"times in [{_exact(lo)}, {_exact(hi)}]", f"values in [{_exact(t_min)}, {_exact(t_max)}]")


def _exact(value: float) -> str:
    """A number short (%g) where that is exact, else with every digit (1.0000001 is not 1)."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def generator(name: str, value: Any) -> Optional[torch.Generator]:
    """None or a torch.Generator."""
    if value is not None and not isinstance(value, torch.Generator):
        raise fail(name, "None or a torch.Generator", type(value).__name__)
    return value


def floating_dtype(name: str, value: Any, optional: bool = True) -> Optional[torch.dtype]:
    """A real floating-point torch.dtype (or None when `optional`)."""
    if value is None and optional:
        return None
    if not (isinstance(value, torch.dtype) and value.is_floating_point):
        raise fail(name, ("None or " if optional else "") + "a real floating-point torch.dtype (e.g. torch.float32)",
                   value)
    return value


def _tensor_given(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def tensor(name: str, value: Any, accepted: str = "(B, *data_shape)", min_ndim: int = 2, floating: bool = True,
           check_finite: bool = True) -> torch.Tensor:
    """A tensor with at least `min_ndim` dimensions and a first dimension >= 1: real floating
    point when `floating`, else real (integer or floating, never bool or complex); finite
    unless `check_finite=False` (a host read, so skipped for accelerator tensors)."""
    kind = "a real floating-point tensor" if floating else "a real (integer or floating-point) tensor"
    ok = isinstance(value, torch.Tensor) and value.ndim >= min_ndim and not value.is_complex() \
        and value.dtype != torch.bool and (value.is_floating_point() or not floating) \
        and (value.ndim == 0 or value.shape[0] >= 1)
    if not ok:
        raise fail(name, f"{kind} {accepted}".rstrip(), _tensor_given(value))
    if check_finite and value.is_floating_point() and value.device.type == "cpu":
        finite(name, value)
    return value


def shape(name: str, value: Any, min_len: int = 1, accepted: str = "(B, *data_shape)") -> tuple:
    """A sequence of at least `min_len` integers >= 1, as a tuple of ints."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list, torch.Size)) or len(value) < min_len:
        raise fail(name, "a sequence of integers >= 1" + (f", {accepted}" if accepted else ""), value)
    return tuple(integer(f"{name}[{k}]", size, low=1) for k, size in enumerate(value))


def numbers_tensor(name: str, value: Any, accepted: str, ndim: Optional[int] = None) -> torch.Tensor:
    """Real numbers (a number, a nested sequence, an array or a tensor; not strings, bools or
    complex values) as a float64 CPU tensor, with `ndim` dimensions when given; not yet checked
    for finiteness."""
    if isinstance(value, (str, bytes)) or value is None:
        raise fail(name, accepted, value)
    try:
        raw = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise fail(name, accepted, value) from None
    if raw.dtype == torch.bool or raw.is_complex() or (ndim is not None and raw.ndim != ndim):
        raise fail(name, accepted, _tensor_given(raw) if isinstance(value, torch.Tensor) else value)
    if isinstance(value, torch.Tensor):
        return raw.detach().to(device="cpu", dtype=torch.float64)
    return torch.as_tensor(value, dtype=torch.float64)  # directly: via float32 a list would lose digits


def at_most(name: str, value, high: float, why: str = ""):
    """`value` (already checked by `integer` or `real`) if it is <= high, else refused: a bound
    beyond which the work would overflow or not fit, kept apart from the type check's message."""
    if value > high:
        raise fail(name, f"at most {high:g}{why}", value)
    return value
