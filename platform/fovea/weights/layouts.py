"""Every layout fovea recognises, and the one a file is in.

Converter modules (one per family: ``mvit``, ``timesformer``, ``vivit``, ``cvt``) each declare ``LAYOUTS``; their
``detect`` functions look at keys no other layout has, so at most one matches. A file no converter claims is taken
as fovea's (or timm's) own layout: its keys are the model's, and the family's ``checkpoint_filter_fn`` adapts what
timm's filters adapt (2D ViT weights inflated to video, position embeddings resized).
"""

from __future__ import annotations

from fovea.weights import cvt, mvit, timesformer, vivit
from fovea.weights.base import Layout, WeightsInfo, WeightsSource, head_rows

PUBLISHED: tuple[Layout, ...] = (*mvit.LAYOUTS, *timesformer.LAYOUTS, *vivit.LAYOUTS, *cvt.LAYOUTS)


def _native_info(source: WeightsSource) -> WeightsInfo:
    """A fovea model folder records its classes, normalisation and clip; bare files only their head's size."""
    rows = head_rows(source.state, "head.weight") or head_rows(source.state, "head.fc.weight")
    recorded = source.meta.get("fovea_model") or {}
    create = recorded.get("create_kwargs") or {}
    classes = recorded.get("classes")
    mean, std = recorded.get("mean"), recorded.get("std")
    return WeightsInfo(
        family="",
        num_classes=len(classes) if classes else (create.get("num_classes") or rows),
        classes=list(classes) if classes else None,
        num_frames=recorded.get("num_frames") or create.get("num_frames"),
        frame_interval=recorded.get("frame_interval"),
        img_size=recorded.get("img_size") or create.get("img_size"),
        mean=tuple(mean) if mean else None,
        std=tuple(std) if std else None,
        model_args={k: v for k, v in create.items() if k not in ("num_classes", "img_size", "num_frames")},
        suggested_model=recorded.get("model_name"),
    )


NATIVE = Layout(
    name="fovea",
    family="",
    origin="fovea's checkpoints and model folders, timm's weights",
    detect=lambda source: True,
    convert=lambda source: dict(source.state),
    describe=_native_info,
)


def _npz_info(source: WeightsSource) -> WeightsInfo:
    """Google's ViT ``.npz``: classes from the head, image size from the position table and patch kernel."""
    state = source.state
    rows = int(state["head/bias"].shape[-1]) if "head/bias" in state else None
    kernel, table = state.get("embedding/kernel"), state.get("Transformer/posembed_input/pos_embedding")
    size = None
    if kernel is not None and table is not None and kernel.dim() == 4:
        side = int((table.shape[-2] - ("cls" in state)) ** 0.5)
        size = side * int(kernel.shape[0])
    return WeightsInfo(family="", num_classes=rows, img_size=size)


def _loaded_by_timm(source: WeightsSource) -> dict:
    raise ValueError("Google's .npz files are read by timm's ViT loader (fovea.weights.load.load_jax_npz)")


GOOGLE_NPZ = Layout(
    name="google-vit-npz",
    family="",
    origin="Google's JAX ViT releases (.npz), read by timm",
    detect=lambda source: source.meta.get("format") == "npz" and "embedding/kernel" in source.state,
    convert=_loaded_by_timm,
    describe=_npz_info,
)


def detect_layout(source: WeightsSource) -> Layout:
    """The published layout ``source`` is in, or ``NATIVE`` when none claims it."""
    for layout in (*PUBLISHED, GOOGLE_NPZ):
        if layout.detect(source):
            return layout
    return NATIVE
