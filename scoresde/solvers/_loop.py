"""What every solver loop shares: the grid's coefficients and the per-step bookkeeping
(state replacement, finite check, user callback, trajectory, progress bar)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Tuple

import torch

from ..sde import AffineSDE

__all__ = ["NonFiniteError", "Loop", "Grid"]


class NonFiniteError(RuntimeError):
    """A sampler produced NaN or inf; the message names the step and time."""


@dataclass
class Grid:
    """alpha, sigma and lambda = log(alpha/sigma) at each grid time, as Python floats in float64,
    so step coefficients cost no device work and keep full precision in float32 runs."""

    t: List[float]
    alpha: List[float]
    sigma: List[float]
    lam: List[float]

    @classmethod
    def of(cls, sde: AffineSDE, ts: torch.Tensor) -> "Grid":
        return cls(ts.tolist(), sde.alpha(ts).tolist(), sde.sigma(ts).tolist(), sde.log_snr(ts).tolist())


#: replace(x, t, last) -> x with part of the state replaced (e.g. inpainting's known region)
Replace = Callable[[torch.Tensor, float, bool], torch.Tensor]


class Loop:
    """Iterates a solver over its grid and does the bookkeeping after each step.

    With `replace`, the state is modified after every step before anything else looks at it:
    `done` overwrites the solver's state tensor in place with replace(x, t_{i+1}, last step?),
    so the solver continues from the replaced state without knowing about it; `start`
    returns a replaced copy of the initial state (the caller's tensor is never written).
    """

    def __init__(
        self,
        ts: torch.Tensor,
        callback: Optional[Callable[[dict], None]] = None,
        progress: bool = False,
        record: bool = False,
        desc: str = "sampling",
        replace: Optional[Replace] = None,
    ):
        self.ts = ts
        self._t = ts.tolist()
        #: check for non-finite states at the end instead of after every step (default: on
        #: accelerators, where a per-step check is a host-device synchronization)
        self.deferred_check: Optional[bool] = None
        self._first_bad: Optional[torch.Tensor] = None
        self.callback = callback
        self.replace = replace
        self.trajectory: Optional[List[torch.Tensor]] = [] if record else None
        self._bar = None
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=len(ts) - 1, desc=desc)

    def steps(self) -> Iterator[Tuple[int, float, float]]:
        """(i, t_i, t_{i+1}) for each step, times as Python floats."""
        t = self._t
        for i in range(len(t) - 1):
            yield i, t[i], t[i + 1]

    def start(self, x: torch.Tensor) -> torch.Tensor:
        """The initial state (replaced, as a new tensor, when the loop has `replace`)."""
        if self.replace is not None:
            x = self.replace(x, self._t[0], False)
        if self.trajectory is not None:
            self.trajectory.append(x.detach().clone())
        return x

    def done(self, i: int, x: torch.Tensor, x0_pred: Optional[torch.Tensor] = None) -> None:
        """After step i (now at time ts[i+1]): replace (in place), stop on non-finite values,
        record, call back."""
        t = self._t[i + 1]
        if self.replace is not None:
            x.copy_(self.replace(x, t, i == len(self.ts) - 2))
        self._check_finite(i, x)
        if self.trajectory is not None:
            self.trajectory.append(x.detach().clone())
        if self.callback is not None:
            self.callback({"i": i, "t": t, "x": x, "x0_pred": x0_pred})
        if self._bar is not None:
            self._bar.update(1)

    def _check_finite(self, i: int, x: torch.Tensor) -> None:
        if self.deferred_check is None:
            self.deferred_check = x.device.type != "cpu"
        if not self.deferred_check:
            if not bool(torch.isfinite(x).all()):
                self._fail(i)
            return
        # On an accelerator, reading a flag every step would make the host wait for the device
        # every step; keep the first bad step on the device and read it once, in `finish`.
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=x.device)
        first = self._first_bad
        bad = ~torch.isfinite(x).all() & (first < 0)
        self._first_bad = torch.where(bad, torch.full_like(first, i), first)

    def finish(self) -> None:
        """Raise NonFiniteError if a step left non-finite values that were not yet reported
        (the device-side check); call after the solver returns."""
        if self._first_bad is not None and int(self._first_bad) >= 0:
            self._fail(int(self._first_bad))

    def _fail(self, i: int) -> None:
        self.close()
        raise NonFiniteError(
            f"non-finite values in the state after step {i + 1} of {len(self.ts) - 1} (t={self._t[i + 1]:.6g})"
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
