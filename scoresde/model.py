"""`ScoreModel`: a network (or an analytic oracle) served as score, eps, x0 or v for an SDE.

Whatever the network predicts, every conversion goes through the pair (eps, x0) of an affine SDE
x_t = alpha x0 + sigma eps (DESIGN.md): score = -eps / sigma, v = alpha eps - sigma x0.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Tuple, Union

import torch

from . import _checks
from ._utils import Time, expand_as_batch, tensor_bytes
from .sde import SDE, AffineSDE

__all__ = ["ScoreModel", "PREDICTIONS", "TIME_INPUTS", "fingerprint"]

PREDICTIONS = ("score", "eps", "x0", "v", "edm")
#: what the network sees as its time input: t itself, DDPM's 999 t, sigma(t), log sigma(t), or
#: EDM's c_noise = log(sigma / alpha) / 4 (the default, and only sensible choice, for "edm")
TIME_INPUTS = ("t", "999t", "sigma", "log_sigma", "c_noise")


class ScoreModel(torch.nn.Module):
    """Wraps `net(x_in, t_in, **cond)` for `sde` and serves `score`, `eps`, `x0`, `v`.

    Args:
        net: callable taking (x of shape (B, *shape), time input of shape (B,)) plus optional
            keyword conditioning, returning a tensor shaped like x. An `nn.Module` is registered
            as a submodule (its parameters are this model's parameters).
        sde: the forward SDE. Non-affine SDEs support only `prediction="score"`.
        prediction: what the network outputs, one of PREDICTIONS. "edm" is Karras et al.'s
            preconditioned denoiser D = c_skip x + c_out F(c_in x, c_noise), applied to
            x / alpha at noise level sigma / alpha so it serves any affine SDE.
        time_input: one of TIME_INPUTS or a callable t -> time input; default "c_noise" for
            "edm", else "t".
        sigma_data: data standard deviation used by the "edm" preconditioning.

    Every network call adds 1 to `nfe` (one batched call is one evaluation); `reset_nfe()`.
    """

    def __init__(
        self,
        net: Callable[..., torch.Tensor],
        sde: SDE,
        prediction: str = "eps",
        time_input: Union[str, Callable[[torch.Tensor], torch.Tensor], None] = None,
        sigma_data: float = 0.5,
    ):
        super().__init__()
        if not callable(net):
            raise _checks.fail("net", "a callable net(x, t_in, **cond) (an nn.Module or a function)", type(net).__name__)
        _checks.choice("prediction", prediction, PREDICTIONS)
        if not isinstance(sde, SDE):
            raise _checks.fail("sde", "a scoresde.SDE", sde)
        if prediction != "score":
            _checks.affine(sde, f"prediction={prediction!r} (any but 'score')")
        if time_input is None:
            time_input = "c_noise" if prediction == "edm" else "t"
        if not callable(time_input):
            _checks.choice("time_input", time_input, TIME_INPUTS)
            if time_input != "t":
                _checks.affine(sde, f"time_input={time_input!r} (any but 't' or a callable)")
        sigma_data = _checks.at_most("sigma_data", _checks.real("sigma_data", sigma_data, low=0, open_low=True), 1e15,
                                     " (the EDM preconditioning squares it in the state's dtype, float32 too)")
        self.net = net
        self.sde = sde
        self.prediction = prediction
        self.time_input = time_input
        self.sigma_data = float(sigma_data)
        self.nfe = 0

    def reset_nfe(self) -> int:
        """Set the evaluation counter to 0 and return its previous value."""
        nfe, self.nfe = self.nfe, 0
        return nfe

    # ---- the network call -------------------------------------------------------------
    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        """The time input the network sees for model time t."""
        if callable(self.time_input):
            return self.time_input(t)
        if self.time_input == "t":
            return t
        if self.time_input == "999t":
            return 999 * t
        if self.time_input == "sigma":
            return self.sde.sigma(t)
        if self.time_input == "log_sigma":
            return self.sde.log_sigma(t)
        return -0.25 * self.sde.log_snr(t)  # c_noise = log(sigma / alpha) / 4

    def forward(self, x: torch.Tensor, t: Time, **cond) -> torch.Tensor:
        """The raw network output at (x, t): one counted evaluation."""
        t = self._batch_time(x, t)
        x_in = x
        if self.prediction == "edm":
            alpha, sigma_hat = self._scaled_sigma(x, t)
            x_in = x / alpha * self._c_in(sigma_hat)
        t_in = self.network_time(t).to(x.dtype)
        out = _rows_apart(self.net, x_in, t_in, cond) if getattr(self, "rows_apart", False) else self.net(x_in, t_in, **cond)
        self.nfe += 1
        return _checked_output(out, x)

    # ---- served quantities (each is one network evaluation) ----------------------------
    def eps_and_x0(self, x: torch.Tensor, t: Time, **cond) -> Tuple[torch.Tensor, torch.Tensor]:
        """(eps, x0) predicted at (x, t) from a single network evaluation."""
        return self.to_eps_x0(self(x, t, **cond), x, t)

    def eps(self, x: torch.Tensor, t: Time, **cond) -> torch.Tensor:
        return self.eps_and_x0(x, t, **cond)[0]

    def x0(self, x: torch.Tensor, t: Time, **cond) -> torch.Tensor:
        return self.eps_and_x0(x, t, **cond)[1]

    def score(self, x: torch.Tensor, t: Time, **cond) -> torch.Tensor:
        if self.prediction == "score":
            return self(x, t, **cond)
        eps = self.eps(x, t, **cond)
        return -eps / expand_as_batch(self.sde.sigma(self._batch_time(x, t)), x)

    def v(self, x: torch.Tensor, t: Time, **cond) -> torch.Tensor:
        eps, x0 = self.eps_and_x0(x, t, **cond)
        alpha, sigma = self._alpha_sigma(x, self._batch_time(x, t))
        return alpha * eps - sigma * x0

    # ---- conversions (no network call) ------------------------------------------------
    def to_eps_x0(self, out: torch.Tensor, x: torch.Tensor, t: Time) -> Tuple[torch.Tensor, torch.Tensor]:
        """Convert a raw network output at (x, t) into (eps, x0)."""
        t = self._batch_time(x, t)
        alpha, sigma = self._alpha_sigma(x, t)
        p = self.prediction
        if p == "eps":
            return out, (x - sigma * out) / alpha
        if p == "score":
            return -sigma * out, (x + sigma**2 * out) / alpha
        if p == "x0":
            return (x - alpha * out) / sigma, out
        if p == "v":
            norm = alpha**2 + sigma**2
            return (sigma * x + alpha * out) / norm, (alpha * x - sigma * out) / norm
        _, sigma_hat = self._scaled_sigma(x, t)
        x0 = self._c_skip(sigma_hat) * x / alpha + self._c_out(sigma_hat) * out
        return (x - alpha * x0) / sigma, x0

    def target(self, eps: torch.Tensor, x0: torch.Tensor, x: torch.Tensor, t: Time) -> torch.Tensor:
        """The raw network output that represents (eps, x0) at (x, t): the inverse of
        `to_eps_x0`, used as the regression target in training and by analytic oracles."""
        t = self._batch_time(x, t)
        alpha, sigma = self._alpha_sigma(x, t)
        p = self.prediction
        if p == "eps":
            return eps
        if p == "score":
            return -eps / sigma
        if p == "x0":
            return x0
        if p == "v":
            return alpha * eps - sigma * x0
        _, sigma_hat = self._scaled_sigma(x, t)
        return (x0 - self._c_skip(sigma_hat) * x / alpha) / self._c_out(sigma_hat)

    # ---- helpers ----------------------------------------------------------------------
    def _batch_time(self, x: torch.Tensor, t: Time) -> torch.Tensor:
        """t checked against the SDE's range, as a (B,) tensor on x's device."""
        t = self.sde.check_time(t).to(device=x.device)
        if t.ndim == 0:
            return t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be a scalar or have shape (B,) = ({x.shape[0]},); got {tuple(t.shape)}")
        return t

    def _alpha_sigma(self, x: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        sde: AffineSDE = self.sde  # type: ignore[assignment]
        return expand_as_batch(sde.alpha(t), x), expand_as_batch(sde.sigma(t), x)

    def _scaled_sigma(self, x: torch.Tensor, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """alpha and the noise level sigma / alpha = exp(-lambda) of x / alpha."""
        sde: AffineSDE = self.sde  # type: ignore[assignment]
        return expand_as_batch(sde.alpha(t), x), expand_as_batch(sde.sigma_hat(t), x)

    def _c_skip(self, s: torch.Tensor) -> torch.Tensor:
        return self.sigma_data**2 / (s**2 + self.sigma_data**2)

    def _c_out(self, s: torch.Tensor) -> torch.Tensor:
        return s * self.sigma_data / (s**2 + self.sigma_data**2).sqrt()

    def _c_in(self, s: torch.Tensor) -> torch.Tensor:
        return 1 / (s**2 + self.sigma_data**2).sqrt()

    def extra_repr(self) -> str:
        return f"sde={self.sde!r}, prediction={self.prediction!r}, time_input={self.time_input!r}"


def fingerprint(model: ScoreModel) -> str:
    """A stable digest (16 hex digits) of what a model computes: the ScoreModel's
    parameterization and SDE, and for a network its parameters and buffers (sha256 over names,
    dtypes, shapes and bytes), for an exact Gaussian-mixture oracle its weights, means,
    covariances and event shape. A plain function has nothing to digest but its name. Tuned
    samplers and DPM-Solver-v3's statistics record it to refuse another model."""
    from .data.gmm import GaussianMixture  # data (same layer) imports this module at load time

    if not isinstance(model, ScoreModel):
        raise _checks.fail("model", "a scoresde.ScoreModel", type(model).__name__)
    digest = hashlib.sha256()
    time_input = model.time_input if isinstance(model.time_input, str) else getattr(
        model.time_input, "__qualname__", type(model.time_input).__qualname__)
    digest.update(f"{model.prediction}|{time_input}|{model.sigma_data!r}|{model.sde.fingerprint()}|".encode())
    net = model.net
    mixture = getattr(net, "mixture", None)
    if isinstance(mixture, GaussianMixture):
        digest.update(f"mixture{tuple(mixture.event_shape)}|".encode())
        tensors = [("weights", mixture.weights), ("means", mixture.means), ("covariances", mixture.covariances)]
    elif isinstance(net, torch.nn.Module):
        digest.update(f"module:{type(net).__qualname__}|".encode())
        tensors = sorted([*net.named_parameters(), *net.named_buffers()], key=lambda item: item[0])
    else:
        digest.update(f"function:{getattr(net, '__qualname__', type(net).__qualname__)}|".encode())
        tensors = []
    for name, tensor in tensors:
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor_bytes(tensor))
    return digest.hexdigest()[:16]


def _checked_output(out, x: torch.Tensor) -> torch.Tensor:
    """The network's output, refused unless it is a tensor of x's shape, dtype and device (under
    torch.autocast a lower-precision output is expected, and cast to x's dtype)."""
    accepted = f"a tensor like its input x: shape {tuple(x.shape)}, {x.dtype}, on {x.device}"
    if not isinstance(out, torch.Tensor):
        raise _checks.ArgumentError(f"the network's output must be {accepted}; got a {type(out).__name__}")
    if out.shape != x.shape:
        raise _checks.ArgumentError(f"the network's output must be {accepted}; got shape {tuple(out.shape)}")
    if out.device != x.device:
        raise _checks.ArgumentError(f"the network's output must be {accepted}; got a tensor on {out.device}")
    if out.dtype != x.dtype:
        if out.is_floating_point() and torch.is_autocast_enabled(x.device.type):
            return out.to(x.dtype)
        raise _checks.ArgumentError(f"the network's output must be {accepted}; got {out.dtype}")
    return out


def _rows_apart(net, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
    """net evaluated one row at a time (ScoreModel.rows_apart, set by `sample(seeds=...)`): a
    row's output then cannot depend on the batch it came in, whatever the network's kernels do
    with the batch size. Conditions with a batch dimension are split with the rows."""
    batch = x.shape[0]

    def row(value, i):
        return value[i:i + 1] if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == batch else value

    outs = [net(x[i:i + 1], t[i:i + 1], **{k: row(v, i) for k, v in cond.items()}) for i in range(batch)]
    bad = next((out for out in outs if not isinstance(out, torch.Tensor)), None)
    return bad if bad is not None else torch.cat(outs)  # a non-tensor is refused by forward's check
