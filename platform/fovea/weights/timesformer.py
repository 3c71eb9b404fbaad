"""TimeSformer's published layouts: the paper's own repository, and transformers' port of its weights.

- ``facebookresearch-timesformer``: the ``.pyth`` files of https://github.com/facebookresearch/TimeSformer (its
  README's model zoo: K400, K600, SSv2, HowTo100M), ``{"model_state": ..., "cfg": yaml, ...}``. The repository wraps
  its ``VisionTransformer`` in a module whose attribute is ``model``, so every key starts with ``model.``; below
  that the names are fovea's (``cls_token``, ``pos_embed``, ``time_embed``, ``blocks.N.temporal_fc``, ``head``),
  except that the patch embedding is a ``Conv2d`` (a 4-D kernel, fovea's is a 1-frame ``Conv3d``). Its space-only
  models have no time embedding and no temporal attention: nothing in the keys tells them from a ViT, so the
  ``cfg`` the repository saves beside the weights (``TIMESFORMER.ATTENTION_TYPE``) does.
- ``transformers-timesformer``: ``TimesformerForVideoClassification`` (the ``facebook/timesformer-*`` hub models),
  a ``save_pretrained`` folder or its lone ``model.safetensors`` / ``pytorch_model.bin``; ``config.json`` gives the
  clip, the architecture and the class names where it is there, the keys the rest.
"""

from __future__ import annotations

import re
from typing import Any

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
)

# the repository's names for its three schemes (``TIMESFORMER.ATTENTION_TYPE``, transformers' ``attention_type``)
ATTENTION_NAMES = {"divided_space_time": "divided", "joint_space_time": "joint", "space_only": "space"}
# the architecture of fovea's base presets; a file that differs says so in ``model_args``
_BASE_ARCH = {"embed_dim": 768, "depth": 12, "num_heads": 12, "patch_size": 16, "mlp_ratio": 4.0}

_PREFIX = "model."
# frames between sampled frames of the released Kinetics models, by clip length, where a file does not record it:
# the repository's configs TimeSformer_divST_8x32_224, _16x16_448 and _96x4_224 (configs/Kinetics/); its SSv2
# models (174 classes) take one frame per segment instead
_KINETICS_INTERVALS = {8: 32, 16: 16, 96: 4}
_KINETICS_CLASSES = (400, 600)


def _temporal_keys(state: State, marker: str) -> bool:
    return any(marker in key for key in state)


def _attention_from_keys(state: State, time_key: str, temporal_marker: str) -> str:
    """Divided attention has temporal layers; joint a time embedding only; the paper's space-only neither."""
    if _temporal_keys(state, temporal_marker):
        return "divided"
    return "joint" if time_key in state else "space"


def _suggested(attention: str, frames: int | None, size: int | None) -> str:
    if attention != "divided":
        return f"timesformer_base_8x224_{attention}"
    if size == 448:
        return "timesformer_hr_16x448"
    if frames == 96:
        return "timesformer_large_96x224"
    return "timesformer_base_8x224_divided"


def _arch_args(state: State, attention: str, known: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments for the file's architecture (fovea's keys): the attention, and what differs from the
    base presets (width, depth, patch size, MLP ratio and the Q/K/V bias from the tensors; the heads, which no
    tensor shows, where ``known``)."""
    args: dict[str, Any] = {"attention": attention}
    if attention == "space":
        args["space_variant"] = "paper"  # both layouts' space-only models are the paper's (no time embedding)
    arch: dict[str, Any] = dict(known)
    patch, fc1 = state.get("patch_embed.proj.weight"), state.get("blocks.0.mlp.fc1.weight")
    if patch is not None:
        arch["embed_dim"], arch["patch_size"] = int(patch.shape[0]), int(patch.shape[-1])
        if fc1 is not None:
            arch["mlp_ratio"] = fc1.shape[0] / patch.shape[0]
    if "blocks.0.attn.qkv.weight" in state and "blocks.0.attn.qkv.bias" not in state:
        arch["qkv_bias"] = False
    depth = 1 + max((int(m[1]) for key in state if (m := re.match(r"blocks\.(\d+)\.", key))), default=-1)
    if depth:
        arch["depth"] = depth
    args.update({key: value for key, value in arch.items() if value is not None and value != _BASE_ARCH.get(key)})
    return args


def _grid_size(state: State) -> int | None:
    """The image side the spatial position table was trained for (a square grid of patches, plus the CLS)."""
    pos, patch = state.get("pos_embed"), state.get("patch_embed.proj.weight")
    if pos is None or patch is None or pos.dim() != 3:
        return None
    side = int(round((pos.shape[1] - 1) ** 0.5))
    return side * int(patch.shape[-1]) if side * side == pos.shape[1] - 1 else None


def _frames(state: State) -> int | None:
    time = state.get("time_embed")
    return int(time.shape[1]) if time is not None and time.dim() == 3 else None


def _published_interval(classes: int | None, frames: int | None) -> int | None:
    return _KINETICS_INTERVALS.get(frames or 0) if classes in _KINETICS_CLASSES else None


# --- facebookresearch/TimeSformer ----------------------------------------------------------------------------------


def _detect_original(source: WeightsSource) -> bool:
    state = source.state
    if not all(f"{_PREFIX}{key}" in state for key in ("cls_token", "pos_embed", "patch_embed.proj.weight")):
        return False
    if f"{_PREFIX}time_embed" in state or _temporal_keys(state, ".temporal_fc."):
        return True
    cfg = source.meta.get("cfg")
    return isinstance(cfg, str) and "ATTENTION_TYPE" in cfg  # a space-only model: only its cfg says what it is


def _convert_original(source: WeightsSource) -> State:
    out: State = {}
    for key, value in source.state.items():
        name = key.removeprefix(_PREFIX)
        if name == "patch_embed.proj.weight" and value.dim() == 4:
            value = value.unsqueeze(2)  # its Conv2d applied to every frame is fovea's 1-frame Conv3d
        out[name] = value
    return out


def _section(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    value = cfg.get(name)
    return value if isinstance(value, dict) else {}


def _describe_original(source: WeightsSource) -> WeightsInfo:
    state = _convert_original(source)
    cfg = yacs_config(source)
    data, model, train = _section(cfg, "DATA"), _section(cfg, "MODEL"), _section(cfg, "TRAIN")
    recorded = ATTENTION_NAMES.get(str(_section(cfg, "TIMESFORMER").get("ATTENTION_TYPE")))
    attention = recorded or _attention_from_keys(state, "time_embed", ".temporal_fc.")
    frames = data.get("NUM_FRAMES") if isinstance(data.get("NUM_FRAMES"), int) else _frames(state)
    size = data.get("TRAIN_CROP_SIZE") if isinstance(data.get("TRAIN_CROP_SIZE"), int) else _grid_size(state)
    recorded_classes = model.get("NUM_CLASSES") if isinstance(model.get("NUM_CLASSES"), int) else None
    classes = head_rows(state, "head.weight") or recorded_classes
    if not data:
        interval = _published_interval(classes, frames)
    else:
        # Kinetics clips are frames SAMPLING_RATE apart; the SSv2 loader takes one frame per equal segment of the
        # video (timesformer/datasets/ssv2.py) and never reads SAMPLING_RATE
        interval = data.get("SAMPLING_RATE") if str(train.get("DATASET", "")).lower() != "ssv2" else None
    return WeightsInfo(
        family="timesformer",
        num_classes=classes,
        num_frames=frames,
        frame_interval=interval if isinstance(interval, int) else None,
        img_size=size,
        mean=float_tuple(data.get("MEAN")) or KINETICS_MEAN,
        std=float_tuple(data.get("STD")) or KINETICS_STD,
        # vit.py builds only ViT-B/16 with 12 heads (the base presets'); a narrower file must be given its heads
        model_args=_arch_args(state, attention, {}),
        suggested_model=_suggested(attention, frames, size),
    )


# --- transformers ---------------------------------------------------------------------------------------------------

_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.time_embeddings": "time_embed",
    "embeddings.patch_embeddings.projection": "patch_embed.proj",
    "layernorm": "norm",
}
# inside ``encoder.layer.N.``: transformers' module names, fovea's
_HF_LAYER = {
    "layernorm_before": "norm1",
    "attention.attention.qkv": "attn.qkv",
    "attention.output.dense": "attn.proj",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "temporal_layernorm": "temporal_norm1",
    "temporal_attention.attention.qkv": "temporal_attn.qkv",
    "temporal_attention.output.dense": "temporal_attn.proj",
    "temporal_dense": "temporal_fc",
}
_HF_LAYER_KEY = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)")


def _hf_config(source: WeightsSource) -> dict[str, Any]:
    config = source.meta.get("config")
    return config if isinstance(config, dict) and config.get("model_type") == "timesformer" else {}


def _detect_transformers(source: WeightsSource) -> bool:
    state = source.state
    if "timesformer.embeddings.cls_token" in state:
        return True
    # a bare TimesformerModel has no ``timesformer.`` prefix: only its config tells it from other ports' ViTs
    return bool(_hf_config(source)) and "embeddings.cls_token" in state


def _hf_name(key: str) -> str | None:
    if key.startswith("classifier."):
        return "head." + key.removeprefix("classifier.")
    base = key.removeprefix("timesformer.")
    module, _, param = base.rpartition(".")
    if module in _HF_TOP:
        return f"{_HF_TOP[module]}.{param}" if param in ("weight", "bias") else None
    if base in _HF_TOP:
        return _HF_TOP[base]
    match = _HF_LAYER_KEY.fullmatch(base)
    if match and match[2] in _HF_LAYER:
        return f"blocks.{match[1]}.{_HF_LAYER[match[2]]}.{match[3]}"
    return None


def _convert_transformers(source: WeightsSource) -> State:
    out: State = {}
    for key, value in source.state.items():
        name = _hf_name(key)
        if name is None:
            out[key] = value  # no fovea counterpart known: left under its own name for the key check to report
            continue
        if name == "patch_embed.proj.weight" and value.dim() == 4:
            value = value.unsqueeze(2)  # a Conv2d applied to every frame is fovea's 1-frame Conv3d
        out[name] = value
    return out


def _classes(config: dict[str, Any]) -> list[str] | None:
    """The config's class names by index; None for transformers' placeholders (``LABEL_0``, ...), which name none."""
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        return None
    try:
        ordered = sorted((int(index), str(label)) for index, label in id2label.items())
    except ValueError:
        return None
    if [index for index, _ in ordered] != list(range(len(ordered))):
        return None
    labels = [label for _, label in ordered]
    return None if all(label == f"LABEL_{i}" for i, label in enumerate(labels)) else labels


def _int(config: dict[str, Any], key: str) -> int | None:
    value = config.get(key)
    if isinstance(value, list | tuple) and value:
        value = value[0]  # image_size and patch_size may be given as (height, width)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _describe_transformers(source: WeightsSource) -> WeightsInfo:
    state = _convert_transformers(source)
    config = _hf_config(source)
    preprocessor = source.meta.get("preprocessor") or {}
    recorded = ATTENTION_NAMES.get(str(config.get("attention_type")))
    attention = recorded or _attention_from_keys(state, "time_embed", ".temporal_fc.")
    frames = _int(config, "num_frames") or _frames(state)
    size = _int(config, "image_size") or _grid_size(state)
    classes = _classes(config)
    known: dict[str, Any] = {"num_heads": _int(config, "num_attention_heads")}
    rows = head_rows(state, "head.weight")
    return WeightsInfo(
        family="timesformer",
        num_classes=len(classes) if classes else rows,
        classes=classes,
        num_frames=frames,
        frame_interval=_published_interval(len(classes) if classes else rows, frames),
        img_size=size,
        # the file's processor where it has one; else the Kinetics statistics the weights were trained with in the
        # paper's repository (they are its checkpoints, converted)
        mean=float_tuple(preprocessor.get("image_mean")) or KINETICS_MEAN,
        std=float_tuple(preprocessor.get("image_std")) or KINETICS_STD,
        model_args=_arch_args(state, attention, known),
        suggested_model=_suggested(attention, frames, size),
    )


LAYOUTS: tuple[Layout, ...] = (
    Layout(
        name="facebookresearch-timesformer",
        family="timesformer",
        origin="the TimeSformer repository's .pyth files (github.com/facebookresearch/TimeSformer, model zoo)",
        detect=_detect_original,
        convert=_convert_original,
        describe=_describe_original,
    ),
    Layout(
        name="transformers-timesformer",
        family="timesformer",
        origin="transformers' TimesformerForVideoClassification (hub: facebook/timesformer-*)",
        detect=_detect_transformers,
        convert=_convert_transformers,
        describe=_describe_transformers,
    ),
)
