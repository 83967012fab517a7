"""Sample quality on the 8x8 digits: an FID-like Frechet distance in the features of a small
digit classifier trained on the real train split (Inception-v3 plays this role for FID), and an
image grid for looking at samples.

The classifier is independent of the score model: same train split, its own seed, its own
architecture. Its penultimate layer (after ReLU) is the feature space; its test accuracy says
whether those features separate digits at all.
"""
from __future__ import annotations

import torch
from torch import nn

from ..metrics import frechet_distance
from ..plots import image_grid

__all__ = ["DigitClassifier", "train_digit_classifier", "classifier_accuracy", "classifier_frechet", "image_grid"]


class DigitClassifier(nn.Module):
    """Two 3x3 convs, a 2x2 max-pool and two linear layers: (B, 1, 8, 8) -> logits (B, 10).
    `features(x)` is the penultimate activation, (B, feature_dim)."""

    def __init__(self, feature_dim: int = 64, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * 4 * 4, feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_digit_classifier(
    x: torch.Tensor,
    labels: torch.Tensor,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    feature_dim: int = 64,
) -> DigitClassifier:
    """A `DigitClassifier` trained with Adam on images x (N, 1, 8, 8) in [-1, 1] and labels (N,),
    deterministically from `seed` (initialization and batch order). Returned in eval mode,
    without gradients."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DigitClassifier(feature_dim).to(x.device)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator).to(x.device)
        for start in range(0, x.shape[0], batch_size):
            idx = order[start:start + batch_size]
            loss = nn.functional.cross_entropy(net(x[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return net.eval().requires_grad_(False)


@torch.no_grad()
def classifier_accuracy(net: DigitClassifier, x: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of x (N, 1, 8, 8) whose predicted class equals labels (N,)."""
    return float((net(x).argmax(1) == labels).float().mean())


@torch.no_grad()
def classifier_frechet(net: DigitClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    """Frechet distance (squared, as FID) between x (N, 1, 8, 8) and y (M, 1, 8, 8) in the
    classifier's penultimate features, in float64. Both are clipped to the data range [-1, 1]
    first, so that out-of-range samples are judged as images."""
    def features(images: torch.Tensor) -> torch.Tensor:
        return net.features(images.clamp(-1, 1).float()).double()

    return float(frechet_distance(x, y, features=features, batch_size=1000))
