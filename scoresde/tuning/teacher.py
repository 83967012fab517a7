"""Teacher trajectories: the reference solve of a model's probability-flow ODE from given noise
(`scoresde.solvers.reference_solve`'s torchdiffeq solve at its tolerances), with the states at
any set of output times, in batches, sharded under torchrun and cached on disk."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Union

import torch

from .. import _checks, _dist
from .._utils import tensor_bytes
from ..model import ScoreModel
from ..schedules import validate
from ..solvers import REFERENCE_OPTIONS, NonFiniteError, reference_solve
from ..solvers.backends import TORCHDIFFEQ_ADAPTIVE, odeint_in_range
from ..solvers.ode import pf_velocity
from .tuned import model_fingerprint

__all__ = ["Teacher", "teacher", "default_options", "FLOAT32_OPTIONS"]

#: the reference tolerances below float64: float32 cannot reach dopri8 at 1e-10
FLOAT32_OPTIONS: Dict[str, object] = dict(method="dopri5", rtol=1e-5, atol=1e-5)


@dataclass
class Teacher:
    """states: (len(times), B, *data_shape), the teacher's state at each of `times` (states[0]
    is x_T at times[0] = T); x: states[-1], the terminal state. nfe: evaluations this call
    spent on this process (0 on a cache hit); cached: whether it came from the cache."""

    states: torch.Tensor
    times: torch.Tensor
    nfe: int
    cached: bool = False

    @property
    def x(self) -> torch.Tensor:
        return self.states[-1]


def default_options(dtype: torch.dtype) -> Dict[str, object]:
    """The reference solve's options for states of `dtype`: REFERENCE_OPTIONS in float64,
    FLOAT32_OPTIONS otherwise."""
    return dict(REFERENCE_OPTIONS if dtype == torch.float64 else FLOAT32_OPTIONS)


def teacher(
    model: ScoreModel,
    x_T: torch.Tensor,
    times: Union[Sequence[float], torch.Tensor, None] = None,
    t_end: Optional[float] = None,
    options: Optional[Mapping[str, object]] = None,
    batch_size: Optional[int] = None,
    cache_dir: Union[str, Path, None] = None,
) -> Teacher:
    """The probability-flow ODE of `model` solved from x_T (B, *data_shape) at T by torchdiffeq
    with `options` (default `default_options(x_T.dtype)`: reference_solve's tolerances), with
    the states at `times` (descending, times[0] = T; default [T, t_end], t_end defaulting to
    the SDE's t_eps). The requested times are also the solver's step ends (`step_t`), so every
    output is a step of the solve, never an interpolation.

    batch_size: rows solved together (default all; the adaptive step size is shared by the rows
    of one solve). Under torchrun each rank solves its rows of the batch and every rank gets
    the whole result. cache_dir: keep the result in a safetensors file keyed by the model's and
    the SDE's fingerprints, the bytes of x_T, the times, the options, the batch size and the
    world size; a hit returns the stored tensors and spends no evaluation, a damaged file is
    recomputed and replaced. Under torchrun it is a hit only where every rank reads the file:
    otherwise every rank solves its rows again and rank 0 rewrites it.
    """
    if not isinstance(model, ScoreModel):
        raise _checks.fail("model", "a scoresde.ScoreModel", type(model).__name__)
    sde = model.sde
    x_T = _checks.tensor("x_T", x_T)
    if times is None:
        end = sde.t_eps if t_end is None else _checks.real("t_end", t_end, 0, sde.T, open_low=True, open_high=True)
        times = torch.tensor([sde.T, end], dtype=torch.float64)
    else:
        if t_end is not None:
            raise _checks.ArgumentError("give the teacher's end either as t_end or as the last of times, not both")
        times = validate(sde, times)
        if float(times[0]) != sde.T:
            raise _checks.fail("times", f"descending times starting at T = {sde.T:g} (where x_T is)", float(times[0]))
    options = default_options(x_T.dtype) if options is None else dict(_check_options(options))
    batch_size = x_T.shape[0] if batch_size is None else _checks.integer("batch_size", batch_size, low=1)
    shards = _dist.Shards(x_T.shape[0])
    path = None
    if cache_dir is not None:
        key = _cache_key(model, x_T, times, options, batch_size, shards.world)
        path = Path(cache_dir) / f"teacher-{key[:32]}.safetensors"
        stored = _read_cache(path, key, (len(times), *x_T.shape), x_T.dtype)
        # hit or solve together: a rank that read the file while another rank (still waiting for
        # rank 0's write) missed it would skip the gather the others wait in
        if shards.all_ok(stored is not None, x_T.device):
            return Teacher(stored.to(x_T.device), times, 0, cached=True)
    nfe_start = model.nfe
    mine = x_T[shards.lo: shards.hi]
    parts = [_solve(model, mine[lo: lo + batch_size], times, options) for lo in range(0, len(mine), batch_size)]
    states = torch.cat(parts, 1) if parts else x_T.new_zeros((len(times), 0, *x_T.shape[1:]))
    states = shards.gather(states.transpose(0, 1)).transpose(0, 1).contiguous()  # gather works on rows
    nfe = model.nfe - nfe_start
    if path is not None and shards.main:
        _write_cache(path, key, states)
    return Teacher(states, times, nfe)


def _check_options(options) -> Mapping[str, object]:
    if not isinstance(options, Mapping):
        raise _checks.fail("options", "None or a mapping of torchdiffeq options (method, rtol, atol, options)",
                           type(options).__name__)
    unknown = set(options) - {"method", "rtol", "atol", "options"}
    if unknown:
        raise _checks.fail("options", "a mapping with keys method, rtol, atol, options", sorted(unknown))
    _checks.choice("options['method']", options.get("method", "dopri5"), TORCHDIFFEQ_ADAPTIVE)
    return options


def _solve(model: ScoreModel, x: torch.Tensor, times: torch.Tensor, options: Mapping[str, object]) -> torch.Tensor:
    """(len(times), b, ...) states of one batch from one adaptive solve."""
    if len(times) == 2:  # the terminal state only: exactly reference_solve
        return torch.stack([x, reference_solve(model, x, float(times[-1]), dict(options)).x])
    hi, lo = float(times[0]), float(times[-1])
    with torch.no_grad():  # a network's parameters would otherwise keep every stage's graph (GBs)
        states = odeint_in_range(lambda s, y: pf_velocity(model, y, s), x, (hi, lo), times=times,
                                 method=options.get("method", "dopri5"), rtol=options.get("rtol", 1e-5),
                                 atol=options.get("atol", 1e-5), options=options.get("options"))
    if not bool(torch.isfinite(states).all()):
        raise NonFiniteError(f"the teacher's solve from t={hi:.6g} to t={lo:.6g} turned non-finite")
    return states


# ---- the cache ------------------------------------------------------------------------------
def _cache_key(model, x_T: torch.Tensor, times: torch.Tensor, options, batch_size: int, world: int) -> str:
    noise = _digest(x_T)
    text = json.dumps(dict(model=model_fingerprint(model), sde=model.sde.fingerprint(), noise=noise,
                           dtype=str(x_T.dtype), shape=list(x_T.shape), times=[repr(t) for t in times.tolist()],
                           options=repr(sorted(options.items())), batch_size=batch_size, world=world), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(tensor_bytes(t)).hexdigest()


def _read_cache(path: Path, key: str, shape, dtype) -> Optional[torch.Tensor]:
    """The stored states, or None if the file is missing, unreadable, for another key or
    damaged (its tensor's digest disagrees)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            states = f.get_tensor("states")
    except Exception:  # a truncated or garbled file: recompute it
        return None
    if meta.get("key") != key or tuple(states.shape) != tuple(shape) or states.dtype != dtype \
            or meta.get("digest") != _digest(states):
        return None
    return states


def _write_cache(path: Path, key: str, states: torch.Tensor) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    states = states.detach().to("cpu").contiguous()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    save_file({"states": states}, str(tmp), metadata={"key": key, "digest": _digest(states)})
    os.replace(tmp, path)  # readers never see a half-written file
