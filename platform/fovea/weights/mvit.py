"""Published MViT (v1) key layouts: torchvision's ``mvit_v1_b``, PySlowFast's ``.pyth`` and pytorchvideo's.

All three hold the same network as ``fovea.models.mvit`` (Fan et al. 2021): a 3x7x7 cube embedding, separable
space/time position embeddings and a CLS token, blocks of pooling attention with depthwise ``Conv3d`` pooling and a
``LayerNorm`` after it, and a linear classifier on the final CLS. They differ in names and in how they store a few
tensors:

- torchvision (``torchvision.models.video.mvit``): ``conv_proj``, ``pos_encoding.{class_token, spatial_pos,
  temporal_pos, class_pos}`` without the batch dimensions, ``attn.pool_q.pool``/``.norm_act.0``, ``attn.project.0``,
  ``mlp.0``/``mlp.3``, ``project``, ``head.1``.
- PySlowFast (``slowfast/models/video_model_builder.py`` MViT, ``attention.py``): ``patch_embed.proj``,
  ``attn.pool_q`` (the conv itself) and ``attn.norm_q``, ``head.projection``; Q/K/V as one ``attn.qkv`` or (the
  first MViT releases, and ``MVIT.SEPARATE_QKV``) as ``attn.q``/``attn.k``/``attn.v``. The ``.pyth`` file nests the
  weights under ``model_state`` beside ``cfg``, the run's YAML config, which records the clip and normalisation.
- pytorchvideo (``pytorchvideo/models/vision_transformers.py``): ``patch_embed.patch_model``,
  ``cls_positional_encoding.*``, split ``attn.q/k/v``, ``norm_embed``, ``head.proj``.

MViTv2 files (relative position tables, residual pooling) are recognised and refused in one line: fovea's MViT is v1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from fovea.weights.base import (
    KINETICS_MEAN,
    KINETICS_STD,
    Layout,
    State,
    WeightsInfo,
    WeightsSource,
    float_tuple,
    head_rows,
    yacs_config,
    yacs_value,
)

# MViT-B as published (Fan et al. 2021, Table 3; PySlowFast configs/Kinetics/MVIT_B_16x4_CONV.yaml) and as fovea's
# mvit_base_16x4 / mvit_base_32x3 build it: the fields a file's ``model_args`` name are the ones that differ
MVIT_B = {
    "depth": 16,
    "embed_dim": 96,
    "num_heads": 1,
    "stage_starts": (1, 3, 14),
    "stride_q": (1, 2, 2),
    "kernel_qkv": (3, 3, 3),
    "stride_kv": (1, 8, 8),
    "patch_kernel": (3, 7, 7),
    "patch_stride": (2, 4, 4),
    "mlp_ratio": 4.0,
    "qkv_bias": True,
}
# the image MViT-B-16 differs from MViT-B in its 2D patch embedding and 1-frame pooling kernels, and pools keys and
# values by 4 in the first stage (pytorchvideo's mvit_image_base_16_config, PySlowFast's ImageNet/MVIT_B_16_CONV)
IMAGE_MVIT_B = {"patch_kernel": (1, 7, 7), "patch_stride": (1, 4, 4), "kernel_qkv": (1, 3, 3), "stride_kv": (1, 4, 4)}

Rule = tuple[re.Pattern[str], str, Callable[[torch.Tensor], torch.Tensor] | None]


def _rules(*rules: tuple[str, str, Callable[[torch.Tensor], torch.Tensor] | None]) -> tuple[Rule, ...]:
    return tuple((re.compile("^" + pattern), replacement, reshape) for pattern, replacement, reshape in rules)


def _token(value: torch.Tensor) -> torch.Tensor:
    return value.reshape(1, 1, -1)  # torchvision keeps (C,) where fovea (like PySlowFast) keeps (1, 1, C)


def _table(value: torch.Tensor) -> torch.Tensor:
    return value.unsqueeze(0) if value.dim() == 2 else value  # (N, C) -> (1, N, C)


def _conv3d(value: torch.Tensor) -> torch.Tensor:
    return value.unsqueeze(2) if value.dim() == 4 else value  # an image model's Conv2d is a 1-frame Conv3d


_POOLS = (
    (r"(blocks\.\d+\.attn)\.pool_([qkv])\.weight$", r"\1.pool_\2.conv.weight", None),
    (r"(blocks\.\d+\.attn)\.norm_([qkv])\.", r"\1.pool_\2.norm.", None),
)
TORCHVISION_RULES = _rules(
    (r"conv_proj\.", "patch_embed.", None),
    (r"pos_encoding\.class_token$", "cls_token", _token),
    (r"pos_encoding\.class_pos$", "pos_embed_class", _token),
    (r"pos_encoding\.spatial_pos$", "pos_embed_spatial", _table),
    (r"pos_encoding\.temporal_pos$", "pos_embed_temporal", _table),
    (r"(blocks\.\d+\.attn)\.project\.0\.", r"\1.proj.", None),
    (r"(blocks\.\d+\.attn\.pool_[qkv])\.pool\.weight$", r"\1.conv.weight", None),
    (r"(blocks\.\d+\.attn\.pool_[qkv])\.norm_act\.0\.", r"\1.norm.", None),
    (r"(blocks\.\d+)\.mlp\.0\.", r"\1.mlp.fc1.", None),
    (r"(blocks\.\d+)\.mlp\.3\.", r"\1.mlp.fc2.", None),
    (r"(blocks\.\d+)\.project\.", r"\1.proj.", None),
    (r"head\.1\.", "head.", None),
)
SLOWFAST_RULES = _rules(
    (r"patch_embed\.proj\.weight$", "patch_embed.weight", _conv3d),
    (r"patch_embed\.proj\.bias$", "patch_embed.bias", None),
    *_POOLS,
    (r"head\.projection\.", "head.", None),
)
PYTORCHVIDEO_RULES = _rules(
    (r"patch_embed\.patch_model\.weight$", "patch_embed.weight", _conv3d),
    (r"patch_embed\.patch_model\.bias$", "patch_embed.bias", None),
    (r"cls_positional_encoding\.", "", None),
    *_POOLS,
    # pytorchvideo wraps each pool_q/norm_q in an _AttentionPool too, so its state_dict lists them twice: the copies
    # map to the same keys (and must agree)
    (r"(blocks\.\d+\.attn)\._attention_pool_([qkv])\.pool\.weight$", r"\1.pool_\2.conv.weight", None),
    (r"(blocks\.\d+\.attn)\._attention_pool_([qkv])\.norm\.", r"\1.pool_\2.norm.", None),
    (r"norm_embed\.", "norm.", None),
    (r"head\.proj\.", "head.", None),
)
_SPLIT_QKV = re.compile(r"^(blocks\.\d+\.attn)\.([qkv])\.(weight|bias)$")


def _rename(state: State, rules: tuple[Rule, ...]) -> State:
    """Each key through the first rule that matches it; keys no rule names are kept for the strict check."""
    out: State = {}
    for key, value in state.items():
        new_key = key
        for pattern, replacement, reshape in rules:
            if pattern.match(key):
                new_key = pattern.sub(replacement, key, count=1)
                value = reshape(value) if reshape is not None else value
                break
        if new_key in out:
            if out[new_key].shape != value.shape or not torch.equal(out[new_key], value):
                raise ValueError(f"{key} and another tensor both give {new_key}, with different values")
            continue
        out[new_key] = value
    return out


def _fuse_qkv(state: State) -> State:
    """Separate ``attn.q``/``attn.k``/``attn.v`` projections as fovea's one ``attn.qkv`` (rows: Q, then K, then V)."""
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key in state:
        match = _SPLIT_QKV.match(key)
        if match:
            parts.setdefault((match.group(1), match.group(3)), {})[match.group(2)] = state[key]
    out = dict(state)
    for (prefix, param), found in parts.items():
        if len(found) == 3:  # an incomplete triple stays under its own names: the strict check names them
            for letter in "qkv":
                del out[f"{prefix}.{letter}.{param}"]
            out[f"{prefix}.qkv.{param}"] = torch.cat([found["q"], found["k"], found["v"]], dim=0)
    return out


def _refuse_unsupported(state: State, what: str) -> None:
    if any(".rel_pos_" in key for key in state):
        raise ValueError(f"{what} MViTv2 weights (relative position tables): fovea's MViT is v1")
    if "cls_token" not in state:
        raise ValueError(f"{what} MViT without a CLS token: fovea's MViT classifies its CLS token")


def _split_joint_table(state: State) -> State:
    """A joint position table ``(1, 1 + N, C)`` as separable ones: exact for an image model (one time step)."""
    if "pos_embed" not in state:
        return state
    patch = state.get("patch_embed.weight")
    if patch is None or patch.dim() != 5 or patch.shape[2] != 1 or "pos_embed_spatial" in state:
        raise ValueError("a joint space-time position table (SEP_POS_EMBED false): fovea's MViT has separable ones")
    out = dict(state)
    table = out.pop("pos_embed")
    out["pos_embed_class"] = table[:, :1]
    out["pos_embed_spatial"] = table[:, 1:]
    out["pos_embed_temporal"] = table.new_zeros(1, 1, table.shape[-1])  # one time step: its embedding is the table's
    return out


def _check_slowfast_cfg(tree: dict[str, Any]) -> None:
    """Options a PySlowFast config can set that leave the keys as MViTv1's but change what the network computes."""
    unsupported = {
        "MVIT.POOL_FIRST": (True, "pooling before the Q/K/V projections"),
        "MVIT.RESIDUAL_POOLING": (True, "MViTv2's residual pooling"),
        "MVIT.DIM_MUL_IN_ATT": (True, "MViTv2's widening in attention"),
        "MVIT.USE_MEAN_POOLING": (True, "mean pooling instead of the CLS token"),
        "MVIT.REV.ENABLE": (True, "reversible MViT"),
    }
    for path, (value, what) in unsupported.items():
        if yacs_value(tree, path) is value:
            raise ValueError(f"{path} is {value} ({what}): not fovea's MViT")
    mode = yacs_value(tree, "MVIT.MODE")
    if mode is not None and mode != "conv":
        raise ValueError(f"MVIT.MODE is {mode!r}: fovea's MViT pools with depthwise convolutions ('conv')")


def _convert_torchvision(source: WeightsSource) -> State:
    if "pos_encoding.spatial_pos" not in source.state:
        raise ValueError("torchvision's MViTv2 (mvit_v2_s: relative positions, residual pooling): fovea's MViT is v1")
    state = _rename(source.state, TORCHVISION_RULES)
    _refuse_unsupported(state, "torchvision")
    return state


def _convert_slowfast(source: WeightsSource) -> State:
    _check_slowfast_cfg(yacs_config(source))
    state = _split_joint_table(_fuse_qkv(_rename(source.state, SLOWFAST_RULES)))
    _refuse_unsupported(state, "PySlowFast")
    return state


def _convert_pytorchvideo(source: WeightsSource) -> State:
    state = _split_joint_table(_fuse_qkv(_rename(source.state, PYTORCHVIDEO_RULES)))
    _refuse_unsupported(state, "pytorchvideo")
    return state


def _block_count(state: State) -> int:
    indices = [int(match.group(1)) for key in state if (match := re.match(r"blocks\.(\d+)\.", key))]
    return max(indices) + 1 if indices else 0


def architecture(state: State) -> dict[str, Any]:
    """The MViTCfg fields a converted state dict (fovea's keys) records in its shapes.

    Not recorded in any tensor: the pooling strides (``stride_q``, ``stride_kv``) and the cube stride; those come
    from a PySlowFast config, or the release's published values.
    """
    arch: dict[str, Any] = {}
    depth = _block_count(state)
    patch = state.get("patch_embed.weight")
    if depth:
        arch["depth"] = depth
        arch["stage_starts"] = tuple(i for i in range(depth) if f"blocks.{i}.attn.pool_q.conv.weight" in state)
        arch["qkv_bias"] = "blocks.0.attn.qkv.bias" in state
        hidden, width = state.get("blocks.0.mlp.fc1.weight", torch.zeros(0, 0)).shape[:2]
        if width:
            arch["mlp_ratio"] = hidden / width
    if patch is not None and patch.dim() == 5:
        arch["embed_dim"], arch["patch_kernel"] = int(patch.shape[0]), tuple(int(k) for k in patch.shape[2:])
    for index in range(depth):  # heads: the width over a pooling conv's channels (head_dim); they double per stage
        pool = state.get(
            f"blocks.{index}.attn.pool_k.conv.weight", state.get(f"blocks.{index}.attn.pool_q.conv.weight")
        )
        norm = state.get(f"blocks.{index}.norm1.weight")
        if pool is not None and pool.dim() == 5 and norm is not None:
            stage = sum(1 for start in arch.get("stage_starts", ()) if start <= index)
            arch["num_heads"] = max(int(norm.shape[0]) // int(pool.shape[0]) // 2**stage, 1)
            arch["kernel_qkv"] = tuple(int(k) for k in pool.shape[2:])
            break
    return arch


def _slowfast_arch(tree: dict[str, Any]) -> dict[str, Any]:
    """The pooling and cube strides a PySlowFast config records (the weights' shapes cannot say them)."""
    arch: dict[str, Any] = {}
    stride = yacs_value(tree, "MVIT.PATCH_STRIDE")
    if isinstance(stride, list | tuple) and len(stride) in (2, 3):
        arch["patch_stride"] = tuple(int(s) for s in ([1, *stride] if len(stride) == 2 else stride))
    pool_q = yacs_value(tree, "MVIT.POOL_Q_STRIDE")
    if isinstance(pool_q, list | tuple) and pool_q and len(pool_q[0]) == 4:
        arch["stride_q"] = tuple(int(s) for s in pool_q[0][1:])
    adaptive = yacs_value(tree, "MVIT.POOL_KV_STRIDE_ADAPTIVE")
    if isinstance(adaptive, list | tuple) and len(adaptive) == 3:
        arch["stride_kv"] = tuple(int(s) for s in adaptive)
    return arch


def _count(value: Any) -> int | None:
    """A positive whole number from a config, or None (a missing or unreadable entry)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _describe(state: State, tree: dict[str, Any]) -> WeightsInfo:
    """What a converted MViT file records: head rows, clip and image size from the position tables (or the cfg),
    the architecture from the shapes, and the published defaults of the release for what neither records."""
    arch = architecture(state)
    image = arch.get("patch_kernel", (3,))[0] == 1 and state.get("pos_embed_temporal", torch.zeros(1, 2)).shape[1] == 1
    if image:  # an image MViT: published with a 2D patch embedding and ImageNet-style pooling
        arch = {**IMAGE_MVIT_B, **arch}
    arch.update(_slowfast_arch(tree))
    patch_stride = arch.get("patch_stride", MVIT_B["patch_stride"])
    steps = state.get("pos_embed_temporal", torch.zeros(1, 0)).shape[1]
    positions = state.get("pos_embed_spatial", torch.zeros(1, 0)).shape[1]
    side = math.isqrt(positions)
    frames = _count(yacs_value(tree, "DATA.NUM_FRAMES")) or (steps * patch_stride[0] if steps else None)
    img_size = _count(yacs_value(tree, "DATA.TRAIN_CROP_SIZE")) or (side * patch_stride[1] if side else None)
    # the published clips: 16 frames 4 apart and 32 frames 3 apart (PySlowFast MVIT_B_16x4_CONV / MVIT_B_32x3_CONV
    # DATA.SAMPLING_RATE; torchvision's mvit_v1_b is the 16x4 model, pytorchvideo's zoo has both)
    interval = _count(yacs_value(tree, "DATA.SAMPLING_RATE")) or {16: 4, 32: 3}.get(frames)
    mean, std = float_tuple(yacs_value(tree, "DATA.MEAN")), float_tuple(yacs_value(tree, "DATA.STD"))
    if mean is None or std is None:  # the image MViT-B-16 (configs/ImageNet/MVIT_B_16_CONV.yaml): ImageNet's
        mean, std = (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD) if image else (KINETICS_MEAN, KINETICS_STD)
    return WeightsInfo(
        family="mvit",
        num_classes=head_rows(state, "head.weight") or _count(yacs_value(tree, "MODEL.NUM_CLASSES")),
        num_frames=frames,
        frame_interval=None if image else interval,
        img_size=img_size,
        mean=mean,
        std=std,
        model_args={key: value for key, value in arch.items() if MVIT_B.get(key) != value},
        suggested_model="mvit_base_32x3" if frames == 32 else "mvit_base_16x4",
    )


def _describe_slowfast(source: WeightsSource) -> WeightsInfo:
    return _describe(_convert_slowfast(source), yacs_config(source))


def _describe_torchvision(source: WeightsSource) -> WeightsInfo:
    return _describe(_convert_torchvision(source), {})


def _describe_pytorchvideo(source: WeightsSource) -> WeightsInfo:
    return _describe(_convert_pytorchvideo(source), {})


def _has(source: WeightsSource, *keys: str) -> bool:
    return all(key in source.state for key in keys)


def _pools_keys(source: WeightsSource) -> bool:
    return any(key.endswith((".attn.pool_k.weight", ".attn.norm_k.weight")) for key in source.state)


TORCHVISION = Layout(
    name="torchvision-mvit",
    family="mvit",
    origin="torchvision's mvit_v1_b KINETICS400_V1 weights (download.pytorch.org/models/mvit_v1_b-dbeb1030.pth)",
    detect=lambda source: _has(source, "conv_proj.weight", "pos_encoding.class_token"),
    convert=_convert_torchvision,
    describe=_describe_torchvision,
)
PYSLOWFAST = Layout(
    name="pyslowfast-mvit",
    family="mvit",
    origin="PySlowFast's MViT .pyth (SlowFast MODEL_ZOO.md: Kinetics MVIT_B_16x4_CONV, MVIT_B_32x3_CONV)",
    # PySlowFast's other models (SlowFast, X3D) have no pooling attention; its ViT-like keys have no pool_k
    detect=lambda source: _has(source, "patch_embed.proj.weight") and _pools_keys(source),
    convert=_convert_slowfast,
    describe=_describe_slowfast,
)
PYTORCHVIDEO = Layout(
    name="pytorchvideo-mvit",
    family="mvit",
    origin="pytorchvideo's model zoo (MVIT_B_16x4.pyth, MVIT_B_32x3_f294077834.pyth at dl.fbaipublicfiles.com)",
    detect=lambda source: (
        _has(source, "patch_embed.patch_model.weight")
        and any(key.startswith("cls_positional_encoding.") for key in source.state)
    ),
    convert=_convert_pytorchvideo,
    describe=_describe_pytorchvideo,
)

LAYOUTS: tuple[Layout, ...] = (TORCHVISION, PYSLOWFAST, PYTORCHVIDEO)
