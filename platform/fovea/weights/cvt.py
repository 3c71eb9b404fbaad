"""Published CvT key layouts: the authors' ``.pth`` files and transformers' ``CvtForImageClassification``.

Both hold the same tensors as fovea's ``fovea.models.cvt`` (the transformers port was converted from the authors'
files), under other names:

- ``microsoft-cvt``: github:microsoft/CvT (``lib/models/cls_cvt.py``) names its stages ``stage0``, ``stage1``, ...
  where fovea has ``stages.0``, ...; every other key (``patch_embed.proj``, ``blocks.M.attn.conv_proj_q.conv``/``.bn``,
  ``attn.proj_q``, ``mlp.fc1``, ``stage2.cls_token``, ``norm``, ``head``) is fovea's. Plain state dicts (the model
  zoo) or nested under ``state_dict`` (their training ``checkpoint.pth``).
- ``transformers-cvt``: ``cvt.encoder.stages.N.embedding.convolution_embeddings.{projection,normalization}``,
  ``cvt.encoder.stages.N.layers.M.attention.attention.convolution_projection_{query,key,value}...``,
  ``...projection_{query,key,value}``, ``...attention.output.dense``, ``...intermediate.dense``, ``...output.dense``,
  ``...layernorm_{before,after}``, then ``layernorm`` and ``classifier``; a ``config.json`` beside it records the
  architecture and ``id2label``, a ``preprocessor_config.json`` the normalisation and size.

The published weights were trained with the authors' QuickGELU and ``dim ** -0.5`` attention scale, which fovea's
published presets follow, for transformers' files too (they are conversions of the authors' weights). transformers
runs them with exact GELU: build with ``act_layer="gelu"`` to reproduce its logits instead; a fine-tuning run and
an import both compute what the weights were trained with.
"""

from __future__ import annotations

import re
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ImageNetInfo

from fovea.weights.base import Layout, State, WeightsInfo, WeightsSource, head_rows

_MS_EMBED = "stage0.patch_embed.proj.weight"
_MS_ATTN = re.compile(r"^stage\d+\.blocks\.\d+\.attn\.conv_proj_[qkv]\.conv\.weight$")
_HF_EMBED = re.compile(r"^(?:cvt\.)?encoder\.stages\.\d+\.embedding\.convolution_embeddings\.projection\.weight$")
_HF_STAGE = re.compile(r"^(?:cvt\.)?encoder\.stages\.(\d+)\.(.+)$")
_HF_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_QKV = {"query": "q", "key": "k", "value": "v"}

# transformers' module path inside one layer -> fovea's inside one block (the longest prefixes first)
_HF_BLOCK_PARTS = (
    *(
        (
            f"attention.attention.convolution_projection_{name}.convolution_projection.convolution.",
            f"attn.conv_proj_{q}.conv.",
        )
        for name, q in _QKV.items()
    ),
    *(
        (
            f"attention.attention.convolution_projection_{name}.convolution_projection.normalization.",
            f"attn.conv_proj_{q}.bn.",
        )
        for name, q in _QKV.items()
    ),
    *((f"attention.attention.projection_{name}.", f"attn.proj_{q}.") for name, q in _QKV.items()),
    ("attention.output.dense.", "attn.proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
    ("layernorm_before.", "norm1."),
    ("layernorm_after.", "norm2."),
)
_HF_STAGE_PARTS = (
    ("embedding.convolution_embeddings.projection.", "patch_embed.proj."),
    ("embedding.convolution_embeddings.normalization.", "patch_embed.norm."),
    ("cls_token", "cls_token"),
)
_HF_TOP = (("layernorm.", "norm."), ("classifier.", "head."))

# The released architectures (the authors' experiments/imagenet/cvt/*.yaml, also transformers' CvtConfig defaults):
# what every published file has beyond its depths and widths. fovea's presets are built from the same values.
_PUBLISHED = dict(
    mlp_ratio=[4.0, 4.0, 4.0],
    qkv_bias=True,
    patch_size=[7, 3, 3],
    patch_stride=[4, 2, 2],
    patch_padding=[2, 1, 1],
    kernel_qkv=[3, 3, 3],
    stride_kv=[2, 2, 2],
    cls_token=True,
)
# (depths, widths) of fovea's published presets, and the input sizes each comes in (the authors' README: CvT-13 and
# CvT-21 at 224 and 384, CvT-W24 at 384 only)
_PRESETS = {
    ((1, 2, 10), (64, 192, 384)): ("cvt_13", (224, 384)),
    ((1, 4, 16), (64, 192, 384)): ("cvt_21", (224, 384)),
    ((2, 2, 20), (192, 768, 1024)): ("cvt_w24", (384,)),
}
_HEAD_DIM = 64  # fovea derives a preset's heads as width // 64, which gives the yaml's NUM_HEADS
# the authors' file names (CvT-13-384x384-IN-22k.pth) and transformers' hub ids (microsoft/cvt-13-384) give the size
_SIZE_IN_NAME = re.compile(r"(?<!\d)(224|384)(?!\d)")


def _is_microsoft(source: WeightsSource) -> bool:
    """The authors' ``stage0.``-prefixed keys with convolutional Q/K/V projections (no other family has both)."""
    return _MS_EMBED in source.state and any(_MS_ATTN.match(key) for key in source.state)


def _is_transformers(source: WeightsSource) -> bool:
    """transformers' ``encoder.stages.N.embedding.convolution_embeddings`` keys, with or without ``cvt.``."""
    return any(_HF_EMBED.match(key) for key in source.state)


def _convert_microsoft(source: WeightsSource) -> State:
    return {re.sub(r"^stage(\d+)\.", r"stages.\1.", key): value for key, value in source.state.items()}


def _renamed(rest: str, parts: tuple[tuple[str, str], ...]) -> str | None:
    for theirs, ours in parts:
        if rest.startswith(theirs):
            return ours + rest[len(theirs) :]
    return None


def _transformers_key(key: str) -> str:
    """fovea's name for one transformers key; an unknown key comes back as it is, for the strict check to name."""
    match = _HF_STAGE.match(key)
    if match is None:
        return _renamed(key.removeprefix("cvt."), _HF_TOP) or key
    stage, rest = match.groups()
    layer = _HF_LAYER.match(rest)
    if layer is not None:
        block, rest = layer.groups()
        ours = _renamed(rest, _HF_BLOCK_PARTS)
        return f"stages.{stage}.blocks.{block}.{ours}" if ours else key
    ours = _renamed(rest, _HF_STAGE_PARTS)
    return f"stages.{stage}.{ours}" if ours else key


def _convert_transformers(source: WeightsSource) -> State:
    return {_transformers_key(key): value for key, value in source.state.items()}


def _dims_of(state: State, key: str, axis: int, default: int) -> int:
    """One size of tensor ``key``, or ``default`` when the file lacks it (the strict load then names the key)."""
    tensor = state.get(key)
    return int(tensor.shape[axis]) if tensor is not None and tensor.dim() > abs(axis) else default


def _architecture(state: State) -> dict[str, Any]:
    """``CvtCfg`` arguments (and ``in_chans``) read off fovea-named tensors: all but heads, strides and paddings."""
    found = (re.match(r"^stages\.(\d+)\.patch_embed\.proj\.weight$", key) for key in state)
    stages = sorted(int(match.group(1)) for match in found if match)
    if not stages or stages != list(range(len(stages))):
        raise ValueError(f"token embeddings of stages {stages}: expected stages 0, 1, ...")
    embeds = [state[f"stages.{i}.patch_embed.proj.weight"] for i in stages]
    dims = [int(w.shape[0]) for w in embeds]
    depths = []
    for i in stages:
        blocks = {int(m.group(1)) for key in state if (m := re.match(rf"^stages\.{i}\.blocks\.(\d+)\.", key))}
        depths.append(max(blocks) + 1 if blocks else 0)
    with_token = [i for i in stages if f"stages.{i}.cls_token" in state]
    if with_token not in ([], [stages[-1]]):
        raise ValueError(f"class tokens in stages {with_token}: fovea's CvT has one in the last stage only")
    block = "stages.{}.blocks.0."
    return dict(
        depths=depths,
        embed_dims=dims,
        mlp_ratio=[_dims_of(state, block.format(i) + "mlp.fc1.weight", 0, 4 * dims[i]) / dims[i] for i in stages],
        qkv_bias=all(block.format(i) + "attn.proj_q.bias" in state for i in stages),
        patch_size=[int(w.shape[-1]) for w in embeds],
        kernel_qkv=[_dims_of(state, block.format(i) + "attn.conv_proj_q.conv.weight", -1, 3) for i in stages],
        cls_token=bool(with_token),
        in_chans=int(embeds[0].shape[1]),
    )


def _config_architecture(config: dict[str, Any], arch: dict[str, Any]) -> dict[str, Any]:
    """What a transformers ``CvtConfig`` adds to the tensors (heads, strides, paddings), checked against fovea's CvT."""
    methods = set(config.get("qkv_projection_method") or ["dw_bn"])
    if methods != {"dw_bn"}:
        raise ValueError(f"qkv_projection_method {sorted(methods)}: fovea's CvT has only 'dw_bn' (the released one)")
    if any(stride != 1 for stride in config.get("stride_q") or [1]):
        raise ValueError(f"stride_q {config['stride_q']}: fovea's CvT keeps every query (stride 1)")
    for name in ("padding_q", "padding_kv"):
        padding = config.get(name)
        if padding is not None and list(padding) != [k // 2 for k in arch["kernel_qkv"]]:
            raise ValueError(f"{name} {padding}: fovea's CvT pads the Q/K/V convolutions by kernel // 2")
    if len(set(config.get("qkv_bias") or [True])) > 1:
        raise ValueError(f"qkv_bias {config['qkv_bias']}: fovea's CvT has one setting for all stages")
    names = ("num_heads", "patch_stride", "patch_padding", "stride_kv")  # the same names in CvtConfig and CvtCfg
    return {name: [int(v) for v in config[name]] for name in names if config.get(name) is not None}


def _image_size(source: WeightsSource, dims: tuple[int, ...], depths: tuple[int, ...]) -> int | None:
    """The preprocessor's crop or resize; else the size in the file's (or folder's) name; else the only released."""
    pre = source.meta.get("preprocessor") or {}
    for key, sub in (("crop_size", "height"), ("size", "shortest_edge"), ("size", "height")):
        value = pre.get(key)
        if isinstance(value, int):
            return value
        if isinstance(value, dict) and isinstance(value.get(sub), int):
            return int(value[sub])
    named = _SIZE_IN_NAME.search(source.path.name)
    if named:
        return int(named.group(1))
    preset = _PRESETS.get((depths, dims))
    return preset[1][0] if preset and len(preset[1]) == 1 else None


def _classes(source: WeightsSource, rows: int | None, *, transformers: bool) -> list[str] | None:
    """transformers' ``id2label`` when it names the head's rows; a 1000-row head of the authors' is ImageNet-1k."""
    if not transformers:
        # the authors trained on torchvision's ImageFolder (lib/dataset/build.py): ImageNet-1k's classes in sorted
        # synset order, the order of timm's table; their other heads (ImageNet-22k) come with no names
        return list(ImageNetInfo("imagenet-1k").label_descriptions()) if rows == 1000 else None
    id2label = (source.meta.get("config") or {}).get("id2label") or {}
    if not rows or len(id2label) != rows:
        return None
    labels = [str(id2label.get(str(i), id2label.get(i, ""))) for i in range(rows)]
    if not all(labels) or labels == [f"LABEL_{i}" for i in range(rows)]:  # LABEL_i: transformers' placeholders
        return None
    return labels


def _suggest(arch: dict[str, Any], img_size: int | None, extra: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The fovea preset that fits, and the arguments that make it this file's model (only those that differ)."""
    depths, dims = tuple(arch["depths"]), tuple(arch["embed_dims"])
    family, sizes = _PRESETS.get((depths, dims), ("cvt_13", (224, 384)))
    size = img_size if img_size in sizes else sizes[0]
    model_args: dict[str, Any] = {}
    if (depths, dims) not in _PRESETS:
        model_args.update(depths=list(depths), embed_dims=list(dims))
    for name, published in _PUBLISHED.items():
        value = extra.get(name, arch.get(name, published))
        if value != published:
            model_args[name] = value
    heads = extra.get("num_heads")
    if heads is not None and heads != [max(1, d // _HEAD_DIM) for d in dims]:
        model_args["num_heads"] = heads
    if not arch["cls_token"]:
        model_args["global_pool"] = "avg"  # the authors' (and transformers') head then averages the normed tokens
    if arch["in_chans"] != 3:
        model_args["in_chans"] = arch["in_chans"]
    return f"{family}_{size}", model_args


def _describe(source: WeightsSource, state: State, *, transformers: bool) -> WeightsInfo:
    arch = _architecture(state)
    config = source.meta.get("config") or {}
    extra = _config_architecture(config, arch) if transformers else {}
    if transformers and config.get("num_channels") not in (None, arch["in_chans"]):
        raise ValueError(f"config num_channels {config['num_channels']} vs {arch['in_chans']} in the weights")
    img_size = _image_size(source, tuple(arch["embed_dims"]), tuple(arch["depths"]))
    suggested, model_args = _suggest(arch, img_size, extra)
    pre = source.meta.get("preprocessor") or {}
    # the authors normalise with ImageNet's statistics (lib/config/default.py INPUT.MEAN/STD), as transformers'
    # conversion does (its preprocessor_config.json, where present, says so itself)
    mean = tuple(float(v) for v in pre.get("image_mean") or IMAGENET_DEFAULT_MEAN)
    std = tuple(float(v) for v in pre.get("image_std") or IMAGENET_DEFAULT_STD)
    rows = head_rows(state, "head.weight")
    return WeightsInfo(
        family="cvt",
        num_classes=rows,
        classes=_classes(source, rows, transformers=transformers),
        img_size=img_size,
        mean=mean,
        std=std,
        model_args=model_args,
        suggested_model=suggested,
    )


def _describe_microsoft(source: WeightsSource) -> WeightsInfo:
    return _describe(source, _convert_microsoft(source), transformers=False)


def _describe_transformers(source: WeightsSource) -> WeightsInfo:
    return _describe(source, _convert_transformers(source), transformers=True)


MICROSOFT = Layout(
    name="microsoft-cvt",
    family="cvt",
    origin="the CvT authors' model zoo (github.com/microsoft/CvT: CvT-13/21/W24 .pth, ImageNet-1k and -22k)",
    detect=_is_microsoft,
    convert=_convert_microsoft,
    describe=_describe_microsoft,
)
TRANSFORMERS = Layout(
    name="transformers-cvt",
    family="cvt",
    origin="transformers' CvtForImageClassification (hub microsoft/cvt-13, ...: a model folder or its weights file)",
    detect=_is_transformers,
    convert=_convert_transformers,
    describe=_describe_transformers,
)

LAYOUTS: tuple[Layout, ...] = (MICROSOFT, TRANSFORMERS)
