"""Benchmark problems: a model to sample, the set its samples are compared with, and (where the
answer is known) the exact density and a reference solve of the probability-flow ODE.

`analytic_problem('ring2d/vp')` is a Gaussian mixture under a named SDE (exact in every
respect); `checkpoint_problem(ckpt, data)` any trained model compared with the held-out test
split of a data set (`digits_problem(ckpt)`: the digits).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import torch

from .. import _checks
from ..model import ScoreModel
from ..sde import by_name
from ..solvers import REFERENCE_OPTIONS, SampleResult, reference_solve

__all__ = ["Problem", "analytic_problem", "checkpoint_problem", "digits_problem", "make_problem",
           "score_checkpoint", "checkpoint_data", "ANALYTIC", "BENCH_SDES", "CHECKPOINT_PROBLEMS"]

ANALYTIC = ("ring2d", "gmm16d", "gmm64d", "bimodal1d")
BENCH_SDES = ("vp", "ve", "edm")
#: the problem names that stand for a trained model: any data set, or the digits
CHECKPOINT_PROBLEMS = ("ckpt", "digits")


@dataclass
class Problem:
    """What a benchmark needs of a problem.

    model: the ScoreModel sampled in the run's dtype; reference_model: the same in
    `reference_dtype` for the reference ODE solve (may be the same object for dtype-agnostic
    oracles).
    target: the fixed comparison set for sample metrics, (M, *shape); draw(n, generator): an
    independent draw of n points from the same distribution (for the floor).
    log_prob: exact log p_{t_end}(x), shape (B,), or None. t_end: where sampling stops.
    reference_options: the torchdiffeq options of the reference solve (default REFERENCE_OPTIONS).
    """

    name: str
    model: ScoreModel
    reference_model: ScoreModel
    shape: Tuple[int, ...]
    target: torch.Tensor
    draw: Callable[[int, torch.Generator], torch.Tensor]
    log_prob: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    t_end: Optional[float] = None
    reference_options: Dict[str, object] = field(default_factory=lambda: dict(REFERENCE_OPTIONS))
    reference_dtype: torch.dtype = torch.float64

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def reference(self, x_T: torch.Tensor) -> SampleResult:
        """The reference solve from x_T (B, *shape): `reference_model` in `reference_dtype`, down
        to `t_end`, with `reference_options`."""
        return reference_solve(self.reference_model, x_T.to(self.reference_dtype), t_end=self.t_end,
                               options=self.reference_options)


def analytic_problem(name: str, seed: int = 0, n: int = 1000, device=None) -> Problem:
    """'ring2d/vp' etc.: a named Gaussian mixture under a named SDE, with exact samples of
    p_{t_end} (seeded `seed + 1`) as the comparison set and its exact density."""
    from ..data.problems import get_problem

    mixture_name, _, sde_name = name.partition("/")
    _checks.choice("problem", mixture_name, ANALYTIC)
    sde = by_name(_checks.choice("sde", sde_name, BENCH_SDES))
    mixture = get_problem(mixture_name)
    t_end = sde.t_eps

    def draw(count: int, generator: torch.Generator) -> torch.Tensor:
        x0 = mixture.sample(count, generator, dtype=torch.float64, device=device)
        return sde.marginal(x0, t_end, generator=generator)

    target = draw(n, torch.Generator(device=device or "cpu").manual_seed(seed + 1))
    model = mixture.score_model(sde)
    return Problem(name, model, model, tuple(mixture.event_shape), target, draw,
                   lambda x: mixture.log_prob_t(x, t_end, sde), t_end)


def score_checkpoint(path: Union[str, Path], name: str = "checkpoint") -> dict:
    """The verified state (`training.load_checkpoint`) of a Trainer checkpoint of a score model
    that scoresde builds (an MLP or UNet under a built-in SDE); refused, naming `name` (the
    argument or flag), if it holds a model of another kind, e.g. a noisy classifier trained with
    `losses.classifier_loss` (its network is no built-in score network)."""
    from ..training import load_checkpoint
    from ..training.checkpoint import NET_CLASSES, SDE_CLASSES

    state = load_checkpoint(path)
    model = state["config"]["model"]
    net, sde = model["net"], model["sde"]
    if model.get("kind", "score") != "score" or net["class"] not in NET_CLASSES or net["config"] is None \
            or sde["class"] not in SDE_CLASSES or model["time_input"] == "<callable>":
        raise _checks.ArgumentError(
            f"{name} must be a checkpoint of a score model scoresde builds (network {' or '.join(NET_CLASSES)}, "
            f"SDE one of {', '.join(SDE_CLASSES)}); got {str(path)!r}, a checkpoint of network {net['class']} "
            f"under {sde['class']}, kind {model.get('kind', 'score')} (a classifier or custom model: restore it in Python with "
            "Trainer.from_checkpoint(path, model=...))")
    return state


def checkpoint_data(state: dict, data: Union[str, Path, None], split: str, name: str = "data",
                    dtype: torch.dtype = torch.float32, device=None):
    """The `split` of data set `data` (`scoresde.data.load_data`) a checkpoint's model is measured
    on, checked to have the checkpoint's sample shape; None means "digits" for a (1, 8, 8) model
    and is refused otherwise. `name` is the argument or flag the messages name."""
    from ..data import BUILTIN_DATA, load_data
    from ..data.sets import FILE_SUFFIXES

    shape = tuple(state["config"]["data_shape"])
    accepted = f"one of {', '.join(BUILTIN_DATA)} or an existing {'/'.join(FILE_SUFFIXES)} file"
    if data is None:
        if shape != (1, 8, 8):
            raise _checks.fail(name, f"a data set for this model of sample shape {shape} ({accepted}); only "
                               "digits models, of shape (1, 8, 8), default to digits", None)
        data = "digits"
    if str(data) not in BUILTIN_DATA and (Path(data).suffix not in FILE_SUFFIXES or not Path(data).is_file()):
        raise _checks.fail(name, accepted, str(data))
    dataset = load_data(data, split, dtype=dtype, device=device)
    if dataset.shape != shape:
        raise _checks.ArgumentError(f"{name} must hold samples of the checkpoint's data shape {shape}; got "
                                    f"{str(data)!r}, whose samples have shape {dataset.shape}")
    return dataset


def _data_label(data: Union[str, Path]) -> str:
    """A data set's name in results: a built-in name, or a file's stem."""
    from ..data import BUILTIN_DATA

    return data if data in BUILTIN_DATA else Path(data).stem


def checkpoint_problem(checkpoint: Union[str, Path], data: Union[str, Path, None] = None, device=None,
                       dtype: torch.dtype = torch.float32, weights: str = "ema", name: Optional[str] = None) -> Problem:
    """Any trained score model from a Trainer checkpoint, measured on a data set (a built-in
    name or a file, `scoresde.data.load_data`; default "digits" for a (1, 8, 8) model, else
    required): its samples are compared with the held-out test split, and the floor is a random
    subset of the train split against it. The problem is named `name`, default the data set's
    name (a file's stem). The reference is the model's own float32 dopri5 solve at rtol = atol =
    1e-5: float64 convolutions cost ~8x more on a CPU, and the errors it measures are above 1e-3."""
    from ..training import load_model

    state = score_checkpoint(checkpoint)
    test = checkpoint_data(state, data, "test", dtype=torch.float64, device=device)
    train = checkpoint_data(state, test.name, "train", dtype=torch.float64, device=device).x
    models = [load_model(checkpoint, weights, device=device, dtype=d) for d in (dtype, torch.float32)]

    def draw(count: int, generator: torch.Generator) -> torch.Tensor:
        if count > len(train):
            raise ValueError(f"n={count} exceeds the {len(train)} training samples of {test.name} used for the floor")
        return train[torch.randperm(len(train), generator=generator, device=generator.device)[:count]]

    return Problem(name or _data_label(test.name), models[0], models[1], test.shape, test.x, draw,
                   reference_options=dict(method="dopri5", rtol=1e-5, atol=1e-5), reference_dtype=torch.float32)


def digits_problem(checkpoint: Union[str, Path], device=None, dtype: torch.dtype = torch.float32,
                   weights: str = "ema") -> Problem:
    """A trained digits model (`checkpoint_problem` on data "digits"): compared with the 297
    held-out test digits, the floor a random subset of the 1500 training digits."""
    return checkpoint_problem(checkpoint, "digits", device=device, dtype=dtype, weights=weights, name="digits")


def make_problem(spec: Union[str, Problem], seed: int = 0, n: int = 1000, device=None,
                 dtype: torch.dtype = torch.float32, checkpoint: Union[str, Path, None] = None,
                 data: Union[str, Path, None] = None) -> Problem:
    """The Problem a run names: a Problem itself, 'ckpt' (the `checkpoint` model on `data`, see
    `checkpoint_problem`), 'digits' (the same on the digits), or a '<mixture>/<sde>' pair (see
    `analytic_problem`)."""
    if isinstance(spec, Problem):
        return spec
    if spec in CHECKPOINT_PROBLEMS:
        if checkpoint is None:
            raise ValueError(f"problem {spec!r} needs a trained model: give checkpoint (--ckpt; digits_checkpoint "
                             "is its old name), e.g. the one benchmarks/digits_quality.py writes")
        if spec == "digits":
            if data not in (None, "digits"):
                raise _checks.fail("data", "digits (or None) for problem 'digits'; name problem 'ckpt' for "
                                   "another data set", data)
            return digits_problem(checkpoint, device=device, dtype=dtype)
        return checkpoint_problem(checkpoint, data, device=device, dtype=dtype)
    if "/" not in str(spec):
        raise ValueError(f"problem {spec!r} is not valid; give '<mixture>/<sde>' with mixture one of "
                         f"{', '.join(ANALYTIC)} and sde one of {', '.join(BENCH_SDES)}, 'ckpt' or 'digits'")
    return analytic_problem(spec, seed=seed, n=n, device=device)
