"""Per-step state hooks for the solver loop (`sample(..., state_hook=...)`): functions
hook(x, t, last) -> x applied after every step, like DPM-Solver's `correcting_xt_fn`.

`Inpainting` is the replacement method of Song et al. 2021 (Appendix I.2): after every step
the known coordinates are overwritten by a forward-noised copy of their values, and at the end
by the values themselves (SDE samplers also return their noise-free mean). It conditions only
approximately: step by step the unknown coordinates follow p_t(x_unknown | noisy known), not
the exact conditional p(x_unknown | known), and an early decision of the unknown part that the
known part contradicts is never undone (README, "Guidance and inpainting", has the measurements).
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _checks
from ..sde import AffineSDE
from ._loop import RowGenerators

__all__ = ["Inpainting"]


class Inpainting:
    """The replacement method (Song et al. 2021, Appendix I.2) as a per-step hook of the solver
    loop: `scoresde.sample(..., inpaint=(known, mask))` builds it.

    Args:
        sde: an affine SDE (its forward marginal noises the known values).
        known: (B, *shape) values of the known coordinates (anything where mask is False).
        mask: bool, (B, *shape) or (*shape), True where the value is known.
        generator: source of the forward noise (fresh at every step): a torch.Generator or
            `RowGenerators` (one stream per row).
    """

    def __init__(self, sde: AffineSDE, known: torch.Tensor, mask: torch.Tensor,
                 generator: Optional[torch.Generator] = None):
        _checks.affine(sde, "inpainting (its forward marginal)")
        if not isinstance(known, torch.Tensor) or not known.is_floating_point() or known.ndim < 2:
            raise ValueError(f"known must be a float tensor (B, *shape); got {getattr(known, 'dtype', type(known))}")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor (True = known) of shape (B, *shape) or (*shape); "
                             f"got {getattr(mask, 'dtype', type(mask).__name__)}")
        if tuple(mask.shape) not in (tuple(known.shape), tuple(known.shape[1:])):
            raise ValueError(f"mask must have shape (B, *shape) = {tuple(known.shape)} or (*shape) = "
                             f"{tuple(known.shape[1:])}; got {tuple(mask.shape)}")
        if not bool(torch.isfinite(torch.where(mask, known, 0)).all()):
            raise ValueError("known contains non-finite values where mask is True")
        self.sde, self.generator = sde, generator
        self.known, self.mask = known, mask.expand(known.shape)

    def check_state(self, x: torch.Tensor) -> None:
        if x.shape != self.known.shape:
            raise ValueError(f"known and mask are for shape {tuple(self.known.shape)}; the samples have shape {tuple(x.shape)}")

    def __call__(self, x: torch.Tensor, t: float, last: bool = False) -> torch.Tensor:
        """x with its known part replaced: by alpha(t) y + sigma(t) z, or by y when `last`."""
        known = self.known.to(dtype=x.dtype, device=x.device)
        mask = self.mask.to(x.device)
        if not last:
            if isinstance(self.generator, RowGenerators):
                noise = self.generator.randn(x.shape, x.dtype, x.device)
            else:
                noise = torch.randn(x.shape, generator=self.generator, dtype=x.dtype,
                                    device=self.generator.device if self.generator is not None else x.device).to(x.device)
            known = self.sde.marginal(known, t, noise)
        return torch.where(mask, known, x)
