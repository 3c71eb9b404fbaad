"""MViT: Multiscale Vision Transformers for video, with multi-head pooling attention.

Paper: Fan et al. 2021, "Multiscale Vision Transformers", https://arxiv.org/abs/2104.11227. fovea's own
implementation from the paper (MViT-B, Table 3), laid out like timm's ``mvitv2.py``: blocks, the model, configs,
the builder, then one-line registered presets.

What makes it MViT:

- A *cube embedding* (Sec. 4.1): a ``Conv3d`` with kernel 3x7x7 and stride 2x4x4 turns a 16x224x224 clip into an
  8x56x56 grid of 96-channel tokens, with separable space and time position embeddings and a CLS token.
- *Multi-head pooling attention* (Sec. 3.1, ``layers.PoolingAttention``): keys and values are pooled by a
  depthwise 3x3x3 convolution, with a stride that keeps their grid near 7x7 (1x8x8 in the first stage, adapted as
  the grid shrinks); queries are pooled with stride 1x2x2 in the first block of a stage, which halves the grid.
- *Stages* (Sec. 3.2): channels double at each of the 3 transitions (in the MLP of the block before the
  transition, with a linear projection on its skip) and heads double with them, while the grid shrinks
  56 -> 28 -> 14 -> 7. Skips of query-pooled blocks are max-pooled to the new grid.

Token layout: ``(B, 1 + T*H*W, C)``, the CLS first, with the grid ``(T, H, W)`` passed along.

Every preset takes the fields of :class:`MViTCfg` as keyword arguments (``depth=``, ``embed_dim=``,
``stride_kv=``, ...), which replace the preset's: published files of other sizes (and ``model.kwargs`` in a job
config) build the architecture they need from a preset. :func:`checkpoint_filter_fn` fits a state dict in fovea's
keys to a model of another clip length or image size (position embeddings resized) and inflates image MViT
weights (2D patch kernel, 1-frame pooling kernels) to video.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, calculate_drop_path_rates
from timm.models import build_model_with_cfg, generate_default_cfgs
from torch import nn

from fovea.models.factory import register_video_model
from fovea.models.layers import CheckpointedBlocks, init_transformer_weights
from fovea.models.layers.embed import inflate_patch_weight, resize_pos_grid
from fovea.models.layers.pooling_attention import PoolingAttention, Shape3

__all__ = ["MViT", "MViTCfg", "checkpoint_filter_fn", "preset_cfg"]

# PySlowFast's Kinetics normalisation, which the MViT recipes use
KINETICS_MEAN, KINETICS_STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)


@dataclass
class MViTCfg:
    """Architecture of an MViT.

    Attributes:
        depth: transformer blocks.
        embed_dim: token width of the first stage.
        num_heads: heads of the first stage.
        stage_starts: blocks that begin a stage: they pool queries by ``stride_q``; the block before each one
            doubles the channels, and heads double from it on.
        stride_q: query pooling stride at a stage start.
        kernel_qkv: pooling kernel of queries, keys and values.
        stride_kv: key/value pooling stride of the first stage, divided by ``stride_q`` at each stage start.
        patch_kernel: cube embedding kernel (T, H, W).
        patch_stride: cube embedding stride.
        mlp_ratio: MLP hidden width over the block's input width.
        qkv_bias: bias on the Q/K/V projections.
    """

    depth: int = 16
    embed_dim: int = 96
    num_heads: int = 1
    stage_starts: tuple[int, ...] = (1, 3, 14)
    stride_q: Shape3 = (1, 2, 2)
    kernel_qkv: Shape3 = (3, 3, 3)
    stride_kv: Shape3 = (1, 8, 8)
    patch_kernel: Shape3 = (3, 7, 7)
    patch_stride: Shape3 = (2, 4, 4)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True

    def __post_init__(self) -> None:
        for name in ("stride_q", "kernel_qkv", "stride_kv", "patch_kernel", "patch_stride"):
            value = getattr(self, name)
            if len(value) != 3 or any(int(v) != v or v < 1 for v in value):
                raise ValueError(f"{name} must be 3 positive integers (T, H, W), got {value}")
        if any(not 0 < start < self.depth for start in self.stage_starts):
            raise ValueError(f"stage_starts {self.stage_starts} must lie inside 1..{self.depth - 1}")

    def blocks(self) -> list[dict[str, Any]]:
        """Per-block width in and out, heads and pooling, derived from the stage plan."""
        plan, dim, heads, stride_kv = [], self.embed_dim, self.num_heads, self.stride_kv
        for index in range(self.depth):
            starts = index in self.stage_starts
            if starts:
                heads *= 2
                stride_kv = tuple(max(s // q, 1) for s, q in zip(stride_kv, self.stride_q, strict=True))
            dim_out = dim * 2 if index + 1 in self.stage_starts else dim
            plan.append(
                dict(
                    dim=dim,
                    dim_out=dim_out,
                    num_heads=heads,
                    kernel_q=self.kernel_qkv if starts else None,
                    stride_q=self.stride_q if starts else (1, 1, 1),
                    kernel_kv=self.kernel_qkv,
                    stride_kv=stride_kv,
                )
            )
            dim = dim_out
        return plan


class MultiScaleBlock(nn.Module):
    """Pooling attention and an MLP that may widen the tokens; skips pooled and projected to match."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        *,
        kernel_q: Shape3 | None,
        stride_q: Shape3,
        kernel_kv: Shape3 | None,
        stride_kv: Shape3,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = PoolingAttention(
            dim,
            num_heads,
            kernel_q=kernel_q,
            stride_q=stride_q,
            kernel_kv=kernel_kv,
            stride_kv=stride_kv,
            qkv_bias=qkv_bias,
        )
        # the skip of a query-pooled block is max-pooled to the same grid (kernel one larger than the stride)
        self.pool_skip = None
        if max(stride_q) > 1:
            kernel = tuple(s + 1 if s > 1 else s for s in stride_q)
            self.pool_skip = nn.MaxPool3d(kernel, stride_q, tuple(k // 2 for k in kernel))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), out_features=dim_out, act_layer=nn.GELU)
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None

    def _pool_skip(self, x: torch.Tensor, grid: Shape3) -> torch.Tensor:
        cls, tokens = x[:, :1], x[:, 1:]
        batch, _, dim = tokens.shape
        tokens = self.pool_skip(tokens.transpose(1, 2).reshape(batch, dim, *grid))  # (B, C, T, H', W')
        return torch.cat([cls, tokens.flatten(2).transpose(1, 2)], dim=1)

    def forward(self, x: torch.Tensor, grid: Shape3) -> tuple[torch.Tensor, Shape3]:
        attended, new_grid = self.attn(self.norm1(x), grid)
        skip = self._pool_skip(x, grid) if self.pool_skip is not None else x
        x = skip + self.drop_path(attended)
        normed = self.norm2(x)
        x = self.proj(normed) if self.proj is not None else x  # the widened skip comes from the normed tokens
        return x + self.drop_path(self.mlp(normed)), new_grid


class MViT(CheckpointedBlocks, nn.Module):
    """An MViT classifier of clips ``(B, C, T, H, W)``.

    Args:
        cfg: the architecture.
        num_classes: classifier outputs (0 = features only).
        num_frames: clip length ``T`` (a multiple of the cube stride in time).
        img_size: clip side (a multiple of the cube stride in space).
        in_chans: input channels.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, rising linearly over the blocks.
    """

    def __init__(
        self,
        cfg: MViTCfg,
        num_classes: int = 400,
        num_frames: int = 16,
        img_size: int = 224,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if num_frames % cfg.patch_stride[0] or img_size % cfg.patch_stride[1]:
            raise ValueError(f"num_frames and img_size must be multiples of the cube stride {cfg.patch_stride}")
        self.num_classes, self.num_frames = num_classes, num_frames
        padding = tuple(k // 2 for k in cfg.patch_kernel)
        self.patch_embed = nn.Conv3d(in_chans, cfg.embed_dim, cfg.patch_kernel, cfg.patch_stride, padding)
        self.grid = (
            num_frames // cfg.patch_stride[0],
            img_size // cfg.patch_stride[1],
            img_size // cfg.patch_stride[2],
        )
        dim = cfg.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        # separable position embeddings: one per spatial position, one per time step, one for the CLS
        self.pos_embed_spatial = nn.Parameter(torch.zeros(1, self.grid[1] * self.grid[2], dim))
        self.pos_embed_temporal = nn.Parameter(torch.zeros(1, self.grid[0], dim))
        self.pos_embed_class = nn.Parameter(torch.zeros(1, 1, dim))
        plan = cfg.blocks()
        rates = calculate_drop_path_rates(drop_path_rate, cfg.depth)
        self.blocks = nn.ModuleList(
            MultiScaleBlock(**spec, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, drop_path=rate)
            for spec, rate in zip(plan, rates, strict=True)
        )
        self.num_features = plan[-1]["dim_out"]
        self.norm = nn.LayerNorm(self.num_features, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        embeddings = (self.pos_embed_spatial, self.pos_embed_temporal, self.pos_embed_class, self.cls_token)
        init_transformer_weights(self, embeddings)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed_spatial", "pos_embed_temporal", "pos_embed_class"}

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Clips ``(B, C, T, H, W)`` to the final CLS representation ``(B, C_out)``."""
        x = self.patch_embed(x)  # (B, C, T', H', W')
        grid = tuple(x.shape[2:])
        if grid != self.grid:
            raise ValueError(f"the model is built for a {self.grid} token grid, the clip gives {grid}")
        x = x.flatten(2).transpose(1, 2)  # (B, T'H'W', C)
        steps, positions = self.grid[0], self.grid[1] * self.grid[2]
        pos = self.pos_embed_spatial.repeat(1, steps, 1) + self.pos_embed_temporal.repeat_interleave(positions, dim=1)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1) + self.pos_embed_class, x + pos], dim=1)
        for block in self.blocks:
            x, grid = self.run_block(block, x, grid)
        return self.norm(x)[:, 0]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def resize_time_table(table: torch.Tensor, steps: int) -> torch.Tensor:
    """Temporal position embeddings ``(1, T, C)`` resized (linearly) to ``steps`` time steps: PySlowFast interpolates
    its position tables the same way (trilinear) when a clip differs from the trained one (``MViT._get_pos_embed``)."""
    if table.shape[1] == steps:
        return table
    resized = F.interpolate(table.transpose(1, 2).float(), size=steps, mode="linear", align_corners=False)
    return resized.transpose(1, 2).to(table.dtype)


def _inflate(weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A 2D kernel, or a 3D one one frame deep, at the centre of the model's deeper temporal kernel."""
    if weight.dim() == 4:
        weight = weight.unsqueeze(2)
    if weight.shape[2] == 1 and target.shape[2] > 1 and weight.shape[3:] == target.shape[3:]:
        return inflate_patch_weight(weight[:, :, 0], target.shape[2])
    return weight


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: MViT) -> dict[str, torch.Tensor]:
    """An MViT state dict (fovea's keys, as ``fovea.weights`` converts published files to) fitted to ``model``.

    Position embeddings of another grid are resized: the spatial table (a square grid, bicubic) to the model's
    ``H x W`` tokens, the temporal one (linear) to its ``T``, so weights trained on 16 frames at 224 px fine-tune on
    8 frames at 112 px. Kernels of an image MViT (a 2D patch embedding, 1-frame pooling kernels) are inflated to the
    model's temporal kernels with the 2D kernel at the centre and zeros elsewhere, so each frame starts as the image
    model saw it (ViViT's central-frame initialisation, Arnab et al. 2021, Sec. 3.4). Anything else that does not
    fit is left to the strict key check.
    """
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        target = own.get(key)
        if target is not None and target.shape != value.shape:
            if key == "pos_embed_spatial" and value.dim() == 3:
                value = resize_pos_grid(value, model.grid[1:])
            elif key == "pos_embed_temporal" and value.dim() == 3:
                value = resize_time_table(value, model.grid[0])
            elif (key == "patch_embed.weight" or key.endswith(".conv.weight")) and value.dim() in (4, 5):
                value = _inflate(value, target)
        out[key] = value
    return out


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 400,
        "input_size": (3, 224, 224),
        "mean": KINETICS_MEAN,
        "std": KINETICS_STD,
        "first_conv": "patch_embed",
        "classifier": "head",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "mvit_base_16x4": _cfg(),
        "mvit_base_32x3": _cfg(),
        "mvit_micro_8x4": _cfg(input_size=(3, 32, 32)),
    }
)

MODEL_CFGS = {
    "mvit_base_16x4": MViTCfg(),
    "mvit_base_32x3": MViTCfg(),
    # 8 frames of 32 px: a 4x8x8 grid of 32 channels; stages at blocks 1 and 3 (8x8 -> 4x4 -> 2x2), 64 and 128 wide
    "mvit_micro_8x4": MViTCfg(depth=5, embed_dim=32, num_heads=1, stage_starts=(1, 3), stride_kv=(1, 2, 2)),
}


_CFG_FIELDS = frozenset(field.name for field in dataclasses.fields(MViTCfg))


def preset_cfg(name: str, **overrides: Any) -> MViTCfg:
    """The architecture of preset ``name`` with some of its fields replaced (lists, as YAML gives them, as tuples).

    Raises:
        ValueError: a field MViTCfg does not have, or a value it rejects.
    """
    unknown = sorted(set(overrides) - _CFG_FIELDS)
    if unknown:
        raise ValueError(f"{name}: no architecture argument {', '.join(unknown)}")
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in overrides.items()}
    return dataclasses.replace(MODEL_CFGS[name], **values)


def _create(name: str, pretrained: bool, **kwargs: Any) -> MViT:
    overrides = {key: kwargs.pop(key) for key in list(kwargs) if key in _CFG_FIELDS}
    return build_model_with_cfg(
        MViT,
        name,
        pretrained,
        cfg=preset_cfg(name, **overrides),
        pretrained_filter_fn=checkpoint_filter_fn,
        **kwargs,
    )


@register_video_model
def mvit_base_16x4(pretrained: bool = False, **kwargs: Any) -> MViT:
    """MViT-B, 16 frames with stride 4 at 224 px: 36.6M parameters, 70.5 GMACs per view."""
    return _create("mvit_base_16x4", pretrained, **{"num_frames": 16, "drop_path_rate": 0.2, **kwargs})


@register_video_model
def mvit_base_32x3(pretrained: bool = False, **kwargs: Any) -> MViT:
    """MViT-B, 32 frames with stride 3 at 224 px: 36.6M parameters."""
    return _create("mvit_base_32x3", pretrained, **{"num_frames": 32, "drop_path_rate": 0.3, **kwargs})


@register_video_model
def mvit_micro_8x4(pretrained: bool = False, **kwargs: Any) -> MViT:
    """MViT at 8 frames of 32 px, 5 blocks in 3 stages (32/64/128 channels): for tests and the demo set."""
    return _create("mvit_micro_8x4", pretrained, **{"num_frames": 8, "img_size": 32, **kwargs})
