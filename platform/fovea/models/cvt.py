"""CvT: the Convolutional vision Transformer.

Paper: Wu et al. 2021, "CvT: Introducing Convolutions to Vision Transformers", https://arxiv.org/abs/2103.15808.
This is fovea's own implementation from the paper, laid out like timm's ``mvitv2.py``: blocks, the model, the
checkpoint filter, default configs, the builder, then one-line registered presets.

What makes it CvT (section numbers are the paper's):

- A hierarchy of stages, each opened by a *convolutional token embedding* (Sec. 3.1): an overlapping strided
  ``Conv2d`` followed by ``LayerNorm`` over the channels. It shrinks the token grid and widens the tokens from
  stage to stage, like a CNN's feature pyramid.
- *Convolutional projection* for attention (Sec. 3.2): queries, keys and values are each a depthwise 3x3
  convolution, ``BatchNorm2d``, then a pointwise (linear) projection of the token map. Keys and values use stride 2
  ("squeezed" projection), cutting their token count by 4 and attention's cost with it.
- No position embedding (the paper's ablations in Sec. 4.4 find it unneeded): the convolutions carry the spatial
  layout, so the model takes any input size with no embedding to interpolate.
- A class token joins only in the last stage (Sec. 3); it takes no part in the convolutions.

Presets follow Table 2: CvT-13 and CvT-21 (widths 64/192/384, heads 1/3/6) and the wide CvT-W24. ``cvt_micro_32``
is fovea's small variant for tests and the demo set.

Two ``CvtCfg`` arguments settle what the paper leaves open, so the authors' released weights give their logits
(github:microsoft/CvT ``lib/models/cls_cvt.py``, architectures from its ``experiments/imagenet/cvt/*.yaml``):
``attn_scale="dim"`` scales attention by the token width ``dim ** -0.5`` as their ``Attention`` does, not by
``head_dim ** -0.5`` (``sqrt(num_heads)`` apart: 4x in CvT-W24's last stage), and ``act_layer="quick_gelu"``
(``x * sigmoid(1.702 x)``) is the MLP activation their ``get_cls_model`` builds (transformers' CvT runs the same
weights with exact GELU: ``act_layer="gelu"`` gives its logits). ``cvt_13_*``, ``cvt_21_*`` and ``cvt_w24_384``
follow the authors; ``cvt_micro_32`` keeps the head-width scale and exact GELU its demo results were tuned with.
The rest is theirs already (LayerNorm and BatchNorm eps, the ``dw_bn`` projections, where the class token joins,
the final norm and head, the keys but ``stage0.``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, calculate_drop_path_rates, get_act_layer, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint, generate_default_cfgs, register_model
from torch import nn

__all__ = ["Cvt", "CvtCfg"]


def _per_stage(value: Any, num_stages: int, name: str) -> tuple[Any, ...]:
    """A scalar repeated for every stage, or a per-stage sequence checked for length."""
    if isinstance(value, (tuple, list)):
        if len(value) != num_stages:
            raise ValueError(f"CvtCfg.{name}: {len(value)} values for {num_stages} stages")
        return tuple(value)
    return (value,) * num_stages


@dataclass
class CvtCfg:
    """Architecture of a CvT; scalars apply to every stage, sequences give one value per stage.

    Attributes:
        depths: transformer blocks per stage.
        embed_dims: token width per stage.
        num_heads: attention heads per stage; None derives ``embed_dim // head_dim`` (the paper keeps 64 channels
            per head in every model of Table 2).
        head_dim: channels per head when ``num_heads`` is None.
        mlp_ratio: MLP hidden width over the token width.
        qkv_bias: bias in the pointwise Q/K/V projections.
        patch_size: kernel of each stage's token-embedding convolution.
        patch_stride: stride of each stage's token-embedding convolution (kernel > stride: patches overlap).
        patch_padding: padding of each stage's token-embedding convolution.
        kernel_qkv: kernel of the depthwise convolutions that project Q, K and V.
        stride_kv: stride of the key/value projection (2: a quarter of the tokens answer).
        cls_token: add a class token in the last stage and classify from it.
        attn_scale: ``"dim"`` scales attention by ``dim ** -0.5`` (the authors' code), ``"head_dim"`` by the heads'.
        act_layer: the MLP activation, a timm name (``"quick_gelu"``: the authors'; ``"gelu"``: exact) or a class.
    """

    depths: tuple[int, ...] = (1, 2, 10)
    embed_dims: tuple[int, ...] = (64, 192, 384)
    num_heads: int | tuple[int, ...] | None = None
    head_dim: int = 64
    mlp_ratio: float | tuple[float, ...] = 4.0
    qkv_bias: bool = True
    patch_size: int | tuple[int, ...] = (7, 3, 3)
    patch_stride: int | tuple[int, ...] = (4, 2, 2)
    patch_padding: int | tuple[int, ...] = (2, 1, 1)
    kernel_qkv: int | tuple[int, ...] = 3
    stride_kv: int | tuple[int, ...] = 2
    cls_token: bool = True
    attn_scale: str = "dim"
    act_layer: str | Callable[..., nn.Module] = "quick_gelu"

    def __post_init__(self) -> None:
        if self.attn_scale not in ("dim", "head_dim"):
            raise ValueError(f"CvtCfg.attn_scale must be 'dim' or 'head_dim', got {self.attn_scale!r}")
        num_stages = len(self.depths)
        self.depths = tuple(self.depths)
        self.embed_dims = _per_stage(self.embed_dims, num_stages, "embed_dims")
        if self.num_heads is None:
            self.num_heads = tuple(max(1, dim // self.head_dim) for dim in self.embed_dims)
        self.num_heads = _per_stage(self.num_heads, num_stages, "num_heads")
        for dim, heads in zip(self.embed_dims, self.num_heads, strict=True):
            if dim % heads:
                raise ValueError(f"CvtCfg: width {dim} does not split into {heads} heads")
        self.mlp_ratio = _per_stage(self.mlp_ratio, num_stages, "mlp_ratio")
        self.patch_size = _per_stage(self.patch_size, num_stages, "patch_size")
        self.patch_stride = _per_stage(self.patch_stride, num_stages, "patch_stride")
        self.patch_padding = _per_stage(self.patch_padding, num_stages, "patch_padding")
        self.kernel_qkv = _per_stage(self.kernel_qkv, num_stages, "kernel_qkv")
        self.stride_kv = _per_stage(self.stride_kv, num_stages, "stride_kv")

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def stage_has_cls_token(self) -> tuple[bool, ...]:
        """The class token lives in the last stage only (paper Sec. 3)."""
        return tuple(self.cls_token and i == self.num_stages - 1 for i in range(self.num_stages))


class ConvEmbed(nn.Module):
    """Convolutional token embedding (Sec. 3.1): overlapping strided conv, then LayerNorm over channels."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Embed a feature map as tokens.

        Args:
            x: ``(B, C_in, H_in, W_in)`` image or previous stage's token map.

        Returns:
            ``(B, H*W, embed_dim)`` tokens and the grid ``(H, W)``.
        """
        x = self.proj(x)  # (B, embed_dim, H, W)
        height, width = x.shape[-2:]
        x = self.norm(x.flatten(2).transpose(1, 2))  # (B, H*W, embed_dim)
        return x, (height, width)


class ConvProjection(nn.Module):
    """Depthwise conv and BatchNorm of a token map (Sec. 3.2); the pointwise part is the attention's ``proj_*``."""

    def __init__(self, dim: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            dim, dim, kernel_size, stride=stride, padding=kernel_size // 2, groups=dim, bias=False
        )  # no bias: the BatchNorm right after has one
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` to ``(B, H'*W', C)`` with ``H' = ceil(H / stride)``."""
        return self.bn(self.conv(x)).flatten(2).transpose(1, 2)


class ConvAttention(nn.Module):
    """Multi-head self-attention with convolutional Q/K/V projections, computed by SDPA.

    Queries keep every token (stride 1); keys and values come from a ``stride_kv`` strided map, so attention costs
    ``N * N / stride_kv**2`` instead of ``N * N``. A class token, when present, skips the convolutions (it has no
    place on the grid) and joins the projected tokens before the pointwise projections, so it both queries and is
    attended to.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        kernel_size: int = 3,
        stride_kv: int = 2,
        has_cls_token: bool = False,
        attn_scale: str = "dim",
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = (dim if attn_scale == "dim" else self.head_dim) ** -0.5
        self.has_cls_token = has_cls_token
        self.attn_drop = attn_drop
        self.conv_proj_q = ConvProjection(dim, kernel_size, stride=1)  # every token queries: the residual needs it
        self.conv_proj_k = ConvProjection(dim, kernel_size, stride_kv)
        self.conv_proj_v = ConvProjection(dim, kernel_size, stride_kv)
        self.proj_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_k = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj_v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, N, head_dim)

    def forward(self, x: torch.Tensor, feat_size: tuple[int, int]) -> torch.Tensor:
        """Attend.

        Args:
            x: ``(B, [1 +] H*W, C)`` tokens, the class token first when the stage has one.
            feat_size: the token grid ``(H, W)``.

        Returns:
            ``(B, [1 +] H*W, C)``.
        """
        batch, _, dim = x.shape
        cls_token = None
        if self.has_cls_token:
            cls_token, x = x[:, :1], x[:, 1:]  # (B, 1, C), (B, H*W, C)
        x = x.transpose(1, 2).reshape(batch, dim, *feat_size)  # (B, C, H, W)
        q = self.conv_proj_q(x)  # (B, H*W, C)
        k = self.conv_proj_k(x)  # (B, H*W / stride_kv**2, C)
        v = self.conv_proj_v(x)
        if cls_token is not None:
            q, k, v = (torch.cat((cls_token, t), dim=1) for t in (q, k, v))
        q = self._heads(self.proj_q(q))  # (B, heads, N_q, head_dim)
        k = self._heads(self.proj_k(k))  # (B, heads, N_kv, head_dim)
        v = self._heads(self.proj_v(v))  # (B, heads, N_kv, head_dim)
        x = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
        )
        x = x.transpose(1, 2).reshape(batch, -1, dim)  # (B, N_q, C)
        return self.proj_drop(self.proj(x))


class CvtBlock(nn.Module):
    """Pre-norm transformer block: convolutional attention and an MLP, each on a residual with drop path."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        kernel_qkv: int = 3,
        stride_kv: int = 2,
        has_cls_token: bool = False,
        attn_scale: str = "dim",
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: Callable[..., nn.Module] = nn.GELU,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = ConvAttention(
            dim,
            num_heads,
            qkv_bias=qkv_bias,
            kernel_size=kernel_qkv,
            stride_kv=stride_kv,
            has_cls_token=has_cls_token,
            attn_scale=attn_scale,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
        )
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor, feat_size: tuple[int, int]) -> torch.Tensor:
        """``(B, N, C)`` tokens in and out; ``feat_size`` is the grid of the non-class tokens."""
        x = x + self.drop_path1(self.attn(self.norm1(x), feat_size))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x


class CvtStage(nn.Module):
    """Convolutional token embedding, an optional class token, then ``depth`` blocks at one resolution."""

    def __init__(
        self,
        in_chans: int,
        dim: int,
        depth: int,
        num_heads: int,
        *,
        patch_size: int,
        patch_stride: int,
        patch_padding: int,
        has_cls_token: bool = False,
        drop_path: list[float] | None = None,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.num_prefix_tokens = 1 if has_cls_token else 0
        self.patch_embed = ConvEmbed(in_chans, dim, patch_size, patch_stride, patch_padding)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if has_cls_token else None
        drop_path = drop_path or [0.0] * depth
        self.blocks = nn.ModuleList(
            CvtBlock(dim, num_heads, has_cls_token=has_cls_token, drop_path=drop_path[i], **block_kwargs)
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Run the stage.

        Args:
            x: ``(B, C_in, H_in, W_in)`` image or previous stage's token map.

        Returns:
            ``(B, [1 +] H*W, dim)`` tokens (class token first) and the grid ``(H, W)``.
        """
        x, feat_size = self.patch_embed(x)  # (B, H*W, dim)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)  # (B, 1 + H*W, dim)
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, feat_size)
            else:
                x = block(x, feat_size)
        return x, feat_size


class Cvt(nn.Module):
    """Convolutional vision Transformer (Wu et al. 2021) with timm's classifier interface.

    ``forward_features`` returns the final normalised tokens ``(B, 1 + H*W, C)`` (class token first);
    ``forward_head`` pools them (the class token, or the mean of the others) into the classifier.
    """

    def __init__(
        self,
        cfg: CvtCfg,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_layer: Callable[..., nn.Module] = partial(nn.LayerNorm, eps=1e-5),
    ) -> None:
        """Build the model.

        Args:
            cfg: the architecture.
            img_size: nominal input size. CvT has no position embedding, so it only sets ``feature_info``; any
                input large enough for the strides works.
            in_chans: input channels.
            num_classes: classifier outputs (0: no classifier, ``forward`` returns pooled features).
            global_pool: ``token`` (the class token, as in the paper), ``avg`` (mean of the spatial tokens) or
                ``''`` (no pooling).
            drop_rate: dropout before the classifier.
            proj_drop_rate: dropout after attention's output projection and in the MLP.
            attn_drop_rate: dropout on attention weights.
            drop_path_rate: stochastic depth, rising linearly over all blocks to this value.
            norm_layer: token normalisation in the blocks and before the head (eps 1e-5, as the authors').
        """
        super().__init__()
        if global_pool not in ("token", "avg", ""):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        if global_pool == "token" and not cfg.cls_token:
            raise ValueError("global_pool='token' needs cfg.cls_token=True")
        self.cfg = cfg
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.num_prefix_tokens = 1 if cfg.cls_token else 0
        img_size = to_2tuple(img_size)
        act_layer = get_act_layer(cfg.act_layer)

        dpr = calculate_drop_path_rates(drop_path_rate, list(cfg.depths), stagewise=False)
        self.stages = nn.ModuleList()
        self.feature_info: list[dict[str, Any]] = []
        block_index, reduction, dim = 0, 1, in_chans
        for i in range(cfg.num_stages):
            stage = CvtStage(
                dim,
                cfg.embed_dims[i],
                cfg.depths[i],
                cfg.num_heads[i],
                patch_size=cfg.patch_size[i],
                patch_stride=cfg.patch_stride[i],
                patch_padding=cfg.patch_padding[i],
                has_cls_token=cfg.stage_has_cls_token[i],
                drop_path=dpr[block_index : block_index + cfg.depths[i]],
                mlp_ratio=cfg.mlp_ratio[i],
                qkv_bias=cfg.qkv_bias,
                kernel_qkv=cfg.kernel_qkv[i],
                stride_kv=cfg.stride_kv[i],
                attn_scale=cfg.attn_scale,
                proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate,
                act_layer=act_layer,
                norm_layer=norm_layer,
            )
            self.stages.append(stage)
            block_index += cfg.depths[i]
            reduction *= cfg.patch_stride[i]
            dim = cfg.embed_dims[i]
            self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=f"stages.{i}"))
        self.grid_size = (img_size[0] // reduction, img_size[1] // reduction)  # nominal last-stage grid

        self.num_features = self.head_hidden_size = dim
        self.norm = norm_layer(dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

        for stage in self.stages:
            if stage.cls_token is not None:
                trunc_normal_(stage.cls_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The class token: decaying it towards zero would only blur the classifier's query."""
        return {f"stages.{i}.cls_token" for i, stage in enumerate(self.stages) if stage.cls_token is not None}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise lr decay: the first embedding, then each block (or stage), then the norm."""
        return dict(
            stem=r"^stages\.0\.patch_embed",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [
                (r"^stages\.(\d+)\.(?:patch_embed|cls_token)", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier with a fresh one for ``num_classes`` (0 removes it)."""
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("token", "avg", ""):
                raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
            if global_pool == "token" and not self.num_prefix_tokens:
                raise ValueError("global_pool='token' needs a class token")
            self.global_pool = global_pool
        device = self.norm.weight.device
        self.head = nn.Linear(self.num_features, num_classes, device=device) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self._init_weights(self.head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` images to ``(B, 1 + H'*W', C)`` normalised tokens of the last stage."""
        for i, stage in enumerate(self.stages):
            tokens, (height, width) = stage(x)  # (B, [1 +] h*w, C_i)
            if i < len(self.stages) - 1:
                x = tokens[:, stage.num_prefix_tokens :].transpose(1, 2).reshape(tokens.shape[0], -1, height, width)
        return self.norm(tokens)  # LayerNorm is per token: norm-then-pool equals the paper's pool-then-norm

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the tokens (class token or spatial mean) and classify; ``pre_logits`` stops before the Linear."""
        if self.global_pool == "token":
            x = x[:, 0]  # (B, C)
        elif self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens :].mean(dim=1)  # (B, C)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: Cvt) -> dict[str, torch.Tensor]:
    """Fit fovea's own weights to a model; the authors' stage names are accepted too.

    ``fovea.weights`` converts the published layouts first (``fovea/weights/cvt.py``); timm's ``pretrained=True`` path
    calls this on the raw file, so the authors' ``stage0.`` keys become ``stages.0.`` here too (all their other keys
    are fovea's). No position embedding means nothing to resize.
    """
    state_dict = state_dict.get("model", state_dict)
    return {re.sub(r"^stage(\d+)\.", r"stages.\1.", key): value for key, value in state_dict.items()}


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stages.0.patch_embed.proj",
        "classifier": "head",
        "paper_ids": "arXiv:2103.15808",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "cvt_13_224": _cfg(),
        "cvt_21_224": _cfg(),
        "cvt_13_384": _cfg(input_size=(3, 384, 384), crop_pct=1.0),
        "cvt_21_384": _cfg(input_size=(3, 384, 384), crop_pct=1.0),
        "cvt_w24_384": _cfg(input_size=(3, 384, 384), crop_pct=1.0),
        "cvt_micro_32": _cfg(input_size=(3, 32, 32), crop_pct=1.0),
    }
)

_AUTHORS = dict(attn_scale="dim", act_layer="quick_gelu")

# ``CvtCfg`` arguments per architecture; ``create_model`` keyword arguments named like a ``CvtCfg`` field replace
# them (``depths=(1, 1, 2)``, ``act_layer="gelu"``), so a model of any published shape can be built from a preset.
model_cfgs: dict[str, dict[str, Any]] = dict(
    # Table 2 and the authors' yaml files: widths 64/192/384 with 64 channels per head give their heads 1/3/6.
    cvt_13=dict(depths=(1, 2, 10), **_AUTHORS),
    cvt_21=dict(depths=(1, 4, 16), **_AUTHORS),
    cvt_w24=dict(depths=(2, 2, 20), embed_dims=(192, 768, 1024), **_AUTHORS),  # heads 3/12/16
    # For 32x32 inputs (the demo set). The paper's stride-4 stage-1 embedding would leave a 2x2 grid in stage 3;
    # stride 2 keeps grids of 16x16, 8x8 and 4x4 (CvT-13 at 224 has 56/28/14). A 5x5 kernel keeps that embedding
    # overlapping (kernel > stride), as the paper's 7x7/stride-4 one is. Keys and values keep stride 2 in stages
    # 1-2 but not in stage 3, where it would leave a 2x2 map for the class token to read the 4x4 grid through: on
    # the demo set (in-memory runs, lr 5e-4) stride 1 there gave 90.4% val top-1 after 5 epochs against 83.9%, at
    # the same speed. Widths 64/128/192 with 32 channels per head (heads 2/4/6), depths 1/2/3: 2.1M parameters
    # (8 classes), 69 MMACs per image. Feeding the demo images at 64x64 through the paper's 7x7/stride-4 embedding
    # instead (same grids, similar cost; both with stride-2 keys everywhere) learned more slowly: 71.6% after 6
    # epochs against 91.0% at 32x32. Those results were had with the head-width scale and exact GELU, which it keeps.
    cvt_micro=dict(depths=(1, 2, 3), embed_dims=(64, 128, 192), head_dim=32, stride_kv=(2, 2, 1), attn_scale="head_dim")
    | dict(patch_size=(5, 3, 3), patch_stride=(2, 2, 2), patch_padding=(2, 1, 1), act_layer="gelu"),
)


def _create_cvt(variant: str, cfg_variant: str, pretrained: bool = False, **kwargs: Any) -> Cvt:
    arch = {name: kwargs.pop(name) for name in list(kwargs) if name in {f.name for f in fields(CvtCfg)}}
    return build_model_with_cfg(
        Cvt,
        variant,
        pretrained,
        model_cfg=CvtCfg(**{**model_cfgs[cfg_variant], **arch}),
        pretrained_filter_fn=checkpoint_filter_fn,
        **kwargs,
    )


@register_model
def cvt_13_224(pretrained: bool = False, **kwargs: Any) -> Cvt:
    """CvT-13 at 224x224: depths 1/2/10, about 20.0M parameters and 4.5 GMACs."""
    return _create_cvt("cvt_13_224", "cvt_13", pretrained, **kwargs)


@register_model
def cvt_21_224(pretrained: bool = False, **kwargs: Any) -> Cvt:
    """CvT-21 at 224x224: depths 1/4/16, about 31.6M parameters and 7.1 GMACs."""
    return _create_cvt("cvt_21_224", "cvt_21", pretrained, **kwargs)


@register_model
def cvt_13_384(pretrained: bool = False, **kwargs: Any) -> Cvt:
    """CvT-13 for 384x384 inputs (the same weights shape as at 224)."""
    return _create_cvt("cvt_13_384", "cvt_13", pretrained, **kwargs)


@register_model
def cvt_21_384(pretrained: bool = False, **kwargs: Any) -> Cvt:
    """CvT-21 for 384x384 inputs."""
    return _create_cvt("cvt_21_384", "cvt_21", pretrained, **kwargs)


@register_model
def cvt_w24_384(pretrained: bool = False, **kwargs: Any) -> Cvt:
    """CvT-W24 at 384x384: depths 2/2/20, widths 192/768/1024, heads 3/12/16."""
    return _create_cvt("cvt_w24_384", "cvt_w24", pretrained, **kwargs)


@register_model
def cvt_micro_32(pretrained: bool = False, **kwargs: Any) -> Cvt:
    """A small CvT for 32x32 inputs, tests and the demo set: stage-1 stride 2, grids 16/8/4, 2.1M parameters."""
    return _create_cvt("cvt_micro_32", "cvt_micro", pretrained, **kwargs)
