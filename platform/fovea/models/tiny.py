"""Small ViT, DeiT and Swin presets for laptops, CPUs, the demo data and tests.

They are ordinary timm architectures at small widths and 32x32 inputs, registered in timm's registry so that
``timm.create_model("vit_micro_patch4_32")`` works once ``fovea.models`` is imported. They carry no weights.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import HybridEmbed
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.deit import VisionTransformerDistilled
from timm.models.swin_transformer import SwinTransformer
from timm.models.swin_transformer import checkpoint_filter_fn as swin_filter_fn
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer import checkpoint_filter_fn as vit_filter_fn
from torch import nn


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 32, 32),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "vit_micro_patch4_32": _cfg(),
        "vit_nano_patch4_16": _cfg(input_size=(3, 16, 16)),
        "vit_micro_convstem_32": _cfg(first_conv="patch_embed.backbone.0"),
        "deit_micro_distilled_convstem_32": _cfg(first_conv="patch_embed.backbone.0", classifier=("head", "head_dist")),
        "deit_micro_patch4_32": _cfg(),
        "deit_micro_distilled_patch4_32": _cfg(classifier=("head", "head_dist")),
        "swin_micro_patch2_window4_32": _cfg(),
    }
)


def _vit(variant: str, pretrained: bool, model_args: dict[str, Any], **kwargs: Any) -> VisionTransformer:
    return build_model_with_cfg(
        VisionTransformer, variant, pretrained, pretrained_filter_fn=vit_filter_fn, **{**model_args, **kwargs}
    )


@register_model
def vit_micro_patch4_32(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT at 32x32, patch 4 (64 tokens), width 128, depth 4: about 0.8M parameters."""
    model_args = dict(img_size=32, patch_size=4, embed_dim=128, depth=4, num_heads=4, mlp_ratio=3.0)
    return _vit("vit_micro_patch4_32", pretrained, model_args, **kwargs)


def conv_stem(embed_dim: int, widths: tuple[int, ...] = (32, 64), in_chans: int = 3) -> nn.Sequential:
    """Stride-2 3x3 conv + BN + ReLU per width: a 2**len(widths) downsampling stem in place of the patchify layer.

    After Xiao et al. 2021 ("Early Convolutions Help Transformers See Better"): a few early convolutions make
    ViTs train faster and more stably on small data, with the transformer itself unchanged. The final 1x1
    projection to ``embed_dim`` is ``HybridEmbed``'s.
    """
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_chans, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        in_chans = width
    return nn.Sequential(*layers)


def _convstem_args(embed_dim: int = 128) -> dict[str, Any]:
    return dict(
        img_size=32,
        patch_size=1,  # tokens are the stem's output pixels: (img_size / 4) ** 2 of them
        embed_dim=embed_dim,
        depth=4,
        num_heads=4,
        mlp_ratio=3.0,
        embed_layer=partial(HybridEmbed, backbone=conv_stem(embed_dim)),
    )


@register_model
def vit_micro_convstem_32(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """``vit_micro_patch4_32`` with a 2-layer convolutional stem (4x downsampling, so the same 64 tokens).

    The demo preset of train_vit: on the 8-class demo set it reached 67.9% val top-1 after 3 epochs where the
    patchify version reached 44% (see jobs/configs/vit/default.yaml).
    """
    return _vit("vit_micro_convstem_32", pretrained, _convstem_args(), **kwargs)


@register_model
def deit_micro_distilled_convstem_32(pretrained: bool = False, **kwargs: Any) -> VisionTransformerDistilled:
    """``deit_micro_distilled_patch4_32`` with the convolutional stem of ``vit_micro_convstem_32``."""
    return _deit_distilled("deit_micro_distilled_convstem_32", pretrained, _convstem_args(), **kwargs)


@register_model
def vit_nano_patch4_16(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT at 16x16, width 32, depth 2: a few tens of thousands of parameters, for unit tests."""
    model_args = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
    return _vit("vit_nano_patch4_16", pretrained, model_args, **kwargs)


@register_model
def deit_micro_patch4_32(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """DeiT (a ViT trained with DeiT's recipe) at the size of ``vit_micro_patch4_32``."""
    model_args = dict(img_size=32, patch_size=4, embed_dim=128, depth=4, num_heads=4, mlp_ratio=3.0)
    return _vit("deit_micro_patch4_32", pretrained, model_args, **kwargs)


def _deit_distilled(
    variant: str, pretrained: bool, model_args: dict[str, Any], **kwargs: Any
) -> VisionTransformerDistilled:
    return build_model_with_cfg(
        VisionTransformerDistilled, variant, pretrained, pretrained_filter_fn=vit_filter_fn, **{**model_args, **kwargs}
    )


@register_model
def deit_micro_distilled_patch4_32(pretrained: bool = False, **kwargs: Any) -> VisionTransformerDistilled:
    """DeiT with a distillation token (two heads; their mean at evaluation), ViT-micro sized."""
    model_args = dict(img_size=32, patch_size=4, embed_dim=128, depth=4, num_heads=4, mlp_ratio=3.0)
    return _deit_distilled("deit_micro_distilled_patch4_32", pretrained, model_args, **kwargs)


@register_model
def swin_micro_patch2_window4_32(pretrained: bool = False, **kwargs: Any) -> SwinTransformer:
    """Swin at 32x32: patch 2 (16x16 tokens), window 4, three stages (16, 8, 4 tokens a side)."""
    model_args = dict(
        img_size=32, patch_size=2, window_size=4, embed_dim=48, depths=(2, 2, 2), num_heads=(2, 4, 8), mlp_ratio=3.0
    )
    return build_model_with_cfg(
        SwinTransformer,
        "swin_micro_patch2_window4_32",
        pretrained,
        pretrained_filter_fn=swin_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2)),
        **{**model_args, **kwargs},
    )
