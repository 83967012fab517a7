"""Classifier-free guidance on the 8x8 digits: accuracy and Frechet distance against the scale.

    python benchmarks/guidance_digits.py            # full run (~15 min single-threaded)
    python benchmarks/guidance_digits.py --quick    # ~1 min, results labelled quick

The model: VPSDE, `UNet(num_classes=10)` (eps prediction) trained with `Trainer` on the digits
train split with label dropout (the null label trains the unconditional model in the same
network). Its checkpoint is written to --ckpt-dir every --ckpt-every steps and reused on the
next run, so an interrupted run loses at most that many steps.

The judge: an independent `DigitClassifier` trained only on the real train split (its own seed);
its test accuracy is reported. For each guidance scale, 100 samples of each class are drawn with
`guidance.ClassifierFree` and the judge's accuracy on their intended labels is measured with
the Frechet distance (in the judge's features) to the real test split, next to the real floor
FD(train, test). Scale 0 is the unconditional model, 1 the conditional one; larger scales trade
diversity (FD) for fidelity (accuracy). The JSON is rewritten after every scale.

Classifier guidance for comparison (unless --no-classifier): a time-dependent classifier
p(y | x_t, t) (`classifier.NoisyClassifier` on a small conv net) is trained with the library's
`Trainer` and `loss_fn=losses.classifier_loss` on the noised train split (its own checkpoint
next to the model's), and guides the same network's unconditional half (the null label):
score + scale * grad log p(y | x_t, t), with the same judge and metrics.

Writes <out>/guidance_digits.json, guidance_digits.png (accuracy and FD vs scale) and
guidance_digits_samples.png (one row per scale, one column per class); *_quick with --quick.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from torch import nn

import scoresde as sd
from scoresde.bench import classifier_accuracy, classifier_frechet, image_grid, train_digit_classifier
from scoresde.data import load_digits

FULL_STEPS, QUICK_STEPS = 6000, 300
FULL_SCALES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
QUICK_SCALES = [0.0, 1.0, 3.0]
FULL_CLASSIFIER_SCALES, QUICK_CLASSIFIER_SCALES = [1.0, 2.0, 4.0, 8.0], [2.0]
FULL_CLASSIFIER_STEPS, QUICK_CLASSIFIER_STEPS = 3000, 200
TARGET_ACCURACY = 0.95


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short training and few scales; outputs are named *_quick")
    p.add_argument("--steps", type=int, default=None, help=f"training steps (default {FULL_STEPS}; {QUICK_STEPS} with --quick)")
    p.add_argument("--scales", type=float, nargs="+", default=None, help=f"guidance scales (default {FULL_SCALES})")
    p.add_argument("--per-class", type=int, default=None, help="samples per class and scale (default 100; 20 with --quick)")
    p.add_argument("--label-dropout", type=float, default=0.15)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--solver", default="dpm++2m")
    p.add_argument("--solver-steps", type=int, default=25)
    p.add_argument("--classifier-epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--ckpt-dir", default=None, help="default out/guidance_digits[_quick]")
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--no-classifier", action="store_true", help="skip the classifier-guidance comparison")
    p.add_argument("--classifier-scales", type=float, nargs="+", default=None,
                   help=f"classifier-guidance scales (default {FULL_CLASSIFIER_SCALES})")
    return p


class NoisyDigitNet(nn.Module):
    """(B, 1, 8, 8) noisy digits and time t (B,) -> logits (B, 10): two 3x3 convs (the first
    shifted by a Fourier time embedding), a 2x2 max-pool and two linear layers."""

    def __init__(self, width: int = 32, num_classes: int = 10):
        super().__init__()
        self.num_classes = num_classes
        self.time = nn.Sequential(sd.nets.GaussianFourierEmbedding(width), nn.Linear(width, width))
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.SiLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = nn.functional.silu(self.conv1(x) + self.time(t)[:, :, None, None])
        return self.head(nn.functional.max_pool2d(nn.functional.silu(self.conv2(h)), 2))


def train_noisy_classifier(args: argparse.Namespace, x: torch.Tensor, labels: torch.Tensor, steps: int,
                           ckpt_dir: str) -> Tuple[sd.Trainer, int]:
    """p(y | x_t, t) trained with `Trainer(loss_fn=classifier_loss)`, continuing a checkpoint in
    ckpt_dir; and the step this run started from."""
    torch.manual_seed(args.seed + 2)
    classifier = sd.classifier.NoisyClassifier(NoisyDigitNet(), sd.VPSDE())
    common = dict(device=args.device, progress=args.progress, ckpt_dir=ckpt_dir, ckpt_every=args.ckpt_every,
                  loss_fn=sd.losses.classifier_loss)
    ckpt = Path(ckpt_dir) / sd.training.CHECKPOINT_NAME
    if ckpt.is_file():
        print(f"resuming {ckpt}")
        trainer = sd.Trainer.from_checkpoint(ckpt, (x, labels), model=classifier, **common)
    else:
        trainer = sd.Trainer(classifier, (x, labels), batch_size=args.batch_size, lr=args.lr, warmup_steps=100,
                             seed=args.seed + 2, **common)
    started_at = trainer.step
    return trainer.fit(steps), started_at


def train_model(args: argparse.Namespace, x: torch.Tensor, labels: torch.Tensor, steps: int,
                ckpt_dir: str) -> Tuple[sd.Trainer, int]:
    """The class-conditional model trained to `steps`, continuing any checkpoint in ckpt_dir;
    and the step this run started from (0, or the checkpoint's)."""
    ckpt = Path(ckpt_dir) / sd.training.CHECKPOINT_NAME
    common = dict(device=args.device, progress=args.progress, ckpt_dir=ckpt_dir, ckpt_every=args.ckpt_every)
    if ckpt.is_file():
        print(f"resuming {ckpt}")
        trainer = sd.Trainer.from_checkpoint(ckpt, (x, labels), **common)
    else:
        torch.manual_seed(args.seed)  # the network's initialization
        model = sd.ScoreModel(sd.nets.UNet(in_channels=1, num_classes=10), sd.VPSDE(), prediction="eps")
        trainer = sd.Trainer(model, (x, labels), batch_size=args.batch_size, lr=args.lr, warmup_steps=200,
                             label_dropout=args.label_dropout, seed=args.seed, **common)
    started_at = trainer.step
    return trainer.fit(steps), started_at


def run(args: argparse.Namespace, argv: Optional[List[str]] = None) -> dict:
    steps = args.steps if args.steps is not None else (QUICK_STEPS if args.quick else FULL_STEPS)
    scales = args.scales if args.scales is not None else (QUICK_SCALES if args.quick else FULL_SCALES)
    per_class = args.per_class if args.per_class is not None else (20 if args.quick else 100)
    suffix = "_quick" if args.quick else ""
    ckpt_dir = args.ckpt_dir or f"out/guidance_digits{suffix}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"guidance_digits{suffix}.json"
    start = time.time()
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/guidance_digits.py"]
                                   + (sys.argv[1:] if argv is None else argv))

    x_train, y_train = load_digits("train", device=args.device)
    x_test, y_test = load_digits("test", device=args.device)
    judge_net = train_digit_classifier(x_train, y_train, epochs=args.classifier_epochs, seed=args.seed + 1)
    judge = {
        "classifier": f"DigitClassifier trained on the real train split only, {args.classifier_epochs} epochs, seed {args.seed + 1}",
        "test_accuracy": classifier_accuracy(judge_net, x_test, y_test),
        "floor_fd_train_vs_test": classifier_frechet(judge_net, x_train, x_test),
    }
    print(f"judge: test accuracy {judge['test_accuracy']:.4f}; floor FD(train, test) {judge['floor_fd_train_vs_test']:.4g}")

    t0 = time.time()
    trainer, started_at = train_model(args, x_train, y_train, steps, ckpt_dir)
    recent = trainer.loss_history[-200:]
    training = {
        "steps": trainer.step, "started_at_step": started_at, "seconds_this_run": time.time() - t0,
        "checkpoint": str(trainer.checkpoint_path),
        "final_loss_mean_last_200": sum(recent) / len(recent) if recent else None,
        "label_dropout": trainer.options["label_dropout"], "batch_size": trainer.options["batch_size"],
        "lr": trainer.options["lr"], "net": "UNet(in_channels=1, num_classes=10)", "sde": "VPSDE()", "prediction": "eps",
    }
    print(f"trained to step {trainer.step}")

    model = trainer.ema_model
    labels = torch.arange(10, device=args.device).repeat_interleave(per_class)
    report = {
        "quick": bool(args.quick), "command": command, "target": f"judge accuracy >= {TARGET_ACCURACY} for some scale",
        "sampler": {"solver": args.solver, "steps": args.solver_steps, "denoise": True, "per_class": per_class},
        "judge": judge, "training": training, "scales": [],
        "nfe_note": "one guided evaluation = one batched UNet call on 2B rows (B at scale 0 and 1) = 1 NFE",
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    grids = []

    def measure(guided: sd.ScoreModel, scale: float, key: str) -> torch.Tensor:
        """Sample 10 x per_class digits from `guided`, append the record to report[key] and save the JSON."""
        gen = torch.Generator(device=args.device).manual_seed(args.seed)
        res = sd.sample(guided, shape=(labels.shape[0], 1, 8, 8), solver=args.solver, steps=args.solver_steps,
                        denoise=True, generator=gen, device=args.device)
        record = {
            "scale": scale, "accuracy": classifier_accuracy(judge_net, res.x.clamp(-1, 1), labels),
            "fd_vs_test": classifier_frechet(judge_net, res.x, x_test), "nfe": res.nfe, "seconds": res.seconds,
            "fraction_outside_[-1,1]": float((res.x.abs() > 1).float().mean()),
        }
        report.setdefault(key, []).append(record)
        print(f"{key} {scale:4.1f}: accuracy {record['accuracy']:.3f}, FD(gen, test) {record['fd_vs_test']:.4g}, "
              f"NFE {res.nfe}, {res.seconds:.1f} s")
        best = max(report["scales"], key=lambda r: r["accuracy"])
        report["best"] = {"scale": best["scale"], "accuracy": best["accuracy"],
                          "target_met": best["accuracy"] >= TARGET_ACCURACY}
        report["total_seconds"] = time.time() - start
        json_path.write_text(json.dumps(report, indent=2) + "\n")  # partial results survive an interruption
        return res.x

    for scale in scales:
        x = measure(sd.guidance.ClassifierFree(model, labels, scale), scale, "scales")
        grids.append(x[::per_class][:10])  # the first sample of each class

    if not args.no_classifier:
        clf_steps = QUICK_CLASSIFIER_STEPS if args.quick else FULL_CLASSIFIER_STEPS
        t0 = time.time()
        clf_trainer, clf_started_at = train_noisy_classifier(args, x_train, y_train, clf_steps, ckpt_dir + "_classifier")
        noisy = clf_trainer.ema_model
        report["noisy_classifier"] = {
            "steps": clf_trainer.step, "started_at_step": clf_started_at, "seconds_this_run": time.time() - t0,
            "net": "NoisyDigitNet (benchmark file)",
            "test_accuracy_at_t": noisy_accuracy(noisy, x_test, y_test, [0.1, 0.3, 0.5, 0.7], args.seed),
        }
        print(f"noisy classifier: test accuracy by t {report['noisy_classifier']['test_accuracy_at_t']}")
        unconditional = sd.guidance.ClassifierFree(model, labels, 0.0)  # the null label's half of the network
        for scale in args.classifier_scales or (QUICK_CLASSIFIER_SCALES if args.quick else FULL_CLASSIFIER_SCALES):
            measure(sd.guidance.Classifier(unconditional, noisy, labels, scale), scale, "classifier_guidance")
    plot(report, out / f"guidance_digits{suffix}.png")
    save_grid(torch.cat(grids), scales, out / f"guidance_digits{suffix}_samples.png")
    print(f"best: scale {report['best']['scale']} accuracy {report['best']['accuracy']:.3f} -> target "
          f"{'met' if report['best']['target_met'] else 'NOT met'}; wrote {json_path}")
    return report


@torch.no_grad()
def noisy_accuracy(classifier: sd.ScoreModel, x: torch.Tensor, labels: torch.Tensor, times: List[float],
                   seed: int) -> dict:
    """Accuracy of p(y | x_t, t) on x noised to each time in `times`: {t: accuracy}."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    out = {}
    for t in times:
        x_t = classifier.sde.marginal(x, t, generator=gen)
        out[str(t)] = float((classifier(x_t, t).argmax(1) == labels).float().mean())
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.2))
    for key, label, style in (("scales", "classifier-free", "o-"), ("classifier_guidance", "classifier", "s--")):
        records = report.get(key, [])
        if records:
            scales = [r["scale"] for r in records]
            ax1.plot(scales, [r["accuracy"] for r in records], style, label=label)
            ax2.plot(scales, [r["fd_vs_test"] for r in records], style, label=label)
    ax1.axhline(TARGET_ACCURACY, color="gray", ls=":", label=f"target {TARGET_ACCURACY}")
    ax1.set(xlabel="guidance scale", ylabel="judge accuracy on intended label", title="fidelity")
    ax1.legend(fontsize=8)
    ax2.axhline(report["judge"]["floor_fd_train_vs_test"], color="gray", ls=":", label="floor FD(train, test)")
    ax2.set(xlabel="guidance scale", ylabel="FD(samples, test) in judge features", title="diversity / realism")
    ax2.legend(fontsize=8)
    fig.suptitle(f"guided digits; {report['training']['steps']} training steps"
                 + (" (quick)" if report["quick"] else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def save_grid(x: torch.Tensor, scales: List[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = image_grid(x.clamp(-1, 1).cpu(), nrow=10, pad_value=-1.0)
    fig, ax = plt.subplots(figsize=(4.5, 0.45 * len(scales) + 0.6))
    ax.imshow(grid.numpy(), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_yticks([1 + 9 * i + 4 for i in range(len(scales))], [f"scale {s:g}" for s in scales], fontsize=7)
    ax.set_xticks([1 + 9 * j + 4 for j in range(10)], [str(j) for j in range(10)], fontsize=7)
    ax.set_title("columns: intended class; rows: guidance scale", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> dict:
    return run(build_parser().parse_args(argv), argv)


if __name__ == "__main__":
    main()
