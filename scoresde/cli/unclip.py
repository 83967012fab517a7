"""`scoresde unclip`: train (or reuse) every stage of the digits unCLIP under --out, then draw
images for captions through text -> prior -> image embedding -> decoder."""
from __future__ import annotations

import argparse

import torch

from ..plots import picture
from ._args import MAX_STEPS, WHY_STEPS, int_flag, output_folder, seed_flag

PRIORS = ("diffusion", "regression")


def add(command) -> None:
    p = command("unclip", "the digits unCLIP (CLIP, diffusion prior, decoder): train its stages, then generate "
                          "from captions")
    p.add_argument("--out", default="out/unclip", help="folder of the stages (reused and resumed when present) "
                                                      "and of the samples")
    p.add_argument("--quick", action="store_true", help="tiny stages (a smoke run); the default is the full size "
                                                        "that benchmarks/unclip_digits.py measures")
    p.add_argument("--caption", action="append", default=None,
                   help="repeatable, 'a [thin|thick] <digit> [slanted left|slanted right]' (default: one per digit)")
    int_flag(p, "--samples", "--n", dest="samples", high=10_000, why="a picture", default=8,
             help="images per caption")
    p.add_argument("--prior", default="diffusion", choices=PRIORS, help="which prior maps text to image embeddings")
    int_flag(p, "--prior-steps", high=MAX_STEPS, why=WHY_STEPS, default=20, help="dpm++2m steps of the prior")
    int_flag(p, "--decoder-steps", high=MAX_STEPS, why=WHY_STEPS, default=25, help="dpm++2m steps of the decoder")
    p.add_argument("--decoder-scale", type=float, default=1.0, help="the decoder's classifier-free guidance scale")
    seed_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from .. import _checks
    from ..unclip import FULL, QUICK, caption_text, parse_caption, train_unclip

    captions = args.caption or [caption_text(label, 1, 1) for label in range(10)]
    for caption in captions:  # every caption understood before any training
        parse_caption(caption)
    scale = _checks.real("--decoder-scale", args.decoder_scale, low=0)
    folder = output_folder(args.out)
    trained = train_unclip(QUICK if args.quick else FULL, folder / "stages")
    pipeline = trained.pipelines[args.prior]
    repeated = [c for c in captions for _ in range(args.samples)]
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        out = pipeline.generate(repeated, prior_steps=args.prior_steps, decoder_steps=args.decoder_steps,
                                decoder_scale=scale, generator=gen)
    x = out.x.detach().cpu()
    stem = folder / f"unclip_{args.prior}"
    torch.save({"x": x, "captions": repeated, "nfe": out.nfe}, f"{stem}.pt")
    picture(f"{stem}.png", (x, f"{args.prior} prior: {len(captions)} captions x {args.samples}, "
                              f"NFE prior {out.nfe.get('prior', 0)} + decoder {out.nfe['decoder']}"))
    print(f"{len(captions)} captions x {args.samples} images ({args.prior} prior; NFE per image: "
          f"prior {out.nfe.get('prior', 0)}, decoder {out.nfe['decoder']}); wrote {stem}.pt and {stem}.png")
