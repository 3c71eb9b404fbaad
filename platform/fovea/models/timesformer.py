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
- ``space`` (S): attention only within each frame, frames pooled at the end, in one of two variants
  (``space_variant``):

  - ``paper``, as the paper's code (facebookresearch/TimeSformer, ``timesformer/models/vit.py``, attention type
    ``space_only``): the model has no time embedding at all (the parameter does not exist, so its published
    files have none), and after the last block the tokens are averaged over the frames *before* the final norm,
    whose CLS is the feature. It is blind to frame order: a ViT on every frame.
  - ``timed``, fovea's earlier variant: a time embedding is added to every frame's patches, and each frame's CLS
    is normed and then averaged, so the output depends on the frame order.

  Which preset follows which: ``timesformer_base_8x224_space`` and ``timesformer_micro_space`` follow ``paper``
  (the released and the transformers space-only weights compute as they were trained, and the micro preset is the
  base one made small; no demo run uses it); ``timed`` stays available as ``space_variant="timed"`` (it was the
  only space-only behaviour before). ``space_variant`` means nothing to divided and joint attention.

Token layout: CLS ``(B, 1, D)`` and patches ``(B, T, N, D)``, ``N = H' * W'``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
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

__all__ = ["TimeSformer", "ATTENTIONS", "SPACE_VARIANTS"]

ATTENTIONS = ("divided", "joint", "space")
SPACE_VARIANTS = ("paper", "timed")


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
        space_variant: space-only attention as the paper's code has it (``paper``: no time embedding, the frames'
            tokens averaged before the final norm) or fovea's earlier variant (``timed``: a time embedding, each
            frame's normed CLS averaged); see the module's docstring. Ignored by divided and joint attention.
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
        space_variant: str = "paper",
    ) -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
        if space_variant not in SPACE_VARIANTS:
            raise ValueError(f"space_variant must be one of {', '.join(SPACE_VARIANTS)}, got {space_variant!r}")
        self.attention, self.num_classes, self.num_frames = attention, num_classes, num_frames
        self.space_variant = space_variant
        self.num_features = self.embed_dim = embed_dim
        # a 1 x p x p tubelet is a 2D patch embedding applied to every frame
        self.patch_embed = TubeletEmbed(num_frames, img_size, patch_size, 1, in_chans, embed_dim, stem_widths)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, embed_dim))
        # the paper's space-only model has no time embedding, so its files have none to load
        paper_space = attention == "space" and space_variant == "paper"
        self.time_embed = None if paper_space else nn.Parameter(torch.zeros(1, num_frames, embed_dim))
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
        embeddings = (self.pos_embed, self.cls_token, self.time_embed)
        init_transformer_weights(self, [param for param in embeddings if param is not None])
        for block in self.blocks:
            if isinstance(block, DividedSpaceTimeBlock):  # the temporal branch starts silent
                nn.init.zeros_(block.temporal_fc.weight)
                nn.init.zeros_(block.temporal_fc.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"} | ({"time_embed"} if self.time_embed is not None else set())

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Clips ``(B, C, T, H, W)`` to the CLS representation ``(B, D)``."""
        patches = self.patch_embed(x)  # (B, T, N, D)
        batch, frames, num_patches, dim = patches.shape
        patches = patches + self.pos_embed[:, None, 1:]  # the same spatial position in every frame
        cls = self.cls_token + self.pos_embed[:, :1]  # (1, 1, D)
        if self.time_embed is not None:
            patches = patches + self.time_embed[:, :, None]  # (1, T, 1, D): which frame a patch is from
        patches = self.pos_drop(patches)
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
        if self.space_variant == "paper":
            # the paper's code averages every token over the frames, norms them and keeps the CLS; the norm acts on
            # each token alone, so averaging only the frames' CLS tokens gives the same feature
            return self.norm(tokens[:, :, 0].mean(dim=1))
        return self.norm(tokens)[:, :, 0].mean(dim=1)  # each frame's normed CLS, averaged

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def is_image_vit_state(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict (fovea's keys) is a 2D ViT's: a 4-D patch kernel and nothing temporal.

    A TimeSformer file with a 2D patch kernel (the paper's repository builds its patch embedding as a Conv2d) has a
    time embedding or temporal attention, and must not be taken for one: inflating it would overwrite both.
    """
    patch = state_dict.get("patch_embed.proj.weight")
    if patch is None or patch.dim() != 4 or "time_embed" in state_dict:
        return False
    return not any(".temporal_" in key for key in state_dict)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: TimeSformer) -> dict[str, torch.Tensor]:
    """A TimeSformer state dict (fovea's keys) fitted to ``model``, or one made from a 2D ViT's (timm layout).

    A TimeSformer's: a 2D patch kernel becomes a 1-frame tubelet, the spatial position embeddings are resized to
    the model's grid and the time embedding to its clip length; anything else is left to the strict key check.
    A 2D ViT's (``is_image_vit_state``): the patch embedding becomes a 1-frame tubelet, spatial position embeddings
    are resized, and each divided block's temporal attention and norm start as copies of its spatial ones (as the
    paper's code does), with ``temporal_fc`` and the time embedding (where the model has one) at zero.
    """
    state_dict = state_dict.get("model", state_dict)
    if is_image_vit_state(state_dict):
        return _from_image_vit(state_dict, model)
    out = dict(state_dict)
    patch = out.get("patch_embed.proj.weight")
    if patch is not None and patch.dim() == 4 and not model.patch_embed.has_stem:
        out["patch_embed.proj.weight"] = patch.unsqueeze(2)
    pos = out.get("pos_embed")
    if pos is not None and pos.dim() == 3 and pos.shape[1] != model.pos_embed.shape[1]:
        out["pos_embed"] = torch.cat([pos[:, :1], resize_pos_grid(pos[:, 1:], model.patch_embed.grid[1:])], dim=1)
    time = out.get("time_embed")
    if time is not None and model.time_embed is not None and time.dim() == 3 and time.shape[1] != model.num_frames:
        out["time_embed"] = resize_time_embed(time, model.num_frames)
    return out


def resize_time_embed(time_embed: torch.Tensor, frames: int) -> torch.Tensor:
    """A time embedding ``(1, T, D)`` for ``frames`` steps: nearest-neighbour in time, as the paper's code resizes
    it when it loads weights for another clip length (``timesformer/models/helpers.py``, ``load_pretrained``)."""
    resized = F.interpolate(time_embed.transpose(1, 2).float(), size=frames, mode="nearest")
    return resized.transpose(1, 2).to(time_embed.dtype)


def _from_image_vit(state_dict: dict[str, torch.Tensor], model: TimeSformer) -> dict[str, torch.Tensor]:
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
    """TimeSformer, space-only attention as the paper's code: ViT-B on every frame, no time embedding, the frames'
    tokens averaged before the final norm (``space_variant="timed"`` for fovea's earlier, frame-order aware one)."""
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
    """Space-only attention, micro size, as the paper's code (``space_variant="paper"``: no time embedding)."""
    return _create("timesformer_micro_space", pretrained, **{**_MICRO, "attention": "space", **kwargs})


@register_video_model
def timesformer_micro_convstem_divided(pretrained: bool = False, **kwargs: Any) -> TimeSformer:
    """Divided attention at 8 frames of 32 px over 8x8 patches from a three-layer 3D conv stem: the demo preset.

    16 tokens per frame (a quarter of ``timesformer_micro_divided``'s, so it trains about four times faster on a
    CPU); the stem (Xiao et al. 2021, in 3D) is what lets it learn the demo video set from scratch (RESULTS.md).
    """
    args = {**_MICRO, "patch_size": 8, "stem_widths": (16, 32, 64), "attention": "divided"}
    return _create("timesformer_micro_convstem_divided", pretrained, **{**args, **kwargs})
