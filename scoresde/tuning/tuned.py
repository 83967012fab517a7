"""`TunedSampler`: what every tuning method returns. A time grid (and, for methods that learn
them, solver options) fitted to one model, SDE, solver and NFE budget, with the losses and
the cost of fitting it; a `GridProvider` that refuses any other setting, and a small JSON file.
`model_fingerprint` names what a sampler was tuned to."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch

from .. import _checks
from ..model import ScoreModel
from ..model import fingerprint as model_fingerprint  # the digest lives in model.py (solvers need it too)
from ..sde import SDE
from ..solvers import SampleResult, sample
from .schedule import OptimizedSchedule, tuned_grid
from .steps import ShiftedTime

__all__ = ["TunedSampler", "model_fingerprint", "FORMAT", "FORMAT_VERSION"]

#: the `format` entry of a tuned-sampler file, and the version this code writes and reads
FORMAT = "scoresde.tuned"
FORMAT_VERSION = 1


@dataclass
class TunedSampler:
    """A sampler tuned by `scoresde.tune`: `sample(model, x_T=..., solver=tuned)` (it checks
    the model and brings its solver, grid and options), or `schedule=tuned` for its grid alone.

    times: (steps + 1,) descending float64 times in the SDE's units, T to t_end.
    method: the tuning method ("gits", "nelder-mead"). solver, nfe: the solver the grid is
    meant for and the budget; solver_options: options it runs with (JSON-able).
    sde, sde_fingerprint: repr and `SDE.fingerprint()` of the SDE; model_fingerprint: the
    `model_fingerprint` of the model ("" if unknown: a file of `scoresde schedule optimize`).
    start: the initialization, the fixed schedule that was best on the validation batch;
    loss_start, loss: validation RMSE (against the reference solve) of the start and of
    `times`; kept_start: True when the tuned grid did not beat the start, so `times` are the
    start's. loss_history: the method's own losses in order (see its docstring).
    calibration, validation: the batch sizes. cost_nfe, cost_seconds: everything tuning spent
    (teachers, search, validation), NFE as counted by the model. details: the method's
    settings (JSON-able), e.g. GITS' candidate grid and cost solver.
    time_offsets: empty, or (steps + 1) log-SNR offsets of the network's evaluation times from
    the grid's (method "steps", `ShiftedTime`); `sample(solver=tuned)` applies them,
    `schedule=tuned` gives the grid alone.
    """

    times: torch.Tensor
    method: str
    solver: str
    nfe: int
    sde: str
    sde_fingerprint: str
    model_fingerprint: str = ""
    solver_options: Dict[str, object] = field(default_factory=dict)
    start: str = ""
    loss_start: float = float("nan")
    loss: float = float("nan")
    kept_start: bool = False
    loss_history: List[float] = field(default_factory=list)
    calibration: int = 0
    validation: int = 0
    cost_nfe: int = 0
    cost_seconds: float = 0.0
    details: Dict[str, object] = field(default_factory=dict)
    time_offsets: List[float] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return self.times.numel() - 1

    def grid(self, sde: SDE, solver: Optional[str] = None, steps: Optional[int] = None,
             t_end: Optional[float] = None) -> torch.Tensor:
        """`times`, after checking that `sde`, `solver` (if given), `steps` (if given) and
        `t_end` (if given) are the ones it was tuned for."""
        return tuned_grid(self, "sampler", sde, solver, steps, t_end)

    def check(self, model: ScoreModel) -> None:
        """Refuse a model other than the one this sampler was tuned to (by fingerprint)."""
        if not self.model_fingerprint:
            return  # an old schedule file recorded no model
        given = model_fingerprint(model)
        if given != self.model_fingerprint:
            raise _checks.ArgumentError(
                f"model must be the one this sampler was tuned to (fingerprint {self.model_fingerprint}); "
                f"got a model with fingerprint {given}")

    def model_for(self, model: ScoreModel) -> ScoreModel:
        """The model as this sampler evaluates it: `model` itself, or with time offsets a
        `ShiftedTime` of it on this grid."""
        if not self.time_offsets:
            return model
        if len(self.time_offsets) != self.times.numel():
            raise ValueError(f"a tuned sampler's time_offsets must number its {self.times.numel()} grid times; "
                             f"got {len(self.time_offsets)}")
        return ShiftedTime(model, self.times, torch.tensor(self.time_offsets, dtype=torch.float64))

    def sample(self, model: ScoreModel, **kwargs) -> SampleResult:
        """`scoresde.sample` with this sampler's solver, grid and options, for the model it was
        tuned to (kwargs: x_T or shape and generator, ...)."""
        return sample(model, solver=self, **kwargs)

    # ---- files ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, **asdict(self), "times": self.times.tolist()}

    def save(self, path: Union[str, Path]) -> None:
        """Write a small JSON file (times in full float64 precision)."""
        data = self.to_dict()
        data["loss_history"] = [_json_float(v) for v in data["loss_history"]]
        for key in ("loss_start", "loss"):
            data[key] = _json_float(data[key])
        Path(path).write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, path: Union[str, Path]) -> "TunedSampler":
        """Read a file written by `save`, or an `OptimizedSchedule` file of `scoresde schedule
        optimize` (as method "nelder-mead", with no model fingerprint); refuse anything else."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not a tuned sampler file: {type(err).__name__}: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} is not a tuned sampler file: it holds a JSON {type(data).__name__}")
        if "format" not in data and {"times", "sde_fingerprint", "solver", "nfe"} <= set(data):
            return cls.from_schedule(OptimizedSchedule.load(path))
        if data.get("format") != FORMAT or data.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path} is not a tuned sampler file of version {FORMAT_VERSION}: format "
                             f"{data.get('format')!r}, version {data.get('version')!r}")
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k not in ("format", "version")}
        missing = {"times", "method", "solver", "nfe", "sde", "sde_fingerprint"} - set(data)
        unknown = set(data) - known
        if missing or unknown:
            raise ValueError(f"{path} is not a tuned sampler file: " + "; ".join(
                f"{what} {', '.join(sorted(keys))}" for what, keys in (("it lacks", missing), ("unknown keys", unknown))
                if keys))
        for key in ("loss_start", "loss"):
            data[key] = _from_json_float(data.get(key))
        data["loss_history"] = [_from_json_float(v) for v in data.get("loss_history", [])]
        return cls(**{**data, "times": torch.tensor(data["times"], dtype=torch.float64)})

    @classmethod
    def from_schedule(cls, schedule: OptimizedSchedule, **changes) -> "TunedSampler":
        """An `OptimizedSchedule` of `optimize` as a TunedSampler (method "nelder-mead"); its
        losses are calibration losses unless `changes` replace them."""
        base = dict(times=schedule.times, method="nelder-mead", solver=schedule.solver, nfe=schedule.nfe,
                    sde=schedule.sde, sde_fingerprint=schedule.sde_fingerprint, start=schedule.start,
                    loss_start=schedule.loss_start, loss=schedule.loss, loss_history=list(schedule.loss_history),
                    calibration=schedule.calibration, cost_nfe=schedule.cost_nfe)
        return cls(**{**base, **changes})


def _json_float(value: float):
    """A float JSON can hold: inf and nan (a failed grid's loss) as strings."""
    value = float(value)
    return value if math.isfinite(value) else repr(value)


def _from_json_float(value) -> float:
    return float("nan") if value is None else float(value)
