"""Captions of the 8x8 digits from their labels and from attributes measured on each image, and
a word-level tokenizer over that small vocabulary.

Two attributes, each measured on the ink p = (x + 1) / 2 in [0, 1] of an image (1, 8, 8):

- weight: the ink mass, sum(p) / 64 (a thicker stroke puts more ink on the page);
- slant: the shear of the ink's second moments, -cov(row, col) / var(row), with rows counted
  downwards: > 0 when the top of the digit leans to the right ("/"), < 0 to the left.

Each is cut into three levels by two thresholds per digit (the terciles of the train split for
that digit, `Captioner.fit`), so every level holds about a third of every digit, and the caption
reads `a [thin|thick] <digit> [slanted left|slanted right]` (the middle level adds no words):
10 x 3 x 3 = 90 captions, shared by many images, many per label. `held_out_combinations` names
one (weight, slant) combination per digit that training never sees.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .. import _checks

__all__ = [
    "DIGIT_WORDS", "ATTRIBUTES", "LEVEL_WORDS", "VOCABULARY", "ink_mass", "slant", "measure", "Captioner",
    "caption_text", "parse_caption", "Tokenizer", "held_out_combinations", "all_captions", "caption_index",
    "is_held_out", "PAD", "MAX_WORDS",
]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ATTRIBUTES = ("weight", "slant")
#: the words of each attribute level (0 low, 1 middle, 2 high); the middle level says nothing
LEVEL_WORDS = {"weight": ("thin", "", "thick"), "slant": ("slanted left", "", "slanted right")}
PAD = "<pad>"
VOCABULARY = (PAD, "a", "thin", "thick") + DIGIT_WORDS + ("slanted", "left", "right")
MAX_WORDS = 5  # "a thick seven slanted right"


# ---- attributes measured on images ----------------------------------------------------------
def _images(x: torch.Tensor) -> torch.Tensor:
    _checks.tensor("x", x, "(N, 1, H, W) images in [-1, 1]", min_ndim=4)
    if x.ndim != 4 or x.shape[1] != 1:
        raise _checks.fail("x", "images of shape (N, 1, H, W)", tuple(x.shape))
    return ((x.double().clamp(-1, 1) + 1) / 2)[:, 0]


def ink_mass(x: torch.Tensor) -> torch.Tensor:
    """Mean ink per pixel of images x (N, 1, H, W) in [-1, 1] (-1 paper, 1 ink): (N,) in [0, 1]."""
    return _images(x).mean(dim=(1, 2))


def slant(x: torch.Tensor) -> torch.Tensor:
    """Shear -cov(row, col) / var(row) of the ink of x (N, 1, H, W), rows counted downwards:
    (N,), > 0 leaning right ("/"), 0 upright, < 0 leaning left. Blank images give 0."""
    p = _images(x)
    h, w = p.shape[1:]
    rows = torch.arange(h, dtype=p.dtype, device=p.device)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=p.dtype, device=p.device)[None, :].expand(h, w)
    mass = p.sum(dim=(1, 2)).clamp_min(1e-12)
    mr = (p * rows).sum(dim=(1, 2)) / mass
    mc = (p * cols).sum(dim=(1, 2)) / mass
    dr, dc = rows - mr[:, None, None], cols - mc[:, None, None]
    var_r = (p * dr * dr).sum(dim=(1, 2)) / mass
    cov = (p * dr * dc).sum(dim=(1, 2)) / mass
    return torch.where(var_r > 1e-9, -cov / var_r.clamp_min(1e-9), torch.zeros_like(cov))


def measure(x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Every attribute of x (N, 1, H, W): {"weight": ink_mass, "slant": slant}, each (N,) float64."""
    return {"weight": ink_mass(x), "slant": slant(x)}


# ---- caption text -----------------------------------------------------------------------------
def caption_text(label: int, weight: int, slant_level: int) -> str:
    """The caption of a digit `label` with attribute levels (0, 1, 2), e.g. (7, 0, 2) ->
    'a thin seven slanted right'."""
    label = _checks.integer("label", label, low=0, high=9)
    weight = _checks.integer("weight", weight, low=0, high=2)
    slant_level = _checks.integer("slant_level", slant_level, low=0, high=2)
    words = ["a", LEVEL_WORDS["weight"][weight], DIGIT_WORDS[label], LEVEL_WORDS["slant"][slant_level]]
    return " ".join(w for w in words if w)


def parse_caption(caption: str) -> Tuple[int, int, int]:
    """The (label, weight level, slant level) a caption says; the inverse of `caption_text`."""
    words = _words(caption)
    for label in range(10):
        for weight in range(3):
            for level in range(3):
                if caption_text(label, weight, level).split() == words:
                    return label, weight, level
    raise _checks.fail("caption", "of the form 'a [thin|thick] <digit> [slanted left|slanted right]'", caption)


def all_captions() -> List[str]:
    """The 90 captions, label-major: index = 9 label + 3 weight + slant."""
    return [caption_text(d, w, s) for d in range(10) for w in range(3) for s in range(3)]


def held_out_combinations() -> List[Tuple[int, int, int]]:
    """One (label, weight, slant) combination per digit kept out of training: never the plain
    caption 'a <digit>' and a different combination for neighbouring digits, so every word is
    still seen in training with other digits and levels."""
    combos = [(w, s) for w in range(3) for s in range(3) if (w, s) != (1, 1)]  # 8 attribute combinations
    return [(d, *combos[(3 * d + 1) % len(combos)]) for d in range(10)]


@dataclass
class Captioner:
    """Captions from labels and measured attributes, with per-digit level thresholds.

    `thresholds[attribute]` is a (10, 2) float64 tensor: for digit d, values below
    thresholds[a][d, 0] are level 0, values from thresholds[a][d, 1] on are level 2."""

    thresholds: Dict[str, torch.Tensor]

    def __post_init__(self):
        if not isinstance(self.thresholds, dict) or set(self.thresholds) != set(ATTRIBUTES):
            raise _checks.fail("thresholds", f"a dict with keys {', '.join(ATTRIBUTES)}", self.thresholds)
        for name in ATTRIBUTES:
            t = torch.as_tensor(self.thresholds[name], dtype=torch.float64)
            if t.shape != (10, 2) or not bool(torch.isfinite(t).all()) or bool((t[:, 0] > t[:, 1]).any()):
                raise _checks.fail(f"thresholds[{name!r}]", "a finite (10, 2) tensor with low <= high in each row",
                                   tuple(t.shape))
            self.thresholds[name] = t

    @classmethod
    def fit(cls, x: torch.Tensor, labels: torch.Tensor) -> "Captioner":
        """Terciles of each attribute per digit on images x (N, 1, 8, 8) with labels (N,)."""
        values = measure(x)
        labels = labels.cpu()
        thresholds = {}
        for name in ATTRIBUTES:
            rows = []
            for d in range(10):
                v = values[name].cpu()[labels == d]
                if v.numel() < 3:
                    raise ValueError(f"Captioner.fit needs at least 3 images of every digit; digit {d} has {v.numel()}")
                rows.append(torch.quantile(v, torch.tensor([1 / 3, 2 / 3], dtype=torch.float64)))
            thresholds[name] = torch.stack(rows)
        return cls(thresholds)

    def levels(self, x: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The level (0, 1, 2) of every attribute of x (N, 1, 8, 8) read against the thresholds
        of its digit labels (N,): {attribute: (N,) int64}."""
        values = measure(x)
        labels = _labels(labels, x.shape[0])
        out = {}
        for name in ATTRIBUTES:
            t = self.thresholds[name].to(values[name].device)[labels]
            v = values[name]
            out[name] = (v >= t[:, 0]).long() + (v >= t[:, 1]).long()
        return out

    def captions(self, x: torch.Tensor, labels: torch.Tensor) -> List[str]:
        """One caption per image of x (N, 1, 8, 8) with labels (N,)."""
        lv = self.levels(x, labels)
        return [caption_text(int(d), int(w), int(s))
                for d, w, s in zip(labels.tolist(), lv["weight"].tolist(), lv["slant"].tolist())]

    def to_json(self) -> str:
        return json.dumps({k: v.tolist() for k, v in self.thresholds.items()})

    @classmethod
    def from_json(cls, text: str) -> "Captioner":
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise _checks.fail("captioner", "a JSON object of thresholds", text[:40])
        return cls({k: torch.tensor(v, dtype=torch.float64) for k, v in raw.items()})


def _labels(labels: torch.Tensor, n: int) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,) or labels.is_floating_point():
        raise _checks.fail("labels", f"an integer tensor of shape ({n},)",
                           tuple(labels.shape) if isinstance(labels, torch.Tensor) else labels)
    if n and (int(labels.min()) < 0 or int(labels.max()) > 9):
        raise _checks.fail("labels", "digit labels in 0..9", f"values in [{int(labels.min())}, {int(labels.max())}]")
    return labels.long()


# ---- tokenizer --------------------------------------------------------------------------------
def _words(caption: str) -> List[str]:
    if not isinstance(caption, str):
        raise _checks.fail("caption", "a string", caption)
    words = caption.lower().split()
    if not words:
        raise _checks.fail("caption", "a non-empty caption such as 'a thin seven slanted right'", caption)
    return words


class Tokenizer:
    """Word-level tokens over `VOCABULARY`: a caption -> (MAX_WORDS,) int64 ids, padded with 0
    (the id of "<pad>"). Words are lower-cased and split on white space."""

    def __init__(self, vocabulary: Sequence[str] = VOCABULARY, max_words: int = MAX_WORDS):
        vocabulary = tuple(vocabulary)
        if not vocabulary or vocabulary[0] != PAD or len(set(vocabulary)) != len(vocabulary):
            raise _checks.fail("vocabulary", f"distinct words starting with {PAD!r}", vocabulary)
        self.vocabulary = vocabulary
        self.max_words = _checks.integer("max_words", max_words, low=1)
        self.ids = {w: i for i, w in enumerate(vocabulary)}

    def __len__(self) -> int:
        return len(self.vocabulary)

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """Token ids (B, max_words) of B captions; unknown words, empty or too long captions
        are refused naming them."""
        if isinstance(captions, str) or not isinstance(captions, (list, tuple)) or not captions:
            raise _checks.fail("captions", "a non-empty list of strings", captions)
        rows: List[List[int]] = []
        for caption in captions:
            words = _words(caption)
            unknown = sorted({w for w in words if w not in self.ids or w == PAD})
            if unknown:
                raise _checks.fail("caption", f"words of the vocabulary (unknown: {', '.join(unknown)})", caption)
            if len(words) > self.max_words:
                raise _checks.fail("caption", f"at most {self.max_words} words", caption)
            rows.append([self.ids[w] for w in words] + [0] * (self.max_words - len(words)))
        return torch.tensor(rows, dtype=torch.long)

    def decode(self, tokens: torch.Tensor) -> List[str]:
        """The captions of token ids (B, max_words); padding is dropped."""
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.is_floating_point():
            raise _checks.fail("tokens", "an integer tensor (B, max_words)",
                               tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else tokens)
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= len(self)):
            raise _checks.fail("tokens", f"ids in [0, {len(self)})", f"values in [{int(tokens.min())}, {int(tokens.max())}]")
        return [" ".join(self.vocabulary[i] for i in row if i != 0) for row in tokens.tolist()]


def caption_index(caption: str) -> int:
    """The index of a caption in `all_captions()`."""
    d, w, s = parse_caption(caption)
    return 9 * d + 3 * w + s


def is_held_out(caption: str, held_out: Optional[Sequence[Tuple[int, int, int]]] = None) -> bool:
    """Whether the caption's (label, weight, slant) is a held-out combination."""
    return parse_caption(caption) in set(held_out if held_out is not None else held_out_combinations())
