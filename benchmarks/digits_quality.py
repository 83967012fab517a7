"""Sample quality of the default digits model: train, sample, and measure a Frechet distance in
the features of an independent digit classifier, next to the floor of real data.

    python benchmarks/digits_quality.py                      # full run (~10 min training on 2 CPU cores)
    python benchmarks/digits_quality.py --quick              # ~1 min training, results labelled quick
    python benchmarks/digits_quality.py --resume --samplers dpm++2m:20 ddim:50   # reuse the checkpoint

The model: VPSDE, the default `UNet()` on the (1, 8, 8) digits train split (1500 images),
eps prediction, `Trainer` with EMA. Its checkpoint goes to `out/digits_quality/` (gitignored).
The judge: a small CNN trained on the same train split (fixed seed); its penultimate layer is
the feature space (FID's Inception-v3 role), and its accuracy on the 297 test images is
reported. The floor is the Frechet distance between the real train split and the real test
split in those features; the target is FD(generated, test) <= 3 x floor.

Writes <out>/digits_quality.json (every number and the command) and <out>/digits_samples.png
(a 10 x 10 grid from the first sampler); a --quick run writes digits_quality_quick.* instead.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

import scoresde as sd
from scoresde.bench import classifier_accuracy, classifier_frechet, image_grid, train_digit_classifier
from scoresde.data import load_digits

FULL_STEPS, QUICK_STEPS = 6000, 600
TARGET_RATIO = 3.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None, help=f"training steps (default {FULL_STEPS}; {QUICK_STEPS} with --quick)")
    p.add_argument("--quick", action="store_true", help="~1 minute of training; outputs are named *_quick")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--samplers", nargs="+", default=["dpm++2m:50", "dpm++2m:20", "euler_maruyama:500"],
                   help="solver:steps pairs; the first one draws the PNG grid")
    p.add_argument("--n", type=int, default=1000, help="samples per sampler")
    p.add_argument("--no-denoise", action="store_true", help="skip the final Tweedie denoising step")
    p.add_argument("--classifier-epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--ckpt-dir", default="out/digits_quality")
    p.add_argument("--resume", action="store_true", help="continue from (or reuse) the checkpoint in --ckpt-dir")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--progress", action="store_true")
    return p


def train_model(args: argparse.Namespace, x_train: torch.Tensor, steps: int) -> sd.Trainer:
    """The default digits model trained to `steps` (resumed from --ckpt-dir with --resume)."""
    ckpt = Path(args.ckpt_dir) / sd.training.CHECKPOINT_NAME
    common = dict(device=args.device, progress=args.progress)
    if args.resume and ckpt.is_file():
        trainer = sd.Trainer.from_checkpoint(ckpt, x_train, **common)
    else:
        torch.manual_seed(args.seed)  # the network's initialization
        model = sd.ScoreModel(sd.nets.UNet(in_channels=1), sd.VPSDE(), prediction="eps")
        trainer = sd.Trainer(model, x_train, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
                             ema_decay=args.ema_decay, seed=args.seed, ckpt_dir=args.ckpt_dir,
                             ckpt_every=max(steps, 1), **common)
    return trainer.fit(steps)


def parse_sampler(spec: str) -> Dict[str, object]:
    solver, _, steps = spec.partition(":")
    try:
        sd.solvers.get(solver)  # a registered name or an old alias of one
    except ValueError as err:
        raise SystemExit(f"--samplers {spec!r}: {err}") from None
    return {"solver": solver, "steps": int(steps) if steps else None}


def run(args: argparse.Namespace, argv: Optional[List[str]] = None) -> dict:
    steps = args.steps if args.steps is not None else (QUICK_STEPS if args.quick else FULL_STEPS)
    suffix = "_quick" if args.quick else ""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samplers = [parse_sampler(s) for s in args.samplers]
    start = time.time()

    x_train, y_train = load_digits("train", device=args.device)
    x_test, y_test = load_digits("test", device=args.device)

    # the judge: an independent classifier and the real-data floor in its features
    t0 = time.time()
    classifier = train_digit_classifier(x_train, y_train, epochs=args.classifier_epochs, seed=args.seed + 1)
    halves = torch.randperm(x_train.shape[0], generator=torch.Generator().manual_seed(args.seed)).to(args.device)
    half = x_train.shape[0] // 2
    judge = {
        "classifier": "DigitClassifier (2 conv + pool + 64-d ReLU features), Adam, "
                      f"{args.classifier_epochs} epochs on the train split, seed {args.seed + 1}",
        "train_accuracy": classifier_accuracy(classifier, x_train, y_train),
        "test_accuracy": classifier_accuracy(classifier, x_test, y_test),
        "floor_train_vs_test": classifier_frechet(classifier, x_train, x_test),
        "floor_train_half_vs_half": classifier_frechet(classifier, x_train[halves[:half]], x_train[halves[half:]]),
        "seconds": time.time() - t0,
    }
    floor = judge["floor_train_vs_test"]
    print(f"classifier: test accuracy {judge['test_accuracy']:.4f}; floor FD(train, test) = {floor:.4g}, "
          f"FD(train half, half) = {judge['floor_train_half_vs_half']:.4g}")

    t0 = time.time()
    trainer = train_model(args, x_train, steps)
    train_seconds = time.time() - t0
    recent = trainer.loss_history[-200:]
    training = {
        "steps": trainer.step, "seconds": train_seconds,
        "steps_per_second": len(trainer.loss_history) / train_seconds if trainer.loss_history else None,
        "final_loss_mean_last_200": sum(recent) / len(recent) if recent else None,
        "checkpoint": str(trainer.checkpoint_path), "batch_size": trainer.options["batch_size"],
        "lr": trainer.options["lr"], "warmup_steps": trainer.options["warmup_steps"],
        "ema_decay": trainer.options["ema_decay"], "sde": "VPSDE()", "net": "UNet(in_channels=1)",
        "prediction": "eps", "data": "load_digits('train'), 1500 images (1, 8, 8) in [-1, 1]",
    }
    print(f"trained {trainer.step} steps in {train_seconds:.0f} s; loss (last 200) {training['final_loss_mean_last_200']}")

    model = trainer.ema_model
    results = []
    for i, spec in enumerate(samplers):
        gen = torch.Generator(device=args.device).manual_seed(args.seed)
        model.nfe = 0
        res = sd.sample(model, shape=(args.n, 1, 8, 8), solver=spec["solver"], steps=spec["steps"],
                        denoise=not args.no_denoise, generator=gen, device=args.device)
        x = res.x
        fd_test = classifier_frechet(classifier, x, x_test)
        counts = torch.bincount(classifier(x.clamp(-1, 1)).argmax(1), minlength=10)
        record = {
            **spec, "nfe": res.nfe, "seconds": res.seconds, "n": args.n,
            "fd_vs_test": fd_test, "fd_vs_train": classifier_frechet(classifier, x, x_train),
            "ratio_to_floor": fd_test / floor, "target_met": fd_test <= TARGET_RATIO * floor,
            "fraction_outside_[-1,1]": float((x.abs() > 1).float().mean()),
            "predicted_class_fractions": (counts.float() / args.n).tolist(),
        }
        results.append(record)
        print(f"{spec['solver']:>16} steps {spec['steps']}: NFE {res.nfe}, {res.seconds:.1f} s, FD(gen, test) = "
              f"{fd_test:.4g} = {record['ratio_to_floor']:.2f} x floor -> target {'met' if record['target_met'] else 'NOT met'}")
        if i == 0:
            save_grid(x[:100], out / f"digits_samples{suffix}.png",
                      f"{spec['solver']}, {spec['steps']} steps, NFE {res.nfe}; {trainer.step} training steps")

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0] if argv is None else "benchmarks/digits_quality.py"]
                                   + (sys.argv[1:] if argv is None else argv))
    report = {
        "quick": bool(args.quick), "command": command, "target": f"FD(generated, test) <= {TARGET_RATIO} x FD(train, test)",
        "training": training, "judge": judge, "samplers": results,
        "denoise": not args.no_denoise, "seed": args.seed, "total_seconds": time.time() - start,
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    (out / f"digits_quality{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def save_grid(x: torch.Tensor, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = image_grid(x.clamp(-1, 1).cpu(), nrow=10, pad_value=0.0)
    fig, ax = plt.subplots(figsize=(4, 4.3))
    ax.imshow(grid.numpy(), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=7)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    return run(args, argv)


if __name__ == "__main__":
    main()
