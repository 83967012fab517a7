"""Modules saved as data, never code: safetensors tensors with a JSON configuration and a
SHA-256 digest over both in the file's metadata (the way `training.checkpoint` stores Trainer
checkpoints). Used for the CLIP model and the regression prior, which the Trainer does not train."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Union

import torch
from torch import nn

__all__ = ["tensor_digest", "write_module", "read_module"]


def tensor_digest(kind: str, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over `kind`, the JSON configuration and every tensor's name, dtype, shape and
    bytes in name order, each field prefixed with its length."""
    h = hashlib.sha256(f"{kind}\n".encode())

    def field(data) -> None:
        data = memoryview(data).cast("B")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)

    field(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        field(name.encode())
        field(f"{t.dtype}{tuple(t.shape)}".encode())
        field(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def write_module(module: nn.Module, kind: str, config: Mapping[str, Any], path: Union[str, os.PathLike]) -> Path:
    """Write the state of `module` with its constructor `config` to `path`, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    meta = {"format": kind, "config": json.dumps(dict(config), sort_keys=True),
            "digest": tensor_digest(kind, config, tensors)}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def read_module(path: Union[str, os.PathLike], kind: str, build: Callable[..., nn.Module],
                config_keys: Any) -> nn.Module:
    """The module of kind `kind` written at `path` by `write_module`, rebuilt as
    `build(**config)`. Refuses a file of another kind, a configuration with other keys, tensors
    whose names or shapes differ from the configured module's (checked on a meta-device
    skeleton before they are read), and contents whose digest differs."""
    from safetensors import safe_open

    path = Path(path)
    what = kind.split("/")[0]
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    try:
        f = safe_open(str(path), framework="pt", device="cpu")
    except Exception as err:
        raise ValueError(f"{what} file {path} is not a safetensors file ({type(err).__name__}: {err})") from err
    with f:
        meta = f.metadata() or {}
        if meta.get("format") != kind or set(meta) != {"format", "config", "digest"}:
            raise ValueError(f"{path} is not a {kind} file (its format is {meta.get('format')!r})")
        try:
            config = json.loads(meta["config"])
            if not isinstance(config, dict) or set(config) != set(config_keys):
                raise ValueError(f"configuration keys must be {', '.join(sorted(config_keys))}")
            with torch.device("meta"):
                skeleton = build(**config)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{what} file {path} has a refused configuration: {err}") from err
        expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
        present = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        if present != expected:
            bad = sorted(set(present) ^ set(expected)) or [k for k in expected if present[k] != expected[k]]
            raise ValueError(f"{what} file {path}: its tensors do not fit its configuration (first: {bad[0]})")
        tensors: Dict[str, torch.Tensor] = {k: f.get_tensor(k) for k in present}
    if tensor_digest(kind, config, tensors) != meta["digest"]:
        raise ValueError(f"{what} file {path} is corrupted or was edited: its SHA-256 differs from the stored digest")
    module = build(**config)
    module.load_state_dict(tensors)
    return module.eval().requires_grad_(False)
