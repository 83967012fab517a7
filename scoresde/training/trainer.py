"""`Trainer`: denoising score matching with AdamW, linear LR warm-up, gradient clipping, EMA,
atomic checkpoints (`checkpoint`) and bit-for-bit resumption; one process, or
DistributedDataParallel under `torchrun`.

A run is a function of `seed` alone: batch indices follow `data.EpochOrder`; times, noise and
label and condition dropout come from the Trainer's own generator. Every process draws them for the whole
*global* batch and keeps its slice, so a run on 2 processes equals a 1-process run with the same
global batch up to float summation order (`DistributedSampler` would change the batches with
the world size).
"""
from __future__ import annotations

import copy
import math
import numbers
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from .. import _checks
from ..losses import T_SAMPLINGS, WEIGHTINGS, dsm_loss, sample_time
from ..model import ScoreModel
from .checkpoint import (CHECKPOINT_NAME, build_model, check_resumable, load_checkpoint, model_config,
                         remove_leftovers, seal, write_atomic)
from .data import Data, EpochOrder, IndexedData, derive_seed

__all__ = ["Trainer"]

#: Trainer options that shape the trajectory (stored, and compared on resume)
_TRAJECTORY_OPTIONS = (
    "batch_size", "lr", "weighting", "t_sampling", "label_dropout", "ema_decay", "ema_warmup",
    "warmup_steps", "grad_clip", "weight_decay", "seed", "use_labels", "bf16", "cond_dropout", "use_cond",
)
#: the values of options added after checkpoints were first written, for checkpoints without them
_ADDED_OPTIONS = {"cond_dropout": 0.0, "use_cond": False}
_OTHER_OPTIONS = ("ckpt_every", "sample_every")


def _device(value: Any) -> torch.device:
    """`value` (a torch.device or a string such as "cpu", "cuda", "cuda:1") as an available device."""
    accepted = "None, a torch.device or a device string such as 'cpu', 'cuda', 'cuda:0'"
    if not isinstance(value, (str, torch.device)):
        raise _checks.fail("device", accepted, value)
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise _checks.fail("device", accepted, value) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise _checks.fail("device", "an available device ('cpu'; CUDA is not available here)", value)
        if device.index is not None and device.index >= count:
            raise _checks.fail("device", f"an available device ('cpu', 'cuda:0' .. 'cuda:{count - 1}')", value)
    if device.type == "meta":
        raise _checks.fail("device", "a device that holds data (not 'meta')", value)
    return device


# ---- the loss as a module (what DistributedDataParallel wraps) ----------------------------
class _LossModule(nn.Module):
    def __init__(self, model: ScoreModel, weighting: str, t_sampling: str, loss_fn: Optional[Callable] = None):
        super().__init__()
        self.model, self.weighting, self.t_sampling, self.loss_fn = model, weighting, t_sampling, loss_fn

    def forward(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, cond: Dict[str, torch.Tensor]) -> torch.Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(self.model, x0, t, noise, **cond)
        return dsm_loss(self.model, x0, t=t, noise=noise, weighting=self.weighting, t_sampling=self.t_sampling, **cond)


class Trainer:
    """Trains a `ScoreModel` by denoising score matching (`scoresde.losses.dsm_loss`).

    Args:
        model: a ScoreModel on an affine SDE whose network has parameters; trained in place.
        data: a float tensor (N, *shape), a pair (x, labels (N,) int), a TensorDataset, or any
            map-style Dataset of tensors, (x, label) pairs or dicts {"x", "y"?, "cond"?}.
        cond: vector conditions (N, cond_dim), float, row-aligned with `data` (or None; Dataset
            items may carry them as "cond" instead); fed to the network as `cond`, whose
            `cond_dim` must match. Not stored in checkpoints: pass it again on resume.
        cond_dropout: probability of replacing a row's condition by the null condition, zeros
            (cond=None, for networks that project it without bias), which trains the
            unconditional model of classifier-free guidance.
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
        step_fn: called as step_fn(trainer) after every optimizer step (rank 0, the RNG forked
            around it), e.g. to log `trainer.loss_history` (on an accelerator its newest
            entries arrive every 25 steps, without a host sync per step). Not stored in
            checkpoints: pass it again on resume.
        bf16: bfloat16 autocast of the forward pass (CUDA only).
        device: training device; None: where the model's parameters are.
        progress: show a tqdm bar with the loss (rank 0 only).
        loss_fn: replaces the denoising score-matching loss: loss_fn(model, x0, t, noise, **cond)
            -> scalar, given the batch, its times (drawn as `t_sampling` says) and noise, and
            labels as `y` when `use_labels` and conditions as `cond` when given (e.g. `losses.classifier_loss` trains a
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
        cond: Optional[torch.Tensor] = None,
        cond_dropout: float = 0.0,
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
        step_fn: Optional[Callable[["Trainer"], None]] = None,
        bf16: bool = False,
        device: Union[str, torch.device, None] = None,
        progress: bool = True,
        loss_fn: Optional[Callable[..., torch.Tensor]] = None,
    ):
        if not isinstance(model, ScoreModel):
            raise _checks.fail("model", "a scoresde.ScoreModel", model)
        _checks.affine(model.sde, "training")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model has no trainable parameters (is its net an nn.Module?)")
        weighting = _checks.choice("weighting", weighting, WEIGHTINGS)
        t_sampling = _checks.choice("t_sampling", t_sampling, T_SAMPLINGS)
        batch_size = _checks.integer("batch_size", batch_size, low=1)
        lr = _checks.real("lr", lr, low=0, open_low=True)
        label_dropout = _checks.real("label_dropout", label_dropout, low=0, high=1, open_high=True)
        cond_dropout = _checks.real("cond_dropout", cond_dropout, low=0, high=1, open_high=True)
        if use_labels is not None:
            use_labels = _checks.boolean("use_labels", use_labels)
        ema_decay = _checks.real("ema_decay", ema_decay, low=0, high=1, open_high=True)
        ema_warmup = _checks.boolean("ema_warmup", ema_warmup)
        warmup_steps = _checks.integer("warmup_steps", warmup_steps, low=0)
        if grad_clip is not None:
            if isinstance(grad_clip, bool) or not isinstance(grad_clip, numbers.Real) or not (
                    math.isfinite(grad_clip) and grad_clip > 0):
                raise _checks.fail("grad_clip", "None or a finite number > 0", grad_clip)
            grad_clip = float(grad_clip)
        weight_decay = _checks.real("weight_decay", weight_decay, low=0)
        seed = _checks.integer("seed", seed, low=0, high=2**63 - 1)
        if ckpt_dir is not None:
            if not isinstance(ckpt_dir, (str, os.PathLike)) or Path(ckpt_dir).is_file():
                raise _checks.fail("ckpt_dir", "None or a directory path (not a file)", ckpt_dir)
        ckpt_every = _checks.integer("ckpt_every", ckpt_every, low=1)
        sample_every = _checks.integer("sample_every", sample_every, low=0)
        if sample_fn is not None and not callable(sample_fn):
            raise _checks.fail("sample_fn", "None or a callable sample_fn(ema_model, step)", sample_fn)
        if step_fn is not None and not callable(step_fn):
            raise _checks.fail("step_fn", "None or a callable step_fn(trainer)", step_fn)
        if sample_every and sample_fn is None:
            raise ValueError("sample_every > 0 needs a callable sample_fn(ema_model, step)")
        if loss_fn is not None and not callable(loss_fn):
            raise _checks.fail("loss_fn", "None or a callable (model, x0, t, noise, **cond) -> loss", loss_fn)
        bf16 = _checks.boolean("bf16", bf16)
        progress = _checks.boolean("progress", progress)
        device = _device(device) if device is not None else params[0].device
        if bf16 and device.type != "cuda":
            raise ValueError(f"bf16=True needs a CUDA device; got device={str(device)!r}")

        self.data = IndexedData(data, cond)
        net_classes = getattr(model.net, "num_classes", None)
        use_labels = self.data.use_labels(use_labels, net_classes, label_dropout)
        use_cond = self.data.use_cond(getattr(model.net, "cond_dim", None), cond_dropout)

        self.options = dict(
            batch_size=batch_size, lr=float(lr), weighting=weighting, t_sampling=t_sampling,
            label_dropout=float(label_dropout), use_labels=bool(use_labels), ema_decay=float(ema_decay),
            ema_warmup=bool(ema_warmup), warmup_steps=warmup_steps,
            grad_clip=None if grad_clip is None else float(grad_clip), weight_decay=float(weight_decay),
            seed=seed, ckpt_every=ckpt_every, sample_every=sample_every, bf16=bool(bf16),
            cond_dropout=float(cond_dropout), use_cond=use_cond,
        )
        self.num_classes = net_classes
        self.sample_fn = sample_fn
        self.step_fn = step_fn
        self.device = device
        self.progress = progress
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else None

        self.distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.world_size = torch.distributed.get_world_size() if self.distributed else 1
        self.rank = torch.distributed.get_rank() if self.distributed else 0
        if batch_size % self.world_size:
            raise ValueError(f"batch_size={batch_size} must be divisible by the number of processes {self.world_size}")

        self.model = model.to(device)
        self._loss = _LossModule(self.model, weighting, t_sampling, loss_fn)
        self._check_data_fits()
        if self.ckpt_dir is not None:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
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
        self.generator = torch.Generator(device=device).manual_seed(derive_seed(seed, "noise"))
        self._order = EpochOrder(self.data.n, seed)
        self.loss_history: List[float] = []
        self.sample_log: List[Tuple[int, Any]] = []
        self._pending: List[Tuple[int, torch.Tensor, torch.Tensor]] = []
        self._last_saved_step: Optional[int] = None

    # ---- construction helpers -------------------------------------------------------------
    def _check_data_fits(self) -> None:
        """The loss on two data samples, so a shape mismatch fails here, clearly."""
        x, y, c = self.data.get(torch.arange(min(2, self.data.n)))
        x = x.to(self.device)
        cond = {"y": y.to(self.device)} if self.options["use_labels"] else {}
        if self.options["use_cond"]:
            cond["cond"] = c.to(self.device)
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
        return {"model": model_config(self.model), "trainer": dict(self.options), "data_shape": list(self.data.sample_shape)}

    # ---- one step ---------------------------------------------------------------------------
    def _lr(self, step: int) -> float:
        warm = self.options["warmup_steps"]
        return self.options["lr"] * (min(1.0, (step + 1) / warm) if warm else 1.0)

    def _train_step(self) -> None:
        opts = self.options
        b, per_rank = opts["batch_size"], opts["batch_size"] // self.world_size
        local = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        # every rank draws the global batch's indices, t, noise and dropout mask, keeps its slice
        idx = self._order.take(b)
        x, y, c = self.data.get(idx[local])
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
        if opts["use_cond"]:
            c = c.to(self.device, non_blocking=True)
            if opts["cond_dropout"]:  # drawn after the label mask, so runs without conditions are unchanged
                drop = torch.rand(b, generator=self.generator, device=self.device)[local] < opts["cond_dropout"]
                c = torch.where(drop[:, None], torch.zeros_like(c), c)
            cond["cond"] = c
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
        steps = _checks.integer("steps", steps, low=0)
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
                if self.step_fn is not None and self.rank == 0:
                    with self._forked_rng():
                        self.step_fn(self)
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

    def _forked_rng(self):
        """The global RNG (and this device's) restored after the block: callbacks never change
        the training trajectory."""
        return torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])

    def _run_sample_fn(self) -> None:
        with self._forked_rng(), torch.no_grad():
            self.sample_log.append((self.step, self.sample_fn(self.ema_model, self.step)))

    # ---- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Everything a bit-for-bit resumption needs (tensors and primitive containers only)."""
        rng = {"generator": self.generator.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return seal({
            "step": self.step,
            "model": self.model.state_dict(), "ema": self.ema_model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "rng": rng, "data": {"epoch": self._order.epoch, "position": self._order.position},
            "loss_history": torch.tensor(self.loss_history, dtype=torch.float64),
            "config": self.config(),
        })

    def save(self, path: Union[str, os.PathLike, None] = None) -> Path:
        """Write a checkpoint atomically (default `checkpoint_path`); only rank 0 writes."""
        self._flush()  # never save weights that follow a non-finite loss
        if path is None:
            if self.ckpt_dir is None:
                raise ValueError("save() needs a path when the Trainer has no ckpt_dir")
            path = self.checkpoint_path
        if not isinstance(path, (str, os.PathLike)) or Path(path).is_dir():
            raise _checks.fail("path", "a checkpoint file path (not a directory)", path)
        path = Path(path)
        if self.rank == 0:
            state = self.state_dict()
            try:
                write_atomic(state, path)  # also removes the temporary files of interrupted writes
            except Exception as err:
                kept = f"the previous checkpoint {path} is intact" if path.is_file() else "no previous checkpoint exists"
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
        stored = dict(state["config"], trainer={**_ADDED_OPTIONS, **state["config"]["trainer"]})
        if stored["trainer"]["use_cond"] != self.options["use_cond"]:
            with_cond = "with" if stored["trainer"]["use_cond"] else "without"
            raise ValueError(f"checkpoint {path} was trained {with_cond} vector conditions; resume it {with_cond} "
                             "cond (the data of the run that wrote it)")
        check_resumable(stored, self.config(), path, _TRAJECTORY_OPTIONS)
        position = int(state["data"]["position"])
        if position >= self.data.n:
            raise ValueError(f"checkpoint {path}: its data position must be below the {self.data.n} items of this "
                             f"data; got {position} (is this the data of the run that wrote it?)")
        try:
            self.model.load_state_dict(state["model"])
            self.ema_model.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.generator.set_state(state["rng"]["generator"])
            torch.set_rng_state(state["rng"]["torch"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise ValueError(f"checkpoint {path} does not fit this model: {err}") from err
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.step = int(state["step"])
        self._order.epoch, self._order.position = int(state["data"]["epoch"]), position
        self.loss_history = state["loss_history"].tolist()
        self._pending = []
        self._last_saved_step = self.step if path == self.checkpoint_path else None
        if self.rank == 0:
            remove_leftovers(path)  # of a save that was killed after this checkpoint was written

    @classmethod
    def from_checkpoint(
        cls, path: Union[str, os.PathLike], data: Data, model: Optional[ScoreModel] = None,
        cond: Optional[torch.Tensor] = None, **overrides
    ) -> "Trainer":
        """A Trainer that continues the run saved at `path`. The model is rebuilt from the
        stored configuration (built-in SDEs and networks) unless given; options are the stored
        ones, except `overrides` (e.g. device, progress, sample_fn); `ckpt_dir` defaults to the
        checkpoint's directory. `data` and `cond` are those of the run that wrote it."""
        path = Path(path)
        state = load_checkpoint(path)
        if model is None:
            model = build_model(state["config"]["model"])
        kwargs = {k: v for k, v in state["config"]["trainer"].items()
                  if k in _TRAJECTORY_OPTIONS + _OTHER_OPTIONS and k != "use_cond"}  # use_cond follows the data
        kwargs.setdefault("ckpt_dir", path.parent)
        if kwargs.get("sample_every") and "sample_fn" not in overrides:
            kwargs["sample_every"] = 0  # the callback itself cannot be stored
        kwargs.update(overrides)
        trainer = cls(model, data, cond=cond, **kwargs)
        trainer._restore(state, path)
        return trainer
