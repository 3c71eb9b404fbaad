"""TimeSformer: space-time attention over frame patches, three schemes.

Paper: Bertasius et al. 2021, "Is Space-Time Attention All You Need for Video Understanding?",
https://arxiv.org/abs/2102.05095. fovea's own implementation from the paper. Each frame of a clip
``(B, C, T, H, W)`` is cut into 16x16 patches (8 x 196 tokens for 8 frames at 224 px), embedded like ViT's, with
a spatial position embedding shared by all frames plus a learned time embedding per frame, and one CLS token.
The attention scheme (Sec. 3, Fig. 1) is the model's ``attention``:

- ``divided`` (T+S, the paper's best): each block first attends over time (each patch with the patches at the same
  position in the other frames), then over space (each patch with the patches and the CLS of its own frame),
  then applies the MLP. The temporal branch has its own norm, attention and an output layer ``temporal_fc``
  that starts at zero, so a block initialised from an image ViT first behaves exactly as the image block.
- ``joint`` (ST): every token attends to every other token of the clip, as ViT over ``1 + T*N`` tokens.
- ``space`` (S): attention only within each frame; the per-frame CLS outputs are averaged. The paper's code
  leaves the time embedding out of this baseline, which makes it blind to frame order; fovea keeps it, so each
  frame's tokens know their time step and the average of the frames' CLS outputs depends on the order.

Token layout: CLS ``(B, 1, D)`` and patches ``(B, T, N, D)``, ``N = H' * W'``.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import calculate_drop_path_rates
from timm.models import build_model_with_cfg, generate_default_cfgs
from torch import nn

from fovea.models.factory import register_video_model
from fovea.models.layers import (
    Attention,
    Block,
    CheckpointedBlocks,
    TubeletEmbed,
    inflate_patch_weight,
    init_transformer_weights,
    resize_pos_grid,
)

__all__ = ["TimeSformer", "ATTENTIONS"]

ATTENTIONS = ("divided", "joint", "space")


class DividedSpaceTimeBlock(Block):
    """Temporal attention, then spatial attention (with the CLS copied into every frame), then the MLP.

    ViT's block (its attention is the spatial one) with a temporal branch in front: a norm, an attention and an
    output layer ``temporal_fc`` that starts at zero.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__(dim, num_heads, mlp_ratio, qkv_bias, drop, attn_drop, drop_path)
        self.temporal_norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.temporal_attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.temporal_fc = nn.Linear(dim, dim)

    def forward(self, cls: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``cls`` ``(B, 1, D)`` and ``patches`` ``(B, T, N, D)`` through one block."""
        across_time = patches.transpose(1, 2)  # (B, N, T, D): each position's patches over time
        temporal = self.temporal_fc(self.temporal_attn(self.temporal_norm1(across_time)))
        patches = patches + self.drop_path1(temporal).transpose(1, 2)

        frames = patches.shape[1]
        tokens = torch.cat([cls.unsqueeze(1).expand(-1, frames, -1, -1), patches], dim=2)  # (B, T, 1 + N, D)
        spatial = self.attn(self.norm1(tokens))
        cls = cls + self.drop_path1(spatial[:, :, 0].mean(dim=1, keepdim=True))  # the frames' CLS updates, averaged
        patches = patches + self.drop_path1(spatial[:, :, 1:])

        batch, _, num_patches, dim = patches.shape
        tokens = torch.cat([cls, patches.reshape(batch, frames * num_patches, dim)], dim=1)
        tokens = tokens + self.drop_path2(self.mlp(self.norm2(tokens)))
        return tokens[:, :1], tokens[:, 1:].view(batch, frames, num_patches, dim)


class TimeSformer(CheckpointedBlocks, nn.Module):
    """A TimeSformer with ``attention`` = ``divided``, ``joint`` or ``space``.

    Args:
        attention: the space-time attention scheme.
        num_classes: classifier outputs (0 = features only).
        num_frames: clip length ``T``.
        img_size: clip side; a multiple of ``patch_size``.
        patch_size: patch side (patches are per frame).
        in_chans: input channels.
        embed_dim: token width ``D``.
        depth: blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over ``D``.
        qkv_bias: bias on the Q/K/V projections.
        drop_rate: dropout after embeddings, in MLPs and before the classifier.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth, rising linearly over the blocks.
        stem_widths: a 3D conv stem in place of the linear patch projection (see ``TubeletEmbed``).
    """

    def __init__(
        self,
        attention: str = "divided",
        num_classes: int = 400,
        num_frames: int = 8,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        stem_widths: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
        self.attention, self.num_classes, self.num_frames = attention, num_classes, num_frames
        self.num_features = self.embed_dim = embed_dim
        # a 1 x p x p tubelet is a 2D patch embedding applied to every frame
        self.patch_embed = TubeletEmbed(num_frames, img_size, patch_size, 1, in_chans, embed_dim, stem_widths)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, embed_dim))
        self.time_embed = nn.Parameter(torch.zeros(1, num_frames, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        block_args = dict(mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate)
        rates = calculate_drop_path_rates(drop_path_rate, depth)
        block = DividedSpaceTimeBlock if attention == "divided" else Block
        self.blocks = nn.ModuleList(block(embed_dim, num_heads, drop_path=rates[i], **block_args) for i in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        init_transformer_weights(self, (self.pos_embed, self.cls_token, self.time_embed))
        for block in self.blocks:
            if isinstance(block, DividedSpaceTimeBlock):  # the temporal branch starts silent
                nn.init.zeros_(block.temporal_fc.weight)
                nn.init.zeros_(block.temporal_fc.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "time_embed"}

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Clips ``(B, C, T, H, W)`` to the CLS representation ``(B, D)``."""
        patches = self.patch_embed(x)  # (B, T, N, D)
        batch, frames, num_patches, dim = patches.shape
        patches = patches + self.pos_embed[:, None, 1:]  # the same spatial position in every frame
        cls = self.cls_token + self.pos_embed[:, :1]  # (1, 1, D)
        patches = self.pos_drop(patches + self.time_embed[:, :, None])  # (1, T, 1, D): which frame a patch is from
        if self.attention == "divided":
            cls = cls.expand(batch, -1, -1)
            for block in self.blocks:
                cls, patches = self.run_block(block, cls, patches)
            return self.norm(cls)[:, 0]
        if self.attention == "joint":
            tokens = torch.cat([cls.expand(batch, -1, -1), patches.reshape(batch, frames * num_patches, dim)], dim=1)
            for block in self.blocks:
                tokens = self.run_block(block, tokens)
            return self.norm(tokens)[:, 0]
        tokens = torch.cat([cls.expand(batch, frames, 1, dim), patches], dim=2)  # (B, T, 1 + N, D): frame by frame
        for block in self.blocks:
            tokens = self.run_block(block, tokens)
        return self.norm(tokens)[:, :, 0].mean(dim=1)  # each frame's CLS, averaged

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: TimeSformer) -> dict[str, torch.Tensor]:
    """A TimeSformer state dict from a 2D ViT one (timm layout), or a TimeSformer one passed through.

    The patch embedding becomes a 1-frame tubelet, spatial position embeddings are resized to the model's grid,
    and each divided block's temporal attention and norm start as copies of its spatial ones (as the paper's code
    does), with ``temporal_fc`` at zero; the time embedding keeps its initialisation (zeros).
    """
    state_dict = state_dict.get("model", state_dict)
    if state_dict.get("patch_embed.proj.weight", torch.zeros(0)).dim() != 4:
        return state_dict
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("patch_embed.") and model.patch_embed.has_stem:
            continue  # a conv stem has no 2D counterpart (its own initialisation is kept below)
        if key == "patch_embed.proj.weight":
            value = inflate_patch_weight(value, 1)
        elif key == "pos_embed":
            value = torch.cat([value[:, :1], resize_pos_grid(value[:, 1:], model.patch_embed.grid[1:])], dim=1)
        elif key.startswith("head.") and value.shape[0] != model.num_classes:
            continue
        elif key.startswith(("fc_norm", "head_drop")):
            continue
        out[key] = value
        if model.attention == "divided" and key.startswith("blocks.") and (".attn." in key or ".norm1." in key):
            temporal = key.replace(".attn.", ".temporal_attn.").replace(".norm1.", ".temporal_norm1.")
            out[temporal] = value.clone()
    for key, value in model.state_dict().items():
        if key == "time_embed" or ".temporal_fc." in key:
            out[key] = torch.zeros_like(value)
    if model.patch_embed.has_stem:
        out.update({f"patch_embed.{k}": v.detach().clone() for k, v in model.patch_embed.state_dict().items()})
    return out


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 400,
        "input_size": (3, 224, 224),
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "timesformer_base_8x224_divided": _cfg(),
        "timesformer_base_8x224_joint": _cfg(),
        "timesformer_base_8x224_space": _cfg(),
        "timesformer_hr_16x448": _cfg(input_size=(3, 448, 448)),
        "timesformer_large_96x224": _cfg(),
        "timesformer_micro_divided": _cfg(input_size=(3, 32, 32)),
        "timesformer_micro_joint": _cfg(input_size=(3, 32, 32)),
        "timesformer_micro_space": _cfg(input_size=(3, 32, 32)),
        "timesformer_micro_convstem_divided": _cfg(input_size=(3, 32, 32), first_conv="patch_embed.stem.0"),
    }
)


def _create(name: str, pretrained: bool, **kwargs: Any) -> TimeSformer:
    return build_model_with_cfg(TimeSformer, name, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


_BASE = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, num_frames=8, img_size=224)
# 8 frames of 32 px in 4x4 patches: 8 x 64 tokens, width 96, 4 blocks
_MICRO = dict(patch_size=4, embed_dim=96, depth=4, num_heads=4, num_frames=8, img_size=32)


@register_video_model
def timesformer_base_8x224_divided(pretrained: bool = False, **kwargs: Any) -> TimeSformer:
    """TimeSformer, divided space-time attention, 8 frames at 224 px: 121.4M parameters, 196 GMACs per view."""
    return _create("timesformer_base_8x224_divided", pretrained, **{**_BASE, "attention": "divided", **kwargs})


@register_video_model
def timesformer_base_8x224_joint(pretrained: bool = False, **kwargs: Any) -> TimeSformer:
    """TimeSformer, joint space-time attention (ViT-B over all 1569 tokens): 86.1M parameters."""
    return _create("timesformer_base_8x224_joint", pretrained, **{**_BASE, "attention": "joint", **kwargs})


@register_video_model
def timesformer_base_8x224_space(pretrained: bool = False, **kwargs: Any) -> TimeSformer:
    """TimeSformer, space-only attention: ViT-B on every frame, CLS averaged over frames."""
    return _create("timesformer_base_8x224_space", pretrained, **{**_BASE, "attention": "space", **kwargs})


@register_video_model
def timesformer_hr_16x448(pretrained: bool = False, **kwargs: Any) -> TimeSformer:
    """TimeSformer-HR: divided attention, 16 frames at 448 px (28 x 28 patches per frame)."""
    return _create("timesformer_hr_16x448", pretrained, **{**_BASE, "num_frames": 16, "img_size": 448, **kwargs})


@register_video_model
def timesformer_large_96x224(pretrained: bool = False, **kwargs: Any) -> TimeSformer:
    """TimeSformer-L: divided attention, 96 frames at 224 px (the paper's long-range model)."""
    return _create("timesformer_large_96x224", pretrained, **{**_BASE, "num_frames": 96, **kwargs})


@register_video_model
def timesformer_micro_divided(pretrained: bool = False, **kwargs: Any) -> TimeSformer:
    """Divided attention at 8 frames of 32 px, width 96, 4 blocks: for tests and the demo set."""
    return _create("timesformer_micro_divided", pretrained, **{**_MICRO, "attention": "divided", **kwargs})


@register_video_model
def timesformer_micro_joint(pretrained: bool = False, **kwargs: Any) -> TimeSformer:
    """Joint attention, micro size."""
    return _create("timesformer_micro_joint", pretrained, **{**_MICRO, "attention": "joint", **kwargs})


@register_video_model
def timesformer_micro_space(pretrained: bool = False, **kwargs: Any) -> TimeSformer:
    """Space-only attention, micro size."""
    return _create("timesformer_micro_space", pretrained, **{**_MICRO, "attention": "space", **kwargs})


@register_video_model
def timesformer_micro_convstem_divided(pretrained: bool = False, **kwargs: Any) -> TimeSformer:
    """Divided attention at 8 frames of 32 px over 8x8 patches from a three-layer 3D conv stem: the demo preset.

    16 tokens per frame (a quarter of ``timesformer_micro_divided``'s, so it trains about four times faster on a
    CPU); the stem (Xiao et al. 2021, in 3D) is what lets it learn the demo video set from scratch (RESULTS.md).
    """
    args = {**_MICRO, "patch_size": 8, "stem_widths": (16, 32, 64), "attention": "divided"}
    return _create("timesformer_micro_convstem_divided", pretrained, **{**args, **kwargs})
