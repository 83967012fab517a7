"""What the examples share: the command line, the output folder, tables, figures, and the two
trained models (a 2-D toy MLP and the digits U-Net). Not an example itself (the leading
underscore keeps it out of `tests/test_examples.py`)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

import scoresde as sd


# ---- command line and output -----------------------------------------------------------------
def parse_args(name: str, doc: str, add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None,
               argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """--quick, --out (default out/examples/<name>), --seed, plus the example's own options.
    The output folder is created; `args.out` is a Path."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small settings (a smoke run of well under a minute)")
    p.add_argument("--out", type=Path, default=Path("out/examples") / name, help="folder for figures and tables")
    p.add_argument("--seed", type=int, default=0)
    if add_arguments is not None:
        add_arguments(p)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 90) -> None:
    """Save as PNG with a 256-colour palette (octree): scatter plots of thousands of anti-aliased
    points come out about 3x smaller, smooth colour maps with barely visible banding."""
    from PIL import Image

    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    with Image.open(path) as image:
        image.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    print(f"wrote {path}")


def write_table(out: Path, name: str, rows: List[Dict[str, object]], intro: str = "") -> str:
    """Write rows as <out>/<name>.md (a Markdown table under `intro`) and <out>/<name>.json;
    print and return the Markdown."""
    columns = list(rows[0])

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    text = (intro.strip() + "\n\n" if intro else "") + "\n".join(lines) + "\n"
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(text)
    return text


class Stopwatch:
    """Seconds since creation: `Stopwatch()()`."""

    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


# ---- trained models ----------------------------------------------------------------------------
def train_toy_model(name: str, steps: int, seed: int = 0, n_data: int = 20_000) -> sd.ScoreModel:
    """A VP-SDE v-prediction MLP trained on `n_data` samples of the 2-D toy set `name`;
    returns the EMA model (what one samples from).

    Why v and not eps: a few starting points of every batch lie far in the tails of N(0, I)
    (|x_T| > 3.5), where training saw almost no data. An eps network extrapolates badly there
    and the probability-flow ODE, which has no noise to correct it, follows it out to |x| ~ 50
    (measured on the ring after 4000 steps: 7 of 2000 dpm++2m samples, sliced W2 1.1 instead of
    0.08 with v; Euler-Maruyama recovers).
    With v = alpha eps - sigma x0 the model's eps is sigma x + alpha v (VP): near T, where the
    true eps is ~ x, the right behaviour in the tails is built into the parameterization and
    the network only adds a correction scaled by alpha."""
    data = sd.data.sample_toy(name, n_data, torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)  # the network's initialization
    model = sd.ScoreModel(sd.nets.MLP(dim=2, hidden=128, depth=3), sd.VPSDE(), prediction="v")
    # EMA decay 0.99: with a few thousand steps, the default 0.999 would average in too much of
    # the early, poor network
    trainer = sd.Trainer(model, data, batch_size=256, lr=2e-3, warmup_steps=100, ema_decay=0.99, seed=seed,
                         progress=False)
    return trainer.fit(steps).ema_model


def train_digits_model(steps: int, out: Path, quick: bool, seed: int = 0) -> sd.Trainer:
    """The digits model of `benchmarks/digits_quality.py` (VPSDE, UNet, eps, EMA), trained to
    `steps`, with its checkpoint in <out>/model (<out>/model_quick: --quick uses a narrower
    U-Net). If a checkpoint is already there, training resumes from it, so running an example
    again costs no new training."""
    x_train, _ = sd.data.load_digits("train")
    ckpt_dir = out / ("model_quick" if quick else "model")
    ckpt = ckpt_dir / "checkpoint.pt"
    if ckpt.is_file():
        trainer = sd.Trainer.from_checkpoint(ckpt, x_train, progress=False)
    else:
        torch.manual_seed(seed)
        net = sd.nets.UNet(in_channels=1, base_channels=16) if quick else sd.nets.UNet(in_channels=1)
        model = sd.ScoreModel(net, sd.VPSDE(), prediction="eps")
        trainer = sd.Trainer(model, x_train, batch_size=128, lr=1e-3, warmup_steps=min(200, steps), seed=seed,
                             ckpt_dir=ckpt_dir, ckpt_every=max(steps, 1), progress=False)
    return trainer.fit(max(steps, trainer.step))


# ---- measuring samples -------------------------------------------------------------------------
def toy_floor(name: str, n: int, seed: int = 0) -> sd.metrics.Floor:
    """Sliced W2 between two independent sets of n exact samples of toy `name`: a perfect sampler
    scores here, so every distance is read next to it."""
    return sd.metrics.two_sample_floor(sd.metrics.sliced_wasserstein,
                                       lambda k, g: sd.data.sample_toy(name, k, g), n, repeats=5,
                                       generator=torch.Generator().manual_seed(seed + 1000))


def scatter(ax, x: torch.Tensor, title: str, lim: float = 2.6) -> None:
    """A 2-D point cloud on fixed axes, so that panels compare at a glance."""
    x = x.detach().cpu()
    ax.scatter(x[:, 0], x[:, 1], s=2.0, alpha=0.5, linewidths=0, color="tab:blue")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)
