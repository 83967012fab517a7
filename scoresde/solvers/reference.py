"""The reference solve: the probability-flow ODE integrated at tight tolerances from given noise,
the yardstick every fixed-step ODE solver (and every tuned sampler) is measured against."""
from __future__ import annotations

from typing import Dict, Optional

import torch

from .sampling import SampleResult, sample

__all__ = ["REFERENCE_OPTIONS", "reference_solve"]

#: torchdiffeq's dopri8 at rtol = atol = 1e-10 (run it in float64 for analytic models)
REFERENCE_OPTIONS: Dict[str, object] = dict(method="dopri8", rtol=1e-10, atol=1e-10)


def reference_solve(model, x_T: torch.Tensor, t_end: Optional[float] = None,
                    options: Optional[Dict[str, object]] = None) -> SampleResult:
    """The probability-flow ODE from x_T (B, *data_shape) at T down to t_end (default the
    SDE's t_eps) by torchdiffeq with `options` (default REFERENCE_OPTIONS), in x_T's dtype."""
    return sample(model, x_T=x_T, solver="torchdiffeq", t_end=t_end, **(REFERENCE_OPTIONS if options is None else options))
