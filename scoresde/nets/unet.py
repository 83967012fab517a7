"""A small, size-agnostic U-Net for images (Ho et al. 2020's layout, without attention)."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

from .. import _checks
from .embeddings import LabelEmbedding, embed_time_and_label, make_time_embedding

__all__ = ["UNet"]


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, plus the projected embedding, GroupNorm-SiLU-dropout-conv, plus a
    skip connection. The second conv starts at zero, so every block starts as the identity."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(nn.functional.silu(self.norm2(h))))
        return self.skip(x) + h


class UNet(nn.Module):
    """Time-conditional U-Net: x (B, C, H, W), t (B,) -> (B, C, H, W), for any H, W divisible
    by 2^(len(channel_mults) - 1).

    Args:
        in_channels: C.
        base_channels: width of the first level; level i has base_channels * channel_mults[i].
        channel_mults: one entry per resolution; a stride-2 conv halves H, W between levels.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        groups: GroupNorm groups; must divide every level's width.
        time_embedding: "fourier" or "sinusoidal" (`scoresde.nets.embeddings`); the embedding
            (width 4 base_channels) shifts every residual block.
        num_classes: if set, `forward` accepts integer labels `y` of shape (B,) in
            [0, num_classes]; `num_classes` itself (and y=None) is the null label used by
            classifier-free guidance.
        dropout: dropout rate inside residual blocks.
        fourier_scale: standard deviation of the Fourier frequencies.
        cond_dim: if set, `forward` accepts `cond` of shape (B, cond_dim), a continuous
            condition (e.g. a CLIP embedding) projected without bias and added to the time
            embedding, as GLIDE does; cond=None is exactly a zero vector, the null condition of
            classifier-free guidance. Labels and a vector may be given together.

    Parameter counts (measured): the default `UNet()` (1 channel, 32 base, mults (1, 2),
    1 block) 634,273 (635,681 with num_classes=10); `UNet(3)` 635,427; cond_dim adds
    cond_dim * 4 base_channels. The output conv starts at zero.
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        groups: int = 8,
        time_embedding: str = "fourier",
        num_classes: Optional[int] = None,
        dropout: float = 0.0,
        fourier_scale: float = 16.0,
        cond_dim: Optional[int] = None,
    ):
        super().__init__()
        in_channels = _checks.integer("in_channels", in_channels, low=1)
        # upper bounds: an absurd size is refused before anything is allocated
        base_channels = _checks.at_most("base_channels", _checks.integer("base_channels", base_channels, low=1), 4096)
        groups = _checks.integer("groups", groups, low=1)
        num_res_blocks = _checks.at_most("num_res_blocks", _checks.integer("num_res_blocks", num_res_blocks, low=0), 64)
        if num_classes is not None:
            num_classes = _checks.integer("num_classes", num_classes, low=1)
        if cond_dim is not None:
            cond_dim = _checks.at_most("cond_dim", _checks.integer("cond_dim", cond_dim, low=1), 2**24)
        if isinstance(channel_mults, (str, bytes)) or not isinstance(channel_mults, (list, tuple)):
            raise _checks.fail("channel_mults", "a non-empty sequence of integers >= 1", channel_mults)
        channel_mults = [_checks.at_most(f"channel_mults[{i}]", _checks.integer(f"channel_mults[{i}]", m, low=1), 64)
                         for i, m in enumerate(channel_mults)]
        if not channel_mults:
            raise _checks.fail("channel_mults", "a non-empty sequence of integers >= 1", channel_mults)
        _checks.at_most("len(channel_mults)", len(channel_mults), 8, " resolutions")
        fourier_scale = _checks.real("fourier_scale", fourier_scale, low=0, open_low=True)
        widths = [base_channels * m for m in channel_mults]
        if any(w % groups for w in widths):
            raise _checks.fail("groups", f"a divisor of every level width {widths} (base_channels * channel_mults)",
                               groups)
        dropout = _checks.real("dropout", dropout, low=0, high=1, open_high=True)
        self.config = dict(
            in_channels=int(in_channels), base_channels=int(base_channels), channel_mults=channel_mults,
            num_res_blocks=int(num_res_blocks), groups=int(groups), time_embedding=time_embedding,
            num_classes=None if num_classes is None else int(num_classes), dropout=float(dropout),
            fourier_scale=float(fourier_scale),
        )
        if cond_dim is not None:  # absent otherwise, so configs (and checkpoints) of older U-Nets are unchanged
            self.config["cond_dim"] = int(cond_dim)
        self.in_channels = int(in_channels)
        self.num_classes = self.config["num_classes"]
        self.cond_dim = self.config.get("cond_dim")
        self.factor = 2 ** (len(channel_mults) - 1)
        emb_dim = 4 * base_channels
        self.time_embed = nn.Sequential(
            make_time_embedding(time_embedding, base_channels, fourier_scale),
            nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim),
        )
        self.label_embed = LabelEmbedding(num_classes, emb_dim) if num_classes is not None else None
        # no bias: a zero vector adds nothing, so it is the null condition (cond=None)
        self.cond_embed = nn.Linear(cond_dim, emb_dim, bias=False) if cond_dim is not None else None

        def block(i: int, o: int) -> _ResBlock:
            return _ResBlock(i, o, emb_dim, groups, dropout)

        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch = [base_channels], base_channels  # channels of each skip connection
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                self.down.append(block(ch, width))
                ch = width
                skips.append(ch)
            if level < len(widths) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = nn.ModuleList([block(ch, ch), block(ch, ch)])
        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(widths))):
            for _ in range(num_res_blocks + 1):
                self.up.append(block(ch + skips.pop(), width))
                ch = width
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)))
        self.out = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None, cond: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """x (B, C, H, W), t (B,) or scalar, labels y (B,), vector condition cond (B, cond_dim)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, C, H, W) with C = {self.in_channels}; got {tuple(x.shape)}")
        if x.shape[2] % self.factor or x.shape[3] % self.factor:
            raise ValueError(
                f"H and W must be divisible by 2^(len(channel_mults) - 1) = {self.factor}; got {tuple(x.shape[2:])}"
            )
        b = x.shape[0]
        emb = embed_time_and_label(self.time_embed, self.label_embed, t, y, b, x.device, "UNet")
        if cond is not None:
            if self.cond_embed is None:
                raise _checks.fail("cond", "None (the UNet was built without cond_dim)", type(cond).__name__)
            accepted = f"(B, cond_dim) = ({b}, {self.cond_dim})"
            _checks.tensor("cond", cond, accepted, min_ndim=2, check_finite=False)
            if cond.shape != (b, self.cond_dim):
                raise _checks.fail("cond", f"a real floating-point tensor {accepted}", tuple(cond.shape))
            emb = emb + self.cond_embed(cond.to(emb.dtype))
        emb = nn.functional.silu(emb)
        h = self.conv_in(x)
        hs: List[torch.Tensor] = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, _ResBlock) else layer(h)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.up:
            if isinstance(layer, _ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.out(h)
