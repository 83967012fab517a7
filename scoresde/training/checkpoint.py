"""Trainer checkpoints as data, never code: the model's configuration (SDE class and
parameters, network class and `config`, prediction) and the tensors of a run, one SHA-256 over
all of them, written atomically; and `load_model`, the one way to get a trained ScoreModel back.

A checkpoint holds only tensors and primitive containers (read with `torch.load(...,
weights_only=True)`). It is written to a temporary file in the same directory and moved over the
previous one with `os.replace`, so a failed write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import hashlib
import inspect
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from .. import _checks
from .. import nets as _nets
from .. import sde as _sdes
from ..model import ScoreModel

__all__ = [
    "CHECKPOINT_NAME", "WEIGHTS", "model_config", "build_model", "check_resumable", "seal", "write_atomic",
    "load_checkpoint", "load_model",
]

CHECKPOINT_NAME = "checkpoint.pt"
#: the weights a checkpoint holds: "ema" (the moving average) and "raw" (the optimized ones)
WEIGHTS = ("ema", "raw")
_WEIGHT_KEYS = {"ema": "ema", "raw": "model"}  # "raw" is stored under "model"
_FORMAT, _VERSION = "scoresde.Trainer", 1
_REQUIRED = ("format", "version", "step", "model", "ema", "optimizer", "rng", "data", "config", "digest")


# ---- configuration -----------------------------------------------------------------------
def _sde_config(sde) -> Dict[str, Any]:
    params = {k: v for k, v in vars(sde).items() if not k.startswith("_") and isinstance(v, (bool, int, float))}
    return {"class": type(sde).__name__, "params": params}


def model_config(model: ScoreModel) -> Dict[str, Any]:
    """What `build_model` needs to rebuild `model`: its SDE, network, prediction, time input."""
    net_config = getattr(model.net, "config", None)
    return {
        "sde": _sde_config(model.sde),
        "net": {"class": type(model.net).__name__, "config": dict(net_config) if isinstance(net_config, dict) else None},
        "prediction": model.prediction,
        "time_input": model.time_input if isinstance(model.time_input, str) else "<callable>",
        "sigma_data": model.sigma_data,
    }


def build_model(config: Dict[str, Any]) -> ScoreModel:
    """A freshly initialized ScoreModel as `config` (from `model_config`) describes it (built-in
    SDEs and nets only)."""
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


def check_resumable(stored: Dict[str, Any], here: Dict[str, Any], path: Path, trajectory_options: Sequence[str]) -> None:
    """Refuse a stored configuration (a Trainer's `config()`) for another model or data shape;
    warn when an option that shapes the trajectory changed."""
    diffs = _differences(stored["model"], here["model"], "model.")
    diffs += _differences(stored["data_shape"], here["data_shape"], "data_shape")
    if diffs:
        raise ValueError(f"checkpoint {path} is for another configuration: " + "; ".join(diffs))
    changed = [d for key in trajectory_options
               for d in _differences(stored["trainer"].get(key), here["trainer"].get(key), f"trainer.{key}")]
    if changed:
        warnings.warn(f"resuming {path} with changed options (the run will not match an uninterrupted one): "
                      + "; ".join(changed), stacklevel=4)


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


def seal(body: Dict[str, Any]) -> Dict[str, Any]:
    """A checkpoint of `body` (step, model, ema, optimizer, rng, data, loss_history, config):
    `body` with the format, its version and the digest over all of it."""
    state = {"format": _FORMAT, "version": _VERSION, **body}
    state["digest"] = _tensor_digest(state)
    return state


def write_atomic(state: Dict[str, Any], path: Path) -> None:
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
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a scoresde Trainer checkpoint")
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise ValueError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    if state["version"] != _VERSION:
        raise ValueError(f"checkpoint {path} has format version {state['version']}; this scoresde reads {_VERSION}")
    body = {k: v for k, v in state.items() if k != "digest"}
    if _tensor_digest(body) != state["digest"]:
        raise ValueError(f"checkpoint {path} is corrupted: its tensors do not match the stored SHA-256")
    return state


def load_model(path: Union[str, os.PathLike], weights: str = "ema", device: Union[str, torch.device, None] = None,
               dtype: Optional[torch.dtype] = None) -> ScoreModel:
    """The trained ScoreModel of the Trainer checkpoint at `path`, in eval mode.

    Args:
        path: a checkpoint file written by `Trainer` (built-in SDEs and networks only).
        weights: "ema", the exponential moving average of the weights, or "raw", the optimized
            weights themselves ("model", their key in the file, is an alias of "raw").
        device, dtype: where the model goes (None: CPU, torch's default float dtype).
    """
    weights = _checks.choice("weights", weights, WEIGHTS, aliases={"model": "raw"})
    state = load_checkpoint(path)
    model = build_model(state["config"]["model"])
    model.load_state_dict(state[_WEIGHT_KEYS[weights]])
    return model.to(device=device, dtype=dtype).eval()
