"""A training run from one configuration: `TrainConfig` (every option of `scoresde train`, read
from and written to flat TOML), `build_model(config, dataset)` (the network that fits the
data) and `train(config, out)`, which runs the `Trainer` and fills the run folder `out`:

    checkpoint.pt        the Trainer checkpoint (every ckpt_every steps and at the end)
    config.toml          the resolved configuration, written at the start
    loss.csv             step, loss, lr, seconds: one row per step, appended as training goes
    loss.png             the loss curve (log y, smoothed)
    samples_<step>.png   every sample_every steps and at the end: a fixed-seed sample of the EMA
                         model (dpm++2m, 20 steps)

Pictures need matplotlib (the `plot` extra); without it they are skipped with one warning.
Under torchrun the run is DistributedDataParallel (the Trainer's) and rank 0 alone writes.
"""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch

from .. import _checks
from .._dist import torchrun_group
from ..data import DataSet, load_data
from ..guidance import ClassifierFree
from ..losses import WEIGHTINGS
from ..model import PREDICTIONS, ScoreModel
from ..nets import MLP, UNet
from ..plots import picture
from ..sde import SDES, by_name
from ..solvers import sample
from .checkpoint import CHECKPOINT_NAME, load_checkpoint
from .trainer import Trainer

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

__all__ = ["TrainConfig", "build_model", "train", "read_toml", "check_option", "resolve", "NETS", "DTYPES", "RESUME_FREE", "CONFIG_NAME",
           "LOSS_NAME"]

NETS = ("auto", "mlp", "unet")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: options a resumed run may change (they do not shape the trajectory)
RESUME_FREE = ("steps", "ckpt_every", "sample_every", "device", "progress")
CONFIG_NAME, LOSS_NAME = "config.toml", "loss.csv"
SAMPLE_SOLVER, SAMPLE_STEPS = "dpm++2m", 20
_MAX_STEPS = 10**8
_GROUPS = 8  # GroupNorm groups of the U-Net: gcd(8, channels)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run, checked on construction (one line naming the option).

    data: a built-in data set (`scoresde.data.BUILTIN_DATA`) or a .pt/.npy/.npz file; its
    labels y make the network class-conditional and its vectors cond vector-conditional,
    unless `unconditional`. net "auto": mlp for rows (N, D), unet for images (N, C, H, W).
    mlp: `hidden`, `depth`; unet: `channels`, `channel_mults`, `res_blocks`. `ema` is the EMA
    decay per step; `num_classes` (default: 1 + the largest label) leaves room for labels the
    training split lacks. `seed` fixes the network's initialization and the whole run.
    """

    data: str
    sde: str = "vp"
    net: str = "auto"
    hidden: int = 256
    depth: int = 4
    channels: int = 32
    channel_mults: Tuple[int, ...] = (1, 2)
    res_blocks: int = 1
    prediction: str = "v"  # benchmarks/prediction_types.py: eps makes small nets' ODE samples diverge
    weighting: str = "score"
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 100
    ema: float = 0.999
    label_dropout: float = 0.0
    cond_dropout: float = 0.0
    unconditional: bool = False
    num_classes: Optional[int] = None
    ckpt_every: int = 1000
    sample_every: int = 1000
    device: str = "cpu"
    dtype: str = "float32"
    bf16: bool = False
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, check_option(field.name, getattr(self, field.name)))
        if self.bf16 and torch.device(self.device).type != "cuda":
            raise _checks.fail("bf16", f"false on device {self.device!r} (bfloat16 autocast is CUDA only)", True)

    @classmethod
    def keys(cls) -> List[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, options: Mapping[str, Any], where: str = "options") -> "TrainConfig":
        """A config from `options` keyed by option names (underscores or hyphens); unknown keys
        are refused naming the accepted ones."""
        options = normalized(options, where)
        unknown = sorted(set(options) - set(cls.keys()))
        if unknown:
            raise _checks.ArgumentError(f"the keys of {where} must be among {', '.join(cls.keys())}; "
                                        f"got {', '.join(unknown)}")
        if "data" not in options:
            raise _checks.ArgumentError(f"data must be given (a built-in data set or a data file); {where} has none")
        return cls(**options)

    @classmethod
    def from_toml(cls, path: Union[str, os.PathLike]) -> "TrainConfig":
        """The config of a flat TOML file of `key = value` lines (as `to_toml` writes)."""
        return cls.from_dict(read_toml(path), where=str(path))

    def to_dict(self) -> Dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def to_toml(self) -> str:
        """Flat TOML, one `key = value` line per option (None, the default, is left out)."""
        lines = ["# scoresde train configuration (every key is also a flag of `scoresde train`)"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in self.to_dict().items() if v is not None]
        return "\n".join(lines) + "\n"

    def differences(self, other: "TrainConfig", ignore=()) -> List[str]:
        """`key: self's, other's` for each option that differs, except those in `ignore`."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]!r} vs {b[k]!r}" for k in a if k not in ignore and a[k] != b[k]]


def normalized(options: Mapping[str, Any], where: str) -> Dict[str, Any]:
    """`options` with hyphens in keys replaced by underscores (a key given both ways is refused)."""
    out: Dict[str, Any] = {}
    for key, value in options.items():
        name = str(key).replace("-", "_")
        if name in out:
            raise _checks.ArgumentError(f"the keys of {where} must be distinct; got {name} twice ({key!r} and another)")
        out[name] = value
    return out


def read_toml(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The flat `key = value` table of a TOML file, keys normalized (hyphens to underscores)."""
    accepted = "a readable TOML file of `key = value` lines"
    file = Path(path)
    if not file.is_file():
        raise _checks.ArgumentError(f"config must be {accepted}; got {str(path)!r} "
                                    f"({'it is a directory' if file.is_dir() else 'it does not exist'})")
    try:
        table = tomllib.loads(file.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise _checks.ArgumentError(f"config must be {accepted}; got {str(path)!r} ({err})") from None
    nested = [k for k, v in table.items() if isinstance(v, dict)]
    if nested:
        raise _checks.ArgumentError(f"config must be {accepted}, without tables; got {str(path)!r} "
                                    f"(tables {', '.join(nested)})")
    return normalized(table, str(path))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # finite (checked); repr round-trips and is valid TOML
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def check_option(name: str, value: Any) -> Any:
    """One option's value, checked and normalized (raises ArgumentError naming `name`)."""
    choices = {"sde": SDES, "net": NETS, "prediction": PREDICTIONS, "weighting": WEIGHTINGS, "dtype": DTYPES}
    if name in choices:
        return _checks.choice(name, value, choices[name])
    if name == "data":
        if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
            raise _checks.fail("data", "a built-in data set name or a data file path", value)
        return os.fspath(value)
    if name == "device":
        try:
            torch.device(value)
        except (RuntimeError, ValueError, TypeError):
            raise _checks.fail("device", "a torch device such as cpu, cuda or cuda:<index>", value) from None
        return str(value)
    if name in ("unconditional", "bf16", "progress"):
        return _checks.boolean(name, value)
    if name == "channel_mults":
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
            raise _checks.fail(name, "a non-empty list of integers >= 1", value)
        return tuple(_checks.integer(f"{name}[{i}]", m, low=1, high=64) for i, m in enumerate(value))
    if name in ("lr",):
        return _checks.real(name, value, low=0, open_low=True)
    if name in ("ema", "label_dropout", "cond_dropout"):
        return _checks.real(name, value, low=0, high=1, open_high=True)
    if name == "num_classes":
        return None if value is None else _checks.integer(name, value, low=1, high=2**24)
    lows = {"hidden": 2, "depth": 1, "channels": 1, "res_blocks": 0, "steps": 1, "batch_size": 1, "warmup_steps": 0,
            "ckpt_every": 1, "sample_every": 0, "seed": 0}
    highs = {"hidden": 2**14, "depth": 256, "channels": 4096, "res_blocks": 64, "steps": _MAX_STEPS,
             "batch_size": 2**20, "warmup_steps": _MAX_STEPS, "ckpt_every": _MAX_STEPS, "sample_every": _MAX_STEPS,
             "seed": 2**32 - 1}
    value = _checks.integer(name, value, low=lows[name], high=highs[name])
    if name == "hidden" and value % 2:
        raise _checks.fail(name, "an even integer (it is also the time-embedding width)", value)
    return value


# ---- the network that fits the data ---------------------------------------------------------
def resolve(config: TrainConfig, dataset: DataSet) -> TrainConfig:
    """`config` with what the data decides filled in (net for "auto", num_classes), refused
    (one line) where it does not fit the data: the network's shape, labels, conditions."""
    shape = dataset.shape
    image = len(shape) == 3
    if len(shape) not in (1, 3):
        raise _checks.fail(f"the samples of data {dataset.name}", "rows (D,) for mlp or images (C, H, W) for unet",
                           f"shape {shape}")
    net = config.net if config.net != "auto" else ("unet" if image else "mlp")
    if net == "mlp" and image:
        raise _checks.fail("net", f"unet for the images of data {dataset.name} of shape {shape} (or flatten them "
                           "into rows (N, D) for an mlp)", "mlp")
    if net == "unet" and not image:
        raise _checks.fail("net", f"mlp for the rows of data {dataset.name} of shape {shape} (unet needs images "
                           "(N, C, H, W))", "unet")
    if net == "unet":
        factor = 2 ** (len(config.channel_mults) - 1)
        if shape[1] % factor or shape[2] % factor:
            levels, size = 1, math.gcd(shape[1], shape[2])
            while size % 2 == 0:
                levels, size = levels + 1, size // 2
            raise _checks.fail("channel_mults", f"at most {levels} levels for images {shape[1]}x{shape[2]} (each "
                               f"level halves H and W: {len(config.channel_mults)} levels need them divisible by {factor})",
                               list(config.channel_mults))
    labels = dataset.y is not None and not config.unconditional
    num_classes = None
    if labels:
        num_classes = config.num_classes or dataset.num_classes
        if dataset.num_classes > num_classes:
            raise _checks.fail("num_classes", f"> every label of data {dataset.name} (its largest is "
                               f"{dataset.num_classes - 1})", num_classes)
    elif config.num_classes is not None:
        raise _checks.fail("num_classes", "unset for data without labels (or with unconditional)", config.num_classes)
    if config.label_dropout and not labels:
        raise _checks.fail("label_dropout", "0 for data without labels (or with unconditional)", config.label_dropout)
    if config.cond_dropout and (dataset.cond is None or config.unconditional):
        raise _checks.fail("cond_dropout", "0 for data without vector conditions cond (or with unconditional)",
                           config.cond_dropout)
    return dataclasses.replace(config, net=net, num_classes=num_classes)


def build_model(config: TrainConfig, dataset: DataSet) -> ScoreModel:
    """The freshly initialized ScoreModel of a resolved `config` for `dataset` (MLP for rows
    (N, D), UNet for images (N, C, H, W)), in `config.dtype`. Seeds the global torch RNG with
    `config.seed` first, so the initialization is a function of the seed."""
    config = resolve(config, dataset)
    cond_dim = None if config.unconditional else dataset.cond_dim
    torch.manual_seed(config.seed)
    if config.net == "mlp":
        net = MLP(dataset.shape[0], hidden=config.hidden, depth=config.depth, cond_dim=cond_dim,
                  num_classes=config.num_classes)
    else:
        net = UNet(in_channels=dataset.shape[0], base_channels=config.channels, channel_mults=list(config.channel_mults),
                   num_res_blocks=config.res_blocks, groups=math.gcd(_GROUPS, config.channels),
                   num_classes=config.num_classes, cond_dim=cond_dim)
    return ScoreModel(net, by_name(config.sde), prediction=config.prediction).to(DTYPES[config.dtype])


# ---- the run --------------------------------------------------------------------------------
@dataclasses.dataclass
class _Run:
    config: TrainConfig  # resolved
    dataset: DataSet
    model: ScoreModel
    out: Path
    resume_step: Optional[int]  # the checkpoint's step when resuming


def _prepare(config: TrainConfig, out: Path, resume: bool) -> _Run:
    """Every check of a run, before any work: the data, the network fitting it, and for a
    resumed run the stored configuration and checkpoint."""
    dataset = load_data(config.data, "train", dtype=DTYPES[config.dtype])
    config = resolve(config, dataset)
    model = build_model(config, dataset)
    ckpt = out / CHECKPOINT_NAME
    if not resume:
        if ckpt.exists():
            raise _checks.ArgumentError(f"out must be a folder without a checkpoint (resume continues one); got "
                                        f"{str(out)!r} (it holds {ckpt})")
        return _Run(config, dataset, model, out, None)
    if not ckpt.is_file():
        raise _checks.ArgumentError(f"resume needs a checkpoint in out; got {str(out)!r} (no {ckpt}: start the run "
                                    "without resume)")
    stored_file = out / CONFIG_NAME
    if not stored_file.is_file():
        raise _checks.ArgumentError(f"resume needs the {CONFIG_NAME} of the run in out; got {str(out)!r} "
                                    f"(no {stored_file})")
    stored = TrainConfig.from_toml(stored_file)
    diffs = stored.differences(config, ignore=RESUME_FREE)
    if diffs:
        raise _checks.ArgumentError(f"resume must use the configuration of {stored_file} (only "
                                    f"{', '.join(RESUME_FREE)} may change); got other "
                                    + "; ".join(d.replace(" vs ", " there, ") + " here" for d in diffs))
    state = load_checkpoint(ckpt)
    net = state["config"]["model"]["net"]["config"] or {}
    stored_cond = net.get("cond_dim")
    here_cond = None if config.unconditional else dataset.cond_dim
    if stored_cond != here_cond:
        raise _checks.fail(f"the width of cond in data {config.data}", f"{stored_cond} (the checkpoint's cond_dim)",
                           here_cond)
    if list(state["config"]["data_shape"]) != list(dataset.shape):
        raise _checks.fail(f"the sample shape of data {config.data}",
                           f"{tuple(state['config']['data_shape'])} (the checkpoint's)", dataset.shape)
    step = int(state["step"])
    if config.steps < step:
        raise _checks.fail("steps", f">= the {step} steps of the checkpoint {ckpt}", config.steps)
    return _Run(config, dataset, model, out, step)


class _LossLog:
    """loss.csv, one row (step, loss, lr, seconds) per step, appended as the Trainer logs them;
    a resumed run keeps the rows up to its checkpoint and continues after them."""

    def __init__(self, path: Path, done: int, history: List[float], lr_of: Callable[[int], float]):
        self.path, self.offset, self.start = path, 0.0, time.perf_counter()
        rows = []
        if done and path.is_file():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f)][:done]
            rows = [r for i, r in enumerate(rows) if int(r["step"]) == i + 1]  # a damaged file keeps its good head
        for s in range(len(rows) + 1, done + 1):  # rows the file lacks: from the checkpoint's history
            rows.append({"step": s, "loss": repr(history[s - 1]), "lr": repr(lr_of(s)), "seconds": ""})
        if rows and rows[-1]["seconds"]:
            self.offset = float(rows[-1]["seconds"])
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "loss", "lr", "seconds"])
            writer.writerows([r["step"], r["loss"], r["lr"], r["seconds"]] for r in rows)
        self.written = done
        self.pending: Dict[int, Tuple[float, float]] = {}  # step -> (lr, seconds), until its loss is known

    def record(self, step: int, lr: float, history: List[float]) -> None:
        self.pending[step] = (lr, self.offset + time.perf_counter() - self.start)
        rows = []
        while self.written < len(history) and self.written + 1 in self.pending:
            self.written += 1
            lr, seconds = self.pending.pop(self.written)
            rows.append([self.written, repr(history[self.written - 1]), repr(lr), f"{seconds:.3f}"])
        if rows:
            with self.path.open("a", newline="") as f:
                csv.writer(f).writerows(rows)


def _have_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _plot_loss(path: Path, history: List[float]) -> None:
    """The loss per step (faint) and its moving average over ~2% of the run, log y."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss = torch.tensor(history, dtype=torch.float64)
    window = max(1, len(loss) // 50)
    smooth = loss.unfold(0, window, 1).mean(1) if len(loss) >= window else loss
    steps = torch.arange(1, len(loss) + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps.numpy(), loss.numpy(), lw=0.5, alpha=0.3, color="C0")
    ax.plot(steps[window - 1:].numpy(), smooth.numpy(), lw=1.5, color="C0", label=f"mean of {window} steps")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def _draw_samples(run: _Run, model: ScoreModel, step: int, device) -> None:
    """A fixed-seed sample of the EMA `model`: 100 images or 2000 points, labels cycling over the
    classes, conditions the first rows of the data's."""
    config, data = run.config, run.dataset
    n = 100 if len(data.shape) == 3 else 2000
    guided, what = model, ""
    if config.num_classes:
        guided, what = ClassifierFree(model, torch.arange(n, device=device) % config.num_classes, 1.0), ", labels 0.."
    elif data.cond is not None and not config.unconditional:
        guided, what = ClassifierFree(model, data.cond[torch.arange(n) % len(data)].to(device), 1.0), ", data's cond"
    gen = torch.Generator(device=device).manual_seed(config.seed)
    out = sample(guided, shape=(n, *data.shape), solver=SAMPLE_SOLVER, steps=SAMPLE_STEPS, generator=gen,
                 dtype=DTYPES[config.dtype], device=device)
    picture(run.out / f"samples_{step}.png",
            (out.x.double().cpu(), f"EMA at step {step}, {SAMPLE_SOLVER} {SAMPLE_STEPS} steps{what}"))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def train(config: TrainConfig, out: Union[str, os.PathLike], resume: bool = False) -> Trainer:
    """Train as `config` says into the folder `out` (see the module docstring); `resume`
    continues its checkpoint to `config.steps` (the configuration must equal the stored
    config.toml except RESUME_FREE options). Every check comes before any work.

    Pictures (loss.png, samples_<step>.png) need matplotlib; without it they are skipped with
    one warning. Under torchrun (WORLD_SIZE > 1) this starts the process
    group itself. Returns the Trainer (step, loss_history, checkpoint_path)."""
    if not isinstance(config, TrainConfig):
        raise _checks.fail("config", "a TrainConfig", config)
    out = Path(out)
    run = _prepare(config, out, _checks.boolean("resume", resume))
    with torchrun_group(run.config.device) as device:
        return _train(run, device)


def _train(run: _Run, device: str) -> Trainer:
    config, data = run.config, run.dataset
    dist = torch.distributed
    main = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    pictures = _have_matplotlib()
    if main:
        run.out.mkdir(parents=True, exist_ok=True)
        _write_atomic(run.out / CONFIG_NAME, config.to_toml())
        if not pictures:
            warnings.warn("matplotlib is not installed: no loss.png or samples_<step>.png "
                          "(pip install 'scoresde[plot]')", stacklevel=3)
    holder: Dict[str, Any] = {}

    def each_step(trainer: Trainer) -> None:  # rank 0, after every step
        holder["log"].record(trainer.step, trainer.optimizer.param_groups[0]["lr"], trainer.loss_history)

    def _pictures(ema_model: ScoreModel, step: int) -> None:
        if pictures:
            _plot_loss(run.out / "loss.png", holder["trainer"].loss_history)
            _draw_samples(run, ema_model, step, device)
        holder["drawn"] = step

    xs = (data.x, data.y) if config.num_classes else data.x
    cond = None if config.unconditional else data.cond
    # rank 0 logs every step and draws pictures every sample_every steps (the RNG forked around both)
    common = dict(cond=cond, ckpt_every=config.ckpt_every, sample_every=config.sample_every if main else 0,
                  sample_fn=_pictures if main and config.sample_every else None, step_fn=each_step if main else None,
                  device=device, progress=config.progress)
    if run.resume_step is None:
        trainer = Trainer(run.model, xs, batch_size=config.batch_size, lr=config.lr, weighting=config.weighting,
                          label_dropout=config.label_dropout, cond_dropout=config.cond_dropout, ema_decay=config.ema,
                          warmup_steps=config.warmup_steps, seed=config.seed, ckpt_dir=run.out, bf16=config.bf16,
                          **common)
    else:
        trainer = Trainer.from_checkpoint(run.out / CHECKPOINT_NAME, xs, model=run.model, **common)
    holder["trainer"] = trainer
    if main:
        warm = config.warmup_steps
        holder["log"] = _LossLog(run.out / LOSS_NAME, trainer.step, trainer.loss_history,
                                 lambda s: config.lr * (min(1.0, s / warm) if warm else 1.0))
    trainer.fit(config.steps)
    if main:
        holder["log"].record(trainer.step, trainer.optimizer.param_groups[0]["lr"], trainer.loss_history)
        if holder.get("drawn") != trainer.step and (config.sample_every or pictures):
            with torch.random.fork_rng(devices=[trainer.device] if trainer.device.type == "cuda" else []):
                if config.sample_every:
                    _pictures(trainer.ema_model, trainer.step)
                elif pictures:
                    _plot_loss(run.out / "loss.png", trainer.loss_history)
    return trainer
