"""`Trainer`: denoising score matching with AdamW, linear LR warm-up, gradient clipping, EMA,
atomic checkpoints and bit-for-bit resumption; single process or DistributedDataParallel
under `torchrun`.

Randomness. A run is a function of `seed` alone. Batch indices come from a permutation of the
data per epoch, seeded by (seed, epoch): the data position is just (epoch, offset). Times,
noise and label dropout come from the Trainer's own `torch.Generator` (on the training
device). Every process draws them for the whole *global* batch and keeps its slice, so
sample j of step k gets the same data, t and noise whatever the number of processes: a run on
2 processes equals a 1-process run with the same global batch up to float summation order
(why not `DistributedSampler`: it would change the batches with the world size).

Checkpoints (`ckpt_dir/checkpoint.pt`) hold the model, EMA and optimizer states, the step, the
generator, the data position, the global torch RNG state and the configuration (SDE class and
parameters, network class and `config`, prediction, Trainer options). Only tensors and
primitive containers are stored (`torch.load(..., weights_only=True)`), with a SHA-256 of all
tensor bytes that detects corruption. Each is written to a temporary file in the same
directory and moved over the previous one with `os.replace`, so a failed write leaves the
previous checkpoint intact.
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from . import nets as _nets
from . import sde as _sdes
from ._utils import check_choice
from .losses import T_SAMPLINGS, WEIGHTINGS, dsm_loss, sample_time
from .model import ScoreModel

__all__ = ["Trainer", "load_checkpoint", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"
_FORMAT, _VERSION = "scoresde.Trainer", 1
#: Trainer options that shape the trajectory (stored, and compared on resume)
_TRAJECTORY_OPTIONS = (
    "batch_size", "lr", "weighting", "t_sampling", "label_dropout", "ema_decay", "ema_warmup",
    "warmup_steps", "grad_clip", "weight_decay", "seed", "use_labels", "bf16",
)
_OTHER_OPTIONS = ("ckpt_every", "sample_every")

Data = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor], torch.utils.data.Dataset]


def _derive_seed(seed: int, *tags: Any) -> int:
    """A 63-bit seed for one independent stream, fixed by (seed, tags) on every platform."""
    digest = hashlib.sha256("/".join(map(str, (seed,) + tags)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# ---- data ------------------------------------------------------------------------------
class _IndexedData:
    """Batches by index from tensors (x, optional labels y) or from any map-style Dataset whose
    items are a tensor or an (x, y) pair."""

    def __init__(self, data: Data):
        self.x: Optional[torch.Tensor] = None
        self.y: Optional[torch.Tensor] = None
        self.dataset = None
        if isinstance(data, torch.utils.data.TensorDataset):
            data = tuple(data.tensors) if len(data.tensors) > 1 else data.tensors[0]
        if isinstance(data, torch.Tensor):
            self.x = data
        elif isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(d, torch.Tensor) for d in data):
            self.x, self.y = data
        elif isinstance(data, torch.utils.data.Dataset):
            self.dataset = data
        else:
            raise ValueError(
                "data must be a tensor (N, *shape), a pair (x, labels) of tensors, or a map-style "
                f"torch.utils.data.Dataset; got {type(data).__name__}"
            )
        if self.x is not None:
            if not self.x.is_floating_point():
                raise ValueError(f"data must be a floating-point tensor; got {self.x.dtype}")
            if self.x.ndim < 2 or self.x.shape[0] == 0:
                raise ValueError(f"data must have shape (N, *shape) with N >= 1; got {tuple(self.x.shape)}")
            if not bool(torch.isfinite(self.x).all()):
                raise ValueError("data contains non-finite values (NaN or inf)")
            self.n = self.x.shape[0]
            self.sample_shape = tuple(self.x.shape[1:])
            self.dtype = self.x.dtype
            if self.y is not None and (self.y.shape != (self.n,) or self.y.is_floating_point()):
                raise ValueError(f"labels must be an integer tensor of shape (N,) = ({self.n},); got {self.y.dtype} {tuple(self.y.shape)}")
        else:
            self.n = len(self.dataset)
            if self.n == 0:
                raise ValueError("data is empty (a Dataset of length 0)")
            x, y = self._split(self.dataset[0])
            self.sample_shape, self.dtype = tuple(x.shape), x.dtype
            self.has_labels_item = y is not None

    @property
    def has_labels(self) -> bool:
        return self.y is not None if self.x is not None else self.has_labels_item

    @staticmethod
    def _split(item) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if isinstance(item, torch.Tensor):
            return item, None
        if isinstance(item, (tuple, list)) and len(item) == 2:
            return torch.as_tensor(item[0]), torch.as_tensor(item[1])
        raise ValueError(f"Dataset items must be a tensor or an (x, label) pair; got {type(item).__name__}")

    def get(self, idx: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(x (b, *shape), labels (b,) or None) for the indices idx (b,)."""
        if self.x is not None:
            idx = idx.to(self.x.device)
            return self.x[idx], (self.y[idx] if self.y is not None else None)
        items = [self._split(self.dataset[int(i)]) for i in idx]
        x = torch.stack([item[0] for item in items])
        if tuple(x.shape[1:]) != self.sample_shape or not x.is_floating_point():
            raise ValueError(f"Dataset items must all be float tensors of shape {self.sample_shape}; got {x.dtype} {tuple(x.shape[1:])}")
        if x.device.type == "cpu" and not bool(torch.isfinite(x).all()):
            raise ValueError("data contains non-finite values (NaN or inf)")
        y = torch.stack([item[1] for item in items]).long() if items[0][1] is not None else None
        return x, y


# ---- configuration -----------------------------------------------------------------------
def _sde_config(sde) -> Dict[str, Any]:
    params = {k: v for k, v in vars(sde).items() if not k.startswith("_") and isinstance(v, (bool, int, float))}
    return {"class": type(sde).__name__, "params": params}


def _model_config(model: ScoreModel) -> Dict[str, Any]:
    net_config = getattr(model.net, "config", None)
    return {
        "sde": _sde_config(model.sde),
        "net": {"class": type(model.net).__name__, "config": dict(net_config) if isinstance(net_config, dict) else None},
        "prediction": model.prediction,
        "time_input": model.time_input if isinstance(model.time_input, str) else "<callable>",
        "sigma_data": model.sigma_data,
    }


def _build_model(config: Dict[str, Any]) -> ScoreModel:
    """The ScoreModel a checkpoint's configuration describes (built-in SDEs and nets only)."""
    sde_cls = getattr(_sdes, config["sde"]["class"], None)
    net = config["net"]
    if sde_cls is None or net["class"] not in _nets.NETS or net["config"] is None or config["time_input"] == "<callable>":
        raise ValueError(
            f"the checkpoint's model (SDE {config['sde']['class']}, network {net['class']}, time_input "
            f"{config['time_input']!r}) is not built into scoresde; pass model= to Trainer.from_checkpoint"
        )
    accepted = inspect.signature(sde_cls.__init__).parameters
    sde = sde_cls(**{k: v for k, v in config["sde"]["params"].items() if k in accepted})
    return ScoreModel(_nets.build_net(net["class"], net["config"]), sde, prediction=config["prediction"],
                      time_input=config["time_input"], sigma_data=config["sigma_data"])


def _differences(stored: Any, current: Any, prefix: str = "") -> List[str]:
    if isinstance(stored, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(stored) | set(current)):
            out += _differences(stored.get(key, "<absent>"), current.get(key, "<absent>"), f"{prefix}{key}.")
        return out
    return [] if stored == current else [f"{prefix.rstrip('.')}: checkpoint {stored!r}, here {current!r}"]


# ---- checkpoint files --------------------------------------------------------------------
def _tensor_digest(obj: Any) -> str:
    """SHA-256 over every tensor (dtype, shape, bytes) in a nested dict/list, in a fixed order."""
    h = hashlib.sha256()

    def visit(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().to("cpu").contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(o, dict):
            for k in sorted(o, key=str):
                h.update(str(k).encode())
                visit(o[k])
        elif isinstance(o, (list, tuple)):
            for v in o:
                visit(v)

    visit(obj)
    return h.hexdigest()


def _write_atomic(state: Dict[str, Any], path: Path) -> None:
    """torch.save to a temporary file beside `path`, fsync, then os.replace: `path` is always
    either the previous checkpoint or the complete new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Read and verify a Trainer checkpoint (weights_only, on CPU). Raises FileNotFoundError if
    it is absent, ValueError if it is unreadable, truncated, corrupted or not a Trainer's."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or garbled files
        raise ValueError(f"checkpoint {path} is corrupted or truncated: cannot be read ({type(err).__name__}: {err})") from err
    required = ("format", "version", "step", "model", "ema", "optimizer", "rng", "data", "config", "digest")
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a scoresde Trainer checkpoint")
    missing = [k for k in required if k not in state]
    if missing:
        raise ValueError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    if state["version"] != _VERSION:
        raise ValueError(f"checkpoint {path} has format version {state['version']}; this scoresde reads {_VERSION}")
    body = {k: v for k, v in state.items() if k != "digest"}
    if _tensor_digest(body) != state["digest"]:
        raise ValueError(f"checkpoint {path} is corrupted: its tensors do not match the stored SHA-256")
    return state


# ---- the loss as a module (what DistributedDataParallel wraps) ----------------------------
class _LossModule(nn.Module):
    def __init__(self, model: ScoreModel, weighting: str, t_sampling: str, loss_fn: Optional[Callable] = None):
        super().__init__()
        self.model, self.weighting, self.t_sampling, self.loss_fn = model, weighting, t_sampling, loss_fn

    def forward(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, cond: Dict[str, torch.Tensor]) -> torch.Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(self.model, x0, t, noise, **cond)
        return dsm_loss(self.model, x0, t=t, noise=noise, weighting=self.weighting, t_sampling=self.t_sampling, **cond)


def _positive_int(name: str, value: Any, lower: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or value < lower:
        raise ValueError(f"{name} must be an integer >= {lower}; got {value!r}")
    return int(value)


class Trainer:
    """Trains a `ScoreModel` by denoising score matching (`scoresde.losses.dsm_loss`).

    Args:
        model: a ScoreModel on an affine SDE whose network has parameters; trained in place.
        data: a float tensor (N, *shape), a pair (x, labels (N,) int), a TensorDataset, or any
            map-style Dataset of tensors or (x, label) pairs.
        batch_size: global batch size (split over processes under torchrun).
        lr: AdamW learning rate after warm-up.
        weighting, t_sampling: loss options (`scoresde.losses`).
        label_dropout: probability of replacing a label by the null label `net.num_classes`
            (trains the unconditional model of classifier-free guidance).
        use_labels: feed data labels to the network as `y`. None: if and only if the network
            has `num_classes` (data with labels and a network without them is an error).
        ema_decay: EMA decay per step; with `ema_warmup` the n-th update uses
            min(ema_decay, (1 + n) / (10 + n)).
        warmup_steps: the LR rises linearly, lr * min(1, (step + 1) / warmup_steps).
        grad_clip: max global gradient norm (None: no clipping).
        weight_decay: AdamW's decoupled weight decay.
        seed: fixes the run's batches, times, noise and label dropout (not the network's
            initialization; randomness inside the network, e.g. dropout, uses the global
            torch RNG, whose state checkpoints also keep).
        ckpt_dir: where `checkpoint.pt` goes (None: no checkpoints); written every
            `ckpt_every` steps and at the end of `fit`.
        sample_every, sample_fn: call `sample_fn(ema_model, step)` every `sample_every` steps
            (0: never); the results are kept in `sample_log` as (step, result). The global RNG
            is forked around the call, so callbacks never change the training trajectory.
        bf16: bfloat16 autocast of the forward pass (CUDA only).
        device: training device; None: where the model's parameters are.
        progress: show a tqdm bar with the loss (rank 0 only).
        loss_fn: replaces the denoising score-matching loss: loss_fn(model, x0, t, noise, **cond)
            -> scalar, given the batch, its times (drawn as `t_sampling` says) and noise, and
            labels as `y` when `use_labels` (e.g. `guidance.classifier_loss` trains a
            time-dependent classifier). Not stored in checkpoints: pass it again on resume.

    Attributes: `step` (optimizer steps done), `ema_model`, `loss_history` (one float per step),
    `checkpoint_path`.

    Distributed: launch the script with `torchrun --nproc_per_node=N` and call
    `torch.distributed.init_process_group("gloo")` (CPU) or `"nccl"` (one GPU per process,
    device=f"cuda:{local_rank}") before building the Trainer; it then wraps the loss in
    DistributedDataParallel, splits every global batch over the processes and lets rank 0
    alone write checkpoints, which any number of processes can resume.
    """

    def __init__(
        self,
        model: ScoreModel,
        data: Data,
        batch_size: int = 128,
        lr: float = 2e-4,
        weighting: str = "score",
        t_sampling: str = "uniform",
        label_dropout: float = 0.0,
        use_labels: Optional[bool] = None,
        ema_decay: float = 0.999,
        ema_warmup: bool = True,
        warmup_steps: int = 100,
        grad_clip: Optional[float] = 1.0,
        weight_decay: float = 0.0,
        seed: int = 0,
        ckpt_dir: Union[str, os.PathLike, None] = None,
        ckpt_every: int = 1000,
        sample_every: int = 0,
        sample_fn: Optional[Callable[[ScoreModel, int], Any]] = None,
        bf16: bool = False,
        device: Union[str, torch.device, None] = None,
        progress: bool = True,
        loss_fn: Optional[Callable[..., torch.Tensor]] = None,
    ):
        if not isinstance(model, ScoreModel):
            raise ValueError(f"model must be a scoresde.ScoreModel; got {type(model).__name__}")
        if not model.sde.is_affine:
            raise ValueError(f"training needs an affine SDE; got {type(model.sde).__name__}")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model has no trainable parameters (is its net an nn.Module?)")
        check_choice("weighting", weighting, WEIGHTINGS)
        check_choice("t_sampling", t_sampling, T_SAMPLINGS)
        batch_size = _positive_int("batch_size", batch_size)
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a finite number > 0; got {lr!r}")
        if not 0 <= label_dropout < 1:
            raise ValueError(f"label_dropout must lie in [0, 1); got {label_dropout!r}")
        if not 0 <= ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1); got {ema_decay!r}")
        warmup_steps = _positive_int("warmup_steps", warmup_steps, 0)
        if grad_clip is not None and not (math.isfinite(grad_clip) and grad_clip > 0):
            raise ValueError(f"grad_clip must be None or a finite number > 0; got {grad_clip!r}")
        if not (math.isfinite(weight_decay) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0; got {weight_decay!r}")
        seed = _positive_int("seed", seed, 0)
        ckpt_every = _positive_int("ckpt_every", ckpt_every)
        sample_every = _positive_int("sample_every", sample_every, 0)
        if sample_every and not callable(sample_fn):
            raise ValueError("sample_every > 0 needs a callable sample_fn(ema_model, step)")
        device = torch.device(device) if device is not None else params[0].device
        if bf16 and device.type != "cuda":
            raise ValueError(f"bf16=True needs a CUDA device; got device={str(device)!r}")

        self.data = _IndexedData(data)
        net_classes = getattr(model.net, "num_classes", None)
        if use_labels is None:
            if self.data.has_labels and net_classes is None:
                raise ValueError(
                    "data has labels but the network has no num_classes; pass use_labels=False to "
                    "train unconditionally, or build the network with num_classes"
                )
            use_labels = self.data.has_labels
        if use_labels and not self.data.has_labels:
            raise ValueError("use_labels=True but data has no labels; pass (x, labels)")
        if use_labels and net_classes is None:
            raise ValueError("use_labels=True needs a network with num_classes (the null label for label_dropout)")
        if label_dropout and not use_labels:
            raise ValueError("label_dropout > 0 needs labelled data and use_labels")
        if use_labels and self.data.y is not None and self.data.y.numel():
            lo, hi = int(self.data.y.min()), int(self.data.y.max())
            if lo < 0 or hi >= net_classes:
                raise ValueError(f"labels must lie in [0, num_classes) = [0, {net_classes}); got [{lo}, {hi}]")

        self.options = dict(
            batch_size=batch_size, lr=float(lr), weighting=weighting, t_sampling=t_sampling,
            label_dropout=float(label_dropout), use_labels=bool(use_labels), ema_decay=float(ema_decay),
            ema_warmup=bool(ema_warmup), warmup_steps=warmup_steps,
            grad_clip=None if grad_clip is None else float(grad_clip), weight_decay=float(weight_decay),
            seed=seed, ckpt_every=ckpt_every, sample_every=sample_every, bf16=bool(bf16),
        )
        self.num_classes = net_classes
        self.sample_fn = sample_fn
        self.device = device
        self.progress = progress
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else None
        if self.ckpt_dir is not None:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)

        self.distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.world_size = torch.distributed.get_world_size() if self.distributed else 1
        self.rank = torch.distributed.get_rank() if self.distributed else 0
        if batch_size % self.world_size:
            raise ValueError(f"batch_size={batch_size} must be divisible by the number of processes {self.world_size}")

        self.model = model.to(device)
        if loss_fn is not None and not callable(loss_fn):
            raise ValueError(f"loss_fn must be None or a callable (model, x0, t, noise, **cond) -> loss; got {loss_fn!r}")
        self._loss = _LossModule(self.model, weighting, t_sampling, loss_fn)
        self._check_data_fits()
        if self.distributed:  # broadcasts rank 0's parameters to every rank
            self._ddp = nn.parallel.DistributedDataParallel(
                self._loss, device_ids=[device.index] if device.type == "cuda" else None
            )
        else:
            self._ddp = self._loss
        self.ema_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self._params, lr=lr, weight_decay=weight_decay)

        self.step = 0
        self.generator = torch.Generator(device=device).manual_seed(_derive_seed(seed, "noise"))
        self._epoch, self._position = 0, 0
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)
        self.loss_history: List[float] = []
        self.sample_log: List[Tuple[int, Any]] = []
        self._pending: List[Tuple[int, torch.Tensor, torch.Tensor]] = []
        self._last_saved_step: Optional[int] = None

    # ---- construction helpers -------------------------------------------------------------
    def _check_data_fits(self) -> None:
        """The loss on two data samples, so a shape mismatch fails here, clearly."""
        x, y = self.data.get(torch.arange(min(2, self.data.n)))
        x = x.to(self.device)
        cond = {"y": y.to(self.device)} if self.options["use_labels"] else {}
        was_training, nfe = self.model.training, self.model.nfe
        self.model.eval()
        try:
            with torch.no_grad():
                t = torch.full((x.shape[0],), 0.5 * self.model.sde.T, dtype=torch.float64, device=self.device)
                self._loss(x, t, torch.zeros_like(x), cond)
        except Exception as err:
            raise ValueError(
                f"data samples of shape {self.data.sample_shape} do not fit the network "
                f"{type(self.model.net).__name__}: {err}"
            ) from err
        finally:
            self.model.train(was_training)
            self.model.nfe = nfe

    @property
    def checkpoint_path(self) -> Optional[Path]:
        return self.ckpt_dir / CHECKPOINT_NAME if self.ckpt_dir is not None else None

    def config(self) -> Dict[str, Any]:
        """The stored configuration: model (SDE, network, prediction), Trainer options, data shape."""
        return {"model": _model_config(self.model), "trainer": dict(self.options), "data_shape": list(self.data.sample_shape)}

    # ---- one step ---------------------------------------------------------------------------
    def _global_indices(self, n: int) -> torch.Tensor:
        parts, need = [], n
        while need:
            if self._perm_epoch != self._epoch:
                g = torch.Generator().manual_seed(_derive_seed(self.options["seed"], "data", self._epoch))
                self._perm, self._perm_epoch = torch.randperm(self.data.n, generator=g), self._epoch
            take = min(need, self.data.n - self._position)
            parts.append(self._perm[self._position:self._position + take])
            self._position += take
            need -= take
            if self._position == self.data.n:
                self._epoch, self._position = self._epoch + 1, 0
        return torch.cat(parts)

    def _lr(self, step: int) -> float:
        warm = self.options["warmup_steps"]
        return self.options["lr"] * (min(1.0, (step + 1) / warm) if warm else 1.0)

    def _train_step(self) -> None:
        opts = self.options
        b, per_rank = opts["batch_size"], opts["batch_size"] // self.world_size
        local = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        # every rank draws the global batch's indices, t, noise and dropout mask, keeps its slice
        idx = self._global_indices(b)
        x, y = self.data.get(idx[local])
        x = x.to(self.device, non_blocking=True)
        t = sample_time(self.model.sde, b, opts["t_sampling"], self.generator)[local]
        noise = torch.randn((b,) + self.data.sample_shape, generator=self.generator, dtype=x.dtype, device=self.device)[local]
        cond = {}
        if opts["use_labels"]:
            y = y.to(self.device, non_blocking=True)
            if opts["label_dropout"]:
                drop = torch.rand(b, generator=self.generator, device=self.device)[local] < opts["label_dropout"]
                y = torch.where(drop, torch.full_like(y, self.num_classes), y)
            cond["y"] = y
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(self.step)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=opts["bf16"]):
            loss = self._ddp(x, t, noise, cond)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = opts["grad_clip"] if opts["grad_clip"] is not None else math.inf
        grad_norm = nn.utils.clip_grad_norm_(self._params, max_norm)
        self._pending.append((self.step + 1, loss.detach(), grad_norm.detach()))
        if self.device.type == "cpu":  # free to check now, before the step can spoil the weights
            self._flush()
        self.optimizer.step()
        self._update_ema()
        self.step += 1

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.options["ema_decay"]
        if self.options["ema_warmup"]:
            decay = min(decay, (1 + self.step) / (10 + self.step))
        for e, p in zip(self.ema_model.parameters(), self.model.parameters()):
            e.lerp_(p, 1 - decay)
        for e, b in zip(self.ema_model.buffers(), self.model.buffers()):
            e.copy_(b)

    def _flush(self) -> None:
        """Check the pending losses and gradient norms (one host sync) and log them."""
        if not self._pending:
            return
        steps = [s for s, _, _ in self._pending]
        values = torch.stack([torch.stack([l.float(), g.float()]) for _, l, g in self._pending])
        self._pending = []
        if self.distributed:  # a rank's NaN loss already spoils every rank's gradient norm
            torch.distributed.all_reduce(values)
            values /= self.world_size
        values = values.cpu()
        for step, (loss, norm) in zip(steps, values.tolist()):
            if not (math.isfinite(loss) and math.isfinite(norm)):
                what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {norm}"
                last = self.checkpoint_path if self._last_saved_step is not None else None
                raise FloatingPointError(
                    f"training diverged at step {step}: the {what}; "
                    + (f"the last good checkpoint is {last} (step {self._last_saved_step})" if last else "no checkpoint was written")
                )
            self.loss_history.append(loss)

    # ---- the loop ---------------------------------------------------------------------------
    def fit(self, steps: int) -> "Trainer":
        """Train until `step == steps` (total optimizer steps, counted across resumptions)."""
        steps = _positive_int("steps", steps, 0)
        if steps < self.step:
            raise ValueError(f"steps={steps} is below the {self.step} steps already done; fit(steps) trains until step == steps")
        from tqdm.auto import tqdm

        opts = self.options
        bar = tqdm(total=steps, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=not self.progress or self.rank != 0)
        self.model.train()
        try:
            while self.step < steps:
                self._train_step()
                if self.device.type != "cpu" and self.step % 25 == 0:
                    self._flush()
                bar.update(1)
                if self.loss_history:
                    bar.set_postfix(loss=f"{self.loss_history[-1]:.4g}", lr=f"{self._lr(self.step - 1):.2g}", refresh=False)
                if opts["sample_every"] and self.step % opts["sample_every"] == 0 and self.rank == 0:
                    self._run_sample_fn()
                if self.ckpt_dir is not None and self.step % opts["ckpt_every"] == 0:
                    self.save()
            self._flush()
            if self.ckpt_dir is not None and self._last_saved_step != self.step:
                self.save()
        finally:
            bar.close()
        return self

    def _run_sample_fn(self) -> None:
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            self.sample_log.append((self.step, self.sample_fn(self.ema_model, self.step)))

    # ---- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Everything a bit-for-bit resumption needs (tensors and primitive containers only)."""
        rng = {"generator": self.generator.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        body = {
            "format": _FORMAT, "version": _VERSION, "step": self.step,
            "model": self.model.state_dict(), "ema": self.ema_model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "rng": rng, "data": {"epoch": self._epoch, "position": self._position},
            "loss_history": torch.tensor(self.loss_history, dtype=torch.float64),
            "config": self.config(),
        }
        body["digest"] = _tensor_digest(body)
        return body

    def save(self, path: Union[str, os.PathLike, None] = None) -> Path:
        """Write a checkpoint atomically (default `checkpoint_path`); only rank 0 writes."""
        self._flush()  # never save weights that follow a non-finite loss
        if path is None:
            if self.ckpt_dir is None:
                raise ValueError("save() needs a path when the Trainer has no ckpt_dir")
            path = self.checkpoint_path
        path = Path(path)
        if self.rank == 0:
            state = self.state_dict()
            try:
                _write_atomic(state, path)
            except Exception as err:
                kept = f"the previous checkpoint {path} is intact" if path.exists() else "no previous checkpoint exists"
                raise RuntimeError(f"writing checkpoint {path} at step {self.step} failed ({err}); {kept}") from err
        if self.distributed:
            torch.distributed.barrier()
        if path == self.checkpoint_path:
            self._last_saved_step = self.step
        return path

    def resume(self, path: Union[str, os.PathLike, None] = None) -> "Trainer":
        """Load a checkpoint (default `checkpoint_path`) into this Trainer; the run then continues
        exactly where the one that wrote it was. The model, SDE and data shape must match."""
        if path is None:
            if self.ckpt_dir is None:
                raise ValueError("resume() needs a path when the Trainer has no ckpt_dir")
            path = self.checkpoint_path
        self._restore(load_checkpoint(path), Path(path))
        return self

    def _restore(self, state: Dict[str, Any], path: Path) -> None:
        stored, here = state["config"], self.config()
        diffs = _differences(stored["model"], here["model"], "model.")
        diffs += _differences(stored["data_shape"], here["data_shape"], "data_shape")
        if diffs:
            raise ValueError(f"checkpoint {path} is for another configuration: " + "; ".join(diffs))
        changed = [d for key in _TRAJECTORY_OPTIONS
                   for d in _differences(stored["trainer"].get(key), here["trainer"].get(key), f"trainer.{key}")]
        if changed:
            warnings.warn(f"resuming {path} with changed options (the run will not match an uninterrupted one): "
                          + "; ".join(changed), stacklevel=3)
        try:
            self.model.load_state_dict(state["model"])
            self.ema_model.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise ValueError(f"checkpoint {path} does not fit this model: {err}") from err
        self.step = int(state["step"])
        self._epoch, self._position = int(state["data"]["epoch"]), int(state["data"]["position"])
        self.generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.loss_history = state["loss_history"].tolist()
        self._pending = []
        self._last_saved_step = self.step if path == self.checkpoint_path else None

    @classmethod
    def from_checkpoint(
        cls, path: Union[str, os.PathLike], data: Data, model: Optional[ScoreModel] = None, **overrides
    ) -> "Trainer":
        """A Trainer that continues the run saved at `path`. The model is rebuilt from the
        stored configuration (built-in SDEs and networks) unless given; options are the stored
        ones, except `overrides` (e.g. device, progress, sample_fn); `ckpt_dir` defaults to the
        checkpoint's directory."""
        path = Path(path)
        state = load_checkpoint(path)
        if model is None:
            model = _build_model(state["config"]["model"])
        kwargs = {k: v for k, v in state["config"]["trainer"].items() if k in _TRAJECTORY_OPTIONS + _OTHER_OPTIONS}
        kwargs.setdefault("ckpt_dir", path.parent)
        if kwargs.get("sample_every") and "sample_fn" not in overrides:
            kwargs["sample_every"] = 0  # the callback itself cannot be stored
        kwargs.update(overrides)
        trainer = cls(model, data, **kwargs)
        trainer._restore(state, path)
        return trainer
