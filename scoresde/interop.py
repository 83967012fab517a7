"""Models and loops from the wider ecosystem: diffusers and k-diffusion conventions.

* `from_diffusers(unet, scheduler_or_betas)`: a network trained on a discrete DDPM chain
  (diffusers' `UNet2DModel`, `UNet2DConditionModel`, or any `(x, timestep) -> output`) as a
  continuous-time `ScoreModel`, so every scoresde solver runs on it.
* `from_denoiser(fn)`: a k-diffusion / EDM denoiser D(x, sigma) as a `ScoreModel` under `EDMSDE`.
* `SolverScheduler`: the reverse direction, a diffusers-scheduler-shaped object whose `step`
  is a scoresde exponential integrator (DDIM, DPM-Solver++(2M/3M)), for existing diffusers loops.

diffusers is optional (`pip install scoresde[diffusers]`); nothing here imports it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Union

import torch

from ._utils import check_choice
from .model import ScoreModel
from .schedules import get_schedule, validate
from .sde import EDMSDE, DiscreteVPSDE, VPSDE
from .solvers._loop import Grid
from .solvers.exponential import _order_at, dpm_multistep_update

__all__ = ["from_diffusers", "from_denoiser", "SolverScheduler", "SchedulerStepOutput", "PREDICTION_TYPES"]

#: diffusers' `prediction_type` -> scoresde's `ScoreModel.prediction`
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
#: `from_diffusers(sde=...)`: the exact discrete VP, or the continuous VPSDE of linear betas
DIFFUSERS_SDES = ("discrete", "vp")


class _DiffusersNet(torch.nn.Module):
    """net(x, t_in, **cond) for a diffusers-style model(x, timestep, **cond) whose output is a
    tensor, a tuple (return_dict=False) or an object with `.sample` (UNet outputs)."""

    def __init__(self, model: Callable, name: str):
        super().__init__()
        if not callable(model):
            raise ValueError(f"{name} must be callable as {name}(x, timestep); got {type(model).__name__}")
        self.model, self.name = model, name  # an nn.Module model is registered: its parameters are ours

    def forward(self, x: torch.Tensor, t_in: torch.Tensor, **cond) -> torch.Tensor:
        out = self.model(x, t_in, **cond)
        out = out[0] if isinstance(out, tuple) else getattr(out, "sample", out)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"{self.name} returned {shape} for input shape {tuple(x.shape)}; its output must have the "
                "input's shape (a model with learned variance, out_channels = 2 x in_channels, needs its "
                "first half sliced off first)"
            )
        return out


class _MatchedTimestep:
    """The float timestep whose (interpolated) noise level equals `sde`'s at t."""

    def __init__(self, sde: VPSDE, discrete: DiscreteVPSDE):
        self.sde, self.discrete = sde, discrete

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return self.discrete.timestep(self.discrete.t_of_log_snr(self.sde.log_snr(t)))


def _chain(scheduler_or_betas):
    """(alphas_cumprod, betas) of a diffusers scheduler or of a 1-D sequence of betas, float64."""
    ac = getattr(scheduler_or_betas, "alphas_cumprod", None)
    if ac is not None:
        betas = getattr(scheduler_or_betas, "betas", None)
        ac = torch.as_tensor(ac, dtype=torch.float64)
        return ac, (1 - ac / torch.cat([ac.new_ones(1), ac[:-1]]) if betas is None else torch.as_tensor(betas).double())
    if isinstance(scheduler_or_betas, (torch.Tensor, list, tuple)) or hasattr(scheduler_or_betas, "__array__"):
        betas = torch.as_tensor(scheduler_or_betas, dtype=torch.float64)
        if betas.ndim == 1:
            return DiscreteVPSDE.from_betas(betas).alphas_cumprod, betas
    raise ValueError(
        f"scheduler_or_betas must be a DDPM-family diffusers scheduler with `alphas_cumprod` (DDPMScheduler, "
        f"DDIMScheduler, DPMSolverMultistepScheduler, ...) or a 1-D sequence of betas; got "
        f"{type(scheduler_or_betas).__name__} without `alphas_cumprod`"
    )


def _prediction_type(scheduler_or_betas, prediction_type: Optional[str]) -> str:
    if prediction_type is None:
        config = getattr(scheduler_or_betas, "config", None)
        prediction_type = getattr(config, "prediction_type", None) or "epsilon"
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    return prediction_type


def from_diffusers(
    unet: Callable,
    scheduler_or_betas,
    prediction_type: Optional[str] = None,
    sde: str = "discrete",
) -> ScoreModel:
    """A network trained on a discrete DDPM chain as a continuous-time `ScoreModel`.

    Args:
        unet: `unet(x, timestep, **cond)` with x (B, *shape) and float timesteps (B,) on the
            chain's 0..N-1 scale, returning a tensor shaped like x or an object with `.sample`
            (diffusers' UNets). Conditioning keywords given to the ScoreModel (e.g.
            `encoder_hidden_states=`) are passed through.
        scheduler_or_betas: a diffusers scheduler with `alphas_cumprod` (its
            `config.prediction_type` is the default prediction type), or the N betas.
        prediction_type: 'epsilon', 'v_prediction' or 'sample' (diffusers' names).
        sde: 'discrete' (default): `DiscreteVPSDE` of the chain's alphas_cumprod, t in [1/N, 1];
            'vp': `VPSDE.from_betas` (linear betas only), t in [t_eps, 1].

    What is exact: under 'discrete', at the trained times t_k = (k+1)/N the network is called
    at the integer timestep k with exactly the noise level it was trained at, so the ScoreModel
    is the network's own score there. Between trained timesteps alpha(t) is interpolated
    (log-SNR linear in t) and the network gets the fractional timestep N t - 1, never truncated:
    its output there is the network's own interpolation, as when diffusers' DPM-Solver or Karras
    schedules query it. Under 'vp' the network gets the fractional timestep whose interpolated
    noise level equals the VPSDE's at t, so it is exact wherever VPSDE's log-SNR meets a trained
    timestep's; the continuous beta(t) itself matches the chain only to O(1/N) (DESIGN.md).
    """
    ac, betas = _chain(scheduler_or_betas)
    prediction = PREDICTION_TYPES[_prediction_type(scheduler_or_betas, prediction_type)]
    check_choice("sde", sde, DIFFUSERS_SDES)
    discrete = DiscreteVPSDE(ac)
    net = _DiffusersNet(unet, "unet")
    if sde == "discrete":
        return ScoreModel(net, discrete, prediction=prediction, time_input=discrete.timestep)
    vp = VPSDE.from_betas(betas)
    return ScoreModel(net, vp, prediction=prediction, time_input=_MatchedTimestep(vp, discrete))


def from_denoiser(
    fn: Callable,
    sigma_data: Optional[float] = None,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
) -> ScoreModel:
    """A k-diffusion / EDM denoiser as a `ScoreModel` under `EDMSDE(sigma_min, sigma_max)`
    (Karras et al. 2022: x = x0 + sigma eps, t = sigma).

    Args:
        fn: with `sigma_data=None`, the denoiser D(x, sigma) -> E[x0 | x], x (B, *shape) and
            sigma (B,) (k-diffusion's `model(x, sigma)`, EDM's `net(x, sigma)`). With a float
            `sigma_data`, the raw network F(c_in x, c_noise) inside EDM's preconditioning
            D = c_skip x + c_out F (ScoreModel's prediction='edm').
        sigma_data: the data standard deviation of the preconditioning, or None (see fn).
    """
    sde = EDMSDE(sigma_min=sigma_min, sigma_max=sigma_max)
    net = _DiffusersNet(fn, "fn")
    if sigma_data is None:
        return ScoreModel(net, sde, prediction="x0", time_input="sigma")
    if not (isinstance(sigma_data, (int, float)) and sigma_data > 0):
        raise ValueError(f"sigma_data must be a number > 0 or None; got {sigma_data!r}")
    return ScoreModel(net, sde, prediction="edm", time_input="c_noise", sigma_data=float(sigma_data))


# ---- the reverse direction: scoresde solvers inside diffusers loops --------------------------
#: solvers the scheduler can drive, and their multistep order (all DPM-Solver++(pM), p = 1 is DDIM)
SCHEDULER_SOLVERS = {"ddim": 1, "dpm++2m": 2, "dpm++3m": 3}
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
    and advances with `scoresde.solvers.exponential.dpm_multistep_update` on the
    `DiscreteVPSDE` of the model's alphas_cumprod; `timesteps` are float timesteps (0..N-1).

    Args:
        sde: the `DiscreteVPSDE` of the chain the model was trained on (or its alphas_cumprod).
        solver: 'ddim', 'dpm++2m' or 'dpm++3m'.
        prediction_type: the model's output, 'epsilon', 'v_prediction' or 'sample'.
        schedule: a scoresde schedule name for `set_timesteps(n)` (default 'logsnr'), placed
            between the top timestep and timestep 0.
        final_sigmas_type: 'zero' (default; the last step goes to sigma = 0 and returns the
            data prediction, as diffusers' DDIM with set_alpha_to_one and DPM-Solver with
            final_sigmas_type='zero' do) or 'sigma_min' (the last step ends at timestep 0).
        lower_order_final: fewer than 15 steps drop to lower order on the final steps (the
            solvers' and diffusers' default).

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
        lower_order_final: bool = True,
    ):
        self.sde = sde if isinstance(sde, DiscreteVPSDE) else DiscreteVPSDE(sde)
        check_choice("solver", solver, SCHEDULER_SOLVERS)
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES)
        self.solver, self.solver_order = solver, SCHEDULER_SOLVERS[solver]
        self.prediction_type, self.schedule = prediction_type, schedule
        self.final_sigmas_type, self.lower_order_final = final_sigmas_type, bool(lower_order_final)
        self._converter = ScoreModel(_no_network, self.sde, prediction=PREDICTION_TYPES[prediction_type])
        self.timesteps: Optional[torch.Tensor] = None
        self.num_inference_steps: Optional[int] = None

    @classmethod
    def from_scheduler(cls, scheduler, solver: str = "dpm++2m", **options) -> "SolverScheduler":
        """The same chain and prediction type as a diffusers scheduler's."""
        alphas_cumprod = _chain(scheduler)[0]
        options.setdefault("prediction_type", _prediction_type(scheduler, None))
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
            raise ValueError("give exactly one of num_inference_steps or timesteps")
        sde, zero = self.sde, self.final_sigmas_type == "zero"
        if timesteps is not None:
            ts = self._times_of(timesteps)
            if not zero:
                if float(ts[-1]) <= sde.t_eps * (1 + 1e-9):
                    raise ValueError("with final_sigmas_type='sigma_min' the timesteps must end above timestep 0, "
                                     "where the last step goes")
                ts = torch.cat([ts, ts.new_tensor([sde.t_eps])])
        else:
            if isinstance(num_inference_steps, bool) or int(num_inference_steps) != num_inference_steps \
                    or num_inference_steps < 1:
                raise ValueError(f"num_inference_steps must be an integer >= 1; got {num_inference_steps!r}")
            n = int(num_inference_steps)
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
        self._x0_hist: List[torch.Tensor] = []

    def _times_of(self, timesteps: Sequence[float]) -> torch.Tensor:
        """Float64 times of descending timesteps in [0, N-1]."""
        k = torch.as_tensor(timesteps).detach().cpu().reshape(-1).double()
        last = self.sde.num_train_timesteps - 1
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
        self._x0_hist = (self._x0_hist + [x0_pred])[-self.solver_order:]
        if i == self.num_inference_steps - 1 and self.final_sigmas_type == "zero":
            prev = x0_pred  # the step to sigma = 0 (lambda = inf) of any of these solvers is x0_pred
        else:
            # a loop that starts mid-way (img2img) has fewer predictions yet: warm up from first order
            p = min(_order_at(i, self.num_inference_steps, self.solver_order, self.lower_order_final),
                    len(self._x0_hist))
            prev = dpm_multistep_update(self._grid, i, x, self._x0_hist, p)
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
        return (f"SolverScheduler(solver={self.solver!r}, prediction_type={self.prediction_type!r}, "
                f"schedule={self.schedule!r}, final_sigmas_type={self.final_sigmas_type!r}, sde={self.sde!r})")
