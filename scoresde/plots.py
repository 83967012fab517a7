"""Pictures of samples: `image_grid` tiles single-channel images into one tensor, `picture`
draws (samples, title) panels into a PNG (an image grid, a 1-D histogram or a 2-D scatter) with
matplotlib (the `plot` extra), imported only when a picture is drawn."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import torch

__all__ = ["image_grid", "picture"]


def image_grid(x: torch.Tensor, nrow: Optional[int] = None, pad: int = 1, pad_value: float = 1.0) -> torch.Tensor:
    """Tile single-channel images x (N, 1, H, W) into one (rows (H + pad) + pad, nrow (W + pad)
    + pad) tensor, nrow images per row (default ceil(sqrt(N))), separated by `pad_value`."""
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"x must have shape (N, 1, H, W); got {tuple(x.shape)}")
    n, _, h, w = x.shape
    nrow = nrow or max(1, int(torch.tensor(float(n)).sqrt().ceil()))
    rows = -(-n // nrow)
    grid = x.new_full((rows * (h + pad) + pad, nrow * (w + pad) + pad), pad_value)
    for i in range(n):
        r, c = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top:top + h, left:left + w] = x[i, 0]
    return grid


def picture(path: Path, *panels: Tuple[torch.Tensor, str]) -> None:
    """(samples, title) panels side by side in one PNG at `path`: an image grid for (N, 1, H, W)
    (the first 100), a histogram for 1-D data, else a scatter of the first two coordinates."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("pictures are drawn with matplotlib: pip install 'scoresde[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = panels[0][0].ndim == 4 and panels[0][0].shape[1] == 1
    dims = panels[0][0][0].numel()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.5 if images else 4.2), squeeze=False,
                             sharex=True, sharey=dims > 1)
    for ax, (x, title) in zip(axes[0], panels):
        if images:
            ax.imshow(image_grid(x[:100].clamp(-1, 1), pad_value=1.0).numpy(), cmap="gray_r", vmin=-1, vmax=1)
            ax.axis("off")
        elif dims == 1:
            ax.hist(x.reshape(len(x)).numpy(), bins=80, density=True)
        else:
            flat = x.reshape(len(x), -1)
            ax.scatter(flat[:, 0].numpy(), flat[:, 1].numpy(), s=2, alpha=0.5)
            ax.set_aspect("equal", adjustable="box")
        ax.set_title(title + ("" if images or dims <= 2 else " (first 2 coordinates)"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
