"""Trainer checkpoints as data, never code: the model's configuration (SDE class and
parameters, network class and `config`, prediction), the Trainer's options and position, and
the tensors of a run, with one SHA-256 over all of it, written atomically; and `load_model`, the
one way to get a trained ScoreModel back.

The file is a safetensors file (no pickle anywhere): every tensor (weights, EMA, optimizer
moments, RNG states, loss history) under a path-like name (`model/net.inp.weight`,
`optimizer/state/3/exp_avg`, `rng/torch`), and in its metadata the rest as one JSON document
(`scoresde`) and the digest (`digest`) of that JSON text and of every tensor's name, dtype,
shape and bytes. The digest makes any edit or corruption evident; it is not a signature (whoever
can write the file can recompute it), which is why loading also trusts nothing it reads: classes
come from an allow-list (`SDE_CLASSES`, `NET_CLASSES`), configuration values are checked against
bounds, and the tensors present must match, by name and shape, the network the configuration
describes (built on the `meta` device, which allocates nothing) before any tensor is read.

A checkpoint is written to a temporary file in the same directory and moved over the previous
one with `os.replace`, so a failed or killed write leaves the previous checkpoint intact; its
leftover temporary file is removed by the next save or resume (one writer per checkpoint).
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .. import _checks
from ..classifier import NoisyClassifier
from ..model import PREDICTIONS, TIME_INPUTS, ScoreModel
from ..nets import MLP, UNet
from ..sde import EDMSDE, VESDE, VPSDE, CosineVPSDE, SubVPSDE

__all__ = [
    "CHECKPOINT_NAME", "WEIGHTS", "SDE_CLASSES", "NET_CLASSES", "MAX_PARAMETERS", "CheckpointError", "model_config",
    "build_model", "check_resumable", "seal", "digest", "write_atomic", "remove_leftovers", "load_checkpoint",
    "load_model", "convert_legacy",
]

CHECKPOINT_NAME = "checkpoint.pt"
#: the weights a checkpoint holds: "ema" (the moving average) and "raw" (the optimized ones)
WEIGHTS = ("ema", "raw")
_WEIGHT_KEYS = {"ema": "ema", "raw": "model"}  # "raw" is stored under "model"
_FORMAT, _VERSION = "scoresde.Trainer", 2
_LEGACY_VERSION = 1  # torch.save (pickle) files of scoresde before the safetensors format

#: the SDE and network classes a checkpoint may name (nothing is looked up by name elsewhere)
SDE_CLASSES = {cls.__name__: cls for cls in (VPSDE, SubVPSDE, CosineVPSDE, VESDE, EDMSDE)}
NET_CLASSES = {"MLP": MLP, "UNet": UNet}
#: the largest network `build_model` builds (counted on the meta device first): 4e10 bytes in float32
MAX_PARAMETERS = 10**10
#: upper bounds of the integers that set a built-in network's structure (checked before building
#: it even on the meta device, whose cost grows with the number of modules)
_NET_LIMITS = {
    "MLP": {"dim": 2**24, "hidden": 2**14, "depth": 256, "cond_dim": 2**24, "num_classes": 2**24},
    "UNet": {"in_channels": 2**10, "base_channels": 2**12, "num_res_blocks": 64, "groups": 2**12,
             "num_classes": 2**24, "cond_dim": 2**24},
}
_MAX_LEVELS, _MAX_MULT = 8, 64  # UNet channel_mults: at most 8 levels, each width multiplier <= 64
_MAX_DATA_DIMS, _MAX_DATA_SIZE = 8, 2**24
_ADAMW_STATE = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
_RNG_KEYS, _MAX_RNG_BYTES = ("generator", "torch", "cuda"), 2**16
_MODEL_KEYS = ("kind", "sde", "net", "prediction", "time_input", "sigma_data")
#: what a checkpoint's model serves: a score (ScoreModel) or class logits (NoisyClassifier)
MODEL_KINDS = {"score": ScoreModel, "classifier": NoisyClassifier}
_BODY_KEYS = ("format", "version", "step", "data", "config", "optimizer")
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (not a checkpoint, unreadable, corrupted, edited,
    or describing something refused); the message names the file."""


# ---- configuration -----------------------------------------------------------------------
def _sde_config(sde) -> Dict[str, Any]:
    cls = type(sde)
    if SDE_CLASSES.get(cls.__name__) is cls:  # exactly the constructor's parameters
        names = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
        return {"class": cls.__name__, "params": {n: getattr(sde, n) for n in names}}
    params = {k: v for k, v in vars(sde).items() if not k.startswith("_") and isinstance(v, (bool, int, float))}
    return {"class": cls.__name__, "params": params}


def model_config(model: ScoreModel) -> Dict[str, Any]:
    """What `build_model` needs to rebuild `model`: its kind, SDE, network, prediction, time input."""
    net_config = getattr(model.net, "config", None)
    return {
        "kind": "classifier" if isinstance(model, NoisyClassifier) else "score",
        "sde": _sde_config(model.sde),
        "net": {"class": type(model.net).__name__, "config": dict(net_config) if isinstance(net_config, dict) else None},
        "prediction": model.prediction,
        "time_input": model.time_input if isinstance(model.time_input, str) else "<callable>",
        "sigma_data": model.sigma_data,
    }


def _params_of(cls) -> List[str]:
    return [n for n in inspect.signature(cls.__init__).parameters if n != "self"]


def _mismatch(name: str, accepted: str, given: str) -> _checks.ArgumentError:
    """`_checks.fail` for a `given` that is a description (printed as is, not as a repr)."""
    return _checks.ArgumentError(f"{name} must be {accepted}; got {given}")


def _dict(name: str, value: Any, keys: Optional[Sequence[str]] = None, required: bool = True) -> Dict[str, Any]:
    """`value` as a dict with string keys, each in `keys` (all of them when `required`)."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise _checks.fail(name, "a JSON object", value)
    if keys is not None:
        unknown = [k for k in value if k not in keys]
        missing = [k for k in keys if k not in value] if required else []
        if unknown or missing:
            accepted = ("an object with the keys " if required else "an object with keys among ") + ", ".join(keys)
            raise _mismatch(name, accepted, "keys " + ", ".join(sorted(value)) if value else "no keys")
    return value


def _checked_model_config(config: Any) -> Dict[str, Any]:
    """`config` (as `model_config` writes it) checked against the allow-lists and bounds; raises
    ArgumentError naming the offending field. Unknown classes pass (they cannot be built)."""
    if isinstance(config, dict) and "kind" not in config:  # written before kinds were recorded
        config = {"kind": "score", **config}
    config = _dict("model", config, _MODEL_KEYS)
    _checks.choice("model.kind", config["kind"], MODEL_KINDS)
    sde = _dict("model.sde", config["sde"], ("class", "params"))
    net = _dict("model.net", config["net"], ("class", "config"))
    if not isinstance(sde["class"], str):
        raise _checks.fail("model.sde.class", "a class name", sde["class"])
    if not isinstance(net["class"], str):
        raise _checks.fail("model.net.class", "a class name", net["class"])
    _checks.choice("model.prediction", config["prediction"], PREDICTIONS)
    _checks.choice("model.time_input", config["time_input"], TIME_INPUTS + ("<callable>",))
    _checks.real("model.sigma_data", config["sigma_data"], low=0, open_low=True)
    params = _dict("model.sde.params", sde["params"])
    for key, value in params.items():
        _checks.real(f"model.sde.params.{key}", value)
    if sde["class"] in SDE_CLASSES:
        _dict("model.sde.params", params, _params_of(SDE_CLASSES[sde["class"]]), required=False)
    if net["class"] in NET_CLASSES and net["config"] is not None:
        cfg = _dict("model.net.config", net["config"], _params_of(NET_CLASSES[net["class"]]), required=False)
        for key, high in _NET_LIMITS[net["class"]].items():
            if cfg.get(key) is not None:
                _checks.integer(f"model.net.config.{key}", cfg[key], low=1 if key != "num_res_blocks" else 0, high=high)
        if "channel_mults" in cfg:
            mults = cfg["channel_mults"]
            if not isinstance(mults, list) or not 1 <= len(mults) <= _MAX_LEVELS:
                raise _checks.fail("model.net.config.channel_mults", f"a list of 1 to {_MAX_LEVELS} integers", mults)
            for i, m in enumerate(mults):
                _checks.integer(f"model.net.config.channel_mults[{i}]", m, low=1, high=_MAX_MULT)
    return config


def _buildable(config: Dict[str, Any]) -> bool:
    return (config["sde"]["class"] in SDE_CLASSES and config["net"]["class"] in NET_CLASSES
            and config["net"]["config"] is not None and config["time_input"] != "<callable>")


def _construct(config: Dict[str, Any], meta: bool = False) -> ScoreModel:
    """The ScoreModel of a checked, buildable `config` (its network on the meta device, which
    allocates nothing, when `meta`)."""
    sde_cls, net_cls = SDE_CLASSES[config["sde"]["class"]], NET_CLASSES[config["net"]["class"]]
    try:
        sde = sde_cls(**config["sde"]["params"])
    except (ValueError, TypeError) as err:
        raise _checks.ArgumentError(f"model.sde: {err}") from err
    try:
        with torch.device("meta") if meta else contextlib.nullcontext():
            net = net_cls(**config["net"]["config"])
    except (ValueError, TypeError) as err:
        raise _checks.ArgumentError(f"model.net.config: {err}") from err
    if config["kind"] == "classifier":
        return NoisyClassifier(net, sde, time_input=config["time_input"])
    return ScoreModel(net, sde, prediction=config["prediction"], time_input=config["time_input"],
                      sigma_data=config["sigma_data"])


def _meta_model(config: Dict[str, Any]) -> ScoreModel:
    """The model of a checked, buildable `config` on the meta device (no memory), refused when it
    has more than MAX_PARAMETERS parameters."""
    model = _construct(config, meta=True)
    count = sum(p.numel() for p in model.parameters())
    if count > MAX_PARAMETERS:
        net = config["net"]
        args = ", ".join(f"{k}={v}" for k, v in net["config"].items() if v is not None)
        raise _mismatch("model.net.config", f"a network of at most {MAX_PARAMETERS:.0e} parameters",
                        f"{net['class']}({args}) with {count:.3g} parameters")
    return model


def build_model(config: Dict[str, Any]) -> ScoreModel:
    """A freshly initialized ScoreModel as `config` (from `model_config`) describes it, built-in
    SDEs and nets only (`SDE_CLASSES`, `NET_CLASSES`); its size is checked before allocating."""
    config = _checked_model_config(config)
    if not _buildable(config):
        raise ValueError(
            f"the checkpoint's model (SDE {config['sde']['class']}, network {config['net']['class']}, time_input "
            f"{config['time_input']!r}) is not built into scoresde (SDEs: {', '.join(SDE_CLASSES)}; networks: "
            f"{', '.join(NET_CLASSES)}); pass model= to Trainer.from_checkpoint"
        )
    _meta_model(config)
    return _construct(config)


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


# ---- the file format ---------------------------------------------------------------------
def _flatten(state: Mapping[str, Any]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """A checkpoint's state (as `seal` returns it) -> (tensors by name, the JSON body)."""
    tensors: Dict[str, torch.Tensor] = {}
    for group in ("model", "ema"):
        for key, value in state[group].items():
            tensors[f"{group}/{key}"] = value
    for index, entry in state["optimizer"]["state"].items():
        for key, value in entry.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"optimizer state {index}.{key} must be a tensor to be stored; got {type(value).__name__}")
            tensors[f"optimizer/state/{int(index)}/{key}"] = value
    for key, value in state["rng"].items():
        tensors[f"rng/{key}"] = value
    tensors["loss_history"] = state["loss_history"]
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    body = {
        "format": _FORMAT, "version": _VERSION, "step": int(state["step"]), "data": dict(state["data"]),
        "config": state["config"], "optimizer": {"param_groups": state["optimizer"]["param_groups"]},
    }
    return tensors, body


def _body_text(body: Dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def _digest(text: str, tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the JSON text and every tensor's name, dtype, shape and bytes, in name
    order, each field prefixed with its length (so no two contents hash alike by shifting)."""
    h = hashlib.sha256(f"{_FORMAT}/{_VERSION}\n".encode())

    def field(data) -> None:
        data = memoryview(data).cast("B")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)

    field(text.encode())
    for name in sorted(tensors):
        t = tensors[name]
        field(name.encode())
        field(f"{t.dtype}{tuple(t.shape)}".encode())
        field(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def digest(state: Mapping[str, Any]) -> str:
    """The digest of a checkpoint's state: the one `load_checkpoint` verifies."""
    tensors, body = _flatten(state)
    return _digest(_body_text(body), tensors)


def seal(body: Dict[str, Any]) -> Dict[str, Any]:
    """A checkpoint of `body` (step, model, ema, optimizer, rng, data, loss_history, config):
    `body` with the format, its version and the digest over all of it."""
    state = {"format": _FORMAT, "version": _VERSION, **body}
    state["digest"] = digest(state)
    return state


def _leftovers(path: Path) -> List[Path]:
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def remove_leftovers(path: Union[str, os.PathLike]) -> List[Path]:
    """Remove the temporary files an interrupted `write_atomic(..., path)` left beside `path`;
    returns them."""
    removed = []
    for tmp in _leftovers(Path(path)):
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


def _sorted_metadata(data: bytes) -> bytes:
    """A safetensors file's bytes with its metadata entries in sorted order: safetensors writes
    them in hash-map order, which differs between processes, so one state would otherwise give
    files that differ in their header (the same length either way: only the order changes)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > size:  # another serializer's escaping: keep the file as written
        return data
    return data[:8] + text.ljust(size) + data[8 + size:]


def write_atomic(state: Dict[str, Any], path: Union[str, os.PathLike]) -> None:
    """Write the checkpoint `state` (from `seal`) to a temporary file beside `path`, fsync, then
    os.replace: `path` is always either the previous checkpoint or the complete new one.
    Temporary files of earlier interrupted writes are removed first."""
    from safetensors.torch import save as to_bytes

    path = Path(path)
    if path.is_dir():
        raise _checks.fail("path", "a checkpoint file path (not a directory)", str(path))
    tensors, body = _flatten(state)
    text = _body_text(body)
    sha = _digest(text, tensors)
    if state.get("digest", sha) != sha:
        raise ValueError("the checkpoint state was changed after seal(): its digest no longer matches")
    data = _sorted_metadata(to_bytes(tensors, metadata={"scoresde": text, "digest": sha}))
    remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---- loading -----------------------------------------------------------------------------
def _refuse(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path}: {what}")


def _open_path(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise _checks.fail("path", "a checkpoint file path (a str or os.PathLike)", path)
    path = Path(path)
    if path.is_dir():
        inside = path / CHECKPOINT_NAME
        hint = f" (did you mean {inside}?)" if inside.is_file() else ""
        raise CheckpointError(f"checkpoint must be a checkpoint file written by Trainer; got the directory {path}{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def _checked_body(body: Any) -> Dict[str, Any]:
    """The JSON body's structure and values checked (raises ArgumentError naming the field)."""
    body = _dict("metadata", body, _BODY_KEYS)
    if body["format"] != _FORMAT:
        raise _checks.fail("format", repr(_FORMAT), body["format"])
    if body["version"] != _VERSION:
        raise _checks.fail("version", f"{_VERSION} (the format this scoresde reads)", body["version"])
    _checks.integer("step", body["step"], low=0)
    data = _dict("data", body["data"], ("epoch", "position"))
    _checks.integer("data.epoch", data["epoch"], low=0)
    _checks.integer("data.position", data["position"], low=0)
    config = _dict("config", body["config"], ("model", "trainer", "data_shape"))
    _checked_model_config(config["model"])
    for key, value in _dict("config.trainer", config["trainer"]).items():
        if not (value is None or isinstance(value, (bool, int, float, str))):
            raise _checks.fail(f"config.trainer.{key}", "None, a boolean, a number or a string", value)
    shape = config["data_shape"]
    if not isinstance(shape, list) or len(shape) > _MAX_DATA_DIMS:
        raise _checks.fail("config.data_shape", f"a list of at most {_MAX_DATA_DIMS} sizes", shape)
    for i, size in enumerate(shape):
        _checks.integer(f"config.data_shape[{i}]", size, low=1, high=_MAX_DATA_SIZE)
    optimizer = _dict("optimizer", body["optimizer"], ("param_groups",))
    groups = optimizer["param_groups"]
    if not isinstance(groups, list) or not groups:
        raise _checks.fail("optimizer.param_groups", "a non-empty list", groups)
    for i, group in enumerate(groups):
        group = _dict(f"optimizer.param_groups[{i}]", group)
        indices = group.get("params")
        if not isinstance(indices, list) or not all(isinstance(j, int) and not isinstance(j, bool) for j in indices):
            raise _checks.fail(f"optimizer.param_groups[{i}].params", "a list of parameter indices", indices)
    return body


def _check_tensors(index: Dict[str, Tuple[str, List[int]]], body: Dict[str, Any]) -> None:
    """The tensors present (name -> (dtype, shape), from the safetensors header) must be exactly
    those of the model the configuration describes; raises ArgumentError otherwise."""
    groups: Dict[str, Dict[str, Tuple[str, List[int]]]] = {"model": {}, "ema": {}, "optimizer": {}, "rng": {}}
    for name, entry in index.items():
        head, _, rest = name.partition("/")
        if name == "loss_history":
            continue
        if head not in groups or not rest:
            raise _mismatch("tensors", "named model/*, ema/*, optimizer/state/*, rng/* or loss_history", name)
        groups[head][rest] = entry
    if "loss_history" not in index:
        raise _mismatch("tensors", "a set including loss_history", "none")
    dtype, shape = index["loss_history"]
    if dtype != "F64" or len(shape) != 1 or shape[0] > body["step"]:
        raise _mismatch("loss_history", f"float64 of shape (n,) with n <= step = {body['step']}",
                        f"{dtype} {tuple(shape)}")

    config = body["config"]["model"]
    net = config["net"]["class"]
    if _buildable(config):
        meta = _meta_model(config)  # refuses an oversized network before anything is read
        expected = {k: list(v.shape) for k, v in meta.state_dict().items()}
        param_shapes: Optional[List[List[int]]] = [list(p.shape) for p in meta.parameters()]
    else:  # a custom network: checked against the model it is restored into
        expected = {k: v[1] for k, v in groups["model"].items()}
        param_shapes = None
    for group in ("model", "ema"):
        present = groups[group]
        missing, extra = sorted(set(expected) - set(present)), sorted(set(present) - set(expected))
        if missing or extra:
            found = [f"missing {', '.join(missing[:3])}" if missing else "",
                     f"unexpected {', '.join(extra[:3])}" if extra else ""]
            raise _mismatch(f"{group} tensors", f"those of the configured network {net}", "; ".join(filter(None, found)))
        for key, (dtype, shape) in present.items():
            if shape != expected[key] or dtype not in _FLOAT_DTYPES:
                raise _mismatch(f"{group}/{key}", f"a float tensor of shape {tuple(expected[key])} (the configured "
                                f"network {net})", f"{dtype} {tuple(shape)}")

    n_params = sum(len(g["params"]) for g in body["optimizer"]["param_groups"])
    if param_shapes is not None and n_params != len(param_shapes):
        raise _mismatch("optimizer.param_groups", f"{len(param_shapes)} parameters (the configured network's)",
                        str(n_params))
    shapes = {tuple(s) for s in expected.values()}
    for rest, (dtype, shape) in groups["optimizer"].items():
        parts = rest.split("/")
        if (len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit() or int(parts[1]) >= n_params
                or parts[2] not in _ADAMW_STATE):
            raise _mismatch("optimizer tensors", f"named optimizer/state/<i < {n_params}>/<{'|'.join(_ADAMW_STATE)}>",
                            f"optimizer/{rest}")
        i, key = int(parts[1]), parts[2]
        want = [] if key == "step" else (param_shapes[i] if param_shapes is not None else None)
        if dtype not in _FLOAT_DTYPES or (shape != want if want is not None else tuple(shape) not in shapes):
            accepted = f"a float tensor of shape {tuple(want)}" if want is not None else "a float tensor shaped like a weight"
            raise _mismatch(f"optimizer/{rest}", accepted, f"{dtype} {tuple(shape)}")

    for key, (dtype, shape) in groups["rng"].items():
        if key not in _RNG_KEYS or dtype != "U8" or len(shape) != 1 or shape[0] > _MAX_RNG_BYTES:
            raise _mismatch(f"rng/{key}", f"a uint8 tensor of at most {_MAX_RNG_BYTES} bytes named "
                            + ", ".join(f"rng/{k}" for k in _RNG_KEYS), f"{dtype} {tuple(shape)}")
    if "generator" not in groups["rng"] or "torch" not in groups["rng"]:
        raise _mismatch("rng tensors", "rng/generator and rng/torch", ", ".join(groups["rng"]) or "none")


def load_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Read and verify a Trainer checkpoint (on CPU). Raises FileNotFoundError if it is absent,
    CheckpointError (a ValueError) naming the file if it is a directory, a pickle, unreadable,
    truncated, corrupted, edited, not a Trainer's, or describes a refused model; nothing is
    allocated for the tensors before their names and shapes are checked."""
    from safetensors import safe_open

    path = _open_path(path)
    try:
        f = safe_open(str(path), framework="pt", device="cpu")
    except Exception as err:  # safetensors reports a bad header as SafetensorError
        with open(path, "rb") as raw:
            head = raw.read(2)
        if head == b"PK" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
            raise _refuse(path, "is a torch.save (pickle) file, which scoresde does not read (unpickling can run "
                                "code). If it is a checkpoint of an older scoresde that you trust, convert it with "
                                "scoresde.training.checkpoint.convert_legacy(old, new); otherwise retrain") from None
        raise _refuse(path, f"is corrupted, truncated or not a scoresde checkpoint: it cannot be read as a "
                            f"safetensors file ({type(err).__name__}: {err})") from err
    with f:
        metadata = f.metadata() or {}
        if "scoresde" not in metadata:
            raise _refuse(path, "is not a scoresde Trainer checkpoint (a safetensors file without scoresde metadata)")
        if set(metadata) != {"scoresde", "digest"}:
            raise _refuse(path, "is corrupted: its metadata keys must be scoresde and digest; got "
                                + ", ".join(sorted(metadata)))
        text = metadata["scoresde"]
        try:
            body = json.loads(text)
        except ValueError as err:
            raise _refuse(path, f"is corrupted: its metadata is not valid JSON ({err})") from err
        try:
            body = _checked_body(body)
            index = {name: (f.get_slice(name).get_dtype(), list(f.get_slice(name).get_shape())) for name in f.keys()}
            _check_tensors(index, body)
        except _checks.ArgumentError as err:
            raise _refuse(path, f"is refused (corrupted, edited, or not a model this scoresde builds): {err}") from err
        tensors = {name: f.get_tensor(name) for name in index}
    sha = _digest(text, tensors)
    if sha != metadata["digest"]:
        raise _refuse(path, f"is corrupted or was edited: the SHA-256 of its contents must equal the stored digest "
                            f"{metadata['digest'][:16]}...; got {sha[:16]}...")
    state = {k: body[k] for k in ("format", "version", "step", "data", "config")}
    state["model"] = {k.partition("/")[2]: v for k, v in tensors.items() if k.startswith("model/")}
    state["ema"] = {k.partition("/")[2]: v for k, v in tensors.items() if k.startswith("ema/")}
    opt_state: Dict[int, Dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer/"):
            _, _, i, key = name.split("/")
            opt_state.setdefault(int(i), {})[key] = value
    groups = [{**g, "betas": tuple(g["betas"])} if isinstance(g.get("betas"), list) else g
              for g in body["optimizer"]["param_groups"]]
    state["optimizer"] = {"state": dict(sorted(opt_state.items())), "param_groups": groups}
    state["rng"] = {k.partition("/")[2]: v for k, v in tensors.items() if k.startswith("rng/")}
    state["loss_history"] = tensors["loss_history"]
    state["digest"] = sha
    return state


def load_model(path: Union[str, os.PathLike], weights: str = "ema", device: Union[str, torch.device, None] = None,
               dtype: Optional[torch.dtype] = None) -> ScoreModel:
    """The trained ScoreModel of the Trainer checkpoint at `path`, in eval mode (a
    `NoisyClassifier` for a checkpoint of one, its `kind` "classifier").

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


# ---- the format before safetensors -------------------------------------------------------
def _legacy_digest(obj: Any) -> str:
    """Version 1's SHA-256 over the tensors (dtype, shape, bytes) of a nested dict/list."""
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


def convert_legacy(old: Union[str, os.PathLike], new: Union[str, os.PathLike]) -> Path:
    """Rewrite a checkpoint of the torch.save format (version 1) that you trust as the current
    format. It is read with `torch.load(weights_only=True)`, which refuses pickled code, but that
    format's digest covered only the tensors, so its configuration and step are taken on trust."""
    old, new = Path(old), Path(new)
    if not old.is_file():
        raise FileNotFoundError(f"checkpoint {old} does not exist")
    try:
        state = torch.load(old, map_location="cpu", weights_only=True)
    except Exception as err:
        raise _refuse(old, f"cannot be read as a version-{_LEGACY_VERSION} checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or state.get("format") != _FORMAT or state.get("version") != _LEGACY_VERSION:
        raise _refuse(old, f"is not a version-{_LEGACY_VERSION} scoresde Trainer checkpoint")
    if _legacy_digest({k: v for k, v in state.items() if k != "digest"}) != state.get("digest"):
        raise _refuse(old, "is corrupted: its tensors do not match its stored SHA-256")
    config = state["config"]
    sde = config["model"]["sde"]
    if sde.get("class") in SDE_CLASSES:  # version 1 also stored derived attributes (T, prior_std)
        names = _params_of(SDE_CLASSES[sde["class"]])
        sde["params"] = {k: v for k, v in sde["params"].items() if k in names}
    body = {k: state[k] for k in ("step", "model", "ema", "optimizer", "rng", "data", "loss_history")}
    body["config"] = config
    write_atomic(seal(body), new)
    load_checkpoint(new)
    return new
