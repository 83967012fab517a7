"""unCLIP on the 8x8 digits, measured: CLIP, the full chain on held-out captions, and the prior
ablations (diffusion prior vs regression prior vs no prior).

    python benchmarks/unclip_digits.py            # full run (stages reused from --ckpt-dir if there)
    python benchmarks/unclip_digits.py --quick    # ~1-2 min, results labelled quick

Stages (`scoresde.unclip.train_unclip`, each saved under --ckpt-dir and resumed on the next run):
captions from labels and measured attributes (weight from ink mass, slant from second moments,
per-digit terciles); a CLIP (small CNN + MLP text encoder, symmetric InfoNCE, learned
temperature); a diffusion prior over image embeddings given text embeddings (`nets.MLP`, v
prediction, `Trainer` with condition dropout); a regression prior (MLP, mean squared error); a
decoder `UNet(cond_dim=D)` on image embeddings and, for the "no prior" ablation, the same decoder
trained the same way on text embeddings. Training never sees the held-out caption combinations
(one (weight, slant) combination per digit, `captions.held_out_combinations`).

The judges were trained only on real digits: `bench.digits`' classifier (its accuracy and its
features for Frechet distances and diversity) and the measured attributes. CLIP scores are
reported next to those of real images of the same captions, never alone.

Per pipeline, the decoder's guidance scale is chosen on *seen* captions (the smallest of
--decoder-scales whose judge accuracy reaches 0.95, else the most accurate), then:
- held-out captions (--per-caption samples each): digit accuracy, per-attribute agreement with
  the caption next to chance (the share of real images of the digit at that level), CLIP score of
  generated vs real images of the same captions, diversity (mean pairwise distance in the
  judge's features, generated vs real, per caption), Frechet distance of one generated twin per
  real held-out image of half A against half B, next to the floor FD(half A, half B);
- all captions: one sample per train-split image from its caption, FD to the test split next to
  the floor FD(train, test).

Writes <out>/unclip_digits.json and PNGs: _captions (held-out captions x samples, one panel per
prior), _variations, _interpolations, _ablations (the metrics side by side); *_quick with --quick.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from scoresde.bench import classifier_accuracy, classifier_frechet, image_grid, train_digit_classifier
from scoresde.data import load_digits
from scoresde.unclip import (ATTRIBUTES, FULL, QUICK, caption_text, held_out_combinations, is_held_out,
                             parse_caption, retrieval_recall, train_unclip, zero_shot_accuracy)

TARGET_CLIP_ZERO_SHOT, TARGET_ACCURACY = 0.9, 0.9
ENSEMBLE = [caption_text(0, w, s).replace("zero", "{}") for w in range(3) for s in range(3)]
PRIORS = ("diffusion", "regression", "none")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small stages and few samples; outputs are named *_quick")
    p.add_argument("--per-caption", type=int, default=None, help="samples per held-out caption (default 60; 8 quick)")
    p.add_argument("--decoder-scales", type=float, nargs="+", default=None,
                   help="decoder guidance scales to choose from on seen captions (default 1 2 3; 2 quick)")
    p.add_argument("--prior-scale", type=float, default=1.0)
    p.add_argument("--prior-solver", default="dpm++2m")
    p.add_argument("--prior-steps", type=int, default=20)
    p.add_argument("--decoder-solver", default="dpm++2m")
    p.add_argument("--decoder-steps", type=int, default=25)
    p.add_argument("--validation", type=int, default=20, help="samples per seen caption when choosing the scale")
    p.add_argument("--classifier-epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-dir", default=None, help="default out/unclip_digits[_quick]")
    p.add_argument("--out", default="benchmarks/results/unclip_digits")
    p.add_argument("--progress", action="store_true")
    return p


@torch.no_grad()
def mean_pairwise(features: torch.Tensor) -> float:
    """Mean Euclidean distance over distinct pairs of rows of features (N, F)."""
    n = features.shape[0]
    if n < 2:
        return float("nan")
    d = torch.cdist(features, features)
    return float(d.sum() / (n * (n - 1)))


def run(args: argparse.Namespace, argv: Optional[List[str]] = None) -> dict:
    suffix = "_quick" if args.quick else ""
    config = dataclasses.replace(QUICK if args.quick else FULL, text_decoder=True, seed=args.seed)
    per_caption = args.per_caption or (8 if args.quick else 60)
    scales = args.decoder_scales or ([2.0] if args.quick else [1.0, 2.0, 3.0])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"unclip_digits{suffix}.json"
    start = time.time()
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/unclip_digits.py"]
                                   + (sys.argv[1:] if argv is None else argv))
    report: Dict[str, object] = {
        "quick": bool(args.quick), "command": command, "config": dataclasses.asdict(config),
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "load_average_at_start": os.getloadavg()[0],
    }

    def save() -> None:
        report["total_seconds"] = time.time() - start
        json_path.write_text(json.dumps(report, indent=2) + "\n")

    # ---- the stages
    trained = train_unclip(config, args.ckpt_dir or f"out/unclip_digits{suffix}", progress=args.progress)
    report["training"] = trained.record
    clip, captioner = trained.clip, trained.captioner
    x_train, y_train = load_digits("train")
    x_test, y_test = load_digits("test")
    cap_train, cap_test = captioner.captions(x_train, y_train), captioner.captions(x_test, y_test)

    # ---- the judge: trained on real digits only
    t0 = time.time()
    judge = train_digit_classifier(x_train, y_train, epochs=args.classifier_epochs, seed=args.seed + 1)
    report["judge"] = {
        "classifier": f"bench.digits.DigitClassifier on the real train split, {args.classifier_epochs} epochs, "
                      f"seed {args.seed + 1}",
        "test_accuracy": classifier_accuracy(judge, x_test, y_test),
        "floor_fd_train_vs_test": classifier_frechet(judge, x_train, x_test), "seconds": time.time() - t0,
    }

    # ---- CLIP on the test split
    held_test = torch.tensor([is_held_out(c) for c in cap_test])
    report["clip"] = {
        "zero_shot_accuracy": zero_shot_accuracy(clip, x_test, y_test, "a {}"),
        "zero_shot_accuracy_prompt_ensemble": zero_shot_accuracy(clip, x_test, y_test, ENSEMBLE),
        "zero_shot_prompts": "'a {digit}'; ensemble: the 9 caption templates of each digit, averaged",
        "target_zero_shot": TARGET_CLIP_ZERO_SHOT,
        "retrieval_test": retrieval_recall(clip, x_test, cap_test),
        "retrieval_test_held_out_captions": retrieval_recall(
            clip, x_test[held_test], [c for c, h in zip(cap_test, held_test.tolist()) if h]),
        "temperature": float(1 / clip.scale()),
    }
    report["clip"]["target_met"] = report["clip"]["zero_shot_accuracy"] >= TARGET_CLIP_ZERO_SHOT
    print(f"CLIP zero-shot {report['clip']['zero_shot_accuracy']:.3f}; retrieval {report['clip']['retrieval_test']}")
    save()

    # ---- the held-out reference: real images (unseen train + test) of the held-out captions
    x_all, cap_all = torch.cat([x_train, x_test]), cap_train + cap_test
    held = [caption_text(*h) for h in held_out_combinations()]
    real_idx = {c: [i for i, k in enumerate(cap_all) if k == c] for c in held}
    ref = torch.tensor([i for c in held for i in real_idx[c]])
    perm = ref[torch.randperm(len(ref), generator=torch.Generator().manual_seed(args.seed))]
    half_a, half_b = perm[: len(perm) // 2], perm[len(perm) // 2:]
    floor_held = classifier_frechet(judge, x_all[half_a], x_all[half_b])
    with torch.no_grad():
        real_text = clip.encode_text(held)
        real_clip_score = {c: float((clip.encode_image(x_all[real_idx[c]]) @ real_text[j]).mean())
                           for j, c in enumerate(held) if real_idx[c]}
        real_features = {c: judge.features(x_all[real_idx[c]]) for c in held}
    levels_train = captioner.levels(x_train, y_train)
    chance = {a: {} for a in ATTRIBUTES}
    for c in held:
        d, w, s = parse_caption(c)
        for a, lv in (("weight", w), ("slant", s)):
            chance[a][c] = float((levels_train[a][y_train == d] == lv).float().mean())
    report["held_out"] = {
        "captions": held, "real_images": {c: len(real_idx[c]) for c in held},
        "floor_fd_half_a_vs_half_b": floor_held, "halves": [len(half_a), len(half_b)],
        "real_clip_score": sum(real_clip_score.values()) / len(real_clip_score),
        "real_diversity": sum(mean_pairwise(f) for f in real_features.values()) / len(held),
        "attribute_chance": {a: sum(v.values()) / len(v) for a, v in chance.items()},
    }
    save()

    seen = sorted({c for c in cap_train if not is_held_out(c)})
    g = torch.Generator().manual_seed(args.seed + 7)
    validation = [seen[int(i)] for i in torch.randperm(len(seen), generator=g)[:10]]
    sampling = dict(prior_solver=args.prior_solver, prior_steps=args.prior_steps, prior_scale=args.prior_scale,
                    decoder_solver=args.decoder_solver, decoder_steps=args.decoder_steps)
    report["sampling"] = {**sampling, "denoise": True, "per_caption": per_caption, "decoder_scales": scales,
                          "validation_captions": validation, "validation_per_caption": args.validation}
    report["pipelines"] = {}
    samples_for_grid = {}

    for name in PRIORS:
        pipe = trained.pipelines[name]
        rec: Dict[str, object] = {"validation": []}
        report["pipelines"][name] = rec

        def generate(captions: List[str], scale: float, seed: int):
            return pipe.generate(captions, decoder_scale=scale, generator=torch.Generator().manual_seed(seed),
                                 **sampling)

        # choose the decoder's guidance scale on seen captions
        caps = [c for c in validation for _ in range(args.validation)]
        labels = torch.tensor([parse_caption(c)[0] for c in caps])
        for scale in scales:
            res = generate(caps, scale, args.seed + 11)
            rec["validation"].append({"scale": scale, "accuracy": classifier_accuracy(judge, res.x.clamp(-1, 1), labels)})
        ok = [v for v in rec["validation"] if v["accuracy"] >= 0.95]
        chosen = ok[0]["scale"] if ok else max(rec["validation"], key=lambda v: v["accuracy"])["scale"]
        rec["decoder_scale"] = chosen

        # held-out captions
        caps = [c for c in held for _ in range(per_caption)]
        res = generate(caps, chosen, args.seed + 13)
        x = res.x.clamp(-1, 1)
        samples_for_grid[name] = x.reshape(len(held), per_caption, 1, 8, 8)[:, :8]
        parsed = [parse_caption(c) for c in caps]
        labels = torch.tensor([p[0] for p in parsed])
        levels = captioner.levels(x, labels)
        with torch.no_grad():
            gen_text = clip.encode_text(caps)
            gen_clip = (clip.encode_image(x) * gen_text).sum(1)
            gen_features = judge.features(x)
        per: Dict[str, Dict[str, float]] = {}
        for j, c in enumerate(held):
            rows = slice(j * per_caption, (j + 1) * per_caption)
            _, w, s = parse_caption(c)
            per[c] = {"accuracy": float((judge(x[rows]).argmax(1) == labels[rows]).float().mean()),
                      "weight_agreement": float((levels["weight"][rows] == w).float().mean()),
                      "slant_agreement": float((levels["slant"][rows] == s).float().mean()),
                      "clip_score": float(gen_clip[rows].mean()), "real_clip_score": real_clip_score.get(c),
                      "diversity": mean_pairwise(gen_features[rows]), "real_diversity": mean_pairwise(real_features[c])}
        agree = {a: float((levels[a] == torch.tensor([p[1 + k] for p in parsed])).float().mean())
                 for k, a in enumerate(ATTRIBUTES)}
        twins = [cap_all[int(i)] for i in half_a]
        res_twins = generate(twins, chosen, args.seed + 17)
        rec["held_out"] = {
            "accuracy": classifier_accuracy(judge, x, labels), "target_accuracy": TARGET_ACCURACY,
            "attribute_agreement": agree, "attribute_chance": report["held_out"]["attribute_chance"],
            "clip_score": float(gen_clip.mean()), "real_clip_score": report["held_out"]["real_clip_score"],
            "diversity": sum(v["diversity"] for v in per.values()) / len(per),
            "real_diversity": report["held_out"]["real_diversity"],
            "fd_twins_of_half_a_vs_half_b": classifier_frechet(judge, res_twins.x, x_all[half_b]),
            "floor_fd_half_a_vs_half_b": floor_held,
            "nfe": res.nfe, "seconds": res.seconds, "per_caption": per,
            "fraction_outside_[-1,1]": float((res.x.abs() > 1).float().mean()),
        }
        rec["held_out"]["target_met"] = rec["held_out"]["accuracy"] >= TARGET_ACCURACY
        if res.image_embedding is not None:  # the prior's own spread: does it collapse to one embedding a caption?
            z = res.image_embedding.reshape(len(held), per_caption, -1)
            with torch.no_grad():
                real_z = {c: clip.encode_image(x_all[real_idx[c]]) for c in held}
            rec["held_out"]["embedding_spread"] = sum(mean_pairwise(z[j]) for j in range(len(held))) / len(held)
            rec["held_out"]["real_embedding_spread"] = sum(mean_pairwise(v) for v in real_z.values()) / len(held)

        # all captions: one sample per train image, against the test split
        res_all = generate(cap_train, chosen, args.seed + 19)
        rec["all_captions"] = {
            "accuracy": classifier_accuracy(judge, res_all.x.clamp(-1, 1), y_train),
            "fd_vs_test": classifier_frechet(judge, res_all.x, x_test),
            "floor_fd_train_vs_test": report["judge"]["floor_fd_train_vs_test"], "n": len(cap_train),
            "nfe": res_all.nfe, "seconds": res_all.seconds,
        }
        h = rec["held_out"]
        print(f"{name}: scale {chosen}; held-out accuracy {h['accuracy']:.3f}, agreement {h['attribute_agreement']}, "
              f"CLIP score {h['clip_score']:.3f} (real {h['real_clip_score']:.3f}), FD twins "
              f"{h['fd_twins_of_half_a_vs_half_b']:.3g} (floor {floor_held:.3g}); all captions FD "
              f"{rec['all_captions']['fd_vs_test']:.3g} (floor {report['judge']['floor_fd_train_vs_test']:.3g})")
        save()

    # ---- figures
    diff = trained.pipelines["diffusion"]
    scale = report["pipelines"]["diffusion"]["decoder_scale"]
    options = dict(solver=args.decoder_solver, steps=args.decoder_steps, scale=scale)
    pick = torch.tensor([int((y_test == d).nonzero()[0]) for d in range(0, 10, 2)])
    variations = diff.variations(x_test[pick], 7, generator=torch.Generator().manual_seed(args.seed + 23), **options)
    pairs = [(0, 1), (3, 8), (4, 9), (2, 7)]
    firsts = {d: int((y_test == d).nonzero()[0]) for d in range(10)}
    interps = torch.stack([diff.interpolate(x_test[firsts[a]][None], x_test[firsts[b]][None], points=8,
                                            generator=torch.Generator().manual_seed(args.seed + 29), **options)
                           for a, b in pairs])
    plot_captions(samples_for_grid, held, report, out / f"unclip_digits{suffix}_captions.png")
    plot_variations(x_test[pick], variations, out / f"unclip_digits{suffix}_variations.png")
    plot_interpolations(x_test[[firsts[a] for a, _ in pairs]], x_test[[firsts[b] for _, b in pairs]], interps,
                        out / f"unclip_digits{suffix}_interpolations.png")
    plot_ablations(report, out / f"unclip_digits{suffix}_ablations.png")
    save()
    print(f"wrote {json_path} in {report['total_seconds']:.0f} s")
    return report


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_captions(samples: Dict[str, torch.Tensor], captions: List[str], report: dict, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(samples), figsize=(3.2 * len(samples) + 1.6, 0.38 * len(captions) + 0.8))
    for k, (ax, (name, x)) in enumerate(zip(axes, samples.items())):
        grid = image_grid(x.reshape(-1, 1, 8, 8).cpu(), nrow=x.shape[1], pad_value=-1.0)
        ax.imshow(grid.numpy(), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([1 + 9 * i + 4 for i in range(len(captions))], captions if k == 0 else [], fontsize=7)
        rec = report["pipelines"][name]["held_out"]
        ax.set_title(f"prior: {name} (scale {report['pipelines'][name]['decoder_scale']:g})\naccuracy "
                     f"{rec['accuracy']:.2f}", fontsize=8)
    fig.suptitle("held-out captions (never seen in training) and their samples", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_variations(x: torch.Tensor, variations: torch.Tensor, path: Path) -> None:
    plt = _pyplot()
    rows = torch.cat([x[:, None], variations], dim=1).clamp(-1, 1)
    grid = image_grid(rows.reshape(-1, 1, 8, 8).cpu(), nrow=rows.shape[1], pad_value=-1.0)
    fig, ax = plt.subplots(figsize=(4.2, 0.5 * rows.shape[0] + 0.6))
    ax.imshow(grid.numpy(), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks([5, 9 * 4 + 5], ["real", "decodings of its CLIP image embedding"], fontsize=7)
    ax.set_yticks([])
    ax.set_title("image variations", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_interpolations(a: torch.Tensor, b: torch.Tensor, interps: torch.Tensor, path: Path) -> None:
    plt = _pyplot()
    rows = torch.cat([a[:, None], interps, b[:, None]], dim=1).clamp(-1, 1)
    grid = image_grid(rows.reshape(-1, 1, 8, 8).cpu(), nrow=rows.shape[1], pad_value=-1.0)
    fig, ax = plt.subplots(figsize=(5.0, 0.5 * rows.shape[0] + 0.6))
    ax.imshow(grid.numpy(), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks([5, 9 * (rows.shape[1] - 1) + 5], ["real A", "real B"], fontsize=7)
    ax.set_yticks([])
    ax.set_title("slerp between two image embeddings, one starting noise per row", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_ablations(report: dict, path: Path) -> None:
    plt = _pyplot()
    names = list(report["pipelines"])
    recs = [report["pipelines"][n]["held_out"] for n in names]
    panels = [
        ("digit accuracy", [r["accuracy"] for r in recs], TARGET_ACCURACY),
        ("weight agreement", [r["attribute_agreement"]["weight"] for r in recs],
         report["held_out"]["attribute_chance"]["weight"]),
        ("slant agreement", [r["attribute_agreement"]["slant"] for r in recs],
         report["held_out"]["attribute_chance"]["slant"]),
        ("CLIP score", [r["clip_score"] for r in recs], report["held_out"]["real_clip_score"]),
        ("FD (twins vs half B)", [r["fd_twins_of_half_a_vs_half_b"] for r in recs],
         report["held_out"]["floor_fd_half_a_vs_half_b"]),
        ("diversity", [r["diversity"] for r in recs], report["held_out"]["real_diversity"]),
    ]
    refs = ["target", "chance", "chance", "real images", "floor", "real images"]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels), 2.6))
    for ax, (title, values, ref), ref_name in zip(axes, panels, refs):
        ax.bar(range(len(names)), values, color=["tab:blue", "tab:orange", "tab:green"][:len(names)])
        ax.axhline(ref, color="gray", ls=":", label=ref_name)
        ax.set_xticks(range(len(names)), names, fontsize=7)
        ax.set_title(title, fontsize=8)
        ax.legend(fontsize=6)
    fig.suptitle("held-out captions: priors compared (judged by a classifier of real digits and measured attributes)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> dict:
    return run(build_parser().parse_args(argv), argv)


if __name__ == "__main__":
    main()
