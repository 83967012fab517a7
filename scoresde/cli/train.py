"""`scoresde train`."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .. import _checks
from ._args import DTYPES, device_flag, input_file, int_flag, output_folder

DEFAULT_OUT = "out/train"


def _default(name: str) -> str:
    from ..training.recipe import TrainConfig

    value = TrainConfig.__dataclass_fields__[name].default
    if isinstance(value, tuple):
        value = " ".join(map(str, value))
    elif isinstance(value, bool):
        value = str(value).lower()
    return f" (default {value})"


def add(command) -> None:
    from ..data.sets import BUILTIN_DATA
    from ..losses import WEIGHTINGS
    from ..model import PREDICTIONS
    from ..sde import SDES
    from ..training.recipe import NETS

    p = command("train", "train a score model on a data set: checkpoint, config.toml, loss.csv/png and sample "
                         "pictures in --out")
    p.add_argument("--config", default=None,
                   help="a TOML file of these options (`key = value`, the flags' names with - or _); flags given "
                        "here override it")
    p.add_argument("--data", default=None,
                   help=f"a built-in data set ({', '.join(BUILTIN_DATA)}) or a .pt/.npy/.npz file with x (and y "
                        "labels, cond vectors)")
    p.add_argument("--sde", default=None, choices=list(SDES), help="forward SDE" + _default("sde"))
    p.add_argument("--net", default=None, choices=list(NETS),
                   help="network; auto: mlp for rows (N, D), unet for images (N, C, H, W)" + _default("net"))
    int_flag(p, "--hidden", low=2, default=None, help="mlp width" + _default("hidden"))
    int_flag(p, "--depth", default=None, help="mlp residual blocks" + _default("depth"))
    int_flag(p, "--channels", default=None, help="unet base channels" + _default("channels"))
    int_flag(p, "--channel-mults", nargs="+", default=None,
             help="unet width multiplier per level" + _default("channel_mults"))
    int_flag(p, "--res-blocks", low=0, default=None, help="unet residual blocks per level" + _default("res_blocks"))
    p.add_argument("--prediction", default=None, choices=list(PREDICTIONS),
                   help="what the network predicts" + _default("prediction"))
    p.add_argument("--weighting", default=None, choices=list(WEIGHTINGS), help="loss weighting" + _default("weighting"))
    int_flag(p, "--steps", default=None, help="training steps (in all, counted across --resume)" + _default("steps"))
    int_flag(p, "--batch-size", default=None, help="global batch (split over torchrun processes)"
                                                   + _default("batch_size"))
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate after warm-up" + _default("lr"))
    int_flag(p, "--warmup-steps", low=0, default=None, help="linear LR warm-up steps" + _default("warmup_steps"))
    p.add_argument("--ema", type=float, default=None, help="EMA decay per step" + _default("ema"))
    p.add_argument("--label-dropout", type=float, default=None,
                   help="probability of the null label (for classifier-free guidance)" + _default("label_dropout"))
    p.add_argument("--cond-dropout", type=float, default=None,
                   help="probability of the null (zero) condition vector" + _default("cond_dropout"))
    p.add_argument("--unconditional", action=argparse.BooleanOptionalAction, default=None,
                   help="ignore the data's labels and condition vectors")
    int_flag(p, "--num-classes", default=None, help="label classes (default: 1 + the largest label of the data)")
    int_flag(p, "--ckpt-every", default=None, help="checkpoint every this many steps (and at the end)"
                                                   + _default("ckpt_every"))
    int_flag(p, "--sample-every", low=0, default=None,
             help="a picture of EMA samples every this many steps and at the end (0: never)"
                  + _default("sample_every"))
    p.add_argument("--resume", action="store_true",
                   help="continue the checkpoint in --out (the configuration must equal its config.toml, except "
                        "steps, ckpt_every, sample_every, device, progress)")
    p.add_argument("--device", default=None,
                   help="torch device, e.g. cuda or cuda:1 (under torchrun: each rank's own GPU)" + _default("device"))
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help="dtype of data and network" + _default("dtype"))
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 autocast of the forward pass (CUDA only)")
    int_flag(p, "--seed", low=0, high=2**32 - 1, why="32 bits", default=None,
             help="seed of the initialization, batches, times and noise" + _default("seed"))
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: yes)")
    p.add_argument("--out", default=None, help=f"the run folder (created if missing; default {DEFAULT_OUT})")
    p.set_defaults(func=run)


def resolve_options(args: argparse.Namespace):
    """The TrainConfig of `--config` (if any) overridden by the flags given here, and --out
    (from the flag, the file's `out`, or the default)."""
    from ..training.recipe import TrainConfig, check_option, read_toml

    options, out = {}, None
    if args.config is not None:
        input_file("--config", args.config, "TOML file")
        options = read_toml(args.config)
        out = options.pop("out", None)
        unknown = sorted(set(options) - set(TrainConfig.keys()))
        if unknown:
            raise _checks.ArgumentError(f"the keys of {args.config} must be among {', '.join(TrainConfig.keys())}, "
                                        f"out; got {', '.join(unknown)}")
        for key, value in options.items():  # a value from the file is named with the file
            try:
                check_option(key, value)
            except ValueError as err:
                raise _checks.ArgumentError(f"{args.config}: {err}") from None
    given = {k: getattr(args, k) for k in TrainConfig.keys() if getattr(args, k, None) is not None}
    config = TrainConfig.from_dict({**options, **given}, where=args.config or "the flags")
    out = args.out if args.out is not None else out
    if out is not None and not isinstance(out, str):
        raise _checks.fail(f"out in {args.config}", "a folder path (a string)", out)
    return config, out or DEFAULT_OUT


def run(args: argparse.Namespace) -> None:
    from ..solvers import NonFiniteError
    from ..training.recipe import train

    config, out = resolve_options(args)
    device_flag(config.device)
    folder = output_folder(out)
    start = time.perf_counter()
    try:
        trainer = train(config, folder, resume=args.resume)
    except FloatingPointError as err:  # the Trainer's divergence: a failed run, not bad input
        raise NonFiniteError(str(err)) from err
    if trainer.rank != 0:
        return
    seconds = time.perf_counter() - start
    recent = trainer.loss_history[-100:]
    loss = sum(recent) / len(recent) if recent else float("nan")
    files = sorted(p.name for p in Path(folder).iterdir() if p.suffix in (".pt", ".toml", ".csv", ".png"))
    shown = ", ".join(f for f in files if not f.startswith("samples_"))
    samples = [f for f in files if f.startswith("samples_")]
    if samples:
        shown += f", {len(samples)} samples_<step>.png"
    print(f"trained {config.data} to step {trainer.step} in {seconds:.1f} s: loss {loss:.4g} (mean of the last "
          f"{len(recent)} steps); wrote {folder}/ ({shown})")
