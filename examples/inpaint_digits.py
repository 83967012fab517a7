"""Digit inpainting: the top half of each test digit is known, the bottom half is sampled.

    python examples/inpaint_digits.py            # trains the digits model (minutes), then inpaints
    python examples/inpaint_digits.py --quick    # a smoke run in well under a minute
    python examples/inpaint_digits.py --ckpt out/digits_quality/checkpoint.pt
                                                 # no training: a saved unconditional digits model

`scoresde.sample(model, ..., inpaint=(known, mask))` implements the replacement method of Song
et al. (2021, Appendix I.2): after every solver step at time t, the known pixels of the state
are overwritten by a fresh forward-noised copy alpha(t) y + sigma(t) z of the real pixels y,
and at the end by y itself. The model is the ordinary unconditional digits model; nothing is
retrained. The same mechanism serves the PC sampler and the ODE solvers. `--ckpt PATH` uses
any unconditional digits checkpoint written by `Trainer` (e.g. the 6000-step model of
benchmarks/digits_quality.py or digits.py's) instead of training; it is only read.

The method is approximate: the unknown half follows the model given a *noisy* known half at
each step, which is not exact conditional sampling (tests/test_guidance.py measures the gap on
a Gaussian mixture). Here an independent classifier, trained on real digits only, reads each
completed digit; its accuracy against the true label says how often the completion is
consistent with the known half. For reference: the same classifier on the real test digits,
and on test digits whose bottom half is replaced by the mean bottom half of the train split.

Writes to --out: inpaint_digits.png (truth, known half, the mean-filled reference, completions
per solver) and inpainting.md / .json (solver, NFE, classifier accuracy, MSE of the bottom half).
"""
from __future__ import annotations

from pathlib import Path

import torch

import scoresde as sd
from scoresde.bench import classifier_accuracy, image_grid, train_digit_classifier

from _common import Stopwatch, parse_args, pyplot, save_figure, train_digits_model, write_table


def add_arguments(p):
    p.add_argument("--steps", type=int, default=None, help="training steps (default 6000; 150 with --quick)")
    p.add_argument("--n", type=int, default=None, help="test digits to inpaint (default 297, all; 40 with --quick)")
    p.add_argument("--ckpt", type=Path, default=None,
                   help="an unconditional digits checkpoint to use instead of training (--steps is then ignored)")


def main(argv=None):
    args = parse_args("inpaint_digits", __doc__, add_arguments, argv)
    steps = args.steps if args.steps is not None else (150 if args.quick else 6000)
    clock = Stopwatch()
    if args.ckpt is not None:  # read only: no checkpoint directory, no training
        loaded = sd.Trainer.from_checkpoint(args.ckpt, sd.data.load_digits("train")[0], progress=False, ckpt_dir=None)
        model, steps = loaded.ema_model, loaded.step
    else:
        model = train_digits_model(steps, args.out, args.quick, args.seed).ema_model
    x_train, y_train = sd.data.load_digits("train")
    x_test, y_test = sd.data.load_digits("test")
    n = args.n or (40 if args.quick else x_test.shape[0])
    truth, labels = x_test[:n], y_test[:n]
    judge = train_digit_classifier(x_train, y_train, epochs=5 if args.quick else 30, seed=args.seed + 1)
    print(f"model and judge ready in {clock():.0f} s")

    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[:, :4] = True  # the top half is known
    mean_bottom = torch.where(mask, truth, x_train.mean(0))
    rows = [
        {"method": "real test digits", "nfe": 0, "judge_accuracy": classifier_accuracy(judge, truth, labels),
         "bottom_half_mse": 0.0},
        {"method": "bottom half = train mean", "nfe": 0, "judge_accuracy": classifier_accuracy(judge, mean_bottom, labels),
         "bottom_half_mse": float((mean_bottom - truth)[:, :, 4:].pow(2).mean())},
    ]
    solvers = [("pc", 50 if args.quick else 200, {}), ("ddim", 20 if args.quick else 100, {})]
    completions = []
    for solver, solver_steps, options in solvers:
        res = sd.sample(model, shape=truth.shape, solver=solver, steps=solver_steps, inpaint=(truth, mask),
                        generator=torch.Generator().manual_seed(args.seed), **options)
        x = res.x.clamp(-1, 1)
        rows.append({"method": f"replacement, {solver} {solver_steps} steps", "nfe": res.nfe,
                     "judge_accuracy": classifier_accuracy(judge, x, labels),
                     "bottom_half_mse": float((x - truth)[:, :, 4:].pow(2).mean())})
        completions.append((f"replacement, {solver}, {solver_steps} steps ({res.nfe} NFE): "
                            f"judge accuracy {rows[-1]['judge_accuracy']:.2f}", x))

    write_table(args.out, "inpainting", rows,
                f"Top-half inpainting of {n} test digits ({steps} training steps). Judge: a classifier trained "
                "on real digits only; accuracy against the true label.")
    plt = pyplot()
    shown = min(n, 12)
    accuracy = {row["method"]: row["judge_accuracy"] for row in rows}
    panels = [(f"truth (true labels below; judge accuracy {accuracy['real test digits']:.2f})", truth),
              ("known: the top half (the bottom half, shaded, is sampled)", torch.where(mask, truth, torch.nan))]
    panels += [(f"reference, bottom half = train mean: judge accuracy {accuracy['bottom half = train mean']:.2f}",
                mean_bottom)] + completions
    cmap = plt.get_cmap("gray_r").copy()
    cmap.set_bad("#f2d7b6")  # the unknown half in the "known" row
    fig, axes = plt.subplots(len(panels), 1, figsize=(6.5, 1.05 * len(panels) + 0.3))
    for i, (ax, (title, x)) in enumerate(zip(axes, panels)):
        grid = image_grid(x[:shown], nrow=shown, pad_value=-1.0).numpy()
        ax.imshow(grid, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
        ax.axhline(4.5, color="tab:red", linewidth=0.6, linestyle=":")  # known above, sampled below
        ax.set_title(title, fontsize=8)
        ax.set_yticks([])
        ax.set_xticks([1 + 9 * k + 3.5 for k in range(shown)] if i == 0 else [])
        if i == 0:
            ax.set_xticklabels([str(int(k)) for k in labels[:shown]], fontsize=7)
            ax.tick_params(length=0, pad=1)
        for side in ax.spines.values():
            side.set_visible(False)
    fig.tight_layout(h_pad=0.4)
    save_figure(fig, args.out / "inpaint_digits.png")
    print(f"done in {clock():.0f} s")


if __name__ == "__main__":
    main()
