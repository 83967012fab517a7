"""The 8x8 handwritten digits bundled with scikit-learn (UCI optical digits test set, 1797
images, 16 grey levels). Nothing is downloaded: the data ships inside scikit-learn."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import _checks

__all__ = ["load_digits", "digits_split_indices", "hash_order", "DIGITS_TRAIN_SIZE", "DIGITS_TEST_SIZE", "DIGITS_SPLITS"]

DIGITS_TRAIN_SIZE, DIGITS_TEST_SIZE = 1500, 297
DIGITS_SPLITS = ("train", "test", "all")
_SPLIT_SEED = 20240531


def _splitmix64(x: int) -> int:
    """One SplitMix64 output (Steele et al. 2014): a fixed, library-independent integer hash."""
    mask = (1 << 64) - 1
    x = (x + 0x9E3779B97F4A7C15) & mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


def hash_order(n: int, seed: int) -> torch.Tensor:
    """A fixed permutation of range(n), (n,) int64: indices sorted by the SplitMix64 hash of
    (seed * n + index), so it depends on no library's RNG and never changes."""
    return torch.tensor(sorted(range(n), key=lambda i: _splitmix64(seed * n + i)), dtype=torch.long)


def digits_split_indices(split: str, total: int = DIGITS_TRAIN_SIZE + DIGITS_TEST_SIZE) -> torch.Tensor:
    """Indices into scikit-learn's digits for `split`, shape (N,) int64. The permutation orders
    images by a SplitMix64 hash of (fixed seed, index), so it depends on no library's RNG and
    never changes: train = the first 1500, test = the other 297."""
    _checks.choice("split", split, DIGITS_SPLITS)
    total = _checks.integer("total", total, low=DIGITS_TRAIN_SIZE + 1)
    order = hash_order(total, _SPLIT_SEED)
    if split == "all":
        return torch.arange(total)
    return order[:DIGITS_TRAIN_SIZE] if split == "train" else order[DIGITS_TRAIN_SIZE:]


def load_digits(
    split: str = "train", dtype: torch.dtype = torch.float32, device: Optional[torch.device] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(images, labels): images (N, 1, 8, 8) scaled from grey levels 0..16 to [-1, 1] by
    x / 8 - 1, labels (N,) int64 in 0..9. N = 1500 ("train"), 297 ("test") or 1797 ("all",
    in scikit-learn's order)."""
    _checks.choice("split", split, DIGITS_SPLITS)
    _checks.floating_dtype("dtype", dtype, optional=False)
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as err:  # an optional (dev) dependency
        raise ImportError(
            "the digits data needs scikit-learn (pip install scikit-learn); it ships the images, nothing is downloaded"
        ) from err
    raw = _sk_load_digits()
    images = torch.as_tensor(raw.images, dtype=torch.float64)
    labels = torch.as_tensor(raw.target, dtype=torch.long)
    if images.shape[0] != DIGITS_TRAIN_SIZE + DIGITS_TEST_SIZE:
        raise RuntimeError(f"scikit-learn's digits hold {images.shape[0]} images; expected 1797")
    idx = digits_split_indices(split)
    x = (images[idx] / 8 - 1).unsqueeze(1).to(dtype=dtype, device=device)
    return x, labels[idx].to(device)
