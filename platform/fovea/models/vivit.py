"""ViViT: A Video Vision Transformer, all four models.

Paper: Arnab et al. 2021, "ViViT: A Video Vision Transformer", https://arxiv.org/abs/2103.15691. fovea's own
implementation from the paper. A clip ``(B, C, T, H, W)`` is cut into non-overlapping tubelets (2x16x16 for the
B/16x2 models: 16 x 14 x 14 = 3136 tokens for 32 frames at 224 px), each linearly embedded (Sec. 3.2), then:

- **Model 1, spatio-temporal attention** (``joint``): one encoder over all tokens plus a CLS token; every token
  attends to every other. The most expensive: attention is quadratic in 3136 tokens.
- **Model 2, factorised encoder** (``fe``): a spatial encoder runs on each time step's tokens with its own CLS;
  the per-step CLS outputs feed a temporal encoder (``temporal_depth`` blocks, 4 in the paper) with another CLS.
- **Model 3, factorised self-attention** (``fsa``): each block attends over space (tokens of one time step),
  then over time (tokens at one spatial position), then applies the MLP. No CLS: the classifier reads the mean
  token.
- **Model 4, factorised dot-product attention** (``fdp``): one attention per block whose heads are split, half
  attending over space and half over time; same parameters as Model 1. No CLS.

Tensor layout throughout: ``(B, T', N, D)`` with ``T'`` time steps and ``N = H' * W'`` spatial tokens per step.

From image weights (Sec. 3.4): :func:`checkpoint_filter_fn` turns a 2D ViT state dict into a ViViT one. The patch
embedding is inflated to tubelets with "central frame" initialisation, spatial position embeddings are resized
to the new grid and repeated over time, and transformer blocks are copied. For Model 3 the temporal attention
starts at zero output, so each block begins as its image counterpart; Model 2's temporal encoder starts random.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
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

__all__ = ["ViViT", "VARIANTS"]

VARIANTS = ("joint", "fe", "fsa", "fdp")


class FactorisedSelfAttentionBlock(Block):
    """Model 3's block: attention within each time step, then along time at each position, then the MLP.

    Tokens are ``(B, T', N, D)``. It is ViT's block (whose attention here is the spatial one) with a temporal
    attention and its norm added; starting from image weights, the temporal output projection is zero so the block
    first behaves as the image block.
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
        self.norm_temporal = nn.LayerNorm(dim, eps=1e-6)
        self.attn_temporal = Attention(dim, num_heads, qkv_bias, attn_drop, drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))  # over N within each time step
        across_time = x.transpose(1, 2)  # (B, N, T', D): attend over T' at each position
        across_time = across_time + self.drop_path1(self.attn_temporal(self.norm_temporal(across_time)))
        x = across_time.transpose(1, 2)
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class FactorisedDotProductAttention(Attention):
    """Model 4's attention: the first half of the heads attend over space, the second half over time.

    Input tokens ``(B, T', N, D)``; queries, keys and values come from one projection, as in Model 1, and the
    heads are concatenated before one output projection, so the parameters are Model 1's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split_heads(x)  # (B, T', heads, N, head_dim)
        half = self.num_heads // 2
        drop = self.attn_drop if self.training else 0.0
        spatial = F.scaled_dot_product_attention(q[:, :, :half], k[:, :, :half], v[:, :, :half], dropout_p=drop)

        def over_time(t: torch.Tensor) -> torch.Tensor:
            return t[:, :, half:].permute(0, 3, 2, 1, 4)  # (B, N, heads/2, T', head_dim)

        temporal = F.scaled_dot_product_attention(over_time(q), over_time(k), over_time(v), dropout_p=drop)
        temporal = temporal.permute(0, 3, 2, 1, 4)  # back to (B, T', heads/2, N, head_dim)
        return self.merge_heads(torch.cat([spatial, temporal], dim=2))


class ViViT(CheckpointedBlocks, nn.Module):
    """A ViViT model: ``kind`` is ``joint`` (Model 1), ``fe`` (2), ``fsa`` (3) or ``fdp`` (4).

    Args:
        kind: which of the four models (``joint``, ``fe``, ``fsa``, ``fdp``).
        num_classes: classifier outputs (0 = features only).
        num_frames: clip length ``T``; a multiple of ``tubelet_size``.
        img_size: clip side ``H = W``; a multiple of ``patch_size``.
        patch_size: tubelet side.
        tubelet_size: tubelet length in frames.
        in_chans: input channels.
        embed_dim: token width ``D``.
        depth: transformer blocks (the spatial encoder's, for Model 2).
        num_heads: attention heads (even, for Model 4).
        mlp_ratio: MLP hidden width over ``D``.
        temporal_depth: Model 2's temporal encoder blocks.
        qkv_bias: bias on the Q/K/V projections.
        drop_rate: dropout after embeddings, in MLPs and before the classifier.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth, rising linearly over the blocks.
        stem_widths: a 3D conv stem in place of the linear patch projection (see ``TubeletEmbed``).
    """

    def __init__(
        self,
        kind: str = "joint",
        num_classes: int = 400,
        num_frames: int = 32,
        img_size: int = 224,
        patch_size: int = 16,
        tubelet_size: int = 2,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        temporal_depth: int = 4,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        stem_widths: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        if kind not in VARIANTS:
            raise ValueError(f"kind must be one of {', '.join(VARIANTS)}, got {kind!r}")
        if kind == "fdp" and num_heads % 2:
            raise ValueError(
                f"Model 4 splits the heads between space and time: num_heads must be even, got {num_heads}"
            )
        self.kind, self.num_classes, self.num_frames = kind, num_classes, num_frames
        self.num_features = self.embed_dim = embed_dim
        self.patch_embed = TubeletEmbed(
            num_frames, img_size, patch_size, tubelet_size, in_chans, embed_dim, stem_widths=stem_widths
        )
        steps, patches = self.patch_embed.grid[0], self.patch_embed.num_patches
        self.pos_drop = nn.Dropout(drop_rate)
        block_args = dict(mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate)
        rates = calculate_drop_path_rates(drop_path_rate, depth + (temporal_depth if kind == "fe" else 0))

        if kind == "joint":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + steps * patches, embed_dim))
        elif kind == "fe":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))  # one per time step, shared
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + patches, embed_dim))  # spatial
            self.temporal_cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.temporal_pos_embed = nn.Parameter(torch.zeros(1, 1 + steps, embed_dim))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, steps * patches, embed_dim))

        if kind == "fsa":
            blocks = [
                FactorisedSelfAttentionBlock(embed_dim, num_heads, drop_path=rates[i], **block_args)
                for i in range(depth)
            ]
        elif kind == "fdp":
            blocks = [
                Block(
                    embed_dim,
                    num_heads,
                    drop_path=rates[i],
                    attn=FactorisedDotProductAttention(embed_dim, num_heads, qkv_bias, attn_drop_rate, drop_rate),
                    **block_args,
                )
                for i in range(depth)
            ]
        else:
            blocks = [Block(embed_dim, num_heads, drop_path=rates[i], **block_args) for i in range(depth)]
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        if kind == "fe":
            self.temporal_blocks = nn.ModuleList(
                Block(embed_dim, num_heads, drop_path=rates[depth + i], **block_args) for i in range(temporal_depth)
            )
            self.temporal_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        embeddings = (param for name, param in self.named_parameters() if name.endswith(("pos_embed", "cls_token")))
        init_transformer_weights(self, embeddings)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {name for name, _ in self.named_parameters() if name.endswith(("pos_embed", "cls_token"))}

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Clips ``(B, C, T, H, W)`` to the pooled representation ``(B, D)``."""
        x = self.patch_embed(x)  # (B, T', N, D)
        batch, steps, patches, dim = x.shape
        if self.kind == "joint":
            x = torch.cat([self.cls_token.expand(batch, -1, -1), x.reshape(batch, steps * patches, dim)], dim=1)
            x = self.pos_drop(x + self.pos_embed)  # (B, 1 + T'N, D)
            for block in self.blocks:
                x = self.run_block(block, x)
            return self.norm(x)[:, 0]
        if self.kind == "fe":
            x = torch.cat([self.cls_token.expand(batch, steps, 1, dim), x], dim=2)  # (B, T', 1 + N, D)
            x = self.pos_drop(x + self.pos_embed)
            for block in self.blocks:  # the spatial encoder sees each time step alone
                x = self.run_block(block, x)
            frames = self.norm(x)[:, :, 0]  # (B, T', D): one CLS per time step
            x = torch.cat([self.temporal_cls_token.expand(batch, -1, -1), frames], dim=1)
            x = x + self.temporal_pos_embed  # (B, 1 + T', D)
            for block in self.temporal_blocks:
                x = self.run_block(block, x)
            return self.temporal_norm(x)[:, 0]
        x = self.pos_drop(x + self.pos_embed.view(1, steps, patches, dim))  # (B, T', N, D)
        for block in self.blocks:
            x = self.run_block(block, x)
        return self.norm(x).mean(dim=(1, 2))  # Models 3 and 4 have no CLS: the mean token

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: ViViT) -> dict[str, torch.Tensor]:
    """A ViViT state dict from a 2D ViT one (timm layout), or a ViViT one passed through.

    Inflates ``patch_embed.proj.weight`` to tubelets (central frame), resizes the spatial position embeddings to
    the model's grid and repeats them over time (Models 1, 3, 4; Model 2 uses them per time step), drops the
    image classifier when its size differs, and renames the image blocks' attention for Model 3 (whose temporal
    attention is zero-initialised so each block starts as the image block).
    """
    state_dict = state_dict.get("model", state_dict)
    if state_dict.get("patch_embed.proj.weight", torch.zeros(0)).dim() != 4:
        return state_dict  # already a video state dict
    out: dict[str, torch.Tensor] = {}
    steps = model.patch_embed.grid[0]
    grid = model.patch_embed.grid[1:]
    for key, value in state_dict.items():
        if key.startswith("patch_embed.") and model.patch_embed.has_stem:
            continue  # a conv stem has no 2D counterpart (its own initialisation is kept below)
        if key == "patch_embed.proj.weight":
            value = inflate_patch_weight(value, model.patch_embed.tubelet_size)
        elif key == "pos_embed":
            cls_pos, spatial = value[:, :1], resize_pos_grid(value[:, 1:], grid)  # ViT's first entry is its CLS
            if model.kind == "joint":
                value = torch.cat([cls_pos, spatial.repeat(1, steps, 1)], dim=1)
            elif model.kind == "fe":
                value = torch.cat([cls_pos, spatial], dim=1)
            else:
                value = spatial.repeat(1, steps, 1)
        elif key == "cls_token" and model.kind in ("fsa", "fdp"):
            continue
        elif key.startswith("head.") and value.shape[0] != model.num_classes:
            continue
        elif key.startswith(("fc_norm", "head_drop")):
            continue
        out[key] = value
    # What images have no weights for keeps the model's own initialisation: Model 2's temporal encoder, Model 3's
    # temporal attention, whose output projection is zeroed so each block starts as the image block.
    for key, value in model.state_dict().items():
        if key.startswith("temporal_") or ".attn_temporal." in key or ".norm_temporal." in key:
            out[key] = torch.zeros_like(value) if ".attn_temporal.proj." in key else value.detach().clone()
    if model.patch_embed.has_stem:
        out.update({f"patch_embed.{k}": v.detach().clone() for k, v in model.patch_embed.state_dict().items()})
    return out


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 400,
        "input_size": (3, 224, 224),
        "mean": IMAGENET_INCEPTION_MEAN,  # ViT's ImageNet-21k weights, which ViViT starts from, use 0.5/0.5
        "std": IMAGENET_INCEPTION_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "vivit_b16x2_joint": _cfg(),
        "vivit_b16x2_fe": _cfg(),
        "vivit_b16x2_fsa": _cfg(),
        "vivit_b16x2_fdp": _cfg(),
        "vivit_l16x2_fe": _cfg(),
        "vivit_micro_joint": _cfg(input_size=(3, 32, 32)),
        "vivit_micro_fe": _cfg(input_size=(3, 32, 32)),
        "vivit_micro_fsa": _cfg(input_size=(3, 32, 32)),
        "vivit_micro_fdp": _cfg(input_size=(3, 32, 32)),
        "vivit_micro_convstem_fe": _cfg(input_size=(3, 32, 32), first_conv="patch_embed.stem.0"),
    }
)


def _create(variant_name: str, pretrained: bool, **kwargs: Any) -> ViViT:
    return build_model_with_cfg(ViViT, variant_name, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


_BASE = dict(patch_size=16, tubelet_size=2, embed_dim=768, depth=12, num_heads=12, num_frames=32, img_size=224)
_LARGE = dict(patch_size=16, tubelet_size=2, embed_dim=1024, depth=24, num_heads=16, num_frames=32, img_size=224)
# 16 frames of 32 px in 2x4x4 tubelets: 8 x 8 x 8 = 512 tokens, width 96, 4 blocks
_MICRO = dict(
    patch_size=4, tubelet_size=2, embed_dim=96, depth=4, num_heads=4, num_frames=16, img_size=32, temporal_depth=2
)


@register_video_model
def vivit_b16x2_joint(pretrained: bool = False, **kwargs: Any) -> ViViT:
    """ViViT-B/16x2 Model 1 (spatio-temporal attention), 32 frames at 224 px: 88.9M parameters, 455 GMACs."""
    return _create("vivit_b16x2_joint", pretrained, **{**_BASE, "kind": "joint", **kwargs})


@register_video_model
def vivit_b16x2_fe(pretrained: bool = False, **kwargs: Any) -> ViViT:
    """ViViT-B/16x2 Model 2 (factorised encoder: 12 spatial + 4 temporal blocks), 284 GMACs."""
    return _create("vivit_b16x2_fe", pretrained, **{**_BASE, "kind": "fe", **kwargs})


@register_video_model
def vivit_b16x2_fsa(pretrained: bool = False, **kwargs: Any) -> ViViT:
    """ViViT-B/16x2 Model 3 (factorised self-attention), 372 GMACs."""
    return _create("vivit_b16x2_fsa", pretrained, **{**_BASE, "kind": "fsa", **kwargs})


@register_video_model
def vivit_b16x2_fdp(pretrained: bool = False, **kwargs: Any) -> ViViT:
    """ViViT-B/16x2 Model 4 (factorised dot-product attention), 277 GMACs."""
    return _create("vivit_b16x2_fdp", pretrained, **{**_BASE, "kind": "fdp", **kwargs})


@register_video_model
def vivit_l16x2_fe(pretrained: bool = False, **kwargs: Any) -> ViViT:
    """ViViT-L/16x2 Model 2 (24 spatial + 4 temporal blocks, width 1024), the paper's Kinetics model."""
    return _create("vivit_l16x2_fe", pretrained, **{**_LARGE, "kind": "fe", **kwargs})


@register_video_model
def vivit_micro_joint(pretrained: bool = False, **kwargs: Any) -> ViViT:
    """Model 1 at 16 frames of 32 px, width 96, 4 blocks: for tests and the demo set."""
    return _create("vivit_micro_joint", pretrained, **{**_MICRO, "kind": "joint", **kwargs})


@register_video_model
def vivit_micro_fe(pretrained: bool = False, **kwargs: Any) -> ViViT:
    """Model 2, micro size (4 spatial + 2 temporal blocks)."""
    return _create("vivit_micro_fe", pretrained, **{**_MICRO, "kind": "fe", **kwargs})


@register_video_model
def vivit_micro_fsa(pretrained: bool = False, **kwargs: Any) -> ViViT:
    """Model 3, micro size."""
    return _create("vivit_micro_fsa", pretrained, **{**_MICRO, "kind": "fsa", **kwargs})


@register_video_model
def vivit_micro_fdp(pretrained: bool = False, **kwargs: Any) -> ViViT:
    """Model 4, micro size."""
    return _create("vivit_micro_fdp", pretrained, **{**_MICRO, "kind": "fdp", **kwargs})


@register_video_model
def vivit_micro_convstem_fe(pretrained: bool = False, **kwargs: Any) -> ViViT:
    """Model 2 at 8 frames of 32 px over 1x8x8 tubelets from a three-layer 3D conv stem: the demo preset.

    8 time steps of 16 tokens (``vivit_micro_fe``'s encoders over fewer, richer tokens, so about twice as fast on
    a CPU). The stem (Xiao et al. 2021, in 3D; its 3x3x3 kernels see neighbouring frames) is what lets it learn
    the small demo video set from scratch; the patchify model stays at chance (see ``TubeletEmbed``, RESULTS.md).
    """
    args = {**_MICRO, "num_frames": 8, "patch_size": 8, "tubelet_size": 1, "stem_widths": (16, 32, 64), "kind": "fe"}
    return _create("vivit_micro_convstem_fe", pretrained, **{**args, **kwargs})
