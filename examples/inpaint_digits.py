"""Digit inpainting: the top half of each test digit is known, the bottom half is sampled.

    python examples/inpaint_digits.py            # trains the digits model (minutes), then inpaints
    python examples/inpaint_digits.py --quick    # a smoke run in well under a minute

`scoresde.sample(model, ..., inpaint=(known, mask))` implements the replacement method of Song
et al. (2021, Appendix I.2): after every solver step at time t, the known pixels of the state
are overwritten by a fresh forward-noised copy alpha(t) y + sigma(t) z of the real pixels y,
and at the end by y itself. The model is the ordinary unconditional digits model; nothing is
retrained. The same mechanism serves the PC sampler and the ODE solvers.

The method is approximate: the unknown half follows the model given a *noisy* known half at
each step, which is not exact conditional sampling (tests/test_guidance.py measures the gap on
a Gaussian mixture). Here an independent classifier, trained on real digits only, reads each
completed digit; its accuracy against the true label says how often the completion is
consistent with the known half. For reference: the same classifier on the real test digits,
and on test digits whose bottom half is replaced by the mean bottom half of the train split.

Writes to --out: inpaint_digits.png (truth, known half, completions per solver) and
inpainting.md / .json (solver, NFE, classifier accuracy, MSE of the bottom half).
"""
from __future__ import annotations

import torch

import scoresde as sd
from scoresde.bench import classifier_accuracy, image_grid, train_digit_classifier

from _common import Stopwatch, parse_args, pyplot, save_figure, train_digits_model, write_table


def add_arguments(p):
    p.add_argument("--steps", type=int, default=None, help="training steps (default 6000; 150 with --quick)")
    p.add_argument("--n", type=int, default=None, help="test digits to inpaint (default 297, all; 40 with --quick)")


def main(argv=None):
    args = parse_args("inpaint_digits", __doc__, add_arguments, argv)
    steps = args.steps if args.steps is not None else (150 if args.quick else 6000)
    clock = Stopwatch()
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
        completions.append((f"{solver}, {solver_steps} steps", x))
        rows.append({"method": f"replacement, {solver} {solver_steps} steps", "nfe": res.nfe,
                     "judge_accuracy": classifier_accuracy(judge, x, labels),
                     "bottom_half_mse": float((x - truth)[:, :, 4:].pow(2).mean())})

    write_table(args.out, "inpainting", rows,
                f"Top-half inpainting of {n} test digits ({steps} training steps). Judge: a classifier trained "
                "on real digits only; accuracy against the true label.")
    plt = pyplot()
    shown = min(n, 12)
    panels = [("truth", truth), ("known (top half)", torch.where(mask, truth, torch.zeros_like(truth)))] + completions
    fig, axes = plt.subplots(len(panels), 1, figsize=(6, 0.9 * len(panels) + 0.3))
    for ax, (title, x) in zip(axes, panels):
        ax.imshow(image_grid(x[:shown], nrow=shown, pad_value=-1.0).numpy(), cmap="gray_r", vmin=-1, vmax=1,
                  interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    save_figure(fig, args.out / "inpaint_digits.png")
    print(f"done in {clock():.0f} s")


if __name__ == "__main__":
    main()
