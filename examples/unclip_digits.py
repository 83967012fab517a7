"""The lecture end to end: a small unCLIP (DALL-E 2, Ramesh et al. 2022) on the 8x8 digits.

    python examples/unclip_digits.py            # every stage at full size (minutes on 2 CPU cores)
    python examples/unclip_digits.py --quick    # tiny stages, a smoke run of well under a minute

Captions come from each image's label and two attributes measured on it (stroke weight from the
ink mass, slant from the second moments of the ink): "a thin seven slanted right". Then:

1. CLIP: a small CNN and an MLP over word embeddings, trained contrastively (symmetric InfoNCE,
   learned temperature) into one space of unit vectors;
2. the prior: a diffusion model over CLIP image embeddings given the text embedding
   (`nets.MLP(D, cond_dim=D)`, `Trainer(cond=..., cond_dropout=0.1)`), and, for comparison, a
   regression prior that predicts one mean embedding per caption;
3. the decoder: `nets.UNet(cond_dim=D)` on the digits given their CLIP image embedding.

Sampling runs text -> text embedding -> prior -> image embedding -> decoder -> image, each
diffusion stage with its own solver, steps and classifier-free guidance scale. Captions whose
(weight, slant) combination training never saw are generated too; an independent classifier of
real digits checks the digit. Every stage is saved under <out>/stages and reused on the next run
(`benchmarks/unclip_digits.py` measures all of it, with the prior ablations).

Writes to --out: unclip_digits.png (captions and their samples with both priors, image
variations) and unclip_digits.md / .json (per prior: judge accuracy on seen and held-out
captions, NFE per stage).
"""
from __future__ import annotations

import torch

from scoresde.bench import classifier_accuracy, image_grid, train_digit_classifier
from scoresde.data import load_digits
from scoresde.unclip import FULL, QUICK, caption_text, held_out_combinations, train_unclip, zero_shot_accuracy

from _common import Stopwatch, parse_args, pyplot, save_figure, write_table


def add_arguments(p):
    p.add_argument("--per-caption", type=int, default=None, help="samples per caption (default 8; 4 with --quick)")
    p.add_argument("--decoder-scale", type=float, default=2.0, help="the decoder's guidance scale")
    p.add_argument("--decoder-steps", type=int, default=None, help="decoder solver steps (default 25; 10 with --quick)")


def main(argv=None):
    args = parse_args("unclip_digits", __doc__, add_arguments, argv)
    clock = Stopwatch()
    trained = train_unclip(QUICK if args.quick else FULL, args.out / ("stages_quick" if args.quick else "stages"))
    x_train, y_train = load_digits("train")
    x_test, y_test = load_digits("test")
    judge = train_digit_classifier(x_train, y_train, epochs=10 if args.quick else 30, seed=args.seed + 1)
    per = args.per_caption or (4 if args.quick else 8)
    steps = args.decoder_steps or (10 if args.quick else 25)
    seen = [caption_text(d, 1, 1) for d in range(10)]  # "a <digit>": seen in training
    held = [caption_text(*h) for h in held_out_combinations()]
    rows, grids = [], []
    for name in ("diffusion", "regression"):
        pipe = trained.pipelines[name]
        for kind, captions in (("seen", seen), ("held-out", held)):
            caps = [c for c in captions for _ in range(per)]
            labels = torch.tensor([d for d in range(10) for _ in range(per)])
            res = pipe.generate(caps, prior_steps=10 if args.quick else 20, decoder_steps=steps,
                                decoder_scale=args.decoder_scale, generator=torch.Generator().manual_seed(args.seed))
            rows.append({"prior": name, "captions": kind, "judge_accuracy": classifier_accuracy(judge, res.x.clamp(-1, 1), labels),
                         "nfe_prior": res.nfe.get("prior", 0), "nfe_decoder": res.nfe["decoder"],
                         "seconds": sum(res.seconds.values())})
            if kind == "held-out":
                grids.append((name, res.x.clamp(-1, 1)))
    variations = trained.pipelines["diffusion"].variations(x_test[:5], per, steps=steps, scale=args.decoder_scale,
                                                          generator=torch.Generator().manual_seed(args.seed + 1))

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    for ax, (name, x) in zip(axes, grids):
        ax.imshow(image_grid(x.cpu(), nrow=per, pad_value=-1.0).numpy(), cmap="gray_r", vmin=-1, vmax=1)
        ax.set_yticks([1 + 9 * i + 4 for i in range(10)], held, fontsize=6)
        ax.set_xticks([])
        ax.set_title(f"held-out captions, {name} prior", fontsize=8)
    both = torch.cat([x_test[:5, None], variations], dim=1).reshape(-1, 1, 8, 8).clamp(-1, 1)
    axes[2].imshow(image_grid(both.cpu(), nrow=per + 1, pad_value=-1.0).numpy(), cmap="gray_r", vmin=-1, vmax=1)
    axes[2].axis("off")
    axes[2].set_title("variations: a real digit, then decodings of its embedding", fontsize=8)
    save_figure(fig, args.out / "unclip_digits.png")
    zero_shot = zero_shot_accuracy(trained.clip, x_test, y_test)
    write_table(args.out, "unclip_digits", rows,
                intro=f"unCLIP on the digits{' (quick)' if args.quick else ''}: CLIP zero-shot accuracy on the test "
                      f"split {zero_shot:.3f}; judge = a classifier of real digits; decoder guidance scale "
                      f"{args.decoder_scale:g}; {clock():.0f} s in all.")


if __name__ == "__main__":
    main()
