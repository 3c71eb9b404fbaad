"""Tubelet embedding (a strided 3D convolution) and the helpers that carry 2D ViT weights over to video models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TubeletEmbed(nn.Module):
    """Non-overlapping ``tubelet_size x patch_size x patch_size`` tubes of a clip, each linearly embedded.

    ``(B, C, T, H, W)`` becomes ``(B, T', H'*W', D)`` with ``T' = T / tubelet_size`` and ``H' = H / patch_size``:
    tokens grouped by time step, so spatial and temporal attention can be had by arranging them.

    With ``stem_widths`` the linear tubelet projection is replaced by a small 3D convolutional stem with the same
    overall stride: one ``3x3x3`` conv + BatchNorm + ReLU per width, each halving H and W (the last one also
    strides time by ``tubelet_size``), then a ``1x1x1`` projection to ``embed_dim``, so ``patch_size`` must be
    ``2 ** len(stem_widths)``. This is the video form of the early-convolution stem of Xiao et al. 2021 ("Early
    Convolutions Help Transformers See Better") that the image demo presets use: on the small demo video set a
    patchify ViViT or TimeSformer does not leave chance level in a CPU budget, the stem one does (RESULTS.md).
    """

    def __init__(
        self,
        num_frames: int = 32,
        img_size: int = 224,
        patch_size: int = 16,
        tubelet_size: int = 2,
        in_chans: int = 3,
        embed_dim: int = 768,
        stem_widths: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        if num_frames % tubelet_size or img_size % patch_size:
            raise ValueError(
                f"num_frames {num_frames} must be a multiple of tubelet_size {tubelet_size}, and img_size "
                f"{img_size} of patch_size {patch_size}"
            )
        self.tubelet_size, self.patch_size = tubelet_size, patch_size
        self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)  # (T', H', W')
        self.kernel = (tubelet_size, patch_size, patch_size)
        self.has_stem = bool(stem_widths)
        self.stem = conv_stem_3d(in_chans, stem_widths, tubelet_size, patch_size) if stem_widths else nn.Identity()
        if stem_widths:
            self.proj = nn.Conv3d(stem_widths[-1], embed_dim, kernel_size=1)
        else:
            self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=self.kernel, stride=self.kernel)

    @property
    def num_patches(self) -> int:
        """Spatial tokens per time step."""
        return self.grid[1] * self.grid[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[2:]) != self.input_size:
            raise ValueError(f"expected clips (B, C, T, H, W) with T, H, W = {self.input_size}, got {tuple(x.shape)}")
        x = self.proj(self.stem(x))  # (B, D, T', H', W')
        return x.flatten(3).permute(0, 2, 3, 1)  # (B, T', H'*W', D)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(g * s for g, s in zip(self.grid, self.kernel, strict=True))


def conv_stem_3d(in_chans: int, widths: tuple[int, ...], tubelet_size: int, patch_size: int) -> nn.Sequential:
    """``3x3x3`` conv + BatchNorm + ReLU per width, each with spatial stride 2; the last one strides time too."""
    if patch_size != 2 ** len(widths) or tubelet_size > 3:
        raise ValueError(
            f"a conv stem of {len(widths)} layers gives patch size {2 ** len(widths)}, not {patch_size}, "
            f"and strides time by at most 3 (tubelet_size {tubelet_size})"
        )
    layers: list[nn.Module] = []
    for index, width in enumerate(widths):
        stride = (tubelet_size if index == len(widths) - 1 else 1, 2, 2)
        layers += [nn.Conv3d(in_chans, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm3d(width)]
        layers.append(nn.ReLU(inplace=True))
        in_chans = width
    return nn.Sequential(*layers)


def inflate_patch_weight(weight: torch.Tensor, tubelet_size: int, method: str = "central") -> torch.Tensor:
    """A 2D patch-embedding kernel ``(D, C, p, p)`` as a 3D tubelet kernel ``(D, C, t, p, p)``.

    ``central`` (ViViT, Arnab et al. 2021, Sec. 3.4) puts the 2D kernel at temporal index ``t // 2`` and zeros
    elsewhere, so at initialisation each tubelet embeds one frame exactly as the image model embedded its patch;
    ``average`` (I3D-style) repeats it over time divided by ``t``, so a static clip embeds as the image does.
    """
    if method == "central":
        inflated = weight.new_zeros(weight.shape[0], weight.shape[1], tubelet_size, *weight.shape[2:])
        inflated[:, :, tubelet_size // 2] = weight
        return inflated
    if method == "average":
        return weight.unsqueeze(2).repeat(1, 1, tubelet_size, 1, 1) / tubelet_size
    raise ValueError(f"unknown inflation {method!r}: expected central or average")


def resize_pos_grid(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Spatial position embeddings ``(1, H*W, D)`` of a square grid resized (bicubic) to ``grid``: ``(1, h*w, D)``."""
    side = int(round(pos.shape[1] ** 0.5))
    if side * side != pos.shape[1]:
        raise ValueError(f"{pos.shape[1]} position embeddings are not a square grid")
    if (side, side) == tuple(grid):
        return pos
    image = pos.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()  # (1, D, H, W)
    image = F.interpolate(image, size=grid, mode="bicubic", align_corners=False)
    return image.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(pos.dtype)
