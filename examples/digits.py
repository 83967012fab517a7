"""Digits end to end: train the U-Net on the 8x8 digits, sample with a chosen solver, measure
bits/dim, look at the samples.

1. Train. `scoresde.Trainer` fits the default digits model (VP SDE, `UNet`, eps prediction)
   by denoising score matching on the 1500 training images, keeping an EMA of the weights
   (what we sample from). The checkpoint goes to <out>/model/; running the script again
   resumes from it instead of training anew.
2. Sample. `scoresde.sample` with any registered solver (default DPM-Solver++(2M), 20 steps)
   and a final denoising step E[x0 | x_t_end]; NFE is counted by the model.
3. Bits/dim. The probability-flow ODE turns the model into a normalizing flow, so the test
   images get an exact log-likelihood (`scoresde.bits_per_dim`: ODE integration with a
   Hutchinson trace estimate, uniform dequantization of the 17 grey levels). Lower is better;
   the 6000-step model of benchmarks/digits_quality.py scores about 2.0 bits/dim.
4. Look. A grid of samples next to real test images, and the training loss.

    python examples/digits.py [--quick] [--out DIR] [--train-steps 3000] [--solver dpm++2m --steps 20]
"""
from __future__ import annotations

import torch

import scoresde as sd
from _common import Stopwatch, parse_args, pyplot, save_figure, train_digits_model, write_table
from scoresde.bench import image_grid


def main(argv=None) -> None:
    def options(p):
        p.add_argument("--train-steps", type=int, default=None, help="default 3000 (100 with --quick)")
        p.add_argument("--solver", default="dpm++2m", choices=sd.solvers.available())
        p.add_argument("--steps", type=int, default=20, help="solver steps (ignored by adaptive solvers)")
        p.add_argument("--bpd-images", type=int, default=None, help="test images for bits/dim (default 100; 8 quick)")

    args = parse_args("digits", __doc__, options, argv)
    train_steps = args.train_steps or (100 if args.quick else 3000)
    bpd_images = args.bpd_images or (8 if args.quick else 100)

    clock = Stopwatch()
    trainer = train_digits_model(train_steps, args.out, args.quick, args.seed)
    train_seconds = clock()
    model = trainer.ema_model

    res = sd.sample(model, shape=(100, 1, 8, 8), solver=args.solver, steps=args.steps, denoise=True,
                    generator=torch.Generator().manual_seed(args.seed))

    # Bits/dim of held-out images: the data are the 17 grey levels 0..16 mapped to k/8 - 1.
    # A loose ODE tolerance in --quick only; the Hutchinson probe adds per-image noise of a
    # few tenths of a bit/dim, which averaging over images removes.
    x_test, _ = sd.data.load_digits("test")
    clock = Stopwatch()
    tol = 1e-3 if args.quick else 1e-5
    bpd = sd.bits_per_dim(model, x_test[:bpd_images], levels=17, trace="hutchinson", rtol=tol, atol=tol,
                          generator=torch.Generator().manual_seed(args.seed))
    bpd_seconds = clock()

    write_table(args.out, "table", [{
        "training steps": trainer.step, "training seconds (this run)": round(train_seconds, 1),
        "loss (mean of last 100)": sum(trainer.loss_history[-100:]) / max(1, len(trainer.loss_history[-100:])),
        "solver": args.solver, "steps": args.steps, "NFE": res.nfe, "sampling seconds (100 images)": round(res.seconds, 2),
        "bits/dim (test)": f"{bpd.mean:.3f} +- {bpd.half_width:.3f}", "bpd images": bpd_images,
        "bpd NFE": bpd.nfe, "bpd seconds": round(bpd_seconds, 1),
    }], intro="Digits model (VPSDE, UNet, eps prediction, EMA); bits/dim with a 95% interval over test images.")

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 1, 1.2]})
    for ax, images, title in ((axes[0], res.x, f"samples: {args.solver}, NFE {res.nfe}"),
                              (axes[1], x_test[:100], "real test images")):
        # clamp: samples may overshoot the data range [-1, 1] slightly
        ax.imshow(image_grid(images.clamp(-1, 1), nrow=10, pad_value=0), cmap="gray_r", vmin=-1, vmax=1)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    ax = axes[2]
    if trainer.loss_history:  # the whole run's, restored from the checkpoint when resumed
        ax.plot(trainer.loss_history, lw=0.5, color="0.6", label="per step")
        window = 50
        smooth = torch.tensor(trainer.loss_history).unfold(0, window, 1).mean(1) if len(trainer.loss_history) > window else None
        if smooth is not None:
            ax.plot(range(window - 1, len(trainer.loss_history)), smooth, color="C0", label=f"mean of {window}")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel("training step")
    ax.set_ylabel("denoising score-matching loss")
    ax.set_title(f"training, {trainer.step} steps; test: {bpd.mean:.2f} bits/dim", fontsize=10)
    fig.tight_layout()
    save_figure(fig, args.out / "digits.png")


if __name__ == "__main__":
    main()
