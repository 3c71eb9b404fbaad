"""ViViT: A Video Vision Transformer, all four models.

Paper: Arnab et al. 2021, "ViViT: A Video Vision Transformer", https://arxiv.org/abs/2103.15691. fovea's own
implementation from the paper. A clip ``(B, C, T, H, W)`` is cut into non-overlapping tubelets (2x16x16 for the
B/16x2 models: 16 x 14 x 14 = 3136 tokens for 32 frames at 224 px), each linearly embedded (Sec. 3.2), then:

- **Model 1, spatio-temporal attention** (``joint``): one encoder over all tokens plus a CLS token; every token
  attends to every other. The most expensive: attention is quadratic in 3136 tokens.
- **Model 2, factorised encoder** (``fe``): a spatial encoder runs on each time step's tokens with its own CLS;
  the per-step CLS outputs feed a temporal encoder (``temporal_depth`` blocks, 4 in the paper) with another CLS.
- **Model 3, factorised self-attention** (``fsa``): each block attends over time (tokens at one spatial
  position) and over space (tokens of one time step), in the order ``attention_order`` says, then applies the
  MLP. No CLS: the classifier reads the mean token.
- **Model 4, factorised dot-product attention** (``fdp``): one attention per block whose heads are split, half
  attending over space and half over time (``time_heads_first`` says which half); same parameters as Model 1.
  No CLS.

Tensor layout throughout: ``(B, T', N, D)`` with ``T'`` time steps and ``N = H' * W'`` spatial tokens per step.

Three choices the paper leaves open, each a constructor argument. The published presets (``vivit_b16x2_*``,
``vivit_l16x2_fe``) follow the authors' code, scenic (google-research/scenic, ``scenic/projects/vivit/model.py``),
so published weights give its outputs; the micro presets keep the behaviour the demo set results were tuned with:

- ``gelu_approximate``: published ``"tanh"`` (Flax's ``nn.gelu`` default in scenic's MLPs; transformers'
  VivitConfig ``hidden_act="gelu_fast"``); micro ``"none"``, the exact (erf) GELU.
- ``attention_order`` (Model 3): published ``"time_space"``, the default of scenic's
  ``EncoderFactorizedSelfAttentionBlock``; micro ``"space_time"``, the paper's equations (Sec. 3.3).
- ``time_heads_first`` (Model 4): published ``True``, as scenic's ``factorized_dot_product_attention`` splits the
  heads over (time, space); micro ``False``, the first half of the heads attend over space.

From image weights (Sec. 3.4): :func:`checkpoint_filter_fn` turns a 2D ViT state dict into a ViViT one. The patch
embedding is inflated to tubelets with "central frame" initialisation, spatial position embeddings are resized
to the new grid and repeated over time, and transformer blocks are copied. For Model 3 the temporal attention
starts at zero output, so each block begins as its image counterpart; Model 2's temporal encoder starts random.
Video weights (fovea's own, or published ones ``fovea.weights.vivit`` converted) for another clip length or
image size get their position embeddings resized: bicubic over space, linear over time.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
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

__all__ = ["ViViT", "VARIANTS", "POS_GRID_KEY"]

VARIANTS = ("joint", "fe", "fsa", "fdp")
ATTENTION_ORDERS = ("time_space", "space_time")
GELU_APPROXIMATIONS = ("tanh", "none")
# The (T', H', W') grid a converted published file's position table was trained on: its converter
# (``fovea.weights.vivit``) records it under this key, since a flat (T'H'W', D) table does not say how it factors;
# checkpoint_filter_fn consumes it. A literal here too, as model code imports nothing of the weights package.
POS_GRID_KEY = "pos_embed_grid"


class FactorisedSelfAttentionBlock(Block):
    """Model 3's block: attention along time at each position and within each time step, then the MLP.

    Tokens are ``(B, T', N, D)``. It is ViT's block (whose attention here is the spatial one) with a temporal
    attention and its norm added; starting from image weights, the temporal output projection is zero so the block
    first behaves as the image block. ``time_first`` runs the temporal attention before the spatial one (scenic's
    ``time_space`` order), else after it (the paper's equations).
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
        time_first: bool = True,
        act_layer: Callable[[], nn.Module] = nn.GELU,
    ) -> None:
        super().__init__(dim, num_heads, mlp_ratio, qkv_bias, drop, attn_drop, drop_path, act_layer=act_layer)
        self.norm_temporal = nn.LayerNorm(dim, eps=1e-6)
        self.attn_temporal = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.time_first = time_first

    def _over_space(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path1(self.attn(self.norm1(x)))  # over N within each time step

    def _over_time(self, x: torch.Tensor) -> torch.Tensor:
        across_time = x.transpose(1, 2)  # (B, N, T', D): attend over T' at each position
        across_time = across_time + self.drop_path1(self.attn_temporal(self.norm_temporal(across_time)))
        return across_time.transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.time_first:
            x = self._over_space(self._over_time(x))
        else:
            x = self._over_time(self._over_space(x))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class FactorisedDotProductAttention(Attention):
    """Model 4's attention: half of the heads attend over time, the other half over space.

    Input tokens ``(B, T', N, D)``; queries, keys and values come from one projection, as in Model 1, and the
    heads are concatenated before one output projection, so the parameters are Model 1's. ``time_heads_first``
    gives the first half of the heads to time (scenic), else to space.
    """

    def __init__(self, *args: Any, time_heads_first: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.time_heads_first = time_heads_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split_heads(x)  # (B, T', heads, N, head_dim)
        half = self.num_heads // 2
        time_heads, space_heads = (slice(None, half), slice(half, None))
        if not self.time_heads_first:
            time_heads, space_heads = space_heads, time_heads
        drop = self.attn_drop if self.training else 0.0
        spatial = F.scaled_dot_product_attention(
            q[:, :, space_heads], k[:, :, space_heads], v[:, :, space_heads], dropout_p=drop
        )

        def over_time(t: torch.Tensor) -> torch.Tensor:
            return t[:, :, time_heads].permute(0, 3, 2, 1, 4)  # (B, N, heads/2, T', head_dim)

        temporal = F.scaled_dot_product_attention(over_time(q), over_time(k), over_time(v), dropout_p=drop)
        temporal = temporal.permute(0, 3, 2, 1, 4)  # back to (B, T', heads/2, N, head_dim)
        halves = [temporal, spatial] if self.time_heads_first else [spatial, temporal]
        return self.merge_heads(torch.cat(halves, dim=2))


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
        gelu_approximate: the MLPs' GELU: ``"tanh"`` (scenic's and transformers' ViViT) or ``"none"`` (exact).
        attention_order: Model 3's order of the two attentions in a block: ``"time_space"`` (scenic's default)
            or ``"space_time"`` (the paper's equations).
        time_heads_first: Model 4 gives the first half of the heads to time (scenic), else to space.
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
        gelu_approximate: str = "tanh",
        attention_order: str = "time_space",
        time_heads_first: bool = True,
    ) -> None:
        super().__init__()
        if kind not in VARIANTS:
            raise ValueError(f"kind must be one of {', '.join(VARIANTS)}, got {kind!r}")
        if attention_order not in ATTENTION_ORDERS:
            raise ValueError(f"attention_order must be one of {', '.join(ATTENTION_ORDERS)}, got {attention_order!r}")
        if gelu_approximate not in GELU_APPROXIMATIONS:
            raise ValueError(
                f"gelu_approximate must be one of {', '.join(GELU_APPROXIMATIONS)}, got {gelu_approximate!r}"
            )
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
        block_args = dict(
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop=drop_rate,
            attn_drop=attn_drop_rate,
            act_layer=partial(nn.GELU, approximate=gelu_approximate),
        )
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
            time_first = attention_order == "time_space"
            blocks = [
                FactorisedSelfAttentionBlock(
                    embed_dim, num_heads, drop_path=rates[i], time_first=time_first, **block_args
                )
                for i in range(depth)
            ]
        elif kind == "fdp":
            blocks = [
                Block(
                    embed_dim,
                    num_heads,
                    drop_path=rates[i],
                    attn=FactorisedDotProductAttention(
                        embed_dim, num_heads, qkv_bias, attn_drop_rate, drop_rate, time_heads_first=time_heads_first
                    ),
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
        self.gelu_approximate = gelu_approximate
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
    """A ViViT state dict from a 2D ViT one (timm layout), or a ViViT one fitted to the model's clip.

    From images: inflates ``patch_embed.proj.weight`` to tubelets (central frame), resizes the spatial position
    embeddings to the model's grid and repeats them over time (Models 1, 3, 4; Model 2 uses them per time step),
    drops the image classifier when its size differs, and renames the image blocks' attention for Model 3 (whose
    temporal attention is zero-initialised so each block starts as the image block). From video weights: resizes
    the position embeddings when the model's clip length or image size differs (see :func:`fit_video_positions`).
    """
    state_dict = state_dict.get("model", state_dict)
    if state_dict.get("patch_embed.proj.weight", torch.zeros(0)).dim() != 4:
        return fit_video_positions(state_dict, model)  # already a video state dict
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


def fit_video_positions(state_dict: dict[str, torch.Tensor], model: ViViT) -> dict[str, torch.Tensor]:
    """Video weights with their position embeddings resized to the model's ``(T', H', W')`` token grid.

    Model 2's tables say their own size (``1 + H'W'`` spatial, ``1 + T'`` temporal, square grids). Models 1, 3
    and 4 keep one flat ``T'H'W'`` table, whose grid the ``POS_GRID_KEY`` entry a converter wrote gives; without
    it (fovea's own files) the grid is taken to keep the model's time steps or else its spatial grid, whichever
    factors (a file with both changed needs the recorded grid). Space is resized bicubic per time step, time
    linearly per position; CLS entries are kept.
    """
    state = dict(state_dict)
    recorded = state.pop(POS_GRID_KEY, None)
    steps, height, width = model.patch_embed.grid
    pos = state.get("pos_embed")
    if pos is None or pos.dim() != 3:
        return state
    if model.kind == "fe":
        if pos.shape[1] != 1 + height * width:
            state["pos_embed"] = torch.cat([pos[:, :1], resize_pos_grid(pos[:, 1:], (height, width))], dim=1)
        temporal = state.get("temporal_pos_embed")
        if temporal is not None and temporal.dim() == 3 and temporal.shape[1] != 1 + steps:
            state["temporal_pos_embed"] = torch.cat(
                [temporal[:, :1], _resize_time(temporal[:, 1:, None], steps)[:, :, 0]], dim=1
            )
        return state
    lead = 1 if model.kind == "joint" else 0  # Model 1's table starts with its CLS entry
    table = pos[:, lead:]
    if table.shape[1] == steps * height * width:
        return state
    grid = tuple(int(v) for v in recorded.tolist()) if recorded is not None else _guess_grid(table.shape[1], model)
    if grid is None or grid[0] * grid[1] * grid[2] != table.shape[1] or grid[1] != grid[2]:
        return state  # cannot tell how it factors: the strict load names the shapes that do not fit
    table = table.reshape(1, grid[0], grid[1] * grid[2], -1)  # (1, T', H'W', D)
    if grid[1:] != (height, width):  # time steps as channels: one bicubic resize for all of them
        dim = table.shape[-1]
        flat = table.permute(0, 2, 1, 3).reshape(1, grid[1] * grid[2], grid[0] * dim)
        flat = resize_pos_grid(flat, (height, width))
        table = flat.reshape(1, height * width, grid[0], dim).permute(0, 2, 1, 3)
    table = _resize_time(table, steps).reshape(1, steps * height * width, -1)
    state["pos_embed"] = torch.cat([pos[:, :lead], table], dim=1)
    return state


def _resize_time(table: torch.Tensor, steps: int) -> torch.Tensor:
    """``(1, T, N, D)`` position entries linearly resized to ``(1, steps, N, D)`` along time."""
    if table.shape[1] == steps:
        return table
    _, length, tokens, dim = table.shape
    series = table[0].permute(1, 2, 0).reshape(1, tokens * dim, length).float()  # (1, N*D, T)
    series = F.interpolate(series, size=steps, mode="linear", align_corners=False)
    return series.reshape(tokens, dim, steps).permute(2, 0, 1)[None].to(table.dtype)


def _guess_grid(positions: int, model: ViViT) -> tuple[int, int, int] | None:
    """How a flat table of ``positions`` entries factors, keeping the model's time steps or its spatial grid.

    Where both fit, the time steps are kept: each spatial side then changes by only the square root of the ratio.
    """
    steps, height, width = model.patch_embed.grid
    side = int(round((positions / steps) ** 0.5)) if positions % steps == 0 else 0
    if side and steps * side * side == positions:
        return steps, side, side
    if positions % (height * width) == 0:
        return positions // (height * width), height, width
    return None


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


# The published presets compute what scenic computes (so its weights, and transformers' conversions of them, give
# its outputs); the micro presets keep the behaviour the demo set results were tuned with (module docstring).
_SCENIC = dict(gelu_approximate="tanh", attention_order="time_space", time_heads_first=True)
_FIRST_FORM = dict(gelu_approximate="none", attention_order="space_time", time_heads_first=False)
_BASE = dict(
    patch_size=16, tubelet_size=2, embed_dim=768, depth=12, num_heads=12, num_frames=32, img_size=224, **_SCENIC
)
_LARGE = dict(
    patch_size=16, tubelet_size=2, embed_dim=1024, depth=24, num_heads=16, num_frames=32, img_size=224, **_SCENIC
)
# 16 frames of 32 px in 2x4x4 tubelets: 8 x 8 x 8 = 512 tokens, width 96, 4 blocks
_MICRO = dict(
    patch_size=4,
    tubelet_size=2,
    embed_dim=96,
    depth=4,
    num_heads=4,
    num_frames=16,
    img_size=32,
    temporal_depth=2,
    **_FIRST_FORM,
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
