"""Method "steps": a time grid learned by gradient through the solver (Tong et al., ICLR 2025,
"Learning to Discretize Denoising Diffusion ODEs", LD3).

Parameterization. The log-SNR interval [lambda(T), lambda(t_end)] is cut into one increment per
step proportional to softmax(logits), so the times decrease strictly and the ends stay fixed
whatever the logits. Decoupled from that grid, the network at grid time t_i is evaluated at
the time of log-SNR lambda(t_i) + d_i (`ShiftedTime`), d_i = max_offset tanh(u_i) a small
learned offset, 0 at the start: the step coefficients see t_i, the network sees its shift.

Training. Adam (or RMSprop) on mini-batches of calibration pairs (x_T, teacher endpoint), for a
fixed number of epochs, the validation batch's RMSE measured after every epoch: the parameters
best on validation are kept and training stops after `patience` epochs without a new best (the
loop `scoresde.tuning.fitting.fit_early_stopped`, shared with method "coefficients").
LD3's soft teacher: during training the student starts from x'_T = x_T + delta, delta a learned
per-sample perturbation inside the ball of radius slack * sigma_T * sqrt(d) (d the data
dimension: `slack` is relative to the typical norm of x_T); validation starts from x_T itself.
Losses of the per-sample mean squared errors e_b: "mse" (their mean), "huber" (pseudo-Huber of
the per-sample RMS error, c^2 (sqrt(1 + e_b / c^2) - 1), c = huber_scale times the start's
calibration RMSE), "cvar" (the mean of the worst cvar_alpha fraction of e_b in the batch: the
rare trajectories that end far from the teacher).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional

import torch

from .. import _checks
from ..model import ScoreModel
from ..solvers import NonFiniteError, sample
from ..solvers._loop import t_of_log_snr
from .fitting import fit_early_stopped

__all__ = ["ShiftedTime", "grid_from_logits", "logits_of_grid", "learn_steps", "LearnedSteps", "STEPS_DEFAULTS",
           "LOSSES", "OPTIMIZERS", "INITS", "check_options"]

#: the losses of per-sample endpoint errors, the optimizers, and the initializations
LOSSES = ("mse", "huber", "cvar")
OPTIMIZERS = ("adam", "rmsprop")
#: the initial grid of the gradient-trained methods: "start": the best fixed schedule on
#: validation; "gits": GITS' grid; "nelder-mead": `optimize`'s grid on the calibration batch
#: (derivative-free, so it sees the trajectories that end in another mode, which gradients
#: cannot move back); "best": the one of them with the lowest calibration RMSE (nelder-mead
#: only where the calibration batch has MIN_CALIBRATION noises)
INITS = ("best", "start", "gits", "nelder-mead")
#: method "steps"' settings (see the module docstring); epochs of ceil(B / batch_size)
#: iterations each, lr the optimizer's step on logits and offsets (and on the slack's unit-ball
#: coordinates; offset_lr times it on the offsets), decayed along a cosine to lr_final * lr at
#: the last epoch
STEPS_DEFAULTS = dict(optimizer="adam", lr=0.02, lr_final=0.05, epochs=40, batch_size=64, patience=10, loss="mse",
                      huber_scale=0.5, cvar_alpha=0.2, slack=0.0, offsets=True, max_offset=1.0, offset_lr=0.1, init="best")


class ShiftedTime(ScoreModel):
    """`model` evaluated at shifted times: every quantity it serves at (x, t) (raw output, eps,
    x0, score, v) is `model`'s at (x, t'), t' the time of log-SNR lambda(t) + d(lambda(t)),
    with d piecewise linear in lambda through `offsets` at the log-SNRs of `times` (constant
    beyond them) and lambda(t') clipped to [lambda(times[0]), lambda(times[-1])]. At a grid
    time t_i, t' = t_i exactly where offsets[i] = 0.

    times: (K,) descending grid times (a tensor that may require grad); offsets: (K,) log-SNR
    offsets (likewise). Each evaluation counts once here and once in `model`.
    """

    def __init__(self, model: ScoreModel, times: torch.Tensor, offsets: torch.Tensor):
        if not isinstance(model, ScoreModel):
            raise _checks.fail("model", "a scoresde.ScoreModel", type(model).__name__)
        _checks.affine(model.sde, "ShiftedTime (offsets in log-SNR)")
        super().__init__(model.net, model.sde, model.prediction, model.time_input, model.sigma_data)
        times = torch.as_tensor(times, dtype=torch.float64)
        offsets = torch.as_tensor(offsets, dtype=torch.float64)
        if times.ndim != 1 or times.numel() < 2 or offsets.shape != times.shape:
            raise _checks.fail("offsets", f"one log-SNR offset per grid time ({tuple(times.shape)})",
                               tuple(offsets.shape))
        self.model = model
        self.lam = self.sde.log_snr(times)  # ascending
        self.offsets = offsets

    def evaluation_time(self, t: torch.Tensor) -> torch.Tensor:
        """t' for model times t (any shape)."""
        lam_nodes, d_nodes = self.lam, self.offsets
        lam = self.sde.log_snr(t).to(torch.float64)
        k = (torch.searchsorted(lam_nodes.detach(), lam.detach().reshape(-1), right=True) - 1)
        k = k.clamp(0, lam_nodes.numel() - 2).reshape(lam.shape)
        lo, hi = lam_nodes[k], lam_nodes[k + 1]
        w = ((lam - lo) / (hi - lo)).clamp(0, 1)
        d = d_nodes[k] + w * (d_nodes[k + 1] - d_nodes[k])
        shifted = torch.minimum(torch.maximum(lam + d, lam_nodes[0]), lam_nodes[-1])
        # t plus the shift's change of time: exactly t where d = 0, whatever the round trip
        # t -> lambda -> t costs
        return t + (t_of_log_snr(self.sde, shifted) - t_of_log_snr(self.sde, lam)).to(t.dtype)

    def forward(self, x: torch.Tensor, t, **cond) -> torch.Tensor:
        out = self.model(x, self._batch_time(x, t), **cond)
        self.nfe += 1
        return out

    def _batch_time(self, x: torch.Tensor, t) -> torch.Tensor:
        # every conversion of ScoreModel goes through here: all of them see t'
        return super()._batch_time(x, self.evaluation_time(self.sde.check_time(t)))

    def extra_repr(self) -> str:
        return f"offsets={[round(float(v), 4) for v in self.offsets.detach()]}"


def grid_from_logits(sde, logits: torch.Tensor, t_end: float) -> torch.Tensor:
    """The (steps + 1,) descending times whose log-SNR increments from lambda(T) to
    lambda(t_end) are proportional to softmax(logits) (steps,); differentiable in the logits,
    the ends exactly T and t_end."""
    lam_T, lam_end = float(sde.log_snr(sde.T)), float(sde.log_snr(t_end))
    fractions = torch.cumsum(torch.softmax(logits.to(torch.float64), 0), 0)[:-1]
    inner = t_of_log_snr(sde, lam_T + (lam_end - lam_T) * fractions)
    ends = logits.new_tensor([sde.T, t_end], dtype=torch.float64)
    return torch.cat([ends[:1], inner, ends[1:]])


def logits_of_grid(sde, times: torch.Tensor) -> torch.Tensor:
    """The logits (steps,) whose `grid_from_logits` is `times` (up to round-off)."""
    lam = sde.log_snr(torch.as_tensor(times, dtype=torch.float64))
    widths = torch.diff(lam)
    return torch.log(widths / widths.sum())


def check_options(given: Mapping[str, object], sde) -> Dict[str, object]:
    """Method "steps"' options over STEPS_DEFAULTS, each checked (one-line errors)."""
    unknown = sorted(set(given) - set(STEPS_DEFAULTS))
    if unknown:
        raise _checks.fail("method options", f"those of method 'steps' ({', '.join(STEPS_DEFAULTS)})", unknown)
    _checks.affine(sde, "method='steps' (a grid in log-SNR)")
    o = {**STEPS_DEFAULTS, **given}
    o["optimizer"] = _checks.choice("optimizer", o["optimizer"], OPTIMIZERS)
    o["loss"] = _checks.choice("loss", o["loss"], LOSSES)
    o["init"] = _checks.choice("init", o["init"], INITS)
    o["lr"] = _checks.real("lr", o["lr"], low=0, open_low=True)
    o["lr_final"] = _checks.real("lr_final", o["lr_final"], low=0, high=1)
    o["epochs"] = _checks.integer("epochs", o["epochs"], low=0)
    o["batch_size"] = _checks.integer("batch_size", o["batch_size"], low=1)
    o["patience"] = _checks.integer("patience", o["patience"], low=1)
    o["huber_scale"] = _checks.real("huber_scale", o["huber_scale"], low=0, open_low=True)
    o["cvar_alpha"] = _checks.real("cvar_alpha", o["cvar_alpha"], low=0, high=1, open_low=True)
    o["slack"] = _checks.real("slack", o["slack"], low=0)
    o["offsets"] = _checks.boolean("offsets", o["offsets"])
    o["offset_lr"] = _checks.real("offset_lr", o["offset_lr"], low=0)
    o["max_offset"] = _checks.real("max_offset", o["max_offset"], low=0, open_low=True)
    return o


@dataclass
class LearnedSteps:
    """What `learn_steps` found: times (steps + 1,) float64, offsets (steps + 1,) log-SNR
    offsets (all 0 when not learned), the validation RMSE of the start and of the best epoch,
    the per-epoch histories and the counts."""

    times: torch.Tensor
    offsets: List[float]
    loss_start: float
    loss: float
    best_epoch: int
    train_history: List[float] = field(default_factory=list)
    validation_history: List[float] = field(default_factory=list)
    iterations: int = 0


def learn_steps(
    model: ScoreModel,
    solver: str,
    start: torch.Tensor,
    x_cal: torch.Tensor,
    y_cal: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    options: Mapping[str, object],
    solver_options: Optional[Mapping[str, object]] = None,
    generator: Optional[torch.Generator] = None,
) -> LearnedSteps:
    """Train the grid (and its offsets) of `solver` from the grid `start` (steps + 1,) on the
    calibration pairs (x_cal, y_cal), early-stopped on the validation pairs (x_val, y_val)
    (noise and teacher endpoints, (B, *data_shape)); `options` as `check_options` returns them.
    Mini-batches are drawn with `generator` (default a generator seeded 0): the same inputs
    give the same result."""
    sde = model.sde
    solver_options = dict(solver_options or {})
    t_end = float(start[-1])
    steps = start.numel() - 1
    o = dict(options)
    gen = generator if generator is not None else torch.Generator(x_cal.device).manual_seed(0)
    logits = logits_of_grid(sde, start).clone().requires_grad_(True)
    raw = torch.zeros(steps + 1, dtype=torch.float64, requires_grad=True)
    params: List[dict] = [{"params": [logits]}]
    if o["offsets"]:
        params.append({"params": [raw], "lr": o["lr"] * o["offset_lr"]})
    radius = o["slack"] * sde.prior_std * math.sqrt(x_cal[0].numel())
    unit = torch.zeros_like(x_cal, dtype=x_cal.dtype, requires_grad=True)  # delta = radius * unit-ball point
    if radius > 0:
        params.append({"params": [unit]})
    optimizer = (torch.optim.Adam if o["optimizer"] == "adam" else torch.optim.RMSprop)(params, lr=o["lr"])
    n, batch = x_cal.shape[0], min(o["batch_size"], x_cal.shape[0])
    total_iterations = max(1, o["epochs"] * math.ceil(n / batch))
    # cosine decay of the step to lr_final * lr: the last iterations refine instead of rattling
    decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: o["lr_final"] + (1 - o["lr_final"]) * 0.5 * (
        1 + math.cos(math.pi * min(k, total_iterations) / total_iterations)))

    def current(detach: bool):
        ts = grid_from_logits(sde, logits, t_end)
        ts = torch.cat([start[:1], ts[1:-1], start[-1:]])  # the start's ends, bit for bit
        offsets = o["max_offset"] * torch.tanh(raw)
        return (ts.detach(), offsets.detach()) if detach else (ts, offsets)

    def errors(x_T, y, ts, offsets, grad: bool) -> torch.Tensor:
        """(B,) per-sample mean squared endpoint errors."""
        net = ShiftedTime(model, ts, offsets) if o["offsets"] else model
        x = sample(net, x_T=x_T, solver=solver, schedule=ts, enable_grad=grad, **solver_options).x
        return (x.to(torch.float64) - y.to(torch.float64)).square().flatten(1).mean(1)

    def validation(ts: torch.Tensor, offsets: torch.Tensor) -> float:
        if not bool((ts[1:] < ts[:-1]).all()):
            return math.inf
        try:
            with torch.no_grad():
                value = float(errors(x_val, y_val, ts, offsets, grad=False).mean().sqrt())
        except NonFiniteError:
            return math.inf
        return value if math.isfinite(value) else math.inf

    with torch.no_grad():
        e_start = errors(x_cal, y_cal, start, torch.zeros(steps + 1, dtype=torch.float64), grad=False)
    scale2 = max((o["huber_scale"] ** 2) * float(e_start.mean()), 1e-300)  # c^2, c = huber_scale * start RMSE
    loss_fn = training_loss(o["loss"], o["cvar_alpha"], scale2)

    def step(rows: torch.Tensor) -> Optional[float]:
        ts, offsets = current(detach=False)
        if not bool((ts.detach()[1:] < ts.detach()[:-1]).all()):
            return None  # round-off merged two times: the epoch ends, the best state stays
        x_T = x_cal[rows]
        if radius > 0:
            u = unit[rows]
            norm = u.flatten(1).norm(dim=1).clamp(min=1.0).reshape(-1, *[1] * (u.ndim - 1))
            x_T = x_T + radius * u / norm  # projected onto the ball
        try:
            loss = loss_fn(errors(x_T, y_cal[rows], ts, offsets, grad=True))
        except NonFiniteError:
            return None
        if not bool(torch.isfinite(loss)):
            return None
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        decay.step()
        return float(loss.detach())

    def evaluate():
        return validation(*current(detach=True)), (logits.detach().clone(), raw.detach().clone())

    start_state = (logits.detach().clone(), raw.detach().clone())
    fit = fit_early_stopped(step, evaluate, (validation(start, torch.zeros(steps + 1, dtype=torch.float64)),
                                             start_state), n, batch, o["epochs"], o["patience"], gen, x_cal.device)
    best_state = fit.state
    with torch.no_grad():
        logits.copy_(best_state[0])
        raw.copy_(best_state[1])
    ts, offsets = current(detach=True)
    if fit.best_epoch == 0:  # nothing beat the start: it is returned bit for bit
        ts, offsets = start.clone(), torch.zeros_like(offsets)
    return LearnedSteps(ts, [float(v) for v in offsets] if o["offsets"] else [], fit.loss_start, fit.loss,
                        fit.best_epoch, fit.train_history, fit.validation_history, fit.iterations)


def training_loss(name: str, alpha: float, scale2: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The training loss of per-sample mean squared errors e (B,)."""
    if name == "mse":
        return lambda e: e.mean()
    if name == "huber":
        return lambda e: (scale2 * (torch.sqrt(1 + e / scale2) - 1)).mean()

    def cvar(e: torch.Tensor) -> torch.Tensor:
        k = max(1, math.ceil(alpha * e.numel()))
        return torch.topk(e, k).values.mean()

    return cvar
