"""Published ViViT layouts: transformers' ``VivitForVideoClassification`` (Model 1) and scenic's Flax checkpoints.

transformers (``google/vivit-b-16x2-kinetics400``, and models fine-tuned from it): a ``save_pretrained`` folder
(``config.json``, ``model.safetensors``), a lone ``model.safetensors`` / ``pytorch_model.bin``, or a torch file of
``model.state_dict()``. ``save_pretrained`` writes the transformers 4 names (``vivit.encoder.layer.N.attention.
attention.query``, ...) and a transformers 5 ``state_dict()`` has the new ones (``vivit.layers.N.attention.
q_proj``, ...): both are read. Separate query/key/value projections become fovea's fused ``qkv``.

scenic (google-research/scenic, ``scenic/projects/vivit``; the Model Zoo's Kinetics, Epic Kitchens checkpoints):
Flax ``msgpack`` serialisations of a training state. ``fovea.weights.flax`` reads one without JAX into the
parameter tree, flattened to ``/``-joined names (``Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel``); the
converter takes those names from such a source or from a ``.safetensors`` file holding them. Flax keeps Dense
kernels as ``(in, out)``, attention projections as ``(D, heads, head_dim)`` and 3D-conv kernels as
``(t, h, w, C, D)``: each is transposed and reshaped to torch's layout. All four models: Model 1 (``cls`` and
``Transformer``), Model 2 (``SpatialTransformer`` and ``TemporalTransformer``), Model 3 (per-block
``MultiHeadDotProductAttention_time``/``_space``) and Model 4 (Model 1's names without a CLS token).

Published files were trained at 32 frames of 224 px: their flat position tables (Models 1, 3, 4) get the token
grid recorded under ``POS_GRID_KEY`` so ``fovea.models.vivit.checkpoint_filter_fn`` can resize them to another
clip length or image size.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from fovea.weights.base import Layout, State, WeightsInfo, WeightsSource, head_rows

# the (T', H', W') grid of a flat position table; fovea.models.vivit.checkpoint_filter_fn consumes it
POS_GRID_KEY = "pos_embed_grid"
# ViViT's published clips: 32 frames of 224 px (scenic's configs: dataset_configs.num_frames 32, crop_size 224; "All
# the models below take in 32 frames as input", scenic/projects/vivit/README.md); transformers' one conversion, of
# the Kinetics 400 Model 1, was trained on every second frame (configs/kinetics400/vivit_base_k400.py: stride 2)
_PUBLISHED_FRAMES, _PUBLISHED_IMG, _PUBLISHED_INTERVAL = 32, 224, 2
# the frame stride of scenic's configs by the classes a head has (scenic/projects/vivit/configs): Kinetics 400 and
# 600 sample every second frame, Epic Kitchens (300 noun + 97 verb outputs) and Something-Something v2 every one
_SCENIC_INTERVALS = {400: 2, 600: 2, 397: 1, 174: 1}
# scenic's configs set dataset_configs.zero_centering: pixels in [-1, 1], i.e. (x - 0.5) / 0.5 on [0, 1] pixels
_ZERO_CENTRED = (0.5, 0.5, 0.5)
# transformers' names for the tanh GELU (gelu_fast is VivitConfig's default); "gelu" is the exact one
_TANH_GELUS = ("gelu_fast", "gelu_new", "gelu_pytorch_tanh")


# ---------------------------------------------------------------------------------------------------- shared


def _grid_of(
    positions: int, patch: int, tubelet: int, frames: int | None, img: int | None
) -> tuple[int, int, int] | None:
    """The ``(T', H', W')`` grid of a flat table: from the recorded clip, else the published one where it divides.

    None where neither says: a flat table of T'H'W' entries does not tell how it factors.
    """
    if frames and img and (frames // tubelet) * (img // patch) ** 2 == positions:
        return frames // tubelet, img // patch, img // patch
    side = (img or _PUBLISHED_IMG) // patch
    if positions % (side * side) == 0:
        return positions // (side * side), side, side
    steps = (frames or _PUBLISHED_FRAMES) // tubelet
    side = int(round((positions / steps) ** 0.5))
    return (steps, side, side) if side and side * side * steps == positions else None


def _preset(kind: str, embed_dim: int, depth: int) -> str:
    """A fovea preset of the file's model (its ``model_args`` override the rest)."""
    if kind == "fe" and (embed_dim, depth) == (1024, 24):
        return "vivit_l16x2_fe"
    return f"vivit_b16x2_{kind}"


def _clip_args(frames: int | None, img: int | None, patch: int, tubelet: int) -> dict[str, Any]:
    args: dict[str, Any] = {"patch_size": patch, "tubelet_size": tubelet}
    if frames:
        args["num_frames"] = frames
    if img:
        args["img_size"] = img
    return args


# ---------------------------------------------------------------------------------------------------- transformers

_HF_BLOCK = re.compile(r"(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$")
# a block's modules, transformers 4 and 5 names, to fovea's (q, k, v are fused into attn.qkv)
_HF_BLOCK_NAMES = {
    "attention.attention.query": "q",
    "attention.q_proj": "q",
    "attention.attention.key": "k",
    "attention.k_proj": "k",
    "attention.attention.value": "v",
    "attention.v_proj": "v",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "mlp.fc1": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc2": "mlp.fc2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}


def _hf_body(state: State) -> State:
    """The file's tensors under ``VivitModel``'s own names (``VivitForVideoClassification`` nests it in ``vivit.``)."""
    return {key.removeprefix("vivit."): value for key, value in state.items()}


def _detect_transformers(source: WeightsSource) -> bool:
    config = source.meta.get("config") or {}
    if config.get("model_type", "vivit") != "vivit":
        return False
    body = _hf_body(source.state)
    projection = body.get("embeddings.patch_embeddings.projection.weight")
    # a 3D tubelet projection beside a CLS token and one position table: VideoMAE has no learnt table, and
    # transformers' TimeSformer a 2D projection and separate time embeddings
    return (
        projection is not None
        and projection.dim() == 5
        and "embeddings.cls_token" in body
        and "embeddings.position_embeddings" in body
        and "embeddings.time_embeddings" not in body
    )


def _transformers_clip(source: WeightsSource) -> tuple[int, int, int, int | None, int | None]:
    """(positions, patch, tubelet, frames, image size): the last two from config.json where there is one."""
    body = _hf_body(source.state)
    config = source.meta.get("config") or {}
    projection = body["embeddings.patch_embeddings.projection.weight"]
    image = config.get("image_size")
    img = int(image[0] if isinstance(image, list | tuple) else image) if image else None
    frames = int(config["num_frames"]) if config.get("num_frames") else None
    positions = int(body["embeddings.position_embeddings"].shape[1]) - 1  # the first entry is the CLS token's
    return positions, int(projection.shape[-1]), int(projection.shape[2]), frames, img


def _convert_transformers(source: WeightsSource) -> State:
    config = source.meta.get("config") or {}
    if float(config.get("layer_norm_eps", 1e-6)) != 1e-6:
        raise ValueError(f"layer_norm_eps {config['layer_norm_eps']} (fovea's ViViT normalises with 1e-6)")
    activation = config.get("hidden_act", "gelu_fast")
    if activation not in (*_TANH_GELUS, "gelu"):
        raise ValueError(f"hidden_act {activation!r} (fovea's ViViT has a GELU, tanh or exact)")
    out: State = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for original, value in source.state.items():
        key = original.removeprefix("vivit.")
        if key.startswith("pooler."):
            continue  # VivitModel's tanh pooler: its classifier reads the CLS token, not the pooler (nor fovea's)
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
            continue
        match = _HF_BLOCK.match(key)
        name = _HF_BLOCK_NAMES.get(match[2]) if match else None
        if match is None or name is None:
            out[original] = value  # unknown: the strict load names it as the file does
        elif name in ("q", "k", "v"):
            qkv.setdefault((match[1], match[3]), {})[name] = value
        else:
            out[f"blocks.{match[1]}.{name}.{match[3]}"] = value
    for (index, leaf), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise KeyError(f"block {index} has {leaf}s for {', '.join(sorted(parts))} only, not query, key and value")
        out[f"blocks.{index}.attn.qkv.{leaf}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    grid = _grid_of(*_transformers_clip(source))
    if grid is not None:
        out[POS_GRID_KEY] = torch.tensor(grid)
    return out


def _processor_statistics(preprocessor: dict[str, Any] | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std a transformers processor config records (on [0, 1] pixels).

    Where it normalises, its ``image_mean``/``image_std``; where it only rescales, [-1, 1] (``offset``, transformers'
    Vivit default, scenic's zero centring) or [0, 1]. Note: transformers' ``VivitImageProcessor`` with ``offset``
    rescales to [-1, 1] *and then* normalises with ``image_mean``/``image_std``; scenic trained these weights on
    [-1, 1] clips, which is what ``image_mean = image_std = 0.5`` describe on [0, 1] pixels, and what fovea feeds.
    """
    if not preprocessor:
        return _ZERO_CENTRED, _ZERO_CENTRED
    if preprocessor.get("do_normalize", True) and preprocessor.get("image_mean") and preprocessor.get("image_std"):
        mean, std = preprocessor["image_mean"], preprocessor["image_std"]
        mean = [mean] * 3 if isinstance(mean, int | float) else mean
        std = [std] * 3 if isinstance(std, int | float) else std
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if preprocessor.get("offset", True) or preprocessor.get("do_zero_centering", False):
        return _ZERO_CENTRED, _ZERO_CENTRED
    return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def _describe_transformers(source: WeightsSource) -> WeightsInfo:
    body = _hf_body(source.state)
    config = source.meta.get("config") or {}
    positions, patch, tubelet, frames, img = _transformers_clip(source)
    grid = _grid_of(positions, patch, tubelet, frames, img)
    if grid is not None:
        frames, img = frames or grid[0] * tubelet, img or grid[1] * patch
    rows = head_rows(body, "classifier.weight")
    labels = config.get("id2label") or {}
    classes = [str(labels.get(str(i), labels.get(i, ""))) for i in range(rows or 0)]
    if not all(classes) or all(name == f"LABEL_{i}" for i, name in enumerate(classes)):
        classes = []  # transformers' placeholders name no classes
    dim = int(body["embeddings.cls_token"].shape[-1])
    depth = len({m[1] for key in body if (m := _HF_BLOCK.match(key))})
    hidden = body.get("encoder.layer.0.intermediate.dense.weight", body.get("layers.0.mlp.fc1.weight"))
    mean, std = _processor_statistics(source.meta.get("preprocessor"))
    args: dict[str, Any] = {
        "kind": "joint",
        "embed_dim": dim,
        "depth": depth,
        # a lone file does not say how its width splits into heads: ViT's 64 channels a head then
        "num_heads": int(config.get("num_attention_heads") or max(1, dim // 64)),
        "qkv_bias": bool(config.get("qkv_bias", True)),
        "gelu_approximate": "none" if config.get("hidden_act") == "gelu" else "tanh",
        **_clip_args(frames, img, patch, tubelet),
    }
    if hidden is not None:
        args["mlp_ratio"] = hidden.shape[0] / dim
    published_clip = (frames, img) == (_PUBLISHED_FRAMES, _PUBLISHED_IMG)
    return WeightsInfo(
        family="vivit",
        num_classes=rows,
        classes=classes or None,
        num_frames=frames,
        frame_interval=_PUBLISHED_INTERVAL if published_clip else None,
        img_size=img,
        mean=mean,
        std=std,
        model_args=args,
        suggested_model=_preset("joint", dim, depth),
    )


TRANSFORMERS = Layout(
    name="transformers-vivit",
    family="vivit",
    origin="transformers' VivitForVideoClassification (hub: google/vivit-b-16x2-kinetics400)",
    detect=_detect_transformers,
    convert=_convert_transformers,
    describe=_describe_transformers,
)


# ---------------------------------------------------------------------------------------------------- scenic (Flax)

# where a scenic training state keeps the parameters: optax states under params, flax.optim ones under
# optimizer/target (pre-Linen ones one level deeper, under params)
_FLAX_PARAM_ROOTS = ("params/", "optimizer/target/params/", "optimizer/target/")


def _scenic_body(state: State) -> State:
    """The parameter tree's names, whatever training-state root a flattened file kept."""
    roots = [root for root in _FLAX_PARAM_ROOTS if any(key.startswith(root) for key in state)]
    root = roots[0] if roots else ""
    return {key.removeprefix(root): value for key, value in state.items() if key.startswith(root)}


def _detect_scenic(source: WeightsSource) -> bool:
    body = _scenic_body(source.state)
    kernel = body.get("embedding/kernel")
    # a 3D-conv tubelet kernel (scenic's ViT baselines have a 2D one) before scenic's encoder blocks
    return (
        kernel is not None
        and kernel.dim() == 5
        and any(key.startswith(("Transformer/encoderblock_", "SpatialTransformer/encoderblock_")) for key in body)
    )


def _scenic_kind(body: State) -> str:
    if any(key.startswith("SpatialTransformer/") for key in body):
        return "fe"
    if any("/MultiHeadDotProductAttention_time/" in key for key in body):
        return "fsa"
    # Model 4 has Model 1's parameters without a CLS token; a Model 1 trained with scenic's "gap" classifier has
    # the same names, and would need a mean-pooling Model 1 fovea does not have
    return "joint" if "cls" in body else "fdp"


# a block's modules in scenic (Models 1, 2, 4: numbered; Model 3: named by axis) to fovea's
_SCENIC_MODULES = {
    "LayerNorm_0": "norm1",
    "LayerNorm_space": "norm1",
    "LayerNorm_1": "norm2",
    "LayerNorm_mlp": "norm2",
    "LayerNorm_time": "norm_temporal",
    "MultiHeadDotProductAttention_0": "attn",
    "MultiHeadDotProductAttention_space": "attn",
    "MultiHeadDotProductAttention_time": "attn_temporal",
    "MlpBlock_0/Dense_0": "mlp.fc1",
    "MlpBlock/Dense_0": "mlp.fc1",
    "MlpBlock_0/Dense_1": "mlp.fc2",
    "MlpBlock/Dense_1": "mlp.fc2",
}
_SCENIC_TOP = {
    "cls": "cls_token",
    "cls_SpatialTransformer": "cls_token",
    "cls_TemporalTransformer": "temporal_cls_token",
    "Transformer/posembed_input/pos_embedding": "pos_embed",
    "SpatialTransformer/posembed_input/pos_embedding": "pos_embed",
    "TemporalTransformer/posembed_input/pos_embedding": "temporal_pos_embed",
    "embedding/bias": "patch_embed.proj.bias",
    "output_projection/bias": "head.bias",
}
_SCENIC_BLOCK = re.compile(r"(Transformer|SpatialTransformer|TemporalTransformer)/encoderblock_(\d+)/(.+)/(\w+)$")


def _scenic_leaf(module: str, leaf: str, value: torch.Tensor) -> torch.Tensor:
    """A Flax parameter in torch's layout: Dense kernels ``(in, out)`` and attention ``(D, heads, head_dim)``."""
    if leaf == "scale" or value.dim() == 1:
        return value
    if module.endswith(("/query", "/key", "/value")):
        return value.reshape(value.shape[0], -1).t() if leaf == "kernel" else value.reshape(-1)
    if module.endswith("/out") and leaf == "kernel":
        return value.reshape(-1, value.shape[-1]).t()  # (heads, head_dim, D) -> (D, heads * head_dim)
    return value.t() if leaf == "kernel" else value


def _scenic_block_key(encoder: str, index: str, module: str, leaf: str) -> str | None:
    prefix = f"temporal_blocks.{index}" if encoder == "TemporalTransformer" else f"blocks.{index}"
    attention, _, part = module.rpartition("/")
    if part in ("query", "key", "value"):
        name = _SCENIC_MODULES.get(attention)
        return f"{prefix}.{name}.{part}.{leaf}" if name else None
    if part == "out":
        name = _SCENIC_MODULES.get(attention)
        return f"{prefix}.{name}.proj.{'weight' if leaf == 'kernel' else 'bias'}" if name else None
    name = _SCENIC_MODULES.get(module)
    if name is None:
        return None
    return f"{prefix}.{name}.{'bias' if leaf == 'bias' else 'weight'}"


def _convert_scenic(source: WeightsSource) -> State:
    body = _scenic_body(source.state)
    if any(key.startswith("pre_logits/") for key in body):
        raise ValueError("a representation layer (pre_logits, scenic's representation_size) fovea's ViViT lacks")
    out: State = {}
    for key, value in body.items():
        if key in _SCENIC_TOP:
            out[_SCENIC_TOP[key]] = value
        elif key == "embedding/kernel":
            out["patch_embed.proj.weight"] = value.permute(4, 3, 0, 1, 2)  # (t, h, w, C, D) -> (D, C, t, h, w)
        elif key == "output_projection/kernel":
            out["head.weight"] = value.t()
        elif key.endswith("encoder_norm/scale") or key.endswith("encoder_norm/bias"):
            norm = "temporal_norm" if key.startswith("TemporalTransformer/") else "norm"
            out[f"{norm}.{'weight' if key.endswith('scale') else 'bias'}"] = value
        elif (match := _SCENIC_BLOCK.match(key)) and (name := _scenic_block_key(*match.groups())):
            out[name] = _scenic_leaf(match[3], match[4], value)
        else:
            out[key] = value  # unknown: the strict load names it
    for key in [k for k in out if k.endswith((".query.kernel", ".query.bias"))]:
        stem, leaf = key.rsplit(".query.", 1)
        parts = [out.pop(f"{stem}.{part}.{leaf}", None) for part in ("query", "key", "value")]
        if any(part is None for part in parts):
            raise KeyError(f"{stem}: query, key and value {leaf}s are not all there")
        out[f"{stem}.qkv.{'weight' if leaf == 'kernel' else 'bias'}"] = torch.cat(parts, dim=0)
    grid = _scenic_grid(body) if _scenic_kind(body) != "fe" else None  # Model 2's tables say their own sizes
    if grid is not None:
        out[POS_GRID_KEY] = torch.tensor(grid)
    return out


def _scenic_grid(body: State) -> tuple[int, int, int] | None:
    kernel = body["embedding/kernel"]
    positions = int(body["Transformer/posembed_input/pos_embedding"].shape[1]) - (1 if "cls" in body else 0)
    return _grid_of(positions, int(kernel.shape[1]), int(kernel.shape[0]), None, None)


def _describe_scenic(source: WeightsSource) -> WeightsInfo:
    body = _scenic_body(source.state)
    kind = _scenic_kind(body)
    kernel = body["embedding/kernel"]  # (t, h, w, C, D)
    tubelet, patch, dim = int(kernel.shape[0]), int(kernel.shape[1]), int(kernel.shape[4])
    if kind == "fe":
        side = round((body["SpatialTransformer/posembed_input/pos_embedding"].shape[1] - 1) ** 0.5)
        steps = int(body["TemporalTransformer/posembed_input/pos_embedding"].shape[1]) - 1
    else:
        steps, side, _ = _scenic_grid(body) or (0, 0, 0)
    encoder = "SpatialTransformer" if kind == "fe" else "Transformer"
    blocks = {m[2] for key in body if (m := _SCENIC_BLOCK.match(key)) and m[1] == encoder}
    attention = "MultiHeadDotProductAttention_space" if kind == "fsa" else "MultiHeadDotProductAttention_0"
    query = body[f"{encoder}/encoderblock_0/{attention}/query/kernel"]  # (D, heads, head_dim)
    hidden = body.get(f"{encoder}/encoderblock_0/{'MlpBlock' if kind == 'fsa' else 'MlpBlock_0'}/Dense_0/kernel")
    frames, img = (steps * tubelet or None), (side * patch or None)
    head = body.get("output_projection/kernel")
    args: dict[str, Any] = {
        "kind": kind,
        "embed_dim": dim,
        "depth": len(blocks),
        "num_heads": int(query.shape[1]),
        "qkv_bias": f"{encoder}/encoderblock_0/{attention}/query/bias" in body,
        "gelu_approximate": "tanh",  # scenic's MlpBlock: flax's nn.gelu, tanh-approximate by default
        **_clip_args(frames, img, patch, tubelet),
    }
    if hidden is not None:
        args["mlp_ratio"] = hidden.shape[1] / dim
    if kind == "fe":
        args["temporal_depth"] = len({m[2] for k in body if (m := _SCENIC_BLOCK.match(k)) and m[1] != encoder})
    elif kind == "fsa":
        args["attention_order"] = "time_space"  # EncoderFactorizedSelfAttentionBlock's default; files do not say
    elif kind == "fdp":
        args["time_heads_first"] = True  # factorized_dot_product_attention splits the heads over (time, space)
    return WeightsInfo(
        family="vivit",
        num_classes=int(head.shape[1]) if head is not None else None,  # a (D, classes) kernel
        num_frames=frames,
        frame_interval=_SCENIC_INTERVALS.get(int(head.shape[1])) if head is not None else None,
        img_size=img,
        mean=_ZERO_CENTRED,
        std=_ZERO_CENTRED,
        model_args=args,
        suggested_model=_preset(kind, dim, len(blocks)),
    )


SCENIC = Layout(
    name="scenic-vivit",
    family="vivit",
    origin="scenic's ViViT Flax checkpoints (storage.googleapis.com/scenic-bucket/vivit/...)",
    detect=_detect_scenic,
    convert=_convert_scenic,
    describe=_describe_scenic,
)

LAYOUTS: tuple[Layout, ...] = (TRANSFORMERS, SCENIC)
