"""scoresde solvers inside diffusers loops: `SolverScheduler` is a diffusers-scheduler-shaped
object whose `step` is a scoresde multistep exponential integrator (DDIM, DPM-Solver++(2M/3M),
UniPC) on the `DiscreteVPSDE` of the model's chain.

Nothing here imports diffusers: a scheduler to copy is read through its attributes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from .. import _checks
from ..model import ScoreModel
from ..schedules import SCHEDULES, get_schedule, validate
from ..sde import DiscreteVPSDE
from ..solvers import Grid, History, multistep_order
from ..solvers.exponential import UNIPC_VARIANTS, dpm_multistep_update, lower_order_threshold, unipc_update
from .diffusers import PREDICTION_TYPES, chain_of, prediction_type_of

__all__ = ["SolverScheduler", "SchedulerStepOutput", "SCHEDULER_SOLVERS", "FINAL_SIGMAS_TYPES"]

#: solvers the scheduler can drive, and their multistep order (DPM-Solver++(pM), p = 1 is DDIM;
#: unipc's default history, which its `history` option changes)
SCHEDULER_SOLVERS = {"ddim": 1, "dpm++2m": 2, "dpm++3m": 3, "unipc": 2}
_UNIPC_OPTIONS = ("history", "variant", "corrector")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
_PIPELINE_KEYWORDS = ("generator", "eta", "use_clipped_model_output", "variance_noise")


@dataclass
class SchedulerStepOutput:
    """What `SolverScheduler.step` returns: the next state and the data prediction it used."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def _no_network(*args, **kwargs):
    raise RuntimeError("SolverScheduler converts outputs only; it never calls a network")


class SolverScheduler:
    """A diffusers-scheduler-shaped driver of scoresde's multistep exponential integrators.

    Drop it where a diffusers loop expects a scheduler::

        scheduler.set_timesteps(steps)
        for t in scheduler.timesteps:
            out = unet(scheduler.scale_model_input(x, t), t).sample
            x = scheduler.step(out, t, x).prev_sample

    Each `step` converts the model output to a data prediction x0 (`ScoreModel`'s conversion)
    and advances with `scoresde.solvers.exponential.dpm_multistep_update` (or `unipc_update`) on
    the `DiscreteVPSDE` of the model's alphas_cumprod; `timesteps` are float timesteps (0..N-1).

    Args:
        sde: the `DiscreteVPSDE` of the chain the model was trained on (or its alphas_cumprod).
        solver: 'ddim', 'dpm++2m', 'dpm++3m' or 'unipc'.
        prediction_type: the model's output, 'epsilon', 'v_prediction' or 'sample'.
        schedule: a scoresde schedule name for `set_timesteps(n)` (default 'logsnr'), placed
            between the top timestep and timestep 0.
        final_sigmas_type: 'zero' (default; the last step goes to sigma = 0 and returns the
            data prediction, as diffusers' DDIM with set_alpha_to_one and DPM-Solver with
            final_sigmas_type='zero' do) or 'sigma_min' (the last step ends at timestep 0).
        lower_order_final: the step count below which the order drops on the final steps, as
            the solvers' option: True is 15 (the solvers' and diffusers' DPM-Solver default),
            False 0 (never), or an integer >= 0.
        history, variant, corrector: unipc's options (only for solver='unipc'): the order p of
            UniP-p, 1-3 (default 2); B(h), 'bh1' or 'bh2' (default); and UniC on (default) or off.

    UniC corrects a step's result with the evaluation at that result, so inside diffusers'
    one-call-per-step loop the correction of step i - 1 happens at the start of step i, with
    the model output it is given (as diffusers' UniPCMultistepScheduler does); the samples the
    loop sees between steps are the predictions, and the last step's result is not corrected.
    It equals diffusers' UniPCMultistepScheduler with predict_x0=True, solver_type=variant,
    disable_corrector=[] (corrector=False: every step index) and the same final_sigmas_type;
    its lower_order_final=True tapers at any step count, which is ours with lower_order_final
    above the step count (below 15 steps both Trues agree). The unipc solver of
    `scoresde.sample` on the same grid is the same computation.

    Deliberate difference from diffusers' DPMSolverMultistepScheduler: step coefficients are
    computed in float64 from the exact alphas_cumprod (diffusers: float32), so the two agree to
    float32 rounding; 'dpm++3m' is scoresde's third-order variant, not diffusers' (see
    `dpm_multistep`). `order` is diffusers' meaning (timesteps per step, 1); the convergence
    order is `solver_order`.
    """

    order = 1
    init_noise_sigma = 1.0

    def __init__(
        self,
        sde: Union[DiscreteVPSDE, Sequence[float], torch.Tensor],
        solver: str = "dpm++2m",
        prediction_type: str = "epsilon",
        schedule: str = "logsnr",
        final_sigmas_type: str = "zero",
        lower_order_final: Union[bool, int] = True,
        history: Optional[int] = None,
        variant: Optional[str] = None,
        corrector: Optional[bool] = None,
    ):
        self.sde = sde if isinstance(sde, DiscreteVPSDE) else DiscreteVPSDE(sde)
        _checks.choice("solver", solver, SCHEDULER_SOLVERS)
        _checks.choice("prediction_type", prediction_type, PREDICTION_TYPES)
        _checks.choice("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES)
        _checks.choice("schedule", schedule, SCHEDULES)
        self.lower_order_final = lower_order_threshold(lower_order_final)
        unipc = solver == "unipc"
        if not unipc:
            for name, value in zip(_UNIPC_OPTIONS, (history, variant, corrector)):
                if value is not None:
                    raise _checks.fail(name, f"None for solver {solver!r} (an option of 'unipc')", value)
        self.solver = solver
        self.solver_order = SCHEDULER_SOLVERS[solver] if history is None else _checks.integer("history", history, 1, 3)
        self.variant = _checks.choice("variant", "bh2" if variant is None else variant, UNIPC_VARIANTS) if unipc else None
        self.corrector = _checks.boolean("corrector", True if corrector is None else corrector) if unipc else None
        self.prediction_type, self.schedule, self.final_sigmas_type = prediction_type, schedule, final_sigmas_type
        self._converter = ScoreModel(_no_network, self.sde, prediction=PREDICTION_TYPES[prediction_type])
        self.timesteps: Optional[torch.Tensor] = None
        self.num_inference_steps: Optional[int] = None

    @classmethod
    def from_scheduler(cls, scheduler, solver: str = "dpm++2m", **options) -> "SolverScheduler":
        """The same chain and prediction type as a diffusers scheduler's."""
        alphas_cumprod = chain_of(scheduler)[0]
        options.setdefault("prediction_type", prediction_type_of(scheduler))
        return cls(DiscreteVPSDE(alphas_cumprod), solver, **options)

    def set_timesteps(
        self,
        num_inference_steps: Optional[int] = None,
        device: Union[str, torch.device, None] = None,
        timesteps: Optional[Sequence[float]] = None,
    ) -> None:
        """Plan `num_inference_steps` steps (one model evaluation each) on `schedule`, or steps
        at the given descending (float) `timesteps`, one evaluation at each."""
        if (num_inference_steps is None) == (timesteps is None):
            raise _checks.ArgumentError("exactly one of num_inference_steps or timesteps must be given; got "
                                        + ("both" if timesteps is not None else "neither"))
        sde, zero = self.sde, self.final_sigmas_type == "zero"
        if timesteps is not None:
            ts = self._times_of(timesteps)
            if not zero:
                if float(ts[-1]) <= sde.t_eps * (1 + 1e-9):
                    raise ValueError("with final_sigmas_type='sigma_min' the timesteps must end above timestep 0, "
                                     "where the last step goes")
                ts = torch.cat([ts, ts.new_tensor([sde.t_eps])])
        else:
            n = _checks.integer("num_inference_steps", num_inference_steps, low=1)
            if zero:  # n evaluations on the schedule from T to t_eps, then the step to sigma = 0
                ts = get_schedule(self.schedule, sde, n - 1) if n > 1 else torch.tensor([sde.T], dtype=torch.float64)
            else:
                ts = get_schedule(self.schedule, sde, n)
        self._ts = ts  # float64 times of the grid; with 'zero' the final sigma = 0 is implicit
        self._grid = Grid.of(sde, ts)
        steps = len(ts) if zero else len(ts) - 1
        self.num_inference_steps = steps
        self.timesteps = sde.timestep(ts[:steps]).to(dtype=torch.float32, device=device)
        self._step_index: Optional[int] = None
        self._x0s = History(self.solver_order)
        self._last = None  # unipc: (x, order) of the last predictor step, which UniC corrects

    def _times_of(self, timesteps: Sequence[float]) -> torch.Tensor:
        """Float64 times of descending timesteps in [0, N-1]."""
        last = self.sde.num_train_timesteps - 1
        k = _checks.numbers_tensor("timesteps", timesteps, f"finite values in [0, {last}] (the trained range)")
        k = k.reshape(-1)
        if k.numel() == 0 or not bool(torch.isfinite(k).all()) or float(k.min()) < 0 or float(k.max()) > last:
            raise ValueError(f"timesteps must be finite values in [0, {last}] (the trained range); got {k.tolist()}")
        ts = self.sde.t_of_timestep(k)
        return validate(self.sde, ts) if ts.numel() > 1 else ts

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The model sees x itself (VP): returned unchanged."""
        return sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[float, torch.Tensor],
        sample: torch.Tensor,
        return_dict: bool = True,
        **pipeline_keywords,
    ):
        """Advance `sample` (B, *shape) at `timestep` by one solver step, given the model's
        output there. The ODE solve is deterministic: the keywords diffusers pipelines pass
        (generator, eta = 0, use_clipped_model_output, variance_noise) are accepted and ignored."""
        unknown = set(pipeline_keywords) - set(_PIPELINE_KEYWORDS)
        if unknown:
            raise TypeError(f"step() got unexpected keyword(s) {sorted(unknown)}; accepted: {list(_PIPELINE_KEYWORDS)}")
        if pipeline_keywords.get("eta", 0.0):
            raise ValueError(f"eta must be 0 (SolverScheduler runs the deterministic ODE); got {pipeline_keywords['eta']!r}")
        if self.timesteps is None:
            raise ValueError("call set_timesteps before step")
        i = self._index_of(timestep)
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output has shape {tuple(model_output.shape)}; it must have the sample's "
                             f"shape {tuple(sample.shape)}")
        work = torch.promote_types(sample.dtype, torch.float32)  # as diffusers: never step in half precision
        x, out = sample.to(work), model_output.to(work)
        _, x0_pred = self._converter.to_eps_x0(out, x, float(self._ts[i]))
        to_zero = i == self.num_inference_steps - 1 and self.final_sigmas_type == "zero"
        if self.corrector and self._last is not None and not to_zero:
            # UniC: step i - 1 again from its start, with the evaluation at its prediction x
            x_last, p_last = self._last
            x = unipc_update(self._grid, i - 1, x_last, self._x0s, p_last, self.variant, x0_pred)
        self._x0s.push(self._grid.lam[i], x0_pred)
        if to_zero:
            prev = x0_pred  # the step to sigma = 0 (lambda = inf) of any of these solvers is x0_pred
        else:
            # a loop that starts mid-way (img2img) has fewer predictions yet: warm up from first order
            p = min(multistep_order(i, self.num_inference_steps, self.solver_order, self.lower_order_final),
                    len(self._x0s))
            if self.solver == "unipc":
                prev = unipc_update(self._grid, i, x, self._x0s, p, self.variant)
                self._last = (x, p)
            else:
                prev = dpm_multistep_update(self._grid, i, x, self._x0s, p)
        self._step_index = i + 1
        prev = prev.to(sample.dtype)
        if not return_dict:
            return (prev, x0_pred.to(sample.dtype))
        return SchedulerStepOutput(prev, x0_pred.to(sample.dtype))

    def _index_of(self, timestep) -> int:
        """The step index: found from `timestep` on the first call (a loop may start mid-way),
        then the next one, checked against `timestep`."""
        value = float(timestep.reshape(-1)[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        distance = (self.timesteps.detach().cpu().double() - value).abs()
        if self._step_index is None:
            i = int(distance.argmin())
        else:
            i = self._step_index
            if i >= self.num_inference_steps:
                raise ValueError(f"all {self.num_inference_steps} steps are done; call set_timesteps again")
        if float(distance[i]) > 1e-3 * max(1.0, abs(value)):
            raise ValueError(
                f"step() got timestep {value:g}, but step {i} of set_timesteps is at {float(self.timesteps[i]):g}; "
                "loop over scheduler.timesteps in order"
            )
        return i

    def __len__(self) -> int:
        return self.sde.num_train_timesteps

    def __repr__(self) -> str:
        unipc = (f"history={self.solver_order}, variant={self.variant!r}, corrector={self.corrector}, "
                 if self.solver == "unipc" else "")
        return (f"SolverScheduler(solver={self.solver!r}, {unipc}prediction_type={self.prediction_type!r}, "
                f"schedule={self.schedule!r}, final_sigmas_type={self.final_sigmas_type!r}, "
                f"lower_order_final={self.lower_order_final}, sde={self.sde!r})")
