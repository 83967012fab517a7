"""Benchmark problems: a model to sample, the set its samples are compared with, and (where the
answer is known) the exact density and a reference solve of the probability-flow ODE.

`analytic_problem('ring2d/vp')` is a Gaussian mixture under a named SDE (exact in every
respect); `digits_problem(ckpt)` a trained digits model compared with the held-out test digits.
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

__all__ = ["Problem", "analytic_problem", "digits_problem", "make_problem", "ANALYTIC", "BENCH_SDES"]

ANALYTIC = ("ring2d", "gmm16d", "gmm64d", "bimodal1d")
BENCH_SDES = ("vp", "ve", "edm")


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


def digits_problem(checkpoint: Union[str, Path], device=None, dtype: torch.dtype = torch.float32,
                   weights: str = "ema") -> Problem:
    """A trained digits model from a Trainer checkpoint; its samples are compared with the
    297 held-out test digits and the floor is a random subset of the training split against
    them. The reference is a float32 dopri5 solve at rtol = atol = 1e-5: float64 convolutions
    cost ~8x more on a CPU, and the errors it measures are above 1e-3."""
    from ..data.digits import load_digits
    from ..training import load_model

    models = [load_model(checkpoint, weights, device=device, dtype=d) for d in (dtype, torch.float32)]
    train, _ = load_digits("train", dtype=torch.float64, device=device)
    test, _ = load_digits("test", dtype=torch.float64, device=device)

    def draw(count: int, generator: torch.Generator) -> torch.Tensor:
        if count > len(train):
            raise ValueError(f"n={count} exceeds the {len(train)} training digits used for the floor")
        return train[torch.randperm(len(train), generator=generator, device=generator.device)[:count]]

    return Problem("digits", models[0], models[1], tuple(test.shape[1:]), test, draw,
                   reference_options=dict(method="dopri5", rtol=1e-5, atol=1e-5), reference_dtype=torch.float32)


def make_problem(spec: Union[str, Problem], seed: int = 0, n: int = 1000, device=None,
                 dtype: torch.dtype = torch.float32, digits_checkpoint: Union[str, Path, None] = None) -> Problem:
    """The Problem a run names: a Problem itself, 'digits' (needs `digits_checkpoint`) or a
    '<mixture>/<sde>' pair (see `analytic_problem`)."""
    if isinstance(spec, Problem):
        return spec
    if spec == "digits":
        if digits_checkpoint is None:
            raise ValueError("problem 'digits' needs a trained model: give digits_checkpoint (--ckpt), "
                             "e.g. the one benchmarks/digits_quality.py writes")
        return digits_problem(digits_checkpoint, device=device, dtype=dtype)
    if "/" not in str(spec):
        raise ValueError(f"problem {spec!r} is not valid; give '<mixture>/<sde>' with mixture one of "
                         f"{', '.join(ANALYTIC)} and sde one of {', '.join(BENCH_SDES)}, or 'digits'")
    return analytic_problem(spec, seed=seed, n=n, device=device)
