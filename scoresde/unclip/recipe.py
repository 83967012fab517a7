"""Training every stage of unCLIP on the digits from one `UnCLIPConfig`, each stage saved in its
own place under one folder and reused or resumed on the next run:

    <out>/captioner.json              attribute thresholds (terciles of the train split per digit)
    <out>/clip.safetensors            the CLIP model
    <out>/prior/                      diffusion prior: Trainer checkpoint + stage.json
    <out>/regression_prior.safetensors
    <out>/decoder/                    decoder on image embeddings: Trainer checkpoint + stage.json
    <out>/decoder_text/               decoder on text embeddings (the "no prior" ablation), if asked

Training data: the train split's images whose caption is not a held-out combination; the
held-out captions (and the test split) are only ever generated or measured.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Optional, Union

import torch

from ..data import load_digits
from .captions import Captioner, held_out_combinations, is_held_out
from .clip import CLIP, load_clip, save_clip, train_clip
from .pipeline import (EMBED_SCALE, RegressionPrior, UnCLIP, decoder, diffusion_prior, load_regression_prior,
                       save_regression_prior, train_regression_prior, train_stage)

__all__ = ["UnCLIPConfig", "QUICK", "FULL", "TrainedUnCLIP", "train_unclip", "training_data", "config_dict"]


@dataclass
class UnCLIPConfig:
    """Sizes and lengths of every stage (steps are Trainer optimizer steps)."""

    embed_dim: int = 32
    clip_epochs: int = 60
    clip_width: int = 32
    prior_steps: int = 3000
    prior_hidden: int = 256
    prior_depth: int = 3
    prior_cond_dropout: float = 0.1
    regression_epochs: int = 200
    decoder_steps: int = 4000
    decoder_channels: int = 16
    decoder_cond_dropout: float = 0.1
    decoder_batch_size: int = 128
    decoder_lr: float = 1e-3
    text_decoder: bool = False
    seed: int = 0


QUICK = UnCLIPConfig(embed_dim=16, clip_epochs=25, clip_width=16, prior_steps=300, prior_hidden=128, prior_depth=2,
                     regression_epochs=60, decoder_steps=250, decoder_channels=8)
FULL = UnCLIPConfig()


@dataclass
class TrainedUnCLIP:
    """What `train_unclip` returns: the captioner, the CLIP model, one pipeline per prior
    ("diffusion", "regression", and "none" when the text decoder was trained) and a record of
    the training (steps, seconds, whether each stage was resumed)."""

    captioner: Captioner
    clip: CLIP
    pipelines: Dict[str, UnCLIP]
    record: Dict[str, Dict[str, object]] = field(default_factory=dict)
    config: Optional[UnCLIPConfig] = None


def training_data(captioner: Optional[Captioner] = None):
    """(x, labels, captions, captioner) of the train split without the held-out captions."""
    x, y = load_digits("train")
    captioner = captioner or Captioner.fit(x, y)
    captions = captioner.captions(x, y)
    keep = torch.tensor([not is_held_out(c) for c in captions])
    return x[keep], y[keep], [c for c, k in zip(captions, keep.tolist()) if k], captioner


def train_unclip(config: UnCLIPConfig, out: Union[str, os.PathLike], progress: bool = False,
                 log=print) -> TrainedUnCLIP:
    """Train (or reuse, or resume) every stage of `config` under `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record: Dict[str, Dict[str, object]] = {}
    cap_path = out / "captioner.json"
    captioner = Captioner.from_json(cap_path.read_text()) if cap_path.is_file() else None
    x, y, captions, captioner = training_data(captioner)
    cap_path.write_text(captioner.to_json() + "\n")
    record["data"] = {"train_images": int(x.shape[0]), "held_out_combinations": [list(h) for h in held_out_combinations()]}

    t0 = time.time()
    clip_path = out / "clip.safetensors"
    if clip_path.is_file():
        clip, reused = load_clip(clip_path), True
    else:
        clip = train_clip(x, captions, epochs=config.clip_epochs, embed_dim=config.embed_dim,
                          width=config.clip_width, seed=config.seed)
        save_clip(clip, clip_path)
        reused = False
    record["clip"] = {"epochs": config.clip_epochs, "reused": reused, "seconds": time.time() - t0,
                      "temperature": float(1 / clip.scale())}
    log(f"clip: {'reused' if reused else 'trained'} in {record['clip']['seconds']:.1f} s")
    with torch.no_grad():
        z, c = clip.encode_image(x), clip.encode_text(captions)
    d = config.embed_dim

    def stage(name: str, model_fn, data, cond, steps, role, condition, **options) -> torch.nn.Module:
        t = time.time()
        torch.manual_seed(config.seed + len(record))  # the network's initialization
        trainer = train_stage(model_fn(), data, cond, steps, out / name, role, condition, clip, progress=progress,
                              seed=config.seed, ckpt_every=max(500, steps // 4), **options)
        recent = trainer.loss_history[-200:]
        record[name] = {"steps": trainer.step, "seconds": time.time() - t,
                        "final_loss_mean_last_200": sum(recent) / len(recent) if recent else None,
                        "checkpoint": str(trainer.checkpoint_path)}
        log(f"{name}: step {trainer.step} in {record[name]['seconds']:.1f} s")
        model = trainer.ema_model
        model.condition = condition
        return model

    prior = stage("prior", lambda: diffusion_prior(d, config.prior_hidden, config.prior_depth), z * EMBED_SCALE(d), c,
                  config.prior_steps, "prior", "text_embedding", cond_dropout=config.prior_cond_dropout,
                  batch_size=256, lr=1e-3, warmup_steps=100, ema_decay=0.995)

    t0 = time.time()
    reg_path = out / "regression_prior.safetensors"
    if reg_path.is_file():
        regression: RegressionPrior = load_regression_prior(reg_path, clip)
        reused = True
    else:
        regression = train_regression_prior(c, z, epochs=config.regression_epochs, seed=config.seed,
                                            hidden=config.prior_hidden)
        save_regression_prior(regression, clip, reg_path)
        reused = False
    record["regression_prior"] = {"epochs": config.regression_epochs, "reused": reused, "seconds": time.time() - t0}

    decoder_options = dict(cond_dropout=config.decoder_cond_dropout, batch_size=config.decoder_batch_size,
                           lr=config.decoder_lr, warmup_steps=min(200, config.decoder_steps), ema_decay=0.999)
    image_decoder = stage("decoder", lambda: decoder(d, config.decoder_channels), x, z, config.decoder_steps,
                          "decoder", "image_embedding", **decoder_options)
    pipelines = {"diffusion": UnCLIP(clip, image_decoder, prior), "regression": UnCLIP(clip, image_decoder, regression)}
    if config.text_decoder:
        text_decoder = stage("decoder_text", lambda: decoder(d, config.decoder_channels), x, c, config.decoder_steps,
                             "decoder", "text_embedding", **decoder_options)
        pipelines["none"] = UnCLIP(clip, text_decoder, None)
    return TrainedUnCLIP(captioner, clip, pipelines, record, config)


def config_dict(config: UnCLIPConfig) -> Dict[str, object]:
    return asdict(config)
