"""unCLIP on the digits (Ramesh et al. 2022): text -> CLIP text embedding -> prior -> CLIP
image embedding -> decoder -> image, each diffusion stage sampled with any scoresde solver at
its own step count and classifier-free guidance scale.

- The diffusion prior: a `ScoreModel` on vectors (`nets.MLP(D, cond_dim=D)`, v prediction on
  the VP SDE) over image embeddings given the text embedding, trained with the `Trainer` and
  condition dropout (zeros: the null condition of `guidance.ClassifierFree`).
- The regression prior: an MLP predicting the image embedding from the text embedding (the
  conditional mean, renormalized): one embedding per caption.
- The decoder: `nets.UNet(cond_dim=D)` conditioned on the image embedding (GLIDE's way: the
  projected vector shifts every residual block), trained with the `Trainer` and condition
  dropout. Conditioned on the text embedding instead, it is the "no prior" ablation.

Networks see embeddings as `EMBED_SCALE(D) * unit vector` = sqrt(D) * u, whose coordinates have
unit scale like the SDE's prior; the prior's samples are renormalized to unit length.

Each diffusion stage lives in a folder: the Trainer checkpoint (`checkpoint.pt`, resumable) and
`stage.json`, which records the stage's role, its condition and the digest of the CLIP model its
embeddings came from, so that a stage trained on another CLIP model, or of another embedding
width, is refused when a pipeline is assembled.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import torch
from torch import nn

from .. import _checks
from ..guidance import ClassifierFree
from ..model import ScoreModel
from ..nets import MLP, UNet
from ..sde import VPSDE
from ..solvers import sample
from ..training import CHECKPOINT_NAME, Trainer, load_model
from .clip import CLIP, clip_digest
from .files import read_module, write_module

__all__ = [
    "EMBED_SCALE", "STAGE_FILE", "CONDITIONS", "diffusion_prior", "decoder", "train_stage", "load_stage",
    "RegressionPrior", "train_regression_prior", "save_regression_prior", "load_regression_prior",
    "UnCLIP", "UnCLIPResult", "slerp",
]

STAGE_FILE = "stage.json"
CONDITIONS = ("image_embedding", "text_embedding")
REGRESSION_FORMAT = "scoresde.unclip.regression_prior/1"


def EMBED_SCALE(dim: int) -> float:  # noqa: N802 (a constant of the embedding width)
    """The scale sqrt(D) at which networks see unit embeddings of width D."""
    return math.sqrt(dim)


# ---- the diffusion stages -----------------------------------------------------------------------
def diffusion_prior(embed_dim: int, hidden: int = 256, depth: int = 3) -> ScoreModel:
    """The diffusion prior's untrained model: v prediction (an eps-MLP sends some prior-tail
    draws of the probability-flow ODE to |z| ~ 100), VP SDE, on (B, D) embeddings given (B, D)."""
    return ScoreModel(MLP(embed_dim, hidden=hidden, depth=depth, cond_dim=embed_dim), VPSDE(), prediction="v")


def decoder(embed_dim: int, base_channels: int = 32, dropout: float = 0.0) -> ScoreModel:
    """The decoder's untrained model: `UNet(cond_dim=D)` on (B, 1, 8, 8), eps prediction, VP SDE."""
    return ScoreModel(UNet(in_channels=1, base_channels=base_channels, cond_dim=embed_dim, dropout=dropout),
                      VPSDE(), prediction="eps")


def _stage_info(role: str, condition: str, clip: CLIP) -> Dict[str, object]:
    return {"role": _checks.choice("role", role, ("prior", "decoder")),
            "condition": _checks.choice("condition", condition, CONDITIONS),
            "embed_dim": clip.embed_dim, "clip_digest": clip_digest(clip)}


def train_stage(model: ScoreModel, data: torch.Tensor, cond: torch.Tensor, steps: int,
                ckpt_dir: Union[str, os.PathLike], role: str, condition: str, clip: CLIP,
                **trainer_options) -> Trainer:
    """Train a diffusion stage on `data` (N, *shape) with unit embeddings `cond` (N, D) until
    `steps` total steps, in `ckpt_dir`: a checkpoint already there (of the same role, condition
    and CLIP model) is resumed exactly, else `model` is trained from its initialization with the
    Trainer options (`cond_dropout`, `batch_size`, `lr`, ...)."""
    info = _stage_info(role, condition, clip)
    if cond.ndim != 2 or cond.shape[1] != clip.embed_dim:
        raise _checks.fail("cond", f"embeddings (N, {clip.embed_dim}) of the CLIP model", tuple(cond.shape))
    ckpt_dir = Path(ckpt_dir)
    ckpt = ckpt_dir / CHECKPOINT_NAME
    cond = cond * EMBED_SCALE(clip.embed_dim)
    if ckpt.is_file():
        _check_stage(ckpt_dir, info)
        keep = {k: v for k, v in trainer_options.items() if k in ("device", "progress", "ckpt_every", "step_fn")}
        trainer = Trainer.from_checkpoint(ckpt, data, cond=cond, **keep)
    else:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (ckpt_dir / STAGE_FILE).write_text(json.dumps(info, indent=2) + "\n")
        trainer = Trainer(model, data, cond=cond, ckpt_dir=ckpt_dir, **trainer_options)
    return trainer.fit(max(steps, trainer.step))


def _check_stage(folder: Path, expected: Dict[str, object]) -> Dict[str, object]:
    path = folder / STAGE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {folder} is not a stage folder of scoresde.unclip")
    info = json.loads(path.read_text())
    for key in ("role", "condition", "embed_dim"):
        if key in expected and info.get(key) != expected[key]:
            raise ValueError(f"stage {folder}: its {key} must be {expected[key]!r}; got {info.get(key)!r}")
    if "clip_digest" in expected and info.get("clip_digest") != expected["clip_digest"]:
        raise ValueError(f"stage {folder} was trained on the embeddings of another CLIP model (digest "
                         f"{str(info.get('clip_digest'))[:12]}..., this CLIP model's is {str(expected['clip_digest'])[:12]}...)")
    return info


def load_stage(folder: Union[str, os.PathLike], clip: CLIP, role: str,
               device: Union[str, torch.device, None] = None) -> ScoreModel:
    """The trained (EMA) model of the stage in `folder`, checked against `clip`: the same
    embedding width (the network's cond_dim) and the same CLIP model (its digest)."""
    folder = Path(folder)
    role = _checks.choice("role", role, ("prior", "decoder"))
    info = _check_stage(folder, {"role": role})
    model = load_model(folder / CHECKPOINT_NAME, device=device)
    width = getattr(model.net, "cond_dim", None)
    if width != clip.embed_dim or info.get("embed_dim") != clip.embed_dim:
        raise ValueError(f"stage {folder}: its embedding width (cond_dim) is {width} but the CLIP model's embeddings "
                         f"have width {clip.embed_dim}")
    _check_stage(folder, {"clip_digest": clip_digest(clip)})
    model.condition = info["condition"]
    return model


# ---- the regression prior -------------------------------------------------------------------------
class RegressionPrior(nn.Module):
    """A deterministic prior: text embedding (B, D) -> unit image embedding (B, D), a residual
    MLP predicting the conditional mean, renormalized."""

    def __init__(self, embed_dim: int, hidden: int = 256):
        super().__init__()
        embed_dim = _checks.at_most("embed_dim", _checks.integer("embed_dim", embed_dim, low=2), 4096)
        hidden = _checks.at_most("hidden", _checks.integer("hidden", hidden, low=1), 2**16)
        self.config = dict(embed_dim=embed_dim, hidden=hidden)
        self.embed_dim = embed_dim
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, embed_dim))

    def mean(self, text_emb: torch.Tensor) -> torch.Tensor:
        """The predicted mean image embedding at scale sqrt(D), (B, D)."""
        return self.mlp(text_emb * EMBED_SCALE(self.embed_dim))

    def forward(self, text_emb: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.mean(text_emb), dim=1)


def train_regression_prior(text_emb: torch.Tensor, image_emb: torch.Tensor, epochs: int = 200, batch_size: int = 256,
                           lr: float = 1e-3, seed: int = 0, hidden: int = 256) -> RegressionPrior:
    """The regression prior fitted by mean squared error at scale sqrt(D) with Adam,
    deterministically from `seed`; eval mode, no gradients."""
    d = image_emb.shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        prior = RegressionPrior(d, hidden).to(image_emb.device)
    target = image_emb * EMBED_SCALE(d)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(prior.parameters(), lr=lr)
    for _ in range(epochs):
        order = torch.randperm(text_emb.shape[0], generator=generator).to(text_emb.device)
        for start in range(0, text_emb.shape[0], batch_size):
            idx = order[start:start + batch_size]
            loss = (prior.mean(text_emb[idx]) - target[idx]).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return prior.eval().requires_grad_(False)


def save_regression_prior(prior: RegressionPrior, clip: CLIP, path: Union[str, os.PathLike]) -> Path:
    """Write the regression prior with the digest of the CLIP model it was fitted to."""
    return write_module(prior, REGRESSION_FORMAT, {**prior.config, "clip_digest": clip_digest(clip)}, path)


def load_regression_prior(path: Union[str, os.PathLike], clip: CLIP) -> RegressionPrior:
    """The regression prior at `path`, refused unless it was fitted to `clip`'s embeddings."""
    stored: Dict[str, object] = {}

    def build(embed_dim: int, hidden: int, clip_digest: str) -> RegressionPrior:
        stored["clip_digest"] = clip_digest
        return RegressionPrior(embed_dim, hidden)

    prior = read_module(path, REGRESSION_FORMAT, build, ("embed_dim", "hidden", "clip_digest"))
    if prior.embed_dim != clip.embed_dim:
        raise ValueError(f"regression prior {path}: its embedding width is {prior.embed_dim} but the CLIP model's "
                         f"embeddings have width {clip.embed_dim}")
    if stored["clip_digest"] != clip_digest(clip):
        raise ValueError(f"regression prior {path} was fitted to the embeddings of another CLIP model")
    return prior


# ---- the chain ------------------------------------------------------------------------------------
def slerp(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between unit vectors a, b (D,) at weights w (K,): (K, D)."""
    omega = torch.arccos((a * b).sum().clamp(-1 + 1e-7, 1 - 1e-7))
    w = w[:, None].to(a.dtype)
    return (torch.sin((1 - w) * omega) * a + torch.sin(w * omega) * b) / torch.sin(omega)


@dataclass
class UnCLIPResult:
    """x: images (B, 1, 8, 8); text_embedding, image_embedding: unit vectors (B, D) (the
    latter None without a prior); nfe: counted evaluations per stage; seconds per stage."""

    x: torch.Tensor
    text_embedding: Optional[torch.Tensor]
    image_embedding: Optional[torch.Tensor]
    nfe: Dict[str, int] = field(default_factory=dict)
    seconds: Dict[str, float] = field(default_factory=dict)


class UnCLIP:
    """The chain text -> text embedding -> prior -> image embedding -> decoder -> image.

    Args:
        clip: the CLIP model whose embeddings every stage was trained on.
        decoder: a ScoreModel on (B, 1, 8, 8) whose network takes `cond` (B, D): conditioned on
            image embeddings (with a prior) or on text embeddings (prior None: the "no prior"
            ablation); `decoder_condition` says which.
        prior: a diffusion prior (ScoreModel on (B, D) given (B, D)), a `RegressionPrior`, or None.
    """

    def __init__(self, clip: CLIP, decoder: ScoreModel, prior: Union[ScoreModel, RegressionPrior, None] = None,
                 decoder_condition: Optional[str] = None):
        if not isinstance(clip, CLIP):
            raise _checks.fail("clip", "a scoresde.unclip.CLIP", type(clip).__name__)
        if not isinstance(decoder, ScoreModel):
            raise _checks.fail("decoder", "a scoresde.ScoreModel", type(decoder).__name__)
        d = clip.embed_dim
        width = getattr(decoder.net, "cond_dim", None)
        if width != d:
            raise ValueError(f"decoder: its embedding width (cond_dim) is {width} but the CLIP model's embeddings have "
                             f"width {d}")
        if prior is not None:
            if isinstance(prior, RegressionPrior):
                pw = prior.embed_dim
            elif isinstance(prior, ScoreModel):
                pw = getattr(prior.net, "cond_dim", None)
                if getattr(prior.net, "dim", None) != d:
                    raise ValueError(f"prior: it generates vectors of width {getattr(prior.net, 'dim', None)} but the "
                                     f"CLIP model's embeddings have width {d}")
            else:
                raise _checks.fail("prior", "None, a diffusion prior (ScoreModel) or a RegressionPrior",
                                   type(prior).__name__)
            if pw != d:
                raise ValueError(f"prior: its condition width is {pw} but the CLIP model's embeddings have width {d}")
        if decoder_condition is None:
            decoder_condition = getattr(decoder, "condition", "image_embedding" if prior is not None else "text_embedding")
        decoder_condition = _checks.choice("decoder_condition", decoder_condition, CONDITIONS)
        if (decoder_condition == "text_embedding") != (prior is None):
            raise ValueError("a decoder conditioned on image embeddings needs a prior, one conditioned on text "
                             f"embeddings takes none; got decoder_condition={decoder_condition!r} and "
                             f"prior={type(prior).__name__}")
        self.clip, self.decoder, self.prior, self.decoder_condition = clip, decoder, prior, decoder_condition

    @property
    def embed_dim(self) -> int:
        return self.clip.embed_dim

    def _device(self) -> torch.device:
        return next(self.decoder.parameters()).device

    @torch.no_grad()
    def text_embedding(self, captions: Sequence[str]) -> torch.Tensor:
        """Unit text embeddings (B, D) of B captions (unknown words and empty captions refused)."""
        return self.clip.encode_text(list(captions) if not isinstance(captions, str) else captions).to(self._device())

    @torch.no_grad()
    def image_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """Unit CLIP image embeddings (B, D) of images x (B, 1, 8, 8)."""
        return self.clip.encode_image(x.to(self.clip.logit_scale.device)).to(self._device())

    def run_prior(self, text_emb: torch.Tensor, solver: str = "dpm++2m", steps: int = 20, scale: float = 1.0,
                  generator: Optional[torch.Generator] = None) -> Dict[str, object]:
        """Image embeddings (B, D) for text embeddings (B, D): {"z", "nfe", "seconds"}."""
        self._check_embedding("text_emb", text_emb)
        if self.prior is None:
            raise ValueError("this pipeline has no prior (its decoder is conditioned on text embeddings)")
        if isinstance(self.prior, RegressionPrior):
            with torch.no_grad():
                return {"z": self.prior(text_emb), "nfe": 0, "seconds": 0.0}
        c = text_emb * EMBED_SCALE(self.embed_dim)
        guided = ClassifierFree(self.prior, c, scale)
        res = sample(guided, shape=(c.shape[0], self.embed_dim), solver=solver, steps=steps, denoise=True,
                     generator=generator, device=c.device)
        return {"z": nn.functional.normalize(res.x, dim=1), "nfe": res.nfe, "seconds": res.seconds}

    def decode(self, emb: torch.Tensor, solver: str = "dpm++2m", steps: int = 25, scale: float = 2.0,
               generator: Optional[torch.Generator] = None, x_T: Optional[torch.Tensor] = None) -> Dict[str, object]:
        """Images (B, 1, 8, 8) from unit embeddings (B, D) of the decoder's condition (image
        embeddings, or text embeddings without a prior): {"x", "nfe", "seconds"}. `x_T` fixes
        the starting noise (B, 1, 8, 8)."""
        self._check_embedding("emb", emb)
        c = emb * EMBED_SCALE(self.embed_dim)
        guided = ClassifierFree(self.decoder, c, scale)
        shape = None if x_T is not None else (c.shape[0], 1, 8, 8)
        res = sample(guided, shape=shape, x_T=x_T, solver=solver, steps=steps, denoise=True, generator=generator,
                     device=c.device)
        return {"x": res.x, "nfe": res.nfe, "seconds": res.seconds}

    def generate(self, captions: Sequence[str], prior_solver: str = "dpm++2m", prior_steps: int = 20,
                 prior_scale: float = 1.0, decoder_solver: str = "dpm++2m", decoder_steps: int = 25,
                 decoder_scale: float = 2.0, generator: Optional[torch.Generator] = None) -> UnCLIPResult:
        """One image per caption through the whole chain; each stage with its own solver,
        steps and guidance scale (the prior's are unused for a regression prior or none)."""
        text = self.text_embedding(captions)
        out = UnCLIPResult(x=None, text_embedding=text, image_embedding=None)  # type: ignore[arg-type]
        cond = text
        if self.prior is not None:
            p = self.run_prior(text, prior_solver, prior_steps, prior_scale, generator)
            cond = out.image_embedding = p["z"]
            out.nfe["prior"], out.seconds["prior"] = p["nfe"], p["seconds"]
        d = self.decode(cond, decoder_solver, decoder_steps, decoder_scale, generator)
        out.x = d["x"]
        out.nfe["decoder"], out.seconds["decoder"] = d["nfe"], d["seconds"]
        return out

    def variations(self, x: torch.Tensor, n: int, generator: Optional[torch.Generator] = None,
                   **decode_options) -> torch.Tensor:
        """n decodings of each image's embedding: x (B, 1, 8, 8) -> (B, n, 1, 8, 8)."""
        self._needs_image_decoder("variations")
        n = _checks.integer("n", n, low=1)
        z = self.image_embedding(x).repeat_interleave(n, dim=0)
        return self.decode(z, generator=generator, **decode_options)["x"].reshape(x.shape[0], n, 1, 8, 8)

    def interpolate(self, x_a: torch.Tensor, x_b: torch.Tensor, points: int = 7,
                    generator: Optional[torch.Generator] = None, **decode_options) -> torch.Tensor:
        """Decodings along the slerp between the embeddings of images x_a and x_b (1, 1, 8, 8),
        all from one starting noise: (points, 1, 8, 8)."""
        self._needs_image_decoder("interpolate")
        points = _checks.integer("points", points, low=2)
        za, zb = self.image_embedding(x_a)[0], self.image_embedding(x_b)[0]
        z = nn.functional.normalize(slerp(za, zb, torch.linspace(0, 1, points, device=za.device)), dim=1)
        x_T = torch.randn((1, 1, 8, 8), generator=generator, device=z.device).expand(points, 1, 8, 8).contiguous()
        return self.decode(z, x_T=x_T, **decode_options)["x"]

    def _needs_image_decoder(self, what: str) -> None:
        if self.decoder_condition != "image_embedding":
            raise ValueError(f"{what} decodes image embeddings; this pipeline's decoder is conditioned on text embeddings")

    def _check_embedding(self, name: str, emb: torch.Tensor) -> None:
        d = self.embed_dim
        if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[1] != d or emb.shape[0] == 0:
            raise _checks.fail(name, f"embeddings (B, {d}) (the CLIP model's width)",
                               tuple(emb.shape) if isinstance(emb, torch.Tensor) else emb)

    @classmethod
    def load(cls, clip: CLIP, decoder_dir: Union[str, os.PathLike],
             prior: Union[str, os.PathLike, None] = None, device: Union[str, torch.device, None] = None) -> "UnCLIP":
        """A pipeline from stage files: the decoder's stage folder, and the prior's (a stage
        folder, or a regression prior file), both checked against `clip`."""
        dec = load_stage(decoder_dir, clip, "decoder", device=device)
        pri: Union[ScoreModel, RegressionPrior, None] = None
        if prior is not None:
            prior = Path(prior)
            pri = load_stage(prior, clip, "prior", device=device) if prior.is_dir() else \
                load_regression_prior(prior, clip).to(device)
        return cls(clip.to(device), dec, pri, dec.condition)
