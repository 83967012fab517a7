"""A small CLIP for the 8x8 digits (Radford et al. 2021): an image encoder (a small CNN) and a
text encoder (an MLP over word and position embeddings) trained contrastively, with symmetric
InfoNCE and a learned temperature, into one space of unit vectors.

Many images share a caption, so a batch holds several pairs of one caption: `info_nce` counts
every pair of the same caption as a positive (the target spreads evenly over them), which for
distinct captions is CLIP's loss exactly.

Saved as data, never code (`save_clip` / `load_clip`, through `files`): safetensors tensors and
a JSON configuration (the vocabulary included), with a SHA-256 digest over both, which is also
the model's fingerprint (`clip_digest`) that the later stages record.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import torch
from torch import nn

from .. import _checks
from .captions import DIGIT_WORDS, Tokenizer, caption_index
from .files import read_module, tensor_digest, write_module

__all__ = [
    "ImageEncoder", "TextEncoder", "CLIP", "info_nce", "train_clip", "zero_shot_accuracy", "retrieval_recall",
    "save_clip", "load_clip", "clip_digest", "CLIP_FORMAT",
]

CLIP_FORMAT = "scoresde.unclip.clip/1"
_MAX_WIDTH = 4096


class ImageEncoder(nn.Module):
    """(B, 1, 8, 8) -> (B, embed_dim): two 3x3 convs, a 2x2 max-pool and two linear layers."""

    def __init__(self, embed_dim: int, width: int = 32, hidden: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(2 * width * 16, hidden), nn.ReLU(), nn.Linear(hidden, embed_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TextEncoder(nn.Module):
    """Token ids (B, L) -> (B, embed_dim): word plus position embeddings, concatenated over the
    L positions, then a two-layer MLP (the captions are at most a few words long)."""

    def __init__(self, vocab_size: int, max_words: int, embed_dim: int, width: int = 32, hidden: int = 128):
        super().__init__()
        self.words = nn.Embedding(vocab_size, width)
        self.positions = nn.Parameter(torch.randn(max_words, width) * 0.1)
        self.mlp = nn.Sequential(nn.Linear(max_words * width, hidden), nn.ReLU(), nn.Linear(hidden, embed_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.words(tokens) + self.positions
        return self.mlp(h.flatten(1))


class CLIP(nn.Module):
    """Image and text encoders into unit vectors of width `embed_dim`, and the learned
    temperature: logits = exp(logit_scale) * cos (clamped to at most 100, as CLIP does).

    `encode_image(x)` takes images (B, 1, 8, 8) in [-1, 1]; `encode_text(captions)` takes a list
    of caption strings (tokenized with the model's own `tokenizer`); both return (B, embed_dim)
    unit vectors."""

    def __init__(self, vocabulary: Sequence[str], max_words: int, embed_dim: int = 32, width: int = 32,
                 hidden: int = 128):
        super().__init__()
        self.tokenizer = Tokenizer(vocabulary, max_words)
        embed_dim = _checks.at_most("embed_dim", _checks.integer("embed_dim", embed_dim, low=2), _MAX_WIDTH)
        width = _checks.at_most("width", _checks.integer("width", width, low=1), _MAX_WIDTH)
        hidden = _checks.at_most("hidden", _checks.integer("hidden", hidden, low=1), _MAX_WIDTH)
        self.config = dict(vocabulary=list(self.tokenizer.vocabulary), max_words=self.tokenizer.max_words,
                           embed_dim=embed_dim, width=width, hidden=hidden)
        self.embed_dim = embed_dim
        self.image_encoder = ImageEncoder(embed_dim, width, hidden)
        self.text_encoder = TextEncoder(len(self.tokenizer), self.tokenizer.max_words, embed_dim, width, hidden)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        _checks.tensor("x", x, "images (B, 1, 8, 8)", min_ndim=4)
        if tuple(x.shape[1:]) != (1, 8, 8):
            raise _checks.fail("x", "images of shape (B, 1, 8, 8)", tuple(x.shape))
        return nn.functional.normalize(self.image_encoder(x.clamp(-1, 1)), dim=1)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.text_encoder(tokens), dim=1)

    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        device = self.logit_scale.device
        return self.encode_tokens(self.tokenizer.encode(captions).to(device))

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=100.0)


def info_nce(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor,
             groups: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Symmetric InfoNCE of unit embeddings (B, D) paired by row: the mean of the image->text
    and text->image cross-entropies of the logits scale * image_emb @ text_emb.T. With `groups`
    (B,) (e.g. caption ids) every pair of one group is a positive, the target spread evenly over
    them; without, only the diagonal."""
    logits = scale * image_emb @ text_emb.T
    if groups is None:
        target = torch.eye(logits.shape[0], dtype=logits.dtype, device=logits.device)
    else:
        target = (groups[:, None] == groups[None, :]).to(logits.dtype)
    target = target / target.sum(1, keepdim=True)
    loss_i = -(target * logits.log_softmax(1)).sum(1).mean()
    loss_t = -(target.T * logits.T.log_softmax(1)).sum(1).mean()  # target is symmetric for groups
    return (loss_i + loss_t) / 2


def train_clip(x: torch.Tensor, captions: Sequence[str], epochs: int = 40, batch_size: int = 256, lr: float = 2e-3,
               seed: int = 0, embed_dim: int = 32, width: int = 32, hidden: int = 128,
               vocabulary: Optional[Sequence[str]] = None, max_words: Optional[int] = None) -> CLIP:
    """A CLIP trained with Adam (LR decaying as a cosine to 0) on images x (N, 1, 8, 8) and
    their captions (N strings), deterministically from `seed`; in eval mode, no gradients."""
    if len(captions) != x.shape[0]:
        raise ValueError(f"x holds {x.shape[0]} images but {len(captions)} captions were given")
    tok = Tokenizer() if vocabulary is None else Tokenizer(vocabulary)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(tok.vocabulary, max_words or tok.max_words, embed_dim, width, hidden).to(x.device)
    tokens = model.tokenizer.encode(list(captions)).to(x.device)
    groups = torch.tensor([caption_index(c) for c in captions], device=x.device)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    n = x.shape[0]
    total = epochs * math.ceil(n / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 0.5 * (1 + math.cos(math.pi * k / total)))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            loss = info_nce(model.encode_image(x[idx]), model.encode_tokens(tokens[idx]), model.scale(), groups[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval().requires_grad_(False)


@torch.no_grad()
def zero_shot_accuracy(model: CLIP, x: torch.Tensor, labels: torch.Tensor,
                       prompts: Union[str, Sequence[str]] = "a {}") -> float:
    """Digit classification of x (N, 1, 8, 8) by the nearest prompt: `prompts` is a template
    ('a {}' -> 'a seven') or a list of templates, whose text embeddings are averaged per digit
    (prompt ensembling) and renormalized."""
    templates = [prompts] if isinstance(prompts, str) else list(prompts)
    text = torch.stack([model.encode_text([t.format(w) for w in DIGIT_WORDS]) for t in templates]).mean(0)
    text = nn.functional.normalize(text, dim=1)
    pred = (model.encode_image(x) @ text.T).argmax(1)
    return float((pred == labels.to(pred.device)).float().mean())


@torch.no_grad()
def retrieval_recall(model: CLIP, x: torch.Tensor, captions: Sequence[str], ks: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """Text-to-image retrieval among the N images x (N, 1, 8, 8) with their captions.

    "caption": each distinct caption queries all N images; a hit at k is a top-k image that
    carries that caption. "pair": each image's caption queries; a hit is that image itself in
    the top k. Each recall comes with its chance level, the expected recall of a random
    ranking: 1 - C(N - n, k) / C(N, k) for a query with n relevant images."""
    n = x.shape[0]
    image = model.encode_image(x)
    ids = torch.tensor([caption_index(c) for c in captions], device=image.device)
    distinct = sorted(set(ids.tolist()))
    first = {c: captions[int((ids == c).nonzero()[0])] for c in distinct}
    text = model.encode_text([first[c] for c in distinct])
    rank = (text @ image.T).argsort(1, descending=True)  # (Q, N)
    out: Dict[str, float] = {"queries_caption": len(distinct), "queries_pair": n, "images": n}
    relevant = torch.stack([ids == c for c in distinct])  # (Q, N)
    pair_text = text[torch.tensor([distinct.index(int(c)) for c in ids.tolist()], device=text.device)]
    pair_rank = (pair_text @ image.T).argsort(1, descending=True)
    for k in ks:
        top = rank[:, :k]
        hits = relevant.gather(1, top).any(1).float()
        out[f"caption_recall@{k}"] = float(hits.mean())
        counts = relevant.sum(1).tolist()
        out[f"caption_chance@{k}"] = float(sum(_chance(n, m, k) for m in counts) / len(counts))
        own = (pair_rank[:, :k] == torch.arange(n, device=image.device)[:, None]).any(1).float()
        out[f"pair_recall@{k}"] = float(own.mean())
        out[f"pair_chance@{k}"] = min(k, n) / n
    return out


def _chance(n: int, m: int, k: int) -> float:
    """P(at least one of m relevant items among the first k of a random ordering of n)."""
    if k >= n:
        return 1.0 if m else 0.0
    return 1.0 - math.comb(n - m, k) / math.comb(n, k)


# ---- saving ------------------------------------------------------------------------------------
def clip_digest(model: CLIP) -> str:
    """The SHA-256 of a CLIP model's configuration and weights: its fingerprint, which the
    prior and decoder stages record and check."""
    return tensor_digest(CLIP_FORMAT, model.config, model.state_dict())


def save_clip(model: CLIP, path: Union[str, os.PathLike]) -> Path:
    """Write `model` to `path` (safetensors with the JSON configuration and digest) atomically."""
    if not isinstance(model, CLIP):
        raise _checks.fail("model", "a scoresde.unclip.CLIP", type(model).__name__)
    return write_module(model, CLIP_FORMAT, model.config, path)


def load_clip(path: Union[str, os.PathLike], device: Union[str, torch.device, None] = None) -> CLIP:
    """The CLIP model saved at `path` by `save_clip`, in eval mode; refuses a file that is not
    one, an edited or truncated one, and tensors that do not fit the configuration."""
    return read_module(path, CLIP_FORMAT, CLIP, ("vocabulary", "max_words", "embed_dim", "width", "hidden")).to(device)
