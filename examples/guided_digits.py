"""Class-conditional digits with classifier-free guidance: a sweep of the guidance scale.

    python examples/guided_digits.py            # ~4000 training steps (minutes), then the sweep
    python examples/guided_digits.py --quick    # a smoke run in well under a minute
    python examples/guided_digits.py --ckpt out/guidance_digits/checkpoint.pt
                                                # no training: a saved class-conditional model

One U-Net learns both p(x | class) and p(x): `Trainer(label_dropout=0.15)` replaces 15% of the
labels by the null label. `scoresde.guidance.ClassifierFree(model, labels, scale)` then serves

    eps = eps(x, null) + scale * (eps(x, class) - eps(x, null))

as an ordinary ScoreModel (one batched network call per evaluation), so `scoresde.sample` runs
it with any solver. An independent classifier, trained only on real digits, checks whether
each sample shows its intended class; the within-class pixel spread measures diversity.
Scale 0 ignores the class, 1 is the plain conditional model, larger scales trade diversity for
fidelity.

Writes to --out: guided_digits.png (one row per scale, one column per class), guidance_sweep.md
and .json (scale, judge accuracy, within-class spread, NFE, seconds). The trained model is
kept in <out>/model (or model_quick), so a second run skips training. `--ckpt PATH` samples
from any class-conditional digits checkpoint written by `Trainer` instead (e.g. the 6000-step
model of benchmarks/guidance_digits.py); it is only read, never trained on or overwritten.
"""
from __future__ import annotations

from pathlib import Path

import torch

import scoresde as sd
from scoresde.bench import classifier_accuracy, image_grid, train_digit_classifier

from _common import Stopwatch, parse_args, pyplot, save_figure, write_table


def add_arguments(p):
    p.add_argument("--steps", type=int, default=None, help="training steps (default 4000; 150 with --quick)")
    p.add_argument("--scales", type=float, nargs="+", default=None, help="guidance scales (default 0 1 2 4)")
    p.add_argument("--per-class", type=int, default=None, help="samples per class and scale (default 50; 8 with --quick)")
    p.add_argument("--ckpt", type=Path, default=None,
                   help="a class-conditional digits checkpoint to sample from instead of training (--steps is then ignored)")


def train_conditional_model(steps: int, out: Path, quick: bool, seed: int) -> sd.ScoreModel:
    """A class-conditional digits U-Net with label dropout, resumed from <out>/model* if there."""
    x, labels = sd.data.load_digits("train")
    ckpt_dir = out / ("model_quick" if quick else "model")
    if (ckpt_dir / "checkpoint.pt").is_file():
        trainer = sd.Trainer.from_checkpoint(ckpt_dir / "checkpoint.pt", (x, labels), progress=False)
    else:
        torch.manual_seed(seed)
        net = sd.nets.UNet(in_channels=1, base_channels=16 if quick else 32, num_classes=10)
        trainer = sd.Trainer(sd.ScoreModel(net, sd.VPSDE(), prediction="eps"), (x, labels),
                             batch_size=64 if quick else 128, lr=2e-3 if quick else 1e-3, warmup_steps=min(200, steps),
                             label_dropout=0.15, seed=seed, ckpt_dir=ckpt_dir, ckpt_every=max(steps, 1), progress=False)
    return trainer.fit(max(steps, trainer.step)).ema_model


def main(argv=None):
    args = parse_args("guided_digits", __doc__, add_arguments, argv)
    steps = args.steps if args.steps is not None else (150 if args.quick else 4000)
    scales = args.scales or [0.0, 1.0, 2.0, 4.0]
    per_class = args.per_class or (8 if args.quick else 50)
    clock = Stopwatch()

    if args.ckpt is not None:  # read only: no checkpoint directory, no training
        loaded = sd.Trainer.from_checkpoint(args.ckpt, sd.data.load_digits("train"), progress=False, ckpt_dir=None)
        model, steps = loaded.ema_model, loaded.step
    else:
        model = train_conditional_model(steps, args.out, args.quick, args.seed)
    x_train, y_train = sd.data.load_digits("train")
    judge = train_digit_classifier(x_train, y_train, epochs=5 if args.quick else 30, seed=args.seed + 1)
    print(f"model and judge ready in {clock():.0f} s")

    labels = torch.arange(10).repeat_interleave(per_class)
    rows, images = [], []
    for scale in scales:
        guided = sd.guidance.ClassifierFree(model, labels, scale)
        res = sd.sample(guided, shape=(labels.shape[0], 1, 8, 8), solver="dpm++2m", steps=10 if args.quick else 25,
                        denoise=True, generator=torch.Generator().manual_seed(args.seed))
        x = res.x.clamp(-1, 1)
        spread = torch.stack([x[labels == k].std(0).mean() for k in range(10)]).mean()
        rows.append({"scale": scale, "judge_accuracy": classifier_accuracy(judge, x, labels),
                     "within_class_pixel_std": float(spread), "nfe": res.nfe, "seconds": res.seconds})
        images.append(x.reshape(10, per_class, 1, 8, 8)[:, :2].transpose(0, 1).reshape(20, 1, 8, 8))

    write_table(args.out, "guidance_sweep", rows,
                f"Classifier-free guidance on digits ({steps} training steps, {per_class} samples per class, "
                "dpm++2m; one guided evaluation = one batched call = 1 NFE). Accuracy of an independent "
                "classifier on the intended class; pixel std within each class (diversity).")
    plt = pyplot()
    kind = {0.0: "unconditional", 1.0: "conditional"}
    fig, axes = plt.subplots(len(scales), 1, figsize=(5.5, 1.75 * len(scales)), squeeze=False)
    for ax, scale, x, row in zip(axes[:, 0], scales, images, rows):
        ax.imshow(image_grid(x, nrow=10, pad_value=-1.0).numpy(), cmap="gray_r", vmin=-1, vmax=1,
                  interpolation="nearest")
        ax.set_title(f"scale {scale:g} ({kind.get(scale, 'guided')}): judge accuracy {row['judge_accuracy']:.2f}, "
                     f"within-class spread {row['within_class_pixel_std']:.2f}", fontsize=8)
        # the intended class under each column (tiles are 8 pixels + 1 of padding)
        ax.set_xticks([1 + 9 * k + 3.5 for k in range(10)], [str(k) for k in range(10)], fontsize=7)
        ax.set_yticks([])
        ax.tick_params(length=0, pad=1)
        for side in ax.spines.values():
            side.set_visible(False)
    axes[-1, 0].set_xlabel("intended class (two samples each, stacked)", fontsize=8)
    fig.tight_layout(h_pad=0.6)
    save_figure(fig, args.out / "guided_digits.png")
    print(f"done in {clock():.0f} s")


if __name__ == "__main__":
    main()
